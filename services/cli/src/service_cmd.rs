//! The service processes: `serve` (gRPC API; `--embedded` adds a worker, SQLite and the
//! in-database queue), `worker` (queue consumer) and `migrate`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use companion_api::{ApiConfig, ApiParts, IngestConfig, TlsFiles, Tokens};
use companion_models::ModelCache;
use companion_queue::{
    AmqpConfig, AmqpQueue, Backoff, EmbeddedConfig, EmbeddedQueue, JobQueue, RetryPolicy,
};
use companion_store::Store;
use companion_telemetry::{Metrics, Probe};
use companion_worker::{Processor, Worker, WorkerConfig};
use tracing::{info, warn};

use crate::process::{LanguageArgs, PipelineArgs};

/// Where jobs go: RabbitMQ, and how failed attempts are retried.
#[derive(Args, Clone, Debug)]
pub struct QueueArgs {
    /// RabbitMQ address, e.g. amqp://guest:guest@127.0.0.1:5672/%2f (amqps:// for TLS).
    #[arg(long, env = "COMPANION_AMQP")]
    pub amqp: Option<String>,
    /// First word of the queue and exchange names (`companion` → `companion.jobs`).
    #[arg(long, env = "COMPANION_QUEUE_PREFIX", default_value = "companion")]
    pub queue_prefix: String,
    /// Attempts per job before it fails and is dead-lettered.
    #[arg(long, env = "COMPANION_MAX_ATTEMPTS", default_value_t = 3)]
    pub max_attempts: u32,
    /// Delay before the first retry, in milliseconds; it quadruples with every attempt.
    #[arg(long, env = "COMPANION_RETRY_DELAY_MS", default_value_t = 10_000)]
    pub retry_delay_ms: u64,
}

impl QueueArgs {
    fn retry(&self) -> Result<RetryPolicy> {
        if self.max_attempts == 0 {
            bail!("--max-attempts must be at least 1");
        }
        Ok(RetryPolicy {
            max_attempts: self.max_attempts,
            backoff: Backoff::new(
                Duration::from_millis(self.retry_delay_ms.max(1)),
                4,
                Duration::from_secs(15 * 60),
            ),
        })
    }

    /// The RabbitMQ queue, or the in-database queue in the SQLite file `embedded_db`.
    pub async fn open(&self, embedded_db: Option<&str>) -> Result<Arc<dyn JobQueue>> {
        let retry = self.retry()?;
        match (embedded_db, &self.amqp) {
            (Some(db), _) => {
                let config = EmbeddedConfig {
                    retry,
                    ..EmbeddedConfig::default()
                };
                let queue = EmbeddedQueue::open(db, config)
                    .await
                    .context("cannot open the embedded queue")?;
                Ok(Arc::new(queue))
            }
            (None, Some(url)) => {
                let mut config = AmqpConfig::new(url.clone());
                config.retry = retry;
                config.prefix = self.queue_prefix.clone();
                let queue = AmqpQueue::connect(config)
                    .await
                    .context("cannot connect to RabbitMQ")?;
                Ok(Arc::new(queue))
            }
            (None, None) => bail!("--amqp URL is required (or serve --embedded)"),
        }
    }
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// gRPC listen address.
    #[arg(long, env = "COMPANION_LISTEN", default_value = "0.0.0.0:50051")]
    listen: SocketAddr,
    /// Store: postgres://… or a SQLite file path / sqlite: URL (required SQLite with --embedded).
    #[arg(long, env = "COMPANION_DB", default_value = "./companion.db")]
    db: String,
    #[command(flatten)]
    queue: QueueArgs,
    /// Tokens file: TSV lines token<TAB>tenant<TAB>role(pbx|user|admin)[<TAB>user].
    #[arg(long, env = "COMPANION_TOKENS")]
    tokens: PathBuf,
    /// HTTP address for /metrics, /healthz and /readyz (off when not given).
    #[arg(long, env = "COMPANION_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// Directory file:// recordings must be under (file:// is refused when not given).
    #[arg(long, env = "COMPANION_AUDIO_ROOT")]
    audio_root: Option<PathBuf>,
    /// TLS certificate chain (PEM); with --tls-key, the API speaks TLS only.
    #[arg(long, env = "COMPANION_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, env = "COMPANION_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// One process for a single machine: the API plus a worker, on SQLite with the queue in the
    /// same database file (no broker).
    #[arg(long, env = "COMPANION_EMBEDDED")]
    embedded: bool,
    /// With --embedded: jobs processed at once.
    #[arg(long, env = "COMPANION_CONCURRENCY", default_value_t = 1)]
    concurrency: u16,
    /// Recording limits (also the worker's, with --embedded) and the pipeline's options.
    #[command(flatten)]
    pipeline: PipelineArgs,
    #[command(flatten)]
    language: LanguageArgs,
}

