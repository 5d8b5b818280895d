//! A quantized GGUF chat model on the CPU.
//!
//! # Sharing and the KV cache
//!
//! candle's quantized models keep their KV cache inside the model struct and
//! take the position of the first input token (`index_pos`); a forward pass at
//! `index_pos == 0` replaces the cache. [`Llm`] holds the weights once and
//! puts the model behind a [`Mutex`]: a call to [`Llm::chat`] locks it, always
//! starts its sequence at position 0 (and clears the cache first anyway),
//! and clears the cache again when it ends, also on error or panic, so no
//! state leaks into the next call and no cache memory stays allocated between
//! calls. Calls from several jobs are served one after the other.
//!
//! Why a lock rather than one model copy per job: candle's quantized Qwen2
//! model cannot be cloned, so a copy means loading the file again (measured
//! on 2 cores: 3 s and +1.1 GB for Qwen2.5-0.5B, 6-7 s and +1.9 GB for
//! 1.5B, longer than a typical short generation), and candle's CPU kernels
//! run on one process-wide worker pool that serialises every operation, so
//! two generations from two threads take as long as running them one after
//! the other (measured: 6.5 s vs 6.3 s for two 0.5B summaries).
//!
//! # Prompt processing
//!
//! The prompt is fed in pieces of [`PREFILL_CHUNK`] tokens at multiples of
//! [`PREFILL_CHUNK`], the rest in one last piece. candle's models cache one
//! causal mask per `(piece length, end position)` for their whole lifetime;
//! fed whole, every distinct prompt length a long-running service sees would
//! add an L×L mask (up to 2.9 GB after all lengths up to 2048 tokens). With
//! 256-token pieces the cache stays under 6 MB for prompts up to 256 tokens
//! and about 270 MB for every length up to 2048, at no measurable cost for
//! prompts up to 256 tokens (smaller pieces cost 25-50 % of prompt speed
//! with the 1.5B model).

use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use candle_core::quantized::{GgmlDType, QTensor, gguf_file};
use candle_core::{DType, Device, Tensor};
use candle_transformers::models::{quantized_llama, quantized_qwen2};

use crate::chat::{ChatTemplate, IM_END, IM_START, Message};
use crate::error::{Error, Result};
use crate::generate::extract_json;
use crate::threads::configure_threads;
use crate::tokenizer::{GgufVocab, LlmTokenizer};

/// Largest piece of the prompt fed in one forward pass.
pub const PREFILL_CHUNK: usize = 256;

/// How a model is loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadOptions {
    /// Process-wide compute threads to request (see
    /// [`crate::configure_threads`]); `None` keeps candle's default.
    pub threads: Option<usize>,
    /// Convert weight matrices stored as Q4_1, Q5_0 or Q5_1 to Q8_0 while
    /// loading (default: on). candle has no SIMD kernels for those types and
    /// runs them several times slower than Q8_0; the conversion is nearly
    /// lossless (Q8_0 represents the dequantized values with about an eighth
    /// of their original quantization error) and costs memory (8.5 instead
    /// of 5.5 or 5 bits per weight) and load time.
    pub requantize: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            threads: None,
            requantize: true,
        }
    }
}

/// Generation settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenerateOptions {
    /// Upper bound on the number of generated tokens (the stop token
    /// included); also bounded by the context window.
    pub max_new_tokens: usize,
    /// Stop as soon as the text holds a whole JSON object or array (the one
    /// [`extract_json`](crate::generate::extract_json) takes): a structured answer is read no
    /// further, so what a model writes after it (an explanation, a second answer, the
    /// end-of-turn token) is not worth generating.
    pub until_json: bool,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions::max_new_tokens(256)
    }
}

impl GenerateOptions {
    /// Options with the given token budget.
    pub fn max_new_tokens(max_new_tokens: usize) -> Self {
        GenerateOptions {
            max_new_tokens,
            until_json: false,
        }
    }

    /// These options, stopping once a whole JSON value is written.
    pub fn until_json(self) -> Self {
        GenerateOptions {
            until_json: true,
            ..self
        }
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The model produced an end-of-turn / end-of-sequence token.
    EndOfTurn,
    /// `max_new_tokens` were generated.
    MaxTokens,
    /// The context window is full.
    ContextFull,
    /// The text holds a whole JSON value ([`GenerateOptions::until_json`]).
    JsonComplete,
    /// The model was writing the same tokens over and over: one block of them three times in a
    /// row, over 48 tokens at least. The text keeps one copy of the block.
    Repetition,
}

/// The result of one generation.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// The generated text, without the stop token.
    pub text: String,
    /// Tokens in the prompt (chat template included).
    pub prompt_tokens: usize,
    /// Tokens at the start of the prompt whose KV entries an earlier call left in the cache
    /// and this one reused instead of computing (llama.cpp backend; always 0 with candle).
    /// `prompt_tokens - cached_prompt_tokens` were computed.
    pub cached_prompt_tokens: usize,
    /// Tokens sampled, the stop token included.
    pub generated_tokens: usize,
    /// Wall time of processing the prompt (the tokens not reused from the
    /// cache), which also yields the first generated token.
    pub prompt_ms: f64,
    /// Wall time of the `generated_tokens - 1` steps after it.
    pub generate_ms: f64,
    /// Why generation ended.
    pub stop: StopReason,
    /// Draft tokens checked along with generated ones (the engine's prompt lookup; 0 with
    /// the other backends).
    pub draft_tokens: usize,
    /// Of those, the ones greedy decoding chose: tokens that took no pass of their own.
    pub accepted_draft_tokens: usize,
}

