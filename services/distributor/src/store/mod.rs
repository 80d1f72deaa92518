//! PostgreSQL state of the distributor: plan copies, decisions, open-deal counts,
//! contact relations and rejected leads.

mod rejections;

pub use rejections::{After, Rejection};

use std::collections::{BTreeMap, HashMap};

use prost::Message as _;
use salesplan_platform::db::key_lookups_only;
use salesplan_proto::v1 as pb;
use sqlx::{PgPool, Postgres, Row, Transaction};
use uuid::Uuid;

use crate::domain::distribution::{
    Candidate, Cursor, Decision, Lead, Mode, PlanSettings, Strategy, decide,
};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("unexpected value in column {0}")]
    Corrupt(&'static str),
    #[error("stored decision cannot be decoded: {0}")]
    Decode(#[from] prost::DecodeError),
}

impl From<StoreError> for salesplan_platform::ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Database(e) => e.into(),
            other => Self::internal(other),
        }
    }
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
    /// The plan's version the listener checked when it accepted the lead (0: not known).
    pub plan_version: i64,
    pub lead: Lead,
    pub contact_key: Option<String>,
}

/// The outcome of deciding a plan's leads.
pub enum PlanBatch {
    /// The copy of the plan is missing or older than the version a lead was accepted at:
    /// bring it up to date first. (An archived plan still decides: deal-service creates
    /// the deals of leads accepted before the archive and refuses the others.)
    Stale,
    /// The decision for each lead (new or made before), and the new ones as records.
    Decided {
        decisions: HashMap<Uuid, Option<String>>,
        new: Vec<pb::Assignment>,
    },
}

/// A deal as a deal event shows it.
#[derive(Debug, Clone)]
pub struct DealState {
    pub deal_id: Uuid,
    pub account_id: String,
    pub plan_id: Uuid,
    pub manager_id: Option<String>,
    pub open: bool,
    pub version: i64,
    pub idempotency_key: String,
    pub contact_key: Option<String>,
    pub created_at: time::OffsetDateTime,
}

#[derive(Clone)]
pub struct Store {
    pool: PgPool,
}

/// Count changes, sorted so concurrent transactions lock counter rows in one order.
type Deltas = BTreeMap<(Uuid, String), i64>;

async fn apply_deltas(
    tx: &mut Transaction<'_, Postgres>,
    deltas: &Deltas,
) -> Result<(), sqlx::Error> {
    let changed: Vec<_> = deltas.iter().filter(|(_, d)| **d != 0).collect();
    if changed.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO open_deals (plan_id, manager_id, open)
         SELECT p, m, d FROM UNNEST($1::uuid[], $2::text[], $3::bigint[]) AS t(p, m, d)
         ON CONFLICT (plan_id, manager_id) DO UPDATE SET open = open_deals.open + excluded.open",
    )
    .bind(changed.iter().map(|((p, _), _)| *p).collect::<Vec<_>>())
    .bind(
        changed
            .iter()
            .map(|((_, m), _)| m.clone())
            .collect::<Vec<_>>(),
    )
    .bind(changed.iter().map(|(_, d)| **d).collect::<Vec<_>>())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

