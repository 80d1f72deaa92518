//! Deciding a batch of one plan's leads: [`decide`] lead after lead, each seeing what the
//! ones before it changed (open counts, the turn, the contact's manager), and what the
//! batch as a whole changes. Pure: the store loads [`Known`] under the plan's row lock and
//! saves the [`Batch`] in the same transaction.

use std::collections::{BTreeMap, HashMap};

use uuid::Uuid;

use super::distribution::{Away, Cursor, Decision, Lead, PlanSettings, decide};

/// One lead of a batch, to decide.
#[derive(Debug, Clone)]
pub struct PendingLead {
    pub intake_id: Uuid,
    /// The plan's version the listener checked when it accepted the lead (0: not known).
    pub plan_version: i64,
    /// The plan members' availability as the listener read it with `plan_version`; `None`
    /// when not known (or once the copy was brought up to date from deal-service).
    pub availability: Option<AvailabilityStamp>,
    pub lead: Lead,
    pub contact_key: Option<String>,
}

/// A stamp of a plan's members' availability: the sum of their versions and the newest of
/// their sequences (the account's order of availability changes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AvailabilityStamp {
    pub versions: i64,
    pub sequence: i64,
}

impl AvailabilityStamp {
    /// Whether a copy stamped `self` holds every member's availability exactly as `lead`
    /// was stamped or newer. With no member changed since (no sequence newer than the
    /// lead's), no copy version is newer than the lead's; so a sum as large means every
    /// version equal. A change since the lead needs the copy brought up to date instead.
    pub fn covers(self, lead: AvailabilityStamp) -> bool {
        self.sequence <= lead.sequence && self.versions >= lead.versions
    }
}

/// What the distributor knows of a plan and of a batch's leads when it decides them.
#[derive(Debug, Clone)]
pub struct Known {
    pub settings: PlanSettings,
    pub plan_version: i64,
    pub cursor: Cursor,
    /// Open deals per manager of the plan.
    pub open: HashMap<String, i64>,
    /// The manager of each contact key of the batch that has one (its latest deal or
    /// decision in the account).
    pub related: HashMap<String, String>,
    /// The leads of the batch decided before (a redelivery keeps its decision).
    pub decided: HashMap<Uuid, Option<String>>,
    /// Deals of the plan wait in its queue: a new lead goes behind them (oldest first),
    /// unless a bulk add names its manager.
    pub queue_ahead: bool,
    /// The members unavailable at the decision time.
    pub away: Away,
}

/// A decision made now.
#[derive(Debug, Clone)]
pub struct Decided {
    pub intake_id: Uuid,
    /// The lead as it was decided (with the contact's previous manager).
    pub lead: Lead,
    pub decision: Decision,
}

/// What deciding a batch changes.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    /// The manager (or none) of every lead of the batch, decided now or before.
    pub managers: HashMap<Uuid, Option<String>>,
    /// The decisions made now, in the order they were made.
    pub new: Vec<Decided>,
    /// New open deals per manager.
    pub opened: BTreeMap<String, i64>,
    /// The manager each contact key is related to after the batch.
    pub relations: BTreeMap<String, String>,
    /// The turn after the batch.
    pub cursor: Cursor,
}

