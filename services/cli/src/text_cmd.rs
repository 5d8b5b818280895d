//! Text features without a recording: `companion translate` and `companion summarize-sms`.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use companion_core::SmsMessage;
use companion_language::priority::IntentMatcher;
use companion_language::{
    Backend, EMBEDDING_ROLE, Embedder, LLM_ROLE, TextGenerator, load_generator, summarize_thread,
    translate_text,
};
use companion_models::{ModelCache, resolve_model};
use companion_store::Store;
use serde::Deserialize;
use serde_json::json;

use crate::process::DEFAULT_LLM;

#[derive(Args, Debug)]
pub struct ModelArgs {
    /// Chat model: a name from `companion models list` or the path of a GGUF file.
    #[arg(long, env = "COMPANION_LLM_MODEL", default_value = DEFAULT_LLM)]
    llm_model: String,
    /// CPU threads for the model (default: all cores).
    #[arg(long, env = "COMPANION_THREADS")]
    threads: Option<usize>,
    /// LLM runtime: engine (our own; default on CPUs with AVX2 or AVX-512 VNNI), llama.cpp or candle.
    #[arg(long, env = "COMPANION_LLM_BACKEND", default_value_t = Backend::default())]
    llm_backend: Backend,
}

impl ModelArgs {
    fn load(&self, models_dir: &Path) -> Result<Box<dyn TextGenerator>> {
        let path = resolve_model(&self.llm_model, LLM_ROLE, &ModelCache::new(models_dir))?;
        load_generator(self.llm_backend, &path, self.threads)
            .with_context(|| format!("cannot load the language model {}", path.display()))
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum TextFormat {
    Text,
    Json,
}

#[derive(Args, Debug)]
pub struct TranslateArgs {
    /// Target language (ISO 639-1, e.g. es).
    #[arg(long)]
    to: String,
    /// Source language; detected from the text when not given.
    #[arg(long)]
    from: Option<String>,
    /// The text to translate: a file, or `-` for standard input.
    #[arg(default_value = "-")]
    input: String,
    #[arg(long, value_enum, default_value_t = TextFormat::Text)]
    format: TextFormat,
    #[command(flatten)]
    model: ModelArgs,
}

fn read_input(input: &str) -> Result<String> {
    if input == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("cannot read standard input")?;
        Ok(text)
    } else {
        std::fs::read_to_string(input).with_context(|| format!("cannot read {input}"))
    }
}

pub fn translate(args: TranslateArgs, models_dir: &Path) -> Result<()> {
    let to = companion_core::policy::language_code(&args.to)?;
    let from = args
        .from
        .as_deref()
        .map(companion_core::policy::language_code)
        .transpose()?;
    let text = read_input(&args.input)?;
    if text.trim().is_empty() {
        bail!("nothing to translate: the input is empty");
    }
    let llm = args.model.load(models_dir)?;
    let out = translate_text(llm.as_ref(), &text, from.as_deref(), &to)?;
    if !out.unsupported.is_empty() {
        eprintln!(
            "companion: warning: the translation states what the original does not: {}",
            out.unsupported.join(", ")
        );
    }
    match args.format {
        TextFormat::Text => println!("{}", out.text),
        TextFormat::Json => println!(
            "{}",
            json!({
                "source_language": out.source_language,
                "language": out.language,
                "original": text.trim(),
                "text": out.text,
                "unsupported": out.unsupported,
            })
        ),
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct SummarizeSmsArgs {
    /// The thread: a JSON array of messages (`sender`, `time`, `text`) or an object with one
    /// under `messages`.
    thread: PathBuf,
    /// Write the summary in this language (default: the thread's).
    #[arg(long)]
    language: Option<String>,
    /// Check this user's policy (`team_sms_thread_summary`) in the store first.
    #[arg(long, env = "COMPANION_USER")]
    user: Option<String>,
    #[arg(long, env = "COMPANION_TENANT", default_value = "local")]
    tenant: String,
    #[arg(long, env = "COMPANION_DB", default_value = "./companion.db")]
    db: String,
    #[command(flatten)]
    model: ModelArgs,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Thread {
    Messages(Vec<SmsMessage>),
    Object { messages: Vec<SmsMessage> },
}

pub fn parse_thread(text: &str) -> Result<Vec<SmsMessage>> {
    let thread: Thread = serde_json::from_str(text).context(
        "a thread is a JSON array of {\"sender\", \"time\", \"text\"} messages or {\"messages\": [...]}",
    )?;
    Ok(match thread {
        Thread::Messages(m) | Thread::Object { messages: m } => m,
    })
}

pub fn summarize_sms(args: SummarizeSmsArgs, models_dir: &Path) -> Result<()> {
    let text = std::fs::read_to_string(&args.thread)
        .with_context(|| format!("cannot read {}", args.thread.display()))?;
    let messages = parse_thread(&text).with_context(|| args.thread.display().to_string())?;
    if let Some(user) = &args.user {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (policy, _) = runtime.block_on(async {
            let store = Store::open(&args.db).await?;
            let policy = store.effective_policy(&args.tenant, user).await;
            store.close().await;
            policy
        })?;
        if !policy.team_sms_thread_summary {
            bail!("team SMS thread summaries are turned off by policy for user {user}");
        }
    }
    let language = args
        .language
        .as_deref()
        .map(companion_core::policy::language_code)
        .transpose()?;
    let llm = args.model.load(models_dir)?;
    let out = summarize_thread(llm.as_ref(), &messages, language.as_deref())?;
    println!(
        "{}",
        json!({
            "summary": out.summary.summary,
            "open_question": out.summary.open_question,
            "language": out.language,
        })
    );
    Ok(())
}

#[derive(Args, Debug)]
pub struct PriorityArgs {
    /// The message (English): a file, or `-` for standard input.
    #[arg(default_value = "-")]
    input: String,
    /// The topics, a TSV of `name<TAB>description` lines.
    #[arg(long, env = "COMPANION_INTENTS")]
    intents: PathBuf,
    /// Similarity a topic needs to match (default: the calibrated one).
    #[arg(long)]
    threshold: Option<f32>,
    /// Sentence embedding model: a name or a directory.
    #[arg(
        long,
        env = "COMPANION_EMBEDDING_MODEL",
        default_value = "all-minilm-l6-v2"
    )]
    embedding_model: String,
}

/// Scores a message against topics and shows every topic's score: how admins check that their
/// topic descriptions match the messages they mean, and only those.
pub fn priority(args: PriorityArgs, models_dir: &Path) -> Result<()> {
    let intents = crate::process::read_intents(&args.intents)?;
    let text = read_input(&args.input)?;
    let dir = resolve_model(
        &args.embedding_model,
        EMBEDDING_ROLE,
        &ModelCache::new(models_dir),
    )?;
    let embedder = Embedder::load(&dir)?;
    let matcher = IntentMatcher::new(&embedder, &intents, args.threshold)?;
    let scores: Vec<_> = matcher
        .scores(&text)?
        .into_iter()
        .map(|s| json!({"intent": s.intent, "score": s.best(), "reason": s.reason}))
        .collect();
    println!(
        "{}",
        json!({
            "priority": matcher.score(&text)?,
            "threshold": matcher.threshold(),
            "scores": scores,
        })
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_come_as_arrays_or_objects() {
        let array = r#"[{"sender": "Lena", "time": "09:00", "text": "Hi"}]"#;
        let object = r#"{"messages": [{"sender": "Lena", "text": "Hi"}]}"#;
        assert_eq!(parse_thread(array).unwrap()[0].sender, "Lena");
        assert_eq!(parse_thread(object).unwrap()[0].time, None);
        let err = parse_thread(r#"{"msgs": []}"#).unwrap_err();
        assert!(format!("{err:#}").contains("JSON array"), "{err:#}");
    }
}