impl Store {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// Applies a plan snapshot unless a newer one was applied already. The turn survives
    /// every update. A plan id of another account (a forged event) changes nothing: plan ids
    /// are random, so one cannot be taken before its account's own event arrives.
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
             WHERE plans.version < excluded.version AND plans.account_id = excluded.account_id",
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
    /// turn moves once per new lead however many replicas run, counts stay exact, and a
    /// lead decided before keeps its decision.
    pub async fn decide_batch(
        &self,
        account_id: &str,
        plan_id: Uuid,
        leads: &[PendingLead],
        mut random: impl FnMut() -> u64,
    ) -> Result<PlanBatch, StoreError> {
        let mut tx = self.pool.begin().await?;
        key_lookups_only(&mut tx).await?;
        let row = sqlx::query(
            "SELECT mode, prefer_related, strategy, managers, archived, rr_last, rr_last_index,
                version
             FROM plans WHERE plan_id = $1 AND account_id = $2 FOR UPDATE",
        )
        .bind(plan_id)
        .bind(account_id)
        .fetch_optional(&mut *tx)
        .await?;
        let needed = leads.iter().map(|l| l.plan_version).max().unwrap_or(0);
        let Some(row) = row.filter(|r| r.try_get::<i64, _>("version").is_ok_and(|v| v >= needed))
        else {
            return Ok(PlanBatch::Stale);
        };
        let plan_version: i64 = row.try_get("version")?;
        let settings = settings_from(&row)?;
        let mut cursor = Cursor {
            last: row.try_get("rr_last")?,
            last_index: row.try_get::<i64, _>("rr_last_index")? as u64,
        };

        let ids: Vec<Uuid> = leads.iter().map(|l| l.intake_id).collect();
        let mut decisions: HashMap<Uuid, Option<String>> = sqlx::query(
            "SELECT intake_id, manager_id FROM assignments
                 WHERE intake_id = ANY($1) AND account_id = $2",
        )
        .bind(&ids)
        .bind(account_id)
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|r| Ok((r.try_get("intake_id")?, r.try_get("manager_id")?)))
        .collect::<Result<_, sqlx::Error>>()?;
        // A lead can be in the batch twice (published again after JetStream's duplicate
        // window): it is decided once.
        let mut seen = std::collections::HashSet::new();
        let pending: Vec<&PendingLead> = leads
            .iter()
            .filter(|l| !decisions.contains_key(&l.intake_id) && seen.insert(l.intake_id))
            .collect();
        if pending.is_empty() {
            return Ok(PlanBatch::Decided {
                decisions,
                new: Vec::new(),
            });
        }

