//! The "by reasons for refusal" report from counted cells: rows by plan or manager,
//! optionally with the other dimension nested, reason lines, percentages, totals.

use std::collections::BTreeMap;

use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Closed {
    Won,
    Lost,
}

/// How many closed deals share plan, manager, status and reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cell {
    pub plan_id: Uuid,
    pub manager: Option<String>,
    pub status: Closed,
    pub reason: Option<Uuid>,
    pub count: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    Plan,
    Manager,
}

/// What a row is about.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Key {
    Plan(Uuid),
    Manager(Option<String>),
    All,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub key: Key,
    pub won: i64,
    pub lost: i64,
    /// Lost deals per reason (`None`: without a reason), most frequent first.
    pub reasons: Vec<(Option<Uuid>, i64)>,
    pub details: Vec<Row>,
}

impl Row {
    pub fn closed(&self) -> i64 {
        self.won + self.lost
    }
}

fn key_of(cell: &Cell, by: GroupBy) -> Key {
    match by {
        GroupBy::Plan => Key::Plan(cell.plan_id),
        GroupBy::Manager => Key::Manager(cell.manager.clone()),
    }
}

fn row(key: Key, cells: &[&Cell]) -> Row {
    let mut won = 0;
    let mut lost = 0;
    let mut reasons: BTreeMap<Option<Uuid>, i64> = BTreeMap::new();
    for cell in cells {
        match cell.status {
            Closed::Won => won += cell.count,
            Closed::Lost => {
                lost += cell.count;
                *reasons.entry(cell.reason).or_default() += cell.count;
            }
        }
    }
    let mut reasons: Vec<(Option<Uuid>, i64)> =
        reasons.into_iter().filter(|(_, n)| *n > 0).collect();
    // Most frequent first; ties in a stable order (no reason last among equals).
    reasons.sort_by(|a, b| {
        b.1.cmp(&a.1)
            .then_with(|| a.0.is_none().cmp(&b.0.is_none()))
            .then(a.0.cmp(&b.0))
    });
    Row {
        key,
        won,
        lost,
        reasons,
        details: Vec::new(),
    }
}

/// Rows (sorted by key), each with nested rows of the other dimension when `details`, and
/// the totals row.
pub fn build(cells: &[Cell], by: GroupBy, details: bool) -> (Vec<Row>, Row) {
    let mut groups: BTreeMap<Key, Vec<&Cell>> = BTreeMap::new();
    for cell in cells.iter().filter(|c| c.count != 0) {
        groups.entry(key_of(cell, by)).or_default().push(cell);
    }
    let other = match by {
        GroupBy::Plan => GroupBy::Manager,
        GroupBy::Manager => GroupBy::Plan,
    };
    let rows = groups
        .into_iter()
        .map(|(key, cells)| {
            let mut r = row(key, &cells);
            if details {
                let mut nested: BTreeMap<Key, Vec<&Cell>> = BTreeMap::new();
                for cell in &cells {
                    nested.entry(key_of(cell, other)).or_default().push(cell);
                }
                r.details = nested.into_iter().map(|(k, c)| row(k, &c)).collect();
            }
            r
        })
        .collect();
    let all: Vec<&Cell> = cells.iter().collect();
    (rows, row(Key::All, &all))
}

/// `part` of `whole` in percent, rounded to one decimal, half away from zero; 0 when
/// `whole` is 0. Integer arithmetic, so 1 of 3 is always 33.3.
pub fn percent(part: i64, whole: i64) -> f64 {
    if whole <= 0 {
        return 0.0;
    }
    // Tenths of a percent: round(part * 1000 / whole), half away from zero.
    let tenths = (2 * part * 1000 + whole) / (2 * whole);
    tenths as f64 / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cell(
        plan: u128,
        manager: Option<&str>,
        status: Closed,
        reason: Option<u128>,
        count: i64,
    ) -> Cell {
        Cell {
            plan_id: Uuid::from_u128(plan),
            manager: manager.map(str::to_owned),
            status,
            reason: reason.map(Uuid::from_u128),
            count,
        }
    }

    #[test]
    fn percentages_round_half_away_from_zero() {
        assert_eq!(percent(1, 3), 33.3);
        assert_eq!(percent(2, 3), 66.7);
        assert_eq!(percent(1, 8), 12.5);
        assert_eq!(percent(1, 16), 6.3, "6.25 rounds up");
        assert_eq!(percent(0, 0), 0.0);
        assert_eq!(percent(5, 5), 100.0);
    }

    #[test]
    fn rows_by_manager_with_plans_inside() {
        let cells = vec![
            cell(1, Some("anna"), Closed::Won, None, 3),
            cell(1, Some("anna"), Closed::Lost, Some(7), 2),
            cell(2, Some("anna"), Closed::Lost, None, 1),
            cell(1, None, Closed::Lost, Some(7), 4),
        ];
        let (rows, totals) = build(&cells, GroupBy::Manager, true);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].key, Key::Manager(None), "unassigned first");
        let anna = &rows[1];
        assert_eq!((anna.won, anna.lost), (3, 3));
        assert_eq!(anna.reasons, vec![(Some(Uuid::from_u128(7)), 2), (None, 1)]);
        let plans: Vec<(Key, i64)> = anna
            .details
            .iter()
            .map(|d| (d.key.clone(), d.lost))
            .collect();
        assert_eq!(
            plans,
            vec![
                (Key::Plan(Uuid::from_u128(1)), 2),
                (Key::Plan(Uuid::from_u128(2)), 1)
            ]
        );
        assert_eq!((totals.won, totals.lost), (3, 7));
    }

    fn arb_cell() -> impl Strategy<Value = Cell> {
        (
            0u128..3,
            proptest::option::of(0u8..3),
            any::<bool>(),
            proptest::option::of(0u128..4),
            0i64..50,
        )
            .prop_map(|(plan, manager, won, reason, count)| Cell {
                plan_id: Uuid::from_u128(plan),
                manager: manager.map(|m| format!("m{m}")),
                status: if won { Closed::Won } else { Closed::Lost },
                reason: if won {
                    None
                } else {
                    reason.map(Uuid::from_u128)
                },
                count,
            })
    }

    proptest! {
        #[test]
        fn counts_always_add_up(cells in proptest::collection::vec(arb_cell(), 0..60), by_plan in any::<bool>()) {
            let by = if by_plan { GroupBy::Plan } else { GroupBy::Manager };
            let (rows, totals) = build(&cells, by, true);
            for r in rows.iter().chain([&totals]) {
                prop_assert_eq!(r.reasons.iter().map(|(_, n)| n).sum::<i64>(), r.lost, "reasons sum to lost");
            }
            for r in &rows {
                prop_assert_eq!(r.details.iter().map(|d| d.won).sum::<i64>(), r.won);
                prop_assert_eq!(r.details.iter().map(|d| d.lost).sum::<i64>(), r.lost);
            }
            prop_assert_eq!(rows.iter().map(|r| r.won).sum::<i64>(), totals.won, "rows sum to totals");
            prop_assert_eq!(rows.iter().map(|r| r.lost).sum::<i64>(), totals.lost);
            let pct = percent(totals.won, totals.closed()) + percent(totals.lost, totals.closed());
            prop_assert!(totals.closed() == 0 || (pct - 100.0).abs() <= 0.1 + 1e-9);
        }
    }
}
