//! Whisper's encoder and decoder on the engine's matrix kernels.
//!
//! The weight matrices are repacked into the engine's int8 tiles ([`Matrix`]; Q8_0 weights
//! code for code, f16 convolution kernels requantized); activations are quantized per block of
//! 32 before each product, as ggml does for its Q8_0 products. The convolutions run as
//! products over their unfolded inputs, attention over the audio as f32 matrix products.
//! The arithmetic follows whisper.cpp's graphs, so the logits agree with whisper.cpp's on the
//! same file to rounding (`tests/forward.rs`).

use candle_core::quantized::GgmlDType;
use companion_engine::matrix::{BLOCK, Stored, TILE, Write};
use companion_engine::team::{self, Member, Shared};
use companion_engine::{Activations, Kernel, Matrix, Rows, dot};
use half::f16;
use half::slice::HalfFloatSliceExt;
use tracing::debug;

use crate::error::{Error, Result};
use crate::mel::Mel;
use companion_models::{WhisperFile, WhisperHParams};

const LN_EPS: f32 = 1e-5;

/// Whisper's dimensions, as counts (the file's header, [`WhisperHParams`], stores them as i32).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HParams {
    pub n_vocab: usize,
    pub n_audio_ctx: usize,
    pub n_audio_state: usize,
    pub n_audio_head: usize,
    pub n_audio_layer: usize,
    pub n_text_ctx: usize,
    pub n_text_state: usize,
    pub n_text_head: usize,
    pub n_text_layer: usize,
    pub n_mels: usize,
}

impl From<WhisperHParams> for HParams {
    /// The file's reader refuses negative values.
    fn from(h: WhisperHParams) -> HParams {
        let n = |v: i32| v.max(0) as usize;
        HParams {
            n_vocab: n(h.n_vocab),
            n_audio_ctx: n(h.n_audio_ctx),
            n_audio_state: n(h.n_audio_state),
            n_audio_head: n(h.n_audio_head),
            n_audio_layer: n(h.n_audio_layer),
            n_text_ctx: n(h.n_text_ctx),
            n_text_state: n(h.n_text_state),
            n_text_head: n(h.n_text_head),
            n_text_layer: n(h.n_text_layer),
            n_mels: n(h.n_mels),
        }
    }
}

/// candle's name for ggml type `code`, as the engine's packer takes it.
fn dtype(name: &str, code: i32) -> Result<GgmlDType> {
    Ok(match code {
        0 => GgmlDType::F32,
        1 => GgmlDType::F16,
        2 => GgmlDType::Q4_0,
        6 => GgmlDType::Q5_0,
        7 => GgmlDType::Q5_1,
        8 => GgmlDType::Q8_0,
        other => return Err(Error::Format(format!("{name}: tensor type {other}"))),
    })
}

/// A weight matrix and its bias.
struct Linear {
    w: Matrix,
    /// One bias per output row (zeros for a part without one); empty for none at all.
    b: Vec<f32>,
}

/// A layer norm's scale and shift.
struct Norm {
    w: Vec<f32>,
    b: Vec<f32>,
}

/// What encoder and decoder layers share: self-attention and the MLP, each after a norm.
struct Block {
    attn_ln: Norm,
    /// Query, key and value stacked: one product gives all three.
    qkv: Linear,
    out: Linear,
    mlp_ln: Norm,
    fc1: Linear,
    fc2: Linear,
}

impl Block {
    fn load(file: &WhisperFile, p: &str, n: usize) -> Result<Block> {
        Ok(Block {
            attn_ln: Norm::load(file, &format!("{p}.attn_ln"), n)?,
            qkv: Linear::load(
                file,
                &format!("{p}.attn"),
                &[("query", true), ("key", false), ("value", true)],
            )?,
            out: Linear::load(file, &format!("{p}.attn"), &[("out", true)])?,
            mlp_ln: Norm::load(file, &format!("{p}.mlp_ln"), n)?,
            fc1: Linear::load(file, &format!("{p}.mlp"), &[("0", true)])?,
            fc2: Linear::load(file, &format!("{p}.mlp"), &[("2", true)])?,
        })
    }
}

/// A decoder layer: its block, with cross-attention between the two halves.
struct DecoderLayer {
    own: Block,
    cross_ln: Norm,
    cross_q: Linear,
    /// Key and value of the cross attention, stacked; applied to the encoder's output.
    cross_kv: Linear,
    cross_out: Linear,
}

/// A Whisper model loaded for the engine's kernels.
pub struct Whisper {
    pub hparams: HParams,
    /// The mel filters (`n_mels` rows of `n_fft` weights).
    pub filters: Vec<f32>,
    /// The regular tokens' bytes, by id.
    pub vocab: Vec<Vec<u8>>,
    kernel: Kernel,
    threads: usize,
    /// The first convolution over its unfolded input: `n_mels × 3` columns, padded to a
    /// whole block.
    conv1: Linear,
    conv1_cols: usize,
    conv2: Linear,
    audio_pos: Vec<f32>,
    encoder: Vec<Block>,
    ln_post: Norm,
    /// Looked up row by row for the decoder's input, and the output projection for logits.
    token_embedding: Linear,
    text_pos: Vec<f32>,
    decoder: Vec<DecoderLayer>,
    ln: Norm,
}

