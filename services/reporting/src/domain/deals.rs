//! The read model's arithmetic: one row per deal, at its newest version, and where each
//! closed deal counts in the kept totals. Pure: the store reads and writes it.

use std::collections::BTreeMap;

use time::OffsetDateTime;
use uuid::Uuid;

/// One deal's state as an event carries it.
#[derive(Debug, Clone, PartialEq)]
pub struct DealRow {
    pub deal_id: Uuid,
    pub account_id: String,
    pub plan_id: Uuid,
    pub stage_id: Uuid,
    pub manager_id: Option<String>,
    pub status: &'static str,
    pub amount_minor: i64,
    pub currency: String,
    pub loss_reason_id: Option<Uuid>,
    pub stage_before_close_id: Option<Uuid>,
    pub closed_at: Option<OffsetDateTime>,
    pub version: i64,
    pub updated_at: OffsetDateTime,
    /// The lead the deal came from (its idempotency key, when that is an intake id).
    pub intake_id: Option<Uuid>,
    /// Waiting in its plan's queue for a manager.
    pub waiting: bool,
    /// The current manager's assignment: when they got the deal, when they accepted it
    /// and in how many seconds of their working time.
    pub assigned_at: Option<OffsetDateTime>,
    pub accepted_at: Option<OffsetDateTime>,
    pub accept_seconds: Option<i64>,
    /// Accepted after the assignment's response deadline: a missed deadline, though the
    /// manager kept the deal (the distributor had not reassigned it yet).
    pub accepted_late: bool,
    /// The assignment the distributor ended with this change (a missed response deadline:
    /// the distributor takes a deal from a manager for no other reason).
    pub missed: Option<Missed>,
}

/// An assignment whose response deadline was missed.
#[derive(Debug, Clone, PartialEq)]
pub struct Missed {
    pub manager_id: String,
    /// When the manager got the deal (events published before deal-service said so lack
    /// it: then the manager's latest assignment before the change is the one missed).
    pub assigned_at: Option<OffsetDateTime>,
}

impl DealRow {
    /// Where the deal counts in this state.
    pub fn contribution(&self) -> Option<Contribution> {
        Contribution::of(
            self.account_id.clone(),
            self.plan_id,
            self.manager_id.clone(),
            self.status.to_owned(),
            self.loss_reason_id,
            self.closed_at,
        )
    }
}

/// Where a closed deal counts: its totals row (and day). Open deals count nowhere.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Contribution {
    pub account_id: String,
    pub plan_id: Uuid,
    pub manager: String,
    pub status: String,
    pub reason: Uuid,
    pub day: time::Date,
}

impl Contribution {
    pub fn of(
        account_id: String,
        plan_id: Uuid,
        manager: Option<String>,
        status: String,
        reason: Option<Uuid>,
        closed_at: Option<OffsetDateTime>,
    ) -> Option<Self> {
        if status != "won" && status != "lost" {
            return None;
        }
        Some(Self {
            account_id,
            plan_id,
            manager: manager.unwrap_or_default(),
            reason: reason.filter(|_| status == "lost").unwrap_or(Uuid::nil()),
            status,
            day: closed_at?.to_offset(time::UtcOffset::UTC).date(),
        })
    }
}

/// Changes of the kept totals: deals per place they count.
pub type Deltas = BTreeMap<Contribution, i64>;

/// One assignment of a deal to a manager, as the events of a batch tell it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment<'a> {
    pub deal_id: Uuid,
    pub assigned_at: OffsetDateTime,
    pub account_id: &'a str,
    pub plan_id: Uuid,
    pub manager_id: &'a str,
    pub accepted_at: Option<OffsetDateTime>,
    pub accept_seconds: Option<i64>,
    /// Accepted after its response deadline.
    pub late: bool,
}

/// The assignments `rows` show, each once (a statement may not touch a row twice, and
/// every event after an assignment repeats it), with its acceptance from whichever of
/// its events has one.
pub fn assignments(rows: &[DealRow]) -> Vec<Assignment<'_>> {
    let mut by_key: BTreeMap<(Uuid, OffsetDateTime), Assignment<'_>> = BTreeMap::new();
    for row in rows {
        let (Some(manager_id), Some(assigned_at)) = (&row.manager_id, row.assigned_at) else {
            continue;
        };
        let slot = by_key
            .entry((row.deal_id, assigned_at))
            .or_insert(Assignment {
                deal_id: row.deal_id,
                assigned_at,
                account_id: &row.account_id,
                plan_id: row.plan_id,
                manager_id,
                accepted_at: None,
                accept_seconds: None,
                late: false,
            });
        slot.accepted_at = slot.accepted_at.or(row.accepted_at);
        slot.accept_seconds = slot.accept_seconds.or(row.accept_seconds);
        slot.late |= row.accepted_late;
    }
    by_key.into_values().collect()
}

/// The newest state of each deal in `rows` (a statement may not touch a row twice).
pub fn newest(rows: &[DealRow]) -> Vec<&DealRow> {
    let mut newest: BTreeMap<Uuid, &DealRow> = BTreeMap::new();
    for row in rows {
        let slot = newest.entry(row.deal_id).or_insert(row);
        if row.version > slot.version {
            *slot = row;
        }
    }
    newest.into_values().collect()
}

