//! The reporting read model built the way production builds it: the deal events that made
//! the seeded deals (one `created` per deal, one `closed` per closed deal, as deal-service's
//! relay publishes them) go to the deals stream, the running reporting service applies
//! them, then `reporting rebuild` builds the model again from the stream; LossReasons is
//! timed over the result, beside the naive GROUP BY it replaces.

use std::time::{Duration, Instant};

use async_nats::jetstream;
use prost::Message as _;
use salesplan_platform::{bus::streams, grpc::outgoing};
use salesplan_proto::v1::{self as pb, report_service_client::ReportServiceClient};

use super::{Line, intake::Env, queries::timed};
use crate::chaos::sibling_binary;

/// Deals read from deal-service per page while publishing.
const PAGE: i64 = 10_000;
/// Publishes awaiting their acks at once.
const IN_FLIGHT: usize = 5_000;

pub(super) async fn run(
    env: &Env,
    pool: &sqlx::PgPool,
    account: &str,
    token: &str,
    repeats: usize,
) -> anyhow::Result<Vec<Line>> {
    let deals: i64 =
        sqlx::query_scalar("SELECT count(*) FROM deal_service.deals WHERE account_id = $1")
            .bind(account)
            .fetch_one(pool)
            .await?;
    let started = Instant::now();
    let events = publish_deal_events(env, pool, account).await?;
    let published = started.elapsed();
    // Reporting's consumer of the deals stream has received and acked every event.
    let js = jetstream::new(crate::nats::connect(&env.nats_url).await?);
    crate::nats::wait_until_consumed(
        &js,
        (streams::DEALS.name, "reporting-deals"),
        Duration::from_secs(3_600),
        Duration::from_millis(100),
    )
    .await?;
    let projected = started.elapsed();
    check_model(pool, account, deals).await?;

    let started = Instant::now();
    let replayed = rebuild(env).await?;
    let rebuilt = started.elapsed();
    check_model(pool, account, deals).await?;
    // The totals too, not only each deal's version: closed deals by day, plan, manager
    // and reason against deal-service's.
    reporting(env, "verify").await?;

    let mut lines = vec![
        Line::rate(
            "reports",
            format!("publishing {events} deal events ({deals} deals), acks pipelined"),
            events,
            published,
            "—",
        ),
        Line::rate(
            "reports",
            format!(
                "deal events → read model complete, live projection (from the first publish), {events} events"
            ),
            events,
            projected,
            "—",
        ),
        Line::rate(
            "reports",
            format!(
                "`reporting rebuild` (empty, replay the whole deals stream, apply), {replayed} events"
            ),
            replayed,
            rebuilt,
            "—",
        ),
    ];
    lines.extend(loss_reasons(env, pool, account, token, repeats).await?);
    Ok(lines)
}

/// Publishes, for every deal of `account` (keyset pages in id order), the events a relay
/// would have published: `created` (version 1, open, the first stage) and, for a closed
/// deal, `closed` (its row as it is). Answers how many.
async fn publish_deal_events(
    env: &Env,
    pool: &sqlx::PgPool,
    account: &str,
) -> anyhow::Result<usize> {
    let js = jetstream::new(crate::nats::connect(&env.nats_url).await?);
    let mut after = uuid::Uuid::nil();
    let mut pending = std::collections::VecDeque::with_capacity(IN_FLIGHT);
    let mut published = 0;
    loop {
        let rows: Vec<SeededDeal> = sqlx::query_as(
            "SELECT id, plan_id, stage_id, stage_before_close_id, status, manager_id,
                amount_minor, currency, loss_reason_id, version, created_at, updated_at,
                closed_at, idempotency_key
             FROM deal_service.deals WHERE account_id = $1 AND id > $2 ORDER BY id LIMIT $3",
        )
        .bind(account)
        .bind(after)
        .bind(PAGE)
        .fetch_all(pool)
        .await?;
        let Some(last) = rows.last() else { break };
        after = last.id;
        for row in &rows {
            for (kind, deal) in row.events() {
                let event = pb::DealEvent {
                    event_id: uuid::Uuid::now_v7().to_string(),
                    account_id: account.to_owned(),
                    kind: kind as i32,
                    deal: Some(deal),
                    ..Default::default()
                };
                let subject = streams::deal_subject(account, &kind_token(kind));
                let mut headers = async_nats::HeaderMap::new();
                headers.insert("Nats-Msg-Id", event.event_id.as_str());
                pending.push_back(
                    js.publish_with_headers(subject, headers, event.encode_to_vec().into())
                        .await?,
                );
                published += 1;
                if pending.len() >= IN_FLIGHT
                    && let Some(ack) = pending.pop_front()
                {
                    ack.await?;
                }
            }
        }
    }
    for ack in pending {
        ack.await?;
    }
    Ok(published)
}

