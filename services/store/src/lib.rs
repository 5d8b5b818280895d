//! The PBX store: recordings, their processing jobs and every result derived from them, behind
//! one repository type. SQLite is the embedded default; PostgreSQL is the shared database when
//! several API and worker processes run. Both run the same migrations and the same query text.
//!
//! The two backends are two concrete pools; [`on_pool!`] expands each operation once per
//! backend, so every query is type-checked against both drivers' strict decoding rules (on
//! PostgreSQL an `INTEGER` column does not decode into `i64`: such columns are `CAST` in queries).

use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Runs `$body` with `$pool` bound to the store's concrete pool, whichever backend it is.
macro_rules! on_pool {
    ($store:expr, |$pool:ident| $body:expr) => {
        match &$store.pool {
            crate::Pool::Sqlite($pool) => $body,
            crate::Pool::Postgres($pool) => $body,
        }
    };
}

/// Inserts the next result version of a recording inside the transaction `$tx` and evaluates to
/// `Result<i64, sqlx::Error>` (the version). Writers of the same recording take their turns
/// ([`ResultsLock`]); a unique violation that still happens (the same job finished twice) is
/// for the caller to retry.
macro_rules! insert_result {
    ($tx:ident, $recording:expr, $job:expr, $cols:expr) => {{
        let cols: &crate::ResultColumns = $cols;
        let recording: &str = $recording;
        async {
            crate::ResultsLock::lock_results(&mut $tx, recording).await?;
            let version: i64 = sqlx::query_scalar(
                "SELECT CAST(COALESCE(MAX(version), 0) + 1 AS BIGINT) FROM results WHERE recording_id = $1",
            )
            .bind(recording)
            .fetch_one(&mut *$tx)
            .await?;
            sqlx::query(
                "INSERT INTO results (recording_id, version, status, duration_s, speech, language,
                     language_probability, transcript, result_json, error_kind, error_message,
                     created_at_ms, job_id)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
            )
            .bind(recording)
            .bind(version)
            .bind(cols.status)
            .bind(cols.duration_s)
            .bind(cols.speech)
            .bind(&cols.language)
            .bind(cols.language_probability)
            .bind(&cols.transcript)
            .bind(&cols.json)
            .bind(cols.error_kind)
            .bind(&cols.error_message)
            .bind(crate::now_ms())
            .bind($job)
            .execute(&mut *$tx)
            .await?;
            Ok::<i64, sqlx::Error>(version)
        }
        .await
    }};
}

/// The columns of a result row, decoded as [`ResultRow`].
macro_rules! result_select {
    () => {
        "SELECT CAST(version AS BIGINT), status, result_json, error_kind, error_message FROM results"
    };
}

mod jobs;
mod policy;
mod summaries;
#[cfg(test)]
mod testing;

pub use jobs::{
    AudioSource, Finished, JobRecord, JobState, NewSubmission, RecordingView, Submitted,
    recording_key,
};
pub use policy::PolicyStoreError;
pub use summaries::SummaryVersion;

use companion_core::{Classify, ErrorKind, ErrorReport, RecordingKind, RecordingResult};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use sqlx::{Postgres, Sqlite, Transaction};
use tracing::debug;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("invalid database address {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored result is unreadable: {0}")]
    Decode(#[from] serde_json::Error),
}

impl Classify for StoreError {
    fn kind(&self) -> ErrorKind {
        match self {
            StoreError::InvalidUrl { .. } | StoreError::InvalidArgument(_) => {
                ErrorKind::InvalidArgument
            }
            _ => ErrorKind::Store,
        }
    }
}

/// A recording as it enters the store from the CLI (tenant `local`); its id is also its
/// external id.
#[derive(Debug, Clone)]
pub struct NewRecording {
    pub id: String,
    pub tenant_id: String,
    pub user_id: Option<String>,
    pub kind: RecordingKind,
    /// Where the audio came from (a path or URI); the audio itself is not stored.
    pub source: String,
    pub sha256: String,
    pub size_bytes: u64,
}

