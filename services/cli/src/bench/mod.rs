//! `companion bench …`: speed and memory, measured side by side with the peer where there is
//! one, on this machine. Every number the project claims in docs/BENCHMARKS.md comes from here.
//!
//! * `asr`: `companion transcribe` against faster-whisper on the same CTranslate2 weights, the
//!   same files, beam size and threads, alternating: wall time, ratio, WER, peak RSS.
//! * `process`: every stage of `companion process` on the synthesized voicemails.
//! * `llm`: prompt and generation tokens/s of each LLM backend and of llama.cpp's Python
//!   binding on the same GGUF file, next to the memory-bandwidth bound of this machine.
//! * `decode`: decoding and resampling to 16 kHz against ffmpeg on the same files.
//! * `kernels`: the engine's matrix kernels per weight format, from memory and in cache, next to
//!   the read loops of `llm`.
//! * `load`: model load times.
//! * `whisper`: the engine's Whisper encoder and decoder steps against whisper.cpp's.

mod asr;
mod child;
mod decode;
mod kernels;
mod llm;
mod load;
mod stages;
mod synth;
mod whisper;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// `companion transcribe` against faster-whisper: wall time, WER and peak RSS per file.
    Asr(asr::AsrArgs),
    /// Time of every stage of `companion process` on the synthesized voicemails.
    Process(stages::StagesArgs),
    /// LLM prompt and generation speed of each backend against the memory-bandwidth bound.
    Llm(llm::LlmArgs),
    /// Decoding and resampling speed against ffmpeg.
    Decode(decode::DecodeArgs),
    /// The engine's matrix kernels per weight format against the memory read loops.
    Kernels(kernels::KernelsArgs),
    /// Model load times.
    Load(load::LoadArgs),
    /// The engine's Whisper forward pass against whisper.cpp's: encoder and decoder steps.
    Whisper(whisper::WhisperArgs),
}

/// Where the benchmarks keep what they make: synthesized audio, the peers' environments.
#[derive(Args, Debug, Clone)]
pub struct WorkDir {
    #[arg(long = "work-dir", env = "COMPANION_BENCH_DIR")]
    dir: Option<PathBuf>,
}

impl WorkDir {
    fn path(&self) -> PathBuf {
        self.dir.clone().unwrap_or_else(|| {
            std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_else(std::env::temp_dir)
                .join(".cache/companion/bench")
        })
    }
}

pub fn run(command: BenchCommand, models_dir: &Path) -> Result<()> {
    match command {
        BenchCommand::Asr(args) => asr::run(args, models_dir),
        BenchCommand::Process(args) => stages::run(args),
        BenchCommand::Llm(args) => llm::run(args, models_dir),
        BenchCommand::Decode(args) => decode::run(args),
        BenchCommand::Kernels(args) => kernels::run(args),
        BenchCommand::Load(args) => load::run(args, models_dir),
        BenchCommand::Whisper(args) => whisper::run(args, models_dir),
    }
}

/// Median of the values (the mean of the middle two for an even count); 0 when empty.
fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// The `companion` binary running now, to run its commands as a user would.
fn companion_exe() -> Result<PathBuf> {
    std::env::current_exe().map_err(|e| anyhow::anyhow!("cannot find the companion binary: {e}"))
}

/// A peer in a Python virtual environment of its own under `work`, made once per set of pinned
/// `requirements` (a pip requirements file's text) and `build_env` (variables pip's builds of
/// source packages see). Returns the environment's Python.
fn python_env(
    python: &str,
    work: &Path,
    peer: &str,
    requirements: &str,
    build_env: &[(&str, &str)],
) -> Result<PathBuf> {
    let recipe = build_env
        .iter()
        .fold(requirements.to_string(), |r, (k, v)| {
            format!("{r}\n# {k}={v}")
        });
    let digest = companion_pipeline::sha256_hex(recipe.as_bytes());
    let venv = work.join(format!("{peer}-{}", &digest[..12]));
    let venv_python = venv.join("bin/python");
    let ready = venv.join(".ready");
    if ready.is_file() {
        return Ok(venv_python);
    }
    eprintln!("bench: making {peer}'s environment in {}", venv.display());
    std::fs::create_dir_all(work).with_context(|| format!("cannot create {}", work.display()))?;
    let requirements_file = work.join(format!("{peer}-requirements.txt"));
    std::fs::write(&requirements_file, requirements)?;
    let status = Command::new(python)
        .args(["-m", "venv"])
        .arg(&venv)
        .status()
        .with_context(|| format!("cannot run {python} -m venv"))?;
    if !status.success() {
        bail!("{python} -m venv {} failed", venv.display());
    }
    let status = Command::new(&venv_python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            // A wheel pip built before, with other `build_env`, would be taken from its cache.
            "--no-cache-dir",
            "-r",
        ])
        .arg(&requirements_file)
        .envs(build_env.iter().copied())
        .status()
        .context("cannot run pip")?;
    if !status.success() {
        bail!("installing {peer} into {} failed", venv.display());
    }
    std::fs::write(&ready, recipe)?;
    Ok(venv_python)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
        assert_eq!(median(&[f64::NAN, 5.0]), 5.0);
    }
}