#[derive(Args, Debug)]
pub struct WorkerArgs {
    /// Store: postgres://… or a SQLite file path / sqlite: URL.
    #[arg(long, env = "COMPANION_DB", default_value = "./companion.db")]
    db: String,
    #[command(flatten)]
    queue: QueueArgs,
    /// Jobs processed at once (also the queue prefetch). The models are shared; each job
    /// uses the Whisper threads given by --threads.
    #[arg(long, env = "COMPANION_CONCURRENCY", default_value_t = 1)]
    concurrency: u16,
    /// HTTP address for /metrics, /healthz and /readyz (off when not given).
    #[arg(long, env = "COMPANION_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// Directory file:// recordings must be under.
    #[arg(long, env = "COMPANION_AUDIO_ROOT")]
    audio_root: Option<PathBuf>,
    /// On SIGTERM, how long jobs in flight may take to finish before they go back to the queue.
    #[arg(long, env = "COMPANION_DRAIN_TIMEOUT_S", default_value_t = 300)]
    drain_timeout_s: u64,
    #[command(flatten)]
    pipeline: PipelineArgs,
    #[command(flatten)]
    language: LanguageArgs,
}

#[derive(Args, Debug)]
pub struct MigrateArgs {
    /// Store: postgres://… or a SQLite file path / sqlite: URL.
    #[arg(long, env = "COMPANION_DB", default_value = "./companion.db")]
    db: String,
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Resolves on SIGTERM or Ctrl-C.
async fn terminated() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(signal) => signal,
        Err(e) => {
            warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the process");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => info!("interrupt: shutting down"),
    }
}

/// Readiness: the store answers. Gauges: jobs by status, read from the store.
struct StoreProbe(Store);

impl Probe for StoreProbe {
    fn ready(
        &self,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + '_>> {
        Box::pin(async move { self.0.ping().await.map_err(|e| format!("store: {e}")) })
    }

    fn refresh<'a>(
        &'a self,
        metrics: &'a Metrics,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>> {
        Box::pin(async move {
            match self.0.job_counts().await {
                Ok(counts) => {
                    for (state, n) in counts {
                        metrics.set_jobs(state.as_str(), n);
                    }
                }
                Err(e) => warn!(error = %e, "cannot count jobs for the metrics"),
            }
        })
    }
}

