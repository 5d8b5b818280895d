//! A GGUF chat model on llama.cpp (through `llama-cpp-2`), with the prompt's KV cache kept
//! between calls.
//!
//! # Same semantics as the candle runtime
//!
//! [`LlamaCpp::chat`] is [`crate::Llm::chat`] on another engine: the prompt is rendered with
//! our [`ChatTemplate`] and tokenized with our [`LlmTokenizer`], both rebuilt from the GGUF
//! metadata exactly as the candle backend does, so both engines see the same token ids; the
//! next token is the arg-max of the logits (first on ties); generation stops on the tokenizer's
//! stop tokens (`<|im_end|>`, EOS), the token budget or the end of the context window; and the
//! text is decoded by our tokenizer. llama.cpp only computes logits.
//!
//! # Contexts and the prompt cache
//!
//! The model's weights are loaded once; each call gets a llama.cpp context of its own from a
//! small pool (`pool.rs`), so two threads never touch one context. A context
//! remembers the tokens in its KV cache; a call keeps the longest prefix its prompt shares
//! with them (the fixed system prompt of a voicemail feature), removes the KV entries after it
//! and computes only the rest. [`Generation::cached_prompt_tokens`] says how many were reused.
//!
//! Calls from several threads proceed side by side, but their computations take turns on the
//! CPU cores: ggml's threads spin while they wait for each other, and two computations with
//! more threads than cores between them run many times slower than one after the other. Each
//! `llama_decode` takes as many of the process's cores as the call has threads (`Cores` in
//! `pool.rs`), so on 2 cores with 2 threads two calls interleave their steps.
//!
//! A context allocates its whole KV cache up front (f16: 2 × layers × KV width × 2 bytes per
//! token; Qwen2.5-0.5B: 12 KiB per token, 96 MiB for 8192 tokens; 1.5B: 28 KiB, 224 MiB), so
//! the window is [`LlamaOptions::context_length`] (default 8192) rather than the model's
//! trained length, and at most [`LlamaOptions::max_contexts`] exist; a call finding all busy
//! waits for one.
//!
//! # One ggml in the process
//!
//! whisper-rs-sys and llama-cpp-sys-2 each build ggml and link it statically, so the program
//! holds two copies of every ggml symbol in two archives. The linker (rust-lld) takes each
//! symbol from the first archive that defines it, so one copy serves both engines: in the
//! workspace's binaries, checked with a link map, every ggml object comes from whisper-rs-sys
//! and llama-cpp-sys-2 contributes only llama.cpp's own objects (a linker that scans archives
//! in one pass, like GNU ld, could mix objects of the two copies). That is only sound because
//! the workspace pins a llama-cpp-2 whose bundled ggml is the same version and source as
//! whisper.cpp's (0.9.5; only `gguf.cpp`'s file writer differs, which neither engine uses for
//! inference), and both are built with OpenMP off and for the same CPU (both native without
//! `RUSTFLAGS`; with `-C target-cpu=X` llama-cpp-sys-2 compiles for X while whisper-rs-sys
//! follows the `GGML_*` variables, which the Dockerfile sets to match). The build settings of
//! the linked copy apply to llama.cpp too: whisper-rs-sys's, plus the llamafile matrix kernels
//! (`GGML_LLAMAFILE`, on in a standalone llama.cpp build) that `.cargo/config.toml` and the
//! Dockerfile turn on. `tests/ggml.rs` runs both engines in one process, in either order.
//! Upgrading either crate means comparing their ggml again.

use std::ffi::{CStr, c_char, c_void};
use std::num::NonZeroU32;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use candle_core::quantized::gguf_file;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::token::LlamaToken;

use crate::chat::{ChatTemplate, Message};
use crate::error::{Error, Result};
use crate::llm::{
    ChatModel, GenerateOptions, Generation, LlmInfo, Prefilled, argmax, decode_greedy, token_budget,
};
use crate::pool::{Cores, Pool, Slot};
use crate::threads::configure_threads;
use crate::tokenizer::LlmTokenizer;

/// Default context window of a llama.cpp context, in tokens (capped at the model's own).
pub const LLAMA_CONTEXT_LENGTH: usize = 8192;

/// Largest piece of a prompt computed in one `llama_decode` call (llama.cpp's default batch).
const BATCH: usize = 512;

