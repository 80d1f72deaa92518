//! tunnel-listener's configuration: from the environment, or local for tests.

use std::net::SocketAddr;

use salesplan_platform::{
    config::{ConfigError, Env},
    limits::ClassLimit,
    privacy::ContactKeys,
    service::ServiceConfig,
};

use crate::http;

#[derive(Debug, Clone)]
pub struct Config {
    pub common: ServiceConfig,
    /// `SALESPLAN_HTTP_ADDR`: the webhook listener.
    pub http_addr: SocketAddr,
    /// `SALESPLAN_WEBHOOK_MAX_BODY_BYTES`: larger bodies get 413.
    pub max_body_bytes: usize,
    /// `SALESPLAN_WEBHOOK_HEADER_TIMEOUT_MS` and `SALESPLAN_WEBHOOK_BODY_TIMEOUT_MS`: how
    /// long a client may take to send a request's headers (the connection is closed) and
    /// its body (408), so a slow client cannot hold a connection.
    pub http_timeouts: http::server::Timeouts,
    /// `SALESPLAN_DEAL_SERVICE_URL`: where each lead's plan is checked.
    pub deal_service_url: String,
    /// `SALESPLAN_WEBHOOK_RATE` and `SALESPLAN_WEBHOOK_BURST`: leads a second of one
    /// account, per replica, through the webhook and AddToSalesPlan together.
    pub webhook_limit: ClassLimit,
    /// `SALESPLAN_LIMIT_AUDIENCE`: AddAudience calls of one account at once and started a
    /// second, per replica.
    pub audience_limit: ClassLimit,
    /// `SALESPLAN_AUDIENCE_IDLE_TIMEOUT_MS`: an AddAudience call that sends no chunk for
    /// this long is ended (DEADLINE_EXCEEDED), so an idle client holds nothing.
    pub audience_idle_timeout: std::time::Duration,
    /// `SALESPLAN_AUDIENCE_MAX_IN_FLIGHT`: contacts of one account accepted by bulk adds
    /// but not yet turned into deals; a chunk beyond it waits for the backlog to drain.
    pub audience_max_in_flight: u64,
    /// `SALESPLAN_CONTACT_KEY_SECRET`: a bulk contact's intake id is derived from its keyed
    /// key, so the id (which becomes the deal's idempotency key) cannot be recomputed from a
    /// known e-mail (docs/privacy.md).
    pub contact_keys: ContactKeys,
}

impl Config {
    pub const DEFAULT_GRPC_ADDR: &str = "127.0.0.1:50051";
    pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:8080";
    pub const DEFAULT_MAX_BODY_BYTES: usize = 64 * 1024;

    pub const DEFAULT_DEAL_SERVICE_URL: &str = "http://127.0.0.1:50053";
    /// The user id of the listener's own calls (plan look-ups).
    pub const ACTOR_ID: &str = "system:tunnel-listener";

    pub fn local(nats_url: &str, deal_service_url: &str) -> Self {
        Self {
            common: ServiceConfig::local(nats_url),
            http_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            max_body_bytes: Self::DEFAULT_MAX_BODY_BYTES,
            http_timeouts: http::server::Timeouts::DEFAULT,
            deal_service_url: deal_service_url.to_owned(),
            webhook_limit: Self::DEFAULT_LIMIT,
            audience_limit: Self::DEFAULT_AUDIENCE_LIMIT,
            audience_idle_timeout: Self::DEFAULT_AUDIENCE_IDLE_TIMEOUT,
            audience_max_in_flight: Self::DEFAULT_AUDIENCE_MAX_IN_FLIGHT,
            contact_keys: ContactKeys::dev(),
        }
    }

    /// 500 leads a second per account and replica, bursts of 2,000 (a broadcast).
    pub const DEFAULT_LIMIT: ClassLimit = ClassLimit::rate_only(500.0, 2_000.0);
    /// Two bulk adds of an account at once, a new one a second (bursts of five).
    pub const DEFAULT_AUDIENCE_LIMIT: ClassLimit = ClassLimit {
        concurrency: 2,
        rate: 1.0,
        burst: 5.0,
        busy: f64::INFINITY,
    };
    pub const DEFAULT_AUDIENCE_IDLE_TIMEOUT: std::time::Duration =
        std::time::Duration::from_secs(60);
    pub const DEFAULT_AUDIENCE_MAX_IN_FLIGHT: u64 = 50_000;

