//! Deal events into the read model: decoded here, applied by the store.

use prost::Message as _;
use salesplan_platform::bus::{BatchHandler, Delivery, Outcome, apply_each_on_refusal};
use salesplan_proto::time::time_of;
use salesplan_proto::v1 as pb;
use sqlx::PgPool;
use uuid::Uuid;

use crate::{
    domain::deals::{DealRow, Missed},
    store,
};

pub struct DealEvents {
    pool: PgPool,
}

impl DealEvents {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// Applies the newest state of each deal in `rows` (see [`store::deals::apply`]).
    pub async fn apply(&self, rows: &[DealRow]) -> Result<(), crate::store::StoreError> {
        store::deals::apply(&self.pool, rows).await
    }
}

impl BatchHandler for DealEvents {
    async fn handle(&self, batch: &[Delivery]) -> Vec<Outcome> {
        let mut outcomes = vec![Outcome::Done; batch.len()];
        let mut rows = Vec::with_capacity(batch.len());
        // A span per event, in the trace of the change that caused it, until the event is
        // applied (or refused: then with the reason).
        let spans: Vec<tracing::Span> = batch.iter().map(|d| d.span("reporting.apply")).collect();
        for (index, delivery) in batch.iter().enumerate() {
            match spans[index].in_scope(|| decode(delivery)) {
                Ok(row) => {
                    spans[index].record("salesplan.plan_id", row.plan_id.to_string());
                    rows.push((index, row));
                }
                Err(reason) => outcomes[index] = Outcome::Reject(reason),
            }
        }
        apply_each_on_refusal(
            &mut outcomes,
            rows,
            |rows| async move { self.apply(&rows).await },
            crate::store::StoreError::data_refusal,
        )
        .await;
        salesplan_platform::bus::end_spans(spans, &outcomes);
        outcomes
    }
}

/// Who the distributor's changes are by (`distributor::ACTOR_ID`).
const DISTRIBUTOR: &str = "system:distributor";

fn uuid_of(field: &str, value: &str) -> Result<Uuid, String> {
    Uuid::parse_str(value).map_err(|_| format!("deal event with an invalid {field}"))
}

/// A deal event → the row it leaves.
pub fn decode(delivery: &Delivery) -> Result<DealRow, String> {
    let event = pb::DealEvent::decode(delivery.payload.clone())
        .map_err(|e| format!("undecodable deal event: {e}"))?;
    delivery.check_account(&event.account_id)?;
    let deal = event.deal.ok_or("deal event without a deal")?;
    let status = match pb::DealStatus::try_from(deal.status) {
        Ok(status @ (pb::DealStatus::Open | pb::DealStatus::Won | pb::DealStatus::Lost)) => {
            status.short_name()
        }
        _ => return Err(format!("deal event with unknown status {}", deal.status)),
    };
    let amount = deal.amount.unwrap_or_default();
    Ok(DealRow {
        deal_id: uuid_of("deal id", &deal.id)?,
        account_id: event.account_id,
        plan_id: uuid_of("plan id", &deal.plan_id)?,
        stage_id: uuid_of("stage id", &deal.stage_id)?,
        manager_id: deal.manager_id,
        status,
        amount_minor: amount.amount_minor,
        currency: amount.currency,
        loss_reason_id: deal
            .loss_reason_id
            .as_deref()
            .map(|v| uuid_of("loss reason id", v))
            .transpose()?,
        stage_before_close_id: deal
            .stage_before_close_id
            .as_deref()
            .map(|v| uuid_of("stage id", v))
            .transpose()?,
        closed_at: deal.closed_at.as_ref().and_then(time_of),
        version: deal.version,
        updated_at: deal
            .updated_at
            .as_ref()
            .and_then(time_of)
            .ok_or("deal event without updated_at")?,
        // Only a key spelled as an intake id is one (`Uuid::parse_str` also takes upper
        // case, braces and URNs, keys deal-service holds apart).
        intake_id: Uuid::parse_str(&deal.idempotency_key)
            .ok()
            .filter(|id| id.to_string() == deal.idempotency_key),
        waiting: deal.waiting_since.is_some(),
        assigned_at: deal.assigned_at.as_ref().and_then(time_of),
        accepted_at: deal.accepted_at.as_ref().and_then(time_of),
        accept_seconds: deal.accept_seconds,
        accepted_late: deal.accepted_late,
        missed: event
            .previous_manager_id
            .filter(|_| {
                event.actor_id == DISTRIBUTOR && event.kind == pb::deal_event::Kind::Assigned as i32
            })
            .map(|manager_id| Missed {
                manager_id,
                assigned_at: event.previous_assigned_at.as_ref().and_then(time_of),
            }),
    })
}
