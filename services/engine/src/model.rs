//! A decoder-only transformer (Qwen2, Llama) loaded from a GGUF file, and its forward pass.
//!
//! # The forward pass
//!
//! A pass computes a run of tokens (up to [`CHUNK`] of a prompt, or one generated token)
//! after those in a [`Session`]'s KV cache. All threads of a [`team`](crate::team) run each
//! layer's steps on their share of the work:
//!
//! 1. RMS norm and quantization of each token's activations, by every thread for itself; then
//!    Q, K and V in one product (one matrix of their stacked rows), handed out a head's rows at
//!    a time to the threads as they become free, each finishing the heads it computed: bias,
//!    rotary position embedding, K and V into the cache;
//! 2. attention over the cache, each head's output quantized (token × head pairs dealt out);
//! 3. output projection, added to the residual stream (tiles of 16 rows);
//! 4. RMS norm and quantization by every thread; gate and up in one product, their rows
//!    interleaved a block of 32 at a time, each block of SiLU(gate) × up computed and
//!    quantized by the thread that computed its rows;
//! 5. down projection, added to the residual stream (tiles);
//!
//! with a barrier after each step (five a layer), and at the end the final norm and the output
//! matrix for the last token only. The products read every weight once per pass; that is where
//! the time of a generated token goes, and why their kernels are built to run at the speed of
//! memory. Every step that does not read weights leaves the memory idle, hence few of them,
//! and while a thread waits at a barrier or computes attention it prefetches the weights it
//! will compute first in the next product (see `Plan` and `Ahead`).

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use candle_core::quantized::GgmlDType;
use candle_core::quantized::gguf_file::{Content, Value};

