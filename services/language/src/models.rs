//! The language models of a process, loaded on first use and then shared by every job: a
//! process whose policy never asks for a summary never pays for loading the LLM.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tracing::info;

use crate::embed::Embedder;
use crate::error::Result;
use crate::llm::Llm;

/// Where the models are, and each one once loaded.
#[derive(Debug)]
pub struct LanguageModels {
    llm_path: PathBuf,
    embedder_dir: PathBuf,
    threads: Option<usize>,
    llm: Mutex<Option<Arc<Llm>>>,
    embedder: Mutex<Option<Arc<Embedder>>>,
}

/// A model handed out with how long this call waited for it to load (0 when it was loaded).
pub struct Loaded<T> {
    pub model: Arc<T>,
    pub load_ms: u64,
}

impl LanguageModels {
    /// Nothing is loaded yet; paths come from `resolve_model` or configuration.
    pub fn new(llm_path: PathBuf, embedder_dir: PathBuf, threads: Option<usize>) -> Self {
        LanguageModels {
            llm_path,
            embedder_dir,
            threads,
            llm: Mutex::new(None),
            embedder: Mutex::new(None),
        }
    }

    /// The chat model, loading it on the first call. A failed load is retried on the next call.
    pub fn llm(&self) -> Result<Loaded<Llm>> {
        load_once(&self.llm, "language model", &self.llm_path, || {
            Llm::load(&self.llm_path, self.threads)
        })
    }

    /// The sentence encoder, loading it on the first call.
    pub fn embedder(&self) -> Result<Loaded<Embedder>> {
        load_once(
            &self.embedder,
            "embedding model",
            &self.embedder_dir,
            || Embedder::load(&self.embedder_dir),
        )
    }
}

/// The model in `slot`, loaded by `load` if it is not there yet. The lock is held while loading
/// so concurrent first callers wait for one load instead of each loading a copy.
fn load_once<T>(
    slot: &Mutex<Option<Arc<T>>>,
    what: &str,
    path: &std::path::Path,
    load: impl FnOnce() -> Result<T>,
) -> Result<Loaded<T>> {
    let mut slot = slot.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(model) = slot.as_ref() {
        return Ok(Loaded {
            model: model.clone(),
            load_ms: 0,
        });
    }
    let started = Instant::now();
    let model = Arc::new(load()?);
    let load_ms = started.elapsed().as_millis() as u64;
    info!(path = %path.display(), load_ms, "{what} loaded");
    *slot = Some(model.clone());
    Ok(Loaded { model, load_ms })
}
