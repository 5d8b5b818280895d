//! The work queue in a SQLite table, for a single machine without a broker.
//!
//! * A job is a row of `queue_jobs` (own migrations, own migrations table
//!   `_companion_queue_migrations`, so it can live in the same database file as the store).
//! * A consumer claims the oldest due row with one `UPDATE … WHERE id = (SELECT …) RETURNING`,
//!   which takes a lease (`locked_until_ms`) and bumps `lease_id`. While the [`Delivery`] is
//!   alive a background task renews the lease every third of its length; when the worker
//!   process dies the renewals stop, the lease expires and the next claim takes the job over
//!   (`redelivered = true`).
//! * Settling needs the claim's `(id, lease_id)`: a holder whose lease was taken over gets
//!   [`QueueError::DeliveryLost`] instead of settling someone else's delivery.
//! * ack deletes the row; retry makes it `ready` again at now + backoff with `attempt + 1`;
//!   dead-lettering marks it `dead` with the reason in `last_error`.
//! * `publish` returns after the transaction is committed with `synchronous = FULL`.
//! * Result events go to a `tokio::sync::broadcast` channel inside this process: subscribers
//!   get the events published after they subscribed, filtered by topic pattern; one that falls
//!   more than `results_capacity` events behind gets [`QueueError::Lagged`]. Other processes
//!   sharing the database do not see them.

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use prost::Message;
use sqlx::Row;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, broadcast, watch};
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use crate::delivery::{DeliverySource, ResultSource, Settler};
use crate::{
    Consumer, DEFAULT_MAX_PAYLOAD_BYTES, DeadLetter, Delivery, Job, JobQueue, QueueError, Result,
    ResultReady, ResultSubscription, RetryPolicy, now_ms, prepare_job, result_routing_key,
    topic_matches,
};

/// How the embedded queue behaves.
#[derive(Debug, Clone)]
pub struct EmbeddedConfig {
    pub retry: RetryPolicy,
    /// How long a claimed job stays with its consumer without a lease renewal. Renewals run
    /// every third of it while the delivery is alive, so this only bounds how long a crashed
    /// worker's job waits before it is handed out again.
    pub lease: Duration,
    /// How often an idle consumer looks for work it was not woken for (jobs published by
    /// another process, expired leases). Jobs published through the same `EmbeddedQueue` and
    /// due retries wake consumers directly.
    pub poll_interval: Duration,
    /// Deliveries of one attempt that were never settled (crashes, drops) before the job is
    /// dead-lettered as a poison message; `None`: no limit.
    pub delivery_limit: Option<u32>,
    /// Result events buffered per subscriber before it lags.
    pub results_capacity: usize,
    pub max_payload_bytes: usize,
}

impl Default for EmbeddedConfig {
    fn default() -> Self {
        EmbeddedConfig {
            retry: RetryPolicy::default(),
            lease: Duration::from_secs(60),
            poll_interval: Duration::from_secs(1),
            delivery_limit: Some(10),
            results_capacity: 1024,
            max_payload_bytes: DEFAULT_MAX_PAYLOAD_BYTES,
        }
    }
}

/// Row counts of the queue table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EmbeddedStats {
    /// Waiting and due.
    pub ready: u64,
    /// Waiting for a retry backoff to pass.
    pub scheduled: u64,
    /// Claimed (leased) by a consumer.
    pub processing: u64,
    pub dead: u64,
}

/// The SQLite-backed [`JobQueue`]. Cheap to clone; clones share the pool.
#[derive(Clone)]
pub struct EmbeddedQueue {
    inner: Arc<Inner>,
}

struct Inner {
    pool: SqlitePool,
    config: EmbeddedConfig,
    /// Woken on publish, retry and release: an idle consumer should look again.
    wake: Notify,
    results: broadcast::Sender<Arc<(String, ResultReady)>>,
    closed: AtomicBool,
    closed_tx: watch::Sender<bool>,
}

struct Claimed {
    id: i64,
    lease_id: i64,
    job: Job,
    deliveries: i64,
    last_error: Option<String>,
}

