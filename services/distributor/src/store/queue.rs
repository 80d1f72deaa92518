//! The waiting queues' state: the deals waiting per plan (in the view of deals), the
//! assignment orders decided for them, and the leases of the relay that makes the orders
//! in deal-service.

use std::collections::{BTreeMap, HashMap};

use salesplan_platform::db::key_lookups_only;
use sqlx::{Postgres, Row, Transaction};
use time::OffsetDateTime;
use uuid::Uuid;

use super::{
    Deltas, Held, Store, StoreError, apply_deltas, cursor_from, lock_plan, open_counts,
    save_cursor, settings_from,
};
use crate::domain::{
    distribution::{Away, Cursor, Decision, PlanSettings},
    queue::Waiting,
};

/// An assignment decided for a waiting deal, to make in deal-service: AssignDeal at the
/// deal's `version`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    pub deal_id: Uuid,
    pub account_id: String,
    pub plan_id: Uuid,
    pub version: i64,
    pub manager_id: String,
    pub waiting_since: OffsetDateTime,
    /// Calls made for it before this one.
    pub attempts: i32,
}

/// What deciding a plan's queue needs, loaded under the plan's row lock.
#[derive(Debug, Clone)]
pub struct QueueKnown {
    pub settings: PlanSettings,
    pub plan_version: i64,
    pub cursor: Cursor,
    pub open: HashMap<String, i64>,
    /// The members unavailable now.
    pub away: Away,
    /// The oldest waiting deals that no other transaction holds, oldest first.
    pub queue: Vec<Waiting>,
    /// The lead (intake id) each deal of the queue came from, where it came from one.
    pub leads: HashMap<Uuid, Uuid>,
}

/// A plan's queue being decided: the plan's row is locked until [`OpenQueue::save`] (or
/// drop, which changes nothing).
pub struct OpenQueue {
    tx: Transaction<'static, Postgres>,
    account_id: String,
    plan_id: Uuid,
}

impl OpenQueue {
    /// Keeps the decisions (`explanations`: each one's encoded `Assignment`, in order) as
    /// orders, counts them for their managers, takes the deals out of the queue and moves
    /// the turn; returns the orders.
    pub async fn save(
        mut self,
        decided: &[(Waiting, Decision, Uuid)],
        explanations: Vec<Vec<u8>>,
        cursor: &Cursor,
    ) -> Result<Vec<Order>, StoreError> {
        let orders: Vec<Order> = decided
            .iter()
            .filter_map(|(waiting, decision, _)| {
                Some(Order {
                    deal_id: waiting.deal_id,
                    account_id: self.account_id.clone(),
                    plan_id: self.plan_id,
                    version: waiting.version,
                    manager_id: decision.manager.clone()?,
                    waiting_since: waiting.since,
                    attempts: 0,
                })
            })
            .collect();
        if orders.is_empty() {
            return Ok(orders);
        }
        let tx = &mut self.tx;
        let column = |f: fn(&Order) -> String| orders.iter().map(f).collect::<Vec<_>>();
        let deals: Vec<Uuid> = orders.iter().map(|o| o.deal_id).collect();
        let managers = column(|o| o.manager_id.clone());
        // The view counts each deal for its new manager from now: its next event (the
        // assignment made) then changes nothing, and any other change moves the count.
        sqlx::query(
            "UPDATE deal_view SET manager_id = t.m, waiting_since = NULL
             FROM UNNEST($1::uuid[], $2::text[]) AS t(d, m)
             WHERE deal_view.deal_id = t.d AND deal_view.account_id = $3",
        )
        .bind(&deals)
        .bind(&managers)
        .bind(&self.account_id)
        .execute(&mut **tx)
        .await?;
        let mut deltas = Deltas::new();
        for order in &orders {
            *deltas
                .entry((self.plan_id, order.manager_id.clone()))
                .or_default() += 1;
        }
        apply_deltas(tx, &deltas).await?;
        // The decision's explanation waits on the order: it becomes the deal's once the
        // order is made (a refused order explains nothing).
        sqlx::query(
            "INSERT INTO assignment_orders (deal_id, account_id, plan_id, version, manager_id,
                waiting_since, decision_key, reason, explanation)
             SELECT d, $2, $3, v, m, w, k, r, e FROM UNNEST($1::uuid[], $4::bigint[], $5::text[],
                $6::timestamptz[], $7::uuid[], $8::text[], $9::bytea[]) AS t(d, v, m, w, k, r, e)
             ON CONFLICT (deal_id) DO UPDATE SET version = excluded.version,
                manager_id = excluded.manager_id, waiting_since = excluded.waiting_since,
                decision_key = excluded.decision_key, reason = excluded.reason,
                explanation = excluded.explanation, attempts = 0, next_attempt = now()",
        )
        .bind(&deals)
        .bind(&self.account_id)
        .bind(self.plan_id)
        .bind(orders.iter().map(|o| o.version).collect::<Vec<_>>())
        .bind(&managers)
        .bind(orders.iter().map(|o| o.waiting_since).collect::<Vec<_>>())
        .bind(decided.iter().map(|(_, _, key)| *key).collect::<Vec<_>>())
        .bind(
            decided
                .iter()
                .map(|(_, d, _)| d.reason.clone())
                .collect::<Vec<_>>(),
        )
        .bind(explanations)
        .execute(&mut **tx)
        .await?;
        save_cursor(tx, self.plan_id, cursor).await?;
        self.tx.commit().await?;
        Ok(orders)
    }
}

