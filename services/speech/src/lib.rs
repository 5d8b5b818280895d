//! Speech recognition with whisper.cpp: one [`SpeechModel`] loaded per process and shared by
//! every job, a fresh whisper state per call, so jobs can run side by side. Fresh, not kept
//! from call to call: a state kept from another recording changed a later transcript (a
//! Spanish voicemail after a German one gave "maya" for "mañana"), and saved only 30–40 ms a
//! call (docs/BENCHMARKS.md).

mod words;

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Once;

use companion_core::{Classify, ErrorKind, Language, Segment};
use tracing::{debug, info, warn};
use whisper_rs::{
    FullParams, SamplingStrategy, WhisperContext, WhisperContextParameters, WhisperState,
};

pub use words::{collapse_loops, words_from_tokens};

const SAMPLE_RATE: usize = 16_000;

#[derive(Debug, thiserror::Error)]
pub enum SpeechError {
    #[error("cannot load Whisper model {path}: {reason}")]
    Load { path: PathBuf, reason: String },
    #[error("Whisper failed: {0}")]
    Inference(String),
    #[error("{0}")]
    InvalidOption(String),
}

impl Classify for SpeechError {
    fn kind(&self) -> ErrorKind {
        match self {
            SpeechError::Load { .. } | SpeechError::Inference(_) => ErrorKind::Model,
            SpeechError::InvalidOption(_) => ErrorKind::InvalidArgument,
        }
    }
}

fn inference(e: whisper_rs::WhisperError) -> SpeechError {
    SpeechError::Inference(e.to_string())
}

/// How a recording is transcribed.
#[derive(Debug, Clone)]
pub struct TranscribeOptions {
    /// 1 decodes greedily; more runs a beam search of that width.
    pub beam_size: u32,
    pub threads: u32,
    /// Languages detection may choose from (ISO 639-1); empty means any.
    pub languages: Vec<String>,
    /// Also produce an English translation with Whisper's own translate task.
    pub translate_to_english: bool,
    /// Run the encoder over the speech only (plus a margin) instead of over 30 s windows of
    /// mostly padding, for language detection and transcription; speech longer than 26 s is
    /// first cut at its quietest points into pieces that short. Speeds up short recordings
    /// several times; `companion bench asr` measures what it does to the word error rate.
    pub fit_encoder_to_audio: bool,
}

impl Default for TranscribeOptions {
    fn default() -> Self {
        TranscribeOptions {
            beam_size: 5,
            threads: std::thread::available_parallelism().map_or(2, |n| n.get() as u32),
            languages: Vec::new(),
            translate_to_english: false,
            fit_encoder_to_audio: true,
        }
    }
}

impl TranscribeOptions {
    /// Checks the allowlist names languages Whisper knows.
    pub fn validate(&self) -> Result<(), SpeechError> {
        if self.beam_size == 0 || self.beam_size > 16 {
            return Err(SpeechError::InvalidOption(format!(
                "beam size {} is out of range 1..=16",
                self.beam_size
            )));
        }
        if self.threads == 0 {
            return Err(SpeechError::InvalidOption(
                "threads must be at least 1".into(),
            ));
        }
        for code in &self.languages {
            if whisper_rs::get_lang_id(code).is_none() {
                return Err(SpeechError::InvalidOption(format!(
                    "unknown language code {code:?} in the language allowlist"
                )));
            }
        }
        Ok(())
    }
}

/// What Whisper heard in one channel of audio.
#[derive(Debug, Clone, Default)]
pub struct Recognition {
    pub language: Option<Language>,
    /// Segments with times relative to the audio given, no speaker.
    pub segments: Vec<Segment>,
    /// English translation of the whole channel, when asked for and the speech is not English.
    pub english: Option<Vec<Segment>>,
}

/// How a Whisper model is loaded.
#[derive(Debug, Clone, Default)]
pub struct SpeechModelOptions {
    /// whisper.cpp's flash attention kernels: less memory, but slower on CPU than the plain
    /// attention with ggml's tiled matrix kernels (docs/BENCHMARKS.md). Off by default.
    pub flash_attn: bool,
}

/// A loaded Whisper model, shared across jobs.
pub struct SpeechModel {
    ctx: WhisperContext,
    path: PathBuf,
}

