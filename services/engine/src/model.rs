//! A decoder-only transformer (Qwen2, Llama) loaded from a GGUF file, and its forward pass.
//!
//! # The forward pass
//!
//! A pass computes a run of tokens (up to [`CHUNK`] of a prompt, or one generated token)
//! after those in a [`Session`]'s KV cache. All threads of a [`team`](crate::team) run each
//! layer's steps on their share of the work:
//!
//! 1. RMS norm and quantization of each token's activations (blocks of 32 values shared out);
//! 2. Q, K and V in one product (one matrix of their stacked rows; tiles of 16 rows claimed by
//!    the threads as they become free);
//! 3. bias, rotary position embedding, and K and V into the cache (heads dealt out);
//! 4. attention over the cache, each head's output quantized (token × head pairs dealt out);
//! 5. output projection, added to the residual stream (tiles);
//! 6. RMS norm and quantization (blocks);
//! 7. gate and up in one product (tiles);
//! 8. SiLU(gate) × up, quantized (blocks);
//! 9. down projection, added to the residual stream (tiles);
//!
//! with a barrier between steps, and at the end the final norm and the output matrix for the
//! last token only. The products read every weight once per pass; that is where the time of a
//! generated token goes, and why their kernels are built to run at the speed of memory.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use candle_core::quantized::GgmlDType;
use candle_core::quantized::gguf_file::{Content, Value};

use crate::activations::{Activations, Rows, quantize};
use crate::error::{Error, Result};
use crate::matrix::{BLOCK, Kernel, Matrix, Stored, Write, dequantize};
use crate::team::{self, Member, Shared};

/// Most prompt tokens computed in one pass.
pub const CHUNK: usize = 64;

/// The model families the engine runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// Biases on Q, K and V; rotary embedding on the two halves of each head (NeoX style).
    Qwen2,
    /// No biases; rotary embedding on adjacent pairs (the GGUF converter permutes Q and K for
    /// it).
    Llama,
}

/// Hyper-parameters read from the GGUF metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub architecture: Architecture,
    pub embedding: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub feed_forward: usize,
    pub vocab: usize,
    /// The length the model was trained for.
    pub context_length: usize,
    pub rms_epsilon: f32,
    pub rope_base: f32,
}

impl Config {
    fn from_metadata(metadata: &HashMap<String, Value>) -> Result<Config> {
        let get = |key: &str| {
            metadata.get(key).ok_or_else(|| Error::Metadata {
                key: key.to_string(),
                problem: "missing".into(),
            })
        };
        let bad = |key: &str, e: candle_core::Error| Error::Metadata {
            key: key.to_string(),
            problem: e.to_string(),
        };
        let arch_name = get("general.architecture")?
            .to_string()
            .map_err(|e| bad("general.architecture", e))?
            .clone();
        let architecture = match arch_name.as_str() {
            "qwen2" => Architecture::Qwen2,
            "llama" => Architecture::Llama,
            other => return Err(Error::UnsupportedArchitecture(other.to_string())),
        };
        let number = |name: &str| -> Result<usize> {
            let key = format!("{arch_name}.{name}");
            let v = get(&key)?;
            v.to_u32()
                .map(|n| n as usize)
                .or_else(|_| v.to_u64().map(|n| n as usize))
                .map_err(|e| bad(&key, e))
        };
        let float = |name: &str, default: f32| -> Result<f32> {
            let key = format!("{arch_name}.{name}");
            match metadata.get(&key) {
                None => Ok(default),
                Some(v) => v.to_f32().map_err(|e| bad(&key, e)),
            }
        };
        let embedding = number("embedding_length")?;
        let heads = number("attention.head_count")?;
        let kv_heads = number("attention.head_count_kv").unwrap_or(heads);
        if heads == 0
            || kv_heads == 0
            || !heads.is_multiple_of(kv_heads)
            || !embedding.is_multiple_of(heads)
        {
            return Err(Error::Metadata {
                key: format!("{arch_name}.attention.head_count"),
                problem: format!("{heads} heads, {kv_heads} KV heads, width {embedding}"),
            });
        }
        let head_dim = embedding / heads;
        if !head_dim.is_multiple_of(BLOCK) {
            return Err(Error::Metadata {
                key: format!("{arch_name}.attention.head_count"),
                problem: format!(
                    "heads of {head_dim} values (the engine needs multiples of {BLOCK})"
                ),
            });
        }
        if let Ok(rope_dims) = number("rope.dimension_count")
            && rope_dims != head_dim
        {
            return Err(Error::Metadata {
                key: format!("{arch_name}.rope.dimension_count"),
                problem: format!("{rope_dims} (the engine rotates whole heads of {head_dim})"),
            });
        }
        Ok(Config {
            architecture,
            embedding,
            layers: number("block_count")?,
            heads,
            kv_heads,
            head_dim,
            feed_forward: number("feed_forward_length")?,
            vocab: 0,
            context_length: number("context_length")?,
            rms_epsilon: float("attention.layer_norm_rms_epsilon", 1e-5)?,
            rope_base: float("rope.freq_base", 10_000.0)?,
        })
    }

