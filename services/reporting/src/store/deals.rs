//! Writes deal events into the read model, a batch per statement. Idempotent and
//! order-safe: a row only ever moves to a higher deal version.

use std::collections::{HashMap, HashSet};

use salesplan_platform::db::key_lookups_only;
use sqlx::{PgPool, Row};
use uuid::Uuid;

use crate::domain::deals::{self, Contribution, DealRow, Deltas};

/// Applies the newest state of each deal in `rows`: the deal row, and the closed-deal
/// totals it moves out of and into. Rows only move to higher versions.
pub async fn apply(pool: &PgPool, rows: &[DealRow]) -> Result<(), super::StoreError> {
    let all = rows;
    let rows = deals::newest(rows);
    if rows.is_empty() {
        return Ok(());
    }
    let mut tx = pool.begin().await?;
    key_lookups_only(&mut tx).await?;
    super::responses::apply(&mut tx, all).await?;
    // Deals seen before are locked, so replicas applying events of one deal serialise.
    let mut before = lock_seen(&mut tx, &rows).await?;
    let mut deltas = Deltas::new();
    // Deals first seen are inserted whole (in key order, like the locks). One that another
    // replica inserted first is then locked and applied as seen.
    let unseen: Vec<&DealRow> = rows
        .iter()
        .filter(|r| !before.contains_key(&r.deal_id))
        .copied()
        .collect();
    if !unseen.is_empty() {
        let inserted = write_rows(&mut tx, &unseen, Write::OnlyNew).await?;
        let mut raced = Vec::new();
        for row in unseen {
            if inserted.contains(&row.deal_id) {
                deals::shift(&mut deltas, None, row.contribution());
            } else {
                raced.push(row);
            }
        }
        if !raced.is_empty() {
            before.extend(lock_seen(&mut tx, &raced).await?);
        }
    }

    let mut changed = Vec::with_capacity(rows.len());
    for row in rows {
        let Some((version, old)) = before.get(&row.deal_id) else {
            continue; // inserted above
        };
        if *version >= row.version {
            continue;
        }
        deals::shift(&mut deltas, old.clone(), row.contribution());
        changed.push(row);
    }
    if !changed.is_empty() {
        write_rows(&mut tx, &changed, Write::NewerVersion).await?;
    }
    apply_totals(&mut tx, &deltas).await?;
    Ok(tx.commit().await?)
}

/// Locks the read-model rows of `rows`' deals that exist; per deal its version and where it
/// counts. A deal is looked up within its event's account: a deal id of another account (a
/// forged event) is never this deal, and is left alone.
async fn lock_seen(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    rows: &[&DealRow],
) -> Result<HashMap<Uuid, (i64, Option<Contribution>)>, super::StoreError> {
    sqlx::query(
        "SELECT d.deal_id, d.account_id, d.plan_id, d.manager_id, d.status, d.loss_reason_id,
            d.closed_at, d.version
         FROM deals d JOIN UNNEST($1::uuid[], $2::text[]) AS k(id, acct)
            ON d.deal_id = k.id AND d.account_id = k.acct
         ORDER BY d.deal_id FOR UPDATE OF d",
    )
    .bind(rows.iter().map(|r| r.deal_id).collect::<Vec<_>>())
    .bind(
        rows.iter()
            .map(|r| r.account_id.clone())
            .collect::<Vec<_>>(),
    )
    .fetch_all(&mut **tx)
    .await?
    .iter()
    .map(|r| {
        let contribution = Contribution::of(
            r.try_get("account_id")?,
            r.try_get("plan_id")?,
            r.try_get("manager_id")?,
            r.try_get("status")?,
            r.try_get("loss_reason_id")?,
            r.try_get("closed_at")?,
        );
        Ok((r.try_get("deal_id")?, (r.try_get("version")?, contribution)))
    })
    .collect()
}

#[derive(Clone, Copy)]
enum Write {
    /// Insert deals not in the read model; skip the others.
    OnlyNew,
    /// Insert, or overwrite a row of a lower version.
    NewerVersion,
}

