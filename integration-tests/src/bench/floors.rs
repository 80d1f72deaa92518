//! The physical limits: raw JetStream and PostgreSQL, and the smallest pipeline between.

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull};
use bytes::Bytes;
use futures::StreamExt;
use uuid::Uuid;

use super::{BenchConfig, Line, intake::Env};

const DEALS_LIKE: &str = "CREATE TABLE IF NOT EXISTS bench_rows (
    id uuid PRIMARY KEY, account_id text NOT NULL, plan_id uuid NOT NULL, title text NOT NULL,
    amount_minor bigint NOT NULL, idempotency_key text NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now())";

/// The message the minimal pipeline carries: an intake event as the listener publishes
/// one (`n`: its number, also its contact and idempotency key).
fn intake_event(n: usize) -> Bytes {
    use prost::Message as _;
    use salesplan_proto::v1 as pb;
    let id = format!("lead-{n}");
    pb::IntakeEvent {
        intake_id: Uuid::now_v7().to_string(),
        account_id: "bench".into(),
        received_at: Some(salesplan_proto::time::now()),
        source: pb::IntakeSource::Webhook as i32,
        lead: Some(pb::Lead {
            plan_id: Uuid::nil().to_string(),
            run_id: id.clone(),
            contact: Some(pb::Contact {
                external_id: id,
                ..Default::default()
            }),
            ..Default::default()
        }),
        assign_to_manager_id: None,
        plan_version: 1,
        availability_version: 0,
        availability_sequence: 0,
    }
    .encode_to_vec()
    .into()
}

async fn publish_pipelined(
    js: &jetstream::Context,
    subject: &str,
    n: usize,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut pending = Vec::with_capacity(5_000);
    for i in 0..n {
        pending.push(
            js.publish(format!("{subject}.{}", i % 16), intake_event(i))
                .await?,
        );
        if pending.len() == 5_000 {
            for ack in pending.drain(..) {
                ack.await?;
            }
        }
    }
    for ack in pending {
        ack.await?;
    }
    Ok(started.elapsed())
}

pub async fn run(env: &Env, config: &BenchConfig) -> anyhow::Result<Vec<Line>> {
    let n = config.floor;
    let js = jetstream::new(async_nats::connect(&env.nats_url).await?);
    js.create_stream(jetstream::stream::Config {
        name: "BENCH".into(),
        subjects: vec!["bench.>".into()],
        ..Default::default()
    })
    .await?;
    let pool = sqlx::PgPool::connect(&env.database_url).await?;
    sqlx::query(DEALS_LIKE).execute(&pool).await?;
    let mut lines = jetstream_floors(&js, n).await?;
    lines.extend(insert_floors(&pool, n).await?);
    lines.extend(schema_floor(&pool, n).await?);
    lines.push(minimal_pipeline(&js, &pool, n).await?);
    Ok(lines)
}

/// JetStream alone: `n` intake events published with pipelined acks, then pulled and
/// acked one by one.
async fn jetstream_floors(js: &jetstream::Context, n: usize) -> anyhow::Result<Vec<Line>> {
    let took = publish_pipelined(js, "bench.raw", n).await?;
    let mut lines = vec![Line::rate(
        "floor",
        "JetStream publish, acks pipelined (5,000 in flight)",
        n,
        took,
        "—",
    )];
    let consumer = js
        .get_stream("BENCH")
        .await?
        .create_consumer(pull::Config {
            durable_name: Some("bench".into()),
            ..Default::default()
        })
        .await?;
    let started = Instant::now();
    let mut seen = 0;
    while seen < n {
        let mut batch = consumer
            .fetch()
            .max_messages(1_000)
            .expires(Duration::from_secs(1))
            .messages()
            .await?;
        while let Some(message) = batch.next().await {
            message
                .map_err(|e| anyhow::anyhow!(e))?
                .ack()
                .await
                .map_err(|e| anyhow::anyhow!(e))?;
            seen += 1;
        }
    }
    lines.push(Line::rate(
        "floor",
        "JetStream pull consume, fetch 1,000, ack each",
        n,
        started.elapsed(),
        "—",
    ));
    Ok(lines)
}

