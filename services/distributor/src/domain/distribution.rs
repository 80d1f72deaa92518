//! Deciding the manager of a new lead from the plan's settings.

/// The plan settings the distributor keeps (a copy fed by plan events).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanSettings {
    pub mode: Mode,
    /// Members of the plan in round-robin order.
    pub managers: Vec<String>,
    pub archived: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Manual,
    Auto {
        prefer_related: bool,
        strategy: Strategy,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    Random,
    RoundRobin,
    LeastOpenDeals,
}

impl Strategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Random => "random",
            Self::RoundRobin => "round_robin",
            Self::LeastOpenDeals => "least_open_deals",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Random, Self::RoundRobin, Self::LeastOpenDeals]
            .into_iter()
            .find(|v| v.as_str() == s)
    }
}

/// What is known about one lead when its manager is chosen.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lead {
    /// A bulk add straight to one manager: no distribution.
    pub assign_to: Option<String>,
    /// The contact's related manager (named by the caller, or from an earlier deal).
    pub related_manager: Option<String>,
}

/// The state a decision reads and advances.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cursor {
    /// Leads assigned by the strategy so far; the next round-robin position.
    pub round_robin: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub manager: Option<String>,
    pub reason: String,
}

/// Chooses the manager of `lead`. `random` is a uniformly random number supplied by the
/// caller, which keeps this function pure and testable. Advances `cursor` when the
/// strategy was used.
pub fn decide(plan: &PlanSettings, lead: &Lead, cursor: &mut Cursor, random: u64) -> Decision {
    if let Some(manager) = &lead.assign_to {
        return Decision {
            manager: Some(manager.clone()),
            reason: "named by the bulk add".into(),
        };
    }
    let (prefer_related, strategy) = match plan.mode {
        Mode::Manual => {
            return Decision {
                manager: None,
                reason: "plan distributes manually".into(),
            };
        }
        Mode::Auto {
            prefer_related,
            strategy,
        } => (prefer_related, strategy),
    };
    if plan.managers.is_empty() {
        return Decision {
            manager: None,
            reason: "plan has no managers".into(),
        };
    }
    if prefer_related
        && let Some(related) = &lead.related_manager
        && plan.managers.contains(related)
    {
        return Decision {
            manager: Some(related.clone()),
            reason: "related manager of the contact".into(),
        };
    }
    let n = plan.managers.len() as u64;
    let (index, reason) = match strategy {
        Strategy::Random => (random % n, "random"),
        // Least-open needs open-deal counts; until they are tracked it falls back to turn
        // order, which is what its tie-break is anyway.
        Strategy::RoundRobin | Strategy::LeastOpenDeals => {
            (cursor.round_robin % n, "round robin: next in turn")
        }
    };
    cursor.round_robin += 1;
    Decision {
        manager: Some(plan.managers[index as usize].clone()),
        reason: reason.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::Strategy;
    use super::*;
    use proptest::prelude::*;

    fn auto(strategy: Strategy, managers: &[&str]) -> PlanSettings {
        PlanSettings {
            mode: Mode::Auto {
                prefer_related: true,
                strategy,
            },
            managers: managers.iter().map(|m| (*m).to_owned()).collect(),
            archived: false,
        }
    }

    #[test]
    fn manual_plans_leave_deals_unassigned() {
        let plan = PlanSettings {
            mode: Mode::Manual,
            managers: vec!["a".into()],
            archived: false,
        };
        let d = decide(&plan, &Lead::default(), &mut Cursor::default(), 0);
        assert_eq!(d.manager, None);
    }

    #[test]
    fn bulk_add_to_a_manager_skips_distribution() {
        let plan = auto(Strategy::RoundRobin, &["a", "b"]);
        let lead = Lead {
            assign_to: Some("z".into()),
            ..Default::default()
        };
        let mut cursor = Cursor::default();
        assert_eq!(
            decide(&plan, &lead, &mut cursor, 0).manager.as_deref(),
            Some("z")
        );
        assert_eq!(cursor.round_robin, 0);
    }

    #[test]
    fn related_manager_wins_only_while_a_member() {
        let plan = auto(Strategy::RoundRobin, &["a", "b"]);
        let mut cursor = Cursor::default();
        let related = |m: &str| Lead {
            related_manager: Some(m.into()),
            ..Default::default()
        };
        assert_eq!(
            decide(&plan, &related("b"), &mut cursor, 0)
                .manager
                .as_deref(),
            Some("b")
        );
        assert_eq!(cursor.round_robin, 0, "related leads do not take a turn");
        assert_eq!(
            decide(&plan, &related("gone"), &mut cursor, 0)
                .manager
                .as_deref(),
            Some("a")
        );
    }

    #[test]
    fn no_managers_means_unassigned_with_a_reason() {
        let d = decide(
            &auto(Strategy::Random, &[]),
            &Lead::default(),
            &mut Cursor::default(),
            7,
        );
        assert_eq!(d.manager, None);
        assert_eq!(d.reason, "plan has no managers");
    }

    proptest! {
        #[test]
        fn round_robin_counts_never_differ_by_more_than_one(managers in 1usize..8, leads in 0usize..200) {
            let names: Vec<String> = (0..managers).map(|i| format!("m{i}")).collect();
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            let plan = auto(Strategy::RoundRobin, &refs);
            let mut cursor = Cursor::default();
            let mut counts = std::collections::HashMap::new();
            for _ in 0..leads {
                let d = decide(&plan, &Lead::default(), &mut cursor, 0);
                *counts.entry(d.manager.unwrap()).or_insert(0usize) += 1;
            }
            let max = names.iter().map(|n| counts.get(n).copied().unwrap_or(0)).max().unwrap();
            let min = names.iter().map(|n| counts.get(n).copied().unwrap_or(0)).min().unwrap();
            prop_assert!(max - min <= 1);
        }

        #[test]
        fn random_always_picks_a_member(managers in 1usize..8, random in any::<u64>()) {
            let names: Vec<String> = (0..managers).map(|i| format!("m{i}")).collect();
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            let plan = auto(Strategy::Random, &refs);
            let d = decide(&plan, &Lead::default(), &mut Cursor::default(), random);
            prop_assert!(names.contains(&d.manager.unwrap()));
        }
    }
}
