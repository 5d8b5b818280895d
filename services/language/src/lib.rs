//! Local language models for companion, on the CPU.
//!
//! * Chat models (GGUF; Qwen2.5 `qwen2`, SmolLM2 `llama`) behind one
//!   trait, [`TextGenerator`], on three runtimes chosen by [`Backend`]:
//!   [`Native`] (companion's own engine, crate `companion-engine`, the
//!   default: the fastest at generating), [`LlamaCpp`] (llama.cpp) and
//!   [`Llm`] (candle). All rebuild the byte-level BPE tokenizer from the GGUF
//!   metadata ([`LlmTokenizer`]), apply the ChatML chat template
//!   ([`ChatTemplate`]) and generate deterministically (greedy), so they see
//!   the same prompt tokens; the engine and llama.cpp keep a shared prompt
//!   prefix in their KV caches between calls. One loaded model is shared by
//!   all jobs; see the [`native`], [`llama`] and [`llm`] modules for how each
//!   keeps its KV cache per call.
//! * [`Embedder`]: sentence embeddings (all-MiniLM-L6-v2, 384 dims,
//!   unit length) and [`cosine`] similarity.
//! * [`resolve_model`] / [`installed_model`]: models by manifest name from
//!   the `companion-models` cache (`companion models fetch NAME`).
//!
//! ```no_run
//! use companion_language::{
//!     Backend, GenerateOptions, LLM_ROLE, Message, installed_model, load_generator,
//! };
//! # fn main() -> companion_language::Result<()> {
//! let path = installed_model("qwen2.5-0.5b", LLM_ROLE)?;
//! let llm = load_generator(Backend::Native, &path, Some(2))?;
//! let answer = llm.chat(
//!     &[Message::user("What is the capital of France? Answer in one word.")],
//!     &GenerateOptions::max_new_tokens(16),
//! )?;
//! println!("{}", answer.text);
//! # Ok(())
//! # }
//! ```

mod backend;
mod chat;
mod embed;
mod error;
pub mod generate;
pub mod llama;
pub mod llm;
mod models;
pub mod native;
mod pool;
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

pub use backend::{Backend, LLM_BACKEND_ENV, load_generator};
pub use chat::{ChatTemplate, IM_END, IM_START, Message, Role};
pub use embed::{
    CONFIG_FILE, Embedder, MAX_TOKENS as EMBED_MAX_TOKENS, TOKENIZER_FILE, WEIGHTS_FILE, cosine,
};
pub use error::{Error, Result};
pub use generate::{Structured, TextGenerator, Usage, Validate, structured, structured_with};
pub use llama::{LLAMA_CONTEXT_LENGTH, LlamaCpp, LlamaOptions};
pub use llm::{
    GenerateOptions, Generation, Llm, LlmInfo, LoadOptions, PREFILL_CHUNK, StopReason, chat_format,
};
pub use models::{LanguageModels, Loaded};
pub use native::{DEFAULT_MAX_DRAFT, MAX_DRAFT, NATIVE_CONTEXT_LENGTH, Native, NativeOptions};
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
