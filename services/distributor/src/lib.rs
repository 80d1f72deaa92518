//! distributor: consumes intake events, chooses each lead's manager by the plan's
//! distribution settings, and creates the deal through deal-service.
#![forbid(unsafe_code)]

pub mod config;
pub mod domain;
pub mod events;
pub mod grpc;
pub mod store;
pub mod upstream;

pub use config::Config;

use std::sync::Arc;

use anyhow::Context as _;
use salesplan_platform::{
    Permission,
    auth::{AuthInterceptor, ServiceTokens, TokenIssuer, TokenVerifier},
    bus::{Activity, Bus, ConsumerSpec, FairSpec, streams},
    config::{ConfigError, Env},
    db, grpc as server,
    metrics::Metrics,
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

impl Service for Config {
    const NAME: &'static str = "distributor";

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
        let store = store::Store::new(pool, self.contact_keys);
        store.key_plain_contact_keys().await?;

        let queue = events::queue::Queue::new(store.clone(), upstream.clone(), &metrics);
        let mut background = Background::new(metrics.clone());
        // Waiting deals: decided every few seconds (and after the events that free a
        // place), and made in deal-service by the relay of orders.
        background.spawn(queue.clone().sweep(background.stop_token()));
        background.spawn(queue.clone().relay(background.stop_token()));
        // Response deadlines: a deal not accepted in time goes to the next manager.
        let deadlines = events::deadlines::Deadlines::new(
            store.clone(),
            upstream.clone(),
            self.deadline_lease,
            &metrics,
        );
        background.spawn(deadlines.run(background.stop_token()));
        // Leads nobody decided are kept only as long as configured. A broker that refuses
        // (its permissions not upgraded yet) does not stop the distributor: retried.
        background.spawn(keep_intake_retention(bus.clone(), background.stop_token()));
        // Replicas of the version before keyed keys write plain ones until a rolling
        // upgrade ends: keyed again every few minutes.
        background.spawn(events::deals::key_plain_contact_keys_now_and_then(
            store.clone(),
            background.stop_token(),
        ));
        background.consume(
            &bus,
            ConsumerSpec::new(&streams::PLANS, "distributor-plans"),
            Arc::new(events::plans::PlanEvents::new(store.clone(), queue.clone())),
        );
        let leads = || {
            events::intake::IntakeEvents::new(
                store.clone(),
                bus.clone(),
                upstream.clone(),
                &metrics,
            )
        };
        let interactive = Activity::default();
        // Decisions serialize on the plan's row lock; the deal creation of one batch
        // overlaps the decisions of the next.
        let intake = ConsumerSpec::new(&streams::INTAKE, "distributor-intake")
            .with_concurrency(INTAKE_BATCHES_IN_FLIGHT);
        // Decided leads stay in the lane until its age limit: removing them one by one (or
        // by a purge) loses acknowledged leads in a cluster of nats-server 2.9
        // (docs/reliability.md, docs/privacy.md).
        // The interactive lane: a funnel's single lead, never behind a bulk add.
        background.consume(&bus, intake, Arc::new(leads().marking(interactive.clone())));
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
            Arc::new(events::deals::DealEvents::new(store.clone(), queue)),
        );
        let verifier = Arc::new(TokenVerifier::from_config(&common.auth)?);
        let interceptor = AuthInterceptor::new(verifier.clone());
        let grpc = GrpcParts {
            listener: server::bind(common.grpc_addr).await?,
            verifier: verifier.clone(),
            routes: tonic::service::Routes::new(DistributorServiceServer::with_interceptor(
                grpc::Explain::new(store, upstream, self.lookups_limit, &metrics),
                interceptor,
            )),
            names: vec![<DistributorServiceServer<grpc::Explain> as NamedService>::NAME],
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

/// Applies the configured retention to the streams that hold leads, now and, until it
/// succeeds, every five minutes.
async fn keep_intake_retention(bus: Bus, stop: CancellationToken) {
    const RETRY: std::time::Duration = std::time::Duration::from_secs(300);
    loop {
        match bus.keep_intake_retention().await {
            Ok(()) => return,
            Err(err) => tracing::error!(
                error = %err,
                "the intake retention is not applied (does the broker let the distributor update the lanes' settings? docs/operations.md); retrying"
            ),
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(RETRY) => {}
        }
    }
}
