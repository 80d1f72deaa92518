//! Response times: each assignment of a deal to a manager as deal events tell it, and the
//! report over them.

use sqlx::{PgPool, Postgres, Row, Transaction};
use uuid::Uuid;

use crate::domain::{
    deals::{self, DealRow},
    period::Period,
};

/// Records the assignments `rows` show (every row, not only a deal's newest: a deal given
/// to one manager and taken to another within one batch is two assignments), their acceptance,
/// and the deadlines missed (the distributor's reassignment, or an acceptance after the
/// deadline). Idempotent: a row is keyed by the deal and when it got its manager, acceptance
/// only ever set once, a miss only ever marked.
pub async fn apply(
    tx: &mut Transaction<'_, Postgres>,
    rows: &[DealRow],
) -> Result<(), sqlx::Error> {
    let assigned = deals::assignments(rows);
    if !assigned.is_empty() {
        sqlx::query(
            "INSERT INTO assignments (deal_id, assigned_at, account_id, plan_id, manager_id,
                accepted_at, accept_seconds, missed)
             SELECT * FROM UNNEST($1::uuid[], $2::timestamptz[], $3::text[], $4::uuid[],
                $5::text[], $6::timestamptz[], $7::bigint[], $8::bool[])
             ON CONFLICT (deal_id, assigned_at) DO UPDATE SET
                accepted_at = COALESCE(assignments.accepted_at, excluded.accepted_at),
                accept_seconds = COALESCE(assignments.accept_seconds, excluded.accept_seconds),
                missed = assignments.missed OR excluded.missed
             WHERE assignments.account_id = excluded.account_id",
        )
        .bind(assigned.iter().map(|a| a.deal_id).collect::<Vec<_>>())
        .bind(assigned.iter().map(|a| a.assigned_at).collect::<Vec<_>>())
        .bind(assigned.iter().map(|a| a.account_id).collect::<Vec<_>>())
        .bind(assigned.iter().map(|a| a.plan_id).collect::<Vec<_>>())
        .bind(assigned.iter().map(|a| a.manager_id).collect::<Vec<_>>())
        .bind(assigned.iter().map(|a| a.accepted_at).collect::<Vec<_>>())
        .bind(
            assigned
                .iter()
                .map(|a| a.accept_seconds)
                .collect::<Vec<_>>(),
        )
        .bind(assigned.iter().map(|a| a.late).collect::<Vec<_>>())
        .execute(&mut **tx)
        .await?;
    }
    let (keyed, unkeyed): (Vec<_>, Vec<_>) = rows
        .iter()
        .filter_map(|r| r.missed.as_ref().map(|m| (r, m)))
        .partition(|(_, m)| m.assigned_at.is_some());
    if !keyed.is_empty() {
        // The missed assignment, by its key: written even when its own event has not
        // arrived yet (it then adds what it knows and leaves the miss).
        sqlx::query(
            "INSERT INTO assignments (deal_id, assigned_at, account_id, plan_id, manager_id,
                missed)
             SELECT d, at, acct, p, m, true
             FROM UNNEST($1::uuid[], $2::timestamptz[], $3::text[], $4::uuid[], $5::text[])
                AS x(d, at, acct, p, m)
             ON CONFLICT (deal_id, assigned_at) DO UPDATE SET missed = true
             WHERE assignments.account_id = excluded.account_id",
        )
        .bind(keyed.iter().map(|(r, _)| r.deal_id).collect::<Vec<_>>())
        .bind(keyed.iter().map(|(_, m)| m.assigned_at).collect::<Vec<_>>())
        .bind(
            keyed
                .iter()
                .map(|(r, _)| r.account_id.clone())
                .collect::<Vec<_>>(),
        )
        .bind(keyed.iter().map(|(r, _)| r.plan_id).collect::<Vec<_>>())
        .bind(
            keyed
                .iter()
                .map(|(_, m)| m.manager_id.clone())
                .collect::<Vec<_>>(),
        )
        .execute(&mut **tx)
        .await?;
    }
    if !unkeyed.is_empty() {
        // Events from before deal-service named the assignment: the manager's latest
        // assignment of the deal before this change is the one missed.
        sqlx::query(
            "UPDATE assignments a SET missed = true
             FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::timestamptz[]) AS x(d, acct, m, at)
             WHERE a.deal_id = x.d AND a.account_id = x.acct AND a.assigned_at = (
                SELECT max(assigned_at) FROM assignments
                WHERE deal_id = x.d AND manager_id = x.m AND assigned_at < x.at)",
        )
        .bind(unkeyed.iter().map(|(r, _)| r.deal_id).collect::<Vec<_>>())
        .bind(
            unkeyed
                .iter()
                .map(|(r, _)| r.account_id.clone())
                .collect::<Vec<_>>(),
        )
        .bind(
            unkeyed
                .iter()
                .map(|(_, m)| m.manager_id.clone())
                .collect::<Vec<_>>(),
        )
        .bind(
            unkeyed
                .iter()
                .map(|(r, _)| r.assigned_at.unwrap_or(r.updated_at))
                .collect::<Vec<_>>(),
        )
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// One row of the report.
#[derive(Debug, Clone, PartialEq)]
pub struct ResponseRow {
    pub manager_id: String,
    pub plan_id: Uuid,
    pub assigned: i64,
    pub accepted: i64,
    pub median_seconds: Option<f64>,
    pub p90_seconds: Option<f64>,
    pub missed: i64,
}

/// Per manager and plan of the account, the assignments made in `period` (limited to
/// `plans` and `managers` when given). An assignment accepted the moment it began is a
/// manager taking a deal themselves (deal-service sets both from the one change), not a
/// deal they got: it is left out, or it would count as accepted in 0 s.
pub async fn report(
    pool: &PgPool,
    account_id: &str,
    period: Period,
    plans: &[Uuid],
    managers: &[String],
) -> Result<Vec<ResponseRow>, sqlx::Error> {
    sqlx::query(
        "SELECT manager_id, plan_id, count(*) AS assigned, count(accepted_at) AS accepted,
            percentile_cont(0.5) WITHIN GROUP (ORDER BY accept_seconds) AS median,
            percentile_cont(0.9) WITHIN GROUP (ORDER BY accept_seconds) AS p90,
            count(*) FILTER (WHERE missed) AS missed
         FROM assignments
         WHERE account_id = $1 AND ($2::timestamptz IS NULL OR assigned_at >= $2)
            AND ($3::timestamptz IS NULL OR assigned_at < $3)
            AND (cardinality($4::uuid[]) = 0 OR plan_id = ANY($4))
            AND (cardinality($5::text[]) = 0 OR manager_id = ANY($5))
            AND accepted_at IS DISTINCT FROM assigned_at
         GROUP BY 1, 2 ORDER BY 1, 2",
    )
    .bind(account_id)
    .bind(period.from)
    .bind(period.to)
    .bind(plans)
    .bind(managers)
    .fetch_all(pool)
    .await?
    .iter()
    .map(|r| {
        Ok(ResponseRow {
            manager_id: r.try_get("manager_id")?,
            plan_id: r.try_get("plan_id")?,
            assigned: r.try_get("assigned")?,
            accepted: r.try_get("accepted")?,
            median_seconds: r.try_get("median")?,
            p90_seconds: r.try_get("p90")?,
            missed: r.try_get("missed")?,
        })
    })
    .collect()
}
