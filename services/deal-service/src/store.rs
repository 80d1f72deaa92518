//! PostgreSQL access of deal-service. Every change writes its history row and its outbox
//! event in the same transaction as the change itself.

use prost::Message as _;
use salesplan_platform::{ApiError, bus::streams, error::is_unique_violation, ids};
use salesplan_proto::v1 as pb;
use sqlx::{PgPool, Postgres, Row, Transaction, postgres::PgRow};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::domain::{
    Money,
    deal::{Deal, DealStatus, NewDeal},
    plan::{Distribution, Plan, PlanDraft, Stage, StageKind, Strategy},
};
use salesplan_platform::validate::ContactInput;

/// The NOTIFY channel that wakes the outbox relay.
pub const OUTBOX_CHANNEL: &str = "deal_service_outbox";

#[derive(Clone)]
pub struct Store {
    pool: PgPool,
}

impl Store {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub async fn create_plan(
        &self,
        account_id: &str,
        actor_id: &str,
        draft: PlanDraft,
    ) -> Result<Plan, ApiError> {
        let now = now();
        let plan = draft.into_plan(account_id, ids::new_id(), now, ids::new_id);
        let (mode, prefer_related, strategy) = distribution_columns(plan.distribution);
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO plans (id, account_id, name, average_amount_minor, currency, chat_label,
                distribution_mode, prefer_related, strategy, archived, version, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, false, $10, $11, $11)",
        )
        .bind(plan.id)
        .bind(account_id)
        .bind(&plan.name)
        .bind(plan.average_amount.amount_minor)
        .bind(&plan.average_amount.currency)
        .bind(&plan.chat_label)
        .bind(mode)
        .bind(prefer_related)
        .bind(strategy)
        .bind(plan.version)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO plan_managers (plan_id, manager_id, position)
             SELECT $1, m, p::int FROM UNNEST($2::text[]) WITH ORDINALITY AS t(m, p)",
        )
        .bind(plan.id)
        .bind(&plan.managers)
        .execute(&mut *tx)
        .await?;
        for stage in &plan.stages {
            sqlx::query(
                "INSERT INTO stages (id, plan_id, name, color, kind, position)
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(stage.id)
            .bind(plan.id)
            .bind(&stage.name)
            .bind(&stage.color)
            .bind(stage.kind.as_str())
            .bind(stage.position)
            .execute(&mut *tx)
            .await?;
        }
        enqueue_plan_event(&mut tx, &plan, pb::plan_event::Kind::Created, actor_id, now).await?;
        tx.commit().await?;
        Ok(plan)
    }

    pub async fn plan(&self, account_id: &str, plan_id: Uuid) -> Result<Plan, ApiError> {
        let mut conn = self.pool.acquire().await?;
        load_plan(&mut conn, account_id, plan_id, false).await
    }

    /// Creates the deal, or returns the one created before with the same idempotency key
    /// (`false` in the second place).
    pub async fn create_deal(
        &self,
        account_id: &str,
        actor_id: &str,
        input: NewDeal,
    ) -> Result<(Deal, bool), ApiError> {
        if let Some(existing) = self.deal_by_key(account_id, &input.idempotency_key).await? {
            return Ok((existing, false));
        }
        let now = now();
        let mut tx = self.pool.begin().await?;
        // FOR SHARE: a concurrent plan change (stages, managers) waits for this deal.
        let plan = load_plan(&mut tx, account_id, input.plan_id, true).await?;
        let deal = input.into_deal(&plan, ids::new_id(), now)?;
        let inserted = insert_deal(&mut tx, &deal).await;
        match inserted {
            Ok(()) => {}
            Err(err) if is_unique_violation(&err) => {
                // A concurrent request with the same key won the race.
                drop(tx);
                let existing = self
                    .deal_by_key(account_id, &deal.idempotency_key)
                    .await?
                    .ok_or_else(|| ApiError::Aborted("concurrent create, retry".into()))?;
                return Ok((existing, false));
            }
            Err(err) => return Err(err.into()),
        }
        record_history(
            &mut tx,
            &deal,
            actor_id,
            "created",
            None,
            Some(deal.stage_id.to_string()),
            now,
        )
        .await?;
        enqueue_deal_event(
            &mut tx,
            &deal,
            pb::deal_event::Kind::Created,
            actor_id,
            now,
            None,
            None,
        )
        .await?;
        tx.commit().await?;
        Ok((deal, true))
    }

    pub async fn deal(&self, account_id: &str, deal_id: Uuid) -> Result<Deal, ApiError> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "{DEAL_COLUMNS} WHERE account_id = $1 AND id = $2"
        )))
        .bind(account_id)
        .bind(deal_id)
        .fetch_optional(&self.pool)
        .await?
        .map(|row| deal_from_row(&row))
        .transpose()?
        .ok_or_else(|| ApiError::not_found(format!("deal {deal_id}")))
    }

    async fn deal_by_key(&self, account_id: &str, key: &str) -> Result<Option<Deal>, ApiError> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "{DEAL_COLUMNS} WHERE account_id = $1 AND idempotency_key = $2"
        )))
        .bind(account_id)
        .bind(key)
        .fetch_optional(&self.pool)
        .await?
        .map(|row| deal_from_row(&row))
        .transpose()
    }
}

