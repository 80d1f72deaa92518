//! All four services started in-process against one test database and one test NATS.

use std::time::Duration;

use salesplan_platform::{
    Actor, Permission,
    auth::TokenIssuer,
    config::AuthConfig,
    service::{Running, Service},
};
use tokio_util::sync::CancellationToken;

use crate::{TestDatabase, TestNats};

pub struct Stack {
    pub nats: TestNats,
    pub db: TestDatabase,
    pub tunnel_listener: Running,
    pub distributor: Running,
    pub deal_service: Running,
    pub reporting: Running,
    shutdown: CancellationToken,
    issuer: TokenIssuer,
}

impl Stack {
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(TestNats::start().await?).await
    }

    /// The four services on `nats` (e.g. a server with another configuration).
    pub async fn start_with(nats: TestNats) -> anyhow::Result<Self> {
        salesplan_platform::telemetry::init_for_tests();
        let db = TestDatabase::create().await?;
        let shutdown = CancellationToken::new();
        // deal-service asks the distributor (ExportContact) and the distributor deal-service:
        // the distributor's port is chosen before either starts.
        let distributor_addr =
            std::net::SocketAddr::from(([127, 0, 0, 1], crate::ports::reserve()?));
        let mut deal_service = deal_service::Config::local(&db.url, &nats.url);
        deal_service.distributor_url = format!("http://{distributor_addr}");
        let deal_service = deal_service.start(shutdown.clone()).await?;
        let mut distributor =
            distributor::Config::local(&db.url, &nats.url, &deal_service.grpc_url());
        distributor.common.grpc_addr = distributor_addr;
        let distributor = distributor.start(shutdown.clone()).await?;
        let reporting = reporting::Config::local(&db.url, &nats.url)
            .start(shutdown.clone())
            .await?;
        let tunnel_listener = tunnel_listener::Config::local(&nats.url, &deal_service.grpc_url())
            .start(shutdown.clone())
            .await?;
        Ok(Self {
            nats,
            db,
            tunnel_listener,
            distributor,
            deal_service,
            reporting,
            shutdown,
            issuer: TokenIssuer::hs256(AuthConfig::DEV_SECRET.as_bytes()),
        })
    }

    /// Starts one more distributor replica on the same database and NATS.
    pub async fn add_distributor(&self) -> anyhow::Result<Running> {
        distributor::Config::local(&self.db.url, &self.nats.url, &self.deal_service.grpc_url())
            .start(self.shutdown.clone())
            .await
    }

    /// Starts one more deal-service replica (its own outbox relay on the same outbox).
    pub async fn add_deal_service(&self) -> anyhow::Result<Running> {
        let mut config = deal_service::Config::local(&self.db.url, &self.nats.url);
        config.distributor_url = self.distributor.grpc_url();
        config.start(self.shutdown.clone()).await
    }

    /// Starts one more reporting replica (sharing the deal and plan consumers).
    pub async fn add_reporting(&self) -> anyhow::Result<Running> {
        reporting::Config::local(&self.db.url, &self.nats.url)
            .start(self.shutdown.clone())
            .await
    }

    /// Waits (at most 20 s) until the distributor has handled every lead in the intake and
    /// bulk lanes: each was turned into its deal (or refused) and acknowledged. What a
    /// test counts after it is final, not a moment in the middle.
    pub async fn intake_settled(&self) -> anyhow::Result<()> {
        let js = async_nats::jetstream::new(async_nats::connect(&self.nats.url).await?);
        eventually(Duration::from_secs(20), || async {
            let intake = crate::nats::consumer_backlog(
                &js,
                salesplan_platform::bus::streams::INTAKE.name,
                "distributor-intake",
            )
            .await?;
            let bulk = crate::nats::bulk_backlog(&js).await?;
            Ok((intake.is_empty() && bulk == 0).then_some(()))
        })
        .await
        .map_err(|err| err.context("the distributor did not handle every lead"))
    }

    /// A bearer token of `user` in `account` with `permissions`.
    pub fn token(&self, account: &str, user: &str, permissions: &[Permission]) -> String {
        self.issuer
            .issue(
                &Actor::new(account, user, permissions.iter().copied()),
                Duration::from_secs(3600),
            )
            .expect("signing a test token")
    }

    /// A token signed with the right key that expired an hour ago (past any leeway).
    pub fn token_expired(&self, account: &str, user: &str, permissions: &[Permission]) -> String {
        let perms: Vec<String> = permissions.iter().map(|p| p.to_string()).collect();
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &serde_json::json!({
                "sub": user,
                "acct": account,
                "perms": perms,
                "exp": jsonwebtoken::get_current_timestamp() - 3600,
            }),
            &jsonwebtoken::EncodingKey::from_secret(AuthConfig::DEV_SECRET.as_bytes()),
        )
        .expect("signing a test token")
    }

    pub fn webhook_url(&self) -> String {
        let addr = self
            .tunnel_listener
            .http_addr
            .expect("tunnel-listener serves HTTP");
        format!("http://{addr}{}", tunnel_listener::http::webhook::PATH)
    }

    pub fn http_base(&self) -> String {
        let addr = self
            .tunnel_listener
            .http_addr
            .expect("tunnel-listener serves HTTP");
        format!("http://{addr}")
    }

    pub async fn channel(&self, running: &Running) -> anyhow::Result<tonic::transport::Channel> {
        Ok(tonic::transport::Endpoint::from_shared(running.grpc_url())?
            .connect()
            .await?)
    }

    /// A pool on the test database (for assertions on what services stored).
    pub async fn pool(&self) -> anyhow::Result<sqlx::PgPool> {
        Ok(sqlx::PgPool::connect(&self.db.url).await?)
    }

    /// Stops every service and waits until each has drained.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        let (a, b, c, d) = tokio::join!(
            self.tunnel_listener.wait(),
            self.distributor.wait(),
            self.deal_service.wait(),
            self.reporting.wait()
        );
        a?;
        b?;
        c?;
        d?;
        Ok(())
    }
}

