//! `companion bench llm`: prompt and generation speed of each LLM backend on the same GGUF file,
//! prompt and threads, greedy, next to this machine's memory-bandwidth bound (generating one
//! token reads every weight once, so tokens/s cannot exceed bandwidth / weight bytes) and next
//! to the peer: llama.cpp as its Python binding builds it, fed the same prompt token ids.

use std::io::{BufRead, BufReader, Lines, Read, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use companion_language::{
    GenerateOptions, Generation, LLAMA_CONTEXT_LENGTH, LLM_ROLE, LlmTokenizer, Message, Native,
    NativeOptions, StopReason, TextGenerator, chat_format, resolve_model,
};
use companion_models::ModelCache;
use serde_json::json;

use super::child::last_lines;
use super::{WorkDir, median, python_env};

/// The peer: llama.cpp as its Python binding builds it (from source, for this CPU).
const PEER: &str = "llama-cpp-python";
const PEER_SCRIPT: &str = include_str!("llama_cpp_run.py");
const PEER_REQUIREMENTS: &str = include_str!("llama_cpp_requirements.txt");
/// pip builds llama.cpp for this CPU (`-march=native`) but without its AMX kernels: where a
/// virtual machine reports AMX, they stopped the peer with an illegal instruction (`tileloadd`)
/// in its first product. Generation multiplies by one token, which AMX does not speed up.
const PEER_BUILD_ENV: &[(&str, &str)] = &[(
    "CMAKE_ARGS",
    "-DCMAKE_C_FLAGS='-mno-amx-tile -mno-amx-int8 -mno-amx-bf16' \
     -DCMAKE_CXX_FLAGS='-mno-amx-tile -mno-amx-int8 -mno-amx-bf16'",
)];

pub use companion_language::Backend;

#[derive(Args, Debug)]
pub struct LlmArgs {
    /// Chat model: a name or a GGUF file.
    #[arg(long, default_value = crate::process::DEFAULT_LLM)]
    llm_model: String,
    /// Backends to compare.
    #[arg(long, value_delimiter = ',', default_value = "engine,llama.cpp")]
    backends: Vec<Backend>,
    /// Compute threads (default: the backends' default, the physical cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Tokens to generate per run.
    #[arg(long, default_value_t = 100)]
    max_new_tokens: usize,
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Bytes ahead of their weights the engine's kernels ask for more (0: none; default: the
    /// engine's choice for this CPU).
    #[arg(long)]
    prefetch: Option<usize>,
    /// Draft tokens the engine checks with each generated one (`companion process
    /// --llm-draft`). 0 by default: one token a pass, the step the bandwidth bound is about.
    #[arg(long, default_value_t = 0)]
    draft: usize,
    /// Leave out the peer (llama.cpp through its Python binding, built here on first use).
    #[arg(long)]
    no_peer: bool,
    /// Python that makes the peer's virtual environment.
    #[arg(long, env = "COMPANION_PYTHON", default_value = "python3")]
    python: String,
    #[command(flatten)]
    work: WorkDir,
}

/// A voicemail the way the task prompt shows one (about 125 tokens with the instructions).
const VOICEMAIL: &str = "Good afternoon, this is Sarah Johnson calling from the accounting department at \
    Northwind Supplies. I am following up on the invoice we sent at the beginning of the month, \
    which is still showing as unpaid in our system. Could you please confirm whether the payment \
    has been processed? You can call me back this afternoon. Thank you.";

/// Loads a chat model with a backend.
pub fn load_generator(
    backend: Backend,
    path: &Path,
    threads: Option<usize>,
) -> Result<Box<dyn TextGenerator>> {
    Ok(companion_language::load_generator(backend, path, threads)?)
}

pub fn run(args: LlmArgs, models_dir: &Path) -> Result<()> {
    if args.rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    if let Some(bytes) = args.prefetch {
        companion_engine::matrix::set_prefetch_ahead(bytes);
    }
    let path = resolve_model(&args.llm_model, LLM_ROLE, &ModelCache::new(models_dir))?;
    let weight_bytes = bytes_read_per_token(&path)?;
    let threads = args
        .threads
        .unwrap_or_else(companion_language::compute_threads);
    let messages = [
        Message::system("You are a helpful assistant for a busy office. Answer briefly."),
        Message::user(format!(
            "Here is a voicemail. Write a short summary, then list every task it asks for, one per line.\n\n{VOICEMAIL}"
        )),
    ];
    let options = GenerateOptions::max_new_tokens(args.max_new_tokens);

    let mut sides: Vec<Side> = Vec::new();
    for backend in &args.backends {
        let started = Instant::now();
        let generator = if *backend == Backend::Native {
            // The engine repacks the file's weights; what it reads a token differs from the file.
            let native = Native::load_with(
                &path,
                &NativeOptions {
                    threads: args.threads,
                    max_draft: args.draft,
                    ..NativeOptions::default()
                },
            )?;
            let model = native.model();
            println!(
                "engine: reads {:.0} MB of weights a token (the file's blocks repacked into int8/int6/int5/int4 tiles; {} kernel, asking {} bytes ahead)",
                model.weight_bytes() as f64 / 1e6,
                model.kernel().as_str(),
                companion_engine::matrix::prefetch_ahead()
            );
            Box::new(native) as Box<dyn TextGenerator>
        } else {
            load_generator(*backend, &path, args.threads)?
        };
        let load_ms = started.elapsed().as_secs_f64() * 1000.0;
        sides.push(Side::new(
            backend.to_string(),
            load_ms,
            Engine::Ours(generator),
        ));
    }
    if !args.no_peer {
        let python = python_env(
            &args.python,
            &args.work.path(),
            PEER,
            PEER_REQUIREMENTS,
            PEER_BUILD_ENV,
        )?;
        let (tokenizer, template) = chat_format(&path)?;
        let job = json!({
            "model": path,
            "threads": threads,
            "context_length": LLAMA_CONTEXT_LENGTH,
            "prompt": tokenizer.encode_chat(&template, &messages)?,
            "stop": tokenizer.stop_ids(),
            "max_new_tokens": args.max_new_tokens,
        });
        let peer = PeerProcess::start(&python, &args.work.path(), &job)?;
        sides.push(Side::new(
            PEER.to_string(),
            peer.load_ms,
            Engine::Peer(Box::new((peer, tokenizer))),
        ));
    }

    // The host's memory bandwidth moves from one second to the next (other machines share
    // it), so each generation is set against a measurement taken just before it, and the
    // sides take turns round by round.
    let mut memory = MemoryReader::new(threads);
    let bandwidth = memory.best_of(5);
    println!(
        "memory read bandwidth ({threads} threads): {:.1} GB/s; {} reads {:.0} MB of weights a token → bound {:.1} tokens/s",
        bandwidth / 1e9,
        args.llm_model,
        weight_bytes as f64 / 1e6,
        bandwidth / weight_bytes as f64
    );
    for _ in 0..args.rounds {
        for side in &mut sides {
            side.bandwidth.push(memory.best_of(2));
            let generation = match &mut side.engine {
                Engine::Ours(generator) => generator.chat(&messages, &options)?,
                Engine::Peer(peer) => {
                    let (peer, tokenizer) = &mut **peer;
                    peer.round(tokenizer)?
                }
            };
            side.runs.push(generation);
        }
    }

    println!(
        "backend\tload_ms\tprompt_tokens\tprompt_tok_s\tgenerated\tgen_tok_s\tweights_GB_s\tbandwidth_GB_s\tof_bound\tfirst_call_ms\tlater_call_ms\tlater_reused_tokens"
    );
    for side in &sides {
        side.print_row(weight_bytes);
    }
    // Greedy decoding on the same weights should give the same answer everywhere; a different
    // one means the sides did not compute the same thing (or rounding differs between kernels).
    let text = |side: &Side| side.runs[0].text.clone();
    if let Some((first, rest)) = sides.split_first() {
        for side in rest {
            let (a, b) = (text(first), text(side));
            match divergence(&a, &b) {
                None => println!("{} gave the same answer as {}", side.name, first.name),
                Some(at) => println!(
                    "{}'s answer parts from {}'s after {at} bytes (…{:?}): {:?} against {:?}",
                    side.name,
                    first.name,
                    tail(&a[..at], 40),
                    head(&b[at..], 30),
                    head(&a[at..], 30),
                ),
            }
        }
    }
    if let Some(Side {
        engine: Engine::Peer(peer),
        ..
    }) = sides.pop()
    {
        peer.0.finish()?;
    }
    Ok(())
}

/// What generates: one of our backends in this process, or the peer in its own.
enum Engine {
    Ours(Box<dyn TextGenerator>),
    Peer(Box<(PeerProcess, LlmTokenizer)>),
}

/// One backend's generations, each with the bandwidth measured just before it.
struct Side {
    name: String,
    load_ms: f64,
    engine: Engine,
    runs: Vec<Generation>,
    bandwidth: Vec<f64>,
}

impl Side {
    fn new(name: String, load_ms: f64, engine: Engine) -> Side {
        Side {
            name,
            load_ms,
            engine,
            runs: Vec::new(),
            bandwidth: Vec::new(),
        }
    }

    /// Medians over the rounds.
    fn print_row(&self, weight_bytes: u64) {
        let runs = &self.runs;
        // Prompt speed from the calls that computed the whole prompt: a later llama.cpp call
        // reuses the KV cache of the same prompt and computes almost none of it.
        let prompt: Vec<f64> = runs
            .iter()
            .filter(|g| g.cached_prompt_tokens == 0)
            .map(Generation::prompt_tokens_per_sec)
            .collect();
        let generate: Vec<f64> = runs.iter().map(|g| g.generate_tokens_per_sec()).collect();
        let of_bound: Vec<f64> = generate
            .iter()
            .zip(&self.bandwidth)
            .map(|(tps, bandwidth)| tps * weight_bytes as f64 / bandwidth * 100.0)
            .collect();
        let call_ms = |g: &Generation| g.prompt_ms + g.generate_ms;
        let gen_median = median(&generate);
        let reused: Vec<f64> = runs
            .iter()
            .skip(1)
            .map(|g| g.cached_prompt_tokens as f64)
            .collect();
        println!(
            "{}\t{:.0}\t{}\t{:.1}\t{}\t{:.1}\t{:.1}\t{:.1}\t{:.0}%\t{:.0}\t{:.0}\t{:.0}",
            self.name,
            self.load_ms,
            runs[0].prompt_tokens,
            median(&prompt[if prompt.len() > 1 { 1.. } else { 0.. }]),
            runs[0].generated_tokens,
            gen_median,
            gen_median * weight_bytes as f64 / 1e9,
            median(&self.bandwidth) / 1e9,
            median(&of_bound),
            call_ms(&runs[0]),
            median(&runs.iter().skip(1).map(call_ms).collect::<Vec<_>>()),
            median(&reused),
        );
    }
}

/// The peer: llama.cpp through its Python binding, built for this CPU by pip, in a process
/// of its own that loads the model once and runs a round whenever it reads a line. It is fed
/// the very prompt token ids our backends compute and generates the same way (greedy, same
/// budget, same stop tokens, same threads).
struct PeerProcess {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Lines<BufReader<ChildStdout>>,
    stderr: Option<std::thread::JoinHandle<String>>,
    prompt_tokens: usize,
    load_ms: f64,
}

impl PeerProcess {
    fn start(python: &Path, work: &Path, job: &serde_json::Value) -> Result<PeerProcess> {
        let script = work.join("llama_cpp_run.py");
        let job_file = work.join("llama_cpp_job.json");
        std::fs::write(&script, PEER_SCRIPT)
            .with_context(|| format!("cannot write {}", script.display()))?;
        std::fs::write(&job_file, serde_json::to_vec(job)?)
            .with_context(|| format!("cannot write {}", job_file.display()))?;
        let prompt_tokens = job["prompt"].as_array().map_or(0, Vec::len);
        PeerProcess::spawn(
            Command::new(python).arg(&script).arg(&job_file),
            prompt_tokens,
        )
    }

    /// Starts `command` and reads its load time.
    fn spawn(command: &mut Command, prompt_tokens: usize) -> Result<PeerProcess> {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {:?}", command.get_program()))?;
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().context("no stdout pipe")?).lines();
        let mut stderr = child.stderr.take().context("no stderr pipe")?;
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });
        let mut peer = PeerProcess {
            child,
            stdin,
            stdout,
            stderr: Some(stderr),
            prompt_tokens,
            load_ms: 0.0,
        };
        let line = peer.line()?;
        peer.load_ms = parse_load(&line)?;
        Ok(peer)
    }

    /// One generation, its text decoded by our tokenizer.
    fn round(&mut self, tokenizer: &LlmTokenizer) -> Result<Generation> {
        self.round_with(
            |id| tokenizer.is_stop(id),
            |ids| Ok(tokenizer.decode(ids, true)?),
        )
    }

    fn round_with(
        &mut self,
        is_stop: impl Fn(u32) -> bool,
        decode: impl Fn(&[u32]) -> Result<String>,
    ) -> Result<Generation> {
        let sent = self
            .stdin
            .as_mut()
            .map(|stdin| stdin.write_all(b"go\n").and_then(|()| stdin.flush()));
        if !matches!(sent, Some(Ok(()))) {
            return Err(self.stopped());
        }
        let line = self.line()?;
        parse_round(&line, self.prompt_tokens, is_stop, decode)
    }

    /// The next line it prints.
    fn line(&mut self) -> Result<String> {
        match self.stdout.next() {
            Some(Ok(line)) => Ok(line),
            _ => Err(self.stopped()),
        }
    }

    /// The error for a peer that stopped: the end of what it wrote to stderr.
    fn stopped(&mut self) -> anyhow::Error {
        self.stdin = None;
        let status = self.child.wait();
        let stderr = self
            .stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        anyhow::anyhow!(
            "the peer ({PEER}) stopped ({}):\n{}",
            status.map_or_else(|e| e.to_string(), |s| s.to_string()),
            last_lines(&stderr, 15)
        )
    }

    /// Closes its input, which ends it.
    fn finish(mut self) -> Result<()> {
        self.stdin = None;
        let status = self.child.wait().context("waiting for the peer")?;
        if !status.success() {
            bail!("the peer ({PEER}) ended with {status}");
        }
        Ok(())
    }
}

