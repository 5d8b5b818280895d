//! Which runtime generates text: llama.cpp (default) or candle.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use crate::error::{Error, Result};
use crate::generate::TextGenerator;
use crate::llama::LlamaCpp;
use crate::llm::Llm;

/// The environment variable the CLI reads the backend from when `--llm-backend` is not given.
pub const LLM_BACKEND_ENV: &str = "COMPANION_LLM_BACKEND";

/// An LLM runtime. Both load the same GGUF files and answer with the same prompt tokens,
/// greedy decoding and stop rules; llama.cpp is faster on the CPU (about 2.6× at generating
/// on the development machines) and keeps the prompt's KV cache between calls.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Backend {
    /// llama.cpp through `llama-cpp-2` ([`LlamaCpp`]).
    #[default]
    LlamaCpp,
    /// candle's quantized models ([`Llm`]).
    Candle,
}

impl Backend {
    /// Every backend, the default first.
    pub const ALL: [Backend; 2] = [Backend::LlamaCpp, Backend::Candle];

    /// The name used on the command line and in configuration: `llama.cpp` or `candle`.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::LlamaCpp => "llama.cpp",
            Backend::Candle => "candle",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Backend {
    type Err = Error;

    fn from_str(s: &str) -> Result<Backend> {
        match s.trim().to_ascii_lowercase().as_str() {
            "llama.cpp" | "llama-cpp" | "llamacpp" | "llama_cpp" => Ok(Backend::LlamaCpp),
            "candle" => Ok(Backend::Candle),
            other => Err(Error::InvalidInput(format!(
                "unknown LLM backend {other:?} (use llama.cpp or candle)"
            ))),
        }
    }
}

/// Loads a GGUF chat model with `backend`, with `threads` compute threads (`None`: the
/// process-wide setting, by default the physical cores) and each backend's default options.
pub fn load_generator(
    backend: Backend,
    path: &Path,
    threads: Option<usize>,
) -> Result<Box<dyn TextGenerator>> {
    Ok(match backend {
        Backend::LlamaCpp => Box::new(LlamaCpp::load(path, threads)?) as Box<dyn TextGenerator>,
        Backend::Candle => Box::new(Llm::load(path, threads)?) as Box<dyn TextGenerator>,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for backend in Backend::ALL {
            assert_eq!(backend.to_string().parse::<Backend>().unwrap(), backend);
        }
        assert_eq!(Backend::default(), Backend::LlamaCpp);
        assert_eq!(" Llama-CPP ".parse::<Backend>().unwrap(), Backend::LlamaCpp);
        let err = "onnx".parse::<Backend>().unwrap_err();
        assert!(err.to_string().contains("llama.cpp or candle"), "{err}");
    }
}
