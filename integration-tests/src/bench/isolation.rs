//! One account against another, measured from the victim's side: account B sends one
//! funnel lead every 50 ms, and each is timed from its planned send time to the moment
//! ListDeals first shows its deal; alone, while account A bulk-adds its audience, and
//! while A runs 20 searches at once that match every one of its deals.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::StreamExt;
use salesplan_platform::{Permission, grpc::outgoing};
use salesplan_proto::v1::{
    self as pb, deal_service_client::DealServiceClient, intake_service_client::IntakeServiceClient,
};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{BenchConfig, Line, flush_page_cache, intake::Env, ms, queries::seed};
use crate::api::{audience_chunks, deal_count};

/// B's funnel: one lead every this long.
const EVERY: Duration = Duration::from_millis(50);
/// How often B's reader looks for new deals (the resolution of the latencies), and how
/// many of the newest it reads: at one lead per 50 ms, a few cover every poll.
const POLL: Duration = Duration::from_millis(10);
const NEWEST: i32 = 10;
/// A's searches at once.
const SEARCHERS: usize = 20;

/// The intake id the listener gives a webhook lead (its deal's idempotency key).
fn intake_id(account: &str, plan: &str, run: &str) -> String {
    let lead = pb::Lead {
        plan_id: plan.into(),
        run_id: run.into(),
        ..Default::default()
    };
    tunnel_listener::domain::lead::intake_id(account, &lead).to_string()
}

/// B's funnel: sends one webhook lead every [`EVERY`] until `stop` (at least one), each
/// timed from its planned send time to the first ListDeals that shows its deal.
async fn trickle(
    env: &Env,
    plan: &pb::Plan,
    tag: &str,
    stop: CancellationToken,
) -> anyhow::Result<Trickle> {
    let token = env.token_of("b", &[Permission::IntakeWrite, Permission::DealsRead])?;
    let sightings = Sightings::default();
    let reader_stop = CancellationToken::new();
    let reader = tokio::spawn(watch_deals(
        DealServiceClient::new(env.channel(&env.deal_url).await?),
        plan.id.clone(),
        token,
        sightings.clone(),
        reader_stop.clone(),
    ));
    let accepted = send_leads(env, plan, tag, stop, &sightings).await?;
    let shown = sightings.all_shown(Duration::from_secs(120)).await;
    reader_stop.cancel();
    reader.await?;
    Ok(Trickle {
        shown: shown?,
        accepted,
    })
}

/// What B's reader saw: when each deal (by its key) was first shown, the leads sent
/// (key, planned send time), and the reader's last failure.
#[derive(Clone, Default)]
struct Sightings {
    seen: Arc<Mutex<HashMap<String, Instant>>>,
    planned: Arc<Mutex<Vec<(String, Instant)>>>,
    failed: Arc<Mutex<Option<String>>>,
}

fn locked<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Sightings {
    /// Notes the deals shown now; whether every one of them is new.
    fn see(&self, keys: impl IntoIterator<Item = String>) -> bool {
        let now = Instant::now();
        let mut seen = locked(&self.seen);
        let mut all_new = true;
        for key in keys {
            all_new &= !seen.contains_key(&key);
            seen.entry(key).or_insert(now);
        }
        all_new
    }

    /// Leads not seen a second after their planned send.
    fn overdue(&self) -> Vec<String> {
        let seen = locked(&self.seen);
        locked(&self.planned)
            .iter()
            .filter(|(key, at)| !seen.contains_key(key) && at.elapsed() > Duration::from_secs(1))
            .map(|(key, _)| key.clone())
            .collect()
    }

    /// Each lead's time from its planned send to its deal shown, once every one was shown
    /// (at most `deadline` from now; else how many were not, and the reader's last failure).
    async fn all_shown(&self, deadline: Duration) -> anyhow::Result<Vec<Duration>> {
        let planned = locked(&self.planned).clone();
        let deadline = Instant::now() + deadline;
        loop {
            let seen = locked(&self.seen).clone();
            let missing = planned
                .iter()
                .filter(|(key, _)| !seen.contains_key(key))
                .count();
            if missing == 0 {
                return Ok(planned
                    .iter()
                    .map(|(key, at)| seen[key].saturating_duration_since(*at))
                    .collect());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "{missing} of B's {} deals did not appear; the reader's last failure: {:?}",
                planned.len(),
                locked(&self.failed)
            );
            tokio::time::sleep(POLL).await;
        }
    }
}

