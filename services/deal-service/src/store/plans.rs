//! Plans, their stages, managers and loss reasons.

use salesplan_platform::{db, ids};

use crate::SCHEMA;

use super::StoreError;
use salesplan_proto::v1 as pb;
use sqlx::{PgConnection, Postgres, Row, Transaction};
use uuid::Uuid;

use super::{
    Store, events, now,
    rows::{corrupt, distribution_columns, distribution_from},
};
use crate::domain::{
    DomainError, Money, Reason,
    counts::count_deltas,
    deal::Change,
    plan::{LossReason, MAX_ACTIVE_PLANS, Plan, PlanDraft, Stage, StageKind, Terms},
};

impl Store {
    pub async fn create_plan(
        &self,
        account_id: &str,
        actor_id: &str,
        draft: PlanDraft,
    ) -> Result<Plan, StoreError> {
        db::traced(SCHEMA, "INSERT plans", async {
            let now = now();
            let plan = draft.into_plan(account_id, ids::new_id(), now, ids::new_id);
            let d = distribution_columns(plan.distribution);
            let mut tx = self.pool.begin().await?;
            within_plan_cap(&mut tx, account_id).await?;
            sqlx::query(
            "INSERT INTO plans (id, account_id, name, average_amount_minor, currency, chat_label,
                distribution_mode, prefer_related, strategy, require_reason, archived, version,
                created_at, updated_at, keep_related, response_seconds, max_reassignments)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, false, false, $10, $11, $11, $12, $13, $14)",
        )
        .bind(plan.id)
        .bind(account_id)
        .bind(&plan.name)
        .bind(plan.average_amount.amount_minor)
        .bind(&plan.average_amount.currency)
        .bind(&plan.chat_label)
        .bind(d.mode)
        .bind(d.prefer_related)
        .bind(d.strategy)
        .bind(plan.version)
        .bind(now)
        .bind(d.keep_related)
        .bind(d.response_seconds)
        .bind(d.max_reassignments)
        .execute(&mut *tx)
        .await?;
            save_children(&mut tx, &plan).await?;
            events::record_plan(&mut tx, &plan, pb::plan_event::Kind::Created, actor_id, now)
                .await?;
            super::commit(tx).await?;
            Ok(plan)
        })
        .await
    }

    pub async fn plan(&self, account_id: &str, plan_id: Uuid) -> Result<Plan, StoreError> {
        db::traced(SCHEMA, "SELECT plans", async {
            let mut tx = super::snapshot(&self.pool).await?;
            let plan = load_plan(&mut tx, account_id, plan_id, Lock::None).await?;
            tx.commit().await?;
            Ok(plan)
        })
        .await
    }

    /// Up to `limit` plans after the plan `after`, oldest first (ids are time-ordered),
    /// and whether more follow. On the read pool: a page loads its plans one by one.
    pub async fn list_plans(
        &self,
        account_id: &str,
        include_archived: bool,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<(Vec<Plan>, bool), StoreError> {
        db::traced(SCHEMA, "SELECT plans", async {
            let mut conn = super::snapshot(&self.reads).await?;
            let mut ids: Vec<Uuid> = sqlx::query_scalar(
                "SELECT id FROM plans WHERE account_id = $1 AND ($2 OR NOT archived)
                AND ($3::uuid IS NULL OR id > $3)
             ORDER BY id LIMIT $4",
            )
            .bind(account_id)
            .bind(include_archived)
            .bind(after)
            .bind(limit as i64 + 1)
            .fetch_all(&mut *conn)
            .await?;
            let more = ids.len() > limit;
            ids.truncate(limit);
            let mut plans = Vec::with_capacity(ids.len());
            for id in ids {
                plans.push(load_plan(&mut conn, account_id, id, Lock::None).await?);
            }
            conn.commit().await?;
            Ok((plans, more))
        })
        .await
    }

    /// Applies `change` to the plan under its row lock, saves it with a new version, and
    /// publishes the new snapshot. A change that leaves the plan as it was (archiving an
    /// archived plan, the same order, the same managers) writes nothing: the answer is the
    /// plan as it stands, so a retried change answers as the first one did.
    pub async fn modify_plan<T>(
        &self,
        account_id: &str,
        actor_id: &str,
        plan_id: Uuid,
        kind: pb::plan_event::Kind,
        change: impl FnOnce(&mut Plan) -> Result<T, DomainError>,
    ) -> Result<(Plan, T), StoreError> {
        db::traced(SCHEMA, "UPDATE plans", async {
            let now = now();
            let mut tx = self.pool.begin().await?;
            let before = load_plan(&mut tx, account_id, plan_id, Lock::Update).await?;
            let mut plan = before.clone();
            let out = change(&mut plan)?;
            if plan == before {
                super::note_seen(&mut tx).await?;
                return Ok((plan, out));
            }
            if before.archived && !plan.archived {
                within_plan_cap(&mut tx, account_id).await?;
            }
            plan.advance(&before, now);
            save_plan(&mut tx, &plan).await?;
            if plan.ends_deadlines_of(&before) {
                super::deals::end_deadlines(&mut tx, &plan).await?;
            }
            events::record_plan(&mut tx, &plan, kind, actor_id, now).await?;
            super::commit(tx).await?;
            Ok((plan, out))
        })
        .await
    }

    /// Deletes a stage; its deals move to `target` first (each move in its history and
    /// events). Returns the plan and how many deals moved.
    pub async fn delete_stage(
        &self,
        account_id: &str,
        actor_id: &str,
        stage_id: Uuid,
        target: Option<Uuid>,
    ) -> Result<(Plan, i64), StoreError> {
        db::traced(SCHEMA, "DELETE stages", async {
        let now = now();
        let mut tx = self.pool.begin().await?;
        let plan_id = plan_of_stage(&mut tx, account_id, stage_id).await?;
        let mut plan = load_plan(&mut tx, account_id, plan_id, Lock::Update).await?;
        let before = plan.clone();
        let holds: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM deals WHERE account_id = $1 AND plan_id = $2 AND stage_id = $3)",
        )
        .bind(account_id)
        .bind(plan_id)
        .bind(stage_id)
        .fetch_one(&mut *tx)
        .await?;
        let move_to = plan.delete_stage(stage_id, holds, target)?;
        let mut moved = 0;
        if let Some(to) = move_to {
            let deals = super::deals::lock_deals_in_stage(&mut tx, account_id, stage_id).await?;
            let changes: Vec<_> = deals
                .iter()
                .map(|d| d.moved_off_deleted_stage(to, now))
                .collect();
            moved = changes.len() as i64;
            super::deals::update_deals(&mut tx, &changes).await?;
            events::record(&mut tx, &self.contact_keys, actor_id, &changes, now).await?;
            let deltas = count_deltas(deals.iter().zip(&changes).map(|(d, (n, _))| (Some(d), n)));
            super::counts::apply(&mut tx, &deltas).await?;
        }
        plan.advance(&before, now);
        save_plan(&mut tx, &plan).await?;
        events::record_plan(&mut tx, &plan, pb::plan_event::Kind::Updated, actor_id, now).await?;
        super::commit(tx).await?;
        Ok((plan, moved))
    })
