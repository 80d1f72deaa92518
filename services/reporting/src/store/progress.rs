//! How far the read model is: each consumer's position (see [`crate::domain::progress`]).

use salesplan_platform::consistency::LeadsToken;
use sqlx::{PgPool, Row};
use time::OffsetDateTime;

use crate::domain::progress::{self, Freshness, Horizons};

/// The consumers whose progress a read waits for: deal events and plan events (names).
pub const DEALS_CONSUMER: &str = "reporting-deals";
pub const PLANS_CONSUMER: &str = "reporting-plans";

/// Moves the consumer's position over the messages handled (`first`: the lowest position
/// of the batch): a run that continues it costs one row update; only messages beyond a
/// gap are written down, until it is filled.
pub async fn record(
    pool: &PgPool,
    consumer: &str,
    first: i64,
    mut handled: Vec<i64>,
) -> Result<(), super::StoreError> {
    if handled.is_empty() {
        return Ok(());
    }
    handled.sort_unstable();
    handled.dedup();
    let mut tx = pool.begin().await?;
    let known: Option<i64> = sqlx::query_scalar(
        "SELECT applied_through FROM consumer_progress WHERE consumer = $1 FOR UPDATE",
    )
    .bind(consumer)
    .fetch_optional(&mut *tx)
    .await?;
    let floor = match known {
        Some(floor) => floor,
        None => {
            // A consumer's first batch starts its record (what came before was applied
            // before progress was kept, or aged out). A replica racing here waits on the key.
            sqlx::query(
                "INSERT INTO consumer_progress (consumer, applied_through) VALUES ($1, $2)
                 ON CONFLICT (consumer) DO NOTHING",
            )
            .bind(consumer)
            .bind(first - 1)
            .execute(&mut *tx)
            .await?;
            sqlx::query_scalar(
                "SELECT applied_through FROM consumer_progress WHERE consumer = $1 FOR UPDATE",
            )
            .bind(consumer)
            .fetch_one(&mut *tx)
            .await?
        }
    };
    let (mut floor, beyond) = progress::advance(floor, &handled);
    if !beyond.is_empty() {
        sqlx::query(
            "INSERT INTO consumer_ahead (consumer, seq) SELECT $1, s FROM UNNEST($2::bigint[]) AS t(s)
             ON CONFLICT (consumer, seq) DO NOTHING",
        )
        .bind(consumer)
        .bind(&beyond)
        .execute(&mut *tx)
        .await?;
    }
    // Messages handled beyond an earlier gap that this run reaches.
    let ahead: Vec<i64> = sqlx::query_scalar(
        "SELECT seq FROM consumer_ahead WHERE consumer = $1 AND seq > $2 ORDER BY seq",
    )
    .bind(consumer)
    .bind(floor)
    .fetch_all(&mut *tx)
    .await?;
    let before = floor;
    floor = progress::reach(floor, &ahead);
    if floor > before || !beyond.is_empty() {
        sqlx::query("DELETE FROM consumer_ahead WHERE consumer = $1 AND seq <= $2")
            .bind(consumer)
            .bind(floor)
            .execute(&mut *tx)
            .await?;
    }
    sqlx::query(
        "UPDATE consumer_progress SET applied_through = $2, applied_at = now()
         WHERE consumer = $1",
    )
    .bind(consumer)
    .bind(floor)
    .execute(&mut *tx)
    .await?;
    Ok(tx.commit().await?)
}

/// The read model's freshness now: the newest horizon both consumers are through.
pub async fn freshness(pool: &PgPool, horizons: &Horizons) -> Result<Freshness, super::StoreError> {
    let rows = sqlx::query(
        "SELECT consumer, applied_through, applied_at FROM consumer_progress
         WHERE consumer = ANY($1)",
    )
    .bind([DEALS_CONSUMER, PLANS_CONSUMER])
    .fetch_all(pool)
    .await?;
    let (mut deals, mut plans, mut applied_at) = (0, 0, None::<OffsetDateTime>);
    for row in rows {
        let through: i64 = row.try_get("applied_through")?;
        match row.try_get::<&str, _>("consumer")? {
            DEALS_CONSUMER => deals = through,
            _ => plans = through,
        }
        let at: OffsetDateTime = row.try_get("applied_at")?;
        applied_at = Some(applied_at.map_or(at, |a| a.max(at)));
    }
    let reached = horizons.reached(deals, plans);
    Ok(Freshness {
        horizon: reached.map_or(0, |h| h.xid),
        published_at: reached.and_then(|h| h.published_at),
        applied_at,
    })
}

/// Whether the deals of all `leads` are in the read model of `account_id`.
pub async fn leads_applied(
    pool: &PgPool,
    account_id: &str,
    leads: &LeadsToken,
) -> Result<bool, super::StoreError> {
    let found: i64 = sqlx::query_scalar(
        // Distinct: two deals of the account may name one lead (keys are the creator's
        // choice), and one is not another lead's deal.
        "SELECT count(DISTINCT intake_id) FROM deals WHERE intake_id = ANY($1) AND account_id = $2",
    )
    .bind(leads.intake_ids())
    .bind(account_id)
    .fetch_one(pool)
    .await?;
    Ok(found as usize >= leads.intake_ids().len())
}
