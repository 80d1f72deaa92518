//! What `reporting rebuild` and `reporting verify` read and write.

use std::collections::BTreeMap;

use sqlx::{PgPool, Row};
use uuid::Uuid;

use crate::domain::deals::TotalKey;

/// Empties the read model (the consumers' progress stays: a rebuild replays what it
/// recorded as applied).
pub async fn empty(pool: &PgPool) -> Result<(), super::StoreError> {
    sqlx::query("TRUNCATE deals, plans, stages, reasons, closed_totals, closed_daily, assignments")
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

/// A daily total's key: the account, the closing day (UTC), then as [`TotalKey`].
pub type DailyKey = (String, time::Date, Uuid, String, String, Uuid);

/// The kept daily totals that count any deal.
pub async fn kept_daily(reporting: &PgPool) -> Result<BTreeMap<DailyKey, i64>, super::StoreError> {
    daily(
        reporting,
        "SELECT account_id, day, plan_id, manager_id, status, reason_id, deals
         FROM closed_daily WHERE deals <> 0",
    )
    .await
}

/// The read model's closed deals counted by closing day (UTC), as the daily totals key
/// them.
pub async fn recount_daily(
    reporting: &PgPool,
) -> Result<BTreeMap<DailyKey, i64>, super::StoreError> {
    daily(
        reporting,
        "SELECT account_id, (closed_at AT TIME ZONE 'UTC')::date AS day, plan_id,
            coalesce(manager_id, '') AS manager_id, status,
            CASE WHEN status = 'lost'
                 THEN coalesce(loss_reason_id, '00000000-0000-0000-0000-000000000000'::uuid)
                 ELSE '00000000-0000-0000-0000-000000000000'::uuid END AS reason_id,
            count(*) AS deals
         FROM deals WHERE status IN ('won', 'lost')
         GROUP BY 1, 2, 3, 4, 5, 6",
    )
    .await
}

async fn daily(
    reporting: &PgPool,
    query: &'static str,
) -> Result<BTreeMap<DailyKey, i64>, super::StoreError> {
    sqlx::query(query)
        .fetch_all(reporting)
        .await?
        .iter()
        .map(|r| {
            Ok((
                (
                    r.try_get("account_id")?,
                    r.try_get("day")?,
                    r.try_get("plan_id")?,
                    r.try_get("manager_id")?,
                    r.try_get("status")?,
                    r.try_get("reason_id")?,
                ),
                r.try_get("deals")?,
            ))
        })
        .collect()
}