.await
    }

    /// The plan a stage belongs to (within the account).
    pub async fn plan_of_stage(
        &self,
        account_id: &str,
        stage_id: Uuid,
    ) -> Result<Uuid, StoreError> {
        let mut conn = self.pool.acquire().await?;
        plan_of_stage(&mut conn, account_id, stage_id).await
    }
}

/// Refuses one more plan that is not archived when the account has its cap of them. One
/// account's creations and unarchivings take turns, so two at once cannot pass it together.
async fn within_plan_cap(
    tx: &mut Transaction<'_, Postgres>,
    account_id: &str,
) -> Result<(), StoreError> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('plans:' || $1, 0))")
        .bind(account_id)
        .execute(&mut **tx)
        .await?;
    let active: i64 =
        sqlx::query_scalar("SELECT count(*) FROM plans WHERE account_id = $1 AND NOT archived")
            .bind(account_id)
            .fetch_one(&mut **tx)
            .await?;
    if active >= MAX_ACTIVE_PLANS {
        return Err(DomainError::Precondition(
            Reason::PlanCapReached,
            format!(
                "the account has {active} plans that are not archived, the most it may have \
             ({MAX_ACTIVE_PLANS}); archive one first"
            ),
        )
        .into());
    }
    Ok(())
}

async fn plan_of_stage(
    conn: &mut PgConnection,
    account_id: &str,
    stage_id: Uuid,
) -> Result<Uuid, StoreError> {
    sqlx::query_scalar(
        "SELECT s.plan_id FROM stages s JOIN plans p ON p.id = s.plan_id
         WHERE s.id = $1 AND p.account_id = $2",
    )
    .bind(stage_id)
    .bind(account_id)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| StoreError::NotFound(format!("stage {stage_id}")))
}

