//! PostgreSQL access of deal-service. Every change writes its history rows and its outbox
//! events in the same transaction as the change itself.

mod counts;
mod deals;
mod events;
mod parked;
mod plans;
mod queries;
mod rows;

use sqlx::PgPool;
use time::OffsetDateTime;

pub use deals::{BulkOutcome, BulkTarget};
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
}

impl Store {
    pub fn new(pool: PgPool, reads: PgPool) -> Self {
        Self { pool, reads }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

/// Now, in microseconds: what PostgreSQL stores, so a value read back equals the one
/// written.
pub fn now() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    now.replace_nanosecond(now.nanosecond() / 1_000 * 1_000)
        .unwrap_or(now)
}
