//! The outbox as the relay reads it: one pass at a time (a transaction-scoped advisory
//! lock), its horizon, its rows in id order, and their removal (or parking) once the
//! broker has them.

use std::collections::HashMap;

use sqlx::{PgPool, Postgres, Row, Transaction};

use super::StoreError;

/// Rows read per pass.
pub const BATCH: i64 = 1_000;
/// Payload bytes read per pass (a pass may exceed it by one row).
pub const BATCH_BYTES: i64 = 8 * 1024 * 1024;
/// Arbitrary, fixed: the advisory lock key of "the outbox relay of deal-service".
const RELAY_LOCK: i64 = 0x5A1E_0B0C;

/// One committed outbox row.
pub struct OutboxRow {
    pub id: i64,
    pub subject: String,
    pub message_id: String,
    pub payload: Vec<u8>,
    /// The trace context of the change that wrote it.
    pub headers: HashMap<String, String>,
    /// The transaction that wrote it.
    pub xid: i64,
}

/// A pass's rows (`$1` rows at most, `$2` payload bytes), with how many rows are visible
/// up to one more than it takes. One walk of the key, no join: a join of the rows with
/// their own window, on statistics taken while the outbox was empty (between bursts),
/// was planned as a nested loop that ran the window once per row — seconds per pass
/// under a bulk add, and every deal event behind it.
const ROWS: &str = "SELECT id, subject, message_id, payload, headers, xid, visible FROM (
       SELECT id, subject, message_id, payload, headers, xid,
           sum(octet_length(payload)) OVER (ORDER BY id) - octet_length(payload) AS before,
           row_number() OVER (ORDER BY id) AS n, count(*) OVER () AS visible
       FROM (SELECT id, subject, message_id, payload, headers, xid FROM outbox
             ORDER BY id LIMIT $1 + 1) first
    ) k
    WHERE before < $2 AND n <= $1 ORDER BY id";

/// A row the broker refused, with why.
pub struct Parked {
    pub id: i64,
    pub account_id: String,
    pub reason: String,
}

/// Events waiting to be published.
pub async fn backlog(pool: &PgPool) -> Result<i64, StoreError> {
    Ok(sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(pool)
        .await?)
}

/// A relay pass: holds the relay lock until [`Pass::finish`] (or drop, which changes
/// nothing).
pub struct Pass {
    tx: Transaction<'static, Postgres>,
}

impl Pass {
    /// The pass, or `None` while another relay (another replica) holds the lock.
    pub async fn begin(pool: &PgPool) -> Result<Option<Self>, StoreError> {
        let mut tx = pool.begin().await?;
        // The outbox is a queue: between two vacuums its table holds every row deleted
        // since, and its statistics (after an auto-analyze) say it holds few live ones. The
        // planner then reads the first rows by a scan of the whole table and a sort, a pass
        // costing a page read per ~8 published events (12 ms with 100,000 of them). By the
        // primary key, a pass reads its rows and the index entries of the deleted ones,
        // which the first pass past them marks dead for the next. (Set with the lock: no
        // round trip of its own.)
        let (locked, _): (bool, String) = sqlx::query_as(
            "SELECT pg_try_advisory_xact_lock($1), set_config('enable_seqscan', 'off', true)",
        )
        .bind(RELAY_LOCK)
        .fetch_one(&mut *tx)
        .await?;
        Ok(locked.then_some(Self { tx }))
    }

