//! Plans: their settings, stages and managers.

use time::OffsetDateTime;
use uuid::Uuid;

use super::{DomainError, Money, Reason};

/// How new leads of a plan find their manager.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Distribution {
    Manual,
    Auto {
        prefer_related: bool,
        /// With `prefer_related`: the related manager gets the deal even while unavailable.
        keep_related: bool,
        strategy: Strategy,
        /// The response deadline of the deals the distributor assigns, if any.
        response: Option<Response>,
    },
}

/// The most seconds of working time a response deadline may give (a week).
pub const MAX_RESPONSE_SECONDS: u32 = 604_800;
/// The most times a deal not accepted in time is reassigned before it waits for a person.
pub const MAX_REASSIGNMENTS: u32 = 10;

/// A plan's response deadline: the assigned manager accepts a deal within `seconds` of
/// their working time, or it goes to the next manager, at most `max_reassignments` times,
/// then waits for a person.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Response {
    /// 1 to [`MAX_RESPONSE_SECONDS`].
    pub seconds: u32,
    /// 0 to [`MAX_REASSIGNMENTS`].
    pub max_reassignments: u32,
}

salesplan_platform::named_enum! {
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Strategy {
        Random => "random",
        RoundRobin => "round_robin",
        LeastOpenDeals => "least_open_deals",
    }
}

/// What a manager's membership of a plan sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Terms {
    /// The member's share of the leads (1 to [`MAX_WEIGHT`]).
    pub weight: u32,
    /// Open deals in the plan at which automatic distribution skips the member (1 to
    /// [`MAX_OPEN_DEALS_LIMIT`]); none: no limit.
    pub max_open_deals: Option<u32>,
}

impl Default for Terms {
    fn default() -> Self {
        Self {
            weight: 1,
            max_open_deals: None,
        }
    }
}

