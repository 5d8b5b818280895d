//! Helpers shared by the integration tests, which run the real models
//! installed by `companion models fetch NAME`.

#![allow(dead_code)]

use std::path::PathBuf;

use companion_language::{EMBEDDING_ROLE, LLM_ROLE, installed_model};

fn require(name: &str, role: &str) -> PathBuf {
    match installed_model(name, role) {
        Ok(path) => path,
        Err(err) => panic!(
            "\n{err}\nThese tests need the real model `{name}`: run `companion models fetch {name}` \
             (models are cached in $COMPANION_MODELS_DIR or ~/.cache/companion/models).\n"
        ),
    }
}

/// Path of an installed GGUF chat model.
pub fn llm_path(name: &str) -> PathBuf {
    require(name, LLM_ROLE)
}

/// Directory of an installed embedding model.
pub fn embedding_dir(name: &str) -> PathBuf {
    let artifact = require(name, EMBEDDING_ROLE);
    artifact
        .parent()
        .expect("an artifact lives in its model directory")
        .to_path_buf()
}

/// Extracts the first `{...}` object of a model answer (models like to wrap
/// JSON in Markdown code fences).
pub fn json_object(text: &str) -> Option<&str> {
    let start = text.find('{')?;
    let end = text.rfind('}')?;
    (end > start).then(|| &text[start..=end])
}
