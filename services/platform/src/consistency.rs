//! Read your writes. A write answers with a consistency token: the id of the PostgreSQL
//! transaction that made it (a 64-bit `xid8`, never reused). deal-service's outbox relay
//! publishes horizon messages saying "every event of a transaction below H is in the
//! stream before me"; a read model that has applied everything up to such a message holds
//! every write whose token is below H. A read carrying a token waits, bounded, until then.
//!
//! The token of a call is collected without threading it through every store function:
//! the gRPC layer gives each call a scope, [`record`] notes each committed transaction's
//! id in it, and the layer answers with the highest one in the response header [`HEADER`].
//!
//! An intake answer cannot name a transaction: its deal does not exist yet. It answers
//! with a [`LeadsToken`] instead, the intake ids it accepted; a read given one waits until
//! the deals of those leads are in what it reads (every deal from a lead has its intake id
//! as idempotency key). Reads take either kind as [`Wanted`].

use std::{cell::Cell, fmt, time::Duration};

use base64::Engine as _;
use uuid::Uuid;

use crate::ApiError;

/// The response header that carries a write's token.
pub const HEADER: &str = "salesplan-consistency-token";

/// How long a read waits for its token by default (`SALESPLAN_CONSISTENCY_WAIT_MS`).
pub const DEFAULT_WAIT: Duration = Duration::from_secs(2);

/// `SALESPLAN_CONSISTENCY_WAIT_MS`: how long a read given a token waits for it (at most
/// 30 s: a read holds its account's allowance meanwhile).
pub fn wait_from_env(env: &crate::config::Env) -> Result<Duration, crate::config::ConfigError> {
    let key = "SALESPLAN_CONSISTENCY_WAIT_MS";
    let wait = env.millis(key, DEFAULT_WAIT)?;
    if wait > Duration::from_secs(30) {
        return Err(crate::config::ConfigError::new(
            key,
            "must be at most 30000",
        ));
    }
    Ok(wait)
}

/// Polls `reached` until it answers `Some`, at most `wait`; then [`NotFresh`]: the read
/// model has not caught up with `token` yet (the client retries, or reads without it).
/// Generic in its error so a store can wait in its own error type.
pub async fn wait_until<T, E, F, Fut>(
    token: &impl fmt::Display,
    wait: Duration,
    mut reached: F,
) -> Result<T, E>
where
    E: From<NotFresh>,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>, E>>,
{
    let deadline = tokio::time::Instant::now() + wait;
    let mut pause = FIRST_POLL;
    loop {
        if let Some(found) = reached().await? {
            return Ok(found);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(NotFresh(format!(
                "not yet as fresh as consistency token {} after {} ms; retry",
                Abridged(&token.to_string()),
                wait.as_millis()
            ))
            .into());
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        tokio::time::sleep(pause.min(left)).await;
        // A token read back at once is the common case; one that is not there soon
        // costs the database less the longer it waits (a forged one, a stalled model).
        pause = (pause * 2).min(LAST_POLL);
    }
}

/// A read that waited its time for a token and still does not include it: UNAVAILABLE.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NotFresh(pub String);

impl From<NotFresh> for ApiError {
    fn from(err: NotFresh) -> Self {
        Self::Unavailable(err.0)
    }
}

/// How soon a waiting read looks again at first, and at most later.
const FIRST_POLL: Duration = Duration::from_millis(10);
const LAST_POLL: Duration = Duration::from_millis(100);

/// A write's position: every read that is "at least as fresh" includes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Token(pub i64);

impl Token {
    /// The token of a request field: none when empty; INVALID_ARGUMENT naming `field`
    /// when it is not one this system wrote.
    pub fn parse(field: &str, text: &str) -> Result<Option<Token>, ApiError> {
        if text.is_empty() {
            return Ok(None);
        }
        text.strip_prefix("v1.")
            // Digits as this system writes them: no sign, no leading zero.
            .filter(|xid| xid.bytes().all(|b| b.is_ascii_digit()) && !xid.starts_with('0'))
            .and_then(|xid| xid.parse::<i64>().ok())
            .filter(|xid| *xid > 0)
            .map(|xid| Some(Token(xid)))
            .ok_or_else(|| {
                ApiError::invalid(
                    field,
                    "not a consistency token (the salesplan-consistency-token of a write)",
                )
            })
    }

    /// Whether a read model that applied every write below `horizon` includes this one.
    pub fn covered_by(self, horizon: i64) -> bool {
        self.0 < horizon
    }

    /// The newest token a read model at `horizon` includes.
    pub fn of_horizon(horizon: i64) -> Token {
        Token(horizon - 1)
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v1.{}", self.0)
    }
}

/// A token in an error message: a leads token of a bulk chunk runs to 20 kB.
struct Abridged<'a>(&'a str);

