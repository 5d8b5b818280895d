//! One mapping from the crates' errors to gRPC statuses, so every service answers alike.

use companion_core::{Classify, ErrorKind};
use companion_queue::QueueError;
use companion_store::{PolicyStoreError, StoreError};
use tonic::Status;
use tracing::error;

/// The status for a failure of the given kind with a message the caller may read.
pub fn status_for(kind: ErrorKind, message: impl Into<String>) -> Status {
    let message = message.into();
    match kind {
        ErrorKind::TooLarge | ErrorKind::TooLong => Status::resource_exhausted(message),
        ErrorKind::InvalidArgument
        | ErrorKind::UnsupportedFormat
        | ErrorKind::CorruptAudio
        | ErrorKind::EmptyAudio
        | ErrorKind::Io => Status::invalid_argument(message),
        ErrorKind::Model => Status::internal(message),
        ErrorKind::Store => Status::unavailable(message),
    }
}

pub fn store_status(e: StoreError) -> Status {
    if e.kind() == ErrorKind::InvalidArgument {
        return Status::invalid_argument(e.to_string());
    }
    error!(error = %e, "store failure");
    Status::unavailable("the store is unavailable; try again")
}

pub fn policy_status(e: PolicyStoreError) -> Status {
    match e {
        PolicyStoreError::Store(e) => store_status(e),
        PolicyStoreError::Invalid(e) => Status::invalid_argument(e.to_string()),
        other => {
            error!(error = %other, "unreadable policy");
            Status::internal(other.to_string())
        }
    }
}

pub fn queue_status(e: QueueError) -> Status {
    error!(error = %e, "queue failure");
    Status::unavailable("the work queue is unavailable; try again")
}