/// A deal moved from counting at `old` to counting at `new` (either may be nowhere).
pub fn shift(deltas: &mut Deltas, old: Option<Contribution>, new: Option<Contribution>) {
    if old == new {
        return;
    }
    if let Some(old) = old {
        *deltas.entry(old).or_default() -= 1;
    }
    if let Some(new) = new {
        *deltas.entry(new).or_default() += 1;
    }
}

/// The all-time totals' key: a contribution without its day.
pub type TotalKey = (String, Uuid, String, String, Uuid);

/// The deltas that change something, and the same summed per all-time key.
pub fn totals(deltas: &Deltas) -> (Vec<(&Contribution, i64)>, BTreeMap<TotalKey, i64>) {
    let changed: Vec<(&Contribution, i64)> = deltas
        .iter()
        .filter(|(_, d)| **d != 0)
        .map(|(c, d)| (c, *d))
        .collect();
    let mut all_time: BTreeMap<TotalKey, i64> = BTreeMap::new();
    for (c, d) in &changed {
        *all_time
            .entry((
                c.account_id.clone(),
                c.plan_id,
                c.manager.clone(),
                c.status.clone(),
                c.reason,
            ))
            .or_default() += d;
    }
    (changed, all_time)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(hours: i64) -> OffsetDateTime {
        OffsetDateTime::UNIX_EPOCH + time::Duration::hours(hours)
    }

    fn lost(manager: &str, hours: i64) -> Option<Contribution> {
        Contribution::of(
            "acme".into(),
            Uuid::from_u128(1),
            Some(manager.into()),
            "lost".into(),
            Some(Uuid::from_u128(9)),
            Some(at(hours)),
        )
    }

    fn event(version: i64, manager: &str, assigned: i64, accepted: Option<i64>) -> DealRow {
        DealRow {
            deal_id: Uuid::from_u128(7),
            account_id: "acme".into(),
            plan_id: Uuid::from_u128(1),
            stage_id: Uuid::from_u128(2),
            manager_id: Some(manager.into()),
            status: "open",
            amount_minor: 0,
            currency: "USD".into(),
            loss_reason_id: None,
            stage_before_close_id: None,
            closed_at: None,
            version,
            updated_at: at(version),
            intake_id: None,
            waiting: false,
            assigned_at: Some(at(assigned)),
            accepted_at: accepted.map(at),
            accept_seconds: accepted.map(|h| (h - assigned) * 3_600),
            accepted_late: false,
            missed: None,
        }
    }

    #[test]
    fn every_event_of_an_assignment_is_one_assignment_with_its_acceptance() {
        // Created with m1, accepted, moved; then given to m2: two assignments, whatever
        // order the batch holds them in.
        let rows = [
            event(3, "m1", 1, Some(2)),
            event(1, "m1", 1, None),
            event(4, "m2", 4, None),
            event(2, "m1", 1, Some(2)),
        ];
        let found = assignments(&rows);
        let seen: Vec<(&str, OffsetDateTime, Option<i64>)> = found
            .iter()
            .map(|a| (a.manager_id, a.assigned_at, a.accept_seconds))
            .collect();
        assert_eq!(seen, [("m1", at(1), Some(3_600)), ("m2", at(4), None)]);
    }

    #[test]
    fn an_assignment_accepted_late_by_any_of_its_events_is_late() {
        let late = DealRow {
            accepted_late: true,
            ..event(3, "m1", 1, Some(2))
        };
        let rows = [event(1, "m1", 1, None), late, event(4, "m2", 4, None)];
        let found: Vec<(&str, bool)> = assignments(&rows)
            .iter()
            .map(|a| (a.manager_id, a.late))
            .collect();
        assert_eq!(found, [("m1", true), ("m2", false)]);
    }

    #[test]
    fn open_deals_count_nowhere_and_won_deals_have_no_reason() {
        let open = Contribution::of(
            "a".into(),
            Uuid::nil(),
            None,
            "open".into(),
            None,
            Some(at(1)),
        );
        assert_eq!(open, None);
        let won = Contribution::of(
            "a".into(),
            Uuid::nil(),
            None,
            "won".into(),
            Some(Uuid::from_u128(9)),
            Some(at(1)),
        )
        .expect("counts");
        assert_eq!((won.reason, won.manager.as_str()), (Uuid::nil(), ""));
    }

    #[test]
    fn a_transfer_moves_one_deal_between_rows_and_days_sum_to_all_time() {
        let mut deltas = Deltas::new();
        shift(&mut deltas, None, lost("m1", 1));
        shift(&mut deltas, None, lost("m1", 30));
        shift(&mut deltas, lost("m1", 30), lost("m2", 30));
        shift(&mut deltas, lost("m2", 30), lost("m2", 30));
        let (changed, all_time) = totals(&deltas);
        let days: Vec<(&str, time::Date, i64)> = changed
            .iter()
            .map(|(c, d)| (c.manager.as_str(), c.day, *d))
            .collect();
        let (day0, day1) = (at(1).date(), at(30).date());
        assert_eq!(
            days,
            [("m1", day0, 1), ("m2", day1, 1)],
            "m1's second day nets to nothing and is left out"
        );
        let key = |m: &str| {
            let (plan, reason) = (Uuid::from_u128(1), Uuid::from_u128(9));
            (
                "acme".to_owned(),
                plan,
                m.to_owned(),
                "lost".to_owned(),
                reason,
            )
        };
        assert_eq!((all_time[&key("m1")], all_time[&key("m2")]), (1, 1));
    }
}