    fn kv_width(&self) -> usize {
        self.kv_heads * self.head_dim
    }
}

struct Layer {
    attn_norm: Vec<f32>,
    /// Q, K and V stacked.
    qkv: Matrix,
    qkv_bias: Option<Vec<f32>>,
    attn_output: Matrix,
    ffn_norm: Vec<f32>,
    /// Gate and up stacked.
    gate_up: Matrix,
    down: Matrix,
}

/// Where a token's embedding comes from.
enum Embedding {
    /// The rows of the output matrix (tied weights).
    Output,
    /// The GGUF table, decoded a row at a time.
    Table { dtype: GgmlDType, bytes: Vec<u8> },
}

/// A loaded model: weights repacked for the kernels. Shareable between threads; each
/// sequence has its own [`Session`].
pub struct Model {
    config: Config,
    layers: Vec<Layer>,
    output_norm: Vec<f32>,
    output: Matrix,
    embedding: Embedding,
    kernel: Kernel,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("config", &self.config)
            .field("kernel", &self.kernel)
            .field("weight_bytes", &self.weight_bytes())
            .finish_non_exhaustive()
    }
}

/// The KV cache of one sequence.
#[derive(Debug, Default)]
pub struct Session {
    keys: Vec<Vec<f32>>,
    values: Vec<Vec<f32>>,
    len: usize,
}

impl Session {
    /// Tokens in the cache.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Keeps the first `len` positions.
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Bytes the cache holds.
    pub fn bytes(&self) -> usize {
        self.keys
            .iter()
            .chain(&self.values)
            .map(|v| v.capacity() * 4)
            .sum()
    }
}

/// Reads tensors of a GGUF file.
struct Reader<'a> {
    file: File,
    content: Content,
    path: &'a Path,
}