/// B's reader: every [`POLL`], the newest deals of the plan, page after page until one
/// reaches deals seen before (after a stall, more than a page may have appeared at once);
/// a lead overdue is looked up by its key. A read that failed (a slow moment of the
/// machine) is tried again at the next poll; [`Sightings::all_shown`] has the deadline and
/// names the last failure.
async fn watch_deals(
    mut deals: DealServiceClient<tonic::transport::Channel>,
    plan_id: String,
    token: String,
    sightings: Sightings,
    stop: CancellationToken,
) {
    let newest = pb::ListDealsRequest {
        filter: Some(pb::DealFilter {
            plan_id,
            ..Default::default()
        }),
        page_size: NEWEST,
        ..Default::default()
    };
    while !stop.is_cancelled() {
        let mut request = newest.clone();
        loop {
            let page = match deals.list_deals(outgoing(request.clone(), &token)).await {
                Ok(page) => page.into_inner(),
                Err(status) => {
                    *locked(&sightings.failed) = Some(status.to_string());
                    break;
                }
            };
            let all_new = sightings.see(page.deals.into_iter().map(|d| d.idempotency_key));
            if !all_new || page.next_page_token.is_empty() {
                break;
            }
            request.page_token = page.next_page_token;
        }
        // A deal committed late, behind newer ones already seen, is not on the newest
        // page: the time it is found by its key is its time.
        for key in sightings.overdue() {
            let request = pb::GetDealRequest {
                idempotency_key: key.clone(),
                ..Default::default()
            };
            if deals.get_deal(outgoing(request, &token)).await.is_ok() {
                sightings.see([key]);
            }
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Sends B's webhook leads, one every [`EVERY`] until `stop` (at least one), noting each
/// as planned; each one's time from its planned send to its 202.
async fn send_leads(
    env: &Env,
    plan: &pb::Plan,
    tag: &str,
    stop: CancellationToken,
    sightings: &Sightings,
) -> anyhow::Result<Vec<Duration>> {
    let http = reqwest::Client::new();
    let token = env.token_of("b", &[Permission::IntakeWrite])?;
    let start = Instant::now() + EVERY;
    let mut sends = Vec::new();
    for i in 0.. {
        let at = start + EVERY * i;
        tokio::time::sleep_until(at).await;
        if i > 0 && stop.is_cancelled() {
            break;
        }
        let run = format!("{tag}-{i}");
        locked(&sightings.planned).push((intake_id("b", &plan.id, &run), at));
        let request = http
            .post(&env.webhook)
            .bearer_auth(&token)
            .json(&super::intake::webhook_lead(&plan.id, &run));
        sends.push(tokio::spawn(async move {
            let status = request.send().await?.status();
            anyhow::ensure!(status == 202, "B's webhook answered {status}");
            anyhow::Ok(Instant::now().saturating_duration_since(at))
        }));
    }
    let mut accepted = Vec::with_capacity(sends.len());
    for send in sends {
        accepted.push(send.await??);
    }
    Ok(accepted)
}

/// B's leads, each from its planned send time to its deal shown, and to its 202.
struct Trickle {
    shown: Vec<Duration>,
    accepted: Vec<Duration>,
}

/// B's funnel for `seconds`.
async fn trickle_for(
    env: &Env,
    plan: &pb::Plan,
    tag: &str,
    seconds: u64,
) -> anyhow::Result<Trickle> {
    let stop = CancellationToken::new();
    let timer = {
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(seconds)).await;
            stop.cancel();
        })
    };
    let samples = trickle(env, plan, tag, stop).await;
    timer.abort();
    samples
}