/// Decides the leads of `known`'s plan that are not decided yet, in order; a lead in the
/// batch twice (published again after JetStream's duplicate window) is decided once.
/// `random` gives one uniformly random number per decision.
pub fn decide_batch(known: Known, leads: &[PendingLead], mut random: impl FnMut() -> u64) -> Batch {
    let Known {
        settings,
        mut cursor,
        mut open,
        mut related,
        decided,
        queue_ahead,
        away,
        ..
    } = known;
    let mut batch = Batch {
        managers: decided,
        ..Batch::default()
    };
    for pending in leads {
        // Decided before, or earlier in this batch.
        if batch.managers.contains_key(&pending.intake_id) {
            continue;
        }
        let mut lead = pending.lead.clone();
        lead.previous_manager = pending
            .contact_key
            .as_ref()
            .and_then(|k| related.get(k).cloned());
        let decision = if queue_ahead && settings.queues() && !settings.names(&lead) {
            Decision::behind_the_queue(&settings, &open, &away)
        } else {
            decide(&settings, &lead, &mut cursor, &mut open, &away, random())
        };
        if let Some(manager) = &decision.manager {
            *batch.opened.entry(manager.clone()).or_default() += 1;
            // The relation counts from the decision on: the same contact's next lead, even
            // before its deal exists, goes to the same manager.
            if let Some(key) = &pending.contact_key {
                related.insert(key.clone(), manager.clone());
                batch.relations.insert(key.clone(), manager.clone());
            }
        }
        batch
            .managers
            .insert(pending.intake_id, decision.manager.clone());
        batch.new.push(Decided {
            intake_id: pending.intake_id,
            lead,
            decision,
        });
    }
    batch.cursor = cursor;
    batch
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::distribution::{Mode, Strategy};
    use proptest::prelude::*;

    fn plan(strategy: Strategy, prefer_related: bool, managers: usize) -> PlanSettings {
        PlanSettings {
            mode: Mode::Auto {
                prefer_related,
                strategy,
            },
            managers: (0..managers).map(|m| format!("m{m}")).collect(),
            weights: Vec::new(),
            caps: Vec::new(),
            keep_related: false,
            response: None,
            archived: false,
        }
    }

    fn lead(n: u128, contact: Option<&str>) -> PendingLead {
        PendingLead {
            intake_id: Uuid::from_u128(n),
            plan_version: 1,
            availability: None,
            lead: Lead::default(),
            contact_key: contact.map(str::to_owned),
        }
    }

    /// The distributor's state between batches, as the store keeps it.
    struct State {
        settings: PlanSettings,
        cursor: Cursor,
        open: HashMap<String, i64>,
        related: HashMap<String, String>,
        decided: HashMap<Uuid, Option<String>>,
    }

    impl State {
        fn new(settings: PlanSettings) -> Self {
            Self {
                settings,
                cursor: Cursor::default(),
                open: HashMap::new(),
                related: HashMap::new(),
                decided: HashMap::new(),
            }
        }

        /// Decides `leads` as one batch and keeps what it changed; the managers chosen now.
        fn run(&mut self, leads: &[PendingLead]) -> Vec<Option<String>> {
            let known = Known {
                away: Away::new(),
                settings: self.settings.clone(),
                plan_version: 1,
                cursor: self.cursor.clone(),
                open: self.open.clone(),
                related: leads
                    .iter()
                    .filter_map(|l| l.contact_key.as_ref())
                    .filter_map(|k| Some((k.clone(), self.related.get(k)?.clone())))
                    .collect(),
                decided: leads
                    .iter()
                    .filter_map(|l| Some((l.intake_id, self.decided.get(&l.intake_id)?.clone())))
                    .collect(),
                queue_ahead: false,
            };
            let batch = decide_batch(known, leads, || 0);
            for (manager, n) in &batch.opened {
                *self.open.entry(manager.clone()).or_default() += n;
            }
            self.related.extend(batch.relations);
            self.cursor = batch.cursor;
            for d in &batch.new {
                self.decided.insert(d.intake_id, d.decision.manager.clone());
            }
            batch.new.into_iter().map(|d| d.decision.manager).collect()
        }
    }

    /// Cuts `0..n` into consecutive batches at `cuts`.
    fn batches(n: usize, cuts: &[usize]) -> Vec<std::ops::Range<usize>> {
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (n + 1)).collect();
        cuts.extend([0, n]);
        cuts.sort_unstable();
        cuts.dedup();
        cuts.windows(2).map(|w| w[0]..w[1]).collect()
    }

    proptest! {
        /// Round robin is exact over any cut of the leads into batches, with leads
        /// delivered again in later batches (they keep their decision and take no turn).
        #[test]
        fn round_robin_is_exact_over_any_batches(
            n in 1usize..120,
            managers in 1usize..7,
            cuts in proptest::collection::vec(0usize..200, 0..12),
            redelivered in proptest::collection::vec(0usize..200, 0..10),
        ) {
            let mut state = State::new(plan(Strategy::RoundRobin, false, managers));
            let leads: Vec<PendingLead> = (0..n).map(|i| lead(i as u128, None)).collect();
            let mut chosen = Vec::new();
            for range in batches(n, &cuts) {
                let mut batch = leads[range.clone()].to_vec();
                // Earlier leads again, and one lead twice in the same batch.
                batch.extend(redelivered.iter().map(|r| leads[r % range.end].clone()));
                batch.push(leads[range.start].clone());
                chosen.extend(state.run(&batch));
            }
            let expected: Vec<Option<String>> =
                (0..n).map(|i| Some(format!("m{}", i % managers))).collect();
            prop_assert_eq!(chosen, expected);
        }

        /// Fewest open deals: starting even, the counts never differ by more than one,
        /// and among equals the turn decides, whatever the batches.
        #[test]
        fn least_open_stays_even_and_ties_go_in_turn(
            n in 1usize..120,
            managers in 1usize..7,
            cuts in proptest::collection::vec(0usize..200, 0..12),
        ) {
            let mut state = State::new(plan(Strategy::LeastOpenDeals, false, managers));
            let leads: Vec<PendingLead> = (0..n).map(|i| lead(i as u128, None)).collect();
            let mut chosen = Vec::new();
            for range in batches(n, &cuts) {
                chosen.extend(state.run(&leads[range]));
                let counts: Vec<i64> = state.settings.managers.iter()
                    .map(|m| state.open.get(m).copied().unwrap_or(0)).collect();
                let (lo, hi) = (counts.iter().min(), counts.iter().max());
                prop_assert!(hi.zip(lo).is_some_and(|(h, l)| h - l <= 1), "{:?}", counts);
            }
            let expected: Vec<Option<String>> =
                (0..n).map(|i| Some(format!("m{}", i % managers))).collect();
            prop_assert_eq!(chosen, expected);
        }

        /// prefer_related: every lead of a contact goes to the manager of its first lead,
        /// also when both are in one batch; contacts without a manager take turns.
        #[test]
        fn a_contact_keeps_its_manager_within_and_across_batches(
            contacts in proptest::collection::vec(0u8..6, 1..80),
            managers in 1usize..5,
            cuts in proptest::collection::vec(0usize..100, 0..8),
        ) {
            let mut state = State::new(plan(Strategy::RoundRobin, true, managers));
            let keys: Vec<String> = contacts.iter().map(|c| format!("c{c}")).collect();
            let leads: Vec<PendingLead> = keys.iter().enumerate()
                .map(|(i, k)| lead(i as u128, Some(k))).collect();
            let mut chosen = Vec::new();
            for range in batches(leads.len(), &cuts) {
                chosen.extend(state.run(&leads[range]));
            }
            let mut first: HashMap<&str, &Option<String>> = HashMap::new();
            let mut turns = 0;
            for (key, manager) in keys.iter().zip(&chosen) {
                match first.get(key.as_str()) {
                    Some(earlier) => prop_assert_eq!(*earlier, manager),
                    None => {
                        prop_assert_eq!(manager, &Some(format!("m{}", turns % managers)));
                        turns += 1;
                        first.insert(key, manager);
                    }
                }
            }
        }
    }

    #[test]
    fn a_batch_reports_what_it_changed() {
        let known = Known {
            away: Away::new(),
            settings: plan(Strategy::RoundRobin, true, 2),
            plan_version: 3,
            cursor: Cursor::default(),
            open: HashMap::from([("m0".to_owned(), 4)]),
            related: HashMap::from([("old".to_owned(), "m1".to_owned())]),
            decided: HashMap::from([(Uuid::from_u128(9), Some("m0".to_owned()))]),
            queue_ahead: false,
        };
        let leads = [
            lead(1, Some("old")),
            lead(2, Some("new")),
            lead(9, Some("new")),
            lead(3, None),
        ];
        let batch = decide_batch(known, &leads, || 0);
        let managers: Vec<_> = batch
            .new
            .iter()
            .map(|d| d.decision.manager.clone())
            .collect();
        assert_eq!(
            managers,
            [Some("m1".into()), Some("m0".into()), Some("m1".into())],
            "the related manager, then the turn; lead 9 keeps its earlier decision"
        );
        assert_eq!(batch.new[0].lead.previous_manager.as_deref(), Some("m1"));
        assert_eq!(batch.managers.len(), 4);
        assert_eq!(batch.managers[&Uuid::from_u128(9)].as_deref(), Some("m0"));
        assert_eq!(
            batch.opened,
            BTreeMap::from([("m0".to_owned(), 1), ("m1".to_owned(), 2)])
        );
        assert_eq!(
            batch.relations,
            BTreeMap::from([
                ("new".to_owned(), "m0".to_owned()),
                ("old".to_owned(), "m1".to_owned())
            ])
        );
        assert_eq!(batch.cursor.last.as_deref(), Some("m1"));
    }

    /// Oldest first (issue 20): while deals wait in the plan's queue, a new lead does not
    /// take a place freed before the queue was drained; it waits behind them. A lead a bulk
    /// add names a manager for still goes to that manager.
    #[test]
    fn a_new_lead_waits_behind_the_queue() {
        let known = Known {
            away: Away::from([("m1".to_owned(), "unavailable: paused".to_owned())]),
            settings: plan(Strategy::RoundRobin, false, 2),
            plan_version: 1,
            cursor: Cursor::default(),
            open: HashMap::new(),
            related: HashMap::new(),
            decided: HashMap::new(),
            queue_ahead: true,
        };
        let named = PendingLead {
            lead: Lead {
                assign_to: Some("m1".into()),
                ..Default::default()
            },
            ..lead(2, None)
        };
        let batch = decide_batch(known, &[lead(1, None), named], || 0);
        let got: Vec<(Option<&str>, bool)> = batch
            .new
            .iter()
            .map(|d| (d.decision.manager.as_deref(), d.decision.waits))
            .collect();
        assert_eq!(got, [(None, true), (Some("m1"), false)]);
        assert!(batch.new[0].decision.reason.contains("waits behind them"));
        let candidates: Vec<(&str, bool, &str)> = batch.new[0]
            .decision
            .candidates
            .iter()
            .map(|c| (c.manager_id.as_str(), c.chosen, c.note.as_str()))
            .collect();
        let first = "could take one: the older deals in the queue go first";
        let away = "unavailable: paused";
        assert_eq!(candidates, [("m0", false, first), ("m1", false, away)]);
        assert_eq!(batch.cursor, Cursor::default(), "no turn was taken");
    }
}