impl Reader<'_> {
    fn info(&self, name: &str) -> Result<&candle_core::quantized::gguf_file::TensorInfo> {
        self.content
            .tensor_infos
            .get(name)
            .ok_or_else(|| Error::Tensor {
                name: name.to_string(),
                problem: "missing from the file".into(),
            })
    }

    fn has(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    /// The raw bytes of `name`, with its type and (rows, cols).
    fn raw(&mut self, name: &str) -> Result<(GgmlDType, (usize, usize), Vec<u8>)> {
        let info = self.info(name)?;
        let dims = info.shape.dims().to_vec();
        let (rows, cols) = match dims.as_slice() {
            [cols] => (1, *cols),
            [rows, cols] => (*rows, *cols),
            other => {
                return Err(Error::Tensor {
                    name: name.to_string(),
                    problem: format!("{} dimensions", other.len()),
                });
            }
        };
        let dtype = info.ggml_dtype;
        if !cols.is_multiple_of(dtype.block_size()) {
            return Err(Error::Tensor {
                name: name.to_string(),
                problem: format!("rows of {cols} values are not whole {dtype:?} blocks"),
            });
        }
        let size = rows * cols / dtype.block_size() * dtype.type_size();
        let at = self.content.tensor_data_offset + info.offset;
        let mut bytes = vec![0u8; size];
        let io = |e| Error::Io {
            path: self.path.to_path_buf(),
            source: e,
        };
        self.file.seek(SeekFrom::Start(at)).map_err(io)?;
        self.file.read_exact(&mut bytes).map_err(io)?;
        Ok((dtype, (rows, cols), bytes))
    }

    /// A vector (norm weights, biases) as f32, of `len` values.
    fn vector(&mut self, name: &str, len: usize) -> Result<Vec<f32>> {
        let (dtype, (rows, cols), bytes) = self.raw(name)?;
        if rows * cols != len {
            return Err(Error::Tensor {
                name: name.to_string(),
                problem: format!("{} values, expected {len}", rows * cols),
            });
        }
        let values = dequantize(name, dtype, &bytes, len)?;
        if values.iter().any(|v| !v.is_finite()) {
            return Err(Error::Tensor {
                name: name.to_string(),
                problem: "holds a value that is not finite".into(),
            });
        }
        Ok(values)
    }

    /// The matrix of `names` stacked, each `rows[i] × cols`.
    fn matrix(&mut self, names: &[&str], rows: &[usize], cols: usize) -> Result<Matrix> {
        let mut raw = Vec::with_capacity(names.len());
        for (name, &want) in names.iter().zip(rows) {
            let (dtype, shape, bytes) = self.raw(name)?;
            if shape != (want, cols) {
                return Err(Error::Tensor {
                    name: name.to_string(),
                    problem: format!("shape {shape:?}, expected ({want}, {cols})"),
                });
            }
            raw.push((name, dtype, bytes));
        }
        let parts: Vec<Stored> = raw
            .iter()
            .zip(rows)
            .map(|((name, dtype, bytes), &rows)| Stored {
                name,
                dtype: *dtype,
                rows,
                cols,
                bytes,
            })
            .collect();
        Matrix::pack(&parts)
    }
}

impl Model {
    /// Loads a GGUF chat model and repacks its weights for `kernel` (see [`Kernel::detect`]).
    pub fn load(path: &Path, kernel: Kernel) -> Result<Model> {
        let io = |e| Error::Io {
            path: path.to_path_buf(),
            source: e,
        };
        let mut file = File::open(path).map_err(io)?;
        let content = Content::read(&mut file).map_err(|source| Error::Gguf {
            path: path.to_path_buf(),
            source,
        })?;
        Model::read(file, content, path, kernel)
    }

