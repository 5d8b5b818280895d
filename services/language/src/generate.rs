//! The seam between the language features and the model that writes text, and the JSON
//! discipline every structured answer goes through.
//!
//! Features ask for JSON, [`structured`] parses it into a typed value and validates it; on a
//! failure the model sees its own answer and the reason once more and gets one retry. Free model
//! text never reaches users as structured data: a second failure is an error.

use std::time::Instant;

use serde::de::DeserializeOwned;
use tracing::{debug, trace, warn};

use crate::chat::Message;
use crate::error::{Error, Result};
use crate::llama::LlamaCpp;
use crate::llm::{GenerateOptions, Generation, Llm};
use crate::native::Native;

/// Anything that answers a chat greedily: a model on one of the runtimes ([`LlamaCpp`],
/// candle's [`Llm`]; see [`crate::Backend`]), or a scripted fake in tests.
pub trait TextGenerator: Send + Sync {
    /// Applies the model's chat template and generates the assistant's reply greedily.
    fn chat(&self, messages: &[Message], options: &GenerateOptions) -> Result<Generation>;

    /// Does the runtime's one-time work (first-use weight repacking, buffers) now rather than
    /// in the first real call.
    fn warm_up(&self) -> Result<()> {
        Ok(())
    }
}

impl TextGenerator for Llm {
    fn chat(&self, messages: &[Message], options: &GenerateOptions) -> Result<Generation> {
        Llm::chat(self, messages, options)
    }

    fn warm_up(&self) -> Result<()> {
        Llm::warm_up(self)
    }
}

impl TextGenerator for Native {
    fn chat(&self, messages: &[Message], options: &GenerateOptions) -> Result<Generation> {
        Native::chat(self, messages, options)
    }

    fn warm_up(&self) -> Result<()> {
        Native::warm_up(self)
    }
}

impl TextGenerator for LlamaCpp {
    fn chat(&self, messages: &[Message], options: &GenerateOptions) -> Result<Generation> {
        LlamaCpp::chat(self, messages, options)
    }

    fn warm_up(&self) -> Result<()> {
        LlamaCpp::warm_up(self)
    }
}

/// Model time spent on one feature, summed over its calls.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    pub calls: usize,
    pub prompt_tokens: usize,
    /// Prompt tokens reused from the KV cache instead of computed.
    pub cached_prompt_tokens: usize,
    pub generated_tokens: usize,
    pub prompt_ms: f64,
    pub generate_ms: f64,
    /// Draft tokens checked with generated ones, and those kept (see [`Generation`]).
    pub draft_tokens: usize,
    pub accepted_draft_tokens: usize,
}

impl Usage {
    pub fn add(&mut self, generation: &Generation) {
        self.calls += 1;
        self.prompt_tokens += generation.prompt_tokens;
        self.cached_prompt_tokens += generation.cached_prompt_tokens;
        self.generated_tokens += generation.generated_tokens;
        self.prompt_ms += generation.prompt_ms;
        self.generate_ms += generation.generate_ms;
        self.draft_tokens += generation.draft_tokens;
        self.accepted_draft_tokens += generation.accepted_draft_tokens;
    }

    pub fn merge(&mut self, other: &Usage) {
        self.calls += other.calls;
        self.prompt_tokens += other.prompt_tokens;
        self.cached_prompt_tokens += other.cached_prompt_tokens;
        self.generated_tokens += other.generated_tokens;
        self.prompt_ms += other.prompt_ms;
        self.generate_ms += other.generate_ms;
        self.draft_tokens += other.draft_tokens;
        self.accepted_draft_tokens += other.accepted_draft_tokens;
    }

    /// Generation speed over all calls (tokens after each call's first, per second).
    pub fn generate_tokens_per_sec(&self) -> f64 {
        let steps = self.generated_tokens.saturating_sub(self.calls);
        if self.generate_ms > 0.0 {
            steps as f64 * 1000.0 / self.generate_ms
        } else {
            0.0
        }
    }

