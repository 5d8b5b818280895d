//! Against the real RabbitMQ on this machine (127.0.0.1:5672 guest/guest, or AMQP_URL). A
//! broker that is not running fails these tests; start it with `rabbitmq-server -detached`.

mod support;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use companion_queue::{
    AmqpConfig, AmqpQueue, Backoff, JobQueue, JobStatus, QueueError, RecordingKind, ResultReady,
    RetryOutcome,
};
use lapin::options::{BasicAckOptions, BasicGetOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use prost::Message;
use support::{
    Cleanup, close_connection_server_side, config, job, next_within, nothing_within, require_broker,
};

const MS: Duration = Duration::from_millis(1);
const SECOND: Duration = Duration::from_secs(1);

#[tokio::test]
async fn fifty_jobs_arrive_exactly_once_with_prefetch_4() {
    let config = config("exactly-once");
    let _cleanup = Cleanup(config.clone());
    let queue = AmqpQueue::connect(config).await.unwrap();
    for i in 0..50 {
        queue.publish(&job(&format!("j{i:02}"))).await.unwrap();
    }
    let mut consumer = queue.consume(4).await.unwrap();

    // The broker holds back the fifth while four are unacknowledged.
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(next_within(&mut consumer, 5 * SECOND).await);
    }
    nothing_within(&mut consumer, 500 * MS).await;

    let mut seen = Vec::new();
    for delivery in held {
        seen.push(delivery.job.job_id.clone());
        delivery.ack().await.unwrap();
    }
    while seen.len() < 50 {
        let delivery = next_within(&mut consumer, 5 * SECOND).await;
        assert_eq!(delivery.attempt, 1);
        assert!(!delivery.redelivered);
        seen.push(delivery.job.job_id.clone());
        delivery.ack().await.unwrap();
    }
    nothing_within(&mut consumer, SECOND).await;
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), 50, "duplicates in {seen:?}");
    // One queue, one consumer: FIFO.
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(seen, sorted);
    queue.close().await;
}

#[tokio::test]
async fn unacked_jobs_of_a_killed_worker_go_to_another_worker() {
    let config = config("killed-worker");
    let _cleanup = Cleanup(config.clone());
    let worker_a = AmqpQueue::connect(AmqpConfig {
        connection_name: format!("{}-a", config.connection_name),
        ..config.clone()
    })
    .await
    .unwrap();
    let worker_b = AmqpQueue::connect(AmqpConfig {
        connection_name: format!("{}-b", config.connection_name),
        ..config.clone()
    })
    .await
    .unwrap();
    for i in 0..3 {
        worker_a.publish(&job(&format!("k{i}"))).await.unwrap();
    }
    let mut consumer_a = worker_a.consume(3).await.unwrap();
    let mut in_flight = Vec::new();
    for _ in 0..3 {
        in_flight.push(next_within(&mut consumer_a, 5 * SECOND).await);
    }
    let mut consumer_b = worker_b.consume(3).await.unwrap();
    nothing_within(&mut consumer_b, 500 * MS).await;

    // Worker A dies mid-job: its connection goes away without any acknowledgement.
    worker_a.close().await;
    let mut redelivered = HashSet::new();
    for _ in 0..3 {
        let delivery = next_within(&mut consumer_b, 5 * SECOND).await;
        assert!(delivery.redelivered, "{delivery:?}");
        assert_eq!(delivery.attempt, 1, "a crash is not a failed attempt");
        redelivered.insert(delivery.job.job_id.clone());
        delivery.ack().await.unwrap();
    }
    assert_eq!(
        redelivered,
        HashSet::from(["k0", "k1", "k2"].map(String::from))
    );
    // The dead worker cannot settle what it held.
    for delivery in in_flight {
        assert!(matches!(
            delivery.ack().await,
            Err(QueueError::DeliveryLost(_))
        ));
    }
    assert!(
        consumer_a.next().await.is_none(),
        "closed queue ends its consumers"
    );

    // A delivery dropped unsettled (a panicking handler) is requeued at once.
    worker_b.publish(&job("dropped")).await.unwrap();
    let delivery = next_within(&mut consumer_b, 5 * SECOND).await;
    drop(delivery);
    let again = next_within(&mut consumer_b, 5 * SECOND).await;
    assert_eq!(again.job.job_id, "dropped");
    assert!(again.redelivered);
    assert_eq!(again.attempt, 1);
    again.ack().await.unwrap();
    nothing_within(&mut consumer_b, 500 * MS).await;
    worker_b.close().await;
}

