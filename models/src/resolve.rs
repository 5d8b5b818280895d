//! Turning a user's `--model` value into a file.

use std::path::{Path, PathBuf};

use crate::cache::ModelCache;
use crate::error::{Error, Result};
use crate::manifest::Manifest;

/// Role of speech-recognition models in the manifest.
pub const ASR_ROLE: &str = "asr";

/// Resolves an ASR model given by path or by name: [`resolve_model`] with the `asr` role.
/// Any whisper.cpp GGML file a user brings is used as-is.
pub fn resolve_asr_model(name_or_path: &str, cache: &ModelCache) -> Result<PathBuf> {
    resolve_model(name_or_path, ASR_ROLE, cache)
}

/// Resolves a model given by path or by name.
///
/// * An existing file (or, for models made of several files, directory) is used as-is.
/// * Otherwise the value must name a model of the bundled manifest with this `role` that is
///   installed in `cache`; if it is not, the error tells the user to run
///   `companion models fetch NAME`.
///
/// Returns the artifact path; a model's other files sit beside it.
pub fn resolve_model(name_or_path: &str, role: &str, cache: &ModelCache) -> Result<PathBuf> {
    resolve_with(Manifest::bundled_ref(), name_or_path, role, cache)
}

pub(crate) fn resolve_with(
    manifest: &Manifest,
    name_or_path: &str,
    role: &str,
    cache: &ModelCache,
) -> Result<PathBuf> {
    let as_path = Path::new(name_or_path);
    if as_path.exists() {
        tracing::debug!(path = %as_path.display(), role, "using model path as given");
        return Ok(as_path.to_path_buf());
    }
    let Some(spec) = manifest.get(name_or_path) else {
        let looks_like_path = name_or_path.contains(std::path::MAIN_SEPARATOR)
            || name_or_path.contains('/')
            || name_or_path.ends_with(".bin");
        if looks_like_path {
            return Err(Error::ModelFileMissing {
                path: as_path.to_path_buf(),
            });
        }
        return Err(Error::UnknownModel {
            name: name_or_path.to_string(),
            known: manifest
                .with_role(role)
                .map(|m| m.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        });
    };
    if spec.role != role {
        return Err(Error::WrongRole {
            name: spec.name.clone(),
            role: spec.role.clone(),
            expected: role.to_string(),
        });
    }
    if !cache.is_installed(spec) {
        return Err(Error::NotInstalled {
            name: spec.name.clone(),
            dir: cache.dir().to_path_buf(),
        });
    }
    let path = cache.artifact_path(spec);
    tracing::debug!(model = %spec.name, path = %path.display(), role, "resolved model");
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_paths_and_names() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ModelCache::new(dir.path().join("cache"));
        let file = dir.path().join("my-model.bin");
        std::fs::write(&file, b"ggml").unwrap();
        assert_eq!(
            resolve_asr_model(file.to_str().unwrap(), &cache).unwrap(),
            file
        );

        let err = resolve_asr_model("whisper-base", &cache).unwrap_err();
        assert!(matches!(err, Error::NotInstalled { .. }));
        assert!(
            err.to_string()
                .contains("companion models fetch whisper-base"),
            "{err}"
        );
        let err = resolve_asr_model("whisper-huge", &cache).unwrap_err();
        assert!(matches!(err, Error::UnknownModel { .. }));
        assert!(err.to_string().contains("whisper-tiny.en"), "{err}");
        let err = resolve_asr_model("/nope/model.bin", &cache).unwrap_err();
        assert!(matches!(err, Error::ModelFileMissing { .. }));
    }
}
