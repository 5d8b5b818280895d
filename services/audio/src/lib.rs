//! Audio intake for companion: decode every format a PBX writes, resample to the 16 kHz mono
//! Whisper wants, and find the stretches that hold speech.
//!
//! * [`read_file`] + [`decode_bytes`]: WAV (PCM, float, µ-law, A-law, MS-GSM), MP3, AAC/M4A,
//!   FLAC, Ogg Vorbis, Ogg Opus, raw `.gsm`, and headerless G.711 / slin given a [`RawFormat`].
//! * [`to_16k`]: resamples each channel, and mixes down or keeps channels apart.
//! * [`vad::detect_speech`]: voice activity detection, so silence and line noise reach no model.

mod decode;
mod g711;
mod raw;
mod resample;
mod riff;
pub mod source;
pub mod vad;

use companion_core::{Classify, ErrorKind};

pub use decode::{Probe, decode_bytes, probe_bytes, read_file};
pub use raw::RawFormat;

/// A file name's extension, lower-cased, without the dot: what the decoder's `extension` wants.
pub fn extension_of(filename: &str) -> Option<String> {
    std::path::Path::new(filename)
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
}
pub use resample::{TARGET_RATE, to_16k};

/// Decoded audio at its original sample rate, one vector of samples in [-1, 1] per channel.
#[derive(Debug, Clone, PartialEq)]
pub struct Audio {
    pub sample_rate: u32,
    pub channels: Vec<Vec<f32>>,
    /// What was decoded, for logs (`wav/pcm_s16le`, `gsm`, `ogg/opus`, ...).
    pub format: String,
}

impl Audio {
    /// Number of sample frames (samples per channel).
    pub fn frames(&self) -> usize {
        self.channels.first().map_or(0, Vec::len)
    }

    pub fn duration_s(&self) -> f64 {
        if self.sample_rate == 0 {
            0.0
        } else {
            self.frames() as f64 / f64::from(self.sample_rate)
        }
    }
}

/// How channels are treated after decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelMode {
    /// Mix every channel down to one (voicemail).
    Mix,
    /// Keep each channel apart (stereo call recording: one party per channel).
    Separate,
}

/// Limits checked before and during decoding, so no input can take unbounded memory or time.
#[derive(Debug, Clone)]
pub struct DecodeOptions {
    /// Largest input accepted, in bytes; checked before reading.
    pub max_bytes: u64,
    /// Longest audio accepted, in seconds; checked from the header when it says, and while decoding.
    pub max_duration_s: f64,
    /// Headerless input: how to read it. `None` means the container is probed.
    pub raw_format: Option<RawFormat>,
}

impl Default for DecodeOptions {
    fn default() -> Self {
        DecodeOptions {
            max_bytes: 256 * 1024 * 1024,
            max_duration_s: 30.0 * 60.0,
            raw_format: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AudioError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("input is {size} bytes, over the limit of {limit} bytes")]
    TooLarge { size: u64, limit: u64 },
    #[error("audio is {duration_s:.1} s long, over the limit of {limit_s:.0} s")]
    TooLong { duration_s: f64, limit_s: f64 },
    #[error("unsupported audio: {0}")]
    Unsupported(String),
    #[error("malformed audio: {0}")]
    Corrupt(String),
    #[error("the file holds no audio samples")]
    Empty,
    #[error("invalid option: {0}")]
    InvalidOption(String),
    #[error("resampling failed: {0}")]
    Resample(String),
}

impl Classify for AudioError {
    fn kind(&self) -> ErrorKind {
        match self {
            AudioError::Io { .. } => ErrorKind::Io,
            AudioError::TooLarge { .. } => ErrorKind::TooLarge,
            AudioError::TooLong { .. } => ErrorKind::TooLong,
            AudioError::Unsupported(_) => ErrorKind::UnsupportedFormat,
            AudioError::Corrupt(_) | AudioError::Resample(_) => ErrorKind::CorruptAudio,
            AudioError::Empty => ErrorKind::EmptyAudio,
            AudioError::InvalidOption(_) => ErrorKind::InvalidArgument,
        }
    }
}
