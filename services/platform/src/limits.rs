//! Per-account limits on a class of calls (reads, bulk writes, reports, intake): at most
//! `concurrency` at once and `rate` a second on average (bursts of `burst`), per account
//! and per replica. A call over a limit is refused at once with RESOURCE_EXHAUSTED and how
//! long to wait, so one account can hold at most its share of a process, never all of it.
//!
//! Each replica keeps its own counts: a cluster admits up to replicas × the limits.

use std::{
    collections::HashMap,
    fmt,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crate::{
    ApiError,
    config::{ConfigError, Env},
};

/// The limits of one class of calls, per account and replica.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClassLimit {
    /// Calls in progress at once.
    pub concurrency: usize,
    /// Calls started per second on average.
    pub rate: f64,
    /// Calls that may start at once after a quiet spell.
    pub burst: f64,
}

impl ClassLimit {
    /// No limit on calls at once; `rate` and `burst` only.
    pub const fn rate_only(rate: f64, burst: f64) -> Self {
        Self {
            concurrency: usize::MAX,
            rate,
            burst,
        }
    }

    /// From `key` (`"concurrency=4,rate=50,burst=100"`, any subset; the rest from
    /// `default`), or `default`.
    pub fn from_env(env: &Env, key: &str, default: Self) -> Result<Self, ConfigError> {
        let Some(raw) = env.get(key) else {
            return Ok(default);
        };
        let mut limit = default;
        for part in raw.split([',', ' ']).filter(|p| !p.is_empty()) {
            let (name, value) = part
                .split_once('=')
                .ok_or_else(|| ConfigError::new(key, format!("{part:?} is not name=value")))?;
            let number = |value: &str| {
                value
                    .parse::<f64>()
                    .ok()
                    .filter(|v| v.is_finite() && *v > 0.0)
                    .ok_or_else(|| ConfigError::new(key, format!("{name} must be positive")))
            };
            match name {
                "concurrency" => limit.concurrency = number(value)? as usize,
                "rate" => limit.rate = number(value)?,
                "burst" => limit.burst = number(value)?,
                other => {
                    return Err(ConfigError::new(
                        key,
                        format!("unknown limit {other:?} (concurrency, rate, burst)"),
                    ));
                }
            }
        }
        if limit.concurrency == 0 || limit.burst < 1.0 {
            return Err(ConfigError::new(
                key,
                "concurrency and burst must be at least 1",
            ));
        }
        Ok(limit)
    }
}

impl fmt::Display for ClassLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rate={},burst={}", self.rate, self.burst)?;
        if self.concurrency != usize::MAX {
            write!(f, ",concurrency={}", self.concurrency)?;
        }
        Ok(())
    }
}

/// A token bucket: `burst` tokens, refilled at `rate` a second.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(limit: ClassLimit, now: Instant) -> Self {
        Self {
            tokens: limit.burst,
            at: now,
        }
    }

    fn refill(&mut self, limit: ClassLimit, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * limit.rate).min(limit.burst);
        self.at = now;
    }

    /// Takes one token at `now`, or says how long until one is there.
    fn take(&mut self, limit: ClassLimit, now: Instant) -> Result<(), Duration> {
        self.refill(limit, now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / limit.rate))
        }
    }
}

#[derive(Debug)]
struct AccountState {
    bucket: Bucket,
    in_flight: usize,
}

/// What a call waits for when every one of its account's places is taken: a guess at how
/// long a call of the class holds one.
const BUSY_RETRY: Duration = Duration::from_millis(250);

/// The limits of one class of calls for every account.
pub struct AccountLimiter {
    class: &'static str,
    limit: ClassLimit,
    accounts: Mutex<HashMap<String, AccountState>>,
    refused: opentelemetry::metrics::Counter<u64>,
}

/// A place taken by a call in progress; given back when dropped.
pub struct Permit {
    limiter: Arc<AccountLimiter>,
    account: String,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut accounts = self.limiter.lock();
        if let Some(state) = accounts.get_mut(&self.account) {
            state.in_flight = state.in_flight.saturating_sub(1);
        }
    }
}

impl fmt::Debug for AccountLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AccountLimiter({}: {})", self.class, self.limit)
    }
}

impl AccountLimiter {
    pub fn new(
        class: &'static str,
        limit: ClassLimit,
        metrics: &crate::metrics::Metrics,
    ) -> Arc<Self> {
        Arc::new(Self {
            class,
            limit,
            accounts: Mutex::default(),
            refused: metrics
                .meter("limits")
                .u64_counter("salesplan.limits.refused")
                .with_description("Calls refused by a per-account limit, by class")
                .build(),
        })
    }

