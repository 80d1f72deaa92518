//! The plans' waiting queues: a waiting deal is decided as soon as a member can take it
//! (after the deal events and plan changes that free a place, and every few seconds for
//! every plan with a queue), and the decision is made in deal-service by a relay of
//! durable orders: each made once, whichever replica makes it, across restarts.

use std::{sync::Arc, time::Duration};

use prost::Message as _;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    domain::{
        self,
        batch::Decided,
        deal_view::DealState,
        distribution::{Decision, Lead},
        queue::Waiting,
    },
    events::leased::{self, LeasedWork, Slots},
    store::{Held, Order, Store, StoreError},
    upstream::{DealService, OrderAnswer},
};

/// Waiting deals of one plan decided in one transaction (one round).
const DRAIN_BATCH: i64 = 100;
/// Rounds of one drain by the sweep; a drain after events takes one round, so the shared
/// consumers of deal and plan events spend little on any one plan (the sweep goes on).
const SWEEP_ROUNDS: usize = 10;
/// Plans of one sweep, those swept longest ago first.
const SWEEP_PLANS: i64 = 1_000;
/// Every plan with a queue is looked at this often (a place freed by a deal event this
/// replica did not apply, a refused order restored, a sweep of a replica that died).
const SWEEP_EVERY: Duration = Duration::from_secs(5);
/// Orders in hand at once (each a call to deal-service), at most two of one account; the
/// relay looks for orders of other replicas every second when nobody wakes it.
const RELAY_SLOTS: Slots = Slots {
    calls: 4,
    per_account: 2,
    poll: Duration::from_secs(1),
};
/// How long an order in hand is this process's; another takes it after that: longer than
/// a call can take (at most 30 s), with room.
const LEASE: time::Duration = time::Duration::seconds(90);

pub struct Queue {
    store: Store,
    upstream: DealService,
    /// Woken when this process recorded orders.
    wake: Notify,
    assigned: opentelemetry::metrics::Counter<u64>,
    refused: opentelemetry::metrics::Counter<u64>,
}

impl Queue {
    pub fn new(
        store: Store,
        upstream: DealService,
        metrics: &salesplan_platform::metrics::Metrics,
    ) -> Arc<Self> {
        let meter = metrics.meter("distributor");
        Arc::new(Self {
            store,
            upstream,
            wake: Notify::new(),
            assigned: meter
                .u64_counter("salesplan.distributor.waiting_assigned")
                .with_description("Waiting deals assigned when a member could take them")
                .build(),
            refused: meter
                .u64_counter("salesplan.distributor.waiting_orders_refused")
                .with_description("Orders for waiting deals refused (the deal changed first)")
                .build(),
        })
    }

    /// Decides the plan's queue, oldest first, as far as its members can take deals, in at
    /// most `rounds` transactions; returns how many were decided (their orders wait for
    /// the relay).
    pub async fn drain(
        &self,
        account_id: &str,
        plan_id: Uuid,
        rounds: usize,
    ) -> Result<usize, StoreError> {
        let mut decided = 0;
        for _ in 0..rounds {
            let round = self.drain_round(account_id, plan_id).await?;
            decided += round;
            if round < DRAIN_BATCH as usize {
                break;
            }
        }
        if decided > 0 {
            self.wake.notify_one();
        }
        Ok(decided)
    }

    async fn drain_round(&self, account_id: &str, plan_id: Uuid) -> Result<usize, StoreError> {
        let Some((opened, known)) = self
            .store
            .open_queue(
                account_id,
                plan_id,
                DRAIN_BATCH,
                time::OffsetDateTime::now_utc(),
            )
            .await?
        else {
            return Ok(0);
        };
        let (mut cursor, mut open) = (known.cursor, known.open);
        let decided = domain::queue::assign_waiting(
            &known.settings,
            &mut cursor,
            &mut open,
            &known.away,
            &known.queue,
            rand::random,
        );
        if decided.is_empty() {
            return Ok(0);
        }
        let at = time::OffsetDateTime::now_utc();
        let keyed: Vec<(Waiting, Decision, Uuid)> = decided
            .into_iter()
            .map(|(waiting, decision)| {
                // The decision replaces the lead's (or, for a deal made by hand, is keyed
                // by the deal's id).
                let key = known
                    .leads
                    .get(&waiting.deal_id)
                    .copied()
                    .unwrap_or(waiting.deal_id);
                (waiting, decision, key)
            })
            .collect();
        let explanations = keyed
            .iter()
            .map(|(waiting, decision, key)| {
                let decided = Decided {
                    intake_id: *key,
                    lead: Lead::default(),
                    decision: decision.clone(),
                };
                let mut record = super::intake::record(
                    account_id,
                    (plan_id, known.plan_version),
                    &known.settings,
                    &decided,
                    at,
                );
                record.deal_id = waiting.deal_id.to_string();
                record.encode_to_vec()
            })
            .collect();
        let orders = opened.save(&keyed, explanations, &cursor).await?;
        Ok(orders.len())
    }

