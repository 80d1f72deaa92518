//! Per-account rate limits on the webhook: a token bucket per account. Each replica keeps
//! its own buckets, so a cluster admits up to replicas × the rate (document the per-replica
//! figure to funnel owners).

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

/// `rate` requests per second on average, bursts of up to `burst`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limit {
    pub rate: f64,
    pub burst: f64,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// Takes one token at `now`, or says how long until one is there.
    fn take(&mut self, limit: Limit, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * limit.rate).min(limit.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / limit.rate))
        }
    }
}

pub struct RateLimiter {
    limit: Limit,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl RateLimiter {
    pub fn new(limit: Limit) -> Self {
        Self {
            limit,
            buckets: Mutex::default(),
        }
    }

    /// Admits one request of `account` at `now`, or says when to retry.
    pub fn check(&self, account: &str, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        // Forget idle accounts now and then: a full bucket is the same as none.
        if buckets.len() > 10_000 {
            let full_after = Duration::from_secs_f64(self.limit.burst / self.limit.rate);
            buckets.retain(|_, b| now.saturating_duration_since(b.at) < full_after);
        }
        buckets
            .entry(account.to_owned())
            .or_insert(Bucket {
                tokens: self.limit.burst,
                at: now,
            })
            .take(self.limit, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_burst_then_the_rate() {
        let limiter = RateLimiter::new(Limit {
            rate: 10.0,
            burst: 3.0,
        });
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(limiter.check("acme", t0).is_ok());
        }
        let wait = limiter.check("acme", t0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(100));
        assert!(
            limiter.check("globex", t0).is_ok(),
            "accounts are limited apart"
        );
        assert!(
            limiter
                .check("acme", t0 + Duration::from_millis(100))
                .is_ok()
        );
        assert!(
            limiter
                .check("acme", t0 + Duration::from_millis(100))
                .is_err()
        );
    }

    proptest! {
        #[test]
        fn never_more_than_burst_plus_rate_times_time(gaps in proptest::collection::vec(0u64..50, 1..200)) {
            let limit = Limit { rate: 20.0, burst: 5.0 };
            let limiter = RateLimiter::new(limit);
            let start = Instant::now();
            let mut now = start;
            let mut admitted = 0.0;
            for gap in gaps {
                now += Duration::from_millis(gap);
                if limiter.check("a", now).is_ok() {
                    admitted += 1.0;
                }
            }
            let allowed = limit.burst + limit.rate * now.duration_since(start).as_secs_f64();
            prop_assert!(admitted <= allowed + 1e-9, "{admitted} > {allowed}");
        }
    }
}
