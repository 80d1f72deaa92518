//! Plans: their settings, stages and managers.

use time::OffsetDateTime;
use uuid::Uuid;

use super::{DomainError, Money};

/// How new leads of a plan find their manager.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Distribution {
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StageKind {
    Open,
    Won,
    Lost,
}

impl StageKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Won => "won",
            Self::Lost => "lost",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Open, Self::Won, Self::Lost]
            .into_iter()
            .find(|v| v.as_str() == s)
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
    /// Board order: OPEN stages, then WON, then LOST.
    pub stages: Vec<Stage>,
    /// Moving to LOST needs one of the active `loss_reasons`.
    pub require_reason: bool,
    /// Active reasons in their order, then archived ones.
    pub loss_reasons: Vec<LossReason>,
    pub archived: bool,
    pub version: i64,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
}

impl Plan {
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

    /// Replaces the managers: those already in keep their place (the round-robin order),
    /// new ones are appended in the order given.
    pub fn set_managers(&mut self, managers: Vec<String>) -> Result<(), DomainError> {
        check_managers(&managers)?;
        let mut next: Vec<String> = self
            .managers
            .iter()
            .filter(|m| managers.contains(m))
            .cloned()
            .collect();
        for manager in managers {
            if !next.contains(&manager) {
                next.push(manager);
            }
        }
        self.managers = next;
        Ok(())
    }

    /// Sets `require_reason` and the active reasons: inputs with an id rename (and
    /// unarchive) that reason, inputs without one add a reason, existing reasons left out
    /// are archived (never deleted: old deals and reports still name them).
    pub fn set_loss_reasons(
        &mut self,
        require_reason: bool,
        inputs: Vec<(Option<Uuid>, String)>,
        mut new_id: impl FnMut() -> Uuid,
    ) -> Result<(), DomainError> {
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
            active.push(LossReason {
                id,
                name,
                archived: false,
            });
        }
        if require_reason && active.is_empty() {
            return Err(DomainError::invalid(
                "require_reason",
                "needs at least one active reason",
            ));
        }
        let archived = self
            .loss_reasons
            .iter()
            .filter(|r| !active.iter().any(|a| a.id == r.id))
            .map(|r| LossReason {
                archived: true,
                ..r.clone()
            });
        let all: Vec<LossReason> = active.iter().cloned().chain(archived).collect();
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
}

pub const MAX_NAME_CHARS: usize = 100;
pub const MAX_LABEL_CHARS: usize = 12;
pub const MAX_MANAGERS: usize = 1_000;

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
            managers: self.managers,
            stages,
            require_reason: false,
            loss_reasons: Vec::new(),
            archived: false,
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
}
