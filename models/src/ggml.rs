//! CTranslate2 Whisper -> whisper.cpp GGML converter.
//!
//! Output layout (little-endian, as read by whisper.cpp's loader):
//!
//! ```text
//! i32 magic 0x67676d6c ("ggml")
//! i32 x 11 hparams: n_vocab, n_audio_ctx, n_audio_state, n_audio_head, n_audio_layer,
//!                   n_text_ctx, n_text_state, n_text_head, n_text_layer, n_mels, ftype
//! i32 n_mel, i32 n_fft (201), n_mel * n_fft f32 mel filters
//! i32 token count, then per token: i32 length, raw bytes
//! tensors: i32 n_dims, i32 name length, i32 type (ggml_type: 0 f32, 1 f16,
//!          2 q4_0, 6 q5_0, 7 q5_1, 8 q8_0), n_dims x i32 dims (innermost first), name, data
//! ```
//!
//! The weight matrices are f16 by default. With a quantized
//! [`GgmlWeightType`] the file is byte for byte what whisper.cpp's `quantize`
//! tool writes from the f16 file: every 2-D tensor except the positional
//! embeddings and the conv biases is quantized with ggml's reference block
//! quantizers (`quantize_row_*_ref`), the conv kernels stay f16, 1-D tensors
//! f32, and the header's `ftype` becomes `GGML_QNT_VERSION * 1000 + ftype`.

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::ct2::{Ct2DType, Ct2Model, Ct2Variable};
use crate::error::{Error, IoContext, Result};
use crate::hash::HashingWriter;

pub(crate) const GGML_MAGIC: i32 = 0x6767_6d6c;
pub(crate) const GGML_TYPE_F32: i32 = 0;
pub(crate) const GGML_TYPE_F16: i32 = 1;
const GGML_TYPE_Q4_0: i32 = 2;
const GGML_TYPE_Q5_0: i32 = 6;
const GGML_TYPE_Q5_1: i32 = 7;
const GGML_TYPE_Q8_0: i32 = 8;
/// `ggml_ftype` values of the header (`GGML_FTYPE_MOSTLY_*`).
const FTYPE_MOSTLY_F16: i32 = 1;
const FTYPE_MOSTLY_Q4_0: i32 = 2;
const FTYPE_MOSTLY_Q8_0: i32 = 7;
const FTYPE_MOSTLY_Q5_0: i32 = 8;
const FTYPE_MOSTLY_Q5_1: i32 = 9;
/// ggml's `GGML_QNT_VERSION` and `GGML_QNT_VERSION_FACTOR`: quantized files
/// carry `GGML_QNT_VERSION * GGML_QNT_VERSION_FACTOR + ftype` in the header.
const GGML_QNT_VERSION: i32 = 2;
const GGML_QNT_VERSION_FACTOR: i32 = 1000;
/// Values per block of the Q8_0, Q5_0, Q5_1 and Q4_0 formats.
const QK: usize = 32;

/// Whisper's STFT: 400-point FFT at 16 kHz.
const SAMPLE_RATE: f64 = 16_000.0;
const N_FFT: usize = 400;

/// whisper.cpp's end-of-text id for English-only models; multilingual models
/// (`n_vocab >= 51865`) have one more regular token.
const EOT_ENGLISH: usize = 50_256;
const N_VOCAB_MULTILINGUAL: usize = 51_865;

/// Whisper model dimensions, as stored in the GGML header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WhisperHParams {
    pub n_vocab: i32,
    pub n_audio_ctx: i32,
    pub n_audio_state: i32,
    pub n_audio_head: i32,
    pub n_audio_layer: i32,
    pub n_text_ctx: i32,
    pub n_text_state: i32,
    pub n_text_head: i32,
    pub n_text_layer: i32,
    pub n_mels: i32,
    pub ftype: i32,
}

impl WhisperHParams {
    fn as_array(&self) -> [i32; 11] {
        [
            self.n_vocab,
            self.n_audio_ctx,
            self.n_audio_state,
            self.n_audio_head,
            self.n_audio_layer,
            self.n_text_ctx,
            self.n_text_state,
            self.n_text_head,
            self.n_text_layer,
            self.n_mels,
            self.ftype,
        ]
    }

    /// True for multilingual vocabularies (whisper.cpp's rule).
    pub fn is_multilingual(&self) -> bool {
        self.n_vocab as usize >= N_VOCAB_MULTILINGUAL
    }
}

/// What a conversion produced.
#[derive(Debug, Clone)]
pub struct ConvertReport {
    /// The file written.
    pub output: PathBuf,
    /// Header values.
    pub hparams: WhisperHParams,
    /// Regular (non-special) tokens written.
    pub n_tokens: usize,
    /// Tensors written.
    pub n_tensors: usize,
    /// Size of the output in bytes.
    pub size: u64,
    /// sha256 of the output.
    pub sha256: String,
    /// Storage type of the weight matrices.
    pub weights: GgmlWeightType,
    /// Wall-clock time of the conversion.
    pub elapsed: Duration,
}

// ---------------------------------------------------------------------------
// Half-precision helpers.

/// IEEE 754 binary16 -> binary32 (exact).
pub(crate) fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h as u32) & 0x8000) << 16;
    let exp = ((h >> 10) & 0x1f) as u32;
    let mant = (h & 0x03ff) as u32;
    let bits = match (exp, mant) {
        (0, 0) => sign,
        (0, m) => {
            // Subnormal: value = m * 2^-24, normalise it.
            let shift = m.leading_zeros() - 21; // bring the top bit to position 10
            let m = (m << shift) & 0x03ff;
            let e = 127 - 15 + 1 - shift;
            sign | (e << 23) | (m << 13)
        }
        (0x1f, 0) => sign | 0x7f80_0000,
        (0x1f, m) => sign | 0x7fc0_0000 | (m << 13),
        (e, m) => sign | ((e + 127 - 15) << 23) | (m << 13),
    };
    f32::from_bits(bits)
}

/// IEEE 754 binary32 -> binary16, round to nearest, ties to even.
pub(crate) fn f32_to_f16(f: f32) -> u16 {
    let x = f.to_bits();
    let sign = ((x >> 16) & 0x8000) as u16;
    let exp = ((x >> 23) & 0xff) as i32;
    let mant = x & 0x007f_ffff;
    if exp == 0xff {
        return sign | if mant == 0 { 0x7c00 } else { 0x7e00 };
    }
    let e = exp - 127 + 15;
    if e >= 0x1f {
        return sign | 0x7c00;
    }
    if e <= 0 {
        if e < -10 {
            return sign;
        }
        // Subnormal result: include the implicit bit and shift.
        let m = mant | 0x0080_0000;
        let shift = (14 - e) as u32;
        let half = 1u32 << (shift - 1);
        let rem = m & ((1u32 << shift) - 1);
        let mut r = m >> shift;
        if rem > half || (rem == half && (r & 1) == 1) {
            r += 1;
        }
        return sign | r as u16;
    }
    let rem = mant & 0x1fff;
    let mut r = ((e as u32) << 10) | (mant >> 13);
    if rem > 0x1000 || (rem == 0x1000 && (r & 1) == 1) {
        r += 1; // may carry into the exponent, up to infinity: correct
    }
    sign | r as u16
}

