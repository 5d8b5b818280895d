//! `companion bench asr`: `companion transcribe` and faster-whisper over the same files, with the
//! same weights (whisper-base as converted for whisper.cpp, and the CTranslate2 files it was
//! converted from), beam size and threads. The two run alternately, each as its own process
//! over every file: per file the median time over the rounds, the word error rate against the
//! reference, and per process the wall time and peak resident memory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::Args;
use companion_core::metrics::{ErrorCount, char_errors, word_errors_with_numbers};
use companion_models::{Manifest, ModelCache};
use serde_json::{Value, json};

use super::child::{ChildRun, run_measured};
use super::{WorkDir, companion_exe, median, mib, python_env, synth};

const FW_SCRIPT: &str = include_str!("faster_whisper_run.py");
const FW_REQUIREMENTS: &str = include_str!("faster_whisper_requirements.txt");
/// The CTranslate2 model faster-whisper loads: the very files whisper-base is converted from.
const CT2_MODEL: &str = "whisper-base-ct2";

#[derive(Args, Debug)]
pub struct AsrArgs {
    /// A labelled speech set (MANIFEST.tsv): its clips under --prefix that have one language and
    /// a whole reference transcript are measured too. Left out when the file is missing.
    #[arg(
        long,
        env = "COMPANION_EVAL_MANIFEST",
        default_value = "../shared/eval/MANIFEST.tsv"
    )]
    manifest: PathBuf,
    #[arg(long, default_value = "speech/")]
    prefix: String,
    /// Leave out the voicemails the benchmark synthesizes.
    #[arg(long)]
    no_synth: bool,
    /// Rounds; each runs both sides once over every file, in alternating order.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    #[arg(long, default_value_t = 5)]
    beam_size: u32,
    /// CPU threads of each side (default: all cores).
    #[arg(long)]
    threads: Option<u32>,
    /// companion's Whisper model: a name from `companion models list` or a GGML file.
    #[arg(long, default_value = "whisper-base-q8_0")]
    asr_model: String,
    /// faster-whisper's model directory (default: whisper-base-ct2 from the model cache,
    /// fetched when missing).
    #[arg(long)]
    ct2_model: Option<PathBuf>,
    /// faster-whisper's compute type.
    #[arg(long, default_value = "int8")]
    compute_type: String,
    /// Python that makes faster-whisper's virtual environment.
    #[arg(long, env = "COMPANION_PYTHON", default_value = "python3")]
    python: String,
    /// One more argument for `companion transcribe` (repeatable), e.g. --ours-arg=--threads=1.
    #[arg(long = "ours-arg", allow_hyphen_values = true)]
    ours_args: Vec<String>,
    /// Also write every measurement here, as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    #[command(flatten)]
    work: WorkDir,
}

/// A file to transcribe and what it says.
#[derive(Debug, Clone)]
struct Clip {
    path: PathBuf,
    language: String,
    reference: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Companion,
    FasterWhisper,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Companion => "companion",
            Side::FasterWhisper => "faster-whisper",
        }
    }
}

/// One side's processes over every file in one round.
#[derive(Debug, Default)]
struct SideRun {
    /// Wall time of the processes, model loads included.
    wall_ms: f64,
    peak_rss: u64,
    /// Start-up and model load of each process.
    load_ms: Vec<f64>,
    /// Per file: time and text, or the error.
    files: BTreeMap<PathBuf, Result<(f64, String), String>>,
}

impl SideRun {
    /// Adds another process of the same side and round.
    fn absorb(&mut self, other: SideRun) {
        self.wall_ms += other.wall_ms;
        self.peak_rss = self.peak_rss.max(other.peak_rss);
        self.load_ms.extend(other.load_ms);
        self.files.extend(other.files);
    }
}

