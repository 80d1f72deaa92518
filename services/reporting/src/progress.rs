//! How fresh the read model is, for reads that must include a write (issue 15).
//!
//! Each consumer records the stream positions it has handled; the position up to which it
//! handled every message (`applied_through`) only moves over a contiguous run, so a message
//! retried later holds it back. deal-service's horizons (`pb::Horizon`) inside that run say
//! which writes are all in: every write whose token is below the newest such horizon.

use prost::Message as _;
use salesplan_platform::{
    ApiError,
    bus::{BatchHandler, Delivery, Outcome, streams},
    consistency::{self, Token},
};
use salesplan_proto::v1 as pb;
use sqlx::{PgPool, Row};
use time::OffsetDateTime;

/// The consumers whose progress a read waits for: deal events and plan events (names).
pub const DEALS_CONSUMER: &str = "reporting-deals";
pub const PLANS_CONSUMER: &str = "reporting-plans";

/// A handler whose handled messages are recorded as the consumer's progress.
pub struct Tracked<H> {
    inner: H,
    pool: PgPool,
    consumer: &'static str,
}

impl<H> Tracked<H> {
    pub fn new(inner: H, pool: PgPool, consumer: &'static str) -> Self {
        Self {
            inner,
            pool,
            consumer,
        }
    }
}

impl<H: BatchHandler> BatchHandler for Tracked<H> {
    async fn handle(&self, batch: &[Delivery]) -> Vec<Outcome> {
        let mut outcomes = self.inner.handle(batch).await;
        if let Err(err) = record(&self.pool, self.consumer, batch, &outcomes).await {
            // Applied but not recorded: delivered again, applied again (idempotent), then
            // recorded.
            tracing::warn!(consumer = self.consumer, error = %err, "cannot record progress");
            for outcome in &mut outcomes {
                if matches!(outcome, Outcome::Done) {
                    *outcome = Outcome::Retry(format!("progress not recorded: {err}"));
                }
            }
        }
        outcomes
    }
}

/// One handled message: its position, and the horizon it carries if it is one.
struct Handled {
    seq: i64,
    horizon: Option<i64>,
    published_at: Option<OffsetDateTime>,
}

fn handled(batch: &[Delivery], outcomes: &[Outcome]) -> Vec<Handled> {
    batch
        .iter()
        .zip(outcomes)
        .filter(|(_, outcome)| matches!(outcome, Outcome::Done | Outcome::Reject(_)))
        .map(|(delivery, _)| {
            let horizon = streams::is_horizon(&delivery.subject)
                .then(|| pb::Horizon::decode(delivery.payload.clone()).ok())
                .flatten();
            Handled {
                seq: delivery.stream_sequence as i64,
                horizon: horizon.as_ref().map(|h| h.xid_horizon),
                published_at: horizon.and_then(|h| h.published_at).and_then(|t| {
                    OffsetDateTime::from_unix_timestamp_nanos(
                        i128::from(t.seconds) * 1_000_000_000 + i128::from(t.nanos),
                    )
                    .ok()
                }),
            }
        })
        .collect()
}

