//! Events the relay parked because the broker refused them (`outbox_parked`).

use super::StoreError;
use sqlx::Row;
use time::OffsetDateTime;

use super::{OUTBOX_CHANNEL, Store};

#[derive(Debug, Clone)]
pub struct ParkedRow {
    pub id: i64,
    pub account_id: String,
    pub subject: String,
    pub message_id: String,
    pub payload_bytes: i64,
    pub reason: String,
    pub created_at: OffsetDateTime,
    pub parked_at: OffsetDateTime,
}

impl Store {
    /// Parked events after `after_id`, oldest first: of one account, or (`None`, for the
    /// platform's operators) of every account.
    pub async fn parked_events(
        &self,
        account_id: Option<&str>,
        after_id: i64,
        limit: i64,
    ) -> Result<Vec<ParkedRow>, StoreError> {
        sqlx::query(
            "SELECT id, account_id, subject, message_id, length(payload)::bigint AS bytes, reason,
                created_at, parked_at
             FROM outbox_parked WHERE ($1::text IS NULL OR account_id = $1) AND id > $2
             ORDER BY id LIMIT $3",
        )
        .bind(account_id)
        .bind(after_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| {
            Ok(ParkedRow {
                id: r.try_get("id")?,
                account_id: r.try_get("account_id")?,
                subject: r.try_get("subject")?,
                message_id: r.try_get("message_id")?,
                payload_bytes: r.try_get("bytes")?,
                reason: r.try_get("reason")?,
                created_at: r.try_get("created_at")?,
                parked_at: r.try_get("parked_at")?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(Into::into)
    }

    /// Moves parked events back to the end of the outbox (in their old order) and wakes the
    /// relay; returns how many moved. `account_id` limits them to one account.
    pub async fn replay_parked(
        &self,
        account_id: Option<&str>,
        ids: &[i64],
    ) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await?;
        let moved = sqlx::query(
            "WITH moved AS (
                DELETE FROM outbox_parked WHERE id = ANY($1) AND ($2::text IS NULL OR account_id = $2)
                RETURNING id, subject, message_id, payload, headers, created_at)
             INSERT INTO outbox (subject, message_id, payload, headers, created_at)
             SELECT subject, message_id, payload, headers, created_at FROM moved ORDER BY id",
        )
        .bind(ids)
        .bind(account_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(OUTBOX_CHANNEL)
            .execute(&mut *tx)
            .await?;
        super::commit(tx).await?;
        Ok(moved)
    }
}