/// The self-attention keys and values of one layer of a sequence, head by head,
/// `[head][position][dimension]`, with room for `cap` positions per head so that a head's
/// positions are one run of memory.
#[derive(Clone)]
struct HeadMajor {
    keys: Vec<f32>,
    values: Vec<f32>,
    cap: usize,
}

impl HeadMajor {
    fn new(heads: usize, cap: usize, d: usize) -> HeadMajor {
        HeadMajor {
            keys: vec![0.0; heads * cap * d],
            values: vec![0.0; heads * cap * d],
            cap,
        }
    }
}

/// A [`HeadMajor`] as the threads of a decoder pass write it.
struct SharedCache {
    keys: Shared<f32>,
    values: Shared<f32>,
    cap: usize,
}

/// The cross-attention keys and values of one decoder layer over the audio positions, in f16
/// (half the memory a step reads), head by head: values `[head][position][dimension]`, keys
/// `[head][dimension][position]` (so a query's scores over all positions are sums of whole
/// rows, with no sum across lanes per position).
struct Cross {
    keys: Vec<f16>,
    values: Vec<f16>,
    cap: usize,
}

impl Cross {
    /// Keys and values from rows of `2 × heads × d` values: a position's key, then its value.
    fn from_rows(kv: &[f32], heads: usize, d: usize) -> Cross {
        let n = heads * d;
        let cap = kv.len() / (2 * n);
        let mut keys = vec![f16::ZERO; cap * n];
        let mut values = vec![f16::ZERO; cap * n];
        for (pos, row) in kv.chunks_exact(2 * n).enumerate() {
            for head in 0..heads {
                for c in 0..d {
                    keys[(head * d + c) * cap + pos] = f16::from_f32(row[head * d + c]);
                    values[(head * cap + pos) * d + c] = f16::from_f32(row[n + head * d + c]);
                }
            }
        }
        Cross { keys, values, cap }
    }
}

/// One head's keys: a row per position (f32), or a row per dimension of `cap` positions
/// (f16).
#[derive(Clone, Copy)]
enum Keys<'a> {
    Rows(&'a [f32]),
    Columns(&'a [f16], usize),
}

/// One head's values, a row per position.
#[derive(Clone, Copy)]
enum Values<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
}

/// Positions whose f16 keys are widened at a time.
const WIDEN: usize = 256;

/// `w[p] = scale × q · key[p]` for the positions of `w`.
fn scores(q: &[f32], keys: Keys, scale: f32, w: &mut [f32]) {
    match keys {
        Keys::Rows(keys) => {
            for (w, k) in w.iter_mut().zip(keys.chunks_exact(q.len())) {
                *w = dot(q, k) * scale;
            }
        }
        Keys::Columns(keys, cap) => {
            let mut wide = [0.0f32; WIDEN];
            for (b, w) in w.chunks_mut(WIDEN).enumerate() {
                w.fill(0.0);
                let (start, wide) = (b * WIDEN, &mut wide[..w.len()]);
                for (c, &qc) in q.iter().enumerate() {
                    keys[c * cap + start..c * cap + start + w.len()].convert_to_f32_slice(wide);
                    w.iter_mut()
                        .zip(wide.iter())
                        .for_each(|(w, k)| *w += qc * k);
                }
                w.iter_mut().for_each(|w| *w *= scale);
            }
        }
    }
}

/// `out = Σ_p w[p] × value[p]` (rows of `out.len()` values).
fn weighted_sum(w: &[f32], values: Values, out: &mut [f32]) {
    const D: usize = 64;
    let d = out.len();
    match values {
        // Whisper's heads are all 64 wide: the sum stays in registers.
        Values::F32(values) if d == D => {
            let mut acc = [0.0f32; D];
            for (w, v) in w.iter().zip(values.chunks_exact(D)) {
                for c in 0..D {
                    acc[c] += w * v[c];
                }
            }
            out.copy_from_slice(&acc);
        }
        Values::F16(values) if d == D => {
            let (mut acc, mut wide) = ([0.0f32; D], [0.0f32; D]);
            for (w, v) in w.iter().zip(values.chunks_exact(D)) {
                v.convert_to_f32_slice(&mut wide);
                for c in 0..D {
                    acc[c] += w * wide[c];
                }
            }
            out.copy_from_slice(&acc);
        }
        Values::F32(values) => {
            out.fill(0.0);
            for (w, v) in w.iter().zip(values.chunks_exact(d)) {
                out.iter_mut().zip(v).for_each(|(o, v)| *o += w * v);
            }
        }
        Values::F16(values) => {
            out.fill(0.0);
            let mut wide = vec![0.0f32; d];
            for (w, v) in w.iter().zip(values.chunks_exact(d)) {
                v.convert_to_f32_slice(&mut wide);
                out.iter_mut().zip(&wide).for_each(|(o, v)| *o += w * v);
            }
        }
    }
}

