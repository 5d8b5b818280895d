//! `companion bench-queue`: how many jobs per second the service moves through the gRPC API, the
//! queue and the store when the model stages are replaced by a no-op processor, and what that
//! costs per job. Everything runs in this process against the given database and broker.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use companion_api::{ApiConfig, ApiParts, IngestConfig, Tokens};
use companion_proto::v1 as pb;
use companion_proto::v1::recording_service_client::RecordingServiceClient;
use companion_store::Store;
use companion_telemetry::Metrics;
use companion_worker::{NoopProcessor, Worker, WorkerConfig};
use serde_json::json;

use crate::service_cmd::{QueueArgs, redact};

#[derive(Args, Debug)]
pub struct BenchQueueArgs {
    /// Jobs to push through.
    #[arg(long, default_value_t = 300)]
    jobs: usize,
    /// Worker concurrency (and queue prefetch).
    #[arg(long, default_value_t = 4)]
    concurrency: u16,
    /// Submissions in flight at once.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Store: postgres://… or a SQLite file (default: a temporary SQLite file).
    #[arg(long)]
    db: Option<String>,
    /// RabbitMQ; without it, the embedded queue in the SQLite store.
    #[command(flatten)]
    queue: QueueArgs,
}

/// One second of 8 kHz silence as a WAV file: small, and a format the API's probe accepts.
fn tiny_wav() -> Vec<u8> {
    let samples = 8000u32;
    let data_len = samples * 2;
    let mut wav = Vec::with_capacity(44 + data_len as usize);
    wav.extend_from_slice(b"RIFF");
    wav.extend_from_slice(&(36 + data_len).to_le_bytes());
    wav.extend_from_slice(b"WAVEfmt ");
    wav.extend_from_slice(&16u32.to_le_bytes());
    wav.extend_from_slice(&1u16.to_le_bytes()); // PCM
    wav.extend_from_slice(&1u16.to_le_bytes()); // mono
    wav.extend_from_slice(&8000u32.to_le_bytes());
    wav.extend_from_slice(&16000u32.to_le_bytes());
    wav.extend_from_slice(&2u16.to_le_bytes());
    wav.extend_from_slice(&16u16.to_le_bytes());
    wav.extend_from_slice(b"data");
    wav.extend_from_slice(&data_len.to_le_bytes());
    wav.resize(44 + data_len as usize, 0);
    wav
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

pub fn run(mut args: BenchQueueArgs) -> Result<()> {
    if args.jobs == 0 || args.concurrency == 0 || args.clients == 0 {
        bail!("--jobs, --concurrency and --clients must be at least 1");
    }
    let scratch = tempfile::tempdir()?;
    let db = args
        .db
        .clone()
        .unwrap_or_else(|| scratch.path().join("bench.db").display().to_string());
    if args.queue.amqp.is_some() && args.queue.queue_prefix == "companion" {
        // Never mix benchmark jobs into a live queue.
        args.queue.queue_prefix = format!("companion_bench_{}", std::process::id());
    }
    let embedded = args.queue.amqp.is_none();
    if embedded && db.starts_with("postgres") {
        bail!("the embedded queue needs a SQLite --db; give --amqp for PostgreSQL");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let store = Store::open(&db).await?;
        let queue = args.queue.open(embedded.then_some(db.as_str())).await?;
        let metrics = Metrics::new();
        let worker = Worker::new(
            store.clone(),
            queue.clone(),
            Arc::new(NoopProcessor),
            WorkerConfig {
                concurrency: args.concurrency,
                ..WorkerConfig::default()
            },
            metrics.clone(),
        )?;
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut stop = stop_rx.clone();
        let worker = tokio::spawn(worker.run(async move {
            let _ = stop.wait_for(|s| *s).await;
        }));
        let token = format!("bench-token-{}-0123456789", std::process::id());
        let tokens = Arc::new(Tokens::parse(&format!("{token}\tbench\tpbx\n"))?);
        let mut stop = stop_rx.clone();
        let (addr, api) = companion_api::bind(
            "127.0.0.1:0".parse()?,
            ApiConfig {
                ingest: IngestConfig::default(),
                tls: None,
            },
            ApiParts {
                store: store.clone(),
                queue: queue.clone(),
                tokens,
                language: None,
                metrics,
            },
            async move {
                let _ = stop.wait_for(|s| *s).await;
            },
        )
        .await?;
        let api = tokio::spawn(api);
        let mut events = queue.subscribe_results("bench.#").await?;
        let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))?
            .connect()
            .await
            .context("cannot reach the API")?;
        let audio = tiny_wav();
        let run_id = format!("{}", std::process::id());

        let started = Instant::now();
        let submitted = Arc::new(tokio::sync::Mutex::new(Vec::with_capacity(args.jobs)));
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut clients = Vec::new();
        for _ in 0..args.clients.min(args.jobs) {
            let mut client = RecordingServiceClient::new(channel.clone());
            let (audio, token, run_id) = (audio.clone(), token.clone(), run_id.clone());
            let (next, submitted) = (next.clone(), submitted.clone());
            let jobs = args.jobs;
            clients.push(tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= jobs {
                        return Ok::<(), tonic::Status>(());
                    }
                    let mut request = tonic::Request::new(pb::SubmitRecordingRequest {
                        recording_id: format!("bench-{run_id}-{i}"),
                        user_id: "u".into(),
                        kind: pb::RecordingKind::Voicemail as i32,
                        filename: "bench.wav".into(),
                        source: Some(pb::submit_recording_request::Source::Audio(audio.clone())),
                    });
                    request
                        .metadata_mut()
                        .insert("authorization", format!("Bearer {token}").parse().unwrap());
                    let sent = Instant::now();
                    client.submit_recording(request).await?;
                    submitted
                        .lock()
                        .await
                        .push(sent.elapsed().as_secs_f64() * 1000.0);
                }
            }));
        }
        for client in clients {
            client.await?.context("a submission failed")?;
        }
        let submit_s = started.elapsed().as_secs_f64();
        let mut done = 0usize;
        while done < args.jobs {
            let event = tokio::time::timeout(Duration::from_secs(60), events.next())
                .await
                .context("no result event for 60 s")?
                .context("the result events ended")??;
            if event.status == pb::JobStatus::Done as i32 {
                done += 1;
            }
        }
        let total_s = started.elapsed().as_secs_f64();
        let _ = stop_tx.send(true);
        api.await??;
        let stats = worker.await??;
        store.close().await;

        let mut latencies = submitted.lock().await.clone();
        latencies.sort_by(f64::total_cmp);
        let line = json!({
            "jobs": args.jobs,
            "queue": if embedded { "embedded".to_string() } else { "rabbitmq".to_string() },
            "store": if db.starts_with("postgres") { "postgresql" } else { "sqlite" },
            "db": redact(&db),
            "concurrency": args.concurrency,
            "clients": args.clients,
            "submit_s": submit_s,
            "total_s": total_s,
            "jobs_per_s": args.jobs as f64 / total_s,
            "overhead_ms_per_job": total_s * 1000.0 / args.jobs as f64,
            "submit_ms_p50": percentile(&latencies, 0.5),
            "submit_ms_p95": percentile(&latencies, 0.95),
            "worker_done": stats.done,
        });
        println!("{line}");
        Ok(())
    })
}
