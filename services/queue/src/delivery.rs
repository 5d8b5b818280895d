//! What a consumer hands out, and how it is settled: the backend-independent half.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;

use crate::{Job, Result, ResultReady, RetryPolicy};

/// One job handed to a worker. Settle it exactly once with [`Delivery::ack`],
/// [`Delivery::retry`] or [`Delivery::dead_letter`] (each consumes the delivery).
///
/// Dropping it unsettled (a panic in the handler, a cancelled task) gives the job back to the
/// queue right away without counting an attempt; if the whole process dies instead, the broker
/// (closed channel) or the embedded queue (expired lease) does the same a little later. Either
/// way the queue's delivery limit dead-letters a job that keeps killing its workers.
pub struct Delivery {
    /// The job, with `attempt` as delivered.
    pub job: Job,
    /// 1 for the first attempt; one more after every [`Delivery::retry`].
    pub attempt: u32,
    /// Delivered before without being settled (worker crash, lost connection, expired lease):
    /// part of the work may already be done.
    pub redelivered: bool,
    /// The reason given to the last [`Delivery::retry`], if this is a retry.
    pub last_error: Option<String>,
    policy: RetryPolicy,
    settler: Option<Box<dyn Settler>>,
}

/// What [`Delivery::retry`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryOutcome {
    /// The job comes back as `attempt` after `delay`.
    Scheduled { attempt: u32, delay: Duration },
    /// That was the last attempt: the job went to the dead-letter queue.
    DeadLettered,
}

/// The backend half of a delivery.
#[async_trait]
pub(crate) trait Settler: Send + Sync {
    async fn ack(&mut self) -> Result<()>;
    /// Enqueue `next` (attempt already incremented) to be delivered after `delay`, then
    /// acknowledge this delivery.
    async fn retry(&mut self, next: &Job, delay: Duration, reason: &str) -> Result<()>;
    /// Move the job to the dead letters with `reason`, then acknowledge this delivery.
    async fn dead_letter(&mut self, job: &Job, reason: &str) -> Result<()>;
    /// Give the job back without counting an attempt. Called from `Drop`: must not block (it
    /// spawns onto the current Tokio runtime when there is one) and must be a no-op when the
    /// delivery is no longer held.
    fn abandon(&mut self);
}

impl Delivery {
    pub(crate) fn new(
        job: Job,
        redelivered: bool,
        last_error: Option<String>,
        policy: RetryPolicy,
        settler: Box<dyn Settler>,
    ) -> Delivery {
        Delivery {
            attempt: job.attempt.max(1),
            job,
            redelivered,
            last_error,
            policy,
            settler: Some(settler),
        }
    }

    /// Whether a [`Delivery::retry`] now would dead-letter the job instead of scheduling it.
    pub fn is_last_attempt(&self) -> bool {
        self.policy.delay_after(self.attempt).is_none()
    }

    /// The job is done: remove it from the queue.
    ///
    /// Fails with [`crate::QueueError::DeliveryLost`] when the delivery was no longer held (its
    /// connection died or its lease was taken over): the job will then be delivered again.
    pub async fn ack(mut self) -> Result<()> {
        let mut settler = self.take_settler();
        let result = settler.ack().await;
        if result.is_err() {
            settler.abandon();
        }
        result
    }

    /// This attempt failed in a way worth retrying: the job comes back as `attempt + 1` after
    /// the policy's backoff, or, when this was attempt `max_attempts`, goes to the dead letters
    /// with `reason`.
    ///
    /// The retry is enqueued (confirmed) before this delivery is acknowledged; if the
    /// acknowledgement is then lost the job runs twice, never zero times.
    pub async fn retry(mut self, reason: &str) -> Result<RetryOutcome> {
        let mut settler = self.take_settler();
        let (result, outcome) = match self.policy.delay_after(self.attempt) {
            Some(delay) => {
                let mut next = self.job.clone();
                next.attempt = self.attempt + 1;
                let outcome = RetryOutcome::Scheduled {
                    attempt: next.attempt,
                    delay,
                };
                (settler.retry(&next, delay, reason).await, outcome)
            }
            None => {
                let reason = format!(
                    "gave up after {} attempt{}: {reason}",
                    self.attempt,
                    if self.attempt == 1 { "" } else { "s" }
                );
                let result = settler.dead_letter(&self.job, &reason).await;
                (result, RetryOutcome::DeadLettered)
            }
        };
        if result.is_err() {
            settler.abandon();
        }
        result.map(|()| outcome)
    }

    /// The job can never succeed (corrupt audio, unsupported format, ...): move it to the
    /// dead letters with `reason`, without retrying.
    pub async fn dead_letter(mut self, reason: &str) -> Result<()> {
        let mut settler = self.take_settler();
        let result = settler.dead_letter(&self.job, reason).await;
        if result.is_err() {
            settler.abandon();
        }
        result
    }

    fn take_settler(&mut self) -> Box<dyn Settler> {
        self.settler
            .take()
            .expect("a delivery is settled only once (settling consumes it)")
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        if let Some(mut settler) = self.settler.take() {
            tracing::warn!(
                job_id = %self.job.job_id,
                attempt = self.attempt,
                "delivery dropped without being settled; giving the job back to the queue"
            );
            settler.abandon();
        }
    }
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("job_id", &self.job.job_id)
            .field("recording_id", &self.job.recording_id)
            .field("attempt", &self.attempt)
            .field("redelivered", &self.redelivered)
            .field("last_error", &self.last_error)
            .finish_non_exhaustive()
    }
}

#[async_trait]
pub(crate) trait DeliverySource: Send {
    async fn next(&mut self) -> Option<Result<Delivery>>;
}

/// A stream of deliveries from [`crate::JobQueue::consume`]; at most `prefetch` of them are
/// unsettled at any time.
pub struct Consumer {
    source: Box<dyn DeliverySource>,
}

impl Consumer {
    pub(crate) fn new(source: Box<dyn DeliverySource>) -> Consumer {
        Consumer { source }
    }

    /// The next job; waits until there is one. `None` once the queue was closed.
    ///
    /// Connection trouble is handled inside (reconnect, re-declare, re-consume); an `Err` means
    /// the queue stayed unreachable for the whole reconnect window, or failed in a way a
    /// reconnect does not fix. Calling `next` again after an `Err` tries again.
    ///
    /// Dropping the future before it completes (a `select!` or timeout) loses no job: with
    /// RabbitMQ nothing was taken; the embedded queue may have just claimed one, which then
    /// comes back when its lease expires.
    pub async fn next(&mut self) -> Option<Result<Delivery>> {
        self.source.next().await
    }
}

impl fmt::Debug for Consumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consumer").finish_non_exhaustive()
    }
}

#[async_trait]
pub(crate) trait ResultSource: Send {
    async fn next(&mut self) -> Option<Result<ResultReady>>;
}

/// Result events matching a topic pattern, from [`crate::JobQueue::subscribe_results`].
pub struct ResultSubscription {
    source: Box<dyn ResultSource>,
}

impl ResultSubscription {
    pub(crate) fn new(source: Box<dyn ResultSource>) -> ResultSubscription {
        ResultSubscription { source }
    }

    /// The next matching event. `None` once the queue was closed;
    /// `Err(`[`crate::QueueError::Lagged`]`)` when events were missed.
    pub async fn next(&mut self) -> Option<Result<ResultReady>> {
        self.source.next().await
    }
}

impl fmt::Debug for ResultSubscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResultSubscription").finish_non_exhaustive()
    }
}
