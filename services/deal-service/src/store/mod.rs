//! PostgreSQL access of deal-service. Every change writes its history rows and its outbox
//! events in the same transaction as the change itself.

mod contacts;
mod counts;
mod deals;
mod error;
mod events;
mod managers;
pub mod outbox;
mod parked;
mod plans;
mod queries;
mod rows;

use salesplan_platform::consistency::{self, LeadsToken, Token};
use salesplan_platform::privacy::ContactKeys;
use sqlx::{PgConnection, PgPool, Postgres, Transaction};
use time::OffsetDateTime;

pub use contacts::{Erasure, Identity};
pub use deals::{BulkOutcome, BulkTarget};
pub use error::StoreError;
pub use managers::Stamp;
pub use parked::ParkedRow;
pub use queries::{Board, Column, HistoryRow, Page, Totals, sort_value as queries_sort_value};

/// The NOTIFY channel that wakes the outbox relay.
pub const OUTBOX_CHANNEL: &str = "deal_service_outbox";

/// Deals changed per transaction in bulk operations.
pub const BULK_CHUNK: usize = 1_000;
/// The most deals one bulk change (by ids or by filter) takes: its transactions and events
/// stay bounded, and its time within the call's deadline.
pub const MAX_BULK_DEALS: usize = 10_000;

#[derive(Clone)]
pub struct Store {
    /// Writes, the outbox, and reads of one row by its key.
    pool: PgPool,
    /// Reads that scan (lists, boards, history): their own connections and a shorter
    /// statement timeout, so they never take the connections writes and intake need.
    reads: PgPool,
    /// What deal events carry of a contact (docs/privacy.md).
    contact_keys: ContactKeys,
}

impl Store {
    pub fn new(pool: PgPool, reads: PgPool, contact_keys: ContactKeys) -> Self {
        Self {
            pool,
            reads,
            contact_keys,
        }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

/// Commits a change, and notes its transaction as the call's consistency token: a read
/// given the token includes this change.
async fn commit(mut tx: Transaction<'_, Postgres>) -> Result<(), sqlx::Error> {
    let xid: i64 = sqlx::query_scalar("SELECT pg_current_xact_id()::text::bigint")
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    consistency::record(Token(xid));
    Ok(())
}

/// A read-only transaction whose statements all see one snapshot. A plan is read in four
/// statements (the row, its managers, stages and reasons); each on its own snapshot, a read
/// racing a change could return the row as one version and the managers as the next, under
/// the older version's number (the distributor then decided leads on managers the plan did
/// not have at that version). Locked reads need no snapshot: plan changes take the row lock.
async fn snapshot(pool: &PgPool) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
    pool.begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .await
}

/// For a call that changed nothing (a repeat of a change in force): notes as its token the
/// newest write it could have seen, so a read given it includes what the answer showed.
async fn note_seen(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    let below: i64 =
        sqlx::query_scalar("SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint")
            .fetch_one(conn)
            .await?;
    consistency::record(Token::of_horizon(below));
    Ok(())
}

impl Store {
    /// Waits (at most `wait`) until the write of `token` can be read on the read pool (a
    /// replica replays it a moment after the primary committed it; on the primary it can
    /// be read at once).
    pub async fn readable(
        &self,
        token: Token,
        wait: std::time::Duration,
    ) -> Result<(), StoreError> {
        consistency::wait_until(&token, wait, || async {
            let status: Option<String> =
                sqlx::query_scalar("SELECT pg_xact_status($1::text::xid8)")
                    .bind(token.0.to_string())
                    .fetch_one(&self.reads)
                    .await
                    .map_err(|err| match &err {
                        // "transaction ID … is in the future": not a token this system wrote.
                        sqlx::Error::Database(db) if db.code().as_deref() == Some("22023") => {
                            StoreError::invalid(
                                "min_consistency_token",
                                "not a consistency token of this system",
                            )
                        }
                        _ => err.into(),
                    })?;
            // Committed, aborted, or so old its status is gone: nothing left to wait for.
            Ok((status.as_deref() != Some("in progress")).then_some(()))
        })
        .await
    }

    /// Waits (at most `wait`) until the deals of the accepted `leads` can be read in
    /// `account_id`: each deal from a lead has its intake id as idempotency key.
    pub async fn leads_readable(
        &self,
        account_id: &str,
        leads: &LeadsToken,
        wait: std::time::Duration,
    ) -> Result<(), StoreError> {
        let keys = leads.keys();
        consistency::wait_until(leads, wait, || async {
            let found: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM deals
                 WHERE idempotency_key = ANY($1::text[]) AND account_id = $2",
            )
            .bind(&keys)
            .bind(account_id)
            .fetch_one(&self.reads)
            .await?;
            Ok((found as usize >= keys.len()).then_some(()))
        })
        .await
    }
}

/// Now, in microseconds: what PostgreSQL stores, so a value read back equals the one
/// written.
pub fn now() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    now.replace_nanosecond(now.nanosecond() / 1_000 * 1_000)
        .unwrap_or(now)
}