impl Generation {
    /// The empty answer to a prompt of `prompt_tokens` tokens when no token may be generated.
    pub(crate) fn nothing(prompt_tokens: usize) -> Generation {
        Generation {
            text: String::new(),
            prompt_tokens,
            cached_prompt_tokens: 0,
            generated_tokens: 0,
            prompt_ms: 0.0,
            generate_ms: 0.0,
            stop: StopReason::MaxTokens,
            draft_tokens: 0,
            accepted_draft_tokens: 0,
        }
    }

    /// Prompt tokens computed (not reused from the KV cache).
    pub fn computed_prompt_tokens(&self) -> usize {
        self.prompt_tokens.saturating_sub(self.cached_prompt_tokens)
    }

    /// Prompt processing speed, over the tokens computed.
    pub fn prompt_tokens_per_sec(&self) -> f64 {
        per_sec(self.computed_prompt_tokens(), self.prompt_ms)
    }

    /// Decoding speed: tokens after the first, per second (with drafts, several may come from
    /// one pass).
    pub fn generate_tokens_per_sec(&self) -> f64 {
        per_sec(self.generated_tokens.saturating_sub(1), self.generate_ms)
    }
}

fn per_sec(tokens: usize, ms: f64) -> f64 {
    if ms > 0.0 {
        tokens as f64 * 1000.0 / ms
    } else {
        0.0
    }
}

/// Facts about a loaded model.
#[derive(Debug, Clone, PartialEq)]
pub struct LlmInfo {
    /// `general.architecture` (`qwen2`, `llama`).
    pub architecture: String,
    /// `general.name`, when present.
    pub name: Option<String>,
    /// Usable context window in tokens.
    pub context_length: usize,
    /// Number of transformer blocks.
    pub block_count: usize,
    /// Tokens in the vocabulary.
    pub vocab_size: usize,
    /// Size of the GGUF file.
    pub file_size: u64,
    /// Compute threads in effect.
    pub threads: usize,
    /// Weight matrices converted to Q8_0 at load (see
    /// [`LoadOptions::requantize`]).
    pub requantized_tensors: usize,
    /// Wall time of [`Llm::load`].
    pub load_ms: f64,
}

enum Weights {
    Qwen2(quantized_qwen2::ModelWeights),
    Llama(quantized_llama::ModelWeights),
}

impl Weights {
    fn forward(&mut self, input: &Tensor, index_pos: usize) -> candle_core::Result<Tensor> {
        match self {
            Weights::Qwen2(m) => m.forward(input, index_pos),
            Weights::Llama(m) => m.forward(input, index_pos),
        }
    }

    fn clear_kv_cache(&mut self) {
        match self {
            Weights::Qwen2(m) => m.clear_kv_cache(),
            Weights::Llama(m) => m.clear_kv_cache(),
        }
    }
}

/// Exclusive use of the model for one sequence; clears the KV cache when
/// it starts and when it ends (normally, by error or by panic).
struct Session<'a> {
    weights: MutexGuard<'a, Weights>,
    device: &'a Device,
}

impl<'a> Session<'a> {
    fn start(lock: &'a Mutex<Weights>, device: &'a Device) -> Self {
        // A panic during an earlier call poisons the lock; the state it
        // protected is reset here, so the poison carries no meaning.
        let mut weights = lock.lock().unwrap_or_else(|p| p.into_inner());
        weights.clear_kv_cache();
        Session { weights, device }
    }

    /// Runs `ids` at positions `index_pos..` and returns the logits of the
    /// last one.
    fn forward(&mut self, ids: &[u32], index_pos: usize) -> Result<Vec<f32>> {
        let input = Tensor::new(ids, self.device)?.unsqueeze(0)?;
        let logits = self.weights.forward(&input, index_pos)?;
        Ok(logits.squeeze(0)?.to_dtype(DType::F32)?.to_vec1::<f32>()?)
    }
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        self.weights.clear_kv_cache();
    }
}

/// The position and length of each prompt piece: [`PREFILL_CHUNK`]-token
/// pieces at multiples of [`PREFILL_CHUNK`], then the rest in one piece.
fn prefill_pieces(len: usize) -> Vec<(usize, usize)> {
    (0..len)
        .step_by(PREFILL_CHUNK)
        .map(|pos| (pos, PREFILL_CHUNK.min(len - pos)))
        .collect()
}

