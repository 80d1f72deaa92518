//! PostgreSQL state of the distributor: plan copies, decisions, open-deal counts,
//! contact relations and rejected leads.

mod deadlines;
mod managers;
mod queue;
mod rejections;

pub use deadlines::{Expiring, ExpiryKnown, OpenExpiry, Reassignment, Timer};
pub use managers::ManagerCopy;
pub use queue::{OpenQueue, Order, QueueKnown};
pub use rejections::{After, Rejection};

use std::collections::{BTreeMap, HashMap};

use salesplan_platform::db::{self, key_lookups_only};
use salesplan_platform::privacy::ContactKeys;
use sqlx::{PgPool, Postgres, Row, Transaction};
use uuid::Uuid;

use crate::SCHEMA;
use crate::domain::{
    batch::{Batch, Known, PendingLead},
    deadline::Response,
    deal_view::{self, Changes, DealState, Deltas, KnownDeals, LeadDecision, Seen},
    distribution::{Cursor, DecidedBy, Mode, PlanSettings, Strategy},
};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("unexpected value in column {0}")]
    Corrupt(&'static str),
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

/// A batch of one plan's leads being decided: the plan's row is locked until
/// [`OpenBatch::save`] (or drop, which changes nothing).
pub struct OpenBatch {
    tx: Transaction<'static, Postgres>,
    account_id: String,
    plan_id: Uuid,
}

/// A decision to keep: the lead, its manager, and its explanation (an encoded
/// `Assignment`, built by the caller).
pub struct NewAssignment {
    pub intake_id: Uuid,
    pub manager_id: Option<String>,
    pub reason: String,
    pub explanation: Vec<u8>,
}

impl OpenBatch {
    /// Keeps the decisions made now and what they changed (open counts, contact
    /// relations, the turn), and releases the plan. Nothing decided now: nothing written.
    pub async fn save(
        mut self,
        batch: &Batch,
        assignments: &[NewAssignment],
    ) -> Result<(), StoreError> {
        if assignments.is_empty() {
            return Ok(());
        }
        let tx = &mut self.tx;
        sqlx::query(
            "INSERT INTO assignments (intake_id, account_id, plan_id, manager_id, reason, explanation)
             SELECT i, $2, $3, m, r, e FROM UNNEST($1::uuid[], $4::text[], $5::text[], $6::bytea[])
                AS t(i, m, r, e)
             ON CONFLICT (account_id, intake_id) DO NOTHING",
        )
        .bind(assignments.iter().map(|a| a.intake_id).collect::<Vec<_>>())
        .bind(&self.account_id)
        .bind(self.plan_id)
        .bind(assignments.iter().map(|a| a.manager_id.clone()).collect::<Vec<_>>())
        .bind(assignments.iter().map(|a| a.reason.clone()).collect::<Vec<_>>())
        .bind(assignments.iter().map(|a| a.explanation.clone()).collect::<Vec<_>>())
        .execute(&mut **tx)
        .await?;
        let deltas: Deltas = batch
            .opened
            .iter()
            .map(|(manager, n)| ((self.plan_id, manager.clone()), *n))
            .collect();
        apply_deltas(tx, &deltas).await?;
        sqlx::query(
            "INSERT INTO contact_managers (account_id, contact_key, manager_id, deal_created)
             SELECT $1, k, m, now() FROM UNNEST($2::text[], $3::text[]) AS t(k, m)
             ON CONFLICT (account_id, contact_key) DO UPDATE
                SET manager_id = excluded.manager_id, deal_created = excluded.deal_created",
        )
        .bind(&self.account_id)
        .bind(batch.relations.keys().cloned().collect::<Vec<_>>())
        .bind(batch.relations.values().cloned().collect::<Vec<_>>())
        .execute(&mut **tx)
        .await?;
        save_cursor(tx, self.plan_id, &batch.cursor).await?;
        self.tx.commit().await?;
        Ok(())
    }
}

/// The due rows of `table` (response timers, assignment orders) a lease takes, locked or
/// skipped: per account with rows (found by a skip scan of the `(account_id,
/// next_attempt)` index), its oldest due rows up to its share `$3` less what it has in
/// hand (`$4` accounts, `$5` counts); the accounts' first before anyone's second, at most
/// `$1`. A lease reads an entry per account with rows and the rows it takes, however many
/// one account has due: a backlog of one account costs the others' leases nothing.
fn fair_due(table: &str) -> String {
    format!(
        "WITH RECURSIVE accounts(account_id) AS (
             (SELECT account_id FROM {table} ORDER BY account_id LIMIT 1)
             UNION ALL
             SELECT (SELECT w.account_id FROM {table} w WHERE w.account_id > a.account_id
                     ORDER BY w.account_id LIMIT 1)
             FROM accounts a WHERE a.account_id IS NOT NULL),
         turns AS (
             SELECT d.deal_id, d.next_attempt, COALESCE(h.n, 0) + d.k AS k
             FROM accounts a
             LEFT JOIN UNNEST($4::text[], $5::int[]) AS h(account_id, n)
                 ON h.account_id = a.account_id
             CROSS JOIN LATERAL (
                 SELECT w.deal_id, w.next_attempt,
                     row_number() OVER (ORDER BY w.next_attempt) AS k
                 FROM {table} w
                 WHERE w.account_id = a.account_id AND w.next_attempt <= now()
                 ORDER BY w.next_attempt
                 LIMIT GREATEST($3 - COALESCE(h.n, 0), 0)) d
             WHERE a.account_id IS NOT NULL)
         SELECT deal_id FROM {table}
         WHERE deal_id IN (SELECT deal_id FROM turns ORDER BY k, next_attempt LIMIT $1)
             AND next_attempt <= now()
         FOR UPDATE SKIP LOCKED"
    )
}

