//! A GGUF chat model on companion's own engine ([`companion_engine`]), with the prompt's KV
//! cache kept between calls.
//!
//! [`Native::chat`] has the semantics of the other two backends: the prompt rendered with our
//! [`ChatTemplate`] and tokenized with our [`LlmTokenizer`] (rebuilt from the GGUF metadata as
//! they do), the arg-max of the logits at each step (first on ties), the same stop rules, the
//! text decoded by our tokenizer. Sessions (KV caches) come from the same pool as llama.cpp's
//! contexts (`pool.rs`): a call reuses the longest prefix its prompt shares with a session's
//! cached tokens and computes only the rest, and calls from several threads take turns on the
//! cores (`Cores`), each pass with `threads` threads.
//!
//! The engine's KV cache is f32 and grows with the sequence (Qwen2.5-0.5B: 24 KiB per token),
//! so the window costs no memory until it is used.

use std::path::Path;
use std::sync::OnceLock;
use std::time::Instant;

use candle_core::quantized::gguf_file;
use companion_engine::{Kernel, Model, Session};

use crate::chat::{ChatTemplate, Message};
use crate::error::{Error, Result};
use crate::llm::{
    ChatModel, GenerateOptions, Generation, LlmInfo, Prefilled, accepted_draft, argmax,
    decode_drafted, token_budget,
};
use crate::pool::{Cores, Pool, Slot};
use crate::threads::compute_threads;
use crate::tokenizer::LlmTokenizer;

/// Default context window, in tokens (capped at the model's own), as for llama.cpp.
pub const NATIVE_CONTEXT_LENGTH: usize = 8192;

/// A cached prefix shorter than this does not take over another prompt family's session while
/// the pool may still grow (every ChatML prompt shares its first few tokens).
const MIN_SHARED_PREFIX: usize = 32;

/// Draft tokens checked with each generated one by default: with the token itself, the four
/// tokens one pass over a weight tile multiplies.
pub const DEFAULT_MAX_DRAFT: usize = 3;

/// Most draft tokens a pass may check (a pass computes at most [`companion_engine::CHUNK`]
/// tokens).
pub const MAX_DRAFT: usize = 16;

/// How a model is loaded into the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NativeOptions {
    /// Compute threads per call; `None` takes the process-wide setting (see
    /// [`crate::compute_threads`]).
    pub threads: Option<usize>,
    /// Context window of each session, in tokens; capped at the model's trained length.
    pub context_length: usize,
    /// Sessions kept at most: calls running at once beyond this wait for one.
    pub max_sessions: usize,
    /// Reuse the KV entries of a shared prompt prefix across calls (default on).
    pub prefix_reuse: bool,
    /// Most draft tokens checked with each generated one (prompt lookup, see
    /// [`decode_drafted`]); 0 generates one token a pass.
    pub max_draft: usize,
}

impl Default for NativeOptions {
    fn default() -> Self {
        NativeOptions {
            threads: None,
            context_length: NATIVE_CONTEXT_LENGTH,
            max_sessions: 2,
            prefix_reuse: true,
            max_draft: DEFAULT_MAX_DRAFT,
        }
    }
}

/// The cores the engine's passes share in this process.
fn cores() -> &'static Cores {
    static CORES: OnceLock<Cores> = OnceLock::new();
    CORES.get_or_init(|| Cores::new(std::thread::available_parallelism().map_or(1, |n| n.get())))
}

/// A GGUF chat model on companion's engine, shareable between threads.
pub struct Native {
    pool: Pool<Session>,
    model: Model,
    tokenizer: LlmTokenizer,
    template: ChatTemplate,
    info: LlmInfo,
    threads: usize,
    max_draft: usize,
}

impl std::fmt::Debug for Native {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Native")
            .field("info", &self.info)
            .field("model", &self.model)
            .finish_non_exhaustive()
    }
}

impl Native {
    /// Loads a GGUF chat model with the default [`NativeOptions`] and `threads` compute threads
    /// (`None`: the process-wide setting).
    pub fn load(path: &Path, threads: Option<usize>) -> Result<Native> {
        Native::load_with(
            path,
            &NativeOptions {
                threads,
                ..NativeOptions::default()
            },
        )
    }

    /// [`Native::load`] with explicit options.
    pub fn load_with(path: &Path, options: &NativeOptions) -> Result<Native> {
        if options.max_draft > MAX_DRAFT {
            return Err(Error::InvalidInput(format!(
                "a draft of {} tokens: at most {MAX_DRAFT}",
                options.max_draft
            )));
        }
        let started = Instant::now();
        let threads = options
            .threads
            .filter(|&n| n > 0)
            .unwrap_or_else(compute_threads);
        let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let file_size = file.metadata().map_err(|e| Error::io(path, e))?.len();
        let content = gguf_file::Content::read(&mut file).map_err(|source| Error::Gguf {
            path: path.to_path_buf(),
            source,
        })?;
        let meta = ChatModel::from_gguf(&content, path)?;
        // The directory read once serves the tokenizer and the weights.
        let model = Model::read(file, content, path, Kernel::detect())?;
        let config = model.config();
        if config.vocab < meta.tokenizer.vocab_size() {
            return Err(Error::InvalidInput(format!(
                "{}: the embedding table has {} rows, the vocabulary {} tokens",
                path.display(),
                config.vocab,
                meta.tokenizer.vocab_size()
            )));
        }
        let context_length = options.context_length.min(config.context_length).max(2);
        let load_ms = started.elapsed().as_secs_f64() * 1000.0;
        let info = LlmInfo {
            architecture: meta.architecture,
            name: meta.name,
            context_length,
            block_count: meta.block_count,
            vocab_size: meta.tokenizer.vocab_size(),
            file_size,
            threads,
            requantized_tensors: 0,
            load_ms,
        };
        tracing::info!(
            path = %path.display(),
            architecture = %info.architecture,
            name = info.name.as_deref().unwrap_or(""),
            kernel = model.kernel().as_str(),
            weight_mb = model.weight_bytes() / 1_000_000,
            context = context_length,
            threads,
            load_ms = format!("{load_ms:.0}"),
            "loaded LLM (engine)"
        );
        Ok(Native {
            pool: Pool::new(
                options.max_sessions,
                options.prefix_reuse,
                MIN_SHARED_PREFIX,
            ),
            model,
            tokenizer: meta.tokenizer,
            template: meta.template,
            info,
            threads,
            max_draft: options.max_draft,
        })
    }

