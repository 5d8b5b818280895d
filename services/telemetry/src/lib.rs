//! What the service processes report about themselves: Prometheus metrics (jobs by status, stage
//! durations, queue lag, model load time, API calls) and a small HTTP server with `/metrics`,
//! `/healthz` (the process is alive) and `/readyz` (it can do its work: store and queue
//! reachable).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tracing::{info, warn};

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabel {
    pub stage: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabel {
    pub model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// done, failed, retried, dead_lettered, redelivered_done
    pub outcome: String,
    /// The error kind for failures; empty otherwise.
    pub error_kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabel {
    pub method: String,
    pub code: String,
}

/// Every metric the processes export. Cheap to clone (handles to shared atomics).
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Mutex<Registry>>,
    /// Jobs in the store by status (`queued`, `processing`, `done`, `failed`), refreshed at
    /// every scrape.
    pub jobs: Family<StatusLabel, Gauge>,
    /// Jobs a worker finished, by outcome and error kind.
    pub jobs_handled: Family<OutcomeLabel, Counter>,
    /// Wall time of each pipeline stage.
    pub stage_duration: Family<StageLabel, Histogram>,
    /// Whole-job wall time in a worker (fetch, pipeline, store, event).
    pub job_duration: Histogram,
    /// From submission to the moment a worker took the job.
    pub queue_lag: Histogram,
    /// Model load time, in seconds, as the last load measured it.
    pub model_load_seconds: Family<ModelLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// gRPC calls by method and status code.
    pub rpcs: Family<RpcLabel, Counter>,
    /// Jobs being processed right now by this worker.
    pub in_flight: Gauge,
}

fn seconds_histogram() -> Histogram {
    // 5 ms .. ~11 min
    Histogram::new(exponential_buckets(0.005, 2.0, 18))
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("companion");
        let jobs = Family::<StatusLabel, Gauge>::default();
        registry.register("jobs", "Jobs in the store by status", jobs.clone());
        let jobs_handled = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "jobs_handled",
            "Jobs this worker settled, by outcome and error kind",
            jobs_handled.clone(),
        );
        let stage_duration =
            Family::<StageLabel, Histogram>::new_with_constructor(seconds_histogram as fn() -> _);
        registry.register(
            "stage_duration_seconds",
            "Wall time of each pipeline stage",
            stage_duration.clone(),
        );
        let job_duration = seconds_histogram();
        registry.register(
            "job_duration_seconds",
            "Wall time of a whole job in a worker",
            job_duration.clone(),
        );
        let queue_lag = seconds_histogram();
        registry.register(
            "queue_lag_seconds",
            "Time from submission until a worker took the job",
            queue_lag.clone(),
        );
        let model_load_seconds = Family::default();
        registry.register(
            "model_load_seconds",
            "How long the last load of each model took",
            model_load_seconds.clone(),
        );
        let rpcs = Family::<RpcLabel, Counter>::default();
        registry.register("rpcs", "gRPC calls by method and status code", rpcs.clone());
        let in_flight = Gauge::default();
        registry.register(
            "jobs_in_flight",
            "Jobs this worker is processing",
            in_flight.clone(),
        );
        Metrics {
            registry: Arc::new(Mutex::new(registry)),
            jobs,
            jobs_handled,
            stage_duration,
            job_duration,
            queue_lag,
            model_load_seconds,
            rpcs,
            in_flight,
        }
    }

    pub fn job_handled(&self, outcome: &str, error_kind: &str) {
        self.jobs_handled
            .get_or_create(&OutcomeLabel {
                outcome: outcome.into(),
                error_kind: error_kind.into(),
            })
            .inc();
    }

    pub fn stage(&self, stage: &str, ms: u64) {
        self.stage_duration
            .get_or_create(&StageLabel {
                stage: stage.into(),
            })
            .observe(ms as f64 / 1000.0);
    }

    pub fn model_loaded(&self, model: &str, ms: u64) {
        self.model_load_seconds
            .get_or_create(&ModelLabel {
                model: model.into(),
            })
            .set(ms as f64 / 1000.0);
    }

    pub fn rpc(&self, method: &str, code: &str) {
        self.rpcs
            .get_or_create(&RpcLabel {
                method: method.into(),
                code: code.into(),
            })
            .inc();
    }

    pub fn set_jobs(&self, status: &str, count: i64) {
        self.jobs
            .get_or_create(&StatusLabel {
                status: status.into(),
            })
            .set(count);
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}

