//! `companion bench whisper`: the forward pass of the engine's Whisper (companion-whisper)
//! against whisper.cpp's, in one process, on the same GGML file and the same synthesized
//! 30 s voicemail, alternating round by round: the encoder over windows fitted to some seconds
//! of audio, and greedy decoder steps (one token each, after the transcription prompt, the
//! tokens whisper.cpp picks), then the engine's step over five sequences at once (a step of
//! beam search). Medians of the rounds and their ratio.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use companion_audio::{ChannelMode, DecodeOptions, decode_bytes, read_file, to_16k};
use companion_models::{ModelCache, resolve_asr_model};
use companion_speech::{SpeechModel, fit_encoder};
use companion_whisper::{Whisper, WhisperFile, log_mel};

use super::{WorkDir, median, synth};

#[derive(Args, Debug)]
pub struct WhisperArgs {
    /// Whisper model (name or GGML file).
    #[arg(long, default_value = "whisper-base-q8_0")]
    model: String,
    #[arg(long, default_value_t = 2)]
    threads: usize,
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Encoder windows, in seconds of audio (50 positions a second, at most 30).
    #[arg(long, value_delimiter = ',', default_value = "5,10,26,30")]
    seconds: Vec<f64>,
    /// Decoder steps timed, after the prompt, over the longest window.
    #[arg(long, default_value_t = 24)]
    steps: usize,
    #[command(flatten)]
    work: WorkDir,
}

/// Sequences of the batched step (whisper.cpp's and faster-whisper's default beam size).
const BEAMS: usize = 5;

fn millis(started: Instant) -> f64 {
    started.elapsed().as_secs_f64() * 1000.0
}

pub fn run(args: WhisperArgs, models_dir: &Path) -> Result<()> {
    if args.rounds == 0 || args.threads == 0 || args.steps == 0 {
        bail!("--rounds, --threads and --steps must be at least 1");
    }
    if let Some(bad) = args.seconds.iter().find(|&&s| !(s > 0.0 && s <= 30.0)) {
        bail!("--seconds: {bad} is not in (0, 30]");
    }
    let path = resolve_asr_model(&args.model, &ModelCache::new(models_dir))?;
    let clips = synth::voicemails(&args.work.path().join("synth"))?;
    let clip = clips
        .iter()
        .find(|c| c.path.ends_with("vm_30s_16k.wav"))
        .context("the synthesized 30 s voicemail is missing")?;
    let opts = DecodeOptions::default();
    let bytes = read_file(&clip.path, opts.max_bytes)?;
    let audio = decode_bytes(bytes, Some("wav"), &opts)?;
    let samples = to_16k(audio, ChannelMode::Mix)?.remove(0);

    let file = WhisperFile::open(&path)?;
    let ours = Whisper::load(&file, args.threads)?;
    let mel = log_mel(&samples, &ours.filters, ours.hparams.n_mels);
    let theirs = SpeechModel::load(&path)?;
    let ctx = theirs.context();
    let mut state = ctx.create_state()?;
    println!(
        "# {} on {} ({:.1} s), {} threads, medians of {} rounds",
        args.model,
        clip.path.display(),
        samples.len() as f64 / 16_000.0,
        args.threads,
        args.rounds
    );
    println!("pass\tcompanion_ms\twhisper_cpp_ms\tratio");
    let mut windows: Vec<usize> = args
        .seconds
        .iter()
        .map(|s| ((s * 50.0).round() as usize).clamp(1, ours.hparams.n_audio_ctx))
        .collect();
    windows.sort_unstable();
    windows.dedup();
    let report = |pass: &str, ours: &[f64], theirs: &[f64]| {
        let (a, b) = (median(ours), median(theirs));
        println!("{pass}\t{a:.2}\t{b:.2}\t{:.2}", a / b);
    };
    for &n_ctx in &windows {
        let head = &samples[..samples.len().min(n_ctx * 320)];
        fit_encoder(&mut state, head, n_ctx as i32, args.threads as u32)?;
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for _ in 0..args.rounds {
            let started = Instant::now();
            std::hint::black_box(ours.encode(&mel, 0, n_ctx)?);
            a.push(millis(started));
            let started = Instant::now();
            state.encode(0, args.threads)?;
            b.push(millis(started));
        }
        report(&format!("encoder, {:.1} s", n_ctx as f64 / 50.0), &a, &b);
    }

    // Decoder steps over the longest window, on whisper.cpp's greedy choices.
    let n_ctx = *windows.last().expect("at least one window");
    let encoded = ours.encode(&mel, 0, n_ctx)?;
    fit_encoder(&mut state, &samples, n_ctx as i32, args.threads as u32)?;
    state.encode(0, args.threads)?;
    let prompt = [
        ctx.token_sot(),
        ctx.token_lang(0),
        ctx.token_transcribe(),
        ctx.token_not(),
    ];
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..args.rounds {
        let mut decoding = ours.start(&encoded);
        let ids: Vec<u32> = prompt.iter().map(|&t| t as u32).collect();
        decoding.decode(&ids)?;
        for (i, &t) in prompt.iter().enumerate() {
            state.decode(&[t], i, args.threads)?;
        }
        for step in 0..args.steps {
            let logits = state.get_logits()?;
            let next = (0..logits.len())
                .max_by(|&i, &j| logits[i].total_cmp(&logits[j]))
                .unwrap_or(0);
            let started = Instant::now();
            std::hint::black_box(decoding.decode(&[next as u32])?);
            a.push(millis(started));
            let started = Instant::now();
            state.decode(&[next as i32], prompt.len() + step, args.threads)?;
            b.push(millis(started));
        }
    }
    report(
        &format!("decoder step, {:.1} s of audio", n_ctx as f64 / 50.0),
        &a,
        &b,
    );

    // A step of beam search: one token for each of five sequences in one pass. whisper.cpp
    // batches its beams inside `whisper_full` only, so it has no column here.
    let ids: Vec<u32> = prompt.iter().map(|&t| t as u32).collect();
    let mut times = Vec::new();
    for _ in 0..args.rounds {
        let mut seqs: Vec<_> = (0..BEAMS).map(|_| ours.start(&encoded)).collect();
        for s in &mut seqs {
            s.decode(&ids)?;
        }
        for step in 0..args.steps {
            let tokens: Vec<u32> = (0..BEAMS as u32)
                .map(|b| 220 + 7 * b + step as u32)
                .collect();
            let mut refs: Vec<_> = seqs.iter_mut().collect();
            let started = Instant::now();
            std::hint::black_box(ours.decode_each(&mut refs, &tokens)?);
            times.push(millis(started));
        }
    }
    println!(
        "decoder step, {BEAMS} sequences in one pass\t{:.2}\t-\t-",
        median(&times)
    );
    Ok(())
}
