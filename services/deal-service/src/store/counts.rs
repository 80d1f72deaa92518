//! The kept counts (`stage_counts`): written with every deal change, read for totals.

use std::collections::BTreeMap;

use super::StoreError;
use sqlx::{PgConnection, Postgres, QueryBuilder};
use uuid::Uuid;

use super::rows::fetch_stage_totals;
use crate::domain::{
    MoneySum,
    counts::{CountDelta, CountKey},
    query::DealQuery,
};

/// Adds the deltas. Call it last before the commit: the cells stay locked until then, and
/// every transaction that changes deals of the same column waits on them.
pub async fn apply(
    conn: &mut PgConnection,
    deltas: &BTreeMap<CountKey, CountDelta>,
) -> Result<(), StoreError> {
    if deltas.is_empty() {
        return Ok(());
    }
    let keys = || deltas.keys();
    // UNNEST keeps the input order, so cells are locked in key order (see `count_deltas`).
    // Sums are `numeric` (no number of deals overflows them); the deltas travel as text.
    sqlx::query(
        "INSERT INTO stage_counts AS c (account_id, plan_id, stage_id, manager_id, currency, deals, amount_minor)
         SELECT a, p, s, m, cur, n, x::numeric
         FROM UNNEST($1::text[], $2::uuid[], $3::uuid[], $4::text[], $5::text[], $6::bigint[], $7::text[])
            AS t(a, p, s, m, cur, n, x)
         ON CONFLICT (account_id, plan_id, stage_id, manager_id, currency) DO UPDATE
         SET deals = c.deals + excluded.deals, amount_minor = c.amount_minor + excluded.amount_minor",
    )
    .bind(keys().map(|k| k.account_id.clone()).collect::<Vec<_>>())
    .bind(keys().map(|k| k.plan_id).collect::<Vec<_>>())
    .bind(keys().map(|k| k.stage_id).collect::<Vec<_>>())
    .bind(keys().map(|k| k.manager_id.clone()).collect::<Vec<_>>())
    .bind(keys().map(|k| k.currency.clone()).collect::<Vec<_>>())
    .bind(deltas.values().map(|d| d.deals).collect::<Vec<_>>())
    .bind(
        deltas
            .values()
            .map(|d| d.amount_minor.to_string())
            .collect::<Vec<_>>(),
    )
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Per stage and currency: how many deals `query` matches and their sum. `query` must be
/// [`DealQuery::counted_by_cells`].
pub async fn stage_totals(
    conn: &mut PgConnection,
    account_id: &str,
    query: &DealQuery,
) -> Result<Vec<(Uuid, i64, MoneySum)>, StoreError> {
    let mut qb: QueryBuilder<Postgres> = QueryBuilder::new(
        "SELECT stage_id, currency, sum(deals)::bigint AS n, sum(amount_minor)::text AS amount
         FROM stage_counts WHERE account_id = ",
    );
    qb.push_bind(account_id.to_owned());
    if let Some(plan) = query.plan_id {
        qb.push(" AND plan_id = ").push_bind(plan);
    }
    if !query.stage_ids.is_empty() {
        qb.push(" AND stage_id = ANY(")
            .push_bind(query.stage_ids.clone())
            .push(")");
    }
    if !query.managers.is_empty() || query.unassigned {
        let mut managers = query.managers.clone();
        if query.unassigned {
            managers.push(String::new());
        }
        qb.push(" AND manager_id = ANY(")
            .push_bind(managers)
            .push(")");
    }
    qb.push(" GROUP BY stage_id, currency HAVING sum(deals) <> 0");
    fetch_stage_totals(conn, qb).await
}
