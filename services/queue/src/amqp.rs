//! The work queue on RabbitMQ (AMQP 0.9.1, via lapin).
//!
//! Topology (all durable, declared on every (re)connect, names from [`AmqpConfig::prefix`]):
//!
//! | name | what |
//! | --- | --- |
//! | `<prefix>.jobs` | quorum queue of jobs; its broker-side dead-lettering (delivery limit) goes to `.dead` |
//! | `<prefix>.jobs.dead` | quorum queue of given-up jobs, the reason in header `x-companion-reason` |
//! | `<prefix>.jobs.retry.<ms>ms` | one quorum delay queue per distinct backoff delay: message TTL `<ms>`, dead-letters into `.jobs` |
//! | `<prefix>.results` | topic exchange of [`ResultReady`] events, routing key `tenant.user.kind` |
//!
//! **Publishing** waits for the publisher confirm of a persistent (delivery mode 2) message on a
//! confirm-mode channel, mandatory for jobs so that a missing queue is an error rather than a
//! silent drop.
//!
//! **Retry** publishes the job (attempt + 1) to the delay queue of its backoff delay, waits for
//! the confirm, then acks the delivery. The delay lives in the broker, so it survives a crash
//! of the worker, does not hold a prefetch slot while waiting, and needs no plugin. One queue per
//! *delay* (not per message TTL in a single queue) because RabbitMQ only expires messages at the
//! head of a queue: with mixed TTLs a long delay would hold back the short ones behind it. The
//! delay queues dead-letter at-least-once (quorum queues, `x-dead-letter-strategy`), so a retry
//! is not lost between the delay queue and the job queue.
//!
//! **Dead-lettering** publishes the job to `.dead` with the reason in a header (broker
//! dead-lettering cannot carry a reason), waits for the confirm, then acks. A crash between
//! the two runs or dead-letters the job twice; it never loses it.
//!
//! **Reconnect** is our own, not lapin's auto-recovery: every operation that fails on a broken
//! connection or channel gets a new connection (exponential backoff with jitter, for at most
//! [`AmqpConfig::reconnect_window`]), which re-declares the topology; consumers open a new
//! channel, set `basic.qos` again and re-consume. Deliveries received on the old connection are
//! *not* acknowledged on the new one (delivery tags are per channel): their `ack` fails with
//! [`QueueError::DeliveryLost`] and the broker redelivers them, having requeued everything
//! unacknowledged when the connection died. Acknowledged work is never redelivered; work whose
//! acknowledgement was lost with the connection is done twice (at-least-once).

use std::fmt;
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures_core::Stream;
use lapin::message::Delivery as AmqpDelivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions,
    BasicQosOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::protocol::AMQPErrorKind;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{
    Acker, BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ErrorKind,
    ExchangeKind,
};
use prost::Message;
use tokio::sync::Mutex;
use tracing::{info, warn};

use crate::delivery::{DeliverySource, ResultSource, Settler};
use crate::{
    Backoff, Consumer, DEFAULT_MAX_PAYLOAD_BYTES, DeadLetter, Delivery, Job, JobQueue, QueueError,
    Result, ResultReady, ResultSubscription, RetryPolicy, now_ms, prepare_job, result_routing_key,
};

/// Header of a dead-lettered job: why it was given up on.
pub const HEADER_REASON: &str = "x-companion-reason";
/// Header of a dead-lettered job: when, in milliseconds since the epoch.
pub const HEADER_DEAD_AT_MS: &str = "x-companion-dead-at-ms";
/// Header of a retried job: the reason the previous attempt gave.
pub const HEADER_LAST_ERROR: &str = "x-companion-last-error";

/// Where the broker is and how the queue uses it.
#[derive(Clone)]
pub struct AmqpConfig {
    /// `amqp://user:password@host:5672/%2f` (`amqps://` for TLS).
    pub url: String,
    /// First word of every queue and exchange name (`companion` → `companion.jobs`, ...).
    pub prefix: String,
    pub retry: RetryPolicy,
    /// Deliveries of a job that were never settled (worker crashes, drops) before the broker
    /// dead-letters it as a poison message (quorum queue `x-delivery-limit`); `None`: no limit.
    pub delivery_limit: Option<u32>,
    /// Delay between reconnect attempts (jittered).
    pub reconnect: Backoff,
    /// How long one operation keeps reconnecting before it fails with
    /// [`QueueError::Unavailable`].
    pub reconnect_window: Duration,
    /// Shown in the broker's connection list (`rabbitmqctl list_connections client_properties`).
    pub connection_name: String,
    pub max_payload_bytes: usize,
}

