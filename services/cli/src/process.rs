//! `companion transcribe|process FILE…`: each file through the pipeline, results stored in the
//! embedded store and printed one per line in input order.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use companion_audio::RawFormat;
use companion_core::Intent;
use companion_core::policy::{EffectivePolicy, Level, Setting};
use companion_core::{Classify, ErrorKind, ErrorReport, FailedRecording, RecordingKind};
use companion_language::{
    Backend, DEFAULT_MAX_DRAFT, EMBEDDING_ROLE, LLM_ROLE, LanguageModels, MAX_DRAFT,
};
use companion_models::{ModelCache, resolve_asr_model, resolve_model};
use companion_pipeline::{
    Input, Pipeline, PipelineConfig, PipelineError, Processed, RecordingContext,
};
use companion_speech::{SpeechModel, SpeechModelOptions, TranscribeOptions};
use companion_store::{NewRecording, Outcome, Store};
use indicatif::{ProgressBar, ProgressStyle};

use crate::output::{OutputFormat, render};

/// Options that shape the pipeline, shared by `process`, `transcribe` and `eval`.
#[derive(Args, Clone, Debug)]
pub struct PipelineArgs {
    /// Whisper model: a name from `companion models list` or the path of any GGML Whisper file.
    #[arg(long, env = "COMPANION_ASR_MODEL", default_value = "whisper-base-q8_0")]
    pub asr_model: String,
    /// Beam width; 1 decodes greedily.
    #[arg(long, env = "COMPANION_BEAM_SIZE", default_value_t = 5)]
    pub beam_size: u32,
    /// CPU threads for Whisper (default: all cores).
    #[arg(long, env = "COMPANION_THREADS")]
    pub threads: Option<u32>,
    /// Languages detection may choose from, comma-separated (e.g. en,es,de,fr); default any.
    #[arg(long, env = "COMPANION_LANGUAGES", value_delimiter = ',')]
    pub languages: Vec<String>,
    /// Translate into this language (ISO 639-1). `transcribe`: Whisper's own task, English only.
    /// `process`: the transcript, summary and tasks through the LLM (English speech-to-text
    /// through Whisper), unless a policy locked translation off.
    #[arg(long, env = "COMPANION_TRANSLATE_TO")]
    pub translate_to: Option<String>,
    /// Speaker labels of a stereo call's channels, comma-separated, in channel order.
    #[arg(
        long,
        env = "COMPANION_SPEAKERS",
        value_delimiter = ',',
        default_value = "left,right"
    )]
    pub speakers: Vec<String>,
    /// Read input as headerless audio: ulaw, alaw, slin, slin16, gsm, optionally NAME:RATE.
    #[arg(long, env = "COMPANION_RAW_FORMAT")]
    pub raw_format: Option<String>,
    /// Longest recording accepted, in seconds.
    #[arg(long, env = "COMPANION_MAX_DURATION_S", default_value_t = 1800.0)]
    pub max_duration_s: f64,
    /// Largest input file accepted, in bytes.
    #[arg(long, env = "COMPANION_MAX_BYTES", default_value_t = 256 * 1024 * 1024)]
    pub max_bytes: u64,
    /// Run Whisper's encoder over the speech only, not over 30 s windows: short speech plus a
    /// margin, longer speech cut at its pauses into pieces of at most 26 s (several times
    /// faster on short voicemails, 1.3–1.9× on speech of 28–36 s, at the same accuracy;
    /// docs/BENCHMARKS.md).
    #[arg(long, env = "COMPANION_FIT_ENCODER", default_value_t = true, action = clap::ArgAction::Set)]
    pub fit_encoder: bool,
    /// whisper.cpp's flash attention (less memory; slower on CPU, docs/BENCHMARKS.md).
    #[arg(long, env = "COMPANION_FLASH_ATTN", default_value_t = false, action = clap::ArgAction::Set)]
    pub flash_attn: bool,
}