/// Answers `/readyz` (and refreshes gauges before `/metrics`): `Err(reason)` when the process
/// cannot do its work.
pub trait Probe: Send + Sync + 'static {
    fn ready(&self) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>>;
    /// Called before every scrape to refresh gauges that are read from elsewhere.
    fn refresh<'a>(
        &'a self,
        _metrics: &'a Metrics,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
        Box::pin(async {})
    }
}

#[derive(Clone)]
struct HttpState {
    metrics: Metrics,
    probe: Arc<dyn Probe>,
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `addr` until `shutdown` resolves. Returns
/// the bound address (port 0 picks one) once listening.
pub async fn serve_http(
    addr: SocketAddr,
    metrics: Metrics,
    probe: Arc<dyn Probe>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), TelemetryError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| TelemetryError::Bind { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| TelemetryError::Bind { addr, source })?;
    let app = Router::new()
        .route("/metrics", get(metrics_page))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready_page))
        .with_state(HttpState { metrics, probe });
    info!(%bound, "metrics and health on http");
    let handle = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            warn!(error = %e, "metrics server stopped");
        }
    });
    Ok((bound, handle))
}

async fn metrics_page(State(state): State<HttpState>) -> impl IntoResponse {
    state.probe.refresh(&state.metrics).await;
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}

async fn ready_page(State(state): State<HttpState>) -> impl IntoResponse {
    match state.probe.ready().await {
        Ok(()) => (StatusCode::OK, "ready\n".to_string()),
        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    struct Flag(bool);

    impl Probe for Flag {
        fn ready(&self) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>> {
            let ready = self.0;
            Box::pin(async move {
                if ready {
                    Ok(())
                } else {
                    Err("queue: connection refused".into())
                }
            })
        }
        fn refresh<'a>(
            &'a self,
            metrics: &'a Metrics,
        ) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
            Box::pin(async move { metrics.set_jobs("queued", 3) })
        }
    }

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut out = String::new();
        stream.read_to_string(&mut out).await.unwrap();
        out
    }

    #[test]
    fn metrics_encode_in_prometheus_text() {
        let metrics = Metrics::new();
        metrics.stage("asr", 1500);
        metrics.job_handled("failed", "corrupt_audio");
        metrics.model_loaded("whisper-base", 250);
        let text = metrics.encode();
        assert!(
            text.contains("companion_stage_duration_seconds_count{stage=\"asr\"} 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "companion_jobs_handled_total{outcome=\"failed\",error_kind=\"corrupt_audio\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("companion_model_load_seconds{model=\"whisper-base\"} 0.25"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn http_endpoints_answer() {
        let metrics = Metrics::new();
        for (ready, status) in [(true, "200 OK"), (false, "503 Service Unavailable")] {
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            let (addr, handle) = serve_http(
                "127.0.0.1:0".parse().unwrap(),
                metrics.clone(),
                Arc::new(Flag(ready)),
                async move {
                    let _ = rx.await;
                },
            )
            .await
            .unwrap();
            assert!(get(addr, "/healthz").await.starts_with("HTTP/1.1 200 OK"));
            let readyz = get(addr, "/readyz").await;
            assert!(
                readyz.starts_with(&format!("HTTP/1.1 {status}")),
                "{readyz}"
            );
            let page = get(addr, "/metrics").await;
            assert!(
                page.contains("companion_jobs{status=\"queued\"} 3"),
                "{page}"
            );
            tx.send(()).unwrap();
            handle.await.unwrap();
        }
    }
}
