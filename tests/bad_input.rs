//! Bad input ends in a clear error or an empty `speech: false` result: never a panic, a hang or
//! invented words. Each file of a batch fails alone; the exit code says something failed.

mod support;

use support::*;

/// A canonical 44-byte WAV header (PCM 16-bit) for `data_len` bytes of data.
fn wav_header(channels: u16, rate: u32, data_len: u32) -> Vec<u8> {
    let mut h = b"RIFF".to_vec();
    h.extend_from_slice(&(36 + data_len).to_le_bytes());
    h.extend_from_slice(b"WAVEfmt ");
    h.extend_from_slice(&16u32.to_le_bytes());
    h.extend_from_slice(&1u16.to_le_bytes());
    h.extend_from_slice(&channels.to_le_bytes());
    h.extend_from_slice(&rate.to_le_bytes());
    h.extend_from_slice(&(rate * u32::from(channels) * 2).to_le_bytes());
    h.extend_from_slice(&(channels * 2).to_le_bytes());
    h.extend_from_slice(&16u16.to_le_bytes());
    h.extend_from_slice(b"data");
    h.extend_from_slice(&data_len.to_le_bytes());
    h
}

fn pcm_wav(rate: u32, samples: impl Iterator<Item = i16>) -> Vec<u8> {
    let data: Vec<u8> = samples.flat_map(i16::to_le_bytes).collect();
    let mut v = wav_header(1, rate, data.len() as u32);
    v.extend_from_slice(&data);
    v
}

fn noise(n: usize, amplitude: f32) -> impl Iterator<Item = i16> {
    let mut x: u32 = 0x9e37_79b9;
    (0..n).map(move |_| {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        ((x as f32 / u32::MAX as f32 - 0.5) * 2.0 * amplitude * 32767.0) as i16
    })
}

#[test]
fn broken_files_fail_alone_with_their_error_kind() {
    let speech = std::fs::read(speech_wav(&EN)).unwrap();
    let random: Vec<u8> = noise(4096, 1.0).flat_map(i16::to_le_bytes).collect();
    let mut zero_channels = wav_header(0, 8000, 1600);
    zero_channels.extend_from_slice(&[0; 1600]);
    let mut zero_rate = wav_header(1, 0, 1600);
    zero_rate.extend_from_slice(&[0; 1600]);
    let cases: Vec<(std::path::PathBuf, &str)> = vec![
        (file("empty.wav", b""), "empty_audio"),
        (
            file("header_only.wav", &wav_header(1, 8000, 0)),
            "empty_audio",
        ),
        (file("random_bytes.wav", &random), "unsupported_format"),
        (
            file(
                "text.mp3",
                b"This is a text file pretending to be an MP3.\n",
            ),
            "unsupported_format",
        ),
        (file("cut_in_header.wav", &speech[..20]), "corrupt_audio"),
        (file("zero_channels.wav", &zero_channels), "corrupt_audio"),
        (file("zero_rate.wav", &zero_rate), "corrupt_audio"),
        (workdir().join("does_not_exist.wav"), "io"),
    ];
    let good = speech_wav(&EN);
    let mut files: Vec<&std::path::Path> = cases.iter().map(|(p, _)| p.as_path()).collect();
    files.insert(3, &good);
    let (lines, out) = transcribe(&files, &["--beam-size", "1"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a failed file makes the exit code 1"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");

    assert_heard(&lines[3], &EN);
    let failed: Vec<&serde_json::Value> = lines
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 3)
        .map(|(_, l)| l)
        .collect();
    for (line, (path, kind)) in failed.iter().zip(&cases) {
        assert_eq!(line["file"], path.to_str().unwrap(), "input order kept");
        assert_eq!(line["error"]["kind"], *kind, "{line}");
        assert!(!line["error"]["message"].as_str().unwrap().is_empty());
    }
}

#[test]
fn silence_noise_and_tiny_clips_have_no_speech() {
    let silence = file(
        "silence_60s.wav",
        &pcm_wav(8000, std::iter::repeat_n(0, 8000 * 60)),
    );
    let hiss = file("line_noise.wav", &pcm_wav(8000, noise(8000 * 20, 0.01)));
    let ten_ms = file("ten_ms.wav", &pcm_wav(16000, noise(160, 0.3)));
    let hum = file(
        "hum_50hz.wav",
        &pcm_wav(
            8000,
            (0..8000 * 10).map(|i| {
                ((i as f32 * 50.0 * std::f32::consts::TAU / 8000.0).sin() * 3000.0) as i16
            }),
        ),
    );
    let (lines, out) = transcribe(&[&silence, &hiss, &ten_ms, &hum], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in &lines {
        assert_eq!(line["speech"], false, "{line}");
        assert_eq!(line["transcript"]["text"], "", "{line}");
        assert_eq!(
            line["transcript"]["segments"],
            serde_json::json!([]),
            "{line}"
        );
        assert_eq!(line["language"], serde_json::Value::Null, "{line}");
    }
    assert!((lines[0]["duration_s"].as_f64().unwrap() - 60.0).abs() < 0.01);
}

#[test]
fn limits_refuse_before_decoding() {
    let wav = speech_wav(&EN);
    let (lines, out) = transcribe(&[&wav], &["--max-bytes", "1000"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(lines[0]["error"]["kind"], "too_large", "{}", lines[0]);

    let (lines, _) = transcribe(&[&wav], &["--max-duration-s", "2"]);
    assert_eq!(lines[0]["error"]["kind"], "too_long", "{}", lines[0]);

    // A raw file's duration follows from its size: refused before decoding too.
    let raw = file("long.ulaw", &vec![0xffu8; 8000 * 5]);
    let (lines, _) = transcribe(&[&raw], &["--max-duration-s", "2"]);
    assert_eq!(lines[0]["error"]["kind"], "too_long", "{}", lines[0]);
}
