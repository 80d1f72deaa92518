//! WatchDeals under load (issue 21): `watchers` watches of one account held open on one
//! deal-service replica while deal changes flow at a fixed rate for a few seconds.
//!
//! Each change is an UpdateDeal of one of the account's deals, sent at its planned time
//! (open loop: a slow answer does not slow the offered rate). Latency runs from a
//! change's planned send time to the moment a watcher holds it (decoded, in the bench
//! process) — commit, relay, broker, feed, store lookup of the contact, filter, send and
//! the client's decoding all inside it. Memory is deal-service's resident set, sampled
//! while the changes flow, less its resident set before the watches opened.
//!
//! Two shapes: watchers spread over the account's plans (each watches one plan, the
//! changes spread over the plans: a board per team), and every watcher watching the whole
//! account (each change to every watcher). The floor is the same changes at the same rate
//! read by one plain consumer of the deal events' stream, with no watch at all: commit,
//! relay and broker, decoded in the bench process — what any watcher's latency contains.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use salesplan_platform::{Permission, grpc::outgoing};
use salesplan_proto::v1::{self as pb, deal_service_client::DealServiceClient};

use super::{BenchConfig, Line, intake::Env};

/// Watches per HTTP/2 connection (below the server's streams-per-connection limit).
const PER_CONNECTION: usize = 100;
const ACCOUNT: &str = "bench-watch";

/// When each change (deal, version) was planned to be sent.
type Planned = Arc<Mutex<HashMap<(String, i64), Instant>>>;

pub async fn run(env: &Env, config: &BenchConfig) -> anyhow::Result<Vec<Line>> {
    let boss = env.token_of(ACCOUNT, &[Permission::DealsEditAll])?;
    let mut plans = Vec::new();
    for i in 0..config.watch_plans.max(1) {
        plans.push(env.plan_of(ACCOUNT, &format!("Watched {i}")).await?);
    }
    // Each deal is changed at most once every two seconds: its changes never overlap.
    let count = (config.watch_rate.max(1) as usize * 2).max(plans.len());
    let mut client = DealServiceClient::new(env.channel(&env.deal_url).await?);
    let mut deals = Vec::new();
    for chunk in (0..count).collect::<Vec<_>>().chunks(500) {
        let request = pb::CreateDealsRequest {
            deals: chunk
                .iter()
                .map(|i| pb::CreateDealRequest {
                    plan_id: plans[i % plans.len()].id.clone(),
                    contact: Some(pb::Contact {
                        name: format!("Watched {i}"),
                        external_id: format!("watched-{i}"),
                        ..Default::default()
                    }),
                    idempotency_key: format!("watched-{i}"),
                    ..Default::default()
                })
                .collect(),
        };
        let made = client
            .create_deals(outgoing(request, &boss))
            .await?
            .into_inner();
        deals.extend(made.results.into_iter().filter_map(|r| r.deal));
    }
    anyhow::ensure!(
        deals.len() == count,
        "{} of {count} deals made",
        deals.len()
    );
    let mut lines = vec![floor(env, config, &mut deals).await?];
    for whole_account in [false, true] {
        let what = if whole_account {
            format!(
                "{} watchers of the whole account; {} changes/s",
                config.watchers, config.watch_rate
            )
        } else {
            format!(
                "{} watchers of one account, each of one of {} plans; {} changes/s over the plans",
                config.watchers,
                plans.len(),
                config.watch_rate
            )
        };
        let shape = Shape {
            what,
            whole_account,
        };
        lines.extend(run_shape(env, config, &shape, &plans, &mut deals).await?);
    }
    Ok(lines)
}

struct Shape {
    what: String,
    whole_account: bool,
}

