//! `companion bench decode`: decoding plus resampling to 16 kHz mono, ours (in this process)
//! against ffmpeg (`-benchmark`'s real time of the transcode, and the wall time of the whole
//! ffmpeg process) on the same files.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use companion_audio::{ChannelMode, DecodeOptions, decode_bytes, read_file, to_16k};

use super::median;

#[derive(Args, Debug)]
pub struct DecodeArgs {
    /// Audio files or directories (default: ../shared/eval/speech and ../shared/eval/pbx_formats).
    paths: Vec<PathBuf>,
    #[arg(long, default_value_t = 5)]
    rounds: usize,
}

const AUDIO_EXTENSIONS: &[&str] = &[
    "wav", "mp3", "flac", "ogg", "opus", "m4a", "gsm", "ul", "ulaw", "al", "alaw", "au", "aiff",
    "webm", "mka", "caf", "sln", "raw", "g722", "oga",
];

pub fn run(args: DecodeArgs) -> Result<()> {
    if args.rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    let roots = if args.paths.is_empty() {
        vec![
            PathBuf::from("../shared/eval/speech"),
            PathBuf::from("../shared/eval/pbx_formats"),
        ]
    } else {
        args.paths.clone()
    };
    let mut files = Vec::new();
    for root in &roots {
        collect(root, &mut files)?;
    }
    files.sort();
    if files.is_empty() {
        bail!("no audio files under {roots:?}");
    }
    let has_ffmpeg = Command::new("ffmpeg")
        .arg("-version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    println!("file\tbytes\tcompanion_ms\tffmpeg_ms\tffmpeg_process_ms\tratio");
    let (mut ours_total, mut ffmpeg_total, mut both) = (0.0, 0.0, 0usize);
    for file in &files {
        let name = file.display().to_string();
        let ours = ours_ms(file, args.rounds);
        let theirs = if has_ffmpeg {
            ffmpeg_ms(file, args.rounds)
        } else {
            None
        };
        let cell = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.1}"));
        let ratio = match (ours.as_ref().ok(), theirs) {
            (Some(a), Some((b, _))) if b > 0.0 => {
                ours_total += a;
                ffmpeg_total += b;
                both += 1;
                format!("{:.2}", a / b)
            }
            _ => "-".into(),
        };
        println!(
            "{name}\t{}\t{}\t{}\t{}\t{ratio}",
            std::fs::metadata(file).map_or(0, |m| m.len()),
            match &ours {
                Ok(ms) => format!("{ms:.1}"),
                Err(e) => format!("error: {e}"),
            },
            cell(theirs.map(|t| t.0)),
            cell(theirs.map(|t| t.1)),
        );
    }
    println!(
        "TOTAL over {both} files both decoded: companion {ours_total:.0} ms, ffmpeg {ffmpeg_total:.0} ms, ratio {:.2}",
        ours_total / ffmpeg_total.max(1e-9)
    );
    Ok(())
}

fn collect(path: &Path, files: &mut Vec<PathBuf>) -> Result<()> {
    if path.is_dir() {
        for entry in
            std::fs::read_dir(path).with_context(|| format!("cannot list {}", path.display()))?
        {
            collect(&entry?.path(), files)?;
        }
    } else if path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| AUDIO_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
    {
        files.push(path.to_owned());
    }
    Ok(())
}

/// Median over rounds of reading nothing (the bytes are in memory), decoding and resampling.
fn ours_ms(file: &Path, rounds: usize) -> Result<f64, String> {
    let opts = DecodeOptions::default();
    let bytes = read_file(file, opts.max_bytes).map_err(|e| e.to_string())?;
    let ext = file.extension().and_then(|e| e.to_str());
    let mut times = Vec::new();
    for _ in 0..rounds {
        let input = bytes.clone();
        let started = Instant::now();
        let audio = decode_bytes(input, ext, &opts).map_err(|e| e.to_string())?;
        let channels = to_16k(audio, ChannelMode::Mix).map_err(|e| e.to_string())?;
        times.push(started.elapsed().as_secs_f64() * 1000.0);
        std::hint::black_box(channels);
    }
    Ok(median(&times))
}

/// Median over rounds of ffmpeg's own transcode time (`-benchmark` rtime) and of its process.
fn ffmpeg_ms(file: &Path, rounds: usize) -> Option<(f64, f64)> {
    let (mut rtimes, mut walls) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let started = Instant::now();
        let out = Command::new("ffmpeg")
            .args(["-nostdin", "-hide_banner", "-benchmark", "-i"])
            .arg(file)
            .args(["-ac", "1", "-ar", "16000", "-f", "f32le", "-y", "/dev/null"])
            .stdout(Stdio::null())
            .output()
            .ok()?;
        let wall = started.elapsed().as_secs_f64() * 1000.0;
        if !out.status.success() {
            return None;
        }
        rtimes.push(parse_rtime(&String::from_utf8_lossy(&out.stderr))? * 1000.0);
        walls.push(wall);
    }
    Some((median(&rtimes), median(&walls)))
}

/// `bench: utime=0.010s stime=0.002s rtime=0.013s` → 0.013.
fn parse_rtime(stderr: &str) -> Option<f64> {
    let line = stderr.lines().rev().find(|l| l.contains("rtime="))?;
    let value = line.split("rtime=").nth(1)?;
    value.trim().trim_end_matches('s').parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_ffmpeg_benchmark_line() {
        let err = "size=N/A time=00:00:11.00\nbench: utime=0.010s stime=0.002s rtime=0.013s\n";
        assert_eq!(parse_rtime(err), Some(0.013));
        assert_eq!(parse_rtime("no benchmark here"), None);
    }
}
