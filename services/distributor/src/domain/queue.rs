//! A plan's waiting queue: deals left to automatic distribution that no member could take
//! when they came. When a member can take one again, the oldest are decided first, by the
//! plan's strategy, each seeing what the ones before it changed. Pure: the store loads the
//! queue under the plan's row lock and keeps the decisions (as assignment orders) in the
//! same transaction.

use std::collections::HashMap;

use time::OffsetDateTime;
use uuid::Uuid;

use super::distribution::{Away, Cursor, Decision, Lead, PlanSettings, decide};

/// A deal waiting in its plan's queue, as the distributor's view of deals has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    pub deal_id: Uuid,
    /// The version of the deal the view holds: an order is valid for it only.
    pub version: i64,
    pub since: OffsetDateTime,
}

/// Decides the `queue` (oldest first) until a deal finds no member: that one and those
/// behind it keep waiting, in order. `open` and `cursor` move with each decision; `away`
/// are the members unavailable now.
/// Waiting deals are decided by the strategy alone: the view keeps no contact of a deal,
/// so none goes to a related manager.
pub fn assign_waiting(
    settings: &PlanSettings,
    cursor: &mut Cursor,
    open: &mut HashMap<String, i64>,
    away: &Away,
    queue: &[Waiting],
    mut random: impl FnMut() -> u64,
) -> Vec<(Waiting, Decision)> {
    let mut decided = Vec::new();
    for waiting in queue {
        let mut decision = decide(settings, &Lead::default(), cursor, open, away, random());
        if decision.manager.is_none() {
            break;
        }
        decision.reason = format!(
            "waited since {}; {}",
            waiting
                .since
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
            decision.reason
        );
        decided.push((waiting.clone(), decision));
    }
    decided
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::distribution::{Mode, Strategy};

    fn waiting(n: u128) -> Waiting {
        Waiting {
            deal_id: Uuid::from_u128(n),
            version: 1,
            since: OffsetDateTime::UNIX_EPOCH + time::Duration::minutes(n as i64),
        }
    }

    #[test]
    fn the_oldest_go_first_while_someone_can_take_one() {
        let plan = PlanSettings {
            mode: Mode::Auto {
                prefer_related: true,
                strategy: Strategy::LeastOpenDeals,
            },
            managers: vec!["a".into(), "b".into()],
            weights: Vec::new(),
            caps: vec![2, 3],
            keep_related: false,
            response: None,
            archived: false,
        };
        let mut open = HashMap::from([("a".to_owned(), 1), ("b".to_owned(), 3)]);
        let queue = [waiting(1), waiting(2), waiting(3)];
        let decided = assign_waiting(
            &plan,
            &mut Cursor::default(),
            &mut open,
            &Away::new(),
            &queue,
            || 0,
        );
        // a had room for one, b for none: the oldest deal goes to a, the others wait.
        let got: Vec<(u128, Option<&str>)> = decided
            .iter()
            .map(|(w, d)| (w.deal_id.as_u128(), d.manager.as_deref()))
            .collect();
        assert_eq!(got, [(1, Some("a"))]);
        assert!(
            decided[0]
                .1
                .reason
                .starts_with("waited since 1970-01-01T00:01:00Z; fewest open"),
            "{}",
            decided[0].1.reason
        );
        assert_eq!(open["a"], 2);
        open.insert("b".into(), 1);
        let decided = assign_waiting(
            &plan,
            &mut Cursor::default(),
            &mut open,
            &Away::new(),
            &queue[1..],
            || 0,
        );
        let got: Vec<u128> = decided.iter().map(|(w, _)| w.deal_id.as_u128()).collect();
        assert_eq!(got, [2, 3], "b freed two places: the next two, in order");
    }
}
