//! Speed measurements; run in release:
//!
//! ```text
//! cargo test --release -p companion-language --test bench -- --ignored --nocapture
//! ```
//!
//! They print numbers and assert nothing about time.

mod common;

use std::time::Instant;

use companion_language::{
    Embedder, GenerateOptions, Generation, LlamaCpp, LlamaOptions, Llm, LoadOptions, Message,
    TextGenerator, compute_threads, configure_threads,
};

const THREADS: usize = 2;

/// A voicemail summarisation request of about 125 tokens (Qwen2.5 tokenizer).
fn voicemail_prompt() -> Vec<Message> {
    vec![
        Message::system(
            "You summarise voicemails for a busy person. Reply with one short sentence.",
        ),
        Message::user(
            "Voicemail transcript: Hi, this is Martha from Greenleaf Dental calling for \
             Daniel. I'm calling to confirm your cleaning appointment on Thursday the twelfth \
             at half past two. If that time no longer works for you, please call us back at \
             five five five, zero one three four, before Wednesday noon so we can offer the \
             slot to someone else. Also, your insurance card on file has expired, so please \
             bring the new one with you. Thanks, and have a great day!",
        ),
    ]
}

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// User + system CPU seconds of this process so far.
fn cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which is in parentheses).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 here.
    (ticks(11) + ticks(12)) / 100.0
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn report(label: &str, g: &Generation, cpu: f64) {
    let wall = (g.prompt_ms + g.generate_ms) / 1000.0;
    println!(
        "  {label:<7} prompt {:>4} tok in {:>7.0} ms = {:>6.1} tok/s | generated {:>3} tok in {:>7.0} ms = {:>5.1} tok/s ({:?}) | {:.2} cores busy",
        g.computed_prompt_tokens(),
        g.prompt_ms,
        g.prompt_tokens_per_sec(),
        g.generated_tokens,
        g.generate_ms,
        g.generate_tokens_per_sec(),
        g.stop,
        cpu / wall
    );
}