    /// Prompt processing speed over all calls, counting the tokens computed (not those
    /// reused from the KV cache).
    pub fn prompt_tokens_per_sec(&self) -> f64 {
        let computed = self.prompt_tokens.saturating_sub(self.cached_prompt_tokens);
        if self.prompt_ms > 0.0 {
            computed as f64 * 1000.0 / self.prompt_ms
        } else {
            0.0
        }
    }
}

/// A value a model wrote that passed parsing and validation.
#[derive(Debug, Clone)]
pub struct Structured<T> {
    pub value: T,
    pub usage: Usage,
    /// The first answer failed and the retry succeeded.
    pub repaired: bool,
}

/// Checks a parsed answer beyond its shape (non-empty fields, placeholder text...).
pub trait Validate {
    /// `Err` names what is wrong, in words the model can act on.
    fn validate(&self) -> std::result::Result<(), String>;
}

/// Generates, parses and validates a JSON answer, retrying once with the error shown to the model.
pub fn structured<T: DeserializeOwned + Validate>(
    generator: &dyn TextGenerator,
    messages: &[Message],
    options: &GenerateOptions,
) -> Result<Structured<T>> {
    structured_with(generator, messages, options, T::validate)
}

/// [`structured`] with a check that needs context (an expected length, the input it answers).
pub fn structured_with<T: DeserializeOwned>(
    generator: &dyn TextGenerator,
    messages: &[Message],
    options: &GenerateOptions,
    validate: impl Fn(&T) -> std::result::Result<(), String>,
) -> Result<Structured<T>> {
    let mut usage = Usage::default();
    let started = Instant::now();
    // Only the first JSON value of an answer is read (see `parse`).
    let options = &options.clone().until_json();
    let first = generator.chat(messages, options)?;
    usage.add(&first);
    trace!(answer = %first.text, stop = ?first.stop, "model answer");
    let problem = match parse::<T>(&first.text, &validate) {
        Ok(value) => {
            debug!(
                ms = started.elapsed().as_millis() as u64,
                "structured answer"
            );
            return Ok(Structured {
                value,
                usage,
                repaired: false,
            });
        }
        Err(problem) => problem,
    };
    warn!(%problem, "model answer rejected; retrying once");
    debug!(answer = %first.text, "rejected answer");
    let mut retry = messages.to_vec();
    retry.push(Message::assistant(first.text.clone()));
    retry.push(Message::user(format!(
        "That answer is not usable: {problem}. Reply again with the corrected JSON only."
    )));
    let second = generator.chat(&retry, options)?;
    usage.add(&second);
    match parse::<T>(&second.text, &validate) {
        Ok(value) => Ok(Structured {
            value,
            usage,
            repaired: true,
        }),
        Err(problem) => Err(Error::Unstructured { problem }),
    }
}

fn parse<T: DeserializeOwned>(
    text: &str,
    validate: &impl Fn(&T) -> std::result::Result<(), String>,
) -> std::result::Result<T, String> {
    let json = match extract_json(text) {
        Some(json) => json.to_string(),
        None => complete_json(text).ok_or_else(|| "it contains no JSON object".to_string())?,
    };
    let value: T = serde_json::from_str(&json).map_err(|e| format!("invalid JSON ({e})"))?;
    validate(&value)?;
    Ok(value)
}

/// The first balanced JSON object or array in `text`: models wrap JSON in code fences or add a
/// sentence around it.
pub fn extract_json(text: &str) -> Option<&str> {
    let start = text.find(['{', '['])?;
    let bytes = text.as_bytes();
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for (i, &b) in bytes.iter().enumerate().skip(start) {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => depth += 1,
            b'}' | b']' => {
                depth -= 1;
                if depth == 0 {
                    return Some(&text[start..=i]);
                }
            }
            _ => {}
        }
    }
    None
}

