//! Voice activity detection with earshot's neural detector (16 ms frames at 16 kHz), plus the
//! bookkeeping to hand only the speech to ASR and map its timestamps back.

use crate::TARGET_RATE;

const FRAME: usize = 256;

#[derive(Debug, Clone)]
pub struct VadOptions {
    /// Frame score (0..1) at or above which a frame counts as voiced.
    pub threshold: f32,
    /// Voiced runs shorter than this are dropped (clicks, DTMF blips).
    pub min_speech_ms: u32,
    /// Pauses shorter than this do not split a region.
    pub min_silence_ms: u32,
    /// Context kept on each side of a region, so word onsets and endings are not clipped.
    pub pad_ms: u32,
}

impl Default for VadOptions {
    fn default() -> Self {
        VadOptions {
            threshold: 0.5,
            min_speech_ms: 250,
            min_silence_ms: 500,
            pad_ms: 250,
        }
    }
}

/// A stretch of speech, in samples at 16 kHz: `start..end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpeechRegion {
    pub start: usize,
    pub end: usize,
}

fn ms_to_frames(ms: u32) -> usize {
    (ms as usize * TARGET_RATE as usize / 1000).div_ceil(FRAME)
}

/// Finds the speech in 16 kHz mono audio. Empty when there is none.
pub fn detect_speech(samples: &[f32], opts: &VadOptions) -> Vec<SpeechRegion> {
    let mut detector = earshot::Detector::default();
    let mut frame = [0f32; FRAME];
    let voiced: Vec<bool> = samples
        .chunks(FRAME)
        .map(|chunk| {
            frame.fill(0.0);
            for (dst, src) in frame.iter_mut().zip(chunk) {
                *dst = src.clamp(-1.0, 1.0);
            }
            detector.predict_f32(&frame) >= opts.threshold
        })
        .collect();
    regions_from_frames(&voiced, samples.len(), opts)
}

/// Turns per-frame decisions into padded, merged regions in samples.
fn regions_from_frames(voiced: &[bool], total: usize, opts: &VadOptions) -> Vec<SpeechRegion> {
    let min_speech = ms_to_frames(opts.min_speech_ms).max(1);
    let min_silence = ms_to_frames(opts.min_silence_ms);
    let pad = opts.pad_ms as usize * TARGET_RATE as usize / 1000;

    // Runs of voiced frames, bridging pauses shorter than `min_silence`.
    let mut runs: Vec<(usize, usize)> = Vec::new();
    let mut i = 0;
    while i < voiced.len() {
        if !voiced[i] {
            i += 1;
            continue;
        }
        let start = i;
        while i < voiced.len() && voiced[i] {
            i += 1;
        }
        match runs.last_mut() {
            Some(last) if start - last.1 < min_silence => last.1 = i,
            _ => runs.push((start, i)),
        }
    }

    let mut regions: Vec<SpeechRegion> = Vec::new();
    for (start, end) in runs.into_iter().filter(|(s, e)| e - s >= min_speech) {
        let region = SpeechRegion {
            start: (start * FRAME).saturating_sub(pad),
            end: (end * FRAME + pad).min(total),
        };
        match regions.last_mut() {
            Some(last) if region.start <= last.end => last.end = region.end,
            _ => regions.push(region),
        }
    }
    regions
}

/// Speech regions joined into one buffer for ASR, with the map back to the recording's timeline.
#[derive(Debug, Clone)]
pub struct SpeechAudio {
    pub samples: Vec<f32>,
    /// (offset in `samples`, offset in the original), both in samples, one per region.
    pieces: Vec<(usize, usize)>,
}

/// Silence put between joined regions so words of different regions do not run together.
const GAP: usize = TARGET_RATE as usize / 10;

impl SpeechAudio {
    /// Copies the regions out of `samples`, separated by short silences.
    pub fn gather(samples: &[f32], regions: &[SpeechRegion]) -> SpeechAudio {
        let total: usize = regions.iter().map(|r| r.end - r.start + GAP).sum();
        let mut out = Vec::with_capacity(total);
        let mut pieces = Vec::with_capacity(regions.len());
        for region in regions {
            if !out.is_empty() {
                out.resize(out.len() + GAP, 0.0);
            }
            pieces.push((out.len(), region.start));
            out.extend_from_slice(&samples[region.start..region.end]);
        }
        SpeechAudio {
            samples: out,
            pieces,
        }
    }

    /// Maps a time in the joined buffer (seconds) to the recording's timeline (seconds).
    pub fn to_original_s(&self, t: f64) -> f64 {
        let rate = f64::from(TARGET_RATE);
        let pos = (t.max(0.0) * rate) as usize;
        let idx = self.pieces.partition_point(|&(joined, _)| joined <= pos);
        match idx.checked_sub(1).and_then(|i| self.pieces.get(i)) {
            Some(&(joined, original)) => (original as f64 + (t * rate - joined as f64)) / rate,
            None => t,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> VadOptions {
        VadOptions {
            threshold: 0.5,
            min_speech_ms: 100,
            min_silence_ms: 200,
            pad_ms: 0,
        }
    }

    #[test]
    fn no_voiced_frames_no_regions() {
        assert!(regions_from_frames(&[false; 100], 100 * FRAME, &opts()).is_empty());
    }

    #[test]
    fn short_blips_are_dropped_and_short_pauses_bridged() {
        let mut v = vec![false; 200];
        v[10] = true; // 16 ms blip: dropped
        for f in v.iter_mut().take(60).skip(40) {
            *f = true;
        }
        for f in v.iter_mut().take(90).skip(65) {
            *f = true; // 5-frame pause (80 ms) bridged
        }
        let r = regions_from_frames(&v, 200 * FRAME, &opts());
        assert_eq!(
            r,
            vec![SpeechRegion {
                start: 40 * FRAME,
                end: 90 * FRAME
            }]
        );
    }

    #[test]
    fn silence_and_noise_have_no_speech() {
        assert!(detect_speech(&vec![0.0; 16000 * 5], &VadOptions::default()).is_empty());
        let mut x: u32 = 12345;
        let noise: Vec<f32> = (0..16000 * 5)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                (x as f32 / u32::MAX as f32 - 0.5) * 0.02
            })
            .collect();
        assert!(detect_speech(&noise, &VadOptions::default()).is_empty());
    }

    #[test]
    fn gathered_speech_maps_back_to_original_times() {
        let samples: Vec<f32> = (0..16000 * 10).map(|i| i as f32).collect();
        let regions = [
            SpeechRegion {
                start: 16000,
                end: 32000,
            },
            SpeechRegion {
                start: 80000,
                end: 96000,
            },
        ];
        let speech = SpeechAudio::gather(&samples, &regions);
        assert_eq!(speech.samples.len(), 32000 + GAP);
        assert_eq!(speech.samples[0], 16000.0);
        assert!((speech.to_original_s(0.5) - 1.5).abs() < 1e-9);
        let second = (16000 + GAP) as f64 / 16000.0;
        assert!((speech.to_original_s(second + 0.25) - 5.25).abs() < 1e-9);
    }
}
