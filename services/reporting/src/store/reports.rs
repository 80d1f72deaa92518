//! Reading the read model for reports: closed-deal cells (from kept totals, with the
//! partial days at a period's edges counted from the deals), names, stage losses.

use std::collections::HashMap;

use salesplan_platform::db;
use sqlx::{PgPool, Postgres, QueryBuilder, Row};

use crate::SCHEMA;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::domain::{
    period::{Period, Scope, split},
    report::{Cell, Closed},
};

fn push_scope(qb: &mut QueryBuilder<Postgres>, scope: &Scope, manager_column: &str) {
    if !scope.plans.is_empty() {
        qb.push(" AND plan_id = ANY(")
            .push_bind(scope.plans.clone())
            .push(")");
    }
    if !scope.managers.is_empty() {
        qb.push(format_args!(" AND {manager_column} = ANY("))
            .push_bind(scope.managers.clone())
            .push(")");
    }
}

fn cell_of(row: &sqlx::postgres::PgRow) -> Result<Cell, super::StoreError> {
    let manager: String = row.try_get("manager_id")?;
    let reason: Uuid = row.try_get("reason_id")?;
    let status: &str = row.try_get("status")?;
    Ok(Cell {
        plan_id: row.try_get("plan_id")?,
        manager: (!manager.is_empty()).then_some(manager),
        status: if status == "won" {
            Closed::Won
        } else {
            Closed::Lost
        },
        reason: (!reason.is_nil()).then_some(reason),
        count: row.try_get("deals")?,
    })
}

/// Closed deals of the account per plan, manager, status and reason, closed in `period`.
pub async fn closed_cells(
    pool: &PgPool,
    account_id: &str,
    period: Period,
    scope: &Scope,
) -> Result<Vec<Cell>, super::StoreError> {
    db::traced(SCHEMA, "SELECT closed_totals", async {
        if period == Period::default() {
            return all_time_cells(pool, account_id, scope).await;
        }
        let split = split(period);
        let mut cells = match split.whole_days {
            Some((first, end)) => daily_cells(pool, account_id, (first, end), scope).await?,
            None => Vec::new(),
        };
        for (from, to) in split.edges {
            cells.extend(counted_cells(pool, account_id, (from, to), scope).await?);
        }
        Ok(cells)
    })
    .await
}

/// Cells of the kept all-time totals.
async fn all_time_cells(
    pool: &PgPool,
    account_id: &str,
    scope: &Scope,
) -> Result<Vec<Cell>, super::StoreError> {
    let mut qb = QueryBuilder::new(
        "SELECT plan_id, manager_id, status, reason_id, sum(deals)::bigint AS deals
         FROM closed_totals WHERE account_id = ",
    );
    qb.push_bind(account_id.to_owned());
    push_scope(&mut qb, scope, "manager_id");
    qb.push(" GROUP BY plan_id, manager_id, status, reason_id");
    qb.build()
        .fetch_all(pool)
        .await?
        .iter()
        .map(cell_of)
        .collect()
}

/// Cells of the kept daily totals of the whole days [first, end).
async fn daily_cells(
    pool: &PgPool,
    account_id: &str,
    (first, end): (Option<OffsetDateTime>, Option<OffsetDateTime>),
    scope: &Scope,
) -> Result<Vec<Cell>, super::StoreError> {
    let mut qb = QueryBuilder::new(
        "SELECT plan_id, manager_id, status, reason_id, sum(deals)::bigint AS deals
         FROM closed_daily WHERE account_id = ",
    );
    qb.push_bind(account_id.to_owned());
    if let Some(first) = first {
        qb.push(" AND day >= ").push_bind(first.date());
    }
    if let Some(end) = end {
        qb.push(" AND day < ").push_bind(end.date());
    }
    push_scope(&mut qb, scope, "manager_id");
    qb.push(" GROUP BY plan_id, manager_id, status, reason_id");
    qb.build()
        .fetch_all(pool)
        .await?
        .iter()
        .map(cell_of)
        .collect()
}

/// Cells counted from the deals closed in [from, to) (a period's partial days).
async fn counted_cells(
    pool: &PgPool,
    account_id: &str,
    (from, to): (Option<OffsetDateTime>, Option<OffsetDateTime>),
    scope: &Scope,
) -> Result<Vec<Cell>, super::StoreError> {
    let mut qb = QueryBuilder::new(
        "SELECT plan_id, coalesce(manager_id, '') AS manager_id, status,
            CASE WHEN status = 'lost' THEN coalesce(loss_reason_id, '00000000-0000-0000-0000-000000000000'::uuid)
                 ELSE '00000000-0000-0000-0000-000000000000'::uuid END AS reason_id,
            count(*)::bigint AS deals
         FROM deals WHERE status IN ('won', 'lost') AND account_id = ",
    );
    qb.push_bind(account_id.to_owned());
    if let Some(from) = from {
        qb.push(" AND closed_at >= ").push_bind(from);
    }
    if let Some(to) = to {
        qb.push(" AND closed_at < ").push_bind(to);
    }
    push_scope(&mut qb, scope, "coalesce(manager_id, '')");
    qb.push(" GROUP BY 1, 2, 3, 4");
    qb.build()
        .fetch_all(pool)
        .await?
        .iter()
        .map(cell_of)
        .collect()
}

pub async fn plan_names(
    pool: &PgPool,
    account_id: &str,
) -> Result<HashMap<Uuid, String>, super::StoreError> {
    sqlx::query("SELECT plan_id, name FROM plans WHERE account_id = $1")
        .bind(account_id)
        .fetch_all(pool)
        .await?
        .iter()
        .map(|r| Ok((r.try_get("plan_id")?, r.try_get("name")?)))
        .collect()
}

