use std::collections::HashSet;
use std::time::Instant;

use super::*;
use crate::{Backoff, JobStatus, RecordingKind, RetryOutcome};

const MS: Duration = Duration::from_millis(1);

fn config() -> EmbeddedConfig {
    EmbeddedConfig {
        retry: RetryPolicy {
            max_attempts: 3,
            backoff: Backoff::new(150 * MS, 2, Duration::from_secs(5)),
        },
        lease: Duration::from_secs(30),
        poll_interval: 50 * MS,
        delivery_limit: Some(5),
        ..EmbeddedConfig::default()
    }
}

fn job(id: &str) -> Job {
    Job {
        job_id: id.into(),
        tenant_id: "acme".into(),
        recording_id: format!("rec-{id}"),
        user_id: "u1".into(),
        kind: RecordingKind::Voicemail as i32,
        source: Some(crate::proto::job::Source::Uri(format!(
            "file:///vm/{id}.wav"
        ))),
        filename: format!("{id}.wav"),
        ..Default::default()
    }
}

async fn open(dir: &tempfile::TempDir, config: EmbeddedConfig) -> EmbeddedQueue {
    EmbeddedQueue::open(dir.path().join("queue.db").to_str().unwrap(), config)
        .await
        .unwrap()
}

/// The next delivery, failing the test after `within`.
async fn next_within(consumer: &mut Consumer, within: Duration) -> Delivery {
    tokio::time::timeout(within, consumer.next())
        .await
        .expect("no delivery in time")
        .expect("consumer ended")
        .expect("consumer failed")
}

async fn nothing_within(consumer: &mut Consumer, within: Duration) {
    if let Ok(got) = tokio::time::timeout(within, consumer.next()).await {
        panic!("expected no delivery, got {got:?}");
    }
}

#[tokio::test]
async fn publish_consume_ack_respects_prefetch() {
    let dir = tempfile::tempdir().unwrap();
    let queue = open(&dir, config()).await;
    for i in 0..3 {
        queue.publish(&job(&format!("j{i}"))).await.unwrap();
    }
    let mut consumer = queue.consume(2).await.unwrap();
    let first = next_within(&mut consumer, Duration::from_secs(2)).await;
    let second = next_within(&mut consumer, Duration::from_secs(2)).await;
    assert_eq!(first.job.job_id, "j0");
    assert_eq!(second.job.job_id, "j1");
    assert_eq!((first.attempt, first.redelivered), (1, false));
    assert!(first.job.enqueued_at_ms > 0);
    assert_eq!(
        first.job.source,
        Some(crate::proto::job::Source::Uri("file:///vm/j0.wav".into()))
    );
    // Two unsettled deliveries: the third waits for a free slot.
    nothing_within(&mut consumer, 200 * MS).await;
    let stats = queue.stats().await.unwrap();
    assert_eq!((stats.ready, stats.processing), (1, 2));
    first.ack().await.unwrap();
    let third = next_within(&mut consumer, Duration::from_secs(2)).await;
    assert_eq!(third.job.job_id, "j2");
    second.ack().await.unwrap();
    third.ack().await.unwrap();
    assert_eq!(queue.stats().await.unwrap(), EmbeddedStats::default());
}

#[tokio::test]
async fn consumers_are_woken_by_publish_and_share_work_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let queue = open(
        &dir,
        EmbeddedConfig {
            // Long poll: only the wake-up on publish can make this test fast.
            poll_interval: Duration::from_secs(30),
            ..config()
        },
    )
    .await;
    let mut workers = Vec::new();
    for _ in 0..3 {
        let mut consumer = queue.consume(4).await.unwrap();
        workers.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            while let Ok(Some(delivery)) =
                tokio::time::timeout(Duration::from_millis(500), consumer.next()).await
            {
                let delivery = delivery.unwrap();
                seen.push(delivery.job.job_id.clone());
                delivery.ack().await.unwrap();
            }
            seen
        }));
    }
    tokio::time::sleep(50 * MS).await;
    for i in 0..40 {
        queue.publish(&job(&format!("j{i}"))).await.unwrap();
    }
    let mut all = Vec::new();
    for worker in workers {
        all.extend(worker.await.unwrap());
    }
    assert_eq!(all.len(), 40, "every job exactly once: {all:?}");
    assert_eq!(all.iter().collect::<HashSet<_>>().len(), 40);
}

