//! Keeps the distributor's copy of each plan's settings from deal-service's plan events
//! (and from deal-service itself when a lead was accepted at a version not applied yet),
//! and of each manager's availability from the manager events on the same stream.

use prost::Message as _;
use salesplan_platform::{
    bus::{BatchHandler, Delivery, Outcome, streams},
    schedule::{Availability, Schedule},
};
use salesplan_proto::v1 as pb;
use uuid::Uuid;

use std::sync::Arc;

use crate::{
    domain::{
        deadline::Response,
        distribution::{Mode, PlanSettings, Strategy},
    },
    events::queue::Queue,
    store::{ManagerCopy, PlanCopy, Store},
};

pub struct PlanEvents {
    store: Store,
    queue: Arc<Queue>,
}

impl PlanEvents {
    pub fn new(store: Store, queue: Arc<Queue>) -> Self {
        Self { store, queue }
    }

    async fn apply(&self, delivery: &Delivery) -> Outcome {
        if streams::is_manager_subject(&delivery.subject) {
            return self.apply_manager(delivery).await;
        }
        let plan = match decode(delivery) {
            Ok(plan) => plan,
            Err(reason) => return Outcome::Reject(reason),
        };
        match self.store.apply_plan(&plan).await {
            Ok(()) => {
                // A member added or a limit raised may let waiting deals in.
                self.queue
                    .drain_those_waiting(&[(plan.account_id.clone(), plan.plan_id)])
                    .await;
                Outcome::Done
            }
            Err(err) => Outcome::Retry(err.to_string()),
        }
    }
}

impl PlanEvents {
    async fn apply_manager(&self, delivery: &Delivery) -> Outcome {
        let copy = match decode_manager(delivery) {
            Ok(copy) => copy,
            Err(reason) => return Outcome::Reject(reason),
        };
        match self.store.apply_manager(&copy).await {
            Ok(plans) => {
                // A manager resumed, or back in their hours by a new schedule: the queues of
                // their plans may move now.
                let touched: Vec<(String, Uuid)> = plans
                    .into_iter()
                    .map(|p| (copy.account_id.clone(), p))
                    .collect();
                self.queue.drain_those_waiting(&touched).await;
                Outcome::Done
            }
            Err(err) => Outcome::Retry(err.to_string()),
        }
    }
}

impl BatchHandler for PlanEvents {
    async fn handle(&self, batch: &[Delivery]) -> Vec<Outcome> {
        // Plan events are rare; one at a time keeps their order per plan simple.
        let mut outcomes = Vec::with_capacity(batch.len());
        for delivery in batch {
            outcomes.push(self.apply(delivery).await);
        }
        outcomes
    }
}

/// A plan event → the settings the distributor needs.
pub fn decode(delivery: &Delivery) -> Result<PlanCopy, String> {
    let event = pb::PlanEvent::decode(delivery.payload.clone())
        .map_err(|e| format!("undecodable plan event: {e}"))?;
    delivery.check_account(&event.account_id)?;
    let plan = event.plan.ok_or("plan event without a plan")?;
    copy_of(event.account_id, plan)
}

/// A manager event → the availability the distributor keeps. deal-service validated the
/// schedule; it is validated again here (an event is input like any other).
pub fn decode_manager(delivery: &Delivery) -> Result<ManagerCopy, String> {
    let event = pb::ManagerEvent::decode(delivery.payload.clone())
        .map_err(|e| format!("undecodable manager event: {e}"))?;
    delivery.check_account(&event.account_id)?;
    let availability = event
        .availability
        .ok_or("manager event without availability")?;
    manager_copy(event.account_id, availability)
}

/// A manager's availability, as deal-service shows it → the copy the distributor keeps.
pub fn manager_copy(
    account_id: String,
    availability: pb::ManagerAvailability,
) -> Result<ManagerCopy, String> {
    let schedule = Schedule::from_proto("schedule", availability.schedule.unwrap_or_default())
        .map_err(|e| format!("manager event with an invalid schedule: {e}"))?;
    if availability.manager_id.is_empty() {
        return Err("manager event without a manager id".into());
    }
    Ok(ManagerCopy {
        account_id,
        manager_id: availability.manager_id,
        version: availability.version,
        sequence: availability.sequence,
        availability: Availability {
            schedule,
            paused: availability.paused,
        },
    })
}

/// A plan of the account, as deal-service shows it → the settings the distributor needs.
pub fn copy_of(account_id: String, plan: pb::Plan) -> Result<PlanCopy, String> {
    let plan_id = Uuid::parse_str(&plan.id).map_err(|_| "plan with an invalid plan id")?;
    Ok(PlanCopy {
        plan_id,
        account_id,
        version: plan.version,
        settings: PlanSettings {
            mode: mode_from(plan.distribution.as_ref())?,
            // Events from before weights carry none: every weight 1.
            weights: weights_from(&plan.manager_weights, plan.manager_ids.len())?,
            // Events from before limits carry none: no limit.
            caps: caps_from(&plan.manager_max_open_deals, plan.manager_ids.len())?,
            keep_related: plan
                .distribution
                .as_ref()
                .is_some_and(|d| d.keep_related_when_unavailable),
            response: plan
                .distribution
                .as_ref()
                .filter(|d| d.response_deadline_seconds > 0)
                .map(|d| Response {
                    seconds: d.response_deadline_seconds,
                    max_reassignments: d.max_reassignments,
                }),
            managers: plan.manager_ids,
            archived: plan.archived,
        },
    })
}

/// The members' weights, empty when every one is 1.
fn weights_from(weights: &[i32], managers: usize) -> Result<Vec<u32>, String> {
    if weights.iter().all(|w| *w == 1) {
        return Ok(Vec::new());
    }
    if weights.len() != managers || weights.iter().any(|w| !(1..=100).contains(w)) {
        return Err(format!(
            "plan with {} weights for {managers} managers, or one out of 1 to 100",
            weights.len()
        ));
    }
    Ok(weights.iter().map(|w| *w as u32).collect())
}

/// The members' limits of open deals (0: none), empty when no member has one.
fn caps_from(caps: &[i32], managers: usize) -> Result<Vec<u32>, String> {
    if caps.iter().all(|c| *c == 0) {
        return Ok(Vec::new());
    }
    if caps.len() != managers || caps.iter().any(|c| *c < 0) {
        return Err(format!(
            "plan with {} limits for {managers} managers, or a negative one",
            caps.len()
        ));
    }
    Ok(caps.iter().map(|c| *c as u32).collect())
}

fn mode_from(d: Option<&pb::Distribution>) -> Result<Mode, String> {
    use pb::distribution::{Mode as M, Strategy as S};
    let d = d.ok_or("plan without distribution settings")?;
    match M::try_from(d.mode) {
        Ok(M::Manual) => Ok(Mode::Manual),
        Ok(M::Auto) => Ok(Mode::Auto {
            prefer_related: d.prefer_related,
            strategy: match S::try_from(d.strategy) {
                Ok(S::Random) => Strategy::Random,
                Ok(S::RoundRobin) => Strategy::RoundRobin,
                Ok(S::LeastOpenDeals) => Strategy::LeastOpenDeals,
                _ => return Err(format!("unknown strategy {}", d.strategy)),
            },
        }),
        _ => Err(format!("unknown distribution mode {}", d.mode)),
    }
}
