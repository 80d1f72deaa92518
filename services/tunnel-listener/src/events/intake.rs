//! Accepting leads: validate, check the plan, publish each lead as an intake event, and
//! answer only once JetStream has stored it. Shared by the webhook and IntakeService.

use std::sync::Arc;

use crate::upstream::KnownPlan;

use prost::Message as _;
use salesplan_platform::privacy::ContactKeys;
use salesplan_platform::{
    Actor, ApiError,
    bus::{Bus, Outgoing, pending_by_account, streams},
    ids::parse_id,
    limits::{AccountLimiter, Permit},
    telemetry, validate,
};
use salesplan_proto::v1 as pb;
use uuid::Uuid;

use crate::{
    domain::lead::{Accepted, MAX_CHUNK, audience_lead, intake_id, validated_lead},
    upstream::{PlanCheck, Plans},
};

/// How much of the bulk lane one account may hold.
#[derive(Debug, Clone, Copy)]
pub struct BulkBacklog {
    /// Contacts accepted by the account's bulk adds but not yet distributed.
    pub max_in_flight: u64,
    /// How long a chunk waits for room before it is refused.
    pub patience: std::time::Duration,
}

#[derive(Clone)]
pub struct Intake {
    bus: Bus,
    plans: Arc<Plans>,
    /// Leads of one account a second, through the webhook and AddToSalesPlan together.
    interactive: Arc<AccountLimiter>,
    backlog: BulkBacklog,
    /// A bulk contact's intake id is derived from its keyed key.
    contact_keys: ContactKeys,
    leads: opentelemetry::metrics::Counter<u64>,
}

fn source_name(source: pb::IntakeSource) -> &'static str {
    match source {
        pb::IntakeSource::Webhook => "webhook",
        pb::IntakeSource::Grpc => "grpc",
        pb::IntakeSource::Bulk => "bulk",
        pb::IntakeSource::Unspecified => "unknown",
    }
}

/// The lead's intake event; `plan` is its plan as checked at acceptance (its version and
/// its members' availability version).
fn message(
    account_id: &str,
    intake_id: Uuid,
    lead: pb::Lead,
    source: pb::IntakeSource,
    assign_to: Option<String>,
    plan: &KnownPlan,
) -> Outgoing {
    // Two lanes: a bulk add never sits in front of a funnel's single lead.
    let subject = match source {
        pb::IntakeSource::Bulk => streams::bulk_subject(account_id, &lead.plan_id),
        _ => streams::intake_subject(account_id, &lead.plan_id),
    };
    let event = pb::IntakeEvent {
        intake_id: intake_id.to_string(),
        account_id: account_id.to_owned(),
        received_at: Some(salesplan_proto::time::now()),
        source: source as i32,
        assign_to_manager_id: assign_to,
        lead: Some(lead),
        plan_version: plan.version,
        availability_version: plan.availability_version,
        availability_sequence: plan.availability_sequence,
    };
    Outgoing::new(subject, intake_id.to_string(), event.encode_to_vec())
}

/// The plan, job and manager of an AddAudience call, fixed by its first chunk.
#[derive(Debug, Clone)]
pub struct AudienceJob {
    plan_id: Uuid,
    job_id: String,
    assign_to: Option<String>,
}

impl Intake {
    pub fn new(
        bus: Bus,
        plans: Arc<Plans>,
        interactive: Arc<AccountLimiter>,
        backlog: BulkBacklog,
        contact_keys: ContactKeys,
        metrics: &salesplan_platform::metrics::Metrics,
    ) -> Self {
        let leads = metrics
            .meter("intake")
            .u64_counter("salesplan.intake.leads")
            .with_description("Leads by source and outcome (accepted, duplicate, rejected)")
            .build();
        Self {
            bus,
            plans,
            interactive,
            backlog,
            contact_keys,
            leads,
        }
    }