/// bfloat16 -> binary32 (exact).
pub(crate) fn bf16_to_f32(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

// ---------------------------------------------------------------------------
// Weight types and ggml's block quantizers.

/// Storage type of the weight matrices of a whisper.cpp GGML file.
///
/// The quantized types are ggml's 32-value block formats; [`quantize`]
/// reproduces ggml's reference quantizers (`quantize_row_q8_0_ref`,
/// `quantize_row_q5_0_ref`, `quantize_row_q5_1_ref`) bit for bit, so a file
/// converted here equals the one whisper.cpp's `quantize` tool makes from the
/// f16 conversion.
///
/// [`quantize`]: GgmlWeightType::quantize
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum GgmlWeightType {
    /// IEEE half precision (2 bytes a value): the plain conversion.
    #[default]
    #[serde(rename = "f16")]
    F16,
    /// 8-bit: per block of 32, an f16 scale `d = max|x| / 127` and 32 signed
    /// bytes `round(x / d)` (34 bytes, 8.5 bits a value).
    #[serde(rename = "q8_0")]
    Q8_0,
    /// 5-bit symmetric: per block of 32, an f16 scale `d = x_maxabs / -16`
    /// and 32 unsigned 5-bit values `q` with `x ≈ (q - 16) d` (22 bytes,
    /// 5.5 bits a value).
    #[serde(rename = "q5_0")]
    Q5_0,
    /// 5-bit affine: per block of 32, f16 scale `d = (max - min) / 31` and
    /// f16 minimum `m`, 32 unsigned 5-bit values with `x ≈ q d + m` (24
    /// bytes, 6 bits a value).
    #[serde(rename = "q5_1")]
    Q5_1,
    /// 4-bit symmetric: per block of 32, an f16 scale `d = x_maxabs / -8`
    /// and 32 unsigned 4-bit values `q` with `x ≈ (q - 8) d` (18 bytes,
    /// 4.5 bits a value).
    #[serde(rename = "q4_0")]
    Q4_0,
}

impl GgmlWeightType {
    /// Every weight type, f16 first.
    pub const ALL: [GgmlWeightType; 5] = [
        GgmlWeightType::F16,
        GgmlWeightType::Q8_0,
        GgmlWeightType::Q5_0,
        GgmlWeightType::Q5_1,
        GgmlWeightType::Q4_0,
    ];

    /// The name used in the manifest and by whisper.cpp's `quantize` tool.
    pub fn name(self) -> &'static str {
        match self {
            GgmlWeightType::F16 => "f16",
            GgmlWeightType::Q8_0 => "q8_0",
            GgmlWeightType::Q5_0 => "q5_0",
            GgmlWeightType::Q5_1 => "q5_1",
            GgmlWeightType::Q4_0 => "q4_0",
        }
    }

    /// True for the block-quantized types.
    pub fn is_quantized(self) -> bool {
        self != GgmlWeightType::F16
    }

    /// ggml's `ggml_type` id, written in each tensor header.
    pub fn ggml_type(self) -> i32 {
        match self {
            GgmlWeightType::F16 => GGML_TYPE_F16,
            GgmlWeightType::Q8_0 => GGML_TYPE_Q8_0,
            GgmlWeightType::Q5_0 => GGML_TYPE_Q5_0,
            GgmlWeightType::Q5_1 => GGML_TYPE_Q5_1,
            GgmlWeightType::Q4_0 => GGML_TYPE_Q4_0,
        }
    }

    /// The `ftype` of the file header as whisper.cpp's `quantize` tool
    /// writes it (`GGML_QNT_VERSION * 1000 + ggml_ftype` when quantized).
    /// whisper.cpp reports `header_ftype() % 1000`.
    pub fn header_ftype(self) -> i32 {
        let ftype = match self {
            GgmlWeightType::F16 => return FTYPE_MOSTLY_F16,
            GgmlWeightType::Q8_0 => FTYPE_MOSTLY_Q8_0,
            GgmlWeightType::Q5_0 => FTYPE_MOSTLY_Q5_0,
            GgmlWeightType::Q5_1 => FTYPE_MOSTLY_Q5_1,
            GgmlWeightType::Q4_0 => FTYPE_MOSTLY_Q4_0,
        };
        GGML_QNT_VERSION * GGML_QNT_VERSION_FACTOR + ftype
    }

    /// Values per block and bytes per block.
    pub fn block(self) -> (usize, usize) {
        match self {
            GgmlWeightType::F16 => (1, 2),
            GgmlWeightType::Q8_0 => (QK, 2 + QK),
            GgmlWeightType::Q5_0 => (QK, 2 + 4 + QK / 2),
            GgmlWeightType::Q5_1 => (QK, 2 + 2 + 4 + QK / 2),
            GgmlWeightType::Q4_0 => (QK, 2 + QK / 2),
        }
    }

    /// Encoded size of `n` values, `None` unless `n` is a whole number of blocks.
    pub fn encoded_len(self, n: usize) -> Option<usize> {
        let (values, bytes) = self.block();
        n.is_multiple_of(values).then_some(n / values * bytes)
    }

    /// Encodes `values` (row-major; blocks never straddle rows when the row
    /// length is a multiple of 32). f16 rounds to nearest even.
    ///
    /// # Panics
    /// When `values.len()` is not a whole number of blocks (see
    /// [`GgmlWeightType::encoded_len`]).
    pub fn quantize(self, values: &[f32]) -> Vec<u8> {
        let len = self.encoded_len(values.len()).unwrap_or_else(|| {
            panic!(
                "{} values are not a whole number of {self} blocks",
                values.len()
            )
        });
        let mut out = Vec::with_capacity(len);
        match self {
            GgmlWeightType::F16 => {
                out.extend(values.iter().flat_map(|&v| f32_to_f16(v).to_le_bytes()));
            }
            GgmlWeightType::Q8_0 => values
                .chunks_exact(QK)
                .for_each(|b| quantize_block_q8_0(b, &mut out)),
            GgmlWeightType::Q5_0 => values
                .chunks_exact(QK)
                .for_each(|b| quantize_block_q5_0(b, &mut out)),
            GgmlWeightType::Q5_1 => values
                .chunks_exact(QK)
                .for_each(|b| quantize_block_q5_1(b, &mut out)),
            GgmlWeightType::Q4_0 => values
                .chunks_exact(QK)
                .for_each(|b| quantize_block_q4_0(b, &mut out)),
        }
        debug_assert_eq!(out.len(), len);
        out
    }

    /// Decodes what [`GgmlWeightType::quantize`] wrote (as ggml's
    /// `dequantize_row_*`).
    ///
    /// # Panics
    /// When `bytes.len()` is not a whole number of blocks.
    pub fn dequantize(self, bytes: &[u8]) -> Vec<f32> {
        let (values, block) = self.block();
        assert!(
            bytes.len().is_multiple_of(block),
            "{} bytes are not a whole number of {self} blocks",
            bytes.len()
        );
        let half = |b: &[u8], at: usize| f16_to_f32(u16::from_le_bytes([b[at], b[at + 1]]));
        // The five bits of value j of a Q5 block whose qh starts at `qh`.
        let q5 = |b: &[u8], qh: usize, j: usize| {
            let high = u32::from_le_bytes([b[qh], b[qh + 1], b[qh + 2], b[qh + 3]]);
            let nibble = if j < QK / 2 {
                b[qh + 4 + j] & 0x0f
            } else {
                b[qh + 4 + j - QK / 2] >> 4
            };
            i32::from(nibble) | (((high >> j) & 1) as i32) << 4
        };
        let mut out = Vec::with_capacity(bytes.len() / block * values);
        for b in bytes.chunks_exact(block) {
            match self {
                GgmlWeightType::F16 => out.push(half(b, 0)),
                GgmlWeightType::Q8_0 => {
                    let d = half(b, 0);
                    out.extend(b[2..].iter().map(|&q| f32::from(q as i8) * d));
                }
                GgmlWeightType::Q5_0 => {
                    let d = half(b, 0);
                    out.extend((0..QK).map(|j| (q5(b, 2, j) - 16) as f32 * d));
                }
                GgmlWeightType::Q5_1 => {
                    let (d, m) = (half(b, 0), half(b, 2));
                    out.extend((0..QK).map(|j| q5(b, 4, j) as f32 * d + m));
                }
                GgmlWeightType::Q4_0 => {
                    let d = half(b, 0);
                    let nibbles = &b[2..];
                    out.extend(
                        nibbles
                            .iter()
                            .map(|&q| (i32::from(q & 0x0f) - 8) as f32 * d),
                    );
                    out.extend(nibbles.iter().map(|&q| (i32::from(q >> 4) - 8) as f32 * d));
                }
            }
        }
        out
    }
}

impl fmt::Display for GgmlWeightType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for GgmlWeightType {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        GgmlWeightType::ALL
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("unknown GGML weight type `{s}` (f16, q8_0, q5_0, q5_1, q4_0)"))
    }
}

// The three block quantizers follow ggml's reference implementations
// operation by operation in f32 (same comparisons, same divisions, the
// scale rounded to f16 only when stored), which is what makes them
// bit-exact; do not "simplify" the arithmetic.

/// One Q8_0 block: f16 `d`, then 32 × i8.
fn quantize_block_q8_0(x: &[f32], out: &mut Vec<u8>) {
    debug_assert_eq!(x.len(), QK);
    let mut amax = 0.0f32;
    for &v in x {
        let a = v.abs();
        amax = if amax > a { amax } else { a };
    }
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    out.extend_from_slice(&f32_to_f16(d).to_le_bytes());
    // f32::round rounds half away from zero, as C's roundf.
    out.extend(x.iter().map(|&v| (v * id).round() as i8 as u8));
}

/// Appends the 5-bit values `q` of a block as ggml lays them out: a
/// little-endian u32 of the fifth bits (bit j for value j), then 16 bytes of
/// nibbles, value j in the low and value j + 16 in the high nibble of byte j.
fn push_q5(q: &[u8; QK], out: &mut Vec<u8>) {
    let mut qh = 0u32;
    for (j, &v) in q.iter().enumerate() {
        qh |= u32::from((v >> 4) & 1) << j;
    }
    out.extend_from_slice(&qh.to_le_bytes());
    out.extend((0..QK / 2).map(|j| (q[j] & 0x0f) | ((q[j + QK / 2] & 0x0f) << 4)));
}

/// The value of largest magnitude, with its sign; the first one on ties (the
/// scale of ggml's symmetric formats).
fn signed_absmax(x: &[f32]) -> f32 {
    let (mut amax, mut max) = (0.0f32, 0.0f32);
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    max
}

/// One Q5_0 block: f16 `d`, qh, qs.
fn quantize_block_q5_0(x: &[f32], out: &mut Vec<u8>) {
    debug_assert_eq!(x.len(), QK);
    let d = signed_absmax(x) / -16.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut q = [0u8; QK];
    for (q, &v) in q.iter_mut().zip(x) {
        // C: MIN(31, (int8_t)(x * id + 16.5f)), truncating toward zero.
        *q = ((v * id + 16.5) as i8).min(31) as u8;
    }
    out.extend_from_slice(&f32_to_f16(d).to_le_bytes());
    push_q5(&q, out);
}

/// One Q5_1 block: f16 `d`, f16 `m`, qh, qs.
fn quantize_block_q5_1(x: &[f32], out: &mut Vec<u8>) {
    debug_assert_eq!(x.len(), QK);
    let (mut min, mut max) = (f32::MAX, -f32::MAX);
    for &v in x {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
    }
    let d = (max - min) / 31.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut q = [0u8; QK];
    for (q, &v) in q.iter_mut().zip(x) {
        // C: (uint8_t)((x - min) * id + 0.5f), truncating toward zero.
        *q = ((v - min) * id + 0.5) as u8;
    }
    out.extend_from_slice(&f32_to_f16(d).to_le_bytes());
    out.extend_from_slice(&f32_to_f16(min).to_le_bytes());
    push_q5(&q, out);
}

