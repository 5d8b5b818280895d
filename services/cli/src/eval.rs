//! `companion eval FILE`: run a labelled set and report how well we did. Three kinds of set,
//! told apart by their header or first line (paths relative to the file):
//! * speech (MANIFEST.tsv): `file`, `language`, `reference_transcript_or_summary` → word error
//!   rate per clip;
//! * voicemail intelligence: `file`, `lang`, `intents` (`|`-separated or `-`), `facts`
//!   (`|`-separated or `-`) → language accuracy, fact recall, intent precision/recall/F1 and the
//!   language model's tokens/s (see [`crate::eval_language`]);
//! * dialogue summarization (JSON lines): `dialogue`, `summary…` → ROUGE-L of the call
//!   summarizer's recap and summary, generations per dialogue and tokens/s (see
//!   [`crate::eval_summary`]).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Args;
use companion_core::metrics::{ErrorCount, char_errors, word_errors};
use companion_models::ModelCache;
use companion_pipeline::Input;

use crate::process::{LanguageArgs, PipelineArgs};

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// The labelled set: a speech MANIFEST.tsv, a voicemail intelligence TSV, or a dialogue
    /// summarization JSONL (DialogSum's `dialogue` and `summary…` fields).
    #[arg(
        env = "COMPANION_EVAL_MANIFEST",
        default_value = "../shared/eval/MANIFEST.tsv"
    )]
    manifest: PathBuf,
    /// Speech sets: only clips whose path starts with this prefix (e.g. `speech/`).
    #[arg(long, default_value = "speech/")]
    prefix: String,
    /// Intelligence sets: the priority topics, a TSV of `name<TAB>description` lines.
    #[arg(long, env = "COMPANION_INTENTS")]
    intents: Option<PathBuf>,
    /// Summarization sets: only the first N dialogues.
    #[arg(long)]
    limit: Option<usize>,
    #[command(flatten)]
    pipeline: PipelineArgs,
    #[command(flatten)]
    language: LanguageArgs,
}

/// A clip with a single language and a full reference transcript.
#[derive(Debug, PartialEq)]
pub(crate) struct Clip {
    pub file: String,
    pub language: String,
    pub reference: String,
}

pub(crate) fn parse_manifest(text: &str, prefix: &str) -> Result<Vec<Clip>> {
    let mut lines = text.lines();
    let header: Vec<&str> = lines
        .next()
        .context("empty manifest")?
        .split('\t')
        .collect();
    let col = |name: &str| {
        header
            .iter()
            .position(|h| *h == name)
            .with_context(|| format!("manifest has no {name:?} column"))
    };
    let (file, lang, reference, notes) = (
        col("file")?,
        col("language")?,
        col("reference_transcript_or_summary")?,
        col("notes").ok(),
    );
    Ok(lines
        .map(|l| l.split('\t').collect::<Vec<_>>())
        .filter(|f| f.len() > reference)
        .filter(|f| f[file].starts_with(prefix))
        // One language, a whole reference (not a partial one, not speaker-tagged).
        .filter(|f| f[lang].len() == 2 && !f[reference].trim().is_empty())
        .filter(|f| !f[reference].contains('[') && !f[reference].contains(" | "))
        .filter(|f| {
            notes
                .and_then(|n| f.get(n))
                .is_none_or(|n| !n.contains("partial"))
        })
        .map(|f| Clip {
            file: f[file].to_string(),
            language: f[lang].to_string(),
            reference: f[reference].trim_matches('"').to_string(),
        })
        .collect())
}

