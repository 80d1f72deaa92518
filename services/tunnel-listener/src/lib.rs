//! tunnel-listener: accepts "add to sales plan" from tunnel action blocks (HTTP webhook)
//! and gRPC clients, and publishes one intake event per lead to JetStream.
#![forbid(unsafe_code)]

pub mod grpc;
pub mod intake;
pub mod webhook;

use std::{net::SocketAddr, sync::Arc};

use futures::FutureExt;
use salesplan_platform::{
    auth::{AuthInterceptor, TokenVerifier},
    bus::{Bus, streams},
    config::{ConfigError, Env},
    grpc as server,
    service::{Background, GrpcParts, Running, Service, ServiceConfig, spawn_service},
};
use salesplan_proto::v1::intake_service_server::IntakeServiceServer;
use tokio_util::sync::CancellationToken;
use tonic::server::NamedService;

#[derive(Debug, Clone)]
pub struct Config {
    pub common: ServiceConfig,
    /// `SALESPLAN_HTTP_ADDR`: the webhook listener.
    pub http_addr: SocketAddr,
    /// `SALESPLAN_WEBHOOK_MAX_BODY_BYTES`: larger bodies get 413.
    pub max_body_bytes: usize,
}

impl Config {
    pub const DEFAULT_GRPC_ADDR: &str = "127.0.0.1:50051";
    pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:8080";
    pub const DEFAULT_MAX_BODY_BYTES: usize = 64 * 1024;

    pub fn local(database_url: &str, nats_url: &str) -> Self {
        Self {
            common: ServiceConfig::local(database_url, nats_url),
            http_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            max_body_bytes: Self::DEFAULT_MAX_BODY_BYTES,
        }
    }
}

impl Service for Config {
    const NAME: &'static str = "tunnel-listener";

    fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let config = Self {
            common: ServiceConfig::from_env(env, Self::DEFAULT_GRPC_ADDR)?,
            http_addr: env.addr("SALESPLAN_HTTP_ADDR", Self::DEFAULT_HTTP_ADDR)?,
            max_body_bytes: env.parse(
                "SALESPLAN_WEBHOOK_MAX_BODY_BYTES",
                Self::DEFAULT_MAX_BODY_BYTES,
            )?,
        };
        if !(1024..=16 * 1024 * 1024).contains(&config.max_body_bytes) {
            return Err(ConfigError::new(
                "SALESPLAN_WEBHOOK_MAX_BODY_BYTES",
                "must be between 1024 and 16777216",
            ));
        }
        Ok(config)
    }

    fn common(&self) -> &ServiceConfig {
        &self.common
    }

    async fn start(self, shutdown: CancellationToken) -> anyhow::Result<Running> {
        let common = self.common;
        let bus = Bus::connect(&common.nats, Self::NAME).await?;
        bus.ensure_streams(&streams::ALL).await?;
        let verifier = Arc::new(TokenVerifier::from_config(&common.auth)?);

        let http = tokio::net::TcpListener::bind(self.http_addr).await?;
        let http_addr = http.local_addr()?;
        let router = webhook::router(
            Arc::new(webhook::WebhookState {
                bus: bus.clone(),
                verifier: verifier.clone(),
            }),
            self.max_body_bytes,
        );
        let http_shutdown = shutdown.clone();
        let http_server = async move {
            axum::serve(http, router)
                .with_graceful_shutdown(async move { http_shutdown.cancelled().await })
                .await
        }
        .boxed();

        let grpc = GrpcParts {
            listener: server::bind(common.grpc_addr).await?,
            routes: tonic::service::Routes::new(IntakeServiceServer::with_interceptor(
                grpc::Intake::new(bus.clone()),
                AuthInterceptor::new(verifier),
            )),
            names: vec![<IntakeServiceServer<grpc::Intake> as NamedService>::NAME],
        };
        Ok(spawn_service(
            &common,
            grpc,
            Some((http_addr, http_server)),
            Background::new(),
            bus,
            shutdown,
        )?)
    }

    async fn migrate(&self) -> anyhow::Result<()> {
        // No database of its own (yet): nothing to migrate.
        Ok(())
    }
}
