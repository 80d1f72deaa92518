//! Per-account limits on a class of calls (reads, bulk writes, reports, intake): at most
//! `concurrency` at once, `rate` a second on average (bursts of `burst`), and — for classes
//! whose calls cost what the caller asks for (a search of every deal, a bulk move) — at
//! most `busy` seconds of calls in progress a second on average, per account and per
//! replica. A call over a limit is refused at once with RESOURCE_EXHAUSTED and how long to
//! wait, so one account can hold at most its share of a process, never all of it.
//!
//! Why time as well as counts: two searches at once that each read every deal of a large
//! account keep two database cores busy without ever exceeding a count; on a machine with
//! two cores that is every other account's latency ×5 (docs/performance.md, isolation).
//! A call's time is known only when it ends, so the account's allowance may go into debt by
//! one call (each bounded by the read timeout) and the next call waits until it is repaid.
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
    /// Seconds of calls in progress per second on average (the share of a core, or of a
    /// database connection, an account's calls of the class may hold), with a reserve of
    /// [`BUSY_RESERVE`] of it for a quiet account; `f64::INFINITY` for none.
    pub busy: f64,
}

/// How much of its busy allowance an account that was quiet may spend at once: at
/// `busy=1`, two seconds — about ten board reads of a large plan, or a few searches of an
/// account's every deal.
pub const BUSY_RESERVE: Duration = Duration::from_secs(2);

impl ClassLimit {
    /// No limit on calls at once; `rate` and `burst` only.
    pub const fn rate_only(rate: f64, burst: f64) -> Self {
        Self {
            concurrency: usize::MAX,
            rate,
            burst,
            busy: f64::INFINITY,
        }
    }

    /// From `key` (`"concurrency=4,rate=50,burst=100,busy=1"`, any subset; the rest from
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
                "busy" => limit.busy = number(value)?,
                other => {
                    return Err(ConfigError::new(
                        key,
                        format!("unknown limit {other:?} (concurrency, rate, burst, busy)"),
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
        if self.busy.is_finite() {
            write!(f, ",busy={}", self.busy)?;
        }
        Ok(())
    }
}

/// A token bucket: up to `cap` tokens, refilled at `rate` a second; it may be overdrawn
/// (busy time is charged when a call ends).
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(cap: f64, now: Instant) -> Self {
        Self {
            tokens: cap,
            at: now,
        }
    }

    fn refill(&mut self, rate: f64, cap: f64, now: Instant) {
        if rate.is_infinite() {
            self.tokens = cap;
            return;
        }
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(cap);
        self.at = now;
    }

    /// Whether `need` tokens are there at `now`, or how long until they are.
    fn has(&mut self, need: f64, rate: f64, cap: f64, now: Instant) -> Result<(), Duration> {
        self.refill(rate, cap, now);
        if self.tokens >= need {
            Ok(())
        } else {
            Err(Duration::from_secs_f64((need - self.tokens) / rate))
        }
    }
}

#[derive(Debug)]
struct AccountState {
    /// Calls started.
    calls: Bucket,
    /// Seconds of calls in progress (when the class has `busy`).
    time: Bucket,
    in_flight: usize,
}

impl AccountState {
    fn new(limit: ClassLimit, now: Instant) -> Self {
        Self {
            calls: Bucket::full(limit.burst, now),
            time: Bucket::full(reserve(limit), now),
            in_flight: 0,
        }
    }