/// The floor: the same changes at the same rate, no watch open, read by one ordered
/// consumer of the account's deal events from where the stream ends now.
async fn floor(env: &Env, config: &BenchConfig, deals: &mut [pb::Deal]) -> anyhow::Result<Line> {
    use async_nats::jetstream::consumer::{DeliverPolicy, pull::OrderedConfig};
    use futures::StreamExt as _;
    use prost::Message as _;
    let boss = env.token_of(ACCOUNT, &[Permission::DealsEditAll])?;
    let stream = env
        .jetstream()
        .get_stream(salesplan_platform::bus::streams::DEALS.name)
        .await?;
    let mut messages = stream
        .create_consumer(OrderedConfig {
            filter_subject: salesplan_platform::bus::streams::deal_subjects_of(ACCOUNT),
            deliver_policy: DeliverPolicy::New,
            ..Default::default()
        })
        .await?
        .messages()
        .await?;
    let planned: Planned = Arc::default();
    let stop = tokio_util::sync::CancellationToken::new();
    let reader = {
        let (stop, planned) = (stop.clone(), planned.clone());
        tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let message = tokio::select! {
                    () = stop.cancelled() => return latencies,
                    message = messages.next() => message,
                };
                let held = Instant::now();
                let Some(Ok(message)) = message else {
                    return latencies;
                };
                let Ok(event) = pb::DealEvent::decode(message.payload.clone()) else {
                    continue;
                };
                let Some(deal) = event.deal else { continue };
                let at = planned
                    .lock()
                    .ok()
                    .and_then(|p| p.get(&(deal.id, deal.version)).copied());
                latencies.extend(at.map(|at| held.saturating_duration_since(at)));
            }
        })
    };
    let (_, sent, _) = drive(env, config, &boss, deals, planned).await?;
    stop.cancel();
    let samples = reader.await?;
    anyhow::ensure!(
        samples.len() == sent,
        "the floor's consumer read {} of {sent} changes",
        samples.len()
    );
    Ok(Line::latency(
        "watch",
        format!(
            "floor: {} changes/s read by one plain consumer of the deal events (no watch): planned send → held",
            config.watch_rate
        ),
        samples,
        "the floor of every watch line",
    ))
}

/// One run: the watches, the changes at their rate; the lines.
async fn run_shape(
    env: &Env,
    config: &BenchConfig,
    shape: &Shape,
    plans: &[pb::Plan],
    deals: &mut [pb::Deal],
) -> anyhow::Result<Vec<Line>> {
    let boss = env.token_of(ACCOUNT, &[Permission::DealsEditAll])?;
    let reader = env.token_of(ACCOUNT, &[Permission::DealsRead])?;
    let before = env.rss_of("deal-service").unwrap_or(0);
    let planned: Planned = Arc::default();
    let (stop, watchers) = open(env, config, shape, plans, &reader, planned.clone()).await?;
    let (peak, sent, took) = drive(env, config, &boss, deals, planned).await?;
    stop.cancel();
    let mut samples = Vec::new();
    let (mut cut, mut got, mut all) = (0, 0, 0);
    for watcher in watchers {
        let (latencies, changes, was_cut) = watcher.await?;
        got += latencies.len();
        all += changes;
        cut += usize::from(was_cut);
        samples.extend(latencies);
    }
    let expected = if shape.whole_account {
        sent * config.watchers
    } else {
        sent * config.watchers / plans.len()
    };
    let extra = peak.saturating_sub(before) as f64 / (1024.0 * 1024.0);
    Ok(vec![
        Line::latency(
            "watch",
            format!("{}: planned send → held by a watcher", shape.what),
            samples,
            "p99 ≤ 100 ms",
        ),
        Line {
            group: "watch",
            what: format!("{}: deliveries", shape.what),
            value: format!(
                "{got} of {expected} ({:.0}/s; {all} changes got in all); {cut} watchers cut off; {sent} changes in {:.1} s",
                got as f64 / took.as_secs_f64(),
                took.as_secs_f64()
            ),
            target: "all, none cut off".into(),
            json: serde_json::json!({"delivered": got, "expected": expected, "cut_off": cut, "changes": sent}),
        },
        Line {
            group: "watch",
            what: format!(
                "{}: deal-service memory beyond its own before the watches",
                shape.what
            ),
            value: format!("{extra:.1} MiB"),
            target: "< 100 MB".into(),
            json: serde_json::json!({"bytes": peak.saturating_sub(before)}),
        },
    ])
}

