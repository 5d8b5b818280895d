//! whisper.cpp (whisper-rs) and llama.cpp (llama-cpp-2) in one process.
//!
//! Both build ggml and link it statically; the workspace pins versions whose ggml is the same,
//! so the one copy the linker keeps serves both (see `src/llama.rs`). Each order of first use
//! runs in a process of its own (ggml initialises its backend registry on first use): the test
//! runs this binary again for the ignored `whisper_first` and `llama_first` tests, and checks
//! that both engines give the same results in either order.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use companion_language::{GenerateOptions, LlamaCpp, Message, StopReason};
use companion_models::{ModelCache, resolve_asr_model};
use companion_speech::{SpeechModel, TranscribeOptions};

const SPOKEN: &str = "Hello, this is Maria from the dental office. Please call me back about \
                      your appointment tomorrow morning. Thank you.";
const QUESTION: &str = "What is the capital of France? Answer in one word.";

/// 16 kHz mono speech synthesized with espeak-ng and resampled with sox.
fn speech() -> Vec<f32> {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    let dir = DIR.get_or_init(|| tempfile::tempdir().unwrap()).path();
    let raw = dir.join("speech.wav");
    let wav = dir.join("speech16k.wav");
    run(
        "espeak-ng",
        &["-v", "en+f2", "-s", "125", "-w", path(&raw), SPOKEN],
    );
    run(
        "sox",
        &["-D", path(&raw), "-r", "16000", "-c", "1", path(&wav)],
    );
    let mut reader = hound::WavReader::open(&wav).unwrap();
    reader
        .samples::<i16>()
        .map(|s| f32::from(s.unwrap()) / 32768.0)
        .collect()
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn run(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("{program} is needed by this test ({e}): apt-get install espeak-ng sox")
        });
    assert!(
        out.status.success(),
        "{program}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn whisper_path() -> PathBuf {
    resolve_asr_model("whisper-base-q8_0", &ModelCache::default())
        .unwrap_or_else(|e| panic!("{e}\nrun `companion models fetch whisper-base-q8_0`"))
}

fn transcribe(model: &SpeechModel, samples: &[f32]) -> String {
    let options = TranscribeOptions {
        threads: 2,
        ..TranscribeOptions::default()
    };
    let heard = model.recognize(samples, &options).unwrap();
    let text: Vec<&str> = heard.segments.iter().map(|s| s.text.trim()).collect();
    let text = text.join(" ");
    let lower = text.to_lowercase();
    for word in ["appointment", "tomorrow", "call"] {
        assert!(lower.contains(word), "{word:?} not in {text:?}");
    }
    text
}

fn answer(llm: &LlamaCpp) -> String {
    let g = llm
        .chat(
            &[Message::user(QUESTION)],
            &GenerateOptions::max_new_tokens(16),
        )
        .unwrap();
    assert_eq!(g.stop, StopReason::EndOfTurn, "{g:?}");
    assert!(g.text.contains("Paris"), "{:?}", g.text);
    g.text
}

/// What the linked ggml's CPU backend reports, asked through each engine's own entry point:
/// one ggml serves both, so both see the same CPU features.
fn system_info() {
    // SAFETY: returns a pointer to a static NUL-terminated string.
    let llama = unsafe { std::ffi::CStr::from_ptr(llama_cpp_sys_2::llama_print_system_info()) };
    let llama = llama.to_string_lossy();
    let whisper = whisper_rs::print_system_info();
    println!("llama.cpp system info: {}", llama.trim());
    println!("whisper.cpp system info: {}", whisper.trim());
    let cpu = |info: &str| info.find("CPU :").map(|at| info[at..].trim().to_string());
    assert_eq!(cpu(&llama), cpu(whisper));
}

#[test]
#[ignore = "run in a process of its own by `both_orders_in_one_process`"]
fn whisper_first() {
    let samples = speech();
    let whisper = SpeechModel::load(&whisper_path()).unwrap();
    let first = transcribe(&whisper, &samples);
    let llm = LlamaCpp::load(&common::llm_path("qwen2.5-0.5b"), Some(2)).unwrap();
    let text = answer(&llm);
    assert_eq!(transcribe(&whisper, &samples), first);
    system_info();
    println!("TRANSCRIPT\t{first}\nANSWER\t{text}");
}

#[test]
#[ignore = "run in a process of its own by `both_orders_in_one_process`"]
fn llama_first() {
    let samples = speech();
    let llm = LlamaCpp::load(&common::llm_path("qwen2.5-0.5b"), Some(2)).unwrap();
    let text = answer(&llm);
    let whisper = SpeechModel::load(&whisper_path()).unwrap();
    let heard = transcribe(&whisper, &samples);
    assert_eq!(answer(&llm), text);
    system_info();
    println!("TRANSCRIPT\t{heard}\nANSWER\t{text}");
}

/// Runs one ignored test of this binary in a new process and returns its output lines.
fn in_own_process(test: &str) -> String {
    let exe = std::env::current_exe().unwrap();
    let out = Command::new(exe)
        .args([
            test,
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{test} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("1 passed"), "{test} did not run:\n{stdout}");
    stdout
}

fn field<'a>(output: &'a str, name: &str) -> &'a str {
    output
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix('\t'))
        .unwrap_or_else(|| panic!("no {name} in\n{output}"))
}

#[test]
fn both_orders_in_one_process() {
    let a = in_own_process("whisper_first");
    let b = in_own_process("llama_first");
    println!("{a}\n{b}");
    assert_eq!(field(&a, "TRANSCRIPT"), field(&b, "TRANSCRIPT"));
    assert_eq!(field(&a, "ANSWER"), field(&b, "ANSWER"));
}
