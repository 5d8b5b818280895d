//! Bit-level unpacking of GSM 06.10 frames into the coded parameters.
//!
//! A frame carries 260 bits of parameters, always in the same order
//! (GSM 06.10 table 1.1):
//!
//! * 8 log-area ratios `LARc[1..8]` of 6, 6, 5, 5, 4, 4, 3 and 3 bits,
//! * then for each of the 4 sub-frames: the LTP lag `Nc` (7 bits), the LTP
//!   gain `bc` (2), the RPE grid position `Mc` (2), the block amplitude
//!   `xmaxc` (6) and 13 RPE pulses `xMc` (3 bits each).
//!
//! Two container layouts exist:
//!
//! * the standard 33-byte frame (libgsm, Asterisk `.gsm`, RTP): a 4-bit
//!   signature `0xD` followed by the parameters, most significant bit first;
//! * Microsoft GSM / WAV49: two frames (520 bits) packed into 65 bytes with
//!   no signature, each parameter least significant bit first, filling each
//!   byte from its least significant bit. The first frame ends in the middle
//!   of byte 32, the second frame starts with that byte's upper nibble.

use crate::{FRAME_BYTES, WAV49_BLOCK_BYTES};

/// Number of log-area-ratio parameters per frame.
pub(crate) const LAR_COUNT: usize = 8;
/// Number of sub-frames per frame.
pub(crate) const SUBFRAMES: usize = 4;
/// Number of RPE pulses per sub-frame.
pub(crate) const RPE_PULSES: usize = 13;
/// Signature in the upper nibble of the first byte of a standard frame.
pub(crate) const FRAME_SIGNATURE: u8 = 0xD;

/// Bit widths of `LARc[1..8]`.
const LAR_BITS: [u32; LAR_COUNT] = [6, 6, 5, 5, 4, 4, 3, 3];

/// Coded parameters of one 40-sample sub-frame.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct SubframeParams {
    /// LTP lag `Nc` (7 bits; only 40..=120 is valid, others repeat the last lag).
    pub nc: u8,
    /// LTP gain index `bc` (2 bits).
    pub bc: u8,
    /// RPE grid position `Mc` (2 bits).
    pub mc: u8,
    /// Block amplitude `xmaxc` (6 bits).
    pub xmaxc: u8,
    /// RPE pulses `xMc` (3 bits each).
    pub xmc: [u8; RPE_PULSES],
}

/// Coded parameters of one 160-sample frame.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct FrameParams {
    /// Coded log-area ratios `LARc[1..8]`.
    pub larc: [u8; LAR_COUNT],
    /// The four sub-frames.
    pub sub: [SubframeParams; SUBFRAMES],
}

/// A source of unsigned bit fields of at most 8 bits.
trait BitSource {
    fn take(&mut self, width: u32) -> u8;
}

/// Reads fields most significant bit first (standard frame layout).
struct MsbFirst<'a> {
    bytes: &'a [u8],
    bit: usize,
}

impl BitSource for MsbFirst<'_> {
    fn take(&mut self, width: u32) -> u8 {
        let mut value = 0u8;
        for _ in 0..width {
            // Out-of-range reads cannot happen for the fixed-size inputs used
            // here; reading zero keeps the function panic-free regardless.
            let byte = self.bytes.get(self.bit / 8).copied().unwrap_or(0);
            let b = (byte >> (7 - self.bit % 8)) & 1;
            value = (value << 1) | b;
            self.bit += 1;
        }
        value
    }
}

/// Reads fields least significant bit first from bytes filled LSB first
/// (WAV49 layout).
struct LsbFirst<'a> {
    bytes: &'a [u8],
    bit: usize,
}

impl BitSource for LsbFirst<'_> {
    fn take(&mut self, width: u32) -> u8 {
        let mut value = 0u8;
        for i in 0..width {
            let byte = self.bytes.get(self.bit / 8).copied().unwrap_or(0);
            let b = (byte >> (self.bit % 8)) & 1;
            value |= b << i;
            self.bit += 1;
        }
        value
    }
}

/// Reads the 260 parameter bits of one frame in their standard order.
fn read_params(src: &mut impl BitSource) -> FrameParams {
    let mut p = FrameParams::default();
    for (larc, width) in p.larc.iter_mut().zip(LAR_BITS) {
        *larc = src.take(width);
    }
    for sub in &mut p.sub {
        sub.nc = src.take(7);
        sub.bc = src.take(2);
        sub.mc = src.take(2);
        sub.xmaxc = src.take(6);
        for x in &mut sub.xmc {
            *x = src.take(3);
        }
    }
    p
}