/// How many tokens a call may generate after `prompt` in a window of `context` tokens: the
/// budget, cut to what is left of the window. An empty prompt, or one that fills the window,
/// is an error.
pub(crate) fn token_budget(
    prompt: &[u32],
    context: usize,
    options: &GenerateOptions,
) -> Result<usize> {
    if prompt.is_empty() || prompt.len() >= context {
        return Err(Error::PromptTooLong {
            prompt_tokens: prompt.len(),
            context,
        });
    }
    Ok(options.max_new_tokens.min(context - prompt.len()))
}

/// A call's prompt after the backend computed it: how many of its tokens came from the KV
/// cache, how long computing the rest took, and the token its logits chose.
pub(crate) struct Prefilled<'a> {
    pub prompt: &'a [u32],
    pub cached: usize,
    pub prompt_ms: f64,
    pub first: u32,
}

/// The single-token steps after the prompt, the same for every backend: `step(token, n)`
/// computes `token`, the `n`-th generated one, and returns the arg-max of its logits.
/// Generation stops on a stop token, after `options.max_new_tokens`, at `budget` (the end of
/// the context window), once the model loops ([`repeated_tail`]) or, with
/// `options.until_json`, once the text holds a whole JSON value; the text is decoded without
/// the stop token.
pub(crate) fn decode_greedy(
    tokenizer: &LlmTokenizer,
    runtime: &str,
    prefilled: Prefilled,
    budget: usize,
    options: &GenerateOptions,
    mut step: impl FnMut(u32, usize) -> Result<u32>,
) -> Result<Generation> {
    decode_drafted(
        tokenizer,
        runtime,
        prefilled,
        budget,
        options,
        0,
        |fed, n| Ok(vec![step(fed[0], n)?]),
    )
}

/// [`decode_greedy`] for a backend that checks a draft in one pass: before each step, up to
/// `max_draft` tokens that followed the latest tokens where they last occurred in the prompt
/// or the answer ([`lookup_draft`]) go along with the token to compute. `step(fed, n)` computes
/// `fed` (the `n`-th generated token, then the draft) and returns the arg-max after each fed
/// token as long as the draft agrees with it: the tokens greedy decoding would have written,
/// the same answer one step at a time would give (`accepted_draft` tells how many of a draft
/// to keep; the backend forgets the KV entries of the rest). Answers copy names, numbers and
/// phrases from the prompt, and their tokens then come several to a pass.
pub(crate) fn decode_drafted(
    tokenizer: &LlmTokenizer,
    runtime: &str,
    prefilled: Prefilled,
    budget: usize,
    options: &GenerateOptions,
    max_draft: usize,
    mut step: impl FnMut(&[u32], usize) -> Result<Vec<u32>>,
) -> Result<Generation> {
    let started = Instant::now();
    let mut generated: Vec<u32> = Vec::with_capacity(budget);
    // Tokens chosen but not yet written out, in order; only the last is not computed yet.
    let mut chosen: std::collections::VecDeque<u32> = [prefilled.first].into();
    let mut fed = Vec::with_capacity(max_draft + 1);
    let (mut drafted, mut accepted) = (0, 0);
    let mut repeats = 0;
    let stop = loop {
        let next = chosen.pop_front().expect("a chosen token");
        generated.push(next);
        if tokenizer.is_stop(next) {
            break StopReason::EndOfTurn;
        }
        // Only a token that closes a bracket can complete a value.
        if options.until_json
            && tokenizer.decode(&[next], true)?.contains(['}', ']'])
            && extract_json(&tokenizer.decode(&generated, true)?).is_some()
        {
            break StopReason::JsonComplete;
        }
        if let Some(extra) = repeated_tail(&generated) {
            tracing::debug!(
                runtime,
                repeated = extra,
                "generation stopped: the model loops"
            );
            repeats = extra;
            break StopReason::Repetition;
        }
        if generated.len() >= budget {
            break if generated.len() == options.max_new_tokens {
                StopReason::MaxTokens
            } else {
                StopReason::ContextFull
            };
        }
        if !chosen.is_empty() {
            continue;
        }
        fed.clear();
        fed.push(next);
        let room = max_draft.min(budget - generated.len());
        if room > 0 {
            fed.extend_from_slice(lookup_draft(prefilled.prompt, &generated, room));
        }
        let found = step(&fed, generated.len())?;
        if found.is_empty() || found.len() > fed.len() {
            return Err(Error::InvalidInput(format!(
                "a step over {} tokens returned {} choices",
                fed.len(),
                found.len()
            )));
        }
        drafted += fed.len() - 1;
        accepted += found.len() - 1;
        chosen.extend(found);
    };
    let generate_ms = started.elapsed().as_secs_f64() * 1000.0;

    let content: &[u32] = match generated.last() {
        Some(&last) if tokenizer.is_stop(last) => &generated[..generated.len() - 1],
        _ => &generated[..generated.len() - repeats],
    };
    let generation = Generation {
        text: tokenizer.decode(content, true)?,
        prompt_tokens: prefilled.prompt.len(),
        cached_prompt_tokens: prefilled.cached,
        generated_tokens: generated.len(),
        prompt_ms: prefilled.prompt_ms,
        generate_ms,
        stop,
        draft_tokens: drafted,
        accepted_draft_tokens: accepted,
    };
    tracing::debug!(
        runtime,
        prompt_tokens = generation.prompt_tokens,
        cached_prompt_tokens = generation.cached_prompt_tokens,
        generated_tokens = generation.generated_tokens,
        draft_tokens = drafted,
        accepted_draft_tokens = accepted,
        prompt_tps = format!("{:.1}", generation.prompt_tokens_per_sec()),
        generate_tps = format!("{:.1}", generation.generate_tokens_per_sec()),
        stop = ?generation.stop,
        "generated"
    );
    Ok(generation)
}

