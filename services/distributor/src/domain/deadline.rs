//! Response deadlines: when a deal the distributor assigned must be accepted by its
//! manager, what its events do to the running deadline, and what happens to a deal whose
//! deadline ran out. Pure: the store keeps the timers, the worker makes the reassignments.

use std::collections::{BTreeMap, HashMap};

use salesplan_platform::schedule::Schedule;
use time::OffsetDateTime;
use uuid::Uuid;

use super::{
    deal_view::DealState,
    distribution::{self, Away, Candidate, Cursor, Decision, Lead, PlanSettings},
};

/// A plan's response deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Response {
    /// Seconds of the manager's working time to accept a deal.
    pub seconds: u32,
    /// Reassignments before the deal waits for a person.
    pub max_reassignments: u32,
}

/// What a deal's newest events do to its deadline. A deadline belongs to one assignment:
/// the deal's manager and when they got it (`assigned_at`, which every later event of the
/// deal repeats until the next assignment).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// The distributor assigned the deal to `manager` at `assigned_at`: a deadline starts
    /// (replacing one of an older version), if the plan has one.
    Start {
        manager: String,
        assigned_at: OffsetDateTime,
        version: i64,
    },
    /// Someone else changed the deal, still not accepted: a deadline of this assignment
    /// runs on at the new version; one of another assignment ends (a person gave the deal
    /// to someone, even back to the same manager: their choice, with no deadline).
    Follow {
        manager: String,
        assigned_at: OffsetDateTime,
        version: i64,
    },
    /// Accepted, closed or unassigned: no deadline.
    Stop { version: i64 },
}

/// The step of each deal of `states` (any order, a deal's several events among them).
/// Only the newest state of a deal decides; an assignment by the distributor earlier in
/// the same batch, still the deal's assignment, starts the deadline (at the newest
/// version).
pub fn steps<'a>(states: impl IntoIterator<Item = &'a DealState>) -> BTreeMap<Uuid, Step> {
    let mut by_deal: HashMap<Uuid, Vec<&DealState>> = HashMap::new();
    for state in states {
        by_deal.entry(state.deal_id).or_default().push(state);
    }
    by_deal
        .into_iter()
        .map(|(deal, states)| {
            let newest = states
                .iter()
                .copied()
                .max_by_key(|s| s.version)
                .expect("a deal has a state");
            let version = newest.version;
            let step = match (&newest.manager_id, newest.assigned_at) {
                (Some(manager), Some(assigned_at)) if newest.open && !newest.accepted => {
                    let started = states
                        .iter()
                        .any(|s| s.assigned_by_distributor && s.assigned_at == Some(assigned_at));
                    let manager = manager.clone();
                    if started {
                        Step::Start {
                            manager,
                            assigned_at,
                            version,
                        }
                    } else {
                        Step::Follow {
                            manager,
                            assigned_at,
                            version,
                        }
                    }
                }
                _ => Step::Stop { version },
            };
            (deal, step)
        })
        .collect()
}

/// Adds to `steps` (of the events newer than what was applied) the starts of the
/// distributor's assignments among `states` whatever their age: an assignment's event that
/// arrives after a newer event of its deal (another replica applied that first, or it is
/// redelivered) started nothing then, since a change by someone else only follows a
/// running deadline. A late start replaces a follow of the same assignment (at the
/// follow's version) and fills in for a deal with no step; a start, an end, or a follow of
/// another assignment stands. The store starts it only if the deal's newest state applied
/// is still that assignment, open and not accepted, and leaves a running deadline as it is.
pub fn add_late_starts(steps: &mut BTreeMap<Uuid, Step>, states: &[DealState]) {
    let mut late: BTreeMap<Uuid, &DealState> = BTreeMap::new();
    for s in states
        .iter()
        .filter(|s| s.assigned_by_distributor && s.open && !s.accepted)
    {
        let slot = late.entry(s.deal_id).or_insert(s);
        if s.version > slot.version {
            *slot = s;
        }
    }
    for (deal, s) in late {
        let (Some(manager), Some(assigned_at)) = (s.manager_id.clone(), s.assigned_at) else {
            continue;
        };
        let version = match steps.get(&deal) {
            None => s.version,
            Some(Step::Follow {
                assigned_at: followed,
                version,
                ..
            }) if *followed == assigned_at => *version,
            Some(_) => continue,
        };
        steps.insert(
            deal,
            Step::Start {
                manager,
                assigned_at,
                version,
            },
        );
    }
}

/// When a deadline of `seconds` working time from `assigned_at` runs out, by the manager's
/// schedule ([`Schedule::deadline`], which deal-service uses too).
pub fn due(schedule: &Schedule, assigned_at: OffsetDateTime, seconds: u32) -> OffsetDateTime {
    schedule.deadline(assigned_at, seconds)
}

