//! How fresh the read model is, for reads that must include a write (issue 15).
//!
//! Each consumer records the stream positions it has handled; the position up to which it
//! handled every message (`applied_through`) only moves over a contiguous run, so a message
//! retried later holds it back. deal-service's horizons (`pb::Horizon`, on their own
//! stream) say up to which positions of the deal and plan streams every write below a
//! transaction id is: the read model holds every write whose token is below the newest
//! horizon both consumers have applied through.

use std::{
    collections::VecDeque,
    sync::{Arc, RwLock},
};

use prost::Message as _;
use salesplan_platform::{
    ApiError,
    bus::{BatchHandler, Delivery, Outcome},
    consistency::{self, LeadsToken, Token, Wanted},
};
use salesplan_proto::v1 as pb;
use sqlx::{PgPool, Row};
use time::OffsetDateTime;

/// The consumers whose progress a read waits for: deal events and plan events (names).
pub const DEALS_CONSUMER: &str = "reporting-deals";
pub const PLANS_CONSUMER: &str = "reporting-plans";

/// Horizons kept in memory: enough that one both consumers have reached is among them.
const KEPT_HORIZONS: usize = 1_000;

/// A handler whose handled messages are recorded as the consumer's progress.
pub struct Tracked<H> {
    inner: H,
    pool: PgPool,
    consumer: &'static str,
    /// A message still failing at this delivery is dead-lettered by the consumer loop: it
    /// counts as handled, or the position would wait for it for ever.
    max_deliver: i64,
}

impl<H> Tracked<H> {
    pub fn new(inner: H, pool: PgPool, consumer: &'static str, max_deliver: i64) -> Self {
        Self {
            inner,
            pool,
            consumer,
            max_deliver,
        }
    }
}

