//! `companion eval` on a dialogue summarization set: JSON lines, each with a `dialogue` of
//! `#Speaker#: text` turns and one or more human summaries (`summary`, `summary1`, …), as
//! DialogSum ships them. Each dialogue goes through the call summarizer; its recap and its
//! summary paragraph are each scored by ROUGE-L F1 against the closest human summary.

use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use companion_core::Segment;
use companion_language::{TextGenerator, call_summary};
use serde_json::Value;

/// One dialogue with its human summaries.
#[derive(Debug, PartialEq)]
pub struct Dialogue {
    pub id: String,
    /// (speaker, what they said), in order.
    pub turns: Vec<(String, String)>,
    pub references: Vec<String>,
}

/// Whether the set's first line is a JSON object with a `dialogue`.
pub fn is_summary_set(text: &str) -> bool {
    text.lines()
        .find(|l| !l.trim().is_empty())
        .and_then(|l| serde_json::from_str::<Value>(l).ok())
        .is_some_and(|v| v.get("dialogue").is_some_and(Value::is_string))
}

pub fn parse_set(text: &str) -> Result<Vec<Dialogue>> {
    let mut set = Vec::new();
    for (n, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let v: Value =
            serde_json::from_str(line).with_context(|| format!("line {}: not JSON", n + 1))?;
        let dialogue = v["dialogue"]
            .as_str()
            .with_context(|| format!("line {}: no \"dialogue\" text", n + 1))?;
        let mut references: Vec<(&String, String)> = v
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(k, _)| k.starts_with("summary"))
            .filter_map(|(k, s)| Some((k, s.as_str()?.trim().to_string())))
            .filter(|(_, s)| !s.is_empty())
            .collect();
        references.sort();
        if references.is_empty() {
            bail!("line {}: no human \"summary\"", n + 1);
        }
        let id = ["fname", "id"]
            .iter()
            .find_map(|k| v[*k].as_str())
            .map_or_else(|| format!("line{}", n + 1), str::to_string);
        set.push(Dialogue {
            id,
            turns: turns(dialogue),
            references: references.into_iter().map(|(_, s)| s).collect(),
        });
    }
    Ok(set)
}

/// `#Person1#: Hello.` lines as (speaker, text); a line without a speaker tag continues the
/// turn before it.
fn turns(dialogue: &str) -> Vec<(String, String)> {
    let mut turns: Vec<(String, String)> = Vec::new();
    for line in dialogue.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let tagged = line
            .strip_prefix('#')
            .and_then(|rest| rest.split_once("#:"))
            .filter(|(speaker, _)| !speaker.is_empty() && !speaker.contains(' '));
        match (tagged, turns.last_mut()) {
            (Some((speaker, text)), _) => {
                turns.push((speaker.to_string(), text.trim().to_string()))
            }
            (None, Some((_, text))) => {
                text.push(' ');
                text.push_str(line);
            }
            (None, None) => turns.push(("Speaker".to_string(), line.to_string())),
        }
    }
    turns
}

/// Lower-case words: runs of letters and digits.
fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// ROUGE-L F1 (β = 1): the longest common word subsequence against both lengths.
pub fn rouge_l(candidate: &str, reference: &str) -> f64 {
    let (c, r) = (words(candidate), words(reference));
    if c.is_empty() || r.is_empty() {
        return 0.0;
    }
    // One row of the LCS table at a time.
    let mut row = vec![0usize; r.len() + 1];
    for cw in &c {
        let mut diagonal = 0;
        for (j, rw) in r.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = if cw == rw {
                diagonal + 1
            } else {
                above.max(row[j])
            };
            diagonal = above;
        }
    }
    let lcs = row[r.len()] as f64;
    if lcs == 0.0 {
        return 0.0;
    }
    let (precision, recall) = (lcs / c.len() as f64, lcs / r.len() as f64);
    2.0 * precision * recall / (precision + recall)
}

/// The best ROUGE-L F1 over the human summaries.
fn best_rouge_l(candidate: &str, references: &[String]) -> f64 {
    references
        .iter()
        .map(|r| rouge_l(candidate, r))
        .fold(0.0, f64::max)
}