    /// Whether the account is as if never seen: nothing in progress, both buckets full.
    fn at_rest(&mut self, limit: ClassLimit, now: Instant) -> bool {
        self.calls.refill(limit.rate, limit.burst, now);
        self.time.refill(limit.busy, reserve(limit), now);
        self.in_flight == 0
            && self.calls.tokens >= limit.burst
            && self.time.tokens >= reserve(limit)
    }
}

/// The busy seconds a quiet account holds: [`BUSY_RESERVE`] of its allowance.
fn reserve(limit: ClassLimit) -> f64 {
    BUSY_RESERVE.as_secs_f64() * limit.busy
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

/// A place taken by a call in progress; given back, and its time charged to the account,
/// when dropped.
pub struct Permit {
    limiter: Arc<AccountLimiter>,
    account: String,
    since: Instant,
    /// Whether [`Permit::end_at`] already gave it back.
    ended: bool,
}

impl Permit {
    /// Ends the call at `now` (what dropping the permit does at the present moment).
    pub fn end_at(mut self, now: Instant) {
        self.end(now);
    }

    fn end(&mut self, now: Instant) {
        if std::mem::replace(&mut self.ended, true) {
            return;
        }
        let mut accounts = self.limiter.lock();
        if let Some(state) = accounts.get_mut(&self.account) {
            state.in_flight = state.in_flight.saturating_sub(1);
            if self.limiter.limit.busy.is_finite() {
                state.time.tokens -= now.saturating_duration_since(self.since).as_secs_f64();
            }
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.end(Instant::now());
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
        // Forget idle accounts now and then: an idle account with full buckets is the same
        // as one never seen.
        if accounts.len() > 10_000 {
            accounts.retain(|_, s| !s.at_rest(limit, now));
        }
        let state = accounts
            .entry(account.to_owned())
            .or_insert_with(|| AccountState::new(limit, now));
        let refusal = if state.in_flight >= limit.concurrency {
            Some((
                BUSY_RETRY,
                format!(
                    "{}: this account already has {} calls in progress; retry shortly",
                    self.class, limit.concurrency
                ),
            ))
        } else if let Err(wait) = state.calls.has(1.0, limit.rate, limit.burst, now) {
            Some((
                wait,
                format!(
                    "{}: over this account's rate of {}/s; retry in {} ms",
                    self.class,
                    limit.rate,
                    wait.as_millis().max(1)
                ),
            ))
        } else if limit.busy.is_finite()
            && let Err(wait) = state.time.has(0.0, limit.busy, reserve(limit), now)
        {
            Some((
                wait,
                format!(
                    "{}: this account's calls took more than {} s a second of late; retry in {} ms",
                    self.class,
                    limit.busy,
                    wait.as_millis().max(1)
                ),
            ))
        } else {
            None
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
        state.calls.tokens -= 1.0;
        state.in_flight += 1;
        Ok(Permit {
            limiter: self.clone(),
            account: account.to_owned(),
            since: now,
            ended: false,
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
            busy: f64::INFINITY,
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
    fn calls_that_took_long_wait_until_their_time_is_repaid() {
        let limit = ClassLimit {
            concurrency: 2,
            rate: 1_000.0,
            burst: 1_000.0,
            busy: 0.5,
        };
        let limiter = AccountLimiter::new("reads", limit, &crate::metrics::Metrics::unread());
        let t0 = Instant::now();
        // Two calls at once of 1 s each: 2 s charged against a reserve of 1 s (2 s at 0.5).
        let first = limiter.admit_at("acme", t0).unwrap();
        let second = limiter.admit_at("acme", t0).unwrap();
        let ended = t0 + Duration::from_secs(1);
        first.end_at(ended);
        second.end_at(ended);
        // 1 s in debt less 0.5 s repaid (1 s at 0.5/s): 0.5 s in debt, 1 s to wait.
        let refused = limiter.admit_at("acme", ended).err().unwrap();
        assert!(refused.to_string().contains("0.5 s a second"), "{refused}");
        assert_eq!(retry_after(refused), Duration::from_secs(1));
        assert!(limiter.admit_at("globex", ended).is_ok(), "another account");
        let repaid = t0 + Duration::from_secs(2);
        let quick = limiter.admit_at("acme", repaid).unwrap();
        quick.end_at(repaid + Duration::from_millis(10));
        assert!(
            limiter
                .admit_at("acme", repaid + Duration::from_millis(10))
                .is_err(),
            "the quick call put the account in debt again"
        );
    }

    #[test]
    fn calls_without_a_busy_limit_are_not_timed() {
        let limiter = AccountLimiter::new(
            "intake",
            ClassLimit::rate_only(1_000.0, 1_000.0),
            &crate::metrics::Metrics::unread(),
        );
        let t0 = Instant::now();
        limiter
            .admit_at("acme", t0)
            .unwrap()
            .end_at(t0 + Duration::from_secs(3_600));
        assert!(
            limiter
                .admit_at("acme", t0 + Duration::from_secs(3_600))
                .is_ok()
        );
    }

    #[test]
    fn limits_are_read_from_the_environment() {
        let default = ClassLimit {
            concurrency: 4,
            rate: 50.0,
            burst: 100.0,
            busy: f64::INFINITY,
        };
        let env = Env::from_pairs([("L", "concurrency=2, rate=5,busy=0.25")]);
        let limit = ClassLimit::from_env(&env, "L", default).unwrap();
        assert_eq!(
            (limit.concurrency, limit.rate, limit.burst, limit.busy),
            (2, 5.0, 100.0, 0.25)
        );
        assert_eq!(
            ClassLimit::from_env(&Env::default(), "L", default).unwrap(),
            default
        );
        for bad in [
            "rate=0",
            "speed=3",
            "rate",
            "burst=-1",
            "concurrency=x",
            "busy=0",
        ] {
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