/// How one processing run ended.
#[derive(Debug, Clone)]
pub enum Outcome<'a> {
    Done(&'a RecordingResult),
    Failed(&'a ErrorReport),
}

/// The latest stored result of a recording.
#[derive(Debug, Clone, PartialEq)]
pub enum StoredOutcome {
    Done(Box<RecordingResult>),
    Failed(ErrorReport),
}

#[derive(Debug, Clone)]
enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

#[derive(Debug, Clone)]
pub struct Store {
    pool: Pool,
}

/// Opening a transaction that will write. SQLite's default deferred transaction fails (busy,
/// without waiting) when it reads first and another connection commits before it writes, so
/// SQLite takes the write lock up front; PostgreSQL relies on its row locks and unique indexes.
trait BeginWrite {
    type Db: sqlx::Database;
    async fn begin_write(&self) -> Result<Transaction<'static, Self::Db>, sqlx::Error>;
}

impl BeginWrite for SqlitePool {
    type Db = Sqlite;
    async fn begin_write(&self) -> Result<Transaction<'static, Sqlite>, sqlx::Error> {
        self.begin_with("BEGIN IMMEDIATE").await
    }
}

impl BeginWrite for PgPool {
    type Db = Postgres;
    async fn begin_write(&self) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
        self.begin().await
    }
}

/// Taking, inside a write transaction, the turn to add a recording's next result version.
/// Without it, concurrent writers of one recording (six, in a CI run) read the same highest
/// version, and one could lose the race on the version's unique key more often than
/// [`WRITE_ATTEMPTS`] allows. SQLite's write transactions already take turns.
trait ResultsLock {
    async fn lock_results(&mut self, recording: &str) -> Result<(), sqlx::Error>;
}

impl ResultsLock for Transaction<'static, Postgres> {
    async fn lock_results(&mut self, recording: &str) -> Result<(), sqlx::Error> {
        // Held until the transaction ends.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
            .bind(recording)
            .execute(&mut **self)
            .await
            .map(|_| ())
    }
}

impl ResultsLock for Transaction<'static, Sqlite> {
    async fn lock_results(&mut self, _recording: &str) -> Result<(), sqlx::Error> {
        Ok(())
    }
}

