//! The language models of a process, loaded on first use and then shared by every job: a
//! process whose policy never asks for a summary never pays for loading the LLM.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tracing::info;

use crate::backend::Backend;
use crate::embed::Embedder;
use crate::error::Result;
use crate::generate::TextGenerator;
use crate::llama::LlamaCpp;
use crate::llm::Llm;
use crate::native::{DEFAULT_MAX_DRAFT, Native, NativeOptions};

/// Where the models are, which runtime serves the chat model, and each model once loaded.
pub struct LanguageModels {
    llm_path: PathBuf,
    embedder_dir: PathBuf,
    threads: Option<usize>,
    backend: Backend,
    max_draft: usize,
    llm: Mutex<Option<Arc<dyn TextGenerator>>>,
    embedder: Mutex<Option<Arc<Embedder>>>,
}

impl std::fmt::Debug for LanguageModels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let loaded = |m: bool| if m { "loaded" } else { "not loaded" };
        let llm = self.llm.lock().map(|l| l.is_some()).unwrap_or(false);
        let embedder = self.embedder.lock().map(|e| e.is_some()).unwrap_or(false);
        f.debug_struct("LanguageModels")
            .field("llm_path", &self.llm_path)
            .field("embedder_dir", &self.embedder_dir)
            .field("threads", &self.threads)
            .field("backend", &self.backend)
            .field("llm", &loaded(llm))
            .field("embedder", &loaded(embedder))
            .finish()
    }
}

/// A model handed out with how long this call waited for it to load (0 when it was loaded).
pub struct Loaded<T: ?Sized> {
    pub model: Arc<T>,
    pub load_ms: u64,
}

impl LanguageModels {
    /// Nothing is loaded yet; paths come from `resolve_model` or configuration. The chat model
    /// runs on the default [`Backend`] (llama.cpp) unless [`LanguageModels::with_backend`]
    /// says otherwise.
    pub fn new(llm_path: PathBuf, embedder_dir: PathBuf, threads: Option<usize>) -> Self {
        LanguageModels {
            llm_path,
            embedder_dir,
            threads,
            backend: Backend::default(),
            max_draft: DEFAULT_MAX_DRAFT,
            llm: Mutex::new(None),
            embedder: Mutex::new(None),
        }
    }

    /// Serves the chat model with `backend`.
    pub fn with_backend(mut self, backend: Backend) -> Self {
        self.backend = backend;
        self
    }

    /// Checks up to `max_draft` tokens looked up in the prompt with each generated one (the
    /// engine; 0 generates one token a pass). The answer is the same either way.
    pub fn with_max_draft(mut self, max_draft: usize) -> Self {
        self.max_draft = max_draft;
        self
    }

    /// The runtime of the chat model.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The chat model, loading it on the first call. A failed load is retried on the next call.
    pub fn llm(&self) -> Result<Loaded<dyn TextGenerator>> {
        let what = format!("language model ({})", self.backend);
        load_once(&self.llm, &what, &self.llm_path, || {
            Ok(match self.backend {
                Backend::Native => {
                    let options = NativeOptions {
                        threads: self.threads,
                        max_draft: self.max_draft,
                        ..NativeOptions::default()
                    };
                    Arc::new(Native::load_with(&self.llm_path, &options)?) as Arc<dyn TextGenerator>
                }
                Backend::LlamaCpp => Arc::new(LlamaCpp::load(&self.llm_path, self.threads)?)
                    as Arc<dyn TextGenerator>,
                Backend::Candle => {
                    Arc::new(Llm::load(&self.llm_path, self.threads)?) as Arc<dyn TextGenerator>
                }
            })
        })
    }

    /// The sentence encoder, loading it on the first call.
    pub fn embedder(&self) -> Result<Loaded<Embedder>> {
        load_once(
            &self.embedder,
            "embedding model",
            &self.embedder_dir,
            || Ok(Arc::new(Embedder::load(&self.embedder_dir)?)),
        )
    }
}

/// The model in `slot`, loaded by `load` if it is not there yet. The lock is held while loading
/// so concurrent first callers wait for one load instead of each loading a copy.
fn load_once<T: ?Sized>(
    slot: &Mutex<Option<Arc<T>>>,
    what: &str,
    path: &std::path::Path,
    load: impl FnOnce() -> Result<Arc<T>>,
) -> Result<Loaded<T>> {
    let mut slot = slot.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(model) = slot.as_ref() {
        return Ok(Loaded {
            model: model.clone(),
            load_ms: 0,
        });
    }
    let started = Instant::now();
    let model = load()?;
    let load_ms = started.elapsed().as_millis() as u64;
    info!(path = %path.display(), load_ms, "{what} loaded");
    *slot = Some(model.clone());
    Ok(Loaded { model, load_ms })
}
