//! Which runtime generates text: companion's own engine, llama.cpp or candle.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use companion_engine::Kernel;

use crate::error::{Error, Result};
use crate::generate::TextGenerator;
use crate::llama::LlamaCpp;
use crate::llm::Llm;
use crate::native::Native;

/// The environment variable the CLI reads the backend from when `--llm-backend` is not given.
pub const LLM_BACKEND_ENV: &str = "COMPANION_LLM_BACKEND";

/// An LLM runtime. All load the same GGUF files and answer with the same prompt tokens,
/// greedy decoding and stop rules. The engine and llama.cpp keep the prompt's KV cache between
/// calls; candle does not and is the slowest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// companion's own engine ([`Native`], crate `companion-engine`).
    Native,
    /// llama.cpp through `llama-cpp-2` ([`LlamaCpp`]).
    LlamaCpp,
    /// candle's quantized models ([`Llm`]).
    Candle,
}

impl Backend {
    /// Every backend, the default first.
    pub const ALL: [Backend; 3] = [Backend::Native, Backend::LlamaCpp, Backend::Candle];

    /// The name used on the command line and in configuration: `engine`, `llama.cpp` or
    /// `candle`.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Native => "engine",
            Backend::LlamaCpp => "llama.cpp",
            Backend::Candle => "candle",
        }
    }
}

/// The engine where one of its SIMD kernels runs (AVX-512 VNNI or AVX2, picked at run time,
/// whatever the build's target CPU), else llama.cpp: the engine's portable kernel is for
/// correctness, not speed.
impl Default for Backend {
    fn default() -> Backend {
        match Kernel::detect() {
            Kernel::Portable => Backend::LlamaCpp,
            Kernel::Avx2 | Kernel::Avx512Vnni => Backend::Native,
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
            "engine" | "native" => Ok(Backend::Native),
            "candle" => Ok(Backend::Candle),
            other => Err(Error::InvalidInput(format!(
                "unknown LLM backend {other:?} (use engine, llama.cpp or candle)"
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
        Backend::Native => Box::new(Native::load(path, threads)?) as Box<dyn TextGenerator>,
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
        let expected = if Kernel::detect() == Kernel::Portable {
            Backend::LlamaCpp
        } else {
            Backend::Native
        };
        assert_eq!(Backend::default(), expected);
        assert_eq!("native".parse::<Backend>().unwrap(), Backend::Native);
        assert_eq!(" Llama-CPP ".parse::<Backend>().unwrap(), Backend::LlamaCpp);
        let err = "onnx".parse::<Backend>().unwrap_err();
        assert!(
            err.to_string().contains("engine, llama.cpp or candle"),
            "{err}"
        );
    }
}