#[tokio::test]
async fn retry_backs_off_then_dead_letters_after_max_attempts() {
    let dir = tempfile::tempdir().unwrap();
    let queue = open(&dir, config()).await;
    queue.publish(&job("flaky")).await.unwrap();
    let mut consumer = queue.consume(1).await.unwrap();

    let first = next_within(&mut consumer, Duration::from_secs(2)).await;
    assert_eq!((first.attempt, first.last_error.as_deref()), (1, None));
    let retried_at = Instant::now();
    assert_eq!(
        first.retry("boom 1").await.unwrap(),
        RetryOutcome::Scheduled {
            attempt: 2,
            delay: 150 * MS
        }
    );
    assert_eq!(queue.stats().await.unwrap().scheduled, 1);

    let second = next_within(&mut consumer, Duration::from_secs(2)).await;
    let waited = retried_at.elapsed();
    assert!(waited >= 150 * MS, "retried after {waited:?}");
    assert_eq!(second.attempt, 2);
    assert_eq!(second.job.attempt, 2);
    assert_eq!(second.last_error.as_deref(), Some("boom 1"));
    assert!(!second.redelivered);
    let retried_at = Instant::now();
    assert_eq!(
        second.retry("boom 2").await.unwrap(),
        RetryOutcome::Scheduled {
            attempt: 3,
            delay: 300 * MS
        }
    );

    let third = next_within(&mut consumer, Duration::from_secs(2)).await;
    let waited = retried_at.elapsed();
    assert!(waited >= 300 * MS, "retried after {waited:?}");
    assert_eq!(third.attempt, 3);
    assert_eq!(
        third.retry("boom 3").await.unwrap(),
        RetryOutcome::DeadLettered
    );

    nothing_within(&mut consumer, 400 * MS).await;
    let dead = queue.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].reason, "gave up after 3 attempts: boom 3");
    let dead_job = dead[0].job.as_ref().unwrap();
    assert_eq!((dead_job.job_id.as_str(), dead_job.attempt), ("flaky", 3));
    let stats = queue.stats().await.unwrap();
    assert_eq!((stats.ready, stats.scheduled, stats.dead), (0, 0, 1));
}

#[tokio::test]
async fn dead_letter_skips_the_retries() {
    let dir = tempfile::tempdir().unwrap();
    let queue = open(&dir, config()).await;
    queue.publish(&job("corrupt")).await.unwrap();
    let mut consumer = queue.consume(1).await.unwrap();
    let delivery = next_within(&mut consumer, Duration::from_secs(2)).await;
    delivery
        .dead_letter("corrupt_audio: no RIFF header")
        .await
        .unwrap();
    nothing_within(&mut consumer, 200 * MS).await;
    let dead = queue.dead_letters(10).await.unwrap();
    assert_eq!(dead[0].reason, "corrupt_audio: no RIFF header");
    assert_eq!(dead[0].job.as_ref().unwrap().attempt, 1);
}

#[tokio::test]
async fn dropped_delivery_comes_back_at_once_without_costing_an_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let queue = open(
        &dir,
        EmbeddedConfig {
            poll_interval: Duration::from_secs(30),
            ..config()
        },
    )
    .await;
    queue.publish(&job("dropped")).await.unwrap();
    let mut consumer = queue.consume(1).await.unwrap();
    let delivery = next_within(&mut consumer, Duration::from_secs(2)).await;
    drop(delivery);
    let again = next_within(&mut consumer, Duration::from_secs(2)).await;
    assert_eq!(again.job.job_id, "dropped");
    assert_eq!(again.attempt, 1);
    assert!(again.redelivered);
    again.ack().await.unwrap();
}

#[tokio::test]
async fn poison_job_is_dead_lettered_at_the_delivery_limit() {
    let dir = tempfile::tempdir().unwrap();
    let queue = open(
        &dir,
        EmbeddedConfig {
            delivery_limit: Some(2),
            ..config()
        },
    )
    .await;
    queue.publish(&job("poison")).await.unwrap();
    let mut consumer = queue.consume(1).await.unwrap();
    for _ in 0..2 {
        drop(next_within(&mut consumer, Duration::from_secs(2)).await);
    }
    nothing_within(&mut consumer, 300 * MS).await;
    let dead = queue.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert!(
        dead[0].reason.starts_with("delivery limit exceeded"),
        "{}",
        dead[0].reason
    );
}

/// A worker process that claims a job and dies: its own runtime (lease renewal included) goes
/// away without the delivery being settled or dropped.
fn crashed_worker(path: std::path::PathBuf, config: EmbeddedConfig) -> String {
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let job_id = runtime.block_on(async {
            let queue = EmbeddedQueue::open(path.to_str().unwrap(), config)
                .await
                .unwrap();
            let mut consumer = queue.consume(1).await.unwrap();
            let delivery = next_within(&mut consumer, Duration::from_secs(2)).await;
            let job_id = delivery.job.job_id.clone();
            std::mem::forget(delivery); // no ack, no release: the process "died"
            job_id
        });
        drop(runtime);
        job_id
    })
    .join()
    .unwrap()
}

