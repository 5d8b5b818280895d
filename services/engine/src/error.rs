//! Errors of the engine.

use std::path::PathBuf;

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be opened or read.
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The file is not a GGUF file, or its directory is corrupt.
    #[error("cannot read GGUF file {path}: {source}")]
    Gguf {
        path: PathBuf,
        #[source]
        source: candle_core::Error,
    },

    /// A metadata key the engine needs is absent or has the wrong type.
    #[error("GGUF metadata `{key}`: {problem}")]
    Metadata { key: String, problem: String },

    /// `general.architecture` names a model family the engine cannot run.
    #[error("unsupported model architecture `{0}` (supported: qwen2, llama)")]
    UnsupportedArchitecture(String),

    /// A tensor is missing, has the wrong shape, or a type the engine cannot read.
    #[error("tensor `{name}`: {problem}")]
    Tensor { name: String, problem: String },

    /// Decoding a tensor's blocks failed.
    #[error("cannot decode tensor `{name}`: {source}")]
    Decode {
        name: String,
        #[source]
        source: candle_core::Error,
    },

    /// A token id outside the vocabulary, a position past the context window, or nothing to
    /// compute.
    #[error("invalid input: {0}")]
    InvalidInput(String),

    /// A compute thread panicked (a bug); the session's KV cache is no longer valid.
    #[error("a compute thread failed: {0}")]
    Worker(String),
}