/// PostgreSQL alone, into a table shaped like the deals (primary key, unique idempotency
/// key): one row per transaction, then 500 rows per statement.
async fn insert_floors(pool: &sqlx::PgPool, n: usize) -> anyhow::Result<Vec<Line>> {
    let single = n.min(20_000);
    let plan = Uuid::new_v4();
    let started = Instant::now();
    for i in 0..single {
        sqlx::query("INSERT INTO bench_rows (id, account_id, plan_id, title, amount_minor, idempotency_key) VALUES ($1, 'bench', $2, $3, 100, $3)")
            .bind(Uuid::now_v7())
            .bind(plan)
            .bind(format!("Deal {i}"))
            .execute(pool)
            .await?;
    }
    let mut lines = vec![Line::rate(
        "floor",
        "PostgreSQL, 1-row INSERT per transaction, 1 connection",
        single,
        started.elapsed(),
        "—",
    )];
    let started = Instant::now();
    for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
        let keys: Vec<String> = chunk.iter().map(|i| format!("row-{i}")).collect();
        insert_batch(pool, plan, &keys).await?;
    }
    lines.push(Line::rate(
        "floor",
        "PostgreSQL, 500-row INSERT via UNNEST",
        n,
        started.elapsed(),
        "—",
    ));
    Ok(lines)
}

/// What storing a deal costs with the indexes the queries need: copies of deal-service's
/// tables (every index), a deal and its history row per lead, 500 per transaction,
/// nothing else; two connections, one per core. Copies, dropped afterwards, so the intake
/// runs later do not inherit their vacuum and index debt.
async fn schema_floor(pool: &sqlx::PgPool, n: usize) -> anyhow::Result<Vec<Line>> {
    for statement in [
        "DROP SCHEMA IF EXISTS bench_floor CASCADE",
        "CREATE SCHEMA bench_floor",
        "CREATE TABLE bench_floor.deals (LIKE deal_service.deals INCLUDING ALL)",
        "CREATE TABLE bench_floor.deal_history (LIKE deal_service.deal_history INCLUDING ALL)",
    ] {
        sqlx::query(statement).execute(pool).await?;
    }
    let plan = Uuid::new_v4();
    let (started, cpu_before) = (Instant::now(), super::cpu::sample());
    let half = n.div_ceil(1_000) * 500;
    let writer = |from: usize, to: usize| async move {
        for first in (from..to).step_by(500) {
            deal_rows_batch(pool, plan, first, 500.min(to - first)).await?;
        }
        anyhow::Ok(())
    };
    tokio::try_join!(writer(0, half.min(n)), writer(half.min(n), n))?;
    let lines = vec![
        Line::rate("floor", super::SCHEMA_FLOOR, n, started.elapsed(), "—"),
        super::cpu::line(
            "deal-service's schema floor (per deal)",
            n,
            &cpu_before,
            &super::cpu::sample(),
        ),
    ];
    sqlx::query("DROP SCHEMA bench_floor CASCADE")
        .execute(pool)
        .await?;
    Ok(lines)
}

