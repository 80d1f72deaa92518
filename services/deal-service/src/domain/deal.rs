//! Deals: what a new deal looks like, from the plan and the caller's input.

use salesplan_platform::validate::ContactInput;
use time::OffsetDateTime;
use uuid::Uuid;

use super::{
    DomainError, Money,
    plan::{Plan, StageKind},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DealStatus {
    Open,
    Won,
    Lost,
}

impl DealStatus {
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
pub struct Deal {
    pub id: Uuid,
    pub account_id: String,
    pub plan_id: Uuid,
    pub stage_id: Uuid,
    pub status: DealStatus,
    pub manager_id: Option<String>,
    pub contact: ContactInput,
    pub title: String,
    pub amount: Money,
    pub loss_reason_id: Option<Uuid>,
    pub stage_before_close_id: Option<Uuid>,
    pub idempotency_key: String,
    pub version: i64,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
    pub closed_at: Option<OffsetDateTime>,
}

/// A deal a caller asks for, validated field by field but not yet against its plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDeal {
    pub plan_id: Uuid,
    pub stage_id: Option<Uuid>,
    pub contact: ContactInput,
    pub title: String,
    pub amount: Option<Money>,
    pub manager_id: Option<String>,
    pub idempotency_key: String,
}

impl NewDeal {
    /// The deal as it is created in `plan`: the first OPEN stage unless one is given, the
    /// plan's average amount unless one is given, the contact's name as the title.
    pub fn into_deal(
        self,
        plan: &Plan,
        id: Uuid,
        now: OffsetDateTime,
    ) -> Result<Deal, DomainError> {
        if plan.archived {
            return Err(DomainError::Precondition(format!(
                "plan {} is archived",
                plan.id
            )));
        }
        let stage = match self.stage_id {
            Some(stage_id) => plan
                .stage(stage_id)
                .ok_or_else(|| DomainError::invalid("stage_id", "not a stage of this plan"))?,
            None => plan.first_open_stage().ok_or_else(|| {
                DomainError::Precondition(format!("plan {} has no open stage", plan.id))
            })?,
        };
        if stage.kind != StageKind::Open {
            return Err(DomainError::invalid(
                "stage_id",
                "a new deal starts in an open stage; close it with MoveDeal",
            ));
        }
        if let Some(manager) = &self.manager_id
            && !plan.has_manager(manager)
        {
            return Err(DomainError::Precondition(format!(
                "manager {manager} is not a member of plan {}",
                plan.id
            )));
        }
        let title = if self.title.is_empty() {
            self.contact.display_name().to_owned()
        } else {
            self.title
        };
        Ok(Deal {
            id,
            account_id: plan.account_id.clone(),
            plan_id: plan.id,
            stage_id: stage.id,
            status: DealStatus::Open,
            manager_id: self.manager_id,
            contact: self.contact,
            title,
            amount: self.amount.unwrap_or_else(|| plan.average_amount.clone()),
            loss_reason_id: None,
            stage_before_close_id: None,
            idempotency_key: self.idempotency_key,
            version: 1,
            created_at: now,
            updated_at: now,
            closed_at: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::plan::{Distribution, PlanDraft};

    fn plan() -> Plan {
        PlanDraft {
            name: "Sales".into(),
            average_amount: Money {
                amount_minor: 5_000,
                currency: "EUR".into(),
            },
            chat_label: "S".into(),
            distribution: Distribution::Manual,
            managers: vec!["m1".into()],
        }
        .into_plan(
            "acme",
            Uuid::new_v4(),
            OffsetDateTime::UNIX_EPOCH,
            Uuid::new_v4,
        )
    }

    fn new_deal(plan: &Plan) -> NewDeal {
        NewDeal {
            plan_id: plan.id,
            stage_id: None,
            contact: ContactInput {
                name: "Ann".into(),
                email: "ann@example.com".into(),
                ..Default::default()
            },
            title: String::new(),
            amount: None,
            manager_id: None,
            idempotency_key: "k1".into(),
        }
    }

    #[test]
    fn defaults_come_from_the_plan_and_contact() {
        let plan = plan();
        let deal = new_deal(&plan)
            .into_deal(&plan, Uuid::new_v4(), OffsetDateTime::UNIX_EPOCH)
            .unwrap();
        assert_eq!(deal.stage_id, plan.stages[0].id);
        assert_eq!(deal.amount, plan.average_amount);
        assert_eq!(deal.title, "Ann");
        assert_eq!(deal.status, DealStatus::Open);
        assert_eq!(deal.version, 1);
    }

    #[test]
    fn a_new_deal_can_start_in_any_open_stage_but_not_a_closed_one() {
        let plan = plan();
        let mut input = new_deal(&plan);
        input.stage_id = Some(plan.stages[1].id);
        let deal = input
            .clone()
            .into_deal(&plan, Uuid::new_v4(), OffsetDateTime::UNIX_EPOCH)
            .unwrap();
        assert_eq!(deal.stage_id, plan.stages[1].id);

        input.stage_id = Some(plan.stages[2].id);
        let err = input
            .into_deal(&plan, Uuid::new_v4(), OffsetDateTime::UNIX_EPOCH)
            .unwrap_err();
        assert!(matches!(err, DomainError::Invalid { field, .. } if field == "stage_id"));
    }

    #[test]
    fn the_manager_must_be_a_member() {
        let plan = plan();
        let mut input = new_deal(&plan);
        input.manager_id = Some("stranger".into());
        let err = input
            .into_deal(&plan, Uuid::new_v4(), OffsetDateTime::UNIX_EPOCH)
            .unwrap_err();
        assert!(matches!(err, DomainError::Precondition(_)));
    }
}