impl PipelineArgs {
    /// Checks the options and builds the pipeline configuration (no model loaded yet).
    /// `language_stages`: translation goes through the language stages, not Whisper's task.
    pub fn config(&self, language_stages: bool) -> Result<PipelineConfig> {
        let mut config = PipelineConfig::default();
        config.decode.max_bytes = self.max_bytes;
        if !self.max_duration_s.is_finite() || self.max_duration_s <= 0.0 {
            bail!("--max-duration-s must be positive");
        }
        config.decode.max_duration_s = self.max_duration_s;
        config.decode.raw_format = self
            .raw_format
            .as_deref()
            .map(str::parse::<RawFormat>)
            .transpose()?;
        let translate_to_english = match self.translate_to.as_deref() {
            None | Some("") => false,
            Some(_) if language_stages => false,
            Some("en") => true,
            Some(other) => bail!(
                "--translate-to {other}: speech translation goes to English only (--translate-to en)"
            ),
        };
        config.transcribe = TranscribeOptions {
            beam_size: self.beam_size,
            threads: self.threads.unwrap_or(TranscribeOptions::default().threads),
            languages: self
                .languages
                .iter()
                .map(|l| l.trim().to_ascii_lowercase())
                .filter(|l| !l.is_empty())
                .collect(),
            translate_to_english,
            fit_encoder_to_audio: self.fit_encoder,
        };
        config.transcribe.validate()?;
        config.speakers = self.speakers.iter().map(|s| s.trim().to_string()).collect();
        Ok(config)
    }

    /// Loads the Whisper model once and builds the pipeline; with `language`, the language
    /// stages too (their models load on first use).
    pub fn pipeline(&self, models_dir: &Path, language: Option<&LanguageArgs>) -> Result<Pipeline> {
        self.pipeline_parts(models_dir, language)
            .map(|(pipeline, _)| pipeline)
    }

    /// [`PipelineArgs::pipeline`], also handing back the language models (to warm them up).
    pub fn pipeline_parts(
        &self,
        models_dir: &Path,
        language: Option<&LanguageArgs>,
    ) -> Result<(Pipeline, Option<Arc<LanguageModels>>)> {
        let config = self.config(language.is_some())?;
        let cache = ModelCache::new(models_dir);
        // Resolve every model first: a missing one is a setup error before any work starts.
        let language_models = language
            .map(|l| l.models(&cache, self.threads.map(|t| t as usize)))
            .transpose()?
            .map(Arc::new);
        let path = resolve_asr_model(&self.asr_model, &cache)?;
        let model = SpeechModel::load_with(
            &path,
            &SpeechModelOptions {
                flash_attn: self.flash_attn,
            },
        )?;
        let pipeline = Pipeline::new(Arc::new(model), config)?;
        Ok(match language_models {
            Some(models) => (pipeline.with_language(models.clone()), Some(models)),
            None => (pipeline, None),
        })
    }
}

/// The language stages' models, shared by `process` and `eval`.
#[derive(Args, Clone, Debug)]
pub struct LanguageArgs {
    /// Chat model for tasks, summaries and translation: a name from `companion models list` or
    /// the path of a GGUF file.
    #[arg(long, env = "COMPANION_LLM_MODEL", default_value = DEFAULT_LLM)]
    pub llm_model: String,
    /// Sentence embedding model for priority topics: a name or a directory.
    #[arg(
        long,
        env = "COMPANION_EMBEDDING_MODEL",
        default_value = "all-minilm-l6-v2"
    )]
    pub embedding_model: String,
    /// LLM runtime: engine (our own; default on CPUs with AVX2 or AVX-512 VNNI), llama.cpp or candle.
    #[arg(long, env = "COMPANION_LLM_BACKEND", default_value_t = Backend::default())]
    pub llm_backend: Backend,
    /// Tokens the engine checks with each generated one, looked up where the answer's latest
    /// tokens occurred in the prompt or the answer (0: one token a pass). Same answer, fewer
    /// passes when it copies names, numbers and phrases.
    #[arg(
        long,
        env = "COMPANION_LLM_DRAFT",
        default_value_t = DEFAULT_MAX_DRAFT as u16,
        value_parser = clap::value_parser!(u16).range(0..=MAX_DRAFT as i64)
    )]
    pub llm_draft: u16,
}

/// The default chat model (see docs/BENCHMARKS.md for the speed and quality behind the choice).
pub const DEFAULT_LLM: &str = "qwen2.5-0.5b-q4ffn";

