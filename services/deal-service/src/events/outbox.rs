//! The outbox relay: publishes the events written by committed transactions to JetStream,
//! and deletes them once JetStream has stored them.
//!
//! The order that holds is per deal (and per plan): two changes of one deal are made under
//! its row lock, so the later one's outbox row gets a higher id and commits after the
//! earlier; each pass reads the committed rows in id order and publishes them in that
//! order. Across deals there is no global order: a row with a lower id may commit after a
//! higher one that was already published (consumers order by the deal's version, not by
//! position). One relay at a time publishes (a transaction-scoped advisory lock), so
//! several replicas never reorder one deal's events. A crash between publish and delete re-publishes the same message
//! ids: JetStream drops them within its duplicate window, and consumers are idempotent.
//!
//! After a pass that left nothing visible behind, the relay publishes a horizon: the oldest
//! of deal-service's transactions still running just before the pass read the outbox, with
//! the last positions of the deal and plan streams. Every transaction below it had
//! finished, so its events were read and are in the streams up to those positions. A read
//! model that applied both streams that far holds every write whose consistency token is
//! below the horizon (`salesplan_platform::consistency`).

use std::time::Duration;

use prost::Message as _;
use salesplan_platform::{
    bus::{Bus, Outgoing, streams},
    metrics::Metrics,
    telemetry,
};
use salesplan_proto::v1 as pb;
use sqlx::{PgPool, postgres::PgListener};
use tokio_util::sync::CancellationToken;

pub use crate::store::outbox::{BATCH, BATCH_BYTES};
use crate::store::{
    OUTBOX_CHANNEL, StoreError,
    outbox::{OutboxRow, Parked, Pass, backlog as outbox_backlog},
};

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("bus: {0}")]
    Bus(#[from] salesplan_platform::bus::BusError),
}

/// What one pass of the relay did.
#[derive(Debug, Default)]
pub struct Relayed {
    /// Rows published (stored by JetStream) and deleted.
    pub published: usize,
    /// Set when the pass read every visible row and published them all: every transaction
    /// below this id had finished and its events are in the streams.
    pub horizon: Option<i64>,
    /// The newest transaction whose events the pass published.
    pub newest_xid: i64,
    /// Rows the broker refused, moved to `outbox_parked`.
    pub parked: usize,
    /// A passing failure (NATS unreachable, …) that stopped the pass; the rows from the
    /// first one it hit stay in the outbox, in order, for the next pass.
    pub failed: Option<salesplan_platform::bus::BusError>,
}

impl Relayed {
    fn handled(&self) -> usize {
        self.published + self.parked
    }
}

/// How long the relay waits for a notification before it looks anyway.
const IDLE_POLL: Duration = Duration::from_millis(500);

/// How long a stopping relay goes on publishing what is left.
const FINAL_DRAIN: Duration = Duration::from_secs(10);

