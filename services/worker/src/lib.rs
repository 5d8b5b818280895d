//! The consumer loop: take a job off the queue, fetch its audio, run the pipeline on a blocking
//! thread, commit the result to the store, announce it, and only then acknowledge the job.
//!
//! Delivery is at-least-once, so every step is idempotent per job: a redelivered job whose
//! result is already committed is announced again and acknowledged without running anything;
//! the store refuses a second result for the same job. Failures are retried with the queue's
//! backoff; the last failed attempt is stored as `failed` with its reason and dead-lettered.
//!
//! Shutdown drains: the worker stops taking jobs, lets the ones in flight finish (bounded by
//! `drain_timeout`) and gives back whatever is still running after that, so nothing is lost.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use companion_core::policy::EffectivePolicy;
use companion_core::{Classify, ErrorKind, ErrorReport, RecordingKind, RecordingResult};
use companion_pipeline::{Input, Pipeline, RecordingContext};
use companion_queue::{Delivery, JobQueue, JobStatus, QueueError, ResultReady};
use companion_store::{JobRecord, JobState, Outcome, PolicyStoreError, Store, StoreError};
use companion_telemetry::Metrics;
use tokio::task::JoinSet;
use tracing::{Instrument, debug, error, info, info_span, warn};

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("queue: {0}")]
    Queue(#[from] QueueError),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    InvalidArgument(String),
}

/// Turns one recording into a result. Blocking: the worker calls it on a blocking thread.
pub trait Processor: Send + Sync + 'static {
    fn process(&self, input: Input) -> Result<RecordingResult, ErrorReport>;
}

impl Processor for Pipeline {
    fn process(&self, input: Input) -> Result<RecordingResult, ErrorReport> {
        Pipeline::process(self, input)
            .map(|processed| processed.result)
            .map_err(|e| ErrorReport {
                kind: e.kind(),
                message: e.to_string(),
            })
    }
}

/// A processor that does no work: it returns an empty result at once. The throughput benchmark
/// uses it to measure what the queue and the store cost per job.
pub struct NoopProcessor;

impl Processor for NoopProcessor {
    fn process(&self, input: Input) -> Result<RecordingResult, ErrorReport> {
        Ok(RecordingResult {
            file: input.file,
            recording_id: input.recording_id,
            ..Default::default()
        })
    }
}

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Jobs processed at once (and the queue prefetch).
    pub concurrency: u16,
    /// `file://` sources must resolve under this directory; `None` refuses them.
    pub audio_root: Option<PathBuf>,
    /// Largest recording fetched from a `file://` source.
    pub max_bytes: u64,
    /// How long shutdown waits for jobs in flight before giving them back to the queue.
    pub drain_timeout: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            concurrency: 1,
            audio_root: None,
            max_bytes: 256 * 1024 * 1024,
            drain_timeout: Duration::from_secs(300),
        }
    }
}

/// What a worker did before it stopped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkerStats {
    pub done: u64,
    pub failed: u64,
    pub retried: u64,
    /// Jobs still running when the drain timeout ran out (given back to the queue).
    pub abandoned: u64,
}

pub struct Worker {
    store: Store,
    queue: Arc<dyn JobQueue>,
    processor: Arc<dyn Processor>,
    config: WorkerConfig,
    metrics: Metrics,
}

/// How one job ended, for the stats.
enum Handled {
    Done,
    Failed,
    Retried,
    /// Nothing to do (deleted recording, already finished job).
    Skipped,
}

impl Worker {
    pub fn new(
        store: Store,
        queue: Arc<dyn JobQueue>,
        processor: Arc<dyn Processor>,
        config: WorkerConfig,
        metrics: Metrics,
    ) -> Result<Worker, WorkerError> {
        if config.concurrency == 0 {
            return Err(WorkerError::InvalidArgument(
                "concurrency must be at least 1".into(),
            ));
        }
        Ok(Worker {
            store,
            queue,
            processor,
            config,
            metrics,
        })
    }