/// Fewest latest tokens [`lookup_draft`] looks for. Two-token matches drafted three times as
/// often on the synthesized voicemails' task lists but a third of those drafts held, and the
/// passes that checked the rest cost more than they saved (docs/BENCHMARKS.md).
const DRAFT_MIN_MATCH: usize = 3;

/// Most latest tokens [`lookup_draft`] looks for.
const DRAFT_MAX_MATCH: usize = 4;

/// A draft of at most `max` tokens: what followed the latest occurrence of the answer's last
/// tokens (the longest run of 4 down to 3 found) in the answer before them and in the prompt.
/// Empty when nothing matches.
pub(crate) fn lookup_draft<'a>(prompt: &'a [u32], answer: &'a [u32], max: usize) -> &'a [u32] {
    // The latest occurrence in `text` that ends before `end`, and what follows it there.
    let follows = |text: &'a [u32], key: &[u32], end: usize| {
        (0..(end + 1).saturating_sub(key.len()))
            .rev()
            .find(|&at| text[at..].starts_with(key))
            .map(|at| &text[at + key.len()..])
            .filter(|follow| !follow.is_empty())
    };
    for len in (DRAFT_MIN_MATCH..=DRAFT_MAX_MATCH).rev() {
        let Some(at) = answer.len().checked_sub(len) else {
            continue;
        };
        let key = &answer[at..];
        // The answer first (latest), then the prompt.
        if let Some(follow) =
            follows(answer, key, answer.len() - 1).or_else(|| follows(prompt, key, prompt.len()))
        {
            return &follow[..follow.len().min(max)];
        }
    }
    &[]
}

/// How many tokens of a draft to keep: `fed` is the computed token and then the draft,
/// `choices[i]` the arg-max after `fed[i]`; the draft holds while each of its tokens is the
/// choice after the one before it.
pub(crate) fn accepted_draft(fed: &[u32], choices: &[u32]) -> usize {
    fed[1..]
        .iter()
        .zip(choices)
        .take_while(|(drafted, chosen)| drafted == chosen)
        .count()
}

/// Shortest run of repeated tokens [`repeated_tail`] stops on.
const LOOP_MIN_TOKENS: usize = 48;

/// Fewest copies of a repeated block [`repeated_tail`] stops on.
const LOOP_MIN_COPIES: usize = 3;

/// Longest repeated block [`repeated_tail`] looks for.
const LOOP_MAX_PERIOD: usize = 128;

/// Whether `tokens` end in a loop: one block of tokens written at least three times in a row,
/// over at least 48 tokens (a 20-token list item three times, a 2-token word 24 times). Greedy
/// decoding that starts repeating itself goes on until the budget runs out, and small models
/// do: a task list that turns into the same seven words over and over, 250 tokens of them.
/// Returns how many tokens to drop so that one copy of the block stays.
pub(crate) fn repeated_tail(tokens: &[u32]) -> Option<usize> {
    (1..=LOOP_MAX_PERIOD).find_map(|period| {
        let copies = LOOP_MIN_COPIES.max(LOOP_MIN_TOKENS.div_ceil(period));
        let run = copies * period;
        let tail = tokens.get(tokens.len().checked_sub(run)?..)?;
        // Period `period`: each token equals the one a block later.
        (tail[..run - period] == tail[period..]).then_some(run - period)
    })
}

/// Index of the largest logit (the first one on ties; NaN never wins).
pub(crate) fn argmax(logits: &[f32]) -> Option<u32> {
    // Two passes the compiler vectorizes, instead of one with a branch per logit (a vocabulary
    // holds 150 000): the largest value (NaN never compares greater), then where it first is.
    const LANES: usize = 16;
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let mut chunks = logits.chunks_exact(LANES);
    for chunk in &mut chunks {
        for (max, &v) in lanes.iter_mut().zip(chunk) {
            *max = if v > *max { v } else { *max };
        }
    }
    let max = chunks
        .remainder()
        .iter()
        .chain(&lanes)
        .fold(f32::NEG_INFINITY, |max, &v| if v > max { v } else { max });
    let first = logits.iter().position(|&v| v == max)?;
    u32::try_from(first).ok()
}

/// A quantized chat model loaded from a GGUF file, shareable between
/// threads (`Llm: Send + Sync`; wrap it in an `Arc`).
pub struct Llm {
    weights: Mutex<Weights>,
    device: Device,
    tokenizer: LlmTokenizer,
    template: ChatTemplate,
    info: LlmInfo,
}

