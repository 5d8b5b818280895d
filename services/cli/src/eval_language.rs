//! `companion eval` on a voicemail intelligence set: each file through the whole pipeline as a
//! voicemail of a user with the given topics, scored against its labels.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use companion_core::facts::digit_runs;
use companion_core::policy::EffectivePolicy;
use companion_core::{Intent, RecordingKind, RecordingResult};
use companion_pipeline::{Input, Pipeline, RecordingContext};

/// One labelled voicemail.
#[derive(Debug, PartialEq)]
pub struct Labelled {
    pub file: String,
    pub lang: String,
    pub intents: Vec<String>,
    pub facts: Vec<String>,
}

/// Whether a TSV is an intelligence set (it labels intents and facts).
pub fn is_language_set(text: &str) -> bool {
    let header: Vec<&str> = text.lines().next().unwrap_or("").split('\t').collect();
    ["file", "lang", "intents", "facts"]
        .iter()
        .all(|c| header.contains(c))
}

fn list(field: &str) -> Vec<String> {
    if field.trim() == "-" {
        return Vec::new();
    }
    field
        .split('|')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

pub fn parse(text: &str) -> Result<Vec<Labelled>> {
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().context("empty set")?.split('\t').collect();
    let col = |name: &str| {
        header
            .iter()
            .position(|h| *h == name)
            .with_context(|| format!("the set has no {name:?} column"))
    };
    let (file, lang, intents, facts) = (col("file")?, col("lang")?, col("intents")?, col("facts")?);
    let mut out = Vec::new();
    for (n, line) in lines.enumerate() {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let f: Vec<&str> = line.split('\t').collect();
        let get = |i: usize| {
            f.get(i)
                .copied()
                .with_context(|| format!("line {}: too few columns", n + 2))
        };
        out.push(Labelled {
            file: get(file)?.to_string(),
            lang: get(lang)?.trim().to_string(),
            intents: list(get(intents)?),
            facts: list(get(facts)?),
        });
    }
    Ok(out)
}

/// Whether the outputs state `fact`: numbers compared as digits, other facts as words.
pub fn states(outputs: &str, fact: &str) -> bool {
    let fact_digits: String = digit_runs(fact).concat();
    if !fact_digits.is_empty() {
        return digit_runs(outputs).iter().any(|r| r.contains(&fact_digits));
    }
    outputs.to_lowercase().contains(&fact.to_lowercase())
}

/// Everything a voicemail's tasks say, as one text.
fn task_text(result: &RecordingResult) -> String {
    let mut parts = Vec::new();
    for task in result.tasks.iter().flatten() {
        parts.push(task.text.clone());
        parts.extend(task.who.clone());
        parts.extend(task.phone.clone());
        parts.extend(task.due.clone());
    }
    parts.join(" | ")
}

#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Counts {
    pub true_positive: usize,
    pub false_positive: usize,
    pub false_negative: usize,
}

impl Counts {
    pub fn add(&mut self, expected: &BTreeSet<String>, predicted: &BTreeSet<String>) {
        self.true_positive += expected.intersection(predicted).count();
        self.false_positive += predicted.difference(expected).count();
        self.false_negative += expected.difference(predicted).count();
    }
    pub fn precision(&self) -> f64 {
        ratio(self.true_positive, self.true_positive + self.false_positive)
    }
    pub fn recall(&self) -> f64 {
        ratio(self.true_positive, self.true_positive + self.false_negative)
    }
    pub fn f1(&self) -> f64 {
        let (p, r) = (self.precision(), self.recall());
        if p + r == 0.0 {
            0.0
        } else {
            2.0 * p * r / (p + r)
        }
    }
}

fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 { 1.0 } else { a as f64 / b as f64 }
}