/// How often a transaction that lost a race on a unique key (two writers taking the same
/// version number) is retried.
const WRITE_ATTEMPTS: usize = 5;

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The address with any password replaced, for errors and logs.
fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_string();
    };
    let rest = &url[scheme_end..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => match rest[..at].find(':') {
            Some(colon) => format!(
                "{}{}:***{}",
                &url[..scheme_end],
                &rest[..colon],
                &rest[at..]
            ),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

impl Store {
    /// Opens the database and brings its schema up to date (so `companion migrate` is `open`
    /// then [`Store::close`], or [`Store::migrate_only`]). Accepts `postgres://…` /
    /// `postgresql://…`, a `sqlite:` URL or a plain file path (SQLite files are created if
    /// missing).
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        let invalid = |reason: String| StoreError::InvalidUrl {
            url: redact(url),
            reason,
        };
        let migrator = sqlx::migrate!("./migrations");
        if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            let options = PgConnectOptions::from_str(url).map_err(|e| invalid(e.to_string()))?;
            let pool = PgPoolOptions::new()
                .max_connections(8)
                .acquire_timeout(Duration::from_secs(10))
                .connect_with(options)
                .await?;
            // Concurrent migrators wait on PostgreSQL's advisory lock, taken by `run`.
            migrator.run(&pool).await?;
            debug!(url = redact(url), backend = "postgres", "store open");
            return Ok(Store {
                pool: Pool::Postgres(pool),
            });
        }
        let url_form = if url.starts_with("sqlite:") {
            url.to_string()
        } else {
            format!("sqlite://{url}")
        };
        let options = SqliteConnectOptions::from_str(&url_form)
            .map_err(|e| invalid(e.to_string()))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let pool = connect_sqlite(&options).await?;
        migrate_sqlite(&pool, &migrator).await?;
        debug!(url, backend = "sqlite", "store open");
        Ok(Store {
            pool: Pool::Sqlite(pool),
        })
    }

    /// Brings the schema of the database at `url` up to date and disconnects.
    pub async fn migrate_only(url: &str) -> Result<(), StoreError> {
        Store::open(url).await?.close().await;
        Ok(())
    }

    /// `"sqlite"` or `"postgres"`.
    pub fn backend(&self) -> &'static str {
        match self.pool {
            Pool::Sqlite(_) => "sqlite",
            Pool::Postgres(_) => "postgres",
        }
    }

    /// Records a recording, or refreshes where it came from if the id is known.
    pub async fn upsert_recording(&self, rec: &NewRecording) -> Result<(), StoreError> {
        on_pool!(self, |pool| sqlx::query(
            "INSERT INTO recordings (id, tenant_id, external_id, user_id, kind, source, sha256,
                 size_bytes, created_at_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
             ON CONFLICT (id) DO UPDATE SET source = excluded.source, user_id = excluded.user_id,
                 kind = excluded.kind",
        )
        .bind(&rec.id)
        .bind(&rec.tenant_id)
        .bind(&rec.id)
        .bind(&rec.user_id)
        .bind(kind_name(rec.kind))
        .bind(&rec.source)
        .bind(&rec.sha256)
        .bind(rec.size_bytes as i64)
        .bind(now_ms())
        .execute(pool)
        .await
        .map(|done| done.rows_affected()))?;
        Ok(())
    }

    /// Adds a new result version for a recording and returns its number (1, 2, ...).
    pub async fn add_result(
        &self,
        recording_id: &str,
        outcome: Outcome<'_>,
    ) -> Result<i64, StoreError> {
        let cols = ResultColumns::new(outcome)?;
        on_pool!(self, |pool| {
            let mut attempt = 1;
            loop {
                let mut tx = pool.begin_write().await?;
                match insert_result!(tx, recording_id, None::<&str>, &cols) {
                    Ok(version) => {
                        tx.commit().await?;
                        return Ok(version);
                    }
                    Err(e) if is_unique_violation(&e) && attempt < WRITE_ATTEMPTS => {
                        attempt += 1;
                        debug!(recording_id, attempt, "result version taken; retrying");
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        })
    }

    /// The newest result of a recording, if it has one.
    pub async fn latest_result(
        &self,
        recording_id: &str,
    ) -> Result<Option<StoredOutcome>, StoreError> {
        let row: Option<ResultRow> = on_pool!(self, |pool| sqlx::query_as(concat!(
            result_select!(),
            " WHERE recording_id = $1 ORDER BY version DESC LIMIT 1"
        ))
        .bind(recording_id)
        .fetch_optional(pool)
        .await)?;
        row.map(|row| Ok(stored_outcome(row)?.1)).transpose()
    }

    /// How many result versions a recording has.
    pub async fn result_count(&self, recording_id: &str) -> Result<i64, StoreError> {
        Ok(on_pool!(self, |pool| sqlx::query_scalar(
            "SELECT COUNT(*) FROM results WHERE recording_id = $1"
        )
        .bind(recording_id)
        .fetch_one(pool)
        .await)?)
    }

    pub async fn close(&self) {
        on_pool!(self, |pool| pool.close().await)
    }
}

/// (version, status, result_json, error_kind, error_message)
type ResultRow = (i64, String, Option<String>, Option<String>, Option<String>);

/// Decodes a result row into its version and outcome.
fn stored_outcome(row: ResultRow) -> Result<(i64, StoredOutcome), StoreError> {
    let (version, status, json, error_kind, error_message) = row;
    let outcome = if status == "done" {
        let json = json.unwrap_or_default();
        StoredOutcome::Done(Box::new(serde_json::from_str(&json)?))
    } else {
        StoredOutcome::Failed(ErrorReport {
            kind: error_kind_from_name(&error_kind.unwrap_or_default())?,
            message: error_message.unwrap_or_default(),
        })
    };
    Ok((version, outcome))
}

fn error_kind_from_name(name: &str) -> Result<ErrorKind, StoreError> {
    Ok(serde_json::from_value(serde_json::Value::String(
        name.to_string(),
    ))?)
}

/// What a result row stores besides its keys.
struct ResultColumns {
    status: &'static str,
    duration_s: Option<f64>,
    speech: Option<bool>,
    language: Option<String>,
    language_probability: Option<f64>,
    transcript: Option<String>,
    json: Option<String>,
    error_kind: Option<&'static str>,
    error_message: Option<String>,
}

impl ResultColumns {
    fn new(outcome: Outcome<'_>) -> Result<ResultColumns, StoreError> {
        Ok(match outcome {
            Outcome::Done(result) => ResultColumns {
                status: "done",
                duration_s: Some(result.duration_s),
                speech: Some(result.speech),
                language: result.language.as_ref().map(|l| l.code.clone()),
                language_probability: result.language.as_ref().map(|l| f64::from(l.probability)),
                transcript: Some(result.transcript.text.clone()),
                json: Some(serde_json::to_string(result)?),
                error_kind: None,
                error_message: None,
            },
            Outcome::Failed(error) => ResultColumns {
                status: "failed",
                duration_s: None,
                speech: None,
                language: None,
                language_probability: None,
                transcript: None,
                json: None,
                error_kind: Some(error.kind.as_str()),
                error_message: Some(error.message.clone()),
            },
        })
    }
}

/// Whether SQLite refused for a lock another connection holds (SQLITE_BUSY, SQLITE_LOCKED and
/// their extended codes).
fn sqlite_busy(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|d| d.code())
        .and_then(|code| code.parse::<i32>().ok())
        .is_some_and(|code| matches!(code & 0xff, 5 | 6))
}

/// Connects to an SQLite database. A connection's first statements (WAL mode on a new file)
/// can meet another process's lock where SQLite does not wait out the busy timeout, and fail
/// at once with "database is locked"; those are retried.
async fn connect_sqlite(options: &SqliteConnectOptions) -> Result<SqlitePool, StoreError> {
    let mut attempt = 0;
    loop {
        match SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options.clone())
            .await
        {
            Ok(pool) => return Ok(pool),
            Err(e) if attempt < 5 && sqlite_busy(&e) => {
                attempt += 1;
                debug!(error = %e, attempt, "SQLite open met a lock; retrying");
                tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Brings an SQLite schema up to date. SQLite has no advisory lock, so two processes opening a
/// new database at once can race; the loser sees the winner's committed migration on retry.
async fn migrate_sqlite(
    pool: &SqlitePool,
    migrator: &sqlx::migrate::Migrator,
) -> Result<(), StoreError> {
    let mut attempt = 0;
    loop {
        match migrator.run(pool).await {
            Ok(()) => return Ok(()),
            Err(e) if attempt < 5 => {
                attempt += 1;
                debug!(error = %e, attempt, "migration raced another process; retrying");
                tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

fn kind_name(kind: RecordingKind) -> &'static str {
    match kind {
        RecordingKind::Voicemail => "voicemail",
        RecordingKind::Call => "call",
    }
}

fn kind_from_name(name: &str) -> Result<RecordingKind, StoreError> {
    Ok(serde_json::from_value(serde_json::Value::String(
        name.to_string(),
    ))?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{Backend, TestDb, backend_tests};
    use companion_core::{Language, Transcript};

    fn recording(id: &str) -> NewRecording {
        NewRecording {
            id: id.into(),
            tenant_id: "local".into(),
            user_id: Some("u1".into()),
            kind: RecordingKind::Voicemail,
            source: "/tmp/a.wav".into(),
            sha256: "ab".repeat(32),
            size_bytes: 1234,
        }
    }

    fn result(id: &str, text: &str) -> RecordingResult {
        RecordingResult {
            file: "a.wav".into(),
            recording_id: id.into(),
            duration_s: 3.5,
            speech: true,
            language: Some(Language {
                code: "es".into(),
                probability: 0.9,
            }),
            transcript: Transcript {
                text: text.into(),
                segments: vec![],
            },
            ..Default::default()
        }
    }

    backend_tests!(
        results_are_versioned_and_survive_reopening,
        a_result_needs_its_recording,
        concurrent_opens_of_a_new_database_all_succeed,
        concurrent_results_take_distinct_versions,
    );

    async fn results_are_versioned_and_survive_reopening(db: &TestDb) {
        let store = &db.store;
        store.upsert_recording(&recording("rec_1")).await.unwrap();
        assert_eq!(store.latest_result("rec_1").await.unwrap(), None);
        let v1 = store
            .add_result("rec_1", Outcome::Done(&result("rec_1", "hola")))
            .await
            .unwrap();
        let error = ErrorReport {
            kind: ErrorKind::CorruptAudio,
            message: "bad".into(),
        };
        let v2 = store
            .add_result("rec_1", Outcome::Failed(&error))
            .await
            .unwrap();
        assert_eq!((v1, v2), (1, 2));
        store.close().await;

        // Re-opening runs the (already applied) migrations again.
        let store = db.reopen().await;
        assert_eq!(store.result_count("rec_1").await.unwrap(), 2);
        assert_eq!(
            store.latest_result("rec_1").await.unwrap(),
            Some(StoredOutcome::Failed(error))
        );
        // Re-registering the same recording keeps one row.
        store.upsert_recording(&recording("rec_1")).await.unwrap();
        let v3 = store
            .add_result("rec_1", Outcome::Done(&result("rec_1", "hola de nuevo")))
            .await
            .unwrap();
        assert_eq!(v3, 3);
        match store.latest_result("rec_1").await.unwrap() {
            Some(StoredOutcome::Done(r)) => assert_eq!(r.transcript.text, "hola de nuevo"),
            other => panic!("unexpected {other:?}"),
        }
        store.close().await;
    }

    async fn a_result_needs_its_recording(db: &TestDb) {
        assert!(
            db.store
                .add_result("missing", Outcome::Done(&result("missing", "x")))
                .await
                .is_err()
        );
    }

    async fn concurrent_opens_of_a_new_database_all_succeed(db: &TestDb) {
        // A second, never-migrated database beside the test's own.
        let url = db.fresh_database_url().await;
        let opens: Vec<_> = (0..6)
            .map(|_| {
                let url = url.clone();
                tokio::spawn(async move {
                    let store = Store::open(&url).await?;
                    store.close().await;
                    Ok::<_, StoreError>(())
                })
            })
            .collect();
        for open in opens {
            open.await.unwrap().unwrap();
        }
        Store::migrate_only(&url).await.unwrap();
    }

    async fn concurrent_results_take_distinct_versions(db: &TestDb) {
        db.store
            .upsert_recording(&recording("rec_c"))
            .await
            .unwrap();
        // More writers than a writer has attempts.
        let adds: Vec<_> = (0..12)
            .map(|i| {
                let store = db.store.clone();
                tokio::spawn(async move {
                    store
                        .add_result("rec_c", Outcome::Done(&result("rec_c", &format!("t{i}"))))
                        .await
                })
            })
            .collect();
        let mut versions = Vec::new();
        for add in adds {
            versions.push(add.await.unwrap().unwrap());
        }
        versions.sort();
        assert_eq!(versions, (1..=12).collect::<Vec<i64>>());
    }

    #[tokio::test]
    async fn malformed_addresses_are_invalid_arguments() {
        let err = Store::open("postgres://user:secret@[bad/db")
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
        assert!(!err.to_string().contains("secret"), "{err}");
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("postgres://u:pw@h:5432/db?x=1"),
            "postgres://u:***@h:5432/db?x=1"
        );
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("/tmp/a.db"), "/tmp/a.db");
    }

    #[tokio::test]
    async fn the_backend_is_named() {
        let db = TestDb::new(Backend::Sqlite).await;
        assert_eq!(db.store.backend(), "sqlite");
    }
}