impl std::fmt::Debug for Llm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Llm")
            .field("info", &self.info)
            .field("tokenizer", &self.tokenizer)
            .field("template", &self.template)
            .finish_non_exhaustive()
    }
}

fn metadata_string(ct: &gguf_file::Content, key: &str) -> Option<String> {
    ct.metadata
        .get(key)
        .and_then(|v| v.to_string().ok())
        .cloned()
}

fn metadata_usize(ct: &gguf_file::Content, key: &str) -> Result<usize> {
    let value = ct
        .metadata
        .get(key)
        .ok_or_else(|| Error::metadata(key, "missing"))?;
    let n = value
        .to_u32()
        .map(u64::from)
        .or_else(|_| value.to_u64())
        .map_err(|e| Error::metadata(key, e.to_string()))?;
    usize::try_from(n).map_err(|_| Error::metadata(key, "too large"))
}

/// What a GGUF chat model's metadata says, apart from the weights: shared by the candle and
/// the llama.cpp backends so both feed a model the same prompt tokens and stop on the same ones.
pub(crate) struct ChatModel {
    pub architecture: String,
    pub name: Option<String>,
    pub tokenizer: LlmTokenizer,
    pub template: ChatTemplate,
    /// `{architecture}.context_length`.
    pub meta_context: usize,
    pub block_count: usize,
}

impl ChatModel {
    pub fn from_gguf(content: &gguf_file::Content, path: &Path) -> Result<ChatModel> {
        let architecture = metadata_string(content, "general.architecture")
            .ok_or_else(|| Error::metadata("general.architecture", "missing"))?;
        let name = metadata_string(content, "general.name");
        let vocab = GgufVocab::from_metadata(&content.metadata)?;
        let tokenizer = LlmTokenizer::from_vocab(&vocab)?;
        if tokenizer.token_to_id(IM_START).is_none() || tokenizer.token_to_id(IM_END).is_none() {
            return Err(Error::UnsupportedChatTemplate(
                "the vocabulary has no <|im_start|> / <|im_end|> tokens (ChatML)".into(),
            ));
        }
        let template = match &vocab.chat_template {
            Some(jinja) => ChatTemplate::from_jinja(jinja)?,
            None => {
                tracing::warn!(path = %path.display(), "no tokenizer.chat_template; assuming ChatML");
                ChatTemplate::chatml(None)
            }
        };
        let prefix = |key: &str| format!("{architecture}.{key}");
        let meta_context = metadata_usize(content, &prefix("context_length"))?;
        let block_count = metadata_usize(content, &prefix("block_count"))?;
        Ok(ChatModel {
            architecture,
            name,
            tokenizer,
            template,
            meta_context,
            block_count,
        })
    }
}

/// The tokenizer and chat template of a GGUF chat model, rebuilt from its metadata as both
/// backends rebuild them: what another runtime needs to be fed the very token ids ours compute.
pub fn chat_format(path: &Path) -> Result<(LlmTokenizer, ChatTemplate)> {
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let content = gguf_file::Content::read(&mut file).map_err(|source| Error::Gguf {
        path: path.to_path_buf(),
        source,
    })?;
    let model = ChatModel::from_gguf(&content, path)?;
    Ok((model.tokenizer, model.template))
}

/// Weight matrices whose quantization candle runs without SIMD kernels.
/// The token embedding is skipped when a separate output matrix exists: the
/// models dequantize it to F32 for lookups anyway.
fn slow_tensors(content: &gguf_file::Content) -> Vec<String> {
    let has_output = content.tensor_infos.contains_key("output.weight");
    let mut names: Vec<String> = content
        .tensor_infos
        .iter()
        .filter(|(name, info)| {
            matches!(
                info.ggml_dtype,
                GgmlDType::Q4_1 | GgmlDType::Q5_0 | GgmlDType::Q5_1
            ) && info.shape.rank() == 2
                && !(has_output && name.as_str() == "token_embd.weight")
        })
        .map(|(name, _)| name.clone())
        .collect();
    names.sort();
    names
}

/// Rewrites the GGUF in memory with the `names` tensors converted to Q8_0.
fn requantize_q8_0(
    content: gguf_file::Content,
    reader: &mut std::fs::File,
    names: &[String],
    device: &Device,
) -> Result<(gguf_file::Content, std::io::Cursor<Vec<u8>>)> {
    let mut all: Vec<&String> = content.tensor_infos.keys().collect();
    all.sort();
    let mut tensors = Vec::with_capacity(all.len());
    for name in all {
        let mut qt = content.tensor(reader, name, device)?;
        if names.binary_search(name).is_ok() {
            qt = QTensor::quantize(&qt.dequantize(device)?, GgmlDType::Q8_0)?;
        }
        tensors.push((name.clone(), qt));
    }
    let metadata: Vec<(&str, &gguf_file::Value)> = content
        .metadata
        .iter()
        .map(|(k, v)| (k.as_str(), v))
        .collect();
    let refs: Vec<(&str, &candle_core::quantized::QTensor)> =
        tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut cursor = std::io::Cursor::new(Vec::new());
    gguf_file::write(&mut cursor, &metadata, &refs)?;
    cursor.set_position(0);
    let content = gguf_file::Content::read(&mut cursor)?;
    Ok((content, cursor))
}