/// A JSON object or array the model left open (its token budget ran out, or it stopped
/// mid-way), closed: an unfinished string value ends where it stops, an unfinished list item
/// or key is dropped with the comma before it, and the open lists and objects are closed.
/// `None` when `text` opens no JSON or closes what it opens (see [`extract_json`]).
pub fn complete_json(text: &str) -> Option<String> {
    let body = &text[text.find(['{', '['])?..];
    let mut closers: Vec<char> = Vec::new();
    let (mut in_string, mut escaped, mut string_start) = (false, false, 0);
    for (i, b) in body.bytes().enumerate() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => (in_string, string_start) = (true, i),
            b'{' => closers.push('}'),
            b'[' => closers.push(']'),
            b'}' | b']' => {
                closers.pop();
                if closers.is_empty() {
                    return None;
                }
            }
            _ => {}
        }
    }
    let mut out = body.to_string();
    if in_string {
        let is_value = body[..string_start].trim_end().ends_with(':');
        if is_value {
            if escaped {
                out.pop();
            }
            out.push('"');
        } else {
            out.truncate(string_start);
        }
    }
    loop {
        out.truncate(out.trim_end().len());
        if out.ends_with(',') {
            out.pop();
        } else if out.ends_with(':') {
            // A key without its value: drop the key.
            out.pop();
            let key_end = out.trim_end().len();
            let key_start = out[..key_end.saturating_sub(1)].rfind('"')?;
            out.truncate(key_start);
        } else {
            break;
        }
    }
    out.extend(closers.iter().rev());
    Some(out)
}

/// Text a model wrote for a field that should hold nothing: `null` spelled out, placeholders.
pub fn is_blank(text: &str) -> bool {
    let t = text.trim().trim_matches(|c| c == '"' || c == '.');
    t.is_empty()
        || matches!(
            t.to_ascii_lowercase().as_str(),
            "null" | "none" | "n/a" | "na" | "unknown" | "-" | "not mentioned" | "not specified"
        )
        || (t.starts_with('<') && t.ends_with('>'))
}

