//! reporting: a read model of deals built from deal events, and the reports on it.
#![forbid(unsafe_code)]

pub mod domain;
pub mod grpc;
pub mod maintenance;
pub mod names;
pub mod progress;
pub mod projection;
pub mod reports;

use std::sync::Arc;

use salesplan_platform::{
    auth::{AuthInterceptor, TokenVerifier},
    bus::{Bus, ConsumerSpec, streams},
    config::{ConfigError, Env},
    consistency, db, grpc as server,
    limits::ClassLimit,
    service::{Background, GrpcParts, Running, Service, ServiceConfig, spawn_service},
};
use salesplan_proto::v1::report_service_server::ReportServiceServer;
use sqlx::migrate::Migrator;
use tokio_util::sync::CancellationToken;
use tonic::server::NamedService;

pub const SCHEMA: &str = "reporting";
pub static MIGRATOR: Migrator = sqlx::migrate!("../../migrations/reporting");

#[derive(Debug, Clone)]
pub struct Config {
    pub common: ServiceConfig,
    /// `SALESPLAN_LIMIT_REPORTS`: per account and replica, of every report call.
    pub reports_limit: ClassLimit,
    /// `SALESPLAN_CONSISTENCY_WAIT_MS`: how long a report given a consistency token waits
    /// for the read model to include it.
    pub consistency_wait: std::time::Duration,
}

impl Config {
    pub const DEFAULT_GRPC_ADDR: &str = "127.0.0.1:50054";
    pub const DEFAULT_REPORTS_LIMIT: ClassLimit = ClassLimit {
        concurrency: 2,
        rate: 20.0,
        burst: 40.0,
    };

    pub fn local(database_url: &str, nats_url: &str) -> Self {
        Self {
            common: ServiceConfig::local(database_url, nats_url),
            reports_limit: Self::DEFAULT_REPORTS_LIMIT,
            consistency_wait: consistency::DEFAULT_WAIT,
        }
    }
}

impl Service for Config {
    const NAME: &'static str = "reporting";

    fn from_env(env: &Env) -> Result<Self, ConfigError> {
        Ok(Self {
            common: ServiceConfig::from_env(env, Self::DEFAULT_GRPC_ADDR)?,
            reports_limit: ClassLimit::from_env(
                env,
                "SALESPLAN_LIMIT_REPORTS",
                Self::DEFAULT_REPORTS_LIMIT,
            )?,
            consistency_wait: consistency::wait_from_env(env)?,
        })
    }

    fn common(&self) -> &ServiceConfig {
        &self.common
    }

    async fn start(self, shutdown: CancellationToken) -> anyhow::Result<Running> {
        let common = self.common;
        let pool = db::connect_and_migrate(&common.database, SCHEMA, &MIGRATOR).await?;
        let bus = Bus::connect(&common.nats, Self::NAME).await?;
        bus.ensure_streams(&streams::ALL).await?;
        let interceptor = AuthInterceptor::new(Arc::new(TokenVerifier::from_config(&common.auth)?));

        let mut background = Background::new();
        // Every replica reads every horizon.
        let horizons = progress::Horizons::new();
        background.consume(
            &bus,
            ConsumerSpec::per_process(&streams::HORIZONS, "reporting-horizons"),
            horizons.clone(),
        );
        background.consume(
            &bus,
            ConsumerSpec::new(&streams::DEALS, progress::DEALS_CONSUMER),
            Arc::new(progress::Tracked::new(
                projection::DealEvents::new(pool.clone()),
                pool.clone(),
                progress::DEALS_CONSUMER,
                common.nats.max_deliver,
            )),
        );
        background.consume(
            &bus,
            ConsumerSpec::new(&streams::PLANS, progress::PLANS_CONSUMER),
            Arc::new(progress::Tracked::new(
                names::PlanEvents::new(pool.clone()),
                pool.clone(),
                progress::PLANS_CONSUMER,
                common.nats.max_deliver,
            )),
        );
        let grpc = GrpcParts {
            listener: server::bind(common.grpc_addr).await?,
            routes: tonic::service::Routes::new(ReportServiceServer::with_interceptor(
                // Reports scan: their own connections and statement timeout.
                grpc::Reports::new(
                    db::connect_reads(&common.database, SCHEMA).await?,
                    self.reports_limit,
                    (horizons, self.consistency_wait),
                ),
                interceptor,
            )),
            names: vec![<ReportServiceServer<grpc::Reports> as NamedService>::NAME],
        };
        Ok(spawn_service(&common, grpc, None, background, bus, shutdown).await?)
    }

    async fn migrate(&self) -> anyhow::Result<()> {
        db::migrate(&self.common.database, SCHEMA, &MIGRATOR).await?;
        Ok(())
    }
}