fn now() -> OffsetDateTime {
    // Microseconds: what PostgreSQL stores, so a value read back equals the one written.
    let now = OffsetDateTime::now_utc();
    now.replace_nanosecond(now.nanosecond() / 1_000 * 1_000)
        .unwrap_or(now)
}

fn distribution_columns(d: Distribution) -> (&'static str, bool, &'static str) {
    match d {
        Distribution::Manual => ("manual", false, Strategy::RoundRobin.as_str()),
        Distribution::Auto {
            prefer_related,
            strategy,
        } => ("auto", prefer_related, strategy.as_str()),
    }
}

fn corrupt(what: &str) -> ApiError {
    ApiError::internal(format!("unexpected value in column {what}"))
}

async fn load_plan(
    conn: &mut sqlx::PgConnection,
    account_id: &str,
    plan_id: Uuid,
    lock: bool,
) -> Result<Plan, ApiError> {
    let lock = if lock { " FOR SHARE" } else { "" };
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT id, account_id, name, average_amount_minor, currency, chat_label,
                distribution_mode, prefer_related, strategy, archived, version, created_at, updated_at
         FROM plans WHERE account_id = $1 AND id = $2{lock}"
    )))
    .bind(account_id)
    .bind(plan_id)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| ApiError::not_found(format!("plan {plan_id}")))?;
    let managers: Vec<String> = sqlx::query_scalar(
        "SELECT manager_id FROM plan_managers WHERE plan_id = $1 ORDER BY position",
    )
    .bind(plan_id)
    .fetch_all(&mut *conn)
    .await?;
    let stages = sqlx::query(
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
    .collect::<Result<Vec<_>, ApiError>>()?;
    let mode: &str = row.try_get("distribution_mode")?;
    let strategy: &str = row.try_get("strategy")?;
    let distribution = match mode {
        "manual" => Distribution::Manual,
        "auto" => Distribution::Auto {
            prefer_related: row.try_get("prefer_related")?,
            strategy: Strategy::parse(strategy).ok_or_else(|| corrupt("plans.strategy"))?,
        },
        _ => return Err(corrupt("plans.distribution_mode")),
    };
    Ok(Plan {
        id: row.try_get("id")?,
        account_id: row.try_get("account_id")?,
        name: row.try_get("name")?,
        average_amount: Money {
            amount_minor: row.try_get("average_amount_minor")?,
            currency: row.try_get("currency")?,
        },
        chat_label: row.try_get("chat_label")?,
        distribution,
        managers,
        stages,
        archived: row.try_get("archived")?,
        version: row.try_get("version")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

const DEAL_COLUMNS: &str = "SELECT id, account_id, plan_id, stage_id, status, manager_id,
    contact_external_id, contact_name, contact_email, contact_phone, title, amount_minor, currency,
    loss_reason_id, stage_before_close_id, idempotency_key, version, created_at, updated_at, closed_at
    FROM deals";

fn deal_from_row(row: &PgRow) -> Result<Deal, ApiError> {
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
    })
}

async fn insert_deal(tx: &mut Transaction<'_, Postgres>, deal: &Deal) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO deals (id, account_id, plan_id, stage_id, status, manager_id,
            contact_external_id, contact_name, contact_email, contact_phone, contact_phone_digits,
            title, amount_minor, currency, loss_reason_id, stage_before_close_id, idempotency_key,
            version, created_at, updated_at, closed_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18,
                 $19, $20, $21)",
    )
    .bind(deal.id)
    .bind(&deal.account_id)
    .bind(deal.plan_id)
    .bind(deal.stage_id)
    .bind(deal.status.as_str())
    .bind(&deal.manager_id)
    .bind(&deal.contact.external_id)
    .bind(&deal.contact.name)
    .bind(&deal.contact.email)
    .bind(&deal.contact.phone)
    .bind(deal.contact.phone_digits())
    .bind(&deal.title)
    .bind(deal.amount.amount_minor)
    .bind(&deal.amount.currency)
    .bind(deal.loss_reason_id)
    .bind(deal.stage_before_close_id)
    .bind(&deal.idempotency_key)
    .bind(deal.version)
    .bind(deal.created_at)
    .bind(deal.updated_at)
    .bind(deal.closed_at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn record_history(
    tx: &mut Transaction<'_, Postgres>,
    deal: &Deal,
    actor_id: &str,
    action: &str,
    from: Option<String>,
    to: Option<String>,
    at: OffsetDateTime,
) -> Result<(), ApiError> {
    sqlx::query(
        "INSERT INTO deal_history (account_id, deal_id, at, actor_id, action, from_value, to_value)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&deal.account_id)
    .bind(deal.id)
    .bind(at)
    .bind(actor_id)
    .bind(action)
    .bind(from)
    .bind(to)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn enqueue_deal_event(
    tx: &mut Transaction<'_, Postgres>,
    deal: &Deal,
    kind: pb::deal_event::Kind,
    actor_id: &str,
    at: OffsetDateTime,
    previous_manager_id: Option<String>,
    previous_stage_id: Option<String>,
) -> Result<(), ApiError> {
    let event_id = ids::new_id().to_string();
    let event = pb::DealEvent {
        event_id: event_id.clone(),
        account_id: deal.account_id.clone(),
        occurred_at: Some(crate::convert::timestamp(at)),
        kind: kind as i32,
        actor_id: actor_id.to_owned(),
        deal: Some(deal.into()),
        previous_manager_id,
        previous_stage_id,
    };
    let subject = streams::deal_subject(&deal.account_id, &kind_token(kind.as_str_name()));
    enqueue(tx, &subject, &event_id, event.encode_to_vec()).await
}

async fn enqueue_plan_event(
    tx: &mut Transaction<'_, Postgres>,
    plan: &Plan,
    kind: pb::plan_event::Kind,
    actor_id: &str,
    at: OffsetDateTime,
) -> Result<(), ApiError> {
    let event_id = ids::new_id().to_string();
    let event = pb::PlanEvent {
        event_id: event_id.clone(),
        account_id: plan.account_id.clone(),
        occurred_at: Some(crate::convert::timestamp(at)),
        kind: kind as i32,
        actor_id: actor_id.to_owned(),
        plan: Some(plan.into()),
    };
    let subject = streams::plan_subject(&plan.account_id, &kind_token(kind.as_str_name()));
    enqueue(tx, &subject, &event_id, event.encode_to_vec()).await
}

/// `KIND_CREATED` → `created`: the last token of the event's subject.
fn kind_token(name: &str) -> String {
    name.strip_prefix("KIND_")
        .unwrap_or(name)
        .to_ascii_lowercase()
}

async fn enqueue(
    tx: &mut Transaction<'_, Postgres>,
    subject: &str,
    message_id: &str,
    payload: Vec<u8>,
) -> Result<(), ApiError> {
    let headers = serde_json::to_value(salesplan_platform::telemetry::trace_headers())
        .map_err(ApiError::internal)?;
    sqlx::query(
        "INSERT INTO outbox (subject, message_id, payload, headers) VALUES ($1, $2, $3, $4)",
    )
    .bind(subject)
    .bind(message_id)
    .bind(payload)
    .bind(headers)
    .execute(&mut **tx)
    .await?;
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(OUTBOX_CHANNEL)
        .execute(&mut **tx)
        .await?;
    Ok(())
}