pub fn run(args: EvalArgs, models_dir: &Path) -> Result<ExitCode> {
    let text = std::fs::read_to_string(&args.manifest)
        .with_context(|| format!("cannot read {}", args.manifest.display()))?;
    if crate::eval_summary::is_summary_set(&text) {
        let threads = args.pipeline.threads.map(|t| t as usize);
        let models = args
            .language
            .models(&ModelCache::new(models_dir), threads)?;
        let llm = models.llm()?;
        return crate::eval_summary::run(llm.model.as_ref(), &args.manifest, &text, args.limit);
    }
    if crate::eval_language::is_language_set(&text) {
        let intents = match &args.intents {
            Some(path) => crate::process::read_intents(path)?,
            None => bail!("an intelligence set needs its topics: --intents FILE.tsv"),
        };
        let pipeline = args.pipeline.pipeline(models_dir, Some(&args.language))?;
        return crate::eval_language::run(&pipeline, &args.manifest, &text, intents);
    }
    let clips = parse_manifest(&text, &args.prefix)?;
    if clips.is_empty() {
        bail!(
            "no clips with a reference transcript under {:?}",
            args.prefix
        );
    }
    let root = args.manifest.parent().unwrap_or(Path::new("."));
    let pipeline = args.pipeline.pipeline(models_dir, None)?;
    println!("clip\tlang\tdetected\tWER\terrors/words\tasr_ms\thypothesis");
    let (mut total, mut lang_ok, mut failed) = (ErrorCount::default(), 0usize, 0usize);
    for clip in &clips {
        let path = root.join(&clip.file);
        let processed = companion_audio::read_file(&path, pipeline.config().decode.max_bytes)
            .map_err(anyhow::Error::from)
            .and_then(|bytes| {
                let sha256 = companion_pipeline::sha256_hex(&bytes);
                Ok(pipeline.process(Input {
                    file: clip.file.clone(),
                    recording_id: companion_pipeline::recording_id_for(&sha256),
                    extension: path.extension().and_then(|e| e.to_str()).map(str::to_owned),
                    bytes,
                    kind: None,
                    context: Default::default(),
                })?)
            });
        let processed = match processed {
            Ok(p) => p,
            Err(e) => {
                failed += 1;
                println!("{}\t{}\t-\t-\t-\t-\terror: {e:#}", clip.file, clip.language);
                continue;
            }
        };
        let r = &processed.result;
        let detected = r.language.as_ref().map_or("-", |l| l.code.as_str());
        lang_ok += usize::from(detected == clip.language);
        let count = if matches!(clip.language.as_str(), "zh" | "ja") {
            char_errors(&clip.reference, &r.transcript.text)
        } else {
            word_errors(&clip.reference, &r.transcript.text)
        };
        total = total + count;
        println!(
            "{}\t{}\t{}\t{:.1}%\t{}/{}\t{}\t{}",
            clip.file,
            clip.language,
            detected,
            count.rate() * 100.0,
            count.errors,
            count.reference_len,
            r.timings_ms.get("asr").copied().unwrap_or(0),
            r.transcript.text
        );
    }
    println!(
        "TOTAL\t{} clips\tlanguage {}/{}\tWER {:.1}% ({}/{})\tfailed {}",
        clips.len(),
        lang_ok,
        clips.len(),
        total.rate() * 100.0,
        total.errors,
        total.reference_len,
        failed
    );
    Ok(if failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_single_language_clips_with_full_references() {
        let tsv = "file\tsource\tlanguage\treference_transcript_or_summary\tnotes\n\
                   speech/a.wav\tx\ten\tHello there.\t\n\
                   speech/b.wav\tx\ten+de\t[en] hi\t\n\
                   speech/c.wav\tx\tnone\t\tno speech\n\
                   speech/d.wav\tx\ten\tComfy\tpartial ref only\n\
                   pbx/e.gsm\tx\ten\tGoodbye\t\n";
        let clips = parse_manifest(tsv, "speech/").unwrap();
        assert_eq!(
            clips,
            vec![Clip {
                file: "speech/a.wav".into(),
                language: "en".into(),
                reference: "Hello there.".into()
            }]
        );
        assert_eq!(parse_manifest(tsv, "pbx/").unwrap().len(), 1);
    }
}
