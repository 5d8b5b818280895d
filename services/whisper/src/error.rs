use thiserror::Error;

/// What can go wrong loading or running Whisper.
#[derive(Debug, Error)]
pub enum Error {
    #[error("cannot read {0}: {1}")]
    Io(String, #[source] std::io::Error),
    #[error("bad Whisper file: {0}")]
    Format(String),
    #[error(transparent)]
    Engine(#[from] companion_engine::Error),
    #[error("invalid input: {0}")]
    InvalidInput(String),
}

pub type Result<T> = std::result::Result<T, Error>;
