//! Turns intake events into deals: decide each lead's manager (per plan, in one locked
//! transaction per batch), publish the decisions, then create the deals through
//! deal-service, idempotent on the intake id. A lead is acked only once its deal exists.

use std::collections::HashMap;

use futures::{StreamExt, stream};
use prost::Message as _;
use salesplan_platform::{
    auth::{ServiceTokens, valid_account_id},
    bus::{BatchHandler, Bus, Delivery, Outcome, Outgoing, streams},
    grpc::outgoing,
    validate::contact_key,
};
use salesplan_proto::v1::{self as pb, deal_service_client::DealServiceClient};
use tonic::{Code, transport::Channel};
use tracing::Instrument;
use uuid::Uuid;

use crate::{
    domain::distribution::Lead,
    store::{PendingLead, PlanBatch, Store},
};

/// What became of one lead: its batch index and outcome. (Decisions are linked to their
/// deals when the deal events arrive.)
type Created = (usize, Outcome);

/// Deals per CreateDeals call, and calls in flight at once.
const CREATE_BATCH: usize = 500;
const CONCURRENT_CALLS: usize = 4;

pub struct IntakeEvents {
    store: Store,
    bus: Bus,
    deals: DealServiceClient<Channel>,
    tokens: ServiceTokens,
    /// From the lead's arrival at the listener to its deal existing.
    lead_to_deal: opentelemetry::metrics::Histogram<f64>,
    /// One plan's batch decision (lock, read, decide, write).
    decision: opentelemetry::metrics::Histogram<f64>,
}

struct Decoded {
    index: usize,
    event: pb::IntakeEvent,
    intake_id: Uuid,
    plan_id: Uuid,
}

impl IntakeEvents {
    pub fn new(
        store: Store,
        bus: Bus,
        deals: DealServiceClient<Channel>,
        tokens: ServiceTokens,
    ) -> Self {
        let meter = salesplan_platform::telemetry::meter("distributor");
        Self {
            store,
            bus,
            deals,
            tokens,
            lead_to_deal: meter
                .f64_histogram("salesplan.distributor.lead_to_deal_seconds")
                .with_unit("s")
                .build(),
            decision: meter
                .f64_histogram("salesplan.distributor.decision_seconds")
                .with_unit("s")
                .build(),
        }
    }

    /// Creates the deals of one account's leads in one CreateDeals call. The call joins the
    /// first lead's trace and links the others'.
    async fn create_deals(
        &self,
        batch: &[Delivery],
        account_id: &str,
        items: Vec<(Decoded, Option<String>)>,
    ) -> Vec<Created> {
        let span = batch[items[0].0.index].span("distributor.create_deals");
        for (item, _) in &items[1..] {
            let cx = salesplan_platform::telemetry::extract_from_nats(
                batch[item.index].headers.as_ref(),
            );
            salesplan_platform::telemetry::add_link(&span, &cx);
        }
        let token = match self.tokens.for_account(account_id) {
            Ok(token) => token,
            Err(err) => {
                return items
                    .into_iter()
                    .map(|(item, _)| (item.index, Outcome::Retry(err.to_string())))
                    .collect();
            }
        };
        let request = pb::CreateDealsRequest {
            deals: items
                .iter()
                .map(|(item, manager)| {
                    let lead = item.event.lead.clone().unwrap_or_default();
                    pb::CreateDealRequest {
                        plan_id: lead.plan_id,
                        stage_id: None,
                        contact: lead.contact,
                        title: lead.title,
                        amount: lead.amount,
                        manager_id: manager.clone(),
                        idempotency_key: item.intake_id.to_string(),
                    }
                })
                .collect(),
        };
        // Built inside the span, so the call carries its trace context.
        let request = span.in_scope(|| outgoing(request, &token));
        let response = self
            .deals
            .clone()
            .create_deals(request)
            .instrument(span)
            .await;
        let results = match response {
            Ok(response) => response.into_inner().results,
            Err(status) => {
                // The whole call failed (deal-service unreachable, overloaded): all retry.
                let reason = format!("CreateDeals: {:?}: {}", status.code(), status.message());
                return items
                    .into_iter()
                    .map(|(item, _)| (item.index, Outcome::Retry(reason.clone())))
                    .collect();
            }
        };
        let mut outcomes = Vec::with_capacity(items.len());
        for ((item, _), result) in items
            .into_iter()
            .zip(results.into_iter().map(Some).chain(std::iter::repeat(None)))
        {
            let outcome = match result {
                Some(r) if r.code == 0 => {
                    self.record_latency(&item.event);
                    (item.index, Outcome::Done)
                }
                Some(r) => {
                    let status = tonic::Status::new(Code::from(r.code), r.message);
                    (item.index, self.refused(&item, status).await)
                }
                None => (
                    item.index,
                    Outcome::Retry("CreateDeals returned fewer results".into()),
                ),
            };
            outcomes.push(outcome);
        }
        outcomes
    }

    fn record_latency(&self, event: &pb::IntakeEvent) {
        if let Some(at) = &event.received_at {
            let received = std::time::UNIX_EPOCH
                + std::time::Duration::new(at.seconds.max(0) as u64, at.nanos.max(0) as u32);
            if let Ok(age) = std::time::SystemTime::now().duration_since(received) {
                self.lead_to_deal.record(age.as_secs_f64(), &[]);
            }
        }
    }

