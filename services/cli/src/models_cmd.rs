//! `companion models …`: fetch, list, verify and convert models.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use companion_models::{FetchEvent, Manifest, ModelCache, ModelSpec, convert_ct2_whisper_to_ggml};

#[derive(Debug, clap::Subcommand)]
pub enum ModelsCommand {
    /// Download, check, convert and install models (default: the default models).
    Fetch {
        /// Model names from `companion models list`; none = the default models.
        names: Vec<String>,
    },
    /// List the known models and whether they are installed.
    List,
    /// Re-hash installed models against the manifest (default: every installed model).
    Verify {
        /// Model names; none = every model found in the cache.
        names: Vec<String>,
    },
    /// Convert a CTranslate2 (faster-whisper) Whisper model to a whisper.cpp GGML file.
    Convert {
        /// Directory with model.bin, vocabulary.txt or tokenizer.json (and config.json).
        #[arg(long)]
        from: PathBuf,
        /// GGML file to write.
        #[arg(long)]
        out: PathBuf,
    },
}

pub fn run(cmd: ModelsCommand, models_dir: &Path) -> anyhow::Result<()> {
    let manifest = Manifest::bundled();
    let cache = ModelCache::new(models_dir);
    match cmd {
        ModelsCommand::Fetch { names } => fetch(&manifest, &cache, &names),
        ModelsCommand::List => {
            list(&manifest, &cache);
            Ok(())
        }
        ModelsCommand::Verify { names } => verify(&manifest, &cache, &names),
        ModelsCommand::Convert { from, out } => convert(&from, &out),
    }
}

/// The specs named on the command line, or `fallback` when none are.
fn select<'a>(
    manifest: &'a Manifest,
    names: &[String],
    fallback: impl Fn(&ModelSpec) -> bool,
) -> anyhow::Result<Vec<&'a ModelSpec>> {
    if names.is_empty() {
        return Ok(manifest.models.iter().filter(|m| fallback(m)).collect());
    }
    names
        .iter()
        .map(|n| manifest.require(n).map_err(anyhow::Error::from))
        .collect()
}

fn fetch(manifest: &Manifest, cache: &ModelCache, names: &[String]) -> anyhow::Result<()> {
    let specs = select(manifest, names, |m| m.default)?;
    let mut failed = Vec::new();
    for spec in specs {
        let mut report = |event: FetchEvent| match &event {
            // pip is chatty; keep the lines that say what is being downloaded.
            FetchEvent::Pip { line, .. } => {
                let line = line.trim_start();
                if line.starts_with("Downloading") || line.starts_with("WARNING") {
                    eprintln!("{event}");
                }
            }
            _ => eprintln!("{event}"),
        };
        if let Err(err) = cache.fetch(spec, &mut report) {
            eprintln!("{}: failed: {err}", spec.name);
            failed.push(spec.name.as_str());
        }
    }
    if !failed.is_empty() {
        bail!("could not fetch {}", failed.join(", "));
    }
    Ok(())
}

fn list(manifest: &Manifest, cache: &ModelCache) {
    let width = manifest.names().map(str::len).max().unwrap_or(4).max(4) + 2;
    println!(
        "{:<width$} {:<9} {:>9}  {:<13} DESCRIPTION",
        "NAME", "ROLE", "SIZE", "STATUS"
    );
    for spec in &manifest.models {
        let name = if spec.default {
            format!("{} *", spec.name)
        } else {
            spec.name.clone()
        };
        let status = if cache.is_installed(spec) {
            "installed"
        } else if cache.artifact_path(spec).exists() {
            "unverified"
        } else {
            "not installed"
        };
        println!(
            "{name:<width$} {:<9} {:>9}  {status:<13} {}",
            spec.role,
            human_size(spec.artifact.size),
            spec.description
        );
    }
    println!();
    println!("* fetched by `companion models fetch` without names");
    println!("cache: {}", cache.dir().display());
}

fn verify(manifest: &Manifest, cache: &ModelCache, names: &[String]) -> anyhow::Result<()> {
    let specs = select(manifest, names, |m| cache.artifact_path(m).exists())?;
    if specs.is_empty() {
        eprintln!("no models installed in {}", cache.dir().display());
        return Ok(());
    }
    let mut failed = Vec::new();
    for spec in specs {
        eprintln!(
            "{}: verifying {}…",
            spec.name,
            cache.artifact_path(spec).display()
        );
        match cache.verify(spec) {
            Ok(r) => eprintln!("{}: ok ({} bytes, sha256 {})", spec.name, r.size, r.sha256),
            Err(err) => {
                eprintln!("{}: FAILED: {err}", spec.name);
                failed.push(spec.name.as_str());
            }
        }
    }
    if !failed.is_empty() {
        bail!(
            "verification failed for {}; run `companion models fetch {}` to reinstall",
            failed.join(", "),
            failed.join(" ")
        );
    }
    Ok(())
}

fn convert(from: &Path, out: &Path) -> anyhow::Result<()> {
    // Accept the model.bin itself as well as its directory.
    let dir = if from.is_file() {
        from.parent().unwrap_or(Path::new(".")).to_path_buf()
    } else {
        from.to_path_buf()
    };
    eprintln!("converting {} -> {}…", dir.display(), out.display());
    let report = convert_ct2_whisper_to_ggml(&dir, out)
        .with_context(|| format!("converting {}", dir.display()))?;
    let h = &report.hparams;
    eprintln!(
        "vocabulary {} ({} regular tokens, {}), {} mels, audio {}x{} ({} heads, ctx {}), text {}x{} ({} heads, ctx {})",
        h.n_vocab,
        report.n_tokens,
        if h.is_multilingual() {
            "multilingual"
        } else {
            "English only"
        },
        h.n_mels,
        h.n_audio_layer,
        h.n_audio_state,
        h.n_audio_head,
        h.n_audio_ctx,
        h.n_text_layer,
        h.n_text_state,
        h.n_text_head,
        h.n_text_ctx,
    );
    eprintln!(
        "wrote {} ({} bytes, {} tensors, sha256 {}) in {:.1} s",
        report.output.display(),
        report.size,
        report.n_tensors,
        report.sha256,
        report.elapsed.as_secs_f64()
    );
    Ok(())
}

fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "kB", "MB", "GB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1000.0 && unit < UNITS.len() - 1 {
        v /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}
