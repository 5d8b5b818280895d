//! Finding installed language models by name.

use std::path::PathBuf;

use companion_models::ModelCache;

use crate::error::Result;

/// Manifest role of chat LLMs (GGUF files).
pub const LLM_ROLE: &str = "llm";
/// Manifest role of sentence embedding models.
pub const EMBEDDING_ROLE: &str = "embedding";

/// Resolves a model given by path or by manifest name.
///
/// * An existing file or directory is used as-is.
/// * Otherwise `name_or_path` must name a model of the bundled manifest with
///   the given `role` that is installed in `cache`; if it is not installed,
///   the error says to run `companion models fetch NAME`.
///
/// Returns the artifact path (the GGUF file of an LLM, `model.safetensors`
/// of an embedding model, whose directory holds its other files).
pub fn resolve_model(name_or_path: &str, role: &str, cache: &ModelCache) -> Result<PathBuf> {
    Ok(companion_models::resolve_model(name_or_path, role, cache)?)
}

/// [`resolve_model`] in the default cache (`$COMPANION_MODELS_DIR` or
/// `~/.cache/companion/models`).
pub fn installed_model(name_or_path: &str, role: &str) -> Result<PathBuf> {
    resolve_model(name_or_path, role, &ModelCache::default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

    #[test]
    fn names_paths_roles_and_missing_models() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = ModelCache::new(tmp.path().join("cache"));
        let file = tmp.path().join("model.gguf");
        std::fs::write(&file, b"GGUF").unwrap();
        assert_eq!(
            resolve_model(file.to_str().unwrap(), LLM_ROLE, &cache).unwrap(),
            file
        );

        let err = resolve_model("qwen2.5-0.5b", LLM_ROLE, &cache).unwrap_err();
        assert!(
            err.to_string()
                .contains("companion models fetch qwen2.5-0.5b"),
            "{err}"
        );
        let err = resolve_model("all-minilm-l6-v2", LLM_ROLE, &cache).unwrap_err();
        assert!(
            matches!(&err, Error::Models(e) if matches!(**e, companion_models::Error::WrongRole { .. })),
            "{err}"
        );
        let err = resolve_model("gpt-5", LLM_ROLE, &cache).unwrap_err();
        assert!(err.to_string().contains("smollm2-135m"), "{err}");
        let err = resolve_model("/nope/model.gguf", LLM_ROLE, &cache).unwrap_err();
        assert!(
            matches!(&err, Error::Models(e) if matches!(**e, companion_models::Error::ModelFileMissing { .. })),
            "{err}"
        );
    }
}