/// The peer's first line: its load time.
fn parse_load(line: &str) -> Result<f64> {
    #[derive(serde::Deserialize)]
    struct Load {
        load_ms: f64,
    }
    let load: Load = serde_json::from_str(line)
        .with_context(|| format!("the peer's first line is not its load time: {line}"))?;
    Ok(load.load_ms)
}

/// A round's line: the prompt and generation times and the generated token ids (the stop
/// token included, when one came).
fn parse_round(
    line: &str,
    prompt_tokens: usize,
    is_stop: impl Fn(u32) -> bool,
    decode: impl Fn(&[u32]) -> Result<String>,
) -> Result<Generation> {
    #[derive(serde::Deserialize)]
    struct Round {
        prompt_ms: f64,
        generate_ms: f64,
        tokens: Vec<u32>,
    }
    let round: Round = serde_json::from_str(line)
        .with_context(|| format!("the peer printed an unexpected line: {line}"))?;
    let (content, stop) = match round.tokens.split_last() {
        Some((&last, content)) if is_stop(last) => (content, StopReason::EndOfTurn),
        _ => (&round.tokens[..], StopReason::MaxTokens),
    };
    Ok(Generation {
        text: decode(content)?,
        prompt_tokens,
        cached_prompt_tokens: 0,
        generated_tokens: round.tokens.len(),
        prompt_ms: round.prompt_ms,
        generate_ms: round.generate_ms,
        stop,
        draft_tokens: 0,
        accepted_draft_tokens: 0,
    })
}

