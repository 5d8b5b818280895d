//! Headerless telephony audio: G.711 µ-law / A-law, signed linear ("slin") and GSM 06.10, as
//! Asterisk and other PBXs store them.

use std::str::FromStr;

use crate::{Audio, AudioError, g711};

/// The encoding of a headerless file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawFormat {
    /// G.711 µ-law, one byte a sample.
    Ulaw { rate: u32 },
    /// G.711 A-law, one byte a sample.
    Alaw { rate: u32 },
    /// Signed 16-bit little-endian linear PCM.
    Slin { rate: u32 },
    /// GSM 06.10 full-rate frames, 33 bytes each (always 8 kHz).
    Gsm,
}

impl RawFormat {
    /// The format Asterisk implies by a file extension (`.ulaw`, `.alaw`, `.sln16`, `.gsm`, ...).
    pub fn from_extension(ext: &str) -> Option<RawFormat> {
        Some(match ext.to_ascii_lowercase().as_str() {
            "ulaw" | "ul" | "mulaw" | "pcmu" | "mu" => RawFormat::Ulaw { rate: 8000 },
            "alaw" | "al" | "pcma" => RawFormat::Alaw { rate: 8000 },
            "sln" | "slin" | "raw" => RawFormat::Slin { rate: 8000 },
            "sln12" => RawFormat::Slin { rate: 12000 },
            "sln16" => RawFormat::Slin { rate: 16000 },
            "sln24" => RawFormat::Slin { rate: 24000 },
            "sln32" => RawFormat::Slin { rate: 32000 },
            "sln44" => RawFormat::Slin { rate: 44100 },
            "sln48" => RawFormat::Slin { rate: 48000 },
            "gsm" => RawFormat::Gsm,
            _ => return None,
        })
    }

    pub fn sample_rate(self) -> u32 {
        match self {
            RawFormat::Ulaw { rate } | RawFormat::Alaw { rate } | RawFormat::Slin { rate } => rate,
            RawFormat::Gsm => 8000,
        }
    }

    fn name(self) -> &'static str {
        match self {
            RawFormat::Ulaw { .. } => "raw/ulaw",
            RawFormat::Alaw { .. } => "raw/alaw",
            RawFormat::Slin { .. } => "raw/slin",
            RawFormat::Gsm => "raw/gsm",
        }
    }

    /// Bytes per second of encoded audio, to check the duration limit before decoding.
    pub fn bytes_per_second(self) -> f64 {
        match self {
            RawFormat::Ulaw { rate } | RawFormat::Alaw { rate } => f64::from(rate),
            RawFormat::Slin { rate } => 2.0 * f64::from(rate),
            RawFormat::Gsm => 1650.0,
        }
    }
}

impl FromStr for RawFormat {
    type Err = AudioError;

    /// Parses `ulaw`, `alaw`, `slin`, `gsm`, or an Asterisk extension such as `sln16`, with an
    /// optional `:RATE` (`ulaw:16000`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || {
            AudioError::InvalidOption(format!(
                "raw format {s:?}: expected ulaw, alaw, slin, slin16, gsm, optionally with :RATE"
            ))
        };
        let (name, rate) = match s.split_once(':') {
            Some((name, rate)) => {
                let rate: u32 = rate.parse().map_err(|_| invalid())?;
                if !(1000..=192_000).contains(&rate) {
                    return Err(invalid());
                }
                (name, Some(rate))
            }
            None => (s, None),
        };
        let name = match name.to_ascii_lowercase().as_str() {
            "slin16" => "sln16".to_string(),
            other => other.to_string(),
        };
        let format = RawFormat::from_extension(&name).ok_or_else(invalid)?;
        Ok(match (format, rate) {
            (_, None) => format,
            (RawFormat::Ulaw { .. }, Some(rate)) => RawFormat::Ulaw { rate },
            (RawFormat::Alaw { .. }, Some(rate)) => RawFormat::Alaw { rate },
            (RawFormat::Slin { .. }, Some(rate)) => RawFormat::Slin { rate },
            (RawFormat::Gsm, Some(8000)) => RawFormat::Gsm,
            (RawFormat::Gsm, Some(_)) => return Err(invalid()),
        })
    }
}