async fn start_metrics(
    addr: Option<SocketAddr>,
    metrics: &Metrics,
    store: &Store,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Result<Option<tokio::task::JoinHandle<()>>> {
    let Some(addr) = addr else { return Ok(None) };
    let mut stop = stop;
    let (_, handle) = companion_telemetry::serve_http(
        addr,
        metrics.clone(),
        Arc::new(StoreProbe(store.clone())),
        async move {
            let _ = stop.wait_for(|s| *s).await;
        },
    )
    .await?;
    Ok(Some(handle))
}

/// Loads Whisper and the language models before the first job, and reports the load times.
fn load_processor(
    pipeline: &PipelineArgs,
    language: &LanguageArgs,
    models_dir: &Path,
    metrics: &Metrics,
) -> Result<Arc<dyn Processor>> {
    let started = Instant::now();
    let (pipeline, models) = pipeline.pipeline_parts(models_dir, Some(language))?;
    metrics.model_loaded("asr", started.elapsed().as_millis() as u64);
    if let Some(models) = models {
        let llm = models.llm().context("cannot load the language model")?;
        metrics.model_loaded("llm", llm.load_ms);
        let embedder = models
            .embedder()
            .context("cannot load the embedding model")?;
        metrics.model_loaded("embedder", embedder.load_ms);
        info!(
            asr_ms = started.elapsed().as_millis() as u64 - llm.load_ms - embedder.load_ms,
            llm_ms = llm.load_ms,
            embedder_ms = embedder.load_ms,
            "models loaded"
        );
    }
    Ok(Arc::new(pipeline))
}

fn worker_config(
    concurrency: u16,
    audio_root: Option<PathBuf>,
    max_bytes: u64,
    drain_timeout: Duration,
) -> Result<WorkerConfig> {
    if concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    Ok(WorkerConfig {
        concurrency,
        audio_root,
        max_bytes,
        drain_timeout,
    })
}

pub fn worker(args: WorkerArgs, models_dir: &Path) -> Result<()> {
    let metrics = Metrics::new();
    let config = worker_config(
        args.concurrency,
        args.audio_root.clone(),
        args.pipeline.max_bytes,
        Duration::from_secs(args.drain_timeout_s),
    )?;
    // Models first: a worker that cannot load them must not take jobs.
    let processor = load_processor(&args.pipeline, &args.language, models_dir, &metrics)?;
    runtime()?.block_on(async move {
        let store = Store::open(&args.db).await?;
        let queue = args.queue.open(None).await?;
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let http = start_metrics(args.metrics_listen, &metrics, &store, stop_rx).await?;
        let worker = Worker::new(store.clone(), queue, processor, config, metrics)?;
        let stats = worker.run(terminated()).await?;
        let _ = stop_tx.send(true);
        if let Some(http) = http {
            let _ = http.await;
        }
        store.close().await;
        info!(?stats, "worker exited");
        Ok(())
    })
}

pub fn serve(args: ServeArgs, models_dir: &Path) -> Result<()> {
    let metrics = Metrics::new();
    let tokens = Arc::new(Tokens::load(&args.tokens)?);
    let language = {
        let cache = ModelCache::new(models_dir);
        let threads = args.pipeline.threads.map(|t| t as usize);
        match args.language.models(&cache, threads) {
            Ok(models) => Some(Arc::new(models)),
            Err(e) => {
                warn!(error = %format!("{e:#}"), "TextService is off: no language model");
                None
            }
        }
    };
    let processor = if args.embedded {
        if args.db.starts_with("postgres") {
            bail!("--embedded keeps everything in one SQLite file; --db must be SQLite");
        }
        Some(load_processor(
            &args.pipeline,
            &args.language,
            models_dir,
            &metrics,
        )?)
    } else {
        None
    };
    let worker_config = worker_config(
        args.concurrency,
        args.audio_root.clone(),
        args.pipeline.max_bytes,
        Duration::from_secs(300),
    )?;
    let ingest = IngestConfig {
        audio_root: args.audio_root.clone(),
        max_bytes: args.pipeline.max_bytes,
        max_duration_s: args.pipeline.max_duration_s,
    };
    let tls = match (args.tls_cert, args.tls_key) {
        (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
        _ => None,
    };
    runtime()?.block_on(async move {
        let store = Store::open(&args.db).await?;
        let queue = args
            .queue
            .open(args.embedded.then_some(args.db.as_str()))
            .await?;
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let http = start_metrics(args.metrics_listen, &metrics, &store, stop_rx.clone()).await?;
        let worker = match processor {
            Some(processor) => {
                let worker = Worker::new(
                    store.clone(),
                    queue.clone(),
                    processor,
                    worker_config,
                    metrics.clone(),
                )?;
                let mut stop = stop_rx.clone();
                Some(tokio::spawn(worker.run(async move {
                    let _ = stop.wait_for(|s| *s).await;
                })))
            }
            None => None,
        };
        let mut stop = stop_rx.clone();
        let (_, api) = companion_api::bind(
            args.listen,
            ApiConfig { ingest, tls },
            ApiParts {
                store: store.clone(),
                queue,
                tokens,
                language,
                metrics,
            },
            async move {
                let _ = stop.wait_for(|s| *s).await;
            },
        )
        .await?;
        let api = tokio::spawn(api);
        terminated().await;
        let _ = stop_tx.send(true);
        api.await.context("the API task failed")??;
        if let Some(worker) = worker {
            let stats = worker.await.context("the worker task failed")??;
            info!(?stats, "embedded worker stopped");
        }
        if let Some(http) = http {
            let _ = http.await;
        }
        store.close().await;
        Ok(())
    })
}

pub fn migrate(args: MigrateArgs) -> Result<()> {
    runtime()?.block_on(async move {
        let store = Store::open(&args.db).await?;
        store.close().await;
        eprintln!("companion: the store at {} is up to date", redact(&args.db));
        Ok(())
    })
}

/// A database URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            match credentials.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme + 3],
                    &credentials[..colon],
                    &url[at..]
                ),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("postgres://app:s3cret@db:5432/pbx"),
            "postgres://app:***@db:5432/pbx"
        );
        assert_eq!(redact("postgres://app@db/pbx"), "postgres://app@db/pbx");
        assert_eq!(redact("./companion.db"), "./companion.db");
    }
}