/// The first `chars` characters of `text`.
fn head(text: &str, chars: usize) -> &str {
    text.char_indices()
        .nth(chars)
        .map_or(text, |(at, _)| &text[..at])
}

/// The last `chars` characters of `text`.
fn tail(text: &str, chars: usize) -> &str {
    if chars == 0 {
        return "";
    }
    text.char_indices()
        .rev()
        .nth(chars.saturating_sub(1))
        .map_or(text, |(at, _)| &text[at..])
}

/// Where two texts start to differ (a byte offset on a character boundary of both), or `None`
/// when they are the same.
fn divergence(a: &str, b: &str) -> Option<usize> {
    if a == b {
        return None;
    }
    let same = a
        .char_indices()
        .zip(b.chars())
        .find(|((_, x), y)| x != y)
        .map_or(a.len().min(b.len()), |((at, _), _)| at);
    Some(same)
}

/// Bytes of weights one generated token reads: every tensor of the GGUF file, except that
/// the token embedding table gives one row (a lookup) when the model has a separate output
/// matrix (without one, the output projection reads the whole table).
pub fn bytes_read_per_token(path: &Path) -> Result<u64> {
    let header = companion_models::read_gguf_header(path)?;
    let total: u64 = header.tensors.iter().map(|t| t.size).sum();
    let has_output = header.tensors.iter().any(|t| t.name == "output.weight");
    let lookup = header
        .tensors
        .iter()
        .find(|t| t.name == "token_embd.weight")
        .filter(|_| has_output)
        .map_or(0, |t| {
            let rows = t.dims.get(1).copied().unwrap_or(1).max(1);
            t.size - t.size / rows
        });
    Ok(total - lookup)
}

