//! Applies deal events to the read model, a batch per statement. Idempotent and
//! order-safe: a row only ever moves to a higher deal version.

use std::collections::{BTreeMap, HashMap, HashSet};

use prost::Message as _;
use salesplan_platform::{
    bus::{BatchHandler, Delivery, Outcome, apply_each_on_refusal},
    db::key_lookups_only,
    error::sql_data_refusal,
};
use salesplan_proto::v1 as pb;
use sqlx::{PgPool, Row};
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
    /// The lead the deal came from (its idempotency key, when that is an intake id).
    pub intake_id: Option<Uuid>,
}

pub struct DealEvents {
    pool: PgPool,
}

impl DealEvents {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// Applies the newest state of each deal in `rows`: the deal row, and the closed-deal
    /// totals it moves out of and into. Rows only move to higher versions.
    pub async fn apply(&self, rows: &[DealRow]) -> Result<(), sqlx::Error> {
        // One row per deal: the statements may not touch a row twice.
        let mut newest: BTreeMap<Uuid, &DealRow> = BTreeMap::new();
        for row in rows {
            let slot = newest.entry(row.deal_id).or_insert(row);
            if row.version > slot.version {
                *slot = row;
            }
        }
        if newest.is_empty() {
            return Ok(());
        }
        let rows: Vec<&DealRow> = newest.into_values().collect();
        let mut tx = self.pool.begin().await?;
        key_lookups_only(&mut tx).await?;
        // Deals seen before are locked, so replicas applying events of one deal serialise.
        let mut before = lock_seen(&mut tx, &rows).await?;
        let mut deltas: BTreeMap<Contribution, i64> = BTreeMap::new();
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
                    if let Some(new) = row.contribution() {
                        *deltas.entry(new).or_default() += 1;
                    }
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
            let new = row.contribution();
            if *old != new {
                if let Some(old) = old {
                    *deltas.entry(old.clone()).or_default() -= 1;
                }
                if let Some(new) = new {
                    *deltas.entry(new).or_default() += 1;
                }
            }
            changed.push(row);
        }
        if !changed.is_empty() {
            write_rows(&mut tx, &changed, Write::NewerVersion).await?;
        }
        apply_totals(&mut tx, &deltas).await?;
        tx.commit().await
    }
}

impl DealRow {
    fn contribution(&self) -> Option<Contribution> {
        Contribution::of(
            self.account_id.clone(),
            self.plan_id,
            self.manager_id.clone(),
            self.status.to_owned(),
            self.loss_reason_id,
            self.closed_at,
        )
    }
}

/// Locks the read-model rows of `rows`' deals that exist; per deal its version and where it
/// counts. A deal is looked up within its event's account: a deal id of another account (a
/// forged event) is never this deal, and is left alone.
async fn lock_seen(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    rows: &[&DealRow],
) -> Result<HashMap<Uuid, (i64, Option<Contribution>)>, sqlx::Error> {
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
) -> Result<HashSet<Uuid>, sqlx::Error> {
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
                updated_at = excluded.updated_at, intake_id = excluded.intake_id
             WHERE deals.version < excluded.version AND deals.account_id = excluded.account_id"
        }
    };
    let written: Vec<Uuid> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "INSERT INTO deals (deal_id, account_id, plan_id, stage_id, manager_id, status,
            amount_minor, currency, loss_reason_id, stage_before_close_id, closed_at, version, updated_at,
            intake_id)
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::uuid[], $4::uuid[], $5::text[], $6::text[],
            $7::bigint[], $8::text[], $9::uuid[], $10::uuid[], $11::timestamptz[], $12::bigint[],
            $13::timestamptz[], $14::uuid[])
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
    .fetch_all(&mut **tx)
    .await?;
    Ok(written.into_iter().collect())
}

/// Where a closed deal counts: its totals row (and day). Open deals count nowhere.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Contribution {
    account_id: String,
    plan_id: Uuid,
    manager: String,
    status: String,
    reason: Uuid,
    day: time::Date,
}

impl Contribution {
    fn of(
        account_id: String,
        plan_id: Uuid,
        manager: Option<String>,
        status: String,
        reason: Option<Uuid>,
        closed_at: Option<OffsetDateTime>,
    ) -> Option<Self> {
        if status != "won" && status != "lost" {
            return None;
        }
        Some(Self {
            account_id,
            plan_id,
            manager: manager.unwrap_or_default(),
            reason: reason.filter(|_| status == "lost").unwrap_or(Uuid::nil()),
            status,
            day: closed_at?.to_offset(time::UtcOffset::UTC).date(),
        })
    }
}

async fn apply_totals(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    deltas: &BTreeMap<Contribution, i64>,
) -> Result<(), sqlx::Error> {
    let changed: Vec<(&Contribution, i64)> = deltas
        .iter()
        .filter(|(_, d)| **d != 0)
        .map(|(c, d)| (c, *d))
        .collect();
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
    let mut all_time: BTreeMap<(String, Uuid, String, String, Uuid), i64> = BTreeMap::new();
    for (c, d) in &changed {
        *all_time
            .entry((
                c.account_id.clone(),
                c.plan_id,
                c.manager.clone(),
                c.status.clone(),
                c.reason,
            ))
            .or_default() += d;
    }
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

impl BatchHandler for DealEvents {
    async fn handle(&self, batch: &[Delivery]) -> Vec<Outcome> {
        let mut outcomes = vec![Outcome::Done; batch.len()];
        let mut rows = Vec::with_capacity(batch.len());
        for (index, delivery) in batch.iter().enumerate() {
            // A span per event, in the trace of the change that caused it.
            let _span = delivery.span("reporting.apply").entered();
            match decode(&delivery.payload) {
                Ok(row) => rows.push((index, row)),
                Err(reason) => outcomes[index] = Outcome::Reject(reason),
            }
        }
        apply_each_on_refusal(
            &mut outcomes,
            rows,
            |rows| async move { self.apply(&rows).await },
            sql_data_refusal,
        )
        .await;
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
        // Only a key spelled as an intake id is one (`Uuid::parse_str` also takes upper
        // case, braces and URNs, keys deal-service holds apart).
        intake_id: Uuid::parse_str(&deal.idempotency_key)
            .ok()
            .filter(|id| id.to_string() == deal.idempotency_key),
    })
}