/// The minimal pipeline: `n` events published while one consumer decodes them and inserts
/// their rows idempotently, 500 at a time, acking each after its insert.
async fn minimal_pipeline(
    js: &jetstream::Context,
    pool: &sqlx::PgPool,
    n: usize,
) -> anyhow::Result<Line> {
    sqlx::query("TRUNCATE bench_rows").execute(pool).await?;
    let consumer = js
        .get_stream("BENCH")
        .await?
        .create_consumer(pull::Config {
            durable_name: Some("bench-pipeline".into()),
            filter_subject: "bench.pipe.>".into(),
            ..Default::default()
        })
        .await?;
    let plan = Uuid::new_v4();
    let started = Instant::now();
    let publisher = {
        let js = js.clone();
        tokio::spawn(async move { publish_pipelined(&js, "bench.pipe", n).await })
    };
    let mut inserted = 0;
    while inserted < n {
        let mut batch = consumer
            .fetch()
            .max_messages(500)
            .expires(Duration::from_millis(200))
            .messages()
            .await?;
        let mut messages = Vec::new();
        while let Some(message) = batch.next().await {
            messages.push(message.map_err(|e| anyhow::anyhow!(e))?);
        }
        if messages.is_empty() {
            continue;
        }
        insert_batch(pool, plan, &lead_keys(&messages)?).await?;
        for message in &messages {
            message.ack().await.map_err(|e| anyhow::anyhow!(e))?;
        }
        inserted += messages.len();
    }
    publisher.await??;
    Ok(Line::rate(
        "floor",
        super::MINIMAL_PIPELINE,
        n,
        started.elapsed(),
        "—",
    ))
}

/// As the product does: each message decoded, its deal keyed by its lead.
fn lead_keys(messages: &[jetstream::Message]) -> anyhow::Result<Vec<String>> {
    messages
        .iter()
        .map(|m| {
            use prost::Message as _;
            let event = salesplan_proto::v1::IntakeEvent::decode(m.payload.clone())?;
            Ok(event.lead.map(|l| l.run_id).unwrap_or_default())
        })
        .collect()
}

/// One row per key, idempotent as deal-service's insert is: a key already there is
/// skipped (`ON CONFLICT DO NOTHING` on its unique index), ids UUIDv7.
async fn insert_batch(pool: &sqlx::PgPool, plan: Uuid, keys: &[String]) -> anyhow::Result<()> {
    let ids: Vec<Uuid> = keys.iter().map(|_| Uuid::now_v7()).collect();
    sqlx::query(
        "INSERT INTO bench_rows (id, account_id, plan_id, title, amount_minor, idempotency_key)
         SELECT i, 'bench', $2, k, 100, k FROM UNNEST($1::uuid[], $3::text[]) AS x(i, k)
         ON CONFLICT (idempotency_key) DO NOTHING",
    )
    .bind(&ids)
    .bind(plan)
    .bind(keys)
    .execute(pool)
    .await?;
    Ok(())
}

/// `n` deals (numbered from `first`) in the copy of `deal_service.deals`, and their history
/// rows, in one transaction.
async fn deal_rows_batch(
    pool: &sqlx::PgPool,
    plan: Uuid,
    first: usize,
    n: usize,
) -> anyhow::Result<()> {
    // UUIDv7, as deal-service's ids (PostgreSQL 16 has no generator of its own).
    let ids: Vec<Uuid> = (0..n).map(|_| Uuid::now_v7()).collect();
    let mut tx = pool.begin().await?;
    sqlx::query(
        "WITH new AS (
             INSERT INTO bench_floor.deals (id, account_id, plan_id, stage_id, status, manager_id,
                contact_external_id, contact_name, contact_email, contact_phone, contact_phone_digits,
                title, amount_minor, currency, idempotency_key, version, created_at, updated_at)
             SELECT ($4::uuid[])[(i - $2 + 1)::int], 'floor', $1, $1, 'open', 'm' || (i % 20), 'ext-' || i,
                'Person ' || i, 'person' || i || '@example.com', '+1 555 ' || lpad(i::text, 7, '0'),
                '1555' || lpad(i::text, 7, '0'), 'Person ' || i, 100, 'USD', 'floor-' || i, 1, now(), now()
             FROM generate_series($2::bigint, $3::bigint) AS i
             RETURNING id)
         INSERT INTO bench_floor.deal_history (account_id, deal_id, at, actor_id, action)
         SELECT 'floor', id, now(), 'floor', 'created' FROM new",
    )
    .bind(plan)
    .bind(first as i64)
    .bind((first + n) as i64 - 1)
    .bind(&ids)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}