fn bench_llm(name: &str) {
    configure_threads(Some(THREADS));
    let path = common::llm_path(name);
    let before = rss_mib();
    let started = Instant::now();
    let llm = Llm::load(&path, Some(THREADS)).unwrap();
    let load_ms = started.elapsed().as_secs_f64() * 1000.0;
    println!(
        "\n{name}: {} ({}), {:.0} MiB file, threads {}, load {load_ms:.0} ms, RSS +{:.0} MiB, load average {}",
        llm.info().name.as_deref().unwrap_or("?"),
        llm.info().architecture,
        llm.info().file_size as f64 / 1048576.0,
        compute_threads(),
        rss_mib() - before,
        load_average(),
    );
    let messages = voicemail_prompt();
    let options = GenerateOptions::max_new_tokens(64);
    let mut texts = Vec::new();
    for run in ["first", "second", "third"] {
        let cpu = cpu_secs();
        let g = llm.chat(&messages, &options).unwrap();
        report(run, &g, cpu_secs() - cpu);
        texts.push(g.text);
    }
    println!("  answer: {:?}", texts[0]);
    println!("  RSS after generating: {:.0} MiB", rss_mib());
    assert!(texts.windows(2).all(|w| w[0] == w[1]), "greedy runs differ");

    // The per-job alternative to sharing one model behind a lock: loading
    // another copy.
    let started = Instant::now();
    let second = Llm::load(&path, Some(THREADS)).unwrap();
    println!(
        "  loading a second copy: {:.0} ms, RSS now {:.0} MiB",
        started.elapsed().as_secs_f64() * 1000.0,
        rss_mib()
    );
    drop(second);

    // Two jobs at once on the shared model vs one after the other.
    let llm = std::sync::Arc::new(llm);
    let started = Instant::now();
    for _ in 0..2 {
        llm.chat(&messages, &options).unwrap();
    }
    let sequential = started.elapsed().as_secs_f64() * 1000.0;
    let started = Instant::now();
    let handles: Vec<_> = (0..2)
        .map(|_| {
            let llm = llm.clone();
            let messages = messages.clone();
            let options = options.clone();
            std::thread::spawn(move || llm.chat(&messages, &options).unwrap())
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let concurrent = started.elapsed().as_secs_f64() * 1000.0;
    println!("  2 jobs sequential {sequential:.0} ms, 2 jobs from 2 threads {concurrent:.0} ms");
}

#[test]
#[ignore = "benchmark: run in release with --ignored --nocapture"]
fn bench_qwen25_05b() {
    bench_llm("qwen2.5-0.5b");
}

#[test]
#[ignore = "benchmark: run in release with --ignored --nocapture"]
fn bench_qwen25_15b() {
    bench_llm("qwen2.5-1.5b");
}

#[test]
#[ignore = "benchmark: run in release with --ignored --nocapture"]
fn bench_smollm2_135m() {
    bench_llm("smollm2-135m");
}

/// The same model with and without converting Q4_1/Q5_0/Q5_1 matrices to
/// Q8_0, runs interleaved so that other load on the machine hits both alike.
fn bench_requantize(name: &str) {
    configure_threads(Some(THREADS));
    let path = common::llm_path(name);
    let mut models = Vec::new();
    for requantize in [false, true] {
        let started = Instant::now();
        let llm = Llm::load_with(
            &path,
            &LoadOptions {
                threads: Some(THREADS),
                requantize,
            },
        )
        .unwrap();
        println!(
            "\n{name} requantize={requantize}: {} tensors converted, load {:.0} ms, load average {}",
            llm.info().requantized_tensors,
            started.elapsed().as_secs_f64() * 1000.0,
            load_average()
        );
        models.push((requantize, llm));
    }
    let messages = voicemail_prompt();
    let options = GenerateOptions::max_new_tokens(32);
    let mut answers = vec![String::new(); 2];
    for round in 0..3 {
        for (i, (requantize, llm)) in models.iter().enumerate() {
            let cpu = cpu_secs();
            let g = llm.chat(&messages, &options).unwrap();
            let label = if *requantize { "q8_0" } else { "orig" };
            report(&format!("{label} #{round}"), &g, cpu_secs() - cpu);
            answers[i] = g.text;
        }
    }
    println!(
        "  original:    {:?}\n  requantized: {:?}",
        answers[0], answers[1]
    );
}

#[test]
#[ignore = "benchmark: run in release with --ignored --nocapture"]
fn bench_requantize_qwen25_05b() {
    bench_requantize("qwen2.5-0.5b");
}

#[test]
#[ignore = "benchmark: run in release with --ignored --nocapture"]
fn bench_requantize_smollm2_135m() {
    bench_requantize("smollm2-135m");
}

#[test]
#[ignore = "benchmark: run in release with --ignored --nocapture"]
fn bench_embeddings() {
    configure_threads(Some(THREADS));
    let started = Instant::now();
    let e = Embedder::load(&common::embedding_dir("all-minilm-l6-v2")).unwrap();
    println!(
        "\nall-minilm-l6-v2: load {:.0} ms",
        started.elapsed().as_secs_f64() * 1000.0
    );
    let sentence = "Hi, this is Martha from Greenleaf Dental, please call me back about your appointment on Thursday.";
    let texts: Vec<&str> = std::iter::repeat_n(sentence, 64).collect();
    e.embed(&texts[..2]).unwrap();
    let started = Instant::now();
    e.embed(&texts).unwrap();
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    println!(
        "  64 sentences in {ms:.0} ms = {:.1} sentences/s",
        64.0 * 1000.0 / ms
    );
}

/// A request that keeps a model writing for at least 100 tokens.
fn long_answer_prompt(voicemail: &str) -> Vec<Message> {
    vec![
        Message::system(
            "You help a busy office worker with their voicemail. For each message, write a \
             detailed reply e-mail to the caller: thank them, restate every detail of their \
             message, answer each of their questions and propose next steps. Write at least \
             three paragraphs.",
        ),
        Message::user(format!("Voicemail transcript: {voicemail}")),
    ]
}

const DENTIST: &str = "Hi, this is Martha from Greenleaf Dental calling for Daniel. I'm calling \
    to confirm your cleaning appointment on Thursday the twelfth at half past two. If that time \
    no longer works for you, please call us back at five five five, zero one three four, before \
    Wednesday noon. Also, your insurance card on file has expired, so please bring the new one.";
const GARAGE: &str = "Hey, it's Tom from Riverside Garage. Your car passed the inspection but \
    the front brake pads are nearly worn out. We can replace them tomorrow morning for about \
    two hundred dollars, or you can pick the car up today after four. Let me know what you'd \
    prefer.";

/// candle and llama.cpp on the same GGUF, prompt and threads, greedy, 100 new tokens; then
/// llama.cpp's prompt cache: the same prompt again, and another voicemail with the same
/// instructions; then two calls at once against one after the other.
fn bench_backends(name: &str) {
    configure_threads(Some(THREADS));
    let path = common::llm_path(name);
    let options = GenerateOptions::max_new_tokens(100);
    let messages = long_answer_prompt(DENTIST);
    println!(
        "\n{name}: threads {THREADS}, 100 new tokens, load average {}",
        load_average()
    );

    let candle = Llm::load(&path, Some(THREADS)).unwrap();
    let no_reuse = LlamaCpp::load_with(
        &path,
        &LlamaOptions {
            threads: Some(THREADS),
            prefix_reuse: false,
            ..LlamaOptions::default()
        },
    )
    .unwrap();
    let generators: [(&str, &dyn TextGenerator); 2] = [("candle", &candle), ("llama", &no_reuse)];
    for (_, g) in &generators {
        g.warm_up().unwrap();
    }
    // Interleaved rounds, so other load on the machine hits both alike.
    let mut answers = [String::new(), String::new()];
    for round in 0..3 {
        for (i, (label, g)) in generators.iter().enumerate() {
            let cpu = cpu_secs();
            let out = g.chat(&messages, &options).unwrap();
            report(&format!("{label} #{round}"), &out, cpu_secs() - cpu);
            answers[i] = out.text;
        }
    }
    println!("  candle: {:?}\n  llama:  {:?}", answers[0], answers[1]);
    drop(candle);
    drop(no_reuse);

    let llama = std::sync::Arc::new(LlamaCpp::load(&path, Some(THREADS)).unwrap());
    llama.warm_up().unwrap();
    for (label, m) in [
        ("cold", &messages),
        ("same", &messages),
        ("other", &long_answer_prompt(GARAGE)),
    ] {
        let cpu = cpu_secs();
        let g = llama.chat(m, &options).unwrap();
        report(label, &g, cpu_secs() - cpu);
        println!(
            "          {} of {} prompt tokens reused; call {:.0} ms",
            g.cached_prompt_tokens,
            g.prompt_tokens,
            g.prompt_ms + g.generate_ms
        );
    }

    let started = Instant::now();
    for m in [&messages, &long_answer_prompt(GARAGE)] {
        llama.chat(m, &options).unwrap();
    }
    let sequential = started.elapsed().as_secs_f64() * 1000.0;
    let started = Instant::now();
    let handles: Vec<_> = [DENTIST, GARAGE]
        .into_iter()
        .map(|v| {
            let llama = llama.clone();
            let options = options.clone();
            std::thread::spawn(move || llama.chat(&long_answer_prompt(v), &options).unwrap())
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let concurrent = started.elapsed().as_secs_f64() * 1000.0;
    println!(
        "  llama.cpp: 2 calls one after the other {sequential:.0} ms, from 2 threads at once {concurrent:.0} ms"
    );
}

#[test]
#[ignore = "benchmark: run in release with --ignored --nocapture"]
fn bench_backends_qwen25_05b() {
    bench_backends("qwen2.5-0.5b");
}

#[test]
#[ignore = "benchmark: run in release with --ignored --nocapture"]
fn bench_backends_smollm2_135m() {
    bench_backends("smollm2-135m");
}