/// A cached prefix shorter than this is not worth taking over another prompt family's context
/// while the pool may still grow: every ChatML prompt shares its first few tokens.
const MIN_SHARED_PREFIX: usize = 32;

/// How a model is loaded into llama.cpp.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LlamaOptions {
    /// Compute threads per call; `None` takes the process-wide setting the candle backend
    /// uses too (see [`crate::configure_threads`]: `CANDLE_NUM_THREADS`, else the physical
    /// cores).
    pub threads: Option<usize>,
    /// Context window of each context, in tokens (prompt and answer); capped at the length
    /// the model was trained for.
    pub context_length: usize,
    /// Contexts kept at most: calls running at once beyond this wait for one.
    pub max_contexts: usize,
    /// Reuse the KV entries of a shared prompt prefix across calls (default on); off, every
    /// call computes its whole prompt.
    pub prefix_reuse: bool,
}

impl Default for LlamaOptions {
    fn default() -> Self {
        LlamaOptions {
            threads: None,
            context_length: LLAMA_CONTEXT_LENGTH,
            max_contexts: 2,
            prefix_reuse: true,
        }
    }
}

thread_local! {
    /// The last error llama.cpp logged on this thread (it reports load failures only there).
    static LAST_ERROR: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// llama.cpp's and ggml's log lines, into `tracing` (llama.cpp's info lines are debug here:
/// a model load writes hundreds of them).
unsafe extern "C" fn log_to_tracing(
    level: llama_cpp_sys_2::ggml_log_level,
    text: *const c_char,
    _: *mut c_void,
) {
    if text.is_null() || level == llama_cpp_sys_2::GGML_LOG_LEVEL_CONT {
        return;
    }
    // SAFETY: llama.cpp passes a NUL-terminated string valid for the duration of the call.
    let text = unsafe { CStr::from_ptr(text) }.to_string_lossy();
    let text = text.trim();
    if text.is_empty() {
        return;
    }
    match level {
        llama_cpp_sys_2::GGML_LOG_LEVEL_ERROR => {
            tracing::error!(target: "llama_cpp", "{text}");
            LAST_ERROR.with(|e| *e.borrow_mut() = Some(text.to_string()));
        }
        llama_cpp_sys_2::GGML_LOG_LEVEL_WARN => tracing::warn!(target: "llama_cpp", "{text}"),
        _ => tracing::debug!(target: "llama_cpp", "{text}"),
    }
}

/// llama.cpp's process-wide initialisation, done once.
fn backend() -> Result<&'static LlamaBackend> {
    static BACKEND: OnceLock<std::result::Result<LlamaBackend, String>> = OnceLock::new();
    BACKEND
        .get_or_init(|| {
            // SAFETY: the callback is a plain function valid for the whole program and
            // ignores its user data. (It also replaces ggml's log callback, which whisper-rs
            // sets to its own when ggml is shared: both send ggml's lines to `tracing`.)
            unsafe { llama_cpp_sys_2::llama_log_set(Some(log_to_tracing), std::ptr::null_mut()) };
            LlamaBackend::init().map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| Error::Llama(format!("cannot initialise llama.cpp: {e}")))
}

/// The cores llama.cpp computations share in this process (see [`Cores`]).
fn cores() -> &'static Cores {
    static CORES: OnceLock<Cores> = OnceLock::new();
    CORES.get_or_init(|| Cores::new(std::thread::available_parallelism().map_or(1, |n| n.get())))
}

fn llama_error(what: &str, err: impl std::fmt::Display) -> Error {
    Error::Llama(format!("{what}: {err}"))
}

/// A llama.cpp context that may move between threads.
struct Context(LlamaContext<'static>);

// SAFETY: a llama_context may be used from any thread as long as one thread uses it at a time.
// A `Context` is only reachable through the pool's lock or by the one call holding its lease.
unsafe impl Send for Context {}

/// A GGUF chat model served by llama.cpp, shareable between threads (`LlamaCpp: Send + Sync`;
/// wrap it in an `Arc`).
pub struct LlamaCpp {
    // Declared before `model`: the contexts borrow the model and are dropped first.
    pool: Pool<Context>,
    model: Arc<LlamaModel>,
    tokenizer: LlmTokenizer,
    template: ChatTemplate,
    info: LlmInfo,
    threads: usize,
}

impl std::fmt::Debug for LlamaCpp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlamaCpp")
            .field("info", &self.info)
            .field("tokenizer", &self.tokenizer)
            .field("template", &self.template)
            .finish_non_exhaustive()
    }
}