/// Writes `rows` in one statement; returns the deals written. An upsert even for updates,
/// not UPDATE … FROM UNNEST: the planner guesses 1,000 rows for UNNEST and would hash-join
/// against a scan of the whole table; ON CONFLICT goes by the key.
async fn write_rows(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    rows: &[&DealRow],
    write: Write,
) -> Result<HashSet<Uuid>, super::StoreError> {
    let on_conflict = match write {
        Write::OnlyNew => "DO NOTHING",
        Write::NewerVersion => {
            "DO UPDATE SET
                plan_id = excluded.plan_id, stage_id = excluded.stage_id,
                manager_id = excluded.manager_id, status = excluded.status,
                amount_minor = excluded.amount_minor, currency = excluded.currency,
                loss_reason_id = excluded.loss_reason_id,
                stage_before_close_id = excluded.stage_before_close_id,
                closed_at = excluded.closed_at, version = excluded.version,
                updated_at = excluded.updated_at, intake_id = excluded.intake_id,
                waiting = excluded.waiting
             WHERE deals.version < excluded.version AND deals.account_id = excluded.account_id"
        }
    };
    let written: Vec<Uuid> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "INSERT INTO deals (deal_id, account_id, plan_id, stage_id, manager_id, status,
            amount_minor, currency, loss_reason_id, stage_before_close_id, closed_at, version, updated_at,
            intake_id, waiting)
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::uuid[], $4::uuid[], $5::text[], $6::text[],
            $7::bigint[], $8::text[], $9::uuid[], $10::uuid[], $11::timestamptz[], $12::bigint[],
            $13::timestamptz[], $14::uuid[], $15::bool[])
         ON CONFLICT (deal_id) {on_conflict}
         RETURNING deal_id"
    )))
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
    .bind(rows.iter().map(|r| r.intake_id).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.waiting).collect::<Vec<_>>())
    .fetch_all(&mut **tx)
    .await?;
    Ok(written.into_iter().collect())
}

async fn apply_totals(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    deltas: &Deltas,
) -> Result<(), super::StoreError> {
    let (changed, all_time) = deals::totals(deltas);
    if changed.is_empty() {
        return Ok(());
    }
    let col =
        |f: fn(&Contribution) -> String| changed.iter().map(|(c, _)| f(c)).collect::<Vec<_>>();
    let plans: Vec<Uuid> = changed.iter().map(|(c, _)| c.plan_id).collect();
    let reasons: Vec<Uuid> = changed.iter().map(|(c, _)| c.reason).collect();
    let days: Vec<time::Date> = changed.iter().map(|(c, _)| c.day).collect();
    let counts: Vec<i64> = changed.iter().map(|(_, d)| *d).collect();
    let accounts = col(|c| c.account_id.clone());
    let managers = col(|c| c.manager.clone());
    let statuses = col(|c| c.status.clone());
    sqlx::query(
        "INSERT INTO closed_daily (account_id, day, plan_id, manager_id, status, reason_id, deals)
         SELECT * FROM UNNEST($1::text[], $2::date[], $3::uuid[], $4::text[], $5::text[], $6::uuid[], $7::bigint[])
         ON CONFLICT (account_id, day, plan_id, manager_id, status, reason_id)
         DO UPDATE SET deals = closed_daily.deals + excluded.deals",
    )
    .bind(&accounts)
    .bind(&days)
    .bind(&plans)
    .bind(&managers)
    .bind(&statuses)
    .bind(&reasons)
    .bind(&counts)
    .execute(&mut **tx)
    .await?;
    // All-time totals: the same deltas without the day, summed per key.
    sqlx::query(
        "INSERT INTO closed_totals (account_id, plan_id, manager_id, status, reason_id, deals)
         SELECT * FROM UNNEST($1::text[], $2::uuid[], $3::text[], $4::text[], $5::uuid[], $6::bigint[])
         ON CONFLICT (account_id, plan_id, manager_id, status, reason_id)
         DO UPDATE SET deals = closed_totals.deals + excluded.deals",
    )
    .bind(all_time.keys().map(|k| k.0.clone()).collect::<Vec<_>>())
    .bind(all_time.keys().map(|k| k.1).collect::<Vec<_>>())
    .bind(all_time.keys().map(|k| k.2.clone()).collect::<Vec<_>>())
    .bind(all_time.keys().map(|k| k.3.clone()).collect::<Vec<_>>())
    .bind(all_time.keys().map(|k| k.4).collect::<Vec<_>>())
    .bind(all_time.values().copied().collect::<Vec<_>>())
    .execute(&mut **tx)
    .await?;
    Ok(())
}