    /// The plans `states` are of, each once: after deal events were applied, those with a
    /// queue are drained (a deal closed or moved away frees a place; a new waiting deal may
    /// find one).
    pub fn plans_of<'a>(states: impl Iterator<Item = &'a DealState>) -> Vec<(String, Uuid)> {
        let mut plans: Vec<(String, Uuid)> =
            states.map(|s| (s.account_id.clone(), s.plan_id)).collect();
        plans.sort_unstable();
        plans.dedup();
        plans
    }

    /// Drains those of `plans` with waiting deals, one round each; a failure is logged
    /// (the sweep tries again).
    pub async fn drain_those_waiting(&self, plans: &[(String, Uuid)]) {
        let waiting = match self.store.plans_with_waiting(plans).await {
            Ok(waiting) => waiting,
            Err(err) => {
                tracing::warn!(error = %err, "cannot look for waiting deals");
                return;
            }
        };
        for (account_id, plan_id) in waiting {
            if let Err(err) = self.drain(&account_id, plan_id, 1).await {
                tracing::warn!(%plan_id, error = %err, "cannot decide the plan's waiting deals");
            }
        }
    }

    /// Every few seconds, drains the plans whose queue can move, those swept longest ago
    /// first, until `stop`.
    pub async fn sweep(self: Arc<Self>, stop: CancellationToken) {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(SWEEP_EVERY) => {}
            }
            match self.store.plans_to_sweep(SWEEP_PLANS).await {
                Ok(plans) => {
                    for (account_id, plan_id) in plans {
                        if let Err(err) = self.drain(&account_id, plan_id, SWEEP_ROUNDS).await {
                            tracing::warn!(%plan_id, error = %err, "cannot decide waiting deals");
                        }
                    }
                }
                Err(err) => tracing::warn!(error = %err, "cannot list the waiting queues"),
            }
        }
    }

    /// Makes the orders in deal-service, until `stop`.
    pub async fn relay(self: Arc<Self>, stop: CancellationToken) {
        let queue = Arc::clone(&self);
        leased::run(queue, RELAY_SLOTS, Some(&self.wake), stop).await;
    }

    /// Makes one order and records how it ended.
    async fn make(&self, order: &Order) -> Result<(), StoreError> {
        match self.upstream.assign(order).await {
            OrderAnswer::Made => {
                self.assigned.add(1, &[]);
                self.store.order_done(order).await
            }
            // (A deadline's end answers only a reassignment: refused all the same.)
            OrderAnswer::Refused(reason) | OrderAnswer::Ended(reason) => {
                tracing::info!(deal_id = %order.deal_id, %reason, "assignment order refused");
                self.refused.add(1, &[]);
                self.store.order_refused(order, false).await
            }
            OrderAnswer::Gone(reason) => {
                tracing::info!(deal_id = %order.deal_id, %reason, "waiting deal gone");
                self.refused.add(1, &[]);
                self.store.order_refused(order, true).await
            }
            OrderAnswer::Later(reason) => {
                tracing::warn!(deal_id = %order.deal_id, %reason, "assignment order not made now");
                let backoff = leased::backoff(order.attempts);
                self.store.order_later(order, backoff).await
            }
        }
    }
}

impl LeasedWork for Queue {
    type Item = Order;
    const WHAT: &'static str = "assignment orders";

    fn account(order: &Order) -> &str {
        &order.account_id
    }

    async fn lease(
        &self,
        limit: usize,
        per_account: usize,
        held: &Held,
    ) -> Result<Vec<Order>, StoreError> {
        self.store
            .lease_orders((limit, per_account), held, LEASE)
            .await
    }

    async fn work(&self, order: &Order) {
        if let Err(err) = self.make(order).await {
            tracing::warn!(deal_id = %order.deal_id, error = %err, "assignment order kept");
        }
    }
}
