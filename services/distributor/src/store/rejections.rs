//! Leads refused on their own when their deal was created: recorded for their account,
//! with their decision forgotten (it never became a deal, so it counts for nobody).

use salesplan_platform::db;
use sqlx::Row;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::SCHEMA;

use super::{Deltas, Store, StoreError, apply_deltas};

/// How long rejections are listed.
const KEPT_DAYS: i32 = 30;

/// One refused lead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub intake_id: Uuid,
    pub account_id: String,
    pub plan_id: Uuid,
    pub source: String,
    pub tunnel_id: String,
    pub block_id: String,
    pub run_id: String,
    /// The gRPC code name, e.g. `INVALID_ARGUMENT`.
    pub code: String,
    pub reason: String,
    pub rejected_at: OffsetDateTime,
}

/// Where a page of rejections continues: after this (time, intake id), newest first.
pub type After = (OffsetDateTime, Uuid);

impl Store {
    /// Records the rejections and forgets their decisions, in one transaction.
    pub async fn reject(&self, rejections: &[Rejection]) -> Result<(), StoreError> {
        if rejections.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        let forgotten = sqlx::query(
            "DELETE FROM assignments a USING UNNEST($1::uuid[], $2::text[]) AS r(i, acct)
             WHERE a.intake_id = r.i AND a.account_id = r.acct AND a.deal_id IS NULL
             RETURNING a.plan_id, a.manager_id",
        )
        .bind(rejections.iter().map(|r| r.intake_id).collect::<Vec<_>>())
        .bind(
            rejections
                .iter()
                .map(|r| r.account_id.clone())
                .collect::<Vec<_>>(),
        )
        .fetch_all(&mut *tx)
        .await?;
        let mut deltas = Deltas::new();
        for row in forgotten {
            if let Some(manager) = row.try_get::<Option<String>, _>("manager_id")? {
                *deltas
                    .entry((row.try_get("plan_id")?, manager))
                    .or_default() -= 1;
            }
        }
        apply_deltas(&mut tx, &deltas).await?;
        let column = |f: fn(&Rejection) -> String| rejections.iter().map(f).collect::<Vec<_>>();
        sqlx::query(
            "INSERT INTO intake_rejections (intake_id, account_id, plan_id, source, tunnel_id,
                block_id, run_id, code, reason, rejected_at)
             SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::uuid[], $4::text[], $5::text[],
                $6::text[], $7::text[], $8::text[], $9::text[], $10::timestamptz[])
             ON CONFLICT (account_id, intake_id) DO UPDATE SET code = excluded.code,
                reason = excluded.reason, rejected_at = excluded.rejected_at",
        )
        .bind(rejections.iter().map(|r| r.intake_id).collect::<Vec<_>>())
        .bind(column(|r| r.account_id.clone()))
        .bind(rejections.iter().map(|r| r.plan_id).collect::<Vec<_>>())
        .bind(column(|r| r.source.clone()))
        .bind(column(|r| r.tunnel_id.clone()))
        .bind(column(|r| r.block_id.clone()))
        .bind(column(|r| r.run_id.clone()))
        .bind(column(|r| r.code.clone()))
        .bind(column(|r| r.reason.clone()))
        .bind(rejections.iter().map(|r| r.rejected_at).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?;
        // The accounts' old rejections go as new ones come (by their index, a few rows).
        sqlx::query(
            "DELETE FROM intake_rejections
             WHERE account_id = ANY($1) AND rejected_at < now() - make_interval(days => $2)",
        )
        .bind(column(|r| r.account_id.clone()))
        .bind(KEPT_DAYS)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// A page of the account's rejections, newest first, optionally of one plan.
    pub async fn rejections(
        &self,
        account_id: &str,
        plan_id: Option<Uuid>,
        after: Option<After>,
        limit: i64,
    ) -> Result<Vec<Rejection>, StoreError> {
        db::traced(SCHEMA, "SELECT intake_rejections", async {
            let (after_at, after_id) = after.unzip();
            Ok(sqlx::query(
                "SELECT intake_id, account_id, plan_id, source, tunnel_id, block_id, run_id, code,
                reason, rejected_at
             FROM intake_rejections
             WHERE account_id = $1 AND ($2::uuid IS NULL OR plan_id = $2)
                AND ($3::timestamptz IS NULL OR (rejected_at, intake_id) < ($3, $4))
             ORDER BY rejected_at DESC, intake_id DESC LIMIT $5",
            )
            .bind(account_id)
            .bind(plan_id)
            .bind(after_at)
            .bind(after_id)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| {
                Ok(Rejection {
                    intake_id: r.try_get("intake_id")?,
                    account_id: r.try_get("account_id")?,
                    plan_id: r.try_get("plan_id")?,
                    source: r.try_get("source")?,
                    tunnel_id: r.try_get("tunnel_id")?,
                    block_id: r.try_get("block_id")?,
                    run_id: r.try_get("run_id")?,
                    code: r.try_get("code")?,
                    reason: r.try_get("reason")?,
                    rejected_at: r.try_get("rejected_at")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()?)
        })
        .await
    }
}
