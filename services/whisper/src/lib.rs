//! Whisper on companion's engine: the GGML Whisper files `companion models fetch` writes
//! ([`WhisperFile`], read by companion-models beside its writer), repacked into the engine's
//! int8 tiles ([`model`]), the log-mel spectrogram ([`mel`]),
//! the encoder and a decoder with its key/value cache.
//!
//! whisper.cpp's decoder steps are bound by its own per-step overhead (some 9 ms a step for
//! whisper-base where reading the weights takes 2), and it gives no access to the encoder's
//! output, so neither half can be replaced alone. This crate is the forward pass of a Whisper
//! of our own; its logits agree with whisper.cpp's on the same file (`tests/forward.rs`).

mod error;
pub mod mel;
pub mod model;

pub use companion_models::WhisperFile;
pub use error::{Error, Result};
pub use mel::{Mel, log_mel};
pub use model::{Decoding, Encoded, HParams, Whisper};
