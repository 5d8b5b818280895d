use std::time::Duration;

/// Everything a queue operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The broker could not be reached (or kept failing) for the whole reconnect window.
    #[error("message broker unavailable for {waited:?}: {last_error}")]
    Unavailable {
        waited: Duration,
        last_error: String,
    },
    /// An AMQP operation failed in a way a reconnect does not fix (refused credentials, a queue
    /// declared elsewhere with other arguments, ...).
    #[error("AMQP error: {0}")]
    Amqp(#[from] lapin::Error),
    /// The broker did not take responsibility for a published message (publisher confirm nack).
    #[error("the broker refused the message (negative publisher confirm)")]
    Nacked,
    /// A mandatory message reached no queue.
    #[error("message could not be routed: {0}")]
    Unroutable(String),
    #[error("queue database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("queue database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("undecodable message: {0}")]
    Decode(#[from] prost::DecodeError),
    /// The delivery can no longer be settled by this holder: its channel died (AMQP) or its lease
    /// expired and another consumer claimed it (embedded). The queue delivers it again, so the
    /// work is redone rather than lost.
    #[error("delivery no longer held, it will be redelivered: {0}")]
    DeliveryLost(String),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A results subscriber fell behind and missed events (embedded broadcast channel).
    #[error("results subscriber lagged and missed {0} events")]
    Lagged(u64),
    #[error("the queue was closed")]
    Closed,
}

pub type Result<T, E = QueueError> = std::result::Result<T, E>;
