//! What the listener knows of a plan when it accepts a lead: read from deal-service after
//! the lead arrived, never from a copy. So a plan archived (or unarchived, or changed) by a
//! call that answered OK is refused (or taken, or stamped) as it now stands, and the
//! version read travels with the lead: the distributor decides on that version or a later
//! one (docs/decisions.md, "A plan change is in force for the next lead").
//!
//! Leads of one plan that arrive together share look-ups, group-commit style: while one
//! look-up is in flight the others wait for the next one, which starts after they arrived.
//! A burst of leads costs one look-up per round trip, not one per lead.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use salesplan_platform::{
    ApiError,
    auth::ServiceTokens,
    grpc::{self, between_services},
};
use salesplan_proto::v1::{
    self as pb, deal_service_client::DealServiceClient, plan_service_client::PlanServiceClient,
};
use tonic::transport::Channel;
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownPlan {
    pub archived: bool,
    pub managers: Vec<String>,
    pub version: i64,
    /// The members' availability stamp (GetPlanResponse.availability_version and
    /// availability_sequence).
    pub availability_version: i64,
    pub availability_sequence: i64,
}

/// What one look-up found, shared by every lead that waited for it.
#[derive(Debug, Clone)]
enum Found {
    Plan(KnownPlan),
    Missing,
    Unavailable,
}

/// A look-up that takes longer is answered UNAVAILABLE (the caller retries).
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

/// Plans with no lead in hand are forgotten once this many are kept.
const MAX_IDLE_SLOTS: usize = 10_000;

/// The look-ups of one plan.
#[derive(Default)]
struct Slot {
    /// Look-ups started so far: a lead needs the answer of one numbered higher than this
    /// count when it arrived.
    started: AtomicU64,
    /// One look-up at a time.
    turn: tokio::sync::Mutex<()>,
    /// The latest answer and its look-up's number.
    last: Mutex<Option<(u64, Found)>>,
}

impl Slot {
    fn answer_from(&self, number: u64) -> Option<Found> {
        match &*self.last.lock().unwrap_or_else(|e| e.into_inner()) {
            Some((n, found)) if *n >= number => Some(found.clone()),
            _ => None,
        }
    }
}

pub struct Plans {
    /// By account and plan: one account's plan id never stands for another's plan.
    slots: Mutex<HashMap<(String, Uuid), Arc<Slot>>>,
    plans: PlanServiceClient<Channel>,
    deals: DealServiceClient<Channel>,
    tokens: ServiceTokens,
}

/// Whether a plan takes leads now.
pub enum PlanCheck {
    Open(KnownPlan),
    /// Unknown in the account, or archived: NOT_FOUND.
    Closed(ApiError),
}

impl Plans {
    pub fn new(channel: Channel, tokens: ServiceTokens) -> Self {
        Self {
            slots: Mutex::default(),
            plans: PlanServiceClient::new(channel.clone()),
            deals: DealServiceClient::new(channel),
            tokens,
        }
    }

    /// The plan as deal-service has it now, if it exists in the account and takes leads;
    /// NOT_FOUND otherwise.
    pub async fn open_plan(&self, account_id: &str, plan_id: Uuid) -> Result<KnownPlan, ApiError> {
        match self.check(account_id, plan_id).await? {
            PlanCheck::Open(plan) => Ok(plan),
            PlanCheck::Closed(refusal) => Err(refusal),
        }
    }

    /// Whether the plan takes leads now; UNAVAILABLE when deal-service cannot say.
    pub async fn check(&self, account_id: &str, plan_id: Uuid) -> Result<PlanCheck, ApiError> {
        match self.current(account_id, plan_id).await {
            Found::Plan(plan) if plan.archived => Ok(PlanCheck::Closed(ApiError::not_found(
                format!("plan {plan_id} (archived)"),
            ))),
            Found::Plan(plan) => Ok(PlanCheck::Open(plan)),
            Found::Missing => Ok(PlanCheck::Closed(ApiError::not_found(format!(
                "plan {plan_id}"
            )))),
            Found::Unavailable => Err(ApiError::Unavailable(
                "cannot check the plan now, retry later".into(),
            )),
        }
    }