pub async fn reason_names(
    pool: &PgPool,
    account_id: &str,
) -> Result<HashMap<Uuid, (String, bool)>, super::StoreError> {
    sqlx::query(
        "SELECT r.reason_id, r.name, r.archived FROM reasons r
         JOIN plans p ON p.plan_id = r.plan_id WHERE p.account_id = $1",
    )
    .bind(account_id)
    .fetch_all(pool)
    .await?
    .iter()
    .map(|r| {
        Ok((
            r.try_get("reason_id")?,
            (r.try_get("name")?, r.try_get("archived")?),
        ))
    })
    .collect()
}

/// Lost deals per plan and the stage they were lost from.
pub async fn stage_losses(
    pool: &PgPool,
    account_id: &str,
    period: Period,
    plans: &[Uuid],
) -> Result<Vec<(Uuid, Option<Uuid>, i64)>, super::StoreError> {
    db::traced(SCHEMA, "SELECT deals", async {
        let mut qb = QueryBuilder::new(
            "SELECT plan_id, stage_before_close_id, count(*)::bigint AS lost FROM deals
         WHERE status = 'lost' AND account_id = ",
        );
        qb.push_bind(account_id.to_owned());
        if let Some(from) = period.from {
            qb.push(" AND closed_at >= ").push_bind(from);
        }
        if let Some(to) = period.to {
            qb.push(" AND closed_at < ").push_bind(to);
        }
        if !plans.is_empty() {
            qb.push(" AND plan_id = ANY(")
                .push_bind(plans.to_vec())
                .push(")");
        }
        qb.push(" GROUP BY 1, 2");
        qb.build()
            .fetch_all(pool)
            .await?
            .iter()
            .map(|r| {
                Ok((
                    r.try_get("plan_id")?,
                    r.try_get("stage_before_close_id")?,
                    r.try_get("lost")?,
                ))
            })
            .collect()
    })
    .await
}

/// Stages of the account's plans: (plan, stage) → (name, position, deleted).
pub async fn stages(
    pool: &PgPool,
    account_id: &str,
) -> Result<Vec<(Uuid, Uuid, String, i32, bool)>, super::StoreError> {
    db::traced(SCHEMA, "SELECT stages", async {
        sqlx::query(
            "SELECT s.plan_id, s.stage_id, s.name, s.position, s.deleted FROM stages s
         JOIN plans p ON p.plan_id = s.plan_id WHERE p.account_id = $1",
        )
        .bind(account_id)
        .fetch_all(pool)
        .await?
        .iter()
        .map(|r| {
            Ok((
                r.try_get("plan_id")?,
                r.try_get("stage_id")?,
                r.try_get("name")?,
                r.try_get("position")?,
                r.try_get("deleted")?,
            ))
        })
        .collect()
    })
    .await
}

/// Deals of one stage in one currency, with their exact amount.
pub struct StageTotal {
    pub plan_id: Uuid,
    pub stage_id: Uuid,
    pub currency: String,
    pub deals: i64,
    /// The sum of the amounts: numeric, read as text (a bigint sum overflows at 9,224
    /// deals of the largest amount).
    pub amount_minor: String,
}

/// Deals of one manager (or none) of a plan, by status.
pub struct ManagerTotal {
    pub plan_id: Uuid,
    pub manager_id: Option<String>,
    pub open: i64,
    pub won: i64,
    pub lost: i64,
    /// Of the open ones, those waiting in the plan's queue.
    pub waiting: i64,
}

/// Deals per stage and currency with their amounts, and deals per manager by status, of
/// the account (or one plan).
pub async fn pipeline_summary(
    pool: &PgPool,
    account_id: &str,
    plan_id: Option<Uuid>,
) -> Result<(Vec<StageTotal>, Vec<ManagerTotal>), super::StoreError> {
    db::traced(SCHEMA, "SELECT deals", async {
        let stages = sqlx::query(
        "SELECT plan_id, stage_id, currency, count(*) AS deals, sum(amount_minor)::text AS amount
         FROM deals WHERE account_id = $1 AND ($2::uuid IS NULL OR plan_id = $2)
         GROUP BY plan_id, stage_id, currency ORDER BY plan_id, stage_id, currency",
    )
    .bind(account_id)
    .bind(plan_id)
    .fetch_all(pool)
    .await?
    .iter()
    .map(|r| {
        Ok(StageTotal {
            plan_id: r.try_get("plan_id")?,
            stage_id: r.try_get("stage_id")?,
            currency: r.try_get("currency")?,
            deals: r.try_get("deals")?,
            amount_minor: r.try_get("amount")?,
        })
    })
    .collect::<Result<Vec<_>, sqlx::Error>>()?;
        let managers = sqlx::query(
            "SELECT plan_id, manager_id,
                count(*) FILTER (WHERE status = 'open') AS open,
                count(*) FILTER (WHERE status = 'won') AS won,
                count(*) FILTER (WHERE status = 'lost') AS lost,
                count(*) FILTER (WHERE status = 'open' AND waiting) AS waiting
         FROM deals WHERE account_id = $1 AND ($2::uuid IS NULL OR plan_id = $2)
         GROUP BY plan_id, manager_id ORDER BY plan_id, manager_id NULLS FIRST",
        )
        .bind(account_id)
        .bind(plan_id)
        .fetch_all(pool)
        .await?
        .iter()
        .map(|r| {
            Ok(ManagerTotal {
                plan_id: r.try_get("plan_id")?,
                manager_id: r.try_get("manager_id")?,
                open: r.try_get("open")?,
                won: r.try_get("won")?,
                lost: r.try_get("lost")?,
                waiting: r.try_get("waiting")?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
        Ok((stages, managers))
    })
    .await
}