/// Per watcher: how late each planned change reached it, the changes it got in all, and
/// whether its watch ended early (cut off).
type WatcherTask = tokio::task::JoinHandle<(Vec<Duration>, usize, bool)>;

/// The watches, each on its own task recording how late each change reached it; all
/// open (their answers' headers in) when this returns.
async fn open(
    env: &Env,
    config: &BenchConfig,
    shape: &Shape,
    plans: &[pb::Plan],
    reader: &str,
    planned: Planned,
) -> anyhow::Result<(tokio_util::sync::CancellationToken, Vec<WatcherTask>)> {
    let stop = tokio_util::sync::CancellationToken::new();
    let mut tasks = Vec::new();
    let mut channel = env.channel(&env.deal_url).await?;
    for i in 0..config.watchers {
        if i > 0 && i % PER_CONNECTION == 0 {
            channel = env.channel(&env.deal_url).await?;
        }
        let request = pb::WatchDealsRequest {
            plan_id: if shape.whole_account {
                String::new()
            } else {
                plans[i % plans.len()].id.clone()
            },
            ..Default::default()
        };
        let mut stream = DealServiceClient::new(channel.clone())
            .watch_deals(outgoing(request, reader))
            .await?
            .into_inner();
        let (stop, planned) = (stop.clone(), planned.clone());
        tasks.push(tokio::spawn(async move {
            let (mut latencies, mut changes) = (Vec::new(), 0);
            loop {
                let message = tokio::select! {
                    () = stop.cancelled() => return (latencies, changes, false),
                    message = stream.message() => message,
                };
                let held = Instant::now();
                let change = match message {
                    Ok(Some(m)) => match m.item {
                        Some(pb::watch_deals_response::Item::Change(c)) => c,
                        _ => continue,
                    },
                    Ok(None) | Err(_) => return (latencies, changes, true),
                };
                changes += 1;
                let Some(deal) = change.deal else { continue };
                let planned_at = planned
                    .lock()
                    .ok()
                    .and_then(|p| p.get(&(deal.id, deal.version)).copied());
                if let Some(at) = planned_at {
                    latencies.push(held.saturating_duration_since(at));
                }
            }
        }));
    }
    Ok((stop, tasks))
}

/// The changes at `config.watch_rate` a second for `config.rate_seconds`, each sent at
/// its planned time; then a wait for the stragglers. Answers deal-service's peak
/// resident set while they flowed, the changes sent, and how long they took.
async fn drive(
    env: &Env,
    config: &BenchConfig,
    boss: &str,
    deals: &mut [pb::Deal],
    planned: Planned,
) -> anyhow::Result<(u64, usize, Duration)> {
    let rate = config.watch_rate.max(1);
    let total = (rate * config.rate_seconds.max(1)) as usize;
    let client = DealServiceClient::new(env.channel(&env.deal_url).await?);
    let started = Instant::now();
    let mut calls = Vec::with_capacity(total);
    let mut peak = 0;
    for n in 0..total {
        let at = started + Duration::from_secs_f64(n as f64 / rate as f64);
        tokio::time::sleep_until(at.into()).await;
        let count = deals.len();
        let deal = &mut deals[n % count];
        planned
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?
            .insert((deal.id.clone(), deal.version + 1), at);
        let request = pb::UpdateDealRequest {
            deal_id: deal.id.clone(),
            expected_version: deal.version,
            // A title the deal never had: a repeated one would be answered as done,
            // unchanged (no event).
            title: Some(format!("change {} of {}", deal.version + 1, deal.id)),
            ..Default::default()
        };
        deal.version += 1;
        let (mut client, boss) = (client.clone(), boss.to_owned());
        calls.push(tokio::spawn(async move {
            client
                .update_deal(outgoing(request, &boss))
                .await
                .map(|_| ())
        }));
        if n % 100 == 0 {
            peak = peak.max(env.rss_of("deal-service").unwrap_or(0));
        }
    }
    for call in calls {
        call.await??;
    }
    // Stragglers: a second after the last answer, sampling memory meanwhile.
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        peak = peak.max(env.rss_of("deal-service").unwrap_or(0));
    }
    Ok((peak, total, started.elapsed()))
}