impl AmqpConfig {
    pub fn new(url: impl Into<String>) -> AmqpConfig {
        AmqpConfig {
            url: url.into(),
            prefix: "companion".into(),
            retry: RetryPolicy::default(),
            delivery_limit: Some(10),
            reconnect: Backoff::new(Duration::from_millis(200), 2, Duration::from_secs(10)),
            reconnect_window: Duration::from_secs(60),
            connection_name: "companion".into(),
            max_payload_bytes: DEFAULT_MAX_PAYLOAD_BYTES,
        }
    }

    pub fn jobs_queue(&self) -> String {
        format!("{}.jobs", self.prefix)
    }

    pub fn dead_letter_queue(&self) -> String {
        format!("{}.jobs.dead", self.prefix)
    }

    /// The delay queue of one backoff delay.
    pub fn retry_queue(&self, delay: Duration) -> String {
        format!("{}.jobs.retry.{}ms", self.prefix, delay.as_millis())
    }

    pub fn results_exchange(&self) -> String {
        format!("{}.results", self.prefix)
    }

    fn validate(&self) -> Result<()> {
        let invalid = |why: &str| Err(QueueError::InvalidArgument(why.into()));
        if self.prefix.is_empty() || self.prefix.len() > 200 {
            return invalid("prefix must be 1 to 200 bytes long");
        }
        if self.retry.max_attempts == 0 {
            return invalid("retry.max_attempts must be at least 1");
        }
        if self.retry.distinct_delays().iter().any(|d| d.is_zero()) {
            return invalid("retry delays must be at least 1 ms");
        }
        Ok(())
    }
}

impl fmt::Debug for AmqpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmqpConfig")
            .field("url", &redact_url(&self.url))
            .field("prefix", &self.prefix)
            .field("retry", &self.retry)
            .field("delivery_limit", &self.delivery_limit)
            .field("reconnect", &self.reconnect)
            .field("reconnect_window", &self.reconnect_window)
            .field("connection_name", &self.connection_name)
            .field("max_payload_bytes", &self.max_payload_bytes)
            .finish()
    }
}

/// The URL without its password, for logs.
fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_string();
    };
    let authority_end = url[scheme_end..]
        .find('/')
        .map_or(url.len(), |i| scheme_end + i);
    match url[scheme_end..authority_end].rfind('@') {
        Some(at) => {
            let userinfo = &url[scheme_end..scheme_end + at];
            let user = userinfo.split(':').next().unwrap_or_default();
            format!(
                "{}{user}:***{}",
                &url[..scheme_end],
                &url[scheme_end + at..]
            )
        }
        None => url.to_string(),
    }
}

/// The RabbitMQ-backed [`JobQueue`]. Cheap to clone; clones share one connection (consumers
/// get their own channel on it).
#[derive(Clone)]
pub struct AmqpQueue {
    shared: Arc<Shared>,
}

struct Shared {
    config: AmqpConfig,
    /// The current connection and its publishing channel; replaced when it breaks.
    live: Mutex<Option<Live>>,
    connections: AtomicU64,
    closed: AtomicBool,
}

#[derive(Clone)]
struct Live {
    connection: Arc<Connection>,
    /// Confirm-mode channel shared by all publishes.
    publisher: Channel,
}

impl AmqpQueue {
    /// Connects (retrying for up to `reconnect_window`) and declares the topology.
    pub async fn connect(config: AmqpConfig) -> Result<AmqpQueue> {
        config.validate()?;
        let shared = Arc::new(Shared {
            config,
            live: Mutex::new(None),
            connections: AtomicU64::new(0),
            closed: AtomicBool::new(false),
        });
        shared.live().await?;
        Ok(AmqpQueue { shared })
    }

    pub fn config(&self) -> &AmqpConfig {
        &self.shared.config
    }

