//! reporting: a read model of deals built from deal events, and the reports on it.
#![forbid(unsafe_code)]

pub mod config;
pub mod domain;
pub mod events;
pub mod grpc;
pub mod maintenance;
pub mod store;

pub use config::Config;

use std::sync::Arc;

use salesplan_platform::{
    auth::{AuthInterceptor, TokenVerifier},
    bus::{Bus, ConsumerSpec, streams},
    config::{ConfigError, Env},
    db, grpc as server,
    metrics::Metrics,
    service::{Background, GrpcParts, Running, Service, ServiceConfig, spawn_service},
};
use salesplan_proto::v1::report_service_server::ReportServiceServer;
use sqlx::migrate::Migrator;
use tokio_util::sync::CancellationToken;
use tonic::server::NamedService;

pub const SCHEMA: &str = "reporting";
pub static MIGRATOR: Migrator = sqlx::migrate!("../../migrations/reporting");

impl Service for Config {
    const NAME: &'static str = "reporting";

    fn from_env(env: &Env) -> Result<Self, ConfigError> {
        Self::read(env)
    }

    fn common(&self) -> &ServiceConfig {
        &self.common
    }

    async fn start(self, shutdown: CancellationToken) -> anyhow::Result<Running> {
        let common = self.common;
        let metrics = Metrics::new(Self::NAME, &common.telemetry);
        let pool = db::connect_and_migrate(&self.database, SCHEMA, &MIGRATOR).await?;
        let bus = Bus::connect(&common.nats, Self::NAME).await?;
        bus.ensure_streams(&streams::ALL).await?;
        let verifier = Arc::new(TokenVerifier::from_config(&common.auth)?);
        let interceptor = AuthInterceptor::new(verifier.clone());

        let mut background = Background::new(metrics.clone());
        // Every replica reads every horizon.
        let horizons = domain::progress::Horizons::new();
        background.consume(
            &bus,
            ConsumerSpec::per_process(&streams::HORIZONS, "reporting-horizons"),
            horizons.clone(),
        );
        background.consume(
            &bus,
            ConsumerSpec::new(&streams::DEALS, events::progress::DEALS_CONSUMER),
            Arc::new(events::progress::Tracked::new(
                events::deals::DealEvents::new(pool.clone()),
                pool.clone(),
                events::progress::DEALS_CONSUMER,
                common.nats.max_deliver,
            )),
        );
        background.consume(
            &bus,
            ConsumerSpec::new(&streams::PLANS, events::progress::PLANS_CONSUMER),
            Arc::new(events::progress::Tracked::new(
                events::plans::PlanEvents::new(pool.clone()),
                pool.clone(),
                events::progress::PLANS_CONSUMER,
                common.nats.max_deliver,
            )),
        );
        let grpc = GrpcParts {
            listener: server::bind(common.grpc_addr).await?,
            verifier: verifier.clone(),
            routes: tonic::service::Routes::new(ReportServiceServer::with_interceptor(
                // Reports scan: their own connections and statement timeout.
                grpc::Reports::new(
                    db::connect_reads(&self.database, SCHEMA).await?,
                    (self.reports_limit, &metrics),
                    (horizons, self.consistency_wait),
                ),
                interceptor,
            )),
            names: vec![<ReportServiceServer<grpc::Reports> as NamedService>::NAME],
        };
        Ok(spawn_service(&common, grpc, None, background, bus, shutdown).await?)
    }

    fn store(&self) -> Option<db::Schema<'_>> {
        Some(db::Schema {
            database: &self.database,
            name: SCHEMA,
            migrator: &MIGRATOR,
        })
    }
}
