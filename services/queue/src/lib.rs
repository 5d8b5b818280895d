//! The work queue between the API (producer) and the transcription workers (consumers).
//!
//! One contract, [`JobQueue`], two backends:
//!
//! * [`AmqpQueue`]: RabbitMQ. Durable quorum queues, persistent messages, publisher confirms,
//!   manual acknowledgements, retries through per-delay TTL queues, a dead-letter queue, result
//!   events on a topic exchange, and reconnection with exponential backoff.
//! * [`EmbeddedQueue`]: the same semantics in a SQLite table for a single machine without a
//!   broker (leases instead of unacked messages; result events on an in-process broadcast).
//!
//! Delivery is **at-least-once** in both: a job whose acknowledgement did not reach the queue
//! (worker crash, lost connection, expired lease) is delivered again, so workers must process a
//! job idempotently (results keyed by `recording_id`/`job_id`). An acknowledged job is never
//! delivered again.
//!
//! The wire format of jobs and result events is `proto/companion/v1/queue.proto`, compiled into
//! [`proto`].

pub mod amqp;
mod backoff;
mod delivery;
pub mod embedded;
mod error;

use async_trait::async_trait;

pub use amqp::{AmqpConfig, AmqpQueue};
pub use backoff::{Backoff, RetryPolicy};
pub use delivery::{Consumer, Delivery, ResultSubscription, RetryOutcome};
pub use embedded::{EmbeddedConfig, EmbeddedQueue};
pub use error::{QueueError, Result};
pub use proto::{Job, JobStatus, RecordingKind, ResultReady};

/// The messages of `proto/companion/v1/queue.proto` (package `companion.v1`).
pub use companion_proto::v1 as proto;

/// Largest encoded job either backend accepts by default (RabbitMQ 4 refuses messages over
/// 16 MiB by default; audio larger than that belongs behind `Job.source.uri`).
pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 16 * 1024 * 1024;

/// A durable work queue with retries, dead-lettering and result events.
///
/// Object safe (`Arc<dyn JobQueue>`): the service picks the backend at start-up from its
/// configuration and the rest of the code does not care which one it got. The methods are
/// `async_trait` methods (boxed `Send` futures), which costs one allocation per call, nothing
/// next to a broker round trip or an fsync.
#[async_trait]
pub trait JobQueue: Send + Sync {
    /// Enqueues a job. Returns only once the queue has taken durable responsibility for it
    /// (broker publisher confirm / committed transaction). An `attempt` of 0 is stored as 1 and
    /// an `enqueued_at_ms` of 0 as now.
    async fn publish(&self, job: &Job) -> Result<()>;

    /// Starts a consumer that holds at most `prefetch` unsettled deliveries at a time (the
    /// worker's concurrency). Every [`Delivery`] must be settled with `ack`, `retry` or
    /// `dead_letter`; one dropped unsettled goes back to the queue.
    async fn consume(&self, prefetch: u16) -> Result<Consumer>;

    /// Announces a finished job to whoever listens, under the routing key from
    /// [`result_routing_key`]. AMQP: the durable topic exchange `<prefix>.results`; embedded: an
    /// in-process broadcast channel. Events are notifications (the store holds the result); a
    /// listener that is not subscribed at that moment does not get them.
    async fn publish_result(&self, result: &ResultReady) -> Result<()>;

    /// Receives the result events whose routing key matches an AMQP topic `pattern`
    /// (`*` = one word, `#` = zero or more words), e.g. `acme.*.voicemail`.
    async fn subscribe_results(&self, pattern: &str) -> Result<ResultSubscription>;
}

/// A job that was given up on, as read back from the dead-letter queue.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    /// `None` when the message could not even be decoded (the reason says so).
    pub job: Option<Job>,
    pub reason: String,
}

/// The routing-key word of a recording kind: `voicemail` or `call`.
pub fn kind_word(kind: RecordingKind) -> Option<&'static str> {
    match kind {
        RecordingKind::Voicemail => Some("voicemail"),
        RecordingKind::Call => Some("call"),
        RecordingKind::Unspecified => None,
    }
}

/// `tenant.user.kind`, e.g. `acme.u42.voicemail`. Dots, `*` and `#` inside an id become `_`
/// so every key has exactly three words, and an empty user (a recording that belongs to no one)
/// becomes `_`. Fails for an unspecified kind.
pub fn result_routing_key(result: &ResultReady) -> Result<String> {
    let kind = RecordingKind::try_from(result.kind).unwrap_or(RecordingKind::Unspecified);
    let kind = kind_word(kind).ok_or_else(|| {
        QueueError::InvalidArgument(format!(
            "result for recording {:?} has no recording kind",
            result.recording_id
        ))
    })?;
    let key = format!(
        "{}.{}.{}",
        routing_word(&result.tenant_id),
        routing_word(&result.user_id),
        kind
    );
    // An AMQP routing key is a short string.
    if key.len() > 255 {
        return Err(QueueError::InvalidArgument(format!(
            "routing key longer than 255 bytes: {key:?}"
        )));
    }
    Ok(key)
}