impl fmt::Display for Abridged<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.char_indices().nth(40) {
            Some((end, _)) => write!(f, "{}…", &self.0[..end]),
            None => f.write_str(self.0),
        }
    }
}

/// The answer to accepted leads: a read given it includes the deals of all of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeadsToken(Vec<Uuid>);

impl LeadsToken {
    /// At most this many leads in one token: one AddAudience chunk.
    pub const MAX_LEADS: usize = 1_000;
    const PREFIX: &str = "l1.";

    /// The token of `intake_ids` (at most [`Self::MAX_LEADS`]; more are an error of the
    /// caller, which chunks by that size). A lead named twice counts once.
    pub fn new(mut intake_ids: Vec<Uuid>) -> Self {
        debug_assert!(intake_ids.len() <= Self::MAX_LEADS);
        intake_ids.sort_unstable();
        intake_ids.dedup();
        Self(intake_ids)
    }

    pub fn intake_ids(&self) -> &[Uuid] {
        &self.0
    }

    /// The ids as the idempotency keys of their deals.
    pub fn keys(&self) -> Vec<String> {
        self.0.iter().map(Uuid::to_string).collect()
    }

    fn parse(text: &str) -> Option<Self> {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(text.strip_prefix(Self::PREFIX)?)
            .ok()?;
        if bytes.is_empty() || bytes.len() % 16 != 0 || bytes.len() / 16 > Self::MAX_LEADS {
            return None;
        }
        Some(Self::new(
            bytes
                .chunks_exact(16)
                .map(|id| Uuid::from_slice(id).ok())
                .collect::<Option<_>>()?,
        ))
    }
}

impl fmt::Display for LeadsToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes: Vec<u8> = self.0.iter().flat_map(|id| *id.as_bytes()).collect();
        write!(
            f,
            "{}{}",
            Self::PREFIX,
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
        )
    }
}

/// What a read given a token must include.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wanted {
    /// A write: every transaction up to its token.
    Write(Token),
    /// The deals of accepted leads.
    Leads(LeadsToken),
}

impl Wanted {
    /// The token of a request field, of either kind: none when empty; INVALID_ARGUMENT
    /// naming `field` when it is not one this system wrote.
    pub fn parse(field: &str, text: &str) -> Result<Option<Wanted>, ApiError> {
        if text.starts_with(LeadsToken::PREFIX) {
            return LeadsToken::parse(text)
                .map(|leads| Some(Wanted::Leads(leads)))
                .ok_or_else(|| {
                    ApiError::invalid(
                        field,
                        "not a consistency token (the consistency_token of an intake answer)",
                    )
                });
        }
        Ok(Token::parse(field, text)?.map(Wanted::Write))
    }
}

impl fmt::Display for Wanted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Wanted::Write(token) => token.fmt(f),
            Wanted::Leads(leads) => leads.fmt(f),
        }
    }
}

tokio::task_local! {
    static WRITTEN: Cell<Option<Token>>;
}

/// Notes that the current call committed (or read as of) `token`; outside a call's scope
/// it does nothing.
pub fn record(token: Token) {
    let _ = WRITTEN.try_with(|written| {
        written.set(Some(written.get().map_or(token, |t| t.max(token))));
    });
}

