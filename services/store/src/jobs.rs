//! Submissions from the PBX, their processing jobs, and the per-tenant view of recordings.
//!
//! A recording is known by `(tenant_id, recording_id)`, the PBX's own id; the store keys it
//! internally by [`recording_key`], so two tenants' ids never collide. Each recording has one or
//! more jobs (its submission, then each explicit reprocessing); each job writes at most one
//! result version, however often the queue redelivers it.

use std::fmt;

use companion_core::{ErrorReport, RecordingKind};
use sha2::{Digest, Sha256};
use tracing::{debug, info};

use super::{
    BeginWrite, Outcome, ResultColumns, ResultRow, Store, StoreError, StoredOutcome,
    WRITE_ATTEMPTS, is_unique_violation, kind_from_name, kind_name, now_ms, stored_outcome,
};

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Queued,
    Processing,
    Done,
    Failed,
}

impl JobState {
    pub const ALL: [JobState; 4] = [
        JobState::Queued,
        JobState::Processing,
        JobState::Done,
        JobState::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Processing => "processing",
            JobState::Done => "done",
            JobState::Failed => "failed",
        }
    }

    fn from_name(name: &str) -> Result<JobState, StoreError> {
        Ok(serde_json::from_value(serde_json::Value::String(
            name.to_string(),
        ))?)
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the audio of a submission is found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AudioSource {
    /// Audio the worker fetches itself (`file:///…`).
    Uri(String),
    /// Audio sent with the submission; kept in the store until the recording is deleted.
    Inline(Vec<u8>),
}

/// A recording submitted by a PBX.
#[derive(Debug, Clone)]
pub struct NewSubmission {
    pub tenant_id: String,
    /// The PBX's id of the recording, unique within the tenant.
    pub recording_id: String,
    pub user_id: Option<String>,
    pub kind: RecordingKind,
    pub filename: String,
    pub source: AudioSource,
    /// Hex SHA-256 of the audio; empty when unknown (audio behind a URI).
    pub sha256: String,
    pub size_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submitted {
    pub job_id: String,
    /// False: the recording was already known; `job_id` is its latest job and nothing changed.
    pub created: bool,
}

/// A job with what a worker needs of its recording.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRecord {
    pub job_id: String,
    pub tenant_id: String,
    /// The PBX's id of the recording.
    pub recording_id: String,
    /// The store's key of the recording (for [`Store::audio`], results and summary edits).
    pub recording_key: String,
    pub user_id: Option<String>,
    pub kind: RecordingKind,
    pub filename: String,
    /// None: the audio is inline in the store ([`Store::audio`]).
    pub source_uri: Option<String>,
    pub state: JobState,
    pub attempts: u32,
    /// The last error: why the job failed, or why its last attempt is being retried.
    pub error: Option<ErrorReport>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

/// A recording as a tenant sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordingView {
    /// The recording's latest job.
    pub job: JobRecord,
    /// That job's result if it finished; else the recording's latest result, if any.
    pub result: Option<StoredOutcome>,
    /// The version of `result`.
    pub version: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finished {
    pub version: i64,
    /// False: this job already had a result; nothing was written.
    pub first: bool,
}

/// The store's key of a tenant's recording: `rk_` and 24 hex digits of
/// SHA-256(tenant \0 recording id).
pub fn recording_key(tenant_id: &str, recording_id: &str) -> String {
    let digest = Sha256::new()
        .chain_update(tenant_id.as_bytes())
        .chain_update([0u8])
        .chain_update(recording_id.as_bytes())
        .finalize();
    let mut key = String::from("rk_");
    key.push_str(&hex(&digest[..12]));
    key
}

const DEFAULT_PAGE_SIZE: u32 = 50;
const MAX_PAGE_SIZE: u32 = 1000;
const MAX_ID_LEN: usize = 512;

fn check_id(what: &str, id: &str) -> Result<(), StoreError> {
    if id.trim().is_empty() {
        return Err(StoreError::InvalidArgument(format!("{what} is empty")));
    }
    if id.len() > MAX_ID_LEN {
        return Err(StoreError::InvalidArgument(format!(
            "{what} is longer than {MAX_ID_LEN} bytes"
        )));
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A page token: the (created_at_ms, key) of the last recording of the previous page, hex-encoded
/// so callers treat it as opaque.
fn page_token(created_at_ms: i64, key: &str) -> String {
    hex(format!("{created_at_ms}:{key}").as_bytes())
}

fn parse_page_token(token: &str) -> Result<(i64, String), StoreError> {
    let malformed = || StoreError::InvalidArgument(format!("malformed page token {token:?}"));
    if !token.len().is_multiple_of(2) || !token.is_ascii() {
        return Err(malformed());
    }
    let bytes = (0..token.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&token[i..i + 2], 16))
        .collect::<Result<Vec<u8>, _>>()
        .map_err(|_| malformed())?;
    let text = String::from_utf8(bytes).map_err(|_| malformed())?;
    let (ms, key) = text.split_once(':').ok_or_else(malformed)?;
    let ms = ms.parse::<i64>().map_err(|_| malformed())?;
    if key.is_empty() {
        return Err(malformed());
    }
    Ok((ms, key.to_string()))
}

/// The columns of a job joined with its recording, decoded as [`JobRow`].
macro_rules! job_select {
    () => {
        "SELECT j.job_id, r.tenant_id, COALESCE(r.external_id, r.id), r.id, r.user_id, r.kind,
             COALESCE(r.filename, ''), r.source_uri, j.state, j.attempts, j.error_kind,
             j.error_message, j.created_at_ms, j.updated_at_ms, r.created_at_ms
         FROM jobs j JOIN recordings r ON r.id = j.recording_key"
    };
}

type JobRow = (
    String,
    String,
    String,
    String,
    Option<String>,
    String,
    String,
    Option<String>,
    String,
    i64,
    Option<String>,
    Option<String>,
    i64,
    i64,
    i64,
);

/// Decodes a job row; also returns the recording's creation time (for page tokens).
fn job_from_row(row: JobRow) -> Result<(JobRecord, i64), StoreError> {
    let (
        job_id,
        tenant_id,
        recording_id,
        recording_key,
        user_id,
        kind,
        filename,
        source_uri,
        state,
        attempts,
        error_kind,
        error_message,
        created_at_ms,
        updated_at_ms,
        recording_created_at_ms,
    ) = row;
    let error = match error_kind {
        Some(kind) => Some(ErrorReport {
            kind: super::error_kind_from_name(&kind)?,
            message: error_message.unwrap_or_default(),
        }),
        None => None,
    };
    let job = JobRecord {
        job_id,
        tenant_id,
        recording_id,
        recording_key,
        user_id,
        kind: kind_from_name(&kind)?,
        filename,
        source_uri,
        state: JobState::from_name(&state)?,
        attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
        error,
        created_at_ms,
        updated_at_ms,
    };
    Ok((job, recording_created_at_ms))
}

impl Store {
    /// Registers a recording and its first (queued) job `job_id`. Idempotent on
    /// `(tenant_id, recording_id)`: a known recording is left unchanged and its latest job id is
    /// returned with `created: false`. Concurrent submissions of one recording make one
    /// recording and one job.
    pub async fn submit(&self, s: &NewSubmission, job_id: &str) -> Result<Submitted, StoreError> {
        check_id("tenant id", &s.tenant_id)?;
        check_id("recording id", &s.recording_id)?;
        check_id("job id", job_id)?;
        let key = recording_key(&s.tenant_id, &s.recording_id);
        let (source, source_uri, audio) = match &s.source {
            AudioSource::Uri(uri) => (uri.as_str(), Some(uri.as_str()), None),
            AudioSource::Inline(audio) => (s.filename.as_str(), None, Some(audio.as_slice())),
        };
        let now = now_ms();
        let submitted = on_pool!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            // On PostgreSQL a concurrent insert of the same recording waits here for the other
            // transaction, then does nothing if it committed.
            let inserted = sqlx::query(
                "INSERT INTO recordings (id, tenant_id, external_id, user_id, kind, source,
                     source_uri, filename, sha256, size_bytes, created_at_ms)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
                 ON CONFLICT DO NOTHING",
            )
            .bind(&key)
            .bind(&s.tenant_id)
            .bind(&s.recording_id)
            .bind(&s.user_id)
            .bind(kind_name(s.kind))
            .bind(source)
            .bind(source_uri)
            .bind(&s.filename)
            .bind(&s.sha256)
            .bind(s.size_bytes as i64)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            let key = if inserted.rows_affected() == 1 {
                if let Some(audio) = audio {
                    sqlx::query(
                        "INSERT INTO recording_audio (recording_key, audio) VALUES ($1, $2)",
                    )
                    .bind(&key)
                    .bind(audio)
                    .execute(&mut *tx)
                    .await?;
                }
                key
            } else {
                let existing: Option<String> = sqlx::query_scalar(
                    "SELECT id FROM recordings WHERE tenant_id = $1 AND external_id = $2",
                )
                .bind(&s.tenant_id)
                .bind(&s.recording_id)
                .fetch_optional(&mut *tx)
                .await?;
                let Some(existing) = existing else {
                    return Err(StoreError::InvalidArgument(format!(
                        "recording key {key} of {}/{} is taken by another recording",
                        s.tenant_id, s.recording_id
                    )));
                };
                let latest: Option<String> = sqlx::query_scalar(
                    "SELECT job_id FROM jobs WHERE recording_key = $1 ORDER BY seq DESC LIMIT 1",
                )
                .bind(&existing)
                .fetch_optional(&mut *tx)
                .await?;
                if let Some(latest) = latest {
                    tx.rollback().await?;
                    return Ok(Submitted {
                        job_id: latest,
                        created: false,
                    });
                }
                // Known (written by the CLI) but never processed as a job.
                existing
            };
            sqlx::query(
                "INSERT INTO jobs (job_id, recording_key, seq, state, attempts, created_at_ms,
                     updated_at_ms)
                 SELECT $1, $2, COALESCE(MAX(seq), 0) + 1, 'queued', 0, $3, $3
                 FROM jobs WHERE recording_key = $2",
            )
            .bind(job_id)
            .bind(&key)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Submitted {
                job_id: job_id.to_string(),
                created: true,
            }
        });
        info!(
            tenant_id = s.tenant_id,
            recording_id = s.recording_id,
            job_id,
            "recording submitted"
        );
        Ok(submitted)
    }

    /// Adds a queued job `job_id` to an existing recording (its result will be a new version).
    /// None if the tenant has no such recording. Repeating the call with the same job id
    /// returns it again without adding another job.
    pub async fn reprocess(
        &self,
        tenant_id: &str,
        recording_id: &str,
        job_id: &str,
    ) -> Result<Option<String>, StoreError> {
        check_id("job id", job_id)?;
        let mut attempt = 1;
        loop {
            let now = now_ms();
            let inserted = on_pool!(self, |pool| sqlx::query(
                "INSERT INTO jobs (job_id, recording_key, seq, state, attempts, created_at_ms,
                     updated_at_ms)
                 SELECT $1, r.id,
                     COALESCE((SELECT MAX(l.seq) FROM jobs l WHERE l.recording_key = r.id), 0) + 1,
                     'queued', 0, $4, $4
                 FROM recordings r WHERE r.tenant_id = $2 AND r.external_id = $3",
            )
            .bind(job_id)
            .bind(tenant_id)
            .bind(recording_id)
            .bind(now)
            .execute(pool)
            .await
            .map(|done| done.rows_affected()));
            match inserted {
                Ok(0) => return Ok(None),
                Ok(_) => {
                    info!(tenant_id, recording_id, job_id, "reprocessing queued");
                    return Ok(Some(job_id.to_string()));
                }
                Err(e) if is_unique_violation(&e) => {
                    if let Some(job) = self.job(job_id).await? {
                        if job.tenant_id == tenant_id && job.recording_id == recording_id {
                            return Ok(Some(job_id.to_string()));
                        }
                        return Err(StoreError::InvalidArgument(format!(
                            "job id {job_id} belongs to another recording"
                        )));
                    }
                    if attempt >= WRITE_ATTEMPTS {
                        return Err(e.into());
                    }
                    // Another reprocessing took the same sequence number.
                    attempt += 1;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// A job and its recording.
    pub async fn job(&self, job_id: &str) -> Result<Option<JobRecord>, StoreError> {
        let row: Option<JobRow> = on_pool!(self, |pool| sqlx::query_as(concat!(
            job_select!(),
            " WHERE j.job_id = $1"
        ))
        .bind(job_id)
        .fetch_optional(pool)
        .await)?;
        Ok(row.map(job_from_row).transpose()?.map(|(job, _)| job))
    }

    /// The audio of a recording submitted inline; None for audio behind a URI.
    pub async fn audio(&self, recording_key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(on_pool!(self, |pool| sqlx::query_scalar(
            "SELECT audio FROM recording_audio WHERE recording_key = $1"
        )
        .bind(recording_key)
        .fetch_optional(pool)
        .await)?)
    }

    /// Marks a queued (or interrupted, still processing) job as processing and counts the
    /// attempt; returns the updated job. A done or failed job is returned unchanged. None if
    /// the job no longer exists (its recording was deleted).
    pub async fn start_attempt(&self, job_id: &str) -> Result<Option<JobRecord>, StoreError> {
        let row: Option<JobRow> = on_pool!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            sqlx::query(
                "UPDATE jobs SET state = 'processing', attempts = attempts + 1, updated_at_ms = $2
                 WHERE job_id = $1 AND state IN ('queued', 'processing')",
            )
            .bind(job_id)
            .bind(now_ms())
            .execute(&mut *tx)
            .await?;
            let row = sqlx::query_as(concat!(job_select!(), " WHERE j.job_id = $1"))
                .bind(job_id)
                .fetch_optional(&mut *tx)
                .await?;
            tx.commit().await?;
            row
        });
        let job = row.map(job_from_row).transpose()?.map(|(job, _)| job);
        if let Some(job) = &job {
            debug!(job_id, state = %job.state, attempts = job.attempts, "attempt started");
        }
        Ok(job)
    }

    /// Puts a processing job back in the queue after a transient failure, keeping `error` as its
    /// last error. A finished or missing job is left alone.
    pub async fn retry_later(&self, job_id: &str, error: &ErrorReport) -> Result<(), StoreError> {
        on_pool!(self, |pool| sqlx::query(
            "UPDATE jobs SET state = 'queued', error_kind = $2, error_message = $3,
                 updated_at_ms = $4
             WHERE job_id = $1 AND state IN ('queued', 'processing')",
        )
        .bind(job_id)
        .bind(error.kind.as_str())
        .bind(&error.message)
        .bind(now_ms())
        .execute(pool)
        .await
        .map(|done| done.rows_affected()))?;
        debug!(job_id, error = %error.message, "job back in the queue");
        Ok(())
    }

    /// Stores a job's outcome as the recording's next result version and marks the job done or
    /// failed, in one transaction. If the job already has a result (a redelivery), nothing is
    /// written and that result's version is returned with `first: false`. None if the job no
    /// longer exists.
    pub async fn finish(
        &self,
        job_id: &str,
        outcome: Outcome<'_>,
    ) -> Result<Option<Finished>, StoreError> {
        let cols = ResultColumns::new(outcome.clone())?;
        let (state, error_kind, error_message) = match outcome {
            Outcome::Done(_) => (JobState::Done, None, None),
            Outcome::Failed(e) => (JobState::Failed, Some(e.kind.as_str()), Some(&e.message)),
        };
        let finished = on_pool!(self, |pool| {
            let mut attempt = 1;
            loop {
                let mut tx = pool.begin_write().await?;
                let key: Option<String> =
                    sqlx::query_scalar("SELECT recording_key FROM jobs WHERE job_id = $1")
                        .bind(job_id)
                        .fetch_optional(&mut *tx)
                        .await?;
                let Some(key) = key else { return Ok(None) };
                let existing: Option<i64> = sqlx::query_scalar(
                    "SELECT CAST(version AS BIGINT) FROM results WHERE job_id = $1",
                )
                .bind(job_id)
                .fetch_optional(&mut *tx)
                .await?;
                if let Some(version) = existing {
                    tx.rollback().await?;
                    break Finished {
                        version,
                        first: false,
                    };
                }
                let version = match insert_result!(tx, &key, Some(job_id), &cols) {
                    Ok(version) => version,
                    // A concurrent finish of this job (its result) or of another job of the
                    // recording (the version number): look again.
                    Err(e) if is_unique_violation(&e) && attempt < WRITE_ATTEMPTS => {
                        attempt += 1;
                        continue;
                    }
                    Err(e) => return Err(e.into()),
                };
                sqlx::query(
                    "UPDATE jobs SET state = $2, error_kind = $3, error_message = $4,
                         updated_at_ms = $5
                     WHERE job_id = $1",
                )
                .bind(job_id)
                .bind(state.as_str())
                .bind(error_kind)
                .bind(error_message)
                .bind(now_ms())
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                break Finished {
                    version,
                    first: true,
                };
            }
        });
        debug!(job_id, version = finished.version, first = finished.first, %state, "job finished");
        Ok(Some(finished))
    }

    /// A tenant's recording with its latest job and result. None if the tenant has no such
    /// recording, or it was never processed as a job (a CLI-only recording).
    pub async fn recording(
        &self,
        tenant_id: &str,
        recording_id: &str,
    ) -> Result<Option<RecordingView>, StoreError> {
        let row: Option<JobRow> = on_pool!(self, |pool| sqlx::query_as(concat!(
            job_select!(),
            " WHERE r.tenant_id = $1 AND r.external_id = $2 ORDER BY j.seq DESC LIMIT 1"
        ))
        .bind(tenant_id)
        .bind(recording_id)
        .fetch_optional(pool)
        .await)?;
        match row {
            Some(row) => Ok(Some(self.view(job_from_row(row)?.0).await?)),
            None => Ok(None),
        }
    }

    /// A page of a tenant's recordings (optionally one user's), newest first, and the token of
    /// the next page (None on the last). `page_size` 0 means 50; at most 1000. Recordings added
    /// while paging do not shift later pages. Recordings never processed as a job are not listed.
    pub async fn list_recordings(
        &self,
        tenant_id: &str,
        user_id: Option<&str>,
        page_size: u32,
        page_token: Option<&str>,
    ) -> Result<(Vec<RecordingView>, Option<String>), StoreError> {
        let token = page_token;
        let page_size = match page_size {
            0 => DEFAULT_PAGE_SIZE,
            n => n.min(MAX_PAGE_SIZE),
        };
        let after = token
            .filter(|t| !t.is_empty())
            .map(parse_page_token)
            .transpose()?;
        let (after_ms, after_key) = after.unzip();
        let rows: Vec<JobRow> = on_pool!(self, |pool| sqlx::query_as(concat!(
            job_select!(),
            " WHERE r.tenant_id = $1 AND ($2 IS NULL OR r.user_id = $2)
                AND j.seq = (SELECT MAX(l.seq) FROM jobs l WHERE l.recording_key = r.id)
                AND ($3 IS NULL OR r.created_at_ms < $3
                     OR (r.created_at_ms = $3 AND r.id < $4))
              ORDER BY r.created_at_ms DESC, r.id DESC LIMIT $5"
        ))
        .bind(tenant_id)
        .bind(user_id)
        .bind(after_ms)
        .bind(after_key)
        .bind(i64::from(page_size) + 1)
        .fetch_all(pool)
        .await)?;
        let more = rows.len() > page_size as usize;
        let mut views = Vec::with_capacity(rows.len().min(page_size as usize));
        let mut last = None;
        for row in rows.into_iter().take(page_size as usize) {
            let (job, recording_created_at_ms) = job_from_row(row)?;
            last = Some(self::page_token(
                recording_created_at_ms,
                &job.recording_key,
            ));
            views.push(self.view(job).await?);
        }
        Ok((views, if more { last } else { None }))
    }

    /// The view of a recording given its latest job.
    async fn view(&self, job: JobRecord) -> Result<RecordingView, StoreError> {
        let row: Option<ResultRow> = on_pool!(self, |pool| sqlx::query_as(concat!(
            result_select!(),
            " WHERE recording_id = $1
              ORDER BY CASE WHEN job_id = $2 THEN 1 ELSE 0 END DESC, version DESC LIMIT 1"
        ))
        .bind(&job.recording_key)
        .bind(&job.job_id)
        .fetch_optional(pool)
        .await)?;
        let (version, result) = row.map(stored_outcome).transpose()?.unzip();
        Ok(RecordingView {
            job,
            result,
            version,
        })
    }

    /// Deletes a tenant's recording with its jobs, results, summary edits and stored audio, in
    /// one transaction. Returns `Some(source_uri)` (so the caller can remove audio behind it) if
    /// the recording existed.
    pub async fn delete_recording(
        &self,
        tenant_id: &str,
        recording_id: &str,
    ) -> Result<Option<Option<String>>, StoreError> {
        let deleted = on_pool!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            let found: Option<(String, Option<String>)> = sqlx::query_as(
                "SELECT id, source_uri FROM recordings WHERE tenant_id = $1 AND external_id = $2",
            )
            .bind(tenant_id)
            .bind(recording_id)
            .fetch_optional(&mut *tx)
            .await?;
            let Some((key, source_uri)) = found else {
                return Ok(None);
            };
            // summary_edits has no ON DELETE CASCADE; the others do, but are named here so the
            // deletion does not depend on SQLite's foreign_keys pragma.
            for statement in [
                "DELETE FROM summary_edits WHERE recording_id = $1",
                "DELETE FROM results WHERE recording_id = $1",
                "DELETE FROM jobs WHERE recording_key = $1",
                "DELETE FROM recording_audio WHERE recording_key = $1",
                "DELETE FROM recordings WHERE id = $1",
            ] {
                sqlx::query(statement).bind(&key).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            source_uri
        });
        info!(tenant_id, recording_id, "recording deleted");
        Ok(Some(deleted))
    }

    /// How many jobs are in each state (every state, zeros included).
    pub async fn job_counts(&self) -> Result<Vec<(JobState, i64)>, StoreError> {
        let rows: Vec<(String, i64)> = on_pool!(self, |pool| sqlx::query_as(
            "SELECT state, COUNT(*) FROM jobs GROUP BY state"
        )
        .fetch_all(pool)
        .await)?;
        let mut counts = JobState::ALL.map(|state| (state, 0));
        for (state, n) in rows {
            let state = JobState::from_name(&state)?;
            if let Some(count) = counts.iter_mut().find(|(s, _)| *s == state) {
                count.1 = n;
            }
        }
        Ok(counts.to_vec())
    }

    /// Whether the database answers (readiness probe).
    pub async fn ping(&self) -> Result<(), StoreError> {
        on_pool!(self, |pool| sqlx::query("SELECT 1")
            .execute(pool)
            .await
            .map(|done| done.rows_affected()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{TestDb, backend_tests};
    use crate::{NewRecording, RecordingResult};
    use companion_core::{CallSummary, Classify, ErrorKind, Transcript};
    use std::collections::HashSet;

    fn submission(tenant: &str, id: &str, source: AudioSource) -> NewSubmission {
        NewSubmission {
            tenant_id: tenant.into(),
            recording_id: id.into(),
            user_id: Some("u1".into()),
            kind: RecordingKind::Call,
            filename: format!("{id}.wav"),
            source,
            sha256: String::new(),
            size_bytes: 5,
        }
    }

    fn inline(tenant: &str, id: &str) -> NewSubmission {
        submission(tenant, id, AudioSource::Inline(b"12345".to_vec()))
    }

    fn done(text: &str) -> RecordingResult {
        RecordingResult {
            transcript: Transcript {
                text: text.into(),
                segments: vec![],
            },
            summary: Some(CallSummary {
                recap: "r".into(),
                next_steps: vec![],
                summary: "s".into(),
            }),
            ..Default::default()
        }
    }

    fn transient() -> ErrorReport {
        ErrorReport {
            kind: ErrorKind::Model,
            message: "model busy".into(),
        }
    }

    backend_tests!(
        submissions_are_idempotent_and_keep_their_audio,
        concurrent_submissions_make_one_recording_and_one_job,
        a_job_writes_one_result_however_often_it_finishes,
        attempts_and_retries_are_counted,
        reprocessing_adds_a_job_and_a_version,
        tenants_are_isolated,
        paging_is_newest_first_and_stable,
        deleting_removes_everything,
        job_counts_cover_every_state,
        recordings_from_before_jobs_can_be_reprocessed,
    );

    async fn submissions_are_idempotent_and_keep_their_audio(db: &TestDb) {
        let store = &db.store;
        store.ping().await.unwrap();
        // Bytes that look like a number must stay a blob; so must ones that are not UTF-8.
        let first = store.submit(&inline("t1", "r1"), "job_1").await.unwrap();
        assert_eq!(
            first,
            Submitted {
                job_id: "job_1".into(),
                created: true
            }
        );
        let again = store.submit(&inline("t1", "r1"), "job_2").await.unwrap();
        assert_eq!(
            again,
            Submitted {
                job_id: "job_1".into(),
                created: false
            }
        );
        assert!(store.job("job_2").await.unwrap().is_none());

        let job = store.job("job_1").await.unwrap().unwrap();
        assert_eq!(job.tenant_id, "t1");
        assert_eq!(job.recording_id, "r1");
        assert_eq!(job.recording_key, recording_key("t1", "r1"));
        assert!(job.recording_key.starts_with("rk_") && job.recording_key.len() == 27);
        assert_eq!(job.user_id.as_deref(), Some("u1"));
        assert_eq!(job.kind, RecordingKind::Call);
        assert_eq!(job.filename, "r1.wav");
        assert_eq!(job.source_uri, None);
        assert_eq!(
            (job.state, job.attempts, job.error),
            (JobState::Queued, 0, None)
        );
        assert_eq!(job.created_at_ms, job.updated_at_ms);
        assert_eq!(
            store.audio(&job.recording_key).await.unwrap(),
            Some(b"12345".to_vec())
        );

        let binary: Vec<u8> = (0..=255).collect();
        store
            .submit(
                &submission("t1", "r2", AudioSource::Inline(binary.clone())),
                "job_3",
            )
            .await
            .unwrap();
        assert_eq!(
            store.audio(&recording_key("t1", "r2")).await.unwrap(),
            Some(binary)
        );

        let uri = "file:///var/spool/r3.wav";
        store
            .submit(
                &submission("t1", "r3", AudioSource::Uri(uri.into())),
                "job_4",
            )
            .await
            .unwrap();
        let job = store.job("job_4").await.unwrap().unwrap();
        assert_eq!(job.source_uri.as_deref(), Some(uri));
        assert_eq!(store.audio(&job.recording_key).await.unwrap(), None);

        let err = store.submit(&inline("", "r9"), "job_9").await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    }

    async fn concurrent_submissions_make_one_recording_and_one_job(db: &TestDb) {
        let submits: Vec<_> = (0..8)
            .map(|i| {
                let store = db.store.clone();
                tokio::spawn(async move {
                    store
                        .submit(&inline("t1", "race"), &format!("job_{i}"))
                        .await
                })
            })
            .collect();
        let mut results = Vec::new();
        for submit in submits {
            results.push(submit.await.unwrap().unwrap());
        }
        let winner = &results.iter().find(|r| r.created).unwrap().job_id;
        assert_eq!(results.iter().filter(|r| r.created).count(), 1);
        assert!(results.iter().all(|r| &r.job_id == winner), "{results:?}");
        let (page, _) = db
            .store
            .list_recordings("t1", None, 10, None)
            .await
            .unwrap();
        assert_eq!(page.len(), 1);
        let total: i64 = db
            .store
            .job_counts()
            .await
            .unwrap()
            .iter()
            .map(|c| c.1)
            .sum();
        assert_eq!(total, 1);
    }

    async fn a_job_writes_one_result_however_often_it_finishes(db: &TestDb) {
        let store = &db.store;
        store.submit(&inline("t1", "r1"), "job_1").await.unwrap();
        store.start_attempt("job_1").await.unwrap().unwrap();
        let first = store
            .finish("job_1", Outcome::Done(&done("hello")))
            .await
            .unwrap();
        assert_eq!(
            first,
            Some(Finished {
                version: 1,
                first: true
            })
        );
        // A redelivery, even one that ends differently, writes nothing.
        let again = store
            .finish("job_1", Outcome::Failed(&transient()))
            .await
            .unwrap();
        assert_eq!(
            again,
            Some(Finished {
                version: 1,
                first: false
            })
        );
        let key = recording_key("t1", "r1");
        assert_eq!(store.result_count(&key).await.unwrap(), 1);
        let job = store.job("job_1").await.unwrap().unwrap();
        assert_eq!((job.state, job.error), (JobState::Done, None));
        // A finished job is not restarted by a redelivery.
        let job = store.start_attempt("job_1").await.unwrap().unwrap();
        assert_eq!((job.state, job.attempts), (JobState::Done, 1));

        // Concurrent finishes of one job: one writes.
        store.submit(&inline("t1", "r2"), "job_2").await.unwrap();
        let finishes: Vec<_> = (0..4)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    store
                        .finish("job_2", Outcome::Done(&done(&format!("t{i}"))))
                        .await
                })
            })
            .collect();
        let mut firsts = 0;
        for finish in finishes {
            let finished = finish.await.unwrap().unwrap().unwrap();
            assert_eq!(finished.version, 1);
            firsts += usize::from(finished.first);
        }
        assert_eq!(firsts, 1);
        assert_eq!(
            store
                .result_count(&recording_key("t1", "r2"))
                .await
                .unwrap(),
            1
        );

        assert_eq!(
            store
                .finish("job_none", Outcome::Done(&done("x")))
                .await
                .unwrap(),
            None
        );
    }

    async fn attempts_and_retries_are_counted(db: &TestDb) {
        let store = &db.store;
        store.submit(&inline("t1", "r1"), "job_1").await.unwrap();
        let job = store.start_attempt("job_1").await.unwrap().unwrap();
        assert_eq!((job.state, job.attempts), (JobState::Processing, 1));
        store.retry_later("job_1", &transient()).await.unwrap();
        let job = store.job("job_1").await.unwrap().unwrap();
        assert_eq!(job.state, JobState::Queued);
        assert_eq!(job.error, Some(transient()));
        assert!(job.updated_at_ms >= job.created_at_ms);
        let job = store.start_attempt("job_1").await.unwrap().unwrap();
        assert_eq!((job.state, job.attempts), (JobState::Processing, 2));
        // A worker that died mid-attempt: the redelivery counts another attempt.
        let job = store.start_attempt("job_1").await.unwrap().unwrap();
        assert_eq!(job.attempts, 3);

        let fatal = ErrorReport {
            kind: ErrorKind::CorruptAudio,
            message: "not audio".into(),
        };
        store
            .finish("job_1", Outcome::Failed(&fatal))
            .await
            .unwrap()
            .unwrap();
        let job = store.job("job_1").await.unwrap().unwrap();
        assert_eq!((job.state, job.attempts), (JobState::Failed, 3));
        assert_eq!(job.error, Some(fatal.clone()));
        // Neither a retry nor a new attempt changes a failed job.
        store.retry_later("job_1", &transient()).await.unwrap();
        let unchanged = store.start_attempt("job_1").await.unwrap().unwrap();
        assert_eq!(unchanged, job);
        let view = store.recording("t1", "r1").await.unwrap().unwrap();
        assert_eq!(view.result, Some(StoredOutcome::Failed(fatal)));

        assert_eq!(store.start_attempt("job_none").await.unwrap(), None);
        store.retry_later("job_none", &transient()).await.unwrap();
    }

    async fn reprocessing_adds_a_job_and_a_version(db: &TestDb) {
        let store = &db.store;
        store.submit(&inline("t1", "r1"), "job_1").await.unwrap();
        store
            .finish("job_1", Outcome::Done(&done("first")))
            .await
            .unwrap();
        assert_eq!(
            store
                .reprocess("t1", "r1", "job_2")
                .await
                .unwrap()
                .as_deref(),
            Some("job_2")
        );
        // A repeated request with the same job id adds nothing.
        assert_eq!(
            store
                .reprocess("t1", "r1", "job_2")
                .await
                .unwrap()
                .as_deref(),
            Some("job_2")
        );
        // A job id in use by another recording is refused.
        store.submit(&inline("t1", "r2"), "job_r2").await.unwrap();
        let err = store.reprocess("t1", "r2", "job_2").await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
        assert_eq!(
            store.reprocess("t1", "missing", "job_3").await.unwrap(),
            None
        );
        assert_eq!(store.reprocess("t2", "r1", "job_3").await.unwrap(), None);

        // While the new job runs, the view shows it with the previous result.
        let view = store.recording("t1", "r1").await.unwrap().unwrap();
        assert_eq!(
            (view.job.job_id.as_str(), view.job.state),
            ("job_2", JobState::Queued)
        );
        assert_eq!(view.version, Some(1));
        // A new submission of the recording answers with the latest job.
        let again = store.submit(&inline("t1", "r1"), "job_4").await.unwrap();
        assert_eq!(again.job_id, "job_2");

        let finished = store
            .finish("job_2", Outcome::Done(&done("second")))
            .await
            .unwrap();
        assert_eq!(
            finished,
            Some(Finished {
                version: 2,
                first: true
            })
        );
        let view = store.recording("t1", "r1").await.unwrap().unwrap();
        assert_eq!(view.version, Some(2));
        match view.result {
            Some(StoredOutcome::Done(r)) => assert_eq!(r.transcript.text, "second"),
            other => panic!("unexpected {other:?}"),
        }
        // A late redelivery of the first job changes nothing.
        let late = store
            .finish("job_1", Outcome::Done(&done("late")))
            .await
            .unwrap();
        assert_eq!(
            late,
            Some(Finished {
                version: 1,
                first: false
            })
        );
        assert_eq!(
            store
                .result_count(&recording_key("t1", "r1"))
                .await
                .unwrap(),
            2
        );
    }

    async fn tenants_are_isolated(db: &TestDb) {
        let store = &db.store;
        let a = store
            .submit(&inline("tenant_a", "r1"), "job_a")
            .await
            .unwrap();
        let b = store
            .submit(&inline("tenant_b", "r1"), "job_b")
            .await
            .unwrap();
        assert!(a.created && b.created);
        let job_a = store.job("job_a").await.unwrap().unwrap();
        let job_b = store.job("job_b").await.unwrap().unwrap();
        assert_ne!(job_a.recording_key, job_b.recording_key);
        store
            .finish("job_a", Outcome::Done(&done("for a")))
            .await
            .unwrap();

        let view_b = store.recording("tenant_b", "r1").await.unwrap().unwrap();
        assert_eq!(view_b.job.job_id, "job_b");
        assert_eq!(view_b.result, None);
        store
            .submit(&inline("tenant_a", "only_a"), "job_a2")
            .await
            .unwrap();
        assert_eq!(store.recording("tenant_b", "only_a").await.unwrap(), None);
        assert_eq!(
            store.delete_recording("tenant_b", "only_a").await.unwrap(),
            None
        );
        assert_eq!(
            store
                .reprocess("tenant_b", "only_a", "job_x")
                .await
                .unwrap(),
            None
        );
        let (listed_b, _) = store
            .list_recordings("tenant_b", None, 10, None)
            .await
            .unwrap();
        assert_eq!(listed_b.len(), 1);
        let (listed_a, _) = store
            .list_recordings("tenant_a", None, 10, None)
            .await
            .unwrap();
        assert_eq!(listed_a.len(), 2);

        // Deleting B's r1 leaves A's.
        assert!(
            store
                .delete_recording("tenant_b", "r1")
                .await
                .unwrap()
                .is_some()
        );
        assert!(
            store
                .recording("tenant_a", "r1")
                .await
                .unwrap()
                .unwrap()
                .result
                .is_some()
        );
        assert!(
            store
                .recording("tenant_a", "only_a")
                .await
                .unwrap()
                .is_some()
        );
    }

    async fn paging_is_newest_first_and_stable(db: &TestDb) {
        let store = &db.store;
        for i in 0..25 {
            let mut s = inline("t1", &format!("r{i:02}"));
            if i % 5 == 0 {
                s.user_id = Some("u2".into());
            }
            store.submit(&s, &format!("job_{i}")).await.unwrap();
        }
        store
            .submit(&inline("t2", "other"), "job_other")
            .await
            .unwrap();

        let mut seen = Vec::new();
        let mut sizes = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let (page, next) = store
                .list_recordings("t1", None, 10, token.as_deref())
                .await
                .unwrap();
            sizes.push(page.len());
            seen.extend(
                page.iter()
                    .map(|v| (v.job.created_at_ms, v.job.recording_key.clone())),
            );
            if seen.len() == 10 {
                // A recording arriving mid-way sorts before the first page: later pages are
                // unaffected.
                store
                    .submit(&inline("t1", "late"), "job_late")
                    .await
                    .unwrap();
            }
            match next {
                Some(next) => token = Some(next),
                None => break,
            }
        }
        assert_eq!(sizes, vec![10, 10, 5]);
        let distinct: HashSet<_> = seen.iter().map(|(_, key)| key.clone()).collect();
        assert_eq!(distinct.len(), 25);
        assert!(!distinct.contains(&recording_key("t1", "late")));
        let mut sorted = seen.clone();
        sorted.sort_by(|a, b| b.cmp(a));
        assert_eq!(seen, sorted, "newest first, ties by key");

        let (u2, next) = store
            .list_recordings("t1", Some("u2"), 0, None)
            .await
            .unwrap();
        assert_eq!((u2.len(), next), (5, None));
        assert!(u2.iter().all(|v| v.job.user_id.as_deref() == Some("u2")));

        for bad in ["zz", "abc", "3a", "6162"] {
            let err = store
                .list_recordings("t1", None, 10, Some(bad))
                .await
                .unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{bad}");
        }
    }

    async fn deleting_removes_everything(db: &TestDb) {
        let store = &db.store;
        store.submit(&inline("t1", "r1"), "job_1").await.unwrap();
        let key = recording_key("t1", "r1");
        store
            .finish("job_1", Outcome::Done(&done("hi")))
            .await
            .unwrap();
        store
            .edit_summary(&key, &done("x").summary.unwrap(), "bob", Some("en"))
            .await
            .unwrap();
        store.reprocess("t1", "r1", "job_2").await.unwrap().unwrap();
        store.submit(&inline("t1", "r2"), "job_3").await.unwrap();

        assert_eq!(
            store.delete_recording("t1", "r1").await.unwrap(),
            Some(None)
        );
        assert_eq!(store.delete_recording("t1", "r1").await.unwrap(), None);
        assert_eq!(store.recording("t1", "r1").await.unwrap(), None);
        assert_eq!(store.job("job_1").await.unwrap(), None);
        assert_eq!(store.job("job_2").await.unwrap(), None);
        assert_eq!(store.audio(&key).await.unwrap(), None);
        assert_eq!(store.result_count(&key).await.unwrap(), 0);
        assert!(store.summary_versions(&key).await.unwrap().is_empty());
        // A worker still holding a deleted job learns it is gone.
        assert_eq!(store.start_attempt("job_2").await.unwrap(), None);
        assert_eq!(
            store
                .finish("job_2", Outcome::Done(&done("x")))
                .await
                .unwrap(),
            None
        );
        // The same id can be submitted afresh; other recordings are untouched.
        assert!(
            store
                .submit(&inline("t1", "r1"), "job_4")
                .await
                .unwrap()
                .created
        );
        assert!(store.job("job_3").await.unwrap().is_some());

        let uri = "file:///spool/r5.wav";
        store
            .submit(
                &submission("t1", "r5", AudioSource::Uri(uri.into())),
                "job_5",
            )
            .await
            .unwrap();
        assert_eq!(
            store.delete_recording("t1", "r5").await.unwrap(),
            Some(Some(uri.to_string()))
        );
    }

    async fn job_counts_cover_every_state(db: &TestDb) {
        let store = &db.store;
        let zero: Vec<_> = JobState::ALL.iter().map(|s| (*s, 0)).collect();
        assert_eq!(store.job_counts().await.unwrap(), zero);
        for i in 0..4 {
            store
                .submit(&inline("t1", &format!("r{i}")), &format!("job_{i}"))
                .await
                .unwrap();
        }
        store.start_attempt("job_1").await.unwrap();
        store
            .finish("job_2", Outcome::Done(&done("x")))
            .await
            .unwrap();
        store
            .finish("job_3", Outcome::Failed(&transient()))
            .await
            .unwrap();
        store.submit(&inline("t1", "r4"), "job_4").await.unwrap();
        assert_eq!(
            store.job_counts().await.unwrap(),
            vec![
                (JobState::Queued, 2),
                (JobState::Processing, 1),
                (JobState::Done, 1),
                (JobState::Failed, 1)
            ]
        );
    }

    async fn recordings_from_before_jobs_can_be_reprocessed(db: &TestDb) {
        // A CLI recording (no job) is not listed, but can be reprocessed by its id and then is.
        let store = &db.store;
        store
            .upsert_recording(&NewRecording {
                id: "rec_cli".into(),
                tenant_id: "local".into(),
                user_id: None,
                kind: RecordingKind::Voicemail,
                source: "/tmp/a.wav".into(),
                sha256: "00".into(),
                size_bytes: 1,
            })
            .await
            .unwrap();
        store
            .add_result("rec_cli", Outcome::Done(&done("cli")))
            .await
            .unwrap();
        assert_eq!(store.recording("local", "rec_cli").await.unwrap(), None);
        assert_eq!(
            store
                .reprocess("local", "rec_cli", "job_1")
                .await
                .unwrap()
                .as_deref(),
            Some("job_1")
        );
        let view = store.recording("local", "rec_cli").await.unwrap().unwrap();
        assert_eq!(view.job.recording_key, "rec_cli");
        assert_eq!(view.job.source_uri, None);
        assert_eq!(view.version, Some(1));
        assert_eq!(
            store
                .finish("job_1", Outcome::Done(&done("again")))
                .await
                .unwrap(),
            Some(Finished {
                version: 2,
                first: true
            })
        );
        assert!(
            store
                .delete_recording("local", "rec_cli")
                .await
                .unwrap()
                .is_some()
        );
    }

    /// A database created before 0004 (the CLI's SQLite files) gets external ids for its rows.
    #[tokio::test]
    async fn migration_0004_keeps_existing_recordings_reachable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true);
        let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
        sqlx::migrate!("./migrations")
            .run_to(3, &pool)
            .await
            .unwrap();
        sqlx::query(
            "INSERT INTO recordings (id, tenant_id, user_id, kind, source, sha256, size_bytes,
                 created_at_ms)
             VALUES ('rec_old', 'local', NULL, 'voicemail', 'a.wav', '00', 1, 1)",
        )
        .execute(&pool)
        .await
        .unwrap();
        pool.close().await;

        let store = Store::open(path.to_str().unwrap()).await.unwrap();
        assert_eq!(
            store
                .reprocess("local", "rec_old", "job_1")
                .await
                .unwrap()
                .as_deref(),
            Some("job_1")
        );
        let job = store.job("job_1").await.unwrap().unwrap();
        assert_eq!(
            (job.recording_id.as_str(), job.recording_key.as_str()),
            ("rec_old", "rec_old")
        );
        assert_eq!(job.filename, "");
    }

    #[test]
    fn page_tokens_round_trip() {
        let token = page_token(1_700_000_000_123, "rk_00ff");
        assert_eq!(
            parse_page_token(&token).unwrap(),
            (1_700_000_000_123, "rk_00ff".to_string())
        );
        assert!(parse_page_token("é").is_err());
    }

    #[test]
    fn keys_separate_tenants() {
        assert_ne!(recording_key("a", "bc"), recording_key("ab", "c"));
        assert_eq!(recording_key("a", "b"), recording_key("a", "b"));
    }
}
