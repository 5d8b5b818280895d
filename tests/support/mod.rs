//! Fixtures for the end-to-end tests: speech synthesized with espeak-ng and encoded with sox and
//! ffmpeg into every format a PBX writes, plus helpers to run the `companion` binary.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use serde_json::Value;

/// A sentence per language, with words the transcript must contain.
pub struct Phrase {
    pub lang: &'static str,
    /// espeak-ng voice and variant (these read most clearly through telephone codecs).
    pub voice: &'static str,
    pub text: &'static str,
    pub keywords: &'static [&'static str],
}

pub const EN: Phrase = Phrase {
    lang: "en",
    voice: "en+f2",
    text: "Hello, this is Maria from the dental office. Please call me back about your appointment tomorrow morning. Thank you.",
    keywords: &["call", "appointment", "tomorrow", "thank"],
};
pub const ES: Phrase = Phrase {
    lang: "es",
    voice: "es+f2",
    text: "Hola, soy María de la clínica dental. Por favor, llámeme mañana por la mañana para confirmar su cita. Muchas gracias.",
    keywords: &["hola", "mañana", "cita", "gracias"],
};
pub const DE: Phrase = Phrase {
    lang: "de",
    voice: "de+f2",
    text: "Guten Tag, hier ist Thomas von der Zahnarztpraxis. Bitte rufen Sie mich morgen zurück wegen Ihres Termins. Vielen Dank.",
    keywords: &["guten", "morgen", "termin", "dank"],
};
pub const FR: Phrase = Phrase {
    lang: "fr",
    voice: "fr-be",
    text: "Bonjour, je vous appelle pour le rendez-vous de demain. Merci de me rappeler.",
    keywords: &["bonjour", "rendez-vous", "demain", "merci"],
};

/// A scratch directory kept for the whole test binary (fixtures are shared between tests).
pub fn workdir() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("temp dir"))
        .path()
}

/// Runs an external tool; a missing tool fails the test with what to install.
pub fn tool(program: &str, args: &[&str]) {
    let out = Command::new(program).args(args).output().unwrap_or_else(|e| {
        panic!("{program} is needed by the end-to-end tests ({e}); install it: apt-get install espeak-ng sox libsox-fmt-all ffmpeg")
    });
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Speech for a phrase as a 16-bit WAV at espeak-ng's native rate (22.05 kHz).
pub fn speech_wav(phrase: &Phrase) -> PathBuf {
    speak(
        &format!("{}_speech.wav", phrase.lang),
        phrase.voice,
        phrase.text,
    )
}

/// Speech for any text and espeak-ng voice as a 16-bit WAV named `name` (kept for the run).
pub fn speak(name: &str, voice: &str, text: &str) -> PathBuf {
    // Tests of one binary run in parallel and share fixtures: one writer at a time.
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let out = workdir().join(name);
    if !out.exists() {
        let tmp = out.with_extension("tmp.wav");
        let args = [
            "-v",
            voice,
            "-s",
            "125",
            "-g",
            "2",
            "-w",
            tmp.to_str().unwrap(),
            text,
        ];
        tool("espeak-ng", &args);
        std::fs::rename(&tmp, &out).unwrap();
    }
    out
}

/// Runs `companion` with arguments and returns (stdout, stderr, exit code) as text.
pub fn companion_text(args: &[&str]) -> (String, String, Option<i32>) {
    let out = companion(args);
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.status.code(),
    )
}

/// Encodes `src` with sox (extra args go before the output name).
pub fn sox(src: &Path, name: &str, args: &[&str]) -> PathBuf {
    let out = workdir().join(name);
    // -D: no dither, so fixtures are the same bytes on every run.
    let mut all = vec!["-D", src.to_str().unwrap()];
    all.extend_from_slice(args);
    all.push(out.to_str().unwrap());
    tool("sox", &all);
    out
}

/// Encodes `src` with ffmpeg (extra args are output options).
pub fn ffmpeg(src: &Path, name: &str, args: &[&str]) -> PathBuf {
    let out = workdir().join(name);
    let mut all = vec![
        "-nostdin",
        "-loglevel",
        "error",
        "-y",
        "-i",
        src.to_str().unwrap(),
    ];
    all.extend_from_slice(args);
    all.push(out.to_str().unwrap());
    tool("ffmpeg", &all);
    out
}

/// Writes bytes to a fixture file.
pub fn file(name: &str, bytes: &[u8]) -> PathBuf {
    let out = workdir().join(name);
    std::fs::write(&out, bytes).unwrap();
    out
}

/// The model the tests run: `COMPANION_TEST_ASR_MODEL`, else the default multilingual one.
pub fn asr_model() -> String {
    std::env::var("COMPANION_TEST_ASR_MODEL").unwrap_or_else(|_| "whisper-base-q8_0".into())
}

/// Runs `companion` with the given arguments and a store in the scratch directory. One run at
/// a time: whisper.cpp's worker threads spin while they wait, so runs that share the cores
/// slow each other down many times over.
pub fn companion(args: &[&str]) -> Output {
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let db = workdir().join("companion.db");
    Command::new(env!("CARGO_BIN_EXE_companion"))
        .args(args)
        .env("COMPANION_DB", &db)
        .env("COMPANION_THREADS", "2")
        .env_remove("COMPANION_FORMAT")
        .output()
        .expect("run companion")
}

/// Runs `companion transcribe --format json` (the speech stages) on files and parses one JSON
/// object per file.
pub fn transcribe(files: &[&Path], extra: &[&str]) -> (Vec<Value>, Output) {
    run_json("transcribe", files, extra)
}

/// Runs `companion process --format json` (speech, then the language stages) on files.
pub fn process(files: &[&Path], extra: &[&str]) -> (Vec<Value>, Output) {
    run_json("process", files, extra)
}

fn run_json(command: &str, files: &[&Path], extra: &[&str]) -> (Vec<Value>, Output) {
    let model = asr_model();
    let mut args = vec![command, "--format", "json", "--asr-model", &model];
    args.extend_from_slice(extra);
    let names: Vec<&str> = files.iter().map(|f| f.to_str().unwrap()).collect();
    args.extend_from_slice(&names);
    let out = companion(&args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert_eq!(
        lines.len(),
        files.len(),
        "one line per file expected; stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (lines, out)
}

/// Lower-cased transcript text of a result line.
pub fn transcript(line: &Value) -> String {
    line["transcript"]["text"]
        .as_str()
        .unwrap_or_else(|| panic!("no transcript in {line}"))
        .to_lowercase()
}

/// Asserts the transcript holds most of the phrase's key words (synthetic speech and telephone
/// codecs may cost a word, not the message).
pub fn assert_heard(line: &Value, phrase: &Phrase) {
    let text = transcript(line);
    let found: Vec<&&str> = phrase
        .keywords
        .iter()
        .filter(|k| text.contains(**k))
        .collect();
    assert!(
        found.len() * 2 >= phrase.keywords.len(),
        "{}: expected most of {:?} in {text:?} (found {found:?})",
        line["file"],
        phrase.keywords
    );
}

/// Runs `companion transcribe` without expecting a line per file (for runs refused at setup).
pub fn transcribe_raw(files: &[&Path], extra: &[&str]) -> (String, Output) {
    let model = asr_model();
    let mut args = vec!["transcribe", "--asr-model", &model];
    args.extend_from_slice(extra);
    args.extend(files.iter().map(|f| f.to_str().unwrap()));
    let out = companion(&args);
    (String::from_utf8_lossy(&out.stdout).into_owned(), out)
}
