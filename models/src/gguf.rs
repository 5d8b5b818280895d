//! GGUF (llama.cpp's model file): reading the tensor directory, and rewriting
//! chosen weight matrices of a file in another ggml block format.
//!
//! Layout (GGUF versions 2 and 3, little-endian):
//!
//! ```text
//! "GGUF", u32 version, u64 tensor count, u64 metadata count
//! metadata: per entry a string key, a u32 value type and the value
//!           (strings are a u64 length and bytes; arrays a u32 item type,
//!           a u64 count and the items)
//! tensors:  per tensor a string name, u32 n_dims, n_dims × u64 dimensions
//!           (innermost first), u32 ggml type, u64 offset into the data
//! padding to the alignment (metadata `general.alignment`, 32 when absent)
//! data:     each tensor at an aligned offset from the start of the data
//! ```
//!
//! [`requantize_gguf`] copies the metadata byte for byte and every tensor it
//! was not asked to change, so the result differs from its input only in the
//! selected tensors' types, sizes and offsets.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::{Error, IoContext, Result};
use crate::ggml::GgmlWeightType;
use crate::hash::HashingWriter;

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
const ALIGNMENT_KEY: &str = "general.alignment";
/// ggml's `GGML_MAX_DIMS`.
const MAX_DIMS: u32 = 4;
/// Far beyond any real model; stops a corrupt count from allocating the machine.
const MAX_ENTRIES: u64 = 1 << 24;

// Metadata value types.
const TYPE_U32: u32 = 4;
const TYPE_STRING: u32 = 8;
const TYPE_ARRAY: u32 = 9;

/// Byte size of a fixed-size metadata value type.
fn scalar_size(value_type: u32) -> Option<u64> {
    match value_type {
        0 | 1 | 7 => Some(1), // u8, i8, bool
        2 | 3 => Some(2),     // u16, i16
        4..=6 => Some(4),     // u32, i32, f32
        10..=12 => Some(8),   // u64, i64, f64
        _ => None,
    }
}

/// Values per block and bytes per block of the ggml tensor types a GGUF file
/// may hold (`ggml_type_traits`); `None` for types this crate does not know.
fn type_block(ggml_type: u32) -> Option<(u64, u64)> {
    Some(match ggml_type {
        0 => (1, 4),      // f32
        1 => (1, 2),      // f16
        2 => (32, 18),    // q4_0
        3 => (32, 20),    // q4_1
        6 => (32, 22),    // q5_0
        7 => (32, 24),    // q5_1
        8 => (32, 34),    // q8_0
        9 => (32, 36),    // q8_1
        10 => (256, 84),  // q2_K
        11 => (256, 110), // q3_K
        12 => (256, 144), // q4_K
        13 => (256, 176), // q5_K
        14 => (256, 210), // q6_K
        15 => (256, 292), // q8_K
        24 => (1, 1),     // i8
        25 => (1, 2),     // i16
        26 => (1, 4),     // i32
        27 => (1, 8),     // i64
        28 => (1, 8),     // f64
        30 => (1, 2),     // bf16
        _ => return None,
    })
}

/// The [`GgmlWeightType`] stored under a ggml type id, if it is one.
fn weight_type(ggml_type: u32) -> Option<GgmlWeightType> {
    GgmlWeightType::ALL
        .into_iter()
        .find(|t| t.ggml_type() as u32 == ggml_type)
}

/// One entry of a GGUF file's tensor directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GgufTensor {
    /// Name, e.g. `blk.0.ffn_up.weight`.
    pub name: String,
    /// Dimensions, innermost (row length) first.
    pub dims: Vec<u64>,
    /// ggml type id (0 f32, 1 f16, 2 q4_0, 6 q5_0, 8 q8_0, ...).
    pub ggml_type: u32,
    /// Offset of the data from the start of the data section.
    pub offset: u64,
    /// Size of the data in bytes.
    pub size: u64,
}

