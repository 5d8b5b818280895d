//! Reads the GGML Whisper files [`crate::ggml`] writes (the layout is documented there): the
//! header's dimensions, the mel filters, the vocabulary and the tensors, kept as stored.

use std::collections::HashMap;
use std::ops::Range;
use std::path::Path;

use crate::error::{Error, Result};
use crate::ggml::{
    GGML_MAGIC, GGML_TYPE_F16, GGML_TYPE_F32, GgmlWeightType, WhisperHParams, f16_to_f32,
};

/// One tensor: its type, its dimensions (innermost first, as ggml counts them) and where its
/// bytes are.
#[derive(Debug, Clone)]
pub struct WhisperTensor {
    /// ggml's type code (0 f32, 1 f16, 2 q4_0, 6 q5_0, 7 q5_1, 8 q8_0).
    pub ggml_type: i32,
    pub dims: Vec<usize>,
    bytes: Range<usize>,
}

impl WhisperTensor {
    /// Values in the tensor.
    pub fn len(&self) -> usize {
        self.dims.iter().product()
    }

    /// True for a tensor without values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A whole Whisper file in memory.
pub struct WhisperFile {
    pub hparams: WhisperHParams,
    /// `n_mels` rows of `n_fft` weights, one row per mel band.
    pub filters: Vec<f32>,
    /// Frequency bins per filter row (201 for the 400-point FFT).
    pub n_fft: usize,
    /// The regular tokens' bytes, by id.
    pub vocab: Vec<Vec<u8>>,
    tensors: HashMap<String, WhisperTensor>,
    data: Vec<u8>,
}

/// Reads little-endian values off a byte slice.
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&end| end <= self.bytes.len())
            .ok_or_else(|| Error::GgmlFormat(format!("the file ends inside {what}")))?;
        let slice = &self.bytes[self.at..end];
        self.at = end;
        Ok(slice)
    }

    fn i32(&mut self, what: &str) -> Result<i32> {
        let b = self.take(4, what)?;
        Ok(i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A count or size: an i32 that must be in `0..=max`.
    fn count(&mut self, max: usize, what: &str) -> Result<usize> {
        let v = self.i32(what)?;
        usize::try_from(v)
            .ok()
            .filter(|&v| v <= max)
            .ok_or_else(|| Error::GgmlFormat(format!("{what} is {v}")))
    }
}

/// Bytes of `n` values of ggml type `code`.
fn encoded_len(code: i32, n: usize) -> Option<usize> {
    if code == GGML_TYPE_F32 {
        return n.checked_mul(4);
    }
    GgmlWeightType::ALL
        .into_iter()
        .find(|t| t.ggml_type() == code)
        .and_then(|t| t.encoded_len(n))
}

impl WhisperFile {
    /// Reads the file at `path`.
    pub fn open(path: &Path) -> Result<WhisperFile> {
        let data = std::fs::read(path).map_err(|source| Error::Io {
            action: "reading",
            path: path.to_owned(),
            source,
        })?;
        WhisperFile::parse(data)
    }

    /// Parses a file's bytes.
    pub fn parse(data: Vec<u8>) -> Result<WhisperFile> {
        let mut c = Cursor {
            bytes: &data,
            at: 0,
        };
        if c.i32("the magic number")? != GGML_MAGIC {
            return Err(Error::GgmlFormat("not a GGML Whisper file".into()));
        }
        let mut h = [0i32; 10];
        for (i, v) in h.iter_mut().enumerate() {
            *v = c.count(1 << 20, &format!("header value {i}"))? as i32;
        }
        let ftype = c.i32("the header's ftype")?;
        let hparams = WhisperHParams {
            n_vocab: h[0],
            n_audio_ctx: h[1],
            n_audio_state: h[2],
            n_audio_head: h[3],
            n_audio_layer: h[4],
            n_text_ctx: h[5],
            n_text_state: h[6],
            n_text_head: h[7],
            n_text_layer: h[8],
            n_mels: h[9],
            ftype,
        };
        if hparams.n_audio_head == 0
            || hparams.n_text_head == 0
            || hparams.n_audio_state % hparams.n_audio_head != 0
            || hparams.n_text_state % hparams.n_text_head != 0
        {
            return Err(Error::GgmlFormat(format!(
                "inconsistent dimensions: {hparams:?}"
            )));
        }
        let n_mel = c.count(1024, "the mel band count")?;
        let n_fft = c.count(1 << 16, "the filter length")?;
        let filters = c
            .take(4 * n_mel * n_fft, "the mel filters")?
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let n_tokens = c.count(1 << 20, "the token count")?;
        let mut vocab = Vec::with_capacity(n_tokens);
        for _ in 0..n_tokens {
            let len = c.count(1 << 16, "a token's length")?;
            vocab.push(c.take(len, "a token")?.to_vec());
        }
        let mut tensors = HashMap::new();
        while c.at < data.len() {
            let n_dims = c.count(4, "a tensor's dimension count")?;
            let name_len = c.count(1 << 10, "a tensor's name length")?;
            let ggml_type = c.i32("a tensor's type")?;
            let mut dims = Vec::with_capacity(n_dims);
            for _ in 0..n_dims {
                dims.push(c.count(1 << 24, "a tensor dimension")?);
            }
            let name = String::from_utf8_lossy(c.take(name_len, "a tensor name")?).into_owned();
            let n: usize = dims.iter().product();
            let size = encoded_len(ggml_type, n).ok_or_else(|| {
                Error::GgmlFormat(format!("{name}: {n} values of type {ggml_type}"))
            })?;
            let start = c.at;
            c.take(size, &name)?;
            tensors.insert(
                name,
                WhisperTensor {
                    ggml_type,
                    dims,
                    bytes: start..start + size,
                },
            );
        }
        Ok(WhisperFile {
            hparams,
            filters,
            n_fft,
            vocab,
            tensors,
            data,
        })
    }

    /// The tensor `name` and its bytes.
    pub fn tensor(&self, name: &str) -> Result<(&WhisperTensor, &[u8])> {
        let t = self
            .tensors
            .get(name)
            .ok_or_else(|| Error::GgmlFormat(format!("the file has no tensor {name}")))?;
        Ok((t, &self.data[t.bytes.clone()]))
    }

    /// The values of the f32 or f16 tensor `name`, which must hold `expected` values.
    pub fn floats(&self, name: &str, expected: usize) -> Result<Vec<f32>> {
        let (t, bytes) = self.tensor(name)?;
        if t.len() != expected {
            return Err(Error::GgmlFormat(format!(
                "{name} holds {} values, not {expected}",
                t.len()
            )));
        }
        match t.ggml_type {
            GGML_TYPE_F32 => Ok(bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect()),
            GGML_TYPE_F16 => Ok(bytes
                .chunks_exact(2)
                .map(|b| f16_to_f32(u16::from_le_bytes([b[0], b[1]])))
                .collect()),
            other => Err(Error::GgmlFormat(format!(
                "{name} is {other:?}, not f32 or f16"
            ))),
        }
    }
}