/// What the decoder attends to: each decoder layer's keys (scaled) and values over the
/// encoder's positions.
pub struct Encoded {
    pub n_ctx: usize,
    cross: Vec<Cross>,
}

/// One token sequence being decoded: its self-attention keys and values.
pub struct Decoding<'a> {
    model: &'a Whisper,
    encoded: &'a Encoded,
    cache: Vec<HeadMajor>,
    len: usize,
}

/// Attention of head `head` of each of `rows` queries (rows of `queries`, `n` apart) over the
/// first `seen(i)` positions of `keys` and `values` (this head's, `d` values a position),
/// into the same columns of the rows of `out`.
///
/// # Safety
/// No other thread may access this head's columns of `out` during the call.
#[allow(clippy::too_many_arguments)]
unsafe fn attend_head(
    queries: &[f32],
    rows: usize,
    n: usize,
    head: usize,
    d: usize,
    keys: Keys,
    values: Values,
    seen: impl Fn(usize) -> usize,
    scale: f32,
    weights: &mut [f32],
    out: &Shared<f32>,
) {
    for i in 0..rows {
        let q = &queries[i * n + head * d..i * n + (head + 1) * d];
        let w = &mut weights[..seen(i)];
        scores(q, keys, scale, w);
        softmax(w);
        // SAFETY: this head's columns are the caller's alone.
        let o = unsafe { out.part(i * n + head * d..i * n + (head + 1) * d) };
        weighted_sum(w, values, o);
    }
}

fn stored<'a>(file: &'a WhisperFile, name: &'a str) -> Result<Stored<'a>> {
    let (t, bytes) = file.tensor(name)?;
    if t.dims.len() != 2 {
        return Err(Error::Format(format!(
            "{name} is not a matrix: {:?}",
            t.dims
        )));
    }
    Ok(Stored {
        name,
        dtype: dtype(name, t.ggml_type)?,
        rows: t.dims[1],
        cols: t.dims[0],
        bytes,
    })
}

/// f32 values as the little-endian bytes of a [`Stored`] tensor.
fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

impl Linear {
    /// The matrices `names` stacked (`biases[i]`: whether matrix `i` has a bias).
    fn load(file: &WhisperFile, prefix: &str, parts: &[(&str, bool)]) -> Result<Linear> {
        let names: Vec<String> = parts
            .iter()
            .map(|(p, _)| format!("{prefix}.{p}.weight"))
            .collect();
        let stored = names
            .iter()
            .map(|n| stored(file, n))
            .collect::<Result<Vec<_>>>()?;
        let w = Matrix::pack(&stored)?;
        let mut b = Vec::with_capacity(w.rows());
        for ((part, has_bias), s) in parts.iter().zip(&stored) {
            if *has_bias {
                b.extend(file.floats(&format!("{prefix}.{part}.bias"), s.rows)?);
            } else {
                b.extend(std::iter::repeat_n(0.0, s.rows));
            }
        }
        Ok(Linear { w, b })
    }

    /// A convolution kernel (`[k, in, out]`, innermost first) as a matrix over unfolded
    /// inputs (`in × k` columns, padded with zeros to `cols`).
    fn conv(file: &WhisperFile, prefix: &str, cols: usize) -> Result<Linear> {
        let name = format!("{prefix}.weight");
        let (t, _) = file.tensor(&name)?;
        let [k, inputs, outputs] = t.dims[..] else {
            return Err(Error::Format(format!(
                "{name} is not a 1-D convolution kernel"
            )));
        };
        let values = file.floats(&name, k * inputs * outputs)?;
        let mut padded = vec![0.0f32; outputs * cols];
        for (o, row) in values.chunks_exact(k * inputs).enumerate() {
            padded[o * cols..o * cols + row.len()].copy_from_slice(row);
        }
        let bytes = f32_bytes(&padded);
        let w = Matrix::pack(&[Stored {
            name: &name,
            dtype: GgmlDType::F32,
            rows: outputs,
            cols,
            bytes: &bytes,
        }])?;
        let b = file.floats(&format!("{prefix}.bias"), outputs)?;
        Ok(Linear { w, b })
    }
}

impl Norm {
    fn load(file: &WhisperFile, prefix: &str, n: usize) -> Result<Norm> {
        Ok(Norm {
            w: file.floats(&format!("{prefix}.weight"), n)?,
            b: file.floats(&format!("{prefix}.bias"), n)?,
        })
    }

    /// Normalizes each row of `x` into the same row of `out`.
    fn apply(&self, x: &[f32], out: &mut [f32]) {
        let n = self.w.len();
        for (x, out) in x.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
            let mean = x.iter().sum::<f32>() / n as f32;
            let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n as f32;
            let inv = 1.0 / (var + LN_EPS).sqrt();
            for (((o, v), w), b) in out.iter_mut().zip(x).zip(&self.w).zip(&self.b) {
                *o = (v - mean) * inv * w + b;
            }
        }
    }
}