/// Marks the reasons `changes` closed deals with as used (kept, archived, when left out of
/// the plan's reasons). Runs under the plan's share lock, so a concurrent SetLossReasons
/// (update lock) sees it.
pub async fn mark_reasons_used(
    tx: &mut Transaction<'_, Postgres>,
    changes: &[(crate::domain::deal::Deal, Change)],
) -> Result<(), StoreError> {
    let mut ids: Vec<Uuid> = changes
        .iter()
        .filter_map(|(_, change)| match change {
            Change::Closed {
                reason: Some(reason),
                ..
            } => Some(*reason),
            _ => None,
        })
        .collect();
    if ids.is_empty() {
        return Ok(());
    }
    ids.sort_unstable();
    ids.dedup();
    sqlx::query("UPDATE loss_reasons SET used = true WHERE id = ANY($1) AND NOT used")
        .bind(&ids)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

#[derive(Clone, Copy)]
pub enum Lock {
    /// A plain read: only in a [`super::snapshot`] transaction, or its statements may
    /// see different versions of the plan.
    None,
    /// Deal writes: a concurrent plan change waits for them.
    Share,
    Update,
}

pub async fn load_plan(
    conn: &mut PgConnection,
    account_id: &str,
    plan_id: Uuid,
    lock: Lock,
) -> Result<Plan, StoreError> {
    find_plan(conn, account_id, plan_id, lock)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("plan {plan_id}")))
}

/// The plan, if the account has it.
pub async fn find_plan(
    conn: &mut PgConnection,
    account_id: &str,
    plan_id: Uuid,
    lock: Lock,
) -> Result<Option<Plan>, StoreError> {
    let query = match lock {
        Lock::None => PLAN_SELECT,
        Lock::Share => PLAN_SELECT_SHARE,
        Lock::Update => PLAN_SELECT_UPDATE,
    };
    let Some(row) = sqlx::query(query)
        .bind(account_id)
        .bind(plan_id)
        .fetch_optional(&mut *conn)
        .await?
    else {
        return Ok(None);
    };
    let members: Vec<(String, i32, Option<i32>)> = sqlx::query_as(
        "SELECT manager_id, weight, max_open_deals FROM plan_managers
         WHERE plan_id = $1 ORDER BY position",
    )
    .bind(plan_id)
    .fetch_all(&mut *conn)
    .await?;
    let (managers, terms): (Vec<String>, Vec<Terms>) = members
        .into_iter()
        .map(|(m, w, max)| {
            let terms = Terms {
                weight: w.max(1) as u32,
                max_open_deals: max.map(|n| n.max(1) as u32),
            };
            (m, terms)
        })
        .unzip();
    let stages = plan_stages(conn, plan_id).await?;
    let loss_reasons = plan_reasons(conn, plan_id).await?;
    Ok(Some(Plan {
        id: row.try_get("id")?,
        account_id: row.try_get("account_id")?,
        name: row.try_get("name")?,
        average_amount: Money {
            amount_minor: row.try_get("average_amount_minor")?,
            currency: row.try_get("currency")?,
        },
        chat_label: row.try_get("chat_label")?,
        distribution: distribution_from(&row)?,
        managers,
        terms,
        stages,
        require_reason: row.try_get("require_reason")?,
        loss_reasons,
        archived: row.try_get("archived")?,
        archived_at_version: row.try_get("archived_version")?,
        version: row.try_get("version")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    }))
}

