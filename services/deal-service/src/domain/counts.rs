//! Kept deal counts: how many deals each (plan, stage, manager, currency) holds and what
//! they sum to. Every change adds its deltas in its own transaction, so a board's totals
//! read a few dozen rows whether the plan has a thousand deals or a million.

use std::collections::BTreeMap;

use uuid::Uuid;

use super::deal::Deal;

/// The cell a deal is counted in. An unassigned deal's manager is `""` (managers are
/// never empty: `convert::manager_id` refuses blank ones).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CountKey {
    pub account_id: String,
    pub plan_id: Uuid,
    pub stage_id: Uuid,
    pub manager_id: String,
    pub currency: String,
}

impl CountKey {
    fn of(deal: &Deal) -> Self {
        Self {
            account_id: deal.account_id.clone(),
            plan_id: deal.plan_id,
            stage_id: deal.stage_id,
            manager_id: deal.manager_id.clone().unwrap_or_default(),
            currency: deal.amount.currency.clone(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CountDelta {
    pub deals: i64,
    /// Wider than one amount: a stage deletion moves every deal of the stage at once.
    pub amount_minor: i128,
}

/// What `changes` (each the deal before, `None` for a new one, and after) do to the
/// counts: one entry per cell that changes, in key order — the order rows are locked in,
/// so two transactions never wait on each other in a cycle.
pub fn count_deltas<'a>(
    changes: impl IntoIterator<Item = (Option<&'a Deal>, &'a Deal)>,
) -> BTreeMap<CountKey, CountDelta> {
    let mut deltas: BTreeMap<CountKey, CountDelta> = BTreeMap::new();
    for (before, after) in changes {
        if let Some(before) = before {
            let cell = deltas.entry(CountKey::of(before)).or_default();
            cell.deals -= 1;
            cell.amount_minor -= i128::from(before.amount.amount_minor);
        }
        let cell = deltas.entry(CountKey::of(after)).or_default();
        cell.deals += 1;
        cell.amount_minor += i128::from(after.amount.amount_minor);
    }
    deltas.retain(|_, d| *d != CountDelta::default());
    deltas
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Money;

    fn delta(deals: i64, amount_minor: i128) -> CountDelta {
        CountDelta {
            deals,
            amount_minor,
        }
    }

    #[test]
    fn created_deals_add_to_their_cell() {
        let stage = Uuid::new_v4();
        let (a, b) = (
            Deal::sample(stage, None, 100),
            Deal::sample(stage, None, 250),
        );
        let deltas = count_deltas([(None, &a), (None, &b)]);
        assert_eq!(deltas.len(), 1);
        assert_eq!(deltas[&CountKey::of(&a)], delta(2, 350));
        assert_eq!(CountKey::of(&a).manager_id, "", "unassigned");
    }

    #[test]
    fn an_assignment_moves_the_deal_between_manager_cells() {
        let stage = Uuid::new_v4();
        let before = Deal::sample(stage, None, 100);
        let mut after = before.clone();
        after.manager_id = Some("m1".into());
        let deltas = count_deltas([(Some(&before), &after)]);
        assert_eq!(deltas[&CountKey::of(&before)], delta(-1, -100));
        assert_eq!(deltas[&CountKey::of(&after)], delta(1, 100));
    }

    #[test]
    fn an_amount_edit_changes_only_the_sum_and_no_change_writes_nothing() {
        let before = Deal::sample(Uuid::new_v4(), Some("m1"), 100);
        let mut after = before.clone();
        after.amount.amount_minor = 40;
        let deltas = count_deltas([(Some(&before), &after)]);
        assert_eq!(deltas.into_values().collect::<Vec<_>>(), [delta(0, -60)]);

        let mut renamed = before.clone();
        renamed.title = "other".into();
        assert!(count_deltas([(Some(&before), &renamed)]).is_empty());
    }

    #[test]
    fn a_currency_change_moves_the_sum_to_the_other_currency() {
        let before = Deal::sample(Uuid::new_v4(), Some("m1"), 100);
        let mut after = before.clone();
        after.amount = Money {
            amount_minor: 90,
            currency: "USD".into(),
        };
        let deltas = count_deltas([(Some(&before), &after)]);
        assert_eq!(deltas[&CountKey::of(&before)], delta(-1, -100));
        assert_eq!(deltas[&CountKey::of(&after)], delta(1, 90));
    }

    #[test]
    fn moves_that_cancel_out_leave_no_entry() {
        let (s1, s2) = (Uuid::new_v4(), Uuid::new_v4());
        let (a, b) = (Deal::sample(s1, None, 100), Deal::sample(s2, None, 100));
        let (mut a2, mut b2) = (a.clone(), b.clone());
        a2.stage_id = s2;
        b2.stage_id = s1;
        assert!(count_deltas([(Some(&a), &a2), (Some(&b), &b2)]).is_empty());
    }
}
