//! How fresh the read model is, for reads that must include a write (read your writes).
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

use time::OffsetDateTime;

/// Horizons kept in memory: enough that one both consumers have reached is among them.
const KEPT_HORIZONS: usize = 1_000;

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

    pub fn add(&self, horizon: Horizon) {
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
    pub fn reached(&self, deals: i64, plans: i64) -> Option<Horizon> {
        let kept = self.kept.read().unwrap_or_else(|e| e.into_inner());
        kept.iter()
            .rev()
            .find(|h| h.deals_sequence <= deals && h.plans_sequence <= plans)
            .copied()
    }
}

/// What the read model holds: every write below `horizon`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Freshness {
    pub horizon: i64,
    pub published_at: Option<OffsetDateTime>,
    pub applied_at: Option<OffsetDateTime>,
}

/// A consumer's position after messages at `handled` (sorted, distinct) were handled: it
/// moves over the run that continues it; the ones beyond a gap are returned, to be written
/// down until the gap is filled.
pub fn advance(mut floor: i64, handled: &[i64]) -> (i64, Vec<i64>) {
    let mut beyond = Vec::new();
    for &seq in handled {
        if seq == floor + 1 {
            floor = seq;
        } else if seq > floor {
            beyond.push(seq);
        }
    }
    (floor, beyond)
}

/// The position after the run of messages handled earlier beyond a gap (`ahead`, sorted)
/// that continues `floor`.
pub fn reach(mut floor: i64, ahead: &[i64]) -> i64 {
    for &seq in ahead {
        if seq != floor + 1 {
            break;
        }
        floor = seq;
    }
    floor
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

    #[test]
    fn a_position_moves_only_over_a_contiguous_run() {
        assert_eq!(advance(10, &[11, 12, 14, 15]), (12, vec![14, 15]));
        assert_eq!(advance(10, &[9, 10]), (10, vec![]), "seen before: nothing");
        assert_eq!(reach(12, &[13, 14, 16]), 14, "up to the next gap");
        assert_eq!(reach(12, &[14]), 12);
    }
}
