//! The pure strategies: one decision over a plan of 20 managers.

use std::{collections::HashMap, hint::black_box};

use criterion::{Criterion, criterion_group, criterion_main};
use distributor::domain::distribution::{Cursor, Lead, Mode, PlanSettings, Strategy, decide};

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
        archived: false,
    }
}

fn strategies(c: &mut Criterion) {
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
        b.iter(|| decide(black_box(&related), &lead, &mut cursor, &mut open, 0))
    });
}

criterion_group!(benches, strategies);
criterion_main!(benches);