use crate::activations::{Activations, Rows, quantize};
use crate::error::{Error, Result};
use crate::matrix::{BLOCK, Kernel, Matrix, Stored, TILE, Write, dequantize};
use crate::pages::Region;
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
        let feed_forward = number("feed_forward_length")?;
        if feed_forward == 0 || !feed_forward.is_multiple_of(BLOCK) {
            return Err(Error::Metadata {
                key: format!("{arch_name}.feed_forward_length"),
                problem: format!("{feed_forward} (the engine needs a multiple of {BLOCK})"),
            });
        }
        Ok(Config {
            architecture,
            embedding,
            layers: number("block_count")?,
            heads,
            kv_heads,
            head_dim,
            feed_forward,
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
    /// Gate and up, a block of 32 rows of each in turn (step 4 of the module docs).
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
    /// Where the matrices' tiles go, one after another.
    region: Arc<Region>,
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
        let raw = self.parts(names, rows, cols)?;
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
        Matrix::pack_in(&parts, Some(&self.region))
    }

    /// The matrices of `names`, each `rows × cols`, with their rows interleaved `every` at a
    /// time: `every` rows of the first, `every` of the second, …, then the next `every` of each.
    fn interleaved(
        &mut self,
        names: &[&str],
        rows: usize,
        cols: usize,
        every: usize,
    ) -> Result<Matrix> {
        let raw = self.parts(names, &vec![rows; names.len()], cols)?;
        let mut parts = Vec::with_capacity(names.len() * rows.div_ceil(every));
        for first in (0..rows).step_by(every) {
            let take = every.min(rows - first);
            for (name, dtype, bytes) in &raw {
                let row_bytes = bytes.len() / rows;
                parts.push(Stored {
                    name,
                    dtype: *dtype,
                    rows: take,
                    cols,
                    bytes: &bytes[first * row_bytes..(first + take) * row_bytes],
                });
            }
        }
        Matrix::pack_in(&parts, Some(&self.region))
    }

    /// The raw bytes of each of `names`, checked to be `rows[i] × cols`.
    fn parts<'n>(
        &mut self,
        names: &[&'n str],
        rows: &[usize],
        cols: usize,
    ) -> Result<Vec<(&'n str, GgmlDType, Vec<u8>)>> {
        let mut raw = Vec::with_capacity(names.len());
        for (name, &want) in names.iter().zip(rows) {
            let (dtype, shape, bytes) = self.raw(name)?;
            if shape != (want, cols) {
                return Err(Error::Tensor {
                    name: name.to_string(),
                    problem: format!("shape {shape:?}, expected ({want}, {cols})"),
                });
            }
            raw.push((*name, dtype, bytes));
        }
        Ok(raw)
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
        // Repacked, a matrix takes at most about twice its bytes in the file (Q4_1, 5 bits a
        // weight, as Int8 with its scales); the region reserves address space only.
        let file_bytes = file
            .metadata()
            .map_err(|source| Error::Io {
                path: path.to_path_buf(),
                source,
            })?
            .len() as usize;
        let mut r = Reader {
            region: Region::reserve(2 * file_bytes),
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
            let gate_up = [gate_up[0].as_str(), gate_up[1].as_str()];
            layers.push(Layer {
                attn_norm: r.vector(&n("attn_norm.weight"), e)?,
                qkv,
                qkv_bias,
                attn_output: r.matrix(&[&n("attn_output.weight")], &[e], e)?,
                ffn_norm: r.vector(&n("ffn_norm.weight"), e)?,
                gate_up: r.interleaved(&gate_up, ff, e, BLOCK)?,
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
        self.forward_last(session, tokens, 1, threads, logits)
    }

    /// [`Model::forward`] with the logits of each of the last `last` tokens, one after the
    /// other in `logits` (`last` × vocabulary entries): what checking a draft of several
    /// tokens in one pass needs. A pass reads every weight once for up to four tokens, so on a
    /// memory-bound CPU a few tokens cost little more than one. `last` is at least 1 and at
    /// most `tokens.len()` and [`CHUNK`].
    pub fn forward_last(
        &self,
        session: &mut Session,
        tokens: &[u32],
        last: usize,
        threads: usize,
        logits: &mut Vec<f32>,
    ) -> Result<()> {
        if tokens.is_empty() {
            return Err(Error::InvalidInput("no tokens to compute".into()));
        }
        if last == 0 || last > tokens.len() || last > CHUNK {
            return Err(Error::InvalidInput(format!(
                "logits of the last {last} of {} tokens: 1 to {} can be asked for",
                tokens.len(),
                tokens.len().min(CHUNK)
            )));
        }
        let end = session.len + tokens.len();
        if end > self.config.context_length {
            return Err(Error::InvalidInput(format!(
                "{end} positions exceed the context window of {} tokens",
                self.config.context_length
            )));
        }
        // The last pass takes the last CHUNK tokens (or all), so it holds the `last` ones.
        let (head, final_pass) = tokens.split_at(tokens.len() - tokens.len().min(CHUNK));
        for chunk in head.chunks(CHUNK) {
            self.pass(session, chunk, threads, 0, logits)?;
        }
        self.pass(session, final_pass, threads, last, logits)?;
        Ok(())
    }

    /// One pass over up to [`CHUNK`] tokens, with the logits of the last `logit_rows` of them
    /// (none when 0) written to `logits`.
    fn pass(
        &self,
        session: &mut Session,
        tokens: &[u32],
        threads: usize,
        logit_rows: usize,
        logits: &mut Vec<f32>,
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
        let mut act_attn = Activations::new(n, e);
        let mut act_ff = Activations::new(n, ff);
        let mut qkv = vec![0.0f32; n * qkv_width];
        let mut gate_up = vec![0.0f32; n * 2 * ff];
        let want_logits = logit_rows > 0;
        if want_logits {
            logits.resize(logit_rows * c.vocab, 0.0);
        }

        let x = Shared::new(&mut x);
        let act_attn = parts(&mut act_attn, e);
        let act_ff = parts(&mut act_ff, ff);
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
        // One counter per product of the pass (four a layer and the output).
        let counters: Vec<AtomicUsize> =
            (0..4 * c.layers + 1).map(|_| AtomicUsize::new(0)).collect();
        // The units the products hand out: a head's rows of Q, K and V, a block of gate rows
        // with the same block of up rows (`gate_up` interleaves them), or a tile.
        let head_tiles = hd / TILE;
        let ffn_tiles = 2 * BLOCK / TILE;

        team::run(threads, |m: Member| {
            // Each thread normalizes and quantizes every row for itself: a few microseconds
            // that spare a barrier between the norm and the product.
            let mut normed = Activations::new(n, e);
            let mut row = vec![0.0f32; e];
            let mut head_out = vec![0.0f32; hd];
            let mut scores = Vec::new();
            let mut ffn_values = [0.0f32; BLOCK];
            let mut ahead = Ahead { bytes: &[] };
            for (l, (layer, (k_cache, v_cache))) in self.layers.iter().zip(&caches).enumerate() {
                // 1. norm, then Q, K and V a head at a time, each head finished (bias, rotary
                // embedding, K and V into the cache) by the thread that computed it
                // SAFETY: x is read-only in this step.
                norm_rows(
                    unsafe { x.all() },
                    &layer.attn_norm,
                    c.rms_epsilon,
                    &mut row,
                    &mut normed,
                );
                let bias = layer.qkv_bias.as_deref();
                // SAFETY: each head's rows of qkv and cache positions belong to the thread that
                // claimed the head.
                unsafe {
                    product(
                        &m,
                        &counters[4 * l],
                        self.kernel,
                        &layer.qkv,
                        normed.rows(n),
                        (qkv.ptr(), qkv_width, Write::Store),
                        head_tiles,
                        |heads| {
                            for head in heads {
                                let at = head * hd;
                                for t in 0..n {
                                    let angles = &rotations[t * hd / 2..(t + 1) * hd / 2];
                                    let values =
                                        qkv.part(t * qkv_width + at..t * qkv_width + at + hd);
                                    add_bias(values, bias, at);
                                    if head < c.heads + c.kv_heads {
                                        rotate(c.architecture, values, angles);
                                    }
                                    let cached = (start + t) * kv;
                                    if head >= c.heads + c.kv_heads {
                                        let h = at - e - kv;
                                        v_cache
                                            .part(cached + h..cached + h + hd)
                                            .copy_from_slice(values);
                                    } else if head >= c.heads {
                                        let h = at - e;
                                        k_cache
                                            .part(cached + h..cached + h + hd)
                                            .copy_from_slice(values);
                                    }
                                }
                            }
                        },
                    );
                }
                ahead.aim(&m, &layer.attn_output, 1);
                m.sync_while(|| ahead.step());
                // 2. attention, each head's output quantized (heads are whole blocks)
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
                            if j % 8 == 0 {
                                ahead.step();
                            }
                        }
                        for (i, block) in head_out.chunks_exact(BLOCK).enumerate() {
                            let block: &[f32; BLOCK] = block.try_into().expect("a whole block");
                            act_attn.set_block(t, h * hd / BLOCK + i, block);
                        }
                    }
                }
                m.sync_while(|| ahead.step());
                // 3. output projection into the residual stream
                // SAFETY: act_attn read-only; rows of x claimed by tile.
                unsafe {
                    product(
                        &m,
                        &counters[4 * l + 1],
                        self.kernel,
                        &layer.attn_output,
                        act_attn.rows(n),
                        (x.ptr(), e, Write::Add),
                        1,
                        |_| {},
                    );
                }
                ahead.aim(&m, &layer.gate_up, ffn_tiles);
                m.sync_while(|| ahead.step());
                // 4. norm, then gate and up a block at a time, each block's SiLU(gate) × up
                // quantized by the thread that computed it
                // SAFETY: x is read-only in this step.
                norm_rows(
                    unsafe { x.all() },
                    &layer.ffn_norm,
                    c.rms_epsilon,
                    &mut row,
                    &mut normed,
                );
                // SAFETY: each block's rows of gate_up and of act_ff belong to the thread that
                // claimed the block.
                unsafe {
                    product(
                        &m,
                        &counters[4 * l + 2],
                        self.kernel,
                        &layer.gate_up,
                        normed.rows(n),
                        (gate_up.ptr(), 2 * ff, Write::Store),
                        ffn_tiles,
                        |blocks| {
                            for b in blocks {
                                for t in 0..n {
                                    let at = t * 2 * ff + 2 * b * BLOCK;
                                    let pair = gate_up.part(at..at + 2 * BLOCK);
                                    let (gate, up) = pair.split_at(BLOCK);
                                    for ((v, &g), &u) in ffn_values.iter_mut().zip(gate).zip(up) {
                                        *v = g / (1.0 + (-g).exp()) * u;
                                    }
                                    act_ff.set_block(t, b, &ffn_values);
                                }
                            }
                        },
                    );
                }
                ahead.aim(&m, &layer.down, 1);
                m.sync_while(|| ahead.step());
                // 5. down projection into the residual stream
                // SAFETY: as in step 3.
                unsafe {
                    product(
                        &m,
                        &counters[4 * l + 3],
                        self.kernel,
                        &layer.down,
                        act_ff.rows(n),
                        (x.ptr(), e, Write::Add),
                        1,
                        |_| {},
                    );
                }
                // The next product: the next layer's Q, K and V, or the output.
                match self.layers.get(l + 1) {
                    Some(next) => ahead.aim(&m, &next.qkv, head_tiles),
                    None if want_logits => ahead.aim(&m, &self.output, 1),
                    None => ahead.bytes = &[],
                }
                m.sync_while(|| ahead.step());
            }
            if want_logits {
                // SAFETY: x is read-only from here on.
                let last = unsafe { &x.all()[(n - logit_rows) * e..n * e] };
                norm_rows(
                    last,
                    &self.output_norm,
                    c.rms_epsilon,
                    &mut row,
                    &mut normed,
                );
                // SAFETY: rows of the logits claimed by tile.
                unsafe {
                    product(
                        &m,
                        &counters[counters.len() - 1],
                        self.kernel,
                        &self.output,
                        normed.rows(logit_rows),
                        (logits_out.ptr(), c.vocab, Write::Store),
                        1,
                        |_| {},
                    );
                }
            }
        })
        .map_err(Error::Worker)?;
        session.len = start + n;
        Ok(())
    }
}