/// Before each measured run: a checkpoint and the page cache written back, so neither the
/// last run's dirty pages nor a checkpoint it made due fall in the middle of this one (each
/// stalled every commit for a moment, and one stall is a p99 of 200 samples).
async fn settle(env: &Env, before: &str) -> anyhow::Result<()> {
    let pool = sqlx::PgPool::connect(&env.database_url).await?;
    // The last bulk add's events are still relayed and applied after its deals are shown:
    // that work belongs to it, not to the next run.
    let deadline = Instant::now() + Duration::from_secs(600);
    while !env.pipeline_idle(&pool).await? {
        anyhow::ensure!(Instant::now() < deadline, "the pipeline never went idle");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sqlx::query("CHECKPOINT").execute(&pool).await?;
    pool.close().await;
    flush_page_cache(before).await
}

/// Vacuums and analyzes the tables a bulk add writes, so each bulk run starts from the
/// same state (not inheriting the last run's dead rows and its autovacuum), then settles.
async fn vacuum(env: &Env) -> anyhow::Result<()> {
    let pool = sqlx::PgPool::connect(&env.database_url).await?;
    for table in [
        "deal_service.deals",
        "deal_service.deal_history",
        "deal_service.outbox",
        "deal_service.stage_counts",
        "distributor.assignments",
        "distributor.deal_view",
        "distributor.contact_managers",
        "reporting.deals",
    ] {
        sqlx::query(sqlx::AssertSqlSafe(format!("VACUUM ANALYZE {table}")))
            .execute(&pool)
            .await?;
    }
    pool.close().await;
    settle(env, "a bulk run").await
}

/// A's audience: `n` contacts in one bulk add, timed from its start to every deal readable.
async fn bulk_add(env: &Env, plan: &pb::Plan, n: usize) -> anyhow::Result<Duration> {
    // Each run its own audience: a contact seen before would update its relation instead.
    let tag = plan.id.clone();
    let token = env.token_of("a", &[Permission::IntakeWrite, Permission::DealsRead])?;
    let started = Instant::now();
    let chunks = audience_chunks(&plan.id, "isolation", n, 1_000, |i| format!("{tag}-{i}"));
    let mut replies = IntakeServiceClient::new(env.channel(&env.intake_url).await?)
        .add_audience(outgoing(futures::stream::iter(chunks), &token))
        .await?
        .into_inner();
    while let Some(reply) = replies.next().await {
        reply?;
    }
    let deals = env.channel(&env.deal_url).await?;
    let deadline = Instant::now() + Duration::from_secs(600);
    while deal_count(deals.clone(), &token, &plan.id).await? < n as i64 {
        anyhow::ensure!(Instant::now() < deadline, "A's bulk add never finished");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(started.elapsed())
}

/// A's attack: [`SEARCHERS`] callers, each sending a search that matches every deal of A's
/// plan again as soon as the last is answered (or, refused, after the delay the refusal
/// asks for), until `stop`. Returns the searches answered and refused.
async fn searches(
    env: &Env,
    plan: &pb::Plan,
    stop: CancellationToken,
) -> anyhow::Result<(usize, usize)> {
    let token = env.token_of("a", &[Permission::DealsRead])?;
    let deals = DealServiceClient::new(env.channel(&env.deal_url).await?);
    let request = pb::ListDealsRequest {
        filter: Some(pb::DealFilter {
            plan_id: plan.id.clone(),
            search: "person".into(),
            ..Default::default()
        }),
        page_size: 500,
        ..Default::default()
    };
    let tasks: Vec<_> = (0..SEARCHERS)
        .map(|_| {
            let (mut deals, request, token, stop) =
                (deals.clone(), request.clone(), token.clone(), stop.clone());
            tokio::spawn(async move {
                let (mut answered, mut refused) = (0, 0);
                while !stop.is_cancelled() {
                    match deals.list_deals(outgoing(request.clone(), &token)).await {
                        Ok(_) => answered += 1,
                        // A client that does as it is told: waits the RetryInfo delay.
                        Err(status) if status.code() == tonic::Code::ResourceExhausted => {
                            use tonic_types::StatusExt;
                            refused += 1;
                            let delay = status
                                .get_details_retry_info()
                                .and_then(|r| r.retry_delay)
                                .unwrap_or(Duration::from_millis(250));
                            tokio::time::sleep(delay).await;
                        }
                        Err(status) if status.code() == tonic::Code::DeadlineExceeded => {
                            refused += 1
                        }
                        Err(status) => return Err(anyhow::Error::from(status)),
                    }
                }
                anyhow::Ok((answered, refused))
            })
        })
        .collect();
    let (mut answered, mut refused) = (0, 0);
    for task in tasks {
        let (a, r) = task.await??;
        answered += a;
        refused += r;
    }
    Ok((answered, refused))
}

fn p99(samples: &[Duration]) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    sorted
        .get(((sorted.len() as f64 * 0.99).ceil() as usize).saturating_sub(1))
        .copied()
        .unwrap_or_default()
}

fn ratio_line(what: String, ratio: f64, target: &str) -> Line {
    Line {
        group: "isolation",
        what,
        value: format!("{ratio:.2}×"),
        target: target.into(),
        json: serde_json::json!({ "ratio": ratio }),
    }
}

/// The lines of one of B's runs: deal shown, and (for the diagnosis) the 202.
fn b_lines(lines: &mut Vec<Line>, what: String, run: Trickle, target: &str) -> Duration {
    let shown_p99 = p99(&run.shown);
    lines.push(Line::latency(
        "isolation",
        format!(
            "{what}: planned send → deal shown by ListDeals ({} leads)",
            run.shown.len()
        ),
        run.shown,
        target,
    ));
    lines.push(Line::latency(
        "isolation",
        format!("{what}: planned send → 202"),
        run.accepted,
        "—",
    ));
    shown_p99
}

pub async fn run(env: &Env, config: &BenchConfig) -> anyhow::Result<Vec<Line>> {
    let b_plan = env.plan_of("b", "B's funnel").await?;
    // B's runs are twice the latency runs' length: a p99 of 400 samples, not 200.
    let seconds = 2 * config.rate_seconds;
    // The first lead of a new plan waits for the services to learn of it: not measured.
    trickle_for(env, &b_plan, "warm-up", 0).await?;
    settle(env, "B alone").await?;
    let (mut lines, first_solo_p99) = against_bulk(env, &b_plan, config.leads, seconds).await?;
    lines.extend(
        against_searches(
            env,
            &b_plan,
            config.deals.min(200_000),
            seconds,
            first_solo_p99,
        )
        .await?,
    );
    Ok(lines)
}

/// B alone (one webhook lead every 50 ms), then A's bulk add of `n` alone, then both at
/// once; and B's p99 alone.
async fn against_bulk(
    env: &Env,
    b_plan: &pb::Plan,
    n: usize,
    seconds: u64,
) -> anyhow::Result<(Vec<Line>, Duration)> {
    let mut lines = Vec::new();
    let alone = trickle_for(env, b_plan, "alone", seconds).await?;
    let alone_p99 = b_lines(&mut lines, "B alone".into(), alone, "—");
    let a_plan = env.plan_of("a", "A alone").await?;
    vacuum(env).await?;
    let a_alone = bulk_add(env, &a_plan, n).await?;
    lines.push(Line::rate(
        "isolation",
        format!("A alone: bulk add of {n} contacts → every deal shown"),
        n,
        a_alone,
        "—",
    ));
    let a_plan = env.plan_of("a", "A with B").await?;
    vacuum(env).await?;
    let stop = CancellationToken::new();
    let (a_with, b_with) = tokio::join!(
        async {
            let took = bulk_add(env, &a_plan, n).await;
            stop.cancel();
            took
        },
        trickle(env, b_plan, "with-bulk", stop.clone()),
    );
    let (a_with, b_with) = (a_with?, b_with?);
    let with_p99 = b_lines(
        &mut lines,
        format!("B while A bulk-adds {n} contacts"),
        b_with,
        "p99 ≤ 2× alone and ≤ 100 ms",
    );
    lines.push(ratio_line(
        "B's p99 while A bulk-adds ÷ B alone".into(),
        ms(with_p99) / ms(alone_p99).max(1e-9),
        "≤ 2×",
    ));
    lines.push(Line::rate(
        "isolation",
        format!("A's bulk add of {n} contacts while B sends leads"),
        n,
        a_with,
        "≥ 70 % of alone",
    ));
    lines.push(ratio_line(
        "A's bulk throughput with B ÷ alone".into(),
        a_alone.as_secs_f64() / a_with.as_secs_f64().max(1e-9),
        "≥ 0.70×",
    ));
    Ok((lines, alone_p99))
}

/// B alone again, then B while A runs [`SEARCHERS`] searches at once, each matching every
/// one of A's `searched` seeded deals. The ratio is to the lower of B's two solo p99s
/// (`first_solo_p99` the first): a solo run disturbed by the seeding's aftermath (its
/// autovacuum) must not make the searches look harmless.
async fn against_searches(
    env: &Env,
    b_plan: &pb::Plan,
    searched: usize,
    seconds: u64,
    first_solo_p99: Duration,
) -> anyhow::Result<Vec<Line>> {
    let mut lines = Vec::new();
    let pool = sqlx::PgPool::connect(&env.database_url).await?;
    let s_plan = env.plan_of("a", "A searched").await?;
    seed(&pool, "a", &s_plan, searched).await?;
    settle(env, "B alone, again").await?;
    let solo = trickle_for(env, b_plan, "solo-2", seconds).await?;
    let solo_p99 = b_lines(&mut lines, "B alone, again".into(), solo, "—");
    settle(env, "the search run").await?;
    let stop = CancellationToken::new();
    let (attacked, answered) = tokio::join!(
        async {
            let samples = trickle_for(env, b_plan, "searched", seconds).await;
            stop.cancel();
            samples
        },
        searches(env, &s_plan, stop.clone()),
    );
    let (attacked, (answered, refused)) = (attacked?, answered?);
    let attacked_p99 = b_lines(
        &mut lines,
        format!(
            "B while A runs {SEARCHERS} searches at once matching all {searched} of its deals \
             ({answered} answered, {refused} refused in {seconds} s)"
        ),
        attacked,
        "p99 ≤ 2× alone",
    );
    lines.push(ratio_line(
        "B's p99 under A's searches ÷ B alone (the lower of its two solo runs)".into(),
        ms(attacked_p99) / ms(solo_p99.min(first_solo_p99)).max(1e-9),
        "≤ 2×",
    ));
    Ok(lines)
}