/// Decodes headerless bytes in the given format to mono audio.
pub fn decode_raw(bytes: &[u8], format: RawFormat) -> Result<Audio, AudioError> {
    const SCALE: f32 = 1.0 / 32768.0;
    let samples: Vec<f32> = match format {
        RawFormat::Ulaw { .. } => bytes
            .iter()
            .map(|&b| f32::from(g711::ulaw_to_linear(b)) * SCALE)
            .collect(),
        RawFormat::Alaw { .. } => bytes
            .iter()
            .map(|&b| f32::from(g711::alaw_to_linear(b)) * SCALE)
            .collect(),
        RawFormat::Slin { .. } => bytes
            .chunks_exact(2)
            .map(|c| f32::from(i16::from_le_bytes([c[0], c[1]])) * SCALE)
            .collect(),
        RawFormat::Gsm => companion_gsm::decode_gsm(bytes)
            .map_err(|e| AudioError::Corrupt(format!("GSM 06.10: {e}")))?
            .into_iter()
            .map(|s| f32::from(s) * SCALE)
            .collect(),
    };
    if samples.is_empty() {
        return Err(AudioError::Empty);
    }
    Ok(Audio {
        sample_rate: format.sample_rate(),
        channels: vec![samples],
        format: format.name().to_string(),
    })
}

/// True when the bytes look like back-to-back GSM 06.10 frames (every 33rd byte starts with the
/// 0xD signature), so a `.gsm` file is recognised whatever its name.
pub fn looks_like_gsm(bytes: &[u8]) -> bool {
    let frames = bytes.len() / companion_gsm::FRAME_BYTES;
    frames >= 2
        && bytes.len().is_multiple_of(companion_gsm::FRAME_BYTES)
        && bytes
            .chunks_exact(companion_gsm::FRAME_BYTES)
            .all(|frame| frame[0] >> 4 == 0xD)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_rates_and_extensions() {
        assert_eq!(
            "ulaw".parse::<RawFormat>().unwrap(),
            RawFormat::Ulaw { rate: 8000 }
        );
        assert_eq!(
            "alaw:16000".parse::<RawFormat>().unwrap(),
            RawFormat::Alaw { rate: 16000 }
        );
        assert_eq!(
            "slin16".parse::<RawFormat>().unwrap(),
            RawFormat::Slin { rate: 16000 }
        );
        assert_eq!(
            "sln".parse::<RawFormat>().unwrap(),
            RawFormat::Slin { rate: 8000 }
        );
        assert_eq!("GSM".parse::<RawFormat>().unwrap(), RawFormat::Gsm);
        assert!("gsm:16000".parse::<RawFormat>().is_err());
        assert!("ulaw:0".parse::<RawFormat>().is_err());
        assert!("mp3".parse::<RawFormat>().is_err());
    }

    #[test]
    fn decodes_slin_and_ulaw() {
        let slin = [0x00, 0x40, 0x00, 0xc0];
        let audio = decode_raw(&slin, RawFormat::Slin { rate: 8000 }).unwrap();
        assert_eq!(audio.channels[0], vec![0.5, -0.5]);
        let audio = decode_raw(&[0xff, 0x80], RawFormat::Ulaw { rate: 8000 }).unwrap();
        assert_eq!(audio.channels[0][0], 0.0);
        assert!(audio.channels[0][1] > 0.9);
    }

    #[test]
    fn empty_raw_input_is_an_error() {
        assert!(matches!(
            decode_raw(&[], RawFormat::Ulaw { rate: 8000 }),
            Err(AudioError::Empty)
        ));
        assert!(matches!(
            decode_raw(&[1], RawFormat::Slin { rate: 8000 }),
            Err(AudioError::Empty)
        ));
    }

    #[test]
    fn recognises_gsm_frames_by_signature() {
        let mut bytes = vec![0u8; 66];
        assert!(!looks_like_gsm(&bytes));
        bytes[0] = 0xd0;
        bytes[33] = 0xd3;
        assert!(looks_like_gsm(&bytes));
        assert!(!looks_like_gsm(&bytes[..65]));
    }
}
