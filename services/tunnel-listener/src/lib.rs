//! tunnel-listener: accepts "add to sales plan" from tunnel action blocks (HTTP webhook)
//! and gRPC clients, and publishes one intake event per lead to JetStream.
#![forbid(unsafe_code)]

pub mod grpc;
pub mod intake;
pub mod plans;
pub mod webhook;

use std::{net::SocketAddr, sync::Arc};

use anyhow::Context as _;
use futures::FutureExt;
use intake::Intake;
use plans::Plans;
use salesplan_platform::{
    auth::{AuthInterceptor, ServiceTokens, TokenIssuer, TokenVerifier},
    bus::{Bus, streams},
    config::{ConfigError, Env},
    grpc as server,
    limits::{AccountLimiter, ClassLimit},
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
    /// `SALESPLAN_DEAL_SERVICE_URL`: where each lead's plan is checked.
    pub deal_service_url: String,
    /// `SALESPLAN_WEBHOOK_RATE` and `SALESPLAN_WEBHOOK_BURST`: leads a second of one
    /// account, per replica, through the webhook and AddToSalesPlan together.
    pub webhook_limit: ClassLimit,
    /// `SALESPLAN_LIMIT_AUDIENCE`: AddAudience calls of one account at once and started a
    /// second, per replica.
    pub audience_limit: ClassLimit,
    /// `SALESPLAN_AUDIENCE_IDLE_TIMEOUT_MS`: an AddAudience call that sends no chunk for
    /// this long is ended (DEADLINE_EXCEEDED), so an idle client holds nothing.
    pub audience_idle_timeout: std::time::Duration,
    /// `SALESPLAN_AUDIENCE_MAX_IN_FLIGHT`: contacts of one account accepted by bulk adds
    /// but not yet turned into deals; a chunk beyond it waits for the backlog to drain.
    pub audience_max_in_flight: u64,
}

impl Config {
    pub const DEFAULT_GRPC_ADDR: &str = "127.0.0.1:50051";
    pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:8080";
    pub const DEFAULT_MAX_BODY_BYTES: usize = 64 * 1024;

    pub const DEFAULT_DEAL_SERVICE_URL: &str = "http://127.0.0.1:50053";
    /// The user id of the listener's own calls (plan look-ups).
    pub const ACTOR_ID: &str = "system:tunnel-listener";

    pub fn local(database_url: &str, nats_url: &str, deal_service_url: &str) -> Self {
        Self {
            common: ServiceConfig::local(database_url, nats_url),
            http_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            max_body_bytes: Self::DEFAULT_MAX_BODY_BYTES,
            deal_service_url: deal_service_url.to_owned(),
            webhook_limit: Self::DEFAULT_LIMIT,
            audience_limit: Self::DEFAULT_AUDIENCE_LIMIT,
            audience_idle_timeout: Self::DEFAULT_AUDIENCE_IDLE_TIMEOUT,
            audience_max_in_flight: Self::DEFAULT_AUDIENCE_MAX_IN_FLIGHT,
        }
    }

    /// 500 leads a second per account and replica, bursts of 2,000 (a broadcast).
    pub const DEFAULT_LIMIT: ClassLimit = ClassLimit::rate_only(500.0, 2_000.0);
    /// Two bulk adds of an account at once, a new one a second (bursts of five).
    pub const DEFAULT_AUDIENCE_LIMIT: ClassLimit = ClassLimit {
        concurrency: 2,
        rate: 1.0,
        burst: 5.0,
    };
    pub const DEFAULT_AUDIENCE_IDLE_TIMEOUT: std::time::Duration =
        std::time::Duration::from_secs(60);
    pub const DEFAULT_AUDIENCE_MAX_IN_FLIGHT: u64 = 50_000;
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
            deal_service_url: env
                .string("SALESPLAN_DEAL_SERVICE_URL", Self::DEFAULT_DEAL_SERVICE_URL),
            webhook_limit: ClassLimit::rate_only(
                env.parse("SALESPLAN_WEBHOOK_RATE", Self::DEFAULT_LIMIT.rate)?,
                env.parse("SALESPLAN_WEBHOOK_BURST", Self::DEFAULT_LIMIT.burst)?,
            ),
            audience_limit: ClassLimit::from_env(
                env,
                "SALESPLAN_LIMIT_AUDIENCE",
                Self::DEFAULT_AUDIENCE_LIMIT,
            )?,
            audience_idle_timeout: env.millis(
                "SALESPLAN_AUDIENCE_IDLE_TIMEOUT_MS",
                Self::DEFAULT_AUDIENCE_IDLE_TIMEOUT,
            )?,
            audience_max_in_flight: env.parse(
                "SALESPLAN_AUDIENCE_MAX_IN_FLIGHT",
                Self::DEFAULT_AUDIENCE_MAX_IN_FLIGHT,
            )?,
        };
        if config.audience_idle_timeout.is_zero() || config.audience_max_in_flight == 0 {
            return Err(ConfigError::new(
                "SALESPLAN_AUDIENCE_IDLE_TIMEOUT_MS",
                "the idle timeout and SALESPLAN_AUDIENCE_MAX_IN_FLIGHT must be positive",
            ));
        }
        if !(config.webhook_limit.rate > 0.0 && config.webhook_limit.burst >= 1.0) {
            return Err(ConfigError::new(
                "SALESPLAN_WEBHOOK_RATE",
                "rate must be positive and burst at least 1",
            ));
        }
        salesplan_platform::config::url("SALESPLAN_DEAL_SERVICE_URL", &config.deal_service_url)?;
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
        let issuer = TokenIssuer::from_config(&common.auth)?
            .context("no key to sign plan look-ups at deal-service")?;
        let plans = Arc::new(Plans::new(
            server::lazy_channel(&self.deal_service_url)?,
            ServiceTokens::new(issuer, Self::ACTOR_ID, &[]),
        ));
        let background = Background::new();
        let intake = Intake::new(
            bus.clone(),
            plans,
            AccountLimiter::new("leads", self.webhook_limit),
            intake::BulkBacklog {
                max_in_flight: self.audience_max_in_flight,
                patience: self.audience_idle_timeout,
            },
        );

        let http = tokio::net::TcpListener::bind(self.http_addr).await?;
        let http_addr = http.local_addr()?;
        let router = webhook::router(
            Arc::new(webhook::WebhookState {
                intake: intake.clone(),
                verifier: verifier.clone(),
            }),
            self.max_body_bytes,
        );
        let http_shutdown = shutdown.clone();
        let http_server = async move {
            // Nagle off, as on the gRPC side: no delayed-ACK wait on each answer.
            axum::serve(
                axum::serve::ListenerExt::tap_io(http, |tcp| {
                    if let Err(err) = tcp.set_nodelay(true) {
                        tracing::debug!(error = %err, "cannot set TCP_NODELAY");
                    }
                }),
                router,
            )
            .with_graceful_shutdown(async move { http_shutdown.cancelled().await })
            .await
        }
        .boxed();

        let grpc = GrpcParts {
            listener: server::bind(common.grpc_addr).await?,
            routes: tonic::service::Routes::new(IntakeServiceServer::with_interceptor(
                grpc::IntakeApi::new(
                    intake,
                    grpc::AudienceLimits {
                        calls: AccountLimiter::new("bulk adds", self.audience_limit),
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
            background,
            bus,
            shutdown,
        )
        .await?)
    }

    async fn migrate(&self) -> anyhow::Result<()> {
        // No database of its own (yet): nothing to migrate.
        Ok(())
    }
}
