//! `companion bench process`: `companion process` on the synthesized voicemails (or given
//! files) with a priority topic, every language stage on, several rounds, each a fresh process
//! and store: the median time of every stage per file, the whole file, the process's wall time
//! and peak resident memory, and the language model's tokens/s.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::Value;

use super::child::run_measured;
use super::{WorkDir, companion_exe, median, mib, synth};

#[derive(Args, Debug)]
pub struct StagesArgs {
    /// Recordings (default: the synthesized voicemails, 8 to 30 s).
    files: Vec<PathBuf>,
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// One more argument for `companion process` (repeatable), e.g. --arg=--translate-to=es.
    #[arg(long = "arg", allow_hyphen_values = true)]
    process_args: Vec<String>,
    #[command(flatten)]
    work: WorkDir,
}

const TOPICS: &str = "billing\tInvoices, payments, refunds and anything about money owed\n\
                      appointment\tBooking, confirming, moving or cancelling an appointment or visit\n";

pub fn run(args: StagesArgs) -> Result<()> {
    if args.rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    let work = args.work.path();
    let files = if args.files.is_empty() {
        synth::voicemails(&work.join("synth"))?
            .into_iter()
            .map(|c| c.path)
            .collect()
    } else {
        args.files.clone()
    };
    let tmp = tempfile::tempdir().context("cannot make a temporary directory")?;
    let topics = tmp.path().join("topics.tsv");
    std::fs::write(&topics, TOPICS)?;

    // file → stage → times over rounds
    let mut stages: BTreeMap<PathBuf, BTreeMap<String, Vec<f64>>> = BTreeMap::new();
    let mut llm: BTreeMap<PathBuf, Vec<(f64, f64)>> = BTreeMap::new();
    let (mut walls, mut rss) = (Vec::new(), 0u64);
    for round in 0..args.rounds {
        let mut command = Command::new(companion_exe()?);
        command
            .args(["--log-format", "json", "process", "--format", "json"])
            .arg("--db")
            .arg(tmp.path().join(format!("round{round}.db")))
            .arg("--intents")
            .arg(&topics)
            .args(&args.process_args)
            .args(&files);
        let child = run_measured(&mut command).with_context(|| format!("round {}", round + 1))?;
        eprintln!(
            "  round {}: {:.0} ms wall, peak RSS {:.0} MiB",
            round + 1,
            child.wall.as_secs_f64() * 1000.0,
            mib(child.peak_rss)
        );
        walls.push(child.wall.as_secs_f64() * 1000.0);
        rss = rss.max(child.peak_rss);
        for line in child.lines.iter().filter(|l| l.starts_with('{')) {
            let v: Value =
                serde_json::from_str(line).with_context(|| format!("not JSON: {line}"))?;
            let file = PathBuf::from(v["file"].as_str().unwrap_or("?"));
            if let Some(error) = v.get("error") {
                bail!("{}: {error}", file.display());
            }
            let per_stage = stages.entry(file.clone()).or_default();
            for (stage, ms) in v["timings_ms"].as_object().into_iter().flatten() {
                per_stage
                    .entry(stage.clone())
                    .or_default()
                    .push(ms.as_f64().unwrap_or(0.0));
            }
            let all = v["timings_ms"]["total"].as_f64().unwrap_or(0.0)
                + v["timings_ms"]["store"].as_f64().unwrap_or(0.0);
            per_stage.entry("all".into()).or_default().push(all);
            if let Some(l) = v["llm"].as_object() {
                llm.entry(file).or_default().push((
                    l["prompt_tokens_per_s"].as_f64().unwrap_or(0.0),
                    l["generate_tokens_per_s"].as_f64().unwrap_or(0.0),
                ));
            }
        }
    }
    print_table(&files, &stages, &llm);
    println!(
        "process wall (median, model loads included): {:.0} ms; peak RSS {:.0} MiB",
        median(&walls),
        mib(rss)
    );
    Ok(())
}

fn print_table(
    files: &[PathBuf],
    stages: &BTreeMap<PathBuf, BTreeMap<String, Vec<f64>>>,
    llm: &BTreeMap<PathBuf, Vec<(f64, f64)>>,
) {
    // Stage columns in pipeline order, then whatever else was timed, then the totals.
    const ORDER: &[&str] = &[
        "decode",
        "resample",
        "vad",
        "asr",
        "tasks",
        "summary",
        "translation",
        "priority",
    ];
    let seen: BTreeSet<&str> = stages
        .values()
        .flat_map(|s| s.keys().map(String::as_str))
        .collect();
    let mut columns: Vec<&str> = ORDER.iter().copied().filter(|s| seen.contains(s)).collect();
    columns.extend(
        seen.iter()
            .copied()
            .filter(|s| !ORDER.contains(s) && !matches!(*s, "total" | "store" | "all")),
    );
    columns.extend(["total", "store", "all"]);
    println!(
        "file\t{}\tllm_prompt_tok_s\tllm_gen_tok_s",
        columns
            .iter()
            .map(|c| format!("{c}_ms"))
            .collect::<Vec<_>>()
            .join("\t")
    );
    for file in files {
        let Some(per_stage) = stages.get(file.as_path()).or_else(|| {
            stages
                .iter()
                .find(|(k, _)| Path::new(k).ends_with(file))
                .map(|(_, v)| v)
        }) else {
            continue;
        };
        let cells: Vec<String> = columns
            .iter()
            .map(|c| {
                per_stage
                    .get(*c)
                    .map_or("-".into(), |v| format!("{:.0}", median(v)))
            })
            .collect();
        let speeds = llm.get(file.as_path()).cloned().unwrap_or_default();
        let prompt: Vec<f64> = speeds.iter().map(|s| s.0).collect();
        let generate: Vec<f64> = speeds.iter().map(|s| s.1).collect();
        println!(
            "{}\t{}\t{:.1}\t{:.1}",
            file.file_name().unwrap_or_default().to_string_lossy(),
            cells.join("\t"),
            median(&prompt),
            median(&generate)
        );
    }
}