impl<H: BatchHandler> BatchHandler for Tracked<H> {
    async fn handle(&self, batch: &[Delivery]) -> Vec<Outcome> {
        let mut outcomes = self.inner.handle(batch).await;
        if let Err(err) = record(
            &self.pool,
            self.consumer,
            batch,
            &outcomes,
            self.max_deliver,
        )
        .await
        {
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

/// Moves the consumer's position over the messages handled: a run that continues it costs
/// one row update; only messages beyond a gap are written down, until it is filled.
async fn record(
    pool: &PgPool,
    consumer: &str,
    batch: &[Delivery],
    outcomes: &[Outcome],
    max_deliver: i64,
) -> Result<(), sqlx::Error> {
    let mut handled: Vec<i64> = batch
        .iter()
        .zip(outcomes)
        .filter(|(delivery, outcome)| match outcome {
            Outcome::Done | Outcome::Reject(_) => true,
            Outcome::Retry(_) => delivery.delivered >= max_deliver,
        })
        .map(|(delivery, _)| delivery.stream_sequence as i64)
        .collect();
    let Some(first) = batch.iter().map(|d| d.stream_sequence as i64).min() else {
        return Ok(());
    };
    if handled.is_empty() {
        return Ok(());
    }
    handled.sort_unstable();
    handled.dedup();
    let mut tx = pool.begin().await?;
    let known: Option<i64> = sqlx::query_scalar(
        "SELECT applied_through FROM consumer_progress WHERE consumer = $1 FOR UPDATE",
    )
    .bind(consumer)
    .fetch_optional(&mut *tx)
    .await?;
    let mut floor = match known {
        Some(floor) => floor,
        None => {
            // A consumer's first batch starts its record (what came before was applied
            // before progress was kept, or aged out). A replica racing here waits on the key.
            sqlx::query(
                "INSERT INTO consumer_progress (consumer, applied_through) VALUES ($1, $2)
                 ON CONFLICT (consumer) DO NOTHING",
            )
            .bind(consumer)
            .bind(first - 1)
            .execute(&mut *tx)
            .await?;
            sqlx::query_scalar(
                "SELECT applied_through FROM consumer_progress WHERE consumer = $1 FOR UPDATE",
            )
            .bind(consumer)
            .fetch_one(&mut *tx)
            .await?
        }
    };
    let mut beyond = Vec::new();
    for seq in handled {
        if seq == floor + 1 {
            floor = seq;
        } else if seq > floor {
            beyond.push(seq);
        }
    }
    if !beyond.is_empty() {
        sqlx::query(
            "INSERT INTO consumer_ahead (consumer, seq) SELECT $1, s FROM UNNEST($2::bigint[]) AS t(s)
             ON CONFLICT (consumer, seq) DO NOTHING",
        )
        .bind(consumer)
        .bind(&beyond)
        .execute(&mut *tx)
        .await?;
    }
    // Messages handled beyond an earlier gap that this run reaches.
    let ahead: Vec<i64> = sqlx::query_scalar(
        "SELECT seq FROM consumer_ahead WHERE consumer = $1 AND seq > $2 ORDER BY seq",
    )
    .bind(consumer)
    .bind(floor)
    .fetch_all(&mut *tx)
    .await?;
    let before = floor;
    for seq in ahead {
        if seq != floor + 1 {
            break;
        }
        floor = seq;
    }
    if floor > before || !beyond.is_empty() {
        sqlx::query("DELETE FROM consumer_ahead WHERE consumer = $1 AND seq <= $2")
            .bind(consumer)
            .bind(floor)
            .execute(&mut *tx)
            .await?;
    }
    sqlx::query(
        "UPDATE consumer_progress SET applied_through = $2, applied_at = now()
         WHERE consumer = $1",
    )
    .bind(consumer)
    .bind(floor)
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

/// One of deal-service's horizons.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Horizon {
    pub xid: i64,
    pub deals_sequence: i64,
    pub plans_sequence: i64,
    pub published_at: Option<OffsetDateTime>,
}

/// The newest horizons, fed by a consumer of this process on the horizons' stream.
#[derive(Default)]
pub struct Horizons {
    kept: RwLock<VecDeque<Horizon>>,
}

impl Horizons {
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    fn add(&self, horizon: Horizon) {
        let mut kept = self.kept.write().unwrap_or_else(|e| e.into_inner());
        if kept.back().is_some_and(|last| last.xid >= horizon.xid) {
            return;
        }
        kept.push_back(horizon);
        while kept.len() > KEPT_HORIZONS {
            kept.pop_front();
        }
    }

    /// The newest horizon both streams are applied through.
    fn reached(&self, deals: i64, plans: i64) -> Option<Horizon> {
        let kept = self.kept.read().unwrap_or_else(|e| e.into_inner());
        kept.iter()
            .rev()
            .find(|h| h.deals_sequence <= deals && h.plans_sequence <= plans)
            .copied()
    }
}

impl BatchHandler for Horizons {
    async fn handle(&self, batch: &[Delivery]) -> Vec<Outcome> {
        batch
            .iter()
            .map(
                |delivery| match pb::Horizon::decode(delivery.payload.clone()) {
                    Ok(h) => {
                        self.add(Horizon {
                            xid: h.xid_horizon,
                            deals_sequence: h.deals_sequence as i64,
                            plans_sequence: h.plans_sequence as i64,
                            published_at: h.published_at.and_then(|t| {
                                OffsetDateTime::from_unix_timestamp_nanos(
                                    i128::from(t.seconds) * 1_000_000_000 + i128::from(t.nanos),
                                )
                                .ok()
                            }),
                        });
                        Outcome::Done
                    }
                    Err(err) => Outcome::Reject(format!("undecodable horizon: {err}")),
                },
            )
            .collect()
    }
}

/// What the read model holds: every write below `horizon`.
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

/// The read model's freshness now: the newest horizon both consumers are through.
pub async fn freshness(pool: &PgPool, horizons: &Horizons) -> Result<Freshness, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT consumer, applied_through, applied_at FROM consumer_progress
         WHERE consumer = ANY($1)",
    )
    .bind([DEALS_CONSUMER, PLANS_CONSUMER])
    .fetch_all(pool)
    .await?;
    let (mut deals, mut plans, mut applied_at) = (0, 0, None::<OffsetDateTime>);
    for row in rows {
        let through: i64 = row.try_get("applied_through")?;
        match row.try_get::<&str, _>("consumer")? {
            DEALS_CONSUMER => deals = through,
            _ => plans = through,
        }
        let at: OffsetDateTime = row.try_get("applied_at")?;
        applied_at = Some(applied_at.map_or(at, |a| a.max(at)));
    }
    let reached = horizons.reached(deals, plans);
    Ok(Freshness {
        horizon: reached.map_or(0, |h| h.xid),
        published_at: reached.and_then(|h| h.published_at),
        applied_at,
    })
}

/// The freshness to answer with: at once without a token, else once the model includes
/// what the token stands for (at most `wait`; UNAVAILABLE after that): a write, or the
/// deals of accepted leads in `account_id`.
pub async fn at_least(
    pool: &PgPool,
    horizons: &Horizons,
    account_id: &str,
    wanted: Option<Wanted>,
    wait: std::time::Duration,
) -> Result<Freshness, ApiError> {
    match wanted {
        None => Ok(freshness(pool, horizons).await?),
        Some(Wanted::Write(token)) => {
            consistency::wait_until(&token, wait, || async {
                let now = freshness(pool, horizons).await?;
                Ok(token.covered_by(now.horizon).then_some(now))
            })
            .await
        }
        Some(Wanted::Leads(leads)) => {
            consistency::wait_until(&leads, wait, || async {
                if leads_applied(pool, account_id, &leads).await? {
                    Ok(Some(freshness(pool, horizons).await?))
                } else {
                    Ok(None)
                }
            })
            .await
        }
    }
}

/// Whether the deals of all `leads` are in the read model of `account_id`.
async fn leads_applied(
    pool: &PgPool,
    account_id: &str,
    leads: &LeadsToken,
) -> Result<bool, sqlx::Error> {
    let found: i64 = sqlx::query_scalar(
        // Distinct: two deals of the account may name one lead (keys are the creator's
        // choice), and one is not another lead's deal.
        "SELECT count(DISTINCT intake_id) FROM deals WHERE intake_id = ANY($1) AND account_id = $2",
    )
    .bind(leads.intake_ids())
    .bind(account_id)
    .fetch_one(pool)
    .await?;
    Ok(found as usize >= leads.intake_ids().len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn horizon(xid: i64, deals: i64, plans: i64) -> Horizon {
        Horizon {
            xid,
            deals_sequence: deals,
            plans_sequence: plans,
            published_at: None,
        }
    }

    #[test]
    fn the_newest_horizon_both_streams_reached_counts() {
        let kept = Horizons::default();
        kept.add(horizon(10, 5, 2));
        kept.add(horizon(20, 9, 2));
        kept.add(horizon(15, 20, 20)); // older than the last: ignored
        kept.add(horizon(30, 12, 3));
        assert_eq!(kept.reached(4, 9), None);
        assert_eq!(kept.reached(9, 2).map(|h| h.xid), Some(20));
        assert_eq!(kept.reached(11, 9).map(|h| h.xid), Some(20));
        assert_eq!(
            kept.reached(12, 2).map(|h| h.xid),
            Some(20),
            "plans not there yet"
        );
        assert_eq!(kept.reached(100, 100).map(|h| h.xid), Some(30));
    }
}
