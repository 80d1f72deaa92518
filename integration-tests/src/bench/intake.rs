//! The system end to end: the four services as separate processes on this machine.

use std::{
    collections::HashMap,
    time::{Duration, Instant, SystemTime},
};

use futures::StreamExt;
use salesplan_platform::{
    Actor, Permission, auth::TokenIssuer, config::AuthConfig, grpc::outgoing,
};
use salesplan_proto::v1::{self as pb, intake_service_client::IntakeServiceClient};

use super::{ADD_AUDIENCE_END_TO_END, BenchConfig, Line, WEBHOOK_END_TO_END, flush_page_cache};
use crate::{
    TestDatabase, TestNats,
    api::{Mode, Strategy, audience_chunks, create_plan, plan_request},
    chaos::{Ports, Proc, start_services},
    nats::{bulk_backlog, consumer_backlog},
};

pub struct Env {
    _nats: TestNats,
    _db: TestDatabase,
    pub nats_url: String,
    pub database_url: String,
    services: Vec<Proc>,
    pub webhook: String,
    pub intake_url: String,
    pub deal_url: String,
    pub reporting_url: String,
    issuer: TokenIssuer,
    js: async_nats::jetstream::Context,
    _logs: tempfile::TempDir,
}

impl Env {
    pub async fn start() -> anyhow::Result<Self> {
        let nats = TestNats::start().await?;
        let db = TestDatabase::create().await?;
        let logs = tempfile::tempdir()?;
        let (services, ports) = start_services(
            &db.url,
            &nats.url,
            logs.path(),
            &[
                ("SALESPLAN_DB_MAX_CONNECTIONS", "16"),
                // The query runs time one account's reads back to back, and the isolation
                // run polls ListDeals every few ms: rates above any of them. The calls-at-
                // once limits stay at their defaults (they are what the isolation run
                // measures).
                ("SALESPLAN_LIMIT_READS", "rate=100000,burst=100000"),
                ("SALESPLAN_LIMIT_REPORTS", "rate=100000,burst=100000"),
            ],
        )
        .await?;
        let js = async_nats::jetstream::new(async_nats::connect(&nats.url).await?);
        let Ports {
            intake,
            http,
            deal,
            reporting,
        } = ports;
        Ok(Self {
            nats_url: nats.url.clone(),
            database_url: db.url.clone(),
            _nats: nats,
            _db: db,
            services,
            webhook: format!("http://127.0.0.1:{http}/v1/tunnel-actions/add-to-sales-plan"),
            intake_url: format!("http://127.0.0.1:{intake}"),
            deal_url: format!("http://127.0.0.1:{deal}"),
            reporting_url: format!("http://127.0.0.1:{reporting}"),
            issuer: TokenIssuer::hs256(AuthConfig::DEV_SECRET.as_bytes()),
            js,
            _logs: logs,
        })
    }

    pub fn token(&self, perms: &[Permission]) -> anyhow::Result<String> {
        self.token_of("bench", perms)
    }

    pub fn token_of(&self, account: &str, perms: &[Permission]) -> anyhow::Result<String> {
        Ok(self.issuer.issue(
            &Actor::new(account, "bench", perms.iter().copied()),
            Duration::from_secs(7200),
        )?)
    }

    pub async fn channel(&self, url: &str) -> anyhow::Result<tonic::transport::Channel> {
        Ok(tonic::transport::Endpoint::from_shared(url.to_owned())?
            .connect()
            .await?)
    }

    pub fn peak_rss(&self) -> Vec<(String, Option<u64>)> {
        self.services
            .iter()
            .map(|s| (s.name.clone(), s.peak_rss()))
            .collect()
    }

    pub async fn stop(mut self) -> anyhow::Result<()> {
        for service in &mut self.services {
            service.kill().await?;
        }
        Ok(())
    }

    pub async fn plan(&self, name: &str) -> anyhow::Result<pb::Plan> {
        self.plan_of("bench", name).await
    }

    /// A plan of `account`: AUTO round robin over three managers.
    pub async fn plan_of(&self, account: &str, name: &str) -> anyhow::Result<pb::Plan> {
        create_plan(
            self.channel(&self.deal_url).await?,
            &self.token_of(account, &[Permission::PlansAdmin])?,
            plan_request(
                name,
                Mode::Auto,
                Strategy::RoundRobin,
                false,
                &["m1", "m2", "m3"],
            ),
        )
        .await
    }

