//! PostgreSQL state of the distributor: plan copies and assignment decisions.

use std::collections::HashMap;

use sqlx::{PgPool, Row};
use uuid::Uuid;

use crate::domain::distribution::{Cursor, Decision, Lead, Mode, PlanSettings, Strategy};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("unexpected value in column {0}")]
    Corrupt(&'static str),
}

/// A plan snapshot from a plan event.
#[derive(Debug, Clone)]
pub struct PlanCopy {
    pub plan_id: Uuid,
    pub account_id: String,
    pub version: i64,
    pub settings: PlanSettings,
}

/// One lead of a batch, to decide.
#[derive(Debug, Clone)]
pub struct PendingLead {
    pub intake_id: Uuid,
    pub lead: Lead,
}

/// The outcome of deciding a plan's leads.
pub enum PlanBatch {
    /// The plan is not known yet (its event has not arrived): try again later.
    UnknownPlan,
    /// The decision for each lead, new or made before.
    Decided(HashMap<Uuid, Decision>),
}

#[derive(Clone)]
pub struct Store {
    pool: PgPool,
}

impl Store {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// Applies a plan snapshot unless a newer one was applied already. The round-robin
    /// cursor survives every update.
    pub async fn apply_plan(&self, plan: &PlanCopy) -> Result<(), StoreError> {
        let (mode, prefer_related, strategy) = match plan.settings.mode {
            Mode::Manual => ("manual", false, Strategy::RoundRobin),
            Mode::Auto {
                prefer_related,
                strategy,
            } => ("auto", prefer_related, strategy),
        };
        sqlx::query(
            "INSERT INTO plans (plan_id, account_id, version, mode, prefer_related, strategy, managers, archived)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (plan_id) DO UPDATE SET
                version = excluded.version, mode = excluded.mode,
                prefer_related = excluded.prefer_related, strategy = excluded.strategy,
                managers = excluded.managers, archived = excluded.archived, updated_at = now()
             WHERE plans.version < excluded.version",
        )
        .bind(plan.plan_id)
        .bind(&plan.account_id)
        .bind(plan.version)
        .bind(mode)
        .bind(prefer_related)
        .bind(strategy.as_str())
        .bind(&plan.settings.managers)
        .bind(plan.settings.archived)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Decides the leads of one plan under the plan's row lock, in one transaction: the
    /// cursor moves once per new lead however many replicas run, and a lead decided before
    /// keeps its decision.
    pub async fn decide_batch(
        &self,
        account_id: &str,
        plan_id: Uuid,
        leads: &[PendingLead],
        mut random: impl FnMut() -> u64,
    ) -> Result<PlanBatch, StoreError> {
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(
            "SELECT mode, prefer_related, strategy, managers, archived, rr_cursor
             FROM plans WHERE plan_id = $1 AND account_id = $2 FOR UPDATE",
        )
        .bind(plan_id)
        .bind(account_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Ok(PlanBatch::UnknownPlan);
        };
        let settings = settings_from(&row)?;
        let mut cursor = Cursor {
            round_robin: row.try_get::<i64, _>("rr_cursor")? as u64,
        };

        let ids: Vec<Uuid> = leads.iter().map(|l| l.intake_id).collect();
        let mut decided: HashMap<Uuid, Decision> = sqlx::query(
            "SELECT intake_id, manager_id, reason FROM assignments WHERE intake_id = ANY($1)",
        )
        .bind(&ids)
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|r| {
            Ok((
                r.try_get("intake_id")?,
                Decision {
                    manager: r.try_get("manager_id")?,
                    reason: r.try_get("reason")?,
                },
            ))
        })
        .collect::<Result<_, sqlx::Error>>()?;

        let (mut new_ids, mut managers, mut reasons) = (Vec::new(), Vec::new(), Vec::new());
        for pending in leads {
            if decided.contains_key(&pending.intake_id) {
                continue;
            }
            let decision = crate::domain::distribution::decide(
                &settings,
                &pending.lead,
                &mut cursor,
                random(),
            );
            new_ids.push(pending.intake_id);
            managers.push(decision.manager.clone());
            reasons.push(decision.reason.clone());
            decided.insert(pending.intake_id, decision);
        }
        if !new_ids.is_empty() {
            sqlx::query(
                "INSERT INTO assignments (intake_id, account_id, plan_id, manager_id, reason)
                 SELECT i, $2, $3, m, r FROM UNNEST($1::uuid[], $4::text[], $5::text[]) AS t(i, m, r)
                 ON CONFLICT (intake_id) DO NOTHING",
            )
            .bind(&new_ids)
            .bind(account_id)
            .bind(plan_id)
            .bind(&managers)
            .bind(&reasons)
            .execute(&mut *tx)
            .await?;
            sqlx::query("UPDATE plans SET rr_cursor = $2 WHERE plan_id = $1")
                .bind(plan_id)
                .bind(cursor.round_robin as i64)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(PlanBatch::Decided(decided))
    }

    /// Forgets a decision that deal-service refused (its manager left the plan in the
    /// meantime), so the lead is decided again on its next delivery.
    pub async fn forget(&self, intake_id: Uuid) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM assignments WHERE intake_id = $1")
            .bind(intake_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

fn settings_from(row: &sqlx::postgres::PgRow) -> Result<PlanSettings, StoreError> {
    let mode = match row.try_get::<&str, _>("mode")? {
        "manual" => Mode::Manual,
        "auto" => Mode::Auto {
            prefer_related: row.try_get("prefer_related")?,
            strategy: Strategy::parse(row.try_get("strategy")?)
                .ok_or(StoreError::Corrupt("plans.strategy"))?,
        },
        _ => return Err(StoreError::Corrupt("plans.mode")),
    };
    Ok(PlanSettings {
        mode,
        managers: row.try_get("managers")?,
        archived: row.try_get("archived")?,
    })
}
