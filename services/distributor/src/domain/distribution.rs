//! Deciding the manager of a new lead from the plan's settings: manual, or automatic at
//! random, in turn, or to the fewest open deals, preferring the manager the contact knows,
//! among the members available now and below their limit of open deals (else the lead
//! waits).

use std::collections::HashMap;

use salesplan_platform::schedule::Availability;
use time::OffsetDateTime;

/// The members unavailable at the decision time, each with why ("unavailable: paused",
/// "unavailable: outside working hours, back at …"); a member not in it is available.
pub type Away = HashMap<String, String>;

/// Who of `managers` is unavailable at `at`, by their availability (a manager without one
/// works around the clock).
pub fn away_at(
    managers: &[String],
    availability: &HashMap<String, Availability>,
    at: OffsetDateTime,
) -> Away {
    managers
        .iter()
        .filter_map(|m| {
            let known = availability.get(m)?;
            let why = known.away_at(at)?;
            let back = known
                .available_from(at)
                .and_then(|t| {
                    t.format(&time::format_description::well_known::Rfc3339)
                        .ok()
                })
                .map(|t| format!(", back at {t}"))
                .unwrap_or_default();
            Some((m.clone(), format!("unavailable: {}{back}", why.as_str())))
        })
        .collect()
}

/// The plan settings the distributor keeps (a copy fed by plan events).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanSettings {
    pub mode: Mode,
    /// Members of the plan in round-robin order.
    pub managers: Vec<String>,
    /// Each member's weight, in the order of `managers`; empty when every weight is 1
    /// (plans from before weights, and most plans).
    pub weights: Vec<u32>,
    /// Each member's limit of open deals, in the order of `managers` (0: none); empty when
    /// no member has one.
    pub caps: Vec<u32>,
    /// With `prefer_related`: the related manager gets the lead even while unavailable
    /// (never while at their limit).
    pub keep_related: bool,
    /// The response deadline of the deals the distributor assigns, if any.
    pub response: Option<super::deadline::Response>,
    pub archived: bool,
}

impl PlanSettings {
    /// The weight of the member at `index` (1 unless set).
    pub fn weight(&self, index: usize) -> u32 {
        self.weights.get(index).copied().unwrap_or(1).max(1)
    }

    /// The weights of every member, in turn order.
    fn all_weights(&self) -> Vec<u32> {
        (0..self.managers.len()).map(|i| self.weight(i)).collect()
    }

    /// The limit of open deals of the member at `index`, if it has one.
    pub fn cap(&self, index: usize) -> Option<u32> {
        self.caps.get(index).copied().filter(|c| *c > 0)
    }

    /// Where a lead decided for `manager` goes: without one, it waits for one when the
    /// plan distributes automatically (an AUTO decision without a manager always waits) —
    /// unless the plan is archived (a lead accepted before; nobody drains its queue).
    pub fn placement(&self, manager: Option<String>) -> Placement {
        Placement {
            waits: manager.is_none() && self.queues(),
            manager,
        }
    }

    /// Whether the plan keeps a waiting queue: it distributes automatically and is not
    /// archived.
    pub fn queues(&self) -> bool {
        matches!(self.mode, Mode::Auto { .. }) && !self.archived
    }

    /// Whether `lead` goes straight to a manager its bulk add named: only while that
    /// manager is a member.
    pub fn names(&self, lead: &Lead) -> bool {
        lead.assign_to
            .as_ref()
            .is_some_and(|m| self.managers.contains(m))
    }
}

/// Where a lead's deal goes: to a manager, or without one, waiting for one or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub manager: Option<String>,
    pub waits: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Manual,
    Auto {
        prefer_related: bool,
        strategy: Strategy,
    },
}

salesplan_platform::named_enum! {
    /// How a lead was (or a plan's leads are) decided, as stored and explained.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum DecidedBy {
        /// The bulk add named the manager.
        Bulk => "bulk",
        Manual => "manual",
        Auto => "auto",
    }
}

impl Mode {
    pub fn decided_by(self) -> DecidedBy {
        match self {
            Mode::Manual => DecidedBy::Manual,
            Mode::Auto { .. } => DecidedBy::Auto,
        }
    }
}

salesplan_platform::named_enum! {
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Strategy {
        Random => "random",
        RoundRobin => "round_robin",
        LeastOpenDeals => "least_open_deals",
    }
}

/// What is known about one lead when its manager is chosen.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lead {
    /// A bulk add straight to one manager: no distribution.
    pub assign_to: Option<String>,
    /// The related manager the caller named.
    pub named_related: Option<String>,
    /// The manager of the contact's most recent earlier deal in the account.
    pub previous_manager: Option<String>,
}

/// Whose turn it is: the manager who got the last lead by turn, and where they stood; and
/// the members' credits of the weighted turn.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cursor {
    pub last: Option<String>,
    pub last_index: u64,
    /// Smooth weighted round robin: each member's credit, in turn order. Every lead adds
    /// each member's weight to its credit; the member with the most credit (the first in
    /// turn among equals) takes the lead and gives back the sum of the weights. From all
    /// zero, every run of sum-of-weights leads gives each member exactly its weight, and
    /// the credits are back at zero: the turns repeat that run, interleaved.
    pub credits: Vec<i64>,
    /// The members and weights the credits were counted for ([`membership_mark`]): credits
    /// start again from zero when either changes.
    pub credits_of: u64,
    /// Among members with as much credit, the first in turn from this position: whose turn
    /// it was when the credits started from zero, kept while they count (a tie-break that
    /// moved would make the runs differ, and a window across two runs inexact).
    pub credits_start: u64,
}