    /// Consumes jobs until `shutdown` resolves, then drains.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<WorkerStats, WorkerError> {
        let worker = Arc::new(self);
        let mut consumer = worker.queue.consume(worker.config.concurrency).await?;
        info!(
            concurrency = worker.config.concurrency,
            "worker consuming jobs"
        );
        let mut tasks: JoinSet<Handled> = JoinSet::new();
        let mut stats = WorkerStats::default();
        tokio::pin!(shutdown);
        loop {
            while let Some(joined) = tasks.try_join_next() {
                count(&mut stats, joined);
            }
            // Only shutdown may interrupt `next`: a claim cut short would leave the job leased
            // (embedded queue) until its lease expires.
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                next = consumer.next() => match next {
                    None => {
                        warn!("the queue closed; the worker stops");
                        break;
                    }
                    Some(Err(e)) => {
                        // The consumer reconnects by itself; an error here means the broker
                        // stayed away for the whole reconnect window. Keep trying.
                        error!(error = %e, "cannot take jobs from the queue; trying again");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    Some(Ok(delivery)) => {
                        let worker = worker.clone();
                        let span = info_span!(
                            "job",
                            job_id = %delivery.job.job_id,
                            attempt = delivery.attempt
                        );
                        tasks.spawn(async move { worker.handle(delivery).await }.instrument(span));
                    }
                }
            }
        }
        // Stop taking jobs; a delivery prefetched but not yet handed out goes back.
        drop(consumer);
        if !tasks.is_empty() {
            info!(
                in_flight = tasks.len(),
                "draining: waiting for the jobs in flight"
            );
        }
        let deadline = tokio::time::sleep(worker.config.drain_timeout);
        tokio::pin!(deadline);
        while !tasks.is_empty() {
            tokio::select! {
                Some(joined) = tasks.join_next() => count(&mut stats, joined),
                () = &mut deadline => {
                    stats.abandoned = tasks.len() as u64;
                    warn!(
                        jobs = tasks.len(),
                        "drain timeout: giving the unfinished jobs back to the queue"
                    );
                    // Aborting drops their deliveries unsettled, which requeues them.
                    tasks.shutdown().await;
                    break;
                }
            }
        }
        info!(?stats, "worker stopped");
        Ok(stats)
    }

    async fn handle(&self, delivery: Delivery) -> Handled {
        let started = Instant::now();
        self.metrics.in_flight.inc();
        let lag_ms = companion_now_ms() - delivery.job.enqueued_at_ms;
        if delivery.attempt == 1 && lag_ms >= 0 {
            self.metrics.queue_lag.observe(lag_ms as f64 / 1000.0);
        }
        let handled = self.handle_inner(delivery).await;
        self.metrics.in_flight.dec();
        self.metrics
            .job_duration
            .observe(started.elapsed().as_secs_f64());
        handled
    }

    async fn handle_inner(&self, delivery: Delivery) -> Handled {
        let job_id = delivery.job.job_id.clone();
        let record = match self.store.start_attempt(&job_id).await {
            Ok(Some(record)) => record,
            Ok(None) => {
                info!("the recording was deleted; dropping its job");
                settle_ack(delivery).await;
                return Handled::Skipped;
            }
            Err(e) => return self.retry(delivery, None, &store_report(&e)).await,
        };
        if matches!(record.state, JobState::Done | JobState::Failed) {
            // Redelivered after its result was committed (the ack was lost): announce it
            // again, since the event may not have gone out, and settle.
            info!(
                state = record.state.as_str(),
                "job already finished; not running it again"
            );
            self.announce(&record, status_of(record.state), record.error.as_ref())
                .await;
            self.metrics.job_handled("redelivered_finished", "");
            settle_ack(delivery).await;
            return Handled::Skipped;
        }

        let result = match self.run_pipeline(&record).await {
            Ok(result) => result,
            Err(report) => return self.retry(delivery, Some(&record), &report).await,
        };
        for (stage, ms) in &result.timings_ms {
            self.metrics.stage(stage, *ms);
        }
        match self.store.finish(&job_id, Outcome::Done(&result)).await {
            Ok(Some(finished)) => {
                debug!(
                    version = finished.version,
                    first = finished.first,
                    "result stored"
                );
            }
            Ok(None) => {
                info!("the recording was deleted while it was processed; dropping the result");
                settle_ack(delivery).await;
                return Handled::Skipped;
            }
            Err(e) => return self.retry(delivery, Some(&record), &store_report(&e)).await,
        }
        self.announce(&record, JobStatus::Done, None).await;
        self.metrics.job_handled("done", "");
        info!(
            recording_id = %record.recording_id,
            ms = record_ms(&result),
            "job done"
        );
        settle_ack(delivery).await;
        Handled::Done
    }

    /// Fetches the audio and the user's context, then runs the processor on a blocking thread.
    async fn run_pipeline(&self, record: &JobRecord) -> Result<RecordingResult, ErrorReport> {
        let bytes = self.fetch_audio(record).await?;
        let context = self.context(record).await.map_err(|e| ErrorReport {
            kind: ErrorKind::Store,
            message: e.to_string(),
        })?;
        let input = Input {
            file: if record.filename.is_empty() {
                record.recording_id.clone()
            } else {
                record.filename.clone()
            },
            recording_id: record.recording_id.clone(),
            extension: companion_audio::extension_of(&record.filename),
            bytes,
            kind: Some(record.kind),
            context,
        };
        let processor = self.processor.clone();
        match tokio::task::spawn_blocking(move || processor.process(input)).await {
            Ok(result) => result,
            Err(e) => Err(ErrorReport {
                kind: ErrorKind::Model,
                message: format!("processing crashed: {e}"),
            }),
        }
    }

    async fn fetch_audio(&self, record: &JobRecord) -> Result<Vec<u8>, ErrorReport> {
        match &record.source_uri {
            Some(uri) => {
                let root = self
                    .config
                    .audio_root
                    .as_deref()
                    .ok_or_else(|| ErrorReport {
                        kind: ErrorKind::InvalidArgument,
                        message: format!(
                            "{uri}: this worker has no audio root for file:// sources"
                        ),
                    })?;
                let path = companion_audio::source::resolve_file_uri(uri, root).map_err(|e| {
                    ErrorReport {
                        kind: e.kind(),
                        message: e.to_string(),
                    }
                })?;
                let max_bytes = self.config.max_bytes;
                tokio::task::spawn_blocking(move || companion_audio::read_file(&path, max_bytes))
                    .await
                    .map_err(|e| ErrorReport {
                        kind: ErrorKind::Io,
                        message: e.to_string(),
                    })?
                    .map_err(|e| ErrorReport {
                        kind: e.kind(),
                        message: e.to_string(),
                    })
            }
            None => match self.store.audio(&record.recording_key).await {
                Ok(Some(bytes)) => Ok(bytes),
                Ok(None) => Err(ErrorReport {
                    kind: ErrorKind::Io,
                    message: "the recording's audio is not in the store".into(),
                }),
                Err(e) => Err(store_report(&e)),
            },
        }
    }

    /// The user's policy, topics and translation target.
    async fn context(&self, record: &JobRecord) -> Result<RecordingContext, PolicyStoreError> {
        let Some(user) = record.user_id.as_deref().filter(|u| !u.is_empty()) else {
            return Ok(RecordingContext {
                policy: EffectivePolicy::default(),
                ..Default::default()
            });
        };
        let (policy, profile) = self.store.effective_policy(&record.tenant_id, user).await?;
        let intents = self.store.intents(&record.tenant_id, user).await?;
        let preferred = profile
            .as_ref()
            .and_then(|p| p.preferred_language.as_deref());
        let translate_to = policy.translation_target(preferred);
        Ok(RecordingContext {
            policy,
            intents,
            translate_to,
        })
    }

    /// This attempt failed: retry it later, or, on the last attempt, store the failure,
    /// dead-letter the job and announce it.
    async fn retry(
        &self,
        delivery: Delivery,
        record: Option<&JobRecord>,
        report: &ErrorReport,
    ) -> Handled {
        let job_id = delivery.job.job_id.clone();
        let reason = format!("{}: {}", report.kind, report.message);
        if !delivery.is_last_attempt() {
            warn!(error = %reason, "attempt failed; retrying later");
            if let Err(e) = self.store.retry_later(&job_id, report).await {
                warn!(error = %e, "cannot record the failed attempt");
            }
            if let Err(e) = delivery.retry(&reason).await {
                warn!(error = %e, "cannot schedule the retry; the queue will redeliver the job");
            }
            self.metrics.job_handled("retried", report.kind.as_str());
            return Handled::Retried;
        }
        error!(error = %reason, "last attempt failed; the job fails");
        match self.store.finish(&job_id, Outcome::Failed(report)).await {
            Ok(_) => {}
            Err(e) => {
                // The failure is not recorded: leave the job unsettled so it comes back.
                error!(error = %e, "cannot store the failure; giving the job back");
                drop(delivery);
                return Handled::Retried;
            }
        }
        if let Err(e) = delivery.retry(&reason).await {
            warn!(error = %e, "cannot dead-letter the job; the queue will redeliver it");
        }
        if let Some(record) = record {
            self.announce(record, JobStatus::Failed, Some(report)).await;
        } else if let Ok(Some(record)) = self.store.job(&job_id).await {
            self.announce(&record, JobStatus::Failed, Some(report))
                .await;
        }
        self.metrics.job_handled("failed", report.kind.as_str());
        Handled::Failed
    }

    /// Publishes the result event. Events are notifications (the store holds the result), so
    /// a failure is logged, not retried.
    async fn announce(&self, record: &JobRecord, status: JobStatus, error: Option<&ErrorReport>) {
        let event = ResultReady {
            tenant_id: record.tenant_id.clone(),
            user_id: record.user_id.clone().unwrap_or_default(),
            recording_id: record.recording_id.clone(),
            job_id: record.job_id.clone(),
            kind: proto_kind(record.kind) as i32,
            status: status as i32,
            error_kind: error
                .map(|e| e.kind.as_str().to_string())
                .unwrap_or_default(),
            error_message: error.map(|e| e.message.clone()).unwrap_or_default(),
        };
        if let Err(e) = self.queue.publish_result(&event).await {
            warn!(error = %e, "cannot publish the result event");
        }
    }
}