/// Unpacks a standard 33-byte frame.
///
/// Returns `Err(nibble)` with the upper nibble of the first byte when it is
/// not the `0xD` signature.
pub(crate) fn unpack_frame(frame: &[u8; FRAME_BYTES]) -> Result<FrameParams, u8> {
    let nibble = frame[0] >> 4;
    if nibble != FRAME_SIGNATURE {
        return Err(nibble);
    }
    Ok(read_params(&mut MsbFirst {
        bytes: frame,
        bit: 4,
    }))
}

/// Unpacks a 65-byte WAV49 block into its two frames.
pub(crate) fn unpack_wav49(block: &[u8; WAV49_BLOCK_BYTES]) -> [FrameParams; 2] {
    let mut src = LsbFirst {
        bytes: block,
        bit: 0,
    };
    let first = read_params(&mut src);
    let second = read_params(&mut src);
    [first, second]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes fields MSB first, the inverse of [`MsbFirst`].
    fn pack_msb(fields: &[(u8, u32)], out: &mut [u8], mut bit: usize) {
        for &(value, width) in fields {
            for i in (0..width).rev() {
                if (value >> i) & 1 == 1 {
                    out[bit / 8] |= 0x80 >> (bit % 8);
                }
                bit += 1;
            }
        }
    }

    /// Writes fields LSB first, the inverse of [`LsbFirst`].
    fn pack_lsb(fields: &[(u8, u32)], out: &mut [u8], mut bit: usize) -> usize {
        for &(value, width) in fields {
            for i in 0..width {
                if (value >> i) & 1 == 1 {
                    out[bit / 8] |= 1 << (bit % 8);
                }
                bit += 1;
            }
        }
        bit
    }

    /// A recognisable parameter set and its field list.
    fn sample_params(seed: u8) -> (FrameParams, Vec<(u8, u32)>) {
        let mut p = FrameParams::default();
        let mut fields = Vec::new();
        let mut n = seed;
        let mut next = |width: u32| {
            n = n.wrapping_mul(37).wrapping_add(11);
            n & ((1u16 << width) - 1) as u8
        };
        for (i, w) in LAR_BITS.iter().enumerate() {
            p.larc[i] = next(*w);
            fields.push((p.larc[i], *w));
        }
        for s in &mut p.sub {
            s.nc = next(7);
            s.bc = next(2);
            s.mc = next(2);
            s.xmaxc = next(6);
            fields.extend([(s.nc, 7), (s.bc, 2), (s.mc, 2), (s.xmaxc, 6)]);
            for x in &mut s.xmc {
                *x = next(3);
                fields.push((*x, 3));
            }
        }
        (p, fields)
    }

    #[test]
    fn field_widths_fill_a_frame() {
        let (_, fields) = sample_params(1);
        let bits: u32 = fields.iter().map(|f| f.1).sum();
        assert_eq!(bits, 260);
        assert_eq!(4 + bits as usize, FRAME_BYTES * 8);
        assert_eq!(2 * bits as usize, WAV49_BLOCK_BYTES * 8);
    }

    #[test]
    fn standard_frame_round_trip() {
        let (p, fields) = sample_params(7);
        let mut frame = [0u8; FRAME_BYTES];
        frame[0] = FRAME_SIGNATURE << 4;
        pack_msb(&fields, &mut frame, 4);
        assert_eq!(unpack_frame(&frame), Ok(p));
    }

    #[test]
    fn bad_signature_is_reported() {
        let mut frame = [0u8; FRAME_BYTES];
        frame[0] = 0x5A;
        assert_eq!(unpack_frame(&frame), Err(0x5));
    }

    #[test]
    fn wav49_round_trip() {
        let (p1, f1) = sample_params(3);
        let (p2, f2) = sample_params(200);
        let mut block = [0u8; WAV49_BLOCK_BYTES];
        let bit = pack_lsb(&f1, &mut block, 0);
        assert_eq!(bit, 260);
        pack_lsb(&f2, &mut block, bit);
        assert_eq!(unpack_wav49(&block), [p1, p2]);
    }
}
