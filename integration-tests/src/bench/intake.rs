//! The system end to end: the four services as separate processes on this machine.

use std::{
    collections::HashMap,
    time::{Duration, Instant, SystemTime},
};

use futures::StreamExt;
use salesplan_platform::{
    Actor, Permission, auth::TokenIssuer, config::AuthConfig, grpc::outgoing,
};
use salesplan_proto::v1::{
    self as pb, intake_service_client::IntakeServiceClient,
    manager_service_client::ManagerServiceClient,
};

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
    /// The bench's own JetStream context (to read streams as a plain consumer).
    pub fn jetstream(&self) -> &async_nats::jetstream::Context {
        &self.js
    }

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
                // The watch part makes a hundred plans at once.
                ("SALESPLAN_LIMIT_PLAN_CHANGES", "rate=1000,burst=1000"),
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

    /// The resident memory of the service `name` now, in bytes.
    pub fn rss_of(&self, name: &str) -> Option<u64> {
        self.services.iter().find(|s| s.name == name)?.rss()
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

    /// Waits until exactly `n` deals of the plan exist, reporting has counted them, and
    /// every deal event is applied; then checks there are no two deals of one lead and
    /// none left unassigned (every bench plan distributes automatically). Watches the
    /// pipeline's queues (cheap), in the order work flows — intake consumer, outbox, the
    /// two deal-event consumers — and counts rows only once all are empty, so the wait does
    /// not load the database it measures.
    async fn settled(&self, pool: &sqlx::PgPool, plan: &str, n: usize) -> anyhow::Result<()> {
        let plan = uuid::Uuid::parse_str(plan)?;
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            if self.pipeline_idle(pool).await? {
                let (deals, keys, unassigned, counted): (i64, i64, i64, i64) = sqlx::query_as(
                    "SELECT count(*), count(DISTINCT idempotency_key), count(*) FILTER (WHERE manager_id IS NULL),
                            (SELECT count(*) FROM reporting.deals WHERE account_id = 'bench' AND plan_id = $1 AND version > 0)
                     FROM deal_service.deals WHERE account_id = 'bench' AND plan_id = $1",
                )
                .bind(plan)
                .fetch_one(pool)
                .await?;
                anyhow::ensure!(
                    deals as usize <= n && keys == deals && unassigned == 0,
                    "{deals} deals of {n} leads, {keys} distinct keys, {unassigned} unassigned"
                );
                if deals as usize == n && counted as usize == n {
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
    let pool = sqlx::PgPool::connect(&env.database_url).await?;
    let funnel = env.token(&[Permission::IntakeWrite])?;
    let mut lines = bulk_adds(env, &pool, &funnel, config.leads).await?;
    lines.extend(webhook(env, &pool, &funnel, (config.leads / 5).max(1)).await?);
    // Latency from each lead's planned send time to its deal committed and out to the
    // readers, at fixed offered rates (open loop); the page cache flushed first, and once
    // more at 1,000/s for longer without it.
    for rate in &config.rates {
        lines.extend(latency_run(env, &funnel, *rate, config.rate_seconds, 1, true).await?);
    }
    if config.rates.contains(&1_000) {
        lines.extend(latency_run(env, &funnel, 1_000, config.long_seconds, 1, false).await?);
    }
    // Funnels fire into many plans: the intake consumer's batches then hold leads of
    // several plans, each decided under its own plan's lock.
    if let Some(rate) = config.rates.first() {
        let (seconds, plans) = (config.rate_seconds, config.spread_plans);
        lines.extend(latency_run(env, &funnel, *rate, seconds, plans, true).await?);
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

/// The audience "mass action" into two plans: the plain one (round robin over three
/// managers) and one with routing beyond the seed, whose members have weights (3, 2, 1),
/// limits (each above the run's leads: checked at every decision, never reached, so no
/// deal waits) and schedules (working every hour of the week in their own time zones, a
/// vacation in 2199: evaluated at every batch, never binding), and a fourth member who is
/// paused (skipped and explained at every decision): what routing costs the intake.
///
/// A tenth of `n` into a third plan first warms the system up (connections, caches,
/// consumers, stream files: the first add of a run pays for them). Then each plan gets `n`
/// leads in two halves, in the order plain, routed, routed, plain: the tables grow and
/// PostgreSQL's background work (autovacuum, checkpoints) moves through the run, and this
/// order gives both plans the same share of early and late.
async fn bulk_adds(
    env: &Env,
    pool: &sqlx::PgPool,
    funnel: &str,
    n: usize,
) -> anyhow::Result<Vec<Line>> {
    const ROUTED: &str = "AddAudience: end to end, plan with weights, limits and schedules";
    let plain = env.plan("Bench bulk").await?;
    let routed = routed_plan(env, n).await?;
    let warm = (n / 10).max(1);
    bulk_add(
        env,
        pool,
        funnel,
        &env.plan("Bench warm-up").await?,
        ("w", warm),
        warm,
    )
    .await?;
    let half = (n / 2).max(1);
    let first = bulk_add(env, pool, funnel, &plain, ("a", half), half).await?;
    let routed_first = bulk_add(env, pool, funnel, &routed, ("b", half), half).await?;
    let routed_second = bulk_add(env, pool, funnel, &routed, ("c", half), 2 * half).await?;
    let second = bulk_add(env, pool, funnel, &plain, ("d", half), 2 * half).await?;
    let plain = first.plus(&second);
    let routed = routed_first.plus(&routed_second);
    let mut lines = vec![Line::rate(
        "intake",
        "AddAudience: leads accepted (stored in JetStream)",
        plain.leads,
        plain.accepted,
        "—",
    )];
    lines.extend(plain.lines(ADD_AUDIENCE_END_TO_END));
    lines.extend(routed.lines(ROUTED));
    let ratio = routed.per_second() / plain.per_second();
    lines.push(Line {
        group: "intake",
        what: "AddAudience with weights, limits and schedules ÷ without".into(),
        value: format!("{ratio:.2}×"),
        target: "≥ 0.90×".into(),
        json: serde_json::json!({ "ratio": ratio }),
    });
    Ok(lines)
}

/// The plan with routing beyond the seed of [`bulk_adds`]: limits of `n` open deals (the
/// plan's leads in all). Its managers are its own: availability is account-wide, and the
/// plain plan's members must have none.
async fn routed_plan(env: &Env, n: usize) -> anyhow::Result<pb::Plan> {
    let member = |id: &str, weight| pb::PlanMember {
        manager_id: id.into(),
        weight,
        // The API's most (a member takes at most half of the plan's leads, so below
        // 200,000 leads it never binds).
        max_open_deals: n.clamp(1, 100_000) as i32,
    };
    let admin = env.token(&[Permission::PlansAdmin])?;
    let channel = env.channel(&env.deal_url).await?;
    let mut request = plan_request("Bench routed", Mode::Auto, Strategy::RoundRobin, false, &[]);
    request.members = vec![
        member("r1", 3),
        member("r2", 2),
        member("r3", 1),
        member("r4", 1),
    ];
    let plan = create_plan(channel.clone(), &admin, request).await?;
    let mut managers = ManagerServiceClient::new(channel);
    let zones = ["Europe/Berlin", "America/New_York", "Asia/Tokyo"];
    for (manager, zone) in ["r1", "r2", "r3"].iter().zip(zones) {
        let schedule = pb::Schedule {
            time_zone: zone.into(),
            week: (1..=7)
                .map(|weekday| pb::WorkingDay {
                    weekday,
                    hours: vec![pb::WorkingHours {
                        start_minute: 0,
                        end_minute: 1440,
                    }],
                })
                .collect(),
            days_off: vec![pb::DaysOff {
                first: "2199-07-01".into(),
                last: "2199-07-31".into(),
            }],
        };
        managers
            .set_schedule(outgoing(
                pb::SetScheduleRequest {
                    manager_id: (*manager).into(),
                    schedule: Some(schedule),
                },
                &admin,
            ))
            .await?;
    }
    managers
        .set_paused(outgoing(
            pb::SetPausedRequest {
                manager_id: "r4".into(),
                paused: true,
            },
            &admin,
        ))
        .await?;
    Ok(plan)
}

/// What one or more bulk adds took: leads, time until every lead was accepted and until
/// every deal settled, the CPU spent, and PostgreSQL's write-ahead log and commits.
struct BulkRun {
    leads: usize,
    accepted: Duration,
    settled: Duration,
    cpu: super::cpu::Sample,
    wal_bytes: i64,
    commits: i64,
    /// Each part's end-to-end rate, in the order run: how far the rate drifted.
    parts: Vec<f64>,
}

impl BulkRun {
    fn plus(&self, other: &BulkRun) -> BulkRun {
        BulkRun {
            leads: self.leads + other.leads,
            accepted: self.accepted + other.accepted,
            settled: self.settled + other.settled,
            cpu: self.cpu.plus(&other.cpu),
            wal_bytes: self.wal_bytes + other.wal_bytes,
            commits: self.commits + other.commits,
            parts: [self.parts.as_slice(), &other.parts].concat(),
        }
    }

    fn per_second(&self) -> f64 {
        self.leads as f64 / self.settled.as_secs_f64().max(1e-9)
    }

    /// The end-to-end rate `what`, the CPU per lead, and PostgreSQL's writes per lead.
    fn lines(&self, what: &str) -> Vec<Line> {
        let per_lead = |v: i64| v as f64 / self.leads.max(1) as f64;
        let (wal, commits) = (per_lead(self.wal_bytes), per_lead(self.commits));
        let mut rate = Line::rate("intake", what, self.leads, self.settled, "≥ 10,000/s");
        let parts: Vec<String> = self.parts.iter().map(|r| format!("{r:.0}/s")).collect();
        rate.value = format!("{}; parts {}", rate.value, parts.join(", "));
        rate.json["parts_per_second"] = serde_json::json!(self.parts);
        vec![
            rate,
            super::cpu::line(
                &format!("{what} (per lead)"),
                self.leads,
                &super::cpu::Sample::default(),
                &self.cpu,
            ),
            Line {
                group: "cpu",
                what: format!("{what}: PostgreSQL writes per lead"),
                value: format!("{wal:.0} B of WAL, {commits:.2} commits"),
                target: "—".into(),
                json: serde_json::json!({"wal_bytes": wal, "commits": commits}),
            },
        ]
    }
}

/// The write-ahead log's position and the commits of every database so far.
async fn pg_writes(pool: &sqlx::PgPool) -> anyhow::Result<(i64, i64)> {
    Ok(sqlx::query_as(
        "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint,
                (SELECT sum(xact_commit)::bigint FROM pg_stat_database)",
    )
    .fetch_one(pool)
    .await?)
}

/// The audience "mass action": `leads` contacts through one AddAudience stream into
/// `plan` (the run's contacts named by `prefix`), until accepted and until the plan holds
/// `total` settled deals.
async fn bulk_add(
    env: &Env,
    pool: &sqlx::PgPool,
    funnel: &str,
    plan: &pb::Plan,
    (prefix, leads): (&str, usize),
    total: usize,
) -> anyhow::Result<BulkRun> {
    let (wal, commits) = pg_writes(pool).await?;
    let (started, cpu_before) = (Instant::now(), super::cpu::sample());
    let run = format!("bench-{prefix}-{}", plan.id);
    let chunks = audience_chunks(&plan.id, &run, leads, 1_000, |i| format!("{prefix}-{i}"));
    let mut replies = IntakeServiceClient::new(env.channel(&env.intake_url).await?)
        .add_audience(outgoing(futures::stream::iter(chunks), funnel))
        .await?
        .into_inner();
    while let Some(reply) = replies.next().await {
        reply?;
    }
    let accepted = started.elapsed();
    env.settled(pool, &plan.id, total).await?;
    let settled = started.elapsed();
    let cpu = super::cpu::sample().since(&cpu_before);
    // Statistics reach pg_stat_database when a backend's transaction ends, at most a
    // second late: a small error over tens of seconds of leads.
    let (wal_after, commits_after) = pg_writes(pool).await?;
    Ok(BulkRun {
        leads,
        accepted,
        settled,
        cpu,
        wal_bytes: wal_after - wal,
        commits: commits_after - commits,
        parts: vec![leads as f64 / settled.as_secs_f64().max(1e-9)],
    })
}

/// `n` webhook leads, 64 requests at a time, until settled, with the CPU each lead cost.
async fn webhook(
    env: &Env,
    pool: &sqlx::PgPool,
    funnel: &str,
    n: usize,
) -> anyhow::Result<Vec<Line>> {
    let plan = env.plan("Bench webhook").await?;
    let http = reqwest::Client::new();
    let (started, cpu_before) = (Instant::now(), super::cpu::sample());
    futures::stream::iter(0..n)
        .map(|i| {
            let request = http
                .post(&env.webhook)
                .bearer_auth(funnel)
                .json(&webhook_lead(&plan.id, &format!("w-{i}")));
            async move {
                let status = request.send().await?.status();
                anyhow::ensure!(status == 202, "webhook answered {status}");
                anyhow::Ok(())
            }
        })
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<Vec<()>>>()?;
    env.settled(pool, &plan.id, n).await?;
    let cpu_after = super::cpu::sample();
    Ok(vec![
        Line::rate(
            "intake",
            WEBHOOK_END_TO_END,
            n,
            started.elapsed(),
            "≥ 10,000/s",
        ),
        super::cpu::line("webhook end to end (per lead)", n, &cpu_before, &cpu_after),
    ])
}

/// Webhook leads at `rate` a second for `seconds`, each sent at its planned time (a
/// generator that falls behind does not move the plan: the delay counts). Latency runs
/// from the planned send time to the moment the lead's deal event reaches a subscriber:
/// deal-service publishes it after the deal's transaction committed, so by then the deal
/// is readable through the API (checked for every 100th deal). The line says when the
/// offered rate was not achieved.
async fn latency_run(
    env: &Env,
    funnel: &str,
    rate: u64,
    seconds: u64,
    spread: usize,
    flush: bool,
) -> anyhow::Result<Vec<Line>> {
    let pool = sqlx::PgPool::connect(&env.database_url).await?;
    let name = format!("Bench {rate}/s {seconds} s over {spread}");
    let plans = warm_plans(env, &pool, funnel, &name, spread).await?;
    if flush {
        flush_page_cache("the latency run").await?;
    }
    let total = (rate * seconds) as usize;
    let seen = watch_deals(env, total).await?;
    let cpu_before = super::cpu::sample();
    let sent = send_at_rate(env, funnel, &plans, rate, total).await?;
    for (i, plan) in plans.iter().enumerate() {
        // Lead j went to plan j % spread, and each plan had its warm-up lead.
        let leads = total / spread + usize::from(i < total % spread) + 1;
        env.settled(&pool, plan, leads).await?;
    }
    let over = if spread > 1 {
        format!(" over {spread} plans")
    } else {
        String::new()
    };
    // How busy the machine was at this offered rate: queues grow as it nears both cores.
    let cpu = super::cpu::line(
        &format!("webhook at {rate} leads/s for {seconds} s{over} (per lead)"),
        total,
        &cpu_before,
        &super::cpu::sample(),
    );
    let seen = tokio::time::timeout(Duration::from_secs(60), seen).await???;
    let samples: Vec<Duration> = sent
        .planned
        .iter()
        .map(|(key, at)| {
            let seen = seen
                .get(key)
                .ok_or_else(|| anyhow::anyhow!("the deal of lead {key} was never published"))?;
            Ok(seen.duration_since(*at).unwrap_or_default())
        })
        .collect::<anyhow::Result<_>>()?;
    let achieved = if sent.late > 0 {
        format!(
            "; offered rate NOT achieved: {} leads sent over {} ms late, up to {:.0} ms; {:.1} s to send {seconds} s of leads",
            sent.late,
            LATE.as_millis(),
            sent.max_lag.as_secs_f64() * 1e3,
            sent.sending.as_secs_f64()
        )
    } else {
        String::new()
    };
    let cache = if flush {
        "page cache flushed"
    } else {
        "no flush"
    };
    let mut created = HashMap::with_capacity(total + spread);
    for plan in &plans {
        created.extend(created_at(&pool, plan).await?);
    }
    let stages = stages_line(
        &format!("{rate} leads/s for {seconds} s{over}"),
        &sent.planned,
        &sent.answered,
        &created,
        &seen,
    );
    Ok(vec![
        Line::latency(
            "latency",
            format!(
                "planned send → deal committed and published, {rate} leads/s for {seconds} s{over} ({total} leads, {cache}{achieved})"
            ),
            samples,
            if rate == 1_000 {
                "p99 ≤ 100 ms"
            } else {
                "—"
            },
        ),
        stages,
        cpu,
    ])
}

/// `spread` new plans, each with one lead through already: the services learn of a new
/// plan from its event, and the first leads of a plan created a moment ago waited for
/// that. Funnels fire into plans that exist; that is what is measured.
async fn warm_plans(
    env: &Env,
    pool: &sqlx::PgPool,
    funnel: &str,
    name: &str,
    spread: usize,
) -> anyhow::Result<Vec<String>> {
    let mut plans = Vec::with_capacity(spread);
    for i in 0..spread {
        if i > 0 {
            // An account changes its plans at most 5 times a second.
            tokio::time::sleep(Duration::from_millis(210)).await;
        }
        let plan = env.plan(&format!("{name} #{i}")).await?;
        reqwest::Client::new()
            .post(&env.webhook)
            .bearer_auth(funnel)
            .json(&webhook_lead(&plan.id, &format!("warm-up-{i}")))
            .send()
            .await?
            .error_for_status()?;
        env.settled(pool, &plan.id, 1).await?;
        plans.push(plan.id);
    }
    Ok(plans)
}

/// What an open-loop send did: each lead's planned send time and answer time, by intake
/// id, and how long sending all of them took.
struct Sent {
    planned: HashMap<String, SystemTime>,
    answered: HashMap<String, SystemTime>,
    sending: Duration,
    /// Leads sent more than [`LATE`] after their planned time (the generator or the
    /// in-flight bound held them), and the longest such delay.
    late: usize,
    max_lag: Duration,
}

/// A lead dispatched later than this after its planned time was not offered at the rate.
const LATE: Duration = Duration::from_millis(50);

/// Sends `total` webhook leads into `plans` in turn, one every `1 / rate` s from now, each
/// at its planned time; at most [`MAX_IN_FLIGHT`] in flight.
async fn send_at_rate(
    env: &Env,
    funnel: &str,
    plans: &[String],
    rate: u64,
    total: usize,
) -> anyhow::Result<Sent> {
    let http = reqwest::Client::new();
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    // Bounded in flight: past it (the listener answers slower than leads are offered) the
    // generator waits, and its leads' planned times stay where they were.
    let in_flight = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    let (start, wall_start) = (tokio::time::Instant::now(), SystemTime::now());
    let mut tasks = Vec::with_capacity(total);
    let (mut late, mut max_lag) = (0, Duration::ZERO);
    for i in 0..total {
        let offset = interval * i as u32;
        tokio::time::sleep_until(start + offset).await;
        let permit = in_flight.clone().acquire_owned().await?;
        let lag = start.elapsed().saturating_sub(offset);
        if lag > LATE {
            late += 1;
            max_lag = max_lag.max(lag);
        }
        let request = http
            .post(&env.webhook)
            .bearer_auth(funnel)
            .json(&webhook_lead(&plans[i % plans.len()], &format!("r-{i}")));
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            let reply: serde_json::Value = request.send().await?.json().await?;
            let answered = SystemTime::now();
            let id = reply["intake_id"].as_str().unwrap_or_default().to_owned();
            anyhow::ensure!(!id.is_empty(), "the webhook answered {reply}");
            anyhow::Ok((id, wall_start + offset, answered))
        }));
    }
    let mut sent = Sent {
        planned: HashMap::with_capacity(total),
        answered: HashMap::with_capacity(total),
        sending: start.elapsed(),
        late,
        max_lag,
    };
    for task in tasks {
        let (id, at, answer) = task.await??;
        sent.planned.insert(id.clone(), at);
        sent.answered.insert(id, answer);
    }
    Ok(sent)
}

/// When each deal of the plan was created (deal-service sets `created_at` as it builds
/// the deal, before its transaction), by idempotency key (the lead's intake id).
async fn created_at(
    pool: &sqlx::PgPool,
    plan: &str,
) -> anyhow::Result<HashMap<String, SystemTime>> {
    let rows: Vec<(String, time::OffsetDateTime)> = sqlx::query_as(
        "SELECT idempotency_key, created_at FROM deal_service.deals WHERE plan_id = $1",
    )
    .bind(uuid::Uuid::parse_str(plan)?)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(key, at)| (key, SystemTime::from(at)))
        .collect())
}

