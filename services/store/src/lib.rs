//! The PBX store: recordings and every result derived from them, behind one repository type.
//! SQLite is the embedded default; the migrations are written to run unchanged on PostgreSQL.

use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

mod policy;
mod summaries;

pub use policy::PolicyStoreError;
pub use summaries::SummaryVersion;

use companion_core::{Classify, ErrorKind, ErrorReport, RecordingKind, RecordingResult};
use sqlx::Row;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use tracing::debug;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("invalid database address {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
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
            StoreError::InvalidUrl { .. } => ErrorKind::InvalidArgument,
            _ => ErrorKind::Store,
        }
    }
}

/// A recording as it enters the store.
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
pub struct Store {
    pool: SqlitePool,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Store {
    /// Opens (creating if needed) the database and brings its schema up to date. Accepts a
    /// `sqlite:` URL or a plain file path.
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        let invalid = |reason: String| StoreError::InvalidUrl {
            url: url.to_string(),
            reason,
        };
        if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            return Err(invalid(
                "PostgreSQL is not supported by this build yet".into(),
            ));
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
            .busy_timeout(std::time::Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await?;
        migrate(&pool).await?;
        debug!(url, "store open");
        Ok(Store { pool })
    }

    /// Records a recording, or refreshes where it came from if the id is known.
    pub async fn upsert_recording(&self, rec: &NewRecording) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO recordings (id, tenant_id, user_id, kind, source, sha256, size_bytes, created_at_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (id) DO UPDATE SET source = excluded.source, user_id = excluded.user_id,
                 kind = excluded.kind",
        )
        .bind(&rec.id)
        .bind(&rec.tenant_id)
        .bind(&rec.user_id)
        .bind(kind_name(rec.kind))
        .bind(&rec.source)
        .bind(&rec.sha256)
        .bind(rec.size_bytes as i64)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Adds a new result version for a recording and returns its number (1, 2, ...).
    pub async fn add_result(
        &self,
        recording_id: &str,
        outcome: Outcome<'_>,
    ) -> Result<i64, StoreError> {
        let mut tx = self.pool.begin().await?;
        let version: i64 = sqlx::query_scalar(
            "SELECT COALESCE(MAX(version), 0) + 1 FROM results WHERE recording_id = $1",
        )
        .bind(recording_id)
        .fetch_one(&mut *tx)
        .await?;
        let query = sqlx::query(
            "INSERT INTO results (recording_id, version, status, duration_s, speech, language,
                 language_probability, transcript, result_json, error_kind, error_message, created_at_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        )
        .bind(recording_id)
        .bind(version);
        let query = match outcome {
            Outcome::Done(result) => query
                .bind("done")
                .bind(result.duration_s)
                .bind(result.speech)
                .bind(result.language.as_ref().map(|l| l.code.clone()))
                .bind(result.language.as_ref().map(|l| f64::from(l.probability)))
                .bind(&result.transcript.text)
                .bind(serde_json::to_string(result)?)
                .bind(None::<String>)
                .bind(None::<String>),
            Outcome::Failed(error) => query
                .bind("failed")
                .bind(None::<f64>)
                .bind(None::<bool>)
                .bind(None::<String>)
                .bind(None::<f64>)
                .bind(None::<String>)
                .bind(None::<String>)
                .bind(error.kind.as_str())
                .bind(&error.message),
        };
        query.bind(now_ms()).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(version)
    }

    /// The newest result of a recording, if it has one.
    pub async fn latest_result(
        &self,
        recording_id: &str,
    ) -> Result<Option<StoredOutcome>, StoreError> {
        let row = sqlx::query(
            "SELECT status, result_json, error_kind, error_message FROM results
             WHERE recording_id = $1 ORDER BY version DESC LIMIT 1",
        )
        .bind(recording_id)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let status: String = row.try_get("status")?;
        if status == "done" {
            let json: String = row.try_get("result_json")?;
            Ok(Some(StoredOutcome::Done(Box::new(serde_json::from_str(
                &json,
            )?))))
        } else {
            let kind: String = row.try_get("error_kind")?;
            let kind = serde_json::from_value(serde_json::Value::String(kind))?;
            Ok(Some(StoredOutcome::Failed(ErrorReport {
                kind,
                message: row.try_get("error_message")?,
            })))
        }
    }

    /// How many result versions a recording has.
    pub async fn result_count(&self, recording_id: &str) -> Result<i64, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT COUNT(*) FROM results WHERE recording_id = $1")
                .bind(recording_id)
                .fetch_one(&self.pool)
                .await?,
        )
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Brings the schema up to date. SQLite has no advisory lock, so two processes opening a new
/// database at once can race; the loser sees the winner's committed migration on retry.
async fn migrate(pool: &SqlitePool) -> Result<(), StoreError> {
    let migrator = sqlx::migrate!("./migrations");
    let mut attempt = 0;
    loop {
        match migrator.run(pool).await {
            Ok(()) => return Ok(()),
            Err(e) if attempt < 5 => {
                attempt += 1;
                debug!(error = %e, attempt, "migration raced another process; retrying");
                tokio::time::sleep(std::time::Duration::from_millis(100 * attempt)).await;
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

#[cfg(test)]
mod tests {
    use super::*;
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

    #[tokio::test]
    async fn results_are_versioned_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("companion.db");
        let store = Store::open(path.to_str().unwrap()).await.unwrap();
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

        let store = Store::open(&format!("sqlite://{}", path.display()))
            .await
            .unwrap();
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
    }

    #[tokio::test]
    async fn a_result_needs_its_recording() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("x.db").to_str().unwrap())
            .await
            .unwrap();
        assert!(
            store
                .add_result("missing", Outcome::Done(&result("missing", "x")))
                .await
                .is_err()
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn concurrent_opens_of_a_new_database_all_succeed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("race.db").display().to_string();
        let opens: Vec<_> = (0..6)
            .map(|_| {
                let path = path.clone();
                tokio::spawn(async move { Store::open(&path).await.map(|_| ()) })
            })
            .collect();
        for open in opens {
            open.await.unwrap().unwrap();
        }
    }

    #[tokio::test]
    async fn postgres_urls_are_refused_clearly() {
        let err = Store::open("postgres://localhost/test").await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    }
}
