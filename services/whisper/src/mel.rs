//! Whisper's log-mel spectrogram, computed as whisper.cpp computes it: 25 ms Hann-windowed
//! frames every 10 ms, the first 200 samples mirrored in front and 30 s of silence after,
//! power spectrum, mel bands from the file's filters, log10, then everything more than 8
//! below the loudest value raised to it and scaled as `(x + 4) / 4`.

use std::f32::consts::PI;

use realfft::RealFftPlanner;

/// Samples per second Whisper hears.
pub const SAMPLE_RATE: usize = 16_000;
/// Samples per frame (25 ms).
pub const N_FFT: usize = 400;
/// Samples between frames (10 ms).
pub const HOP: usize = 160;
/// The silence whisper.cpp appends (30 s).
const TAIL: usize = 30 * SAMPLE_RATE;

/// A log-mel spectrogram: `n_mel` rows (bands) of `n_len` frames.
#[derive(Debug, Clone)]
pub struct Mel {
    pub n_mel: usize,
    pub n_len: usize,
    /// Frames that hold audio (the rest are the appended silence).
    pub n_len_org: usize,
    pub data: Vec<f32>,
}

/// The log-mel spectrogram of `samples` (16 kHz mono) with `filters` (`n_mel` rows of
/// `N_FFT / 2 + 1` weights).
pub fn log_mel(samples: &[f32], filters: &[f32], n_mel: usize) -> Mel {
    let bins = N_FFT / 2 + 1;
    debug_assert_eq!(filters.len(), n_mel * bins);
    let pad = N_FFT / 2;
    let n = samples.len();
    let mut padded = vec![0.0f32; n + TAIL + 2 * pad];
    padded[pad..pad + n].copy_from_slice(samples);
    for j in 0..pad {
        padded[pad - 1 - j] = samples.get(1 + j).copied().unwrap_or(0.0);
    }
    let n_len = (padded.len() - N_FFT) / HOP;
    let n_len_org = (1 + ((n + pad) as i64 - N_FFT as i64) / HOP as i64).max(0) as usize;
    // Frames past the audio are silent: whisper.cpp gives them log10(1e-10) without an FFT.
    let audible = ((n + pad) / HOP + 1).min(n_len);
    let mut data = vec![-10.0f32; n_mel * n_len];

    let hann: Vec<f32> = (0..N_FFT)
        .map(|i| 0.5 * (1.0 - (2.0 * PI * i as f32 / N_FFT as f32).cos()))
        .collect();
    let fft = RealFftPlanner::<f32>::new().plan_fft_forward(N_FFT);
    let mut input = fft.make_input_vec();
    let mut spectrum = fft.make_output_vec();
    let mut power = vec![0.0f32; bins];
    for frame in 0..audible {
        let offset = frame * HOP;
        let valid = N_FFT.min(n + pad - offset);
        for (j, x) in input.iter_mut().enumerate() {
            *x = if j < valid {
                hann[j] * padded[offset + j]
            } else {
                0.0
            };
        }
        fft.process(&mut input, &mut spectrum)
            .expect("buffers made by the plan");
        for (p, c) in power.iter_mut().zip(&spectrum) {
            *p = c.re * c.re + c.im * c.im;
        }
        for (band, weights) in filters.chunks_exact(bins).enumerate() {
            let sum: f64 = weights
                .iter()
                .zip(&power)
                .map(|(w, p)| (w * p) as f64)
                .sum();
            data[band * n_len + frame] = sum.max(1e-10).log10() as f32;
        }
    }

    let floor = data.iter().copied().fold(f32::MIN, f32::max) - 8.0;
    for v in &mut data {
        *v = (v.max(floor) + 4.0) / 4.0;
    }
    Mel {
        n_mel,
        n_len,
        n_len_org,
        data,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One triangular band per bin range, enough to check where the energy lands.
    fn one_hot_filters(n_mel: usize) -> Vec<f32> {
        let bins = N_FFT / 2 + 1;
        let mut f = vec![0.0; n_mel * bins];
        for band in 0..n_mel {
            let bin = band * (bins - 1) / n_mel;
            f[band * bins + bin] = 1.0;
        }
        f
    }

    #[test]
    fn a_tone_lands_in_its_band_and_silence_sits_at_the_floor() {
        let n_mel = 10;
        // Bin 40 of 200: 40 × 16000 / 400 = 1600 Hz, band 2 of the one-hot filters.
        let tone: Vec<f32> = (0..SAMPLE_RATE)
            .map(|i| 0.5 * (2.0 * PI * 1600.0 * i as f32 / SAMPLE_RATE as f32).sin())
            .collect();
        let mel = log_mel(&tone, &one_hot_filters(n_mel), n_mel);
        assert_eq!(mel.n_len, (SAMPLE_RATE + TAIL) / HOP);
        assert_eq!(mel.n_len_org, 1 + (SAMPLE_RATE + 200 - N_FFT) / HOP);
        let at = |band: usize, frame: usize| mel.data[band * mel.n_len + frame];
        let frame = 50;
        let loudest = (0..n_mel).max_by(|&a, &b| at(a, frame).total_cmp(&at(b, frame)));
        assert_eq!(loudest, Some(2));
        // The normalised range: the loudest value maps to (max + 4) / 4, the floor 2 below it.
        let max = mel.data.iter().copied().fold(f32::MIN, f32::max);
        let min = mel.data.iter().copied().fold(f32::MAX, f32::min);
        assert!((max - min - 2.0).abs() < 1e-5, "{max} {min}");
        assert_eq!(
            at(2, mel.n_len - 1),
            min,
            "the appended silence is at the floor"
        );
    }

    #[test]
    fn audio_shorter_than_a_frame_gives_a_spectrogram() {
        let mel = log_mel(&[0.1; 10], &one_hot_filters(4), 4);
        assert_eq!(mel.n_len_org, 0);
        assert_eq!(mel.data.len(), 4 * mel.n_len);
        assert!(mel.data.iter().all(|v| v.is_finite()));
    }
}
