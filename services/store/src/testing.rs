//! Test databases on both backends: SQLite in a temporary directory, and a fresh PostgreSQL
//! database per test on the server named by `COMPANION_TEST_POSTGRES` (default: the local
//! server, trust auth). PostgreSQL being unreachable fails the test: it is never skipped.

use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use sqlx::{AssertSqlSafe, Connection, PgConnection};

use crate::Store;

const DEFAULT_POSTGRES: &str = "postgres://postgres@127.0.0.1:5432/postgres";

#[derive(Debug, Clone, Copy)]
pub(crate) enum Backend {
    Sqlite,
    Postgres,
}

/// A migrated store on a database of its own, removed when dropped.
pub(crate) struct TestDb {
    pub store: Store,
    pub url: String,
    backend: Backend,
    dir: tempfile::TempDir,
    /// Declared last: dropped after the store's pool.
    pg: Mutex<Vec<PgDatabase>>,
}

impl TestDb {
    pub async fn new(backend: Backend) -> TestDb {
        let dir = tempfile::tempdir().unwrap();
        let mut pg = Vec::new();
        let url = match backend {
            Backend::Sqlite => dir.path().join("store.db").display().to_string(),
            Backend::Postgres => {
                let database = PgDatabase::create().await;
                let url = database.url.clone();
                pg.push(database);
                url
            }
        };
        let store = Store::open(&url)
            .await
            .unwrap_or_else(|e| panic!("opening the {backend:?} test store failed: {e}"));
        TestDb {
            store,
            url,
            backend,
            dir,
            pg: Mutex::new(pg),
        }
    }

    /// Another store on the same database.
    pub async fn reopen(&self) -> Store {
        Store::open(&self.url).await.unwrap()
    }

    /// The address of another, empty database of the same backend, removed with this one.
    pub async fn fresh_database_url(&self) -> String {
        match self.backend {
            Backend::Sqlite => {
                let n = NEXT.fetch_add(1, Ordering::Relaxed);
                self.dir
                    .path()
                    .join(format!("fresh{n}.db"))
                    .display()
                    .to_string()
            }
            Backend::Postgres => {
                let database = PgDatabase::create().await;
                let url = database.url.clone();
                self.pg.lock().unwrap().push(database);
                url
            }
        }
    }
}

static NEXT: AtomicU64 = AtomicU64::new(0);

fn admin_url() -> String {
    std::env::var("COMPANION_TEST_POSTGRES").unwrap_or_else(|_| DEFAULT_POSTGRES.to_string())
}

/// `url` with its database (path) replaced by `name`.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority = base.find("://").map_or(0, |i| i + 3);
    let path = base[authority..]
        .find('/')
        .map_or(base.len(), |i| authority + i);
    match query {
        Some(query) => format!("{}/{name}?{query}", &base[..path]),
        None => format!("{}/{name}", &base[..path]),
    }
}

async fn admin_connection() -> PgConnection {
    let admin = admin_url();
    PgConnection::connect(&admin).await.unwrap_or_else(|e| {
        panic!(
            "PostgreSQL for the store tests is unreachable at {admin}: {e}\n\
             Start it with scripts/services, or set COMPANION_TEST_POSTGRES to a server where \
             this role may CREATE DATABASE."
        )
    })
}

/// A database created for one test and dropped (with its open connections) afterwards.
struct PgDatabase {
    name: String,
    url: String,
}

impl PgDatabase {
    async fn create() -> PgDatabase {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let random = RandomState::new().hash_one((std::process::id(), n, crate::now_ms()));
        let name = format!("companion_t_{random:016x}");
        let mut conn = admin_connection().await;
        sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name} failed: {e}"));
        conn.close().await.ok();
        PgDatabase {
            url: with_database(&admin_url(), &name),
            name,
        }
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs inside the test's runtime, which cannot be blocked on: a thread with a
        // runtime of its own does the work.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            runtime.block_on(async {
                let mut conn = PgConnection::connect(&admin_url())
                    .await
                    .map_err(|e| e.to_string())?;
                sqlx::raw_sql(AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                )))
                .execute(&mut conn)
                .await
                .map_err(|e| e.to_string())?;
                conn.close().await.ok();
                Ok::<_, String>(())
            })
        })
        .join();
        if let Ok(Err(e)) = dropped {
            eprintln!("could not drop test database {}: {e}", self.name);
        }
    }
}

/// Declares, for each named `async fn(&TestDb)` in the enclosing module, a module of that name
/// with two tests, `sqlite` and `postgres`, that run it on a fresh database of each backend.
macro_rules! backend_tests {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    let db = crate::testing::TestDb::new(crate::testing::Backend::Sqlite).await;
                    super::$name(&db).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    let db = crate::testing::TestDb::new(crate::testing::Backend::Postgres).await;
                    super::$name(&db).await;
                }
            }
        )*
    };
}
pub(crate) use backend_tests;

#[test]
fn database_names_replace_the_path() {
    assert_eq!(
        with_database("postgres://postgres@127.0.0.1:5432/postgres", "x"),
        "postgres://postgres@127.0.0.1:5432/x"
    );
    assert_eq!(
        with_database("postgres://h?sslmode=disable", "x"),
        "postgres://h/x?sslmode=disable"
    );
}