/// A mark of the members and their weights, in turn order (FNV-1a: stable across builds,
/// since it is stored).
pub fn membership_mark(managers: &[String], weights: &[u32]) -> u64 {
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for byte in bytes {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(PRIME);
        }
    };
    for (manager, weight) in managers.iter().zip(weights) {
        eat(&(manager.len() as u64).to_le_bytes());
        eat(manager.as_bytes());
        eat(&weight.to_le_bytes());
    }
    hash
}

impl Cursor {
    /// Position of the manager whose turn it is: the one after the last, or — when the last
    /// left the plan — whoever now stands where the last one stood.
    pub fn next_index(&self, managers: &[String]) -> usize {
        let n = managers.len().max(1);
        match self
            .last
            .as_ref()
            .and_then(|last| managers.iter().position(|m| m == last))
        {
            Some(i) => (i + 1) % n,
            None => (self.last_index as usize) % n,
        }
    }

    fn took_turn(&mut self, managers: &[String], index: usize) {
        self.last = Some(managers[index].clone());
        self.last_index = index as u64;
    }

    /// The member whose weighted turn it is, its credit given back. Among members with as
    /// much credit, the first in turn from where the turn was when the credits started
    /// (so equal weights take plain turns, and a membership change passes the turn on).
    /// Only `eligible` members take part: a member at its limit neither gains nor loses
    /// credit meanwhile, and takes its turns again, interleaved, once below it. (With
    /// every member eligible the turns are exact; see the property tests.)
    fn weighted_turn(&mut self, managers: &[String], weights: &[u32], eligible: &[bool]) -> usize {
        let mark = membership_mark(managers, weights);
        let n = managers.len();
        if self.credits_of != mark || self.credits.len() != n {
            self.credits = vec![0; n];
            self.credits_of = mark;
            self.credits_start = self.next_index(managers) as u64;
        }
        let mut total = 0;
        for (i, (credit, weight)) in self.credits.iter_mut().zip(weights).enumerate() {
            if eligible[i] {
                *credit += i64::from(*weight);
                total += i64::from(*weight);
            }
        }
        let start = (self.credits_start as usize) % n;
        let mut order = (0..n).map(|k| (start + k) % n).filter(|i| eligible[*i]);
        let first = order.next().unwrap_or(start);
        let index = order.fold(first, |best, i| {
            if self.credits[i] > self.credits[best] {
                i
            } else {
                best
            }
        });
        self.credits[index] -= total;
        index
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub manager_id: String,
    pub open_deals: i64,
    pub chosen: bool,
    pub note: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub manager: Option<String>,
    pub reason: String,
    /// Everyone considered, and why each was or was not chosen.
    pub candidates: Vec<Candidate>,
    /// No manager now, but the plan distributes automatically: the deal waits in the
    /// plan's queue until a member can take it.
    pub waits: bool,
}

/// Why a lead waits, as a metric label (a fixed set: the reason itself names managers and
/// times).
pub fn wait_cause(reason: &str) -> &'static str {
    const CAUSES: [(&str, &str); 5] = [
        (BEHIND_THE_QUEUE, "behind_queue"),
        (NO_MEMBERS, "no_members"),
        (ALL_FULL, "capacity"),
        (ALL_AWAY, "unavailable"),
        (NONE_CAN, "unavailable_or_capacity"),
    ];
    CAUSES
        .iter()
        .find(|(text, _)| reason.starts_with(text))
        .map_or("other", |(_, cause)| cause)
}

const BEHIND_THE_QUEUE: &str = "older deals wait in the plan's queue: waits behind them";
/// A member who could take a lead of a plan with a queue: the queue's deals go first.
const BEFORE_THEM: &str = "could take one: the older deals in the queue go first";
const NO_MEMBERS: &str = "the plan has no managers: waits for one";
const ALL_FULL: &str = "every member is at capacity: waits for the first to free";
const ALL_AWAY: &str = "no member is available: waits for the first back";
const NONE_CAN: &str =
    "no member is both available and below their limit: waits for the first who can take it";

impl Decision {
    /// A lead of `plan` whose queue holds older deals: it waits behind them. Every member
    /// is listed with why it cannot take a lead now, or that the older deals go first.
    pub fn behind_the_queue(plan: &PlanSettings, open: &HashMap<String, i64>, away: &Away) -> Self {
        let weights = plan.all_weights();
        let caps: Vec<Option<u32>> = (0..plan.managers.len()).map(|i| plan.cap(i)).collect();
        let members = Members::new(&plan.managers, &weights, &caps, open, away);
        let note = |m: &str| {
            let blocked = members.index(m).and_then(|i| members.blocked(i));
            blocked.unwrap_or_else(|| BEFORE_THEM.into())
        };
        Self {
            waits: true,
            candidates: members.candidates("", &note),
            ..Self::without(BEHIND_THE_QUEUE)
        }
    }

    fn without(reason: impl Into<String>) -> Self {
        Self {
            manager: None,
            reason: reason.into(),
            candidates: Vec::new(),
            waits: false,
        }
    }
}

/// Chooses the manager of `lead`. `open` holds the open deals per manager in this plan and
/// is updated with the decision (so the next lead of a batch sees it); `away` the members
/// unavailable at the decision time; `random` is a uniformly random number, which keeps
/// this function pure.
pub fn decide(
    plan: &PlanSettings,
    lead: &Lead,
    cursor: &mut Cursor,
    open: &mut HashMap<String, i64>,
    away: &Away,
    random: u64,
) -> Decision {
    let decision = decide_inner(plan, lead, cursor, open, away, random);
    if let Some(m) = &decision.manager {
        *open.entry(m.clone()).or_insert(0) += 1;
    }
    decision
}