fn build_weights<R: std::io::Read + std::io::Seek>(
    architecture: &str,
    meta_context: usize,
    content: gguf_file::Content,
    reader: &mut R,
    device: &Device,
) -> Result<(Weights, usize)> {
    Ok(match architecture {
        "qwen2" => {
            let m = quantized_qwen2::ModelWeights::from_gguf(content, reader, device)?;
            (Weights::Qwen2(m), meta_context)
        }
        "llama" => {
            let m = quantized_llama::ModelWeights::from_gguf(content, reader, device)?;
            // candle's llama precomputes rotary tables for MAX_SEQ_LEN.
            (
                Weights::Llama(m),
                meta_context.min(quantized_llama::MAX_SEQ_LEN),
            )
        }
        other => return Err(Error::UnsupportedArchitecture(other.to_string())),
    })
}

impl Llm {
    /// Loads a GGUF chat model (architecture `qwen2` or `llama`), its
    /// tokenizer and chat template, with the default [`LoadOptions`].
    /// `threads` requests a process-wide number of compute threads (see
    /// [`crate::configure_threads`]).
    pub fn load(path: &Path, threads: Option<usize>) -> Result<Llm> {
        Llm::load_with(
            path,
            &LoadOptions {
                threads,
                ..LoadOptions::default()
            },
        )
    }

    /// [`Llm::load`] with explicit options.
    pub fn load_with(path: &Path, options: &LoadOptions) -> Result<Llm> {
        let started = Instant::now();
        let threads = configure_threads(options.threads);
        let gguf_err = |source| Error::Gguf {
            path: path.to_path_buf(),
            source,
        };
        let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let file_size = file.metadata().map_err(|e| Error::io(path, e))?.len();
        let content = gguf_file::Content::read(&mut file).map_err(gguf_err)?;

        let ChatModel {
            architecture,
            name,
            tokenizer,
            template,
            meta_context,
            block_count,
        } = ChatModel::from_gguf(&content, path)?;
        if !matches!(architecture.as_str(), "qwen2" | "llama") {
            return Err(Error::UnsupportedArchitecture(architecture));
        }
        let device = Device::Cpu;
        let requantize: Vec<String> = if options.requantize {
            slow_tensors(&content)
        } else {
            Vec::new()
        };
        let (weights, context_length) = if requantize.is_empty() {
            build_weights(&architecture, meta_context, content, &mut file, &device)
        } else {
            let t = Instant::now();
            let (content, mut buffer) = requantize_q8_0(content, &mut file, &requantize, &device)?;
            tracing::debug!(
                tensors = requantize.len(),
                ms = t.elapsed().as_millis() as u64,
                "requantized to Q8_0"
            );
            build_weights(&architecture, meta_context, content, &mut buffer, &device)
        }
        .map_err(|e| match e {
            Error::Candle(source) => gguf_err(source),
            other => other,
        })?;
        let load_ms = started.elapsed().as_secs_f64() * 1000.0;
        let info = LlmInfo {
            architecture,
            name,
            context_length,
            block_count,
            vocab_size: tokenizer.vocab_size(),
            file_size,
            threads,
            requantized_tensors: requantize.len(),
            load_ms,
        };
        tracing::info!(
            path = %path.display(),
            architecture = %info.architecture,
            name = info.name.as_deref().unwrap_or(""),
            context = info.context_length,
            threads,
            load_ms = format!("{load_ms:.0}"),
            "loaded LLM"
        );
        Ok(Llm {
            weights: Mutex::new(weights),
            device,
            tokenizer,
            template,
            info,
        })
    }

    /// Runs a tiny prompt and one generation step so that candle's one-time
    /// work (on x86, repacking Q4_K/Q6_K/Q8_0 weights into SIMD tiles on
    /// first use, which also adds their memory) happens now rather than in
    /// the first real call. Leaves no state behind.
    pub fn warm_up(&self) -> Result<()> {
        let started = Instant::now();
        let ids = self.tokenizer.encode("Hello, world")?;
        self.generate(&ids, &GenerateOptions::max_new_tokens(2))?;
        tracing::debug!(ms = started.elapsed().as_millis() as u64, "warmed up");
        Ok(())
    }

    /// Facts about the model.
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

    /// The prompt text [`Llm::chat`] feeds the model.
    pub fn render_prompt(&self, messages: &[Message]) -> String {
        self.template.render(messages)
    }

    /// The prompt token ids [`Llm::chat`] feeds the model.
    pub fn prompt_ids(&self, messages: &[Message]) -> Result<Vec<u32>> {
        self.tokenizer.encode_chat(&self.template, messages)
    }

