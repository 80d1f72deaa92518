//! distributor: consumes intake events, chooses each lead's manager by the plan's
//! distribution settings, and creates the deal through deal-service.
#![forbid(unsafe_code)]

pub mod deals;
pub mod domain;
pub mod grpc;
pub mod intake;
pub mod plans;
pub mod store;
pub mod upstream;

use std::sync::Arc;

use anyhow::Context as _;
use salesplan_platform::{
    Permission,
    auth::{AuthInterceptor, ServiceTokens, TokenIssuer, TokenVerifier},
    bus::{Activity, Bus, ConsumerSpec, FairSpec, streams},
    config::{ConfigError, Env},
    db, grpc as server,
    limits::ClassLimit,
    service::{Background, GrpcParts, Running, Service, ServiceConfig, spawn_service},
};
use salesplan_proto::v1::distributor_service_server::DistributorServiceServer;
use sqlx::migrate::Migrator;
use tokio_util::sync::CancellationToken;
use tonic::server::NamedService;

pub const SCHEMA: &str = "distributor";
pub static MIGRATOR: Migrator = sqlx::migrate!("../../migrations/distributor");
/// Intake batches handled at once by one process.
const INTAKE_BATCHES_IN_FLIGHT: usize = 3;
/// Bulk rounds handled at once by one process: the next round is fetched while one is
/// handled.
const BULK_ROUNDS_IN_FLIGHT: usize = 2;
/// The user id of the distributor in deal history ("who created the deal").
pub const ACTOR_ID: &str = "system:distributor";

#[derive(Debug, Clone)]
pub struct Config {
    pub common: ServiceConfig,
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
}

impl Config {
    pub const DEFAULT_GRPC_ADDR: &str = "127.0.0.1:50052";
    pub const DEFAULT_DEAL_SERVICE_URL: &str = "http://127.0.0.1:50053";
    pub const DEFAULT_LOOKUPS_LIMIT: ClassLimit = ClassLimit::rate_only(50.0, 100.0);
    /// Measured (`just bench --only isolation`): with rounds of 150 while funnel leads flow,
    /// no pause is needed for their p99 to stay near 2× alone at 71–73 % of the bulk rate.
    pub const DEFAULT_BULK_SHARE: f64 = 1.0;
    pub const DEFAULT_BULK_SHARING_ROUND: usize = 150;

    pub fn local(database_url: &str, nats_url: &str, deal_service_url: &str) -> Self {
        Self {
            common: ServiceConfig::local(database_url, nats_url),
            deal_service_url: deal_service_url.to_owned(),
            lookups_limit: Self::DEFAULT_LOOKUPS_LIMIT,
            bulk_share: Self::DEFAULT_BULK_SHARE,
            bulk_sharing_round: Self::DEFAULT_BULK_SHARING_ROUND,
        }
    }
}

impl Service for Config {
    const NAME: &'static str = "distributor";

    fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let config = Self {
            common: ServiceConfig::from_env(env, Self::DEFAULT_GRPC_ADDR)?,
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
        };
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
        if config.common.auth.hs256_secret.is_none()
            && config.common.auth.rs256_private_key_pem.is_none()
        {
            return Err(ConfigError::new(
                "SALESPLAN_JWT_RS256_PRIVATE_KEY_FILE",
                "the distributor signs its calls to deal-service: set a private key or an HS256 secret",
            ));
        }
        Ok(config)
    }

    fn common(&self) -> &ServiceConfig {
        &self.common
    }

    async fn start(self, shutdown: CancellationToken) -> anyhow::Result<Running> {
        let common = self.common;
        let pool = db::connect_and_migrate(&common.database, SCHEMA, &MIGRATOR).await?;
        let bus = Bus::connect(&common.nats, Self::NAME).await?;
        bus.ensure_streams(&streams::ALL).await?;
        let issuer = TokenIssuer::from_config(&common.auth)?
            .context("no key to sign calls to deal-service")?;
        let tokens = ServiceTokens::new(
            issuer,
            ACTOR_ID,
            &[Permission::DealsEditAll, Permission::PlatformIntake],
        );
        let upstream = upstream::DealService::new(
            server::lazy_channel(&self.deal_service_url)?,
            Arc::new(tokens),
        );
        let store = store::Store::new(pool);

        let mut background = Background::new();
        background.consume(
            &bus,
            ConsumerSpec::new(&streams::PLANS, "distributor-plans"),
            Arc::new(plans::PlanEvents::new(store.clone())),
        );
        let leads = || intake::IntakeEvents::new(store.clone(), bus.clone(), upstream.clone());
        let interactive = Activity::default();
        // The interactive lane: a funnel's single lead, never behind a bulk add.
        background.consume(
            &bus,
            // Decisions serialize on the plan's row lock; the deal creation of one batch
            // overlaps the decisions of the next.
            ConsumerSpec::new(&streams::INTAKE, "distributor-intake")
                .with_concurrency(INTAKE_BATCHES_IN_FLIGHT),
            Arc::new(leads().marking(interactive.clone())),
        );
        // The bulk lane: accounts served in turn, so one account's large bulk add does not
        // hold back another's.
        background.consume_fairly(
            &bus,
            FairSpec {
                stream: &streams::BULK,
                prefix: "distributor-bulk",
                subjects_of: streams::bulk_subjects_of,
                rounds_in_flight: BULK_ROUNDS_IN_FLIGHT,
                idle_poll: std::time::Duration::from_millis(100),
                // A funnel's lead in hand goes first: no new bulk round starts meanwhile,
                // and while funnels send leads, bulk adds take at most this share of the time.
                yields_to: Some(interactive),
                share: self.bulk_share,
                sharing_round: self.bulk_sharing_round,
            },
            Arc::new(leads()),
        );
        background.consume(
            &bus,
            ConsumerSpec::new(&streams::DEALS, "distributor-deals"),
            Arc::new(deals::DealEvents::new(store.clone())),
        );
        let interceptor = AuthInterceptor::new(Arc::new(TokenVerifier::from_config(&common.auth)?));
        let grpc = GrpcParts {
            listener: server::bind(common.grpc_addr).await?,
            routes: tonic::service::Routes::new(DistributorServiceServer::with_interceptor(
                grpc::Explain::new(store, upstream, self.lookups_limit),
                interceptor,
            )),
            names: vec![<DistributorServiceServer<grpc::Explain> as NamedService>::NAME],
        };
        Ok(spawn_service(&common, grpc, None, background, bus, shutdown).await?)
    }

    async fn migrate(&self) -> anyhow::Result<()> {
        db::migrate(&self.common.database, SCHEMA, &MIGRATOR).await?;
        Ok(())
    }
}