/// Most weight bytes a thread claims at once (a few microseconds of reading).
const CLAIM_BYTES: usize = 256 << 10;

/// Most weight bytes of its own part of a product a thread prefetches while waiting for the
/// product (well within a core's L2 cache).
const AHEAD_BYTES: usize = 256 << 10;

/// How a product is handed out, in units of `unit` tiles: each thread first computes its own
/// `own` units, seven eighths of a fair share in one contiguous part (thread `i` the `i`-th),
/// whose start it can prefetch before the product starts; then the threads claim runs of `run`
/// units of the last eighth from a counter as they become free, so the threads of a product
/// still finish close together when one ran slower. One long part a thread reads at the speed
/// of its prefetchers; when memory is fast, own parts capped at 256 KB with the rest claimed
/// in runs gave 7 % fewer tokens a second (docs/BENCHMARKS.md).
struct Plan {
    unit: usize,
    tiles: usize,
    units: usize,
    own: usize,
    run: usize,
}

impl Plan {
    fn new(matrix: &Matrix, unit: usize, threads: usize) -> Plan {
        let tiles = matrix.tiles();
        let units = tiles.div_ceil(unit);
        let unit_bytes = (matrix.bytes() / tiles * unit).max(1);
        // An eighth of a fair share, but no more than CLAIM_BYTES: the last claim of a large
        // matrix (the output, 145 MB) would otherwise keep the other threads waiting for it.
        let run = (units / (8 * threads)).clamp(1, (CLAIM_BYTES / unit_bytes).max(1));
        let own = units * 7 / (8 * threads);
        Plan {
            unit,
            tiles,
            units,
            own,
            run,
        }
    }

