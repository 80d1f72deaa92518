//! Response deadlines: the running timers (started, followed and ended by deal events in
//! the same transaction that applies them), their leases, the decision made when one runs
//! out, and the chain of deadlines each deal missed.

use std::collections::{BTreeMap, HashMap};

use salesplan_platform::{db::key_lookups_only, schedule::Schedule};
use sqlx::{Postgres, Row, Transaction};
use time::OffsetDateTime;
use uuid::Uuid;

use super::{Store, StoreError, cursor_from, lock_plan, open_counts, save_cursor, settings_from};
use crate::domain::{
    deadline::{self, Miss, Response, Step},
    deal_view::DealState,
    distribution::{Away, Cursor, PlanSettings},
};

/// Timers of one account in one leased batch: an account with a thousand deadlines
/// running out at once does not hold back another's one.
const PER_ACCOUNT: i64 = 10;

/// A running deadline, as leased.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timer {
    pub deal_id: Uuid,
    pub account_id: String,
    pub plan_id: Uuid,
    pub manager_id: String,
    /// The deal's version AssignDeal expects.
    pub version: i64,
    pub assigned_at: OffsetDateTime,
    pub due_at: OffsetDateTime,
    /// Attempts before this one.
    pub attempts: i32,
}

impl Timer {
    pub fn miss(&self) -> Miss {
        Miss {
            manager_id: self.manager_id.clone(),
            assigned_at: self.assigned_at,
            due_at: self.due_at,
        }
    }
}

/// What a timer that ran out becomes: the next manager (none: the deal waits for a
/// person), the note for the deal's history, and the decision's explanation (an encoded
/// `Assignment`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reassignment {
    pub manager: Option<String>,
    pub note: String,
    pub record: Vec<u8>,
}

/// What deciding a timer that ran out needs, loaded under its plan's row lock.
#[derive(Debug, Clone)]
pub struct ExpiryKnown {
    pub settings: PlanSettings,
    pub response: Response,
    pub plan_version: i64,
    pub cursor: Cursor,
    pub open: HashMap<String, i64>,
    pub away: Away,
    /// Every deadline the deal missed, the one that ran out now last.
    pub chain: Vec<Miss>,
    /// The key of the deal's decision in `assignments` (its lead's, or the deal's id).
    pub decision_key: Uuid,
}

/// A timer being decided: its plan's row is locked until [`OpenExpiry::save`].
pub struct OpenExpiry {
    tx: Transaction<'static, Postgres>,
    plan_id: Uuid,
}

impl OpenExpiry {
    /// Keeps the decision on the timer (a retry, here or on another replica, makes the
    /// same one), the missed deadline in the deal's chain (before the call: a process that
    /// dies after the call made it loses no link of the chain; a refusal takes it back),
    /// and moves the plan's turn.
    pub async fn save(
        mut self,
        timer: &Timer,
        decided: &Reassignment,
        cursor: &Cursor,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE response_timers SET decided_version = version, decided_manager = $3,
                decided_note = $4, decided_record = $5
             WHERE deal_id = $1 AND version = $2",
        )
        .bind(timer.deal_id)
        .bind(timer.version)
        .bind(&decided.manager)
        .bind(&decided.note)
        .bind(&decided.record)
        .execute(&mut *self.tx)
        .await?;
        insert_miss(&mut self.tx, timer).await?;
        save_cursor(&mut self.tx, self.plan_id, cursor).await?;
        self.tx.commit().await?;
        Ok(())
    }
}

