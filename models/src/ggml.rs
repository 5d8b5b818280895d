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
//! tensors: i32 n_dims, i32 name length, i32 type (0 f32, 1 f16),
//!          n_dims x i32 dims (innermost first), name, data
//! ```

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::ct2::{Ct2DType, Ct2Model, Ct2Variable};
use crate::error::{Error, IoContext, Result};
use crate::hash::HashingWriter;

const GGML_MAGIC: i32 = 0x6767_6d6c;
const GGML_TYPE_F32: i32 = 0;
const GGML_TYPE_F16: i32 = 1;
/// `ftype` 1: weights in f16.
const FTYPE_MOSTLY_F16: i32 = 1;

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
    F16,
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
        // positional embeddings in f32, everything else in f16.
        let out = if var.shape.len() < 2 || is_conv_bias || name.ends_with("positional_embedding") {
            OutType::F32
        } else {
            OutType::F16
        };
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
        ftype: FTYPE_MOSTLY_F16,
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
        let (ty, _) = match plan.out {
            OutType::F32 => (GGML_TYPE_F32, 4),
            OutType::F16 => (GGML_TYPE_F16, 2),
        };
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
        elapsed: started.elapsed(),
    };
    tracing::info!(
        output = %out.display(),
        size,
        sha256 = %report.sha256,
        tensors = report.n_tensors,
        tokens = report.n_tokens,
        elapsed_ms = report.elapsed.as_millis() as u64,
        "converted CTranslate2 Whisper model to GGML"
    );
    Ok(report)
}

/// Converts little-endian source elements to the output type.
fn convert_data(raw: &[u8], src: Ct2DType, out: OutType) -> Vec<u8> {
    let halves = || {
        raw.chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
    };
    let singles = || {
        raw.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
    };
    match (src, out) {
        (Ct2DType::F16, OutType::F16) | (Ct2DType::F32, OutType::F32) => raw.to_vec(),
        (Ct2DType::F16, OutType::F32) => {
            halves().flat_map(|h| f16_to_f32(h).to_le_bytes()).collect()
        }
        (Ct2DType::BF16, OutType::F32) => halves()
            .flat_map(|h| bf16_to_f32(h).to_le_bytes())
            .collect(),
        (Ct2DType::BF16, OutType::F16) => halves()
            .flat_map(|h| f32_to_f16(bf16_to_f32(h)).to_le_bytes())
            .collect(),
        (Ct2DType::F32, OutType::F16) => singles()
            .flat_map(|f| f32_to_f16(f).to_le_bytes())
            .collect(),
        // Integer types are rejected while planning.
        (_, _) => unreachable!("non-float CTranslate2 variable reached conversion"),
    }
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
        let d = 4u32;
        let mut b = Ct2Builder::default();
        let vals = |n: usize, base: f32| (0..n).map(|i| base + i as f32).collect::<Vec<f32>>();
        b.i16("encoder/num_heads", 2);
        b.i16("decoder/num_heads", 2);
        b.f16("encoder/conv1/weight", &[d, 3, 3], &vals(36, 0.0));
        b.f16("encoder/conv1/bias", &[d], &vals(4, 0.0));
        b.f16("encoder/conv2/weight", &[d, d, 3], &vals(48, 0.0));
        b.f16("encoder/conv2/bias", &[d], &vals(4, 0.0));
        b.f16(
            "encoder/position_encodings/encodings",
            &[6, d],
            &vals(24, 0.0),
        );
        b.f16(
            "decoder/position_encodings/encodings",
            &[5, d],
            &vals(20, 0.0),
        );
        b.f16(
            "decoder/embeddings/weight",
            &[n_vocab as u32, d],
            &vec![0.5; n_vocab * 4],
        );
        b.alias("decoder/projection/weight", "decoder/embeddings/weight");
        for side in ["encoder", "decoder"] {
            let l = format!("{side}/layer_0");
            let mut ln = |p: &str| {
                b.f16(&format!("{p}/gamma"), &[d], &[1.0; 4]);
                b.f16(&format!("{p}/beta"), &[d], &[0.0; 4]);
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
                qkv.extend(vals(16, base));
            }
            b.f16(
                &format!("{l}/self_attention/linear_0/weight"),
                &[3 * d, d],
                &qkv,
            );
            b.f16(
                &format!("{l}/self_attention/linear_0/bias"),
                &[3 * d],
                &[1., 1., 1., 1., 0., 0., 0., 0., 3., 3., 3., 3.],
            );
            b.f16(
                &format!("{l}/self_attention/linear_1/weight"),
                &[d, d],
                &vals(16, 0.0),
            );
            b.f16(
                &format!("{l}/self_attention/linear_1/bias"),
                &[d],
                &vals(4, 0.0),
            );
            b.f16(
                &format!("{l}/ffn/linear_0/weight"),
                &[4 * d, d],
                &vals(64, 0.0),
            );
            b.f16(&format!("{l}/ffn/linear_0/bias"), &[4 * d], &vals(16, 0.0));
            b.f16(
                &format!("{l}/ffn/linear_1/weight"),
                &[d, 4 * d],
                &vals(64, 0.0),
            );
            b.f16(&format!("{l}/ffn/linear_1/bias"), &[d], &vals(4, 0.0));
            if side == "decoder" {
                b.f16(
                    &format!("{l}/attention/linear_0/weight"),
                    &[d, d],
                    &vals(16, 0.0),
                );
                b.f16(&format!("{l}/attention/linear_0/bias"), &[d], &vals(4, 0.0));
                let mut kv = vals(16, 100.0);
                kv.extend(vals(16, 200.0));
                b.f16(&format!("{l}/attention/linear_1/weight"), &[2 * d, d], &kv);
                b.f16(
                    &format!("{l}/attention/linear_1/bias"),
                    &[2 * d],
                    &[0., 0., 0., 0., 7., 7., 7., 7.],
                );
                b.f16(
                    &format!("{l}/attention/linear_2/weight"),
                    &[d, d],
                    &vals(16, 0.0),
                );
                b.f16(&format!("{l}/attention/linear_2/bias"), &[d], &vals(4, 0.0));
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
            let n: usize =
                dims.iter().map(|&d| d as usize).product::<usize>() * if ty == 0 { 4 } else { 2 };
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
}