    fn tiles(&self, units: Range<usize>) -> Range<usize> {
        units.start * self.unit..(units.end * self.unit).min(self.tiles)
    }

    /// The own units of thread `id`.
    fn own(&self, id: usize) -> Range<usize> {
        id * self.own..(id + 1) * self.own
    }
}

/// `out (=|+=) matrix · x` by the team, as [`Plan`] hands it out; each thread calls `done`
/// with each run of units it computed, to finish those rows while they are in its cache. Every
/// row is computed by one thread, so the results do not depend on who computed what.
///
/// # Safety
/// As [`Matrix::multiply_raw`] for `out` (pointer, row stride, write), for every row of
/// `matrix`; `counter` starts at 0 and serves this product only; `done` may only touch what
/// belongs to the units it is given.
#[allow(clippy::too_many_arguments)]
unsafe fn product(
    m: &Member,
    counter: &AtomicUsize,
    kernel: Kernel,
    matrix: &Matrix,
    x: Rows,
    (out, ld, write): (*mut f32, usize, Write),
    unit: usize,
    mut done: impl FnMut(Range<usize>),
) {
    let plan = Plan::new(matrix, unit, m.threads);
    let mut claimed = plan.own(m.id);
    loop {
        if !claimed.is_empty() {
            // SAFETY: units are computed once each; the caller's promise covers the rest.
            unsafe { matrix.multiply_raw(kernel, x, plan.tiles(claimed.clone()), out, ld, write) };
            done(claimed);
        }
        let first = m.threads * plan.own + counter.fetch_add(plan.run, Ordering::Relaxed);
        if first >= plan.units {
            break;
        }
        claimed = first..(first + plan.run).min(plan.units);
    }
}

/// The weights a thread computes first in its next product, prefetched into its cache a few
/// lines at a time while it does not read weights (waiting at a barrier, attention): the memory
/// would otherwise be idle then.
struct Ahead<'a> {
    bytes: &'a [u8],
}