        let keys: Vec<String> = pending
            .iter()
            .filter_map(|l| l.contact_key.clone())
            .collect();
        let mut previous: HashMap<String, String> = sqlx::query(
            // One probe of the (account, key) primary key per key: with `contact_key =
            // ANY(…)` the planner reads every relation of the account instead (`LIMIT 1`
            // keeps the probe from being flattened into a join).
            "SELECT c.contact_key, c.manager_id FROM UNNEST($2::text[]) AS k(key)
             CROSS JOIN LATERAL (SELECT contact_key, manager_id FROM contact_managers
                                 WHERE account_id = $1 AND contact_key = k.key LIMIT 1) c",
        )
        .bind(account_id)
        .bind(&keys)
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|r| Ok((r.try_get("contact_key")?, r.try_get("manager_id")?)))
        .collect::<Result<_, sqlx::Error>>()?;
        let mut open: HashMap<String, i64> =
            sqlx::query("SELECT manager_id, open FROM open_deals WHERE plan_id = $1")
                .bind(plan_id)
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|r| Ok((r.try_get("manager_id")?, r.try_get("open")?)))
                .collect::<Result<_, sqlx::Error>>()?;

        let now = time::OffsetDateTime::now_utc();
        let mut new = Vec::with_capacity(pending.len());
        let mut deltas = Deltas::new();
        let mut relations: Vec<(String, String)> = Vec::new();
        for lead in pending {
            let mut input = lead.lead.clone();
            input.previous_manager = lead
                .contact_key
                .as_ref()
                .and_then(|k| previous.get(k).cloned());
            let decision = decide(&settings, &input, &mut cursor, &mut open, random());
            if let Some(m) = &decision.manager {
                *deltas.entry((plan_id, m.clone())).or_default() += 1;
                if let Some(key) = &lead.contact_key {
                    previous.insert(key.clone(), m.clone());
                    relations.push((key.clone(), m.clone()));
                }
            }
            if decision.manager.is_none() && matches!(settings.mode, Mode::Auto { .. }) {
                tracing::warn!(%plan_id, reason = %decision.reason, "lead left unassigned");
                salesplan_platform::telemetry::meter("distributor")
                    .u64_counter("salesplan.distributor.unassigned")
                    .build()
                    .add(
                        1,
                        &[opentelemetry::KeyValue::new(
                            "reason",
                            decision.reason.clone(),
                        )],
                    );
            }
            decisions.insert(lead.intake_id, decision.manager.clone());
            new.push(record(
                account_id,
                (plan_id, plan_version),
                lead,
                &input,
                &settings,
                decision,
                now,
            ));
        }

        sqlx::query(
            "INSERT INTO assignments (intake_id, account_id, plan_id, manager_id, reason, explanation)
             SELECT i, $2, $3, m, r, e FROM UNNEST($1::uuid[], $4::text[], $5::text[], $6::bytea[])
                AS t(i, m, r, e)
             ON CONFLICT (account_id, intake_id) DO NOTHING",
        )
        .bind(new.iter().map(|a| Uuid::parse_str(&a.intake_id).unwrap_or_default()).collect::<Vec<_>>())
        .bind(account_id)
        .bind(plan_id)
        .bind(new.iter().map(|a| a.manager_id.clone()).collect::<Vec<_>>())
        .bind(new.iter().map(|a| a.reason.clone()).collect::<Vec<_>>())
        .bind(new.iter().map(|a| a.encode_to_vec()).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?;
        apply_deltas(&mut tx, &deltas).await?;
        // The relation counts from the decision on: the same contact's next lead, even
        // before its deal exists, goes to the same manager.
        let mut latest: BTreeMap<String, String> = BTreeMap::new();
        latest.extend(relations);
        sqlx::query(
            "INSERT INTO contact_managers (account_id, contact_key, manager_id, deal_created)
             SELECT $1, k, m, now() FROM UNNEST($2::text[], $3::text[]) AS t(k, m)
             ON CONFLICT (account_id, contact_key) DO UPDATE
                SET manager_id = excluded.manager_id, deal_created = excluded.deal_created",
        )
        .bind(account_id)
        .bind(latest.keys().cloned().collect::<Vec<_>>())
        .bind(latest.values().cloned().collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE plans SET rr_last = $2, rr_last_index = $3 WHERE plan_id = $1")
            .bind(plan_id)
            .bind(&cursor.last)
            .bind(cursor.last_index as i64)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(PlanBatch::Decided { decisions, new })
    }

    /// Forgets a decision that deal-service refused (its manager left the plan in the
    /// meantime), so the lead is decided again on its next delivery.
    pub async fn forget(&self, account_id: &str, intake_id: Uuid) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(
            "DELETE FROM assignments WHERE intake_id = $1 AND account_id = $2 AND deal_id IS NULL
             RETURNING plan_id, manager_id",
        )
        .bind(intake_id)
        .bind(account_id)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(row) = row
            && let Some(manager) = row.try_get::<Option<String>, _>("manager_id")?
        {
            let deltas = Deltas::from([((row.try_get("plan_id")?, manager), -1)]);
            apply_deltas(&mut tx, &deltas).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Applies deal events (newest state per deal): open-deal counts, contact relations,
    /// decision ↔ deal links. Events not newer than what is known change nothing.
    pub async fn apply_deals(&self, states: &[DealState]) -> Result<(), StoreError> {
        let mut newest: BTreeMap<Uuid, &DealState> = BTreeMap::new();
        for state in states {
            let slot = newest.entry(state.deal_id).or_insert(state);
            if state.version > slot.version {
                *slot = state;
            }
        }
        if newest.is_empty() {
            return Ok(());
        }
        let ids: Vec<Uuid> = newest.keys().copied().collect();
        let mut tx = self.pool.begin().await?;
        key_lookups_only(&mut tx).await?;
        // Scoped by account: a deal id of another account (a forged event) is never
        // this deal.
        let known: HashMap<Uuid, (Uuid, Option<String>, bool, i64)> = sqlx::query(
            "SELECT v.deal_id, v.plan_id, v.manager_id, v.open, v.version
             FROM deal_view v JOIN UNNEST($1::uuid[], $2::text[]) AS k(d, a)
                ON v.deal_id = k.d AND v.account_id = k.a
             ORDER BY v.deal_id FOR UPDATE OF v",
        )
        .bind(&ids)
        .bind(
            newest
                .values()
                .map(|s| s.account_id.clone())
                .collect::<Vec<_>>(),
        )
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|r| {
            Ok((
                r.try_get("deal_id")?,
                (
                    r.try_get("plan_id")?,
                    r.try_get("manager_id")?,
                    r.try_get("open")?,
                    r.try_get("version")?,
                ),
            ))
        })
        .collect::<Result<_, sqlx::Error>>()?;
        // Deals never seen: if the distributor decided them, the decision already counted.
        // A deal's idempotency key is the caller's choice: it is the decision of a lead only
        // within the same account and plan (another account may send any key it likes).
        let unseen: Vec<(Uuid, &str, Uuid)> = newest
            .values()
            .filter(|s| !known.contains_key(&s.deal_id))
            .filter_map(|s| {
                let key = Uuid::parse_str(&s.idempotency_key).ok()?;
                Some((key, s.account_id.as_str(), s.plan_id))
            })
            .collect();
        let decided: HashMap<Uuid, (Uuid, Option<String>)> = sqlx::query(
            "SELECT a.intake_id, a.plan_id, a.manager_id
             FROM UNNEST($1::uuid[], $2::text[], $3::uuid[]) AS k(i, acct, plan)
             JOIN assignments a ON a.intake_id = k.i AND a.account_id = k.acct AND a.plan_id = k.plan",
        )
        .bind(unseen.iter().map(|(k, _, _)| *k).collect::<Vec<_>>())
        .bind(unseen.iter().map(|(_, a, _)| (*a).to_owned()).collect::<Vec<_>>())
        .bind(unseen.iter().map(|(_, _, p)| *p).collect::<Vec<_>>())
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|r| {
            Ok((
                r.try_get("intake_id")?,
                (r.try_get("plan_id")?, r.try_get("manager_id")?),
            ))
        })
        .collect::<Result<_, sqlx::Error>>()?;

        let mut deltas = Deltas::new();
        let mut applied = Vec::new();
        let mut links: Vec<(Uuid, Uuid, &str)> = Vec::new();
        for state in newest.values() {
            let before: Option<(Uuid, String)> = match known.get(&state.deal_id) {
                Some((_, _, _, version)) if *version >= state.version => continue,
                Some((plan, manager, open, _)) => {
                    manager.clone().filter(|_| *open).map(|m| (*plan, m))
                }
                None => {
                    let key = Uuid::parse_str(&state.idempotency_key).ok();
                    match key.and_then(|k| decided.get(&k)) {
                        Some((plan, manager)) => {
                            links.push((
                                key.unwrap_or_default(),
                                state.deal_id,
                                state.account_id.as_str(),
                            ));
                            manager.clone().map(|m| (*plan, m))
                        }
                        None => None,
                    }
                }
            };
            let after = state
                .manager_id
                .clone()
                .filter(|_| state.open)
                .map(|m| (state.plan_id, m));
            if before != after {
                if let Some(b) = before {
                    *deltas.entry(b).or_default() -= 1;
                }
                if let Some(a) = after {
                    *deltas.entry(a).or_default() += 1;
                }
            }
            applied.push(*state);
        }
        apply_deltas(&mut tx, &deltas).await?;
        sqlx::query(
            "INSERT INTO deal_view (deal_id, plan_id, manager_id, open, version, account_id)
             SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::bool[], $5::bigint[],
                $6::text[])
             ON CONFLICT (deal_id) DO UPDATE SET plan_id = excluded.plan_id,
                manager_id = excluded.manager_id, open = excluded.open, version = excluded.version
             WHERE deal_view.version < excluded.version
                AND deal_view.account_id = excluded.account_id",
        )
        .bind(applied.iter().map(|s| s.deal_id).collect::<Vec<_>>())
        .bind(applied.iter().map(|s| s.plan_id).collect::<Vec<_>>())
        .bind(
            applied
                .iter()
                .map(|s| s.manager_id.clone())
                .collect::<Vec<_>>(),
        )
        .bind(applied.iter().map(|s| s.open).collect::<Vec<_>>())
        .bind(applied.iter().map(|s| s.version).collect::<Vec<_>>())
        .bind(
            applied
                .iter()
                .map(|s| s.account_id.clone())
                .collect::<Vec<_>>(),
        )
        .execute(&mut *tx)
        .await?;
        // The contact's relation follows the manager of its most recent deal.
        let mut relations: BTreeMap<(String, String), (&str, time::OffsetDateTime)> =
            BTreeMap::new();
        for s in &applied {
            if let (Some(key), Some(manager)) = (&s.contact_key, &s.manager_id) {
                let slot = relations
                    .entry((s.account_id.clone(), key.clone()))
                    .or_insert((manager, s.created_at));
                if s.created_at > slot.1 {
                    *slot = (manager, s.created_at);
                }
            }
        }
        sqlx::query(
            "INSERT INTO contact_managers (account_id, contact_key, manager_id, deal_created)
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::timestamptz[])
             ON CONFLICT (account_id, contact_key) DO UPDATE
                SET manager_id = excluded.manager_id, deal_created = excluded.deal_created
             WHERE contact_managers.deal_created <= excluded.deal_created",
        )
        .bind(relations.keys().map(|(a, _)| a.clone()).collect::<Vec<_>>())
        .bind(relations.keys().map(|(_, k)| k.clone()).collect::<Vec<_>>())
        .bind(
            relations
                .values()
                .map(|(m, _)| (*m).to_owned())
                .collect::<Vec<_>>(),
        )
        .bind(relations.values().map(|(_, at)| *at).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE assignments SET deal_id = t.d
             FROM UNNEST($1::uuid[], $2::uuid[], $3::text[]) AS t(i, d, a)
             WHERE assignments.intake_id = t.i AND assignments.account_id = t.a
                AND assignments.deal_id IS NULL",
        )
        .bind(links.iter().map(|(i, _, _)| *i).collect::<Vec<_>>())
        .bind(links.iter().map(|(_, d, _)| *d).collect::<Vec<_>>())
        .bind(
            links
                .iter()
                .map(|(_, _, a)| (*a).to_owned())
                .collect::<Vec<_>>(),
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The decision that made `deal_id`, within the account.
    pub async fn assignment_of_deal(
        &self,
        account_id: &str,
        deal_id: Uuid,
    ) -> Result<Option<pb::Assignment>, StoreError> {
        let row = sqlx::query(
            "SELECT explanation FROM assignments WHERE account_id = $1 AND deal_id = $2",
        )
        .bind(account_id)
        .bind(deal_id)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let bytes: Vec<u8> = row.try_get("explanation")?;
        let mut assignment = pb::Assignment::decode(bytes.as_slice())?;
        assignment.deal_id = deal_id.to_string();
        Ok(Some(assignment))
    }

    /// The decision of the lead `intake_id` of the plan, within the account (a deal's key
    /// is its creator's choice: it names a decision only within the same account and plan).
    pub async fn assignment_of_lead(
        &self,
        account_id: &str,
        plan_id: Uuid,
        intake_id: Uuid,
    ) -> Result<Option<pb::Assignment>, StoreError> {
        let row = sqlx::query(
            "SELECT explanation FROM assignments
             WHERE account_id = $1 AND intake_id = $2 AND plan_id = $3",
        )
        .bind(account_id)
        .bind(intake_id)
        .bind(plan_id)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let bytes: Vec<u8> = row.try_get("explanation")?;
        Ok(Some(pb::Assignment::decode(bytes.as_slice())?))
    }

    /// Open deals per manager of a plan, as the distributor counts them.
    pub async fn open_counts(&self, plan_id: Uuid) -> Result<HashMap<String, i64>, StoreError> {
        Ok(
            sqlx::query("SELECT manager_id, open FROM open_deals WHERE plan_id = $1")
                .bind(plan_id)
                .fetch_all(&self.pool)
                .await?
                .iter()
                .map(|r| Ok((r.try_get("manager_id")?, r.try_get("open")?)))
                .collect::<Result<_, sqlx::Error>>()?,
        )
    }
}