impl LlamaCpp {
    /// Loads a GGUF chat model with the default [`LlamaOptions`] and `threads` compute threads
    /// (`None`: the process-wide setting).
    pub fn load(path: &Path, threads: Option<usize>) -> Result<LlamaCpp> {
        LlamaCpp::load_with(
            path,
            &LlamaOptions {
                threads,
                ..LlamaOptions::default()
            },
        )
    }

    /// [`LlamaCpp::load`] with explicit options.
    pub fn load_with(path: &Path, options: &LlamaOptions) -> Result<LlamaCpp> {
        let started = Instant::now();
        let threads = configure_threads(options.threads);
        // The metadata first, with the same reader as the candle backend: a missing or
        // non-GGUF file, or a model without a ChatML template, fails here with a precise error.
        let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let file_size = file.metadata().map_err(|e| Error::io(path, e))?.len();
        let content = gguf_file::Content::read(&mut file).map_err(|source| Error::Gguf {
            path: path.to_path_buf(),
            source,
        })?;
        drop(file);
        let meta = ChatModel::from_gguf(&content, path)?;
        drop(content);

        let backend = backend()?;
        let load_err = |reason: String| Error::LlamaLoad {
            path: path.to_path_buf(),
            reason,
        };
        let path_str = path
            .to_str()
            .ok_or_else(|| load_err("the path is not valid UTF-8".into()))?;
        LAST_ERROR.with(|e| e.borrow_mut().take());
        let model = LlamaModel::load_from_file(backend, path_str, &LlamaModelParams::default())
            .map_err(|e| {
                let logged = LAST_ERROR.with(|e| e.borrow_mut().take());
                load_err(logged.unwrap_or_else(|| e.to_string()))
            })?;
        let trained = usize::try_from(model.n_ctx_train()).unwrap_or(usize::MAX);
        let context_length = options.context_length.min(trained).max(2);
        let vocab = usize::try_from(model.n_vocab()).unwrap_or(0);
        if vocab < meta.tokenizer.vocab_size() {
            return Err(load_err(format!(
                "llama.cpp sees {vocab} tokens, the GGUF vocabulary has {}",
                meta.tokenizer.vocab_size()
            )));
        }

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
            context = context_length,
            threads,
            load_ms = format!("{load_ms:.0}"),
            "loaded LLM (llama.cpp)"
        );
        Ok(LlamaCpp {
            pool: Pool::new(
                options.max_contexts,
                options.prefix_reuse,
                MIN_SHARED_PREFIX,
            ),
            model: Arc::new(model),
            tokenizer: meta.tokenizer,
            template: meta.template,
            info,
            threads,
        })
    }

    fn new_context(&self) -> Result<Context> {
        let threads = i32::try_from(self.threads).unwrap_or(i32::MAX);
        let n_ctx = u32::try_from(self.info.context_length).unwrap_or(u32::MAX);
        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(n_ctx))
            .with_n_batch(BATCH as u32)
            .with_n_ubatch(BATCH as u32)
            .with_n_threads(threads)
            .with_n_threads_batch(threads);
        // SAFETY: the model lives in an `Arc` this struct never hands out, so it stays at one
        // address until `self` is dropped, and `pool` (every context) is dropped before
        // `model`; no context outlives the model its `'static` borrow points to.
        let model: &'static LlamaModel = unsafe { &*Arc::as_ptr(&self.model) };
        let started = Instant::now();
        let ctx = model
            .new_context(backend()?, params)
            .map_err(|e| llama_error("cannot create a context", e))?;
        tracing::debug!(
            n_ctx,
            ms = started.elapsed().as_millis() as u64,
            "new llama.cpp context"
        );
        Ok(Context(ctx))
    }

    /// Runs a tiny prompt and one generation step, so the first context exists and the
    /// runtime's one-time work is done before the first real call.
    pub fn warm_up(&self) -> Result<()> {
        let started = Instant::now();
        let ids = self.tokenizer.encode("Hello, world")?;
        self.generate(&ids, &GenerateOptions::max_new_tokens(2))?;
        tracing::debug!(ms = started.elapsed().as_millis() as u64, "warmed up");
        Ok(())
    }

    /// Facts about the model (`context_length` is the window of each context).
    pub fn info(&self) -> &LlmInfo {
        &self.info
    }

    /// The tokenizer rebuilt from the GGUF metadata.
    pub fn tokenizer(&self) -> &LlmTokenizer {
        &self.tokenizer
    }

    /// The chat template.
    pub fn template(&self) -> &ChatTemplate {
        &self.template
    }

    /// The prompt token ids [`LlamaCpp::chat`] feeds the model.
    pub fn prompt_ids(&self, messages: &[Message]) -> Result<Vec<u32>> {
        self.tokenizer.encode_chat(&self.template, messages)
    }

    /// Answers a conversation: applies the chat template and generates the assistant's reply
    /// greedily (deterministic).
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

        let mut lease = self.pool.checkout(prompt, || self.new_context())?;
        let keep = lease.keep;
        let slot = lease.slot();
        let started = Instant::now();
        let keep = forget_after(slot, keep);
        let mut batch = LlamaBatch::new(BATCH, 1);
        let first = self.feed(slot, &mut batch, &prompt[keep..])?;
        let prefilled = Prefilled {
            prompt,
            cached: keep,
            first,
            prompt_ms: started.elapsed().as_secs_f64() * 1000.0,
        };
        decode_greedy(
            &self.tokenizer,
            "llama.cpp",
            prefilled,
            budget,
            options,
            |token, _| self.feed(slot, &mut batch, &[token]),
        )
    }

    /// Computes `tokens` after those already in the slot's KV cache, in batches, and returns
    /// the arg-max of the last one's logits. The slot's token list grows only by batches whose
    /// KV entries were written.
    fn feed(
        &self,
        slot: &mut Slot<Context>,
        batch: &mut LlamaBatch,
        tokens: &[u32],
    ) -> Result<u32> {
        let mut last = None;
        for chunk in tokens.chunks(BATCH) {
            batch.clear();
            let start = slot.tokens.len();
            for (i, &id) in chunk.iter().enumerate() {
                let token = i32::try_from(id)
                    .map_err(|_| Error::Llama(format!("token id {id} out of range")))?;
                let pos = i32::try_from(start + i)
                    .map_err(|_| Error::Llama("position out of range".into()))?;
                batch
                    .add(LlamaToken::new(token), pos, &[0], i + 1 == chunk.len())
                    .map_err(|e| llama_error("batch", e))?;
            }
            let cores = cores().take(self.threads);
            slot.ctx
                .0
                .decode(batch)
                .map_err(|e| llama_error("decode", e))?;
            drop(cores);
            slot.tokens.extend_from_slice(chunk);
            last = Some(chunk.len() - 1);
        }
        let last = last.ok_or_else(|| Error::Llama("nothing to compute".into()))?;
        let logits = slot.ctx.0.get_logits_ith(last as i32);
        argmax(logits).ok_or_else(|| Error::Llama("the model produced no usable logits".into()))
    }
}

/// Keeps the first `keep` cached tokens of a slot and removes every KV entry after them;
/// returns how many were kept (0 when llama.cpp cannot cut the cache there).
fn forget_after(slot: &mut Slot<Context>, keep: usize) -> usize {
    slot.tokens.truncate(keep);
    let cut = u32::try_from(keep)
        .ok()
        .filter(|&k| k > 0)
        .and_then(|k| slot.ctx.0.clear_kv_cache_seq(Some(0), Some(k), None).ok())
        .unwrap_or(false);
    if cut {
        keep
    } else {
        slot.tokens.clear();
        slot.ctx.0.clear_kv_cache();
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama_cpp_is_shareable() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<LlamaCpp>();
    }

    #[test]
    fn a_missing_file_is_an_io_error() {
        let err = LlamaCpp::load(Path::new("/nonexistent/model.gguf"), None).unwrap_err();
        assert!(matches!(err, Error::Io { .. }), "{err}");
    }

    #[test]
    fn a_file_that_is_not_gguf_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("not.gguf");
        std::fs::write(&path, b"this is not a GGUF file at all").unwrap();
        let err = LlamaCpp::load(&path, None).unwrap_err();
        assert!(matches!(err, Error::Gguf { .. }), "{err}");
    }
}
