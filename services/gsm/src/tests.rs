//! Crate-level tests: API behaviour, robustness against arbitrary input, and
//! bit-exactness against the reference libgsm decoder as shipped in `sox`.
//!
//! The reference tests need `sox` (with GSM support) and `espeak-ng` on the
//! PATH; they fail, with a message saying so, when either is missing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use crate::*;

// ---------------------------------------------------------------- helpers

/// xorshift64*: a tiny deterministic PRNG, so the tests need no `rand`.
struct XorShift(u64);

impl XorShift {
    fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let bytes = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// Random standard frames, each with a valid signature.
fn random_frames(rng: &mut XorShift, count: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; count * FRAME_BYTES];
    rng.fill(&mut bytes);
    for frame in bytes.chunks_exact_mut(FRAME_BYTES) {
        frame[0] = 0xD0 | (frame[0] & 0x0F);
    }
    bytes
}

/// Panics with a clear message unless `tool` runs.
fn require_tool(tool: &str, version_arg: &str) {
    match Command::new(tool).arg(version_arg).output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "`{tool} {version_arg}` failed ({}): {}; the GSM reference tests need a working {tool}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => panic!(
            "{tool} is required by the GSM reference tests but could not be run ({e}); \
             install it (Debian: apt-get install sox libsox-fmt-all espeak-ng)"
        ),
    }
}

/// Checks that sox runs and knows the GSM formats.
fn require_sox() {
    require_tool("sox", "--version");
    let help = Command::new("sox").arg("-h").output().expect("sox -h");
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(
        text.contains("gsm"),
        "this sox was built without GSM support (no `gsm` in `sox -h`); the GSM reference tests need it"
    );
}

/// Runs a command and panics with its stderr unless it succeeds.
fn run(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("could not run {program}: {e}"));
    assert!(
        out.status.success(),
        "`{program} {}` failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("temporary paths are UTF-8")
}

/// Has sox decode a GSM file (raw `.gsm` or WAV49 `.wav`) to 16-bit samples.
fn sox_decode(input: &Path, dir: &Path) -> Vec<i16> {
    let raw: PathBuf = dir.join(format!(
        "{}.ref.raw",
        input.file_name().unwrap().to_string_lossy()
    ));
    run(
        "sox",
        &[
            path_str(input),
            "-t",
            "raw",
            "-e",
            "signed",
            "-b",
            "16",
            "-L",
            path_str(&raw),
        ],
    );
    let bytes = std::fs::read(&raw).expect("read sox output");
    bytes
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect()
}

/// Returns the body of the `data` chunk of a RIFF/WAVE file.
fn riff_data_chunk(file: &[u8]) -> &[u8] {
    assert!(
        file.len() >= 12 && &file[0..4] == b"RIFF" && &file[8..12] == b"WAVE",
        "not a RIFF/WAVE file"
    );
    let mut pos = 12;
    while pos + 8 <= file.len() {
        let id = &file[pos..pos + 4];
        let size = u32::from_le_bytes(file[pos + 4..pos + 8].try_into().unwrap()) as usize;
        let body = pos + 8;
        if id == b"fmt " {
            let tag = u16::from_le_bytes([file[body], file[body + 1]]);
            assert_eq!(tag, 0x0031, "WAVE format tag is not GSM 6.10 (0x0031)");
        }
        if id == b"data" {
            let end = (body + size).min(file.len());
            return &file[body..end];
        }
        // Chunks are padded to an even length.
        pos = body + size + (size & 1);
    }
    panic!("no data chunk in WAVE file");
}

