//! Plan events into the names reports show (see [`store::names`]).

use prost::Message as _;
use salesplan_platform::bus::{BatchHandler, Delivery, Outcome, streams};
use salesplan_proto::v1 as pb;
use sqlx::PgPool;
use uuid::Uuid;

use crate::store::{self, names::PlanNames};

pub struct PlanEvents {
    pool: PgPool,
}

impl PlanEvents {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

/// The names of a plan snapshot; the id that is not one when it cannot be read.
fn names_of(account_id: String, plan: pb::Plan) -> Result<PlanNames, &'static str> {
    let id = |value: &str, what| Uuid::parse_str(value).map_err(|_| what);
    let stages = plan
        .stages
        .into_iter()
        .map(|s| Ok((id(&s.id, "stage id")?, s.name, s.position)))
        .collect::<Result<_, &'static str>>()?;
    let reasons = plan
        .loss_reasons
        .unwrap_or_default()
        .reasons
        .into_iter()
        .map(|r| Ok((id(&r.id, "reason id")?, r.name, r.archived)))
        .collect::<Result<_, &'static str>>()?;
    Ok(PlanNames {
        plan_id: id(&plan.id, "plan id")?,
        account_id,
        name: plan.name,
        version: plan.version,
        stages,
        reasons,
    })
}

impl BatchHandler for PlanEvents {
    async fn handle(&self, batch: &[Delivery]) -> Vec<Outcome> {
        let mut outcomes = Vec::with_capacity(batch.len());
        for delivery in batch {
            // Managers' availability shares the stream; reports have no use for it.
            if streams::is_manager_subject(&delivery.subject) {
                outcomes.push(Outcome::Done);
                continue;
            }
            let names = match pb::PlanEvent::decode(delivery.payload.clone()) {
                Err(e) => Err(format!("undecodable plan event: {e}")),
                Ok(pb::PlanEvent { plan: None, .. }) => Err("plan event without a plan".into()),
                Ok(pb::PlanEvent {
                    plan: Some(plan),
                    account_id,
                    ..
                }) => delivery.check_account(&account_id).and_then(|()| {
                    names_of(account_id, plan)
                        .map_err(|what| format!("plan event with an invalid {what}"))
                }),
            };
            outcomes.push(match names {
                Err(reason) => Outcome::Reject(reason),
                Ok(names) => match store::names::apply(&self.pool, &names).await {
                    Ok(()) => Outcome::Done,
                    Err(err) => Outcome::Retry(err.to_string()),
                },
            });
        }
        outcomes
    }
}