/// Where a latency run's time went, per lead: planned send → the 202 (the listener: the
/// plan's look-up and the publish); the 202 → the deal built in deal-service (the intake
/// consumer, the decision, the CreateDeals call); built → its event seen (the deal's
/// transaction, the outbox relay, the broker). p50 and p99 of each.
fn stages_line(
    what: &str,
    planned: &HashMap<String, SystemTime>,
    answered: &HashMap<String, SystemTime>,
    created: &HashMap<String, SystemTime>,
    seen: &HashMap<String, SystemTime>,
) -> Line {
    let between = |from: &HashMap<String, SystemTime>, to: &HashMap<String, SystemTime>| {
        let mut spans: Vec<Duration> = from
            .iter()
            .filter_map(|(key, start)| to.get(key)?.duration_since(*start).ok())
            .collect();
        spans.sort();
        let pick = |q: f64| {
            spans
                .get(((spans.len() as f64 * q).ceil() as usize).saturating_sub(1))
                .map_or(0.0, |d| super::ms(*d))
        };
        (pick(0.50), pick(0.99))
    };
    let stages = [
        ("send → 202", between(planned, answered)),
        ("202 → deal built", between(answered, created)),
        ("built → published", between(created, seen)),
    ];
    let value = stages
        .iter()
        .map(|(name, (p50, p99))| format!("{name} p50 {p50:.1} ms, p99 {p99:.1} ms"))
        .collect::<Vec<_>>()
        .join("; ");
    Line {
        group: "latency",
        what: format!("stages of the run at {what}"),
        value,
        target: "—".into(),
        json: serde_json::json!(
            stages
                .iter()
                .map(|(name, (p50, p99))| (
                    name.to_string(),
                    serde_json::json!({"p50_ms": p50, "p99_ms": p99})
                ))
                .collect::<serde_json::Map<_, _>>()
        ),
    }
}