/// Builds a minimal WAV49 file around `data` (whole 65-byte blocks).
fn wav49_file(data: &[u8]) -> Vec<u8> {
    let blocks = data.len() / WAV49_BLOCK_BYTES;
    let mut fmt = Vec::new();
    fmt.extend_from_slice(&0x0031u16.to_le_bytes()); // WAVE_FORMAT_GSM610
    fmt.extend_from_slice(&1u16.to_le_bytes()); // channels
    fmt.extend_from_slice(&8000u32.to_le_bytes()); // sample rate
    fmt.extend_from_slice(&1625u32.to_le_bytes()); // bytes per second
    fmt.extend_from_slice(&(WAV49_BLOCK_BYTES as u16).to_le_bytes()); // block align
    fmt.extend_from_slice(&0u16.to_le_bytes()); // bits per sample
    fmt.extend_from_slice(&2u16.to_le_bytes()); // extra bytes
    fmt.extend_from_slice(&(WAV49_BLOCK_SAMPLES as u16).to_le_bytes()); // samples per block

    let mut chunks = Vec::new();
    let mut chunk = |id: &[u8; 4], body: &[u8]| {
        chunks.extend_from_slice(id);
        chunks.extend_from_slice(&(body.len() as u32).to_le_bytes());
        chunks.extend_from_slice(body);
        if body.len() % 2 == 1 {
            chunks.push(0);
        }
    };
    chunk(b"fmt ", &fmt);
    chunk(
        b"fact",
        &((blocks * WAV49_BLOCK_SAMPLES) as u32).to_le_bytes(),
    );
    chunk(b"data", data);

    let mut file = Vec::new();
    file.extend_from_slice(b"RIFF");
    file.extend_from_slice(&(4 + chunks.len() as u32).to_le_bytes());
    file.extend_from_slice(b"WAVE");
    file.extend_from_slice(&chunks);
    file
}

/// Asserts sample-for-sample equality, naming the first difference.
fn assert_bit_exact(ours: &[i16], reference: &[i16], what: &str) {
    assert_eq!(
        ours.len(),
        reference.len(),
        "{what}: {} samples decoded, sox decoded {}",
        ours.len(),
        reference.len()
    );
    if let Some(i) = ours.iter().zip(reference).position(|(a, b)| a != b) {
        let lo = i.saturating_sub(3);
        let hi = (i + 4).min(ours.len());
        panic!(
            "{what}: first difference at sample {i} (frame {}): ours {:?}, sox {:?}",
            i / FRAME_SAMPLES,
            &ours[lo..hi],
            &reference[lo..hi]
        );
    }
}

/// Synthesizes speech with espeak-ng into `dir/speech.wav`.
fn speech_wav(dir: &Path) -> PathBuf {
    require_tool("espeak-ng", "--version");
    let wav = dir.join("speech.wav");
    run(
        "espeak-ng",
        &[
            "-w",
            path_str(&wav),
            "Hello, this is a voicemail for the companion project. \
             Please call me back at five five five, one two three four, \
             before six o'clock tomorrow evening. Thanks, bye!",
        ],
    );
    wav
}

// ------------------------------------------------------------- API tests

#[test]
fn too_short_input_is_an_error() {
    assert_eq!(
        decode_gsm(&[]),
        Err(GsmError::Truncated {
            trailing: 0,
            unit_bytes: FRAME_BYTES,
            unit: "frame"
        })
    );
    let err = decode_gsm(&[0xD0; FRAME_BYTES - 1]).unwrap_err();
    assert!(matches!(err, GsmError::Truncated { trailing: 32, .. }));
    assert!(err.to_string().contains("32 trailing byte"), "{err}");

    let err = decode_wav49(&[0; WAV49_BLOCK_BYTES - 1]).unwrap_err();
    assert!(matches!(err, GsmError::Truncated { trailing: 64, .. }));
    assert!(err.to_string().contains("WAV49 block"), "{err}");
}

#[test]
fn trailing_partial_unit_is_ignored() {
    let mut rng = XorShift(0x1234_5678);
    let mut bytes = random_frames(&mut rng, 3);
    let whole = decode_gsm(&bytes).unwrap();
    assert_eq!(whole.len(), 3 * FRAME_SAMPLES);
    bytes.extend_from_slice(&[0xD5; 20]);
    assert_eq!(decode_gsm(&bytes).unwrap(), whole);

    let mut block = vec![0u8; 2 * WAV49_BLOCK_BYTES + 1];
    rng.fill(&mut block);
    let samples = decode_wav49(&block).unwrap();
    assert_eq!(samples.len(), 2 * WAV49_BLOCK_SAMPLES);
    assert_eq!(
        samples,
        decode_wav49(&block[..2 * WAV49_BLOCK_BYTES]).unwrap()
    );
}

#[test]
fn bad_signature_names_the_frame_and_keeps_state() {
    let mut rng = XorShift(99);
    let mut bytes = random_frames(&mut rng, 3);
    bytes[FRAME_BYTES] = 0x4F;
    let err = decode_gsm(&bytes).unwrap_err();
    assert_eq!(err, GsmError::BadSignature { frame: 1, found: 4 });
    assert!(err.to_string().contains("frame 1"), "{err}");

    // A rejected frame leaves the decoder as it was.
    let frames: Vec<[u8; FRAME_BYTES]> = bytes
        .chunks_exact(FRAME_BYTES)
        .map(|c| c.try_into().unwrap())
        .collect();
    let mut a = Decoder::new();
    let mut b = Decoder::default();
    a.decode_frame(&frames[0]).unwrap();
    b.decode_frame(&frames[0]).unwrap();
    assert!(a.decode_frame(&frames[1]).is_err());
    assert_eq!(
        a.decode_frame(&frames[2]).unwrap(),
        b.decode_frame(&frames[2]).unwrap()
    );
}

