//! deal-service: the system of record for plans, stages, deals and their history.
//! Every change is committed with an outbox event that the relay publishes to JetStream.
#![forbid(unsafe_code)]

pub mod convert;
pub mod domain;
pub mod grpc;
pub mod outbox;
pub mod store;

use std::sync::Arc;

use salesplan_platform::{
    auth::{AuthInterceptor, TokenVerifier},
    bus::{Bus, streams},
    config::{ConfigError, Env},
    db, grpc as server,
    limits::ClassLimit,
    service::{Background, GrpcParts, Running, Service, ServiceConfig, spawn_service},
};
use salesplan_proto::v1::{
    deal_service_server::DealServiceServer, outbox_service_server::OutboxServiceServer,
    plan_service_server::PlanServiceServer,
};
use sqlx::migrate::Migrator;
use tokio_util::sync::CancellationToken;
use tonic::server::NamedService;

pub const SCHEMA: &str = "deal_service";
pub static MIGRATOR: Migrator = sqlx::migrate!("../../migrations/deal-service");

#[derive(Debug, Clone)]
pub struct Config {
    pub common: ServiceConfig,
    pub limits: Limits,
    /// `SALESPLAN_CONSISTENCY_WAIT_MS`: how long ListDeals and GetBoard given a consistency
    /// token wait for its write to be readable.
    pub consistency_wait: std::time::Duration,
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
            // Two at once: one account never holds more than a quarter of the read pool.
            reads: ClassLimit {
                concurrency: 2,
                rate: 50.0,
                burst: 100.0,
            },
            bulk: ClassLimit {
                concurrency: 2,
                rate: 5.0,
                burst: 10.0,
            },
            creates: ClassLimit {
                concurrency: 4,
                rate: 20.0,
                burst: 40.0,
            },
            plan_changes: ClassLimit {
                concurrency: 2,
                rate: 5.0,
                burst: 20.0,
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

    pub fn local(database_url: &str, nats_url: &str) -> Self {
        Self {
            common: ServiceConfig::local(database_url, nats_url),
            limits: Limits::default(),
            consistency_wait: salesplan_platform::consistency::DEFAULT_WAIT,
        }
    }
}

impl Service for Config {
    const NAME: &'static str = "deal-service";

    fn from_env(env: &Env) -> Result<Self, ConfigError> {
        Ok(Self {
            common: ServiceConfig::from_env(env, Self::DEFAULT_GRPC_ADDR)?,
            limits: Limits::from_env(env)?,
            consistency_wait: salesplan_platform::consistency::wait_from_env(env)?,
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
        let reads = db::connect_reads(&common.database, SCHEMA).await?;
        let api = grpc::Api::new(
            store::Store::new(pool.clone(), reads),
            &self.limits,
            self.consistency_wait,
        );
        let routes = tonic::service::Routes::new(PlanServiceServer::with_interceptor(
            api.clone(),
            interceptor.clone(),
        ))
        .add_service(DealServiceServer::with_interceptor(
            api.clone(),
            interceptor.clone(),
        ))
        .add_service(OutboxServiceServer::with_interceptor(api, interceptor));
        let mut background = Background::new();
        let relay_stop = background.stop_token();
        background.spawn(outbox::run(pool, bus.clone(), relay_stop));
        let grpc = GrpcParts {
            listener: server::bind(common.grpc_addr).await?,
            routes,
            names: vec![
                <PlanServiceServer<grpc::Api> as NamedService>::NAME,
                <DealServiceServer<grpc::Api> as NamedService>::NAME,
                <OutboxServiceServer<grpc::Api> as NamedService>::NAME,
            ],
        };
        Ok(spawn_service(&common, grpc, None, background, bus, shutdown).await?)
    }

    async fn migrate(&self) -> anyhow::Result<()> {
        db::migrate(&self.common.database, SCHEMA, &MIGRATOR).await?;
        Ok(())
    }
}
