//! Proto ↔ domain at the edge. Converting a request validates it: errors are born here,
//! each naming the field (nested fields as `contact.email`).

use salesplan_platform::{
    ApiError,
    ids::parse_id,
    validate::{self, ContactInput},
};
use salesplan_proto::v1 as pb;
use time::OffsetDateTime;

use crate::domain::{
    Money,
    deal::{Deal, DealStatus, NewDeal},
    plan::{self, Distribution, Plan, PlanDraft, Stage, StageKind, Strategy},
};

pub fn timestamp(at: OffsetDateTime) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.unix_timestamp(),
        nanos: at.nanosecond() as i32,
    }
}

fn money_from(field: &str, money: Option<pb::Money>) -> Result<Option<Money>, ApiError> {
    money
        .map(|m| {
            let (amount_minor, currency) = validate::money(field, m.amount_minor, &m.currency)?;
            Ok(Money {
                amount_minor,
                currency,
            })
        })
        .transpose()
}

fn money_to(money: &Money) -> pb::Money {
    pb::Money {
        amount_minor: money.amount_minor,
        currency: money.currency.clone(),
    }
}

pub fn manager_id(field: &str, value: &str) -> Result<String, ApiError> {
    validate::required_text(field, value, 128)
}

pub fn distribution_from(d: Option<pb::Distribution>) -> Result<Distribution, ApiError> {
    use pb::distribution::{Mode, Strategy as S};
    let d = d.ok_or_else(|| ApiError::invalid("distribution", "required"))?;
    match Mode::try_from(d.mode) {
        Ok(Mode::Manual) => Ok(Distribution::Manual),
        Ok(Mode::Auto) => {
            let strategy = match S::try_from(d.strategy) {
                Ok(S::Random) => Strategy::Random,
                Ok(S::RoundRobin) => Strategy::RoundRobin,
                Ok(S::LeastOpenDeals) => Strategy::LeastOpenDeals,
                _ => {
                    return Err(ApiError::invalid(
                        "distribution.strategy",
                        "AUTO needs RANDOM, ROUND_ROBIN or LEAST_OPEN_DEALS",
                    ));
                }
            };
            Ok(Distribution::Auto {
                prefer_related: d.prefer_related,
                strategy,
            })
        }
        _ => Err(ApiError::invalid(
            "distribution.mode",
            "must be MANUAL or AUTO",
        )),
    }
}

fn distribution_to(d: Distribution) -> pb::Distribution {
    use pb::distribution::{Mode, Strategy as S};
    match d {
        Distribution::Manual => pb::Distribution {
            mode: Mode::Manual as i32,
            prefer_related: false,
            strategy: S::Unspecified as i32,
        },
        Distribution::Auto {
            prefer_related,
            strategy,
        } => pb::Distribution {
            mode: Mode::Auto as i32,
            prefer_related,
            strategy: match strategy {
                Strategy::Random => S::Random,
                Strategy::RoundRobin => S::RoundRobin,
                Strategy::LeastOpenDeals => S::LeastOpenDeals,
            } as i32,
        },
    }
}

impl TryFrom<pb::CreatePlanRequest> for PlanDraft {
    type Error = ApiError;

    fn try_from(req: pb::CreatePlanRequest) -> Result<Self, ApiError> {
        let average_amount = money_from("average_amount", req.average_amount)?
            .ok_or_else(|| ApiError::invalid("average_amount", "required"))?;
        let managers = req
            .manager_ids
            .iter()
            .map(|m| manager_id("manager_ids", m))
            .collect::<Result<Vec<_>, _>>()?;
        let draft = PlanDraft {
            name: validate::required_text("name", &req.name, plan::MAX_NAME_CHARS)?,
            average_amount,
            chat_label: validate::required_text(
                "chat_label",
                &req.chat_label,
                plan::MAX_LABEL_CHARS,
            )?,
            distribution: distribution_from(req.distribution)?,
            managers,
        };
        draft.check()?;
        Ok(draft)
    }
}

fn stage_kind_to(kind: StageKind) -> pb::StageKind {
    match kind {
        StageKind::Open => pb::StageKind::Open,
        StageKind::Won => pb::StageKind::Won,
        StageKind::Lost => pb::StageKind::Lost,
    }
}

fn stage_to(stage: &Stage) -> pb::Stage {
    pb::Stage {
        id: stage.id.to_string(),
        name: stage.name.clone(),
        color: stage.color.clone(),
        kind: stage_kind_to(stage.kind) as i32,
        position: stage.position,
    }
}

impl From<&Plan> for pb::Plan {
    fn from(plan: &Plan) -> Self {
        pb::Plan {
            id: plan.id.to_string(),
            name: plan.name.clone(),
            average_amount: Some(money_to(&plan.average_amount)),
            chat_label: plan.chat_label.clone(),
            distribution: Some(distribution_to(plan.distribution)),
            manager_ids: plan.managers.clone(),
            stages: plan.stages.iter().map(stage_to).collect(),
            archived: plan.archived,
            version: plan.version,
            created_at: Some(timestamp(plan.created_at)),
            updated_at: Some(timestamp(plan.updated_at)),
        }
    }
}