#[test]
fn wav49_block_matches_decoder_across_calls() {
    // decode_wav49 is the same as feeding blocks to one decoder in order.
    let mut rng = XorShift(7);
    let mut data = vec![0u8; 4 * WAV49_BLOCK_BYTES];
    rng.fill(&mut data);
    let all = decode_wav49(&data).unwrap();
    let mut d = Decoder::new();
    for (i, block) in data.chunks_exact(WAV49_BLOCK_BYTES).enumerate() {
        let out = d.decode_wav49_block(block.try_into().unwrap());
        assert_eq!(
            &out[..],
            &all[i * WAV49_BLOCK_SAMPLES..(i + 1) * WAV49_BLOCK_SAMPLES]
        );
    }
}

/// Fuzz-style robustness: arbitrary bytes never make the decoder panic
/// (tests run with overflow checks on, so any unchecked overflow would).
#[test]
fn arbitrary_input_never_panics() {
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    let mut decoder = Decoder::new();
    let mut frame = [0u8; FRAME_BYTES];
    let mut block = [0u8; WAV49_BLOCK_BYTES];
    for i in 0..20_000 {
        rng.fill(&mut frame);
        if i % 4 != 0 {
            frame[0] = 0xD0 | (frame[0] & 0x0F);
        }
        // Extreme patterns now and then: all ones / all zeros.
        match i % 97 {
            0 => frame[1..].fill(0xFF),
            1 => frame[1..].fill(0x00),
            _ => {}
        }
        match decoder.decode_frame(&frame) {
            Ok(out) => assert_eq!(out.len(), FRAME_SAMPLES),
            Err(e) => assert!(matches!(e, GsmError::BadSignature { .. })),
        }
        if i % 4 == 0 {
            rng.fill(&mut block);
            if i % 388 == 0 {
                block.fill(0xFF);
            }
            let out = decoder.decode_wav49_block(&block);
            // The decoder's output is 13-bit speech, upscaled.
            assert!(out.iter().all(|&s| s & 7 == 0));
        }
    }
    for _ in 0..300 {
        let len = rng.below(400);
        let mut bytes = vec![0u8; len];
        rng.fill(&mut bytes);
        let _ = decode_gsm(&bytes);
        let _ = decode_wav49(&bytes);
    }
}

// ---------------------------------------------- reference (sox) tests

/// espeak-ng speech -> sox -> raw .gsm; our decoding must equal sox's.
#[test]
fn raw_gsm_speech_is_bit_exact_with_sox() {
    require_sox();
    let dir = tempfile::tempdir().expect("temp dir");
    let wav = speech_wav(dir.path());
    let gsm = dir.path().join("speech.gsm");
    run(
        "sox",
        &[path_str(&wav), "-r", "8000", "-c", "1", path_str(&gsm)],
    );

    let bytes = std::fs::read(&gsm).unwrap();
    assert!(
        bytes.len() >= 100 * FRAME_BYTES,
        "expected a few seconds of speech"
    );
    assert_eq!(bytes.len() % FRAME_BYTES, 0);
    let ours = decode_gsm(&bytes).unwrap();
    let reference = sox_decode(&gsm, dir.path());
    assert!(ours.iter().any(|&s| s.unsigned_abs() > 1000), "not silent");
    assert_bit_exact(&ours, &reference, "raw .gsm speech");
}