/// Measures how fast `threads` threads read a buffer far larger than the caches.
pub(super) struct MemoryReader {
    buffer: Vec<u64>,
    threads: usize,
}

/// A way of reading every word of a slice, returning their sum.
type ReadLoop = fn(&[u64]) -> u64;

impl MemoryReader {
    pub(super) fn new(threads: usize) -> MemoryReader {
        const BYTES: usize = 1 << 30;
        MemoryReader {
            buffer: (0..(BYTES / 8) as u64).collect(),
            threads: threads.max(1),
        }
    }

    /// Reads with `threads` threads from now on.
    pub(super) fn with_threads(&mut self, threads: usize) -> &mut MemoryReader {
        self.threads = threads.max(1);
        self
    }

    /// Bytes per second, the best of `passes` passes over the whole buffer with each read loop
    /// (the machines differ in which reads fastest: on one, 512-bit loads read 1.7× as fast as
    /// the plain loads; on another, the same).
    pub(super) fn best_of(&mut self, passes: usize) -> f64 {
        let mut best = 0.0f64;
        for _ in 0..passes {
            for read in read_loops() {
                best = best.max(self.pass(read));
            }
        }
        best
    }

    /// Bytes per second of one pass, each thread reading its share with `read`.
    fn pass(&self, read: ReadLoop) -> f64 {
        let bytes = (self.buffer.len() * 8) as f64;
        let chunk = self.buffer.len().div_ceil(self.threads);
        let started = Instant::now();
        let total: u64 = std::thread::scope(|s| {
            let handles: Vec<_> = self
                .buffer
                .chunks(chunk)
                .map(|part| s.spawn(move || read(part)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or(0))
                .fold(0u64, u64::wrapping_add)
        });
        std::hint::black_box(total);
        bytes / started.elapsed().as_secs_f64()
    }
}

/// Sums every word with volatile loads in four independent chains, so the loop is bound by
/// memory and the compiler cannot reshape it: an auto-vectorized sum built for this CPU
/// (`target-cpu=native`, AVX-512) read at a third of the speed the plain loads reach.
fn sum_words(words: &[u64]) -> u64 {
    let mut lanes = [0u64; 4];
    let mut chunks = words.chunks_exact(4);
    for c in &mut chunks {
        for (lane, w) in lanes.iter_mut().zip(c) {
            // SAFETY: `w` is a valid, aligned reference into `words`.
            *lane = lane.wrapping_add(unsafe { std::ptr::read_volatile(w) });
        }
    }
    let rest: u64 = chunks.remainder().iter().fold(0, |a, w| a.wrapping_add(*w));
    lanes.iter().fold(rest, |a, l| a.wrapping_add(*l))
}

/// The read loops this CPU runs: the plain one, and 64-byte loads where it has AVX-512.
fn read_loops() -> Vec<ReadLoop> {
    let mut loops = vec![sum_words as ReadLoop];
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        loops.push(sum_vectors);
    }
    loops
}