    /// The configuration from the environment; every key is checked here, so a bad one
    /// stops the service at start.
    pub fn read(env: &Env) -> Result<Self, ConfigError> {
        let config = Self {
            common: ServiceConfig::from_env(env, Self::DEFAULT_GRPC_ADDR)?,
            http_addr: env.addr("SALESPLAN_HTTP_ADDR", Self::DEFAULT_HTTP_ADDR)?,
            max_body_bytes: env.parse(
                "SALESPLAN_WEBHOOK_MAX_BODY_BYTES",
                Self::DEFAULT_MAX_BODY_BYTES,
            )?,
            deal_service_url: env
                .string("SALESPLAN_DEAL_SERVICE_URL", Self::DEFAULT_DEAL_SERVICE_URL),
            webhook_limit: ClassLimit::rate_only(
                env.parse("SALESPLAN_WEBHOOK_RATE", Self::DEFAULT_LIMIT.rate)?,
                env.parse("SALESPLAN_WEBHOOK_BURST", Self::DEFAULT_LIMIT.burst)?,
            ),
            audience_limit: ClassLimit::from_env(
                env,
                "SALESPLAN_LIMIT_AUDIENCE",
                Self::DEFAULT_AUDIENCE_LIMIT,
            )?,
            http_timeouts: http::server::Timeouts {
                headers: env.millis(
                    "SALESPLAN_WEBHOOK_HEADER_TIMEOUT_MS",
                    http::server::Timeouts::DEFAULT.headers,
                )?,
                body: env.millis(
                    "SALESPLAN_WEBHOOK_BODY_TIMEOUT_MS",
                    http::server::Timeouts::DEFAULT.body,
                )?,
            },
            audience_idle_timeout: env.millis(
                "SALESPLAN_AUDIENCE_IDLE_TIMEOUT_MS",
                Self::DEFAULT_AUDIENCE_IDLE_TIMEOUT,
            )?,
            audience_max_in_flight: env.parse(
                "SALESPLAN_AUDIENCE_MAX_IN_FLIGHT",
                Self::DEFAULT_AUDIENCE_MAX_IN_FLIGHT,
            )?,
            contact_keys: ContactKeys::from_env(env)?,
        };
        if config.audience_idle_timeout.is_zero() || config.audience_max_in_flight == 0 {
            return Err(ConfigError::new(
                "SALESPLAN_AUDIENCE_IDLE_TIMEOUT_MS",
                "the idle timeout and SALESPLAN_AUDIENCE_MAX_IN_FLIGHT must be positive",
            ));
        }
        if !(config.webhook_limit.rate > 0.0 && config.webhook_limit.burst >= 1.0) {
            return Err(ConfigError::new(
                "SALESPLAN_WEBHOOK_RATE",
                "rate must be positive and burst at least 1",
            ));
        }
        salesplan_platform::config::url("SALESPLAN_DEAL_SERVICE_URL", &config.deal_service_url)?;
        config.common.auth.require_signing_key("tunnel-listener")?;
        if !(1024..=16 * 1024 * 1024).contains(&config.max_body_bytes) {
            return Err(ConfigError::new(
                "SALESPLAN_WEBHOOK_MAX_BODY_BYTES",
                "must be between 1024 and 16777216",
            ));
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The listener keeps no state: a database setting, even a broken one, is not its
    /// concern (deal-service, reading the same environment, refuses it).
    #[test]
    fn the_listener_takes_no_database() {
        let env = Env::from_pairs([
            ("DATABASE_URL", "mysql://not-postgres"),
            (
                "SALESPLAN_JWT_HS256_SECRET",
                "a-secret-of-at-least-32-bytes-here",
            ),
            (
                "SALESPLAN_CONTACT_KEY_SECRET",
                "the-contact-key-secret-of-32-bytes-or-more",
            ),
        ]);
        assert!(Config::read(&env).is_ok());
        let refused = salesplan_platform::config::DatabaseConfig::from_env(&env).unwrap_err();
        assert_eq!(refused.key, "DATABASE_URL");
    }
}
