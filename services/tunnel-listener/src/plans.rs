//! What the listener knows of plans, to refuse leads for unknown or archived ones before
//! anything is published: fed by deal-service's plan events, with a lookup through
//! `PlanService.GetPlan` when a plan is not known yet (created a moment ago).

use std::{
    collections::HashMap,
    sync::RwLock,
    time::{Duration, Instant},
};

use prost::Message as _;
use salesplan_platform::{
    ApiError,
    auth::ServiceTokens,
    bus::{BatchHandler, Delivery, Outcome},
    grpc::outgoing,
};
use salesplan_proto::v1::{self as pb, plan_service_client::PlanServiceClient};
use tonic::transport::Channel;
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownPlan {
    pub account_id: String,
    pub archived: bool,
    pub managers: Vec<String>,
    pub version: i64,
}

/// How long "no such plan" is remembered, so bogus plan ids do not hammer deal-service.
const NEGATIVE_TTL: Duration = Duration::from_secs(2);

pub struct PlanCache {
    /// By account and plan: an event of one account never stands for another's plan.
    known: RwLock<HashMap<(String, Uuid), KnownPlan>>,
    missing: RwLock<HashMap<(String, Uuid), Instant>>,
    plans: PlanServiceClient<Channel>,
    tokens: ServiceTokens,
}

impl PlanCache {
    pub fn new(plans: PlanServiceClient<Channel>, tokens: ServiceTokens) -> Self {
        Self {
            known: RwLock::default(),
            missing: RwLock::default(),
            plans,
            tokens,
        }
    }

    fn remember(&self, plan_id: Uuid, plan: KnownPlan) {
        let key = (plan.account_id.clone(), plan_id);
        let mut known = self.known.write().unwrap_or_else(|e| e.into_inner());
        let newer = known.get(&key).is_none_or(|k| k.version < plan.version);
        if newer {
            known.insert(key, plan);
        }
    }

    /// The plan if it exists in the account and takes leads; NOT_FOUND otherwise.
    pub async fn open_plan(&self, account_id: &str, plan_id: Uuid) -> Result<KnownPlan, ApiError> {
        let cached = self
            .known
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(account_id.to_owned(), plan_id))
            .cloned();
        let plan = match cached {
            Some(plan) => plan,
            None => self.look_up(account_id, plan_id).await?,
        };
        if plan.archived {
            return Err(ApiError::not_found(format!("plan {plan_id} (archived)")));
        }
        Ok(plan)
    }

    async fn look_up(&self, account_id: &str, plan_id: Uuid) -> Result<KnownPlan, ApiError> {
        let key = (account_id.to_owned(), plan_id);
        let recently_missing = self
            .missing
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .is_some_and(|at| at.elapsed() < NEGATIVE_TTL);
        if recently_missing {
            return Err(ApiError::not_found(format!("plan {plan_id}")));
        }
        let token = self.tokens.for_account(account_id)?;
        let request = outgoing(
            pb::GetPlanRequest {
                plan_id: plan_id.to_string(),
            },
            &token,
        );
        match self.plans.clone().get_plan(request).await {
            Ok(response) => {
                let plan = response
                    .into_inner()
                    .plan
                    .ok_or_else(|| ApiError::internal("GetPlan returned no plan"))?;
                let known = KnownPlan {
                    account_id: account_id.to_owned(),
                    archived: plan.archived,
                    managers: plan.manager_ids,
                    version: plan.version,
                };
                self.remember(plan_id, known.clone());
                Ok(known)
            }
            Err(status) if status.code() == tonic::Code::NotFound => {
                let mut missing = self.missing.write().unwrap_or_else(|e| e.into_inner());
                missing.retain(|_, at| at.elapsed() < NEGATIVE_TTL);
                missing.insert(key, Instant::now());
                Err(ApiError::not_found(format!("plan {plan_id}")))
            }
            Err(status) => {
                tracing::warn!(code = ?status.code(), message = status.message(), "plan lookup failed");
                Err(ApiError::Unavailable(
                    "cannot check the plan now, retry later".into(),
                ))
            }
        }
    }
}

impl BatchHandler for PlanCache {
    async fn handle(&self, batch: &[Delivery]) -> Vec<Outcome> {
        batch
            .iter()
            .map(|delivery| {
                let Ok(event) = pb::PlanEvent::decode(delivery.payload.clone()) else {
                    return Outcome::Reject("undecodable plan event".into());
                };
                let Some(plan) = event.plan else {
                    return Outcome::Reject("plan event without a plan".into());
                };
                let Ok(id) = Uuid::parse_str(&plan.id) else {
                    return Outcome::Reject("plan event with an invalid plan id".into());
                };
                self.remember(
                    id,
                    KnownPlan {
                        account_id: event.account_id,
                        archived: plan.archived,
                        managers: plan.manager_ids,
                        version: plan.version,
                    },
                );
                Outcome::Done
            })
            .collect()
    }
}