    /// How many connections this queue has opened so far (1 + reconnects).
    pub fn connections_opened(&self) -> u64 {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Removes up to `max` jobs from the dead-letter queue and returns them (for inspection or
    /// re-publishing). Broker-side dead letters (delivery limit) carry the broker's reason.
    pub async fn take_dead_letters(&self, max: usize) -> Result<Vec<DeadLetter>> {
        let live = self.shared.live().await?;
        let channel = live.connection.create_channel().await?;
        let queue = self.shared.config.dead_letter_queue();
        let mut taken = Vec::new();
        while taken.len() < max {
            let Some(message) = channel
                .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: false })
                .await?
            else {
                break;
            };
            let delivery = message.delivery;
            let reason = header_string(&delivery.properties, HEADER_REASON)
                .or_else(|| {
                    header_string(&delivery.properties, "x-first-death-reason")
                        .map(|r| format!("dead-lettered by the broker: {r}"))
                })
                .unwrap_or_default();
            taken.push(DeadLetter {
                job: Job::decode(delivery.data.as_slice()).ok(),
                reason,
            });
            delivery.acker.ack(BasicAckOptions::default()).await?;
        }
        let _ = channel.close(200, "done".into()).await;
        Ok(taken)
    }

    /// Closes the connection. Consumers and subscriptions end (`next` returns `None`);
    /// unacknowledged deliveries go back to the queue.
    pub async fn close(&self) {
        self.shared.closed.store(true, Ordering::SeqCst);
        if let Some(live) = self.shared.live.lock().await.take()
            && live.connection.status().connected()
        {
            let _ = live.connection.close(200, "closing".into()).await;
        }
    }
}

#[async_trait]
impl JobQueue for AmqpQueue {
    async fn publish(&self, job: &Job) -> Result<()> {
        let config = &self.shared.config;
        let job = prepare_job(job, config.max_payload_bytes)?;
        self.shared
            .publish(
                "",
                &config.jobs_queue(),
                &job.encode_to_vec(),
                job_properties(&job),
                true,
            )
            .await
    }

    async fn consume(&self, prefetch: u16) -> Result<Consumer> {
        if prefetch == 0 {
            return Err(QueueError::InvalidArgument(
                "prefetch must be at least 1".into(),
            ));
        }
        let current = self.shared.open_consumer(prefetch).await?;
        Ok(Consumer::new(Box::new(AmqpConsumer {
            shared: self.shared.clone(),
            prefetch,
            current: Some(current),
        })))
    }

    async fn publish_result(&self, result: &ResultReady) -> Result<()> {
        let key = result_routing_key(result)?;
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/x-protobuf".into())
            .with_type("companion.v1.ResultReady".into())
            .with_timestamp((now_ms() / 1000) as u64);
        self.shared
            .publish(
                &self.shared.config.results_exchange(),
                &key,
                &result.encode_to_vec(),
                properties,
                false,
            )
            .await
    }

    async fn subscribe_results(&self, pattern: &str) -> Result<ResultSubscription> {
        if pattern.is_empty() || pattern.len() > 255 {
            return Err(QueueError::InvalidArgument(
                "topic pattern must be 1 to 255 bytes long".into(),
            ));
        }
        let current = self.shared.open_subscription(pattern).await?;
        Ok(ResultSubscription::new(Box::new(AmqpResults {
            shared: self.shared.clone(),
            pattern: pattern.to_string(),
            current: Some(current),
        })))
    }
}

/// Counts failures of one operation and sleeps between them until its window is used up.
struct Retrier<'a> {
    shared: &'a Shared,
    started: Instant,
    failures: u32,
}

