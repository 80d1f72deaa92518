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
    pub watch: WatchConfig,
}

/// WatchDeals' bounds, per replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchConfig {
    /// `SALESPLAN_WATCHERS_PER_ACCOUNT` (default 2,000): one account's open watches.
    pub per_account: usize,
    /// `SALESPLAN_WATCHERS` (default 10,000): every account's.
    pub total: usize,
    /// `SALESPLAN_WATCH_RESUME_SECONDS` (default 3,600): how old a resume token may be.
    pub resume_window: std::time::Duration,
    /// `SALESPLAN_WATCH_BUFFER` (default 256): batches of changes a watcher may fall
    /// behind before it is cut off (to resume with its token). A watcher that far behind
    /// keeps those batches in memory: at most 256 of up to 256 changes (≈ 1.3 kB each with
    /// the deal's contact), ≈ 85 MB, however many watchers lag.
    pub buffer: usize,
    /// `SALESPLAN_WATCH_STALL_SECONDS` (default 15): how long a watcher's client may take
    /// nothing while changes wait for it before it is cut off (to resume with its token).
    pub stall: std::time::Duration,
}

impl Default for WatchConfig {
    fn default() -> Self {
        Self {
            per_account: 2_000,
            total: 10_000,
            resume_window: std::time::Duration::from_secs(3_600),
            buffer: 256,
            stall: std::time::Duration::from_secs(15),
        }
    }
}

impl WatchConfig {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let default = Self::default();
        let config = Self {
            per_account: env.parse("SALESPLAN_WATCHERS_PER_ACCOUNT", default.per_account)?,
            total: env.parse("SALESPLAN_WATCHERS", default.total)?,
            resume_window: std::time::Duration::from_secs(env.parse(
                "SALESPLAN_WATCH_RESUME_SECONDS",
                default.resume_window.as_secs(),
            )?),
            buffer: env.parse("SALESPLAN_WATCH_BUFFER", default.buffer)?,
            stall: std::time::Duration::from_secs(
                env.parse("SALESPLAN_WATCH_STALL_SECONDS", default.stall.as_secs())?,
            ),
        };
        if !(1..=600).contains(&config.stall.as_secs()) {
            return Err(ConfigError::new(
                "SALESPLAN_WATCH_STALL_SECONDS",
                "must be 1 to 600",
            ));
        }
        if !(16..=65_536).contains(&config.buffer) {
            return Err(ConfigError::new(
                "SALESPLAN_WATCH_BUFFER",
                "must be 16 to 65536",
            ));
        }
        if config.per_account == 0 || config.per_account > config.total {
            return Err(ConfigError::new(
                "SALESPLAN_WATCHERS_PER_ACCOUNT",
                "must be 1 to SALESPLAN_WATCHERS",
            ));
        }
        if !(60..=7 * 24 * 3_600).contains(&config.resume_window.as_secs()) {
            return Err(ConfigError::new(
                "SALESPLAN_WATCH_RESUME_SECONDS",
                "must be 60 to 604800 (a week)",
            ));
        }
        Ok(config)
    }
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
            watch: WatchConfig::default(),
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
            watch: WatchConfig::from_env(env)?,
        };
        salesplan_platform::config::url("SALESPLAN_DISTRIBUTOR_URL", &config.distributor_url)?;
        Ok(config)
    }
}
