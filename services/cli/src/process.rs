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
use companion_core::{Classify, ErrorKind, ErrorReport, FailedRecording, RecordingKind};
use companion_models::{ModelCache, resolve_asr_model};
use companion_pipeline::{Input, Pipeline, PipelineConfig, PipelineError, Processed};
use companion_speech::{SpeechModel, TranscribeOptions};
use companion_store::{NewRecording, Outcome, Store};
use indicatif::{ProgressBar, ProgressStyle};

use crate::output::{OutputFormat, render};

/// Options that shape the pipeline, shared by `process`, `transcribe` and `eval`.
#[derive(Args, Clone, Debug)]
pub struct PipelineArgs {
    /// Whisper model: a name from `companion models list` or the path of any GGML Whisper file.
    #[arg(long, env = "COMPANION_ASR_MODEL", default_value = "whisper-base")]
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
    /// Translate speech into this language (Whisper's own task: `en`).
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
}

impl PipelineArgs {
    /// Checks the options and builds the pipeline configuration (no model loaded yet).
    pub fn config(&self) -> Result<PipelineConfig> {
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
        };
        config.transcribe.validate()?;
        config.speakers = self.speakers.iter().map(|s| s.trim().to_string()).collect();
        Ok(config)
    }

    /// Loads the Whisper model once and builds the pipeline.
    pub fn pipeline(&self, models_dir: &Path) -> Result<Pipeline> {
        let config = self.config()?;
        let path = resolve_asr_model(&self.asr_model, &ModelCache::new(models_dir))?;
        let model = SpeechModel::load(&path)?;
        Ok(Pipeline::new(Arc::new(model), config)?)
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
    /// The user the recordings belong to.
    #[arg(long, env = "COMPANION_USER")]
    user: Option<String>,
}

pub fn run(args: ProcessArgs, models_dir: &Path) -> Result<ExitCode> {
    let pipeline = args.pipeline.pipeline(models_dir)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let store = runtime
        .block_on(Store::open(&args.db))
        .with_context(|| format!("cannot open the result store {}", args.db))?;
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
