//! Shared by the RabbitMQ tests: the broker's address, per-run names, clean-up.

#![allow(dead_code)]

use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use companion_queue::proto::job::Source;
use companion_queue::{AmqpConfig, Backoff, Delivery, Job, RecordingKind, RetryPolicy};

pub const DEFAULT_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

pub fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| DEFAULT_URL.to_string())
}

/// Fails (never skips) when the broker is not listening.
pub fn require_broker() -> String {
    let url = amqp_url();
    let after_scheme = url.split("://").nth(1).unwrap_or(&url);
    let authority = after_scheme.split('/').next().unwrap_or_default();
    let host_port = authority.rsplit('@').next().unwrap_or_default();
    let host_port = if host_port.contains(':') {
        host_port.to_string()
    } else {
        format!("{host_port}:5672")
    };
    let reachable = host_port
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .map(|addr| TcpStream::connect_timeout(&addr, Duration::from_secs(3)));
    match reachable {
        Some(Ok(_)) => url,
        Some(Err(e)) => panic!(
            "RabbitMQ is not reachable at {host_port} ({e}). These tests need a real broker: \
             start it with `rabbitmq-server -detached` (or point AMQP_URL at one)."
        ),
        None => panic!(
            "cannot resolve the RabbitMQ address {host_port:?} from AMQP_URL; start a local \
             broker with `rabbitmq-server -detached` or fix AMQP_URL."
        ),
    }
}

/// Queue and exchange names nobody else uses: tests of this run, other runs, production.
pub fn unique_prefix(test: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("companion-test.{}-{nanos}.{test}", std::process::id())
}

/// A fast configuration under a fresh prefix.
pub fn config(test: &str) -> AmqpConfig {
    let mut config = AmqpConfig::new(require_broker());
    config.prefix = unique_prefix(test);
    config.connection_name = config.prefix.clone();
    config.retry = RetryPolicy {
        max_attempts: 3,
        backoff: Backoff::new(Duration::from_millis(300), 2, Duration::from_secs(5)),
    };
    config.reconnect = Backoff::new(Duration::from_millis(100), 2, Duration::from_secs(2));
    config.reconnect_window = Duration::from_secs(30);
    config
}

pub fn job(id: &str) -> Job {
    Job {
        job_id: id.into(),
        tenant_id: "acme".into(),
        recording_id: format!("rec-{id}"),
        user_id: "u1".into(),
        kind: RecordingKind::Voicemail as i32,
        source: Some(Source::Uri(format!("file:///vm/{id}.wav"))),
        filename: format!("{id}.wav"),
        ..Default::default()
    }
}

pub async fn next_within(consumer: &mut companion_queue::Consumer, within: Duration) -> Delivery {
    tokio::time::timeout(within, consumer.next())
        .await
        .expect("no delivery in time")
        .expect("consumer ended")
        .expect("consumer failed")
}

pub async fn nothing_within(consumer: &mut companion_queue::Consumer, within: Duration) {
    if let Ok(got) = tokio::time::timeout(within, consumer.next()).await {
        panic!("expected no delivery, got {got:?}");
    }
}

/// Deletes a test's queues and exchange when dropped (also when the test panics).
pub struct Cleanup(pub AmqpConfig);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let config = self.0.clone();
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
                let Ok(connection) =
                    lapin::Connection::connect(&config.url, Default::default()).await
                else {
                    return;
                };
                let Ok(channel) = connection.create_channel().await else {
                    return;
                };
                let mut queues = vec![config.jobs_queue(), config.dead_letter_queue()];
                queues.extend(
                    config
                        .retry
                        .distinct_delays()
                        .into_iter()
                        .map(|d| config.retry_queue(d)),
                );
                for queue in queues {
                    let _ = channel
                        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                        .await;
                }
                let _ = channel
                    .exchange_delete(
                        config.results_exchange().as_str().into(),
                        ExchangeDeleteOptions::default(),
                    )
                    .await;
                let _ = connection.close(200, "clean-up".into()).await;
            });
        })
        .join();
    }
}

/// Closes a client connection from the broker's side, as an operator or a broker restart
/// would (`rabbitmqctl close_connection`), found by its connection name.
pub fn close_connection_server_side(connection_name: &str) {
    let listing = std::process::Command::new("rabbitmqctl")
        .args(["-q", "list_connections", "pid", "client_properties"])
        .output()
        .expect("run rabbitmqctl (needed to close a connection from the server side)");
    assert!(
        listing.status.success(),
        "rabbitmqctl list_connections failed: {}",
        String::from_utf8_lossy(&listing.stderr)
    );
    let stdout = String::from_utf8_lossy(&listing.stdout);
    let quoted = format!("\"{connection_name}\"");
    let pids: Vec<&str> = stdout
        .lines()
        .filter(|line| line.contains(&quoted))
        .filter_map(|line| line.split('\t').next())
        .collect();
    assert!(
        !pids.is_empty(),
        "no broker connection named {connection_name:?} in:\n{stdout}"
    );
    for pid in pids {
        let closed = std::process::Command::new("rabbitmqctl")
            .args(["-q", "close_connection", pid, "test: forced close"])
            .output()
            .expect("run rabbitmqctl close_connection");
        assert!(
            closed.status.success(),
            "rabbitmqctl close_connection {pid} failed: {}",
            String::from_utf8_lossy(&closed.stderr)
        );
    }
}