/// Subscribes to the bench account's deal events before the leads are sent: answers, once
/// `total` deals were seen, when each deal (by its idempotency key, the intake id) was
/// first seen. Every 100th is read back through GetDeal at once: seen means readable.
async fn watch_deals(
    env: &Env,
    total: usize,
) -> anyhow::Result<tokio::task::JoinHandle<anyhow::Result<HashMap<String, SystemTime>>>> {
    use prost::Message as _;
    use salesplan_proto::v1::deal_service_client::DealServiceClient;
    let client = async_nats::connect(&env.nats_url).await?;
    let mut events = client
        .subscribe(salesplan_platform::bus::streams::deal_subject(
            "bench", "created",
        ))
        .await?;
    client.flush().await?;
    let mut deals = DealServiceClient::new(env.channel(&env.deal_url).await?);
    let viewer = env.token(&[
        salesplan_platform::Permission::DealsRead,
        salesplan_platform::Permission::ReportsRead,
    ])?;
    Ok(tokio::spawn(async move {
        let mut seen = HashMap::with_capacity(total);
        while seen.len() < total {
            let Some(message) = events.next().await else {
                anyhow::bail!("the deal events ended after {} deals", seen.len());
            };
            let at = SystemTime::now();
            let event = pb::DealEvent::decode(message.payload)?;
            let Some(deal) = event.deal else { continue };
            if seen.len() % 100 == 0 {
                deals
                    .get_deal(outgoing(
                        pb::GetDealRequest {
                            deal_id: deal.id.clone(),
                            ..Default::default()
                        },
                        &viewer,
                    ))
                    .await
                    .map_err(|status| {
                        anyhow::anyhow!("a published deal is not readable: {status}")
                    })?;
            }
            seen.entry(deal.idempotency_key).or_insert(at);
        }
        Ok(seen)
    }))
}