/// One Q4_0 block: f16 `d`, then 16 bytes of nibbles, value j in the low and
/// value j + 16 in the high nibble of byte j.
fn quantize_block_q4_0(x: &[f32], out: &mut Vec<u8>) {
    debug_assert_eq!(x.len(), QK);
    let d = signed_absmax(x) / -8.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    // C: MIN(15, (int8_t)(x * id + 8.5f)), truncating toward zero.
    let q = |v: f32| ((v * id + 8.5) as i8).min(15) as u8;
    out.extend_from_slice(&f32_to_f16(d).to_le_bytes());
    out.extend((0..QK / 2).map(|j| q(x[j]) | (q(x[j + QK / 2]) << 4)));
}

// ---------------------------------------------------------------------------
// Mel filter bank.

fn hz_to_mel_slaney(f: f64) -> f64 {
    let f_sp = 200.0 / 3.0;
    let min_log_hz = 1000.0;
    let min_log_mel = min_log_hz / f_sp;
    let logstep = 6.4f64.ln() / 27.0;
    if f >= min_log_hz {
        min_log_mel + (f / min_log_hz).ln() / logstep
    } else {
        f / f_sp
    }
}

fn mel_to_hz_slaney(m: f64) -> f64 {
    let f_sp = 200.0 / 3.0;
    let min_log_hz = 1000.0;
    let min_log_mel = min_log_hz / f_sp;
    let logstep = 6.4f64.ln() / 27.0;
    if m >= min_log_mel {
        min_log_hz * (logstep * (m - min_log_mel)).exp()
    } else {
        f_sp * m
    }
}

/// Slaney-scale, Slaney-normalised triangular mel filter bank from 0 Hz to
/// Nyquist, row-major `n_mels x (n_fft / 2 + 1)`; the same values as
/// `librosa.filters.mel(sr, n_fft, n_mels)` (float32, `htk=False`,
/// `norm="slaney"`), which is what Whisper's `mel_filters.npz` holds.
pub fn mel_filters(sample_rate: f64, n_fft: usize, n_mels: usize) -> Vec<f32> {
    let n_bins = n_fft / 2 + 1;
    // FFT bin centre frequencies (numpy.fft.rfftfreq).
    let bin_hz = 1.0 / (n_fft as f64 * (1.0 / sample_rate));
    let fft_freqs: Vec<f64> = (0..n_bins).map(|k| k as f64 * bin_hz).collect();
    // n_mels + 2 band edges equally spaced in mel (numpy.linspace semantics).
    let max_mel = hz_to_mel_slaney(sample_rate / 2.0);
    let n_edges = n_mels + 2;
    let step = max_mel / (n_edges - 1) as f64;
    let mel_f: Vec<f64> = (0..n_edges)
        .map(|i| {
            let m = if i == n_edges - 1 {
                max_mel
            } else {
                i as f64 * step
            };
            mel_to_hz_slaney(m)
        })
        .collect();

    let mut weights = vec![0f32; n_mels * n_bins];
    for i in 0..n_mels {
        let lower_width = mel_f[i + 1] - mel_f[i];
        let upper_width = mel_f[i + 2] - mel_f[i + 1];
        let enorm = 2.0 / (mel_f[i + 2] - mel_f[i]);
        for (k, &f) in fft_freqs.iter().enumerate() {
            let lower = -(mel_f[i] - f) / lower_width;
            let upper = (mel_f[i + 2] - f) / upper_width;
            // Explicit comparisons rather than f64::min/max: those may return
            // either zero when given -0.0 and 0.0, which made the output
            // depend on the optimisation level.
            let v = if lower < upper { lower } else { upper };
            let w = if v > 0.0 { v as f32 } else { 0.0 };
            weights[i * n_bins + k] = (w as f64 * enorm) as f32;
        }
    }
    weights
}

// ---------------------------------------------------------------------------
// Byte-level BPE.

/// The inverse of GPT-2's `bytes_to_unicode`: maps each of the 256 printable
/// stand-in characters used in byte-level BPE vocabularies back to its byte.
pub fn gpt2_byte_decoder() -> HashMap<char, u8> {
    let printable = |b: u32| {
        (u32::from('!')..=u32::from('~')).contains(&b)
            || (0xa1..=0xac).contains(&b)
            || (0xae..=0xff).contains(&b)
    };
    let mut map = HashMap::with_capacity(256);
    let mut n = 0u32;
    for b in 0u32..256 {
        let c = if printable(b) {
            b
        } else {
            n += 1;
            255 + n
        };
        map.insert(char::from_u32(c).expect("valid char"), b as u8);
    }
    map
}

fn decode_token(token: &str, decoder: &HashMap<char, u8>) -> Option<Vec<u8>> {
    token.chars().map(|c| decoder.get(&c).copied()).collect()
}

/// Token strings in id order, from `vocabulary.txt` (one per line) or
/// `tokenizer.json` (`model.vocab` plus `added_tokens`).
fn load_vocabulary(model_dir: &Path) -> Result<(Vec<String>, PathBuf)> {
    let txt = model_dir.join("vocabulary.txt");
    if txt.is_file() {
        let text = std::fs::read_to_string(&txt).ctx("cannot read", &txt)?;
        let mut tokens: Vec<String> = text.split('\n').map(str::to_owned).collect();
        if tokens.last().is_some_and(String::is_empty) {
            tokens.pop();
        }
        return Ok((tokens, txt));
    }
    let json_path = model_dir.join("tokenizer.json");
    let text = std::fs::read_to_string(&json_path).ctx("cannot read", &json_path)?;
    let bad = |reason: &str| Error::Conversion {
        path: json_path.clone(),
        reason: reason.to_string(),
    };
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(&format!("not JSON: {e}")))?;
    let vocab = value
        .pointer("/model/vocab")
        .and_then(|v| v.as_object())
        .ok_or_else(|| bad("no model.vocab object"))?;
    let mut by_id: HashMap<usize, String> = HashMap::new();
    for (tok, id) in vocab {
        let id = id.as_u64().ok_or_else(|| bad("non-integer token id"))? as usize;
        by_id.insert(id, tok.clone());
    }
    if let Some(added) = value.get("added_tokens").and_then(|v| v.as_array()) {
        for t in added {
            if let (Some(id), Some(content)) = (
                t.get("id").and_then(|v| v.as_u64()),
                t.get("content").and_then(|v| v.as_str()),
            ) {
                by_id
                    .entry(id as usize)
                    .or_insert_with(|| content.to_string());
            }
        }
    }
    let mut tokens = Vec::with_capacity(by_id.len());
    for id in 0..by_id.len() {
        match by_id.remove(&id) {
            Some(t) => tokens.push(t),
            None => break,
        }
    }
    Ok((tokens, json_path))
}

// ---------------------------------------------------------------------------
// Tensor mapping.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OutType {
    F32,
    /// f16 or a block-quantized type.
    Weights(GgmlWeightType),
}

impl OutType {
    fn ggml_type(self) -> i32 {
        match self {
            OutType::F32 => GGML_TYPE_F32,
            OutType::Weights(t) => t.ggml_type(),
        }
    }
}

#[derive(Debug, Clone)]
struct TensorPlan {
    /// whisper.cpp tensor name.
    name: String,
    /// CTranslate2 variable name.
    src: String,
    /// Rows `[start, end)` of the source's first dimension (fused tensors).
    rows: Option<(usize, usize)>,
    /// Output shape, numpy order.
    shape: Vec<usize>,
    out: OutType,
}

/// Splits `rows` rows into `parts` equal chunks and returns chunk `index`.
fn fused_rows(rows: usize, parts: usize, index: usize) -> Option<(usize, usize)> {
    if parts == 0 || index >= parts || !rows.is_multiple_of(parts) {
        return None;
    }
    let n = rows / parts;
    Some((index * n, (index + 1) * n))
}

struct Planner<'a> {
    model: &'a Ct2Model,
    /// Storage type of the weight matrices.
    weights: GgmlWeightType,
    plans: Vec<TensorPlan>,
}

