//! Domain types shared by every companion crate: recordings, transcripts, results and the
//! error kinds users see. This crate does no I/O.

pub mod facts;
pub mod insights;
pub mod metrics;
pub mod policy;

pub use insights::{CallSummary, Intent, IntentMatch, Priority, SmsMessage, Task, ThreadSummary};

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// A spoken (or written) language with the model's confidence.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Language {
    /// ISO 639-1 code as Whisper names it (`en`, `es`, ...).
    pub code: String,
    pub probability: f32,
}

/// One recognised word with its timing and the model's confidence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Word {
    pub text: String,
    pub start_s: f64,
    pub end_s: f64,
    pub probability: f32,
}

/// A stretch of speech by one speaker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Segment {
    pub start_s: f64,
    pub end_s: f64,
    /// Speaker label for stereo call recordings (one party per channel); `None` for mono.
    pub speaker: Option<String>,
    pub text: String,
    pub words: Vec<Word>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Transcript {
    pub text: String,
    pub segments: Vec<Segment>,
}

impl Transcript {
    /// Builds a transcript from segments ordered by start time; the text joins them.
    pub fn from_segments(mut segments: Vec<Segment>) -> Self {
        segments.sort_by(|a, b| a.start_s.total_cmp(&b.start_s));
        let text = join_text(segments.iter().map(|s| s.text.as_str()));
        Transcript { text, segments }
    }
}

/// Joins pieces of text with single spaces, trimming each.
pub fn join_text<'a>(parts: impl IntoIterator<Item = &'a str>) -> String {
    parts
        .into_iter()
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Translation {
    /// The language translated into.
    pub language: String,
    /// The transcript, translated.
    pub text: String,
    /// The call summary, translated (calls whose policy asked for a summary).
    #[serde(default)]
    pub summary: Option<CallSummary>,
    /// The voicemail tasks, translated (voicemails whose policy asked for tasks).
    #[serde(default)]
    pub tasks: Option<Vec<Task>>,
}

/// Everything the pipeline produced for one recording. Serialises to the CLI's JSON line.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RecordingResult {
    pub file: String,
    pub recording_id: String,
    pub duration_s: f64,
    pub speech: bool,
    pub language: Option<Language>,
    pub transcript: Transcript,
    pub translation: Option<Translation>,
    /// Calls: the recap, next steps and summary; `None` for voicemails or when policy is off.
    pub summary: Option<CallSummary>,
    /// Voicemails: what the caller asks for; `None` for calls or when policy is off.
    pub tasks: Option<Vec<Task>>,
    /// Voicemails: matches against the user's priority topics; `None` when policy is off.
    pub priority: Option<Priority>,
    /// Language model work for this recording (absent when no language stage ran).
    #[serde(default)]
    pub llm: Option<LlmStats>,
    /// Stages that ran but gave no usable output (their field stays `None`), as `stage: reason`.
    #[serde(default)]
    pub warnings: Vec<String>,
    /// Wall time per stage in milliseconds (`decode`, `vad`, `asr`, `store`, ...).
    pub timings_ms: BTreeMap<String, u64>,
}

/// Tokens the language model read and wrote for one recording, and how fast.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LlmStats {
    pub calls: usize,
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    pub prompt_tokens_per_s: f64,
    pub generate_tokens_per_s: f64,
    /// Tokens looked up in the prompt and checked along with generated ones, and of those the
    /// ones the model chose (they took no pass of their own).
    #[serde(default)]
    pub draft_tokens: usize,
    #[serde(default)]
    pub accepted_draft_tokens: usize,
}

/// What went wrong, as users and APIs see it. Stable names: they appear in JSON and job rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The input could not be read (missing file, permission).
    Io,
    /// The input is larger than the configured size limit.
    TooLarge,
    /// The audio is longer than the configured duration limit.
    TooLong,
    /// The container or codec is not one we decode.
    UnsupportedFormat,
    /// The data claims a known format but is malformed.
    CorruptAudio,
    /// The file decodes to no samples at all.
    EmptyAudio,
    /// A caller-supplied option is invalid.
    InvalidArgument,
    /// A model is missing or failed.
    Model,
    /// The result store failed.
    Store,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Io => "io",
            ErrorKind::TooLarge => "too_large",
            ErrorKind::TooLong => "too_long",
            ErrorKind::UnsupportedFormat => "unsupported_format",
            ErrorKind::CorruptAudio => "corrupt_audio",
            ErrorKind::EmptyAudio => "empty_audio",
            ErrorKind::InvalidArgument => "invalid_argument",
            ErrorKind::Model => "model",
            ErrorKind::Store => "store",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Anything that can say which [`ErrorKind`] it is.
pub trait Classify {
    fn kind(&self) -> ErrorKind;
}

/// The error line the CLI prints for a file that failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailedRecording {
    pub file: String,
    pub error: ErrorReport,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorReport {
    pub kind: ErrorKind,
    pub message: String,
}

/// How a recording should be treated: voicemails are mixed to mono, calls keep their channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordingKind {
    Voicemail,
    Call,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(start: f64, speaker: &str, text: &str) -> Segment {
        Segment {
            start_s: start,
            end_s: start + 1.0,
            speaker: Some(speaker.into()),
            text: text.into(),
            words: vec![],
        }
    }

    #[test]
    fn transcript_orders_segments_by_time_and_joins_text() {
        let t = Transcript::from_segments(vec![
            seg(2.0, "right", " world "),
            seg(0.5, "left", "hello"),
        ]);
        assert_eq!(t.text, "hello world");
        assert_eq!(t.segments[0].speaker.as_deref(), Some("left"));
    }

    #[test]
    fn error_kinds_serialise_as_their_names() {
        let json = serde_json::to_string(&ErrorKind::UnsupportedFormat).unwrap();
        assert_eq!(json, "\"unsupported_format\"");
        assert_eq!(ErrorKind::TooLong.to_string(), "too_long");
    }
}