    /// Waits until the account's bulk backlog has room for `contacts` more, so a client
    /// that streams faster than its contacts are distributed is slowed down rather than
    /// refused; RESOURCE_EXHAUSTED when no room comes within the patience. (A chunk larger
    /// than the whole allowance goes once the backlog is empty.)
    async fn room_for(&self, account_id: &str, contacts: u64) -> Result<(), ApiError> {
        let deadline = tokio::time::Instant::now() + self.backlog.patience;
        let subjects = streams::bulk_subjects_of(account_id);
        loop {
            let pending: u64 = pending_by_account(&self.bus, &streams::BULK, &subjects)
                .await?
                .values()
                .sum();
            if pending == 0 || pending + contacts <= self.backlog.max_in_flight {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ApiError::ResourceExhausted {
                    message: format!(
                        "this account has {pending} contacts of bulk adds not yet distributed \
                         (at most {}); send the rest later",
                        self.backlog.max_in_flight
                    ),
                    retry_after: std::time::Duration::from_secs(5),
                });
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }

    /// Admits one interactive lead of the account (webhook or AddToSalesPlan), or says when
    /// to retry: checked before anything else is read of the request.
    pub fn admit_lead(&self, actor: &Actor) -> Result<Permit, ApiError> {
        self.interactive.admit(&actor.account_id)
    }

    /// Counts a lead refused before it reached [`Intake::accept`] (a webhook body).
    pub fn count_rejected(&self, source: pb::IntakeSource) {
        self.count(source, "rejected", 1);
    }

    fn count(&self, source: pb::IntakeSource, outcome: &'static str, n: u64) {
        if n > 0 {
            self.leads.add(
                n,
                &[
                    opentelemetry::KeyValue::new("source", source_name(source)),
                    opentelemetry::KeyValue::new("outcome", outcome),
                ],
            );
        }
    }

    /// Validates `lead`, checks its plan, and publishes its intake event.
    pub async fn accept(
        &self,
        actor: &Actor,
        lead: pb::Lead,
        source: pb::IntakeSource,
    ) -> Result<Accepted, ApiError> {
        match self.accept_one(actor, lead, source).await {
            Ok(accepted) => {
                let outcome = if accepted.accepted_now {
                    "accepted"
                } else {
                    "duplicate"
                };
                self.count(source, outcome, 1);
                Ok(accepted)
            }
            Err(NotAccepted::Refused(err)) => {
                self.count(source, "rejected", 1);
                Err(err)
            }
            Err(NotAccepted::Failed(err)) => Err(err),
        }
    }

    async fn accept_one(
        &self,
        actor: &Actor,
        lead: pb::Lead,
        source: pb::IntakeSource,
    ) -> Result<Accepted, NotAccepted> {
        let lead = validated_lead(lead).map_err(NotAccepted::Refused)?;
        let plan_id = parse_id("plan_id", &lead.plan_id).map_err(NotAccepted::Refused)?;
        let intake_id = intake_id(&actor.account_id, &lead);
        // Find one lead by its ids, whichever way it came (webhook or gRPC).
        let span = tracing::Span::current();
        span.record("salesplan.plan_id", lead.plan_id.as_str());
        span.record("salesplan.intake_id", intake_id.to_string());
        let plan = match self.plans.check(&actor.account_id, plan_id).await? {
            PlanCheck::Open(plan) => plan,
            // A retry of a lead accepted before its plan was archived: its deal is there.
            PlanCheck::Closed(_) if self.plans.is_deal(&actor.account_id, intake_id).await? => {
                return Ok(Accepted {
                    intake_id,
                    accepted_now: false,
                });
            }
            PlanCheck::Closed(refusal) => return Err(NotAccepted::Refused(refusal)),
        };
        let message = message(&actor.account_id, intake_id, lead, source, None, &plan);
        let publish = salesplan_platform::bus::producer_span(&message.subject);
        let stored = telemetry::in_span(publish, self.bus.publish(message)).await?;
        Ok(Accepted {
            intake_id,
            accepted_now: !stored.duplicate,
        })
    }

    /// The job of an AddAudience call from its first chunk: the plan must take leads, and
    /// a named manager must be one of its members.
    pub async fn audience_job(
        &self,
        actor: &Actor,
        chunk: &pb::AddAudienceRequest,
    ) -> Result<AudienceJob, ApiError> {
        let plan_id = parse_id("plan_id", &chunk.plan_id)?;
        let job_id = validate::required_text("job_id", &chunk.job_id, 200)?;
        let plan = self.plans.open_plan(&actor.account_id, plan_id).await?;
        let assign_to = chunk
            .assign_to_manager_id
            .as_deref()
            .map(|m| validate::required_text("assign_to_manager_id", m, 128))
            .transpose()?;
        if let Some(m) = &assign_to
            && !plan.managers.contains(m)
        {
            return Err(ApiError::precondition(
                salesplan_platform::Reason::ManagerNotInPlan,
                format!("assign_to_manager_id: {m} is not a member of plan {plan_id}"),
            ));
        }
        Ok(AudienceJob {
            plan_id,
            job_id,
            assign_to,
        })
    }

    /// One chunk of a bulk add: every valid contact is published (pipelined), then each
    /// gets its result. Invalid contacts are rejected alone; the rest go on. The plan is
    /// checked again for every chunk: once it is archived, the rest of the call is refused.
    pub async fn accept_chunk(
        &self,
        actor: &Actor,
        job: &AudienceJob,
        chunk: pb::AddAudienceRequest,
    ) -> Result<Vec<pb::ContactResult>, ApiError> {
        check_chunk(job, &chunk)?;
        let plan = self.plans.open_plan(&actor.account_id, job.plan_id).await?;
        let plan_id = job.plan_id.to_string();
        let mut results = Vec::with_capacity(chunk.contacts.len());
        let (mut messages, mut published) = (Vec::new(), Vec::new());
        for (index, item) in chunk.contacts.into_iter().enumerate() {
            let mut result = pb::ContactResult {
                index: index as i32,
                ..Default::default()
            };
            match audience_lead(
                &self.contact_keys,
                &actor.account_id,
                &plan_id,
                &job.job_id,
                item,
            ) {
                Ok((intake_id, lead)) => {
                    result.intake_id = intake_id.to_string();
                    let mut message = message(
                        &actor.account_id,
                        intake_id,
                        lead,
                        pb::IntakeSource::Bulk,
                        job.assign_to.clone(),
                        &plan,
                    );
                    // A bulk add's leads are in an unsampled trace each: thousands of
                    // leads in the call's one trace would bury it (the call itself is
                    // traced; its leads show in the metrics).
                    message.headers.insert(
                        telemetry::TRACEPARENT,
                        telemetry::unsampled_traceparent().as_str(),
                    );
                    messages.push(message);
                    published.push(index);
                }
                Err(err) => {
                    result.outcome = pb::ContactOutcome::Rejected as i32;
                    result.reason = err.to_string();
                }
            }
            results.push(result);
        }
        self.room_for(&actor.account_id, messages.len() as u64)
            .await?;
        let stored = self.bus.publish_all(messages).await?;
        let duplicates = stored.iter().filter(|s| s.duplicate).count() as u64;
        let rejected = (results.len() - stored.len()) as u64;
        self.count(
            pb::IntakeSource::Bulk,
            "accepted",
            stored.len() as u64 - duplicates,
        );
        self.count(pb::IntakeSource::Bulk, "duplicate", duplicates);
        self.count(pb::IntakeSource::Bulk, "rejected", rejected);
        for (index, stored) in published.into_iter().zip(stored) {
            results[index].outcome = if stored.duplicate {
                pb::ContactOutcome::Duplicate
            } else {
                pb::ContactOutcome::Accepted
            } as i32;
        }
        Ok(results)
    }
}

/// Why a lead was not accepted: refused for what it is (invalid, or its plan unknown or
/// closed; counted as rejected), or not handled (a dependency failed; the caller retries).
enum NotAccepted {
    Refused(ApiError),
    Failed(ApiError),
}

impl<E: Into<ApiError>> From<E> for NotAccepted {
    fn from(err: E) -> Self {
        Self::Failed(err.into())
    }
}

/// A chunk of the call's plan, of at most [`MAX_CHUNK`] contacts.
fn check_chunk(job: &AudienceJob, chunk: &pb::AddAudienceRequest) -> Result<(), ApiError> {
    if !chunk.plan_id.is_empty() && parse_id("plan_id", &chunk.plan_id)? != job.plan_id {
        return Err(ApiError::invalid(
            "plan_id",
            "every chunk of a call adds to the same plan",
        ));
    }
    if chunk.contacts.len() > MAX_CHUNK {
        return Err(ApiError::invalid(
            "contacts",
            format!("at most {MAX_CHUNK} contacts per chunk; send more chunks"),
        ));
    }
    Ok(())
}