impl Planner<'_> {
    fn err(&self, reason: String) -> Error {
        Error::Conversion {
            path: self.model.path.clone(),
            reason,
        }
    }

    fn var(&self, name: &str) -> Result<&Ct2Variable> {
        self.model.require(name)
    }

    fn check_shape(&self, var: &Ct2Variable, expected: &[usize]) -> Result<()> {
        if var.shape != expected {
            return Err(self.err(format!(
                "variable {} has shape {:?}, expected {:?}",
                var.name, var.shape, expected
            )));
        }
        Ok(())
    }

    fn push(&mut self, name: String, src: &str, rows: Option<(usize, usize)>) -> Result<()> {
        let var = self.var(src)?;
        if !var.dtype.is_float() {
            return Err(self.err(format!(
                "variable {src} is {:?}; quantized CTranslate2 models are not supported, \
                 use a float16 or float32 export",
                var.dtype
            )));
        }
        let mut shape = var.shape.clone();
        if let Some((a, b)) = rows {
            shape[0] = b - a;
        }
        let is_conv_bias = name == "encoder.conv1.bias" || name == "encoder.conv2.bias";
        if is_conv_bias {
            shape.push(1); // whisper.cpp expects (n, 1)
        }
        // As whisper.cpp's reference converter: 1-D tensors, conv biases and
        // positional embeddings in f32, everything else in f16. As its
        // quantize tool: of those, the matrices (2-D) take the weight type,
        // the conv kernels (3-D) stay f16 (whisper.cpp loads them as f16).
        let out = if var.shape.len() < 2 || is_conv_bias || name.ends_with("positional_embedding") {
            OutType::F32
        } else if shape.len() == 2 {
            OutType::Weights(self.weights)
        } else {
            OutType::Weights(GgmlWeightType::F16)
        };
        if let OutType::Weights(t) = out {
            let (block, _) = t.block();
            if !shape[shape.len() - 1].is_multiple_of(block) {
                return Err(self.err(format!(
                    "{name}: rows of {} values cannot be stored as {t} (blocks of {block})",
                    shape[shape.len() - 1]
                )));
            }
        }
        self.plans.push(TensorPlan {
            name,
            src: src.to_string(),
            rows,
            shape,
            out,
        });
        Ok(())
    }

    fn layer_norm(&mut self, ct2: &str, ggml: &str, d: usize) -> Result<()> {
        for (c, g) in [("gamma", "weight"), ("beta", "bias")] {
            let src = format!("{ct2}/{c}");
            self.check_shape(self.var(&src)?, &[d])?;
            self.push(format!("{ggml}.{g}"), &src, None)?;
        }
        Ok(())
    }

    fn linear(&mut self, ct2: &str, ggml: &str, out_dim: usize, in_dim: usize) -> Result<()> {
        let w = format!("{ct2}/weight");
        let b = format!("{ct2}/bias");
        self.check_shape(self.var(&w)?, &[out_dim, in_dim])?;
        self.check_shape(self.var(&b)?, &[out_dim])?;
        self.push(format!("{ggml}.weight"), &w, None)?;
        self.push(format!("{ggml}.bias"), &b, None)
    }

    /// A fused projection: `names[i]` gets chunk `i` of `parts`; a `None`
    /// name drops that chunk's bias (Whisper's key projection has no bias).
    fn fused(&mut self, ct2: &str, ggml: &str, names: &[&str], d: usize) -> Result<()> {
        let parts = names.len();
        let w = format!("{ct2}/weight");
        let b = format!("{ct2}/bias");
        self.check_shape(self.var(&w)?, &[parts * d, d])?;
        self.check_shape(self.var(&b)?, &[parts * d])?;
        for (i, part) in names.iter().enumerate() {
            let rows = fused_rows(parts * d, parts, i);
            self.push(format!("{ggml}.{part}.weight"), &w, rows)?;
            if *part != "key" {
                self.push(format!("{ggml}.{part}.bias"), &b, rows)?;
            }
        }
        Ok(())
    }

    fn count_layers(&self, prefix: &str) -> usize {
        (0..)
            .take_while(|i| {
                self.model
                    .get(&format!("{prefix}/layer_{i}/ffn/linear_0/weight"))
                    .is_some()
            })
            .count()
    }
}

fn heads(model: &Ct2Model, config: &serde_json::Value, side: &str, d: usize) -> usize {
    if let Some(h) = model.scalar_i64(&format!("{side}/num_heads"))
        && h > 0
    {
        return h as usize;
    }
    let key = format!("{side}_attention_heads");
    if let Some(h) = config.get(&key).and_then(|v| v.as_u64())
        && h > 0
    {
        return h as usize;
    }
    (d / 64).max(1)
}

/// Converts a CTranslate2 Whisper model directory (`model.bin`,
/// `vocabulary.txt` or `tokenizer.json`, optionally `config.json`) into a
/// whisper.cpp GGML f16 file at `out` (written to a temporary file next to
/// `out` and renamed into place).
pub fn convert_ct2_whisper_to_ggml(model_dir: &Path, out: &Path) -> Result<ConvertReport> {
    convert_ct2_whisper_to_ggml_as(model_dir, out, GgmlWeightType::F16)
}

/// [`convert_ct2_whisper_to_ggml`] with the weight matrices stored as
/// `weights`. A quantized result is byte for byte what whisper.cpp's
/// `quantize` tool makes of the f16 conversion (weights that are not f16 in
/// the source are rounded to f16 first).
pub fn convert_ct2_whisper_to_ggml_as(
    model_dir: &Path,
    out: &Path,
    weights: GgmlWeightType,
) -> Result<ConvertReport> {
    let started = Instant::now();
    let bin_path = model_dir.join("model.bin");
    let model = Ct2Model::open(&bin_path)?;
    let conv_err = |reason: String| Error::Conversion {
        path: bin_path.clone(),
        reason,
    };
    if model.spec_name != "WhisperSpec" {
        return Err(conv_err(format!(
            "spec is `{}`, not a Whisper model (WhisperSpec)",
            model.spec_name
        )));
    }

    let config_path = model_dir.join("config.json");
    let config: serde_json::Value = if config_path.is_file() {
        let text = std::fs::read_to_string(&config_path).ctx("cannot read", &config_path)?;
        serde_json::from_str(&text).map_err(|e| Error::Conversion {
            path: config_path.clone(),
            reason: format!("not JSON: {e}"),
        })?
    } else {
        serde_json::Value::Null
    };

    // ---- hyper-parameters from tensor shapes ------------------------------
    let conv1 = model.require("encoder/conv1/weight")?;
    if conv1.shape.len() != 3 || conv1.shape[2] != 3 {
        return Err(conv_err(format!(
            "encoder/conv1/weight has shape {:?}, expected [d, n_mels, 3]",
            conv1.shape
        )));
    }
    let (d_audio, n_mels) = (conv1.shape[0], conv1.shape[1]);
    let emb = model.require("decoder/embeddings/weight")?;
    if emb.shape.len() != 2 {
        return Err(conv_err("decoder/embeddings/weight is not 2-D".into()));
    }
    let (n_vocab, d_text) = (emb.shape[0], emb.shape[1]);
    let audio_pos = model.require("encoder/position_encodings/encodings")?;
    let text_pos = model.require("decoder/position_encodings/encodings")?;
    if audio_pos.shape.len() != 2 || audio_pos.shape[1] != d_audio {
        return Err(conv_err(format!(
            "encoder position encodings have shape {:?}",
            audio_pos.shape
        )));
    }
    if text_pos.shape.len() != 2 || text_pos.shape[1] != d_text {
        return Err(conv_err(format!(
            "decoder position encodings have shape {:?}",
            text_pos.shape
        )));
    }
    if let Some(proj) = model.variables.get("decoder/projection/weight") {
        tracing::warn!(
            variable = %proj.name,
            "decoder output projection is stored separately; whisper.cpp ties it to the token embedding"
        );
    }

    let mut planner = Planner {
        model: &model,
        weights,
        plans: Vec::new(),
    };
    let n_audio_layer = planner.count_layers("encoder");
    let n_text_layer = planner.count_layers("decoder");
    if n_audio_layer == 0 || n_text_layer == 0 {
        return Err(conv_err("no encoder or decoder layers found".into()));
    }
    let hparams = WhisperHParams {
        n_vocab: n_vocab as i32,
        n_audio_ctx: audio_pos.shape[0] as i32,
        n_audio_state: d_audio as i32,
        n_audio_head: heads(&model, &config, "encoder", d_audio) as i32,
        n_audio_layer: n_audio_layer as i32,
        n_text_ctx: text_pos.shape[0] as i32,
        n_text_state: d_text as i32,
        n_text_head: heads(&model, &config, "decoder", d_text) as i32,
        n_text_layer: n_text_layer as i32,
        n_mels: n_mels as i32,
        ftype: weights.header_ftype(),
    };
    tracing::debug!(?hparams, "whisper hyper-parameters");

    // ---- tensor plan (whisper.cpp names) ----------------------------------
    let da = d_audio;
    planner.check_shape(model.require("encoder/conv1/bias")?, &[da])?;
    planner.check_shape(model.require("encoder/conv2/weight")?, &[da, da, 3])?;
    planner.check_shape(model.require("encoder/conv2/bias")?, &[da])?;
    planner.push(
        "encoder.positional_embedding".into(),
        "encoder/position_encodings/encodings",
        None,
    )?;
    planner.push("encoder.conv1.weight".into(), "encoder/conv1/weight", None)?;
    planner.push("encoder.conv1.bias".into(), "encoder/conv1/bias", None)?;
    planner.push("encoder.conv2.weight".into(), "encoder/conv2/weight", None)?;
    planner.push("encoder.conv2.bias".into(), "encoder/conv2/bias", None)?;
    for i in 0..n_audio_layer {
        let c = format!("encoder/layer_{i}");
        let g = format!("encoder.blocks.{i}");
        planner.layer_norm(
            &format!("{c}/self_attention/layer_norm"),
            &format!("{g}.attn_ln"),
            da,
        )?;
        planner.fused(
            &format!("{c}/self_attention/linear_0"),
            &format!("{g}.attn"),
            &["query", "key", "value"],
            da,
        )?;
        planner.linear(
            &format!("{c}/self_attention/linear_1"),
            &format!("{g}.attn.out"),
            da,
            da,
        )?;
        planner.layer_norm(&format!("{c}/ffn/layer_norm"), &format!("{g}.mlp_ln"), da)?;
        let ffn = model.require(&format!("{c}/ffn/linear_0/weight"))?.shape[0];
        planner.linear(&format!("{c}/ffn/linear_0"), &format!("{g}.mlp.0"), ffn, da)?;
        planner.linear(&format!("{c}/ffn/linear_1"), &format!("{g}.mlp.2"), da, ffn)?;
    }
    planner.layer_norm("encoder/layer_norm", "encoder.ln_post", da)?;

    let dt = d_text;
    planner.push(
        "decoder.positional_embedding".into(),
        "decoder/position_encodings/encodings",
        None,
    )?;
    planner.push(
        "decoder.token_embedding.weight".into(),
        "decoder/embeddings/weight",
        None,
    )?;
    for i in 0..n_text_layer {
        let c = format!("decoder/layer_{i}");
        let g = format!("decoder.blocks.{i}");
        planner.layer_norm(
            &format!("{c}/self_attention/layer_norm"),
            &format!("{g}.attn_ln"),
            dt,
        )?;
        planner.fused(
            &format!("{c}/self_attention/linear_0"),
            &format!("{g}.attn"),
            &["query", "key", "value"],
            dt,
        )?;
        planner.linear(
            &format!("{c}/self_attention/linear_1"),
            &format!("{g}.attn.out"),
            dt,
            dt,
        )?;
        planner.layer_norm(
            &format!("{c}/attention/layer_norm"),
            &format!("{g}.cross_attn_ln"),
            dt,
        )?;
        // Cross-attention keys/values come from the encoder output.
        planner.check_shape(
            model.require(&format!("{c}/attention/linear_0/weight"))?,
            &[dt, dt],
        )?;
        planner.linear(
            &format!("{c}/attention/linear_0"),
            &format!("{g}.cross_attn.query"),
            dt,
            dt,
        )?;
        if da != dt {
            return Err(conv_err(format!(
                "encoder width {da} differs from decoder width {dt}"
            )));
        }
        planner.fused(
            &format!("{c}/attention/linear_1"),
            &format!("{g}.cross_attn"),
            &["key", "value"],
            dt,
        )?;
        planner.linear(
            &format!("{c}/attention/linear_2"),
            &format!("{g}.cross_attn.out"),
            dt,
            dt,
        )?;
        planner.layer_norm(&format!("{c}/ffn/layer_norm"), &format!("{g}.mlp_ln"), dt)?;
        let ffn = model.require(&format!("{c}/ffn/linear_0/weight"))?.shape[0];
        planner.linear(&format!("{c}/ffn/linear_0"), &format!("{g}.mlp.0"), ffn, dt)?;
        planner.linear(&format!("{c}/ffn/linear_1"), &format!("{g}.mlp.2"), dt, ffn)?;
    }
    planner.layer_norm("decoder/layer_norm", "decoder.ln", dt)?;
    let plans = planner.plans;

    // ---- vocabulary --------------------------------------------------------
    let (tokens, vocab_path) = load_vocabulary(model_dir)?;
    let n_regular = tokens
        .iter()
        .position(|t| t == "<|endoftext|>")
        .ok_or_else(|| Error::Conversion {
            path: vocab_path.clone(),
            reason: "no <|endoftext|> token".into(),
        })?;
    let expected_regular = EOT_ENGLISH + usize::from(hparams.is_multilingual());
    if n_regular != expected_regular {
        return Err(Error::Conversion {
            path: vocab_path,
            reason: format!(
                "<|endoftext|> has id {n_regular}, but whisper.cpp expects {expected_regular} \
                 for a vocabulary of {n_vocab}"
            ),
        });
    }
    let decoder = gpt2_byte_decoder();
    let mut token_bytes = Vec::with_capacity(n_regular);
    for (id, t) in tokens[..n_regular].iter().enumerate() {
        token_bytes.push(decode_token(t, &decoder).ok_or_else(|| Error::Conversion {
            path: vocab_path.clone(),
            reason: format!("token {id} ({t:?}) is not byte-level BPE"),
        })?);
    }

    // ---- write -------------------------------------------------------------
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let tmp = tempfile::Builder::new()
        .prefix(".converting-")
        .tempfile_in(&parent)
        .ctx("cannot create a temporary file in", &parent)?;
    let file = tmp.as_file().try_clone().ctx("cannot open", tmp.path())?;
    let mut w = HashingWriter::new(BufWriter::with_capacity(8 << 20, file));
    let wr = |w: &mut HashingWriter<BufWriter<File>>, bytes: &[u8]| -> Result<()> {
        w.write_all(bytes).ctx("cannot write", tmp.path())
    };

    wr(&mut w, &GGML_MAGIC.to_le_bytes())?;
    for v in hparams.as_array() {
        wr(&mut w, &v.to_le_bytes())?;
    }
    let n_bins = N_FFT / 2 + 1;
    let filters = mel_filters(SAMPLE_RATE, N_FFT, n_mels);
    wr(&mut w, &(n_mels as i32).to_le_bytes())?;
    wr(&mut w, &(n_bins as i32).to_le_bytes())?;
    let filter_bytes: Vec<u8> = filters.iter().flat_map(|v| v.to_le_bytes()).collect();
    wr(&mut w, &filter_bytes)?;

    wr(&mut w, &(token_bytes.len() as i32).to_le_bytes())?;
    for t in &token_bytes {
        wr(&mut w, &(t.len() as i32).to_le_bytes())?;
        wr(&mut w, t)?;
    }

    let mut reader = BufReader::new(File::open(&bin_path).ctx("cannot open", &bin_path)?);
    for plan in &plans {
        let var = model.require(&plan.src)?;
        let (start, len) = match plan.rows {
            Some((a, b)) => ((a * var.row_bytes()) as u64, (b - a) * var.row_bytes()),
            None => (0, var.byte_len as usize),
        };
        let raw = model.read_bytes(&mut reader, var, start, len)?;
        let data = convert_data(&raw, var.dtype, plan.out);
        let ty = plan.out.ggml_type();
        let name = plan.name.as_bytes();
        wr(&mut w, &(plan.shape.len() as i32).to_le_bytes())?;
        wr(&mut w, &(name.len() as i32).to_le_bytes())?;
        wr(&mut w, &ty.to_le_bytes())?;
        for &d in plan.shape.iter().rev() {
            wr(&mut w, &(d as i32).to_le_bytes())?;
        }
        wr(&mut w, name)?;
        wr(&mut w, &data)?;
        tracing::trace!(tensor = %plan.name, shape = ?plan.shape, ty, "tensor written");
    }

    let (buf, sha256, size) = w.finish();
    let file = buf
        .into_inner()
        .map_err(|e| Error::io("cannot write", tmp.path(), e.into_error()))?;
    crate::set_world_readable(&file, tmp.path())?;
    file.sync_all().ctx("cannot sync", tmp.path())?;
    drop(file);
    tmp.persist(out)
        .map_err(|e| Error::io("cannot rename into", out, e.error))?;

    let report = ConvertReport {
        output: out.to_path_buf(),
        hparams,
        n_tokens: token_bytes.len(),
        n_tensors: plans.len(),
        size,
        sha256,
        weights,
        elapsed: started.elapsed(),
    };
    tracing::info!(
        output = %out.display(),
        weights = %weights,
        size,
        sha256 = %report.sha256,
        tensors = report.n_tensors,
        tokens = report.n_tokens,
        elapsed_ms = report.elapsed.as_millis() as u64,
        "converted CTranslate2 Whisper model to GGML"
    );
    Ok(report)
}

