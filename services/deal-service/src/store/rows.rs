//! Rows ↔ domain values.

use salesplan_platform::validate::ContactInput;

use super::StoreError;
use sqlx::{PgConnection, Postgres, QueryBuilder, Row, postgres::PgRow};
use uuid::Uuid;

use crate::domain::{
    Money, MoneySum,
    deal::{Deal, DealStatus},
    plan::{Distribution, Response, Strategy},
};

pub fn corrupt(what: &str) -> StoreError {
    StoreError::Internal(format!("unexpected value in column {what}"))
}

/// The columns of a deal, in the order `deal_from_row` reads them by name.
pub const DEAL_COLUMNS: &str = "id, account_id, plan_id, stage_id, status, manager_id,
    contact_external_id, contact_name, contact_email, contact_phone, title, amount_minor, currency,
    loss_reason_id, stage_before_close_id, idempotency_key, version, created_at, updated_at, closed_at,
    waiting_since, accepted_at, escalated_at, assigned_at, accept_seconds, deadline_seconds,
    response_due_at, accepted_late";

pub fn deal_from_row(row: &PgRow) -> Result<Deal, StoreError> {
    Ok(Deal {
        id: row.try_get("id")?,
        account_id: row.try_get("account_id")?,
        plan_id: row.try_get("plan_id")?,
        stage_id: row.try_get("stage_id")?,
        status: DealStatus::parse(row.try_get("status")?).ok_or_else(|| corrupt("deals.status"))?,
        manager_id: row.try_get("manager_id")?,
        contact: ContactInput {
            external_id: row.try_get("contact_external_id")?,
            name: row.try_get("contact_name")?,
            email: row.try_get("contact_email")?,
            phone: row.try_get("contact_phone")?,
        },
        title: row.try_get("title")?,
        amount: Money {
            amount_minor: row.try_get("amount_minor")?,
            currency: row.try_get("currency")?,
        },
        loss_reason_id: row.try_get("loss_reason_id")?,
        stage_before_close_id: row.try_get("stage_before_close_id")?,
        idempotency_key: row.try_get("idempotency_key")?,
        version: row.try_get("version")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        closed_at: row.try_get("closed_at")?,
        waiting_since: row.try_get("waiting_since")?,
        accepted_at: row.try_get("accepted_at")?,
        escalated_at: row.try_get("escalated_at")?,
        assigned_at: row.try_get("assigned_at")?,
        accept_seconds: row.try_get("accept_seconds")?,
        deadline_seconds: row.try_get("deadline_seconds")?,
        response_due_at: row.try_get("response_due_at")?,
        accepted_late: row.try_get("accepted_late")?,
    })
}

/// A distribution as the plan's columns hold it.
pub struct DistributionColumns {
    pub mode: &'static str,
    pub prefer_related: bool,
    pub keep_related: bool,
    pub strategy: &'static str,
    /// 0: no response deadline.
    pub response_seconds: i32,
    pub max_reassignments: i32,
}

pub fn distribution_columns(d: Distribution) -> DistributionColumns {
    match d {
        Distribution::Manual => DistributionColumns {
            mode: "manual",
            prefer_related: false,
            keep_related: false,
            strategy: Strategy::RoundRobin.as_str(),
            response_seconds: 0,
            max_reassignments: 0,
        },
        Distribution::Auto {
            prefer_related,
            keep_related,
            strategy,
            response,
        } => DistributionColumns {
            mode: "auto",
            prefer_related,
            keep_related,
            strategy: strategy.as_str(),
            // Both at most a week's seconds and ten: they fit.
            response_seconds: response.map_or(0, |r| r.seconds as i32),
            max_reassignments: response.map_or(0, |r| r.max_reassignments as i32),
        },
    }
}

/// The distribution of a plan's row.
pub fn distribution_from(row: &PgRow) -> Result<Distribution, StoreError> {
    let mode: &str = row.try_get("distribution_mode")?;
    match mode {
        "manual" => Ok(Distribution::Manual),
        "auto" => {
            let seconds: i32 = row.try_get("response_seconds")?;
            let reassignments: i32 = row.try_get("max_reassignments")?;
            let response = (seconds > 0)
                .then(|| {
                    Ok::<_, StoreError>(Response {
                        seconds: u32::try_from(seconds)
                            .map_err(|_| corrupt("plans.response_seconds"))?,
                        max_reassignments: u32::try_from(reassignments)
                            .map_err(|_| corrupt("plans.max_reassignments"))?,
                    })
                })
                .transpose()?;
            Ok(Distribution::Auto {
                prefer_related: row.try_get("prefer_related")?,
                keep_related: row.try_get("keep_related")?,
                strategy: Strategy::parse(row.try_get("strategy")?)
                    .ok_or_else(|| corrupt("plans.strategy"))?,
                response,
            })
        }
        _ => Err(corrupt("plans.distribution_mode")),
    }
}

/// Runs a totals query whose rows are `(stage_id, currency, n, amount)`, the amount a
/// `numeric` sum as text (a `bigint` sum overflows at 9,224 deals of the largest amount).
pub async fn fetch_stage_totals(
    conn: &mut PgConnection,
    mut qb: QueryBuilder<Postgres>,
) -> Result<Vec<(Uuid, i64, MoneySum)>, StoreError> {
    qb.build()
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(|row| {
            let amount: String = row.try_get("amount")?;
            Ok((
                row.try_get("stage_id")?,
                row.try_get("n")?,
                MoneySum {
                    amount_minor: amount.parse().map_err(|_| corrupt("sum of amount_minor"))?,
                    currency: row.try_get("currency")?,
                },
            ))
        })
        .collect()
}