impl<'a> Retrier<'a> {
    fn new(shared: &'a Shared) -> Retrier<'a> {
        Retrier {
            shared,
            started: Instant::now(),
            failures: 0,
        }
    }

    /// `Err` when the failure is final (fatal, window used up, queue closed); otherwise sleeps
    /// the backoff and returns `Ok` to go again.
    async fn failed(&mut self, doing: &str, error: lapin::Error) -> Result<()> {
        self.shared.ensure_open()?;
        if is_fatal(&error) {
            return Err(error.into());
        }
        self.failures += 1;
        let waited = self.started.elapsed();
        if waited >= self.shared.config.reconnect_window {
            return Err(QueueError::Unavailable {
                waited,
                last_error: format!("{doing}: {error}"),
            });
        }
        let delay = self.shared.config.reconnect.jittered(self.failures);
        warn!(
            error = %error,
            failures = self.failures,
            retry_in_ms = delay.as_millis() as u64,
            "{doing} failed; retrying"
        );
        tokio::time::sleep(delay).await;
        self.shared.ensure_open()
    }
}

/// Errors a reconnect does not fix: the broker refused something we asked for (bad
/// credentials, a queue that exists with other arguments, ...). Connection-level errors such as
/// a forced close by an operator (320 CONNECTION_FORCED) are hard errors and do get retried.
fn is_fatal(error: &lapin::Error) -> bool {
    match error.kind() {
        ErrorKind::ProtocolError(amqp) => matches!(amqp.kind(), AMQPErrorKind::Soft(_)),
        ErrorKind::InvalidProtocolVersion(_)
        | ErrorKind::AuthProviderError(_)
        | ErrorKind::NoDefaultRuntime
        | ErrorKind::RuntimeShutdownError(_) => true,
        _ => false,
    }
}

impl Shared {
    fn ensure_open(&self) -> Result<()> {
        if self.closed.load(Ordering::SeqCst) {
            Err(QueueError::Closed)
        } else {
            Ok(())
        }
    }

    /// The current connection, reconnecting (and re-declaring) if it broke.
    async fn live(&self) -> Result<Live> {
        let mut retrier = Retrier::new(self);
        let mut slot = self.live.lock().await;
        loop {
            self.ensure_open()?;
            if let Some(live) = slot.as_mut() {
                if live.connection.status().connected() {
                    if live.publisher.status().connected() {
                        return Ok(live.clone());
                    }
                    // The connection is fine but the channel died (a channel-level error, such
                    // as publishing to an exchange someone deleted): new channel, re-declare.
                    let reopened = async {
                        let channel = open_publisher(&live.connection).await?;
                        self.declare_topology(&channel).await?;
                        lapin::Result::Ok(channel)
                    };
                    match reopened.await {
                        Ok(channel) => {
                            live.publisher = channel;
                            return Ok(live.clone());
                        }
                        Err(e) => {
                            retrier.failed("opening the publishing channel", e).await?;
                            continue;
                        }
                    }
                }
                warn!("connection to the message broker lost; reconnecting");
                *slot = None;
            }
            match self.connect().await {
                Ok(live) => {
                    *slot = Some(live.clone());
                    return Ok(live);
                }
                Err(e) => {
                    retrier
                        .failed("connecting to the message broker", e)
                        .await?
                }
            }
        }
    }

    async fn connect(&self) -> lapin::Result<Live> {
        let config = &self.config;
        let properties = ConnectionProperties::default()
            .with_connection_name(config.connection_name.clone().into());
        let connection = Connection::connect(&config.url, properties).await?;
        let publisher = open_publisher(&connection).await?;
        self.declare_topology(&publisher).await?;
        let n = self.connections.fetch_add(1, Ordering::SeqCst) + 1;
        info!(
            url = %redact_url(&config.url),
            connection = n,
            "connected to the message broker"
        );
        Ok(Live {
            connection: Arc::new(connection),
            publisher,
        })
    }

