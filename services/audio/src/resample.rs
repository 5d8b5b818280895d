//! Resampling to Whisper's 16 kHz and channel handling.

use rubato::audioadapter_buffers::direct::SequentialSlice;
use rubato::{Fft, FixedSync, Resampler};

use crate::{Audio, AudioError, ChannelMode};

/// The sample rate every model downstream expects.
pub const TARGET_RATE: u32 = 16_000;

/// Converts decoded audio to 16 kHz: one channel for [`ChannelMode::Mix`], every channel for
/// [`ChannelMode::Separate`]. Consumes the audio so no copy of the original stays alive.
pub fn to_16k(audio: Audio, mode: ChannelMode) -> Result<Vec<Vec<f32>>, AudioError> {
    let rate = audio.sample_rate;
    let channels = match mode {
        ChannelMode::Mix => vec![mix_down(audio.channels)],
        ChannelMode::Separate => audio.channels,
    };
    channels
        .into_iter()
        .map(|samples| resample(samples, rate, TARGET_RATE))
        .collect()
}

/// Averages all channels into one.
fn mix_down(mut channels: Vec<Vec<f32>>) -> Vec<f32> {
    if channels.len() == 1 {
        return channels.pop().unwrap_or_default();
    }
    let n = channels.len() as f32;
    let frames = channels.iter().map(Vec::len).min().unwrap_or(0);
    (0..frames)
        .map(|i| channels.iter().map(|c| c[i]).sum::<f32>() / n)
        .collect()
}

/// Band-limited FFT resampling of one channel; the output is trimmed to the exact length.
fn resample(samples: Vec<f32>, from: u32, to: u32) -> Result<Vec<f32>, AudioError> {
    if from == to || samples.is_empty() {
        return Ok(samples);
    }
    let err = |e: &dyn std::fmt::Display| AudioError::Resample(e.to_string());
    let mut resampler = Fft::<f32>::new(from as usize, to as usize, 1024, 1, FixedSync::Input)
        .map_err(|e| err(&e))?;
    let input = SequentialSlice::new(&samples, 1, samples.len()).map_err(|e| err(&e))?;
    let output = resampler
        .process_all(&input, samples.len(), None)
        .map_err(|e| err(&e))?;
    let expected = (samples.len() as u64 * u64::from(to)).div_ceil(u64::from(from)) as usize;
    let mut out = output.take_data();
    out.truncate(expected);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sine(rate: u32, freq: f32, seconds: f32) -> Vec<f32> {
        let n = (rate as f32 * seconds) as usize;
        (0..n)
            .map(|i| (2.0 * std::f32::consts::PI * freq * i as f32 / rate as f32).sin() * 0.5)
            .collect()
    }

    #[test]
    fn resamples_8k_to_16k_keeping_length_and_tone() {
        let audio = Audio {
            sample_rate: 8000,
            channels: vec![sine(8000, 440.0, 1.0)],
            format: "test".into(),
        };
        let out = to_16k(audio, ChannelMode::Mix).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].len(), 16000);
        // Compare the middle against an ideal 440 Hz sine at 16 kHz, allowing for filter delay
        // alignment by checking RMS rather than sample-exact values.
        let rms = |v: &[f32]| (v.iter().map(|x| x * x).sum::<f32>() / v.len() as f32).sqrt();
        let mid = &out[0][4000..12000];
        assert!(
            (rms(mid) - 0.5 / 2f32.sqrt()).abs() < 0.01,
            "rms {}",
            rms(mid)
        );
    }

    #[test]
    fn separate_keeps_channels_and_mix_averages() {
        let audio = Audio {
            sample_rate: 16000,
            channels: vec![vec![1.0; 10], vec![0.0; 10]],
            format: "test".into(),
        };
        let apart = to_16k(audio.clone(), ChannelMode::Separate).unwrap();
        assert_eq!(apart, vec![vec![1.0; 10], vec![0.0; 10]]);
        let mixed = to_16k(audio, ChannelMode::Mix).unwrap();
        assert_eq!(mixed, vec![vec![0.5; 10]]);
    }

    #[test]
    fn downsamples_44k1() {
        let audio = Audio {
            sample_rate: 44100,
            channels: vec![sine(44100, 1000.0, 0.5)],
            format: "test".into(),
        };
        let out = to_16k(audio, ChannelMode::Mix).unwrap();
        assert_eq!(out[0].len(), 8000);
    }
}
