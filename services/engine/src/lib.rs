//! companion's own CPU engine for GGUF chat models (Qwen2 and Llama architectures).
//!
//! Generating a token reads every weight of the model once, so its speed is bounded by memory
//! bandwidth; on a two-core machine ggml's kernels reach about half of that bound, being
//! bound by their own instructions. This engine repacks each weight matrix at load into tiles
//! of 16 rows whose codes one AVX-512 VNNI instruction multiplies four columns at a time
//! (three AVX2 instructions on CPUs without it, picked at run time) ([`matrix`]), runs each layer's five steps on all threads with a spinning barrier between
//! them, the threads claiming a product's tiles as they become free ([`model`]), and computes
//! the prompt in chunks whose tokens share each load of the weights. The weights live in one
//! region mapped for 2 MB pages, sparing a page walk every 4 KB.
//! Weights stored as Q8_0, Q5_0 and Q4_0 are used code for code, Q4_K and Q6_K with their
//! sub-block scales multiplied out to f16; other types are requantized to 8 bits per weight.
//!
//! [`Model`] holds the weights and is shared between threads; a [`Session`] holds one
//! sequence's KV cache. [`Model::forward`] computes tokens and gives the last one's logits.
//! Tokenizing, chat templates and sampling belong to the caller.

// First: the SIMD kernels use its macro.
#[macro_use]
pub mod matrix;
mod activations;
#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod error;
pub mod model;
mod pages;
pub mod team;

pub use activations::{Activations, Rows};
pub use error::{Error, Result};
pub use matrix::{Format, Kernel, Matrix};
pub use model::{Architecture, CHUNK, Config, Model, Session, dot};
