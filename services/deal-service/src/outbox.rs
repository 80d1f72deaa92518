//! The outbox relay: publishes the events written by committed transactions to JetStream,
//! in id order, and deletes them once JetStream has stored them.
//!
//! One relay at a time publishes (a transaction-scoped advisory lock), so several replicas
//! never reorder events. A crash between publish and delete re-publishes the same message
//! ids: JetStream drops them within its duplicate window, and consumers are idempotent.

use std::{collections::HashMap, time::Duration};

use salesplan_platform::{
    bus::{Bus, Outgoing},
    telemetry,
};
use sqlx::{PgPool, Row, postgres::PgListener};
use tokio_util::sync::CancellationToken;

use crate::store::OUTBOX_CHANNEL;

/// Rows published per transaction.
pub const BATCH: i64 = 1_000;
/// Arbitrary, fixed: the advisory lock key of "the outbox relay of deal-service".
const RELAY_LOCK: i64 = 0x5A1E_0B0C;

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("bus: {0}")]
    Bus(#[from] salesplan_platform::bus::BusError),
}

/// Runs until `shutdown`, then publishes what is left (while it can) and returns.
pub async fn run(pool: PgPool, bus: Bus, shutdown: CancellationToken) {
    let meter = salesplan_platform::telemetry::meter("deal-service");
    let published = meter.u64_counter("salesplan.outbox.published").build();
    let backlog = meter
        .u64_gauge("salesplan.outbox.backlog")
        .with_description("Events written but not yet published")
        .build();
    let mut measured = tokio::time::Instant::now();
    let mut listener = listen(&pool).await;
    loop {
        if measured.elapsed() >= Duration::from_secs(5) {
            measured = tokio::time::Instant::now();
            if let Ok(n) = sqlx::query_scalar::<_, i64>("SELECT count(*) FROM outbox")
                .fetch_one(&pool)
                .await
            {
                backlog.record(n as u64, &[]);
            }
        }
        let batch = publish_batch(&pool, &bus).await;
        if let Ok(n) = &batch {
            published.add(*n as u64, &[]);
        }
        match batch {
            Ok(n) if n as i64 == BATCH => continue,
            Ok(_) => {}
            Err(err) => {
                tracing::warn!(error = %err, "outbox relay failed, retrying");
                if wait(&mut None, &shutdown, Duration::from_secs(1)).await {
                    break;
                }
                continue;
            }
        }
        if wait(&mut listener, &shutdown, Duration::from_millis(500)).await {
            break;
        }
    }
    // Drain: the events of requests that completed during shutdown.
    while let Ok(n) = publish_batch(&pool, &bus).await {
        if n == 0 {
            break;
        }
    }
    tracing::info!("outbox relay stopped");
}

async fn listen(pool: &PgPool) -> Option<PgListener> {
    let mut listener = PgListener::connect_with(pool).await.ok()?;
    listener.listen(OUTBOX_CHANNEL).await.ok()?;
    Some(listener)
}

/// Waits for a notification, the poll interval, or shutdown (then `true`).
async fn wait(
    listener: &mut Option<PgListener>,
    shutdown: &CancellationToken,
    poll: Duration,
) -> bool {
    let notified = async {
        match listener.as_mut() {
            Some(l) => {
                if l.recv().await.is_err() {
                    // Lost the connection: poll until it is back.
                    *listener = None;
                    tokio::time::sleep(poll).await;
                }
            }
            None => tokio::time::sleep(poll).await,
        }
    };
    tokio::select! {
        _ = notified => false,
        _ = tokio::time::sleep(poll) => false,
        _ = shutdown.cancelled() => true,
    }
}

/// Publishes up to [`BATCH`] events; returns how many.
pub async fn publish_batch(pool: &PgPool, bus: &Bus) -> Result<usize, RelayError> {
    let mut tx = pool.begin().await?;
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
        .bind(RELAY_LOCK)
        .fetch_one(&mut *tx)
        .await?;
    if !locked {
        return Ok(0);
    }
    let rows = sqlx::query(
        "SELECT id, subject, message_id, payload, headers FROM outbox ORDER BY id LIMIT $1",
    )
    .bind(BATCH)
    .fetch_all(&mut *tx)
    .await?;
    if rows.is_empty() {
        return Ok(0);
    }
    let mut ids = Vec::with_capacity(rows.len());
    let mut messages = Vec::with_capacity(rows.len());
    for row in &rows {
        ids.push(row.try_get::<i64, _>("id")?);
        let mut message = Outgoing::new(
            row.try_get("subject")?,
            row.try_get::<String, _>("message_id")?,
            row.try_get::<Vec<u8>, _>("payload")?,
        );
        let headers: sqlx::types::Json<HashMap<String, String>> = row.try_get("headers")?;
        // The relay's own span, child of the change that wrote the event; the event then
        // carries the relay span as its parent.
        let span = tracing::info_span!("outbox.relay", otel.name = "outbox.relay", subject = %message.subject);
        telemetry::set_parent(&span, telemetry::extract_from_pairs(&headers.0));
        span.in_scope(|| telemetry::inject_into_nats(&mut message.headers));
        messages.push(message);
    }
    bus.publish_all(messages).await?;
    sqlx::query("DELETE FROM outbox WHERE id = ANY($1)")
        .bind(&ids)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(ids.len())
}