fn count(stats: &mut WorkerStats, joined: Result<Handled, tokio::task::JoinError>) {
    match joined {
        Ok(Handled::Done) => stats.done += 1,
        Ok(Handled::Failed) => stats.failed += 1,
        Ok(Handled::Retried) => stats.retried += 1,
        Ok(Handled::Skipped) => {}
        // A panicking handler dropped its delivery, which requeued the job.
        Err(e) => error!(error = %e, "a job handler crashed; its job goes back to the queue"),
    }
}

async fn settle_ack(delivery: Delivery) {
    if let Err(e) = delivery.ack().await {
        // The job comes back; its committed result makes the next delivery a no-op.
        warn!(error = %e, "acknowledgement lost; the job will be redelivered");
    }
}

fn store_report(e: &StoreError) -> ErrorReport {
    ErrorReport {
        kind: ErrorKind::Store,
        message: e.to_string(),
    }
}

fn status_of(state: JobState) -> JobStatus {
    match state {
        JobState::Queued => JobStatus::Queued,
        JobState::Processing => JobStatus::Processing,
        JobState::Done => JobStatus::Done,
        JobState::Failed => JobStatus::Failed,
    }
}

pub fn proto_kind(kind: RecordingKind) -> companion_queue::RecordingKind {
    match kind {
        RecordingKind::Voicemail => companion_queue::RecordingKind::Voicemail,
        RecordingKind::Call => companion_queue::RecordingKind::Call,
    }
}