/// Runs `call` in a scope of its own; returns its output and the highest token recorded.
pub async fn tracking<F: Future>(call: F) -> (F::Output, Option<Token>) {
    WRITTEN
        .scope(Cell::new(None), async move {
            let output = call.await;
            (output, WRITTEN.with(Cell::get))
        })
        .await
}

/// Gives every gRPC call a token scope and answers with its token in [`HEADER`].
#[derive(Clone, Default)]
pub struct ConsistencyLayer;

impl<S> tower::Layer<S> for ConsistencyLayer {
    type Service = ConsistencyService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ConsistencyService { inner }
    }
}

#[derive(Clone)]
pub struct ConsistencyService<S> {
    inner: S,
}

impl<S, B, R> tower::Service<http::Request<B>> for ConsistencyService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let response = self.inner.call(request);
        Box::pin(async move {
            let (response, token) = tracking(response).await;
            let mut response = response?;
            if let Some(value) =
                token.and_then(|t| http::HeaderValue::from_str(&t.to_string()).ok())
            {
                response.headers_mut().insert(HEADER, value);
            }
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_bad_ones_name_the_field() {
        let token = Token(42);
        assert_eq!(Token::parse("t", &token.to_string()).unwrap(), Some(token));
        assert_eq!(Token::parse("t", "").unwrap(), None);
        for bad in [
            "42", "v1.", "v1.x", "v1.-3", "v2.42", "v1.+5", "v1.0005", "v1.0",
        ] {
            assert_eq!(
                Token::parse("t", bad).unwrap_err().field(),
                Some("t"),
                "{bad}"
            );
        }
        assert!(token.covered_by(43) && !token.covered_by(42));
        assert!(Token::of_horizon(43) == token);
    }

    #[test]
    fn leads_tokens_round_trip_and_are_bounded() {
        let ids: Vec<Uuid> = (0..LeadsToken::MAX_LEADS).map(|_| Uuid::new_v4()).collect();
        let leads = LeadsToken::new(ids.clone());
        let text = leads.to_string();
        assert!(text.len() < 22_000, "{}", text.len());
        assert_eq!(
            Wanted::parse("t", &text).unwrap(),
            Some(Wanted::Leads(leads))
        );
        assert_eq!(
            Wanted::parse("t", "v1.42").unwrap(),
            Some(Wanted::Write(Token(42)))
        );
        let twice = LeadsToken::new(vec![ids[0], ids[1], ids[0]]);
        assert_eq!(
            twice.intake_ids().len(),
            2,
            "a lead named twice counts once"
        );
        let one_too_many = LeadsToken(ids.into_iter().chain([Uuid::nil()]).collect());
        let truncated = &text[..text.len() - 3];
        for bad in [
            one_too_many.to_string().as_str(),
            "l1.",
            "l1.!!",
            truncated,
            "l2.AA",
        ] {
            assert_eq!(
                Wanted::parse("t", bad).unwrap_err().field(),
                Some("t"),
                "{bad}"
            );
        }
    }

    #[tokio::test]
    async fn a_wait_that_runs_out_names_the_token_abridged() {
        let leads = LeadsToken::new((0..500).map(|_| Uuid::new_v4()).collect());
        let err: ApiError = wait_until(&leads, Duration::ZERO, || async { Ok(None::<()>) })
            .await
            .unwrap_err();
        let message = err.to_string();
        assert!(message.contains("l1.") && message.len() < 200, "{message}");
    }

    #[tokio::test]
    async fn a_call_answers_with_the_highest_token_it_recorded() {
        let ((), token) = tracking(async {
            record(Token(7));
            record(Token(9));
            record(Token(8));
        })
        .await;
        assert_eq!(token, Some(Token(9)));
        let ((), none) = tracking(async {}).await;
        assert_eq!(none, None);
        record(Token(1)); // outside a scope: nothing happens
    }
}
