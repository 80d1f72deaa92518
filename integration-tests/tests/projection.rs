//! reporting's projection against real PostgreSQL: whatever the order, repetition and
//! batching of deal events, the report equals a recount from the final deal states.

use std::collections::BTreeMap;

use integration_tests::TestDatabase;
use proptest::prelude::*;
use reporting::{
    domain::{
        deals::{DealRow, Missed},
        period::{Period, Scope},
        report::{Cell, Closed},
    },
    events::deals::DealEvents,
    store::reports::closed_cells,
};
use salesplan_platform::service::Service;
use time::{Duration, OffsetDateTime, macros::datetime};
use uuid::Uuid;

const ACCOUNT: &str = "acme";
const BASE: OffsetDateTime = datetime!(2026-03-01 00:00 UTC);

#[derive(Debug, Clone)]
struct Version {
    status: &'static str,
    manager: Option<&'static str>,
    reason: Option<u128>,
    closed_hours: i64,
}

fn version() -> impl Strategy<Value = Version> {
    (
        0u8..3,
        proptest::option::of(prop_oneof![Just("m1"), Just("m2")]),
        proptest::option::of(1u128..3),
        0i64..96,
    )
        .prop_map(|(status, manager, reason, closed_hours)| Version {
            status: ["open", "won", "lost"][status as usize],
            manager,
            reason,
            closed_hours,
        })
}

fn row(deal: u128, plan: u128, number: i64, v: &Version) -> DealRow {
    let closed = v.status != "open";
    DealRow {
        deal_id: Uuid::from_u128(deal),
        account_id: ACCOUNT.into(),
        plan_id: Uuid::from_u128(100 + plan),
        stage_id: Uuid::from_u128(200),
        manager_id: v.manager.map(str::to_owned),
        status: v.status,
        amount_minor: 100,
        currency: "USD".into(),
        loss_reason_id: v.reason.filter(|_| v.status == "lost").map(Uuid::from_u128),
        stage_before_close_id: closed.then(|| Uuid::from_u128(201)),
        closed_at: closed.then(|| BASE + Duration::hours(v.closed_hours)),
        version: number,
        updated_at: BASE,
        intake_id: None,
        waiting: false,
        assigned_at: None,
        accepted_at: None,
        accept_seconds: None,
        accepted_late: false,
        missed: None,
    }
}

type Counts = BTreeMap<(Uuid, Option<String>, bool, Option<Uuid>), i64>;

fn normalise(cells: Vec<Cell>) -> Counts {
    let mut counts = Counts::new();
    for c in cells {
        *counts
            .entry((c.plan_id, c.manager, c.status == Closed::Won, c.reason))
            .or_default() += c.count;
    }
    counts.retain(|_, n| *n != 0);
    counts
}

fn recount(finals: &[DealRow], period: Period) -> Counts {
    let mut counts = Counts::new();
    for r in finals.iter().filter(|r| r.status != "open") {
        let at = r.closed_at.expect("closed");
        if period.from.is_some_and(|f| at < f) || period.to.is_some_and(|t| at >= t) {
            continue;
        }
        *counts
            .entry((
                r.plan_id,
                r.manager_id.clone(),
                r.status == "won",
                r.loss_reason_id,
            ))
            .or_default() += 1;
    }
    counts
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn any_delivery_order_gives_the_report_of_the_final_states(
        histories in proptest::collection::vec((0u128..2, proptest::collection::vec(version(), 1..6)), 1..6),
        order_seed in any::<u64>(),
        duplicates in proptest::collection::vec(any::<prop::sample::Index>(), 0..8),
        batch in 1usize..5,
        period_hours in (0i64..96, 1i64..96),
    ) {
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        runtime.block_on(async {
            let db = TestDatabase::create().await.expect("database");
            let config = reporting::Config::local(&db.url, "nats://127.0.0.1:1");
            config.migrate().await.expect("migrate");
            let pool = salesplan_platform::db::connect(&config.database, reporting::SCHEMA).await.expect("pool");
            let events = DealEvents::new(pool.clone());

            let mut all = Vec::new();
            let mut finals = Vec::new();
            for (deal, (plan, versions)) in histories.iter().enumerate() {
                for (i, v) in versions.iter().enumerate() {
                    all.push(row(deal as u128 + 1, *plan, i as i64 + 1, v));
                }
                finals.push(row(deal as u128 + 1, *plan, versions.len() as i64, versions.last().expect("a version")));
            }
            for index in &duplicates {
                let again = all[index.index(all.len())].clone();
                all.push(again);
            }
            // A deterministic shuffle from the seed.
            let mut state = order_seed | 1;
            for i in (1..all.len()).rev() {
                state ^= state << 13; state ^= state >> 7; state ^= state << 17;
                all.swap(i, (state % (i as u64 + 1)) as usize);
            }
            for chunk in all.chunks(batch) {
                events.apply(chunk).await.expect("apply");
            }

            let all_time = closed_cells(&pool, ACCOUNT, Period::default(), &Scope::default()).await.expect("cells");
            prop_assert_eq!(normalise(all_time), recount(&finals, Period::default()));
            let (start, length) = period_hours;
            let period = Period {
                from: Some(BASE + Duration::hours(start) + Duration::minutes(30)),
                to: Some(BASE + Duration::hours(start + length)),
            };
            let in_period = closed_cells(&pool, ACCOUNT, period, &Scope::default()).await.expect("cells");
            prop_assert_eq!(normalise(in_period), recount(&finals, period));
            Ok(())
        })?;
    }
}

