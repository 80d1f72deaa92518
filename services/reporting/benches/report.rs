//! The report arithmetic: rows by manager with plans inside, from the cells of a busy
//! account (20 managers × 5 plans × 6 reasons).

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use reporting::domain::report::{Cell, Closed, GroupBy, build};
use uuid::Uuid;

fn cells() -> Vec<Cell> {
    let mut cells = Vec::new();
    for manager in 0..20 {
        for plan in 0..5u128 {
            cells.push(Cell {
                plan_id: Uuid::from_u128(plan),
                manager: Some(format!("m{manager}")),
                status: Closed::Won,
                reason: None,
                count: 100,
            });
            for reason in 0..6u128 {
                cells.push(Cell {
                    plan_id: Uuid::from_u128(plan),
                    manager: Some(format!("m{manager}")),
                    status: Closed::Lost,
                    reason: Some(Uuid::from_u128(1_000 + reason)),
                    count: 17,
                });
            }
        }
    }
    cells
}

fn report(c: &mut Criterion) {
    let cells = cells();
    c.bench_function("build/by_manager_with_details", |b| {
        b.iter(|| build(black_box(&cells), GroupBy::Manager, true))
    });
    c.bench_function("build/by_plan", |b| {
        b.iter(|| build(black_box(&cells), GroupBy::Plan, false))
    });
}

criterion_group!(benches, report);
criterion_main!(benches);