impl EmbeddedQueue {
    /// Opens (creating if needed) the queue database and brings its schema up to date. Accepts
    /// a `sqlite:` URL or a plain file path; it may be the store's database file.
    pub async fn open(url: &str, config: EmbeddedConfig) -> Result<EmbeddedQueue> {
        if config.retry.max_attempts == 0 {
            return Err(QueueError::InvalidArgument(
                "retry.max_attempts must be at least 1".into(),
            ));
        }
        if config.lease < Duration::from_millis(30) {
            return Err(QueueError::InvalidArgument(
                "lease must be at least 30 ms".into(),
            ));
        }
        if url.contains(":memory:") || url.contains("mode=memory") {
            // Every pooled connection would get its own empty database.
            return Err(QueueError::InvalidArgument(
                "the embedded queue needs a database file, not an in-memory database".into(),
            ));
        }
        let url_form = if url.starts_with("sqlite:") {
            url.to_string()
        } else {
            format!("sqlite://{url}")
        };
        let options = SqliteConnectOptions::from_str(&url_form)
            .map_err(|e| QueueError::InvalidArgument(format!("database address {url:?}: {e}")))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // publish promises durability: fsync on every commit
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await?;
        migrate(&pool).await?;
        let (results, _) = broadcast::channel(config.results_capacity.max(1));
        let (closed_tx, _) = watch::channel(false);
        debug!(url, "embedded queue open");
        Ok(EmbeddedQueue {
            inner: Arc::new(Inner {
                pool,
                config,
                wake: Notify::new(),
                results,
                closed: AtomicBool::new(false),
                closed_tx,
            }),
        })
    }

    pub fn config(&self) -> &EmbeddedConfig {
        &self.inner.config
    }

    /// The dead-lettered jobs, oldest first (they stay in the table).
    pub async fn dead_letters(&self, limit: u32) -> Result<Vec<DeadLetter>> {
        let rows = sqlx::query(
            "SELECT payload, last_error FROM queue_jobs WHERE status = 'dead'
             ORDER BY updated_at_ms, id LIMIT $1",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.inner.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let payload: Vec<u8> = row.try_get("payload")?;
                let reason: Option<String> = row.try_get("last_error")?;
                Ok(DeadLetter {
                    job: Job::decode(payload.as_slice()).ok(),
                    reason: reason.unwrap_or_default(),
                })
            })
            .collect()
    }

    pub async fn stats(&self) -> Result<EmbeddedStats> {
        let row = sqlx::query(
            "SELECT
                COALESCE(SUM(status = 'ready' AND available_at_ms <= $1), 0) AS ready,
                COALESCE(SUM(status = 'ready' AND available_at_ms > $1), 0) AS scheduled,
                COALESCE(SUM(status = 'processing'), 0) AS processing,
                COALESCE(SUM(status = 'dead'), 0) AS dead
             FROM queue_jobs",
        )
        .bind(now_ms())
        .fetch_one(&self.inner.pool)
        .await?;
        let get = |name: &str| -> Result<u64> { Ok(row.try_get::<i64, _>(name)?.max(0) as u64) };
        Ok(EmbeddedStats {
            ready: get("ready")?,
            scheduled: get("scheduled")?,
            processing: get("processing")?,
            dead: get("dead")?,
        })
    }

    /// Stops every consumer and subscription of this queue (their `next` returns `None`) and
    /// closes the pool. Unsettled deliveries keep their leases until they expire.
    pub async fn close(&self) {
        self.inner.closed.store(true, Ordering::SeqCst);
        self.inner.closed_tx.send_replace(true);
        self.inner.pool.close().await;
    }
}

#[async_trait]
impl JobQueue for EmbeddedQueue {
    async fn publish(&self, job: &Job) -> Result<()> {
        self.inner.ensure_open()?;
        let job = prepare_job(job, self.inner.config.max_payload_bytes)?;
        let now = now_ms();
        sqlx::query(
            "INSERT INTO queue_jobs
                (job_id, payload, attempt, status, available_at_ms, enqueued_at_ms, updated_at_ms)
             VALUES ($1, $2, $3, 'ready', $4, $5, $4)",
        )
        .bind(&job.job_id)
        .bind(job.encode_to_vec())
        .bind(i64::from(job.attempt))
        .bind(now)
        .bind(job.enqueued_at_ms)
        .execute(&self.inner.pool)
        .await?;
        self.inner.wake.notify_waiters();
        Ok(())
    }

