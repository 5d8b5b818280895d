//! `companion bench llm`: prompt and generation speed of each LLM backend on the same GGUF file,
//! prompt and threads, greedy, next to this machine's memory-bandwidth bound: generating one
//! token reads every weight once, so tokens/s cannot exceed bandwidth / weight bytes.

use std::path::Path;
use std::time::Instant;

use anyhow::{Result, bail};
use clap::Args;
use companion_language::{
    GenerateOptions, Generation, LLM_ROLE, Message, TextGenerator, resolve_model,
};
use companion_models::ModelCache;

use super::median;

pub use companion_language::Backend;

#[derive(Args, Debug)]
pub struct LlmArgs {
    /// Chat model: a name or a GGUF file.
    #[arg(long, default_value = crate::process::DEFAULT_LLM)]
    llm_model: String,
    /// Backends to compare.
    #[arg(long, value_delimiter = ',', default_value = "llama.cpp,candle")]
    backends: Vec<Backend>,
    /// Compute threads (default: the backends' default, the physical cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Tokens to generate per run.
    #[arg(long, default_value_t = 100)]
    max_new_tokens: usize,
    #[arg(long, default_value_t = 3)]
    rounds: usize,
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
    let path = resolve_model(&args.llm_model, LLM_ROLE, &ModelCache::new(models_dir))?;
    let weight_bytes = bytes_read_per_token(&path)?;
    let threads = args
        .threads
        .unwrap_or_else(companion_language::compute_threads);
    let bandwidth = read_bandwidth(threads);
    let bound = bandwidth / weight_bytes as f64;
    println!(
        "memory read bandwidth ({threads} threads): {:.1} GB/s; {} reads {:.0} MB of weights a token → bound {:.1} tokens/s",
        bandwidth / 1e9,
        args.llm_model,
        weight_bytes as f64 / 1e6,
        bound
    );
    let messages = [
        Message::system("You are a helpful assistant for a busy office. Answer briefly."),
        Message::user(format!(
            "Here is a voicemail. Write a short summary, then list every task it asks for, one per line.\n\n{VOICEMAIL}"
        )),
    ];
    let options = GenerateOptions::max_new_tokens(args.max_new_tokens);
    println!(
        "backend\tload_ms\tprompt_tokens\tprompt_tok_s\tgenerated\tgen_tok_s\tof_bound\tfirst_call_ms\tlater_call_ms\tlater_reused_tokens"
    );
    for backend in &args.backends {
        let started = Instant::now();
        let generator = load_generator(*backend, &path, args.threads)?;
        let load_ms = started.elapsed().as_secs_f64() * 1000.0;
        let mut runs: Vec<Generation> = Vec::new();
        for _ in 0..args.rounds {
            runs.push(generator.chat(&messages, &options)?);
        }
        // Prompt speed from the calls that computed the whole prompt: a later llama.cpp call
        // reuses the KV cache of the same prompt and computes almost none of it.
        let prompt: Vec<f64> = runs
            .iter()
            .filter(|g| g.cached_prompt_tokens == 0)
            .map(Generation::prompt_tokens_per_sec)
            .collect();
        let generate: Vec<f64> = runs.iter().map(|g| g.generate_tokens_per_sec()).collect();
        let call_ms = |g: &Generation| g.prompt_ms + g.generate_ms;
        let gen_median = median(&generate);
        let reused: Vec<f64> = runs
            .iter()
            .skip(1)
            .map(|g| g.cached_prompt_tokens as f64)
            .collect();
        println!(
            "{backend}\t{load_ms:.0}\t{}\t{:.1}\t{}\t{:.1}\t{:.0}%\t{:.0}\t{:.0}\t{:.0}",
            runs[0].prompt_tokens,
            median(&prompt[if prompt.len() > 1 { 1.. } else { 0.. }]),
            runs[0].generated_tokens,
            gen_median,
            gen_median / bound * 100.0,
            call_ms(&runs[0]),
            median(&runs.iter().skip(1).map(call_ms).collect::<Vec<_>>()),
            median(&reused),
        );
    }
    Ok(())
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

/// Bytes per second `threads` threads read from a buffer far larger than the caches (best of
/// several passes).
pub fn read_bandwidth(threads: usize) -> f64 {
    const BYTES: usize = 1 << 30;
    let words = BYTES / 8;
    let buffer: Vec<u64> = (0..words as u64).collect();
    let threads = threads.max(1);
    let chunk = words.div_ceil(threads);
    let mut best = 0.0f64;
    for _ in 0..5 {
        let started = Instant::now();
        let total: u64 = std::thread::scope(|s| {
            let handles: Vec<_> = buffer
                .chunks(chunk)
                .map(|part| s.spawn(move || sum_words(part)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or(0))
                .fold(0u64, u64::wrapping_add)
        });
        std::hint::black_box(total);
        best = best.max(BYTES as f64 / started.elapsed().as_secs_f64());
    }
    best
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

    #[test]
    fn sums_every_word() {
        let words: Vec<u64> = (1..=21).collect();
        assert_eq!(sum_words(&words), 231);
    }
}