static LOG_HOOKS: Once = Once::new();

impl SpeechModel {
    /// Loads a GGML Whisper file with the default options.
    pub fn load(path: &Path) -> Result<SpeechModel, SpeechError> {
        Self::load_with(path, &SpeechModelOptions::default())
    }

    /// Loads a GGML Whisper file.
    pub fn load_with(
        path: &Path,
        options: &SpeechModelOptions,
    ) -> Result<SpeechModel, SpeechError> {
        LOG_HOOKS.call_once(whisper_rs::install_logging_hooks);
        let load_err = |reason: String| SpeechError::Load {
            path: path.to_owned(),
            reason,
        };
        if !path.is_file() {
            return Err(load_err("no such file".into()));
        }
        let started = std::time::Instant::now();
        let mut params = WhisperContextParameters::default();
        params.use_gpu(false);
        params.flash_attn(options.flash_attn);
        let path_str = path
            .to_str()
            .ok_or_else(|| load_err("path is not valid UTF-8".into()))?;
        let ctx = WhisperContext::new_with_params(path_str, params)
            .map_err(|e| load_err(format!("{e} (is it a GGML Whisper model?)")))?;
        info!(
            model = %path.display(),
            multilingual = ctx.is_multilingual(),
            flash_attn = options.flash_attn,
            load_ms = started.elapsed().as_millis() as u64,
            "Whisper model loaded"
        );
        Ok(SpeechModel {
            ctx,
            path: path.to_owned(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// whisper.cpp's context, for timing its passes alone (`companion bench whisper`).
    pub fn context(&self) -> &WhisperContext {
        &self.ctx
    }

    pub fn is_multilingual(&self) -> bool {
        self.ctx.is_multilingual()
    }

    /// Transcribes 16 kHz mono samples. Empty input gives an empty result without calling the
    /// model: zero samples never reach whisper.cpp.
    pub fn recognize(
        &self,
        samples: &[f32],
        opts: &TranscribeOptions,
    ) -> Result<Recognition, SpeechError> {
        opts.validate()?;
        if samples.is_empty() {
            return Ok(Recognition::default());
        }
        let mut state = self.ctx.create_state().map_err(inference)?;
        let chunks = if opts.fit_encoder_to_audio {
            plan_chunks(samples, MAX_FITTED_CHUNK)
        } else {
            std::iter::once(0..samples.len()).collect()
        };
        debug!(chunks = chunks.len(), "speech cut for the fitted encoder");
        let language = self.detect_language(&mut state, &samples[chunks[0].clone()], opts)?;
        let code = language.as_ref().map(|l| l.code.clone());
        let segments =
            self.run_chunks(&mut state, samples, &chunks, opts, code.as_deref(), false)?;
        let english = match code.as_deref() {
            Some(code) if opts.translate_to_english && code != "en" && !segments.is_empty() => {
                Some(self.run_chunks(&mut state, samples, &chunks, opts, Some(code), true)?)
            }
            _ => None,
        };
        Ok(Recognition {
            language,
            segments,
            english,
        })
    }

    /// Spoken language from `head` (at most its first 30 s), restricted to the allowlist.
    /// English-only models can only hear English; an allowlist of one language needs no
    /// detection.
    fn detect_language(
        &self,
        state: &mut WhisperState,
        head: &[f32],
        opts: &TranscribeOptions,
    ) -> Result<Option<Language>, SpeechError> {
        if !self.is_multilingual() {
            return Ok(Some(Language {
                code: "en".into(),
                probability: 1.0,
            }));
        }
        if let [only] = opts.languages.as_slice() {
            // One allowed language: detection could only answer it, and costs an encoder pass.
            return Ok(Some(Language {
                code: only.clone(),
                probability: 1.0,
            }));
        }
        let head = &head[..head.len().min(30 * SAMPLE_RATE)];
        match fitted_audio_ctx(head.len()).filter(|_| opts.fit_encoder_to_audio) {
            Some(audio_ctx) => fit_encoder(state, head, audio_ctx, opts.threads)?,
            None => state
                .pcm_to_mel(head, opts.threads as usize)
                .map_err(inference)?,
        }
        let (_, probs) = state
            .lang_detect(0, opts.threads as usize)
            .map_err(inference)?;
        Ok(pick_language(&probs, &opts.languages))
    }

    /// Runs Whisper over each chunk in turn, the segments moved to the timeline of `samples`.
    fn run_chunks(
        &self,
        state: &mut WhisperState,
        samples: &[f32],
        chunks: &[Range<usize>],
        opts: &TranscribeOptions,
        language: Option<&str>,
        translate: bool,
    ) -> Result<Vec<Segment>, SpeechError> {
        let mut segments = Vec::new();
        for chunk in chunks {
            let offset_s = chunk.start as f64 / SAMPLE_RATE as f64;
            let mut found = self.run(state, &samples[chunk.clone()], opts, language, translate)?;
            for segment in &mut found {
                segment.start_s += offset_s;
                segment.end_s += offset_s;
                for word in &mut segment.words {
                    word.start_s += offset_s;
                    word.end_s += offset_s;
                }
            }
            segments.append(&mut found);
        }
        Ok(segments)
    }

    fn run(
        &self,
        state: &mut WhisperState,
        samples: &[f32],
        opts: &TranscribeOptions,
        language: Option<&str>,
        translate: bool,
    ) -> Result<Vec<Segment>, SpeechError> {
        let strategy = if opts.beam_size <= 1 {
            SamplingStrategy::Greedy { best_of: 1 }
        } else {
            SamplingStrategy::BeamSearch {
                beam_size: opts.beam_size as i32,
                patience: -1.0,
            }
        };
        let mut params = FullParams::new(strategy);
        params.set_n_threads(opts.threads as i32);
        params.set_language(language);
        params.set_translate(translate);
        params.set_token_timestamps(true);
        params.set_print_progress(false);
        params.set_print_realtime(false);
        params.set_print_special(false);
        params.set_print_timestamps(false);
        // Whisper's safeguards against loops and invented text: temperature fallback when the
        // output is too repetitive (entropy) or too unlikely (log-probability), the no-speech
        // gate, no non-speech tokens, and no carrying text from one window into the next.
        params.set_temperature(0.0);
        params.set_temperature_inc(0.2);
        params.set_entropy_thold(2.4);
        params.set_logprob_thold(-1.0);
        params.set_no_speech_thold(0.6);
        params.set_suppress_nst(true);
        params.set_suppress_blank(true);
        params.set_no_context(true);
        if opts.fit_encoder_to_audio
            && let Some(audio_ctx) = fitted_audio_ctx(samples.len())
        {
            params.set_audio_ctx(audio_ctx);
        }

        state.full(params, samples).map_err(inference)?;
        let eot = self.ctx.token_eot();
        let mut segments = Vec::new();
        for segment in state.as_iter() {
            let text = segment
                .to_str_lossy()
                .map_err(inference)?
                .trim()
                .to_string();
            if text.is_empty() {
                continue;
            }
            let tokens: Vec<words::Token> = (0..segment.n_tokens())
                .filter_map(|i| segment.get_token(i))
                .filter(|t| t.token_id() < eot)
                .filter_map(|t| {
                    let data = t.token_data();
                    Some(words::Token {
                        text: t.to_str_lossy().ok()?.into_owned(),
                        start_s: data.t0 as f64 / 100.0,
                        end_s: data.t1 as f64 / 100.0,
                        probability: data.p,
                    })
                })
                .collect();
            let mut words = words_from_tokens(&tokens);
            let text = if collapse_loops(&mut words) {
                warn!(segment = %text, "Whisper repeated itself; the loop was removed");
                words
                    .iter()
                    .map(|w| w.text.as_str())
                    .collect::<Vec<_>>()
                    .join(" ")
            } else {
                text
            };
            if text.is_empty() {
                continue;
            }
            segments.push(Segment {
                start_s: segment.start_timestamp() as f64 / 100.0,
                end_s: segment.end_timestamp() as f64 / 100.0,
                speaker: None,
                text,
                words,
            });
        }
        debug!(segments = segments.len(), translate, "whisper pass done");
        Ok(segments)
    }
}

/// Computes the mel spectrogram of `head` and sets the encoder context that language detection
/// will use to `audio_ctx`. whisper.cpp's detection takes that size from the state's last
/// `full` call and has no parameter of its own, so this runs a `full` call over the head that
/// stops at its first encoder pass (the encoder-begin callback refuses): the mel and the size
/// are set, no model pass is made and no text is produced. A later `encode` call on the state
/// also runs over `audio_ctx` positions (`companion bench whisper` times it so).
pub fn fit_encoder(
    state: &mut WhisperState,
    head: &[f32],
    audio_ctx: i32,
    threads: u32,
) -> Result<(), SpeechError> {
    unsafe extern "C" fn refuse_encoding(
        _ctx: *mut whisper_rs::WhisperSysContext,
        _state: *mut whisper_rs::WhisperSysState,
        _user_data: *mut std::ffi::c_void,
    ) -> bool {
        false
    }
    let mut params = FullParams::new(SamplingStrategy::Greedy { best_of: 1 });
    params.set_n_threads(threads as i32);
    // A language is given so that `full` does not detect one itself (an encoder pass).
    params.set_language(Some("en"));
    params.set_audio_ctx(audio_ctx);
    params.set_print_progress(false);
    params.set_print_realtime(false);
    params.set_print_special(false);
    params.set_print_timestamps(false);
    // SAFETY: the callback touches neither pointer; it only answers "do not encode".
    unsafe { params.set_start_encoder_callback(Some(refuse_encoding)) };
    state.full(params, head).map_err(inference)?;
    Ok(())
}

/// Encoder positions (20 ms each, 1500 for Whisper's 30 s window) covering `samples` at
/// 16 kHz with a margin of 2 s, rounded up to a multiple of 64; `None` when that is the whole
/// window anyway.
fn fitted_audio_ctx(samples: usize) -> Option<i32> {
    const FULL: usize = 1500;
    const MARGIN: usize = 100;
    let positions = samples.div_ceil(SAMPLE_RATE / 50) + MARGIN;
    let positions = positions.div_ceil(64) * 64;
    (positions < FULL).then_some(positions as i32)
}

/// The longest audio the encoder can be fitted to (see [`fitted_audio_ctx`]).
const MAX_FITTED_CHUNK: usize = 26 * SAMPLE_RATE;

/// Cuts `samples` into consecutive ranges of at most `max` samples, so that long speech runs
/// through an encoder fitted to each piece instead of through whole 30 s windows. Each cut
/// goes at the quietest 50 ms in the second half of the span it ends (between the joined
/// regions of voice activity detection, or in a pause), so no word is split.
fn plan_chunks(samples: &[f32], max: usize) -> Vec<Range<usize>> {
    const FRAME: usize = SAMPLE_RATE / 100;
    const QUIET_FRAMES: usize = 5;
    let mut chunks = Vec::new();
    let mut start = 0;
    while samples.len() - start > max {
        // Energy of each 10 ms frame in the second half of the span; the first quietest run of
        // frames wins.
        let first = max / 2 / FRAME;
        let energy: Vec<f32> = samples[start + first * FRAME..start + max]
            .chunks_exact(FRAME)
            .map(|frame| frame.iter().map(|x| x * x).sum())
            .collect();
        let quietest = energy
            .windows(QUIET_FRAMES)
            .map(|run| run.iter().sum::<f32>())
            .enumerate()
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .map_or(0, |(i, _)| i);
        let cut = start + (first + quietest + QUIET_FRAMES / 2) * FRAME;
        chunks.push(start..cut);
        start = cut;
    }
    chunks.push(start..samples.len());
    chunks
}

/// The most probable language among the allowed ones, with its probability renormalised over
/// the allowlist (so an allowlist of two gives a probability between the two).
fn pick_language(probs: &[f32], allowlist: &[String]) -> Option<Language> {
    let candidates: Vec<(usize, f32)> = probs
        .iter()
        .copied()
        .enumerate()
        .filter(|(id, _)| {
            allowlist.is_empty()
                || whisper_rs::get_lang_str(*id as i32)
                    .is_some_and(|code| allowlist.iter().any(|a| a == code))
        })
        .collect();
    let total: f32 = candidates.iter().map(|(_, p)| p).sum();
    let (id, p) = candidates.into_iter().max_by(|a, b| a.1.total_cmp(&b.1))?;
    let code = whisper_rs::get_lang_str(id as i32)?;
    let probability = if allowlist.is_empty() || total <= 0.0 {
        p
    } else {
        p / total
    };
    Some(Language {
        code: code.to_string(),
        probability,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probs(pairs: &[(&str, f32)]) -> Vec<f32> {
        let mut v = vec![0.0; whisper_rs::get_lang_max_id() as usize + 1];
        for (code, p) in pairs {
            v[whisper_rs::get_lang_id(code).unwrap() as usize] = *p;
        }
        v
    }

    #[test]
    fn picks_the_most_probable_language() {
        let l = pick_language(&probs(&[("en", 0.2), ("es", 0.7)]), &[]).unwrap();
        assert_eq!(l.code, "es");
        assert!((l.probability - 0.7).abs() < 1e-6);
    }

    #[test]
    fn allowlist_restricts_and_renormalises() {
        let p = probs(&[("pt", 0.6), ("es", 0.3), ("en", 0.1)]);
        let l = pick_language(&p, &["en".into(), "es".into()]).unwrap();
        assert_eq!(l.code, "es");
        assert!((l.probability - 0.75).abs() < 1e-6);
    }

    #[test]
    fn encoder_context_fits_short_audio() {
        // 10 s: 500 positions + 100 margin, rounded up to 640.
        assert_eq!(fitted_audio_ctx(10 * SAMPLE_RATE), Some(640));
        assert_eq!(fitted_audio_ctx(1), Some(128));
        // 28 s and more need the whole window.
        assert_eq!(fitted_audio_ctx(28 * SAMPLE_RATE), None);
        assert_eq!(fitted_audio_ctx(90 * SAMPLE_RATE), None);
    }

    #[test]
    fn long_speech_is_cut_at_its_quietest_points() {
        let tone = |n: usize| (0..n).map(|i| (i as f32 * 0.05).sin() * 0.3);
        // 40 s of tone with a 200 ms pause at 15 s and another at 34 s.
        let mut samples: Vec<f32> = tone(15 * SAMPLE_RATE).collect();
        samples.extend(std::iter::repeat_n(0.0, SAMPLE_RATE / 5));
        samples.extend(tone(19 * SAMPLE_RATE - SAMPLE_RATE / 5));
        samples.extend(std::iter::repeat_n(0.0, SAMPLE_RATE / 5));
        samples.extend(tone(6 * SAMPLE_RATE - SAMPLE_RATE / 5));
        let chunks = plan_chunks(&samples, MAX_FITTED_CHUNK);
        assert_eq!(chunks.len(), 2, "{chunks:?}");
        assert_eq!(chunks[0].start, 0);
        assert_eq!(chunks[1].end, samples.len());
        assert_eq!(chunks[0].end, chunks[1].start);
        let pause = 15 * SAMPLE_RATE..15 * SAMPLE_RATE + SAMPLE_RATE / 5;
        assert!(pause.contains(&chunks[0].end), "{chunks:?}");
        for chunk in &chunks {
            assert!(fitted_audio_ctx(chunk.len()).is_some(), "{chunk:?}");
        }
    }

    #[test]
    fn speech_without_pauses_is_still_cut_to_fit() {
        let samples: Vec<f32> = (0..95 * SAMPLE_RATE)
            .map(|i| (i as f32 * 0.01).sin())
            .collect();
        let chunks = plan_chunks(&samples, MAX_FITTED_CHUNK);
        assert!(chunks.len() >= 4, "{chunks:?}");
        assert_eq!(chunks.last().unwrap().end, samples.len());
        for pair in chunks.windows(2) {
            assert_eq!(pair[0].end, pair[1].start);
        }
        assert!(chunks.iter().all(|c| fitted_audio_ctx(c.len()).is_some()));
        // Short audio stays whole.
        assert_eq!(
            plan_chunks(&samples[..SAMPLE_RATE], MAX_FITTED_CHUNK),
            vec![0..SAMPLE_RATE]
        );
    }

    #[test]
    fn options_are_validated() {
        let mut o = TranscribeOptions::default();
        assert!(o.validate().is_ok());
        o.languages = vec!["xx".into()];
        assert!(o.validate().is_err());
        o.languages.clear();
        o.beam_size = 0;
        assert!(o.validate().is_err());
    }
}