    /// Answers a conversation: applies the chat template and generates the
    /// assistant's reply greedily (deterministic).
    pub fn chat(&self, messages: &[Message], options: &GenerateOptions) -> Result<Generation> {
        let prompt = self.prompt_ids(messages)?;
        self.generate(&prompt, options)
    }

    /// Greedy generation from raw prompt token ids, until a stop token, the
    /// token budget or the end of the context window.
    pub fn generate(&self, prompt: &[u32], options: &GenerateOptions) -> Result<Generation> {
        let budget = token_budget(prompt, self.info.context_length, options)?;
        if budget == 0 {
            return Ok(Generation::nothing(prompt.len()));
        }
        let mut session = Session::start(&self.weights, &self.device);
        let started = Instant::now();
        let mut logits = Vec::new();
        for (pos, len) in prefill_pieces(prompt.len()) {
            logits = session.forward(&prompt[pos..pos + len], pos)?;
        }
        let prefilled = Prefilled {
            prompt,
            cached: 0,
            first: self.pick(&logits)?,
            prompt_ms: started.elapsed().as_secs_f64() * 1000.0,
        };
        decode_greedy(
            &self.tokenizer,
            "candle",
            prefilled,
            budget,
            options,
            |token, n| {
                let logits = session.forward(&[token], prompt.len() + n - 1)?;
                self.pick(&logits)
            },
        )
    }