pub fn run(
    generator: &dyn TextGenerator,
    set_path: &Path,
    text: &str,
    limit: Option<usize>,
) -> Result<ExitCode> {
    let mut set = parse_set(text)?;
    set.truncate(limit.unwrap_or(usize::MAX));
    if set.is_empty() {
        bail!("{} holds no dialogue", set_path.display());
    }
    println!("id\trecap_rouge_l\tsummary_rouge_l\tcalls\tgenerated\ttotal_ms\trecap");
    let (mut recap_sum, mut summary_sum, mut failed) = (0.0, 0.0, 0usize);
    let (mut calls, mut generated, mut generate_ms) = (0usize, 0usize, 0.0);
    let started = Instant::now();
    for d in &set {
        let segments: Vec<Segment> = d
            .turns
            .iter()
            .enumerate()
            .map(|(i, (speaker, text))| Segment {
                start_s: i as f64,
                end_s: i as f64 + 1.0,
                speaker: Some(speaker.clone()),
                text: text.clone(),
                words: Vec::new(),
            })
            .collect();
        let one = Instant::now();
        match call_summary(generator, &segments, "en") {
            Ok(out) => {
                let recap = best_rouge_l(&out.summary.recap, &d.references);
                let summary = best_rouge_l(&out.summary.summary, &d.references);
                recap_sum += recap;
                summary_sum += summary;
                calls += out.usage.calls;
                generated += out.usage.generated_tokens;
                generate_ms += out.usage.generate_ms;
                println!(
                    "{}\t{recap:.3}\t{summary:.3}\t{}\t{}\t{:.0}\t{}",
                    d.id,
                    out.usage.calls,
                    out.usage.generated_tokens,
                    one.elapsed().as_secs_f64() * 1000.0,
                    out.summary.recap.replace(['\t', '\n'], " "),
                );
            }
            Err(e) => {
                failed += 1;
                println!("{}\t-\t-\t-\t-\t-\terror: {e:#}", d.id);
            }
        }
    }
    let scored = (set.len() - failed).max(1) as f64;
    println!(
        "TOTAL\t{} dialogues\tfailed {failed}\trecap ROUGE-L {:.3}\tsummary ROUGE-L {:.3}\t\
         generations {:.2} per dialogue\t{generated} tokens at {:.1} tokens/s\t{:.1} s",
        set.len(),
        recap_sum / scored,
        summary_sum / scored,
        calls as f64 / scored,
        generated as f64 / (generate_ms / 1000.0).max(1e-9),
        started.elapsed().as_secs_f64()
    );
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_dialogsum_lines() {
        let text = concat!(
            r##"{"fname": "test_1", "dialogue": "#Person1#: Hi, Tom.\n#Person2#: Hello.\nHow are you?", "summary1": "Two friends greet.", "summary2": " ", "topic": "greeting"}"##,
            "\n\n",
            r##"{"dialogue": "no tags here", "summary": "A line."}"##,
            "\n"
        );
        assert!(is_summary_set(text));
        let set = parse_set(text).unwrap();
        assert_eq!(
            set[0],
            Dialogue {
                id: "test_1".into(),
                turns: vec![
                    ("Person1".into(), "Hi, Tom.".into()),
                    ("Person2".into(), "Hello. How are you?".into()),
                ],
                references: vec!["Two friends greet.".into()],
            }
        );
        assert_eq!(set[1].id, "line3");
        assert_eq!(
            set[1].turns,
            vec![("Speaker".into(), "no tags here".into())]
        );
        assert!(!is_summary_set("file\tlang\tintents\tfacts\n"));
        let err = parse_set(r##"{"dialogue": "#A#: hi"}"##).unwrap_err();
        assert!(err.to_string().contains("no human \"summary\""), "{err}");
    }

    #[test]
    fn rouge_l_is_the_longest_common_subsequence_f1() {
        assert_eq!(rouge_l("the cat sat", "The cat sat."), 1.0);
        assert_eq!(rouge_l("dog", "the cat sat"), 0.0);
        assert_eq!(rouge_l("", "the cat"), 0.0);
        // LCS "the sat" = 2 of 4 candidate and 3 reference words: P 1/2, R 2/3.
        let f = rouge_l("the dog sat down", "the cat sat");
        assert!(
            (f - 2.0 * 0.5 * (2.0 / 3.0) / (0.5 + 2.0 / 3.0)).abs() < 1e-12,
            "{f}"
        );
        // Order matters: the reversed sentence shares a single word in order.
        assert!((rouge_l("sat cat the", "the cat sat") - 1.0 / 3.0).abs() < 1e-12);
        let refs = ["a b".to_string(), "the cat sat".to_string()];
        assert_eq!(best_rouge_l("the cat sat", &refs), 1.0);
    }
}