    /// [`Model::load`] from a file whose directory the caller has read already (`path` names
    /// it in errors).
    pub fn read(file: File, content: Content, path: &Path, kernel: Kernel) -> Result<Model> {
        let started = Instant::now();
        let mut config = Config::from_metadata(&content.metadata)?;
        let mut r = Reader {
            file,
            content,
            path,
        };
        let (e, kv, ff) = (config.embedding, config.kv_width(), config.feed_forward);
        let vocab = r
            .info("token_embd.weight")?
            .shape
            .dims()
            .first()
            .copied()
            .unwrap_or(0);
        config.vocab = vocab;

        let mut layers = Vec::with_capacity(config.layers);
        for i in 0..config.layers {
            let n = |part: &str| format!("blk.{i}.{part}");
            let qkv_names = [n("attn_q.weight"), n("attn_k.weight"), n("attn_v.weight")];
            let qkv_names: Vec<&str> = qkv_names.iter().map(String::as_str).collect();
            let qkv = r.matrix(&qkv_names, &[e, kv, kv], e)?;
            let qkv_bias = if r.has(&n("attn_q.bias")) {
                let mut bias = r.vector(&n("attn_q.bias"), e)?;
                bias.extend(r.vector(&n("attn_k.bias"), kv)?);
                bias.extend(r.vector(&n("attn_v.bias"), kv)?);
                Some(bias)
            } else {
                None
            };
            let gate_up = [n("ffn_gate.weight"), n("ffn_up.weight")];
            layers.push(Layer {
                attn_norm: r.vector(&n("attn_norm.weight"), e)?,
                qkv,
                qkv_bias,
                attn_output: r.matrix(&[&n("attn_output.weight")], &[e], e)?,
                ffn_norm: r.vector(&n("ffn_norm.weight"), e)?,
                gate_up: r.matrix(&[&gate_up[0], &gate_up[1]], &[ff, ff], e)?,
                down: r.matrix(&[&n("ffn_down.weight")], &[e], ff)?,
            });
        }
        let output_norm = r.vector("output_norm.weight", e)?;
        let (output, embedding) = if r.has("output.weight") {
            let output = r.matrix(&["output.weight"], &[vocab], e)?;
            let (dtype, shape, bytes) = r.raw("token_embd.weight")?;
            if shape != (vocab, e) {
                return Err(Error::Tensor {
                    name: "token_embd.weight".into(),
                    problem: format!("shape {shape:?}, expected ({vocab}, {e})"),
                });
            }
            (output, Embedding::Table { dtype, bytes })
        } else {
            (
                r.matrix(&["token_embd.weight"], &[vocab], e)?,
                Embedding::Output,
            )
        };
        let model = Model {
            config,
            layers,
            output_norm,
            output,
            embedding,
            kernel: kernel.checked(),
        };
        tracing::debug!(
            path = %path.display(),
            kernel = model.kernel.as_str(),
            weight_mb = model.weight_bytes() / 1_000_000,
            ms = started.elapsed().as_millis() as u64,
            "engine model loaded"
        );
        Ok(model)
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn kernel(&self) -> Kernel {
        self.kernel
    }

    /// Bytes of weights one generated token reads: every matrix, the norms and biases, and one
    /// embedding row.
    pub fn weight_bytes(&self) -> usize {
        let layers: usize = self
            .layers
            .iter()
            .map(|l| {
                l.qkv.bytes()
                    + l.attn_output.bytes()
                    + l.gate_up.bytes()
                    + l.down.bytes()
                    + 4 * (l.attn_norm.len() + l.ffn_norm.len())
                    + 4 * l.qkv_bias.as_ref().map_or(0, Vec::len)
            })
            .sum();
        layers + self.output.bytes() + 4 * self.output_norm.len() + 4 * self.config.embedding
    }

    /// The embedding of `token` into `out`.
    fn embed(&self, token: u32, out: &mut [f32]) -> Result<()> {
        let t = token as usize;
        if t >= self.config.vocab {
            return Err(Error::InvalidInput(format!(
                "token id {token} is outside the vocabulary of {}",
                self.config.vocab
            )));
        }
        match &self.embedding {
            Embedding::Output => self.output.row(t, out),
            Embedding::Table { dtype, bytes } => {
                let e = self.config.embedding;
                let row_bytes = e / dtype.block_size() * dtype.type_size();
                let row = dequantize(
                    "token_embd.weight",
                    *dtype,
                    &bytes[t * row_bytes..(t + 1) * row_bytes],
                    e,
                )?;
                out.copy_from_slice(&row);
            }
        }
        Ok(())
    }

    /// Computes `tokens` after the session's cached ones and writes the logits of the last
    /// into `logits` (one per vocabulary entry), on `threads` threads.
    pub fn forward(
        &self,
        session: &mut Session,
        tokens: &[u32],
        threads: usize,
        logits: &mut Vec<f32>,
    ) -> Result<()> {
        if tokens.is_empty() {
            return Err(Error::InvalidInput("no tokens to compute".into()));
        }
        let end = session.len + tokens.len();
        if end > self.config.context_length {
            return Err(Error::InvalidInput(format!(
                "{end} positions exceed the context window of {} tokens",
                self.config.context_length
            )));
        }
        let chunks = tokens.chunks(CHUNK).count();
        for (i, chunk) in tokens.chunks(CHUNK).enumerate() {
            self.pass(
                session,
                chunk,
                threads,
                (i + 1 == chunks).then_some(&mut *logits),
            )?;
        }
        Ok(())
    }

    /// One pass over up to [`CHUNK`] tokens.
    fn pass(
        &self,
        session: &mut Session,
        tokens: &[u32],
        threads: usize,
        logits: Option<&mut Vec<f32>>,
    ) -> Result<()> {
        let c = &self.config;
        let n = tokens.len();
        let (e, kv, ff, hd) = (c.embedding, c.kv_width(), c.feed_forward, c.head_dim);
        let qkv_width = e + 2 * kv;
        let start = session.len;

        let mut x = vec![0.0f32; n * e];
        for (t, &token) in tokens.iter().enumerate() {
            self.embed(token, &mut x[t * e..(t + 1) * e])?;
        }
        if session.keys.len() != c.layers {
            session.keys = vec![Vec::new(); c.layers];
            session.values = vec![Vec::new(); c.layers];
        }
        for cache in session.keys.iter_mut().chain(session.values.iter_mut()) {
            cache.resize((start + n) * kv, 0.0);
        }
        let mut act_e = Activations::new(n, e);
        let mut act_ff = Activations::new(n, ff);
        let mut act_last = Activations::new(1, e);
        let mut qkv = vec![0.0f32; n * qkv_width];
        let mut gate_up = vec![0.0f32; n * 2 * ff];
        let mut no_logits = Vec::new();
        let want_logits = logits.is_some();
        let logits = match logits {
            Some(l) => {
                l.resize(c.vocab, 0.0);
                l
            }
            None => &mut no_logits,
        };

        let x = Shared::new(&mut x);
        let act_e = parts(&mut act_e, e);
        let act_ff = parts(&mut act_ff, ff);
        let act_last = parts(&mut act_last, e);
        let act_attn = {
            // The attention output is quantized into the same room as the norm's output: both
            // are `n × e` and never live at once.
            act_e
        };
        let qkv = Shared::new(&mut qkv);
        let gate_up = Shared::new(&mut gate_up);
        let logits_out = Shared::new(logits);
        let caches: Vec<(Shared<f32>, Shared<f32>)> = session
            .keys
            .iter_mut()
            .zip(session.values.iter_mut())
            .map(|(k, v)| (Shared::new(k), Shared::new(v)))
            .collect();
        let scale = 1.0 / (hd as f32).sqrt();
        let rotations: Vec<(f32, f32)> = (0..n).flat_map(|t| rotation(c, start + t)).collect();
        let group = c.heads / c.kv_heads;
        // One tile counter per product of the pass (four a layer and the output).
        let counters: Vec<AtomicUsize> =
            (0..4 * c.layers + 1).map(|_| AtomicUsize::new(0)).collect();

        team::run(threads, |m: Member| {
            let mut normed = vec![0.0f32; e];
            let mut head_out = vec![0.0f32; hd];
            let mut scores = Vec::new();
            let mut ffn_values = [0.0f32; BLOCK];
            for (l, (layer, (k_cache, v_cache))) in self.layers.iter().zip(&caches).enumerate() {
                // 1. norm + quantize, by block
                // SAFETY: x is read-only now; the blocks of act_e shared out are this thread's.
                unsafe { norm_blocks(&m, x.all(), &layer.attn_norm, c.rms_epsilon, n, act_e) };
                m.sync();
                // 2. Q, K, V
                // SAFETY: act_e is read-only in this step; each thread writes its own rows.
                unsafe {
                    product(
                        &m,
                        &counters[4 * l],
                        self.kernel,
                        &layer.qkv,
                        act_e.rows(n),
                        qkv.ptr(),
                        qkv_width,
                        Write::Store,
                    );
                }
                m.sync();
                // 3. bias, rotary embedding, cache, by head
                for item in m.deal(n * (c.heads + c.kv_heads)) {
                    let (t, head) = (item / (c.heads + c.kv_heads), item % (c.heads + c.kv_heads));
                    let pos = start + t;
                    let angles = &rotations[t * hd / 2..(t + 1) * hd / 2];
                    let bias = layer.qkv_bias.as_deref();
                    // SAFETY: this head's slices of token t's row and cache position are this
                    // thread's.
                    unsafe {
                        let row = t * qkv_width;
                        if head < c.heads {
                            let q = row + head * hd..row + (head + 1) * hd;
                            add_bias(qkv.part(q.clone()), bias, q.start - row);
                            rotate(c.architecture, qkv.part(q), angles);
                        } else {
                            let h = head - c.heads;
                            let k = row + e + h * hd..row + e + (h + 1) * hd;
                            let v = row + e + kv + h * hd..row + e + kv + (h + 1) * hd;
                            add_bias(qkv.part(k.clone()), bias, k.start - row);
                            add_bias(qkv.part(v.clone()), bias, v.start - row);
                            rotate(c.architecture, qkv.part(k.clone()), angles);
                            let at = pos * kv + h * hd;
                            k_cache.part(at..at + hd).copy_from_slice(qkv.part(k));
                            v_cache.part(at..at + hd).copy_from_slice(qkv.part(v));
                        }
                    }
                }
                m.sync();
                // 4. attention, each head's output quantized (heads are whole blocks)
                for item in m.deal(n * c.heads) {
                    let (t, h) = (item / c.heads, item % c.heads);
                    let pos = start + t;
                    let kvh = h / group;
                    // SAFETY: qkv and the caches are read-only in this step; the head's
                    // blocks of act_attn are this thread's.
                    unsafe {
                        let q = &qkv.all()[t * qkv_width + h * hd..t * qkv_width + (h + 1) * hd];
                        let keys = k_cache.all();
                        let values = v_cache.all();
                        scores.clear();
                        scores.extend((0..=pos).map(|j| {
                            dot(q, &keys[j * kv + kvh * hd..j * kv + (kvh + 1) * hd]) * scale
                        }));
                        softmax(&mut scores);
                        head_out.fill(0.0);
                        for (j, &p) in scores.iter().enumerate() {
                            let v = &values[j * kv + kvh * hd..j * kv + (kvh + 1) * hd];
                            axpy(p, v, &mut head_out);
                        }
                        for (i, block) in head_out.chunks_exact(BLOCK).enumerate() {
                            let block: &[f32; BLOCK] = block.try_into().expect("a whole block");
                            act_attn.set_block(t, h * hd / BLOCK + i, block);
                        }
                    }
                }
                m.sync();
                // 5. output projection into the residual stream
                // SAFETY: act_attn read-only; rows of x shared out.
                unsafe {
                    product(
                        &m,
                        &counters[4 * l + 1],
                        self.kernel,
                        &layer.attn_output,
                        act_attn.rows(n),
                        x.ptr(),
                        e,
                        Write::Add,
                    );
                }
                m.sync();
                // 6. norm + quantize, by block
                // SAFETY: x is read-only now; the blocks of act_e shared out are this thread's.
                unsafe { norm_blocks(&m, x.all(), &layer.ffn_norm, c.rms_epsilon, n, act_e) };
                m.sync();
                // 7. gate and up
                // SAFETY: as in step 2.
                unsafe {
                    product(
                        &m,
                        &counters[4 * l + 2],
                        self.kernel,
                        &layer.gate_up,
                        act_e.rows(n),
                        gate_up.ptr(),
                        2 * ff,
                        Write::Store,
                    );
                }
                m.sync();
                // 8. SiLU(gate) × up, quantized by block
                let blocks = ff / BLOCK;
                for item in m.share(n * blocks) {
                    let (t, b) = (item / blocks, item % blocks);
                    // SAFETY: gate_up is read-only; block b of token t in act_ff is this
                    // thread's.
                    unsafe {
                        let row = &gate_up.all()[t * 2 * ff..(t + 1) * 2 * ff];
                        for (i, v) in ffn_values.iter_mut().enumerate() {
                            let g = row[b * BLOCK + i];
                            *v = g / (1.0 + (-g).exp()) * row[ff + b * BLOCK + i];
                        }
                        act_ff.set_block(t, b, &ffn_values);
                    }
                }
                m.sync();
                // 9. down projection into the residual stream
                // SAFETY: as in step 5.
                unsafe {
                    product(
                        &m,
                        &counters[4 * l + 3],
                        self.kernel,
                        &layer.down,
                        act_ff.rows(n),
                        x.ptr(),
                        e,
                        Write::Add,
                    );
                }
                m.sync();
            }
            if want_logits {
                if m.id == 0 {
                    // SAFETY: only this thread runs here, before the barrier.
                    unsafe {
                        let row = &x.all()[(n - 1) * e..n * e];
                        let inverse = rms_scale(row, c.rms_epsilon);
                        for ((o, &v), &w) in normed.iter_mut().zip(row).zip(&self.output_norm) {
                            *o = v * inverse * w;
                        }
                        act_last.set(0, &normed);
                    }
                }
                m.sync();
                // SAFETY: act_last read-only; rows of the logits shared out.
                unsafe {
                    product(
                        &m,
                        &counters[counters.len() - 1],
                        self.kernel,
                        &self.output,
                        act_last.rows(1),
                        logits_out.ptr(),
                        c.vocab,
                        Write::Store,
                    );
                }
            }
        })
        .map_err(Error::Worker)?;
        session.len = start + n;
        Ok(())
    }
}

/// `out (=|+=) matrix · x` by the team: each thread claims the next run of tiles from
/// `counter` as it becomes free, so a thread slowed down (another process on its core) takes
/// fewer instead of holding the others at the barrier. Every row is computed by one thread,
/// so the results do not depend on who computed what.
///
/// # Safety
/// As [`Matrix::multiply_raw`], for every row of `matrix`, and `counter` starts at 0 and
/// serves this product only.
#[allow(clippy::too_many_arguments)]
unsafe fn product(
    m: &Member,
    counter: &AtomicUsize,
    kernel: Kernel,
    matrix: &Matrix,
    x: Rows,
    out: *mut f32,
    ld: usize,
    write: Write,
) {
    let tiles = matrix.tiles();
    let run = (tiles / (8 * m.threads)).max(1);
    loop {
        let start = counter.fetch_add(run, Ordering::Relaxed);
        if start >= tiles {
            break;
        }
        // SAFETY: tiles are claimed once each; the caller's promise covers the rest.
        unsafe { matrix.multiply_raw(kernel, x, start..(start + run).min(tiles), out, ld, write) };
    }
}

/// Quantized activations several threads write a row (or a block) each of.
#[derive(Clone, Copy)]
struct SharedActivations {
    cols: usize,
    q: Shared<i8>,
    d: Shared<f32>,
    s: Shared<i32>,
}

fn parts(a: &mut Activations, cols: usize) -> SharedActivations {
    let (q, d, s) = a.parts_mut();
    SharedActivations {
        cols,
        q: Shared::new(q),
        d: Shared::new(d),
        s: Shared::new(s),
    }
}

impl SharedActivations {
    /// # Safety
    /// Row `t` must be this thread's until the next barrier.
    unsafe fn set(&self, t: usize, x: &[f32]) {
        let (cols, nb) = (self.cols, self.cols / BLOCK);
        // SAFETY: the caller's promise.
        unsafe {
            quantize(
                x,
                self.q.part(t * cols..(t + 1) * cols),
                self.d.part(t * nb..(t + 1) * nb),
                self.s.part(t * nb..(t + 1) * nb),
            )
        }
    }