/// One deal's events of a missed response deadline: m1 got it (hour 1) and did not accept;
/// the distributor gave it to m2 (hour 3), who accepted (hour 4).
fn missed_deadline(deal: u128) -> [DealRow; 3] {
    let open = Version {
        status: "open",
        manager: Some("m1"),
        reason: None,
        closed_hours: 0,
    };
    let at = |hours| BASE + Duration::hours(hours);
    let mut given = row(deal, 0, 1, &open);
    given.assigned_at = Some(at(1));
    let mut taken = row(deal, 0, 2, &open);
    (taken.manager_id, taken.assigned_at) = (Some("m2".into()), Some(at(3)));
    taken.missed = Some(Missed {
        manager_id: "m1".into(),
        assigned_at: Some(at(1)),
    });
    let mut accepted = taken.clone();
    (accepted.version, accepted.missed) = (3, None);
    (accepted.accepted_at, accepted.accept_seconds) = (Some(at(4)), Some(3_600));
    [given, taken, accepted]
}

#[tokio::test]
async fn a_missed_deadline_counts_in_whatever_order_its_events_arrive() -> anyhow::Result<()> {
    let db = TestDatabase::create().await?;
    let config = reporting::Config::local(&db.url, "nats://127.0.0.1:1");
    config.migrate().await?;
    let pool = salesplan_platform::db::connect(&config.database, reporting::SCHEMA).await?;
    let events = DealEvents::new(pool.clone());
    // Every order of the three events, each a deal of its own, one event per batch.
    let orders = [
        [0, 1, 2],
        [0, 2, 1],
        [1, 0, 2],
        [1, 2, 0],
        [2, 0, 1],
        [2, 1, 0],
    ];
    for (deal, order) in orders.iter().enumerate() {
        let rows = missed_deadline(deal as u128 + 1);
        for i in order {
            events.apply(std::slice::from_ref(&rows[*i])).await?;
        }
    }
    let rows =
        reporting::store::responses::report(&pool, ACCOUNT, Period::default(), &[], &[]).await?;
    let got: Vec<(String, i64, i64, i64, Option<f64>)> = rows
        .into_iter()
        .map(|r| {
            (
                r.manager_id,
                r.assigned,
                r.accepted,
                r.missed,
                r.median_seconds,
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("m1".to_owned(), 6, 0, 6, None),
            ("m2".to_owned(), 6, 6, 0, Some(3_600.0)),
        ]
    );
    Ok(())
}

/// ResponseTimes over several accepted deals of one manager: the median and 90th percentile
/// interpolate between values (1, 2, 3, 4 and 10 s read 3 and 7.6), a late acceptance is
/// a miss (and its time still counts), an assignment not accepted counts as assigned only.
#[tokio::test]
async fn response_times_interpolate_and_count_late_acceptances_as_missed() -> anyhow::Result<()> {
    let db = TestDatabase::create().await?;
    let config = reporting::Config::local(&db.url, "nats://127.0.0.1:1");
    config.migrate().await?;
    let pool = salesplan_platform::db::connect(&config.database, reporting::SCHEMA).await?;
    let events = DealEvents::new(pool.clone());
    let open = Version {
        status: "open",
        manager: Some("m1"),
        reason: None,
        closed_hours: 0,
    };
    let mut rows = Vec::new();
    for (deal, took) in [1, 2, 3, 4, 10, -1].into_iter().enumerate() {
        let mut given = row(deal as u128 + 1, 0, 1, &open);
        given.assigned_at = Some(BASE);
        rows.push(given.clone());
        if took >= 0 {
            let mut accepted = given;
            accepted.version = 2;
            accepted.accepted_at = Some(BASE + Duration::seconds(took));
            accepted.accept_seconds = Some(took);
            // The deadline was 5 s: only the 10-second acceptance was late.
            accepted.accepted_late = took > 5;
            rows.push(accepted);
        }
    }
    events.apply(&rows).await?;
    let report =
        reporting::store::responses::report(&pool, ACCOUNT, Period::default(), &[], &[]).await?;
    let got: Vec<_> = report
        .into_iter()
        .map(|r| {
            let (median, p90) = (r.median_seconds, r.p90_seconds);
            (r.manager_id, r.assigned, r.accepted, r.missed, median, p90)
        })
        .collect();
    assert_eq!(got.len(), 1, "{got:?}");
    let (m, assigned, accepted, missed, median, p90) = got[0].clone();
    assert_eq!(
        (m.as_str(), assigned, accepted, missed, median),
        ("m1", 6, 5, 1, Some(3.0))
    );
    assert!(p90.is_some_and(|p| (p - 7.6).abs() < 1e-9), "{p90:?}");
    Ok(())
}
