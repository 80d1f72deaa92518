//! Reporting's record of how far each consumer is (read your writes), against real
//! PostgreSQL: the position moves only over a contiguous run, a message retried holds it
//! back, and the messages handled beyond the gap count once the gap is filled.

use integration_tests::TestDatabase;
use reporting::events::progress::{DEALS_CONSUMER, Tracked};
use salesplan_platform::{
    bus::{BatchHandler, Delivery, Outcome},
    service::Service,
};

/// A handler that answers what it is told, per stream position.
struct Scripted(std::collections::HashMap<u64, Outcome>);

impl BatchHandler for Scripted {
    async fn handle(&self, batch: &[Delivery]) -> Vec<Outcome> {
        batch
            .iter()
            .map(|d| {
                self.0
                    .get(&d.stream_sequence)
                    .cloned()
                    .unwrap_or(Outcome::Done)
            })
            .collect()
    }
}

const MAX_DELIVER: i64 = 3;

/// Stream position `seq`; the ones from 100 up at their last delivery.
fn delivery(seq: u64) -> Delivery {
    Delivery {
        subject: "salesplan.deals.v1.acme.created".into(),
        payload: Default::default(),
        headers: None,
        delivered: if seq >= 100 { MAX_DELIVER } else { 1 },
        stream_sequence: seq,
    }
}

async fn position(pool: &sqlx::PgPool) -> anyhow::Result<(i64, Vec<i64>)> {
    let through: i64 =
        sqlx::query_scalar("SELECT applied_through FROM consumer_progress WHERE consumer = $1")
            .bind(DEALS_CONSUMER)
            .fetch_one(pool)
            .await?;
    let ahead: Vec<i64> =
        sqlx::query_scalar("SELECT seq FROM consumer_ahead WHERE consumer = $1 ORDER BY seq")
            .bind(DEALS_CONSUMER)
            .fetch_all(pool)
            .await?;
    Ok((through, ahead))
}

#[tokio::test]
async fn the_position_moves_over_contiguous_runs_only() -> anyhow::Result<()> {
    let db = TestDatabase::create().await?;
    let config = reporting::Config::local(&db.url, "nats://127.0.0.1:1");
    config.migrate().await?;
    let pool = salesplan_platform::db::connect(&config.database, reporting::SCHEMA).await?;
    let handle = |outcomes: Vec<(u64, Outcome)>, seqs: Vec<u64>| {
        let tracked = Tracked::new(
            Scripted(outcomes.into_iter().collect()),
            pool.clone(),
            DEALS_CONSUMER,
            MAX_DELIVER,
        );
        async move {
            let batch: Vec<Delivery> = seqs.into_iter().map(delivery).collect();
            tracked.handle(&batch).await
        }
    };

    // The first batch starts the record just before it.
    handle(vec![], vec![11, 12, 13]).await;
    assert_eq!(position(&pool).await?, (13, vec![]));
    // 14 is retried: 15 and 16 wait beyond the gap; a rejected (dead-lettered) 17 counts.
    let outcomes = handle(
        vec![
            (14, Outcome::Retry("database down".into())),
            (17, Outcome::Reject("undecodable".into())),
        ],
        vec![14, 15, 16, 17],
    )
    .await;
    assert!(matches!(outcomes[0], Outcome::Retry(_)));
    assert_eq!(position(&pool).await?, (13, vec![15, 16, 17]));
    // Handled again, 14 fills the gap: the position reaches 17 and nothing waits.
    handle(vec![], vec![14]).await;
    assert_eq!(position(&pool).await?, (17, vec![]));
    // A message delivered twice moves nothing back.
    handle(vec![], vec![12, 18]).await;
    assert_eq!(position(&pool).await?, (18, vec![]));
    // Still failing at its last delivery, a message is dead-lettered by the consumer loop:
    // it counts, or the position would wait for it for ever.
    handle(vec![], (19..100).collect()).await;
    handle(
        vec![(100, Outcome::Retry("still down".into()))],
        vec![100, 101],
    )
    .await;
    assert_eq!(position(&pool).await?, (101, vec![]));
    Ok(())
}