/// ggml's GELU (the tanh approximation), `x (1 + tanh u) / 2 = x σ(2u)`, on [`exp`].
#[inline]
fn gelu(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    let u2 = 2.0 * SQRT_2_OVER_PI * x * (1.0 + 0.044_715 * x * x);
    x / (1.0 + exp(-u2))
}

/// `e^x` to within a few units in the last place, without branches or calls so that loops
/// over it vectorize (libm's `expf` is a call per value): `e^x = 2^n e^r` with
/// `n = round(x / ln 2)` and a degree-6 polynomial for `e^r`, `|r| ≤ ln 2 / 2`. Arguments are
/// clamped to [-87, 88], where the result stays a normal f32.
#[inline]
fn exp(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    let x = x.clamp(-87.0, 88.0);
    let n = (x * std::f32::consts::LOG2_E).round();
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    p * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

fn thread_failed(panic: String) -> Error {
    Error::InvalidInput(format!("a compute thread failed: {panic}"))
}

/// Quantizes `rows` rows of `x` (`cols` values each) for the kernels.
fn quantized(x: &[f32], cols: usize) -> Activations {
    let rows = x.len() / cols;
    let mut a = Activations::new(rows, cols);
    for (t, row) in x.chunks_exact(cols).enumerate() {
        a.set(t, row);
    }
    a
}

/// Softmax of `row` in place, in 16 lanes so that it vectorizes.
fn softmax(row: &mut [f32]) {
    const L: usize = 16;
    let mut lanes = [f32::NEG_INFINITY; L];
    let chunks = row.chunks_exact(L);
    let mut max = chunks
        .remainder()
        .iter()
        .copied()
        .fold(f32::NEG_INFINITY, f32::max);
    for c in chunks {
        for i in 0..L {
            lanes[i] = lanes[i].max(c[i]);
        }
    }
    max = lanes.iter().copied().fold(max, f32::max);
    let mut sums = [0.0f32; L];
    let mut chunks = row.chunks_exact_mut(L);
    for c in &mut chunks {
        for i in 0..L {
            c[i] = exp(c[i] - max);
            sums[i] += c[i];
        }
    }
    let mut sum = 0.0;
    for v in chunks.into_remainder() {
        *v = exp(*v - max);
        sum += *v;
    }
    let inv = 1.0 / (sum + sums.iter().sum::<f32>());
    row.iter_mut().for_each(|v| *v *= inv);
}

impl Whisper {
    /// Loads `file` for `threads` threads.
    pub fn load(file: &WhisperFile, threads: usize) -> Result<Whisper> {
        let h = HParams::from(file.hparams);
        let (sa, st) = (h.n_audio_state, h.n_text_state);
        if sa != st {
            return Err(Error::Format(format!(
                "audio width {sa} differs from text width {st}"
            )));
        }
        let conv1_cols = (3 * h.n_mels).next_multiple_of(BLOCK);
        let encoder = (0..h.n_audio_layer)
            .map(|i| Block::load(file, &format!("encoder.blocks.{i}"), sa))
            .collect::<Result<Vec<_>>>()?;
        let decoder = (0..h.n_text_layer)
            .map(|i| {
                let p = format!("decoder.blocks.{i}");
                Ok(DecoderLayer {
                    own: Block::load(file, &p, st)?,
                    cross_ln: Norm::load(file, &format!("{p}.cross_attn_ln"), st)?,
                    cross_q: Linear::load(file, &format!("{p}.cross_attn"), &[("query", true)])?,
                    cross_kv: Linear::load(
                        file,
                        &format!("{p}.cross_attn"),
                        &[("key", false), ("value", true)],
                    )?,
                    cross_out: Linear::load(file, &format!("{p}.cross_attn"), &[("out", true)])?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let token_embedding = Linear {
            w: Matrix::pack(&[stored(file, "decoder.token_embedding.weight")?])?,
            b: Vec::new(),
        };
        if token_embedding.w.rows() != h.n_vocab {
            return Err(Error::Format(format!(
                "{} token embeddings for a vocabulary of {}",
                token_embedding.w.rows(),
                h.n_vocab
            )));
        }
        let kernel = Kernel::detect();
        debug!(
            kernel = kernel.as_str(),
            threads, "whisper loaded for the engine"
        );
        Ok(Whisper {
            hparams: h,
            filters: file.filters.clone(),
            vocab: file.vocab.clone(),
            kernel,
            threads: threads.max(1),
            conv1: Linear::conv(file, "encoder.conv1", conv1_cols)?,
            conv1_cols,
            conv2: Linear::conv(file, "encoder.conv2", 3 * sa)?,
            audio_pos: file.floats("encoder.positional_embedding", h.n_audio_ctx * sa)?,
            encoder,
            ln_post: Norm::load(file, "encoder.ln_post", sa)?,
            token_embedding,
            text_pos: file.floats("decoder.positional_embedding", h.n_text_ctx * st)?,
            decoder,
            ln: Norm::load(file, "decoder.ln", st)?,
        })
    }

    /// This thread's share of `l`'s tiles: `out[t × rows + r] (=|+=) W[r] · x_t + b[r]` for the
    /// rows `r` of those tiles, then GELU if `activate`.
    fn product_share(
        &self,
        t: &Member,
        l: &Linear,
        x: Rows,
        out: &Shared<f32>,
        write: Write,
        activate: bool,
    ) {
        let tiles = l.w.tiles();
        let per = tiles.div_ceil(t.threads);
        let mine = (t.id * per).min(tiles)..((t.id + 1) * per).min(tiles);
        let rows = l.w.rows();
        // SAFETY: each thread writes the rows of its own tiles only.
        unsafe {
            l.w.multiply_raw(self.kernel, x, mine.clone(), out.ptr(), rows, write)
        };
        let my_rows = (mine.start * TILE).min(rows)..(mine.end * TILE).min(rows);
        for token in 0..x.tokens() {
            // SAFETY: as above.
            let o = unsafe { out.part(token * rows + my_rows.start..token * rows + my_rows.end) };
            if !l.b.is_empty() {
                o.iter_mut()
                    .zip(&l.b[my_rows.clone()])
                    .for_each(|(o, b)| *o += b);
            }
            if activate {
                o.iter_mut().for_each(|v| *v = gelu(*v));
            }
        }
    }

    /// `out[t] (=|+=) W · x[t] + b` for the rows `x[t]` of `x` (`cols` values each), then GELU
    /// if `activate`, the tiles shared between the threads.
    fn linear(
        &self,
        l: &Linear,
        x: &[f32],
        cols: usize,
        out: &mut [f32],
        write: Write,
        activate: bool,
    ) -> Result<()> {
        let a = quantized(x, cols);
        let rows = a.rows(x.len() / cols);
        assert!(out.len() >= rows.tokens() * l.w.rows());
        let out = Shared::new(out);
        team::run(self.threads, |t| {
            self.product_share(&t, l, rows, &out, write, activate)
        })
        .map_err(thread_failed)
    }

    /// Runs the encoder over `2 × n_ctx` mel frames from frame `offset` (zeros past the
    /// spectrogram's end) and computes every decoder layer's cross-attention keys and values.
    pub fn encode(&self, mel: &Mel, offset: usize, n_ctx: usize) -> Result<Encoded> {
        let h = &self.hparams;
        if n_ctx == 0 || n_ctx > h.n_audio_ctx || mel.n_mel != h.n_mels {
            return Err(Error::InvalidInput(format!(
                "an encoder of {n_ctx} positions over {} mel bands (the model: at most {}, {} bands)",
                mel.n_mel, h.n_audio_ctx, h.n_mels
            )));
        }
        let n = h.n_audio_state;
        let frames = 2 * n_ctx;
        let frame = |band: usize, t: isize| -> f32 {
            if t < 0 || t as usize >= frames || offset + t as usize >= mel.n_len {
                0.0
            } else {
                mel.data[band * mel.n_len + offset + t as usize]
            }
        };
        // conv1: kernel 3, padding 1, over the frames.
        let mut unfolded = vec![0.0f32; frames * self.conv1_cols];
        for (t, row) in unfolded.chunks_exact_mut(self.conv1_cols).enumerate() {
            for band in 0..h.n_mels {
                for k in 0..3 {
                    row[band * 3 + k] = frame(band, t as isize - 1 + k as isize);
                }
            }
        }
        let mut h1 = vec![0.0f32; frames * n];
        let cols = self.conv1_cols;
        self.linear(&self.conv1, &unfolded, cols, &mut h1, Write::Store, true)?;
        // conv2: kernel 3, padding 1, stride 2.
        let mut unfolded = vec![0.0f32; n_ctx * 3 * n];
        for (t, row) in unfolded.chunks_exact_mut(3 * n).enumerate() {
            for k in 0..3 {
                let src = 2 * t as isize - 1 + k as isize;
                if src < 0 || src as usize >= frames {
                    continue;
                }
                let src = &h1[src as usize * n..(src as usize + 1) * n];
                for (c, v) in src.iter().enumerate() {
                    row[c * 3 + k] = *v;
                }
            }
        }
        let mut x = vec![0.0f32; n_ctx * n];
        self.linear(&self.conv2, &unfolded, 3 * n, &mut x, Write::Store, true)?;
        x.iter_mut().zip(&self.audio_pos).for_each(|(v, p)| *v += p);

        let mut xn = vec![0.0f32; n_ctx * n];
        let mut qkv = vec![0.0f32; n_ctx * 3 * n];
        let mut attn = vec![0.0f32; n_ctx * n];
        let mut mlp = vec![0.0f32; n_ctx * 4 * n];
        let mut scores = vec![vec![0.0f32; n_ctx * n_ctx]; self.threads];
        for layer in &self.encoder {
            layer.attn_ln.apply(&x, &mut xn);
            self.linear(&layer.qkv, &xn, n, &mut qkv, Write::Store, false)?;
            self.audio_attention(&qkv, n_ctx, &mut scores, &mut attn)?;
            self.linear(&layer.out, &attn, n, &mut x, Write::Add, false)?;
            layer.mlp_ln.apply(&x, &mut xn);
            let hidden = layer.fc1.w.rows();
            let mlp = &mut mlp[..n_ctx * hidden];
            self.linear(&layer.fc1, &xn, n, mlp, Write::Store, true)?;
            self.linear(&layer.fc2, mlp, hidden, &mut x, Write::Add, false)?;
        }
        self.ln_post.apply(&x, &mut xn);

        let scale = (self.head_dim() as f32).powf(-0.25);
        let cross = self
            .decoder
            .iter()
            .map(|layer| {
                let mut kv = vec![0.0f32; n_ctx * 2 * n];
                self.linear(&layer.cross_kv, &xn, n, &mut kv, Write::Store, false)?;
                for row in kv.chunks_exact_mut(2 * n) {
                    row[..n].iter_mut().for_each(|v| *v *= scale);
                }
                Ok(Cross::from_rows(
                    &kv,
                    self.hparams.n_text_head,
                    self.head_dim(),
                ))
            })
            .collect::<Result<_>>()?;
        Ok(Encoded { n_ctx, cross })
    }

    fn head_dim(&self) -> usize {
        self.hparams.n_audio_state / self.hparams.n_audio_head
    }

    /// Self-attention over the audio positions: `qkv` holds each position's query, key and
    /// value; each head's output goes to its columns of `out`, the heads dealt between the
    /// threads. `scores` holds a buffer of `n_ctx × n_ctx` per thread, kept from layer to layer.
    fn audio_attention(
        &self,
        qkv: &[f32],
        n_ctx: usize,
        scores: &mut [Vec<f32>],
        out: &mut [f32],
    ) -> Result<()> {
        let n = self.hparams.n_audio_state;
        let heads = self.hparams.n_audio_head;
        let d = self.head_dim();
        let scale = 1.0 / (d as f32).sqrt();
        let out = Shared::new(out);
        let scores: Vec<Shared<f32>> = scores.iter_mut().map(|s| Shared::new(s)).collect();
        team::run(self.threads, |t| {
            // SAFETY: each thread has its own buffer.
            let scores = unsafe { scores[t.id].part(0..n_ctx * n_ctx) };
            for head in t.deal(heads) {
                let q = qkv[head * d..].as_ptr();
                let k = qkv[n + head * d..].as_ptr();
                let v = qkv[2 * n + head * d..].as_ptr();
                let row = (3 * n) as isize;
                // SAFETY: every index stays inside `qkv`, `scores` and this head's
                // columns of `out`, which no other thread writes.
                unsafe {
                    gemm::gemm(
                        n_ctx,
                        n_ctx,
                        d,
                        scores.as_mut_ptr(),
                        1,
                        n_ctx as isize,
                        false,
                        q,
                        1,
                        row,
                        k,
                        row,
                        1,
                        0.0,
                        scale,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
                scores.chunks_exact_mut(n_ctx).for_each(softmax);
                unsafe {
                    gemm::gemm(
                        n_ctx,
                        d,
                        n_ctx,
                        out.ptr().add(head * d),
                        1,
                        n as isize,
                        false,
                        scores.as_ptr(),
                        1,
                        n_ctx as isize,
                        v,
                        1,
                        row,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
            }
        })
        .map_err(thread_failed)
    }

    /// A new token sequence attending to `encoded`.
    pub fn start<'a>(&'a self, encoded: &'a Encoded) -> Decoding<'a> {
        Decoding {
            model: self,
            encoded,
            cache: vec![
                HeadMajor::new(
                    self.hparams.n_text_head,
                    self.hparams.n_text_ctx,
                    self.hparams.n_text_state / self.hparams.n_text_head,
                );
                self.decoder.len()
            ],
            len: 0,
        }
    }
}

impl Decoding<'_> {
    /// Tokens decoded so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True before the first token.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Decodes `tokens` after those before and gives the logits of the last one.
    pub fn decode(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        let (model, encoded) = (self.model, self.encoded);
        let rows: Vec<Row> = tokens
            .iter()
            .enumerate()
            .map(|(i, &token)| Row {
                seq: 0,
                pos: self.len + i,
                token,
            })
            .collect();
        let mut logits = model.pass(encoded, &mut [self], &rows)?;
        Ok(logits.pop().unwrap_or_default())
    }
}

/// One row of a decoder pass: a token of sequence `seq` at position `pos`.
#[derive(Debug, Clone, Copy)]
struct Row {
    seq: usize,
    pos: usize,
    token: u32,
}

impl<'a> Whisper {
    /// Decodes one more token of each of `seqs` (`tokens[i]` for `seqs[i]`), all in one pass
    /// that reads the weights once, and gives each sequence's logits: a step of beam search.
    pub fn decode_each(
        &self,
        seqs: &mut [&mut Decoding<'a>],
        tokens: &[u32],
    ) -> Result<Vec<Vec<f32>>> {
        if seqs.len() != tokens.len() {
            return Err(Error::InvalidInput(format!(
                "{} tokens for {} sequences",
                tokens.len(),
                seqs.len()
            )));
        }
        let Some(first) = seqs.first() else {
            return Ok(Vec::new());
        };
        let encoded = first.encoded;
        if seqs
            .iter()
            .any(|s| !std::ptr::eq(s.encoded, encoded) || !std::ptr::eq(s.model, self))
        {
            return Err(Error::InvalidInput(
                "the sequences of one pass must share the model and the audio".into(),
            ));
        }
        let rows: Vec<Row> = seqs
            .iter()
            .zip(tokens)
            .enumerate()
            .map(|(seq, (s, &token))| Row {
                seq,
                pos: s.len,
                token,
            })
            .collect();
        self.pass(encoded, seqs, &rows)
    }

    /// A decoder pass over `rows` (each sequence's rows in order of position, its first at
    /// the sequence's length), extending each sequence's cache; gives the logits of each
    /// sequence's last row, in the order of `seqs`.
    fn pass(
        &self,
        encoded: &Encoded,
        seqs: &mut [&mut Decoding<'a>],
        rows: &[Row],
    ) -> Result<Vec<Vec<f32>>> {
        let h = &self.hparams;
        let n = h.n_text_state;
        let heads = h.n_text_head;
        let d = n / heads;
        let count = rows.len();
        if count == 0 {
            return Err(Error::InvalidInput("no tokens to decode".into()));
        }
        for r in rows {
            if r.pos >= h.n_text_ctx {
                return Err(Error::InvalidInput(format!(
                    "position {} is past the decoder's {}",
                    r.pos, h.n_text_ctx
                )));
            }
            if r.token as usize >= h.n_vocab {
                return Err(Error::InvalidInput(format!(
                    "token {} is outside the vocabulary",
                    r.token
                )));
            }
        }
        // Each sequence's last row, whose logits are wanted.
        let last: Vec<usize> = (0..seqs.len())
            .map(|s| rows.iter().rposition(|r| r.seq == s))
            .collect::<Option<_>>()
            .ok_or_else(|| Error::InvalidInput("a sequence without a token".into()))?;
        let mut x = vec![0.0f32; count * n];
        for (row, r) in x.chunks_exact_mut(n).zip(rows) {
            self.token_embedding.w.row(r.token as usize, row);
            let pos = &self.text_pos[r.pos * n..(r.pos + 1) * n];
            row.iter_mut().zip(pos).for_each(|(v, p)| *v += p);
        }
        let hidden = self.decoder.first().map_or(n, |l| l.own.fc1.w.rows());
        let mut qkv = vec![0.0f32; count * 3 * n];
        let mut attn = vec![0.0f32; count * n];
        let mut q = vec![0.0f32; count * n];
        let mut mlp = vec![0.0f32; count * hidden];
        let mut logits = vec![0.0f32; last.len() * h.n_vocab];
        let (xs, qkvs, attns, qs, mlps, logits_s) = (
            Shared::new(&mut x),
            Shared::new(&mut qkv),
            Shared::new(&mut attn),
            Shared::new(&mut q),
            Shared::new(&mut mlp),
            Shared::new(&mut logits),
        );
        // caches[seq][layer], written head by head by the threads.
        let caches: Vec<Vec<SharedCache>> = seqs
            .iter_mut()
            .map(|s| {
                s.cache
                    .iter_mut()
                    .map(|c| SharedCache {
                        keys: Shared::new(&mut c.keys),
                        values: Shared::new(&mut c.values),
                        cap: c.cap,
                    })
                    .collect()
            })
            .collect();
        let scale = (d as f32).powf(-0.25);
        let per_head = heads.div_ceil(self.threads);

        // Every thread runs every step: the small row-wise work (layer norms, quantizing a few
        // rows) on its own copy, the products on its share of the tiles, attention on its
        // share of the heads, with a barrier wherever a step reads what others wrote.
        team::run(self.threads, |t: Member| {
            let my_heads = (t.id * per_head).min(heads)..((t.id + 1) * per_head).min(heads);
            let mut xn = vec![0.0f32; count * n];
            let mut weights = vec![0.0f32; encoded.n_ctx.max(h.n_text_ctx)];
            let norm_and_quantize = |norm: &Norm, xn: &mut [f32]| {
                // SAFETY: nobody writes x between the barriers around this step.
                norm.apply(unsafe { xs.all() }, xn);
                quantized(xn, n)
            };
            // A product of the normalized x into `dst`, then a barrier.
            let project = |norm: &Norm, l: &Linear, dst: &Shared<f32>, activate, xn: &mut [f32]| {
                let a = norm_and_quantize(norm, xn);
                self.product_share(&t, l, a.rows(count), dst, Write::Store, activate);
                t.sync_while(|| {});
            };
            // A product of `src` (rows of `cols`) added into x, then a barrier.
            let add_to_x = |l: &Linear, src: &Shared<f32>, cols: usize| {
                // SAFETY: nobody writes `src` until the barrier after the next step.
                let a = quantized(unsafe { src.all() }, cols);
                self.product_share(&t, l, a.rows(count), &xs, Write::Add, false);
                t.sync_while(|| {});
            };
            for (layer, l) in self.decoder.iter().enumerate() {
                project(&l.own.attn_ln, &l.own.qkv, &qkvs, false, &mut xn);
                // SAFETY: qkv is only read until the next barrier; each thread writes the
                // cache rows and the attention columns of its own heads.
                let qkv = unsafe { qkvs.all() };
                let mut query = vec![0.0f32; n];
                for head in my_heads.clone() {
                    let cols = head * d..(head + 1) * d;
                    for (i, r) in rows.iter().enumerate() {
                        let c = &caches[r.seq][layer];
                        let block = head * c.cap * d..(head + 1) * c.cap * d;
                        let (k_head, v_head) =
                            unsafe { (c.keys.part(block.clone()), c.values.part(block)) };
                        let row = &qkv[i * 3 * n..(i + 1) * 3 * n];
                        let at = r.pos * d;
                        for c in 0..d {
                            query[head * d + c] = row[cols.start + c] * scale;
                            k_head[at + c] = row[n + cols.start + c] * scale;
                            v_head[at + c] = row[2 * n + cols.start + c];
                        }
                        // Causal: a row sees its sequence's positions up to its own.
                        let out = unsafe { Shared::new(attns.part(i * n..(i + 1) * n)) };
                        unsafe {
                            attend_head(
                                &query,
                                1,
                                n,
                                head,
                                d,
                                Keys::Rows(k_head),
                                Values::F32(v_head),
                                |_| r.pos + 1,
                                1.0,
                                &mut weights,
                                &out,
                            )
                        };
                    }
                }
                t.sync_while(|| {});
                add_to_x(&l.own.out, &attns, n);
                project(&l.cross_ln, &l.cross_q, &qs, false, &mut xn);
                let cross = &encoded.cross[layer];
                // SAFETY: q is only read until the next barrier.
                let q = unsafe { qs.all() };
                for head in my_heads.clone() {
                    let block = head * cross.cap * d..(head + 1) * cross.cap * d;
                    unsafe {
                        attend_head(
                            q,
                            count,
                            n,
                            head,
                            d,
                            Keys::Columns(&cross.keys[block.clone()], cross.cap),
                            Values::F16(&cross.values[block]),
                            |_| encoded.n_ctx,
                            scale,
                            &mut weights,
                            &attns,
                        )
                    };
                }
                t.sync_while(|| {});
                add_to_x(&l.cross_out, &attns, n);
                project(&l.own.mlp_ln, &l.own.fc1, &mlps, true, &mut xn);
                add_to_x(&l.own.fc2, &mlps, hidden);
            }
            let all = unsafe { xs.all() };
            let mut out = vec![0.0f32; last.len() * n];
            for (&i, out) in last.iter().zip(out.chunks_exact_mut(n)) {
                self.ln.apply(&all[i * n..(i + 1) * n], out);
            }
            let a = quantized(&out, n);
            self.product_share(
                &t,
                &self.token_embedding,
                a.rows(last.len()),
                &logits_s,
                Write::Store,
                false,
            );
        })
        .map_err(thread_failed)?;
        for (seq, s) in seqs.iter_mut().enumerate() {
            s.len += rows.iter().filter(|r| r.seq == seq).count();
        }
        Ok(logits
            .chunks_exact(h.n_vocab)
            .map(<[f32]>::to_vec)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_a_few_ulps() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let (ours, libm) = (exp(x) as f64, (x as f64).exp());
            worst = worst.max(((ours - libm) / libm).abs());
            x += 0.001_3;
        }
        assert!(worst < 4.0 * f32::EPSILON as f64, "relative error {worst}");
        assert_eq!(exp(-1000.0), exp(-87.0));
        assert!(exp(1000.0).is_finite());
    }

    #[test]
    fn softmax_sums_to_one_at_any_length() {
        for len in [1, 15, 16, 17, 100] {
            let mut row: Vec<f32> = (0..len).map(|i| (i as f32 * 0.37).sin() * 5.0).collect();
            let max = (0..len).max_by(|&a, &b| row[a].total_cmp(&row[b])).unwrap();
            softmax(&mut row);
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5, "{len}");
            assert_eq!(
                (0..len).max_by(|&a, &b| row[a].total_cmp(&row[b])),
                Some(max)
            );
        }
    }

    #[test]
    fn gelu_matches_the_tanh_form() {
        for i in -2000..2000 {
            let x = i as f32 * 0.01;
            let tanh_form = 0.5 * x * (1.0 + (0.797_884_6 * x * (1.0 + 0.044_715 * x * x)).tanh());
            assert!((gelu(x) - tanh_form).abs() < 1e-5 * (1.0 + x.abs()), "{x}");
        }
    }
}
