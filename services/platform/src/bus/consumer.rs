//! The batch consumer loop every service uses: fetch up to N messages, hand them to the
//! handler as one batch, then ack each only after the handler has committed its work.
//! A message that keeps failing goes to the dead-letter stream and never blocks the rest.

use std::{future::Future, sync::Arc, time::Duration};

use async_nats::{
    HeaderMap,
    jetstream::{
        AckKind, Message,
        consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull},
    },
};
use bytes::Bytes;
use futures::StreamExt;
use opentelemetry::KeyValue;
use tokio_util::sync::CancellationToken;

use super::{Bus, BusError, Outgoing, streams};

/// A durable pull consumer on one stream.
#[derive(Debug, Clone)]
pub struct ConsumerSpec {
    pub stream: &'static str,
    /// Shared by all replicas of a service: they split the messages between them.
    pub durable: String,
    pub filter_subject: String,
    /// How long a delivered message may stay unacked before it is delivered again.
    pub ack_wait: Duration,
    /// Removes the consumer after this long without a client: for per-process consumers
    /// (every replica reading every message), which would otherwise pile up.
    pub inactive_threshold: Option<Duration>,
    /// Batches handled at once. More than one only where the handler orders concurrent
    /// batches itself (row locks): the next batch's reads then overlap this one's commits.
    pub concurrency: usize,
}

impl ConsumerSpec {
    pub fn new(stream: &streams::StreamSpec, durable: &str) -> Self {
        Self {
            stream: stream.name,
            durable: durable.to_owned(),
            filter_subject: stream.subjects.to_owned(),
            ack_wait: Duration::from_secs(30),
            inactive_threshold: None,
            concurrency: 1,
        }
    }

    pub fn with_concurrency(self, concurrency: usize) -> Self {
        Self {
            concurrency: concurrency.max(1),
            ..self
        }
    }

    /// A consumer of this process alone: it reads the whole stream, and is removed an hour
    /// after the process is gone.
    pub fn per_process(stream: &streams::StreamSpec, prefix: &str) -> Self {
        Self {
            inactive_threshold: Some(Duration::from_secs(3600)),
            ..Self::new(
                stream,
                &format!("{prefix}-{}", uuid::Uuid::new_v4().simple()),
            )
        }
    }
}

/// One received message, as the handler sees it.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub subject: String,
    pub payload: Bytes,
    pub headers: Option<HeaderMap>,
    /// 1 on the first delivery.
    pub delivered: i64,
    pub stream_sequence: u64,
}

impl Delivery {
    /// Refuses an event whose payload names another account than its subject does. The
    /// broker's permissions are per subject, so a publisher allowed one account's subjects
    /// (or a forged message) must not make a consumer write into another account.
    pub fn check_account(&self, account_id: &str) -> Result<(), String> {
        match super::streams::account_of(&self.subject) {
            Some(on_subject) if on_subject == account_id => Ok(()),
            Some(on_subject) => Err(format!(
                "event of account {:?} on a subject of account {on_subject:?}",
                account_id.chars().take(64).collect::<String>()
            )),
            None => Err("event on a subject without an account".into()),
        }
    }

    /// A span for handling this message, child of the trace that published it; none for
    /// a message that carries no trace context (the leads of a bulk add, an event of a
    /// batch change): work nobody traced starts no trace of its own.
    pub fn span(&self, name: &'static str) -> tracing::Span {
        let parent = crate::telemetry::extract_from_nats(self.headers.as_ref());
        if !crate::telemetry::has_trace(&parent) {
            return tracing::Span::none();
        }
        self.new_span(name, parent)
    }

    /// A span saying the message ended in error, and why: in the message's trace, or in a
    /// trace of its own when it carries none (an error is always worth one).
    pub fn error_span(&self, name: &'static str, reason: &str) -> tracing::Span {
        let parent = crate::telemetry::extract_from_nats(self.headers.as_ref());
        let span = self.new_span(name, parent);
        crate::telemetry::fail(&span, reason);
        span
    }

    fn new_span(&self, name: &'static str, parent: opentelemetry::Context) -> tracing::Span {
        let span = tracing::info_span!(
            "consume",
            otel.name = name,
            otel.kind = "consumer",
            messaging.system = "nats",
            messaging.operation.type = "process",
            messaging.destination.name = %self.subject,
            salesplan.account_id = super::streams::account_of(&self.subject).unwrap_or_default(),
            salesplan.plan_id = tracing::field::Empty,
            salesplan.intake_id = tracing::field::Empty,
            trace_id = tracing::field::Empty,
            span_id = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
            otel.status_description = tracing::field::Empty,
        );
        crate::telemetry::set_parent(&span, parent);
        span
    }
}