    pub fn limit(&self) -> ClassLimit {
        self.limit
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, AccountState>> {
        self.accounts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admits one call of `account` now, or says when to retry (RESOURCE_EXHAUSTED).
    pub fn admit(self: &Arc<Self>, account: &str) -> Result<Permit, ApiError> {
        self.admit_at(account, Instant::now())
    }

    pub fn admit_at(self: &Arc<Self>, account: &str, now: Instant) -> Result<Permit, ApiError> {
        let limit = self.limit;
        let mut accounts = self.lock();
        // Forget idle accounts now and then: an idle account with a full bucket is the same
        // as one never seen.
        if accounts.len() > 10_000 {
            let full_after = Duration::from_secs_f64(limit.burst / limit.rate);
            accounts.retain(|_, s| {
                s.in_flight > 0 || now.saturating_duration_since(s.bucket.at) < full_after
            });
        }
        let state = accounts
            .entry(account.to_owned())
            .or_insert_with(|| AccountState {
                bucket: Bucket::full(limit, now),
                in_flight: 0,
            });
        let refusal = if state.in_flight >= limit.concurrency {
            Some((
                BUSY_RETRY,
                format!(
                    "{}: this account already has {} calls in progress; retry shortly",
                    self.class, limit.concurrency
                ),
            ))
        } else {
            state.bucket.take(limit, now).err().map(|wait| {
                (
                    wait,
                    format!(
                        "{}: over this account's rate of {}/s; retry in {} ms",
                        self.class,
                        limit.rate,
                        wait.as_millis().max(1)
                    ),
                )
            })
        };
        if let Some((retry_after, message)) = refusal {
            drop(accounts);
            self.refused
                .add(1, &[opentelemetry::KeyValue::new("class", self.class)]);
            return Err(ApiError::ResourceExhausted {
                message,
                retry_after,
            });
        }
        state.in_flight += 1;
        Ok(Permit {
            limiter: self.clone(),
            account: account.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn retry_after(err: ApiError) -> Duration {
        match err {
            ApiError::ResourceExhausted { retry_after, .. } => retry_after,
            other => panic!("not RESOURCE_EXHAUSTED: {other}"),
        }
    }

    #[test]
    fn a_burst_then_the_rate() {
        let limiter = AccountLimiter::new(
            "test",
            ClassLimit::rate_only(10.0, 3.0),
            &crate::metrics::Metrics::unread(),
        );
        let t0 = Instant::now();
        let mut permits = Vec::new();
        for _ in 0..3 {
            permits.push(limiter.admit_at("acme", t0).unwrap());
        }
        let wait = retry_after(limiter.admit_at("acme", t0).err().unwrap());
        assert_eq!(wait, Duration::from_millis(100));
        assert!(
            limiter.admit_at("globex", t0).is_ok(),
            "accounts are limited apart"
        );
        assert!(
            limiter
                .admit_at("acme", t0 + Duration::from_millis(100))
                .is_ok()
        );
        assert!(
            limiter
                .admit_at("acme", t0 + Duration::from_millis(100))
                .is_err()
        );
    }

    #[test]
    fn calls_in_progress_are_capped_and_released_when_done() {
        let limit = ClassLimit {
            concurrency: 2,
            rate: 1_000.0,
            burst: 1_000.0,
        };
        let limiter = AccountLimiter::new("reads", limit, &crate::metrics::Metrics::unread());
        let now = Instant::now();
        let first = limiter.admit_at("acme", now).unwrap();
        let _second = limiter.admit_at("acme", now).unwrap();
        let refused = limiter.admit_at("acme", now).err().unwrap();
        assert!(
            refused.to_string().contains("2 calls in progress"),
            "{refused}"
        );
        assert_eq!(retry_after(refused), BUSY_RETRY);
        assert!(limiter.admit_at("globex", now).is_ok(), "another account");
        drop(first);
        assert!(limiter.admit_at("acme", now).is_ok(), "a place came free");
    }

    #[test]
    fn limits_are_read_from_the_environment() {
        let default = ClassLimit {
            concurrency: 4,
            rate: 50.0,
            burst: 100.0,
        };
        let env = Env::from_pairs([("L", "concurrency=2, rate=5")]);
        let limit = ClassLimit::from_env(&env, "L", default).unwrap();
        assert_eq!(
            (limit.concurrency, limit.rate, limit.burst),
            (2, 5.0, 100.0)
        );
        assert_eq!(
            ClassLimit::from_env(&Env::default(), "L", default).unwrap(),
            default
        );
        for bad in ["rate=0", "speed=3", "rate", "burst=-1", "concurrency=x"] {
            let env = Env::from_pairs([("L", bad)]);
            assert_eq!(
                ClassLimit::from_env(&env, "L", default).unwrap_err().key,
                "L",
                "{bad}"
            );
        }
    }

    proptest! {
        #[test]
        fn never_more_than_burst_plus_rate_times_time(gaps in proptest::collection::vec(0u64..50, 1..200)) {
            let limit = ClassLimit::rate_only(20.0, 5.0);
            let limiter = AccountLimiter::new("test", limit, &crate::metrics::Metrics::unread());
            let start = Instant::now();
            let mut now = start;
            let mut admitted = 0.0;
            for gap in gaps {
                now += Duration::from_millis(gap);
                if limiter.admit_at("a", now).is_ok() {
                    admitted += 1.0;
                }
            }
            let allowed = limit.burst + limit.rate * now.duration_since(start).as_secs_f64();
            prop_assert!(admitted <= allowed + 1e-9, "{admitted} > {allowed}");
        }
    }
}
