//! Plan, stage and reason names for reports, from deal-service's plan events. Renames show
//! the current name; archived reasons and deleted stages keep theirs.

use prost::Message as _;
use salesplan_platform::bus::{BatchHandler, Delivery, Outcome};
use salesplan_proto::v1 as pb;
use sqlx::PgPool;
use uuid::Uuid;

pub struct PlanEvents {
    pool: PgPool,
}

impl PlanEvents {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// Applies a plan snapshot unless a newer one was applied already.
    pub async fn apply(&self, account_id: &str, plan: &pb::Plan) -> Result<(), ApplyError> {
        let plan_id = Uuid::parse_str(&plan.id).map_err(|_| ApplyError::Invalid("plan id"))?;
        let mut tx = self.pool.begin().await?;
        let newer = sqlx::query(
            "INSERT INTO plans (plan_id, account_id, name, version) VALUES ($1, $2, $3, $4)
             ON CONFLICT (plan_id) DO UPDATE SET name = excluded.name, version = excluded.version
             WHERE plans.version < excluded.version AND plans.account_id = excluded.account_id",
        )
        .bind(plan_id)
        .bind(account_id)
        .bind(&plan.name)
        .bind(plan.version)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if !newer {
            return Ok(());
        }
        let stage_ids = plan
            .stages
            .iter()
            .map(|s| Uuid::parse_str(&s.id))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| ApplyError::Invalid("stage id"))?;
        sqlx::query("UPDATE stages SET deleted = true WHERE plan_id = $1 AND stage_id <> ALL($2)")
            .bind(plan_id)
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
        .bind(plan_id)
        .bind(&stage_ids)
        .bind(
            plan.stages
                .iter()
                .map(|s| s.name.clone())
                .collect::<Vec<_>>(),
        )
        .bind(plan.stages.iter().map(|s| s.position).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?;
        let reasons = plan.loss_reasons.clone().unwrap_or_default().reasons;
        let reason_ids = reasons
            .iter()
            .map(|r| Uuid::parse_str(&r.id))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| ApplyError::Invalid("reason id"))?;
        sqlx::query(
            "INSERT INTO reasons (reason_id, plan_id, name, archived)
             SELECT i, $1, n, a FROM UNNEST($2::uuid[], $3::text[], $4::bool[]) AS t(i, n, a)
             ON CONFLICT (reason_id) DO UPDATE SET name = excluded.name, archived = excluded.archived
             WHERE reasons.plan_id = excluded.plan_id",
        )
        .bind(plan_id)
        .bind(&reason_ids)
        .bind(reasons.iter().map(|r| r.name.clone()).collect::<Vec<_>>())
        .bind(reasons.iter().map(|r| r.archived).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("plan event with an invalid {0}")]
    Invalid(&'static str),
}

impl BatchHandler for PlanEvents {
    async fn handle(&self, batch: &[Delivery]) -> Vec<Outcome> {
        let mut outcomes = Vec::with_capacity(batch.len());
        for delivery in batch {
            let outcome = match pb::PlanEvent::decode(delivery.payload.clone()) {
                Err(e) => Outcome::Reject(format!("undecodable plan event: {e}")),
                Ok(pb::PlanEvent { plan: None, .. }) => {
                    Outcome::Reject("plan event without a plan".into())
                }
                Ok(pb::PlanEvent {
                    plan: Some(plan),
                    account_id,
                    ..
                }) => match self.apply(&account_id, &plan).await {
                    Ok(()) => Outcome::Done,
                    Err(ApplyError::Invalid(what)) => {
                        Outcome::Reject(format!("plan event with an invalid {what}"))
                    }
                    Err(err) => Outcome::Retry(err.to_string()),
                },
            };
            outcomes.push(outcome);
        }
        outcomes
    }
}