    /// Declares every exchange and queue (idempotent; fails if one exists with other
    /// arguments).
    async fn declare_topology(&self, channel: &Channel) -> lapin::Result<()> {
        let config = &self.config;
        let durable = QueueDeclareOptions::durable();
        channel
            .exchange_declare(
                config.results_exchange().into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        channel
            .queue_declare(
                config.dead_letter_queue().into(),
                durable,
                quorum_arguments(),
            )
            .await?;
        let mut jobs = dead_lettering_to(&config.dead_letter_queue());
        if let Some(limit) = config.delivery_limit {
            jobs.insert(
                "x-delivery-limit".into(),
                AMQPValue::LongLongInt(limit.into()),
            );
        }
        channel
            .queue_declare(config.jobs_queue().into(), durable, jobs)
            .await?;
        for delay in config.retry.distinct_delays() {
            let mut delayed = dead_lettering_to(&config.jobs_queue());
            delayed.insert(
                "x-message-ttl".into(),
                AMQPValue::LongLongInt(delay.as_millis().min(i64::MAX as u128) as i64),
            );
            channel
                .queue_declare(config.retry_queue(delay).into(), durable, delayed)
                .await?;
        }
        Ok(())
    }

    /// Publishes one persistent message and waits for the broker's confirm, reconnecting on
    /// connection or channel failures. A message whose confirm was lost with the connection is
    /// published again (at-least-once).
    async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        payload: &[u8],
        properties: BasicProperties,
        mandatory: bool,
    ) -> Result<()> {
        let routing_key = ShortString::try_new(routing_key)
            .map_err(|e| QueueError::InvalidArgument(format!("routing key: {e}")))?;
        let mut retrier = Retrier::new(self);
        loop {
            let live = self.live().await?;
            let confirmed = async {
                live.publisher
                    .basic_publish(
                        exchange.into(),
                        routing_key.clone(),
                        BasicPublishOptions {
                            mandatory,
                            immediate: false,
                        },
                        payload,
                        properties.clone(),
                    )
                    .await?
                    .await
            }
            .await;
            match confirmed {
                Ok(Confirmation::Ack(None) | Confirmation::NotRequested) => return Ok(()),
                Ok(Confirmation::Ack(Some(returned))) => {
                    return Err(QueueError::Unroutable(format!(
                        "{} to {routing_key:?}: {}",
                        returned.reply_code, returned.reply_text
                    )));
                }
                Ok(Confirmation::Nack(_)) => return Err(QueueError::Nacked),
                Err(e) => retrier.failed("publishing", e).await?,
            }
        }
    }

    /// A new channel with `basic.qos(prefetch)` consuming the job queue (re-declared first).
    async fn open_consumer(&self, prefetch: u16) -> Result<(Channel, lapin::Consumer)> {
        let mut retrier = Retrier::new(self);
        loop {
            let live = self.live().await?;
            let opened = async {
                let channel = live.connection.create_channel().await?;
                self.declare_topology(&channel).await?;
                channel
                    .basic_qos(prefetch, BasicQosOptions { global: false })
                    .await?;
                let consumer = channel
                    .basic_consume(
                        self.config.jobs_queue().into(),
                        "".into(),
                        BasicConsumeOptions::default(),
                        FieldTable::default(),
                    )
                    .await?;
                lapin::Result::Ok((channel, consumer))
            }
            .await;
            match opened {
                Ok(opened) => return Ok(opened),
                Err(e) => retrier.failed("subscribing to the job queue", e).await?,
            }
        }
    }

    /// A new channel consuming (auto-ack) an exclusive server-named queue bound to `pattern`.
    async fn open_subscription(&self, pattern: &str) -> Result<(Channel, lapin::Consumer)> {
        let mut retrier = Retrier::new(self);
        loop {
            let live = self.live().await?;
            let opened = async {
                let channel = live.connection.create_channel().await?;
                let exchange = self.config.results_exchange();
                channel
                    .exchange_declare(
                        exchange.as_str().into(),
                        ExchangeKind::Topic,
                        ExchangeDeclareOptions {
                            durable: true,
                            ..ExchangeDeclareOptions::default()
                        },
                        FieldTable::default(),
                    )
                    .await?;
                let queue = channel
                    .queue_declare(
                        "".into(),
                        QueueDeclareOptions {
                            exclusive: true,
                            auto_delete: true,
                            ..QueueDeclareOptions::default()
                        },
                        FieldTable::default(),
                    )
                    .await?;
                channel
                    .queue_bind(
                        queue.name().clone(),
                        exchange.into(),
                        pattern.into(),
                        QueueBindOptions::default(),
                        FieldTable::default(),
                    )
                    .await?;
                let consumer = channel
                    .basic_consume(
                        queue.name().clone(),
                        "".into(),
                        BasicConsumeOptions {
                            no_ack: true,
                            ..BasicConsumeOptions::default()
                        },
                        FieldTable::default(),
                    )
                    .await?;
                lapin::Result::Ok((channel, consumer))
            }
            .await;
            match opened {
                Ok(opened) => return Ok(opened),
                Err(e) => retrier.failed("subscribing to result events", e).await?,
            }
        }
    }
}

async fn open_publisher(connection: &Connection) -> lapin::Result<Channel> {
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok(channel)
}

fn quorum_arguments() -> FieldTable {
    let mut arguments = FieldTable::default();
    arguments.insert("x-queue-type".into(), long_string("quorum"));
    arguments
}

/// A quorum queue whose dead letters go, at-least-once, to `target` via the default exchange.
fn dead_lettering_to(target: &str) -> FieldTable {
    let mut arguments = quorum_arguments();
    arguments.insert("x-dead-letter-exchange".into(), long_string(""));
    arguments.insert("x-dead-letter-routing-key".into(), long_string(target));
    // at-least-once needs reject-publish overflow; no length limit is set, so it never rejects.
    arguments.insert(
        "x-dead-letter-strategy".into(),
        long_string("at-least-once"),
    );
    arguments.insert("x-overflow".into(), long_string("reject-publish"));
    arguments
}

fn long_string(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value))
}