    /// # Safety
    /// Block `b` of row `t` must be this thread's until the next barrier.
    unsafe fn set_block(&self, t: usize, b: usize, x: &[f32; BLOCK]) {
        let i = t * self.cols / BLOCK + b;
        // SAFETY: the caller's promise.
        unsafe {
            quantize(
                x,
                self.q.part(i * BLOCK..(i + 1) * BLOCK),
                self.d.part(i..i + 1),
                self.s.part(i..i + 1),
            )
        }
    }

    /// # Safety
    /// Nobody may write the first `n` rows until the next barrier.
    unsafe fn rows(&self, n: usize) -> Rows<'_> {
        let nb = self.cols / BLOCK;
        // SAFETY: the caller's promise.
        unsafe {
            Rows {
                cols: self.cols,
                q: &self.q.all()[..n * self.cols],
                d: &self.d.all()[..n * nb],
                s: &self.s.all()[..n * nb],
            }
        }
    }
}

/// `1 / rms(x)`, the sum of squares in f64 (as ggml).
fn rms_scale(x: &[f32], epsilon: f32) -> f32 {
    let sum: f64 = x.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
    let mean = (sum / x.len() as f64) as f32;
    1.0 / (mean + epsilon).sqrt()
}

/// RMS norm times `weight` of each of the `n` rows of `x`, quantized into `out`, the blocks
/// shared out between the threads (each works out the scale of the rows it has blocks of).
///
/// # Safety
/// As [`SharedActivations::set_block`] for this thread's share of the `n × blocks` blocks.
unsafe fn norm_blocks(
    m: &Member,
    x: &[f32],
    weight: &[f32],
    epsilon: f32,
    n: usize,
    out: SharedActivations,
) {
    let cols = weight.len();
    let blocks = cols / BLOCK;
    let mut row_scale = (usize::MAX, 0.0f32);
    let mut values = [0.0f32; BLOCK];
    for item in m.share(n * blocks) {
        let (t, b) = (item / blocks, item % blocks);
        let row = &x[t * cols..(t + 1) * cols];
        if row_scale.0 != t {
            row_scale = (t, rms_scale(row, epsilon));
        }
        let at = b * BLOCK;
        for (i, v) in values.iter_mut().enumerate() {
            *v = row[at + i] * row_scale.1 * weight[at + i];
        }
        // SAFETY: the caller's promise.
        unsafe { out.set_block(t, b, &values) };
    }
}