pub fn run(args: AsrArgs, models_dir: &Path) -> Result<()> {
    if args.rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get() as u32));
    let work = args.work.path();
    let clips = clips(&args, &work)?;
    if clips.is_empty() {
        bail!("nothing to transcribe: no manifest clips and --no-synth");
    }
    let ct2 = match &args.ct2_model {
        Some(dir) => dir.clone(),
        None => ct2_model_dir(models_dir)?,
    };
    let python = python_env(&args.python, &work, "faster-whisper", FW_REQUIREMENTS, &[])?;
    let script = work.join("faster_whisper_run.py");
    std::fs::write(&script, FW_SCRIPT)
        .with_context(|| format!("cannot write {}", script.display()))?;
    let db_dir = tempfile::tempdir().context("cannot make a temporary directory")?;

    eprintln!(
        "bench asr: {} files, {} rounds, beam {}, {} threads; companion {} vs faster-whisper {} on {}",
        clips.len(),
        args.rounds,
        args.beam_size,
        threads,
        args.asr_model,
        args.compute_type,
        ct2.display()
    );
    // The machine's speed drifts (other tenants, clocks), so the sides alternate file by
    // file: each file is one process per side, taking turns which goes first.
    let mut runs: BTreeMap<&str, Vec<SideRun>> = BTreeMap::new();
    for round in 0..args.rounds {
        let mut round_runs = [SideRun::default(), SideRun::default()];
        for (i, clip) in clips.iter().enumerate() {
            let order = if (round + i) % 2 == 0 {
                [Side::Companion, Side::FasterWhisper]
            } else {
                [Side::FasterWhisper, Side::Companion]
            };
            for side in order {
                let mut command = match side {
                    Side::Companion => {
                        let mut c = Command::new(companion_exe()?);
                        c.args(["--log-format", "json", "transcribe", "--format", "json"])
                            .arg("--db")
                            .arg(db_dir.path().join(format!("round{round}.db")))
                            .args(["--beam-size", &args.beam_size.to_string()])
                            .args(["--threads", &threads.to_string()])
                            .args(["--asr-model", &args.asr_model])
                            .args(&args.ours_args);
                        c
                    }
                    Side::FasterWhisper => {
                        let mut c = Command::new(&python);
                        c.arg(&script)
                            .arg("--model")
                            .arg(&ct2)
                            .args(["--compute-type", &args.compute_type])
                            .args(["--beam-size", &args.beam_size.to_string()])
                            .args(["--threads", &threads.to_string()]);
                        c
                    }
                };
                command.arg(&clip.path);
                let child = run_measured(&mut command).with_context(|| {
                    format!(
                        "{} on {} (round {})",
                        side.name(),
                        clip.path.display(),
                        round + 1
                    )
                })?;
                round_runs[side as usize].absorb(parse_side(side, &child)?);
            }
        }
        for (side, run) in [Side::Companion, Side::FasterWhisper]
            .into_iter()
            .zip(round_runs)
        {
            eprintln!(
                "  round {} {:>14}: {:>8.0} ms wall over {} processes, peak RSS {:.0} MiB",
                round + 1,
                side.name(),
                run.wall_ms,
                run.files.len(),
                mib(run.peak_rss)
            );
            runs.entry(side.name()).or_default().push(run);
        }
    }
    let report = report(&clips, &runs)?;
    if let Some(path) = &args.json {
        let doc = json!({
            "beam_size": args.beam_size,
            "threads": threads,
            "rounds": args.rounds,
            "asr_model": args.asr_model,
            "ct2_model": ct2,
            "compute_type": args.compute_type,
            "ours_args": args.ours_args,
            "report": report,
        });
        std::fs::write(path, serde_json::to_string_pretty(&doc)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// The manifest's clips (when the manifest is there) and the synthesized voicemails.
fn clips(args: &AsrArgs, work: &Path) -> Result<Vec<Clip>> {
    let mut clips = Vec::new();
    if args.manifest.is_file() {
        let text = std::fs::read_to_string(&args.manifest)
            .with_context(|| format!("cannot read {}", args.manifest.display()))?;
        let root = args.manifest.parent().unwrap_or(Path::new("."));
        for clip in crate::eval::parse_manifest(&text, &args.prefix)? {
            clips.push(Clip {
                path: root.join(&clip.file),
                language: clip.language,
                reference: clip.reference,
            });
        }
    } else {
        eprintln!(
            "bench asr: {} not found, measuring the synthesized voicemails only",
            args.manifest.display()
        );
    }
    if !args.no_synth {
        for clip in synth::voicemails(&work.join("synth"))? {
            clips.push(Clip {
                path: clip.path,
                language: clip.language.into(),
                reference: clip.reference.into(),
            });
        }
    }
    Ok(clips)
}

/// The installed CTranslate2 files of whisper-base, fetched on first use.
fn ct2_model_dir(models_dir: &Path) -> Result<PathBuf> {
    let spec = Manifest::bundled_ref().require(CT2_MODEL)?;
    let cache = ModelCache::new(models_dir);
    if !cache.is_installed(spec) {
        eprintln!("bench asr: fetching {CT2_MODEL} (the CTranslate2 files faster-whisper loads)");
    }
    cache.fetch(spec, &mut |_| {})?;
    Ok(cache.model_dir(spec))
}

/// Per-file times and texts from one side's JSON lines.
fn parse_side(side: Side, child: &ChildRun) -> Result<SideRun> {
    let mut run = SideRun {
        wall_ms: child.wall.as_secs_f64() * 1000.0,
        peak_rss: child.peak_rss,
        ..Default::default()
    };
    for line in child.lines.iter().filter(|l| l.starts_with('{')) {
        let v: Value = serde_json::from_str(line)
            .with_context(|| format!("{}: not JSON: {line}", side.name()))?;
        if v["event"] == "loaded" {
            run.load_ms.extend(v["load_ms"].as_f64());
            continue;
        }
        let file = PathBuf::from(v["file"].as_str().context("a result line without file")?);
        let outcome = if let Some(error) = v.get("error").filter(|e| !e.is_null()) {
            Err(error.to_string())
        } else {
            match side {
                Side::Companion => {
                    let t = &v["timings_ms"];
                    let ms =
                        t["total"].as_f64().unwrap_or(0.0) + t["store"].as_f64().unwrap_or(0.0);
                    let text = v["transcript"]["text"].as_str().unwrap_or("").to_string();
                    Ok((ms, text))
                }
                Side::FasterWhisper => Ok((
                    v["ms"].as_f64().unwrap_or(0.0),
                    v["text"].as_str().unwrap_or("").to_string(),
                )),
            }
        };
        run.files.insert(file, outcome);
    }
    if side == Side::Companion {
        let files_ms: f64 = run.files.values().flatten().map(|(ms, _)| ms).sum();
        run.load_ms = vec![(run.wall_ms - files_ms).max(0.0)];
    }
    Ok(run)
}

fn errors(language: &str, reference: &str, hypothesis: &str) -> ErrorCount {
    if matches!(language, "zh" | "ja") {
        char_errors(reference, hypothesis)
    } else {
        word_errors_with_numbers(reference, hypothesis)
    }
}

/// Prints the table and returns it as JSON.
fn report(clips: &[Clip], runs: &BTreeMap<&str, Vec<SideRun>>) -> Result<Value> {
    let sides = [Side::Companion.name(), Side::FasterWhisper.name()];
    let side_runs = |name: &str| runs.get(name).map(Vec::as_slice).unwrap_or(&[]);
    println!(
        "file\tduration_s\tcompanion_ms\tfaster_whisper_ms\tratio\tcompanion_wer\tfaster_whisper_wer"
    );
    let mut totals = [(0.0f64, ErrorCount::default()); 2];
    let mut rows = Vec::new();
    for clip in clips {
        let mut cells = Vec::new();
        for (i, side) in sides.iter().enumerate() {
            let times: Vec<f64> = side_runs(side)
                .iter()
                .filter_map(|r| r.files.get(&clip.path)?.as_ref().ok().map(|(ms, _)| *ms))
                .collect();
            let text = side_runs(side)
                .iter()
                .find_map(|r| r.files.get(&clip.path))
                .cloned()
                .unwrap_or_else(|| Err("no result".into()));
            match text {
                Ok((_, text)) => {
                    let ms = median(&times);
                    let count = errors(&clip.language, &clip.reference, &text);
                    totals[i].0 += ms;
                    totals[i].1 = totals[i].1 + count;
                    cells.push(
                        json!({"ms": ms, "wer": count.rate(), "errors": count.errors,
                        "words": count.reference_len, "text": text}),
                    );
                }
                Err(e) => {
                    // A file one side cannot read counts against it in full.
                    let count = errors(&clip.language, &clip.reference, "");
                    totals[i].1 = totals[i].1 + count;
                    cells.push(json!({"error": e}));
                }
            }
        }
        let ms = |c: &Value| c["ms"].as_f64();
        let ratio = match (ms(&cells[0]), ms(&cells[1])) {
            (Some(a), Some(b)) if b > 0.0 => Some(a / b),
            _ => None,
        };
        let duration = companion_audio::read_file(&clip.path, u64::MAX)
            .ok()
            .and_then(|b| {
                let ext = clip.path.extension().and_then(|e| e.to_str());
                companion_audio::probe_bytes(&b, ext, &Default::default()).ok()
            })
            .and_then(|p| p.duration_s);
        println!(
            "{}\t{}\t{}\t{}\t{}\t{}\t{}",
            clip.path.file_name().unwrap_or_default().to_string_lossy(),
            duration.map_or("-".into(), |d| format!("{d:.1}")),
            fmt_ms(ms(&cells[0])),
            fmt_ms(ms(&cells[1])),
            ratio.map_or("-".into(), |r| format!("{r:.2}")),
            fmt_wer(&cells[0]),
            fmt_wer(&cells[1]),
        );
        rows.push(
            json!({"file": clip.path, "duration_s": duration, "ratio": ratio,
            "companion": cells[0], "faster_whisper": cells[1]}),
        );
    }
    let wall: Vec<f64> = sides
        .iter()
        .map(|s| median(&side_runs(s).iter().map(|r| r.wall_ms).collect::<Vec<_>>()))
        .collect();
    let rss: Vec<u64> = sides
        .iter()
        .map(|s| side_runs(s).iter().map(|r| r.peak_rss).max().unwrap_or(0))
        .collect();
    let load: Vec<f64> = sides
        .iter()
        .map(|s| {
            median(
                &side_runs(s)
                    .iter()
                    .flat_map(|r| r.load_ms.iter().copied())
                    .collect::<Vec<_>>(),
            )
        })
        .collect();
    println!(
        "TOTAL\t\t{:.0}\t{:.0}\t{:.2}\t{:.2}%\t{:.2}%",
        totals[0].0,
        totals[1].0,
        totals[0].0 / totals[1].0.max(1e-9),
        totals[0].1.rate() * 100.0,
        totals[1].1.rate() * 100.0
    );
    println!(
        "process wall per round (median, model loads included): companion {:.0} ms, faster-whisper {:.0} ms, ratio {:.2}",
        wall[0],
        wall[1],
        wall[0] / wall[1].max(1e-9)
    );
    println!(
        "start-up and model load per process (median): companion {:.0} ms, faster-whisper {:.0} ms",
        load[0], load[1]
    );
    println!(
        "peak RSS: companion {:.0} MiB, faster-whisper {:.0} MiB",
        mib(rss[0]),
        mib(rss[1])
    );
    Ok(json!({
        "files": rows,
        "total_ms": {"companion": totals[0].0, "faster_whisper": totals[1].0},
        "ratio": totals[0].0 / totals[1].0.max(1e-9),
        "wer": {"companion": totals[0].1.rate(), "faster_whisper": totals[1].1.rate()},
        "process_wall_ms": {"companion": wall[0], "faster_whisper": wall[1]},
        "load_ms": {"companion": load[0], "faster_whisper": load[1]},
        "peak_rss_bytes": {"companion": rss[0], "faster_whisper": rss[1]},
    }))
}

fn fmt_ms(ms: Option<f64>) -> String {
    ms.map_or("-".into(), |m| format!("{m:.0}"))
}

fn fmt_wer(cell: &Value) -> String {
    match cell["wer"].as_f64() {
        Some(w) => format!("{:.1}%", w * 100.0),
        None => "error".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn child(lines: &[&str]) -> ChildRun {
        ChildRun {
            lines: lines.iter().map(|s| s.to_string()).collect(),
            wall: std::time::Duration::from_millis(3000),
            peak_rss: 1 << 20,
        }
    }

    #[test]
    fn reads_companion_lines() {
        let run = parse_side(
            Side::Companion,
            &child(&[
                r#"{"file":"a.wav","transcript":{"text":"hello"},"timings_ms":{"total":900,"store":100}}"#,
                r#"{"file":"b.wav","error":{"kind":"corrupt_audio","message":"bad"}}"#,
            ]),
        )
        .unwrap();
        assert_eq!(
            run.files[Path::new("a.wav")].as_ref().unwrap(),
            &(1000.0, "hello".to_string())
        );
        assert!(run.files[Path::new("b.wav")].is_err());
        assert_eq!(run.load_ms, vec![2000.0]);
    }

    #[test]
    fn reads_faster_whisper_lines() {
        let run = parse_side(
            Side::FasterWhisper,
            &child(&[
                r#"{"event":"loaded","load_ms":450.5}"#,
                r#"{"file":"a.wav","ms":812.0,"text":"hello there","language":"en"}"#,
            ]),
        )
        .unwrap();
        assert_eq!(run.load_ms, vec![450.5]);
        assert_eq!(
            run.files[Path::new("a.wav")].as_ref().unwrap().1,
            "hello there"
        );
    }

    #[test]
    fn garbage_output_is_an_error() {
        assert!(parse_side(Side::FasterWhisper, &child(&["{not json"])).is_err());
    }
}