/// Trims a field and turns blanks into `None`.
pub fn clean_field(field: Option<String>) -> Option<String> {
    field.map(|f| f.trim().to_string()).filter(|f| !is_blank(f))
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Mutex;

    use serde::Deserialize;

    use super::*;
    use crate::llm::StopReason;

    /// Answers with scripted replies in order and records the prompts it saw.
    pub struct Scripted {
        replies: Mutex<Vec<String>>,
        pub seen: Mutex<Vec<Vec<Message>>>,
    }

    impl Scripted {
        pub fn new(replies: &[&str]) -> Self {
            Scripted {
                replies: Mutex::new(replies.iter().rev().map(|r| r.to_string()).collect()),
                seen: Mutex::new(Vec::new()),
            }
        }

        pub fn calls(&self) -> usize {
            self.seen.lock().unwrap().len()
        }
    }

    impl TextGenerator for Scripted {
        fn chat(&self, messages: &[Message], _: &GenerateOptions) -> Result<Generation> {
            self.seen.lock().unwrap().push(messages.to_vec());
            let text = self
                .replies
                .lock()
                .unwrap()
                .pop()
                .expect("the test scripted too few replies");
            Ok(Generation {
                generated_tokens: text.len() / 4 + 1,
                text,
                prompt_tokens: 100,
                cached_prompt_tokens: 0,
                prompt_ms: 10.0,
                generate_ms: 10.0,
                stop: StopReason::EndOfTurn,
                draft_tokens: 0,
                accepted_draft_tokens: 0,
            })
        }
    }

    #[derive(Debug, Deserialize)]
    struct Answer {
        name: String,
    }

    impl Validate for Answer {
        fn validate(&self) -> std::result::Result<(), String> {
            if self.name.trim().is_empty() {
                return Err("\"name\" is empty".into());
            }
            Ok(())
        }
    }

    #[test]
    fn json_is_found_inside_fences_and_prose() {
        assert_eq!(
            extract_json("Sure!\n```json\n{\"a\": \"}\", \"b\": [1, {\"c\": 2}]}\n```"),
            Some("{\"a\": \"}\", \"b\": [1, {\"c\": 2}]}")
        );
        assert_eq!(extract_json("[1, 2] and more"), Some("[1, 2]"));
        assert_eq!(extract_json("{\"unterminated\": 1"), None);
        assert_eq!(extract_json("no json"), None);
    }

    /// One question answered by the scripted model as an [`Answer`].
    fn ask(model: &Scripted) -> Result<Structured<Answer>> {
        structured(model, &[Message::user("q")], &GenerateOptions::default())
    }

    #[test]
    fn a_good_answer_is_taken_as_is() {
        let model = Scripted::new(&["{\"name\": \"Ana\"}"]);
        let out = ask(&model).unwrap();
        assert_eq!(out.value.name, "Ana");
        assert!(!out.repaired);
        assert_eq!(out.usage.calls, 1);
    }

    #[test]
    fn a_broken_answer_is_retried_once_with_the_reason() {
        let model = Scripted::new(&["The name is Ana.", "```json\n{\"name\": \"Ana\"}\n```"]);
        let out = ask(&model).unwrap();
        assert!(out.repaired);
        assert_eq!(out.usage.calls, 2);
        let retry = &model.seen.lock().unwrap()[1];
        assert_eq!(retry.len(), 3);
        assert!(
            retry[2].content.contains("no JSON object"),
            "{:?}",
            retry[2]
        );
    }

    #[test]
    fn an_invalid_answer_twice_is_an_error_not_free_text() {
        let model = Scripted::new(&["{\"name\": \"\"}", "Ana is the name."]);
        let out = ask(&model);
        assert!(matches!(out, Err(Error::Unstructured { .. })), "{out:?}");
        let retry = &model.seen.lock().unwrap()[1];
        assert!(retry[2].content.contains("\"name\" is empty"));
    }

    #[test]
    fn an_answer_cut_short_is_closed() {
        for (cut, closed) in [
            // An unfinished value ends where it stops.
            (
                "Here: {\"recap\": \"Sam called.\", \"summary\": \"About the bill",
                "{\"recap\": \"Sam called.\", \"summary\": \"About the bill\"}",
            ),
            ("{\"a\": \"ends in \\", "{\"a\": \"ends in \"}"),
            // An unfinished list item is dropped, and so is a key without its value.
            (
                "{\"steps\": [\"Call back.\", \"Call ba",
                "{\"steps\": [\"Call back.\"]}",
            ),
            ("{\"a\": [1, 2], \"summ", "{\"a\": [1, 2]}"),
            ("{\"a\": \"x\", \"b\": ", "{\"a\": \"x\"}"),
            ("[{\"a\": 1},", "[{\"a\": 1}]"),
        ] {
            assert_eq!(complete_json(cut).as_deref(), Some(closed), "{cut}");
        }
        // Nothing opened, or everything closed: nothing to complete.
        assert_eq!(complete_json("no json"), None);
        assert_eq!(complete_json("{\"a\": 1} and more"), None);
    }

    #[test]
    fn an_answer_cut_short_is_used_without_a_retry() {
        let model = Scripted::new(&["{\"name\": \"Sam\", \"extra\": [\"one\", \"one\", \"o"]);
        let answer = ask(&model).unwrap();
        assert_eq!(answer.value.name, "Sam");
        assert!(!answer.repaired);
        assert_eq!(model.calls(), 1);
    }

    #[test]
    fn blanks_are_recognised() {
        for blank in [
            "",
            " null ",
            "N/A",
            "<phone>",
            "\"unknown\"",
            "Not mentioned.",
        ] {
            assert!(is_blank(blank), "{blank}");
        }
        assert!(!is_blank("555 0142"));
        assert_eq!(clean_field(Some(" Ana ".into())), Some("Ana".into()));
        assert_eq!(clean_field(Some("none".into())), None);
    }
}