fn job_properties(job: &Job) -> BasicProperties {
    let properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/x-protobuf".into())
        .with_type("companion.v1.Job".into())
        .with_timestamp((now_ms() / 1000) as u64);
    match ShortString::try_new(job.job_id.as_str()) {
        Ok(id) => properties.with_message_id(id),
        Err(_) => properties,
    }
}

fn header_string(properties: &BasicProperties, name: &str) -> Option<String> {
    match properties.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
        _ => None,
    }
}

/// The next item of a lapin consumer.
async fn next_message(consumer: &mut lapin::Consumer) -> Option<lapin::Result<AmqpDelivery>> {
    poll_fn(|cx| Pin::new(&mut *consumer).poll_next(cx)).await
}

struct AmqpConsumer {
    shared: Arc<Shared>,
    prefetch: u16,
    current: Option<(Channel, lapin::Consumer)>,
}

#[async_trait]
impl DeliverySource for AmqpConsumer {
    async fn next(&mut self) -> Option<Result<Delivery>> {
        loop {
            if self.shared.ensure_open().is_err() {
                return None;
            }
            if self.current.is_none() {
                match self.shared.open_consumer(self.prefetch).await {
                    Ok(current) => {
                        info!("job consumer subscribed again");
                        self.current = Some(current);
                    }
                    Err(QueueError::Closed) => return None,
                    Err(e) => return Some(Err(e)),
                }
            }
            let (channel, consumer) = self.current.as_mut()?;
            match next_message(consumer).await {
                Some(Ok(message)) => {
                    let channel = channel.clone();
                    if let Some(delivery) = into_delivery(&self.shared, message, channel).await {
                        return Some(Ok(delivery));
                    }
                }
                Some(Err(e)) => {
                    if self.shared.ensure_open().is_ok() {
                        warn!(error = %e, "job consumer lost its channel; subscribing again");
                    }
                    self.current = None;
                }
                None => {
                    if self.shared.ensure_open().is_ok() {
                        warn!("job consumer cancelled by the broker; subscribing again");
                    }
                    self.current = None;
                }
            }
        }
    }
}

/// Wraps a broker delivery; an undecodable one is dead-lettered on the spot (`None`).
async fn into_delivery(
    shared: &Arc<Shared>,
    message: AmqpDelivery,
    channel: Channel,
) -> Option<Delivery> {
    let last_error = header_string(&message.properties, HEADER_LAST_ERROR);
    let mut settler = AmqpSettler {
        shared: shared.clone(),
        channel,
        acker: message.acker,
    };
    match Job::decode(message.data.as_slice()) {
        Ok(job) => Some(Delivery::new(
            job,
            message.redelivered,
            last_error,
            shared.config.retry,
            Box::new(settler),
        )),
        Err(e) => {
            let reason = format!("undecodable job payload: {e}");
            warn!("{reason}; dead-lettering the message");
            let properties = dead_properties(BasicProperties::default(), &reason);
            let dead = shared.config.dead_letter_queue();
            let result = match shared
                .publish("", &dead, &message.data, properties, true)
                .await
            {
                Ok(()) => settler.ack().await,
                Err(e) => Err(e),
            };
            if let Err(e) = result {
                warn!(error = %e, "could not dead-letter an undecodable message");
                settler.abandon();
            }
            None
        }
    }
}