/// Runs until `shutdown`, then publishes what is left (while it can) and returns.
pub async fn run(pool: PgPool, bus: Bus, shutdown: CancellationToken, metrics: Metrics) {
    let meter = metrics.meter("outbox");
    let published = meter.u64_counter("salesplan.outbox.published").build();
    let parked = meter
        .u64_counter("salesplan.outbox.parked")
        .with_description("Events the broker refused, parked with their reason (OutboxService)")
        .build();
    let backlog = meter
        .u64_gauge("salesplan.outbox.backlog")
        .with_description("Events written but not yet published")
        .build();
    let mut measured = tokio::time::Instant::now();
    let mut wakeup = Wakeup::new(pool.clone()).await;
    // The last wait ended by the idle poll, not a notification.
    let mut quiet = false;
    let mut horizons = Horizons::default();
    loop {
        if measured.elapsed() >= Duration::from_secs(5) {
            measured = tokio::time::Instant::now();
            if let Ok(n) = outbox_backlog(&pool).await {
                backlog.record(n as u64, &[]);
            }
        }
        // A pass waits on the broker (each request bounded by the JetStream timeout, and a
        // cluster electing leaders can make it take them all); a stopping service does not
        // wait for it. A pass cut short leaves its rows in the outbox, published again by
        // the drain below, another replica or the next start (the broker drops what it
        // already has by message id).
        let pass = tokio::select! {
            pass = publish_batch(&pool, &bus) => pass,
            _ = shutdown.cancelled() => break,
        };
        let was_quiet = std::mem::take(&mut quiet);
        let failure = match pass {
            Ok(pass) => {
                // Every commit of an event notifies: events found after a quiet poll
                // interval were not announced, and the listening connection is suspect.
                if was_quiet && pass.handled() > 0 {
                    tracing::warn!("outbox events were not announced, listening again");
                    wakeup.suspect();
                }
                published.add(pass.published as u64, &[]);
                parked.add(pass.parked as u64, &[]);
                tokio::select! {
                    _ = horizons.after(&pass, &bus) => {}
                    _ = shutdown.cancelled() => break,
                }
                match pass.failed {
                    Some(err) => Some(RelayError::from(err)),
                    // More may be waiting (a pass stops at BATCH rows or BATCH_BYTES). A
                    // pass that took every visible row does not look again at once: what
                    // committed since has notified the listener, and the wait returns.
                    None if pass.handled() > 0 && pass.horizon.is_none() => continue,
                    None => None,
                }
            }
            Err(err) => Some(err),
        };
        if let Some(err) = failure {
            tracing::warn!(error = %err, "outbox relay failed, retrying");
            let pause = tokio::time::sleep(Duration::from_secs(1));
            if tokio::select! { _ = pause => false, _ = shutdown.cancelled() => true } {
                break;
            }
            continue;
        }
        // A transaction older than the last one published was still running: look again
        // soon, so the horizon (and reads waiting for it) move on once it ends.
        let poll = if horizons.behind() {
            Duration::from_millis(10)
        } else {
            IDLE_POLL
        };
        match wakeup.wait(&shutdown, poll).await {
            Woke::Shutdown => break,
            woke => quiet = woke == Woke::Polled && poll == IDLE_POLL,
        }
    }
    // Drain: the events of requests that completed during shutdown, for at most half of
    // the default grace; what is left waits in the outbox for another relay.
    let drain = async {
        while let Ok(pass) = publish_batch(&pool, &bus).await {
            if pass.handled() == 0 || pass.failed.is_some() {
                break;
            }
        }
    };
    if tokio::time::timeout(FINAL_DRAIN, drain).await.is_err() {
        tracing::warn!(
            "outbox not drained within {FINAL_DRAIN:?}; another relay publishes the rest"
        );
    }
    tracing::info!("outbox relay stopped");
}

/// Wakes the relay when a transaction that wrote events commits (the outbox insert
/// notifies [`OUTBOX_CHANNEL`]), or after a poll interval.
///
/// A lost listening connection is taken up again, however long the database was away:
/// without it every event would wait for the poll. Notifications sent while nobody
/// listened are gone, so a wait that listens anew returns at once and the pass that
/// follows reads what they announced. A connection that died without a word (a partition:
/// no FIN, no RST) looks alive; the relay notices it when a pass after a quiet poll
/// interval finds events nobody announced, and listens on a new one
/// ([`Wakeup::suspect`]).
pub struct Wakeup {
    pool: PgPool,
    listener: Option<PgListener>,
}

/// What ended a wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Woke {
    /// A transaction that wrote events committed.
    Notified,
    /// Listening (again) since this wait: what was announced meanwhile is lost, look now.
    Listening,
    /// The poll interval passed.
    Polled,
    Shutdown,
}

impl Wakeup {
    /// Listens now if the database lets it (else at the first wait).
    pub async fn new(pool: PgPool) -> Self {
        let listener = listen(&pool).await;
        Self { pool, listener }
    }

    /// Whether a notification would wake the next wait.
    pub fn listening(&self) -> bool {
        self.listener.is_some()
    }

    /// The listener missed a notification (a poll found events): the next wait listens
    /// on a new connection.
    pub fn suspect(&mut self) {
        self.listener = None;
    }