/// A consumer's counters, shared by its batches in flight.
pub(super) struct Counters {
    /// Messages handled and acknowledged (applied, or found applied before): what this
    /// process took of its consumer's work.
    handled: opentelemetry::metrics::Counter<u64>,
    dead_letters: opentelemetry::metrics::Counter<u64>,
    redeliveries: opentelemetry::metrics::Counter<u64>,
    attrs: Vec<KeyValue>,
}

impl Counters {
    /// The counters of the consumers named `consumer` (the label of their samples).
    pub(super) fn new(consumer: &str, metrics: &crate::metrics::Metrics) -> Self {
        let meter = metrics.meter("consumer");
        Self {
            handled: meter.u64_counter("salesplan.consumer.handled").build(),
            dead_letters: meter.u64_counter("salesplan.consumer.dead_letters").build(),
            redeliveries: meter.u64_counter("salesplan.consumer.redeliveries").build(),
            attrs: vec![KeyValue::new("consumer", consumer.to_owned())],
        }
    }
}

/// What became of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Committed (or already applied before): ack.
    Done,
    /// A passing failure: deliver again later, up to the configured number of deliveries.
    Retry(String),
    /// Can never succeed (undecodable, invalid): straight to the dead-letter stream.
    Reject(String),
}

/// Ends each message's span (`spans[i]` for `batch[i]`) with its outcome: a message
/// refused or to be delivered again ends its span in error, with the reason.
pub fn end_spans(spans: Vec<tracing::Span>, outcomes: &[Outcome]) {
    for (span, outcome) in spans.into_iter().zip(outcomes) {
        match outcome {
            Outcome::Done => {}
            Outcome::Retry(reason) => {
                crate::telemetry::fail(&span, &format!("delivered again: {reason}"))
            }
            Outcome::Reject(reason) => crate::telemetry::fail(&span, reason),
        }
    }
}

/// Applies `items` (each with its delivery's index) in one call; when the database refuses
/// the data of that call, each item alone, so the one it refuses is rejected (dead-lettered
/// with its reason) and the others — possibly other accounts' — are applied. Any other
/// failure retries them all.
pub async fn apply_each_on_refusal<T, E, Fut>(
    outcomes: &mut [Outcome],
    items: Vec<(usize, T)>,
    apply: impl Fn(Vec<T>) -> Fut,
    refusal: impl Fn(&E) -> Option<String>,
) where
    T: Clone,
    E: std::fmt::Display,
    Fut: Future<Output = Result<(), E>>,
{
    let all = items.iter().map(|(_, item)| item.clone()).collect();
    let err = match apply(all).await {
        Ok(()) => return,
        Err(err) => err,
    };
    if refusal(&err).is_none() {
        tracing::warn!(error = %err, "cannot apply a batch, retrying it");
        for (index, _) in &items {
            outcomes[*index] = Outcome::Retry(err.to_string());
        }
        return;
    }
    tracing::warn!(error = %err, "the database refused a batch, applying it item by item");
    for (index, item) in items {
        outcomes[index] = match apply(vec![item]).await {
            Ok(()) => Outcome::Done,
            Err(err) if refusal(&err).is_some() => {
                Outcome::Reject(format!("refused by the database: {err}"))
            }
            Err(err) => Outcome::Retry(err.to_string()),
        };
    }
}

/// A consumer's processing step. `handle` returns one outcome per delivery, in order.
pub trait BatchHandler: Send + Sync + 'static {
    fn handle(&self, batch: &[Delivery]) -> impl Future<Output = Vec<Outcome>> + Send;
}