    async fn consume(&self, prefetch: u16) -> Result<Consumer> {
        self.inner.ensure_open()?;
        if prefetch == 0 {
            return Err(QueueError::InvalidArgument(
                "prefetch must be at least 1".into(),
            ));
        }
        Ok(Consumer::new(Box::new(EmbeddedConsumer {
            inner: self.inner.clone(),
            permits: Arc::new(Semaphore::new(usize::from(prefetch))),
            closed: self.inner.closed_tx.subscribe(),
        })))
    }

    async fn publish_result(&self, result: &ResultReady) -> Result<()> {
        self.inner.ensure_open()?;
        let key = result_routing_key(result)?;
        // An error only means nobody is subscribed right now.
        let _ = self.inner.results.send(Arc::new((key, result.clone())));
        Ok(())
    }

    async fn subscribe_results(&self, pattern: &str) -> Result<ResultSubscription> {
        self.inner.ensure_open()?;
        if pattern.is_empty() {
            return Err(QueueError::InvalidArgument("empty topic pattern".into()));
        }
        Ok(ResultSubscription::new(Box::new(EmbeddedResults {
            rx: self.inner.results.subscribe(),
            pattern: pattern.to_string(),
            closed: self.inner.closed_tx.subscribe(),
        })))
    }
}

impl Inner {
    fn ensure_open(&self) -> Result<()> {
        if self.closed.load(Ordering::SeqCst) {
            Err(QueueError::Closed)
        } else {
            Ok(())
        }
    }

    fn lease_ms(&self) -> i64 {
        self.config.lease.as_millis() as i64
    }

    /// Takes the oldest due job (ready and available, or leased with an expired lease).
    async fn claim(&self) -> Result<Option<Claimed>> {
        loop {
            let now = now_ms();
            let row = sqlx::query(
                "UPDATE queue_jobs
                 SET status = 'processing', locked_until_ms = $1, lease_id = lease_id + 1,
                     deliveries = deliveries + 1, updated_at_ms = $2
                 WHERE id = (
                     SELECT id FROM queue_jobs
                     WHERE (status = 'ready' AND available_at_ms <= $2)
                        OR (status = 'processing' AND locked_until_ms <= $2)
                     ORDER BY available_at_ms, id
                     LIMIT 1)
                 RETURNING id, payload, lease_id, deliveries, last_error",
            )
            .bind(now + self.lease_ms())
            .bind(now)
            .fetch_optional(&self.pool)
            .await?;
            let Some(row) = row else {
                return Ok(None);
            };
            let id: i64 = row.try_get("id")?;
            let lease_id: i64 = row.try_get("lease_id")?;
            let deliveries: i64 = row.try_get("deliveries")?;
            let last_error: Option<String> = row.try_get("last_error")?;
            let payload: Vec<u8> = row.try_get("payload")?;
            let job = match Job::decode(payload.as_slice()) {
                Ok(job) => job,
                Err(e) => {
                    warn!(id, error = %e, "undecodable job in the queue table; dead-lettering it");
                    self.mark_dead(id, lease_id, &format!("undecodable payload: {e}"))
                        .await?;
                    continue;
                }
            };
            if let Some(limit) = self.config.delivery_limit
                && deliveries > i64::from(limit)
            {
                let reason = format!(
                    "delivery limit exceeded: delivered {} times without being settled{}",
                    deliveries - 1,
                    last_error
                        .as_deref()
                        .map(|e| format!("; last error: {e}"))
                        .unwrap_or_default()
                );
                warn!(job_id = %job.job_id, "{reason}; dead-lettering");
                self.mark_dead(id, lease_id, &reason).await?;
                continue;
            }
            return Ok(Some(Claimed {
                id,
                lease_id,
                job,
                deliveries,
                last_error,
            }));
        }
    }

