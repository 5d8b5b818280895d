//! The RPE-LTP synthesis of GSM 06.10 (section 5.3): from the coded
//! parameters of a frame to 160 samples of 13-bit speech in 16-bit words.
//!
//! Per sub-frame: RPE decoding (APCM inverse quantization and grid
//! positioning) gives the excitation `erp`, long-term synthesis adds the
//! pitch contribution to give the short-term residual `drp`. Per frame: the
//! log-area ratios are decoded, interpolated with the previous frame's,
//! turned into reflection coefficients and drive the lattice short-term
//! synthesis filter; de-emphasis, truncation and upscaling finish the job.

use crate::arith::{MAX_WORD, MIN_WORD, add, asl, asr, mult_r, sub};
use crate::unpack::{FrameParams, LAR_COUNT, RPE_PULSES, SubframeParams};
use crate::{FRAME_SAMPLES, GsmError, WAV49_BLOCK_SAMPLES, unpack};

/// Samples per sub-frame.
const SUBFRAME_SAMPLES: usize = 40;
/// Length of the reconstructed short-term residual history `drp[-120..-1]`.
const HISTORY: usize = 120;
/// Smallest valid LTP lag.
const MIN_LAG: u8 = 40;
/// Largest valid LTP lag.
const MAX_LAG: u8 = 120;

/// Normalized inverse mantissa `FAC[0..7]` (table 4.5).
const FAC: [i16; 8] = [18431, 20479, 22527, 24575, 26623, 28671, 30719, 32767];
/// Quantization levels of the LTP gain `QLB[0..3]` (table 4.3b).
const QLB: [i16; 4] = [3277, 11469, 21299, 32767];
/// Minimum value `MIC` of each coded LAR (table 5.1, rows 1..8).
const MIC: [i16; LAR_COUNT] = [-32, -32, -16, -16, -8, -8, -4, -4];
/// `B * 512` of each LAR quantizer (table 5.1).
const B: [i16; LAR_COUNT] = [0, 0, 2048, -2560, 94, -1792, -341, -1144];
/// `INVA = 32768 * 8 / A` of each LAR quantizer (table 5.1).
const INVA: [i16; LAR_COUNT] = [13107, 13107, 13107, 13107, 19223, 17476, 31454, 29708];
/// De-emphasis filter coefficient (`beta = 28180 / 32768`).
const DEEMPHASIS: i16 = 28180;