async fn insert_miss(
    tx: &mut Transaction<'static, Postgres>,
    timer: &Timer,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO response_misses (deal_id, account_id, manager_id, assigned_at, due_at)
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
    )
    .bind(timer.deal_id)
    .bind(&timer.account_id)
    .bind(&timer.manager_id)
    .bind(timer.assigned_at)
    .bind(timer.due_at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// What a timer that ran out is up to.
pub enum Expiring {
    /// Decided before (for the same version): make it.
    Decided(Reassignment),
    /// To decide now.
    Open(OpenExpiry, Box<ExpiryKnown>),
    /// The plan has no deadline any more (or is gone, archived, or distributes by hand):
    /// the timer was dropped.
    Dropped,
}

/// A deadline to start.
struct Start {
    deal: Uuid,
    manager: String,
    assigned_at: OffsetDateTime,
    version: i64,
}

/// Starts, follows and ends the deadlines of the deals of `states` (applied in `tx`, with
/// the deal events that say so). A start takes the plan's deadline and the manager's
/// schedule at that moment.
pub(super) async fn apply_timers(
    tx: &mut Transaction<'_, Postgres>,
    states: &[DealState],
) -> Result<(), StoreError> {
    let steps = deadline::steps(states);
    let account_of: HashMap<Uuid, (&str, Uuid)> = states
        .iter()
        .map(|s| (s.deal_id, (s.account_id.as_str(), s.plan_id)))
        .collect();
    // Per (account, plan): the deals whose deadline starts.
    let mut starts: BTreeMap<(&str, Uuid), Vec<Start>> = BTreeMap::new();
    let (mut follow, mut stop) = (Vec::new(), Vec::new());
    for (deal, step) in steps {
        match step {
            Step::Start {
                manager,
                assigned_at,
                version,
            } => starts.entry(account_of[&deal]).or_default().push(Start {
                deal,
                manager,
                assigned_at,
                version,
            }),
            Step::Follow { manager, version } => follow.push((deal, manager, version)),
            Step::Stop { version } => stop.push((deal, version)),
        }
    }
    end_or_follow(tx, &follow, &stop).await?;
    if starts.is_empty() {
        return Ok(());
    }
    let responses = plan_responses(tx, starts.keys().copied()).await?;
    for ((account_id, plan_id), deals) in starts {
        // A plan without a deadline starts none (a timer of an older assignment finds the
        // plan without one when it runs out, and is dropped).
        let Some(response) = responses.get(&plan_id) else {
            continue;
        };
        let managers: Vec<String> = deals.iter().map(|d| d.manager.clone()).collect();
        let (known, _) = super::managers::availability(tx, account_id, &managers).await?;
        let default = Schedule::default();
        let dues: Vec<OffsetDateTime> = deals
            .iter()
            .map(|d| {
                let schedule = known.get(&d.manager).map_or(&default, |a| &a.schedule);
                deadline::due(schedule, d.assigned_at, response.seconds)
            })
            .collect();
        sqlx::query(
            "INSERT INTO response_timers (deal_id, account_id, plan_id, manager_id, version,
                assigned_at, due_at, next_attempt)
             SELECT d, $2, $3, m, v, a, u, u FROM UNNEST($1::uuid[], $4::text[], $5::bigint[],
                $6::timestamptz[], $7::timestamptz[]) AS t(d, m, v, a, u)
             ON CONFLICT (deal_id) DO UPDATE SET manager_id = excluded.manager_id,
                version = excluded.version, assigned_at = excluded.assigned_at,
                due_at = excluded.due_at, next_attempt = excluded.next_attempt, attempts = 0,
                decided_version = NULL, decided_manager = NULL, decided_note = NULL,
                decided_record = NULL
             WHERE response_timers.version < excluded.version",
        )
        .bind(deals.iter().map(|d| d.deal).collect::<Vec<_>>())
        .bind(account_id)
        .bind(plan_id)
        .bind(&managers)
        .bind(deals.iter().map(|d| d.version).collect::<Vec<_>>())
        .bind(deals.iter().map(|d| d.assigned_at).collect::<Vec<_>>())
        .bind(dues)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// Ends the timers of `stop` (accepted, closed, unassigned) and of `follow` deals now with
/// another manager than their timer's (a person reassigned them); the others of `follow`
/// run on at the deal's new version. Older states than a timer's change nothing.
async fn end_or_follow(
    tx: &mut Transaction<'_, Postgres>,
    follow: &[(Uuid, String, i64)],
    stop: &[(Uuid, i64)],
) -> Result<(), StoreError> {
    if !stop.is_empty() || !follow.is_empty() {
        let (deals, managers, versions): (Vec<Uuid>, Vec<Option<String>>, Vec<i64>) = stop
            .iter()
            .map(|(d, v)| (*d, None, *v))
            .chain(follow.iter().map(|(d, m, v)| (*d, Some(m.clone()), *v)))
            .fold((vec![], vec![], vec![]), |mut acc, (d, m, v)| {
                acc.0.push(d);
                acc.1.push(m);
                acc.2.push(v);
                acc
            });
        sqlx::query(
            "DELETE FROM response_timers t USING UNNEST($1::uuid[], $2::text[], $3::bigint[])
                AS x(d, m, v)
             WHERE t.deal_id = x.d AND t.version < x.v AND t.manager_id IS DISTINCT FROM x.m",
        )
        .bind(&deals)
        .bind(&managers)
        .bind(&versions)
        .execute(&mut **tx)
        .await?;
        sqlx::query(
            "UPDATE response_timers t SET version = x.v, decided_version = NULL
             FROM UNNEST($1::uuid[], $2::text[], $3::bigint[]) AS x(d, m, v)
             WHERE t.deal_id = x.d AND t.version < x.v AND t.manager_id = x.m",
        )
        .bind(&deals)
        .bind(&managers)
        .bind(&versions)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// The response deadlines of those of `plans` (account, plan) that have one.
async fn plan_responses(
    tx: &mut Transaction<'_, Postgres>,
    plans: impl Iterator<Item = (&str, Uuid)>,
) -> Result<HashMap<Uuid, Response>, StoreError> {
    let (accounts, ids): (Vec<String>, Vec<Uuid>) = plans.map(|(a, p)| (a.to_owned(), p)).unzip();
    sqlx::query(
        "SELECT p.plan_id, p.response_seconds, p.max_reassignments
         FROM UNNEST($1::text[], $2::uuid[]) AS x(a, p)
         JOIN plans p ON p.plan_id = x.p AND p.account_id = x.a
         WHERE p.response_seconds > 0 AND p.mode = 'auto' AND NOT p.archived",
    )
    .bind(&accounts)
    .bind(&ids)
    .fetch_all(&mut **tx)
    .await?
    .iter()
    .map(|r| {
        Ok((
            r.try_get("plan_id")?,
            Response {
                seconds: r.try_get::<i32, _>("response_seconds")? as u32,
                max_reassignments: r.try_get::<i32, _>("max_reassignments")?.max(0) as u32,
            },
        ))
    })
    .collect()
}

impl Store {
    /// Leases up to `limit` timers that ran out to this process for `lease` (another
    /// process takes one only once its lease ran out: if this one died with it in hand).
    pub async fn lease_timers(
        &self,
        limit: i64,
        lease: time::Duration,
    ) -> Result<Vec<Timer>, StoreError> {
        let rows = sqlx::query(
            "UPDATE response_timers t SET next_attempt = now() + $2, attempts = t.attempts + 1
             FROM (SELECT deal_id FROM response_timers WHERE deal_id IN (
                       SELECT deal_id FROM (
                           SELECT deal_id, next_attempt, row_number() OVER (
                               PARTITION BY account_id ORDER BY next_attempt) AS k
                           FROM response_timers WHERE next_attempt <= now()) turns
                       WHERE k <= $3 ORDER BY k, next_attempt LIMIT $1)
                   AND next_attempt <= now()
                   FOR UPDATE SKIP LOCKED) due
             WHERE t.deal_id = due.deal_id
             RETURNING t.deal_id, t.account_id, t.plan_id, t.manager_id, t.version,
                t.assigned_at, t.due_at, t.attempts - 1 AS attempts",
        )
        .bind(limit)
        .bind(lease)
        .bind(PER_ACCOUNT)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Timer {
                    deal_id: r.try_get("deal_id")?,
                    account_id: r.try_get("account_id")?,
                    plan_id: r.try_get("plan_id")?,
                    manager_id: r.try_get("manager_id")?,
                    version: r.try_get("version")?,
                    assigned_at: r.try_get("assigned_at")?,
                    due_at: r.try_get("due_at")?,
                    attempts: r.try_get("attempts")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    /// Opens the decision of a timer that ran out: the decision kept for its version if
    /// there is one; else the plan's row locked and what deciding needs loaded.
    pub async fn open_expiry(&self, timer: &Timer) -> Result<Expiring, StoreError> {
        let mut tx = self.pool.begin().await?;
        key_lookups_only(&mut tx).await?;
        let kept = sqlx::query(
            "SELECT decided_manager, decided_note, decided_record FROM response_timers
             WHERE deal_id = $1 AND version = $2 AND decided_version = version",
        )
        .bind(timer.deal_id)
        .bind(timer.version)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(row) = kept {
            return Ok(Expiring::Decided(Reassignment {
                manager: row.try_get("decided_manager")?,
                note: row.try_get("decided_note")?,
                record: row.try_get("decided_record")?,
            }));
        }
        let plan = lock_plan(&mut tx, &timer.account_id, timer.plan_id).await?;
        let settings = plan.as_ref().map(settings_from).transpose()?;
        let Some((row, settings, response)) = plan
            .zip(settings)
            .and_then(|(row, s)| Some((row, s.clone(), s.response.filter(|_| !s.archived)?)))
        else {
            drop(tx);
            self.drop_timer(timer).await?;
            return Ok(Expiring::Dropped);
        };
        let mut chain: Vec<Miss> = sqlx::query(
            "SELECT manager_id, assigned_at, due_at FROM response_misses
             WHERE deal_id = $1 AND account_id = $2 ORDER BY assigned_at",
        )
        .bind(timer.deal_id)
        .bind(&timer.account_id)
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|r| {
            Ok(Miss {
                manager_id: r.try_get("manager_id")?,
                assigned_at: r.try_get("assigned_at")?,
                due_at: r.try_get("due_at")?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()?;
        // Recorded already by a decision this timer had before a refusal (a process that
        // died before it could take it back): once.
        chain.retain(|m| m.assigned_at != timer.assigned_at);
        chain.push(timer.miss());
        let decision_key: Option<Uuid> = sqlx::query_scalar(
            "SELECT intake_id FROM assignments WHERE account_id = $1 AND deal_id = $2",
        )
        .bind(&timer.account_id)
        .bind(timer.deal_id)
        .fetch_optional(&mut *tx)
        .await?;
        let (away, _) = super::managers::away(
            &mut tx,
            &timer.account_id,
            &settings.managers,
            OffsetDateTime::now_utc(),
        )
        .await?;
        let known = ExpiryKnown {
            response,
            plan_version: row.try_get("version")?,
            cursor: cursor_from(&row)?,
            open: open_counts(&mut tx, timer.plan_id).await?,
            away,
            chain,
            decision_key: decision_key.unwrap_or(timer.deal_id),
            settings,
        };
        let opened = OpenExpiry {
            tx,
            plan_id: timer.plan_id,
        };
        Ok(Expiring::Open(opened, Box::new(known)))
    }

    /// The reassignment was made (or had been): the missed deadline is in the deal's
    /// chain (saved with the decision; again here for a decision kept from before), the decision becomes the deal's explanation, and the timer ends (unless the
    /// next manager's has started already: it is of a newer version).
    pub async fn expiry_made(
        &self,
        timer: &Timer,
        made: &Reassignment,
        decision_key: Uuid,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        insert_miss(&mut tx, timer).await?;
        sqlx::query(
            "INSERT INTO assignments (intake_id, account_id, plan_id, manager_id, reason,
                explanation, deal_id)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (account_id, intake_id) DO UPDATE SET manager_id = excluded.manager_id,
                reason = excluded.reason, explanation = excluded.explanation,
                deal_id = excluded.deal_id, decided_at = now()",
        )
        .bind(decision_key)
        .bind(&timer.account_id)
        .bind(timer.plan_id)
        .bind(&made.manager)
        .bind(&made.note)
        .bind(&made.record)
        .bind(timer.deal_id)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM response_timers WHERE deal_id = $1 AND version = $2")
            .bind(timer.deal_id)
            .bind(timer.version)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Deal-service refused the reassignment (the deal changed meanwhile, or the next
    /// manager became unavailable): decided again after `after`, by when the deal's event
    /// has moved or ended the timer.
    pub async fn expiry_refused(
        &self,
        timer: &Timer,
        after: time::Duration,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE response_timers SET decided_version = NULL, next_attempt = now() + $3
             WHERE deal_id = $1 AND version = $2",
        )
        .bind(timer.deal_id)
        .bind(timer.version)
        .bind(after)
        .execute(&mut *tx)
        .await?;
        // Not missed after all, or not yet: a new decision records it again.
        sqlx::query("DELETE FROM response_misses WHERE deal_id = $1 AND assigned_at = $2")
            .bind(timer.deal_id)
            .bind(timer.assigned_at)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The reassignment could not be made now (deal-service unreachable): tried again,
    /// the same decision, after `backoff`.
    pub async fn expiry_later(
        &self,
        timer: &Timer,
        backoff: time::Duration,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE response_timers SET next_attempt = now() + $3
             WHERE deal_id = $1 AND version = $2",
        )
        .bind(timer.deal_id)
        .bind(timer.version)
        .bind(backoff)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Ends a timer with nothing to do (its deal is gone, or its plan has no deadline).
    pub async fn drop_timer(&self, timer: &Timer) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM response_timers WHERE deal_id = $1 AND version = $2")
            .bind(timer.deal_id)
            .bind(timer.version)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