impl<'a> Ahead<'a> {
    /// Cache lines a step prefetches.
    const LINES: usize = 16;

    /// Prefetches the start of this thread's own units in `matrix`'s product (see [`Plan`])
    /// from now on.
    fn aim(&mut self, m: &Member, matrix: &'a Matrix, unit: usize) {
        let plan = Plan::new(matrix, unit, m.threads);
        let bytes = matrix.tile_data(plan.tiles(plan.own(m.id)));
        self.bytes = &bytes[..bytes.len().min(AHEAD_BYTES)];
    }

    fn step(&mut self) {
        let n = self.bytes.len().min(Self::LINES * 64);
        #[cfg(target_arch = "x86_64")]
        for line in self.bytes[..n].chunks(64) {
            // SAFETY: prefetching is a hint that cannot fault, and SSE is part of x86-64.
            unsafe {
                std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T1 }>(
                    line.as_ptr() as *const i8
                )
            };
        }
        self.bytes = &self.bytes[n..];
    }
}

/// Quantized activations several threads write a row (or a block) each of.
#[derive(Clone, Copy)]
struct SharedActivations {
    cols: usize,
    q: Shared<i8>,
    d: Shared<f32>,
    s: Shared<i32>,
    h: Shared<i32>,
}

fn parts(a: &mut Activations, cols: usize) -> SharedActivations {
    let (q, d, s, h) = a.parts_mut();
    SharedActivations {
        cols,
        q: Shared::new(q),
        d: Shared::new(d),
        s: Shared::new(s),
        h: Shared::new(h),
    }
}

impl SharedActivations {
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
                self.h.part(i..i + 1),
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
                h: &self.h.all()[..n * nb],
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

/// RMS norm times `weight` of each row of `x`, quantized into `out` (`row`: room for one).
fn norm_rows(x: &[f32], weight: &[f32], epsilon: f32, row: &mut [f32], out: &mut Activations) {
    for (t, values) in x.chunks_exact(weight.len()).enumerate() {
        let inverse = rms_scale(values, epsilon);
        for ((o, &v), &w) in row.iter_mut().zip(values).zip(weight) {
            *o = v * inverse * w;
        }
        out.set(t, row);
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

/// `a · b`, summed in 16 lanes so that it vectorizes.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matrix::tests::blocks;

    /// Every row computed once, whoever computes it: the team's product equals one thread's,
    /// for teams of 1 to 3, units of 1 and 4 tiles, and own parts longer than what a thread
    /// prefetches (AHEAD_BYTES).
    #[test]
    fn the_team_computes_every_row_once() {
        let (rows, cols) = (1000, 2048);
        let (bytes, _) = blocks(GgmlDType::Q8_0, rows, cols, 3);
        let matrix = Matrix::pack(&[Stored {
            name: "w",
            dtype: GgmlDType::Q8_0,
            rows,
            cols,
            bytes: &bytes,
        }])
        .unwrap();
        assert!(
            matrix.bytes() * 7 / (8 * 3) > AHEAD_BYTES,
            "own parts of 3 threads too short"
        );
        let mut x = Activations::new(2, cols);
        for t in 0..2 {
            x.set(
                t,
                &(0..cols)
                    .map(|c| ((c * (t + 3)) as f32).sin())
                    .collect::<Vec<_>>(),
            );
        }
        let kernel = Kernel::detect();
        let mut want = vec![0.0f32; 2 * rows];
        matrix.multiply(kernel, x.rows(2), &mut want, Write::Store);
        for threads in 1..=3 {
            for unit in [1, 4] {
                let mut out = vec![1.0f32; 2 * rows];
                let shared = Shared::new(&mut out);
                let counter = AtomicUsize::new(0);
                let mut calls = vec![0usize; rows.div_ceil(TILE).div_ceil(unit)];
                let done = Shared::new(&mut calls);
                team::run(threads, |m| {
                    // SAFETY: each unit is computed by one thread, which alone counts it.
                    unsafe {
                        product(
                            &m,
                            &counter,
                            kernel,
                            &matrix,
                            x.rows(2),
                            (shared.ptr(), rows, Write::Store),
                            unit,
                            |units| units.for_each(|u| done.part(u..u + 1)[0] += 1),
                        )
                    }
                })
                .unwrap();
                assert_eq!(out, want, "{threads} threads, units of {unit}");
                assert!(calls.iter().all(|&n| n == 1), "{calls:?}");
            }
        }
    }
}
