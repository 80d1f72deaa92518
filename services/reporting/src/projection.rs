//! Applies deal events to the read model, a batch per statement. Idempotent and
//! order-safe: a row only ever moves to a higher deal version.

use std::collections::HashMap;

use prost::Message as _;
use salesplan_platform::bus::{BatchHandler, Delivery, Outcome};
use salesplan_proto::v1 as pb;
use sqlx::PgPool;
use time::OffsetDateTime;
use uuid::Uuid;

/// One deal's state as an event carries it.
#[derive(Debug, Clone, PartialEq)]
pub struct DealRow {
    pub deal_id: Uuid,
    pub account_id: String,
    pub plan_id: Uuid,
    pub stage_id: Uuid,
    pub manager_id: Option<String>,
    pub status: &'static str,
    pub amount_minor: i64,
    pub currency: String,
    pub loss_reason_id: Option<Uuid>,
    pub stage_before_close_id: Option<Uuid>,
    pub closed_at: Option<OffsetDateTime>,
    pub version: i64,
    pub updated_at: OffsetDateTime,
}

pub struct DealEvents {
    pool: PgPool,
}

impl DealEvents {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// Upserts the newest state of each deal in `rows`.
    pub async fn apply(&self, rows: &[DealRow]) -> Result<(), sqlx::Error> {
        // One row per deal: the statement may not touch a row twice.
        let mut newest: HashMap<Uuid, &DealRow> = HashMap::new();
        for row in rows {
            let slot = newest.entry(row.deal_id).or_insert(row);
            if row.version > slot.version {
                *slot = row;
            }
        }
        let rows: Vec<&DealRow> = newest.into_values().collect();
        if rows.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO deals (deal_id, account_id, plan_id, stage_id, manager_id, status,
                amount_minor, currency, loss_reason_id, stage_before_close_id, closed_at, version, updated_at)
             SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::uuid[], $4::uuid[], $5::text[], $6::text[],
                $7::bigint[], $8::text[], $9::uuid[], $10::uuid[], $11::timestamptz[], $12::bigint[],
                $13::timestamptz[])
             ON CONFLICT (deal_id) DO UPDATE SET
                plan_id = excluded.plan_id, stage_id = excluded.stage_id,
                manager_id = excluded.manager_id, status = excluded.status,
                amount_minor = excluded.amount_minor, currency = excluded.currency,
                loss_reason_id = excluded.loss_reason_id,
                stage_before_close_id = excluded.stage_before_close_id,
                closed_at = excluded.closed_at, version = excluded.version,
                updated_at = excluded.updated_at
             WHERE deals.version < excluded.version",
        )
        .bind(rows.iter().map(|r| r.deal_id).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.account_id.clone()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.plan_id).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.stage_id).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.manager_id.clone()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.status).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.amount_minor).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.currency.clone()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.loss_reason_id).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.stage_before_close_id).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.closed_at).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.version).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.updated_at).collect::<Vec<_>>())
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

impl BatchHandler for DealEvents {
    async fn handle(&self, batch: &[Delivery]) -> Vec<Outcome> {
        let mut outcomes = vec![Outcome::Done; batch.len()];
        let mut rows = Vec::with_capacity(batch.len());
        let mut applied = Vec::with_capacity(batch.len());
        for (index, delivery) in batch.iter().enumerate() {
            match decode(&delivery.payload) {
                Ok(row) => {
                    rows.push(row);
                    applied.push(index);
                }
                Err(reason) => outcomes[index] = Outcome::Reject(reason),
            }
        }
        if let Err(err) = self.apply(&rows).await {
            tracing::warn!(error = %err, "cannot apply deal events");
            for index in applied {
                outcomes[index] = Outcome::Retry(err.to_string());
            }
        }
        outcomes
    }
}

fn time_of(ts: Option<&prost_types::Timestamp>) -> Option<OffsetDateTime> {
    let ts = ts?;
    OffsetDateTime::from_unix_timestamp_nanos(ts.seconds as i128 * 1_000_000_000 + ts.nanos as i128)
        .ok()
}

fn uuid_of(field: &str, value: &str) -> Result<Uuid, String> {
    Uuid::parse_str(value).map_err(|_| format!("deal event with an invalid {field}"))
}

/// A deal event → the row it leaves.
pub fn decode(payload: &[u8]) -> Result<DealRow, String> {
    let event =
        pb::DealEvent::decode(payload).map_err(|e| format!("undecodable deal event: {e}"))?;
    let deal = event.deal.ok_or("deal event without a deal")?;
    let status = match pb::DealStatus::try_from(deal.status) {
        Ok(pb::DealStatus::Open) => "open",
        Ok(pb::DealStatus::Won) => "won",
        Ok(pb::DealStatus::Lost) => "lost",
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
        closed_at: time_of(deal.closed_at.as_ref()),
        version: deal.version,
        updated_at: time_of(deal.updated_at.as_ref()).ok_or("deal event without updated_at")?,
    })
}
