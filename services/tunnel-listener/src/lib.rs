//! tunnel-listener: accepts "add to sales plan" from tunnel action blocks (HTTP webhook)
//! and gRPC clients, and publishes one intake event per lead to JetStream.
#![forbid(unsafe_code)]

pub mod config;
pub mod domain;
pub mod events;
pub mod grpc;
pub mod http;
pub mod upstream;

pub use config::Config;

use std::sync::Arc;

use anyhow::Context as _;
use events::intake::{self, Intake};
use futures::FutureExt;
use salesplan_platform::{
    Permission,
    auth::{AuthInterceptor, ServiceTokens, TokenIssuer, TokenVerifier},
    bus::{Bus, streams},
    config::{ConfigError, Env},
    grpc as server,
    limits::AccountLimiter,
    metrics::Metrics,
    service::{Background, GrpcParts, Running, Service, ServiceConfig, spawn_service},
};
use salesplan_proto::v1::intake_service_server::IntakeServiceServer;
use tokio_util::sync::CancellationToken;
use tonic::server::NamedService;
use upstream::Plans;

impl Service for Config {
    const NAME: &'static str = "tunnel-listener";

    fn from_env(env: &Env) -> Result<Self, ConfigError> {
        Self::read(env)
    }

    fn common(&self) -> &ServiceConfig {
        &self.common
    }

    async fn start(self, shutdown: CancellationToken) -> anyhow::Result<Running> {
        let common = self.common;
        let metrics = Metrics::new(Self::NAME, &common.telemetry);
        let bus = Bus::connect(&common.nats, Self::NAME).await?;
        bus.ensure_streams(&streams::ALL).await?;
        let verifier = Arc::new(TokenVerifier::from_config(&common.auth)?);
        let issuer = TokenIssuer::from_config(&common.auth)?
            .context("no key to sign plan look-ups at deal-service")?;
        let plans = Arc::new(Plans::new(
            server::lazy_channel(&self.deal_service_url)?,
            ServiceTokens::new(issuer, Self::ACTOR_ID, &[Permission::PlatformLookup]),
        ));
        let intake = Intake::new(
            bus.clone(),
            plans,
            AccountLimiter::new("leads", self.webhook_limit, &metrics),
            intake::BulkBacklog {
                max_in_flight: self.audience_max_in_flight,
                patience: self.audience_idle_timeout,
            },
            self.contact_keys,
            &metrics,
        );

        let http = tokio::net::TcpListener::bind(self.http_addr).await?;
        let http_addr = http.local_addr()?;
        let router = http::webhook::router(
            Arc::new(http::webhook::WebhookState {
                intake: intake.clone(),
                verifier: verifier.clone(),
                max_body_bytes: self.max_body_bytes,
                body_timeout: self.http_timeouts.body,
            }),
            self.max_body_bytes,
        );
        let http_shutdown = shutdown.clone();
        let http_server =
            http::server::serve(http, router, self.http_timeouts, http_shutdown).boxed();

        let grpc = GrpcParts {
            listener: server::bind(common.grpc_addr).await?,
            verifier: verifier.clone(),
            routes: tonic::service::Routes::new(IntakeServiceServer::with_interceptor(
                grpc::IntakeApi::new(
                    intake,
                    grpc::AudienceLimits {
                        calls: AccountLimiter::new("bulk adds", self.audience_limit, &metrics),
                        idle_timeout: self.audience_idle_timeout,
                    },
                ),
                AuthInterceptor::new(verifier),
            )),
            names: vec![<IntakeServiceServer<grpc::IntakeApi> as NamedService>::NAME],
        };
        Ok(spawn_service(
            &common,
            grpc,
            Some((http_addr, http_server)),
            Background::new(metrics),
            bus,
            shutdown,
        )
        .await?)
    }

    /// No database of its own: nothing to migrate.
    fn store(&self) -> Option<salesplan_platform::db::Schema<'_>> {
        None
    }
}