fn decide_inner(
    plan: &PlanSettings,
    lead: &Lead,
    cursor: &mut Cursor,
    open: &HashMap<String, i64>,
    away: &Away,
    random: u64,
) -> Decision {
    let Some(named) = &lead.assign_to else {
        return distribute(plan, lead, cursor, open, away, random);
    };
    if plan.names(lead) {
        // Named by hand: limits and availability bind automatic distribution only.
        return Decision {
            manager: Some(named.clone()),
            reason: "named by the bulk add".into(),
            candidates: Vec::new(),
            waits: false,
        };
    }
    // The listener accepted the bulk add while the manager was a member; the manager left
    // since. An accepted lead becomes a deal all the same: as the plan distributes.
    let mut decision = distribute(plan, lead, cursor, open, away, random);
    decision.reason = format!(
        "{}; manager {named} named by the bulk add is no longer a member",
        decision.reason
    );
    decision
}

/// The decision of the plan's mode and strategy (no manager named by a bulk add).
fn distribute(
    plan: &PlanSettings,
    lead: &Lead,
    cursor: &mut Cursor,
    open: &HashMap<String, i64>,
    away: &Away,
    random: u64,
) -> Decision {
    let (prefer_related, strategy) = match plan.mode {
        Mode::Manual => return Decision::without("the plan distributes manually"),
        Mode::Auto {
            prefer_related,
            strategy,
        } => (prefer_related, strategy),
    };
    if plan.managers.is_empty() {
        return Decision {
            waits: true,
            ..Decision::without(NO_MEMBERS)
        };
    }
    let weights = plan.all_weights();
    let caps: Vec<Option<u32>> = (0..plan.managers.len()).map(|i| plan.cap(i)).collect();
    let members = Members::new(&plan.managers, &weights, &caps, open, away);
    let mut skipped_related = Vec::new();
    if prefer_related {
        match related(&members, lead, plan.keep_related) {
            Ok(decision) => return decision,
            Err(skipped) => skipped_related = skipped,
        }
    }
    let mut decision = by_strategy(&members, strategy, cursor, random);
    if !skipped_related.is_empty() {
        decision.reason = format!("{}; {}", decision.reason, skipped_related.join("; "));
    }
    decision
}

/// A plan's members, their weights, limits, open deals and availability, and which may
/// take a lead.
struct Members<'a> {
    managers: &'a [String],
    weights: &'a [u32],
    caps: &'a [Option<u32>],
    open: &'a HashMap<String, i64>,
    away: &'a Away,
    /// Available and below its limit (or without one), by index.
    eligible: Vec<bool>,
}

impl<'a> Members<'a> {
    fn new(
        managers: &'a [String],
        weights: &'a [u32],
        caps: &'a [Option<u32>],
        open: &'a HashMap<String, i64>,
        away: &'a Away,
    ) -> Self {
        let mut members = Self {
            managers,
            weights,
            caps,
            open,
            away,
            eligible: Vec::new(),
        };
        members.eligible = (0..managers.len())
            .map(|i| members.blocked(i).is_none())
            .collect();
        members
    }

    /// Why the member at `i` cannot take a lead now: unavailable, at capacity, or both.
    fn blocked(&self, i: usize) -> Option<String> {
        match (self.unavailable(i), self.full(i)) {
            (Some(away), Some(full)) => Some(format!("{away}; {full}")),
            (away, full) => away.or(full),
        }
    }

    /// "unavailable: paused" for a member unavailable at the decision time.
    fn unavailable(&self, i: usize) -> Option<String> {
        self.away.get(&self.managers[i]).cloned()
    }

    fn count(&self, manager: &str) -> i64 {
        self.open.get(manager).copied().unwrap_or(0)
    }

    /// "at capacity (5 of 5)" for a member at or over its limit.
    fn full(&self, i: usize) -> Option<String> {
        let cap = self.caps.get(i).copied().flatten()?;
        let count = self.count(&self.managers[i]);
        (count >= i64::from(cap)).then(|| format!("at capacity ({count} of {cap})"))
    }

    fn index(&self, manager: &str) -> Option<usize> {
        self.managers.iter().position(|m| m == manager)
    }

    fn weighted(&self) -> bool {
        self.weights.iter().any(|w| *w != 1)
    }

    /// Whether member `a` has fewer open deals per weight than member `b` (exact: the
    /// counts cross-multiplied by the weights).
    fn less_loaded(&self, a: usize, b: usize) -> std::cmp::Ordering {
        let load = |i: usize, other: usize| {
            i128::from(self.count(&self.managers[i])) * i128::from(self.weights[other])
        };
        load(a, b).cmp(&load(b, a))
    }

    /// "7" or, with weights, "7 for weight 2".
    fn load_text(&self, i: usize) -> String {
        let count = self.count(&self.managers[i]);
        if self.weighted() {
            format!("{count} for weight {}", self.weights[i])
        } else {
            count.to_string()
        }
    }

    /// Every member as a candidate, `chosen` marked, each with its note.
    fn candidates(&self, chosen: &str, note: &dyn Fn(&str) -> String) -> Vec<Candidate> {
        self.managers
            .iter()
            .map(|m| Candidate {
                manager_id: m.clone(),
                open_deals: self.count(m),
                chosen: m == chosen,
                note: note(m),
            })
            .collect()
    }
}