impl GgufTensor {
    /// Number of values.
    pub fn values(&self) -> u64 {
        self.dims.iter().product()
    }

    /// True when one of the dot-separated parts of the name is `kind`
    /// (`ffn_up` selects `blk.3.ffn_up.weight`).
    pub fn is_kind(&self, kind: &str) -> bool {
        self.name.split('.').any(|part| part == kind)
    }
}

/// The parsed header of a GGUF file: everything but the tensor data.
#[derive(Debug, Clone)]
pub struct GgufHeader {
    /// Format version (2 or 3).
    pub version: u32,
    /// Number of metadata entries.
    pub metadata_count: u64,
    /// The metadata entries, as stored.
    pub metadata: Vec<u8>,
    /// Data alignment.
    pub alignment: u64,
    /// The tensor directory, in file order.
    pub tensors: Vec<GgufTensor>,
    /// File offset of the data section.
    pub data_start: u64,
}

/// A reader that knows its position and can keep a copy of what it reads.
struct Cursor<'a, R> {
    inner: R,
    path: &'a Path,
    pos: u64,
    len: u64,
    copy: Option<Vec<u8>>,
}

impl<R: Read> Cursor<'_, R> {
    fn bad(&self, reason: impl Into<String>) -> Error {
        Error::Conversion {
            path: self.path.to_path_buf(),
            reason: format!("not a valid GGUF file: {}", reason.into()),
        }
    }

    fn bytes(&mut self, n: u64) -> Result<Vec<u8>> {
        if n > self.len.saturating_sub(self.pos) {
            return Err(self.bad(format!(
                "{n} bytes at offset {} run past the end of the file",
                self.pos
            )));
        }
        let mut buf = vec![0u8; n as usize];
        self.inner
            .read_exact(&mut buf)
            .ctx("cannot read", self.path)?;
        self.pos += n;
        if let Some(copy) = &mut self.copy {
            copy.extend_from_slice(&buf);
        }
        Ok(buf)
    }

    fn u32(&mut self) -> Result<u32> {
        let b = self.bytes(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64> {
        let b = self.bytes(8)?;
        Ok(u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }

    fn string(&mut self) -> Result<String> {
        let n = self.u64()?;
        let b = self.bytes(n)?;
        String::from_utf8(b).map_err(|_| self.bad("a string is not UTF-8"))
    }

    /// Reads past one metadata value of `value_type`.
    fn skip_value(&mut self, value_type: u32, depth: u32) -> Result<()> {
        if let Some(n) = scalar_size(value_type) {
            self.bytes(n)?;
            return Ok(());
        }
        match value_type {
            TYPE_STRING => {
                let n = self.u64()?;
                self.bytes(n)?;
            }
            TYPE_ARRAY if depth < 4 => {
                let item_type = self.u32()?;
                let count = self.u64()?;
                match scalar_size(item_type) {
                    Some(n) => {
                        let total = count
                            .checked_mul(n)
                            .ok_or_else(|| self.bad("an array is too long"))?;
                        self.bytes(total)?;
                    }
                    None => {
                        for _ in 0..count {
                            self.skip_value(item_type, depth + 1)?;
                        }
                    }
                }
            }
            other => return Err(self.bad(format!("unknown metadata value type {other}"))),
        }
        Ok(())
    }
}

/// Reads the header and tensor directory of the GGUF file at `path`.
pub fn read_gguf_header(path: &Path) -> Result<GgufHeader> {
    let file = File::open(path).ctx("cannot open", path)?;
    let len = file.metadata().ctx("cannot read", path)?.len();
    let mut r = Cursor {
        inner: BufReader::with_capacity(1 << 20, file),
        path,
        pos: 0,
        len,
        copy: None,
    };
    if r.bytes(4)? != MAGIC {
        return Err(r.bad("it does not start with `GGUF`"));
    }
    let version = r.u32()?;
    if !(2..=3).contains(&version) {
        return Err(r.bad(format!("version {version} (2 and 3 are supported)")));
    }
    let tensor_count = r.u64()?;
    let metadata_count = r.u64()?;
    if tensor_count > MAX_ENTRIES || metadata_count > MAX_ENTRIES {
        return Err(r.bad(format!(
            "{tensor_count} tensors and {metadata_count} metadata entries"
        )));
    }

    r.copy = Some(Vec::new());
    let mut alignment = DEFAULT_ALIGNMENT;
    for _ in 0..metadata_count {
        let key = r.string()?;
        let value_type = r.u32()?;
        if key == ALIGNMENT_KEY && value_type == TYPE_U32 {
            alignment = u64::from(r.u32()?);
            if alignment == 0 || !alignment.is_power_of_two() {
                return Err(r.bad(format!("alignment {alignment}")));
            }
        } else {
            r.skip_value(value_type, 0)?;
        }
    }
    let metadata = r.copy.take().unwrap_or_default();

    let mut tensors = Vec::with_capacity(tensor_count as usize);
    for _ in 0..tensor_count {
        let name = r.string()?;
        let n_dims = r.u32()?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(r.bad(format!("tensor {name} has {n_dims} dimensions")));
        }
        let dims = (0..n_dims).map(|_| r.u64()).collect::<Result<Vec<_>>>()?;
        let ggml_type = r.u32()?;
        let offset = r.u64()?;
        let Some((block_values, block_bytes)) = type_block(ggml_type) else {
            return Err(r.bad(format!(
                "tensor {name} has ggml type {ggml_type}, which this converter does not know"
            )));
        };
        let values = dims
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .filter(|_| dims[0] % block_values == 0)
            .ok_or_else(|| r.bad(format!("tensor {name} has dimensions {dims:?}")))?;
        tensors.push(GgufTensor {
            name,
            dims,
            ggml_type,
            offset,
            size: values / block_values * block_bytes,
        });
    }
    let data_start = r.pos.next_multiple_of(alignment);
    for t in &tensors {
        let end = t
            .offset
            .checked_add(t.size)
            .and_then(|e| e.checked_add(data_start));
        if end.is_none_or(|e| e > len) || t.offset % alignment != 0 {
            return Err(r.bad(format!(
                "tensor {} ({} bytes at offset {}) lies outside the file or is misaligned",
                t.name, t.size, t.offset
            )));
        }
    }
    Ok(GgufHeader {
        version,
        metadata_count,
        metadata,
        alignment,
        tensors,
        data_start,
    })
}

/// What [`requantize_gguf`] produced.
#[derive(Debug, Clone)]
pub struct RequantizeReport {
    /// The file written.
    pub output: PathBuf,
    /// Tensors in the file.
    pub n_tensors: usize,
    /// Tensors stored in the new type.
    pub requantized: usize,
    /// Size of the output in bytes.
    pub size: u64,
    /// sha256 of the output.
    pub sha256: String,
    /// Wall-clock time of the conversion.
    pub elapsed: Duration,
}

/// Writes a copy of the GGUF file `input` to `output` in which every tensor
/// whose name has one of `kinds` as a dot-separated part (`ffn_up`,
/// `attn_q`, ...) is stored as `to`: its values are decoded from their
/// stored type and encoded with ggml's reference quantizer. The metadata and
/// every other tensor are copied unchanged.
///
/// Fails when a selected tensor's type cannot be decoded (only f32, f16 and
/// the [`GgmlWeightType`] formats can), when nothing matches `kinds`, or
/// when `input` is not a well-formed GGUF file.
pub fn requantize_gguf(
    input: &Path,
    output: &Path,
    to: GgmlWeightType,
    kinds: &[String],
) -> Result<RequantizeReport> {
    let started = Instant::now();
    let header = read_gguf_header(input)?;
    let (to_values, to_bytes) = to.block();
    let fail = |reason: String| Error::Conversion {
        path: input.to_path_buf(),
        reason,
    };

    // The new directory: same order, new types, sizes and offsets.
    let mut selected = Vec::with_capacity(header.tensors.len());
    let mut directory = Vec::with_capacity(header.tensors.len());
    let mut offset = 0u64;
    for t in &header.tensors {
        let pick = kinds.iter().any(|k| t.is_kind(k)) && t.ggml_type != to.ggml_type() as u32;
        let mut new = t.clone();
        if pick {
            if t.ggml_type != 0 && weight_type(t.ggml_type).is_none() {
                return Err(fail(format!(
                    "tensor {} has ggml type {}, which cannot be decoded for requantization",
                    t.name, t.ggml_type
                )));
            }
            if t.dims[0] % to_values as u64 != 0 {
                return Err(fail(format!(
                    "tensor {} has rows of {} values, not whole {to} blocks",
                    t.name, t.dims[0]
                )));
            }
            new.ggml_type = to.ggml_type() as u32;
            new.size = t.values() / to_values as u64 * to_bytes as u64;
        }
        new.offset = offset;
        offset = (offset + new.size).next_multiple_of(header.alignment);
        selected.push(pick);
        directory.push(new);
    }
    let requantized = selected.iter().filter(|&&s| s).count();
    if requantized == 0 {
        return Err(fail(format!(
            "no tensor of kind {} is stored in another type than {to}",
            kinds.join(", ")
        )));
    }

    let mut src = BufReader::with_capacity(1 << 20, File::open(input).ctx("cannot open", input)?);
    let out = File::create(output).ctx("cannot create", output)?;
    let mut w = Output {
        inner: HashingWriter::new(BufWriter::with_capacity(1 << 20, out)),
        path: output,
        at: 0,
    };
    w.put(MAGIC)?;
    w.put(&header.version.to_le_bytes())?;
    w.put(&(directory.len() as u64).to_le_bytes())?;
    w.put(&header.metadata_count.to_le_bytes())?;
    w.put(&header.metadata)?;
    for t in &directory {
        w.put(&(t.name.len() as u64).to_le_bytes())?;
        w.put(t.name.as_bytes())?;
        w.put(&(t.dims.len() as u32).to_le_bytes())?;
        for d in &t.dims {
            w.put(&d.to_le_bytes())?;
        }
        w.put(&t.ggml_type.to_le_bytes())?;
        w.put(&t.offset.to_le_bytes())?;
    }
    // The data section starts at a multiple of the alignment, and each tensor
    // is padded to one, so every tensor's offset is aligned both ways.
    w.pad(header.alignment)?;
    for ((old, new), pick) in header.tensors.iter().zip(&directory).zip(selected) {
        src.seek(SeekFrom::Start(header.data_start + old.offset))
            .ctx("cannot read", input)?;
        let mut raw = vec![0u8; old.size as usize];
        src.read_exact(&mut raw).ctx("cannot read", input)?;
        let bytes = if pick {
            let values = match weight_type(old.ggml_type) {
                Some(from) => from.dequantize(&raw),
                None => raw
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
            };
            to.quantize(&values)
        } else {
            raw
        };
        debug_assert_eq!(bytes.len() as u64, new.size);
        w.put(&bytes)?;
        w.pad(header.alignment)?;
    }
    let (buf, sha256, size) = w.inner.finish();
    let out = buf
        .into_inner()
        .map_err(|e| Error::io("cannot write", output, e.into_error()))?;
    out.sync_all().ctx("cannot sync", output)?;
    let report = RequantizeReport {
        output: output.to_path_buf(),
        n_tensors: directory.len(),
        requantized,
        size,
        sha256,
        elapsed: started.elapsed(),
    };
    tracing::info!(
        input = %input.display(),
        output = %output.display(),
        to = %to,
        requantized = report.requantized,
        tensors = report.n_tensors,
        size,
        elapsed_ms = report.elapsed.as_millis() as u64,
        "GGUF requantized"
    );
    Ok(report)
}

/// The output file, hashed as it is written.
struct Output<'a, W: Write> {
    inner: HashingWriter<W>,
    path: &'a Path,
    at: u64,
}