    /// Runs a tiny prompt and one step, so the first session exists before the first call.
    pub fn warm_up(&self) -> Result<()> {
        let ids = self.tokenizer.encode("Hello, world")?;
        self.generate(&ids, &GenerateOptions::max_new_tokens(2))?;
        Ok(())
    }

    /// Facts about the model (`context_length` is the window of each session).
    pub fn info(&self) -> &LlmInfo {
        &self.info
    }

    /// The engine's model (weights, kernel).
    pub fn model(&self) -> &Model {
        &self.model
    }

    pub fn tokenizer(&self) -> &LlmTokenizer {
        &self.tokenizer
    }

    pub fn template(&self) -> &ChatTemplate {
        &self.template
    }

    /// The prompt token ids [`Native::chat`] feeds the model.
    pub fn prompt_ids(&self, messages: &[Message]) -> Result<Vec<u32>> {
        self.tokenizer.encode_chat(&self.template, messages)
    }

    /// Answers a conversation greedily (deterministic).
    pub fn chat(&self, messages: &[Message], options: &GenerateOptions) -> Result<Generation> {
        let prompt = self.prompt_ids(messages)?;
        self.generate(&prompt, options)
    }

    /// Greedy generation from raw prompt token ids, until a stop token, the token budget or
    /// the end of the context window.
    pub fn generate(&self, prompt: &[u32], options: &GenerateOptions) -> Result<Generation> {
        let budget = token_budget(prompt, self.info.context_length, options)?;
        if budget == 0 {
            return Ok(Generation::nothing(prompt.len()));
        }
        let mut lease = self.pool.checkout(prompt, || Ok(Session::default()))?;
        let keep = lease.keep;
        let slot = lease.slot();
        slot.tokens.truncate(keep);
        slot.ctx.truncate(keep);
        let mut logits = Vec::new();
        let started = Instant::now();
        let first = self.feed(slot, &prompt[keep..], &mut logits)?;
        let prefilled = Prefilled {
            prompt,
            cached: keep,
            first,
            prompt_ms: started.elapsed().as_secs_f64() * 1000.0,
        };
        decode_drafted(
            &self.tokenizer,
            "engine",
            prefilled,
            budget,
            options,
            self.max_draft,
            |fed, _| self.check(slot, fed, &mut logits),
        )
    }

    /// Computes `fed` (a generated token and a draft after it) in one pass and returns the
    /// arg-max after each fed token while the draft agrees ([`accepted_draft`]); the KV
    /// entries of the rest of the draft are dropped.
    fn check(
        &self,
        slot: &mut Slot<Session>,
        fed: &[u32],
        logits: &mut Vec<f32>,
    ) -> Result<Vec<u32>> {
        self.compute(slot, fed, fed.len(), logits)?;
        let vocab = self.model.config().vocab;
        let choices = logits
            .chunks_exact(vocab)
            .map(|row| self.choose(row))
            .collect::<Result<Vec<u32>>>()?;
        let kept = accepted_draft(fed, &choices);
        let len = slot.tokens.len() - (fed.len() - 1 - kept);
        slot.tokens.truncate(len);
        slot.ctx.truncate(len);
        Ok(choices[..=kept].to_vec())
    }

    /// Computes `tokens` after the session's cached ones and returns the arg-max of the last
    /// one's logits. The slot's token list grows only when the pass succeeded; a failed pass
    /// leaves the session cut back to the tokens it lists.
    fn feed(&self, slot: &mut Slot<Session>, tokens: &[u32], logits: &mut Vec<f32>) -> Result<u32> {
        self.compute(slot, tokens, 1, logits)?;
        self.choose(logits)
    }

    /// Greedy decoding's choice from one row of logits (the model's rows may be padded past
    /// the tokenizer's vocabulary).
    fn choose(&self, row: &[f32]) -> Result<u32> {
        argmax(&row[..self.info.vocab_size])
            .ok_or_else(|| Error::InvalidInput("the model produced no usable logits".into()))
    }

    /// Computes `tokens` after the slot's, with the logits of the last `last` of them.
    fn compute(
        &self,
        slot: &mut Slot<Session>,
        tokens: &[u32],
        last: usize,
        logits: &mut Vec<f32>,
    ) -> Result<()> {
        let cores = cores().take(self.threads);
        let result = self
            .model
            .forward_last(&mut slot.ctx, tokens, last, self.threads, logits);
        drop(cores);
        if let Err(e) = result {
            slot.ctx.truncate(slot.tokens.len());
            return Err(e.into());
        }
        slot.tokens.extend_from_slice(tokens);
        Ok(())
    }
}