pub fn run(pipeline: &Pipeline, set: &Path, text: &str, intents: Vec<Intent>) -> Result<ExitCode> {
    let items = parse(text)?;
    if items.is_empty() {
        bail!("{} labels no voicemail", set.display());
    }
    let root = set.parent().unwrap_or(Path::new("."));
    let context = RecordingContext {
        policy: EffectivePolicy::default(),
        intents,
        translate_to: None,
    };
    println!("file\tlang\tdetected\tfacts\tintents expected\tintents found\ttotal_ms\ttasks");
    let (mut lang_ok, mut facts_found, mut facts_total, mut failed) = (0, 0, 0, 0);
    let mut counts = Counts::default();
    let (mut prompt_tokens, mut generated, mut prompt_s, mut generate_s) =
        (0usize, 0usize, 0.0, 0.0);
    let mut totals_ms = Vec::new();
    for item in &items {
        let path = root.join(&item.file);
        let outcome = companion_audio::read_file(&path, pipeline.config().decode.max_bytes)
            .map_err(anyhow::Error::from)
            .and_then(|bytes| {
                let sha256 = companion_pipeline::sha256_hex(&bytes);
                Ok(pipeline.process(Input {
                    file: item.file.clone(),
                    recording_id: companion_pipeline::recording_id_for(&sha256),
                    extension: path.extension().and_then(|e| e.to_str()).map(str::to_owned),
                    bytes,
                    kind: Some(RecordingKind::Voicemail),
                    context: context.clone(),
                })?)
            });
        let result = match outcome {
            Ok(p) => p.result,
            Err(e) => {
                failed += 1;
                println!("{}\t{}\t-\t-\t-\t-\t-\terror: {e:#}", item.file, item.lang);
                continue;
            }
        };
        let detected = result.language.as_ref().map_or("-", |l| l.code.as_str());
        lang_ok += usize::from(detected == item.lang || (item.lang == "-" && !result.speech));
        let outputs = task_text(&result);
        let found = item.facts.iter().filter(|f| states(&outputs, f)).count();
        facts_found += found;
        facts_total += item.facts.len();
        let expected: BTreeSet<String> = item.intents.iter().cloned().collect();
        let predicted: BTreeSet<String> = result
            .priority
            .iter()
            .flat_map(|p| p.matches.iter().map(|m| m.intent.clone()))
            .collect();
        counts.add(&expected, &predicted);
        if let Some(llm) = &result.llm {
            prompt_tokens += llm.prompt_tokens;
            generated += llm.generated_tokens;
            if llm.prompt_tokens_per_s > 0.0 {
                prompt_s += llm.prompt_tokens as f64 / llm.prompt_tokens_per_s;
            }
            if llm.generate_tokens_per_s > 0.0 {
                generate_s += llm.generated_tokens.saturating_sub(llm.calls) as f64
                    / llm.generate_tokens_per_s;
            }
        }
        let total = result.timings_ms.get("total").copied().unwrap_or(0);
        totals_ms.push(total);
        println!(
            "{}\t{}\t{}\t{}/{}\t{}\t{}\t{}\t{}",
            item.file,
            item.lang,
            detected,
            found,
            item.facts.len(),
            join(&expected),
            join(&predicted),
            total,
            outputs
        );
    }
    totals_ms.sort_unstable();
    let median = totals_ms.get(totals_ms.len() / 2).copied().unwrap_or(0);
    println!(
        "TOTAL\t{n} voicemails\tlanguage {lang_ok}/{n}\tfacts {facts_found}/{facts_total} ({:.0}%)\t\
         intents P {:.2} R {:.2} F1 {:.2}\tmedian {median} ms\tLLM prompt {:.0} tok/s, generation {:.1} tok/s\tfailed {failed}",
        ratio(facts_found, facts_total) * 100.0,
        counts.precision(),
        counts.recall(),
        counts.f1(),
        if prompt_s > 0.0 {
            prompt_tokens as f64 / prompt_s
        } else {
            0.0
        },
        if generate_s > 0.0 {
            generated as f64 / generate_s
        } else {
            0.0
        },
        n = items.len(),
    );
    Ok(if failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn join(set: &BTreeSet<String>) -> String {
    if set.is_empty() {
        "-".into()
    } else {
        set.iter().cloned().collect::<Vec<_>>().join("|")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_are_parsed_with_dashes_for_none() {
        let tsv = "file\tlang\tintents\tfacts\n\
                   a.wav\ten\tbilling|renewal\t555 0142|Anna\n\
                   # a comment\n\
                   b.wav\tes\t-\t-\n";
        assert!(is_language_set(tsv));
        assert!(!is_language_set(
            "file\tlanguage\treference_transcript_or_summary\n"
        ));
        let items = parse(tsv).unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(items[0].intents, vec!["billing", "renewal"]);
        assert_eq!(items[0].facts, vec!["555 0142", "Anna"]);
        assert!(items[1].intents.is_empty() && items[1].facts.is_empty());
        assert!(parse("file\tlang\tintents\tfacts\nx.wav\ten\n").is_err());
    }

    #[test]
    fn facts_match_as_digits_or_words() {
        let out = "Call Anna back | 555-0142 | Friday";
        assert!(states(out, "555 0142"));
        assert!(states(out, "anna"));
        assert!(!states(out, "555 0143"));
        assert!(!states(out, "Peter"));
    }

    #[test]
    fn intent_scores_are_micro_averaged() {
        let mut c = Counts::default();
        let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        c.add(&set(&["a"]), &set(&["a", "b"]));
        c.add(&set(&["c"]), &set(&[]));
        c.add(&set(&[]), &set(&[]));
        assert_eq!(
            (c.true_positive, c.false_positive, c.false_negative),
            (1, 1, 1)
        );
        assert!((c.f1() - 0.5).abs() < 1e-9);
    }
}
