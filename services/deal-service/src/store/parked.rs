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
        let mut rows = sqlx::query(
            "DELETE FROM outbox_parked WHERE id = ANY($1) AND ($2::text IS NULL OR account_id = $2)
             RETURNING id, subject, message_id, payload, headers, created_at",
        )
        .bind(ids)
        .bind(account_id)
        .fetch_all(&mut *tx)
        .await?;
        rows.sort_by_key(|r| r.try_get::<i64, _>("id").unwrap_or_default());
        let mut moved = Moved::default();
        for row in &rows {
            let subject: String = row.try_get("subject")?;
            let payload: Vec<u8> = row.try_get("payload")?;
            moved
                .payloads
                .push(without_personal_data(&subject, payload, &self.contact_keys));
            moved.subjects.push(subject);
            moved.message_ids.push(row.try_get("message_id")?);
            moved.headers.push(row.try_get("headers")?);
            moved.created.push(row.try_get("created_at")?);
        }
        sqlx::query(
            "INSERT INTO outbox (subject, message_id, payload, headers, created_at)
             SELECT s, m, p, h, c
             FROM UNNEST($1::text[], $2::text[], $3::bytea[], $4::jsonb[], $5::timestamptz[])
                WITH ORDINALITY AS t(s, m, p, h, c, n) ORDER BY n",
        )
        .bind(&moved.subjects)
        .bind(&moved.message_ids)
        .bind(&moved.payloads)
        .bind(&moved.headers)
        .bind(&moved.created)
        .execute(&mut *tx)
        .await?;
        let moved = rows.len() as u64;
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(OUTBOX_CHANNEL)
            .execute(&mut *tx)
            .await?;
        super::commit(tx).await?;
        Ok(moved)
    }
}

/// Parked events on their way back to the outbox, in their old order.
#[derive(Default)]
struct Moved {
    subjects: Vec<String>,
    message_ids: Vec<String>,
    payloads: Vec<Vec<u8>>,
    headers: Vec<serde_json::Value>,
    created: Vec<time::OffsetDateTime>,
}

/// A parked deal event written before events lost personal data carries the contact: it
/// is published again without it (the scrub's rewrite), so a replay never brings a
/// person back into the deal stream. Other events, and events already without, unchanged.
fn without_personal_data(
    subject: &str,
    payload: Vec<u8>,
    keys: &salesplan_platform::privacy::ContactKeys,
) -> Vec<u8> {
    use prost::Message as _;
    if !subject.starts_with("salesplan.deals.v1.") {
        return payload;
    }
    match salesplan_proto::v1::DealEvent::decode(payload.as_slice()) {
        Ok(event) => match crate::events::scrub::scrubbed(&event, keys) {
            Some(clean) => clean.encode_to_vec(),
            None => payload,
        },
        Err(_) => payload,
    }
}