/// A deadline a deal missed: who had it, from when, until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Miss {
    pub manager_id: String,
    pub assigned_at: OffsetDateTime,
    pub due_at: OffsetDateTime,
}

/// What becomes of a deal whose deadline ran out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expiry {
    /// The next manager; none: the deal waits for a person (escalated).
    pub manager: Option<String>,
    /// Why, for the deal's history.
    pub note: String,
    /// The decision among the members (every candidate and why), for ExplainAssignment.
    pub decision: Decision,
}

/// The note of a missed deadline: "response deadline missed by anna (assigned …, due …)".
fn missed_note(miss: &Miss) -> String {
    format!(
        "response deadline missed by {} (assigned {}, due {})",
        miss.manager_id,
        rfc3339(miss.assigned_at),
        rfc3339(miss.due_at)
    )
}

fn rfc3339(at: OffsetDateTime) -> String {
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| at.to_string())
}

/// Decides a deal whose deadline ran out: `chain` is every deadline it missed, oldest
/// first, the one that ran out now last. Within the plan's reassignments, the plan's
/// strategy picks among the members available and below their limit, never one in the
/// chain (they had their chance); beyond them, or with nobody left, the deal waits for a
/// person.
pub fn expire(
    plan: &PlanSettings,
    response: Response,
    chain: &[Miss],
    cursor: &mut Cursor,
    open: &mut HashMap<String, i64>,
    away: &Away,
    random: u64,
) -> Expiry {
    let last = chain.last().map(missed_note).unwrap_or_default();
    let mut passed = away.clone();
    for miss in chain {
        passed.insert(
            miss.manager_id.clone(),
            format!(
                "missed its response deadline (due {})",
                rfc3339(miss.due_at)
            ),
        );
    }
    let reassigned = chain.len().saturating_sub(1);
    if reassigned >= response.max_reassignments as usize {
        let note = format!(
            "{last}; reassigned {reassigned} of {} times: waits for a person",
            response.max_reassignments
        );
        // Every member, and why none was tried: the chain's misses, who is away, and the
        // plan's reassignments used up for the others.
        let candidates = plan
            .managers
            .iter()
            .map(|manager| Candidate {
                manager_id: manager.clone(),
                open_deals: open.get(manager).copied().unwrap_or(0),
                chosen: false,
                note: passed.get(manager).cloned().unwrap_or_else(|| {
                    format!(
                        "not tried: reassignments used up ({reassigned} of {})",
                        response.max_reassignments
                    )
                }),
            })
            .collect();
        return escalated(note, candidates);
    }
    let decision = distribution::decide(plan, &Lead::default(), cursor, open, &passed, random);
    match decision.manager.clone() {
        Some(manager) => Expiry {
            manager: Some(manager),
            note: last,
            decision: Decision {
                waits: false,
                ..decision
            },
        },
        None => {
            let note = format!("{last}; nobody else can take it: waits for a person");
            Expiry {
                manager: None,
                note: note.clone(),
                decision: Decision {
                    reason: note,
                    waits: true,
                    ..decision
                },
            }
        }
    }
}

