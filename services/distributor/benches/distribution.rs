//! The pure strategies: one decision over a plan of 20 managers.

use std::{collections::HashMap, hint::black_box};

use criterion::{Criterion, criterion_group, criterion_main};
use distributor::domain::distribution::{
    Away, Cursor, Lead, Mode, PlanSettings, Strategy, away_at, decide,
};
use salesplan_platform::schedule::{Availability, Hours, Schedule};

fn plan(strategy: Strategy, prefer_related: bool) -> PlanSettings {
    PlanSettings {
        mode: Mode::Auto {
            prefer_related,
            strategy,
        },
        managers: (0..20).map(|i| format!("manager-{i}")).collect(),
        // Weighted, as the costlier case: credits are kept and compared per member.
        weights: (0..20).map(|i| 1 + i % 3).collect(),
        // Limits well above the counts: checked for every member, never binding.
        caps: vec![1_000_000; 20],
        keep_related: false,
        response: None,
        archived: false,
    }
}

/// Five of the twenty members unavailable: skipped and explained on every decision.
fn some_away() -> Away {
    (0..5)
        .map(|i| {
            (
                format!("manager-{}", i * 4),
                "unavailable: paused".to_owned(),
            )
        })
        .collect()
}

fn strategies(c: &mut Criterion) {
    let away = some_away();
    let mut open: HashMap<String, i64> = (0..20)
        .map(|i| (format!("manager-{i}"), i * 7 % 13))
        .collect();
    for (name, plan) in [
        ("round_robin", plan(Strategy::RoundRobin, false)),
        ("least_open_deals", plan(Strategy::LeastOpenDeals, false)),
        ("random", plan(Strategy::Random, false)),
    ] {
        let mut cursor = Cursor::default();
        c.bench_function(&format!("decide/{name}"), |b| {
            b.iter(|| {
                decide(
                    black_box(&plan),
                    &Lead::default(),
                    &mut cursor,
                    &mut open,
                    &away,
                    12_345,
                )
            })
        });
    }
    let related = plan(Strategy::LeastOpenDeals, true);
    let lead = Lead {
        previous_manager: Some("manager-17".into()),
        ..Default::default()
    };
    let mut cursor = Cursor::default();
    c.bench_function("decide/related_first", |b| {
        b.iter(|| decide(black_box(&related), &lead, &mut cursor, &mut open, &away, 0))
    });
}

/// What a batch's decisions pay once: who of 20 members with office hours in their own
/// time zones (two days off each) is unavailable now.
fn availability(c: &mut Criterion) {
    let managers: Vec<String> = (0..20).map(|i| format!("manager-{i}")).collect();
    let zones = ["Europe/Berlin", "America/New_York", "Asia/Tokyo", "UTC"];
    let known: HashMap<String, Availability> = managers
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let mut week: [Vec<Hours>; 7] = Default::default();
            for day in week.iter_mut().take(5) {
                *day = vec![
                    Hours {
                        start: 540,
                        end: 780,
                    },
                    Hours {
                        start: 840,
                        end: 1080,
                    },
                ];
            }
            let schedule = Schedule {
                time_zone: zones[i % zones.len()].into(),
                week,
                days_off: Vec::new(),
            };
            (
                m.clone(),
                Availability {
                    schedule,
                    paused: false,
                },
            )
        })
        .collect();
    let at = time::OffsetDateTime::now_utc();
    c.bench_function("away_at/20_members_with_schedules", |b| {
        b.iter(|| away_at(black_box(&managers), &known, at))
    });
}

criterion_group!(benches, strategies, availability);
criterion_main!(benches);
