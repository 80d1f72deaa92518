//! Deciding the manager of a new lead from the plan's settings: manual, or automatic at
//! random, in turn, or to the fewest open deals, preferring the manager the contact knows.

use std::collections::HashMap;

/// The plan settings the distributor keeps (a copy fed by plan events).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanSettings {
    pub mode: Mode,
    /// Members of the plan in round-robin order.
    pub managers: Vec<String>,
    pub archived: bool,
}

impl PlanSettings {
    /// Whether `lead` goes straight to a manager its bulk add named: only while that
    /// manager is a member.
    pub fn names(&self, lead: &Lead) -> bool {
        lead.assign_to
            .as_ref()
            .is_some_and(|m| self.managers.contains(m))
    }
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

/// Whose turn it is: the manager who got the last lead by turn, and where they stood.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cursor {
    pub last: Option<String>,
    pub last_index: u64,
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
}

impl Decision {
    fn without(reason: impl Into<String>) -> Self {
        Self {
            manager: None,
            reason: reason.into(),
            candidates: Vec::new(),
        }
    }
}

/// Chooses the manager of `lead`. `open` holds the open deals per manager in this plan and
/// is updated with the decision (so the next lead of a batch sees it); `random` is a
/// uniformly random number, which keeps this function pure.
pub fn decide(
    plan: &PlanSettings,
    lead: &Lead,
    cursor: &mut Cursor,
    open: &mut HashMap<String, i64>,
    random: u64,
) -> Decision {
    let decision = decide_inner(plan, lead, cursor, open, random);
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
    random: u64,
) -> Decision {
    let Some(named) = &lead.assign_to else {
        return distribute(plan, lead, cursor, open, random);
    };
    if plan.names(lead) {
        return Decision {
            manager: Some(named.clone()),
            reason: "named by the bulk add".into(),
            candidates: Vec::new(),
        };
    }
    // The listener accepted the bulk add while the manager was a member; the manager left
    // since. An accepted lead becomes a deal all the same: as the plan distributes.
    let mut decision = distribute(plan, lead, cursor, open, random);
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
        return Decision::without("the plan has no managers");
    }
    let members = Members {
        managers: &plan.managers,
        open,
    };
    let mut skipped_related = Vec::new();
    if prefer_related {
        match related(&members, lead) {
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

/// A plan's members and their open deals.
struct Members<'a> {
    managers: &'a [String],
    open: &'a HashMap<String, i64>,
}

impl Members<'_> {
    fn count(&self, manager: &str) -> i64 {
        self.open.get(manager).copied().unwrap_or(0)
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
/// deal) while a member; else why each was passed over.
fn related(members: &Members<'_>, lead: &Lead) -> Result<Decision, Vec<String>> {
    let mut skipped = Vec::new();
    let related = [
        (&lead.named_related, "named by the caller"),
        (&lead.previous_manager, "of the contact's earlier deal"),
    ];
    for (related, source) in related {
        let Some(related) = related else { continue };
        if members.managers.contains(related) {
            let reason = format!("related manager ({source})");
            return Ok(Decision {
                manager: Some(related.clone()),
                candidates: members.candidates(related, &|m| {
                    if m == related {
                        reason.clone()
                    } else {
                        "not related".into()
                    }
                }),
                reason,
            });
        }
        skipped.push(format!(
            "related manager {related} ({source}) is not a member"
        ));
    }
    Err(skipped)
}

/// The strategy's pick: at random, the next in turn, or the fewest open deals (among
/// equals, the first in turn from the cursor). Turns move for all but random.
fn by_strategy(
    members: &Members<'_>,
    strategy: Strategy,
    cursor: &mut Cursor,
    random: u64,
) -> Decision {
    let managers = members.managers;
    let start = cursor.next_index(managers);
    let (index, reason) = match strategy {
        Strategy::Random => (
            (random % managers.len() as u64) as usize,
            "picked at random".to_owned(),
        ),
        Strategy::RoundRobin => (start, "next in turn".to_owned()),
        Strategy::LeastOpenDeals => {
            let index = (0..managers.len())
                .map(|k| (start + k) % managers.len())
                .min_by_key(|&i| members.count(&managers[i]))
                .unwrap_or(start);
            let reason = format!("fewest open deals ({})", members.count(&managers[index]));
            (index, reason)
        }
    };
    if strategy != Strategy::Random {
        cursor.took_turn(managers, index);
    }
    let chosen = managers[index].clone();
    let chosen_count = members.count(&chosen);
    let note = |m: &str| -> String {
        if m == chosen {
            return reason.clone();
        }
        match strategy {
            Strategy::Random => "not picked".into(),
            Strategy::RoundRobin => "not next in turn".into(),
            Strategy::LeastOpenDeals if members.count(m) > chosen_count => {
                format!("more open deals ({} > {chosen_count})", members.count(m))
            }
            Strategy::LeastOpenDeals => "as few open deals, later in turn".into(),
        }
    };
    Decision {
        candidates: members.candidates(&chosen, &note),
        manager: Some(chosen.clone()),
        reason: reason.clone(),
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
            archived: false,
        }
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
    fn no_managers_means_unassigned_with_a_reason() {
        let d = decide(
            &auto(Strategy::Random, false, &[]),
            &Lead::default(),
            &mut Cursor::default(),
            &mut HashMap::new(),
            7,
        );
        assert_eq!(d.manager, None);
        assert_eq!(d.reason, "the plan has no managers");
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

        #[test]
        fn random_always_picks_a_member(managers in 1usize..8, random in any::<u64>()) {
            let names: Vec<String> = (0..managers).map(|i| format!("m{i}")).collect();
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            let plan = auto(Strategy::Random, false, &refs);
            let d = decide(&plan, &Lead::default(), &mut Cursor::default(), &mut HashMap::new(), random);
            prop_assert!(names.contains(&d.manager.unwrap()));
        }
    }
}