/// `sql` (a statement over [`fair_due`]) with the lease's parameters bound: `$1` the most
/// rows, `$2` the lease, `$3` an account's share, `$4`/`$5` what is `held`. The SQL is
/// this code's own text around a table name of its own, nothing a caller sent.
fn leasing(
    sql: String,
    (limit, per_account): (usize, usize),
    held: &Held,
    lease: time::Duration,
) -> sqlx::query::Query<'_, Postgres, sqlx::postgres::PgArguments> {
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .bind(lease)
        .bind(i64::try_from(per_account).unwrap_or(i64::MAX))
        .bind(&held.accounts)
        .bind(&held.counts)
}

/// The leased items a process has in hand, per account: a lease counts them against the
/// account's share.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Held {
    pub accounts: Vec<String>,
    pub counts: Vec<i32>,
}

#[derive(Clone)]
pub struct Store {
    pool: PgPool,
    /// How contacts are recognised: keyed hashes only (docs/privacy.md).
    contact_keys: ContactKeys,
}

/// Locks the plan's row (decisions of one plan are made one transaction at a time) and
/// reads what deciding needs: settings, version, the turn.
async fn lock_plan(
    tx: &mut Transaction<'_, Postgres>,
    account_id: &str,
    plan_id: Uuid,
) -> Result<Option<sqlx::postgres::PgRow>, sqlx::Error> {
    sqlx::query(
        "SELECT mode, prefer_related, keep_related, strategy, managers, archived, rr_last,
            response_seconds, max_reassignments,
            rr_last_index, version, weights, caps, rr_credits, rr_credits_of, rr_credits_start
         FROM plans WHERE plan_id = $1 AND account_id = $2 FOR UPDATE",
    )
    .bind(plan_id)
    .bind(account_id)
    .fetch_optional(&mut **tx)
    .await
}

fn cursor_from(row: &sqlx::postgres::PgRow) -> Result<Cursor, sqlx::Error> {
    Ok(Cursor {
        last: row.try_get("rr_last")?,
        last_index: row.try_get::<i64, _>("rr_last_index")? as u64,
        credits: row.try_get("rr_credits")?,
        // Stored as the bits of a bigint.
        credits_of: row.try_get::<i64, _>("rr_credits_of")? as u64,
        credits_start: row.try_get::<i64, _>("rr_credits_start")? as u64,
    })
}

