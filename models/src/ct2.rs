//! Reader for CTranslate2 `model.bin` files (binary format version 6).
//!
//! Layout (all integers little-endian):
//!
//! ```text
//! u32 binary_version (6)
//! str spec_name            (str = u16 length including a trailing NUL, bytes)
//! u32 spec_revision
//! u32 variable_count
//!   str name, u8 rank, rank x u32 dims, u8 dtype, u32 byte_count, data
//! u32 alias_count
//!   str alias, str target
//! ```
//!
//! Only the header is kept in memory; tensor data is read on demand.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};

/// The binary format version this reader understands.
pub const CT2_BINARY_VERSION: u32 = 6;

/// Variables up to this many bytes are kept in memory while parsing.
const INLINE_LIMIT: u32 = 64;

/// CTranslate2 `DataType` enum values as stored in `model.bin`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Ct2DType {
    F32,
    I8,
    I16,
    I32,
    F16,
    BF16,
}

impl Ct2DType {
    /// Decodes the on-disk tag.
    pub fn from_tag(tag: u8) -> Option<Self> {
        Some(match tag {
            0 => Ct2DType::F32,
            1 => Ct2DType::I8,
            2 => Ct2DType::I16,
            3 => Ct2DType::I32,
            4 => Ct2DType::F16,
            5 => Ct2DType::BF16,
            _ => return None,
        })
    }

    /// The on-disk tag.
    pub fn tag(self) -> u8 {
        match self {
            Ct2DType::F32 => 0,
            Ct2DType::I8 => 1,
            Ct2DType::I16 => 2,
            Ct2DType::I32 => 3,
            Ct2DType::F16 => 4,
            Ct2DType::BF16 => 5,
        }
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Ct2DType::I8 => 1,
            Ct2DType::I16 | Ct2DType::F16 | Ct2DType::BF16 => 2,
            Ct2DType::F32 | Ct2DType::I32 => 4,
        }
    }

    /// True for the floating-point types.
    pub fn is_float(self) -> bool {
        matches!(self, Ct2DType::F32 | Ct2DType::F16 | Ct2DType::BF16)
    }
}

/// One variable of the model.
#[derive(Debug, Clone, PartialEq)]
pub struct Ct2Variable {
    /// Full name, e.g. `encoder/layer_0/self_attention/linear_0/weight`.
    pub name: String,
    /// Shape in row-major (numpy) order; empty for scalars.
    pub shape: Vec<usize>,
    /// Element type.
    pub dtype: Ct2DType,
    /// Offset of the data in the file.
    pub offset: u64,
    /// Length of the data in bytes.
    pub byte_len: u64,
    inline: Option<Vec<u8>>,
}

impl Ct2Variable {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Bytes of one row along the first dimension.
    pub fn row_bytes(&self) -> usize {
        self.shape.iter().skip(1).product::<usize>() * self.dtype.size()
    }

    /// The data when it is small enough to have been kept while parsing.
    pub fn inline_data(&self) -> Option<&[u8]> {
        self.inline.as_deref()
    }

    /// The value of an integer (or float) scalar kept in memory.
    pub fn scalar_i64(&self) -> Option<i64> {
        if !self.shape.is_empty() && self.numel() != 1 {
            return None;
        }
        let d = self.inline.as_deref()?;
        Some(match self.dtype {
            Ct2DType::I8 => d[0] as i8 as i64,
            Ct2DType::I16 => i16::from_le_bytes([d[0], d[1]]) as i64,
            Ct2DType::I32 => i32::from_le_bytes([d[0], d[1], d[2], d[3]]) as i64,
            Ct2DType::F32 => f32::from_le_bytes([d[0], d[1], d[2], d[3]]) as i64,
            Ct2DType::F16 => crate::ggml::f16_to_f32(u16::from_le_bytes([d[0], d[1]])) as i64,
            Ct2DType::BF16 => crate::ggml::bf16_to_f32(u16::from_le_bytes([d[0], d[1]])) as i64,
        })
    }
}

