//! A pure-Rust GSM 06.10 full-rate (RPE-LTP) speech decoder.
//!
//! GSM full-rate is what many PBXes (Asterisk's `.gsm`, WAV49 / "Microsoft
//! GSM" `.wav` voicemail) store speech in: 8 kHz mono, 160 samples coded in
//! 260 bits every 20 ms. This crate decodes it following the ETSI GSM 06.10
//! specification in the standard's fixed-point integer arithmetic, so its
//! output is bit-exact with the reference decoder (libgsm, as used by
//! `toast` and `sox`).
//!
//! Two container layouts are supported:
//!
//! * raw `.gsm`: back-to-back standard 33-byte frames, each starting with
//!   the signature `0xD` in the upper nibble ([`decode_gsm`],
//!   [`Decoder::decode_frame`]);
//! * WAV49 (WAVE format tag `0x0031`): the `data` chunk holds back-to-back
//!   65-byte blocks of two frames each ([`decode_wav49`],
//!   [`Decoder::decode_wav49_block`]).
//!
//! Decoding never panics, whatever the input bytes.
//!
//! ```
//! let frame = [0xD8u8; companion_gsm::FRAME_BYTES];
//! let samples = companion_gsm::decode_gsm(&frame).unwrap();
//! assert_eq!(samples.len(), companion_gsm::FRAME_SAMPLES);
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod arith;
mod decoder;
mod unpack;

#[cfg(test)]
mod tests;

pub use decoder::Decoder;

/// Bytes in one standard GSM 06.10 frame (signature `0xD` in the upper
/// nibble of byte 0, then 260 bits of parameters).
pub const FRAME_BYTES: usize = 33;
/// Samples (8 kHz, 16-bit) decoded from one frame: 20 ms.
pub const FRAME_SAMPLES: usize = 160;
/// Bytes in one Microsoft GSM / WAV49 block: two frames packed in 65 bytes.
pub const WAV49_BLOCK_BYTES: usize = 65;
/// Samples decoded from one WAV49 block: 40 ms.
pub const WAV49_BLOCK_SAMPLES: usize = 320;

/// Why GSM data could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GsmError {
    /// A standard frame does not start with the `0xD` signature nibble.
    #[error(
        "GSM frame {frame} has a bad signature: the upper nibble of its first byte is {found:#x}, expected 0xd"
    )]
    BadSignature {
        /// Zero-based index of the frame in the input (0 for a single frame).
        frame: usize,
        /// The upper nibble found instead.
        found: u8,
    },
    /// The input is too short to hold even one complete frame or block.
    #[error(
        "truncated GSM input: {trailing} trailing byte(s) do not make a complete {unit_bytes}-byte {unit}, and there is no complete one"
    )]
    Truncated {
        /// Number of bytes in the input (all of them trailing).
        trailing: usize,
        /// Size of the unit expected.
        unit_bytes: usize,
        /// What the unit is: "frame" or "WAV49 block".
        unit: &'static str,
    },
}

/// Decodes a raw `.gsm` file (as Asterisk writes it: back-to-back 33-byte
/// frames) into 8 kHz 16-bit samples.
///
/// A trailing partial frame is ignored if the input holds at least one
/// complete frame; an input with no complete frame is an error, and so is
/// any frame with a bad signature.
pub fn decode_gsm(bytes: &[u8]) -> Result<Vec<i16>, GsmError> {
    let (frames, rest) = bytes.as_chunks::<FRAME_BYTES>();
    if frames.is_empty() {
        return Err(GsmError::Truncated {
            trailing: rest.len(),
            unit_bytes: FRAME_BYTES,
            unit: "frame",
        });
    }
    let mut decoder = Decoder::new();
    let mut out = Vec::with_capacity(frames.len() * FRAME_SAMPLES);
    for (index, frame) in frames.iter().enumerate() {
        out.extend_from_slice(&decoder.decode_frame_at(frame, index)?);
    }
    Ok(out)
}

/// Decodes the `data` chunk of a WAV49 file (WAVE format tag `0x0031`,
/// back-to-back 65-byte blocks) into 8 kHz 16-bit samples.
///
/// A trailing partial block (such as a RIFF pad byte) is ignored if the
/// input holds at least one complete block; an input with no complete block
/// is an error. The result holds all 320 samples of every block: trim it to
/// the sample count of the file's `fact` chunk if needed.
pub fn decode_wav49(bytes: &[u8]) -> Result<Vec<i16>, GsmError> {
    let (blocks, rest) = bytes.as_chunks::<WAV49_BLOCK_BYTES>();
    if blocks.is_empty() {
        return Err(GsmError::Truncated {
            trailing: rest.len(),
            unit_bytes: WAV49_BLOCK_BYTES,
            unit: "WAV49 block",
        });
    }
    let mut decoder = Decoder::new();
    let mut out = Vec::with_capacity(blocks.len() * WAV49_BLOCK_SAMPLES);
    for block in blocks {
        out.extend_from_slice(&decoder.decode_wav49_block(block));
    }
    Ok(out)
}