/// The related manager (the one the caller named, else the one of the contact's earlier
/// deal) while a member below their limit, and available unless `keep` keeps it for them
/// anyway; else why each was passed over.
fn related(members: &Members<'_>, lead: &Lead, keep: bool) -> Result<Decision, Vec<String>> {
    let mut skipped = Vec::new();
    let related = [
        (&lead.named_related, "named by the caller"),
        (&lead.previous_manager, "of the contact's earlier deal"),
    ];
    for (related, source) in related {
        let Some(related) = related else { continue };
        let Some(i) = members.index(related) else {
            skipped.push(format!(
                "related manager {related} ({source}) is not a member"
            ));
            continue;
        };
        let reason = match (members.full(i), members.unavailable(i)) {
            (Some(_), _) => {
                let blocked = members.blocked(i).unwrap_or_default();
                skipped.push(format!("related manager {related} ({source}) is {blocked}"));
                continue;
            }
            (None, Some(away)) if !keep => {
                skipped.push(format!("related manager {related} ({source}) is {away}"));
                continue;
            }
            (None, Some(away)) => {
                format!("related manager ({source}), kept for them by the plan while {away}")
            }
            (None, None) => format!("related manager ({source})"),
        };
        return Ok(Decision {
            manager: Some(related.clone()),
            candidates: members.candidates(related, &|m| {
                if m == related {
                    reason.clone()
                } else {
                    let blocked = members.index(m).and_then(|i| members.blocked(i));
                    blocked.unwrap_or_else(|| "not related".into())
                }
            }),
            reason,
            waits: false,
        });
    }
    Err(skipped)
}

/// The strategy's pick among the members available and below their limit: at random, the
/// next in turn, or the fewest open deals (among equals, the first in turn from the
/// cursor). Turns move for all but random. None such: the lead waits.
fn by_strategy(
    members: &Members<'_>,
    strategy: Strategy,
    cursor: &mut Cursor,
    random: u64,
) -> Decision {
    let managers = members.managers;
    let n = managers.len();
    let blocked_note = |m: &str| members.index(m).and_then(|i| members.blocked(i));
    let eligible: Vec<usize> = (0..n).filter(|i| members.eligible[*i]).collect();
    if eligible.is_empty() {
        let away = (0..n).filter(|i| members.unavailable(*i).is_some()).count();
        let reason = match away {
            0 => ALL_FULL,
            a if a == n => ALL_AWAY,
            _ => NONE_CAN,
        };
        return Decision {
            manager: None,
            reason: reason.into(),
            candidates: members.candidates("", &|m| blocked_note(m).unwrap_or_default()),
            waits: true,
        };
    }
    let start = cursor.next_index(managers);
    let total: u32 = eligible.iter().map(|i| members.weights[*i]).sum();
    let (index, reason) = match strategy {
        Strategy::Random => (
            eligible[(random % eligible.len() as u64) as usize],
            "picked at random".to_owned(),
        ),
        Strategy::RoundRobin => {
            let index = cursor.weighted_turn(managers, members.weights, &members.eligible);
            let reason = if members.weighted() {
                format!(
                    "next in weighted turn (weight {} of {total})",
                    members.weights[index]
                )
            } else {
                "next in turn".to_owned()
            };
            (index, reason)
        }
        Strategy::LeastOpenDeals => {
            let index = (0..n)
                .map(|k| (start + k) % n)
                .filter(|i| members.eligible[*i])
                .min_by(|&a, &b| members.less_loaded(a, b))
                .unwrap_or(start);
            let reason = format!("fewest open deals ({})", members.load_text(index));
            (index, reason)
        }
    };
    if strategy != Strategy::Random {
        cursor.took_turn(managers, index);
    }
    let chosen = managers[index].clone();
    let position = |m: &str| members.index(m).unwrap_or(index);
    let note = |m: &str| -> String {
        if m == chosen {
            return reason.clone();
        }
        if let Some(blocked) = blocked_note(m) {
            return blocked;
        }
        let i = position(m);
        match strategy {
            Strategy::Random => "not picked".into(),
            Strategy::RoundRobin if members.weighted() => format!(
                "not next in weighted turn (weight {} of {total})",
                members.weights[i]
            ),
            Strategy::RoundRobin => "not next in turn".into(),
            Strategy::LeastOpenDeals if members.less_loaded(index, i).is_lt() => format!(
                "more open deals ({} > {})",
                members.load_text(i),
                members.load_text(index)
            ),
            Strategy::LeastOpenDeals => "as few open deals, later in turn".into(),
        }
    };
    Decision {
        candidates: members.candidates(&chosen, &note),
        manager: Some(chosen.clone()),
        reason: reason.clone(),
        waits: false,
    }
}

#[cfg(test)]
mod tests {
    use super::Strategy;
    use super::*;
    use proptest::prelude::*;

    fn auto(strategy: Strategy, prefer_related: bool, managers: &[&str]) -> PlanSettings {
        PlanSettings {
            mode: Mode::Auto {
                prefer_related,
                strategy,
            },
            managers: managers.iter().map(|m| (*m).to_owned()).collect(),
            weights: Vec::new(),
            caps: Vec::new(),
            keep_related: false,
            response: None,
            archived: false,
        }
    }