/// The parsed header of a CTranslate2 model.
#[derive(Debug, Clone)]
pub struct Ct2Model {
    /// The file this header was read from.
    pub path: PathBuf,
    /// Binary format version (6).
    pub binary_version: u32,
    /// Model spec name, e.g. `WhisperSpec`.
    pub spec_name: String,
    /// Spec revision.
    pub spec_revision: u32,
    /// Variables by name.
    pub variables: BTreeMap<String, Ct2Variable>,
    /// Alias name -> target variable name.
    pub aliases: BTreeMap<String, String>,
}

impl Ct2Model {
    /// Parses the header of `path`.
    pub fn open(path: &Path) -> Result<Ct2Model> {
        let file = File::open(path).ctx("cannot open", path)?;
        let mut reader = BufReader::with_capacity(1 << 16, file);
        Self::parse(&mut reader, path)
    }

    /// Parses a model from any seekable reader; `path` is used in errors.
    pub fn parse<R: Read + Seek>(reader: &mut R, path: &Path) -> Result<Ct2Model> {
        let fmt_err = |reason: String| Error::Ct2Format {
            path: path.to_path_buf(),
            reason,
        };
        let file_len = reader.seek(SeekFrom::End(0)).ctx("cannot seek", path)?;
        reader.seek(SeekFrom::Start(0)).ctx("cannot seek", path)?;
        let mut r = Cursor {
            inner: reader,
            pos: 0,
            len: file_len,
            path,
        };

        let binary_version = r.u32()?;
        if binary_version != CT2_BINARY_VERSION {
            return Err(fmt_err(format!(
                "unsupported binary version {binary_version} (expected {CT2_BINARY_VERSION})"
            )));
        }
        let spec_name = r.string()?;
        let spec_revision = r.u32()?;
        let count = r.u32()?;
        let mut variables = BTreeMap::new();
        for _ in 0..count {
            let name = r.string()?;
            let rank = r.u8()?;
            let mut shape = Vec::with_capacity(rank as usize);
            for _ in 0..rank {
                shape.push(r.u32()? as usize);
            }
            let tag = r.u8()?;
            let dtype = Ct2DType::from_tag(tag)
                .ok_or_else(|| fmt_err(format!("variable {name}: unknown data type {tag}")))?;
            let byte_len = r.u32()?;
            let numel: usize = shape.iter().product();
            if numel as u64 * dtype.size() as u64 != byte_len as u64 {
                return Err(fmt_err(format!(
                    "variable {name}: shape {shape:?} of {dtype:?} needs {} bytes, header says {byte_len}",
                    numel * dtype.size()
                )));
            }
            let offset = r.pos;
            let inline = if byte_len <= INLINE_LIMIT {
                let mut buf = vec![0u8; byte_len as usize];
                r.read_exact(&mut buf)?;
                Some(buf)
            } else {
                r.skip(byte_len as u64)?;
                None
            };
            let var = Ct2Variable {
                name: name.clone(),
                shape,
                dtype,
                offset,
                byte_len: byte_len as u64,
                inline,
            };
            if variables.insert(name.clone(), var).is_some() {
                return Err(fmt_err(format!("variable {name} appears twice")));
            }
        }
        let mut aliases = BTreeMap::new();
        // Older writers may end the file right after the variables.
        if r.pos < r.len {
            let n = r.u32()?;
            for _ in 0..n {
                let alias = r.string()?;
                let target = r.string()?;
                aliases.insert(alias, target);
            }
        }
        if r.pos != r.len {
            return Err(fmt_err(format!(
                "{} unexpected trailing bytes",
                r.len - r.pos
            )));
        }
        tracing::debug!(
            path = %path.display(),
            spec = %spec_name,
            revision = spec_revision,
            variables = variables.len(),
            aliases = aliases.len(),
            "parsed CTranslate2 header"
        );
        Ok(Ct2Model {
            path: path.to_path_buf(),
            binary_version,
            spec_name,
            spec_revision,
            variables,
            aliases,
        })
    }

    /// A variable by name, following aliases.
    pub fn get(&self, name: &str) -> Option<&Ct2Variable> {
        self.variables.get(name).or_else(|| {
            self.aliases
                .get(name)
                .and_then(|target| self.variables.get(target))
        })
    }