/// Creates the durable consumer if needed (retrying while JetStream is unreachable), then
/// runs until `shutdown`: the batch in hand is finished and acked before it returns.
pub async fn run_consumer<H: BatchHandler>(
    bus: Bus,
    spec: ConsumerSpec,
    handler: Arc<H>,
    shutdown: CancellationToken,
    metrics: crate::metrics::Metrics,
) {
    let Some(consumer) = durable_consumer_retrying(&bus, &spec, &shutdown).await else {
        return;
    };
    let counters = Arc::new(Counters::new(&spec.durable, &metrics));
    let spec = Arc::new(spec);
    let pending = metrics
        .meter("consumer")
        .u64_gauge("salesplan.consumer.pending")
        .with_description("Messages of the stream not yet delivered to the consumer (its lag)")
        .build();
    while !shutdown.is_cancelled() {
        let pull = consumer
            .stream()
            .max_messages_per_batch(bus.config().batch_size)
            .heartbeat(Duration::from_secs(5))
            .expires(Duration::from_secs(30))
            .messages();
        // Starting a pull waits on the broker; a stopping service does not.
        let messages = tokio::select! {
            messages = pull => messages,
            _ = shutdown.cancelled() => break,
        };
        let mut messages = match messages {
            Ok(messages) => messages,
            Err(err) => {
                tracing::warn!(consumer = %spec.durable, error = %err, "cannot pull, retrying");
                pause(&shutdown, Duration::from_secs(1)).await;
                continue;
            }
        };
        // Spawned, so batches in flight progress while the next one fills.
        let mut in_flight = tokio::task::JoinSet::new();
        let mut ended = false;
        while !ended {
            // Only the wait for new messages races the shutdown; a batch being handled
            // always completes and is acked.
            let first = tokio::select! {
                Some(done) = in_flight.join_next(), if !in_flight.is_empty() => {
                    log_panic(&spec, done);
                    continue;
                }
                item = messages.next(), if in_flight.len() < spec.concurrency => item,
                _ = shutdown.cancelled() => None,
            };
            let Some(first) = first else { break };
            let received;
            (received, ended) = fill_batch(&bus, &spec, &mut messages, first).await;
            if let Some(info) = received.last().and_then(|m| m.info().ok()) {
                pending.record(info.pending, &counters.attrs);
            }
            if received.is_empty() {
                continue;
            }
            let (bus, spec, handler, counters) =
                (bus.clone(), spec.clone(), handler.clone(), counters.clone());
            in_flight.spawn(async move {
                process(&bus, &spec, &*handler, received, &counters).await;
            });
        }
        while let Some(done) = in_flight.join_next().await {
            log_panic(&spec, done);
        }
    }
    tracing::info!(consumer = %spec.durable, "consumer stopped");
}

/// The durable consumer, created if needed, retried each second while JetStream cannot be
/// reached; `None` once `shutdown` is cancelled.
async fn durable_consumer_retrying(
    bus: &Bus,
    spec: &ConsumerSpec,
    shutdown: &CancellationToken,
) -> Option<PullConsumer> {
    loop {
        match durable_consumer(bus, spec).await {
            Ok(consumer) => return Some(consumer),
            Err(err) => {
                tracing::warn!(consumer = %spec.durable, error = %err, "cannot create consumer, retrying");
                pause(shutdown, Duration::from_secs(1)).await;
                if shutdown.is_cancelled() {
                    return None;
                }
            }
        }
    }
}

/// A batch: `first` and what else arrives within the batch wait, up to the batch size;
/// and whether the pull ended meanwhile. Pull statuses are not messages and are dropped.
async fn fill_batch(
    bus: &Bus,
    spec: &ConsumerSpec,
    messages: &mut pull::Stream,
    first: Result<Message, pull::MessagesError>,
) -> (Vec<Message>, bool) {
    let batch_size = bus.config().batch_size;
    let mut items = vec![first];
    let mut ended = false;
    let filled = tokio::time::sleep(bus.config().batch_wait);
    tokio::pin!(filled);
    while items.len() < batch_size {
        tokio::select! {
            biased;
            item = messages.next() => match item {
                Some(item) => items.push(item),
                None => {
                    ended = true;
                    break;
                }
            },
            _ = &mut filled => break,
        }
    }
    let mut received = Vec::with_capacity(items.len());
    for item in items {
        match item {
            Ok(message) => received.push(message),
            Err(err) => {
                tracing::debug!(consumer = %spec.durable, error = %err, "pull status")
            }
        }
    }
    (received, ended)
}

/// A batch whose handler panicked stays unacked: it is delivered again after `ack_wait`
/// and dead-lettered once it has failed `max_deliver` times.
pub(super) fn log_panic(spec: &ConsumerSpec, done: Result<(), tokio::task::JoinError>) {
    if let Err(err) = done {
        tracing::error!(consumer = %spec.durable, error = %err, "batch handler failed");
    }
}

