//! deal-service's configuration: from the environment, or local for tests.

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
    pub limits: Limits,
    /// `SALESPLAN_CONSISTENCY_WAIT_MS`: how long ListDeals and GetBoard given a consistency
    /// token wait for its write to be readable.
    pub consistency_wait: std::time::Duration,
    /// `SALESPLAN_CONTACT_KEY_SECRET`: what deal events carry of a contact.
    pub contact_keys: ContactKeys,
    /// `SALESPLAN_DISTRIBUTOR_URL`: where ExportContact asks for the decisions that
    /// assigned a person's deals, and EraseContact has the person's relations forgotten.
    pub distributor_url: String,
}

/// Per-account limits of deal-service's calls that read or write in bulk, per replica.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// `SALESPLAN_LIMIT_READS`: ListDeals, GetBoard, GetDealHistory, ListPlans,
    /// ListParkedEvents.
    pub reads: ClassLimit,
    /// `SALESPLAN_LIMIT_BULK`: BulkMoveDeals, BulkAssignDeals, TransferDeals,
    /// ReplayParkedEvents.
    pub bulk: ClassLimit,
    /// `SALESPLAN_LIMIT_CREATE_DEALS`: CreateDeals (up to 1,000 deals a call) of an
    /// account's own clients; the distributor's calls (`platform:intake`) are bounded by the
    /// intake lanes instead.
    pub creates: ClassLimit,
    /// `SALESPLAN_LIMIT_PLAN_CHANGES`: every PlanService call that changes a plan.
    pub plan_changes: ClassLimit,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            // Two at once: one account never holds more than a quarter of the read pool; a
            // second of reads a second: on average, at most one core of the database (a
            // search is one process), however much each read asks for.
            reads: ClassLimit {
                concurrency: 2,
                rate: 50.0,
                burst: 100.0,
                busy: 1.0,
            },
            bulk: ClassLimit {
                concurrency: 2,
                rate: 5.0,
                burst: 10.0,
                busy: 1.0,
            },
            creates: ClassLimit {
                concurrency: 4,
                rate: 20.0,
                burst: 40.0,
                busy: 1.0,
            },
            plan_changes: ClassLimit {
                concurrency: 2,
                rate: 5.0,
                burst: 20.0,
                busy: f64::INFINITY,
            },
        }
    }
}

impl Limits {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let default = Self::default();
        Ok(Self {
            reads: ClassLimit::from_env(env, "SALESPLAN_LIMIT_READS", default.reads)?,
            bulk: ClassLimit::from_env(env, "SALESPLAN_LIMIT_BULK", default.bulk)?,
            creates: ClassLimit::from_env(env, "SALESPLAN_LIMIT_CREATE_DEALS", default.creates)?,
            plan_changes: ClassLimit::from_env(
                env,
                "SALESPLAN_LIMIT_PLAN_CHANGES",
                default.plan_changes,
            )?,
        })
    }
}

impl Config {
    pub const DEFAULT_GRPC_ADDR: &str = "127.0.0.1:50053";
    pub const DEFAULT_DISTRIBUTOR_URL: &str = "http://127.0.0.1:50052";

    pub fn local(database_url: &str, nats_url: &str) -> Self {
        Self {
            common: ServiceConfig::local(nats_url),
            database: DatabaseConfig::local(database_url),
            limits: Limits::default(),
            consistency_wait: salesplan_platform::consistency::DEFAULT_WAIT,
            contact_keys: ContactKeys::dev(),
            distributor_url: Self::DEFAULT_DISTRIBUTOR_URL.to_owned(),
        }
    }

    /// The configuration from the environment; every key is checked here, so a bad one
    /// stops the service at start.
    pub fn read(env: &Env) -> Result<Self, ConfigError> {
        let config = Self {
            common: ServiceConfig::from_env(env, Self::DEFAULT_GRPC_ADDR)?,
            database: DatabaseConfig::from_env(env)?,
            limits: Limits::from_env(env)?,
            consistency_wait: salesplan_platform::consistency::wait_from_env(env)?,
            contact_keys: ContactKeys::from_env(env)?,
            distributor_url: env.string("SALESPLAN_DISTRIBUTOR_URL", Self::DEFAULT_DISTRIBUTOR_URL),
        };
        salesplan_platform::config::url("SALESPLAN_DISTRIBUTOR_URL", &config.distributor_url)?;
        Ok(config)
    }
}