async fn plan_stages(conn: &mut PgConnection, plan_id: Uuid) -> Result<Vec<Stage>, StoreError> {
    sqlx::query(
        "SELECT id, name, color, kind, position FROM stages WHERE plan_id = $1 ORDER BY position",
    )
    .bind(plan_id)
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(|r| {
        Ok(Stage {
            id: r.try_get("id")?,
            name: r.try_get("name")?,
            color: r.try_get("color")?,
            kind: StageKind::parse(r.try_get("kind")?).ok_or_else(|| corrupt("stages.kind"))?,
            position: r.try_get("position")?,
        })
    })
    .collect()
}

async fn plan_reasons(
    conn: &mut PgConnection,
    plan_id: Uuid,
) -> Result<Vec<LossReason>, sqlx::Error> {
    sqlx::query(
        "SELECT id, name, archived, used FROM loss_reasons WHERE plan_id = $1 ORDER BY archived, position",
    )
    .bind(plan_id)
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(|r| {
        Ok(LossReason {
            id: r.try_get("id")?,
            name: r.try_get("name")?,
            archived: r.try_get("archived")?,
            used: r.try_get("used")?,
        })
    })
    .collect()
}

const PLAN_SELECT: &str = "SELECT id, account_id, name, average_amount_minor, currency, chat_label,
    distribution_mode, prefer_related, keep_related, strategy, response_seconds, max_reassignments, require_reason, archived, archived_version, version, created_at, updated_at
    FROM plans WHERE account_id = $1 AND id = $2";
const PLAN_SELECT_SHARE: &str = "SELECT id, account_id, name, average_amount_minor, currency, chat_label,
    distribution_mode, prefer_related, keep_related, strategy, response_seconds, max_reassignments, require_reason, archived, archived_version, version, created_at, updated_at
    FROM plans WHERE account_id = $1 AND id = $2 FOR SHARE";
const PLAN_SELECT_UPDATE: &str = "SELECT id, account_id, name, average_amount_minor, currency, chat_label,
    distribution_mode, prefer_related, keep_related, strategy, response_seconds, max_reassignments, require_reason, archived, archived_version, version, created_at, updated_at
    FROM plans WHERE account_id = $1 AND id = $2 FOR UPDATE";