/// The record of a decision made on the plan `(id, version)`.
fn record(
    account_id: &str,
    (plan_id, plan_version): (Uuid, i64),
    lead: &PendingLead,
    input: &Lead,
    settings: &PlanSettings,
    decision: Decision,
    at: time::OffsetDateTime,
) -> pb::Assignment {
    let (mode, strategy, prefer_related) = match settings.mode {
        _ if settings.names(input) => ("bulk", "", false),
        Mode::Manual => ("manual", "", false),
        Mode::Auto {
            prefer_related,
            strategy,
        } => ("auto", strategy.as_str(), prefer_related),
    };
    pb::Assignment {
        intake_id: lead.intake_id.to_string(),
        account_id: account_id.to_owned(),
        plan_id: plan_id.to_string(),
        deal_id: String::new(),
        mode: mode.into(),
        strategy: strategy.into(),
        prefer_related,
        related_manager_id: input
            .named_related
            .clone()
            .or_else(|| input.previous_manager.clone()),
        candidates: decision
            .candidates
            .into_iter()
            .map(|c: Candidate| pb::Candidate {
                manager_id: c.manager_id,
                open_deals: c.open_deals,
                chosen: c.chosen,
                note: c.note,
            })
            .collect(),
        manager_id: decision.manager,
        reason: decision.reason,
        decided_at: Some(prost_types::Timestamp {
            seconds: at.unix_timestamp(),
            nanos: at.nanosecond() as i32,
        }),
        plan_version,
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
