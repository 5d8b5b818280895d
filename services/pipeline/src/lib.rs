//! The recording pipeline: bytes in, [`RecordingResult`] out. Decode ▸ resample ▸ VAD ▸ Whisper
//! per channel ▸ speakers merged by time ▸ the language stages the recording's policy allows
//! (tasks, summary, priority, translation). Synchronous and CPU-bound: callers run it on a
//! blocking thread. Models are shared; everything else is per call.

mod language;

pub use language::RecordingContext;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use companion_audio::vad::{SpeechAudio, VadOptions, detect_speech};
use companion_audio::{AudioError, ChannelMode, DecodeOptions, decode_bytes, to_16k};
use companion_core::{
    Classify, ErrorKind, Language, RecordingKind, RecordingResult, Segment, Transcript,
    Translation, join_text,
};
use companion_language::{Error as LanguageError, LanguageModels};
use companion_speech::{Recognition, SpeechError, SpeechModel, TranscribeOptions};
use sha2::{Digest, Sha256};
use tracing::{info, info_span};

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Audio(#[from] AudioError),
    #[error(transparent)]
    Speech(#[from] SpeechError),
    #[error("language model: {0}")]
    Language(#[from] LanguageError),
    #[error("{0}")]
    InvalidArgument(String),
}

impl Classify for PipelineError {
    fn kind(&self) -> ErrorKind {
        match self {
            PipelineError::Audio(e) => e.kind(),
            PipelineError::Speech(e) => e.kind(),
            PipelineError::Language(LanguageError::InvalidInput(_)) => ErrorKind::InvalidArgument,
            PipelineError::Language(_) => ErrorKind::Model,
            PipelineError::InvalidArgument(_) => ErrorKind::InvalidArgument,
        }
    }
}

/// Everything that shapes how recordings are processed.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    pub decode: DecodeOptions,
    pub vad: VadOptions,
    pub transcribe: TranscribeOptions,
    /// Labels of the channels of a call recording, in channel order.
    pub speakers: Vec<String>,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            decode: DecodeOptions::default(),
            vad: VadOptions::default(),
            transcribe: TranscribeOptions::default(),
            speakers: vec!["left".into(), "right".into()],
        }
    }
}

/// One recording to process.
#[derive(Debug, Clone)]
pub struct Input {
    /// Name shown in results (the path as given).
    pub file: String,
    /// The recording's id in the store (see [`recording_id_for`]).
    pub recording_id: String,
    /// File extension without the dot, if any: helps the container probe.
    pub extension: Option<String>,
    pub bytes: Vec<u8>,
    /// Voicemail or call; `None` lets the channel count decide (stereo = call).
    pub kind: Option<RecordingKind>,
    /// The user's policy, topics and translation target.
    pub context: RecordingContext,
}

/// A processed recording and the kind it was treated as.
#[derive(Debug, Clone)]
pub struct Processed {
    pub result: RecordingResult,
    pub kind: RecordingKind,
}