impl LanguageArgs {
    pub fn models(&self, cache: &ModelCache, threads: Option<usize>) -> Result<LanguageModels> {
        let llm = resolve_model(&self.llm_model, LLM_ROLE, cache)?;
        let embedder = resolve_model(&self.embedding_model, EMBEDDING_ROLE, cache)?;
        Ok(LanguageModels::new(llm, embedder, threads)
            .with_backend(self.llm_backend)
            .with_max_draft(self.llm_draft.into()))
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum KindArg {
    Voicemail,
    Call,
}

#[derive(Args, Debug)]
pub struct ProcessArgs {
    /// Recordings to process.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    #[command(flatten)]
    pipeline: PipelineArgs,
    /// Output format on stdout.
    #[arg(long, env = "COMPANION_FORMAT", value_enum, default_value_t = OutputFormat::Json)]
    format: OutputFormat,
    /// Result store: a SQLite file path or sqlite: URL.
    #[arg(long, env = "COMPANION_DB", default_value = "./companion.db")]
    db: String,
    /// Treat recordings as voicemails or calls (default: stereo files are calls).
    #[arg(long, env = "COMPANION_KIND", value_enum)]
    kind: Option<KindArg>,
    /// The user the recordings belong to: their policy, preferred language and priority topics
    /// come from the store (`companion policy|user|intents`).
    #[arg(long, env = "COMPANION_USER")]
    user: Option<String>,
    /// Tenant of the user in the store.
    #[arg(long, env = "COMPANION_TENANT", default_value = "local")]
    tenant: String,
    /// Priority topics for these recordings instead of the user's: a TSV file, one
    /// `name<TAB>description` a line.
    #[arg(long, env = "COMPANION_INTENTS")]
    intents: Option<PathBuf>,
    #[command(flatten)]
    language: LanguageArgs,
}

/// `transcribe` stops after speech; `process` runs the language stages too.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Transcribe,
    Process,
}

pub fn run(args: ProcessArgs, mode: Mode, models_dir: &Path) -> Result<ExitCode> {
    let language = (mode == Mode::Process).then_some(&args.language);
    let pipeline = args.pipeline.pipeline(models_dir, language)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let store = runtime
        .block_on(Store::open(&args.db))
        .with_context(|| format!("cannot open the result store {}", args.db))?;
    let context = match mode {
        Mode::Process => runtime.block_on(recording_context(&args, &store))?,
        Mode::Transcribe => RecordingContext::default(),
    };
    let kind = args.kind.map(|k| match k {
        KindArg::Voicemail => RecordingKind::Voicemail,
        KindArg::Call => RecordingKind::Call,
    });

    let progress = ProgressBar::new(args.files.len() as u64);
    progress.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    if !progress.is_hidden() {
        progress.enable_steady_tick(std::time::Duration::from_millis(200));
    }

    let stdout = std::io::stdout();
    let mut failed = false;
    for (index, path) in args.files.iter().enumerate() {
        progress.set_message(path.display().to_string());
        let line = match process_one(
            &pipeline,
            &store,
            &runtime,
            path,
            kind,
            args.user.as_deref(),
            &context,
        ) {
            Ok(processed) => render(args.format, &processed.result, index),
            Err(report) => {
                failed = true;
                progress.suspend(|| {
                    eprintln!(
                        "companion: {}: {} ({})",
                        report.file, report.error.message, report.error.kind
                    )
                });
                match args.format {
                    OutputFormat::Json => serde_json::to_string(&report)?,
                    _ => String::new(),
                }
            }
        };
        progress.suspend(|| -> Result<()> {
            let mut out = stdout.lock();
            if !line.is_empty() {
                writeln!(out, "{line}")?;
            }
            out.flush()?;
            Ok(())
        })?;
        progress.inc(1);
    }
    progress.finish_and_clear();
    runtime.block_on(store.close());
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// One file: read, process, store. Every failure becomes a report for that file alone.
fn process_one(
    pipeline: &Pipeline,
    store: &Store,
    runtime: &tokio::runtime::Runtime,
    path: &Path,
    kind: Option<RecordingKind>,
    user: Option<&str>,
    context: &RecordingContext,
) -> Result<Processed, FailedRecording> {
    let file = path.display().to_string();
    let fail = |kind: ErrorKind, message: String| FailedRecording {
        file: file.clone(),
        error: ErrorReport { kind, message },
    };
    let bytes = companion_audio::read_file(path, pipeline.config().decode.max_bytes)
        .map_err(|e| fail(e.kind(), e.to_string()))?;
    let sha256 = companion_pipeline::sha256_hex(&bytes);
    let recording = NewRecording {
        id: companion_pipeline::recording_id_for(&sha256),
        tenant_id: "local".into(),
        user_id: user.map(str::to_owned),
        kind: kind.unwrap_or(RecordingKind::Voicemail),
        source: std::fs::canonicalize(path)
            .unwrap_or_else(|_| path.to_owned())
            .display()
            .to_string(),
        sha256,
        size_bytes: bytes.len() as u64,
    };
    let input = Input {
        file: file.clone(),
        recording_id: recording.id.clone(),
        extension: path.extension().and_then(|e| e.to_str()).map(str::to_owned),
        bytes,
        kind,
        context: context.clone(),
    };
    let outcome = pipeline.process(input);
    // Store what happened, success or failure, under the recording.
    let store_started = Instant::now();
    let stored = runtime.block_on(async {
        let recording = match &outcome {
            Ok(p) => NewRecording {
                kind: p.kind,
                ..recording.clone()
            },
            Err(_) => recording.clone(),
        };
        store.upsert_recording(&recording).await?;
        match &outcome {
            Ok(processed) => {
                store
                    .add_result(&recording.id, Outcome::Done(&processed.result))
                    .await
            }
            Err(e) => {
                let report = ErrorReport {
                    kind: e.kind(),
                    message: e.to_string(),
                };
                store
                    .add_result(&recording.id, Outcome::Failed(&report))
                    .await
            }
        }
    });
    let mut processed = outcome.map_err(|e: PipelineError| fail(e.kind(), e.to_string()))?;
    stored.map_err(|e| fail(e.kind(), format!("result not stored: {e}")))?;
    processed
        .result
        .timings_ms
        .insert("store".into(), store_started.elapsed().as_millis() as u64);
    Ok(processed)
}

/// The user's effective policy, topics and translation target from the store, with the command
/// line's `--translate-to`, `--languages` and `--intents` applied as the user's own choices: a
/// setting an administrator locked above the user stays as locked.
async fn recording_context(args: &ProcessArgs, store: &Store) -> Result<RecordingContext> {
    let tenant = args.tenant.as_str();
    let (mut policy, profile, mut intents) = match args.user.as_deref() {
        Some(user) => {
            let (policy, profile) = store.effective_policy(tenant, user).await?;
            (policy, profile, store.intents(tenant, user).await?)
        }
        None => (EffectivePolicy::default(), None, Vec::new()),
    };
    if let Some(path) = &args.intents {
        intents = read_intents(path)?;
    }
    let languages: Vec<String> = args
        .pipeline
        .languages
        .iter()
        .map(|l| l.trim().to_ascii_lowercase())
        .filter(|l| !l.is_empty())
        .collect();
    if !languages.is_empty() {
        if locked_above_user(&policy, Setting::LanguageAllowlist) {
            tracing::warn!("--languages ignored: the language allowlist is locked by policy");
        } else {
            policy.language_allowlist = languages;
        }
    }
    let preferred = profile
        .as_ref()
        .and_then(|p| p.preferred_language.as_deref());
    let mut translate_to = policy.translation_target(preferred);
    if let Some(target) = args
        .pipeline
        .translate_to
        .as_deref()
        .filter(|t| !t.is_empty())
    {
        if locked_above_user(&policy, Setting::Translation) && !policy.translation.enabled {
            bail!("--translate-to {target}: translation is turned off and locked by policy");
        }
        translate_to = Some(companion_core::policy::language_code(target)?);
    }
    Ok(RecordingContext {
        policy,
        intents,
        translate_to,
    })
}

fn locked_above_user(policy: &EffectivePolicy, setting: Setting) -> bool {
    policy
        .source(setting)
        .is_some_and(|s| s.locked && s.level < Level::User)
}

/// Reads an intents TSV: `name<TAB>description` per line; blank lines and `#` comments skipped.
pub fn read_intents(path: &Path) -> Result<Vec<Intent>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read intents file {}", path.display()))?;
    crate::policy_cmd::parse_intents_tsv(&text)
        .with_context(|| format!("intents file {}", path.display()))
}
