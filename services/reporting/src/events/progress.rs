//! The consumers' progress as they handle messages, and deal-service's horizons as they
//! arrive (see [`crate::domain::progress`]).

use prost::Message as _;
use salesplan_platform::bus::{BatchHandler, Delivery, Outcome};
use salesplan_proto::time::time_of;
use salesplan_proto::v1 as pb;
use sqlx::PgPool;

pub use crate::store::progress::{DEALS_CONSUMER, PLANS_CONSUMER};
use crate::{
    domain::progress::{Horizon, Horizons},
    store,
};

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
        let handled: Vec<i64> = batch
            .iter()
            .zip(&outcomes)
            .filter(|(delivery, outcome)| match outcome {
                Outcome::Done | Outcome::Reject(_) => true,
                Outcome::Retry(_) => delivery.delivered >= self.max_deliver,
            })
            .map(|(delivery, _)| delivery.stream_sequence as i64)
            .collect();
        let first = batch.iter().map(|d| d.stream_sequence as i64).min();
        let recorded = match first {
            Some(first) => store::progress::record(&self.pool, self.consumer, first, handled).await,
            None => Ok(()),
        };
        if let Err(err) = recorded {
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
                            published_at: h.published_at.as_ref().and_then(time_of),
                        });
                        Outcome::Done
                    }
                    Err(err) => Outcome::Reject(format!("undecodable horizon: {err}")),
                },
            )
            .collect()
    }
}