/// Whether any deal of the plan waits (one probe of the queue's index).
pub(super) async fn has_waiting(
    conn: &mut sqlx::PgConnection,
    account_id: &str,
    plan_id: Uuid,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM deal_view WHERE plan_id = $1 AND account_id = $2
            AND waiting_since IS NOT NULL)",
    )
    .bind(plan_id)
    .bind(account_id)
    .fetch_one(conn)
    .await
}

impl Store {
    /// Opens the decision of a plan's queue at `at` (now; who is away is as of then): locks
    /// the plan's row, loads the settings and
    /// up to `limit` of the oldest waiting deals (skipping those another transaction
    /// holds: their change is applied first, and decides them again). `None` when the plan
    /// is unknown, archived, or nobody waits.
    pub async fn open_queue(
        &self,
        account_id: &str,
        plan_id: Uuid,
        limit: i64,
        at: OffsetDateTime,
    ) -> Result<Option<(OpenQueue, QueueKnown)>, StoreError> {
        let mut tx = self.pool.begin().await?;
        key_lookups_only(&mut tx).await?;
        let Some(row) = lock_plan(&mut tx, account_id, plan_id).await? else {
            return Ok(None);
        };
        let settings = settings_from(&row)?;
        if settings.archived {
            return Ok(None);
        }
        let queue: Vec<Waiting> = sqlx::query(
            "SELECT deal_id, version, waiting_since FROM deal_view
             WHERE plan_id = $1 AND account_id = $2 AND waiting_since IS NOT NULL AND open
                AND manager_id IS NULL
             ORDER BY waiting_since, deal_id LIMIT $3 FOR UPDATE SKIP LOCKED",
        )
        .bind(plan_id)
        .bind(account_id)
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|r| {
            Ok(Waiting {
                deal_id: r.try_get("deal_id")?,
                version: r.try_get("version")?,
                since: r.try_get("waiting_since")?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()?;
        if queue.is_empty() {
            return Ok(None);
        }
        let leads = sqlx::query(
            "SELECT deal_id, intake_id FROM assignments WHERE account_id = $1 AND deal_id = ANY($2)",
        )
        .bind(account_id)
        .bind(queue.iter().map(|w| w.deal_id).collect::<Vec<_>>())
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|r| Ok((r.try_get("deal_id")?, r.try_get("intake_id")?)))
        .collect::<Result<_, sqlx::Error>>()?;
        let (away, _) = super::managers::away(&mut tx, account_id, &settings.managers, at).await?;
        let known = QueueKnown {
            away,
            settings,
            plan_version: row.try_get("version")?,
            cursor: cursor_from(&row)?,
            open: open_counts(&mut tx, plan_id).await?,
            queue,
            leads,
        };
        let opened = OpenQueue {
            tx,
            account_id: account_id.to_owned(),
            plan_id,
        };
        Ok(Some((opened, known)))
    }

    /// Which of `plans` (account, plan) have waiting deals: one probe of the queue's index
    /// each, in one statement (on the index whatever the statistics say: a scan of the
    /// view for every batch of deal events would grow with every deal).
    pub async fn plans_with_waiting(
        &self,
        plans: &[(String, Uuid)],
    ) -> Result<Vec<(String, Uuid)>, StoreError> {
        let mut tx = self.pool.begin().await?;
        key_lookups_only(&mut tx).await?;
        let waiting = sqlx::query_as(
            "SELECT p.a, p.p FROM UNNEST($1::text[], $2::uuid[]) AS p(a, p)
             CROSS JOIN LATERAL (SELECT 1 FROM deal_view WHERE plan_id = p.p AND account_id = p.a
                AND waiting_since IS NOT NULL LIMIT 1) w",
        )
        .bind(plans.iter().map(|(a, _)| a.clone()).collect::<Vec<_>>())
        .bind(plans.iter().map(|(_, p)| *p).collect::<Vec<_>>())
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(waiting)
    }

    /// Up to `limit` plans whose queue can move (distributing automatically, not archived,
    /// with waiting deals), those swept longest ago first; each is marked swept now, so
    /// the next sweep goes on with the others (by the plans' rows: a waiting deal is not
    /// read here).
    pub async fn plans_to_sweep(&self, limit: i64) -> Result<Vec<(String, Uuid)>, StoreError> {
        let mut tx = self.pool.begin().await?;
        key_lookups_only(&mut tx).await?;
        let plans = sqlx::query_as(
            "UPDATE plans SET queue_swept_at = now() WHERE plan_id IN (
                 SELECT p.plan_id FROM plans p
                 WHERE p.mode = 'auto' AND NOT p.archived AND EXISTS (
                     SELECT 1 FROM deal_view v WHERE v.plan_id = p.plan_id
                        AND v.account_id = p.account_id AND v.waiting_since IS NOT NULL)
                 ORDER BY p.queue_swept_at NULLS FIRST LIMIT $1
                 FOR UPDATE SKIP LOCKED)
             RETURNING account_id, plan_id",
        )
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(plans)
    }

    /// Leases up to `limit` due orders to this process for `lease` (another process takes
    /// an order only once its lease ran out: if this one died with it in hand).
    pub async fn lease_orders(
        &self,
        shares: (usize, usize),
        held: &Held,
        lease: time::Duration,
    ) -> Result<Vec<Order>, StoreError> {
        // At most `per_account` of one account in hand, counting those `held`, the
        // accounts' oldest first: an account whose limits freed a thousand places does not
        // hold back another's one.
        let mut tx = self.pool.begin().await?;
        key_lookups_only(&mut tx).await?;
        let sql = format!(
            "UPDATE assignment_orders o SET next_attempt = now() + $2, attempts = o.attempts + 1
             FROM ({}) due
             WHERE o.deal_id = due.deal_id
             RETURNING o.deal_id, o.account_id, o.plan_id, o.version, o.manager_id,
                o.waiting_since, o.attempts - 1 AS attempts",
            super::fair_due("assignment_orders")
        );
        let rows = super::leasing(sql, shares, held, lease)
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        rows.iter()
            .map(|r| {
                Ok(Order {
                    deal_id: r.try_get("deal_id")?,
                    account_id: r.try_get("account_id")?,
                    plan_id: r.try_get("plan_id")?,
                    version: r.try_get("version")?,
                    manager_id: r.try_get("manager_id")?,
                    waiting_since: r.try_get("waiting_since")?,
                    attempts: r.try_get("attempts")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    /// The order was made (or had been): forgotten, unless a newer one replaced it, and its
    /// decision becomes the deal's explanation.
    pub async fn order_done(&self, order: &Order) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "WITH made AS (
                 DELETE FROM assignment_orders
                 WHERE deal_id = $1 AND version = $2 AND manager_id = $3
                 RETURNING deal_id, account_id, plan_id, manager_id, decision_key, reason,
                    explanation)
             INSERT INTO assignments (intake_id, account_id, plan_id, manager_id, reason,
                explanation, deal_id)
             SELECT decision_key, account_id, plan_id, manager_id, reason, explanation, deal_id
             FROM made
             ON CONFLICT (account_id, intake_id) DO UPDATE SET manager_id = excluded.manager_id,
                reason = excluded.reason, explanation = excluded.explanation,
                deal_id = excluded.deal_id, decided_at = now()",
        )
        .bind(order.deal_id)
        .bind(order.version)
        .bind(&order.manager_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Deal-service refused the order (the deal changed, closed or left; the manager left
    /// the plan): forgotten, and unless the view moved on since, the deal waits again and
    /// no longer counts for the manager. A newer state of the deal is applied as usual.
    /// `gone`: the deal no longer exists (for this account): it leaves the queue instead.
    pub async fn order_refused(&self, order: &Order, gone: bool) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        let deleted = sqlx::query(
            "DELETE FROM assignment_orders WHERE deal_id = $1 AND version = $2 AND manager_id = $3",
        )
        .bind(order.deal_id)
        .bind(order.version)
        .bind(&order.manager_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if deleted == 0 {
            return Ok(());
        }
        let restored = sqlx::query(
            "UPDATE deal_view SET manager_id = NULL, waiting_since = $4
             WHERE deal_id = $1 AND account_id = $5 AND version = $2 AND manager_id = $3",
        )
        .bind(order.deal_id)
        .bind(order.version)
        .bind(&order.manager_id)
        .bind((!gone).then_some(order.waiting_since))
        .bind(&order.account_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if restored > 0 {
            let deltas = BTreeMap::from([((order.plan_id, order.manager_id.clone()), -1)]);
            apply_deltas(&mut tx, &deltas).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The order could not be made now (deal-service unreachable): tried again after
    /// `backoff`.
    pub async fn order_later(
        &self,
        order: &Order,
        backoff: time::Duration,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE assignment_orders SET next_attempt = now() + $4
             WHERE deal_id = $1 AND version = $2 AND manager_id = $3",
        )
        .bind(order.deal_id)
        .bind(order.version)
        .bind(&order.manager_id)
        .bind(backoff)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
