//! Rows ↔ domain values.

use salesplan_platform::validate::ContactInput;

use super::StoreError;
use sqlx::{PgConnection, Postgres, QueryBuilder, Row, postgres::PgRow};
use uuid::Uuid;

use crate::domain::{
    Money, MoneySum,
    deal::{Deal, DealStatus},
    plan::{Distribution, Strategy},
};

pub fn corrupt(what: &str) -> StoreError {
    StoreError::Internal(format!("unexpected value in column {what}"))
}

/// The columns of a deal, in the order `deal_from_row` reads them by name.
pub const DEAL_COLUMNS: &str = "id, account_id, plan_id, stage_id, status, manager_id,
    contact_external_id, contact_name, contact_email, contact_phone, title, amount_minor, currency,
    loss_reason_id, stage_before_close_id, idempotency_key, version, created_at, updated_at, closed_at,
    waiting_since";

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
    })
}

/// The plan columns of a distribution: mode, prefer_related, keep_related, strategy.
pub fn distribution_columns(d: Distribution) -> (&'static str, bool, bool, &'static str) {
    match d {
        Distribution::Manual => ("manual", false, false, Strategy::RoundRobin.as_str()),
        Distribution::Auto {
            prefer_related,
            keep_related,
            strategy,
        } => ("auto", prefer_related, keep_related, strategy.as_str()),
    }
}

pub fn distribution_from(
    mode: &str,
    prefer_related: bool,
    keep_related: bool,
    strategy: &str,
) -> Result<Distribution, StoreError> {
    match mode {
        "manual" => Ok(Distribution::Manual),
        "auto" => Ok(Distribution::Auto {
            prefer_related,
            keep_related,
            strategy: Strategy::parse(strategy).ok_or_else(|| corrupt("plans.strategy"))?,
        }),
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
