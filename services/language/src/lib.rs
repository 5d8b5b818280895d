//! Local language models for companion, on the CPU with candle.
//!
//! * [`Llm`]: a quantized GGUF chat model (Qwen2.5 `qwen2`, SmolLM2
//!   `llama`), its byte-level BPE tokenizer rebuilt from the GGUF metadata
//!   ([`LlmTokenizer`]), the ChatML chat template ([`ChatTemplate`]) and
//!   deterministic greedy generation ([`Llm::chat`]). One loaded model is
//!   shared by all jobs; see the [`llm`] module for how its KV cache is kept
//!   per call.
//! * [`Embedder`]: sentence embeddings (all-MiniLM-L6-v2, 384 dims,
//!   unit length) and [`cosine`] similarity.
//! * [`resolve_model`] / [`installed_model`]: models by manifest name from
//!   the `companion-models` cache (`companion models fetch NAME`).
//!
//! ```no_run
//! use companion_language::{GenerateOptions, Llm, Message, installed_model, LLM_ROLE};
//! # fn main() -> companion_language::Result<()> {
//! let path = installed_model("qwen2.5-0.5b", LLM_ROLE)?;
//! let llm = Llm::load(&path, Some(2))?;
//! let answer = llm.chat(
//!     &[Message::user("What is the capital of France? Answer in one word.")],
//!     &GenerateOptions::max_new_tokens(16),
//! )?;
//! println!("{}", answer.text);
//! # Ok(())
//! # }
//! ```

mod chat;
mod embed;
mod error;
pub mod generate;
pub mod llm;
mod models;
pub mod priority;
pub mod prompt;
mod resolve;
pub mod sms;
pub mod summary;
pub mod tasks;
pub mod textlang;
mod threads;
mod tokenizer;
pub mod translate;

pub use chat::{ChatTemplate, IM_END, IM_START, Message, Role};
pub use embed::{
    CONFIG_FILE, Embedder, MAX_TOKENS as EMBED_MAX_TOKENS, TOKENIZER_FILE, WEIGHTS_FILE, cosine,
};
pub use error::{Error, Result};
pub use generate::{Structured, TextGenerator, Usage, Validate, structured, structured_with};
pub use llm::{GenerateOptions, Generation, Llm, LlmInfo, LoadOptions, PREFILL_CHUNK, StopReason};
pub use models::{LanguageModels, Loaded};
pub use priority::{
    DEFAULT_INTENT_THRESHOLD, IntentMatcher, IntentScore, SentenceEncoder, calibrate,
    split_sentences,
};
pub use resolve::{EMBEDDING_ROLE, LLM_ROLE, installed_model, resolve_model};
pub use sms::{ThreadSummaryOutput, summarize_thread};
pub use summary::{SummaryOutput, call_summary};
pub use tasks::{VoicemailTasks, voicemail_tasks};
pub use textlang::{detect_text_language, language_name};
pub use threads::{compute_threads, configure_threads};
pub use tokenizer::{
    GgufVocab, LLAMA3_PATTERN, LlmTokenizer, PreTokenizerKind, QWEN2_PATTERN,
    gpt2_bytes_to_unicode, token_type,
};
pub use translate::{TextTranslation, translate_items, translate_text};
