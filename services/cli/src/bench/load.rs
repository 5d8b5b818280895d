//! `companion bench load`: how long each model takes to load in this process, the first time
//! (files possibly not in the page cache) and then the median of the following loads.

use std::path::Path;
use std::time::Instant;

use anyhow::{Result, bail};
use clap::Args;
use companion_language::{EMBEDDING_ROLE, Embedder, LLM_ROLE, resolve_model};
use companion_models::{ModelCache, resolve_asr_model};
use companion_speech::SpeechModel;

use super::llm::{Backend, load_generator};
use super::median;

#[derive(Args, Debug)]
pub struct LoadArgs {
    /// Whisper models (names or GGML files).
    #[arg(long, value_delimiter = ',', default_value = "whisper-base-q8_0")]
    asr_models: Vec<String>,
    /// Chat models (names or GGUF files).
    #[arg(long, value_delimiter = ',', default_value = crate::process::DEFAULT_LLM)]
    llm_models: Vec<String>,
    /// LLM backends to load each chat model with.
    #[arg(long, value_delimiter = ',', default_value = "llama.cpp,candle")]
    backends: Vec<Backend>,
    #[arg(long, default_value = "all-minilm-l6-v2")]
    embedding_model: String,
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

pub fn run(args: LoadArgs, models_dir: &Path) -> Result<()> {
    if args.rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    let cache = ModelCache::new(models_dir);
    println!("model\tfirst_ms\tmedian_after_ms");
    for name in &args.asr_models {
        let path = resolve_asr_model(name, &cache)?;
        report(name, args.rounds, || {
            SpeechModel::load(&path).map(drop).map_err(Into::into)
        })?;
    }
    for name in &args.llm_models {
        let path = resolve_model(name, LLM_ROLE, &cache)?;
        for backend in &args.backends {
            report(&format!("{name} ({backend})"), args.rounds, || {
                load_generator(*backend, &path, None).map(drop)
            })?;
        }
    }
    let dir = resolve_model(&args.embedding_model, EMBEDDING_ROLE, &cache)?;
    report(&args.embedding_model, args.rounds, || {
        Embedder::load(&dir).map(drop).map_err(Into::into)
    })?;
    Ok(())
}

fn report(name: &str, rounds: usize, mut load: impl FnMut() -> Result<()>) -> Result<()> {
    let mut times = Vec::new();
    for _ in 0..rounds {
        let started = Instant::now();
        load()?;
        times.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    let after = if times.len() > 1 {
        format!("{:.0}", median(&times[1..]))
    } else {
        "-".into()
    };
    println!("{name}\t{:.0}\t{after}", times[0]);
    Ok(())
}