async fn save_cursor(
    tx: &mut Transaction<'_, Postgres>,
    plan_id: Uuid,
    cursor: &Cursor,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE plans SET rr_last = $2, rr_last_index = $3, rr_credits = $4, rr_credits_of = $5,
            rr_credits_start = $6
         WHERE plan_id = $1",
    )
    .bind(plan_id)
    .bind(&cursor.last)
    .bind(cursor.last_index as i64)
    .bind(&cursor.credits)
    .bind(cursor.credits_of as i64)
    .bind(cursor.credits_start as i64)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Open deals per manager of the plan.
async fn open_counts(
    conn: &mut sqlx::PgConnection,
    plan_id: Uuid,
) -> Result<HashMap<String, i64>, sqlx::Error> {
    sqlx::query("SELECT manager_id, open FROM open_deals WHERE plan_id = $1")
        .bind(plan_id)
        .fetch_all(conn)
        .await?
        .iter()
        .map(|r| Ok((r.try_get("manager_id")?, r.try_get("open")?)))
        .collect()
}

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
    pub fn new(pool: PgPool, contact_keys: ContactKeys) -> Self {
        Self { pool, contact_keys }
    }

    pub fn contact_keys(&self) -> &ContactKeys {
        &self.contact_keys
    }

    /// Replaces the plain contact keys (`ext:…`, `email:…`, `phone:…`) kept before keys were
    /// keyed with their keyed form, a thousand at a time; how many it replaced. Run at
    /// start, once per deployment in effect (replicas share the work: rows another is
    /// rewriting are skipped). Where a contact has both forms, the newer deal's manager wins,
    /// as it does for every relation.
    pub async fn key_plain_contact_keys(&self) -> Result<u64, StoreError> {
        let mut replaced = 0;
        loop {
            let mut tx = self.pool.begin().await?;
            // By the partial index of plain keys (its condition repeated).
            let rows: Vec<(String, String, String, time::OffsetDateTime)> = sqlx::query_as(
                "DELETE FROM contact_managers WHERE (account_id, contact_key) IN (
                     SELECT account_id, contact_key FROM contact_managers
                     WHERE contact_key NOT LIKE 'k1:%' LIMIT 1000 FOR UPDATE SKIP LOCKED)
                 RETURNING account_id, contact_key, manager_id, deal_created",
            )
            .fetch_all(&mut *tx)
            .await?;
            if rows.is_empty() {
                if replaced > 0 {
                    tracing::info!(replaced, "plain contact keys keyed");
                }
                return Ok(replaced);
            }
            replaced += rows.len() as u64;
            let keyed: Vec<String> = rows
                .iter()
                .map(|(account, plain, _, _)| self.contact_keys.of_plain(account, plain))
                .collect();
            sqlx::query(
                "INSERT INTO contact_managers AS c (account_id, contact_key, manager_id, deal_created)
                 SELECT DISTINCT ON (a, k) a, k, m, d
                 FROM UNNEST($1::text[], $2::text[], $3::text[], $4::timestamptz[]) AS x(a, k, m, d)
                 ORDER BY a, k, d DESC
                 ON CONFLICT (account_id, contact_key) DO UPDATE
                 SET manager_id = excluded.manager_id, deal_created = excluded.deal_created
                 WHERE c.deal_created <= excluded.deal_created",
            )
            .bind(rows.iter().map(|r| r.0.clone()).collect::<Vec<_>>())
            .bind(keyed)
            .bind(rows.iter().map(|r| r.2.clone()).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.3).collect::<Vec<_>>())
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
        }
    }

    /// Applies a plan snapshot unless a newer one was applied already. The turn survives
    /// every update. A plan id of another account (a forged event) changes nothing: plan ids
    /// are random, so one cannot be taken before its account's own event arrives.
    pub async fn apply_plan(&self, plan: &PlanCopy) -> Result<(), StoreError> {
        let mode = plan.settings.mode.decided_by().as_str();
        let (prefer_related, strategy) = match plan.settings.mode {
            Mode::Manual => (false, Strategy::RoundRobin),
            Mode::Auto {
                prefer_related,
                strategy,
            } => (prefer_related, strategy),
        };
        sqlx::query(
            "INSERT INTO plans (plan_id, account_id, version, mode, prefer_related, strategy, managers,
                archived, weights, caps, keep_related, response_seconds, max_reassignments)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
             ON CONFLICT (plan_id) DO UPDATE SET
                version = excluded.version, mode = excluded.mode,
                prefer_related = excluded.prefer_related, strategy = excluded.strategy,
                managers = excluded.managers, archived = excluded.archived,
                weights = excluded.weights, caps = excluded.caps,
                keep_related = excluded.keep_related, response_seconds = excluded.response_seconds,
                max_reassignments = excluded.max_reassignments, updated_at = now()
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
        .bind(
            plan.settings
                .weights
                .iter()
                .map(|w| *w as i32)
                .collect::<Vec<_>>(),
        )
        .bind(
            plan.settings
                .caps
                .iter()
                .map(|c| (*c).min(i32::MAX as u32) as i32)
                .collect::<Vec<_>>(),
        )
        .bind(plan.settings.keep_related)
        // Both at most a week's seconds and ten (deal-service checks them): they fit.
        .bind(plan.settings.response.map_or(0, |r| r.seconds as i32))
        .bind(plan.settings.response.map_or(0, |r| r.max_reassignments as i32))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Opens the decision of a batch of one plan's leads: locks the plan's row and loads
    /// what the decision needs ([`Known`]), in a transaction the [`OpenBatch`] keeps until
    /// it saves
    /// (the turn moves once per new lead however many replicas run, counts stay exact, and
    /// a lead decided before keeps its decision). `None` when the copy of the plan is
    /// missing or older than a lead's accepted version, or its members' availability
    /// older than the lead's.
    pub async fn open_batch(
        &self,
        account_id: &str,
        plan_id: Uuid,
        leads: &[PendingLead],
    ) -> Result<Option<(OpenBatch, Known)>, StoreError> {
        let mut tx = self.pool.begin().await?;
        key_lookups_only(&mut tx).await?;
        let row = lock_plan(&mut tx, account_id, plan_id).await?;
        let needed = leads.iter().map(|l| l.plan_version).max().unwrap_or(0);
        let Some(row) = row.filter(|r| r.try_get::<i64, _>("version").is_ok_and(|v| v >= needed))
        else {
            return Ok(None);
        };
        let ids: Vec<Uuid> = leads.iter().map(|l| l.intake_id).collect();
        let decided = sqlx::query(
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
        let keys: Vec<String> = leads.iter().filter_map(|l| l.contact_key.clone()).collect();
        let related = sqlx::query(
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
        let open = open_counts(&mut tx, plan_id).await?;
        let queue_ahead = queue::has_waiting(&mut tx, account_id, plan_id).await?;
        let settings = settings_from(&row)?;
        let (away, kept) = managers::away(
            &mut tx,
            account_id,
            &settings.managers,
            time::OffsetDateTime::now_utc(),
        )
        .await?;
        // A lead whose members' availability the copy may not hold as the lead was stamped
        // (a change not applied here yet, or one since, or other members on a later plan
        // version): stale like an older plan, brought up to date from deal-service.
        let version: i64 = row.try_get("version")?;
        let unsure = leads.iter().any(|l| {
            l.availability
                .is_some_and(|stamp| l.plan_version != version || !kept.covers(stamp))
        });
        if unsure {
            return Ok(None);
        }
        let known = Known {
            away,
            settings,
            plan_version: row.try_get("version")?,
            cursor: cursor_from(&row)?,
            open,
            related,
            decided,
            queue_ahead,
        };
        let opened = OpenBatch {
            tx,
            account_id: account_id.to_owned(),
            plan_id,
        };
        Ok(Some((opened, known)))
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
    /// decision ↔ deal links, as [`deal_view::changes`] works them out from what was
    /// known. Events not newer than what is known change nothing.
    pub async fn apply_deals(&self, states: &[DealState]) -> Result<(), StoreError> {
        let newest = deal_view::newest(states);
        if newest.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        key_lookups_only(&mut tx).await?;
        let known = known_deals(&mut tx, &newest).await?;
        let mut changes = deal_view::changes(&newest, &known);
        changes.forgotten = deal_view::forgotten(states, &known);
        save_deal_changes(&mut tx, &changes).await?;
        deadlines::apply_timers(&mut tx, &deal_view::fresh(states, &known), states).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The stored explanation (an encoded `Assignment`, as the caller saved it) of the
    /// decision that made `deal_id`, within the account.
    pub async fn assignment_of_deal(
        &self,
        account_id: &str,
        deal_id: Uuid,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        db::traced(SCHEMA, "SELECT assignments", async {
            let row = sqlx::query(
                "SELECT explanation FROM assignments WHERE account_id = $1 AND deal_id = $2",
            )
            .bind(account_id)
            .bind(deal_id)
            .fetch_optional(&self.pool)
            .await?;
            Ok(row.map(|row| row.try_get("explanation")).transpose()?)
        })
        .await
    }

    /// The stored explanations of the decisions `deal_id`'s current one replaced, oldest
    /// first, within the account.
    pub async fn earlier_assignments_of_deal(
        &self,
        account_id: &str,
        deal_id: Uuid,
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        db::traced(SCHEMA, "SELECT earlier_assignments", async {
            Ok(sqlx::query_scalar(
                "SELECT explanation FROM earlier_assignments
                 WHERE account_id = $1 AND deal_id = $2 ORDER BY id",
            )
            .bind(account_id)
            .bind(deal_id)
            .fetch_all(&self.pool)
            .await?)
        })
        .await
    }

    /// The stored explanations of the decisions linked to any of `deal_ids`, within the
    /// account, by deal.
    pub async fn assignments_of_deals(
        &self,
        account_id: &str,
        deal_ids: &[Uuid],
    ) -> Result<HashMap<Uuid, Vec<u8>>, StoreError> {
        db::traced(SCHEMA, "SELECT assignments", async {
            let rows = sqlx::query(
                "SELECT deal_id, explanation FROM assignments
                 WHERE account_id = $1 AND deal_id = ANY($2)",
            )
            .bind(account_id)
            .bind(deal_ids)
            .fetch_all(&self.pool)
            .await?;
            rows.iter()
                .map(|row| Ok((row.try_get("deal_id")?, row.try_get("explanation")?)))
                .collect()
        })
        .await
    }

    /// Deletes the related manager of each of `keys` in the account (an erased person's);
    /// returns how many relations there were.
    pub async fn forget_contacts(
        &self,
        account_id: &str,
        keys: &[String],
    ) -> Result<u64, StoreError> {
        db::traced(SCHEMA, "DELETE contact_managers", async {
            Ok(sqlx::query(
                "DELETE FROM contact_managers WHERE account_id = $1 AND contact_key = ANY($2)",
            )
            .bind(account_id)
            .bind(keys)
            .execute(&self.pool)
            .await?
            .rows_affected())
        })
        .await
    }

    /// Which of `deal_ids` the distributor has seen deal events of, within the account.
    pub async fn seen_deals(
        &self,
        account_id: &str,
        deal_ids: &[Uuid],
    ) -> Result<std::collections::HashSet<Uuid>, StoreError> {
        db::traced(SCHEMA, "SELECT deal_view", async {
            Ok(sqlx::query_scalar(
                "SELECT deal_id FROM deal_view WHERE deal_id = ANY($2) AND account_id = $1",
            )
            .bind(account_id)
            .bind(deal_ids)
            .fetch_all(&self.pool)
            .await?
            .into_iter()
            .collect())
        })
        .await
    }

    /// The stored explanation of the decision of the lead `intake_id` of the plan, within
    /// the account (a deal's key is its creator's choice: it names a decision only within
    /// the same account and plan).
    pub async fn assignment_of_lead(
        &self,
        account_id: &str,
        plan_id: Uuid,
        intake_id: Uuid,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        db::traced(SCHEMA, "SELECT assignments", async {
            let row = sqlx::query(
                "SELECT explanation FROM assignments
             WHERE account_id = $1 AND intake_id = $2 AND plan_id = $3",
            )
            .bind(account_id)
            .bind(intake_id)
            .bind(plan_id)
            .fetch_optional(&self.pool)
            .await?;
            Ok(row.map(|row| row.try_get("explanation")).transpose()?)
        })
        .await
    }

    /// Open deals per manager of a plan, as the distributor counts them.
    pub async fn open_counts(&self, plan_id: Uuid) -> Result<HashMap<String, i64>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        Ok(open_counts(&mut conn, plan_id).await?)
    }
}

/// What was known of `newest`'s deals, their rows locked: the deals seen before, and the
/// decisions of the leads of those never seen.
async fn known_deals(
    tx: &mut Transaction<'_, Postgres>,
    newest: &BTreeMap<Uuid, &DealState>,
) -> Result<KnownDeals, sqlx::Error> {
    // Scoped by account: a deal id of another account (a forged event) is never this deal.
    let seen: HashMap<Uuid, Seen> = sqlx::query(
        "SELECT v.deal_id, v.plan_id, v.manager_id, v.open, v.version
         FROM deal_view v JOIN UNNEST($1::uuid[], $2::text[]) AS k(d, a)
            ON v.deal_id = k.d AND v.account_id = k.a
         ORDER BY v.deal_id FOR UPDATE OF v",
    )
    .bind(newest.keys().copied().collect::<Vec<_>>())
    .bind(
        newest
            .values()
            .map(|s| s.account_id.clone())
            .collect::<Vec<_>>(),
    )
    .fetch_all(&mut **tx)
    .await?
    .iter()
    .map(|r| {
        let seen = Seen {
            plan_id: r.try_get("plan_id")?,
            manager_id: r.try_get("manager_id")?,
            open: r.try_get("open")?,
            version: r.try_get("version")?,
        };
        Ok((r.try_get("deal_id")?, seen))
    })
    .collect::<Result<_, sqlx::Error>>()?;
    // A deal's idempotency key is the caller's choice: it is the decision of a lead only
    // within the same account and plan (another account may send any key it likes).
    let unseen: Vec<(Uuid, &str, Uuid)> = newest
        .values()
        .filter(|s| !seen.contains_key(&s.deal_id))
        .filter_map(|s| Some((s.lead()?, s.account_id.as_str(), s.plan_id)))
        .collect();
    let decided = sqlx::query(
        "SELECT a.intake_id, a.plan_id, a.manager_id
         FROM UNNEST($1::uuid[], $2::text[], $3::uuid[]) AS k(i, acct, plan)
         JOIN assignments a ON a.intake_id = k.i AND a.account_id = k.acct AND a.plan_id = k.plan",
    )
    .bind(unseen.iter().map(|(k, _, _)| *k).collect::<Vec<_>>())
    .bind(
        unseen
            .iter()
            .map(|(_, a, _)| (*a).to_owned())
            .collect::<Vec<_>>(),
    )
    .bind(unseen.iter().map(|(_, _, p)| *p).collect::<Vec<_>>())
    .fetch_all(&mut **tx)
    .await?
    .iter()
    .map(|r| {
        let decision = LeadDecision {
            plan_id: r.try_get("plan_id")?,
            manager_id: r.try_get("manager_id")?,
        };
        Ok((r.try_get("intake_id")?, decision))
    })
    .collect::<Result<_, sqlx::Error>>()?;
    Ok(KnownDeals { seen, decided })
}

/// Writes what deal events changed: counts, the deals' view, relations, decision links.
async fn save_deal_changes(
    tx: &mut Transaction<'_, Postgres>,
    changes: &Changes<'_>,
) -> Result<(), sqlx::Error> {
    apply_deltas(tx, &changes.deltas).await?;
    let applied = &changes.applied;
    sqlx::query(
        "INSERT INTO deal_view (deal_id, plan_id, manager_id, open, version, account_id,
            waiting_since, assigned_at, accepted)
         SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::bool[], $5::bigint[],
            $6::text[], $7::timestamptz[], $8::timestamptz[], $9::bool[])
         ON CONFLICT (deal_id) DO UPDATE SET plan_id = excluded.plan_id,
            manager_id = excluded.manager_id, open = excluded.open, version = excluded.version,
            waiting_since = excluded.waiting_since, assigned_at = excluded.assigned_at,
            accepted = excluded.accepted
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
    .bind(applied.iter().map(|s| s.waiting()).collect::<Vec<_>>())
    .bind(applied.iter().map(|s| s.assigned_at).collect::<Vec<_>>())
    .bind(applied.iter().map(|s| s.accepted).collect::<Vec<_>>())
    .execute(&mut **tx)
    .await?;
    // Erased contacts: the next lead of the same identity is a new contact (deleted first:
    // a relation written below is of a deal made after the erasure).
    let forgotten = &changes.forgotten;
    if !forgotten.is_empty() {
        sqlx::query(
            "DELETE FROM contact_managers c USING UNNEST($1::text[], $2::text[]) AS f(a, k)
             WHERE c.account_id = f.a AND c.contact_key = f.k",
        )
        .bind(forgotten.iter().map(|(a, _)| a.clone()).collect::<Vec<_>>())
        .bind(forgotten.iter().map(|(_, k)| k.clone()).collect::<Vec<_>>())
        .execute(&mut **tx)
        .await?;
    }
    let relations = &changes.relations;
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
    .execute(&mut **tx)
    .await?;
    let links = &changes.links;
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
    .execute(&mut **tx)
    .await?;
    Ok(())
}

fn settings_from(row: &sqlx::postgres::PgRow) -> Result<PlanSettings, StoreError> {
    let mode = match DecidedBy::parse(row.try_get("mode")?) {
        Some(DecidedBy::Manual) => Mode::Manual,
        Some(DecidedBy::Auto) => Mode::Auto {
            prefer_related: row.try_get("prefer_related")?,
            strategy: Strategy::parse(row.try_get("strategy")?)
                .ok_or(StoreError::Corrupt("plans.strategy"))?,
        },
        Some(DecidedBy::Bulk) | None => return Err(StoreError::Corrupt("plans.mode")),
    };
    let weights: Vec<i32> = row.try_get("weights")?;
    let caps: Vec<i32> = row.try_get("caps")?;
    Ok(PlanSettings {
        mode,
        managers: row.try_get("managers")?,
        weights: weights.into_iter().map(|w| w.max(1) as u32).collect(),
        caps: caps.into_iter().map(|c| c.max(0) as u32).collect(),
        keep_related: row.try_get("keep_related")?,
        response: response_from(row)?,
        archived: row.try_get("archived")?,
    })
}

/// A plan row's response deadline (none at 0 seconds).
fn response_from(row: &sqlx::postgres::PgRow) -> Result<Option<Response>, StoreError> {
    let seconds: i32 = row.try_get("response_seconds")?;
    let reassignments: i32 = row.try_get("max_reassignments")?;
    if seconds <= 0 {
        return Ok(None);
    }
    Ok(Some(Response {
        seconds: seconds as u32,
        max_reassignments: u32::try_from(reassignments)
            .map_err(|_| StoreError::Corrupt("plans.max_reassignments"))?,
    }))
}