    /// The oldest transaction of deal-service (its database and role) running now, as a
    /// 64-bit id; with none, the next id to be assigned. Read before the outbox rows, in a
    /// statement of its own: every transaction below it has finished before their snapshot
    /// is taken, so they see its rows. (Only this database and role: another database on
    /// the same server, or another service, never holds the horizon back.)
    pub async fn running_horizon(&mut self) -> Result<i64, StoreError> {
        // The 32-bit ids of pg_stat_activity widened to the 64-bit id nearest the
        // snapshot's xmax (latest completed + 1: a running transaction may be at or above
        // it). The xmax is read from the statement's snapshot, taken before the running
        // transactions are listed.
        Ok(sqlx::query_scalar(
            "WITH next AS (SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint AS n),
                  running AS (
                    SELECT n + ((a.backend_xid::text::bigint - n % 4294967296
                                 + 2147483648 + 4294967296) % 4294967296) - 2147483648 AS x
                    FROM next JOIN pg_stat_activity a
                      ON a.datname = current_database() AND a.usename = current_user
                     AND a.backend_xid IS NOT NULL)
             SELECT LEAST((SELECT min(x) FROM running), (SELECT n FROM next))",
        )
        .fetch_one(&mut *self.tx)
        .await?)
    }

    /// The committed rows of the pass in id order: up to [`BATCH`] rows and about
    /// [`BATCH_BYTES`] (always the first row: plan events can be large, and one pass holds
    /// its rows in memory); and whether they are every row visible, in the statement's own
    /// snapshot: exactly what it read. The first `BATCH + 1` rows say it (one more than a
    /// pass takes means more are waiting), without counting the whole outbox, whose dead
    /// rows a busy relay would read on every pass.
    pub async fn rows(&mut self) -> Result<(Vec<OutboxRow>, bool), StoreError> {
        let rows = sqlx::query(ROWS)
            .bind(BATCH)
            .bind(BATCH_BYTES)
            .fetch_all(&mut *self.tx)
            .await?;
        let visible: i64 = match rows.first() {
            Some(first) => first.try_get("visible")?,
            None => 0,
        };
        let all = visible == rows.len() as i64;
        let rows = rows
            .iter()
            .map(|row| {
                let headers: sqlx::types::Json<HashMap<String, String>> = row.try_get("headers")?;
                Ok(OutboxRow {
                    id: row.try_get("id")?,
                    subject: row.try_get("subject")?,
                    message_id: row.try_get("message_id")?,
                    payload: row.try_get("payload")?,
                    headers: headers.0,
                    xid: row.try_get("xid")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()?;
        Ok((rows, all))
    }

    /// How PostgreSQL runs [`Pass::rows`] in this pass (`EXPLAIN (ANALYZE, BUFFERS)`, as
    /// JSON, a custom plan): for the tests. It reads the rows, holding the relay lock.
    #[doc(hidden)]
    pub async fn explain_rows(&mut self) -> Result<serde_json::Value, StoreError> {
        let plan: sqlx::types::Json<serde_json::Value> = sqlx::query_scalar(sqlx::AssertSqlSafe(
            format!("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {ROWS}"),
        ))
        .bind(BATCH)
        .bind(BATCH_BYTES)
        .fetch_one(&mut *self.tx)
        .await?;
        Ok(plan.0)
    }

    /// Removes the rows `done` (published or parked), copying the `parked` ones with their
    /// reasons to `outbox_parked`, and ends the pass.
    pub async fn finish(mut self, done: &[i64], parked: &[Parked]) -> Result<(), StoreError> {
        if !parked.is_empty() {
            sqlx::query(
                "INSERT INTO outbox_parked (id, account_id, subject, message_id, payload, headers,
                    created_at, reason)
                 SELECT o.id, p.account_id, o.subject, o.message_id, o.payload, o.headers,
                    o.created_at, p.reason
                 FROM outbox o JOIN UNNEST($1::bigint[], $2::text[], $3::text[]) AS p(id, account_id, reason)
                    ON o.id = p.id
                 ON CONFLICT (id) DO NOTHING",
            )
            .bind(parked.iter().map(|p| p.id).collect::<Vec<_>>())
            .bind(parked.iter().map(|p| p.account_id.clone()).collect::<Vec<_>>())
            .bind(parked.iter().map(|p| p.reason.clone()).collect::<Vec<_>>())
            .execute(&mut *self.tx)
            .await?;
        }
        sqlx::query("DELETE FROM outbox WHERE id = ANY($1)")
            .bind(done)
            .execute(&mut *self.tx)
            .await?;
        self.tx.commit().await?;
        Ok(())
    }
}