#[tokio::test]
async fn retry_backs_off_then_dead_letters_with_the_reason() {
    let config = config("retry");
    let _cleanup = Cleanup(config.clone());
    let queue = AmqpQueue::connect(config.clone()).await.unwrap();
    queue.publish(&job("flaky")).await.unwrap();
    let mut consumer = queue.consume(1).await.unwrap();

    let first = next_within(&mut consumer, 5 * SECOND).await;
    assert_eq!((first.attempt, first.last_error.as_deref()), (1, None));
    let retried_at = Instant::now();
    assert_eq!(
        first.retry("boom 1").await.unwrap(),
        RetryOutcome::Scheduled {
            attempt: 2,
            delay: 300 * MS
        }
    );
    let second = next_within(&mut consumer, 5 * SECOND).await;
    let waited = retried_at.elapsed();
    assert!(waited >= 300 * MS, "came back after {waited:?}");
    assert_eq!((second.attempt, second.job.attempt), (2, 2));
    assert_eq!(second.last_error.as_deref(), Some("boom 1"));
    assert_eq!(second.job.recording_id, "rec-flaky");

    let retried_at = Instant::now();
    assert_eq!(
        second.retry("boom 2").await.unwrap(),
        RetryOutcome::Scheduled {
            attempt: 3,
            delay: 600 * MS
        }
    );
    let third = next_within(&mut consumer, 5 * SECOND).await;
    let waited = retried_at.elapsed();
    assert!(waited >= 600 * MS, "came back after {waited:?}");
    assert_eq!(third.attempt, 3);
    assert_eq!(
        third.retry("boom 3").await.unwrap(),
        RetryOutcome::DeadLettered
    );

    // A job that can never succeed skips the retries.
    queue.publish(&job("corrupt")).await.unwrap();
    let corrupt = next_within(&mut consumer, 5 * SECOND).await;
    assert_eq!(corrupt.job.job_id, "corrupt");
    corrupt
        .dead_letter("corrupt_audio: no RIFF header")
        .await
        .unwrap();

    // Something that is not a Job at all is dead-lettered without reaching a worker.
    let connection = lapin::Connection::connect(&config.url, Default::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel
        .basic_publish(
            "".into(),
            config.jobs_queue().into(),
            Default::default(),
            &[0xff; 4],
            Default::default(),
        )
        .await
        .unwrap();
    let _ = connection.close(200, "done".into()).await;

    nothing_within(&mut consumer, SECOND).await;
    let mut dead = queue.take_dead_letters(10).await.unwrap();
    let garbage = dead.pop().unwrap();
    assert!(garbage.job.is_none());
    assert!(
        garbage.reason.starts_with("undecodable job payload"),
        "{}",
        garbage.reason
    );
    let summary: Vec<(String, u32, String)> = dead
        .iter()
        .map(|d| {
            let job = d.job.as_ref().unwrap();
            (job.job_id.clone(), job.attempt, d.reason.clone())
        })
        .collect();
    assert_eq!(
        summary,
        [
            (
                "flaky".to_string(),
                3,
                "gave up after 3 attempts: boom 3".to_string()
            ),
            (
                "corrupt".to_string(),
                1,
                "corrupt_audio: no RIFF header".to_string()
            ),
        ]
    );
    assert!(queue.take_dead_letters(10).await.unwrap().is_empty());
    queue.close().await;
}

fn result(tenant: &str, user: &str, kind: RecordingKind, job_id: &str) -> ResultReady {
    ResultReady {
        tenant_id: tenant.into(),
        user_id: user.into(),
        recording_id: format!("rec-{job_id}"),
        job_id: job_id.into(),
        kind: kind as i32,
        status: JobStatus::Done as i32,
        ..Default::default()
    }
}

#[tokio::test]
async fn result_events_arrive_on_a_queue_bound_to_tenant_star_voicemail() {
    let config = config("results");
    let _cleanup = Cleanup(config.clone());
    let queue = AmqpQueue::connect(config.clone()).await.unwrap();

    // A listener as any other service would bind one, with the plain AMQP client.
    let connection = lapin::Connection::connect(&config.url, Default::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let listener = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .queue_bind(
            listener.name().clone(),
            config.results_exchange().into(),
            "acme.*.voicemail".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut subscription = queue.subscribe_results("acme.#").await.unwrap();

    let events = [
        result("acme", "u1", RecordingKind::Voicemail, "r1"),
        result("acme", "u1", RecordingKind::Call, "r2"),
        result("other", "u1", RecordingKind::Voicemail, "r3"),
        result("acme", "u2", RecordingKind::Voicemail, "r4"),
        result("acme", "", RecordingKind::Voicemail, "r5"),
    ];
    for event in &events {
        queue.publish_result(event).await.unwrap();
    }

    let mut got = Vec::new();
    let deadline = Instant::now() + 5 * SECOND;
    while got.len() < 3 && Instant::now() < deadline {
        match channel
            .basic_get(listener.name().clone(), BasicGetOptions { no_ack: false })
            .await
            .unwrap()
        {
            Some(message) => {
                let event = ResultReady::decode(message.delivery.data.as_slice()).unwrap();
                got.push((message.delivery.routing_key.to_string(), event.job_id));
                message
                    .delivery
                    .acker
                    .ack(BasicAckOptions::default())
                    .await
                    .unwrap();
            }
            None => tokio::time::sleep(50 * MS).await,
        }
    }
    assert_eq!(
        got,
        [
            ("acme.u1.voicemail".to_string(), "r1".to_string()),
            ("acme.u2.voicemail".to_string(), "r4".to_string()),
            ("acme._.voicemail".to_string(), "r5".to_string()),
        ]
    );
    tokio::time::sleep(200 * MS).await;
    assert!(
        channel
            .basic_get(listener.name().clone(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
            .is_none()
    );

    // The queue's own subscription (acme.#) gets every acme event, in order.
    let mut subscribed = Vec::new();
    for _ in 0..4 {
        let event = tokio::time::timeout(5 * SECOND, subscription.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(event.status(), JobStatus::Done);
        subscribed.push(event.job_id);
    }
    assert_eq!(subscribed, ["r1", "r2", "r4", "r5"]);

    assert!(matches!(
        queue
            .publish_result(&result("acme", "u1", RecordingKind::Unspecified, "x"))
            .await,
        Err(QueueError::InvalidArgument(_))
    ));
    let _ = connection.close(200, "done".into()).await;
    queue.close().await;
    assert!(subscription.next().await.is_none());
}

#[tokio::test]
async fn publishing_and_consuming_resume_after_the_broker_closes_the_connection() {
    let config = config("reconnect");
    let _cleanup = Cleanup(config.clone());
    let queue = AmqpQueue::connect(config.clone()).await.unwrap();
    let mut consumer = queue.consume(2).await.unwrap();

    queue.publish(&job("before")).await.unwrap();
    let before = next_within(&mut consumer, 5 * SECOND).await;
    before.ack().await.unwrap();
    queue.publish(&job("in-flight")).await.unwrap();
    let in_flight = next_within(&mut consumer, 5 * SECOND).await;
    assert_eq!(in_flight.job.job_id, "in-flight");
    assert_eq!(queue.connections_opened(), 1);

    close_connection_server_side(&config.connection_name);

    // Publishing notices the dead connection, reconnects and re-declares.
    queue.publish(&job("after")).await.unwrap();
    assert_eq!(queue.connections_opened(), 2);
    // What was in flight cannot be acknowledged on the new connection ...
    assert!(matches!(
        in_flight.ack().await,
        Err(QueueError::DeliveryLost(_))
    ));
    // ... the consumer re-subscribes on its own and gets it again, with the new job; the job
    // acknowledged before the close does not come back.
    let mut got = Vec::new();
    for _ in 0..2 {
        let delivery = next_within(&mut consumer, 10 * SECOND).await;
        got.push((delivery.job.job_id.clone(), delivery.redelivered));
        delivery.ack().await.unwrap();
    }
    got.sort();
    assert_eq!(
        got,
        [
            ("after".to_string(), false),
            ("in-flight".to_string(), true)
        ]
    );
    nothing_within(&mut consumer, SECOND).await;

    // A second outage, this time noticed by the consumer first.
    close_connection_server_side(&config.connection_name);
    let waiting = tokio::spawn(async move {
        let delivery = next_within(&mut consumer, 15 * SECOND).await;
        let id = delivery.job.job_id.clone();
        delivery.ack().await.unwrap();
        id
    });
    tokio::time::sleep(300 * MS).await;
    queue.publish(&job("after-second")).await.unwrap();
    assert_eq!(waiting.await.unwrap(), "after-second");
    assert_eq!(queue.connections_opened(), 3);
    queue.close().await;
}

#[tokio::test]
async fn poison_job_is_dead_lettered_by_the_broker_at_the_delivery_limit() {
    let config = AmqpConfig {
        delivery_limit: Some(2),
        ..config("poison")
    };
    let _cleanup = Cleanup(config.clone());
    let queue = AmqpQueue::connect(config).await.unwrap();
    queue.publish(&job("poison")).await.unwrap();
    let mut consumer = queue.consume(1).await.unwrap();
    // Every worker that takes it "crashes" (drops it unsettled).
    let mut deliveries = 0;
    while let Ok(Some(delivery)) = tokio::time::timeout(2 * SECOND, consumer.next()).await {
        drop(delivery.unwrap());
        deliveries += 1;
        assert!(
            deliveries <= 5,
            "the broker does not enforce the delivery limit"
        );
    }
    assert_eq!(deliveries, 3, "delivered once plus two redeliveries");
    let dead = queue.take_dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].job.as_ref().unwrap().job_id, "poison");
    assert!(
        dead[0].reason.contains("delivery_limit"),
        "{}",
        dead[0].reason
    );
    queue.close().await;
}

#[tokio::test]
async fn usable_as_a_trait_object_and_refuses_bad_input() {
    let config = config("dyn");
    let _cleanup = Cleanup(config.clone());
    let queue: std::sync::Arc<dyn JobQueue> =
        std::sync::Arc::new(AmqpQueue::connect(config).await.unwrap());
    assert!(matches!(
        queue.publish(&companion_queue::Job::default()).await,
        Err(QueueError::InvalidArgument(_))
    ));
    assert!(queue.consume(0).await.is_err());
    queue.publish(&job("dyn")).await.unwrap();
    let mut consumer = queue.consume(1).await.unwrap();
    let delivery = next_within(&mut consumer, 5 * SECOND).await;
    assert_eq!(delivery.job.filename, "dyn.wav");
    delivery.ack().await.unwrap();
}

#[tokio::test]
async fn wrong_password_fails_without_waiting_out_the_reconnect_window() {
    let url = require_broker();
    let bad = url.replacen("guest:guest@", "guest:wrong@", 1);
    if bad == url {
        return; // AMQP_URL has other credentials; nothing to corrupt predictably
    }
    let mut config = config("bad-password");
    config.url = bad;
    config.reconnect_window = Duration::from_secs(20);
    let started = Instant::now();
    let error = AmqpQueue::connect(config).await.err().expect("refused");
    eprintln!("refused after {:?}: {error}", started.elapsed());
    assert!(
        started.elapsed() < 10 * SECOND,
        "took {:?}: {error}",
        started.elapsed()
    );
}

#[tokio::test]
async fn an_unreachable_broker_fails_after_the_reconnect_window() {
    let mut config = AmqpConfig::new("amqp://guest:guest@127.0.0.1:1/%2f");
    config.reconnect = Backoff::new(50 * MS, 2, 200 * MS);
    config.reconnect_window = 800 * MS;
    let started = Instant::now();
    let error = AmqpQueue::connect(config).await.err().expect("unreachable");
    let waited = started.elapsed();
    assert!(matches!(error, QueueError::Unavailable { .. }), "{error}");
    assert!(waited >= 800 * MS && waited < 5 * SECOND, "{waited:?}");
}