/// Sums every word with 64-byte loads into four independent vector sums. Only for CPUs with
/// AVX-512 (see [`read_loops`]).
#[cfg(target_arch = "x86_64")]
fn sum_vectors(words: &[u64]) -> u64 {
    assert!(std::arch::is_x86_feature_detected!("avx512f"));
    // SAFETY: the CPU reports AVX-512F (asserted).
    unsafe { sum_avx512(words) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn sum_avx512(words: &[u64]) -> u64 {
    use std::arch::x86_64::*;
    let mut lanes = [_mm512_setzero_si512(); 4];
    let mut chunks = words.chunks_exact(32);
    for c in &mut chunks {
        for (k, lane) in lanes.iter_mut().enumerate() {
            // SAFETY: `c` holds 32 words, so words `8k..8k + 8` are inside it.
            let v = unsafe { _mm512_loadu_si512(c.as_ptr().add(8 * k) as *const _) };
            *lane = _mm512_add_epi64(*lane, v);
        }
    }
    let rest: u64 = chunks.remainder().iter().fold(0, |a, w| a.wrapping_add(*w));
    lanes.iter().fold(rest, |a, l| {
        a.wrapping_add(_mm512_reduce_add_epi64(*l) as u64)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A GGUF file of f32 tensors (name, row length, rows), without metadata.
    fn gguf(tensors: &[(&str, u64, u64)]) -> tempfile::NamedTempFile {
        let mut f = b"GGUF".to_vec();
        f.extend(3u32.to_le_bytes());
        f.extend((tensors.len() as u64).to_le_bytes());
        f.extend(0u64.to_le_bytes());
        let mut offset = 0u64;
        for (name, row, rows) in tensors {
            f.extend((name.len() as u64).to_le_bytes());
            f.extend(name.as_bytes());
            f.extend(2u32.to_le_bytes());
            f.extend(row.to_le_bytes());
            f.extend(rows.to_le_bytes());
            f.extend(0u32.to_le_bytes());
            f.extend(offset.to_le_bytes());
            offset = (offset + row * rows * 4).next_multiple_of(32);
        }
        f.resize(f.len().next_multiple_of(32) + offset as usize, 0);
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), f).unwrap();
        file
    }

    #[test]
    fn a_token_reads_one_row_of_the_embedding_table() {
        let embd = ("token_embd.weight", 8, 100);
        let layer = ("blk.0.ffn_up.weight", 8, 16);
        // A separate output matrix: the table gives one row of 8 f32.
        let file = gguf(&[embd, layer, ("output.weight", 8, 100)]);
        assert_eq!(bytes_read_per_token(file.path()).unwrap(), 32 + 512 + 3200);
        // Tied embeddings: the output projection reads the whole table.
        let file = gguf(&[embd, layer]);
        assert_eq!(bytes_read_per_token(file.path()).unwrap(), 3200 + 512);
    }

    fn round(line: &str) -> Result<Generation> {
        let decode = |ids: &[u32]| Ok(ids.iter().map(u32::to_string).collect::<Vec<_>>().join(" "));
        parse_round(line, 114, |id| id == 2, decode)
    }

    #[test]
    fn reads_the_peers_lines() {
        assert_eq!(parse_load(r#"{"load_ms": 812.5}"#).unwrap(), 812.5);
        let ended =
            round(r#"{"prompt_ms": 250.0, "generate_ms": 60.0, "tokens": [5, 6, 7, 2]}"#).unwrap();
        assert_eq!(ended.text, "5 6 7");
        assert_eq!(ended.stop, StopReason::EndOfTurn);
        assert_eq!((ended.prompt_tokens, ended.cached_prompt_tokens), (114, 0));
        assert_eq!(ended.generated_tokens, 4);
        // Three single-token steps after the one the prompt gave.
        assert_eq!(ended.generate_tokens_per_sec(), 50.0);
        let cut =
            round(r#"{"prompt_ms": 240.0, "generate_ms": 40.0, "tokens": [5, 6, 7]}"#).unwrap();
        assert_eq!(cut.text, "5 6 7");
        assert_eq!(cut.stop, StopReason::MaxTokens);
        assert_eq!(cut.generated_tokens, 3);
    }

    #[test]
    fn the_peers_unexpected_output_is_an_error() {
        let err = parse_load("Traceback (most recent call last):").unwrap_err();
        assert!(err.to_string().contains("load time"), "{err}");
        for line in ["{}", r#"{"load_ms": 1.0}"#, ""] {
            let err = round(line).unwrap_err();
            assert!(err.to_string().contains("unexpected line"), "{line}: {err}");
        }
    }

    /// The peer's process with a stand-in script: the load time first, a round per line, and
    /// a peer that dies gives an error with what it wrote to stderr.
    #[test]
    fn drives_a_peer_process_round_by_round() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("peer.sh");
        std::fs::write(
            &script,
            r#"echo '{"load_ms": 7}'
n=0
while read line; do
  n=$((n+1))
  echo "{\"prompt_ms\": $n, \"generate_ms\": 1, \"tokens\": [4, $n]}"
  if [ $n -ge 2 ]; then echo 'out of memory' >&2; exit 3; fi
done
"#,
        )
        .unwrap();
        let mut peer = PeerProcess::spawn(Command::new("sh").arg(&script), 3).unwrap();
        assert_eq!(peer.load_ms, 7.0);
        let mut round = || peer.round_with(|_| false, |ids| Ok(format!("{ids:?}")));
        let first = round().unwrap();
        assert_eq!((first.text.as_str(), first.prompt_ms), ("[4, 1]", 1.0));
        assert_eq!(first.prompt_tokens, 3);
        assert_eq!(round().unwrap().prompt_ms, 2.0);
        let err = round().unwrap_err().to_string();
        assert!(err.contains("out of memory"), "{err}");
    }

    #[test]
    fn a_peer_that_cannot_load_is_an_error() {
        let err = PeerProcess::spawn(
            Command::new("sh").args(["-c", "echo 'no such model' >&2; exit 1"]),
            3,
        )
        .err()
        .unwrap()
        .to_string();
        assert!(err.contains("no such model"), "{err}");
    }

    #[test]
    fn finds_where_answers_part() {
        assert_eq!(divergence("same", "same"), None);
        assert_eq!(divergence("call Tom at 5", "call Tom at 6"), Some(12));
        assert_eq!(divergence("call", "call Tom"), Some(4));
        assert_eq!(divergence("café au lait", "café noir"), Some(6));
        assert_eq!(divergence("", "x"), Some(0));
        assert_eq!((head("café", 3), head("café", 9)), ("caf", "café"));
        assert_eq!(
            (tail("café", 2), tail("café", 9), tail("café", 0)),
            ("fé", "café", "")
        );
    }

    #[test]
    fn every_read_loop_sums_every_word() {
        let loops = read_loops();
        #[cfg(target_arch = "x86_64")]
        assert_eq!(
            loops.len(),
            if std::arch::is_x86_feature_detected!("avx512f") {
                2
            } else {
                1
            }
        );
        for n in [0u64, 21, 32, 100] {
            let words: Vec<u64> = (1..=n).collect();
            for read in &loops {
                assert_eq!(read(&words), n * (n + 1) / 2, "{n} words");
            }
        }
    }
}
