//! The engine's Whisper against whisper.cpp on the same file and the same synthesized speech:
//! the logits of every decoder step agree to rounding, and so do the languages' probabilities.
//! Needs the real model (`companion models fetch whisper-base-q8_0`) and espeak-ng and sox.

use std::path::{Path, PathBuf};
use std::process::Command;

use companion_models::{ModelCache, resolve_asr_model};
use companion_whisper::{Whisper, WhisperFile, log_mel};
use whisper_rs::{WhisperContext, WhisperContextParameters};

const THREADS: usize = 2;
/// The largest total variation distance allowed between the two next-token distributions.
/// Rounding differs: the convolutions here multiply int8 activations where whisper.cpp's take
/// f16, attention here is f32 where whisper.cpp's keys and values are f16, and ggml's GELU
/// reads a table of f16 values. On this clip the two sides came within 0.03-0.06 of each other
/// at every step, as near as whisper.cpp's own f16 and Q8_0 files come (0.02-0.06).
const TOLERANCE: f64 = 0.1;

fn model() -> PathBuf {
    let name = std::env::var("COMPANION_TEST_ASR_MODEL").unwrap_or("whisper-base-q8_0".into());
    resolve_asr_model(&name, &ModelCache::default()).unwrap_or_else(|e| {
        panic!("{e}\nThese tests need the real model: run `companion models fetch {name}`.")
    })
}

/// `text` spoken by espeak-ng in `voice`, as 16 kHz mono samples.
fn speech(dir: &Path, voice: &str, text: &str) -> Vec<f32> {
    let raw = dir.join(format!("{voice}.wav"));
    let wav = dir.join(format!("{voice}-16k.wav"));
    let run = |cmd: &mut Command| {
        let status = cmd.status().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
        assert!(status.success(), "{cmd:?}: {status}");
    };
    run(Command::new("espeak-ng")
        .args(["-v", voice, "-w"])
        .arg(&raw)
        .arg(text));
    run(Command::new("sox")
        .arg(&raw)
        // No dither: the same samples on every run.
        .args(["-D", "-r", "16000", "-c", "1", "-b", "16"])
        .arg(&wav));
    let mut reader = hound::WavReader::open(&wav).unwrap();
    reader
        .samples::<i16>()
        .map(|s| s.unwrap() as f32 / 32768.0)
        .collect()
}

fn softmax(x: &[f32]) -> Vec<f64> {
    let max = x.iter().copied().fold(f32::MIN, f32::max);
    let e: Vec<f64> = x.iter().map(|v| ((v - max) as f64).exp()).collect();
    let sum: f64 = e.iter().sum();
    e.into_iter().map(|v| v / sum).collect()
}

/// The total variation distance of the two rows' distributions (half the summed absolute
/// differences of the probabilities: the most probability any set of tokens gains or loses),
/// and the largest absolute difference of the logits.
fn gap(a: &[f32], b: &[f32]) -> (f64, f32) {
    let (p, q) = (softmax(a), softmax(b));
    let tv = p.iter().zip(&q).map(|(x, y)| (x - y).abs()).sum::<f64>() / 2.0;
    let diff = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max);
    (tv, diff)
}

fn argmax(x: &[f32]) -> usize {
    (0..x.len()).max_by(|&i, &j| x[i].total_cmp(&x[j])).unwrap()
}

