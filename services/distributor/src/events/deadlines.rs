//! Response deadlines running out: each deal whose manager did not accept it in time goes
//! to the next manager by its plan's strategy (or waits for a person), made in deal-service
//! with AssignDeal at the deal's version: once per deadline, whichever replica makes it,
//! across restarts (the timers are durable and leased; see `store/deadlines.rs`).

use std::{sync::Arc, time::Duration};

use prost::Message as _;
use salesplan_proto::v1 as pb;
use tokio_util::sync::CancellationToken;

use crate::{
    domain::{
        self,
        batch::Decided,
        distribution::{Cursor, Lead},
    },
    events::leased::{self, LeasedWork, Slots},
    store::{Expiring, ExpiryKnown, Held, Reassignment, Store, StoreError, Timer},
    upstream::{DealService, OrderAnswer},
};

/// Timers in hand at once (each a call to deal-service), at most two of one account; the
/// timers are looked at every second: a deadline is acted on within a second of running
/// out (while a slot is free).
const SLOTS: Slots = Slots {
    calls: 4,
    per_account: 2,
    poll: Duration::from_secs(1),
};
/// A refused reassignment is decided again after this (the deal's event moves or ends its
/// timer meanwhile).
const AFTER_REFUSAL: time::Duration = time::Duration::seconds(2);

pub struct Deadlines {
    store: Store,
    upstream: DealService,
    /// How long a timer in hand is this process's (`SALESPLAN_DEADLINE_LEASE_SECONDS`).
    lease: time::Duration,
    reassigned: opentelemetry::metrics::Counter<u64>,
}

impl Deadlines {
    pub fn new(
        store: Store,
        upstream: DealService,
        lease: std::time::Duration,
        metrics: &salesplan_platform::metrics::Metrics,
    ) -> Arc<Self> {
        let meter = metrics.meter("distributor");
        Arc::new(Self {
            store,
            upstream,
            lease: time::Duration::try_from(lease).unwrap_or(time::Duration::seconds(90)),
            reassigned: meter
                .u64_counter("salesplan.distributor.deadlines_missed")
                .with_description(
                    "Deals not accepted within their plan's response deadline, by outcome \
                     (reassigned, escalated to a person)",
                )
                .build(),
        })
    }

    /// Acts on the timers that ran out, until `stop`.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        leased::run(self, SLOTS, None, stop).await;
    }

    /// Decides (or takes the kept decision of) one timer that ran out, makes it, and
    /// records how it ended.
    async fn expire(&self, timer: &Timer) -> Result<(), StoreError> {
        let reassignment = match self.store.open_expiry(timer).await? {
            Expiring::Dropped | Expiring::Lost => return Ok(()),
            Expiring::Decided(kept) => kept,
            Expiring::Open(opened, known) => {
                let mut cursor = known.cursor.clone();
                let reassignment = decide(timer, &known, &mut cursor);
                opened.save(timer, &reassignment, &cursor).await?;
                reassignment
            }
        };
        match self.upstream.reassign(timer, &reassignment).await {
            OrderAnswer::Made => {
                let outcome = if reassignment.manager.is_some() {
                    "reassigned"
                } else {
                    "escalated"
                };
                self.reassigned
                    .add(1, &[opentelemetry::KeyValue::new("outcome", outcome)]);
                tracing::info!(deal_id = %timer.deal_id, note = %reassignment.note, "response deadline missed");
                self.store.expiry_made(timer, &reassignment).await
            }
            OrderAnswer::Refused(reason) => {
                tracing::info!(deal_id = %timer.deal_id, %reason, "reassignment refused");
                self.store.expiry_refused(timer, AFTER_REFUSAL).await
            }
            OrderAnswer::Gone(_) => self.store.drop_timer(timer).await,
            OrderAnswer::Ended(reason) => {
                tracing::info!(deal_id = %timer.deal_id, %reason, "response deadline ended");
                self.store.expiry_ended(timer).await
            }
            OrderAnswer::Later(reason) => {
                tracing::warn!(deal_id = %timer.deal_id, %reason, "reassignment not made now");
                let backoff = leased::backoff(timer.attempts);
                self.store.expiry_later(timer, backoff).await
            }
        }
    }
}

impl LeasedWork for Deadlines {
    type Item = Timer;
    const WHAT: &'static str = "response deadlines";

    fn account(timer: &Timer) -> &str {
        &timer.account_id
    }

    async fn lease(
        &self,
        limit: usize,
        per_account: usize,
        held: &Held,
    ) -> Result<Vec<Timer>, StoreError> {
        self.store
            .lease_timers((limit, per_account), held, self.lease)
            .await
    }

    async fn work(&self, timer: &Timer) {
        if let Err(err) = self.expire(timer).await {
            tracing::warn!(deal_id = %timer.deal_id, error = %err, "response deadline kept");
        }
    }
}

/// The decision for a timer that ran out, with its explanation.
fn decide(timer: &Timer, known: &ExpiryKnown, cursor: &mut Cursor) -> Reassignment {
    let mut open = known.open.clone();
    let expiry = domain::deadline::expire(
        &known.settings,
        known.response,
        &known.chain,
        cursor,
        &mut open,
        &known.away,
        rand::random(),
    );
    let decided = Decided {
        intake_id: known.decision_key,
        lead: Lead::default(),
        decision: expiry.decision,
    };
    let at = time::OffsetDateTime::now_utc();
    let mut record = super::intake::record(
        &timer.account_id,
        (timer.plan_id, known.plan_version),
        &known.settings,
        &decided,
        at,
    );
    record.deal_id = timer.deal_id.to_string();
    record.missed_deadlines = known
        .chain
        .iter()
        .map(|m| pb::MissedDeadline {
            manager_id: m.manager_id.clone(),
            assigned_at: Some(salesplan_proto::time::timestamp(m.assigned_at)),
            due_at: Some(salesplan_proto::time::timestamp(m.due_at)),
        })
        .collect();
    Reassignment {
        manager: expiry.manager,
        note: expiry.note,
        record: record.encode_to_vec(),
        key: known.decision_key,
    }
}
