//! Response deadlines: the running timers (started, followed and ended by deal events in
//! the same transaction that applies them), their leases, the decision made when one runs
//! out, and the chain of deadlines each deal missed.

use std::collections::{BTreeMap, HashMap};

use salesplan_platform::{db::key_lookups_only, schedule::Schedule};
use sqlx::{Postgres, Row, Transaction};
use time::OffsetDateTime;
use uuid::Uuid;

use super::{
    Held, Store, StoreError, cursor_from, lock_plan, open_counts, save_cursor, settings_from,
};
use crate::domain::{
    deadline::{self, Miss, Response, Step},
    deal_view::DealState,
    distribution::{Away, Cursor, PlanSettings},
};

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
    /// This holder's lease: its writes name it.
    pub lease: Uuid,
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
    /// The key of the deal's decision in `assignments` (its lead's, or the deal's id).
    pub key: Uuid,
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
                decided_note = $4, decided_record = $5, decided_key = $7
             WHERE deal_id = $1 AND version = $2 AND leased_by = $6",
        )
        .bind(timer.deal_id)
        .bind(timer.version)
        .bind(&decided.manager)
        .bind(&decided.note)
        .bind(&decided.record)
        .bind(timer.lease)
        .bind(decided.key)
        .execute(&mut *self.tx)
        .await?;
        insert_miss(&mut self.tx, timer).await?;
        save_cursor(&mut self.tx, self.plan_id, cursor).await?;
        self.tx.commit().await?;
        Ok(())
    }
}