impl<W: Write> Output<'_, W> {
    fn put(&mut self, bytes: &[u8]) -> Result<()> {
        self.at += bytes.len() as u64;
        self.inner.write_all(bytes).ctx("cannot write", self.path)
    }

    /// Zero bytes up to the next multiple of `alignment`.
    fn pad(&mut self, alignment: u64) -> Result<()> {
        let n = self.at.next_multiple_of(alignment) - self.at;
        self.put(&vec![0u8; n as usize])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A GGUF file in memory: metadata (a string, an array of strings and,
    /// when given, the alignment), then the tensors as (name, dims, type,
    /// data).
    fn gguf(alignment: Option<u32>, tensors: &[(&str, Vec<u64>, u32, Vec<u8>)]) -> Vec<u8> {
        let align = u64::from(alignment.unwrap_or(32));
        let string = |s: &str| [&(s.len() as u64).to_le_bytes()[..], s.as_bytes()].concat();
        let mut f = MAGIC.to_vec();
        f.extend(3u32.to_le_bytes());
        f.extend((tensors.len() as u64).to_le_bytes());
        f.extend((2 + u64::from(alignment.is_some())).to_le_bytes());
        f.extend(string("general.name"));
        f.extend(TYPE_STRING.to_le_bytes());
        f.extend(string("tiny"));
        f.extend(string("tokenizer.ggml.tokens"));
        f.extend(TYPE_ARRAY.to_le_bytes());
        f.extend(TYPE_STRING.to_le_bytes());
        f.extend(3u64.to_le_bytes());
        for t in ["a", "bc", "<|end|>"] {
            f.extend(string(t));
        }
        if let Some(a) = alignment {
            f.extend(string(ALIGNMENT_KEY));
            f.extend(TYPE_U32.to_le_bytes());
            f.extend(a.to_le_bytes());
        }
        let mut offset = 0u64;
        for (name, dims, ty, data) in tensors {
            f.extend(string(name));
            f.extend((dims.len() as u32).to_le_bytes());
            dims.iter().for_each(|d| f.extend(d.to_le_bytes()));
            f.extend(ty.to_le_bytes());
            f.extend(offset.to_le_bytes());
            offset = (offset + data.len() as u64).next_multiple_of(align);
        }
        for (_, _, _, data) in tensors {
            f.resize(f.len().next_multiple_of(align as usize), 0);
            f.extend(data);
        }
        f
    }

    fn values(n: usize, seed: f32) -> Vec<f32> {
        (0..n)
            .map(|i| (i as f32 * 0.37 + seed).sin() * 0.8)
            .collect()
    }

    fn f32_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    fn tiny_model() -> Vec<(&'static str, Vec<u64>, u32, Vec<u8>)> {
        let q5 = GgmlWeightType::Q5_0;
        vec![
            (
                "token_embd.weight",
                vec![64, 3],
                8,
                GgmlWeightType::Q8_0.quantize(&values(192, 1.0)),
            ),
            (
                "blk.0.attn_norm.weight",
                vec![64],
                0,
                f32_bytes(&values(64, 2.0)),
            ),
            (
                "blk.0.ffn_up.weight",
                vec![64, 2],
                q5.ggml_type() as u32,
                q5.quantize(&values(128, 3.0)),
            ),
            (
                "blk.0.ffn_down.weight",
                vec![32, 4],
                0,
                f32_bytes(&values(128, 4.0)),
            ),
            ("output_norm.weight", vec![5], 0, f32_bytes(&values(5, 5.0))),
        ]
    }

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    #[test]
    fn reads_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let tensors = tiny_model();
        let path = write(dir.path(), "in.gguf", &gguf(Some(64), &tensors));
        let h = read_gguf_header(&path).unwrap();
        assert_eq!((h.version, h.metadata_count, h.alignment), (3, 3, 64));
        assert_eq!(h.tensors.len(), 5);
        assert_eq!(h.data_start % 64, 0);
        let bytes = std::fs::read(&path).unwrap();
        for (t, (name, dims, ty, data)) in h.tensors.iter().zip(&tensors) {
            assert_eq!((t.name.as_str(), &t.dims, t.ggml_type), (*name, dims, *ty));
            let at = (h.data_start + t.offset) as usize;
            assert_eq!(&bytes[at..at + t.size as usize], &data[..], "{name}");
        }
        assert!(h.tensors[2].is_kind("ffn_up") && !h.tensors[2].is_kind("ffn"));
    }

    #[test]
    fn requantizes_only_the_chosen_kinds() {
        let dir = tempfile::tempdir().unwrap();
        for alignment in [None, Some(64)] {
            let tensors = tiny_model();
            let input = write(dir.path(), "in.gguf", &gguf(alignment, &tensors));
            let output = dir.path().join("out.gguf");
            let kinds = ["ffn_up".to_string(), "ffn_down".to_string()];
            let report = requantize_gguf(&input, &output, GgmlWeightType::Q4_0, &kinds).unwrap();
            assert_eq!((report.n_tensors, report.requantized), (tensors.len(), 2));
            let written = std::fs::read(&output).unwrap();
            assert_eq!(report.size, written.len() as u64);
            assert_eq!(report.sha256, crate::hash::sha256_file(&output).unwrap().0);

            // The same file but for the two tensors, written the way the
            // test writes any GGUF file.
            let q4 = GgmlWeightType::Q4_0;
            let mut expected = tensors.clone();
            expected[2].2 = q4.ggml_type() as u32;
            expected[2].3 = q4.quantize(&GgmlWeightType::Q5_0.dequantize(&tensors[2].3));
            expected[3].2 = q4.ggml_type() as u32;
            expected[3].3 = q4.quantize(&values(128, 4.0));
            let mut expected = gguf(alignment, &expected);
            expected.resize(
                expected
                    .len()
                    .next_multiple_of(alignment.unwrap_or(32) as usize),
                0,
            );
            assert!(written == expected, "alignment {alignment:?}");
        }
    }

    #[test]
    fn refuses_what_it_cannot_convert() {
        let dir = tempfile::tempdir().unwrap();
        let tensors = tiny_model();
        let good = gguf(None, &tensors);
        let output = dir.path().join("out.gguf");
        let q4 = GgmlWeightType::Q4_0;
        let reason = |bytes: &[u8], kinds: &[&str]| {
            let input = write(dir.path(), "in.gguf", bytes);
            let kinds: Vec<String> = kinds.iter().map(|k| k.to_string()).collect();
            match requantize_gguf(&input, &output, q4, &kinds) {
                Err(Error::Conversion { reason, .. }) => reason,
                other => panic!("{other:?}"),
            }
        };
        assert!(reason(b"GGML\x03\0\0\0", &["ffn_up"]).contains("does not start with `GGUF`"));
        assert!(reason(&good[..good.len() - 1], &["ffn_up"]).contains("outside the file"));
        assert!(reason(&good[..40], &["ffn_up"]).contains("past the end"));
        assert!(reason(&good, &["attn_q"]).contains("no tensor of kind attn_q"));
        let mut k_quant = tensors.clone();
        k_quant[2] = ("blk.0.ffn_up.weight", vec![256], 12, vec![0; 144]);
        assert!(reason(&gguf(None, &k_quant), &["ffn_up"]).contains("cannot be decoded"));
        let mut odd = tensors.clone();
        odd[3] = ("blk.0.ffn_down.weight", vec![5, 2], 0, vec![0; 40]);
        assert!(reason(&gguf(None, &odd), &["ffn_down"]).contains("not whole q4_0 blocks"));
        let mut unknown = tensors;
        unknown[1].2 = 99;
        assert!(reason(&gguf(None, &unknown), &["ffn_up"]).contains("ggml type 99"));
    }
}