fn escalated(note: String, candidates: Vec<Candidate>) -> Expiry {
    Expiry {
        manager: None,
        decision: Decision {
            manager: None,
            reason: note.clone(),
            candidates,
            waits: true,
        },
        note,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use salesplan_platform::schedule::Hours;
    use time::macros::datetime;

    use super::*;
    use crate::domain::distribution::{Mode, Strategy};

    fn state(version: i64, manager: Option<&str>) -> DealState {
        DealState {
            deal_id: Uuid::from_u128(1),
            account_id: "acme".into(),
            plan_id: Uuid::from_u128(2),
            manager_id: manager.map(str::to_owned),
            open: true,
            version,
            idempotency_key: "k".into(),
            contact_key: None,
            erased_contact: None,
            created_at: OffsetDateTime::UNIX_EPOCH,
            waiting_since: None,
            accepted: false,
            assigned_by_distributor: false,
            updated_at: OffsetDateTime::UNIX_EPOCH + time::Duration::seconds(version),
            // Assigned at the version's second (a new assignment per call here; see
            // `same_assignment`).
            assigned_at: manager
                .map(|_| OffsetDateTime::UNIX_EPOCH + time::Duration::seconds(version)),
            response_due_at: None,
        }
    }

    /// `state` still in the assignment made at version `since`.
    fn same_assignment(mut state: DealState, since: i64) -> DealState {
        state.assigned_at = state
            .assigned_at
            .map(|_| OffsetDateTime::UNIX_EPOCH + time::Duration::seconds(since));
        state
    }

    fn by_distributor(version: i64, manager: &str) -> DealState {
        DealState {
            assigned_by_distributor: true,
            ..state(version, Some(manager))
        }
    }

    fn step_of(states: &[DealState]) -> Step {
        steps(states).remove(&Uuid::from_u128(1)).expect("a step")
    }

    #[test]
    fn an_assignment_arriving_after_a_newer_event_of_its_deal_still_starts_its_deadline() {
        let at = |v| OffsetDateTime::UNIX_EPOCH + time::Duration::seconds(v);
        let late = |fresh: &[DealState], all: &[DealState]| {
            let mut steps = steps(fresh);
            add_late_starts(&mut steps, all);
            steps.remove(&Uuid::from_u128(1))
        };
        let start = |version| Step::Start {
            manager: "m1".into(),
            assigned_at: at(1),
            version,
        };
        // The edit (v2) was applied before; the assignment (v1) arrives alone.
        let assigned = by_distributor(1, "m1");
        assert_eq!(late(&[], std::slice::from_ref(&assigned)), Some(start(1)));
        // With a newer edit of the same assignment: a start at the edit's version.
        let edited = same_assignment(state(3, Some("m1")), 1);
        assert_eq!(
            late(
                std::slice::from_ref(&edited),
                &[assigned.clone(), edited.clone()]
            ),
            Some(start(3))
        );
        // Accepted since, or taken by a person, or closed: no start.
        let accepted = DealState {
            accepted: true,
            ..edited.clone()
        };
        let taken = state(3, Some("m2"));
        let closed = DealState {
            open: false,
            ..edited
        };
        for newer in [accepted, taken, closed] {
            let step = late(
                std::slice::from_ref(&newer),
                &[assigned.clone(), newer.clone()],
            );
            assert!(!matches!(step, Some(Step::Start { .. })), "{step:?}");
        }
        // A person's assignment is no start, late or not.
        assert_eq!(late(&[], &[state(1, Some("m1"))]), None);
    }

    #[test]
    fn the_distributors_assignment_starts_a_deadline_and_acceptance_or_a_close_ends_it() {
        let at = |v| OffsetDateTime::UNIX_EPOCH + time::Duration::seconds(v);
        let start = |v, assigned| Step::Start {
            manager: "m1".into(),
            assigned_at: at(assigned),
            version: v,
        };
        assert_eq!(step_of(&[by_distributor(1, "m1")]), start(1, 1));
        // Someone else's change runs on; in the same batch as the assignment, it starts
        // from the assignment, at the newest version.
        let edited = same_assignment(state(3, Some("m1")), 2);
        assert_eq!(
            step_of(std::slice::from_ref(&edited)),
            Step::Follow {
                manager: "m1".into(),
                assigned_at: at(2),
                version: 3
            }
        );
        assert_eq!(step_of(&[edited, by_distributor(2, "m1")]), start(3, 2));
        // A person gave it to m2, or took it and gave it back to m1: a new assignment,
        // theirs, which follows no deadline (the store ends the one of the old).
        for (manager, back) in [("m2", 3), ("m1", 4)] {
            assert_eq!(
                step_of(&[by_distributor(2, "m1"), state(back, Some(manager))]),
                Step::Follow {
                    manager: manager.into(),
                    assigned_at: at(back),
                    version: back
                }
            );
        }
        let accepted = DealState {
            accepted: true,
            ..same_assignment(state(4, Some("m1")), 2)
        };
        let closed = DealState {
            open: false,
            ..same_assignment(state(4, Some("m1")), 2)
        };
        for ended in [accepted, closed, state(4, None)] {
            assert_eq!(
                step_of(&[by_distributor(2, "m1"), ended]),
                Step::Stop { version: 4 }
            );
        }
    }

    #[test]
    fn a_deadline_counts_only_working_time() {
        let mut schedule = Schedule {
            time_zone: "Europe/Berlin".into(),
            ..Schedule::default()
        };
        // Monday to Friday, 9:00 to 17:00.
        for day in schedule.week.iter_mut().take(5) {
            day.push(Hours {
                start: 9 * 60,
                end: 17 * 60,
            });
        }
        // Friday 16:30 (CET) plus an hour of working time: Monday 9:30.
        let friday = datetime!(2026-12-04 15:30 UTC);
        assert_eq!(
            due(&schedule, friday, 3_600),
            datetime!(2026-12-07 08:30 UTC)
        );
        // Around the clock without a schedule.
        assert_eq!(
            due(&Schedule::default(), friday, 90),
            friday + time::Duration::seconds(90)
        );
    }

    fn plan(managers: &[&str]) -> PlanSettings {
        PlanSettings {
            mode: Mode::Auto {
                prefer_related: false,
                strategy: Strategy::RoundRobin,
            },
            managers: managers.iter().map(|m| (*m).to_owned()).collect(),
            weights: Vec::new(),
            caps: Vec::new(),
            keep_related: false,
            response: None,
            archived: false,
        }
    }

    fn miss(manager: &str) -> Miss {
        Miss {
            manager_id: manager.into(),
            assigned_at: datetime!(2026-12-01 10:00 UTC),
            due_at: datetime!(2026-12-01 10:05 UTC),
        }
    }

    #[test]
    fn reassignments_run_out_then_the_deal_waits_for_a_person() {
        let response = Response {
            seconds: 300,
            max_reassignments: 1,
        };
        let (mut cursor, mut open) = (Cursor::default(), HashMap::new());
        let next = expire(
            &plan(&["m1", "m2"]),
            response,
            &[miss("m1")],
            &mut cursor,
            &mut open,
            &Away::new(),
            0,
        );
        assert_eq!(next.manager.as_deref(), Some("m2"));
        assert_eq!(
            next.note,
            "response deadline missed by m1 (assigned 2026-12-01T10:00:00Z, due \
             2026-12-01T10:05:00Z)"
        );
        let skipped = next
            .decision
            .candidates
            .iter()
            .find(|c| c.manager_id == "m1")
            .expect("m1 considered");
        assert!(
            skipped.note.contains("missed its response deadline"),
            "{skipped:?}"
        );
        let last = expire(
            &plan(&["m1", "m2", "m3"]),
            response,
            &[miss("m1"), miss("m2")],
            &mut cursor,
            &mut open,
            &Away::new(),
            0,
        );
        assert_eq!(last.manager, None);
        assert!(
            last.note
                .ends_with("reassigned 1 of 1 times: waits for a person"),
            "{}",
            last.note
        );
        // The escalation explains every member: the two who missed, and m3 not tried.
        let notes: Vec<(&str, &str)> = last
            .decision
            .candidates
            .iter()
            .map(|c| (c.manager_id.as_str(), c.note.as_str()))
            .collect();
        assert_eq!(
            notes,
            [
                (
                    "m1",
                    "missed its response deadline (due 2026-12-01T10:05:00Z)"
                ),
                (
                    "m2",
                    "missed its response deadline (due 2026-12-01T10:05:00Z)"
                ),
                ("m3", "not tried: reassignments used up (1 of 1)"),
            ]
        );
    }

    proptest! {
        /// Whatever the members, their availability and the chain: the deal goes to a
        /// member available, below their limit and never in the chain, while the plan's
        /// reassignments last and such a member exists; otherwise it waits for a person.
        #[test]
        fn a_missed_deal_never_goes_back_to_one_who_had_it(
            members in proptest::collection::vec((any::<bool>(), 0u32..3, 0i64..3), 1..6),
            chain_of in proptest::collection::vec(0usize..6, 1..5),
            max_reassignments in 0u32..4,
            random in any::<u64>(),
        ) {
            let names: Vec<String> = (0..members.len()).map(|i| format!("m{i}")).collect();
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            let settings = PlanSettings {
                caps: members.iter().map(|m| m.1).collect(),
                ..plan(&refs)
            };
            let away: Away = names
                .iter()
                .zip(&members)
                .filter(|(_, m)| m.0)
                .map(|(n, _)| (n.clone(), "unavailable: paused".to_owned()))
                .collect();
            let mut open: HashMap<String, i64> =
                names.iter().cloned().zip(members.iter().map(|m| m.2)).collect();
            let chain: Vec<Miss> = chain_of
                .iter()
                .map(|i| miss(&names[i % names.len()]))
                .collect();
            let had = |m: &str| chain.iter().any(|c| c.manager_id == m);
            let can_take = |i: usize| {
                !members[i].0
                    && !had(&names[i])
                    && (members[i].1 == 0 || members[i].2 < i64::from(members[i].1))
            };
            let expiry = expire(
                &settings,
                Response { seconds: 60, max_reassignments },
                &chain,
                &mut Cursor::default(),
                &mut open,
                &away,
                random,
            );
            let within = chain.len() - 1 < max_reassignments as usize;
            let anyone = (0..names.len()).any(can_take);
            match &expiry.manager {
                Some(m) => {
                    let i = names.iter().position(|n| n == m).expect("a member");
                    prop_assert!(within && can_take(i), "{expiry:?}");
                }
                None => {
                    prop_assert!(!within || !anyone, "{expiry:?}");
                    prop_assert!(expiry.note.ends_with("waits for a person"));
                }
            }
        }
    }
}
