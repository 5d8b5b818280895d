//! Throughput of publish + consume + ack, printed, not asserted. Run with
//! `cargo test -p companion-queue --release --test throughput -- --ignored --nocapture`
//! (needs the RabbitMQ of tests/amqp.rs for the AMQP half).

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use companion_queue::{EmbeddedConfig, EmbeddedQueue, JobQueue};
use support::{Cleanup, config, job};

const JOBS: usize = 500;
const PUBLISHERS: usize = 8;
const PREFETCH: u16 = 32;

/// Publishes `JOBS` jobs from `PUBLISHERS` concurrent tasks while one consumer with `PREFETCH`
/// acknowledges each delivery in its own task (a worker with that concurrency). Returns the
/// wall time from the first publish to the last acknowledgement, and the time of a further
/// `JOBS` one-at-a-time publishes.
async fn measure(queue: Arc<dyn JobQueue>, label: &str) {
    let mut consumer = queue.consume(PREFETCH).await.unwrap();
    let started = Instant::now();
    let consuming = tokio::spawn(async move {
        let mut acks = Vec::with_capacity(JOBS);
        for _ in 0..JOBS {
            let delivery = tokio::time::timeout(Duration::from_secs(60), consumer.next())
                .await
                .expect("stalled")
                .unwrap()
                .unwrap();
            acks.push(tokio::spawn(delivery.ack()));
        }
        for ack in acks {
            ack.await.unwrap().unwrap();
        }
        consumer
    });
    let mut publishers = Vec::new();
    for p in 0..PUBLISHERS {
        let queue = queue.clone();
        publishers.push(tokio::spawn(async move {
            for i in (p..JOBS).step_by(PUBLISHERS) {
                queue.publish(&job(&format!("t{i}"))).await.unwrap();
            }
        }));
    }
    for publisher in publishers {
        publisher.await.unwrap();
    }
    let published = started.elapsed();
    let mut consumer = consuming.await.unwrap();
    let end_to_end = started.elapsed();

    let sequential = Instant::now();
    for i in 0..JOBS {
        queue.publish(&job(&format!("s{i}"))).await.unwrap();
    }
    let sequential = sequential.elapsed();
    // Drain them so the queue is left empty.
    for _ in 0..JOBS {
        consumer.next().await.unwrap().unwrap().ack().await.unwrap();
    }

    let rate = |d: Duration| JOBS as f64 / d.as_secs_f64();
    println!(
        "{label}: {JOBS} jobs publish+consume+ack in {:.0} ms = {:.0} jobs/s \
         ({PUBLISHERS} publishers, prefetch {PREFETCH}; publishing alone took {:.0} ms); \
         sequential confirmed publish: {:.0} jobs/s",
        end_to_end.as_secs_f64() * 1000.0,
        rate(end_to_end),
        published.as_secs_f64() * 1000.0,
        rate(sequential),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement; run with --ignored --nocapture"]
async fn throughput_rabbitmq() {
    let config = config("throughput");
    let _cleanup = Cleanup(config.clone());
    let queue = companion_queue::AmqpQueue::connect(config).await.unwrap();
    measure(Arc::new(queue.clone()), "RabbitMQ (quorum queue)").await;
    queue.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement; run with --ignored --nocapture"]
async fn throughput_embedded() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("queue.db");
    let queue = EmbeddedQueue::open(path.to_str().unwrap(), EmbeddedConfig::default())
        .await
        .unwrap();
    measure(
        Arc::new(queue.clone()),
        "embedded SQLite (synchronous=FULL)",
    )
    .await;
    queue.close().await;
}