/// One word of a routing key: an id with `.`, `*` and `#` folded to `_` (`_` for an empty id).
pub fn routing_word(id: &str) -> String {
    if id.is_empty() {
        return "_".into();
    }
    id.chars()
        .map(|c| if matches!(c, '.' | '*' | '#') { '_' } else { c })
        .collect()
}

/// Whether a routing key matches an AMQP topic pattern: words separated by `.`, `*` matches
/// exactly one word, `#` zero or more.
pub fn topic_matches(pattern: &str, key: &str) -> bool {
    fn go(p: &[&str], k: &[&str]) -> bool {
        match p.split_first() {
            None => k.is_empty(),
            Some((&"#", rest)) => (0..=k.len()).any(|skip| go(rest, &k[skip..])),
            Some((&word, rest)) => match k.split_first() {
                Some((&first, k_rest)) => (word == "*" || word == first) && go(rest, k_rest),
                None => false,
            },
        }
    }
    let p: Vec<&str> = pattern.split('.').collect();
    let k: Vec<&str> = key.split('.').collect();
    go(&p, &k)
}

/// Checks a job before it is enqueued and fills in what the queue owns.
pub(crate) fn prepare_job(job: &Job, max_payload_bytes: usize) -> Result<Job> {
    use prost::Message;
    if job.job_id.is_empty() {
        return Err(QueueError::InvalidArgument("job has no job_id".into()));
    }
    let mut job = job.clone();
    job.attempt = job.attempt.max(1);
    if job.enqueued_at_ms == 0 {
        job.enqueued_at_ms = now_ms();
    }
    let len = job.encoded_len();
    if len > max_payload_bytes {
        return Err(QueueError::InvalidArgument(format!(
            "job {} is {len} bytes encoded, over the {max_payload_bytes}-byte limit; pass the audio by uri",
            job.job_id
        )));
    }
    Ok(job)
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(tenant: &str, user: &str, kind: RecordingKind) -> ResultReady {
        ResultReady {
            tenant_id: tenant.into(),
            user_id: user.into(),
            kind: kind as i32,
            ..Default::default()
        }
    }

    #[test]
    fn routing_keys() {
        let key = |t, u, k| result_routing_key(&result(t, u, k)).unwrap();
        assert_eq!(
            key("acme", "u42", RecordingKind::Voicemail),
            "acme.u42.voicemail"
        );
        assert_eq!(key("acme", "u42", RecordingKind::Call), "acme.u42.call");
        assert_eq!(key("acme", "", RecordingKind::Call), "acme._.call");
        assert_eq!(key("a.b", "x*#y", RecordingKind::Call), "a_b.x__y.call");
        assert!(result_routing_key(&result("acme", "u", RecordingKind::Unspecified)).is_err());
        let mut bad = result("acme", "u", RecordingKind::Call);
        bad.kind = 99;
        assert!(result_routing_key(&bad).is_err());
        assert!(result_routing_key(&result(&"t".repeat(300), "u", RecordingKind::Call)).is_err());
    }

    #[test]
    fn topic_matching_follows_amqp() {
        assert!(topic_matches("acme.*.voicemail", "acme.u1.voicemail"));
        assert!(!topic_matches("acme.*.voicemail", "acme.u1.call"));
        assert!(!topic_matches("acme.*.voicemail", "other.u1.voicemail"));
        assert!(!topic_matches("acme.*", "acme.u1.voicemail"));
        assert!(topic_matches("acme.#", "acme.u1.voicemail"));
        assert!(topic_matches("acme.#", "acme"));
        assert!(topic_matches("#", "a.b.c"));
        assert!(topic_matches("#.call", "a.b.call"));
        assert!(!topic_matches("#.call", "a.b.voicemail"));
        assert!(topic_matches("*.*.*", "a._.call"));
        assert!(topic_matches("a.#.c", "a.c"));
        assert!(topic_matches("a.#.c", "a.b.x.c"));
    }

    #[test]
    fn prepare_fills_in_queue_fields() {
        let job = Job {
            job_id: "j1".into(),
            ..Default::default()
        };
        let prepared = prepare_job(&job, 1024).unwrap();
        assert_eq!(prepared.attempt, 1);
        assert!(prepared.enqueued_at_ms > 0);
        assert!(prepare_job(&Job::default(), 1024).is_err());
        let big = Job {
            job_id: "j2".into(),
            source: Some(proto::job::Source::Audio(vec![0; 2048])),
            ..Default::default()
        };
        assert!(matches!(
            prepare_job(&big, 1024),
            Err(QueueError::InvalidArgument(_))
        ));
    }
}