/// Converts little-endian source elements to the output type. Quantized
/// types start from the f16 values, as whisper.cpp's quantize tool does.
fn convert_data(raw: &[u8], src: Ct2DType, out: OutType) -> Vec<u8> {
    let halves = || {
        raw.chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
    };
    let singles = || {
        raw.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
    };
    let t = match out {
        OutType::F32 => {
            return match src {
                Ct2DType::F32 => raw.to_vec(),
                Ct2DType::F16 => halves().flat_map(|h| f16_to_f32(h).to_le_bytes()).collect(),
                Ct2DType::BF16 => halves()
                    .flat_map(|h| bf16_to_f32(h).to_le_bytes())
                    .collect(),
                // Integer types are rejected while planning.
                _ => unreachable!("non-float CTranslate2 variable reached conversion"),
            };
        }
        OutType::Weights(t) => t,
    };
    let f16: Vec<u8> = match src {
        Ct2DType::F16 => raw.to_vec(),
        Ct2DType::BF16 => halves()
            .flat_map(|h| f32_to_f16(bf16_to_f32(h)).to_le_bytes())
            .collect(),
        Ct2DType::F32 => singles()
            .flat_map(|f| f32_to_f16(f).to_le_bytes())
            .collect(),
        _ => unreachable!("non-float CTranslate2 variable reached conversion"),
    };
    if !t.is_quantized() {
        return f16;
    }
    let values: Vec<f32> = f16
        .chunks_exact(2)
        .map(|c| f16_to_f32(u16::from_le_bytes([c[0], c[1]])))
        .collect();
    t.quantize(&values)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ct2::tests::Ct2Builder;

    #[test]
    fn half_precision_round_trips() {
        for v in [
            0.0f32,
            -0.0,
            1.0,
            -2.5,
            65504.0,
            6.1035156e-5,
            5.9604645e-8,
            0.333_251_95,
        ] {
            assert_eq!(f16_to_f32(f32_to_f16(v)), v, "{v}");
        }
        assert_eq!(f32_to_f16(1.0), 0x3c00);
        assert_eq!(f32_to_f16(65520.0), 0x7c00); // rounds to infinity
        assert_eq!(f32_to_f16(1e-9), 0);
        assert!(f16_to_f32(0x7e00).is_nan());
        assert_eq!(f16_to_f32(0x0001), 5.9604645e-8);
        assert_eq!(f16_to_f32(0x03ff), 6.097555e-5);
        // ties to even: 1 + 2^-11 is halfway between 1 and 1 + 2^-10
        assert_eq!(f32_to_f16(1.0 + 2f32.powi(-11)), 0x3c00);
        assert_eq!(f32_to_f16(1.0 + 3.0 * 2f32.powi(-11)), 0x3c02);
        // every finite half survives f16 -> f32 -> f16
        for h in 0u16..0x7c00 {
            assert_eq!(f32_to_f16(f16_to_f32(h)), h);
            assert_eq!(f32_to_f16(f16_to_f32(h | 0x8000)), h | 0x8000);
        }
        assert_eq!(bf16_to_f32(0x3f80), 1.0);
    }

    #[test]
    fn mel_filter_bank_matches_librosa() {
        let f = mel_filters(16_000.0, 400, 80);
        assert_eq!(f.len(), 80 * 201);
        let at = |m: usize, k: usize| f[m * 201 + k] as f64;
        // Reference values of librosa.filters.mel(sr=16000, n_fft=400, n_mels=80)
        // (= Whisper's mel_filters.npz), float32 widened to f64.
        for (m, k, v) in [
            (0, 1, 0.024_862_594_902_515_41),
            (1, 1, 0.001_990_821_911_022_067),
            (1, 2, 0.022_871_771_827_340_126),
            (2, 2, 0.003_981_643_822_044_134),
            (2, 3, 0.020_880_950_614_809_99),
            (9, 10, 0.006_945_197_004_824_877),
            (39, 41, 0.011_486_922_390_758_991),
            (69, 131, 0.004_875_534_214_079_38),
            (79, 190, 0.002_232_054_946_944_117_5),
            (79, 192, 0.003_164_711_641_147_732_7),
            (79, 199, 0.000_448_759_004_939_347_5),
        ] {
            assert!(
                (at(m, k) - v).abs() < 1e-9,
                "filter {m} bin {k}: {} vs {v}",
                at(m, k)
            );
        }
        assert_eq!(at(0, 0), 0.0);
        assert_eq!(at(0, 2), 0.0);
        assert_eq!(at(79, 200), 0.0); // the Nyquist bin is the upper edge
        let total: f64 = f.iter().map(|&v| v as f64).sum();
        assert!((total - 1.999_024).abs() < 1e-5, "sum {total}");
        assert!(f.iter().all(|&v| v >= 0.0 && v.is_sign_positive())); // no -0.0
        // Each filter is a single triangle: non-zero bins are contiguous.
        for m in 0..80 {
            let nz: Vec<usize> = (0..201).filter(|&k| at(m, k) > 0.0).collect();
            assert!(!nz.is_empty());
            assert_eq!(nz.last().unwrap() - nz[0] + 1, nz.len(), "filter {m}");
        }
        // 128-band variant (large-v3) has the right size and is normalised too.
        let f128 = mel_filters(16_000.0, 400, 128);
        assert_eq!(f128.len(), 128 * 201);
        assert!(f128.iter().all(|v| v.is_finite() && *v >= 0.0));
    }

    #[test]
    fn byte_decoder_is_gpt2_inverse() {
        let d = gpt2_byte_decoder();
        assert_eq!(d.len(), 256);
        let mut seen = [false; 256];
        for &b in d.values() {
            seen[b as usize] = true;
        }
        assert!(seen.iter().all(|&s| s));
        assert_eq!(d[&'!'], b'!');
        assert_eq!(d[&'Ġ'], b' '); // U+0120
        assert_eq!(d[&'Ċ'], b'\n'); // U+010A
        assert_eq!(d[&'Ā'], 0); // U+0100
        assert_eq!(d[&'ł'], 0xa0); // U+0142
        assert_eq!(d[&'Ń'], 0xad); // U+0143: the last remapped byte
        assert_eq!(decode_token("Ġhello", &d).unwrap(), b" hello");
        // "é" in UTF-8 is C3 A9; byte-level BPE shows it as "Ã©".
        assert_eq!(decode_token("Ã©", &d).unwrap(), "é".as_bytes());
        assert_eq!(decode_token("", &d).unwrap(), b"");
        assert!(decode_token("€", &d).is_none());
    }

    #[test]
    fn fused_split() {
        assert_eq!(fused_rows(1536, 3, 0), Some((0, 512)));
        assert_eq!(fused_rows(1536, 3, 1), Some((512, 1024)));
        assert_eq!(fused_rows(1536, 3, 2), Some((1024, 1536)));
        assert_eq!(fused_rows(1024, 2, 1), Some((512, 1024)));
        assert_eq!(fused_rows(10, 3, 0), None);
        assert_eq!(fused_rows(9, 3, 3), None);
    }

    /// A tiny Whisper-shaped CT2 model: d=4, 1 layer each side, 3 mel bins.
    fn tiny_model(dir: &Path, n_vocab: usize) {
        tiny_model_d(dir, n_vocab, 4);
    }

    /// A Whisper-shaped CT2 model of width `d`, 1 layer each side, 3 mel
    /// bins. Matrices count up from a base (q rows from 0, k rows from 100,
    /// v rows from 200), scaled by 4 / d so that wide models keep small values.
    fn tiny_model_d(dir: &Path, n_vocab: usize, d: usize) {
        let s = 4.0 / d as f32;
        let mut b = Ct2Builder::default();
        let vals =
            |n: usize, base: f32| (0..n).map(|i| (base + i as f32) * s).collect::<Vec<f32>>();
        let du = d as u32;
        b.i16("encoder/num_heads", 2);
        b.i16("decoder/num_heads", 2);
        b.f16("encoder/conv1/weight", &[du, 3, 3], &vals(9 * d, 0.0));
        b.f16("encoder/conv1/bias", &[du], &vals(d, 0.0));
        b.f16("encoder/conv2/weight", &[du, du, 3], &vals(3 * d * d, 0.0));
        b.f16("encoder/conv2/bias", &[du], &vals(d, 0.0));
        b.f16(
            "encoder/position_encodings/encodings",
            &[6, du],
            &vals(6 * d, 0.0),
        );
        b.f16(
            "decoder/position_encodings/encodings",
            &[5, du],
            &vals(5 * d, 0.0),
        );
        b.f16(
            "decoder/embeddings/weight",
            &[n_vocab as u32, du],
            &vec![0.5; n_vocab * d],
        );
        b.alias("decoder/projection/weight", "decoder/embeddings/weight");
        for side in ["encoder", "decoder"] {
            let l = format!("{side}/layer_0");
            let mut ln = |p: &str| {
                b.f16(&format!("{p}/gamma"), &[du], &vec![1.0; d]);
                b.f16(&format!("{p}/beta"), &[du], &vec![0.0; d]);
            };
            ln(&format!("{l}/self_attention/layer_norm"));
            ln(&format!("{l}/ffn/layer_norm"));
            ln(&format!("{side}/layer_norm"));
            if side == "decoder" {
                ln(&format!("{l}/attention/layer_norm"));
            }
            // q rows are 0.., k rows 100.., v rows 200..
            let mut qkv = Vec::new();
            for base in [0.0, 100.0, 200.0] {
                qkv.extend(vals(d * d, base));
            }
            b.f16(
                &format!("{l}/self_attention/linear_0/weight"),
                &[3 * du, du],
                &qkv,
            );
            let mut qkv_bias = vec![1.0; d];
            qkv_bias.extend(vec![0.0; d]);
            qkv_bias.extend(vec![3.0; d]);
            b.f16(
                &format!("{l}/self_attention/linear_0/bias"),
                &[3 * du],
                &qkv_bias,
            );
            b.f16(
                &format!("{l}/self_attention/linear_1/weight"),
                &[du, du],
                &vals(d * d, 0.0),
            );
            b.f16(
                &format!("{l}/self_attention/linear_1/bias"),
                &[du],
                &vals(d, 0.0),
            );
            b.f16(
                &format!("{l}/ffn/linear_0/weight"),
                &[4 * du, du],
                &vals(4 * d * d, 0.0),
            );
            b.f16(
                &format!("{l}/ffn/linear_0/bias"),
                &[4 * du],
                &vals(4 * d, 0.0),
            );
            b.f16(
                &format!("{l}/ffn/linear_1/weight"),
                &[du, 4 * du],
                &vals(4 * d * d, 0.0),
            );
            b.f16(&format!("{l}/ffn/linear_1/bias"), &[du], &vals(d, 0.0));
            if side == "decoder" {
                b.f16(
                    &format!("{l}/attention/linear_0/weight"),
                    &[du, du],
                    &vals(d * d, 0.0),
                );
                b.f16(
                    &format!("{l}/attention/linear_0/bias"),
                    &[du],
                    &vals(d, 0.0),
                );
                let mut kv = vals(d * d, 100.0);
                kv.extend(vals(d * d, 200.0));
                b.f16(
                    &format!("{l}/attention/linear_1/weight"),
                    &[2 * du, du],
                    &kv,
                );
                let mut kv_bias = vec![0.0; d];
                kv_bias.extend(vec![7.0; d]);
                b.f16(&format!("{l}/attention/linear_1/bias"), &[2 * du], &kv_bias);
                b.f16(
                    &format!("{l}/attention/linear_2/weight"),
                    &[du, du],
                    &vals(d * d, 0.0),
                );
                b.f16(
                    &format!("{l}/attention/linear_2/bias"),
                    &[du],
                    &vals(d, 0.0),
                );
            }
        }
        std::fs::write(dir.join("model.bin"), b.build()).unwrap();
    }

    /// (name, type, dims innermost first, data)
    type Tensor = (String, i32, Vec<i32>, Vec<u8>);

    /// Minimal reader for the GGML output, for checking the converter.
    fn read_ggml(bytes: &[u8]) -> (Vec<i32>, Vec<Vec<u8>>, Vec<Tensor>) {
        let mut p = 0usize;
        let i32_at = |p: &mut usize| {
            let v = i32::from_le_bytes(bytes[*p..*p + 4].try_into().unwrap());
            *p += 4;
            v
        };
        assert_eq!(i32_at(&mut p), GGML_MAGIC);
        let hp: Vec<i32> = (0..11).map(|_| i32_at(&mut p)).collect();
        let n_mel = i32_at(&mut p) as usize;
        let n_fft = i32_at(&mut p) as usize;
        p += n_mel * n_fft * 4;
        let n_tok = i32_at(&mut p) as usize;
        let mut toks = Vec::new();
        for _ in 0..n_tok {
            let n = i32_at(&mut p) as usize;
            toks.push(bytes[p..p + n].to_vec());
            p += n;
        }
        let mut tensors = Vec::new();
        while p < bytes.len() {
            let nd = i32_at(&mut p) as usize;
            let nl = i32_at(&mut p) as usize;
            let ty = i32_at(&mut p);
            let dims: Vec<i32> = (0..nd).map(|_| i32_at(&mut p)).collect();
            let name = String::from_utf8(bytes[p..p + nl].to_vec()).unwrap();
            p += nl;
            let values: usize = dims.iter().map(|&d| d as usize).product();
            let n = match ty {
                GGML_TYPE_F32 => values * 4,
                _ => GgmlWeightType::ALL
                    .into_iter()
                    .find(|t| t.ggml_type() == ty)
                    .and_then(|t| t.encoded_len(values))
                    .unwrap_or_else(|| panic!("tensor {name} of type {ty}")),
            };
            tensors.push((name, ty, dims, bytes[p..p + n].to_vec()));
            p += n;
        }
        (hp, toks, tensors)
    }

    #[test]
    fn converts_hand_built_model() {
        let dir = tempfile::tempdir().unwrap();
        let n_vocab = 51864; // English-only: 50256 regular tokens
        tiny_model(dir.path(), n_vocab);
        let mut vocab: Vec<String> = (0..EOT_ENGLISH).map(|i| format!("t{i}")).collect();
        vocab[1] = "Ġa".into();
        vocab.push("<|endoftext|>".into());
        vocab.push("<|startoftranscript|>".into());
        std::fs::write(dir.path().join("vocabulary.txt"), vocab.join("\n") + "\n").unwrap();
        let out = dir.path().join("out.bin");
        let report = convert_ct2_whisper_to_ggml(dir.path(), &out).unwrap();
        let bytes = std::fs::read(&out).unwrap();
        assert_eq!(report.size, bytes.len() as u64);
        assert_eq!(report.n_tokens, EOT_ENGLISH);
        let (hp, toks, tensors) = read_ggml(&bytes);
        assert_eq!(hp, [n_vocab as i32, 6, 4, 2, 1, 5, 4, 2, 1, 3, 1]);
        assert_eq!(toks.len(), EOT_ENGLISH);
        assert_eq!(toks[1], b" a");
        assert_eq!(toks[0], b"t0");
        let get = |n: &str| {
            tensors
                .iter()
                .find(|t| t.0 == n)
                .unwrap_or_else(|| panic!("{n}"))
        };
        assert!(tensors.iter().all(|t| !t.0.ends_with("key.bias")));
        // 2 layer norms + qkv (5) + out (2) + mlp_ln (2) + mlp (4) = 15 per encoder block
        // decoder block adds cross_attn_ln (2) + cross q/k/v/out (7) = 24
        assert_eq!(tensors.len(), 5 + 15 + 2 + 2 + 24 + 2);
        let h = |t: &Tensor, i: usize| f16_to_f32(u16::from_le_bytes([t.3[2 * i], t.3[2 * i + 1]]));
        let f =
            |t: &Tensor, i: usize| f32::from_le_bytes(t.3[4 * i..4 * i + 4].try_into().unwrap());
        let k = get("encoder.blocks.0.attn.key.weight");
        assert_eq!((k.1, k.2.clone()), (1, vec![4, 4]));
        assert_eq!(h(k, 0), 100.0);
        let v = get("decoder.blocks.0.attn.value.weight");
        assert_eq!(h(v, 15), 215.0);
        let vb = get("decoder.blocks.0.attn.value.bias");
        assert_eq!((vb.1, f(vb, 0)), (0, 3.0));
        let qb = get("decoder.blocks.0.attn.query.bias");
        assert_eq!(f(qb, 3), 1.0);
        let ck = get("decoder.blocks.0.cross_attn.key.weight");
        assert_eq!(h(ck, 0), 100.0);
        let cvb = get("decoder.blocks.0.cross_attn.value.bias");
        assert_eq!(f(cvb, 0), 7.0);
        let c1 = get("encoder.conv1.bias");
        assert_eq!((c1.1, c1.2.clone()), (0, vec![1, 4]));
        let c1w = get("encoder.conv1.weight");
        assert_eq!((c1w.1, c1w.2.clone()), (1, vec![3, 3, 4]));
        let pe = get("decoder.positional_embedding");
        assert_eq!((pe.1, pe.2.clone()), (0, vec![4, 5]));
        let te = get("decoder.token_embedding.weight");
        assert_eq!((te.1, te.2.clone()), (1, vec![4, n_vocab as i32]));
        let ln = get("decoder.ln.weight");
        assert_eq!((ln.1, f(ln, 0)), (0, 1.0));

        // Deterministic output.
        let again = convert_ct2_whisper_to_ggml(dir.path(), &dir.path().join("again.bin")).unwrap();
        assert_eq!(again.sha256, report.sha256);

        // A vocabulary whose <|endoftext|> id does not fit n_vocab is refused.
        vocab.insert(0, "extra".into());
        std::fs::write(dir.path().join("vocabulary.txt"), vocab.join("\n")).unwrap();
        let err = convert_ct2_whisper_to_ggml(dir.path(), &out).unwrap_err();
        assert!(err.to_string().contains("<|endoftext|>"), "{err}");
    }

    /// Deterministic pseudo-random values in [-1, 1) (64-bit LCG).
    fn noise(n: usize, seed: u64) -> Vec<f32> {
        let mut state = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        (0..n)
            .map(|_| {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn weight_type_names_and_ids() {
        use GgmlWeightType::*;
        let table = [
            (F16, "f16", 1, 1, (1, 2)),
            (Q8_0, "q8_0", 8, 2007, (32, 34)),
            (Q5_0, "q5_0", 6, 2008, (32, 22)),
            (Q5_1, "q5_1", 7, 2009, (32, 24)),
            (Q4_0, "q4_0", 2, 2002, (32, 18)),
        ];
        for (t, name, ty, ftype, block) in table {
            assert_eq!(t.to_string(), name);
            assert_eq!(name.parse::<GgmlWeightType>().unwrap(), t);
            assert_eq!(name.to_uppercase().parse::<GgmlWeightType>().unwrap(), t);
            assert_eq!(t.ggml_type(), ty);
            assert_eq!(t.header_ftype(), ftype);
            // whisper.cpp: qntvr = ftype / 1000, ftype %= 1000
            assert_eq!(t.header_ftype() % GGML_QNT_VERSION_FACTOR, ftype % 1000);
            assert_eq!(t.block(), block);
            assert_eq!(t.is_quantized(), t != F16);
            let json = serde_json::to_string(&t).unwrap();
            assert_eq!(json, format!("\"{name}\""));
        }
        assert!("q4_1".parse::<GgmlWeightType>().is_err());
        assert_eq!(GgmlWeightType::default(), F16);
        assert_eq!(Q8_0.encoded_len(64), Some(68));
        assert_eq!(Q5_1.encoded_len(33), None);
        assert_eq!(F16.encoded_len(3), Some(6));
    }

    #[test]
    fn q8_0_hand_computed_blocks() {
        // max |x| = 127: d = 1 and q = round(x), halves away from zero.
        let mut x = [0f32; 32];
        x[..10].copy_from_slice(&[127.0, -127.0, 0.5, -0.5, 1.5, -2.5, 2.4, -0.49, 100.0, 3.0]);
        let b = GgmlWeightType::Q8_0.quantize(&x);
        assert_eq!(b.len(), 34);
        assert_eq!(b[..2], [0x00, 0x3c]); // d = 1.0 in f16, little-endian
        assert_eq!(b[2..12], [127, 0x81, 1, 0xff, 2, 0xfd, 2, 0, 100, 3]);
        assert!(b[12..].iter().all(|&q| q == 0));
        // d = 1/127 is not an f16: stored rounded (0x2008), while the values
        // are divided by the f32 scale: 0.5 * 127 = 63.5 -> 64.
        let mut x = [0f32; 32];
        x[31] = 1.0;
        x[0] = 0.5;
        x[1] = -0.25;
        let b = GgmlWeightType::Q8_0.quantize(&x);
        assert_eq!(b[..2], [0x08, 0x20]);
        assert_eq!((b[2], b[3] as i8, b[33]), (64, -32, 127));
        // All zero: d = 0, q = 0.
        assert!(
            GgmlWeightType::Q8_0
                .quantize(&[0.0; 64])
                .iter()
                .all(|&v| v == 0)
        );
    }

    #[test]
    fn q5_0_hand_computed_blocks() {
        // The first value of largest magnitude is -16: d = -16 / -16 = 1 and
        // q = min(31, trunc(x + 16.5)); the later +16 is clamped to 31.
        let mut x = [0f32; 32];
        x[..8].copy_from_slice(&[-16.0, 16.0, 0.0, 0.5, -0.5, 15.0, 3.2, -3.6]);
        x[16] = -15.0;
        x[17] = 7.0;
        // q = [0, 31, 16, 17, 16, 31, 19, 12, 16 x 8, 1, 23, 16 x 14]
        let b = GgmlWeightType::Q5_0.quantize(&x);
        assert_eq!(b.len(), 22);
        assert_eq!(b[..2], [0x00, 0x3c]); // d = 1.0
        // fifth bits: values 1..=6, 8..=15, 17..=31
        assert_eq!(b[2..6], 0xfffe_ff7eu32.to_le_bytes());
        // nibbles: value j low, value j + 16 high
        assert_eq!(
            b[6..],
            [
                0x10, 0x7f, 0x00, 0x01, 0x00, 0x0f, 0x03, 0x0c, 0, 0, 0, 0, 0, 0, 0, 0
            ]
        );
        // A positive extreme makes d negative: max = 2, d = -0.125.
        let mut x = [0f32; 32];
        x[..3].copy_from_slice(&[2.0, -2.0, 1.0]);
        let b = GgmlWeightType::Q5_0.quantize(&x);
        assert_eq!(b[..2], 0xb000u16.to_le_bytes());
        let q: Vec<i32> = GgmlWeightType::Q5_0
            .dequantize(&b)
            .iter()
            .map(|v| (v / -0.125) as i32 + 16)
            .collect();
        assert_eq!(q[..4], [0, 31, 8, 16]);
        // All zero: d = 0 / -16 = -0.0 (0x8000) and every q = 16.
        let b = GgmlWeightType::Q5_0.quantize(&[0.0; 32]);
        let mut expected = vec![0x00, 0x80, 0xff, 0xff, 0xff, 0xff];
        expected.extend([0u8; 16]);
        assert_eq!(b, expected);
        assert!(
            GgmlWeightType::Q5_0
                .dequantize(&b)
                .iter()
                .all(|&v| v == 0.0)
        );
    }

    #[test]
    fn q5_1_hand_computed_block() {
        // min = -1, max = 30: d = 31 / 31 = 1, m = -1, q = trunc(x + 1 + 0.5).
        let mut x = [0f32; 32];
        x[..5].copy_from_slice(&[-1.0, 30.0, 0.5, 0.49, 14.5]);
        x[16] = 29.6;
        // q = [0, 31, 2, 1, 16, 1 x 11, 31, 1 x 15]
        let b = GgmlWeightType::Q5_1.quantize(&x);
        assert_eq!(b.len(), 24);
        assert_eq!(b[..4], [0x00, 0x3c, 0x00, 0xbc]); // d = 1.0, m = -1.0
        assert_eq!(b[4..8], [0x12, 0x00, 0x01, 0x00]); // fifth bits of 1, 4, 16
        let mut qs = vec![0xf0, 0x1f, 0x12, 0x11, 0x10];
        qs.extend([0x11; 11]);
        assert_eq!(b[8..], qs);
        assert!(
            GgmlWeightType::Q5_1
                .quantize(&[0.0; 32])
                .iter()
                .all(|&v| v == 0)
        );
        let back = GgmlWeightType::Q5_1.dequantize(&b);
        assert_eq!(back[..5], [-1.0, 30.0, 1.0, 0.0, 15.0]);
    }

    #[test]
    fn quantizers_round_trip_within_bounds() {
        // Scales that keep the block scales normal f16 numbers (ggml's
        // formats lose precision, as here, once d is subnormal).
        for (seed, scale) in [(1u64, 1.0f32), (2, 0.05), (3, 300.0), (4, 8.0)] {
            let x: Vec<f32> = noise(32 * 64, seed).iter().map(|v| v * scale).collect();
            for t in GgmlWeightType::ALL {
                let bytes = t.quantize(&x);
                assert_eq!(bytes.len(), t.encoded_len(x.len()).unwrap());
                let y = t.dequantize(&bytes);
                assert_eq!(y.len(), x.len());
                for (i, (xb, yb)) in x.chunks(32).zip(y.chunks(32)).enumerate() {
                    let amax = xb.iter().fold(0f32, |a, v| a.max(v.abs()));
                    let (lo, hi) = xb
                        .iter()
                        .fold((f32::MAX, f32::MIN), |(l, h), &v| (l.min(v), h.max(v)));
                    // Half a step, plus the f16 rounding of the scale (and
                    // minimum) times the largest code; Q5_0 and Q4_0 clamp the value
                    // opposite the extreme one step short (15 of 16, 7 of 8).
                    let bound = match t {
                        GgmlWeightType::F16 => amax * 2f32.powi(-11),
                        GgmlWeightType::Q8_0 => amax / 127.0 * (0.5 + 127.0 / 2048.0),
                        GgmlWeightType::Q5_0 => amax / 16.0 * (1.0 + 32.0 / 2048.0),
                        GgmlWeightType::Q5_1 => {
                            (hi - lo) / 31.0 * (0.5 + 31.0 / 2048.0) + lo.abs() / 2048.0
                        }
                        GgmlWeightType::Q4_0 => amax / 8.0 * (1.0 + 16.0 / 2048.0),
                    } * 1.0001;
                    let err = xb
                        .iter()
                        .zip(yb)
                        .fold(0f32, |e, (a, b)| e.max((a - b).abs()));
                    assert!(
                        err <= bound,
                        "{t} seed {seed} block {i}: error {err} > {bound}"
                    );
                }
                // On average far better than the worst case.
                let rms = (x.iter().zip(&y).map(|(a, b)| (a - b).powi(2)).sum::<f32>()
                    / x.len() as f32)
                    .sqrt();
                let step = match t {
                    GgmlWeightType::F16 => 1.0 / 1024.0,
                    GgmlWeightType::Q8_0 => 1.0 / 127.0,
                    GgmlWeightType::Q5_0 => 1.0 / 16.0,
                    GgmlWeightType::Q5_1 => 2.0 / 31.0,
                    GgmlWeightType::Q4_0 => 1.0 / 8.0,
                };
                assert!(rms < 0.4 * step * scale, "{t} seed {seed}: rms {rms}");
            }
        }
    }

    #[test]
    #[should_panic(expected = "not a whole number of q8_0 blocks")]
    fn quantize_needs_whole_blocks() {
        GgmlWeightType::Q8_0.quantize(&[1.0; 33]);
    }

    #[test]
    fn converts_hand_built_model_quantized() {
        let dir = tempfile::tempdir().unwrap();
        let n_vocab = 51864;
        let d = 32;
        tiny_model_d(dir.path(), n_vocab, d);
        let mut vocab: Vec<String> = (0..EOT_ENGLISH).map(|i| format!("t{i}")).collect();
        vocab.push("<|endoftext|>".into());
        std::fs::write(dir.path().join("vocabulary.txt"), vocab.join("\n")).unwrap();

        let f16_out = dir.path().join("f16.bin");
        let f16_report = convert_ct2_whisper_to_ggml(dir.path(), &f16_out).unwrap();
        assert_eq!(f16_report.weights, GgmlWeightType::F16);
        let as_f16 = convert_ct2_whisper_to_ggml_as(
            dir.path(),
            &dir.path().join("f16b.bin"),
            GgmlWeightType::F16,
        )
        .unwrap();
        assert_eq!(as_f16.sha256, f16_report.sha256);
        let (f16_hp, f16_toks, f16_tensors) = read_ggml(&std::fs::read(&f16_out).unwrap());

        for t in [
            GgmlWeightType::Q8_0,
            GgmlWeightType::Q5_0,
            GgmlWeightType::Q5_1,
        ] {
            let out = dir.path().join(format!("{t}.bin"));
            let report = convert_ct2_whisper_to_ggml_as(dir.path(), &out, t).unwrap();
            assert_eq!(report.weights, t);
            assert_eq!(report.hparams.ftype, t.header_ftype());
            let bytes = std::fs::read(&out).unwrap();
            assert_eq!(report.size, bytes.len() as u64);
            let (hp, toks, tensors) = read_ggml(&bytes);
            assert_eq!(hp[..10], f16_hp[..10]);
            assert_eq!(hp[10], t.header_ftype());
            assert_eq!(toks, f16_toks);
            assert_eq!(tensors.len(), f16_tensors.len());
            // Tensor by tensor, what whisper.cpp's quantize tool does to the
            // f16 file: 2-D tensors other than the positional embeddings and
            // conv biases are quantized, everything else is copied.
            for (q, f) in tensors.iter().zip(&f16_tensors) {
                assert_eq!((&q.0, &q.2), (&f.0, &f.2));
                let skip = f.0.ends_with("positional_embedding") || f.0.ends_with("conv1.bias");
                let skip = skip || f.0.ends_with("conv2.bias");
                if f.2.len() == 2 && !skip {
                    assert_eq!(f.1, GGML_TYPE_F16, "{}", f.0);
                    assert_eq!(q.1, t.ggml_type(), "{}", f.0);
                    let values = GgmlWeightType::F16.dequantize(&f.3);
                    assert_eq!(q.3, t.quantize(&values), "{}", f.0);
                } else {
                    assert_eq!((q.1, &q.3), (f.1, &f.3), "{}", f.0);
                }
            }
            let get = |n: &str| tensors.iter().find(|x| x.0 == n).unwrap();
            assert_eq!(get("encoder.conv1.weight").1, GGML_TYPE_F16);
            assert_eq!(get("encoder.conv2.bias").1, GGML_TYPE_F32);
            assert_eq!(get("decoder.positional_embedding").1, GGML_TYPE_F32);
            assert_eq!(get("decoder.ln.bias").1, GGML_TYPE_F32);
            let te = get("decoder.token_embedding.weight");
            assert_eq!(
                (te.1, te.3.len()),
                (t.ggml_type(), n_vocab * d / 32 * t.block().1)
            );
            // The key rows (100.. scaled by 4/32) survive within a step.
            // Q5_0 steps are max|x| / 16 (about 1 here), the others about 0.13.
            let tol = if t == GgmlWeightType::Q5_0 { 0.6 } else { 0.1 };
            let k = t.dequantize(&get("encoder.blocks.0.attn.key.weight").3);
            assert!((k[0] - 12.5).abs() < tol, "{t}: {}", k[0]);
            assert!((k[1023] - 140.375).abs() < tol, "{t}: {}", k[1023]);

            let again = convert_ct2_whisper_to_ggml_as(dir.path(), &out, t).unwrap();
            assert_eq!(again.sha256, report.sha256);
        }

        // Rows that are not whole blocks are refused (d = 4).
        let small = tempfile::tempdir().unwrap();
        tiny_model(small.path(), n_vocab);
        std::fs::write(small.path().join("vocabulary.txt"), vocab.join("\n")).unwrap();
        let err = convert_ct2_whisper_to_ggml_as(
            small.path(),
            &small.path().join("q.bin"),
            GgmlWeightType::Q8_0,
        )
        .unwrap_err();
        assert!(err.to_string().contains("blocks of 32"), "{err}");
    }
}