impl TryFrom<pb::CreateDealRequest> for NewDeal {
    type Error = ApiError;

    fn try_from(req: pb::CreateDealRequest) -> Result<Self, ApiError> {
        let contact = req
            .contact
            .ok_or_else(|| ApiError::invalid("contact", "required"))?;
        let contact = ContactInput {
            external_id: contact.external_id,
            name: contact.name,
            email: contact.email,
            phone: contact.phone,
        }
        .validated()
        .map_err(|e| e.within("contact"))?;
        Ok(NewDeal {
            plan_id: parse_id("plan_id", &req.plan_id)?,
            stage_id: req
                .stage_id
                .as_deref()
                .map(|s| parse_id("stage_id", s))
                .transpose()?,
            contact,
            title: validate::text("title", &req.title, 300)?,
            amount: money_from("amount", req.amount)?,
            manager_id: req
                .manager_id
                .as_deref()
                .map(|m| manager_id("manager_id", m))
                .transpose()?,
            idempotency_key: validate::required_text("idempotency_key", &req.idempotency_key, 200)?,
        })
    }
}

fn status_to(status: DealStatus) -> pb::DealStatus {
    match status {
        DealStatus::Open => pb::DealStatus::Open,
        DealStatus::Won => pb::DealStatus::Won,
        DealStatus::Lost => pb::DealStatus::Lost,
    }
}

impl From<&Deal> for pb::Deal {
    fn from(deal: &Deal) -> Self {
        pb::Deal {
            id: deal.id.to_string(),
            plan_id: deal.plan_id.to_string(),
            stage_id: deal.stage_id.to_string(),
            status: status_to(deal.status) as i32,
            manager_id: deal.manager_id.clone(),
            contact: Some(pb::Contact {
                external_id: deal.contact.external_id.clone(),
                name: deal.contact.name.clone(),
                email: deal.contact.email.clone(),
                phone: deal.contact.phone.clone(),
            }),
            title: deal.title.clone(),
            amount: Some(money_to(&deal.amount)),
            loss_reason_id: deal.loss_reason_id.map(|id| id.to_string()),
            stage_before_close_id: deal.stage_before_close_id.map(|id| id.to_string()),
            version: deal.version,
            created_at: Some(timestamp(deal.created_at)),
            updated_at: Some(timestamp(deal.updated_at)),
            closed_at: deal.closed_at.map(timestamp),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan_request() -> pb::CreatePlanRequest {
        pb::CreatePlanRequest {
            name: "Sales".into(),
            average_amount: Some(pb::Money {
                amount_minor: 10_000,
                currency: "RUB".into(),
            }),
            chat_label: "Продажи2025!".into(),
            distribution: Some(pb::Distribution {
                mode: pb::distribution::Mode::Auto as i32,
                prefer_related: true,
                strategy: pb::distribution::Strategy::LeastOpenDeals as i32,
            }),
            manager_ids: vec!["m1".into(), "m2".into()],
        }
    }

    #[test]
    fn a_twelve_character_label_is_accepted_and_thirteen_refused() {
        let draft = PlanDraft::try_from(plan_request()).unwrap();
        assert_eq!(draft.chat_label, "Продажи2025!");
        assert_eq!(
            draft.distribution,
            Distribution::Auto {
                prefer_related: true,
                strategy: Strategy::LeastOpenDeals
            }
        );

        let mut req = plan_request();
        req.chat_label = "Продажи2025!!".into();
        let err = PlanDraft::try_from(req).unwrap_err();
        assert_eq!(err.field(), Some("chat_label"));
    }

    #[test]
    fn plan_fields_are_required_and_named() {
        type Mutation = fn(&mut pb::CreatePlanRequest);
        let cases: Vec<(Mutation, &str)> = vec![
            (|r| r.name = "  ".into(), "name"),
            (|r| r.name = "x".repeat(101), "name"),
            (|r| r.average_amount = None, "average_amount"),
            (
                |r| r.average_amount.as_mut().unwrap().amount_minor = -5,
                "average_amount.amount_minor",
            ),
            (|r| r.distribution = None, "distribution"),
            (
                |r| r.distribution.as_mut().unwrap().mode = 0,
                "distribution.mode",
            ),
            (
                |r| r.distribution.as_mut().unwrap().strategy = 99,
                "distribution.strategy",
            ),
            (
                |r| r.manager_ids = vec!["m1".into(), "m1".into()],
                "manager_ids",
            ),
            (|r| r.manager_ids = vec!["".into()], "manager_ids"),
        ];
        for (mutate, field) in cases {
            let mut req = plan_request();
            mutate(&mut req);
            let err = PlanDraft::try_from(req).unwrap_err();
            assert_eq!(err.field(), Some(field), "{err}");
        }
    }

    #[test]
    fn deal_contact_errors_are_nested() {
        let req = pb::CreateDealRequest {
            plan_id: uuid::Uuid::new_v4().to_string(),
            contact: Some(pb::Contact {
                email: "not-an-email".into(),
                ..Default::default()
            }),
            idempotency_key: "k".into(),
            ..Default::default()
        };
        let err = NewDeal::try_from(req).unwrap_err();
        assert_eq!(err.field(), Some("contact.email"));
    }
}