#[tokio::test]
async fn expired_lease_of_a_crashed_worker_is_reclaimed() {
    let dir = tempfile::tempdir().unwrap();
    let short_lease = EmbeddedConfig {
        lease: 400 * MS,
        ..config()
    };
    let queue = open(&dir, short_lease.clone()).await;
    queue.publish(&job("orphan")).await.unwrap();
    let crashed_at = Instant::now();
    assert_eq!(
        crashed_worker(dir.path().join("queue.db"), short_lease),
        "orphan"
    );
    assert_eq!(queue.stats().await.unwrap().processing, 1);

    let mut consumer = queue.consume(1).await.unwrap();
    let reclaimed = next_within(&mut consumer, Duration::from_secs(3)).await;
    assert!(crashed_at.elapsed() >= 400 * MS);
    assert_eq!(reclaimed.job.job_id, "orphan");
    assert!(reclaimed.redelivered);
    assert_eq!(reclaimed.attempt, 1);
    reclaimed.ack().await.unwrap();
    assert_eq!(queue.stats().await.unwrap(), EmbeddedStats::default());
}

#[tokio::test]
async fn renewed_lease_outlives_its_length_and_a_lost_lease_cannot_settle() {
    let dir = tempfile::tempdir().unwrap();
    let short_lease = EmbeddedConfig {
        lease: 300 * MS,
        ..config()
    };
    let queue = open(&dir, short_lease.clone()).await;
    queue.publish(&job("long")).await.unwrap();
    let mut slow = queue.consume(1).await.unwrap();
    let held = next_within(&mut slow, Duration::from_secs(2)).await;
    // Processing for three lease lengths: the renewals keep the job ours.
    let mut other = queue.consume(1).await.unwrap();
    nothing_within(&mut other, 900 * MS).await;
    held.ack().await.unwrap();

    // A worker that stalls (its runtime blocked, so no renewals) loses the job to another
    // consumer and then cannot settle it.
    queue.publish(&job("stalled")).await.unwrap();
    let path = dir.path().join("queue.db");
    let (claimed_tx, claimed_rx) = tokio::sync::oneshot::channel();
    let stalled = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let queue = EmbeddedQueue::open(path.to_str().unwrap(), short_lease)
                .await
                .unwrap();
            let mut consumer = queue.consume(1).await.unwrap();
            let delivery = next_within(&mut consumer, Duration::from_secs(2)).await;
            claimed_tx.send(delivery.job.job_id.clone()).unwrap();
            std::thread::sleep(Duration::from_millis(1500));
            delivery.ack().await
        })
    });
    assert_eq!(claimed_rx.await.unwrap(), "stalled");
    let taken_over = next_within(&mut other, Duration::from_secs(3)).await;
    assert_eq!(taken_over.job.job_id, "stalled");
    assert!(taken_over.redelivered);
    let stale_ack = tokio::task::spawn_blocking(move || stalled.join().unwrap())
        .await
        .unwrap();
    assert!(
        matches!(stale_ack, Err(QueueError::DeliveryLost(_))),
        "{stale_ack:?}"
    );
    taken_over.ack().await.unwrap();
    assert_eq!(queue.stats().await.unwrap(), EmbeddedStats::default());
}

#[tokio::test]
async fn jobs_survive_reopening_the_database() {
    let dir = tempfile::tempdir().unwrap();
    {
        let queue = open(&dir, config()).await;
        for i in 0..3 {
            queue.publish(&job(&format!("j{i}"))).await.unwrap();
        }
        let mut consumer = queue.consume(1).await.unwrap();
        let first = next_within(&mut consumer, Duration::from_secs(2)).await;
        assert_eq!(first.job.job_id, "j0");
        first.retry("transient").await.unwrap();
        let second = next_within(&mut consumer, Duration::from_secs(2)).await;
        second.dead_letter("hopeless").await.unwrap();
        queue.close().await;
        assert!(consumer.next().await.is_none());
        assert!(matches!(
            queue.publish(&job("late")).await,
            Err(QueueError::Closed)
        ));
    }
    let queue = open(&dir, config()).await;
    let mut consumer = queue.consume(4).await.unwrap();
    let mut got = Vec::new();
    for _ in 0..2 {
        let delivery = next_within(&mut consumer, Duration::from_secs(2)).await;
        got.push((
            delivery.job.job_id.clone(),
            delivery.attempt,
            delivery.last_error.clone(),
        ));
        delivery.ack().await.unwrap();
    }
    got.sort();
    assert_eq!(
        got,
        [
            ("j0".to_string(), 2, Some("transient".to_string())),
            ("j2".to_string(), 1, None)
        ]
    );
    let dead = queue.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].job.as_ref().unwrap().job_id, "j1");
    assert_eq!(dead[0].reason, "hopeless");
}