pub(super) async fn durable_consumer(
    bus: &Bus,
    spec: &ConsumerSpec,
) -> Result<PullConsumer, BusError> {
    let stream = bus
        .jetstream()
        .get_stream(spec.stream)
        .await
        .map_err(|e| BusError::jetstream("get stream", e))?;
    stream
        .get_or_create_consumer(
            &spec.durable,
            pull::Config {
                durable_name: Some(spec.durable.clone()),
                filter_subject: spec.filter_subject.clone(),
                deliver_policy: DeliverPolicy::All,
                ack_policy: AckPolicy::Explicit,
                ack_wait: spec.ack_wait,
                // Dead-lettering is ours (see `process`), so the server never gives up.
                max_deliver: -1,
                max_ack_pending: 20_000,
                inactive_threshold: spec.inactive_threshold.unwrap_or_default(),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| BusError::jetstream("create consumer", e))
}

pub(super) async fn process<H: BatchHandler>(
    bus: &Bus,
    spec: &ConsumerSpec,
    handler: &H,
    messages: Vec<Message>,
    counters: &Counters,
) {
    let max_deliver = bus.config().max_deliver;
    let mut work = Vec::with_capacity(messages.len());
    let mut work_messages = Vec::with_capacity(messages.len());
    for message in messages {
        let delivery = Delivery::from(&message);
        if delivery.delivered > 1 {
            counters.redeliveries.add(1, &counters.attrs);
        }
        // Beyond the limit before it is even handled: a message that crashed the process.
        if delivery.delivered > max_deliver {
            let reason = format!("delivered {} times without success", delivery.delivered);
            dead_letter(bus, spec, &message, &delivery, &reason, counters).await;
            continue;
        }
        work.push(delivery);
        work_messages.push(message);
    }
    let mut outcomes = if work.is_empty() {
        Vec::new().into_iter()
    } else {
        handler.handle(&work).await.into_iter()
    };
    for (message, delivery) in work_messages.iter().zip(&work) {
        let outcome = outcomes
            .next()
            .unwrap_or_else(|| Outcome::Retry("handler returned no outcome".into()));
        match outcome {
            Outcome::Done => {
                if ack(message, AckKind::Ack).await {
                    counters.handled.add(1, &counters.attrs);
                }
            }
            Outcome::Retry(reason) if delivery.delivered >= max_deliver => {
                dead_letter(bus, spec, message, delivery, &reason, counters).await;
            }
            Outcome::Retry(reason) => {
                tracing::debug!(consumer = %spec.durable, subject = %delivery.subject, delivered = delivery.delivered, %reason, "retrying");
                ack(message, AckKind::Nak(Some(backoff(delivery.delivered)))).await;
            }
            Outcome::Reject(reason) => {
                dead_letter(bus, spec, message, delivery, &reason, counters).await;
            }
        }
    }
}

impl From<&Message> for Delivery {
    fn from(message: &Message) -> Self {
        let (delivered, stream_sequence) = message
            .info()
            .map(|info| (info.delivered, info.stream_sequence))
            .unwrap_or((1, 0));
        Delivery {
            subject: message.subject.to_string(),
            payload: message.payload.clone(),
            headers: message.headers.clone(),
            delivered,
            stream_sequence,
        }
    }
}

/// 250 ms after the first failure, doubling up to 30 s.
fn backoff(delivered: i64) -> Duration {
    let exp = delivered.clamp(1, 8) as u32 - 1;
    Duration::from_millis(250 * 2u64.pow(exp)).min(Duration::from_secs(30))
}

/// Whether the acknowledgement reached the broker.
async fn ack(message: &Message, kind: AckKind) -> bool {
    match message.ack_with(kind).await {
        Ok(()) => true,
        Err(err) => {
            // Not acked means delivered again later; consumers are idempotent.
            tracing::warn!(error = %err, subject = %message.subject, "ack failed");
            false
        }
    }
}

/// Copies the message to the dead letters and terminates it; when the copy fails, the
/// message is delivered again later.
async fn dead_letter(
    bus: &Bus,
    spec: &ConsumerSpec,
    message: &Message,
    delivery: &Delivery,
    reason: &str,
    counters: &Counters,
) {
    // In the message's trace (the lead's, for an intake event): a span that says it ended
    // here, and why.
    let span = delivery.error_span("dead-letter", reason);
    span.in_scope(|| {
        tracing::error!(consumer = %spec.durable, subject = %delivery.subject, delivered = delivery.delivered, %reason, "dead-lettering message");
    });
    // One dead letter per consumer and message: two consumers refusing the same event
    // (the distributor's and reporting's) must not be taken for one repeated publish.
    let mut out = Outgoing::new(
        streams::dead_letter_subject(&spec.durable, &delivery.subject),
        format!(
            "{}:{}:{}",
            spec.durable, spec.stream, delivery.stream_sequence
        ),
        delivery.payload.clone(),
    );
    out.headers
        .insert(HEADER_ORIGINAL_SUBJECT, delivery.subject.as_str());
    out.headers
        .insert(HEADER_REASON, reason_header(reason).as_str());
    out.headers
        .insert(HEADER_DELIVERED, delivery.delivered.to_string().as_str());
    match bus.publish(out).await {
        Ok(_) => {
            counters.dead_letters.add(1, &counters.attrs);
            ack(message, AckKind::Term).await;
        }
        // Not stored as a dead letter: leave it to be delivered again rather than lose it.
        Err(err) => {
            tracing::error!(error = %err, "dead-letter publish failed");
            ack(message, AckKind::Nak(Some(Duration::from_secs(5)))).await;
        }
    }
}

/// Header names on dead letters.
pub const HEADER_ORIGINAL_SUBJECT: &str = "Salesplan-Original-Subject";
pub const HEADER_REASON: &str = "Salesplan-Reason";
pub const HEADER_DELIVERED: &str = "Salesplan-Delivered";

/// Header values are one line of printable text.
fn reason_header(reason: &str) -> String {
    reason
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(500)
        .collect()
}

pub(super) async fn pause(shutdown: &CancellationToken, duration: Duration) {
    tokio::select! {
        _ = tokio::time::sleep(duration) => {}
        _ = shutdown.cancelled() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the fake database answers: a refusal of the data, or a lost connection.
    #[derive(Debug)]
    struct Failed(&'static str);

    impl std::fmt::Display for Failed {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    /// 666 is refused as data; 500 fails as a lost connection would; the rest apply.
    async fn apply(items: Vec<u32>) -> Result<(), Failed> {
        if items.contains(&666) {
            return Err(Failed("refused: 23514"));
        }
        if items.contains(&500) {
            return Err(Failed("connection lost"));
        }
        Ok(())
    }

    fn refusal(err: &Failed) -> Option<String> {
        err.0.starts_with("refused").then(|| err.0.to_owned())
    }

    async fn outcomes_of(items: &[u32]) -> Vec<Outcome> {
        let mut outcomes = vec![Outcome::Done; items.len()];
        let indexed = items.iter().copied().enumerate().collect();
        apply_each_on_refusal(&mut outcomes, indexed, apply, refusal).await;
        outcomes
    }

    #[tokio::test]
    async fn an_item_the_database_refuses_fails_alone_and_passing_failures_retry_all() {
        assert_eq!(outcomes_of(&[1, 2]).await, [Outcome::Done, Outcome::Done]);
        let refused = outcomes_of(&[1, 666, 2]).await;
        assert_eq!(refused[0], Outcome::Done);
        assert!(matches!(&refused[1], Outcome::Reject(r) if r.contains("23514")));
        assert_eq!(refused[2], Outcome::Done);
        let lost = outcomes_of(&[1, 500]).await;
        assert!(
            lost.iter().all(|o| matches!(o, Outcome::Retry(_))),
            "{lost:?}"
        );
        // Refused as a batch, then one item fails for a passing reason: only it retries.
        let mixed = outcomes_of(&[666, 500, 3]).await;
        assert!(matches!(mixed[0], Outcome::Reject(_)));
        assert!(matches!(mixed[1], Outcome::Retry(_)));
        assert_eq!(mixed[2], Outcome::Done);
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert_eq!(backoff(1), Duration::from_millis(250));
        assert_eq!(backoff(2), Duration::from_millis(500));
        assert_eq!(backoff(100), Duration::from_secs(30));
        assert!(backoff(0) > Duration::ZERO);
    }

    #[test]
    fn reasons_are_header_safe() {
        assert_eq!(reason_header("bad\r\npayload"), "bad  payload");
        assert_eq!(reason_header(&"x".repeat(900)).len(), 500);
    }
}