    /// A variable that must exist.
    pub fn require(&self, name: &str) -> Result<&Ct2Variable> {
        self.get(name).ok_or_else(|| Error::Ct2Format {
            path: self.path.clone(),
            reason: format!("missing variable {name}"),
        })
    }

    /// An integer scalar variable, if present.
    pub fn scalar_i64(&self, name: &str) -> Option<i64> {
        self.get(name).and_then(Ct2Variable::scalar_i64)
    }

    /// Reads `len` bytes of a variable's data starting at byte `start`.
    pub fn read_bytes<R: Read + Seek>(
        &self,
        reader: &mut R,
        var: &Ct2Variable,
        start: u64,
        len: usize,
    ) -> Result<Vec<u8>> {
        if start + len as u64 > var.byte_len {
            return Err(Error::Ct2Format {
                path: self.path.clone(),
                reason: format!("read past the end of variable {}", var.name),
            });
        }
        if let Some(d) = &var.inline {
            return Ok(d[start as usize..start as usize + len].to_vec());
        }
        reader
            .seek(SeekFrom::Start(var.offset + start))
            .ctx("cannot seek", &self.path)?;
        let mut buf = vec![0u8; len];
        reader.read_exact(&mut buf).ctx("cannot read", &self.path)?;
        Ok(buf)
    }
}

struct Cursor<'a, R> {
    inner: &'a mut R,
    pos: u64,
    len: u64,
    path: &'a Path,
}