#[tokio::test]
async fn shares_a_database_file_with_other_sqlx_migrations() {
    let dir = tempfile::tempdir().unwrap();
    let queue = open(&dir, config()).await;
    let tables: Vec<String> =
        sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .fetch_all(&queue.inner.pool)
            .await
            .unwrap();
    assert!(tables.contains(&"_companion_queue_migrations".to_string()));
    assert!(tables.contains(&"queue_jobs".to_string()));
    // The default table stays free for the store's migrations.
    assert!(!tables.contains(&"_sqlx_migrations".to_string()));
    queue.close().await;
    // Opening again finds its migrations applied.
    open(&dir, config()).await;
}

#[tokio::test]
async fn result_events_are_broadcast_by_topic() {
    let dir = tempfile::tempdir().unwrap();
    let queue = open(&dir, config()).await;
    let mut voicemails = queue.subscribe_results("acme.*.voicemail").await.unwrap();
    let mut everything = queue.subscribe_results("#").await.unwrap();
    let event = |tenant: &str, kind: RecordingKind, job: &str| ResultReady {
        tenant_id: tenant.into(),
        user_id: "u1".into(),
        recording_id: format!("rec-{job}"),
        job_id: job.into(),
        kind: kind as i32,
        status: JobStatus::Done as i32,
        ..Default::default()
    };
    queue
        .publish_result(&event("acme", RecordingKind::Call, "a"))
        .await
        .unwrap();
    queue
        .publish_result(&event("other", RecordingKind::Voicemail, "b"))
        .await
        .unwrap();
    queue
        .publish_result(&event("acme", RecordingKind::Voicemail, "c"))
        .await
        .unwrap();
    assert!(
        queue
            .publish_result(&event("acme", RecordingKind::Unspecified, "d"))
            .await
            .is_err()
    );
    let got = voicemails.next().await.unwrap().unwrap();
    assert_eq!(got.job_id, "c");
    assert_eq!(got.status(), JobStatus::Done);
    for expected in ["a", "b", "c"] {
        assert_eq!(everything.next().await.unwrap().unwrap().job_id, expected);
    }
    queue.close().await;
    assert!(voicemails.next().await.is_none());
}

#[tokio::test]
async fn slow_result_subscriber_learns_it_lagged() {
    let dir = tempfile::tempdir().unwrap();
    let queue = open(
        &dir,
        EmbeddedConfig {
            results_capacity: 2,
            ..config()
        },
    )
    .await;
    let mut sub = queue.subscribe_results("#").await.unwrap();
    for i in 0..5 {
        let event = ResultReady {
            tenant_id: "t".into(),
            job_id: format!("r{i}"),
            kind: RecordingKind::Call as i32,
            ..Default::default()
        };
        queue.publish_result(&event).await.unwrap();
    }
    assert!(matches!(sub.next().await, Some(Err(QueueError::Lagged(3)))));
    assert_eq!(sub.next().await.unwrap().unwrap().job_id, "r3");
}

#[tokio::test]
async fn invalid_input_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let queue = open(
        &dir,
        EmbeddedConfig {
            max_payload_bytes: 1024,
            ..config()
        },
    )
    .await;
    assert!(matches!(
        queue.publish(&Job::default()).await,
        Err(QueueError::InvalidArgument(_))
    ));
    let mut big = job("big");
    big.source = Some(crate::proto::job::Source::Audio(vec![1; 4096]));
    assert!(matches!(
        queue.publish(&big).await,
        Err(QueueError::InvalidArgument(_))
    ));
    assert!(queue.consume(0).await.is_err());
    assert!(queue.subscribe_results("").await.is_err());
    let bad = EmbeddedConfig {
        retry: RetryPolicy {
            max_attempts: 0,
            ..RetryPolicy::default()
        },
        ..config()
    };
    assert!(
        EmbeddedQueue::open("sqlite::memory:", config())
            .await
            .is_err()
    );
    assert!(
        EmbeddedQueue::open(dir.path().join("x.db").to_str().unwrap(), bad)
            .await
            .is_err()
    );
}

#[tokio::test]
async fn usable_as_a_trait_object() {
    let dir = tempfile::tempdir().unwrap();
    let queue: Arc<dyn JobQueue> = Arc::new(open(&dir, config()).await);
    queue.publish(&job("dyn")).await.unwrap();
    let mut consumer = queue.consume(1).await.unwrap();
    let delivery = next_within(&mut consumer, Duration::from_secs(2)).await;
    assert_eq!(delivery.job.recording_id, "rec-dyn");
    delivery.ack().await.unwrap();
}