fn kind_token(kind: pb::deal_event::Kind) -> String {
    kind.as_str_name()
        .trim_start_matches("KIND_")
        .to_ascii_lowercase()
}

#[derive(sqlx::FromRow)]
struct SeededDeal {
    id: uuid::Uuid,
    plan_id: uuid::Uuid,
    stage_id: uuid::Uuid,
    stage_before_close_id: Option<uuid::Uuid>,
    status: String,
    manager_id: Option<String>,
    amount_minor: i64,
    currency: String,
    loss_reason_id: Option<uuid::Uuid>,
    version: i64,
    created_at: time::OffsetDateTime,
    updated_at: time::OffsetDateTime,
    closed_at: Option<time::OffsetDateTime>,
    idempotency_key: String,
}

impl SeededDeal {
    /// The events that leave this deal as it is: created, then closed when it is.
    fn events(&self) -> Vec<(pb::deal_event::Kind, pb::Deal)> {
        let stamp = salesplan_proto::time::timestamp;
        let now = pb::Deal {
            id: self.id.to_string(),
            plan_id: self.plan_id.to_string(),
            stage_id: self.stage_id.to_string(),
            status: match self.status.as_str() {
                "won" => pb::DealStatus::Won,
                "lost" => pb::DealStatus::Lost,
                _ => pb::DealStatus::Open,
            } as i32,
            manager_id: self.manager_id.clone(),
            amount: Some(pb::Money {
                amount_minor: self.amount_minor,
                currency: self.currency.clone(),
            }),
            loss_reason_id: self.loss_reason_id.map(|id| id.to_string()),
            stage_before_close_id: self.stage_before_close_id.map(|id| id.to_string()),
            version: self.version,
            created_at: Some(stamp(self.created_at)),
            updated_at: Some(stamp(self.updated_at)),
            closed_at: self.closed_at.map(stamp),
            idempotency_key: self.idempotency_key.clone(),
            ..Default::default()
        };
        let Some(open_stage) = self.stage_before_close_id else {
            return vec![(pb::deal_event::Kind::Created, now)];
        };
        let created = pb::Deal {
            stage_id: open_stage.to_string(),
            status: pb::DealStatus::Open as i32,
            loss_reason_id: None,
            stage_before_close_id: None,
            version: 1,
            updated_at: Some(stamp(self.created_at)),
            closed_at: None,
            ..now.clone()
        };
        vec![
            (pb::deal_event::Kind::Created, created),
            (pb::deal_event::Kind::Closed, now),
        ]
    }
}

/// Reporting holds every deal of `account` at its version in deal-service.
async fn check_model(pool: &sqlx::PgPool, account: &str, deals: i64) -> anyhow::Result<()> {
    let current: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM reporting.deals r JOIN deal_service.deals d ON d.id = r.deal_id
         WHERE r.account_id = $1 AND r.version = d.version",
    )
    .bind(account)
    .fetch_one(pool)
    .await?;
    anyhow::ensure!(
        current == deals,
        "the read model holds {current} of {deals} deals at their version"
    );
    Ok(())
}