/// The cosines and sines of the rotary embedding at `pos`, one pair per two values of a head.
fn rotation(c: &Config, pos: usize) -> Vec<(f32, f32)> {
    let theta_scale = c.rope_base.powf(-2.0 / c.head_dim as f32);
    let mut theta = pos as f32;
    (0..c.head_dim / 2)
        .map(|_| {
            let pair = (theta.cos(), theta.sin());
            theta *= theta_scale;
            pair
        })
        .collect()
}

/// Rotates one head: the two halves against each other (Qwen2, NeoX style) or adjacent pairs
/// (Llama).
fn rotate(architecture: Architecture, head: &mut [f32], angles: &[(f32, f32)]) {
    let half = head.len() / 2;
    for (i, &(cos, sin)) in angles.iter().enumerate() {
        let (a, b) = match architecture {
            Architecture::Qwen2 => (i, i + half),
            Architecture::Llama => (2 * i, 2 * i + 1),
        };
        let (x0, x1) = (head[a], head[b]);
        head[a] = x0 * cos - x1 * sin;
        head[b] = x0 * sin + x1 * cos;
    }
}

/// Adds the bias values from `at` on, if the model has biases.
fn add_bias(values: &mut [f32], bias: Option<&[f32]>, at: usize) {
    if let Some(bias) = bias {
        values
            .iter_mut()
            .zip(&bias[at..])
            .for_each(|(v, b)| *v += b);
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..16 {
            lanes[i] += x[i] * y[i];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
}

fn softmax(v: &mut [f32]) {
    let max = v.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    let mut sum = 0.0f64;
    for x in v.iter_mut() {
        *x = (*x - max).exp();
        sum += f64::from(*x);
    }
    let inverse = (1.0 / sum) as f32;
    for x in v.iter_mut() {
        *x *= inverse;
    }
}
