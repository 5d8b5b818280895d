//! Pieces shared by the prompts: how a language is named, how a transcript is quoted, how a
//! two-party call is laid out.

use companion_core::Segment;

use crate::textlang::language_name;

/// Transcript characters a prompt carries (about 2,500 tokens). Longer recordings keep their
/// beginning and end, where callers say who they are and what they want.
pub const MAX_TRANSCRIPT_CHARS: usize = 10_000;

/// "English" for `en`; the code itself for languages without a name here.
pub fn language_label(code: &str) -> String {
    language_name(code)
        .map(str::to_string)
        .unwrap_or_else(|| format!("the language with ISO code \"{}\"", code.trim()))
}

/// The transcript between fences, shortened in the middle when it is too long, so the model
/// tells data from instructions.
pub fn quote_transcript(text: &str) -> String {
    format!(
        "\"\"\"\n{}\n\"\"\"",
        shorten_middle(text.trim(), MAX_TRANSCRIPT_CHARS)
    )
}

fn shorten_middle(text: &str, max_chars: usize) -> String {
    let chars = text.chars().count();
    if chars <= max_chars {
        return text.replace("\"\"\"", "\"");
    }
    let half = max_chars / 2;
    let head: String = text.chars().take(half).collect();
    let tail: String = text.chars().skip(chars - half).collect();
    format!("{head} [...] {tail}").replace("\"\"\"", "\"")
}

/// A call as `speaker: text` lines, consecutive segments of one speaker joined.
pub fn dialogue(segments: &[Segment]) -> String {
    let mut lines: Vec<(String, String)> = Vec::new();
    for segment in segments {
        let speaker = segment.speaker.clone().unwrap_or_else(|| "caller".into());
        let text = segment.text.trim();
        if text.is_empty() {
            continue;
        }
        match lines.last_mut() {
            Some((last, joined)) if *last == speaker => {
                joined.push(' ');
                joined.push_str(text);
            }
            _ => lines.push((speaker, text.to_string())),
        }
    }
    lines
        .iter()
        .map(|(speaker, text)| format!("{speaker}: {text}"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(speaker: &str, text: &str) -> Segment {
        Segment {
            start_s: 0.0,
            end_s: 1.0,
            speaker: Some(speaker.into()),
            text: text.into(),
            words: vec![],
        }
    }

    #[test]
    fn calls_read_as_dialogue() {
        let segments = [
            seg("agent", "Hello,"),
            seg("agent", "how can I help?"),
            seg("customer", "My router is down."),
            seg("agent", " "),
            seg("agent", "Let me check."),
        ];
        assert_eq!(
            dialogue(&segments),
            "agent: Hello, how can I help?\ncustomer: My router is down.\nagent: Let me check."
        );
    }

    #[test]
    fn long_transcripts_keep_both_ends() {
        let text = format!("start {} end", "word ".repeat(5000));
        let quoted = quote_transcript(&text);
        assert!(quoted.len() < MAX_TRANSCRIPT_CHARS + 20);
        assert!(quoted.contains("start") && quoted.contains("end") && quoted.contains("[...]"));
    }

    #[test]
    fn fences_in_the_transcript_cannot_close_the_quote() {
        assert_eq!(quote_transcript("a \"\"\" b"), "\"\"\"\na \" b\n\"\"\"");
    }

    #[test]
    fn languages_are_named() {
        assert_eq!(language_label("de"), "German");
        assert!(language_label("xx").contains("\"xx\""));
    }
}
