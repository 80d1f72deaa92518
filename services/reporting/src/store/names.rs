//! Plan, stage and reason names for reports. Renames show the current name; archived
//! reasons and deleted stages keep theirs.

use sqlx::PgPool;
use uuid::Uuid;

/// The names one plan snapshot carries.
#[derive(Debug, Clone)]
pub struct PlanNames {
    pub plan_id: Uuid,
    pub account_id: String,
    pub name: String,
    pub version: i64,
    /// Id, name, position.
    pub stages: Vec<(Uuid, String, i32)>,
    /// Id, name, archived.
    pub reasons: Vec<(Uuid, String, bool)>,
}

/// Applies a plan snapshot unless a newer one was applied already.
pub async fn apply(pool: &PgPool, plan: &PlanNames) -> Result<(), super::StoreError> {
    let mut tx = pool.begin().await?;
    let newer = sqlx::query(
        "INSERT INTO plans (plan_id, account_id, name, version) VALUES ($1, $2, $3, $4)
         ON CONFLICT (plan_id) DO UPDATE SET name = excluded.name, version = excluded.version
         WHERE plans.version < excluded.version AND plans.account_id = excluded.account_id",
    )
    .bind(plan.plan_id)
    .bind(&plan.account_id)
    .bind(&plan.name)
    .bind(plan.version)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if !newer {
        return Ok(());
    }
    let stage_ids: Vec<Uuid> = plan.stages.iter().map(|s| s.0).collect();
    sqlx::query("UPDATE stages SET deleted = true WHERE plan_id = $1 AND stage_id <> ALL($2)")
        .bind(plan.plan_id)
        .bind(&stage_ids)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO stages (stage_id, plan_id, name, position, deleted)
         SELECT i, $1, n, p, false FROM UNNEST($2::uuid[], $3::text[], $4::int[]) AS t(i, n, p)
         ON CONFLICT (stage_id) DO UPDATE SET name = excluded.name,
            position = excluded.position, deleted = false
         WHERE stages.plan_id = excluded.plan_id",
    )
    .bind(plan.plan_id)
    .bind(&stage_ids)
    .bind(plan.stages.iter().map(|s| s.1.clone()).collect::<Vec<_>>())
    .bind(plan.stages.iter().map(|s| s.2).collect::<Vec<_>>())
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO reasons (reason_id, plan_id, name, archived)
         SELECT i, $1, n, a FROM UNNEST($2::uuid[], $3::text[], $4::bool[]) AS t(i, n, a)
         ON CONFLICT (reason_id) DO UPDATE SET name = excluded.name, archived = excluded.archived
         WHERE reasons.plan_id = excluded.plan_id",
    )
    .bind(plan.plan_id)
    .bind(plan.reasons.iter().map(|r| r.0).collect::<Vec<_>>())
    .bind(plan.reasons.iter().map(|r| r.1.clone()).collect::<Vec<_>>())
    .bind(plan.reasons.iter().map(|r| r.2).collect::<Vec<_>>())
    .execute(&mut *tx)
    .await?;
    Ok(tx.commit().await?)
}