/// A GSM 06.10 full-rate decoder.
///
/// The decoder carries state from frame to frame (pitch history, filter
/// memory, the previous frame's log-area ratios), so the frames of one
/// stream must go through one decoder, in order. Use a new decoder for each
/// stream.
#[derive(Debug, Clone)]
pub struct Decoder {
    /// Reconstructed short-term residual: `dp[..120]` is `drp[-120..-1]`,
    /// `dp[120..]` the sub-frame being decoded (`drp[0..39]`).
    dp: [i16; HISTORY + SUBFRAME_SAMPLES],
    /// Last valid LTP lag `nrp`.
    nrp: u8,
    /// Decoded log-area ratios `LARpp` of the previous frame.
    larpp_prev: [i16; LAR_COUNT],
    /// State `v[0..8]` of the short-term synthesis lattice filter.
    v: [i16; LAR_COUNT + 1],
    /// De-emphasis filter memory `msr`.
    msr: i16,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Decoder {
    /// Creates a decoder in the standard's initial (home) state.
    pub fn new() -> Self {
        Self {
            dp: [0; HISTORY + SUBFRAME_SAMPLES],
            nrp: MIN_LAG,
            larpp_prev: [0; LAR_COUNT],
            v: [0; LAR_COUNT + 1],
            msr: 0,
        }
    }

    /// Decodes one standard 33-byte frame (signature `0xD` in the upper
    /// nibble of its first byte) into 160 samples.
    ///
    /// A frame with a bad signature is rejected and leaves the decoder's
    /// state untouched.
    pub fn decode_frame(
        &mut self,
        frame: &[u8; crate::FRAME_BYTES],
    ) -> Result<[i16; FRAME_SAMPLES], GsmError> {
        self.decode_frame_at(frame, 0)
    }

    /// [`Decoder::decode_frame`] reporting `index` as the frame number in errors.
    pub(crate) fn decode_frame_at(
        &mut self,
        frame: &[u8; crate::FRAME_BYTES],
        index: usize,
    ) -> Result<[i16; FRAME_SAMPLES], GsmError> {
        let params = unpack::unpack_frame(frame).map_err(|found| GsmError::BadSignature {
            frame: index,
            found,
        })?;
        Ok(self.synthesize(&params))
    }

    /// Decodes one 65-byte Microsoft GSM (WAV49) block, which holds two
    /// frames, into 320 samples. Every bit pattern is a valid block.
    pub fn decode_wav49_block(
        &mut self,
        block: &[u8; crate::WAV49_BLOCK_BYTES],
    ) -> [i16; WAV49_BLOCK_SAMPLES] {
        let [first, second] = unpack::unpack_wav49(block);
        let mut out = [0i16; WAV49_BLOCK_SAMPLES];
        let (a, b) = out.split_at_mut(FRAME_SAMPLES);
        a.copy_from_slice(&self.synthesize(&first));
        b.copy_from_slice(&self.synthesize(&second));
        out
    }

    /// Runs the full synthesis for one frame's parameters (5.3).
    fn synthesize(&mut self, params: &FrameParams) -> [i16; FRAME_SAMPLES] {
        // Sub-frame by sub-frame: excitation and long-term synthesis give
        // the short-term residual wt[0..159].
        let mut wt = [0i16; FRAME_SAMPLES];
        for (sub, wt_sub) in params.sub.iter().zip(wt.chunks_exact_mut(SUBFRAME_SAMPLES)) {
            let erp = rpe_decoding(sub);
            self.long_term_synthesis(sub.nc, sub.bc, &erp);
            wt_sub.copy_from_slice(&self.dp[HISTORY..]);
            self.dp.copy_within(SUBFRAME_SAMPLES.., 0);
        }

        let mut s = self.short_term_synthesis(&params.larc, &wt);
        self.postprocess(&mut s);
        s
    }

    /// Long-term synthesis filtering (5.3.2): `drp[0..39]` from the
    /// excitation and the residual history, left in `dp[120..160]`.
    fn long_term_synthesis(&mut self, ncr: u8, bcr: u8, erp: &[i16; SUBFRAME_SAMPLES]) {
        // An out-of-range lag repeats the last valid one.
        let nr = if (MIN_LAG..=MAX_LAG).contains(&ncr) {
            ncr
        } else {
            self.nrp
        };
        self.nrp = nr;
        let brp = QLB[usize::from(bcr & 3)];
        let nr = usize::from(nr);
        for (k, &e) in erp.iter().enumerate() {
            // HISTORY + k - nr >= 0 because nr <= 120, and < HISTORY + k
            // because nr >= 40 > k: only already-reconstructed samples are read.
            let drpp = mult_r(brp, self.dp[HISTORY + k - nr]);
            self.dp[HISTORY + k] = add(e, drpp);
        }
    }

    /// Short-term synthesis (5.3.3 and 5.2.8-5.2.9): decodes and
    /// interpolates the log-area ratios and filters the residual `wt`.
    fn short_term_synthesis(
        &mut self,
        larc: &[u8; LAR_COUNT],
        wt: &[i16; FRAME_SAMPLES],
    ) -> [i16; FRAME_SAMPLES] {
        let larpp = decode_lars(larc);
        let prev = self.larpp_prev;
        let mut s = [0i16; FRAME_SAMPLES];

        // Samples 0..12: 3/4 of the previous frame's LARs, 1/4 of the new.
        let larp = interpolate(&prev, &larpp, |old, new| {
            add(add(old >> 2, new >> 2), old >> 1)
        });
        self.lattice(&lar_to_rp(&larp), &wt[0..13], &mut s[0..13]);

        // Samples 13..26: half and half.
        let larp = interpolate(&prev, &larpp, |old, new| add(old >> 1, new >> 1));
        self.lattice(&lar_to_rp(&larp), &wt[13..27], &mut s[13..27]);

        // Samples 27..39: 1/4 of the previous, 3/4 of the new.
        let larp = interpolate(&prev, &larpp, |old, new| {
            add(add(old >> 2, new >> 2), new >> 1)
        });
        self.lattice(&lar_to_rp(&larp), &wt[27..40], &mut s[27..40]);

        // Samples 40..159: the new LARs alone.
        self.lattice(&lar_to_rp(&larpp), &wt[40..], &mut s[40..]);

        self.larpp_prev = larpp;
        s
    }

    /// The lattice short-term synthesis filter (5.3.4) with reflection
    /// coefficients `rrp`, carrying its state `v` across calls.
    fn lattice(&mut self, rrp: &[i16; LAR_COUNT], wt: &[i16], sr: &mut [i16]) {
        let v = &mut self.v;
        for (out, &input) in sr.iter_mut().zip(wt) {
            let mut sri = input;
            for i in (0..LAR_COUNT).rev() {
                sri = sub(sri, mult_r(rrp[i], v[i]));
                v[i + 1] = add(v[i], mult_r(rrp[i], sri));
            }
            v[0] = sri;
            *out = sri;
        }
    }

    /// De-emphasis filtering, truncation to 13 bits and upscaling (5.3.5-5.3.7).
    fn postprocess(&mut self, s: &mut [i16; FRAME_SAMPLES]) {
        let mut msr = self.msr;
        for x in s.iter_mut() {
            msr = add(*x, mult_r(msr, DEEMPHASIS));
            *x = add(msr, msr) & !7;
        }
        self.msr = msr;
    }
}

/// RPE decoding (5.3.1 with 5.2.15-5.2.17): the sub-frame's excitation
/// `erp[0..39]`, the 13 inverse-quantized pulses on grid `Mc`, zeros elsewhere.
fn rpe_decoding(sub: &SubframeParams) -> [i16; SUBFRAME_SAMPLES] {
    let (exp, mant) = xmaxc_to_exp_mant(sub.xmaxc & 0x3F);
    let xmp = apcm_inverse_quantization(&sub.xmc, exp, mant);

    let mut erp = [0i16; SUBFRAME_SAMPLES];
    let mc = usize::from(sub.mc & 3);
    for (i, &x) in xmp.iter().enumerate() {
        // mc + 3 * 12 <= 39.
        erp[mc + 3 * i] = x;
    }
    erp
}

/// Splits the coded block amplitude `xmaxc` (0..63) into the exponent
/// (-4..6) and mantissa (0..7) of its quantized value (5.2.15).
fn xmaxc_to_exp_mant(xmaxc: u8) -> (i16, i16) {
    let xmaxc = i16::from(xmaxc);
    let mut exp = if xmaxc > 15 { (xmaxc >> 3) - 1 } else { 0 };
    let mut mant = xmaxc - (exp << 3);
    if mant == 0 {
        exp = -4;
        mant = 7;
    } else {
        // Normalize the mantissa into 8..15, then drop its leading bit.
        while mant <= 7 {
            mant = (mant << 1) | 1;
            exp -= 1;
        }
        mant -= 8;
    }
    (exp, mant)
}

/// APCM inverse quantization of the 13 RPE pulses (5.2.16).
fn apcm_inverse_quantization(xmc: &[u8; RPE_PULSES], exp: i16, mant: i16) -> [i16; RPE_PULSES] {
    let temp1 = FAC[(mant & 7) as usize];
    let temp2 = sub(6, exp);
    let temp3 = asl(1, sub(temp2, 1));
    let mut xmp = [0i16; RPE_PULSES];
    for (out, &code) in xmp.iter_mut().zip(xmc) {
        // Restore the sign: 3-bit code 0..7 -> odd value -7..7, in Q12.
        let temp = ((i16::from(code & 7) << 1) - 7) << 12;
        let temp = add(mult_r(temp1, temp), temp3);
        *out = asr(temp, temp2);
    }
    xmp
}

/// Decoding of the coded log-area ratios (5.2.8): `LARpp[1..8]`.
fn decode_lars(larc: &[u8; LAR_COUNT]) -> [i16; LAR_COUNT] {
    let mut larpp = [0i16; LAR_COUNT];
    for i in 0..LAR_COUNT {
        // LARc + MIC fits in 6 signed bits, so the shift cannot overflow.
        let temp1 = add(i16::from(larc[i]), MIC[i]) << 10;
        let temp1 = sub(temp1, B[i] << 1);
        let temp1 = mult_r(INVA[i], temp1);
        larpp[i] = add(temp1, temp1);
    }
    larpp
}

/// Applies an interpolation rule to each pair of (previous, current) LARs (5.2.9.1).
fn interpolate(
    prev: &[i16; LAR_COUNT],
    cur: &[i16; LAR_COUNT],
    rule: impl Fn(i16, i16) -> i16,
) -> [i16; LAR_COUNT] {
    std::array::from_fn(|i| rule(prev[i], cur[i]))
}

/// Computes the reflection coefficients `rp` from the interpolated
/// log-area ratios `LARp` (5.2.9.2).
fn lar_to_rp(larp: &[i16; LAR_COUNT]) -> [i16; LAR_COUNT] {
    larp.map(|lar| {
        let magnitude = |temp: i16| {
            if temp < 11059 {
                temp << 1
            } else if temp < 20070 {
                temp + 11059
            } else {
                add(temp >> 2, 26112)
            }
        };
        if lar < 0 {
            let temp = if lar == MIN_WORD { MAX_WORD } else { -lar };
            -magnitude(temp)
        } else {
            magnitude(lar)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_mant_table() {
        assert_eq!(xmaxc_to_exp_mant(0), (-4, 7));
        assert_eq!(xmaxc_to_exp_mant(1), (-3, 7));
        assert_eq!(xmaxc_to_exp_mant(7), (-1, 7));
        assert_eq!(xmaxc_to_exp_mant(8), (0, 0));
        assert_eq!(xmaxc_to_exp_mant(15), (0, 7));
        assert_eq!(xmaxc_to_exp_mant(16), (1, 0));
        assert_eq!(xmaxc_to_exp_mant(63), (6, 7));
    }

    #[test]
    fn lar_to_rp_is_odd_and_bounded() {
        let larp = [0, 100, 11058, 11059, 20069, 20070, MAX_WORD, MIN_WORD];
        let rp = lar_to_rp(&larp);
        assert_eq!(rp, [0, 200, 22116, 22118, 31128, 31129, 32767, -32767]);
        let neg = lar_to_rp(&larp.map(|x: i16| x.saturating_neg()));
        assert_eq!(&neg[..6], &rp.map(|x| -x)[..6]);
    }
}
