//! Operator commands: `reporting rebuild` (the read model again from the event streams)
//! and `reporting verify` (the read model against deal-service's data).

use std::{collections::BTreeMap, time::Duration};

use anyhow::Context as _;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull};
use futures::StreamExt;
use salesplan_platform::{
    bus::{BatchHandler, Bus, Delivery, Outcome, streams},
    config::{DatabaseConfig, Secret},
    db,
};
use uuid::Uuid;

use crate::{
    MIGRATOR, SCHEMA,
    domain::deals::TotalKey,
    events::{deals::DealEvents, plans::PlanEvents},
    store,
};

/// Empties the read model and replays the plan and deal streams from their first message.
/// Safe while the service runs: every event applies idempotently. Returns the events
/// applied (plans, deals).
pub async fn rebuild(config: &crate::Config) -> anyhow::Result<(u64, u64)> {
    db::migrate(&config.database, SCHEMA, &MIGRATOR).await?;
    let pool = db::connect(&config.database, SCHEMA).await?;
    store::maintenance::empty(&pool).await?;
    let bus = Bus::connect(&config.common.nats, "reporting-rebuild").await?;
    bus.ensure_streams(&streams::ALL).await?;
    let plans = replay(&bus, &streams::PLANS, &PlanEvents::new(pool.clone())).await?;
    let deals = replay(&bus, &streams::DEALS, &DealEvents::new(pool)).await?;
    bus.close().await;
    Ok((plans, deals))
}

async fn replay<H: BatchHandler>(
    bus: &Bus,
    spec: &streams::StreamSpec,
    handler: &H,
) -> anyhow::Result<u64> {
    let mut stream = bus
        .jetstream()
        .get_stream(spec.name)
        .await
        .with_context(|| format!("stream {}", spec.name))?;
    let last = stream.info().await?.state.last_sequence;
    if last == 0 {
        return Ok(0);
    }
    let name = format!("reporting-rebuild-{}", Uuid::new_v4().simple());
    let consumer: PullConsumer = stream
        .create_consumer(pull::Config {
            name: Some(name.clone()),
            deliver_policy: DeliverPolicy::All,
            ack_policy: AckPolicy::None,
            inactive_threshold: Duration::from_secs(60),
            ..Default::default()
        })
        .await
        .map_err(|e| anyhow::anyhow!("create replay consumer: {e}"))?;
    let mut applied = 0;
    let mut seen = 0;
    while seen < last {
        let mut messages = consumer
            .fetch()
            .max_messages(1_000)
            .expires(Duration::from_secs(2))
            .messages()
            .await
            .map_err(|e| anyhow::anyhow!("fetch: {e}"))?;
        let mut batch = Vec::new();
        while let Some(message) = messages.next().await {
            let message = message.map_err(|e| anyhow::anyhow!("fetch: {e}"))?;
            batch.push(Delivery::from(&message));
        }
        if batch.is_empty() {
            anyhow::bail!("{}: stream ended at {seen} of {last} messages", spec.name);
        }
        seen = batch
            .iter()
            .map(|d| d.stream_sequence)
            .max()
            .unwrap_or(seen);
        for (delivery, outcome) in batch.iter().zip(handler.handle(&batch).await) {
            match outcome {
                Outcome::Done => applied += 1,
                Outcome::Reject(reason) => {
                    tracing::warn!(seq = delivery.stream_sequence, %reason, "skipped an event that cannot be applied")
                }
                Outcome::Retry(reason) => {
                    anyhow::bail!("cannot apply event {}: {reason}", delivery.stream_sequence)
                }
            }
        }
    }
    if let Err(err) = stream.delete_consumer(&name).await {
        tracing::debug!(error = %err, "replay consumer already gone");
    }
    Ok(applied)
}

/// Every difference between the read model and deal-service's deals (`deal_database_url`,
/// schema `deal_service`): closed deals missing, extra or different, and kept totals that
/// disagree with the deals they count. Empty when they agree.
pub async fn verify(
    config: &crate::Config,
    deal_database_url: &str,
) -> anyhow::Result<(usize, Vec<String>)> {
    // An operator's tool that reads every closed deal: no statement timeout.
    let unbounded = DatabaseConfig {
        statement_timeout: std::time::Duration::ZERO,
        ..config.database.clone()
    };
    let reporting = db::connect(&unbounded, SCHEMA).await?;
    let source = db::connect(
        &DatabaseConfig {
            url: Secret::new(deal_database_url),
            ..unbounded
        },
        "deal_service",
    )
    .await?;
    let (truth, seen) = tokio::try_join!(
        store::maintenance::closed(&source, "id"),
        store::maintenance::closed(&reporting, "deal_id")
    )?;
    let mut differences = Vec::new();
    for (id, deal) in &truth {
        match seen.get(id) {
            None => differences.push(format!(
                "deal {id}: {} in deal-service, not counted by reporting",
                deal.status
            )),
            Some(counted) if counted != deal => differences.push(format!(
                "deal {id}: deal-service {}/{}/{}, reporting {}/{}/{}",
                deal.status,
                deal.manager,
                deal.reason,
                counted.status,
                counted.manager,
                counted.reason
            )),
            Some(_) => {}
        }
    }
    for id in seen.keys().filter(|id| !truth.contains_key(id)) {
        differences.push(format!(
            "deal {id}: counted by reporting, not closed in deal-service"
        ));
    }

    // The kept totals must equal a recount of the read model's deals.
    let mut recount: BTreeMap<TotalKey, i64> = BTreeMap::new();
    for deal in seen.values() {
        *recount
            .entry((
                deal.account.clone(),
                deal.plan,
                deal.manager.clone(),
                deal.status.clone(),
                deal.reason,
            ))
            .or_default() += 1;
    }
    let kept = store::maintenance::kept_totals(&reporting).await?;
    compare_totals("totals", &kept, &recount, &mut differences);
    // And the kept daily totals (the reports' whole days) a recount by closing day.
    let (kept, recount) = tokio::try_join!(
        store::maintenance::kept_daily(&reporting),
        store::maintenance::recount_daily(&reporting)
    )?;
    compare_totals("daily totals", &kept, &recount, &mut differences);
    Ok((truth.len(), differences))
}

/// Adds to `differences` every key whose kept count is not the recount (each key once,
/// whether one side or both have it).
fn compare_totals<K: Ord + std::fmt::Debug>(
    what: &str,
    kept: &BTreeMap<K, i64>,
    recount: &BTreeMap<K, i64>,
    differences: &mut Vec<String>,
) {
    let keys: std::collections::BTreeSet<&K> = recount.keys().chain(kept.keys()).collect();
    for key in keys {
        let (counted, held) = (
            recount.get(key).copied().unwrap_or(0),
            kept.get(key).copied().unwrap_or(0),
        );
        if counted != held {
            differences.push(format!("{what} {key:?}: {held} kept, {counted} counted"));
        }
    }
}
