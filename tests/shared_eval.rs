//! Runs against the third-party evaluation data in `../shared/eval` when it is present. Ignored
//! by default (the data is not part of the repository):
//! `cargo test -p companion-cli --test shared_eval -- --ignored`.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use support::*;

fn shared_eval() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/eval");
    std::env::var_os("COMPANION_SHARED_EVAL").map_or(dir, PathBuf::from)
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else if !matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("tsv" | "py" | "md" | "txt" | "json")
        ) {
            out.push(path);
        }
    }
    out.sort();
    out
}

/// Every fuzz crasher, illegal stream, truncated or degenerate file ends in a clear error or a
/// result, in bounded time, with no panic.
#[test]
#[ignore = "needs ../shared/eval"]
fn corrupt_set_ends_in_errors_or_results() {
    let files = files_under(&shared_eval().join("corrupt"));
    assert!(files.len() > 50, "corrupt set not found");
    let paths: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    let started = Instant::now();
    let (lines, out) = transcribe(&paths, &["--beam-size", "1"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(out.status.code() == Some(0) || out.status.code() == Some(1));
    assert!(
        started.elapsed() < Duration::from_secs(900),
        "took {:?}",
        started.elapsed()
    );
    for (line, path) in lines.iter().zip(&files) {
        assert_eq!(line["file"], path.to_str().unwrap());
        if let Some(error) = line.get("error") {
            let kind = error["kind"].as_str().unwrap();
            assert!(
                [
                    "unsupported_format",
                    "corrupt_audio",
                    "empty_audio",
                    "too_long",
                    "too_large"
                ]
                .contains(&kind),
                "{line}"
            );
        } else {
            assert!(line["speech"].is_boolean(), "{line}");
        }
        eprintln!(
            "{}\t{}",
            path.strip_prefix(shared_eval()).unwrap_or(path).display(),
            line.get("error").map_or_else(
                || format!("speech={} {:?}", line["speech"], line["transcript"]["text"]),
                |e| format!("{}: {}", e["kind"], e["message"])
            )
        );
    }
    // Silence is not speech.
    let silence = lines
        .iter()
        .find(|l| {
            l["file"]
                .as_str()
                .unwrap()
                .ends_with("valid_60s_digital_silence_8k.wav")
        })
        .unwrap();
    assert_eq!(silence["speech"], false, "{silence}");
}

/// The PBX-format prompts (Asterisk GSM sound files) decode and transcribe.
#[test]
#[ignore = "needs ../shared/eval"]
fn asterisk_gsm_prompts_transcribe() {
    let dir = shared_eval().join("pbx_formats/asterisk_core_gsm/en");
    let files: Vec<PathBuf> = ["vm-intro.gsm", "demo-thanks.gsm", "transfer.gsm"]
        .iter()
        .map(|f| dir.join(f))
        .collect();
    let paths: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    let (lines, out) = transcribe(&paths, &["--beam-size", "1"]);
    assert!(out.status.success());
    let expect = ["message", "goodbye", "hold"];
    for (line, word) in lines.iter().zip(expect) {
        assert!(transcript(line).contains(word), "{line}");
    }
}
