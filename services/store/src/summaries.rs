//! Edited call summaries, kept as versions beside the generated one.

use companion_core::CallSummary;

use super::{Store, StoreError, StoredOutcome, now_ms};

/// One version of a recording's summary: version 0 is what the model wrote, later versions are
/// people's edits.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SummaryVersion {
    pub version: i64,
    pub summary: CallSummary,
    /// `generated`, or the id of the user who edited it.
    pub author: String,
    /// The language of an edit's text, when it could be told.
    pub language: Option<String>,
    pub created_at_ms: i64,
}

impl Store {
    /// Stores an edit of a recording's summary as its next version and returns the version.
    /// The recording must exist.
    pub async fn edit_summary(
        &self,
        recording_id: &str,
        summary: &CallSummary,
        author: &str,
        language: Option<&str>,
    ) -> Result<i64, StoreError> {
        let json = serde_json::to_string(summary)?;
        // Two editors at once: the primary key refuses the second insert of a version, and
        // the retry takes the next one.
        for attempt in 0..5 {
            let version: i64 = on_pool!(self, |pool| sqlx::query_scalar(
                "SELECT CAST(COALESCE(MAX(version), 0) + 1 AS BIGINT) FROM summary_edits
                 WHERE recording_id = $1",
            )
            .bind(recording_id)
            .fetch_one(pool)
            .await)?;
            let inserted = on_pool!(self, |pool| {
                sqlx::query(
                "INSERT INTO summary_edits (recording_id, version, summary_json, language, author, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(recording_id)
            .bind(version)
            .bind(&json)
            .bind(language)
            .bind(author)
            .bind(now_ms())
            .execute(pool)
            .await
            .map(|done| done.rows_affected())
            });
            match inserted {
                Ok(_) => return Ok(version),
                Err(sqlx::Error::Database(e)) if e.is_unique_violation() && attempt < 4 => continue,
                Err(e) => return Err(e.into()),
            }
        }
        unreachable!("the loop returns on its last attempt")
    }

    /// Every version of a recording's summary, oldest first: the generated one (when the latest
    /// result has a summary) as version 0, then each edit.
    pub async fn summary_versions(
        &self,
        recording_id: &str,
    ) -> Result<Vec<SummaryVersion>, StoreError> {
        let mut versions = Vec::new();
        if let Some(StoredOutcome::Done(result)) = self.latest_result(recording_id).await?
            && let Some(summary) = result.summary
        {
            versions.push(SummaryVersion {
                version: 0,
                summary,
                author: "generated".into(),
                language: result.language.map(|l| l.code),
                created_at_ms: 0,
            });
        }
        let rows: Vec<(i64, String, Option<String>, String, i64)> =
            on_pool!(self, |pool| sqlx::query_as(
                "SELECT version, summary_json, language, author, created_at FROM summary_edits
             WHERE recording_id = $1 ORDER BY version",
            )
            .bind(recording_id)
            .fetch_all(pool)
            .await)?;
        for (version, json, language, author, created_at_ms) in rows {
            versions.push(SummaryVersion {
                version,
                summary: serde_json::from_str(&json)?,
                author,
                language,
                created_at_ms,
            });
        }
        Ok(versions)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{TestDb, backend_tests};
    use crate::{NewRecording, Outcome};
    use companion_core::{RecordingKind, RecordingResult};

    backend_tests!(edits_are_versions_beside_the_generated_summary);

    async fn edits_are_versions_beside_the_generated_summary(db: &TestDb) {
        let store = &db.store;
        store
            .upsert_recording(&NewRecording {
                id: "rec_call".into(),
                tenant_id: "local".into(),
                user_id: None,
                kind: RecordingKind::Call,
                source: "call.wav".into(),
                sha256: "00".into(),
                size_bytes: 1,
            })
            .await
            .unwrap();
        let generated = CallSummary {
            recap: "Outage reported.".into(),
            next_steps: vec!["Send a technician".into()],
            summary: "The customer reported an outage.".into(),
        };
        let result = RecordingResult {
            recording_id: "rec_call".into(),
            summary: Some(generated.clone()),
            ..Default::default()
        };
        store
            .add_result("rec_call", Outcome::Done(&result))
            .await
            .unwrap();
        let edited = CallSummary {
            recap: "Outage since Monday reported.".into(),
            ..generated.clone()
        };
        assert_eq!(
            store
                .edit_summary("rec_call", &edited, "bob", Some("en"))
                .await
                .unwrap(),
            1
        );
        assert_eq!(
            store
                .edit_summary("rec_call", &generated, "ann", None)
                .await
                .unwrap(),
            2
        );
        let versions = store.summary_versions("rec_call").await.unwrap();
        assert_eq!(versions.len(), 3);
        assert_eq!(versions[0].summary, generated);
        assert_eq!(versions[0].author, "generated");
        assert_eq!(versions[1].summary, edited);
        assert_eq!(versions[1].author, "bob");
        assert_eq!(versions[2].author, "ann");
        // An edit of a recording that does not exist is refused.
        assert!(
            store
                .edit_summary("rec_none", &edited, "bob", None)
                .await
                .is_err()
        );
    }
}