fn record_ms(result: &RecordingResult) -> u64 {
    result.timings_ms.values().sum()
}

fn companion_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use companion_queue::{Backoff, EmbeddedConfig, EmbeddedQueue, Job, RetryPolicy};
    use companion_store::{AudioSource, NewSubmission};
    use std::sync::atomic::{AtomicU32, Ordering};

    /// Fails on audio that says "bad", counts its calls.
    struct Fake {
        calls: AtomicU32,
    }

    impl Processor for Fake {
        fn process(&self, input: Input) -> Result<RecordingResult, ErrorReport> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            if input.bytes == b"bad" {
                return Err(ErrorReport {
                    kind: ErrorKind::CorruptAudio,
                    message: "frames are garbage".into(),
                });
            }
            Ok(RecordingResult {
                recording_id: input.recording_id,
                speech: true,
                ..Default::default()
            })
        }
    }

    async fn setup(dir: &std::path::Path) -> (Store, Arc<EmbeddedQueue>) {
        let db = dir.join("w.db").display().to_string();
        let store = Store::open(&db).await.unwrap();
        let config = EmbeddedConfig {
            retry: RetryPolicy {
                max_attempts: 2,
                backoff: Backoff::new(Duration::from_millis(50), 1, Duration::from_millis(50)),
            },
            poll_interval: Duration::from_millis(50),
            ..EmbeddedConfig::default()
        };
        let queue = Arc::new(EmbeddedQueue::open(&db, config).await.unwrap());
        (store, queue)
    }

    async fn submit(store: &Store, queue: &EmbeddedQueue, id: &str, audio: &[u8]) -> String {
        let job_id = format!("job-{id}");
        store
            .submit(
                &NewSubmission {
                    tenant_id: "acme".into(),
                    recording_id: id.into(),
                    user_id: Some("u1".into()),
                    kind: RecordingKind::Voicemail,
                    filename: format!("{id}.wav"),
                    source: AudioSource::Inline(audio.to_vec()),
                    sha256: String::new(),
                    size_bytes: audio.len() as u64,
                },
                &job_id,
            )
            .await
            .unwrap();
        queue
            .publish(&Job {
                job_id: job_id.clone(),
                tenant_id: "acme".into(),
                recording_id: id.into(),
                ..Default::default()
            })
            .await
            .unwrap();
        job_id
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn jobs_are_stored_once_retried_then_failed_and_announced() {
        let dir = tempfile::tempdir().unwrap();
        let (store, queue) = setup(dir.path()).await;
        let mut events = queue.subscribe_results("acme.#").await.unwrap();
        let good = submit(&store, &queue, "good", b"fine").await;
        let bad = submit(&store, &queue, "bad", b"bad").await;
        // A job redelivered after its result was committed runs nothing.
        let fake = Arc::new(Fake {
            calls: AtomicU32::new(0),
        });
        let config = WorkerConfig {
            concurrency: 2,
            ..WorkerConfig::default()
        };
        let worker = Worker::new(
            store.clone(),
            queue.clone(),
            fake.clone(),
            config,
            Metrics::new(),
        )
        .unwrap();
        let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
        let run = tokio::spawn(worker.run(async move {
            let _ = stop_rx.wait_for(|s| *s).await;
        }));
        let mut seen = Vec::new();
        while seen.len() < 2 {
            let event = tokio::time::timeout(Duration::from_secs(20), events.next())
                .await
                .expect("result events")
                .unwrap()
                .unwrap();
            seen.push((event.recording_id, event.status, event.error_kind));
        }
        seen.sort();
        assert_eq!(
            seen,
            [
                (
                    "bad".into(),
                    JobStatus::Failed as i32,
                    "corrupt_audio".into()
                ),
                ("good".into(), JobStatus::Done as i32, String::new()),
            ]
        );
        let good_job = store.job(&good).await.unwrap().unwrap();
        assert_eq!((good_job.state, good_job.attempts), (JobState::Done, 1));
        let bad_job = store.job(&bad).await.unwrap().unwrap();
        assert_eq!((bad_job.state, bad_job.attempts), (JobState::Failed, 2));
        assert_eq!(bad_job.error.unwrap().kind, ErrorKind::CorruptAudio);
        let dead = queue.dead_letters(10).await.unwrap();
        assert_eq!(dead.len(), 1);
        assert!(dead[0].reason.contains("frames are garbage"), "{dead:?}");

        // The same job delivered again (a lost acknowledgement) is not processed twice.
        let calls = fake.calls.load(Ordering::SeqCst);
        queue
            .publish(&Job {
                job_id: good.clone(),
                tenant_id: "acme".into(),
                recording_id: "good".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        let again = tokio::time::timeout(Duration::from_secs(20), events.next())
            .await
            .expect("the redelivered job is announced again")
            .unwrap()
            .unwrap();
        assert_eq!(again.recording_id, "good");
        assert_eq!(fake.calls.load(Ordering::SeqCst), calls);
        assert_eq!(
            store.result_count(&good_job.recording_key).await.unwrap(),
            1
        );

        stop_tx.send(true).unwrap();
        let stats = run.await.unwrap().unwrap();
        assert_eq!((stats.done, stats.failed, stats.retried), (1, 1, 1));
    }
}