fn dead_properties(properties: BasicProperties, reason: &str) -> BasicProperties {
    let mut headers = properties.headers().clone().unwrap_or_default();
    headers.insert(HEADER_REASON.into(), long_string(reason));
    headers.insert(HEADER_DEAD_AT_MS.into(), AMQPValue::LongLongInt(now_ms()));
    properties.with_delivery_mode(2).with_headers(headers)
}

struct AmqpSettler {
    shared: Arc<Shared>,
    /// Keeps the delivery's channel open until it is settled, even if the consumer is gone.
    channel: Channel,
    acker: Acker,
}

#[async_trait]
impl Settler for AmqpSettler {
    async fn ack(&mut self) -> Result<()> {
        match self.acker.ack(BasicAckOptions::default()).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(QueueError::DeliveryLost(
                "its channel closed before the acknowledgement".into(),
            )),
            Err(e) => Err(QueueError::DeliveryLost(format!(
                "the acknowledgement failed: {e}"
            ))),
        }
    }

    async fn retry(&mut self, next: &Job, delay: Duration, reason: &str) -> Result<()> {
        let mut headers = FieldTable::default();
        headers.insert(HEADER_LAST_ERROR.into(), long_string(reason));
        let properties = job_properties(next).with_headers(headers);
        let queue = self.shared.config.retry_queue(delay);
        self.shared
            .publish("", &queue, &next.encode_to_vec(), properties, true)
            .await?;
        self.ack().await
    }

    async fn dead_letter(&mut self, job: &Job, reason: &str) -> Result<()> {
        let properties = dead_properties(job_properties(job), reason);
        let queue = self.shared.config.dead_letter_queue();
        self.shared
            .publish("", &queue, &job.encode_to_vec(), properties, true)
            .await?;
        self.ack().await
    }

    fn abandon(&mut self) {
        if !self.acker.usable() {
            return; // settled, or its channel is gone and the broker requeues it anyway
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let acker = self.acker.clone();
        let channel = self.channel.clone();
        runtime.spawn(async move {
            let requeue = BasicNackOptions {
                multiple: false,
                requeue: true,
            };
            if let Err(e) = acker.nack(requeue).await {
                warn!(error = %e, "could not requeue an abandoned delivery");
            }
            drop(channel);
        });
    }
}

struct AmqpResults {
    shared: Arc<Shared>,
    pattern: String,
    current: Option<(Channel, lapin::Consumer)>,
}

#[async_trait]
impl ResultSource for AmqpResults {
    async fn next(&mut self) -> Option<Result<ResultReady>> {
        loop {
            if self.shared.ensure_open().is_err() {
                return None;
            }
            if self.current.is_none() {
                match self.shared.open_subscription(&self.pattern).await {
                    Ok(current) => {
                        warn!(
                            pattern = %self.pattern,
                            "result subscription renewed; events published meanwhile were missed"
                        );
                        self.current = Some(current);
                    }
                    Err(QueueError::Closed) => return None,
                    Err(e) => return Some(Err(e)),
                }
            }
            let (_channel, consumer) = self.current.as_mut()?;
            match next_message(consumer).await {
                Some(Ok(message)) => match ResultReady::decode(message.data.as_slice()) {
                    Ok(result) => return Some(Ok(result)),
                    Err(e) => warn!(error = %e, "skipping an undecodable result event"),
                },
                Some(Err(_)) | None => self.current = None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact_url("amqp://guest:secret@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(redact_url("amqp://127.0.0.1:5672"), "amqp://127.0.0.1:5672");
        assert_eq!(redact_url("amqps://u:p@h/v@x"), "amqps://u:***@h/v@x");
        let debug = format!("{:?}", AmqpConfig::new("amqp://a:b@h"));
        assert!(!debug.contains(":b@"), "{debug}");
    }

    #[test]
    fn names_follow_the_prefix() {
        let mut config = AmqpConfig::new("amqp://h");
        config.prefix = "t1".into();
        assert_eq!(config.jobs_queue(), "t1.jobs");
        assert_eq!(config.dead_letter_queue(), "t1.jobs.dead");
        assert_eq!(
            config.retry_queue(Duration::from_secs(10)),
            "t1.jobs.retry.10000ms"
        );
        assert_eq!(config.results_exchange(), "t1.results");
        assert!(config.validate().is_ok());
        config.prefix = String::new();
        assert!(config.validate().is_err());
    }
}