async fn record(
    pool: &PgPool,
    consumer: &str,
    batch: &[Delivery],
    outcomes: &[Outcome],
) -> Result<(), sqlx::Error> {
    let handled = handled(batch, outcomes);
    let Some(first) = batch.iter().map(|d| d.stream_sequence as i64).min() else {
        return Ok(());
    };
    if handled.is_empty() {
        return Ok(());
    }
    let mut tx = pool.begin().await?;
    // A consumer's first batch starts its record (the stream before it was applied before
    // progress was kept, or aged out).
    sqlx::query(
        "INSERT INTO consumer_progress (consumer, applied_through) VALUES ($1, $2)
         ON CONFLICT (consumer) DO NOTHING",
    )
    .bind(consumer)
    .bind(first - 1)
    .execute(&mut *tx)
    .await?;
    let mut floor: i64 = sqlx::query_scalar(
        "SELECT applied_through FROM consumer_progress WHERE consumer = $1 FOR UPDATE",
    )
    .bind(consumer)
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO consumer_ahead (consumer, seq, horizon, published_at)
         SELECT $1, s, h, p FROM UNNEST($2::bigint[], $3::bigint[], $4::timestamptz[]) AS t(s, h, p)
         WHERE s > $5
         ON CONFLICT (consumer, seq) DO NOTHING",
    )
    .bind(consumer)
    .bind(handled.iter().map(|h| h.seq).collect::<Vec<_>>())
    .bind(handled.iter().map(|h| h.horizon).collect::<Vec<_>>())
    .bind(handled.iter().map(|h| h.published_at).collect::<Vec<_>>())
    .bind(floor)
    .execute(&mut *tx)
    .await?;
    let ahead = sqlx::query(
        "SELECT seq, horizon, published_at FROM consumer_ahead WHERE consumer = $1 ORDER BY seq",
    )
    .bind(consumer)
    .fetch_all(&mut *tx)
    .await?;
    let mut newest: Option<(i64, Option<OffsetDateTime>)> = None;
    for row in &ahead {
        if row.try_get::<i64, _>("seq")? != floor + 1 {
            break;
        }
        floor += 1;
        if let Some(horizon) = row.try_get::<Option<i64>, _>("horizon")? {
            newest = Some((horizon, row.try_get("published_at")?));
        }
    }
    sqlx::query("DELETE FROM consumer_ahead WHERE consumer = $1 AND seq <= $2")
        .bind(consumer)
        .bind(floor)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "UPDATE consumer_progress SET applied_through = $2, applied_at = now(),
            horizon = GREATEST(horizon, COALESCE($3, 0)),
            published_at = CASE WHEN $3 > horizon THEN $4 ELSE published_at END
         WHERE consumer = $1",
    )
    .bind(consumer)
    .bind(floor)
    .bind(newest.map(|(h, _)| h))
    .bind(newest.and_then(|(_, at)| at))
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

/// What the read model holds: the horizon both consumers reached, and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Freshness {
    pub horizon: i64,
    pub published_at: Option<OffsetDateTime>,
    pub applied_at: Option<OffsetDateTime>,
}

impl Freshness {
    pub fn to_proto(self) -> pb::Freshness {
        let ts = |t: OffsetDateTime| prost_types::Timestamp {
            seconds: t.unix_timestamp(),
            nanos: t.nanosecond() as i32,
        };
        pb::Freshness {
            consistency_token: Token::of_horizon(self.horizon.max(1)).to_string(),
            published_at: self.published_at.map(ts),
            applied_at: self.applied_at.map(ts),
        }
    }
}

/// The read model's freshness now: the lesser of the two consumers'.
pub async fn freshness(pool: &PgPool) -> Result<Freshness, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT consumer, horizon, published_at, applied_at FROM consumer_progress
         WHERE consumer = ANY($1)",
    )
    .bind([DEALS_CONSUMER, PLANS_CONSUMER])
    .fetch_all(pool)
    .await?;
    if rows.len() < 2 {
        return Ok(Freshness {
            horizon: 0,
            published_at: None,
            applied_at: None,
        });
    }
    let mut least: Option<Freshness> = None;
    for row in rows {
        let this = Freshness {
            horizon: row.try_get("horizon")?,
            published_at: row.try_get("published_at")?,
            applied_at: row.try_get("applied_at")?,
        };
        if least.is_none_or(|l| this.horizon < l.horizon) {
            least = Some(this);
        }
    }
    Ok(least.unwrap_or(Freshness {
        horizon: 0,
        published_at: None,
        applied_at: None,
    }))
}

/// The freshness to answer with: at once without a token, else once the model includes
/// the token's write (at most `wait`; UNAVAILABLE after that).
pub async fn at_least(
    pool: &PgPool,
    token: Option<Token>,
    wait: std::time::Duration,
) -> Result<Freshness, ApiError> {
    let Some(token) = token else {
        return Ok(freshness(pool).await?);
    };
    consistency::wait_until(token, wait, || async {
        let now = freshness(pool).await?;
        Ok(token.covered_by(now.horizon).then_some(now))
    })
    .await
}
