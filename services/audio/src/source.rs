//! Where a recording's audio is read from when it is given by reference: `file://` URIs that
//! must stay under a configured root (no `..`, no symlink, no other scheme escapes it).

use std::path::{Component, Path, PathBuf};

use companion_core::{Classify, ErrorKind};

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{uri:?}: only file:// URIs are accepted")]
    Scheme { uri: String },
    #[error("{uri:?}: not a valid file URI: {reason}")]
    Malformed { uri: String, reason: String },
    #[error("{uri:?} is outside the audio root")]
    OutsideRoot { uri: String },
    #[error("{uri:?}: {source}")]
    Io { uri: String, source: std::io::Error },
}

impl Classify for SourceError {
    fn kind(&self) -> ErrorKind {
        match self {
            SourceError::Io { .. } => ErrorKind::Io,
            _ => ErrorKind::InvalidArgument,
        }
    }
}

/// Resolves `file:///abs/path` (percent-encoded bytes allowed) to a path under `root`. The file
/// must exist: both paths are canonicalised, so symlinks pointing out of the root are refused.
pub fn resolve_file_uri(uri: &str, root: &Path) -> Result<PathBuf, SourceError> {
    let malformed = |reason: &str| SourceError::Malformed {
        uri: uri.to_string(),
        reason: reason.to_string(),
    };
    let rest = uri
        .strip_prefix("file://")
        .ok_or_else(|| SourceError::Scheme {
            uri: uri.to_string(),
        })?;
    // file://localhost/path is the same as file:///path; any other host is not ours.
    let rest = rest.strip_prefix("localhost").unwrap_or(rest);
    if !rest.starts_with('/') {
        return Err(malformed("the path must be absolute (file:///...)"));
    }
    if rest.contains(['?', '#']) {
        return Err(malformed("queries and fragments are not allowed"));
    }
    let decoded = percent_decode(rest).ok_or_else(|| malformed("bad percent-encoding"))?;
    if decoded.contains('\0') {
        return Err(malformed("NUL in path"));
    }
    let path = PathBuf::from(decoded);
    if path.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(SourceError::OutsideRoot {
            uri: uri.to_string(),
        });
    }
    let io = |source| SourceError::Io {
        uri: uri.to_string(),
        source,
    };
    let root = root.canonicalize().map_err(io)?;
    let real = path.canonicalize().map_err(io)?;
    if !real.starts_with(&root) {
        return Err(SourceError::OutsideRoot {
            uri: uri.to_string(),
        });
    }
    if !real.is_file() {
        return Err(malformed("not a regular file"));
    }
    Ok(real)
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_files_under_the_root_only() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("sub dir")).unwrap();
        let inside = root.join("sub dir/a.wav");
        std::fs::write(&inside, b"x").unwrap();
        let outside = dir.path().join("secret.wav");
        std::fs::write(&outside, b"x").unwrap();
        std::os::unix::fs::symlink(&outside, root.join("link.wav")).unwrap();

        let uri = |p: &str| format!("file://{p}");
        let ok =
            resolve_file_uri(&uri(&format!("{}/sub%20dir/a.wav", root.display())), &root).unwrap();
        assert_eq!(ok, inside.canonicalize().unwrap());
        let localhost = format!("file://localhost{}/sub%20dir/a.wav", root.display());
        assert!(resolve_file_uri(&localhost, &root).is_ok());

        let refused = |u: String| resolve_file_uri(&u, &root).unwrap_err();
        assert!(matches!(
            refused(uri(&outside.display().to_string())),
            SourceError::OutsideRoot { .. }
        ));
        assert!(matches!(
            refused(uri(&format!("{}/../secret.wav", root.display()))),
            SourceError::OutsideRoot { .. }
        ));
        assert!(matches!(
            refused(uri(&format!("{}/link.wav", root.display()))),
            SourceError::OutsideRoot { .. }
        ));
        assert!(matches!(
            refused(format!("http://example.com{}", inside.display())),
            SourceError::Scheme { .. }
        ));
        assert!(matches!(
            refused("file://relative/a.wav".into()),
            SourceError::Malformed { .. }
        ));
        assert!(matches!(
            refused(uri(&format!("{}/missing.wav", root.display()))),
            SourceError::Io { .. }
        ));
        assert!(matches!(
            refused(uri(&format!("{}/sub%20dir", root.display()))),
            SourceError::Malformed { .. }
        ));
        assert!(matches!(
            refused(uri(&format!("{}/a%zz", root.display()))),
            SourceError::Malformed { .. }
        ));
        for e in [
            refused(uri(&outside.display().to_string())),
            refused("ftp://x".into()),
        ] {
            assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        }
    }
}