impl<R: Read + Seek> Cursor<'_, R> {
    fn truncated(&self) -> Error {
        Error::Ct2Format {
            path: self.path.to_path_buf(),
            reason: format!("truncated file (at byte {} of {})", self.pos, self.len),
        }
    }

    fn read_exact(&mut self, buf: &mut [u8]) -> Result<()> {
        if self.pos + buf.len() as u64 > self.len {
            return Err(self.truncated());
        }
        self.inner.read_exact(buf).ctx("cannot read", self.path)?;
        self.pos += buf.len() as u64;
        Ok(())
    }

    fn skip(&mut self, n: u64) -> Result<()> {
        if self.pos + n > self.len {
            return Err(self.truncated());
        }
        self.inner
            .seek(SeekFrom::Current(n as i64))
            .ctx("cannot seek", self.path)?;
        self.pos += n;
        Ok(())
    }

    fn u8(&mut self) -> Result<u8> {
        let mut b = [0u8; 1];
        self.read_exact(&mut b)?;
        Ok(b[0])
    }

    fn u16(&mut self) -> Result<u16> {
        let mut b = [0u8; 2];
        self.read_exact(&mut b)?;
        Ok(u16::from_le_bytes(b))
    }

    fn u32(&mut self) -> Result<u32> {
        let mut b = [0u8; 4];
        self.read_exact(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    fn string(&mut self) -> Result<String> {
        let n = self.u16()? as usize;
        let mut b = vec![0u8; n];
        self.read_exact(&mut b)?;
        if b.pop() != Some(0) {
            return Err(Error::Ct2Format {
                path: self.path.to_path_buf(),
                reason: format!("string without NUL terminator before byte {}", self.pos),
            });
        }
        String::from_utf8(b).map_err(|_| Error::Ct2Format {
            path: self.path.to_path_buf(),
            reason: format!("string is not UTF-8 before byte {}", self.pos),
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Cursor as IoCursor;

    /// Builds CTranslate2 v6 files in memory.
    #[derive(Default)]
    pub(crate) struct Ct2Builder {
        vars: Vec<(String, Vec<u32>, u8, Vec<u8>)>,
        aliases: Vec<(String, String)>,
    }

    fn put_str(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&((s.len() + 1) as u16).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
        out.push(0);
    }

    impl Ct2Builder {
        pub(crate) fn var(&mut self, name: &str, shape: &[u32], dtype: Ct2DType, data: Vec<u8>) {
            self.vars
                .push((name.to_string(), shape.to_vec(), dtype.tag(), data));
        }

        pub(crate) fn f16(&mut self, name: &str, shape: &[u32], values: &[f32]) {
            let data = values
                .iter()
                .flat_map(|&v| crate::ggml::f32_to_f16(v).to_le_bytes())
                .collect();
            self.var(name, shape, Ct2DType::F16, data);
        }

        pub(crate) fn i16(&mut self, name: &str, v: i16) {
            self.var(name, &[], Ct2DType::I16, v.to_le_bytes().to_vec());
        }

        pub(crate) fn alias(&mut self, alias: &str, target: &str) {
            self.aliases.push((alias.into(), target.into()));
        }

        pub(crate) fn build(&self) -> Vec<u8> {
            let mut out = Vec::new();
            out.extend_from_slice(&6u32.to_le_bytes());
            put_str(&mut out, "WhisperSpec");
            out.extend_from_slice(&3u32.to_le_bytes());
            out.extend_from_slice(&(self.vars.len() as u32).to_le_bytes());
            for (name, shape, tag, data) in &self.vars {
                put_str(&mut out, name);
                out.push(shape.len() as u8);
                for d in shape {
                    out.extend_from_slice(&d.to_le_bytes());
                }
                out.push(*tag);
                out.extend_from_slice(&(data.len() as u32).to_le_bytes());
                out.extend_from_slice(data);
            }
            out.extend_from_slice(&(self.aliases.len() as u32).to_le_bytes());
            for (a, t) in &self.aliases {
                put_str(&mut out, a);
                put_str(&mut out, t);
            }
            out
        }
    }

    #[test]
    fn parses_hand_built_file() {
        let mut b = Ct2Builder::default();
        b.i16("decoder/num_heads", 6);
        b.var("decoder/activation", &[], Ct2DType::I8, vec![3]);
        b.var(
            "w",
            &[2, 3],
            Ct2DType::F32,
            (0..6).flat_map(|i| (i as f32).to_le_bytes()).collect(),
        );
        let big: Vec<f32> = (0..100).map(|i| i as f32 * 0.5).collect();
        b.f16("big", &[10, 10], &big);
        b.alias("decoder/projection/weight", "big");
        let bytes = b.build();
        let mut cur = IoCursor::new(bytes.clone());
        let m = Ct2Model::parse(&mut cur, Path::new("mem")).unwrap();
        assert_eq!(m.spec_name, "WhisperSpec");
        assert_eq!(m.spec_revision, 3);
        assert_eq!(m.variables.len(), 4);
        assert_eq!(m.scalar_i64("decoder/num_heads"), Some(6));
        assert_eq!(m.scalar_i64("decoder/activation"), Some(3));
        let w = m.require("w").unwrap();
        assert_eq!(w.shape, [2, 3]);
        assert_eq!(w.dtype, Ct2DType::F32);
        assert_eq!(w.row_bytes(), 12);
        let alias = m.get("decoder/projection/weight").unwrap();
        assert_eq!(alias.name, "big");
        assert!(alias.inline_data().is_none());
        // second row of `big`
        let row = m.read_bytes(&mut cur, alias, 20, 20).unwrap();
        let first = u16::from_le_bytes([row[0], row[1]]);
        assert_eq!(crate::ggml::f16_to_f32(first), 5.0);
        assert!(m.require("missing").is_err());

        // Truncation and bad versions are reported, not panicking.
        let mut short = IoCursor::new(bytes[..bytes.len() - 3].to_vec());
        assert!(Ct2Model::parse(&mut short, Path::new("mem")).is_err());
        let mut v5 = bytes.clone();
        v5[0] = 5;
        let err = Ct2Model::parse(&mut IoCursor::new(v5), Path::new("mem")).unwrap_err();
        assert!(err.to_string().contains("binary version 5"), "{err}");
        let mut bad_dtype = bytes;
        // dtype byte of the first variable: 4 + (2+12) + 4 + 4 + (2+18) + 1(rank)
        let pos = 4 + 14 + 4 + 4 + 20 + 1;
        assert_eq!(bad_dtype[pos], Ct2DType::I16.tag());
        bad_dtype[pos] = 9;
        assert!(Ct2Model::parse(&mut IoCursor::new(bad_dtype), Path::new("mem")).is_err());
    }
}
