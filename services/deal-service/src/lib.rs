//! deal-service: the system of record for plans, stages, deals and their history.
//! Every change is committed with an outbox event that the relay publishes to JetStream.
#![forbid(unsafe_code)]

pub mod config;
pub mod convert;
pub mod domain;
pub mod events;
pub mod grpc;
pub mod store;

pub use config::{Config, Limits, WatchConfig};

use std::sync::Arc;

use salesplan_platform::{
    auth::{AuthInterceptor, TokenVerifier},
    bus::{Bus, streams},
    config::{ConfigError, Env},
    db, grpc as server,
    metrics::Metrics,
    service::{Background, GrpcParts, Running, Service, ServiceConfig, spawn_service},
};
use salesplan_proto::v1::{
    contact_service_server::ContactServiceServer, deal_service_server::DealServiceServer,
    distributor_service_client::DistributorServiceClient,
    manager_service_server::ManagerServiceServer, outbox_service_server::OutboxServiceServer,
    plan_service_server::PlanServiceServer,
};
use sqlx::migrate::Migrator;
use tokio_util::sync::CancellationToken;
use tonic::server::NamedService;

pub const SCHEMA: &str = "deal_service";
pub static MIGRATOR: Migrator = sqlx::migrate!("../../migrations/deal-service");

impl Service for Config {
    const NAME: &'static str = "deal-service";

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
        let reads = db::connect_reads(&self.database, SCHEMA).await?;
        let store = store::Store::new(pool.clone(), reads, self.contact_keys.clone());
        let feed = events::feed::Feed::new(bus.clone(), store.clone(), self.watch);
        feed.start().await?;
        let api = grpc::Api::new(
            store,
            bus.clone(),
            self.contact_keys,
            DistributorServiceClient::new(server::lazy_channel(&self.distributor_url)?),
            (&self.limits, self.consistency_wait),
            grpc::Watch {
                feed: feed.clone(),
                shutdown: shutdown.clone(),
            },
            &metrics,
        );
        let routes = tonic::service::Routes::new(PlanServiceServer::with_interceptor(
            api.clone(),
            interceptor.clone(),
        ))
        .add_service(DealServiceServer::with_interceptor(
            api.clone(),
            interceptor.clone(),
        ))
        .add_service(OutboxServiceServer::with_interceptor(
            api.clone(),
            interceptor.clone(),
        ))
        .add_service(ManagerServiceServer::with_interceptor(
            api.clone(),
            interceptor.clone(),
        ))
        .add_service(ContactServiceServer::with_interceptor(api, interceptor));
        let mut background = Background::new(metrics.clone());
        let relay_stop = background.stop_token();
        background.spawn(events::outbox::run(pool, bus.clone(), relay_stop, metrics));
        background.spawn(feed.clone().follow_horizons(background.stop_token()));
        background.spawn(feed.run(background.stop_token()));
        let grpc = GrpcParts {
            listener: server::bind(common.grpc_addr).await?,
            verifier: verifier.clone(),
            routes,
            names: vec![
                <PlanServiceServer<grpc::Api> as NamedService>::NAME,
                <DealServiceServer<grpc::Api> as NamedService>::NAME,
                <OutboxServiceServer<grpc::Api> as NamedService>::NAME,
                <ContactServiceServer<grpc::Api> as NamedService>::NAME,
                <ManagerServiceServer<grpc::Api> as NamedService>::NAME,
            ],
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