/// espeak-ng speech -> sox -> WAV49 .wav; our decoding must equal sox's.
#[test]
fn wav49_speech_is_bit_exact_with_sox() {
    require_sox();
    let dir = tempfile::tempdir().expect("temp dir");
    let wav = speech_wav(dir.path());
    let wav49 = dir.path().join("speech49.wav");
    run(
        "sox",
        &[
            path_str(&wav),
            "-r",
            "8000",
            "-c",
            "1",
            "-e",
            "gsm-full-rate",
            path_str(&wav49),
        ],
    );

    let file = std::fs::read(&wav49).unwrap();
    let data = riff_data_chunk(&file);
    assert!(data.len() >= 50 * WAV49_BLOCK_BYTES);
    let ours = decode_wav49(data).unwrap();
    let reference = sox_decode(&wav49, dir.path());
    // sox trims the last block to the sample count of the `fact` chunk;
    // we return whole blocks.
    assert!(
        reference.len() <= ours.len() && ours.len() - reference.len() < WAV49_BLOCK_SAMPLES,
        "ours {} samples, sox {}",
        ours.len(),
        reference.len()
    );
    assert!(ours.iter().any(|&s| s.unsigned_abs() > 1000), "not silent");
    assert_bit_exact(&ours[..reference.len()], &reference, "WAV49 speech");
}

/// White noise driven into clipping (the encoder saturates everywhere)
/// through the raw `.gsm` container.
#[test]
fn clipped_noise_is_bit_exact_with_sox() {
    require_sox();
    let dir = tempfile::tempdir().expect("temp dir");
    let gsm = dir.path().join("noise.gsm");
    run(
        "sox",
        &[
            "-n",
            "-r",
            "8000",
            "-c",
            "1",
            path_str(&gsm),
            "synth",
            "3",
            "whitenoise",
            "gain",
            "6",
        ],
    );
    let ours = decode_gsm(&std::fs::read(&gsm).unwrap()).unwrap();
    assert!(ours.iter().any(|&s| s.unsigned_abs() > 30000), "not loud");
    assert_bit_exact(&ours, &sox_decode(&gsm, dir.path()), "clipped noise .gsm");
}

/// Random (but validly signed) frames reach every corner of the decoder:
/// invalid LTP lags, extreme gains, amplitudes and reflection coefficients,
/// and saturation everywhere. sox must agree with us on all of them.
#[test]
fn random_frames_are_bit_exact_with_sox() {
    require_sox();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut rng = XorShift(0xC0FF_EE00_D15E_A5E5);

    let mut frames = random_frames(&mut rng, 1500);
    // Include runs of extreme frames, which drive the filters into saturation.
    for (i, frame) in frames.chunks_exact_mut(FRAME_BYTES).enumerate() {
        match (i / 50) % 6 {
            1 => frame[1..].fill(0xFF),
            3 => frame[1..].fill(0x00),
            5 => frame[1..].fill(0xAA),
            _ => {}
        }
    }
    let gsm = dir.path().join("random.gsm");
    std::fs::write(&gsm, &frames).unwrap();
    assert_bit_exact(
        &decode_gsm(&frames).unwrap(),
        &sox_decode(&gsm, dir.path()),
        "random .gsm frames",
    );

    let mut data = vec![0u8; 600 * WAV49_BLOCK_BYTES];
    rng.fill(&mut data);
    for (i, block) in data.chunks_exact_mut(WAV49_BLOCK_BYTES).enumerate() {
        if (i / 25) % 4 == 1 {
            block.fill(0xFF);
        }
    }
    let wav49 = dir.path().join("random49.wav");
    std::fs::write(&wav49, wav49_file(&data)).unwrap();
    assert_bit_exact(
        &decode_wav49(&data).unwrap(),
        &sox_decode(&wav49, dir.path()),
        "random WAV49 blocks",
    );
}

/// Decode speed; run with
/// `cargo test -p companion-gsm --release -- --ignored --nocapture decode_speed`.
#[test]
#[ignore = "benchmark: prints decode speed"]
fn decode_speed() {
    let mut rng = XorShift(42);
    let frames = random_frames(&mut rng, 50_000); // 1000 s of audio
    let mut data = vec![0u8; 25_000 * WAV49_BLOCK_BYTES];
    rng.fill(&mut data);

    for (what, run) in [
        (
            "raw .gsm",
            &(|| decode_gsm(&frames).unwrap()) as &dyn Fn() -> Vec<i16>,
        ),
        ("WAV49", &|| decode_wav49(&data).unwrap()),
    ] {
        let _ = run(); // warm up
        let start = Instant::now();
        let mut samples = 0usize;
        let mut rounds = 0;
        while start.elapsed().as_secs_f64() < 2.0 || rounds < 3 {
            samples += std::hint::black_box(run()).len();
            rounds += 1;
        }
        let secs = start.elapsed().as_secs_f64();
        let rate = samples as f64 / secs;
        println!(
            "{what}: {:.1} M samples/s ({:.0}x real time at 8 kHz)",
            rate / 1e6,
            rate / 8000.0
        );
    }
}
