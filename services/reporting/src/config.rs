//! reporting's configuration: from the environment, or local for tests.

use salesplan_platform::{
    config::{ConfigError, DatabaseConfig, Env, Secret},
    consistency,
    limits::ClassLimit,
    service::ServiceConfig,
};

#[derive(Debug, Clone)]
pub struct Config {
    pub common: ServiceConfig,
    /// `DATABASE_URL` and the pool settings of the service's own schema.
    pub database: DatabaseConfig,
    /// `SALESPLAN_LIMIT_REPORTS`: per account and replica, of every report call.
    pub reports_limit: ClassLimit,
    /// `SALESPLAN_CONSISTENCY_WAIT_MS`: how long a report given a consistency token waits
    /// for the read model to include it.
    pub consistency_wait: std::time::Duration,
    /// `SALESPLAN_DEAL_DATABASE_URL`: where `reporting verify` reads deal-service's deals
    /// (read-only; default: `DATABASE_URL`).
    pub deal_database_url: Secret,
}

impl Config {
    pub const DEFAULT_GRPC_ADDR: &str = "127.0.0.1:50054";
    pub const DEFAULT_REPORTS_LIMIT: ClassLimit = ClassLimit {
        concurrency: 2,
        rate: 20.0,
        burst: 40.0,
        busy: 1.0,
    };

    pub fn local(database_url: &str, nats_url: &str) -> Self {
        Self {
            common: ServiceConfig::local(nats_url),
            database: DatabaseConfig::local(database_url),
            reports_limit: Self::DEFAULT_REPORTS_LIMIT,
            consistency_wait: consistency::DEFAULT_WAIT,
            deal_database_url: Secret::new(database_url),
        }
    }

    /// The configuration from the environment; every key is checked here, so a bad one
    /// stops the service at start.
    pub fn read(env: &Env) -> Result<Self, ConfigError> {
        let database = DatabaseConfig::from_env(env)?;
        let key = "SALESPLAN_DEAL_DATABASE_URL";
        let deal_database_url = env.string(key, database.url.expose());
        if !(deal_database_url.starts_with("postgres://")
            || deal_database_url.starts_with("postgresql://"))
        {
            return Err(ConfigError::new(
                key,
                "must start with postgres:// or postgresql://",
            ));
        }
        Ok(Self {
            common: ServiceConfig::from_env(env, Self::DEFAULT_GRPC_ADDR)?,
            database,
            deal_database_url: Secret::new(deal_database_url),
            reports_limit: ClassLimit::from_env(
                env,
                "SALESPLAN_LIMIT_REPORTS",
                Self::DEFAULT_REPORTS_LIMIT,
            )?,
            consistency_wait: consistency::wait_from_env(env)?,
        })
    }
}
