//! Just enough RIFF/WAVE parsing to route the WAV codecs symphonia lacks (Microsoft GSM 6.10,
//! "WAV49", format tag 0x0031) to our own decoder.

use crate::{Audio, AudioError};

const WAVE_FORMAT_GSM610: u16 = 0x0031;

/// The parts of a WAVE header we route on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaveInfo {
    pub format_tag: u16,
    pub channels: u16,
    pub sample_rate: u32,
    /// Byte range of the `data` chunk, clamped to the file (truncated files keep what they have).
    pub data: std::ops::Range<usize>,
}

/// Parses the chunk list of a RIFF/WAVE file. `None` when the bytes are not RIFF/WAVE or lack a
/// `fmt ` or `data` chunk (symphonia then gets to say what is wrong).
pub fn parse_wave(bytes: &[u8]) -> Option<WaveInfo> {
    if bytes.len() < 12 || &bytes[0..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
        return None;
    }
    let mut pos = 12usize;
    let mut fmt: Option<(u16, u16, u32)> = None;
    while pos + 8 <= bytes.len() {
        let id = &bytes[pos..pos + 4];
        let size = u32::from_le_bytes(bytes[pos + 4..pos + 8].try_into().ok()?) as usize;
        let body = pos + 8;
        if id == b"fmt " {
            if size < 16 || body + 16 > bytes.len() {
                return None;
            }
            let b = &bytes[body..body + 16];
            fmt = Some((
                u16::from_le_bytes([b[0], b[1]]),
                u16::from_le_bytes([b[2], b[3]]),
                u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
            ));
        } else if id == b"data" {
            let (format_tag, channels, sample_rate) = fmt?;
            let end = body.saturating_add(size).min(bytes.len());
            return Some(WaveInfo {
                format_tag,
                channels,
                sample_rate,
                data: body..end,
            });
        }
        // Chunks are padded to an even size.
        pos = body.checked_add(size)?.checked_add(size & 1)?;
    }
    None
}

/// Decodes a WAV49 / MS-GSM file, or returns `Ok(None)` when the WAV holds another codec.
pub fn decode_gsm_wave(bytes: &[u8]) -> Result<Option<Audio>, AudioError> {
    let Some(info) = parse_wave(bytes) else {
        return Ok(None);
    };
    if info.format_tag != WAVE_FORMAT_GSM610 {
        return Ok(None);
    }
    if info.channels != 1 {
        return Err(AudioError::Corrupt(format!(
            "MS-GSM WAV with {} channels (GSM 6.10 is mono)",
            info.channels
        )));
    }
    if info.sample_rate == 0 {
        return Err(AudioError::Corrupt(
            "WAV header gives a sample rate of 0".into(),
        ));
    }
    let samples = companion_gsm::decode_wav49(&bytes[info.data])
        .map_err(|e| AudioError::Corrupt(format!("MS-GSM: {e}")))?;
    if samples.is_empty() {
        return Err(AudioError::Empty);
    }
    Ok(Some(Audio {
        sample_rate: info.sample_rate,
        channels: vec![
            samples
                .into_iter()
                .map(|s| f32::from(s) / 32768.0)
                .collect(),
        ],
        format: "wav/gsm_ms".into(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wave(format_tag: u16, data: &[u8]) -> Vec<u8> {
        let mut v = b"RIFF\0\0\0\0WAVE".to_vec();
        v.extend_from_slice(b"fmt ");
        v.extend_from_slice(&20u32.to_le_bytes());
        v.extend_from_slice(&format_tag.to_le_bytes());
        v.extend_from_slice(&1u16.to_le_bytes());
        v.extend_from_slice(&8000u32.to_le_bytes());
        v.extend_from_slice(&[0; 12]);
        v.extend_from_slice(b"LIST");
        v.extend_from_slice(&3u32.to_le_bytes());
        v.extend_from_slice(&[1, 2, 3, 0]); // odd size, padded
        v.extend_from_slice(b"data");
        v.extend_from_slice(&(data.len() as u32 + 100).to_le_bytes()); // claims more than present
        v.extend_from_slice(data);
        v
    }

    #[test]
    fn finds_format_and_clamped_data_chunk() {
        let bytes = wave(0x31, &[7; 65]);
        let info = parse_wave(&bytes).unwrap();
        assert_eq!(info.format_tag, 0x31);
        assert_eq!(info.sample_rate, 8000);
        assert_eq!(&bytes[info.data.clone()], &[7; 65][..]);
    }

    #[test]
    fn other_codecs_and_garbage_are_left_to_symphonia() {
        assert_eq!(decode_gsm_wave(&wave(1, &[0; 4])).unwrap(), None);
        assert_eq!(decode_gsm_wave(b"not a wave file at all").unwrap(), None);
        assert_eq!(
            parse_wave(b"RIFF\xff\xff\xff\xffWAVEfmt \xff\xff\xff\xff"),
            None
        );
    }
}