    /// Waits until `n` deals of the plan exist and reporting has counted them, and every
    /// deal event is applied. Watches the pipeline's queues (cheap), in the order work
    /// flows — intake consumer, outbox, the two deal-event consumers — and counts rows only
    /// once all are empty, so the wait does not load the database it measures.
    async fn settled(&self, pool: &sqlx::PgPool, plan: &str, n: usize) -> anyhow::Result<()> {
        let plan = uuid::Uuid::parse_str(plan)?;
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            if self.pipeline_idle(pool).await? {
                let (deals, counted): (i64, i64) = sqlx::query_as(
                    "SELECT (SELECT count(*) FROM deal_service.deals WHERE account_id = 'bench' AND plan_id = $1),
                            (SELECT count(*) FROM reporting.deals WHERE account_id = 'bench' AND plan_id = $1 AND version > 0)",
                )
                .bind(plan)
                .fetch_one(pool)
                .await?;
                if deals as usize >= n && counted as usize >= n {
                    return Ok(());
                }
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "only {deals} deals and {counted} counted of {n}"
                );
            }
            anyhow::ensure!(Instant::now() < deadline, "the pipeline never went idle");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub(super) async fn pipeline_idle(&self, pool: &sqlx::PgPool) -> anyhow::Result<bool> {
        if !consumer_backlog(&self.js, "SALESPLAN_INTAKE", "distributor-intake")
            .await?
            .is_empty()
            || bulk_backlog(&self.js).await? > 0
        {
            return Ok(false);
        }
        let outbox_empty: bool =
            sqlx::query_scalar("SELECT NOT EXISTS (SELECT 1 FROM deal_service.outbox)")
                .fetch_one(pool)
                .await?;
        if !outbox_empty {
            return Ok(false);
        }
        // Both consumers of deal events: reporting's read model and the distributor's
        // bookkeeping (open deals, contact relations) are part of every lead's work.
        for consumer in ["reporting-deals", "distributor-deals"] {
            if !consumer_backlog(&self.js, "SALESPLAN_DEALS", consumer)
                .await?
                .is_empty()
            {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// A webhook body: one lead into `plan`, its run and contact both named `id`.
pub(super) fn webhook_lead(plan: &str, id: &str) -> serde_json::Value {
    serde_json::json!({"plan_id": plan, "run_id": id, "contact": {"external_id": id}})
}

/// Webhook requests in flight at most during the latency runs.
const MAX_IN_FLIGHT: usize = 2_048;

pub async fn run(env: &Env, config: &BenchConfig) -> anyhow::Result<Vec<Line>> {
    let mut lines = Vec::new();
    let pool = sqlx::PgPool::connect(&env.database_url).await?;
    let funnel = env.token(&[Permission::IntakeWrite])?;

    // Bulk add: the audience "mass action".
    let plan = env.plan("Bench bulk").await?;
    let started = Instant::now();
    let chunks = audience_chunks(&plan.id, "bench", config.leads, 1_000, |i| format!("a-{i}"));
    let mut replies = IntakeServiceClient::new(env.channel(&env.intake_url).await?)
        .add_audience(outgoing(futures::stream::iter(chunks), &funnel))
        .await?
        .into_inner();
    while let Some(reply) = replies.next().await {
        reply?;
    }
    let accepted = started.elapsed();
    env.settled(&pool, &plan.id, config.leads).await?;
    lines.push(Line::rate(
        "intake",
        "AddAudience: leads accepted (stored in JetStream)",
        config.leads,
        accepted,
        "—",
    ));
    lines.push(Line::rate(
        "intake",
        ADD_AUDIENCE_END_TO_END,
        config.leads,
        started.elapsed(),
        "≥ 10,000/s",
    ));

    // The webhook, 64 requests at a time.
    let n = (config.leads / 5).max(1);
    let plan = env.plan("Bench webhook").await?;
    let http = reqwest::Client::new();
    let started = Instant::now();
    futures::stream::iter(0..n)
        .map(|i| {
            let (http, webhook, funnel, plan) = (
                http.clone(),
                env.webhook.clone(),
                funnel.clone(),
                plan.id.clone(),
            );
            async move {
                let body = webhook_lead(&plan, &format!("w-{i}"));
                let status = http
                    .post(&webhook)
                    .bearer_auth(&funnel)
                    .json(&body)
                    .send()
                    .await?
                    .status();
                anyhow::ensure!(status == 202, "webhook answered {status}");
                anyhow::Ok(())
            }
        })
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<Vec<()>>>()?;
    env.settled(&pool, &plan.id, n).await?;
    lines.push(Line::rate(
        "intake",
        WEBHOOK_END_TO_END,
        n,
        started.elapsed(),
        "≥ 10,000/s",
    ));

    // Latency from request to deal at fixed offered rates (open loop).
    for rate in &config.rates {
        let plan = env.plan(&format!("Bench {rate}/s")).await?;
        // One lead through first: the services learn of a new plan from its event, and the
        // first leads of a plan created a moment ago waited for that (300–700 ms at the
        // start of some runs). Funnels fire into plans that exist; that is what is measured.
        let body = webhook_lead(&plan.id, "warm-up");
        http.post(&env.webhook)
            .bearer_auth(&funnel)
            .json(&body)
            .send()
            .await?
            .error_for_status()?;
        env.settled(&pool, &plan.id, 1).await?;
        flush_page_cache("the latency run").await?;
        let total = (*rate * config.rate_seconds) as usize;
        let interval = Duration::from_secs_f64(1.0 / *rate as f64);
        // Open loop, but with a bound on requests in flight: past it (the listener answers
        // slower than leads are offered) the generator waits rather than run out of sockets.
        let in_flight = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
        let start = tokio::time::Instant::now();
        let mut tasks = Vec::with_capacity(total);
        for i in 0..total {
            tokio::time::sleep_until(start + interval * i as u32).await;
            let permit = in_flight.clone().acquire_owned().await?;
            let (http, webhook, funnel, plan) = (
                http.clone(),
                env.webhook.clone(),
                funnel.clone(),
                plan.id.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let _permit = permit;
                let sent = SystemTime::now();
                let body = webhook_lead(&plan, &format!("r-{i}"));
                let reply: serde_json::Value = http
                    .post(&webhook)
                    .bearer_auth(&funnel)
                    .json(&body)
                    .send()
                    .await?
                    .json()
                    .await?;
                anyhow::Ok((
                    reply["intake_id"].as_str().unwrap_or_default().to_owned(),
                    sent,
                ))
            }));
        }
        let sending = start.elapsed();
        let mut sent: HashMap<String, SystemTime> = HashMap::new();
        for task in tasks {
            let (id, at) = task.await??;
            sent.insert(id, at);
        }
        env.settled(&pool, &plan.id, total + 1).await?;
        let created: Vec<(String, time::OffsetDateTime)> = sqlx::query_as(
            "SELECT idempotency_key, created_at FROM deal_service.deals WHERE plan_id = $1",
        )
        .bind(uuid::Uuid::parse_str(&plan.id)?)
        .fetch_all(&pool)
        .await?;
        let samples: Vec<Duration> = created
            .iter()
            .filter_map(|(key, at)| {
                let sent = sent.get(key)?;
                let at = SystemTime::UNIX_EPOCH
                    + Duration::from_nanos(at.unix_timestamp_nanos().max(0) as u64);
                at.duration_since(*sent).ok()
            })
            .collect();
        let target = if *rate == 1_000 {
            "p99 ≤ 250 ms"
        } else {
            "—"
        };
        lines.push(Line::latency(
            "latency",
            format!(
                "request → deal at {rate} leads/s offered ({total} leads, sent in {:.1} s)",
                sending.as_secs_f64()
            ),
            samples,
            target,
        ));
    }

    for (name, rss) in env.peak_rss() {
        let mib = rss.map(|b| b as f64 / (1024.0 * 1024.0)).unwrap_or(0.0);
        lines.push(Line {
            group: "memory",
            what: format!("{name} peak RSS"),
            value: format!("{mib:.1} MiB"),
            target: "< 100 MB".into(),
            json: serde_json::json!({"bytes": rss}),
        });
    }

    Ok(lines)
}
