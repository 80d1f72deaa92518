//! The distributor's configuration: from the environment, or local for tests.

use salesplan_platform::{
    config::{ConfigError, DatabaseConfig, Env},
    limits::ClassLimit,
    privacy::ContactKeys,
    service::ServiceConfig,
};

#[derive(Debug, Clone)]
pub struct Config {
    pub common: ServiceConfig,
    /// `DATABASE_URL` and the pool settings of the service's own schema.
    pub database: DatabaseConfig,
    /// `SALESPLAN_DEAL_SERVICE_URL`.
    pub deal_service_url: String,
    /// `SALESPLAN_LIMIT_LOOKUPS`: ExplainAssignment and ListIntakeRejections per account
    /// and replica.
    pub lookups_limit: ClassLimit,
    /// `SALESPLAN_BULK_SHARE`: while funnel leads flow, the share of the time bulk adds may
    /// take (one round at a time, then a pause in proportion).
    pub bulk_share: f64,
    /// `SALESPLAN_BULK_SHARING_ROUND`: meanwhile, the most contacts of one bulk round (a
    /// funnel lead that arrives during a round waits for less).
    pub bulk_sharing_round: usize,
    /// `SALESPLAN_CONTACT_KEY_SECRET`: how contacts are recognised (docs/privacy.md).
    pub contact_keys: ContactKeys,
    /// `SALESPLAN_DEADLINE_LEASE_SECONDS`: how long a replica holds a response deadline that
    /// ran out while it reassigns the deal; a replica that dies with one in hand delays that
    /// reassignment by up to this. Longer than two rounds of calls to deal-service.
    pub deadline_lease: std::time::Duration,
}

impl Config {
    pub const DEFAULT_GRPC_ADDR: &str = "127.0.0.1:50052";
    pub const DEFAULT_DEAL_SERVICE_URL: &str = "http://127.0.0.1:50053";
    pub const DEFAULT_LOOKUPS_LIMIT: ClassLimit = ClassLimit::rate_only(50.0, 100.0);
    /// Chosen by measurement (docs/performance.md, bulk sharing): rounds of 150 need no
    /// pause to keep funnel leads near their latency alone.
    pub const DEFAULT_BULK_SHARE: f64 = 1.0;
    pub const DEFAULT_BULK_SHARING_ROUND: usize = 150;
    /// Two rounds of calls of at most 30 s each, and some.
    pub const DEFAULT_DEADLINE_LEASE: std::time::Duration = std::time::Duration::from_secs(90);

    pub fn local(database_url: &str, nats_url: &str, deal_service_url: &str) -> Self {
        Self {
            common: ServiceConfig::local(nats_url),
            database: DatabaseConfig::local(database_url),
            deal_service_url: deal_service_url.to_owned(),
            lookups_limit: Self::DEFAULT_LOOKUPS_LIMIT,
            bulk_share: Self::DEFAULT_BULK_SHARE,
            bulk_sharing_round: Self::DEFAULT_BULK_SHARING_ROUND,
            contact_keys: ContactKeys::dev(),
            deadline_lease: Self::DEFAULT_DEADLINE_LEASE,
        }
    }

    /// The configuration from the environment; every key is checked here, so a bad one
    /// stops the service at start.
    pub fn read(env: &Env) -> Result<Self, ConfigError> {
        let config = Self {
            common: ServiceConfig::from_env(env, Self::DEFAULT_GRPC_ADDR)?,
            database: DatabaseConfig::from_env(env)?,
            deal_service_url: env
                .string("SALESPLAN_DEAL_SERVICE_URL", Self::DEFAULT_DEAL_SERVICE_URL),
            lookups_limit: ClassLimit::from_env(
                env,
                "SALESPLAN_LIMIT_LOOKUPS",
                Self::DEFAULT_LOOKUPS_LIMIT,
            )?,
            bulk_share: env.parse("SALESPLAN_BULK_SHARE", Self::DEFAULT_BULK_SHARE)?,
            bulk_sharing_round: env.parse(
                "SALESPLAN_BULK_SHARING_ROUND",
                Self::DEFAULT_BULK_SHARING_ROUND,
            )?,
            contact_keys: ContactKeys::from_env(env)?,
            deadline_lease: std::time::Duration::from_secs(env.parse(
                "SALESPLAN_DEADLINE_LEASE_SECONDS",
                Self::DEFAULT_DEADLINE_LEASE.as_secs(),
            )?),
        };
        if !(1..=3_600).contains(&config.deadline_lease.as_secs()) {
            return Err(ConfigError::new(
                "SALESPLAN_DEADLINE_LEASE_SECONDS",
                "must be 1 to 3600",
            ));
        }
        if config.bulk_sharing_round == 0 {
            return Err(ConfigError::new(
                "SALESPLAN_BULK_SHARING_ROUND",
                "must be at least 1",
            ));
        }
        if !(config.bulk_share > 0.0 && config.bulk_share <= 1.0) {
            return Err(ConfigError::new(
                "SALESPLAN_BULK_SHARE",
                "must be more than 0 and at most 1",
            ));
        }
        salesplan_platform::config::url("SALESPLAN_DEAL_SERVICE_URL", &config.deal_service_url)?;
        config.common.auth.require_signing_key("distributor")?;
        Ok(config)
    }
}