    async fn mark_dead(&self, id: i64, lease_id: i64, reason: &str) -> Result<u64> {
        let done = sqlx::query(
            "UPDATE queue_jobs SET status = 'dead', last_error = $1, locked_until_ms = NULL,
                 updated_at_ms = $2
             WHERE id = $3 AND lease_id = $4 AND status = 'processing'",
        )
        .bind(reason)
        .bind(now_ms())
        .bind(id)
        .bind(lease_id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// When the next job becomes claimable (milliseconds since the epoch), if any is pending.
    async fn next_due_ms(&self) -> Result<Option<i64>> {
        let row = sqlx::query(
            "SELECT MIN(CASE status WHEN 'ready' THEN available_at_ms ELSE locked_until_ms END)
                 AS due
             FROM queue_jobs WHERE status IN ('ready', 'processing')",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get("due")?)
    }
}

/// Brings the schema up to date. The migrations table is our own so the queue can share a
/// database file with the store (whose migrations use sqlx's default table). SQLite has no
/// advisory lock: two processes migrating a new file at once can race; the loser retries.
async fn migrate(pool: &SqlitePool) -> Result<()> {
    let mut migrator = sqlx::migrate!("./migrations");
    migrator.dangerous_set_table_name("_companion_queue_migrations");
    let mut attempt = 0;
    loop {
        match migrator.run(pool).await {
            Ok(()) => return Ok(()),
            Err(e) if attempt < 5 => {
                attempt += 1;
                debug!(error = %e, attempt, "queue migration raced another process; retrying");
                tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

struct EmbeddedConsumer {
    inner: Arc<Inner>,
    permits: Arc<Semaphore>,
    closed: watch::Receiver<bool>,
}

#[async_trait]
impl DeliverySource for EmbeddedConsumer {
    async fn next(&mut self) -> Option<Result<Delivery>> {
        let permit = tokio::select! {
            permit = self.permits.clone().acquire_owned() => permit.ok()?,
            _ = self.closed.wait_for(|closed| *closed) => return None,
        };
        loop {
            if self.inner.closed.load(Ordering::SeqCst) {
                return None;
            }
            // Register for wake-ups before looking, so a publish in between is not missed.
            let wake = self.inner.wake.notified();
            tokio::pin!(wake);
            wake.as_mut().enable();

            match self.inner.claim().await {
                Ok(Some(claimed)) => return Some(Ok(self.delivery(claimed, permit))),
                Ok(None) => {}
                Err(e) => return Some(Err(e)),
            }
            let poll = self.inner.config.poll_interval;
            let wait = match self.inner.next_due_ms().await {
                Ok(Some(due)) => Duration::from_millis((due - now_ms()).max(1) as u64).min(poll),
                Ok(None) => poll,
                Err(e) => return Some(Err(e)),
            };
            tokio::select! {
                _ = wake => {}
                _ = tokio::time::sleep(wait) => {}
                _ = self.closed.wait_for(|closed| *closed) => return None,
            }
        }
    }
}

impl EmbeddedConsumer {
    fn delivery(&self, claimed: Claimed, permit: OwnedSemaphorePermit) -> Delivery {
        let renewer = tokio::spawn(renew_lease(
            self.inner.clone(),
            claimed.id,
            claimed.lease_id,
        ));
        let settler = EmbeddedSettler {
            inner: self.inner.clone(),
            id: claimed.id,
            lease_id: claimed.lease_id,
            renewer,
            _permit: permit,
        };
        Delivery::new(
            claimed.job,
            claimed.deliveries > 1,
            claimed.last_error,
            self.inner.config.retry,
            Box::new(settler),
        )
    }
}

/// Keeps a claimed job's lease alive until the delivery is settled or dropped (the task is
/// aborted then) or the lease turns out to be lost.
async fn renew_lease(inner: Arc<Inner>, id: i64, lease_id: i64) {
    let every = inner.config.lease / 3;
    loop {
        tokio::time::sleep(every).await;
        let result = sqlx::query(
            "UPDATE queue_jobs SET locked_until_ms = $1
             WHERE id = $2 AND lease_id = $3 AND status = 'processing'",
        )
        .bind(now_ms() + inner.lease_ms())
        .bind(id)
        .bind(lease_id)
        .execute(&inner.pool)
        .await;
        match result {
            Ok(done) if done.rows_affected() == 1 => {}
            Ok(_) => {
                warn!(id, "lease lost: the job was claimed by another consumer");
                return;
            }
            // Keep trying: the lease is still valid for two more renewal periods.
            Err(e) => warn!(id, error = %e, "lease renewal failed"),
        }
    }
}

struct EmbeddedSettler {
    inner: Arc<Inner>,
    id: i64,
    lease_id: i64,
    renewer: JoinHandle<()>,
    /// One of the consumer's `prefetch` slots, freed when the delivery is settled or dropped.
    _permit: OwnedSemaphorePermit,
}

impl EmbeddedSettler {
    fn lost(&self) -> QueueError {
        QueueError::DeliveryLost(format!(
            "the lease on queue row {} expired and another consumer claimed it",
            self.id
        ))
    }

    fn held(&self, rows_affected: u64) -> Result<()> {
        if rows_affected == 1 {
            Ok(())
        } else {
            Err(self.lost())
        }
    }
}

#[async_trait]
impl Settler for EmbeddedSettler {
    async fn ack(&mut self) -> Result<()> {
        self.renewer.abort();
        let done = sqlx::query(
            "DELETE FROM queue_jobs WHERE id = $1 AND lease_id = $2 AND status = 'processing'",
        )
        .bind(self.id)
        .bind(self.lease_id)
        .execute(&self.inner.pool)
        .await?;
        self.held(done.rows_affected())
    }

    async fn retry(&mut self, next: &Job, delay: Duration, reason: &str) -> Result<()> {
        self.renewer.abort();
        let now = now_ms();
        let done = sqlx::query(
            "UPDATE queue_jobs
             SET status = 'ready', payload = $1, attempt = $2, available_at_ms = $3,
                 locked_until_ms = NULL, deliveries = 0, last_error = $4, updated_at_ms = $5
             WHERE id = $6 AND lease_id = $7 AND status = 'processing'",
        )
        .bind(next.encode_to_vec())
        .bind(i64::from(next.attempt))
        .bind(now.saturating_add(delay.as_millis().min(i64::MAX as u128) as i64))
        .bind(reason)
        .bind(now)
        .bind(self.id)
        .bind(self.lease_id)
        .execute(&self.inner.pool)
        .await?;
        self.held(done.rows_affected())?;
        // Idle consumers recompute when to look next.
        self.inner.wake.notify_waiters();
        Ok(())
    }

    async fn dead_letter(&mut self, _job: &Job, reason: &str) -> Result<()> {
        self.renewer.abort();
        let rows = self.inner.mark_dead(self.id, self.lease_id, reason).await?;
        self.held(rows)
    }

    fn abandon(&mut self) {
        self.renewer.abort();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return; // no runtime left: the lease expires instead
        };
        let inner = self.inner.clone();
        let (id, lease_id) = (self.id, self.lease_id);
        runtime.spawn(async move {
            let released = sqlx::query(
                "UPDATE queue_jobs SET status = 'ready', locked_until_ms = NULL,
                     available_at_ms = $1, updated_at_ms = $1
                 WHERE id = $2 AND lease_id = $3 AND status = 'processing'",
            )
            .bind(now_ms())
            .bind(id)
            .bind(lease_id)
            .execute(&inner.pool)
            .await;
            match released {
                Ok(_) => inner.wake.notify_waiters(),
                Err(e) => warn!(id, error = %e, "could not release the job; its lease will expire"),
            }
        });
    }
}

impl Drop for EmbeddedSettler {
    fn drop(&mut self) {
        self.renewer.abort();
    }
}

struct EmbeddedResults {
    rx: broadcast::Receiver<Arc<(String, ResultReady)>>,
    pattern: String,
    closed: watch::Receiver<bool>,
}

#[async_trait]
impl ResultSource for EmbeddedResults {
    async fn next(&mut self) -> Option<Result<ResultReady>> {
        loop {
            let received = tokio::select! {
                received = self.rx.recv() => received,
                _ = self.closed.wait_for(|closed| *closed) => return None,
            };
            match received {
                Ok(event) if topic_matches(&self.pattern, &event.0) => {
                    return Some(Ok(event.1.clone()));
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    return Some(Err(QueueError::Lagged(missed)));
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests;
