use thiserror::Error;

/// What can go wrong loading or running Whisper.
#[derive(Debug, Error)]
pub enum Error {
    #[error(transparent)]
    File(Box<companion_models::Error>),
    #[error("bad Whisper file: {0}")]
    Format(String),
    #[error(transparent)]
    Engine(#[from] companion_engine::Error),
    #[error("invalid input: {0}")]
    InvalidInput(String),
}

impl From<companion_models::Error> for Error {
    fn from(e: companion_models::Error) -> Error {
        Error::File(Box::new(e))
    }
}

pub type Result<T> = std::result::Result<T, Error>;