/// The stable id of a recording processed from a file: derived from its content, so the same
/// audio is the same recording however it is named.
pub fn recording_id_for(sha256_hex: &str) -> String {
    format!("rec_{}", &sha256_hex[..24])
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub struct Pipeline {
    speech: Arc<SpeechModel>,
    /// `None`: transcription only; no language stage runs.
    language: Option<Arc<LanguageModels>>,
    config: PipelineConfig,
}

/// Measures stages into `timings_ms`.
struct Timer {
    timings: BTreeMap<String, u64>,
}

impl Timer {
    fn time<T>(&mut self, stage: &str, f: impl FnOnce() -> T) -> T {
        let started = Instant::now();
        let _span = info_span!("stage", stage).entered();
        let out = f();
        self.add(stage, started.elapsed().as_millis() as u64);
        out
    }

    fn add(&mut self, stage: &str, ms: u64) {
        *self.timings.entry(stage.to_string()).or_default() += ms;
    }
}

impl Pipeline {
    pub fn new(
        speech: Arc<SpeechModel>,
        config: PipelineConfig,
    ) -> Result<Pipeline, PipelineError> {
        config.transcribe.validate()?;
        if config.speakers.iter().any(|s| s.trim().is_empty()) {
            return Err(PipelineError::InvalidArgument(
                "speaker labels must not be empty".into(),
            ));
        }
        Ok(Pipeline {
            speech,
            language: None,
            config,
        })
    }

    /// Adds the language stages (tasks, summary, priority, translation) with these models.
    pub fn with_language(mut self, models: Arc<LanguageModels>) -> Pipeline {
        self.language = Some(models);
        self
    }

    pub fn config(&self) -> &PipelineConfig {
        &self.config
    }

    /// Runs every stage on one recording.
    pub fn process(&self, input: Input) -> Result<Processed, PipelineError> {
        let started = Instant::now();
        let mut timer = Timer {
            timings: BTreeMap::new(),
        };
        let recording_id = input.recording_id;
        let _span = info_span!("recording", id = %recording_id, file = %input.file).entered();

        let audio = timer.time("decode", || {
            decode_bytes(input.bytes, input.extension.as_deref(), &self.config.decode)
        })?;
        let duration_s = audio.duration_s();
        let stereo = audio.channels.len() >= 2;
        let kind = input.kind.unwrap_or(if stereo {
            RecordingKind::Call
        } else {
            RecordingKind::Voicemail
        });
        let mode = if kind == RecordingKind::Call && stereo {
            ChannelMode::Separate
        } else {
            ChannelMode::Mix
        };
        let channels = timer.time("resample", || to_16k(audio, mode))?;
        let speech: Vec<SpeechAudio> = timer.time("vad", || {
            channels
                .iter()
                .map(|samples| {
                    SpeechAudio::gather(samples, &detect_speech(samples, &self.config.vad))
                })
                .collect()
        });
        drop(channels);

        let context = &input.context;
        let transcribe = self.transcribe_options(context, kind);
        let recognitions = timer.time("asr", || {
            speech
                .iter()
                .map(|s| self.speech.recognize(&s.samples, &transcribe))
                .collect::<Result<Vec<Recognition>, SpeechError>>()
        })?;

        let labels: Vec<Option<String>> = if mode == ChannelMode::Separate {
            (0..speech.len())
                .map(|i| {
                    Some(
                        self.config
                            .speakers
                            .get(i)
                            .cloned()
                            .unwrap_or_else(|| format!("channel{}", i + 1)),
                    )
                })
                .collect()
        } else {
            vec![None]
        };
        let mut segments = Vec::new();
        let mut english = Vec::new();
        for ((recognition, map), label) in recognitions.iter().zip(&speech).zip(&labels) {
            segments.extend(to_timeline(&recognition.segments, map, label));
            if let Some(en) = &recognition.english {
                english.extend(to_timeline(en, map, label));
            }
        }
        let transcript = Transcript::from_segments(segments);
        let speech_found = !transcript.segments.is_empty();
        let language = if speech_found {
            dominant_language(&recognitions)
        } else {
            None
        };
        let english = (!english.is_empty()).then(|| Transcript::from_segments(english).text);
        let mut result = RecordingResult {
            file: input.file,
            recording_id,
            duration_s,
            speech: speech_found,
            language,
            transcript,
            ..Default::default()
        };
        match &self.language {
            Some(models) => language::LanguageStages {
                models,
                context,
                kind,
                english,
            }
            .run(&mut result, &mut timer)?,
            None => result.translation = self.whisper_translation(&result, english),
        }

        timer
            .timings
            .insert("total".into(), started.elapsed().as_millis() as u64);
        info!(
            duration_s,
            speech = speech_found,
            language = result.language.as_ref().map(|l| l.code.as_str()),
            total_ms = timer.timings["total"],
            "recording processed"
        );
        result.timings_ms = timer.timings;
        Ok(Processed { result, kind })
    }

    /// Whisper's options for one recording: the policy's language allowlist when it has one,
    /// and its translate task when an English rendering will be used.
    fn transcribe_options(
        &self,
        context: &RecordingContext,
        kind: RecordingKind,
    ) -> TranscribeOptions {
        let mut options = self.config.transcribe.clone();
        if !context.policy.language_allowlist.is_empty() {
            options.languages = context.policy.language_allowlist.clone();
        }
        if self.language.is_some() && context.wants_english(kind) {
            options.translate_to_english = true;
        }
        options
    }

    /// Transcription only (`transcribe`): Whisper's English translation when it was asked for,
    /// or the transcript itself when the speech already is English.
    fn whisper_translation(
        &self,
        result: &RecordingResult,
        english: Option<String>,
    ) -> Option<Translation> {
        if !self.config.transcribe.translate_to_english || !result.speech {
            return None;
        }
        let text = if result.language.as_ref().is_some_and(|l| l.code == "en") {
            result.transcript.text.clone()
        } else {
            english.unwrap_or_default()
        };
        Some(Translation {
            language: "en".into(),
            text,
            summary: None,
            tasks: None,
        })
    }
}

/// Moves segments from the VAD-joined timeline to the recording's, labelling the speaker.
fn to_timeline(segments: &[Segment], map: &SpeechAudio, speaker: &Option<String>) -> Vec<Segment> {
    segments
        .iter()
        .map(|s| {
            let mut s = s.clone();
            s.start_s = round_ms(map.to_original_s(s.start_s));
            s.end_s = round_ms(map.to_original_s(s.end_s));
            for w in &mut s.words {
                w.start_s = round_ms(map.to_original_s(w.start_s));
                w.end_s = round_ms(map.to_original_s(w.end_s));
            }
            s.speaker = speaker.clone();
            s
        })
        .collect()
}

fn round_ms(t: f64) -> f64 {
    (t * 1000.0).round() / 1000.0
}

/// The language of the channel with the most recognised text (mono: its only channel).
fn dominant_language(recognitions: &[Recognition]) -> Option<Language> {
    recognitions
        .iter()
        .filter(|r| !r.segments.is_empty())
        .max_by_key(|r| join_text(r.segments.iter().map(|s| s.text.as_str())).len())
        .and_then(|r| r.language.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use companion_audio::vad::SpeechRegion;

    #[test]
    fn recording_ids_come_from_content() {
        let a = recording_id_for(&sha256_hex(b"audio"));
        assert_eq!(a, recording_id_for(&sha256_hex(b"audio")));
        assert_ne!(a, recording_id_for(&sha256_hex(b"other")));
        assert!(a.starts_with("rec_") && a.len() == 28);
    }

    #[test]
    fn segments_move_to_the_recording_timeline_with_speaker() {
        let samples = vec![0.0; 16000 * 10];
        let map = SpeechAudio::gather(
            &samples,
            &[SpeechRegion {
                start: 48000,
                end: 64000,
            }],
        );
        let seg = Segment {
            start_s: 0.25,
            end_s: 0.75,
            speaker: None,
            text: "hi".into(),
            words: vec![],
        };
        let out = to_timeline(&[seg], &map, &Some("agent".into()));
        assert_eq!(out[0].start_s, 3.25);
        assert_eq!(out[0].end_s, 3.75);
        assert_eq!(out[0].speaker.as_deref(), Some("agent"));
    }

    #[test]
    fn the_talkative_channel_decides_the_language() {
        let rec = |code: &str, text: &str| Recognition {
            language: Some(Language {
                code: code.into(),
                probability: 0.9,
            }),
            segments: vec![Segment {
                start_s: 0.0,
                end_s: 1.0,
                speaker: None,
                text: text.into(),
                words: vec![],
            }],
            english: None,
        };
        let langs = [
            rec("en", "ok"),
            rec("es", "hola, quisiera hablar con alguien"),
        ];
        assert_eq!(dominant_language(&langs).unwrap().code, "es");
        assert_eq!(dominant_language(&[]), None);
    }
}