/// Only deal-service, with its own NATS and database: for tests of the system of record.
pub struct DealStack {
    pub nats: TestNats,
    pub db: TestDatabase,
    pub deal_service: Running,
    shutdown: CancellationToken,
    issuer: TokenIssuer,
}

impl DealStack {
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_on(TestDatabase::create().await?).await
    }

    /// deal-service on `db` (e.g. a database with another locale).
    pub async fn start_on(db: TestDatabase) -> anyhow::Result<Self> {
        salesplan_platform::telemetry::init_for_tests();
        let nats = TestNats::start().await?;
        let shutdown = CancellationToken::new();
        let mut config = deal_service::Config::local(&db.url, &nats.url);
        // No distributor: a port nothing listens on (not the default, which a developer's
        // own distributor may hold).
        config.distributor_url = format!("http://127.0.0.1:{}", crate::ports::reserve()?);
        let deal_service = config.start(shutdown.clone()).await?;
        Ok(Self {
            nats,
            db,
            deal_service,
            shutdown,
            issuer: TokenIssuer::hs256(AuthConfig::DEV_SECRET.as_bytes()),
        })
    }

    pub fn token(&self, account: &str, user: &str, permissions: &[Permission]) -> String {
        self.issuer
            .issue(
                &Actor::new(account, user, permissions.iter().copied()),
                Duration::from_secs(3600),
            )
            .expect("signing a test token")
    }

    /// A bearer token that expires after `ttl`.
    pub fn token_lasting(
        &self,
        (account, user, permissions): (&str, &str, &[Permission]),
        ttl: Duration,
    ) -> String {
        self.issuer
            .issue(&Actor::new(account, user, permissions.iter().copied()), ttl)
            .expect("signing a test token")
    }

    /// Starts a tunnel-listener (stopped with the stack; wait for it after `stop`).
    pub async fn start_listener(&self) -> anyhow::Result<Running> {
        tunnel_listener::Config::local(&self.nats.url, &self.deal_service.grpc_url())
            .start(self.shutdown.clone())
            .await
    }

    /// Starts a distributor (stopped with the stack; wait for it after `stop`): a test can
    /// let leads wait in the intake stream while it changes their plan.
    pub async fn start_distributor(&self) -> anyhow::Result<Running> {
        distributor::Config::local(&self.db.url, &self.nats.url, &self.deal_service.grpc_url())
            .start(self.shutdown.clone())
            .await
    }

    /// Starts a reporting service (stopped with the stack; wait for it after `stop`): the
    /// reports of deal-service's events with no distributor acting on them.
    pub async fn start_reporting(&self) -> anyhow::Result<Running> {
        reporting::Config::local(&self.db.url, &self.nats.url)
            .start(self.shutdown.clone())
            .await
    }

    pub async fn channel(&self) -> anyhow::Result<tonic::transport::Channel> {
        Ok(
            tonic::transport::Endpoint::from_shared(self.deal_service.grpc_url())?
                .connect()
                .await?,
        )
    }

    /// A channel to another deal-service replica (one a test started itself).
    pub async fn channel_to(&self, running: &Running) -> anyhow::Result<tonic::transport::Channel> {
        Ok(tonic::transport::Endpoint::from_shared(running.grpc_url())?
            .connect()
            .await?)
    }

    pub async fn pool(&self) -> anyhow::Result<sqlx::PgPool> {
        Ok(sqlx::PgPool::connect(&self.db.url).await?)
    }

    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.deal_service.wait().await
    }
}

/// Waits (at most 10 s) until deal-service's outbox is empty: the relay deletes each row
/// after the broker acknowledged it, so an event can be readable a moment before its row
/// is gone.
pub async fn outbox_drained(pool: &sqlx::PgPool) -> anyhow::Result<()> {
    eventually(Duration::from_secs(10), || async {
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM deal_service.outbox")
            .fetch_one(pool)
            .await?;
        Ok((left == 0).then_some(()))
    })
    .await
    .map_err(|err| err.context("deal-service's outbox still holds rows"))
}

/// Polls `check` until it returns `Some`, or fails after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await? {
            return Ok(value);
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!("condition not met within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