salesplan_platform::named_enum! {
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum StageKind {
        Open => "open",
        Won => "won",
        Lost => "lost",
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stage {
    pub id: Uuid,
    pub name: String,
    pub color: String,
    pub kind: StageKind,
    pub position: i32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LossReason {
    pub id: Uuid,
    pub name: String,
    pub archived: bool,
    /// Some deal was closed with it: it is archived, never deleted, when left out.
    pub used: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub id: Uuid,
    pub account_id: String,
    pub name: String,
    pub average_amount: Money,
    pub chat_label: String,
    pub distribution: Distribution,
    /// In the order they were added: the round-robin order.
    pub managers: Vec<String>,
    /// Each manager's terms (weight, limit), in the order of `managers`.
    pub terms: Vec<Terms>,
    /// Board order: OPEN stages, then WON, then LOST.
    pub stages: Vec<Stage>,
    /// Moving to LOST needs one of the active `loss_reasons`.
    pub require_reason: bool,
    /// Active reasons in their order, then archived ones.
    pub loss_reasons: Vec<LossReason>,
    pub archived: bool,
    /// The version the plan was archived at, while it is archived: leads accepted at an
    /// earlier version still become deals.
    pub archived_at_version: Option<i64>,
    pub version: i64,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
}

impl Plan {
    /// After a change made to `before` (a copy of this plan as it was): the next version,
    /// and the version it was archived at when the change archived it.
    pub fn advance(&mut self, before: &Plan, now: OffsetDateTime) {
        self.version = before.version + 1;
        self.updated_at = now;
        self.archived_at_version = match (before.archived, self.archived) {
            (_, false) => None,
            (false, true) => Some(self.version),
            (true, true) => before.archived_at_version,
        };
    }

    /// Whether a new deal may be created in the plan: always while it takes leads; once
    /// archived, only for a lead accepted at an earlier version (its 202 was a promise).
    pub fn takes_deal(&self, accepted_at_version: Option<i64>) -> Result<(), DomainError> {
        match (self.archived, self.archived_at_version, accepted_at_version) {
            (false, _, _) => Ok(()),
            (true, Some(archived_at), Some(accepted_at)) if accepted_at < archived_at => Ok(()),
            (true, _, _) => Err(DomainError::Precondition(
                Reason::PlanArchived,
                format!("plan {} is archived", self.id),
            )),
        }
    }

    pub fn stage(&self, id: Uuid) -> Option<&Stage> {
        self.stages.iter().find(|s| s.id == id)
    }

    pub fn first_open_stage(&self) -> Option<&Stage> {
        self.stages.iter().find(|s| s.kind == StageKind::Open)
    }

    pub fn has_manager(&self, manager_id: &str) -> bool {
        self.managers.iter().any(|m| m == manager_id)
    }

    /// The last OPEN stage: where a reopened WON deal goes, and the fallback of every
    /// reopen whose remembered stage is gone.
    pub fn last_open_stage(&self) -> Option<&Stage> {
        self.stages.iter().rev().find(|s| s.kind == StageKind::Open)
    }

    pub fn stage_of_kind(&self, kind: StageKind) -> Option<&Stage> {
        self.stages.iter().find(|s| s.kind == kind)
    }

    pub fn active_reason(&self, id: Uuid) -> Option<&LossReason> {
        self.loss_reasons.iter().find(|r| r.id == id && !r.archived)
    }

    /// Replaces the managers, each with its terms: those already in keep their place (the
    /// round-robin order), new ones are appended in the order given.
    pub fn set_managers(&mut self, members: Vec<(String, Terms)>) -> Result<(), DomainError> {
        let managers: Vec<String> = members.iter().map(|(m, _)| m.clone()).collect();
        check_managers(&managers)?;
        let terms: std::collections::HashMap<&str, Terms> =
            members.iter().map(|(m, t)| (m.as_str(), *t)).collect();
        let mut next: Vec<String> = self
            .managers
            .iter()
            .filter(|m| terms.contains_key(m.as_str()))
            .cloned()
            .collect();
        for manager in &managers {
            if !next.contains(manager) {
                next.push(manager.clone());
            }
        }
        self.terms = next.iter().map(|m| terms[m.as_str()]).collect();
        self.managers = next;
        Ok(())
    }

    /// Whether leads of the plan are distributed automatically (and so may wait for one).
    pub fn distributes_automatically(&self) -> bool {
        matches!(self.distribution, Distribution::Auto { .. })
    }

    /// The plan's response deadline, if it has one.
    pub fn response(&self) -> Option<Response> {
        match self.distribution {
            Distribution::Auto { response, .. } => response,
            Distribution::Manual => None,
        }
    }

    /// Whether this plan, changed from `before`, ends the response deadlines running in
    /// it: its deadline removed (or distribution by hand), or the plan archived. They end
    /// for good: a deadline put back, or the plan unarchived, applies to assignments from
    /// then on (the distributor's reassignment of an ended one is refused: DEADLINE_ENDED).
    /// A deadline changed in length keeps the running ones' due times.
    pub fn ends_deadlines_of(&self, before: &Plan) -> bool {
        let in_force = |p: &Plan| p.response().is_some() && !p.archived;
        in_force(before) && !in_force(self)
    }

    /// Sets `require_reason` and the active reasons: inputs with an id rename (and
    /// unarchive) that reason, inputs without one add a reason. Existing reasons left out
    /// are archived when some deal was closed with them (old deals and reports still name
    /// them), and deleted when none was. A plan keeps at most [`MAX_ACTIVE_REASONS`] active
    /// and [`MAX_REASONS`] reasons in all, so its snapshot (every plan event) stays small.
    pub fn set_loss_reasons(
        &mut self,
        require_reason: bool,
        inputs: Vec<(Option<Uuid>, String)>,
        mut new_id: impl FnMut() -> Uuid,
    ) -> Result<(), DomainError> {
        if inputs.len() > MAX_ACTIVE_REASONS {
            return Err(DomainError::invalid(
                "reasons",
                format!("at most {MAX_ACTIVE_REASONS} active reasons"),
            ));
        }
        let mut active = Vec::with_capacity(inputs.len());
        for (i, (id, name)) in inputs.into_iter().enumerate() {
            let field = format!("reasons[{i}]");
            let id = match id {
                Some(id) if self.loss_reasons.iter().any(|r| r.id == id) => id,
                Some(_) => {
                    return Err(DomainError::invalid(
                        format!("{field}.id"),
                        "not a reason of this plan",
                    ));
                }
                None => new_id(),
            };
            if active.iter().any(|r: &LossReason| r.id == id) {
                return Err(DomainError::invalid(format!("{field}.id"), "listed twice"));
            }
            if active
                .iter()
                .any(|r: &LossReason| r.name.to_lowercase() == name.to_lowercase())
            {
                return Err(DomainError::invalid(
                    format!("{field}.name"),
                    "two reasons with the same name",
                ));
            }
            let used = self.loss_reasons.iter().any(|r| r.id == id && r.used);
            active.push(LossReason {
                id,
                name,
                archived: false,
                used,
            });
        }
        if require_reason && active.is_empty() {
            return Err(DomainError::invalid(
                "require_reason",
                "needs at least one active reason",
            ));
        }
        let archived: Vec<LossReason> = self
            .loss_reasons
            .iter()
            .filter(|r| r.used && !active.iter().any(|a| a.id == r.id))
            .map(|r| LossReason {
                archived: true,
                ..r.clone()
            })
            .collect();
        if active.len() + archived.len() > MAX_REASONS {
            return Err(DomainError::invalid(
                "reasons",
                format!(
                    "a plan keeps at most {MAX_REASONS} reasons, archived ones included, and \
                     {} archived reasons name closed deals: list one of them again by its id \
                     instead of adding a new one",
                    archived.len()
                ),
            ));
        }
        let all: Vec<LossReason> = active.into_iter().chain(archived).collect();
        self.loss_reasons = all;
        self.require_reason = require_reason;
        Ok(())
    }
}

fn check_managers(managers: &[String]) -> Result<(), DomainError> {
    if managers.len() > MAX_MANAGERS {
        return Err(DomainError::invalid(
            "manager_ids",
            format!("at most {MAX_MANAGERS} managers"),
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for manager in managers {
        if !seen.insert(manager) {
            return Err(DomainError::invalid(
                "manager_ids",
                format!("{manager} is listed twice"),
            ));
        }
    }
    Ok(())
}

/// The settings of a plan to create, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanDraft {
    pub name: String,
    pub average_amount: Money,
    pub chat_label: String,
    pub distribution: Distribution,
    pub managers: Vec<String>,
    /// The managers' terms in their order; empty: the defaults.
    pub terms: Vec<Terms>,
}

pub const MAX_NAME_CHARS: usize = 100;
pub const MAX_LABEL_CHARS: usize = 12;
pub const MAX_MANAGERS: usize = 1_000;
/// The largest weight of a plan's member: with at most [`MAX_MANAGERS`] members, a run of
/// sum-of-weights leads stays within 100,000 and credits within 64 bits.
pub const MAX_WEIGHT: u32 = 100;
/// The largest limit of open deals a member may have.
pub const MAX_OPEN_DEALS_LIMIT: u32 = 100_000;
/// Reasons a deal can be lost with at once.
pub const MAX_ACTIVE_REASONS: usize = 100;
/// Reasons a plan keeps, archived ones included (the archived ones are those deals were
/// closed with).
pub const MAX_REASONS: usize = 300;
/// Plans an account has that are not archived: ListPlans pages, and every plan is a copy
/// in the distributor and the listener.
pub const MAX_ACTIVE_PLANS: i64 = 200;

impl PlanDraft {
    /// Checks the rules that text-level validation cannot: a manager listed once.
    pub fn check(&self) -> Result<(), DomainError> {
        check_managers(&self.managers)
    }

    /// A new plan with the default stages, usable at once.
    pub fn into_plan(
        self,
        account_id: &str,
        id: Uuid,
        now: OffsetDateTime,
        mut new_id: impl FnMut() -> Uuid,
    ) -> Plan {
        let stages = DEFAULT_STAGES
            .iter()
            .enumerate()
            .map(|(position, (name, color, kind))| Stage {
                id: new_id(),
                name: (*name).to_owned(),
                color: (*color).to_owned(),
                kind: *kind,
                position: position as i32,
            })
            .collect();
        Plan {
            id,
            account_id: account_id.to_owned(),
            name: self.name,
            average_amount: self.average_amount,
            chat_label: self.chat_label,
            distribution: self.distribution,
            terms: if self.terms.len() == self.managers.len() {
                self.terms
            } else {
                vec![Terms::default(); self.managers.len()]
            },
            managers: self.managers,
            stages,
            require_reason: false,
            loss_reasons: Vec::new(),
            archived: false,
            archived_at_version: None,
            version: 1,
            created_at: now,
            updated_at: now,
        }
    }
}

/// The stages every new plan starts with.
pub const DEFAULT_STAGES: [(&str, &str, StageKind); 4] = [
    ("New", "#4c8bf5", StageKind::Open),
    ("In progress", "#f5a623", StageKind::Open),
    ("Won", "#2eb67d", StageKind::Won),
    ("Lost", "#e01e5a", StageKind::Lost),
];

#[cfg(test)]
mod tests {
    use super::*;

    fn draft(managers: &[&str]) -> PlanDraft {
        PlanDraft {
            name: "Sales".into(),
            average_amount: Money {
                amount_minor: 100,
                currency: "USD".into(),
            },
            chat_label: "SALES".into(),
            distribution: Distribution::Manual,
            managers: managers.iter().map(|m| (*m).to_owned()).collect(),
            terms: Vec::new(),
        }
    }

    #[test]
    fn a_manager_is_listed_once() {
        assert!(draft(&["a", "b"]).check().is_ok());
        assert!(matches!(
            draft(&["a", "a"]).check(),
            Err(DomainError::Invalid { field, .. }) if field == "manager_ids"
        ));
    }

    /// A 202 is a promise: a lead accepted before the archive still becomes a deal; one
    /// accepted while archived, or with no accepted version, does not.
    #[test]
    fn an_archived_plan_takes_only_deals_of_leads_accepted_before_it_was_archived() {
        let at = OffsetDateTime::UNIX_EPOCH;
        let open = draft(&[]).into_plan("acme", Uuid::nil(), at, Uuid::new_v4);
        assert!(open.takes_deal(None).is_ok());
        let mut archived = open.clone();
        archived.archived = true;
        archived.advance(&open, at);
        assert_eq!(
            (archived.version, archived.archived_at_version),
            (2, Some(2))
        );
        assert!(archived.takes_deal(Some(1)).is_ok());
        assert!(archived.takes_deal(Some(2)).is_err());
        assert!(archived.takes_deal(None).is_err());
        // Later changes keep the version it was archived at; unarchiving clears it.
        let mut renamed = archived.clone();
        renamed.name = "Renamed".into();
        renamed.advance(&archived, at);
        assert_eq!(renamed.archived_at_version, Some(2));
        let mut reopened = renamed.clone();
        reopened.archived = false;
        reopened.advance(&renamed, at);
        assert_eq!(reopened.archived_at_version, None);
        assert!(reopened.takes_deal(None).is_ok());
    }

    /// Removing a plan's deadline (or distributing by hand), or archiving the plan, ends
    /// the deadlines running in it; putting one back, unarchiving, or a new length does not.
    #[test]
    fn a_removed_deadline_or_an_archive_ends_the_running_deadlines() {
        let at = OffsetDateTime::UNIX_EPOCH;
        let with = |seconds: Option<u32>| {
            let mut plan = draft(&["a"]).into_plan("acme", Uuid::nil(), at, Uuid::new_v4);
            plan.distribution = Distribution::Auto {
                prefer_related: false,
                keep_related: false,
                strategy: Strategy::RoundRobin,
                response: seconds.map(|seconds| Response {
                    seconds,
                    max_reassignments: 1,
                }),
            };
            plan
        };
        let (minute, none) = (with(Some(60)), with(None));
        assert!(none.ends_deadlines_of(&minute), "removed");
        let manual = Plan {
            distribution: Distribution::Manual,
            ..minute.clone()
        };
        assert!(manual.ends_deadlines_of(&minute), "by hand");
        let archived = Plan {
            archived: true,
            ..minute.clone()
        };
        assert!(archived.ends_deadlines_of(&minute), "archived");
        assert!(!minute.ends_deadlines_of(&none), "put back");
        assert!(!minute.ends_deadlines_of(&archived), "unarchived");
        assert!(!with(Some(3_600)).ends_deadlines_of(&minute), "longer");
        assert!(!with(Some(1)).ends_deadlines_of(&minute), "shorter");
        let renamed = Plan {
            name: "Renamed".into(),
            ..minute.clone()
        };
        assert!(!renamed.ends_deadlines_of(&minute), "other changes");
        assert!(!none.ends_deadlines_of(&none));
    }

    #[test]
    fn a_new_plan_has_open_stages_then_won_then_lost() {
        let plan = draft(&[]).into_plan(
            "acme",
            Uuid::nil(),
            OffsetDateTime::UNIX_EPOCH,
            Uuid::new_v4,
        );
        let kinds: Vec<_> = plan.stages.iter().map(|s| s.kind).collect();
        assert_eq!(
            kinds,
            [
                StageKind::Open,
                StageKind::Open,
                StageKind::Won,
                StageKind::Lost
            ]
        );
        assert_eq!(
            plan.first_open_stage().map(|s| s.name.as_str()),
            Some("New")
        );
        let positions: Vec<_> = plan.stages.iter().map(|s| s.position).collect();
        assert_eq!(positions, [0, 1, 2, 3]);
    }

    fn reasons(n: usize, prefix: &str) -> Vec<(Option<Uuid>, String)> {
        (0..n).map(|i| (None, format!("{prefix} {i}"))).collect()
    }

    #[test]
    fn reasons_left_out_are_archived_when_used_and_deleted_when_not() {
        let mut plan = draft(&[]).into_plan(
            "acme",
            Uuid::nil(),
            OffsetDateTime::UNIX_EPOCH,
            Uuid::new_v4,
        );
        plan.set_loss_reasons(false, reasons(3, "r"), Uuid::new_v4)
            .unwrap();
        let ids: Vec<Uuid> = plan.loss_reasons.iter().map(|r| r.id).collect();
        plan.loss_reasons[1].used = true;

        plan.set_loss_reasons(false, vec![(Some(ids[2]), "r 2".into())], Uuid::new_v4)
            .unwrap();
        let kept: Vec<(Uuid, bool)> = plan
            .loss_reasons
            .iter()
            .map(|r| (r.id, r.archived))
            .collect();
        assert_eq!(kept, [(ids[2], false), (ids[1], true)]);

        // Listed again by id, an archived reason is active again and still used.
        plan.set_loss_reasons(false, vec![(Some(ids[1]), "back".into())], Uuid::new_v4)
            .unwrap();
        assert_eq!(plan.loss_reasons.len(), 1);
        assert!(plan.loss_reasons[0].used && !plan.loss_reasons[0].archived);
    }

    #[test]
    fn a_plan_keeps_a_bounded_number_of_reasons() {
        let mut plan = draft(&[]).into_plan(
            "acme",
            Uuid::nil(),
            OffsetDateTime::UNIX_EPOCH,
            Uuid::new_v4,
        );
        let err = plan
            .set_loss_reasons(false, reasons(MAX_ACTIVE_REASONS + 1, "r"), Uuid::new_v4)
            .unwrap_err();
        assert!(matches!(err, DomainError::Invalid { ref field, .. } if field == "reasons"));
        assert!(plan.loss_reasons.is_empty(), "nothing changed");

        // Unused reasons never pile up: replacing them again and again is fine.
        for round in 0..10 {
            plan.set_loss_reasons(
                false,
                reasons(MAX_ACTIVE_REASONS, &format!("round {round}")),
                Uuid::new_v4,
            )
            .unwrap();
            assert_eq!(plan.loss_reasons.len(), MAX_ACTIVE_REASONS);
        }
        // Used ones are archived, up to the cap of all reasons.
        for round in 0.. {
            for reason in &mut plan.loss_reasons {
                reason.used = true;
            }
            let set = plan.set_loss_reasons(
                false,
                reasons(MAX_ACTIVE_REASONS, &format!("used {round}")),
                Uuid::new_v4,
            );
            if let Err(err) = set {
                assert!(err.to_string().contains("at most 300 reasons"), "{err}");
                break;
            }
            assert!(plan.loss_reasons.len() <= MAX_REASONS);
        }
        assert_eq!(plan.loss_reasons.len(), MAX_REASONS);
    }
}
