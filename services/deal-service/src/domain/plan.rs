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
        if self.managers.len() > MAX_MANAGERS {
            return Err(DomainError::invalid(
                "manager_ids",
                format!("at most {MAX_MANAGERS} managers"),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for manager in &self.managers {
            if !seen.insert(manager) {
                return Err(DomainError::invalid(
                    "manager_ids",
                    format!("{manager} is listed twice"),
                ));
            }
        }
        Ok(())
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
