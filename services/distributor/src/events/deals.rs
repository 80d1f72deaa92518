//! Keeps open-deal counts and contact relations exact from deal-service's deal events.

use prost::Message as _;
use salesplan_platform::{
    bus::{BatchHandler, Delivery, Outcome, apply_each_on_refusal},
    error::sql_data_refusal,
    privacy::ContactKeys,
};
use salesplan_proto::v1 as pb;
use uuid::Uuid;

use std::sync::Arc;

use crate::{
    domain::deal_view::DealState,
    events::queue::Queue,
    store::{Store, StoreError},
};

pub struct DealEvents {
    store: Store,
    queue: Arc<Queue>,
}

impl DealEvents {
    pub fn new(store: Store, queue: Arc<Queue>) -> Self {
        Self { store, queue }
    }
}

impl BatchHandler for DealEvents {
    async fn handle(&self, batch: &[Delivery]) -> Vec<Outcome> {
        let mut outcomes = vec![Outcome::Done; batch.len()];
        let mut states = Vec::with_capacity(batch.len());
        for (index, delivery) in batch.iter().enumerate() {
            match decode(delivery, self.store.contact_keys()) {
                Ok(state) => states.push((index, state)),
                Err(reason) => outcomes[index] = Outcome::Reject(reason),
            }
        }
        let touched = Queue::plans_of(states.iter().map(|(_, s)| s));
        apply_each_on_refusal(
            &mut outcomes,
            states,
            |states| async move { self.store.apply_deals(&states).await },
            |err: &StoreError| match err {
                StoreError::Database(e) => sql_data_refusal(e),
                _ => None,
            },
        )
        .await;
        // A place freed (a deal closed or moved away), or a deal that came waiting.
        self.queue.drain_those_waiting(&touched).await;
        outcomes
    }
}

/// Keys the plain contact keys every five minutes until the service stops (see
/// [`Store::key_plain_contact_keys`]); a failure is logged and tried again next time.
pub async fn key_plain_contact_keys_now_and_then(
    store: Store,
    stop: tokio_util::sync::CancellationToken,
) {
    const EVERY: std::time::Duration = std::time::Duration::from_secs(300);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(EVERY) => {}
        }
        if let Err(err) = store.key_plain_contact_keys().await {
            tracing::warn!(error = %err, "keying plain contact keys failed");
        }
    }
}

/// A deal event's state. Events carry the contact's keyed key; one published before they
/// did (during an upgrade) carries the contact itself, which is keyed here and forgotten.
fn decode(delivery: &Delivery, keys: &ContactKeys) -> Result<DealState, String> {
    let event = pb::DealEvent::decode(delivery.payload.clone())
        .map_err(|e| format!("undecodable deal event: {e}"))?;
    delivery.check_account(&event.account_id)?;
    use pb::deal_event::Kind;
    let erased = event.kind == Kind::Erased as i32;
    let contact_key = keys.of_deal_event(&event);
    let deal = event.deal.ok_or("deal event without a deal")?;
    let id = |field: &str, v: &str| {
        Uuid::parse_str(v).map_err(|_| format!("deal event with an invalid {field}"))
    };
    let created = deal.created_at.ok_or("deal event without created_at")?;
    Ok(DealState {
        deal_id: id("deal id", &deal.id)?,
        account_id: event.account_id,
        plan_id: id("plan id", &deal.plan_id)?,
        manager_id: deal.manager_id,
        open: deal.status == pb::DealStatus::Open as i32,
        version: deal.version,
        idempotency_key: deal.idempotency_key,
        // An erasure's key names the contact it erased: forgotten, not related.
        erased_contact: contact_key.clone().filter(|_| erased),
        contact_key: contact_key.filter(|_| !erased),
        created_at: salesplan_proto::time::time_of(&created)
            .ok_or("deal event with an invalid created_at")?,
        // A deal escalated to a person is not the distributor's to place: not in its queue.
        waiting_since: deal
            .waiting_since
            .as_ref()
            .filter(|_| deal.escalated_at.is_none())
            .and_then(salesplan_proto::time::time_of),
        accepted: deal.accepted_at.is_some(),
        assigned_by_distributor: event.actor_id == crate::ACTOR_ID
            && [Kind::Created as i32, Kind::Assigned as i32].contains(&event.kind),
        updated_at: deal
            .updated_at
            .as_ref()
            .and_then(salesplan_proto::time::time_of)
            .ok_or("deal event without a valid updated_at")?,
        assigned_at: deal
            .assigned_at
            .as_ref()
            .and_then(salesplan_proto::time::time_of),
        response_due_at: deal
            .response_due_at
            .as_ref()
            .and_then(salesplan_proto::time::time_of),
    })
}