    /// Waits for a notification, the poll interval, or shutdown.
    pub async fn wait(&mut self, shutdown: &CancellationToken, poll: Duration) -> Woke {
        if self.listener.is_none() {
            // Not raced against a short poll: a connection given up half-open costs the
            // database a backend for nothing. Bounded by the pool's acquire timeout.
            tokio::select! {
                listener = listen(&self.pool) => self.listener = listener,
                _ = shutdown.cancelled() => return Woke::Shutdown,
            }
            if self.listener.is_some() {
                return Woke::Listening;
            }
        }
        tokio::select! {
            woke = self.notified() => woke,
            _ = tokio::time::sleep(poll) => Woke::Polled,
            _ = shutdown.cancelled() => Woke::Shutdown,
        }
    }

    /// Never ends without a listener: the poll does.
    async fn notified(&mut self) -> Woke {
        let Some(listener) = self.listener.as_mut() else {
            return std::future::pending().await;
        };
        match listener.try_recv().await {
            Ok(Some(_)) => Woke::Notified,
            // The connection was lost and sqlx listens on a new one (its eager reconnect):
            // what was announced in between is lost.
            Ok(None) => Woke::Listening,
            Err(err) => {
                tracing::warn!(error = %err, "outbox listener lost, listening again");
                self.listener = None;
                std::future::pending().await
            }
        }
    }
}

async fn listen(pool: &PgPool) -> Option<PgListener> {
    let mut listener = PgListener::connect_with(pool).await.ok()?;
    listener.listen(OUTBOX_CHANNEL).await.ok()?;
    Some(listener)
}

/// The horizons the relay has published.
#[derive(Debug, Default)]
struct Horizons {
    published: i64,
    /// The newest transaction whose events were published.
    newest_xid: i64,
    /// The last attempt to publish one failed (the broker is electing a stream leader, or
    /// away): the relay then looks again at its normal pace, not every 10 ms.
    failing: bool,
}

impl Horizons {
    /// Publishes the pass's horizon when it moved on (a failure is retried after the next
    /// pass).
    async fn after(&mut self, pass: &Relayed, bus: &Bus) {
        self.newest_xid = self.newest_xid.max(pass.newest_xid);
        let Some(horizon) = pass.horizon.filter(|h| *h > self.published) else {
            return;
        };
        // Read after the pass: another replica's relay may have published since this one
        // last did (the lock is per pass), so only the streams' ends now cover everything.
        let published = match Positions::of_streams(bus).await {
            Ok(positions) => publish_horizon(bus, horizon, positions).await,
            Err(err) => Err(err),
        };
        match published {
            Ok(()) => {
                self.published = horizon;
                self.failing = false;
            }
            Err(err) => {
                if !self.failing {
                    tracing::warn!(error = %err, "cannot publish the outbox horizon, retrying");
                }
                self.failing = true;
            }
        }
    }

    /// Whether some published event is not below the published horizon yet (and the
    /// broker took the last horizon: while it refuses them, there is no hurry).
    fn behind(&self) -> bool {
        !self.failing && self.newest_xid > 0 && self.published <= self.newest_xid
    }
}

/// Positions in the deal and plan streams.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Positions {
    pub deals: u64,
    pub plans: u64,
}

impl Positions {
    async fn of_streams(bus: &Bus) -> Result<Self, salesplan_platform::bus::BusError> {
        Ok(Self {
            deals: bus.last_sequence(&streams::DEALS).await?,
            plans: bus.last_sequence(&streams::PLANS).await?,
        })
    }
}

/// Publishes `horizon` with the positions every event published so far is at or before.
async fn publish_horizon(
    bus: &Bus,
    horizon: i64,
    Positions {
        deals: deals_sequence,
        plans: plans_sequence,
    }: Positions,
) -> Result<(), salesplan_platform::bus::BusError> {
    let payload = pb::Horizon {
        xid_horizon: horizon,
        published_at: Some(salesplan_proto::time::now()),
        deals_sequence,
        plans_sequence,
    }
    .encode_to_vec();
    bus.publish(Outgoing::new(
        streams::HORIZON_SUBJECT.to_owned(),
        format!("horizon-{horizon}"),
        payload,
    ))
    .await?;
    Ok(())
}

