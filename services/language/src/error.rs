//! Errors of the language runtime.

use std::path::PathBuf;

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while loading or running a language model.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be opened or read.
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The file is not a GGUF file candle can read.
    #[error("cannot read GGUF file {path}: {source}")]
    Gguf {
        path: PathBuf,
        #[source]
        source: candle_core::Error,
    },

    /// A metadata key the runtime needs is absent or has the wrong type.
    #[error("GGUF metadata `{key}`: {problem}")]
    Metadata { key: String, problem: String },

    /// `general.architecture` names a model family this crate cannot run.
    #[error("unsupported model architecture `{0}` (supported: qwen2, llama)")]
    UnsupportedArchitecture(String),

    /// The GGUF tokenizer is of a kind this crate cannot rebuild.
    #[error("unsupported tokenizer: {0}")]
    UnsupportedTokenizer(String),

    /// The chat template is not one this crate can apply.
    #[error("unsupported chat template: {0}")]
    UnsupportedChatTemplate(String),

    /// Building or running the tokenizer failed.
    #[error("tokenizer error: {0}")]
    Tokenizer(String),

    /// A tensor operation failed.
    #[error("model error: {0}")]
    Candle(#[from] candle_core::Error),

    /// llama.cpp could not load a model file (the reason is llama.cpp's own message).
    #[error("llama.cpp cannot load {path}: {reason}")]
    LlamaLoad { path: PathBuf, reason: String },

    /// llama.cpp failed while running a model.
    #[error("llama.cpp: {0}")]
    Llama(String),

    /// companion's own engine failed to load or run a model.
    #[error("engine: {0}")]
    Engine(Box<companion_engine::Error>),

    /// The prompt does not leave room for a single generated token.
    #[error("prompt of {prompt_tokens} tokens does not fit the context window of {context} tokens")]
    PromptTooLong {
        prompt_tokens: usize,
        context: usize,
    },

    /// A model configuration file is invalid.
    #[error("invalid model configuration {path}: {problem}")]
    Config { path: PathBuf, problem: String },

    /// The model's answer could not be parsed into the structure asked for, twice.
    #[error("the model gave no usable answer: {problem}")]
    Unstructured { problem: String },

    /// A caller-supplied input is invalid (empty text, unknown language...).
    #[error("{0}")]
    InvalidInput(String),

    /// Resolving a model by name in the model cache failed (unknown name,
    /// wrong role, not installed: the message says which `companion models
    /// fetch` to run).
    #[error(transparent)]
    Models(Box<companion_models::Error>),
}

impl From<companion_engine::Error> for Error {
    fn from(err: companion_engine::Error) -> Self {
        Error::Engine(Box::new(err))
    }
}

impl From<companion_models::Error> for Error {
    fn from(err: companion_models::Error) -> Self {
        Error::Models(Box::new(err))
    }
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn metadata(key: &str, problem: impl Into<String>) -> Self {
        Error::Metadata {
            key: key.to_string(),
            problem: problem.into(),
        }
    }

    pub(crate) fn tokenizer(err: impl std::fmt::Display) -> Self {
        Error::Tokenizer(err.to_string())
    }
}
