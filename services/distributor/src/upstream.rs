//! The distributor's look-ups at deal-service, in the account of what they look up: a
//! plan whose copy here is older than a lead needs, and the key of a deal whose decision
//! is not linked to it yet.

use std::sync::Arc;

use salesplan_platform::{
    auth::ServiceTokens,
    error::Reason,
    grpc::{self, between_services},
};
use salesplan_proto::v1::{
    self as pb, deal_service_client::DealServiceClient, plan_service_client::PlanServiceClient,
};
use tonic::{Code, transport::Channel};
use uuid::Uuid;

use crate::store::{ManagerCopy, PlanCopy};

#[derive(Clone)]
pub struct DealService {
    pub deals: DealServiceClient<Channel>,
    plans: PlanServiceClient<Channel>,
    pub tokens: Arc<ServiceTokens>,
}

/// Why a look-up has no answer.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error("{0} not found")]
    NotFound(String),
    /// Deal-service unreachable or refusing now: try again later.
    #[error("{0}")]
    Unavailable(String),
}

impl DealService {
    pub fn new(channel: Channel, tokens: Arc<ServiceTokens>) -> Self {
        Self {
            deals: DealServiceClient::new(channel.clone()),
            plans: PlanServiceClient::new(channel),
            tokens,
        }
    }

    fn token(&self, account_id: &str) -> Result<String, LookupError> {
        self.tokens
            .for_account(account_id)
            .map_err(|e| LookupError::Unavailable(e.to_string()))
    }

    /// The plan as deal-service has it now, and its members' availability.
    pub async fn plan(
        &self,
        account_id: &str,
        plan_id: Uuid,
    ) -> Result<(PlanCopy, Vec<ManagerCopy>), LookupError> {
        let token = self.token(account_id)?;
        let request = || {
            between_services(
                pb::GetPlanRequest {
                    plan_id: plan_id.to_string(),
                    with_availability: true,
                },
                &token,
            )
        };
        let mut plans = self.plans.clone();
        let answer = grpc::call("salesplan.v1.PlanService", "GetPlan", request, |r| {
            plans.get_plan(r)
        })
        .await;
        let answer = answer
            .map_err(|status| failure(status, format!("plan {plan_id}")))?
            .into_inner();
        let plan = answer
            .plan
            .ok_or_else(|| LookupError::Unavailable("GetPlan returned no plan".into()))?;
        let managers = answer
            .member_availability
            .into_iter()
            .map(|a| crate::events::plans::manager_copy(account_id.to_owned(), a))
            .collect::<Result<Vec<_>, _>>()
            .map_err(LookupError::Unavailable)?;
        let plan = crate::events::plans::copy_of(account_id.to_owned(), plan)
            .map_err(LookupError::Unavailable)?;
        Ok((plan, managers))
    }

    /// The deal's plan and idempotency key (for deals from leads, the intake id).
    pub async fn deal_key(
        &self,
        account_id: &str,
        deal_id: Uuid,
    ) -> Result<(Uuid, String), LookupError> {
        let token = self.token(account_id)?;
        let request = || {
            between_services(
                pb::GetDealRequest {
                    deal_id: deal_id.to_string(),
                    ..Default::default()
                },
                &token,
            )
        };
        let mut deals = self.deals.clone();
        let answer = grpc::call("salesplan.v1.DealService", "GetDeal", request, |r| {
            deals.get_deal(r)
        })
        .await;
        let deal = answer
            .map_err(|status| failure(status, format!("deal {deal_id}")))?
            .into_inner()
            .deal
            .ok_or_else(|| LookupError::Unavailable("GetDeal returned no deal".into()))?;
        let plan_id = Uuid::parse_str(&deal.plan_id)
            .map_err(|_| LookupError::Unavailable("GetDeal returned an invalid plan id".into()))?;
        Ok((plan_id, deal.idempotency_key))
    }
}

/// How deal-service answered an assignment order.
#[derive(Debug)]
pub enum OrderAnswer {
    /// The deal has the manager now (assigned now, or by an earlier attempt).
    Made,
    /// Refused for good: the deal changed since the order's version or closed; the manager
    /// left the plan.
    Refused(String),
    /// The deal does not exist (in this account).
    Gone(String),
    /// The deadline a reassignment acted on ended meanwhile (the plan's deadline removed,
    /// or the plan archived, since): nothing to do, and no later event says so.
    Ended(String),
    /// Not answered now: try again later.
    Later(String),
}

impl DealService {
    /// Makes an assignment order of a waiting deal: AssignDeal at the version the order
    /// was decided on, so a deal that changed meanwhile is not assigned over.
    pub async fn assign(&self, order: &crate::store::Order) -> OrderAnswer {
        let request = pb::AssignDealRequest {
            deal_id: order.deal_id.to_string(),
            expected_version: order.version,
            manager_id: Some(order.manager_id.clone()),
            ..Default::default()
        };
        self.assign_deal(&order.account_id, request).await
    }

    /// Makes the reassignment of a deal whose response deadline ran out: AssignDeal of the
    /// assignment that missed it (and the timer's version, for a deal-service that does
    /// not know that field yet), with the note for the deal's history, to the next manager
    /// or (none) escalated to wait for a person.
    pub async fn reassign(
        &self,
        timer: &crate::store::Timer,
        reassignment: &crate::store::Reassignment,
    ) -> OrderAnswer {
        let request = pb::AssignDealRequest {
            deal_id: timer.deal_id.to_string(),
            expected_version: timer.version,
            manager_id: reassignment.manager.clone(),
            note: reassignment.note.clone(),
            escalate: reassignment.manager.is_none(),
            // Stands for the version (which others' edits move): the deal is reassigned
            // while it is still in the assignment that missed its deadline.
            missed_assigned_at: Some(salesplan_proto::time::timestamp(timer.assigned_at)),
        };
        self.assign_deal(&timer.account_id, request).await
    }

    async fn assign_deal(&self, account_id: &str, request: pb::AssignDealRequest) -> OrderAnswer {
        let token = match self.token(account_id) {
            Ok(token) => token,
            Err(err) => return OrderAnswer::Later(err.to_string()),
        };
        let request = || between_services(request.clone(), &token);
        let mut deals = self.deals.clone();
        let answer = grpc::call("salesplan.v1.DealService", "AssignDeal", request, |r| {
            deals.assign_deal(r)
        })
        .await;
        match answer {
            Ok(_) => OrderAnswer::Made,
            Err(status) => match status.code() {
                Code::FailedPrecondition if Reason::DeadlineEnded.is_why(&status) => {
                    OrderAnswer::Ended(status.message().to_owned())
                }
                Code::Aborted | Code::FailedPrecondition => {
                    OrderAnswer::Refused(format!("{:?}: {}", status.code(), status.message()))
                }
                Code::NotFound => OrderAnswer::Gone(status.message().to_owned()),
                // Anything else (unreachable, overloaded, and what should never happen:
                // a refused token or field) is tried again later, with backoff.
                code => OrderAnswer::Later(format!("{code:?}: {}", status.message())),
            },
        }
    }
}

fn failure(status: tonic::Status, what: String) -> LookupError {
    match status.code() {
        Code::NotFound => LookupError::NotFound(what),
        code => LookupError::Unavailable(format!("{what}: {code:?}: {}", status.message())),
    }
}