/// Publishes up to [`BATCH`] committed events in id order. An event the broker refuses is parked with
/// its reason and the pass goes on; a passing failure stops the pass at that event.
pub async fn publish_batch(pool: &PgPool, bus: &Bus) -> Result<Relayed, RelayError> {
    let Some(mut pass) = Pass::begin(pool).await? else {
        return Ok(Relayed::default());
    };
    let horizon = pass.running_horizon().await?;
    let (rows, drained) = pass.rows().await?;
    if rows.is_empty() {
        // Nothing to publish: everything below the horizon is in the streams already.
        return Ok(Relayed {
            horizon: Some(horizon),
            ..Relayed::default()
        });
    }
    let batch = Batch::of(rows);
    let mut relayed = Relayed::default();
    let mut done = Vec::with_capacity(batch.ids.len());
    let mut parked: Vec<Parked> = Vec::new();
    let results = bus.publish_each(batch.messages).await;
    for (((id, account_id), span), result) in batch
        .ids
        .into_iter()
        .zip(batch.accounts)
        .zip(batch.spans)
        .zip(results)
    {
        if let Err(err) = &result {
            telemetry::fail(&span, &err.to_string());
        }
        match result {
            Ok(_) => done.push(id),
            Err(err) if err.is_refused() => {
                tracing::error!(outbox_id = id, %account_id, error = %err, "event refused by the broker, parked");
                parked.push(Parked {
                    id,
                    account_id,
                    reason: err.to_string(),
                });
                done.push(id);
            }
            Err(err) => {
                relayed.failed = Some(err);
                break;
            }
        }
    }
    pass.finish(&done, &parked).await?;
    relayed.parked = parked.len();
    relayed.published = done.len() - relayed.parked;
    relayed.newest_xid = batch.newest_xid;
    relayed.horizon = (drained && relayed.failed.is_none()).then_some(horizon);
    Ok(relayed)
}

/// A pass's rows as messages, with their ids, accounts and the newest writing transaction.
struct Batch {
    ids: Vec<i64>,
    accounts: Vec<String>,
    /// Each event's relay span (none for an event in no trace), ended once the broker
    /// answered for it.
    spans: Vec<tracing::Span>,
    messages: Vec<Outgoing>,
    newest_xid: i64,
}

impl Batch {
    fn of(rows: Vec<OutboxRow>) -> Self {
        let mut batch = Batch {
            ids: Vec::with_capacity(rows.len()),
            accounts: Vec::with_capacity(rows.len()),
            spans: Vec::with_capacity(rows.len()),
            messages: Vec::with_capacity(rows.len()),
            newest_xid: 0,
        };
        for row in rows {
            batch.ids.push(row.id);
            batch.newest_xid = batch.newest_xid.max(row.xid);
            let mut message = Outgoing::new(row.subject, row.message_id, row.payload);
            // The writing transaction: a watch started from a snapshot of the database
            // tells by it whether the snapshot holds the change already.
            message
                .headers
                .insert(streams::XID_HEADER, row.xid.to_string().as_str());
            let account = streams::account_of(&message.subject).unwrap_or_default();
            batch.accounts.push(account.to_owned());
            // The relay's own span, child of the change that wrote the event, until the
            // broker has it; the event then carries the relay span as its parent. An event
            // written in no trace (a batch change's) is relayed in none.
            let parent = telemetry::extract_from_pairs(&row.headers);
            if !telemetry::has_trace(&parent) {
                batch.spans.push(tracing::Span::none());
                batch.messages.push(message);
                continue;
            }
            let span = tracing::info_span!(
                "outbox.relay",
                otel.name = "outbox.relay",
                otel.kind = "producer",
                messaging.system = "nats",
                messaging.operation.type = "send",
                messaging.destination.name = %message.subject,
                salesplan.account_id = account,
                trace_id = tracing::field::Empty,
                span_id = tracing::field::Empty,
                otel.status_code = tracing::field::Empty,
                otel.status_description = tracing::field::Empty,
            );
            telemetry::set_parent(&span, parent);
            span.in_scope(|| telemetry::inject_into_nats(&mut message.headers));
            batch.spans.push(span);
            batch.messages.push(message);
        }
        batch
    }
}
