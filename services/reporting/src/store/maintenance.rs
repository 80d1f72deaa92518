//! What `reporting rebuild` and `reporting verify` read and write.

use std::collections::BTreeMap;

use sqlx::{PgPool, Row};
use uuid::Uuid;

use crate::domain::deals::TotalKey;

/// Empties the read model (the consumers' progress stays: a rebuild replays what it
/// recorded as applied).
pub async fn empty(pool: &PgPool) -> Result<(), super::StoreError> {
    sqlx::query("TRUNCATE deals, plans, stages, reasons, closed_totals, closed_daily")
        .execute(pool)
        .await?;
    Ok(())
}

/// A closed deal as the report counts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closed {
    pub account: String,
    pub plan: Uuid,
    pub manager: String,
    pub status: String,
    pub reason: Uuid,
}

const CLOSED: &str = "SELECT {id} AS id, account_id, plan_id, coalesce(manager_id, '') AS manager_id, status,
    CASE WHEN status = 'lost' THEN coalesce(loss_reason_id, '00000000-0000-0000-0000-000000000000'::uuid)
         ELSE '00000000-0000-0000-0000-000000000000'::uuid END AS reason_id
    FROM deals WHERE status IN ('won', 'lost')";

/// Every closed deal of `pool`'s `deals` table (reporting's read model, or deal-service's
/// deals), by its id in `id_column`.
pub async fn closed(
    pool: &PgPool,
    id_column: &str,
) -> Result<BTreeMap<Uuid, Closed>, super::StoreError> {
    let query = CLOSED.replace("{id}", id_column);
    sqlx::query(sqlx::AssertSqlSafe(query))
        .fetch_all(pool)
        .await?
        .iter()
        .map(|r| {
            Ok((
                r.try_get("id")?,
                Closed {
                    account: r.try_get("account_id")?,
                    plan: r.try_get("plan_id")?,
                    manager: r.try_get("manager_id")?,
                    status: r.try_get("status")?,
                    reason: r.try_get("reason_id")?,
                },
            ))
        })
        .collect()
}

/// The kept all-time totals that count any deal.
pub async fn kept_totals(reporting: &PgPool) -> Result<BTreeMap<TotalKey, i64>, super::StoreError> {
    sqlx::query(
        "SELECT account_id, plan_id, manager_id, status, reason_id, deals FROM closed_totals WHERE deals <> 0",
    )
    .fetch_all(reporting)
    .await?
    .iter()
    .map(|r| {
        Ok((
            (r.try_get("account_id")?, r.try_get("plan_id")?, r.try_get("manager_id")?, r.try_get("status")?, r.try_get("reason_id")?),
            r.try_get("deals")?,
        ))
    })
    .collect()
}