async fn save_plan(tx: &mut Transaction<'_, Postgres>, plan: &Plan) -> Result<(), StoreError> {
    let d = distribution_columns(plan.distribution);
    sqlx::query(
        "UPDATE plans SET name = $2, average_amount_minor = $3, currency = $4, chat_label = $5,
            distribution_mode = $6, prefer_related = $7, strategy = $8, require_reason = $9,
            archived = $10, version = $11, updated_at = $12, archived_version = $13,
            keep_related = $14, response_seconds = $15, max_reassignments = $16
         WHERE id = $1",
    )
    .bind(plan.id)
    .bind(&plan.name)
    .bind(plan.average_amount.amount_minor)
    .bind(&plan.average_amount.currency)
    .bind(&plan.chat_label)
    .bind(d.mode)
    .bind(d.prefer_related)
    .bind(d.strategy)
    .bind(plan.require_reason)
    .bind(plan.archived)
    .bind(plan.version)
    .bind(plan.updated_at)
    .bind(plan.archived_at_version)
    .bind(d.keep_related)
    .bind(d.response_seconds)
    .bind(d.max_reassignments)
    .execute(&mut **tx)
    .await?;
    sqlx::query("DELETE FROM plan_managers WHERE plan_id = $1")
        .bind(plan.id)
        .execute(&mut **tx)
        .await?;
    let stage_ids: Vec<Uuid> = plan.stages.iter().map(|s| s.id).collect();
    sqlx::query("DELETE FROM stages WHERE plan_id = $1 AND id <> ALL($2)")
        .bind(plan.id)
        .bind(&stage_ids)
        .execute(&mut **tx)
        .await?;
    // Reasons no deal was ever closed with leave when they are left out.
    let reason_ids: Vec<Uuid> = plan.loss_reasons.iter().map(|r| r.id).collect();
    sqlx::query("DELETE FROM loss_reasons WHERE plan_id = $1 AND id <> ALL($2)")
        .bind(plan.id)
        .bind(&reason_ids)
        .execute(&mut **tx)
        .await?;
    save_children(tx, plan).await
}

/// Managers, stages and reasons as the plan holds them (upserts; removals happen before).
async fn save_children(tx: &mut Transaction<'_, Postgres>, plan: &Plan) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO plan_managers (plan_id, manager_id, position, weight, max_open_deals)
         SELECT $1, m, p::int, w, c FROM UNNEST($2::text[], $3::int[], $4::int[])
            WITH ORDINALITY AS t(m, w, c, p)",
    )
    .bind(plan.id)
    .bind(&plan.managers)
    .bind(
        plan.terms
            .iter()
            .map(|t| t.weight as i32)
            .collect::<Vec<_>>(),
    )
    .bind(
        plan.terms
            .iter()
            .map(|t| t.max_open_deals.map(|n| n as i32))
            .collect::<Vec<_>>(),
    )
    .execute(&mut **tx)
    .await?;
    sqlx::query(
        "INSERT INTO stages (id, plan_id, name, color, kind, position)
         SELECT i, $1, n, c, k, p FROM UNNEST($2::uuid[], $3::text[], $4::text[], $5::text[], $6::int[])
            AS t(i, n, c, k, p)
         ON CONFLICT (id) DO UPDATE SET name = excluded.name, color = excluded.color,
            kind = excluded.kind, position = excluded.position",
    )
    .bind(plan.id)
    .bind(plan.stages.iter().map(|s| s.id).collect::<Vec<_>>())
    .bind(plan.stages.iter().map(|s| s.name.clone()).collect::<Vec<_>>())
    .bind(plan.stages.iter().map(|s| s.color.clone()).collect::<Vec<_>>())
    .bind(plan.stages.iter().map(|s| s.kind.as_str()).collect::<Vec<_>>())
    .bind(plan.stages.iter().map(|s| s.position).collect::<Vec<_>>())
    .execute(&mut **tx)
    .await?;
    sqlx::query(
        "INSERT INTO loss_reasons (id, plan_id, name, archived, position)
         SELECT i, $1, n, a, p::int FROM UNNEST($2::uuid[], $3::text[], $4::bool[])
            WITH ORDINALITY AS t(i, n, a, p)
         ON CONFLICT (id) DO UPDATE SET name = excluded.name, archived = excluded.archived,
            position = excluded.position",
    )
    .bind(plan.id)
    .bind(plan.loss_reasons.iter().map(|r| r.id).collect::<Vec<_>>())
    .bind(
        plan.loss_reasons
            .iter()
            .map(|r| r.name.clone())
            .collect::<Vec<_>>(),
    )
    .bind(
        plan.loss_reasons
            .iter()
            .map(|r| r.archived)
            .collect::<Vec<_>>(),
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}