    fn pick(&self, logits: &[f32]) -> Result<u32> {
        argmax(logits).ok_or_else(|| {
            Error::Candle(candle_core::Error::Msg(
                "the model produced no usable logits".into(),
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llm_is_shareable() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Llm>();
    }

    #[test]
    fn a_draft_is_what_followed_the_latest_tokens_in_the_prompt() {
        let prompt = [1, 2, 3, 4, 5, 6, 7, 8, 9];
        // "2 3 4" occurs in the prompt: the tokens after it, at most `max`.
        assert_eq!(lookup_draft(&prompt, &[0, 2, 3, 4], 3), &[5, 6, 7]);
        assert_eq!(lookup_draft(&prompt, &[0, 2, 3, 4], 1), &[5]);
        // The end of the prompt has nothing after it; two tokens are too few to match.
        assert_eq!(lookup_draft(&prompt, &[7, 8, 9], 3), &[] as &[u32]);
        assert_eq!(lookup_draft(&prompt, &[0, 3, 4], 3), &[] as &[u32]);
        // The longest match wins: "1 2 3 4" points at its own occurrence, not the later
        // "2 3 4".
        let prompt = [1, 2, 3, 4, 10, 0, 2, 3, 4, 11];
        assert_eq!(lookup_draft(&prompt, &[1, 2, 3, 4], 2), &[10, 0]);
        assert_eq!(lookup_draft(&prompt, &[5, 2, 3, 4], 2), &[11]);
        // The answer before its last tokens comes first, latest occurrence first, and what
        // followed there may run into the tokens being matched.
        assert_eq!(
            lookup_draft(&prompt, &[2, 3, 4, 12, 2, 3, 4], 3),
            &[12, 2, 3]
        );
        assert_eq!(lookup_draft(&[], &[6, 6, 6, 6], 3), &[6]);
        assert_eq!(lookup_draft(&prompt, &[], 3), &[] as &[u32]);
        assert_eq!(lookup_draft(&prompt, &[2, 3, 4], 0), &[] as &[u32]);
    }

    #[test]
    fn a_draft_holds_while_each_token_is_the_models_choice() {
        // Fed: the computed token 1, then the draft 2 3 4.
        assert_eq!(accepted_draft(&[1, 2, 3, 4], &[2, 3, 4, 5]), 3);
        assert_eq!(accepted_draft(&[1, 2, 3, 4], &[2, 3, 9, 5]), 2);
        assert_eq!(accepted_draft(&[1, 2, 3, 4], &[7, 3, 4, 5]), 0);
        assert_eq!(accepted_draft(&[1], &[7]), 0);
    }

    /// A fake model over `answer`: each step computes the fed tokens and chooses what
    /// `answer` holds after each, while the draft agrees. Counts passes.
    fn scripted(answer: &[u32], passes: &mut usize, fed: &[u32], n: usize) -> Result<Vec<u32>> {
        *passes += 1;
        // `fed[0]` is answer[n - 1]; the choice after fed[i] is answer[n + i].
        assert_eq!(fed[0], answer[n - 1]);
        // Past the answer's end the fake keeps choosing its stop token.
        let choices: Vec<u32> = (0..fed.len())
            .map(|i| answer[(n + i).min(answer.len() - 1)])
            .collect();
        let kept = accepted_draft(fed, &choices);
        Ok(choices[..=kept].to_vec())
    }

    #[test]
    fn drafts_give_the_answer_of_single_steps_in_fewer_passes() {
        let vocab = crate::tokenizer::tests::mini_vocab("qwen2");
        let tokenizer = LlmTokenizer::from_vocab(&vocab).unwrap();
        let end = vocab.eos_token_id.unwrap();
        let text = b"call Maria Lopez at 555 0134 about the lease; Maria Lopez, 555 0134";
        let prompt: Vec<u32> = b"Maria Lopez 555 0134 lease"
            .iter()
            .map(|&b| b as u32)
            .collect();
        let answer: Vec<u32> = text.iter().map(|&b| b as u32).chain([end]).collect();
        let options = GenerateOptions::max_new_tokens(200);
        let run = |max_draft: usize| {
            let mut passes = 0;
            let prefilled = Prefilled {
                prompt: &prompt,
                cached: 0,
                prompt_ms: 0.0,
                first: answer[0],
            };
            let g = decode_drafted(
                &tokenizer,
                "test",
                prefilled,
                200,
                &options,
                max_draft,
                |fed, n| scripted(&answer, &mut passes, fed, n),
            )
            .unwrap();
            (g, passes)
        };
        let (single, single_passes) = run(0);
        let (drafted, drafted_passes) = run(3);
        assert_eq!(single.text, String::from_utf8_lossy(text));
        assert_eq!(drafted.text, single.text);
        assert_eq!(drafted.generated_tokens, single.generated_tokens);
        assert_eq!(single_passes, answer.len() - 1);
        assert!(
            drafted_passes < single_passes * 3 / 4,
            "{drafted_passes} passes with drafts, {single_passes} without"
        );
    }

    #[test]
    fn a_loop_is_found_once_its_block_is_written_three_times() {
        let prefix: Vec<u32> = (1000..1030).collect();
        let block: Vec<u32> = (1..=20).collect();
        let with = |copies: usize, extra: &[u32]| -> Vec<u32> {
            let mut tokens = prefix.clone();
            (0..copies).for_each(|_| tokens.extend(&block));
            tokens.extend(extra);
            tokens
        };
        assert_eq!(repeated_tail(&prefix), None);
        assert_eq!(repeated_tail(&with(2, &[])), None);
        assert_eq!(repeated_tail(&with(3, &[])), Some(40));
        // Three copies that start inside the block are a loop too.
        assert_eq!(repeated_tail(&with(3, &block[..5])), Some(40));
        // A block written twice and then something else is not.
        assert_eq!(repeated_tail(&with(2, &[7, 8, 9])), None);
        assert_eq!(repeated_tail(&[]), None);
    }

    #[test]
    fn short_blocks_must_repeat_over_48_tokens() {
        assert_eq!(repeated_tail(&[5; 47]), None);
        assert_eq!(repeated_tail(&[5; 48]), Some(47));
        let word: Vec<u32> = [9, 4].repeat(23);
        assert_eq!(repeated_tail(&word), None);
        let word: Vec<u32> = [9, 4].repeat(24);
        assert_eq!(repeated_tail(&word), Some(46));
        // A list that is mostly the same item but not always.
        let mut list: Vec<u32> = [9, 4].repeat(30);
        list[30] = 3;
        assert_eq!(repeated_tail(&list), None);
        // A block longer than the longest period looked for.
        let long: Vec<u32> = (0..200).collect::<Vec<u32>>().repeat(3);
        assert_eq!(repeated_tail(&long), None);
    }

    #[test]
    fn prefill_pieces_are_aligned() {
        assert_eq!(prefill_pieces(0), []);
        assert_eq!(prefill_pieces(1), [(0, 1)]);
        assert_eq!(prefill_pieces(125), [(0, 125)]);
        assert_eq!(prefill_pieces(256), [(0, 256)]);
        assert_eq!(prefill_pieces(600), [(0, 256), (256, 256), (512, 88)]);
        for len in 0..2000 {
            let pieces = prefill_pieces(len);
            let mut pos = 0;
            for (i, &(p, n)) in pieces.iter().enumerate() {
                assert_eq!(p, pos);
                assert_eq!(p % PREFILL_CHUNK, 0);
                assert!(n > 0 && n <= PREFILL_CHUNK);
                assert!(i + 1 == pieces.len() || n == PREFILL_CHUNK);
                pos += n;
            }
            assert_eq!(pos, len);
        }
    }

    #[test]
    fn argmax_is_deterministic() {
        assert_eq!(argmax(&[]), None);
        assert_eq!(argmax(&[f32::NAN]), None);
        assert_eq!(argmax(&[0.5, 2.0, 2.0, -1.0]), Some(1));
        assert_eq!(argmax(&[f32::NAN, -3.0, f32::NAN]), Some(1));
        assert_eq!(argmax(&[f32::NEG_INFINITY, f32::NEG_INFINITY]), Some(0));
        // Vocabulary-sized rows: ties across the lanes, the maximum in the tail, NaN among them.
        let mut logits: Vec<f32> = (0..151_936).map(|i| (i % 97) as f32 * 0.01).collect();
        logits[70_001] = 9.0;
        logits[16] = 9.0;
        logits[5] = f32::NAN;
        assert_eq!(argmax(&logits), Some(16));
        logits[151_935] = 9.5;
        assert_eq!(argmax(&logits), Some(151_935));
        logits[3] = f32::INFINITY;
        assert_eq!(argmax(&logits), Some(3));
    }
}