#[test]
fn logits_agree_with_whisper_cpp_step_by_step() {
    let path = model();
    let dir = tempfile::tempdir().unwrap();
    let samples = speech(
        dir.path(),
        "en-us",
        "Hi, this is Maria from the dental office. Please call me back tomorrow morning.",
    );

    let file = WhisperFile::open(&path).unwrap();
    let ours = Whisper::load(&file, THREADS).unwrap();
    let mel = log_mel(&samples, &ours.filters, ours.hparams.n_mels);
    let n_ctx = ours.hparams.n_audio_ctx;
    let encoded = ours.encode(&mel, 0, n_ctx).unwrap();
    let mut decoding = ours.start(&encoded);

    let ctx = WhisperContext::new_with_params(
        path.to_str().unwrap(),
        WhisperContextParameters::default(),
    )
    .unwrap();
    let mut state = ctx.create_state().unwrap();
    state.pcm_to_mel(&samples, THREADS).unwrap();
    state.encode(0, THREADS).unwrap();

    // The languages after the start token, as whisper.cpp's detection reads them.
    let sot = ctx.token_sot();
    state.decode(&[sot], 0, THREADS).unwrap();
    let theirs = state.get_logits().unwrap().to_vec();
    let mine = decoding.decode(&[sot as u32]).unwrap();
    let (tv, diff) = gap(&mine, &theirs);
    eprintln!("after <|startoftranscript|>: distance {tv:.4}, largest logit difference {diff:.3}");
    assert!(tv < TOLERANCE, "after the start token: distance {tv}");
    let english = ctx.token_lang(0) as usize;
    let langs = english..english + 99;
    assert_eq!(
        argmax(&mine[langs.clone()]),
        argmax(&theirs[langs.clone()]),
        "the most likely language"
    );

    // Then the prompt of a transcription, and greedy steps on
    // whisper.cpp's choices up to the end of the text.
    let prompt = [ctx.token_lang(0), ctx.token_transcribe(), ctx.token_not()];
    for (i, &t) in prompt.iter().enumerate() {
        state.decode(&[t], 1 + i, THREADS).unwrap();
    }
    let mut theirs = state.get_logits().unwrap().to_vec();
    let prompt: Vec<u32> = prompt.iter().map(|&t| t as u32).collect();
    let mut mine = decoding.decode(&prompt).unwrap();
    let mut text = Vec::new();
    for step in 0..24 {
        let (tv, diff) = gap(&mine, &theirs);
        let next = argmax(&theirs);
        eprintln!(
            "step {step}: distance {tv:.4}, largest logit difference {diff:.3}, token {next} ours {}",
            argmax(&mine)
        );
        assert!(tv < TOLERANCE, "step {step}: distance {tv}");
        if next == ctx.token_eot() as usize {
            break;
        }
        assert!(
            mine[next] >= mine[argmax(&mine)] - 0.2,
            "step {step}: whisper.cpp's choice {next} is not ours or a near tie"
        );
        text.extend(ours.vocab.get(next).cloned().unwrap_or_default());
        state.decode(&[next as i32], 4 + step, THREADS).unwrap();
        theirs = state.get_logits().unwrap().to_vec();
        mine = decoding.decode(&[next as u32]).unwrap();
    }
    let text = String::from_utf8_lossy(&text);
    eprintln!("decoded: {text}");
    assert!(text.to_lowercase().contains("maria"), "{text}");
}

#[test]
fn a_pass_over_several_sequences_gives_each_its_own_logits() {
    let dir = tempfile::tempdir().unwrap();
    let samples = speech(
        dir.path(),
        "de",
        "Guten Morgen, bitte rufen Sie mich zurück.",
    );
    let file = WhisperFile::open(&model()).unwrap();
    let ours = Whisper::load(&file, THREADS).unwrap();
    let mel = log_mel(&samples, &ours.filters, ours.hparams.n_mels);
    let encoded = ours.encode(&mel, 0, 256).unwrap();
    // Three sequences of different lengths: transcribing in German, in English, translating.
    let (sot, english, german, translate, transcribe) = (50258, 50259, 50261, 50358, 50359);
    let prompts: [&[u32]; 3] = [
        &[sot, german, transcribe],
        &[sot, english],
        &[sot, german, translate, 50363],
    ];
    let steps: [u32; 3] = [13, 400, 1000];

    let mut alone = Vec::new();
    for (prompt, &next) in prompts.iter().zip(&steps) {
        let mut d = ours.start(&encoded);
        d.decode(prompt).unwrap();
        alone.push(d.decode(&[next]).unwrap());
    }
    let mut seqs: Vec<_> = prompts
        .iter()
        .map(|p| {
            let mut d = ours.start(&encoded);
            d.decode(p).unwrap();
            d
        })
        .collect();
    let mut refs: Vec<_> = seqs.iter_mut().collect();
    let together = ours.decode_each(&mut refs, &steps).unwrap();
    assert_eq!(together.len(), 3);
    for (i, (a, b)) in alone.iter().zip(&together).enumerate() {
        let (_, diff) = gap(a, b);
        assert!(diff < 1e-3, "sequence {i}: logits differ by {diff}");
    }
    assert_eq!(seqs.iter().map(|s| s.len()).collect::<Vec<_>>(), [4, 3, 5]);
    let mut refs: Vec<_> = seqs.iter_mut().collect();
    assert!(
        ours.decode_each(&mut refs, &[1, 2]).is_err(),
        "a token per sequence"
    );
}

#[test]
fn bad_requests_are_errors() {
    let file = WhisperFile::open(&model()).unwrap();
    let ours = Whisper::load(&file, THREADS).unwrap();
    let mel = log_mel(&[0.0; 16_000], &ours.filters, ours.hparams.n_mels);
    assert!(ours.encode(&mel, 0, 0).is_err());
    assert!(ours.encode(&mel, 0, ours.hparams.n_audio_ctx + 1).is_err());
    let encoded = ours.encode(&mel, 0, 64).unwrap();
    let mut decoding = ours.start(&encoded);
    assert!(decoding.decode(&[]).is_err());
    assert!(decoding.decode(&[ours.hparams.n_vocab as u32]).is_err());
    assert!(decoding.is_empty(), "a refused call decodes nothing");
    let too_many = vec![0u32; ours.hparams.n_text_ctx + 1];
    assert!(decoding.decode(&too_many).is_err());

    let mut bytes = std::fs::read(model()).unwrap();
    bytes.truncate(bytes.len() / 2);
    assert!(WhisperFile::parse(bytes).is_err(), "a cut file is refused");
    assert!(WhisperFile::parse(b"GGUF....".to_vec()).is_err());
}