/// `reporting rebuild` against the bench's database and broker: the deal events it
/// replayed (the whole stream: the intake runs' events too).
async fn rebuild(env: &Env) -> anyhow::Result<usize> {
    let stdout = reporting(env, "rebuild").await?;
    // "rebuilt the read model from N plan events and M deal events"
    stdout
        .split_whitespace()
        .rev()
        .nth(2)
        .and_then(|m| m.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("cannot read the count in {stdout:?}"))
}

/// Runs `reporting <command>` against the bench's database and broker; its output. A
/// command that fails (`verify` finding a difference) fails the bench.
async fn reporting(env: &Env, command: &str) -> anyhow::Result<String> {
    let output = tokio::process::Command::new(sibling_binary("reporting")?)
        .arg(command)
        .env("SALESPLAN_ENV", "development")
        .env("DATABASE_URL", &env.database_url)
        .env("NATS_URL", &env.nats_url)
        .env("RUST_LOG", "warn")
        .output()
        .await?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    anyhow::ensure!(
        output.status.success(),
        "reporting {command} failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(stdout)
}

/// LossReasons by manager with details, and the same numbers by one GROUP BY over the deals.
async fn loss_reasons(
    env: &Env,
    pool: &sqlx::PgPool,
    account: &str,
    token: &str,
    repeats: usize,
) -> anyhow::Result<Vec<Line>> {
    let reports = ReportServiceClient::new(env.channel(&env.reporting_url).await?);
    let report = timed(repeats, || {
        let request = outgoing(
            pb::LossReasonsRequest {
                group_by: pb::ReportGrouping::Manager as i32,
                with_details: true,
                ..Default::default()
            },
            token,
        );
        let mut reports = reports.clone();
        async move {
            reports.loss_reasons(request).await?;
            anyhow::Ok(())
        }
    })
    .await?;
    let naive = timed(repeats, || async {
        sqlx::query(
            "SELECT coalesce(manager_id, ''), plan_id, status, loss_reason_id, count(*)
             FROM deal_service.deals WHERE account_id = $1 AND status IN ('won', 'lost')
             GROUP BY 1, 2, 3, 4",
        )
        .bind(account)
        .fetch_all(pool)
        .await?;
        anyhow::Ok(())
    })
    .await?;
    let closed = same_numbers(&reports, pool, account, token).await?;
    Ok(vec![
        Line::latency(
            "reports",
            format!(
                "LossReasons by manager with details, {closed} closed deals (read model built by the projection)"
            ),
            report,
            "p99 ≤ 20 ms",
        ),
        Line::latency(
            "reports",
            "the same numbers by one GROUP BY over the deals",
            naive,
            "≥ 5× slower",
        ),
    ])
}

/// LossReasons by manager answers what a recount of deal-service's deals gives: won and
/// lost per manager. Returns how many closed deals it covers.
async fn same_numbers(
    reports: &ReportServiceClient<tonic::transport::Channel>,
    pool: &sqlx::PgPool,
    account: &str,
    token: &str,
) -> anyhow::Result<i64> {
    let answer = reports
        .clone()
        .loss_reasons(outgoing(
            pb::LossReasonsRequest {
                group_by: pb::ReportGrouping::Manager as i32,
                ..Default::default()
            },
            token,
        ))
        .await?
        .into_inner();
    let mut reported: Vec<(String, i64, i64)> = answer
        .rows
        .iter()
        .map(|row| (row.key.clone(), row.won, row.lost))
        .filter(|(_, won, lost)| won + lost > 0)
        .collect();
    reported.sort();
    let recounted: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT coalesce(manager_id, ''), count(*) FILTER (WHERE status = 'won'),
                count(*) FILTER (WHERE status = 'lost')
         FROM deal_service.deals WHERE account_id = $1 AND status IN ('won', 'lost')
         GROUP BY 1 ORDER BY 1",
    )
    .bind(account)
    .fetch_all(pool)
    .await?;
    anyhow::ensure!(
        reported == recounted,
        "LossReasons by manager {reported:?} differs from a recount {recounted:?}"
    );
    Ok(recounted.iter().map(|(_, won, lost)| won + lost).sum())
}
