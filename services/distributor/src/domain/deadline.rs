//! Response deadlines: when a deal the distributor assigned must be accepted by its
//! manager, what its events do to the running deadline, and what happens to a deal whose
//! deadline ran out. Pure: the store keeps the timers, the worker makes the reassignments.

use std::collections::{BTreeMap, HashMap};

use salesplan_platform::schedule::Schedule;
use time::OffsetDateTime;
use uuid::Uuid;

use super::{
    deal_view::DealState,
    distribution::{self, Away, Cursor, Decision, Lead, PlanSettings},
};

/// A plan's response deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Response {
    /// Seconds of the manager's working time to accept a deal.
    pub seconds: u32,
    /// Reassignments before the deal waits for a person.
    pub max_reassignments: u32,
}

/// What a deal's newest events do to its deadline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// The distributor assigned the deal to `manager` at `assigned_at`: a deadline starts
    /// (replacing one of an older version), if the plan has one.
    Start {
        manager: String,
        assigned_at: OffsetDateTime,
        version: i64,
    },
    /// Someone else changed the deal, still with `manager` and not accepted: a deadline
    /// for that manager runs on at the new version; one for another manager ends (a person
    /// gave the deal to someone).
    Follow { manager: String, version: i64 },
    /// Accepted, closed or unassigned: no deadline.
    Stop { version: i64 },
}

/// Whether the distributor itself made this change of the deal to its manager.
fn starts(state: &DealState) -> bool {
    state.assigned_by_distributor && state.manager_id.is_some()
}

/// The step of each deal of `states` (any order, a deal's several events among them).
/// Only the newest state of a deal decides; an assignment by the distributor earlier in
/// the same batch, to the same manager, still starts the deadline (at the newest version).
pub fn steps(states: &[DealState]) -> BTreeMap<Uuid, Step> {
    let mut by_deal: HashMap<Uuid, Vec<&DealState>> = HashMap::new();
    for state in states {
        by_deal.entry(state.deal_id).or_default().push(state);
    }
    by_deal
        .into_iter()
        .map(|(deal, mut states)| {
            states.sort_by_key(|s| s.version);
            let newest = states[states.len() - 1];
            let step = match &newest.manager_id {
                Some(manager) if newest.open && !newest.accepted => {
                    // The last of the deal's changes that ended a deadline or started one.
                    let start = states.iter().rev().find(|s| {
                        starts(s) || !s.open || s.accepted || s.manager_id != newest.manager_id
                    });
                    match start {
                        Some(s) if starts(s) && s.manager_id == newest.manager_id => Step::Start {
                            manager: manager.clone(),
                            assigned_at: s.updated_at,
                            version: newest.version,
                        },
                        _ => Step::Follow {
                            manager: manager.clone(),
                            version: newest.version,
                        },
                    }
                }
                _ => Step::Stop {
                    version: newest.version,
                },
            };
            (deal, step)
        })
        .collect()
}

/// When a deadline of `seconds` working time from `assigned_at` runs out, by the manager's
/// schedule (around the clock without one). A schedule with no working time within its
/// horizon gives wall-clock time: a deal is never held by a manager who never works.
pub fn due(schedule: &Schedule, assigned_at: OffsetDateTime, seconds: u32) -> OffsetDateTime {
    let working = time::Duration::seconds(i64::from(seconds));
    schedule
        .after_working(assigned_at, working)
        .unwrap_or(assigned_at + working)
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
    let reassigned = chain.len().saturating_sub(1);
    if reassigned >= response.max_reassignments as usize {
        let note = format!(
            "{last}; reassigned {reassigned} of {} times: waits for a person",
            response.max_reassignments
        );
        return escalated(note);
    }
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

fn escalated(note: String) -> Expiry {
    Expiry {
        manager: None,
        decision: Decision {
            manager: None,
            reason: note.clone(),
            candidates: Vec::new(),
            waits: true,
        },
        note,
    }
}