    async fn refused(&self, item: &Decoded, status: tonic::Status) -> Outcome {
        let reason = format!("CreateDeal: {:?}: {}", status.code(), status.message());
        match status.code() {
            // The chosen manager left the plan since: decide again on the next delivery.
            Code::FailedPrecondition => {
                if let Err(err) = self
                    .store
                    .forget(&item.event.account_id, item.intake_id)
                    .await
                {
                    tracing::warn!(error = %err, "cannot forget refused decision");
                }
                Outcome::Retry(reason)
            }
            Code::InvalidArgument | Code::NotFound => Outcome::Reject(reason),
            _ => Outcome::Retry(reason),
        }
    }
}

impl BatchHandler for IntakeEvents {
    async fn handle(&self, batch: &[Delivery]) -> Vec<Outcome> {
        let mut outcomes = vec![Outcome::Done; batch.len()];
        let mut by_plan: HashMap<(String, Uuid), Vec<Decoded>> = HashMap::new();
        for (index, delivery) in batch.iter().enumerate() {
            match decode(index, delivery) {
                Ok(item) => by_plan
                    .entry((item.event.account_id.clone(), item.plan_id))
                    .or_default()
                    .push(item),
                Err(reason) => outcomes[index] = Outcome::Reject(reason),
            }
        }

        let mut work = Vec::new();
        let mut records = Vec::new();
        for ((account_id, plan_id), items) in by_plan {
            let pending: Vec<PendingLead> = items.iter().map(pending_lead).collect();
            let started = std::time::Instant::now();
            let decided = self
                .store
                .decide_batch(&account_id, plan_id, &pending, rand::random)
                .await;
            self.decision.record(started.elapsed().as_secs_f64(), &[]);
            match decided {
                Ok(PlanBatch::Decided { mut decisions, new }) => {
                    records.extend(new);
                    for item in items {
                        match decisions.remove(&item.intake_id) {
                            Some(manager) => work.push((item, manager)),
                            None => outcomes[item.index] = Outcome::Retry("no decision".into()),
                        }
                    }
                }
                Ok(PlanBatch::UnknownPlan) => {
                    for item in items {
                        outcomes[item.index] =
                            Outcome::Retry(format!("plan {plan_id} not known yet"));
                    }
                }
                Ok(PlanBatch::Archived) => {
                    for item in items {
                        outcomes[item.index] =
                            Outcome::Reject(format!("plan {plan_id} is archived"));
                    }
                }
                Err(err) => {
                    tracing::warn!(%plan_id, error = %err, "cannot decide batch");
                    for item in items {
                        outcomes[item.index] = Outcome::Retry(err.to_string());
                    }
                }
            }
        }

        // The decisions as events: published before the deals exist, so a crash in
        // between re-publishes the same ids (deduplicated by JetStream).
        let events: Vec<Outgoing> = records
            .iter()
            .map(|a| {
                Outgoing::new(
                    streams::assignment_subject(&a.account_id),
                    a.intake_id.clone(),
                    a.encode_to_vec(),
                )
            })
            .collect();
        if !events.is_empty()
            && let Err(err) = self.bus.publish_all(events).await
        {
            tracing::warn!(error = %err, "cannot publish assignment decisions");
            for (item, _) in &work {
                outcomes[item.index] = Outcome::Retry(err.to_string());
            }
            return outcomes;
        }

        // One CreateDeals call per account and chunk, a few at a time.
        let mut per_account: HashMap<String, Vec<(Decoded, Option<String>)>> = HashMap::new();
        for (item, manager) in work {
            per_account
                .entry(item.event.account_id.clone())
                .or_default()
                .push((item, manager));
        }
        let mut calls = Vec::new();
        for (account_id, mut items) in per_account {
            while !items.is_empty() {
                let rest = items.split_off(items.len().min(CREATE_BATCH));
                calls.push((account_id.clone(), std::mem::replace(&mut items, rest)));
            }
        }
        let results: Vec<Created> =
            stream::iter(calls)
                .map(|(account_id, items)| async move {
                    self.create_deals(batch, &account_id, items).await
                })
                .buffer_unordered(CONCURRENT_CALLS)
                .flat_map(stream::iter)
                .collect()
                .await;
        for (index, outcome) in results {
            outcomes[index] = outcome;
        }
        outcomes
    }
}

fn decode(index: usize, delivery: &Delivery) -> Result<Decoded, String> {
    let event = pb::IntakeEvent::decode(delivery.payload.clone())
        .map_err(|e| format!("undecodable intake event: {e}"))?;
    if !valid_account_id(&event.account_id) {
        return Err("intake event with an invalid account id".into());
    }
    let intake_id =
        Uuid::parse_str(&event.intake_id).map_err(|_| "intake event with an invalid intake id")?;
    let plan_id = event
        .lead
        .as_ref()
        .and_then(|l| Uuid::parse_str(&l.plan_id).ok())
        .ok_or("intake event with an invalid plan id")?;
    Ok(Decoded {
        index,
        event,
        intake_id,
        plan_id,
    })
}

fn pending_lead(item: &Decoded) -> PendingLead {
    let lead = item.event.lead.as_ref();
    let contact = lead.and_then(|l| l.contact.as_ref());
    PendingLead {
        intake_id: item.intake_id,
        lead: Lead {
            assign_to: item.event.assign_to_manager_id.clone(),
            named_related: lead.and_then(|l| l.related_manager_id.clone()),
            previous_manager: None,
        },
        contact_key: contact.and_then(|c| contact_key(&c.external_id, &c.email, &c.phone)),
    }
}