/// Takes back the missed deadline a decision of `timer` recorded in the deal's chain (the
/// reassignment was refused, or the deadline ended).
async fn forget_miss(tx: &mut Transaction<'_, Postgres>, timer: &Timer) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM response_misses WHERE deal_id = $1 AND assigned_at = $2")
        .bind(timer.deal_id)
        .bind(timer.assigned_at)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Ends the timer at the version it was leased at (a newer one, of the next assignment,
/// stays).
async fn delete_timer(conn: &mut sqlx::PgConnection, timer: &Timer) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM response_timers WHERE deal_id = $1 AND version = $2")
        .bind(timer.deal_id)
        .bind(timer.version)
        .execute(conn)
        .await?;
    Ok(())
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
    /// No longer this holder's: its lease ran out and another took it, or the deal moved
    /// on (its event moved or ended the timer).
    Lost,
}

/// A deadline to start.
struct Start {
    deal: Uuid,
    manager: String,
    assigned_at: OffsetDateTime,
    version: i64,
}

/// Starts, follows and ends the deadlines of the deals of `states` (applied in `tx`, with
/// the deal events that say so; only states newer than what was applied of their deal,
/// so a redelivered or late event brings no ended deadline back). A start takes the
/// plan's deadline and the manager's schedule at that moment.
pub(super) async fn apply_timers(
    tx: &mut Transaction<'_, Postgres>,
    states: &[&DealState],
    all: &[DealState],
) -> Result<(), StoreError> {
    let mut steps = deadline::steps(states.iter().copied());
    // An assignment's event that arrives after a newer event of its deal (another replica
    // applied that first, or it is redelivered) still starts its deadline: the start is
    // checked against the deal's newest state below.
    deadline::add_late_starts(&mut steps, all);
    let account_of: HashMap<Uuid, (&str, Uuid)> = all
        .iter()
        .map(|s| (s.deal_id, (s.account_id.as_str(), s.plan_id)))
        .collect();
    // Per (account, plan): the deals whose deadline starts.
    let mut starts: BTreeMap<(&str, Uuid), Vec<Start>> = BTreeMap::new();
    let mut others = Others::default();
    for (deal, step) in steps {
        let (account_id, plan_id) = account_of[&deal];
        match step {
            Step::Start {
                manager,
                assigned_at,
                version,
            } => starts
                .entry((account_id, plan_id))
                .or_default()
                .push(Start {
                    deal,
                    manager,
                    assigned_at,
                    version,
                }),
            Step::Follow {
                manager,
                assigned_at,
                version,
            } => others.push(deal, account_id, Some((manager, assigned_at)), version),
            Step::Stop { version } => others.push(deal, account_id, None, version),
        }
    }
    others.apply(tx).await?;
    if starts.is_empty() {
        return Ok(());
    }
    let responses = plan_responses(tx, starts.keys().copied()).await?;
    // The due time deal-service kept with the assignment: by the plan's deadline and the
    // manager's schedule when it was made, which this copy (applied later) may no longer
    // have. Both sides then agree on when the deadline is missed.
    let kept_due: HashMap<(Uuid, OffsetDateTime), OffsetDateTime> = all
        .iter()
        .filter_map(|s| Some(((s.deal_id, s.assigned_at?), s.response_due_at?)))
        .collect();
    for ((account_id, plan_id), deals) in starts {
        // deal-service's word decides whether an assignment runs under a deadline (this
        // copy of the plan may not have a deadline just added yet); an event from before
        // it said so, by the plan's copy. A plan without a deadline starts none of those
        // (a timer of an older assignment finds the plan without one when it runs out,
        // and is dropped).
        let response = responses.get(&plan_id);
        let managers: Vec<String> = deals.iter().map(|d| d.manager.clone()).collect();
        let (known, _) = super::managers::availability(tx, account_id, &managers).await?;
        let default = Schedule::default();
        let (deals, dues): (Vec<Start>, Vec<OffsetDateTime>) = deals
            .into_iter()
            .filter_map(|d| {
                let due = match kept_due.get(&(d.deal, d.assigned_at)) {
                    Some(due) => *due,
                    None => {
                        let schedule = known.get(&d.manager).map_or(&default, |a| &a.schedule);
                        deadline::due(schedule, d.assigned_at, response?.seconds)
                    }
                };
                Some((d, due))
            })
            .unzip();
        if deals.is_empty() {
            continue;
        }
        let managers: Vec<String> = deals.iter().map(|d| d.manager.clone()).collect();
        // A reassignment made whose holder died before recording it (the next manager's
        // deadline starts here): its decision becomes the deal's explanation now.
        sqlx::query(
            "INSERT INTO assignments (intake_id, account_id, plan_id, manager_id, reason,
                explanation, deal_id)
             SELECT t.decided_key, t.account_id, t.plan_id, t.decided_manager, t.decided_note,
                t.decided_record, t.deal_id
             FROM response_timers t JOIN UNNEST($1::uuid[], $2::text[], $3::bigint[]) AS x(d, m, v)
                ON t.deal_id = x.d
             WHERE t.account_id = $4 AND t.decided_version = t.version
                AND t.decided_manager = x.m AND t.version < x.v
             ON CONFLICT (account_id, intake_id) DO UPDATE SET
                manager_id = excluded.manager_id, reason = excluded.reason,
                explanation = excluded.explanation, deal_id = excluded.deal_id,
                decided_at = now()",
        )
        .bind(deals.iter().map(|d| d.deal).collect::<Vec<_>>())
        .bind(&managers)
        .bind(deals.iter().map(|d| d.version).collect::<Vec<_>>())
        .bind(account_id)
        .execute(&mut **tx)
        .await?;
        // Only while the deal's newest state applied (this batch's, or a later one another
        // replica applied first) is still this assignment, open and not accepted; at that
        // state's version, the one AssignDeal must name.
        sqlx::query(
            "INSERT INTO response_timers (deal_id, account_id, plan_id, manager_id, version,
                assigned_at, due_at, next_attempt)
             SELECT t.d, $2, $3, t.m, view.version, t.a, t.u, t.u
             FROM UNNEST($1::uuid[], $4::text[], $5::bigint[], $6::timestamptz[],
                $7::timestamptz[]) AS t(d, m, v, a, u)
             JOIN deal_view view ON view.deal_id = t.d AND view.account_id = $2
             WHERE view.open AND NOT view.accepted AND view.manager_id = t.m
                AND view.assigned_at = t.a AND view.version >= t.v
             ON CONFLICT (deal_id) DO UPDATE SET manager_id = excluded.manager_id,
                version = excluded.version, assigned_at = excluded.assigned_at,
                due_at = excluded.due_at, next_attempt = excluded.next_attempt, attempts = 0,
                leased_by = NULL, decided_version = NULL, decided_manager = NULL,
                decided_note = NULL, decided_record = NULL
             WHERE response_timers.version < excluded.version
                AND response_timers.account_id = excluded.account_id",
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

/// Deals whose deadline follows their change or ends, as columns.
#[derive(Default)]
struct Others {
    deals: Vec<Uuid>,
    accounts: Vec<String>,
    /// The assignment a follower is still in; none for an end.
    managers: Vec<Option<String>>,
    assigned: Vec<Option<OffsetDateTime>>,
    versions: Vec<i64>,
}

impl Others {
    fn push(
        &mut self,
        deal: Uuid,
        account_id: &str,
        assignment: Option<(String, OffsetDateTime)>,
        version: i64,
    ) {
        let (manager, assigned_at) = assignment.unzip();
        self.deals.push(deal);
        self.accounts.push(account_id.to_owned());
        self.managers.push(manager);
        self.assigned.push(assigned_at);
        self.versions.push(version);
    }

    /// Ends the timers of other assignments than the deal's (or of a deal accepted,
    /// closed or unassigned); the timer of the deal's assignment runs on at the deal's new
    /// version, taken up again at once if it was in hand (whoever held it works on the old
    /// version, which deal-service refuses). States older than a timer change nothing.
    async fn apply(self, tx: &mut Transaction<'_, Postgres>) -> Result<(), StoreError> {
        if self.deals.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "DELETE FROM response_timers t
             USING UNNEST($1::uuid[], $2::text[], $3::text[], $4::timestamptz[], $5::bigint[])
                AS x(d, acct, m, a, v)
             WHERE t.deal_id = x.d AND t.account_id = x.acct AND t.version < x.v
                AND (t.manager_id, t.assigned_at) IS DISTINCT FROM (x.m, x.a)",
        )
        .bind(&self.deals)
        .bind(&self.accounts)
        .bind(&self.managers)
        .bind(&self.assigned)
        .bind(&self.versions)
        .execute(&mut **tx)
        .await?;
        sqlx::query(
            "UPDATE response_timers t SET version = x.v, decided_version = NULL, leased_by = NULL,
                next_attempt = LEAST(t.next_attempt, GREATEST(t.due_at, now()))
             FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::timestamptz[], $5::bigint[])
                AS x(d, acct, m, a, v)
             WHERE t.deal_id = x.d AND t.account_id = x.acct AND t.version < x.v
                AND t.manager_id = x.m AND t.assigned_at = x.a",
        )
        .bind(&self.deals)
        .bind(&self.accounts)
        .bind(&self.managers)
        .bind(&self.assigned)
        .bind(&self.versions)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }
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
    /// The plan of a timer lease's read (`EXPLAIN (ANALYZE, FORMAT JSON)`, nothing kept):
    /// for tests that its cost does not grow with one account's backlog.
    pub async fn explain_timer_lease(
        &self,
        shares: (usize, usize),
        held: &Held,
    ) -> Result<serde_json::Value, StoreError> {
        let mut tx = self.pool.begin().await?;
        key_lookups_only(&mut tx).await?;
        let sql = format!(
            "EXPLAIN (ANALYZE, FORMAT JSON) {}",
            super::fair_due("response_timers")
        );
        let plan = super::leasing(sql, shares, held, time::Duration::ZERO)
            .fetch_one(&mut *tx)
            .await?
            .try_get(0)?;
        tx.rollback().await?;
        Ok(plan)
    }

    /// Leases up to `limit` timers that ran out to this process for `lease` (another
    /// process takes one only once its lease ran out: if this one died with it in hand).
    /// At most `per_account` of one account are in hand, counting those `held`, the
    /// accounts' oldest first: an account with a thousand deadlines running out at once does
    /// not hold back another's one.
    pub async fn lease_timers(
        &self,
        shares: (usize, usize),
        held: &Held,
        lease: time::Duration,
    ) -> Result<Vec<Timer>, StoreError> {
        let mut tx = self.pool.begin().await?;
        key_lookups_only(&mut tx).await?;
        let sql = format!(
            "UPDATE response_timers t SET next_attempt = now() + $2, attempts = t.attempts + 1,
                leased_by = $6
             FROM ({}) due
             WHERE t.deal_id = due.deal_id
             RETURNING t.deal_id, t.account_id, t.plan_id, t.manager_id, t.version,
                t.assigned_at, t.due_at, t.attempts - 1 AS attempts, t.leased_by",
            super::fair_due("response_timers")
        );
        let rows = super::leasing(sql, shares, held, lease)
            .bind(Uuid::new_v4())
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
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
                    lease: r.try_get("leased_by")?,
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
        // Still this holder's, and locked as such until the decision is saved.
        let held = sqlx::query(
            "SELECT decided_version = version AS kept, decided_manager, decided_note,
                decided_record, decided_key
             FROM response_timers WHERE deal_id = $1 AND version = $2 AND leased_by = $3
             FOR UPDATE",
        )
        .bind(timer.deal_id)
        .bind(timer.version)
        .bind(timer.lease)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(held) = held else {
            return Ok(Expiring::Lost);
        };
        if held.try_get::<Option<bool>, _>("kept")? == Some(true) {
            return Ok(Expiring::Decided(Reassignment {
                manager: held.try_get("decided_manager")?,
                note: held.try_get("decided_note")?,
                record: held.try_get("decided_record")?,
                key: held.try_get("decided_key")?,
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
    pub async fn expiry_made(&self, timer: &Timer, made: &Reassignment) -> Result<(), StoreError> {
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
        .bind(made.key)
        .bind(&timer.account_id)
        .bind(timer.plan_id)
        .bind(&made.manager)
        .bind(&made.note)
        .bind(&made.record)
        .bind(timer.deal_id)
        .execute(&mut *tx)
        .await?;
        delete_timer(&mut tx, timer).await?;
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
        let held = sqlx::query(
            "UPDATE response_timers SET decided_version = NULL, next_attempt = now() + $3
             WHERE deal_id = $1 AND version = $2 AND leased_by = $4",
        )
        .bind(timer.deal_id)
        .bind(timer.version)
        .bind(after)
        .bind(timer.lease)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if held == 0 {
            // Another holder's now, or moved on: the chain is theirs to keep.
            return Ok(());
        }
        // Not missed after all, or not yet: a new decision records it again.
        forget_miss(&mut tx, timer).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The deal's deadline ended before it ran out (deal-service's word: the plan's
    /// deadline was removed, or the plan archived, since; a deadline put back does not
    /// bring it back): the timer ends, and the miss its decision recorded with it.
    pub async fn expiry_ended(&self, timer: &Timer) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        let held = sqlx::query(
            "DELETE FROM response_timers WHERE deal_id = $1 AND version = $2 AND leased_by = $3",
        )
        .bind(timer.deal_id)
        .bind(timer.version)
        .bind(timer.lease)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if held == 0 {
            return Ok(());
        }
        forget_miss(&mut tx, timer).await?;
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
             WHERE deal_id = $1 AND version = $2 AND leased_by = $4",
        )
        .bind(timer.deal_id)
        .bind(timer.version)
        .bind(backoff)
        .bind(timer.lease)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Ends a timer with nothing to do (its deal is gone, or its plan has no deadline).
    pub async fn drop_timer(&self, timer: &Timer) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await?;
        Ok(delete_timer(&mut conn, timer).await?)
    }
}