    fn weighted(strategy: Strategy, weights: &[u32]) -> PlanSettings {
        let names: Vec<String> = (0..weights.len()).map(|i| format!("m{i}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        PlanSettings {
            weights: weights.to_vec(),
            ..auto(strategy, false, &refs)
        }
    }

    /// The index of each manager picked for `leads` new leads.
    fn picks(
        plan: &PlanSettings,
        cursor: &mut Cursor,
        open: &mut HashMap<String, i64>,
        leads: usize,
    ) -> Vec<usize> {
        (0..leads)
            .map(|_| {
                let m = run(plan, cursor, open);
                plan.managers
                    .iter()
                    .position(|x| *x == m)
                    .expect("a member")
            })
            .collect()
    }

    /// A decision with every member available.
    fn decide(
        plan: &PlanSettings,
        lead: &Lead,
        cursor: &mut Cursor,
        open: &mut HashMap<String, i64>,
        random: u64,
    ) -> Decision {
        super::decide(plan, lead, cursor, open, &Away::new(), random)
    }

    fn run(plan: &PlanSettings, cursor: &mut Cursor, open: &mut HashMap<String, i64>) -> String {
        decide(plan, &Lead::default(), cursor, open, 0)
            .manager
            .expect("assigned")
    }

    #[test]
    fn manual_plans_leave_deals_unassigned() {
        let plan = PlanSettings {
            mode: Mode::Manual,
            managers: vec!["a".into()],
            weights: Vec::new(),
            caps: Vec::new(),
            keep_related: false,
            response: None,
            archived: false,
        };
        let d = decide(
            &plan,
            &Lead::default(),
            &mut Cursor::default(),
            &mut HashMap::new(),
            0,
        );
        assert_eq!(d.manager, None);
    }

    #[test]
    fn bulk_add_to_a_manager_skips_distribution() {
        let plan = auto(Strategy::RoundRobin, false, &["a", "b"]);
        let lead = Lead {
            assign_to: Some("b".into()),
            ..Default::default()
        };
        let mut cursor = Cursor::default();
        let d = decide(&plan, &lead, &mut cursor, &mut HashMap::new(), 0);
        assert_eq!(d.manager.as_deref(), Some("b"));
        assert_eq!(cursor, Cursor::default());
    }

    #[test]
    fn a_named_manager_who_left_the_plan_gives_way_to_its_distribution() {
        let lead = Lead {
            assign_to: Some("z".into()),
            ..Default::default()
        };
        let mut cursor = Cursor::default();
        let plan = auto(Strategy::RoundRobin, false, &["a", "b"]);
        let d = decide(&plan, &lead, &mut cursor, &mut HashMap::new(), 0);
        assert_eq!(d.manager.as_deref(), Some("a"));
        assert!(
            d.reason.contains("z named by the bulk add is no longer"),
            "{}",
            d.reason
        );
        assert_ne!(cursor, Cursor::default(), "it took a turn");
        let manual = PlanSettings {
            mode: Mode::Manual,
            managers: vec!["a".into()],
            weights: Vec::new(),
            caps: Vec::new(),
            keep_related: false,
            response: None,
            archived: false,
        };
        let d = decide(&manual, &lead, &mut cursor, &mut HashMap::new(), 0);
        assert_eq!(d.manager, None, "a manual plan leaves it unassigned");
    }

    #[test]
    fn related_wins_only_while_a_member_and_only_when_preferred() {
        let plan = auto(Strategy::RoundRobin, true, &["a", "b"]);
        let mut cursor = Cursor::default();
        let mut open = HashMap::new();
        let lead = |named: Option<&str>, previous: Option<&str>| Lead {
            named_related: named.map(str::to_owned),
            previous_manager: previous.map(str::to_owned),
            ..Default::default()
        };
        let d = decide(
            &plan,
            &lead(Some("b"), Some("a")),
            &mut cursor,
            &mut open,
            0,
        );
        assert_eq!(d.manager.as_deref(), Some("b"), "the caller's name first");
        assert_eq!(cursor, Cursor::default(), "related leads take no turn");
        let d = decide(
            &plan,
            &lead(Some("gone"), Some("b")),
            &mut cursor,
            &mut open,
            0,
        );
        assert_eq!(
            d.manager.as_deref(),
            Some("b"),
            "then the earlier deal's manager"
        );
        let d = decide(&plan, &lead(Some("gone"), None), &mut cursor, &mut open, 0);
        assert_eq!(d.manager.as_deref(), Some("a"), "then the strategy");
        assert!(d.reason.contains("gone"), "{}", d.reason);

        let plain = auto(Strategy::RoundRobin, false, &["a", "b"]);
        let d = decide(
            &plain,
            &lead(Some("b"), None),
            &mut Cursor::default(),
            &mut open,
            0,
        );
        assert_eq!(
            d.manager.as_deref(),
            Some("a"),
            "without prefer_related, relations are ignored"
        );
    }

    #[test]
    fn no_managers_means_waiting_with_a_reason() {
        let d = decide(
            &auto(Strategy::Random, false, &[]),
            &Lead::default(),
            &mut Cursor::default(),
            &mut HashMap::new(),
            7,
        );
        assert_eq!((d.manager, d.waits), (None, true));
        assert_eq!(d.reason, "the plan has no managers: waits for one");
    }

    #[test]
    fn the_seeds_example_related_then_fewest_deals() {
        // prefer_related with fewest open deals: known contacts go to their manager, new
        // ones to whoever has the fewest.
        let plan = auto(Strategy::LeastOpenDeals, true, &["anna", "boris", "chen"]);
        let mut open = HashMap::from([
            ("anna".to_owned(), 5),
            ("boris".to_owned(), 2),
            ("chen".to_owned(), 2),
        ]);
        let mut cursor = Cursor::default();
        let known = Lead {
            previous_manager: Some("anna".into()),
            ..Default::default()
        };
        assert_eq!(
            decide(&plan, &known, &mut cursor, &mut open, 0)
                .manager
                .as_deref(),
            Some("anna")
        );
        let new = decide(&plan, &Lead::default(), &mut cursor, &mut open, 0);
        assert_eq!(
            new.manager.as_deref(),
            Some("boris"),
            "fewest, first in turn among equals"
        );
        let explained: Vec<(&str, &str)> = new
            .candidates
            .iter()
            .map(|c| (c.manager_id.as_str(), c.note.as_str()))
            .collect();
        assert_eq!(
            explained,
            [
                ("anna", "more open deals (6 > 2)"),
                ("boris", "fewest open deals (2)"),
                ("chen", "as few open deals, later in turn"),
            ]
        );
        assert_eq!(
            decide(&plan, &Lead::default(), &mut cursor, &mut open, 0)
                .manager
                .as_deref(),
            Some("chen")
        );
        assert_eq!(open["anna"], 6);
    }

    #[test]
    fn weighted_turns_interleave_and_explain_the_share() {
        let plan = weighted(Strategy::RoundRobin, &[3, 2, 1]);
        let mut cursor = Cursor::default();
        let mut open = HashMap::new();
        let seq = picks(&plan, &mut cursor, &mut open, 12);
        assert_eq!(seq, [0, 1, 0, 2, 1, 0, 0, 1, 0, 2, 1, 0]);
        let d = decide(&plan, &Lead::default(), &mut cursor, &mut open, 0);
        assert_eq!(d.reason, "next in weighted turn (weight 3 of 6)");
        assert_eq!(
            d.candidates[2].note,
            "not next in weighted turn (weight 1 of 6)"
        );

        let least = weighted(Strategy::LeastOpenDeals, &[2, 1]);
        let mut open = HashMap::from([("m0".to_owned(), 3), ("m1".to_owned(), 2)]);
        let d = decide(
            &least,
            &Lead::default(),
            &mut Cursor::default(),
            &mut open,
            0,
        );
        assert_eq!(
            d.manager.as_deref(),
            Some("m0"),
            "3 for weight 2 is less than 2 for 1"
        );
        assert_eq!(d.reason, "fewest open deals (3 for weight 2)");
        assert_eq!(
            d.candidates[1].note,
            "more open deals (2 for weight 1 > 3 for weight 2)"
        );
    }

    #[test]
    fn after_a_removal_the_turn_passes_on_without_repeating() {
        let mut plan = auto(Strategy::RoundRobin, false, &["a", "b", "c"]);
        let mut cursor = Cursor::default();
        let mut open = HashMap::new();
        assert_eq!(run(&plan, &mut cursor, &mut open), "a");
        assert_eq!(run(&plan, &mut cursor, &mut open), "b");
        plan.managers = vec!["b".into(), "c".into()];
        assert_eq!(
            run(&plan, &mut cursor, &mut open),
            "c",
            "not b twice in a row"
        );
        plan.managers = vec!["a".into(), "b".into()];
        // c left after taking its turn: whoever stands at c's old place goes next.
        assert_eq!(run(&plan, &mut cursor, &mut open), "b");
    }

    proptest! {
        /// Within any stretch of constant membership, round-robin counts differ by at most
        /// one, and nobody gets two leads in a row while others are eligible.
        #[test]
        fn round_robin_is_even_across_membership_changes(
            steps in proptest::collection::vec((0usize..6, 1usize..30), 1..12),
        ) {
            let pool = ["m0", "m1", "m2", "m3", "m4", "m5"];
            let mut cursor = Cursor::default();
            let mut open = HashMap::new();
            let mut previous: Option<String> = None;
            for (size_seed, leads) in steps {
                let size = 1 + size_seed % pool.len();
                let offset = size_seed % 2;
                let members: Vec<&str> = pool.iter().cycle().skip(offset).take(size).copied().collect();
                let plan = auto(Strategy::RoundRobin, false, &members);
                let mut counts: HashMap<String, usize> = HashMap::new();
                for _ in 0..leads {
                    let m = run(&plan, &mut cursor, &mut open);
                    if size > 1 {
                        prop_assert_ne!(Some(&m), previous.as_ref());
                    }
                    previous = Some(m.clone());
                    *counts.entry(m).or_default() += 1;
                }
                let per: Vec<usize> = members.iter().map(|m| counts.get(*m).copied().unwrap_or(0)).collect();
                prop_assert!(per.iter().max().unwrap() - per.iter().min().unwrap() <= 1, "{per:?}");
            }
        }

        #[test]
        fn least_open_always_picks_an_argmin(
            counts in proptest::collection::vec(0i64..20, 1..8),
            leads in 1usize..40,
        ) {
            let names: Vec<String> = (0..counts.len()).map(|i| format!("m{i}")).collect();
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            let plan = auto(Strategy::LeastOpenDeals, false, &refs);
            let mut open: HashMap<String, i64> = names.iter().cloned().zip(counts).collect();
            let mut cursor = Cursor::default();
            for _ in 0..leads {
                let min = *open.values().min().unwrap();
                let d = decide(&plan, &Lead::default(), &mut cursor, &mut open, 0);
                let chosen = d.manager.unwrap();
                prop_assert_eq!(open[&chosen] - 1, min);
            }
        }

        /// Weighted round robin (issue 20): over any window of sum-of-weights consecutive
        /// leads with the same members, each member gets exactly its weight; and the
        /// turns interleave: in any window of L leads a member of weight w gets less than
        /// two away from L·w/W, and it never takes more than ⌈w/(W−w)⌉ + 1 leads in a row
        /// (never AAABBC for 3, 2, 1: A at most twice in a row).
        #[test]
        fn weighted_turns_are_exact_and_interleaved(
            weights in proptest::collection::vec(1u32..6, 1..7),
            earlier in 0usize..20,
            cycles in 1usize..4,
        ) {
            let plan = weighted(Strategy::RoundRobin, &weights);
            let total: usize = weights.iter().map(|w| *w as usize).sum();
            let mut cursor = Cursor::default();
            let mut open = HashMap::new();
            // Turns taken under other members first: the turn continues from there.
            let before = weighted(Strategy::RoundRobin, &[1, 2]);
            picks(&before, &mut cursor, &mut open, earlier);
            let seq = picks(&plan, &mut cursor, &mut open, total * (cycles + 1));
            for start in 0..=seq.len() - total {
                let mut counts = vec![0u32; weights.len()];
                for &i in &seq[start..start + total] {
                    counts[i] += 1;
                }
                prop_assert_eq!(&counts, &weights, "window at {}: {:?}", start, seq);
            }
            for len in 1..=total {
                for start in 0..=seq.len() - len {
                    for (i, w) in weights.iter().enumerate() {
                        let got = seq[start..start + len].iter().filter(|&&x| x == i).count() as f64;
                        let fair = (len * *w as usize) as f64 / total as f64;
                        prop_assert!((got - fair).abs() < 2.0,
                            "member {} of weight {} got {} of {} leads at {}: {:?}", i, w, got, len, start, seq);
                    }
                }
            }
            for (i, w) in weights.iter().enumerate() {
                let w = *w as usize;
                if w == total {
                    continue;
                }
                let longest = seq.chunk_by(|a, b| a == b).filter(|run| run[0] == i).map(<[usize]>::len).max().unwrap_or(0);
                prop_assert!(longest <= w.div_ceil(total - w) + 1, "member {} of weight {} took {} in a row: {:?}", i, w, longest, seq);
            }
        }

        /// Fewest open deals per weight: from no open deals, every sum-of-weights leads
        /// give each member exactly its weight, and each pick is a least loaded member.
        #[test]
        fn least_open_compares_deals_per_weight(
            weights in proptest::collection::vec(1u32..6, 1..7),
            cycles in 1usize..4,
        ) {
            let plan = weighted(Strategy::LeastOpenDeals, &weights);
            let total: usize = weights.iter().map(|w| *w as usize).sum();
            let mut cursor = Cursor::default();
            let mut open = HashMap::new();
            for cycle in 1..=cycles {
                for _ in 0..total {
                    let load = |m: &String, w: u32| open.get(m).copied().unwrap_or(0) as f64 / f64::from(w);
                    let least = plan.managers.iter().zip(&weights)
                        .map(|(m, w)| load(m, *w)).fold(f64::INFINITY, f64::min);
                    let m = run(&plan, &mut cursor, &mut open);
                    let i = plan.managers.iter().position(|x| *x == m).unwrap();
                    prop_assert!((f64::from(open[&m] as u32 - 1) / f64::from(weights[i]) - least).abs() < 1e-9);
                }
                for (m, w) in plan.managers.iter().zip(&weights) {
                    prop_assert_eq!(open.get(m).copied().unwrap_or(0), (cycle as i64) * i64::from(*w));
                }
            }
        }

        #[test]
        fn random_always_picks_a_member(managers in 1usize..8, random in any::<u64>()) {
            let names: Vec<String> = (0..managers).map(|i| format!("m{i}")).collect();
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            let plan = auto(Strategy::Random, false, &refs);
            let d = decide(&plan, &Lead::default(), &mut Cursor::default(), &mut HashMap::new(), random);
            prop_assert!(names.contains(&d.manager.unwrap()));
        }

        /// Limits (issue 20): whatever the strategy, limits and counts, the chosen member
        /// is below its limit, and a lead waits exactly when every member is at its limit;
        /// the related manager at its limit gives way to the strategy.
        #[test]
        fn a_member_at_its_limit_is_never_chosen(
            strategy in prop_oneof![
                Just(Strategy::Random),
                Just(Strategy::RoundRobin),
                Just(Strategy::LeastOpenDeals)
            ],
            members in proptest::collection::vec((0u32..4, 0i64..5, 1u32..4), 1..6),
            related in proptest::option::of(0usize..6),
            leads in 1usize..12,
            random in any::<u64>(),
        ) {
            let names: Vec<String> = (0..members.len()).map(|i| format!("m{i}")).collect();
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            let plan = PlanSettings {
                weights: members.iter().map(|m| m.2).collect(),
                caps: members.iter().map(|m| m.0).collect(),
                ..auto(strategy, true, &refs)
            };
            let mut open: HashMap<String, i64> =
                names.iter().cloned().zip(members.iter().map(|m| m.1)).collect();
            let lead = Lead {
                previous_manager: related.map(|i| format!("m{i}")),
                ..Default::default()
            };
            let mut cursor = Cursor::default();
            for _ in 0..leads {
                let below = |open: &HashMap<String, i64>, i: usize| {
                    members[i].0 == 0 || open[&names[i]] < i64::from(members[i].0)
                };
                let any_below = (0..names.len()).any(|i| below(&open, i));
                let before = open.clone();
                let d = decide(&plan, &lead, &mut cursor, &mut open, random);
                prop_assert_eq!(d.waits, !any_below, "{}", d.reason);
                prop_assert_eq!(d.manager.is_some(), any_below);
                if let Some(m) = &d.manager {
                    let i = names.iter().position(|x| x == m).unwrap();
                    prop_assert!(below(&before, i), "{} chosen at its limit: {}", m, d.reason);
                }
                for c in d.candidates.iter().filter(|c| !c.chosen) {
                    let i = names.iter().position(|x| *x == c.manager_id).unwrap();
                    if !below(&before, i) {
                        prop_assert!(c.note.starts_with("at capacity"), "{}", c.note);
                    }
                }
            }
        }
    }

    proptest! {
        /// Availability (issue 20): whatever the strategy, limits and who is away, an
        /// unavailable member is chosen only as the related manager of a plan that keeps
        /// leads for them; a lead waits exactly when no member is both available and below
        /// its limit (and no kept related manager takes it); every member passed over for
        /// being away says so.
        #[test]
        fn an_unavailable_member_is_never_chosen_by_the_strategy(
            strategy in prop_oneof![
                Just(Strategy::Random),
                Just(Strategy::RoundRobin),
                Just(Strategy::LeastOpenDeals)
            ],
            members in proptest::collection::vec((0u32..4, 0i64..5, 1u32..4, any::<bool>()), 1..6),
            related in proptest::option::of(0usize..6),
            keep_related in any::<bool>(),
            leads in 1usize..12,
            random in any::<u64>(),
        ) {
            let names: Vec<String> = (0..members.len()).map(|i| format!("m{i}")).collect();
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            let plan = PlanSettings {
                weights: members.iter().map(|m| m.2).collect(),
                caps: members.iter().map(|m| m.0).collect(),
                keep_related,
                ..auto(strategy, true, &refs)
            };
            let away: Away = names
                .iter()
                .zip(&members)
                .filter(|(_, m)| m.3)
                .map(|(n, _)| (n.clone(), "unavailable: paused".to_owned()))
                .collect();
            let mut open: HashMap<String, i64> =
                names.iter().cloned().zip(members.iter().map(|m| m.1)).collect();
            let related_name = related.map(|i| format!("m{i}"));
            let lead = Lead {
                previous_manager: related_name.clone(),
                ..Default::default()
            };
            let mut cursor = Cursor::default();
            for _ in 0..leads {
                let below = |open: &HashMap<String, i64>, i: usize| {
                    members[i].0 == 0 || open[&names[i]] < i64::from(members[i].0)
                };
                let can = |open: &HashMap<String, i64>, i: usize| below(open, i) && !members[i].3;
                let kept = related
                    .filter(|i| *i < names.len() && keep_related && below(&open, *i));
                let any_can = (0..names.len()).any(|i| can(&open, i)) || kept.is_some();
                let before = open.clone();
                let d = super::decide(&plan, &lead, &mut cursor, &mut open, &away, random);
                prop_assert_eq!(d.waits, !any_can, "{}", d.reason);
                prop_assert_eq!(d.manager.is_some(), any_can);
                if let Some(m) = &d.manager {
                    let i = names.iter().position(|x| x == m).unwrap();
                    prop_assert!(below(&before, i), "{} chosen at its limit: {}", m, d.reason);
                    if members[i].3 {
                        prop_assert_eq!(Some(i), kept, "{} chosen while away: {}", m, d.reason);
                        prop_assert!(d.reason.contains("kept for them"), "{}", d.reason);
                    }
                }
                for c in d.candidates.iter().filter(|c| !c.chosen) {
                    let i = names.iter().position(|x| *x == c.manager_id).unwrap();
                    if members[i].3 {
                        prop_assert!(c.note.starts_with("unavailable: paused"), "{}", c.note);
                    }
                }
            }
        }
    }

    #[test]
    fn a_related_manager_off_work_gives_way_unless_the_plan_keeps_leads_for_them() {
        let lead = Lead {
            previous_manager: Some("a".into()),
            ..Default::default()
        };
        let away = Away::from([("a".to_owned(), "unavailable: day off".to_owned())]);
        let mut plan = auto(Strategy::RoundRobin, true, &["a", "b"]);
        let d = super::decide(
            &plan,
            &lead,
            &mut Cursor::default(),
            &mut HashMap::new(),
            &away,
            0,
        );
        assert_eq!(d.manager.as_deref(), Some("b"));
        assert!(
            d.reason.contains(
                "related manager a (of the contact's earlier deal) is unavailable: day off"
            ),
            "{}",
            d.reason
        );
        assert_eq!(d.candidates[0].note, "unavailable: day off");
        plan.keep_related = true;
        let d = super::decide(
            &plan,
            &lead,
            &mut Cursor::default(),
            &mut HashMap::new(),
            &away,
            0,
        );
        assert_eq!(d.manager.as_deref(), Some("a"));
        assert_eq!(
            d.reason,
            "related manager (of the contact's earlier deal), kept for them by the plan while unavailable: day off"
        );
        // Everyone away: the lead waits, and says why.
        let away = Away::from([
            ("a".to_owned(), "unavailable: paused".to_owned()),
            (
                "b".to_owned(),
                "unavailable: outside working hours".to_owned(),
            ),
        ]);
        plan.keep_related = false;
        let d = super::decide(
            &plan,
            &lead,
            &mut Cursor::default(),
            &mut HashMap::new(),
            &away,
            0,
        );
        assert!(d.waits && d.manager.is_none());
        assert!(
            d.reason.starts_with("no member is available"),
            "{}",
            d.reason
        );
        assert_eq!(wait_cause(&d.reason), "unavailable");
        assert_eq!(wait_cause(BEHIND_THE_QUEUE), "behind_queue");
    }

    #[test]
    fn a_full_plan_waits_and_explains_every_member() {
        let plan = PlanSettings {
            caps: vec![1, 2],
            ..auto(Strategy::LeastOpenDeals, true, &["a", "b"])
        };
        let mut open = HashMap::from([("a".to_owned(), 1), ("b".to_owned(), 1)]);
        let lead = Lead {
            previous_manager: Some("a".into()),
            ..Default::default()
        };
        let d = decide(&plan, &lead, &mut Cursor::default(), &mut open, 0);
        assert_eq!(d.manager.as_deref(), Some("b"));
        assert!(
            d.reason.contains(
                "related manager a (of the contact's earlier deal) is at capacity (1 of 1)"
            ),
            "{}",
            d.reason
        );
        let d = decide(&plan, &lead, &mut Cursor::default(), &mut open, 0);
        assert_eq!((d.manager, d.waits), (None, true));
        let notes: Vec<&str> = d.candidates.iter().map(|c| c.note.as_str()).collect();
        assert_eq!(notes, ["at capacity (1 of 1)", "at capacity (2 of 2)"]);
        let empty = auto(Strategy::RoundRobin, false, &[]);
        let d = decide(&empty, &lead, &mut Cursor::default(), &mut open, 0);
        assert!(d.waits, "a plan without members waits for one");
        let manual = PlanSettings {
            mode: Mode::Manual,
            ..plan
        };
        let d = decide(&manual, &lead, &mut Cursor::default(), &mut open, 0);
        assert!(!d.waits, "a plan that distributes by hand has no queue");
    }
}