    /// Whether the lead `intake_id` is a deal already: a retry of a lead accepted before
    /// its plan was archived is answered as the duplicate it is.
    pub async fn is_deal(&self, account_id: &str, intake_id: Uuid) -> Result<bool, ApiError> {
        let token = self
            .tokens
            .for_account(account_id)
            .map_err(|err| ApiError::Unavailable(format!("cannot sign a deal look-up: {err}")))?;
        let mut deals = self.deals.clone();
        let request = || {
            between_services(
                pb::GetDealRequest {
                    idempotency_key: intake_id.to_string(),
                    ..Default::default()
                },
                &token,
            )
        };
        let answer = grpc::call("salesplan.v1.DealService", "GetDeal", request, |r| {
            within(LOOKUP_TIMEOUT, deals.get_deal(r))
        })
        .await;
        match answer {
            Ok(_) => Ok(true),
            Err(status) if status.code() == tonic::Code::NotFound => Ok(false),
            Err(status) => Err(ApiError::Unavailable(format!(
                "cannot check the lead now, retry later ({})",
                status.message()
            ))),
        }
    }

    /// The answer of a look-up that started after this call did.
    async fn current(&self, account_id: &str, plan_id: Uuid) -> Found {
        let slot = self.slot(account_id, plan_id);
        let needed = slot.started.load(Ordering::SeqCst) + 1;
        if let Some(found) = slot.answer_from(needed) {
            return found;
        }
        let _turn = slot.turn.lock().await;
        // The look-up that held the turn may have started after this call arrived.
        if let Some(found) = slot.answer_from(needed) {
            return found;
        }
        let number = slot.started.fetch_add(1, Ordering::SeqCst) + 1;
        let found = self.look_up(account_id, plan_id).await;
        *slot.last.lock().unwrap_or_else(|e| e.into_inner()) = Some((number, found.clone()));
        found
    }

    fn slot(&self, account_id: &str, plan_id: Uuid) -> Arc<Slot> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        if slots.len() >= MAX_IDLE_SLOTS {
            // Slots nobody holds carry nothing a later lead could use.
            slots.retain(|_, slot| Arc::strong_count(slot) > 1);
        }
        slots
            .entry((account_id.to_owned(), plan_id))
            .or_default()
            .clone()
    }

    async fn look_up(&self, account_id: &str, plan_id: Uuid) -> Found {
        let token = match self.tokens.for_account(account_id) {
            Ok(token) => token,
            Err(err) => {
                tracing::warn!(error = %err, "cannot sign a plan look-up");
                return Found::Unavailable;
            }
        };
        // Shared by the leads that wait for it: in the trace of the lead that made it.
        let mut plans = self.plans.clone();
        let request = || {
            between_services(
                pb::GetPlanRequest {
                    plan_id: plan_id.to_string(),
                    with_availability: false,
                },
                &token,
            )
        };
        let answer = grpc::call("salesplan.v1.PlanService", "GetPlan", request, |r| {
            within(LOOKUP_TIMEOUT, plans.get_plan(r))
        })
        .await;
        match answer {
            Ok(response) => match response.into_inner() {
                pb::GetPlanResponse {
                    plan: Some(plan),
                    availability_version,
                    availability_sequence,
                    ..
                } => Found::Plan(KnownPlan {
                    archived: plan.archived,
                    managers: plan.manager_ids,
                    version: plan.version,
                    availability_version,
                    availability_sequence,
                }),
                _ => {
                    tracing::warn!("GetPlan returned no plan");
                    Found::Unavailable
                }
            },
            Err(status) if status.code() == tonic::Code::NotFound => Found::Missing,
            Err(status) => {
                tracing::warn!(code = ?status.code(), message = status.message(), "plan look-up failed");
                Found::Unavailable
            }
        }
    }
}

/// A call's answer, or DEADLINE_EXCEEDED once `limit` has passed.
async fn within<A>(
    limit: Duration,
    call: impl std::future::Future<Output = Result<A, tonic::Status>>,
) -> Result<A, tonic::Status> {
    tokio::time::timeout(limit, call)
        .await
        .unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded("the look-up timed out")))
}
