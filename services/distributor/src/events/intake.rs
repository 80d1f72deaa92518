//! Turns intake events into deals: decide each lead's manager (per plan, in one locked
//! transaction per batch), publish the decisions, then create the deals through
//! deal-service, idempotent on the intake id. A lead is acked only once its deal exists.

use std::collections::HashMap;

use futures::{StreamExt, stream};
use prost::Message as _;
use salesplan_platform::{
    auth::valid_account_id,
    bus::{Activity, BatchHandler, Bus, Delivery, Outcome, Outgoing, streams},
    grpc::between_services,
    privacy::ContactKeys,
    telemetry,
};
use salesplan_proto::v1 as pb;
use tonic::Code;
use tracing::Instrument;
use uuid::Uuid;

use crate::{
    domain::{
        self,
        batch::{AvailabilityStamp, Decided, PendingLead},
        distribution::{Candidate, DecidedBy, Lead, Mode, Placement, PlanSettings, wait_cause},
    },
    store::{NewAssignment, PlanCopy, Rejection, Store},
    upstream::{DealService, LookupError},
};

/// The outcome of deciding a plan's leads.
pub enum PlanBatch {
    /// The copy of the plan is missing or older than the version a lead was accepted at:
    /// bring it up to date first. (An archived plan still decides: deal-service creates
    /// the deals of leads accepted before the archive and refuses the others.)
    Stale,
    /// The decision for each lead (new or made before), and the new ones as records.
    Decided {
        decisions: HashMap<Uuid, Placement>,
        new: Vec<pb::Assignment>,
    },
}

/// Decides one plan's leads on the distributor's copy of the plan: what the decision
/// needs is loaded under the plan's row lock, decided by [`domain::batch::decide_batch`],
/// and saved in the same transaction with the records of the decisions made now.
pub async fn decide_on_copy(
    store: &Store,
    account_id: &str,
    plan_id: Uuid,
    leads: &[PendingLead],
    random: impl FnMut() -> u64,
) -> Result<PlanBatch, crate::store::StoreError> {
    let Some((opened, known)) = store.open_batch(account_id, plan_id, leads).await? else {
        return Ok(PlanBatch::Stale);
    };
    let (settings, plan_version) = (known.settings.clone(), known.plan_version);
    let batch = domain::batch::decide_batch(known, leads, random);
    let at = time::OffsetDateTime::now_utc();
    let records: Vec<pb::Assignment> = batch
        .new
        .iter()
        .map(|d| record(account_id, (plan_id, plan_version), &settings, d, at))
        .collect();
    let kept: Vec<NewAssignment> = records
        .iter()
        .zip(&batch.new)
        .map(|(record, d)| NewAssignment {
            intake_id: d.intake_id,
            manager_id: d.decision.manager.clone(),
            reason: d.decision.reason.clone(),
            explanation: record.encode_to_vec(),
        })
        .collect();
    opened.save(&batch, &kept).await?;
    let decisions = batch
        .managers
        .into_iter()
        .map(|(intake_id, manager)| (intake_id, settings.placement(manager)))
        .collect();
    Ok(PlanBatch::Decided {
        decisions,
        new: records,
    })
}

/// What became of one lead of a batch.
enum Fate {
    Outcome(Outcome),
    /// Refused on its own (its plan archived, its data refused, its manager gone): recorded
    /// for its account to see, then acked. The other leads of the batch go on.
    Rejected {
        code: Code,
        reason: String,
    },
}

/// One lead's batch index and fate. (Decisions are linked to their deals when the deal
/// events arrive.)
type Created = (usize, Fate);

/// Deals per CreateDeals call, and calls in flight at once.
const CREATE_BATCH: usize = 500;
const CONCURRENT_CALLS: usize = 4;

pub struct IntakeEvents {
    /// Marked busy while this handler has a batch in hand (the interactive lane's, which
    /// the bulk lane yields to).
    activity: Option<Activity>,
    store: Store,
    bus: Bus,
    upstream: DealService,
    /// From the lead's arrival at the listener to its deal existing.
    lead_to_deal: opentelemetry::metrics::Histogram<f64>,
    /// One plan's batch decision (lock, read, decide, write).
    decision: opentelemetry::metrics::Histogram<f64>,
    /// Leads refused on their own, by code.
    rejected: opentelemetry::metrics::Counter<u64>,
    /// Leads of AUTO plans left without a manager, by reason.
    unassigned: opentelemetry::metrics::Counter<u64>,
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
        upstream: DealService,
        metrics: &salesplan_platform::metrics::Metrics,
    ) -> Self {
        let meter = metrics.meter("distributor");
        Self {
            activity: None,
            store,
            bus,
            upstream,
            lead_to_deal: meter
                .f64_histogram("salesplan.distributor.lead_to_deal_seconds")
                .with_unit("s")
                .build(),
            decision: meter
                .f64_histogram("salesplan.distributor.decision_seconds")
                .with_unit("s")
                .build(),
            rejected: meter
                .u64_counter("salesplan.distributor.rejected_leads")
                .with_description("Accepted leads refused on their own (ListIntakeRejections)")
                .build(),
            unassigned: meter
                .u64_counter("salesplan.distributor.unassigned")
                .build(),
        }
    }

    /// The same handler, marking `activity` busy while it has a batch in hand.
    pub fn marking(self, activity: Activity) -> Self {
        Self {
            activity: Some(activity),
            ..self
        }
    }

    /// Creates the deals of one account's leads in one CreateDeals call, which joins the
    /// trace of one of its leads that is sampled (and links the others): each deal carries
    /// its own lead's trace on (`trace_parent`), whichever trace the call is in.
    async fn create_deals(
        &self,
        batch: &[Delivery],
        spans: &[tracing::Span],
        account_id: &str,
        items: Vec<Work>,
    ) -> Vec<Created> {
        let span = call_span(items.iter().map(|(item, _)| &spans[item.index]));
        let token = match self.upstream.tokens.for_account(account_id) {
            Ok(token) => token,
            Err(err) => return retry_all(items, &err.to_string()),
        };
        let request = pb::CreateDealsRequest {
            deals: items
                .iter()
                .map(|(item, placement)| {
                    let lead = item.event.lead.clone().unwrap_or_default();
                    pb::CreateDealRequest {
                        plan_id: lead.plan_id,
                        stage_id: None,
                        contact: lead.contact,
                        title: lead.title,
                        amount: lead.amount,
                        manager_id: placement.manager.clone(),
                        wait_for_manager: placement.waits,
                        idempotency_key: item.intake_id.to_string(),
                        // Accepted at this version: a deal even if the plan was archived since.
                        accepted_at_plan_version: (item.event.plan_version > 0)
                            .then_some(item.event.plan_version),
                        trace_parent: telemetry::traceparent(&spans[item.index]),
                        lead_received_at: item.event.received_at,
                    }
                })
                .collect(),
        };
        // Built inside the span, so the call carries its trace context.
        let request = span.in_scope(|| between_services(request, &token));
        let response = self
            .upstream
            .deals
            .clone()
            .create_deals(request)
            .instrument(span.clone())
            .await;
        salesplan_platform::grpc::record_answer(&span, &response);
        let results = match response {
            Ok(response) => response.into_inner().results,
            Err(status) => {
                // The whole call failed (deal-service unreachable, overloaded): all retry.
                let reason = format!("CreateDeals: {:?}: {}", status.code(), status.message());
                return retry_all(items, &reason);
            }
        };
        let mut outcomes = Vec::with_capacity(items.len());
        for ((item, _), result) in items
            .into_iter()
            .zip(results.into_iter().map(Some).chain(std::iter::repeat(None)))
        {
            let fate = match result {
                Some(r) if r.code == 0 => {
                    self.record_latency(&item.event);
                    Fate::Outcome(Outcome::Done)
                }
                Some(r) => {
                    let delivered = batch[item.index].delivered;
                    self.refused(&item, delivered, Code::from(r.code), r.message)
                        .await
                }
                None => Fate::Outcome(Outcome::Retry("CreateDeals returned fewer results".into())),
            };
            let outcome = (item.index, fate);
            outcomes.push(outcome);
        }
        outcomes
    }

    fn record_latency(&self, event: &pb::IntakeEvent) {
        if let Some(received) = event
            .received_at
            .as_ref()
            .and_then(salesplan_proto::time::time_of)
        {
            let age = time::OffsetDateTime::now_utc() - received;
            if age.is_positive() {
                self.lead_to_deal.record(age.as_seconds_f64(), &[]);
            }
        }
    }

    /// What to do with a lead deal-service refused (`delivered`: its deliveries so far).
    async fn refused(&self, item: &Decoded, delivered: i64, code: Code, message: String) -> Fate {
        let last_delivery = delivered >= self.bus.config().max_deliver;
        match code {
            Code::FailedPrecondition if last_delivery => Fate::Rejected {
                code,
                reason: format!("refused at every delivery, last: {message}"),
            },
            // The chosen manager (or the one a bulk add named) left the plan since: decide
            // again on the next delivery, from the plan as deal-service has it now. (A lead with no accepted version, in a plan
            // archived now, has nothing to wait for.)
            Code::FailedPrecondition => {
                match self
                    .refresh_plan(&item.event.account_id, item.plan_id)
                    .await
                {
                    Ok(plan) if plan.settings.archived && item.event.plan_version == 0 => {
                        return Fate::Rejected {
                            code,
                            reason: message,
                        };
                    }
                    Ok(_) => {}
                    Err(err) => {
                        tracing::warn!(error = %err, "cannot refresh the plan of a refused decision")
                    }
                }
                if let Err(err) = self
                    .store
                    .forget(&item.event.account_id, item.intake_id)
                    .await
                {
                    tracing::warn!(error = %err, "cannot forget refused decision");
                }
                Fate::Outcome(Outcome::Retry(format!("CreateDeal: {message}")))
            }
            Code::InvalidArgument | Code::NotFound => Fate::Rejected {
                code,
                reason: message,
            },
            _ => Fate::Outcome(Outcome::Retry(format!("CreateDeal: {code:?}: {message}"))),
        }
    }

    /// Records the rejected leads for their accounts (their decisions forgotten) and acks
    /// them; if that cannot be stored now, they are delivered again.
    async fn record_rejections(
        &self,
        batch: &[Delivery],
        spans: &[tracing::Span],
        rejected: Vec<(usize, Code, String)>,
        outcomes: &mut [Outcome],
    ) {
        let mut records = Vec::with_capacity(rejected.len());
        for (index, code, reason) in rejected {
            // The lead's span says it ended here, and why.
            let span = &spans[index];
            telemetry::fail(span, &format!("rejected: {reason}"));
            span.in_scope(|| {
                tracing::warn!(subject = %batch[index].subject, code = ?code, %reason, "lead rejected");
            });
            match rejection(&batch[index], code, reason) {
                Ok(record) => records.push((index, record)),
                Err(reason) => outcomes[index] = Outcome::Reject(reason),
            }
        }
        let rows: Vec<Rejection> = records.iter().map(|(_, r)| r.clone()).collect();
        match self.store.reject(&rows).await {
            Ok(()) => {
                for (index, record) in records {
                    self.rejected.add(
                        1,
                        &[opentelemetry::KeyValue::new("code", record.code.clone())],
                    );
                    outcomes[index] = Outcome::Done;
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot record rejected leads");
                for (index, _) in records {
                    outcomes[index] = Outcome::Retry(err.to_string());
                }
            }
        }
    }
}

/// Why a plan's leads could not be decided now.
#[derive(Debug, thiserror::Error)]
enum DecideError {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Lookup(#[from] LookupError),
}

impl IntakeEvents {
    /// Decides one plan's leads on the plan's version each was accepted at or a later
    /// one: a copy older than a lead needs is brought up to date from deal-service first.
    async fn decide(
        &self,
        account_id: &str,
        plan_id: Uuid,
        pending: &[PendingLead],
    ) -> Result<PlanBatch, DecideError> {
        let mut decided =
            decide_on_copy(&self.store, account_id, plan_id, pending, rand::random).await?;
        if matches!(decided, PlanBatch::Stale) {
            self.refresh_plan(account_id, plan_id).await?;
            // The members' availability is now as deal-service has it: as new as any
            // lead's stamp.
            let refreshed: Vec<PendingLead> = pending
                .iter()
                .map(|l| PendingLead {
                    availability: None,
                    ..l.clone()
                })
                .collect();
            decided =
                decide_on_copy(&self.store, account_id, plan_id, &refreshed, rand::random).await?;
        }
        if let PlanBatch::Decided { new, .. } = &decided {
            for a in new
                .iter()
                .filter(|a| a.mode == DecidedBy::Auto.as_str() && a.manager_id.is_none())
            {
                // An account's bulk add into a full plan makes many: counted, not logged.
                tracing::debug!(%plan_id, reason = %a.reason, "lead waits for a manager");
                self.unassigned.add(
                    1,
                    &[opentelemetry::KeyValue::new(
                        "reason",
                        wait_cause(&a.reason),
                    )],
                );
            }
        }
        Ok(decided)
    }

    /// Brings the copy of the plan up to what deal-service has now.
    async fn refresh_plan(&self, account_id: &str, plan_id: Uuid) -> Result<PlanCopy, DecideError> {
        let (plan, managers) = self.upstream.plan(account_id, plan_id).await?;
        self.store.apply_plan(&plan).await?;
        for manager in &managers {
            self.store.apply_manager(manager).await?;
        }
        Ok(plan)
    }
}

/// The client span of a CreateDeals call for leads with these spans: a child of the first
/// sampled one, linking the other sampled ones; of the first traced one when none is
/// sampled (so the call is not sampled anew downstream); none when no lead is traced.
fn call_span<'a>(leads: impl Iterator<Item = &'a tracing::Span> + Clone) -> tracing::Span {
    let sampled: Vec<&tracing::Span> = leads.clone().filter(|s| telemetry::is_sampled(s)).collect();
    let Some(parent) = sampled
        .first()
        .copied()
        .or_else(|| leads.clone().find(|s| !s.is_none()))
    else {
        return tracing::Span::none();
    };
    let span = salesplan_platform::grpc::client_span(
        Some(parent),
        "salesplan.v1.DealService",
        "CreateDeals",
    );
    for other in sampled.iter().skip(1) {
        telemetry::add_link(&span, other);
    }
    span
}

fn retry_all(items: Vec<Work>, reason: &str) -> Vec<Created> {
    items
        .into_iter()
        .map(|(item, _)| (item.index, Fate::Outcome(Outcome::Retry(reason.to_owned()))))
        .collect()
}

/// The record of a rejected lead, from its intake event.
fn rejection(delivery: &Delivery, code: Code, reason: String) -> Result<Rejection, String> {
    let item = decode(0, delivery)?;
    let lead = item.event.lead.unwrap_or_default();
    let source = pb::IntakeSource::try_from(item.event.source)
        .unwrap_or(pb::IntakeSource::Unspecified)
        .as_str_name()
        .trim_start_matches("INTAKE_SOURCE_")
        .to_ascii_lowercase();
    Ok(Rejection {
        intake_id: item.intake_id,
        account_id: item.event.account_id,
        plan_id: item.plan_id,
        source,
        tunnel_id: lead.tunnel_id,
        block_id: lead.block_id,
        run_id: lead.run_id,
        code: salesplan_platform::error::code_name(code).to_ascii_uppercase(),
        reason,
        rejected_at: time::OffsetDateTime::now_utc(),
    })
}

/// One lead and where its deal goes.
type Work = (Decoded, Placement);

/// A batch's leads by account and plan; the undecodable ones rejected in `outcomes`.
fn by_plan(
    batch: &[Delivery],
    spans: &[tracing::Span],
    outcomes: &mut [Outcome],
) -> HashMap<(String, Uuid), Vec<Decoded>> {
    let mut by_plan: HashMap<(String, Uuid), Vec<Decoded>> = HashMap::new();
    for (index, delivery) in batch.iter().enumerate() {
        match decode(index, delivery) {
            Ok(item) => {
                spans[index].record("salesplan.plan_id", item.plan_id.to_string());
                spans[index].record("salesplan.intake_id", item.intake_id.to_string());
                by_plan
                    .entry((item.event.account_id.clone(), item.plan_id))
                    .or_default()
                    .push(item);
            }
            Err(reason) => outcomes[index] = Outcome::Reject(reason),
        }
    }
    by_plan
}

/// The CreateDeals calls for `work`: one per account and chunk.
fn create_calls(work: Vec<Work>) -> Vec<(String, Vec<Work>)> {
    let mut per_account: HashMap<String, Vec<Work>> = HashMap::new();
    for (item, placement) in work {
        per_account
            .entry(item.event.account_id.clone())
            .or_default()
            .push((item, placement));
    }
    let mut calls = Vec::new();
    for (account_id, mut items) in per_account {
        while !items.is_empty() {
            let rest = items.split_off(items.len().min(CREATE_BATCH));
            calls.push((account_id.clone(), std::mem::replace(&mut items, rest)));
        }
    }
    calls
}

impl IntakeEvents {
    /// Decides each plan's leads: the decided ones as work with the new decisions'
    /// records; the others get their outcome, or are `rejected`.
    async fn decide_all(
        &self,
        by_plan: HashMap<(String, Uuid), Vec<Decoded>>,
        outcomes: &mut [Outcome],
        rejected: &mut Vec<(usize, Code, String)>,
    ) -> (Vec<Work>, Vec<pb::Assignment>) {
        let (mut work, mut records) = (Vec::new(), Vec::new());
        for ((account_id, plan_id), items) in by_plan {
            let keys = self.store.contact_keys();
            let pending: Vec<PendingLead> =
                items.iter().map(|item| pending_lead(item, keys)).collect();
            let started = std::time::Instant::now();
            let decided = self.decide(&account_id, plan_id, &pending).await;
            self.decision.record(started.elapsed().as_secs_f64(), &[]);
            match decided {
                Ok(PlanBatch::Decided { mut decisions, new }) => {
                    records.extend(new);
                    for item in items {
                        match decisions.remove(&item.intake_id) {
                            Some(placement) => work.push((item, placement)),
                            None => outcomes[item.index] = Outcome::Retry("no decision".into()),
                        }
                    }
                }
                Ok(PlanBatch::Stale) => {
                    for item in items {
                        outcomes[item.index] =
                            Outcome::Retry(format!("plan {plan_id} older than its leads"));
                    }
                }
                Err(DecideError::Lookup(LookupError::NotFound(what))) => {
                    // Only a forged or corrupted event names a plan deal-service never had.
                    for item in items {
                        rejected.push((item.index, Code::NotFound, what.clone()));
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
        (work, records)
    }

    /// The decisions as events: published before the deals exist, so a crash in between
    /// re-publishes the same ids (deduplicated by JetStream).
    async fn publish_decisions(
        &self,
        records: &[pb::Assignment],
    ) -> Result<(), salesplan_platform::bus::BusError> {
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
        if events.is_empty() {
            return Ok(());
        }
        self.bus.publish_all(events).await.map(|_| ())
    }

    /// Creates the deals of `work`, a few CreateDeals calls at a time.
    async fn create_all(
        &self,
        batch: &[Delivery],
        spans: &[tracing::Span],
        work: Vec<Work>,
    ) -> Vec<Created> {
        stream::iter(create_calls(work))
            .map(|(account_id, items)| async move {
                self.create_deals(batch, spans, &account_id, items).await
            })
            .buffer_unordered(CONCURRENT_CALLS)
            .flat_map(stream::iter)
            .collect()
            .await
    }
}

impl BatchHandler for IntakeEvents {
    async fn handle(&self, batch: &[Delivery]) -> Vec<Outcome> {
        let _busy = self.activity.as_ref().map(Activity::start);
        // A span per lead, in the lead's trace, until its outcome is known.
        let spans: Vec<tracing::Span> = batch.iter().map(|d| d.span("distributor.lead")).collect();
        let outcomes = self.handle_traced(batch, &spans).await;
        salesplan_platform::bus::end_spans(spans, &outcomes);
        outcomes
    }
}

impl IntakeEvents {
    async fn handle_traced(&self, batch: &[Delivery], spans: &[tracing::Span]) -> Vec<Outcome> {
        let mut outcomes = vec![Outcome::Done; batch.len()];
        let mut rejected: Vec<(usize, Code, String)> = Vec::new();
        let by_plan = by_plan(batch, spans, &mut outcomes);
        let (work, records) = self.decide_all(by_plan, &mut outcomes, &mut rejected).await;
        if let Err(err) = self.publish_decisions(&records).await {
            tracing::warn!(error = %err, "cannot publish assignment decisions");
            for (item, _) in &work {
                outcomes[item.index] = Outcome::Retry(err.to_string());
            }
            self.record_rejections(batch, spans, rejected, &mut outcomes)
                .await;
            return outcomes;
        }
        for (index, fate) in self.create_all(batch, spans, work).await {
            match fate {
                Fate::Outcome(outcome) => outcomes[index] = outcome,
                Fate::Rejected { code, reason } => rejected.push((index, code, reason)),
            }
        }
        if !rejected.is_empty() {
            self.record_rejections(batch, spans, rejected, &mut outcomes)
                .await;
        }
        outcomes
    }
}

/// The record of a decision made on the plan `(id, version)`: what ExplainAssignment
/// answers and the assignment stream carries.
pub(crate) fn record(
    account_id: &str,
    (plan_id, plan_version): (Uuid, i64),
    settings: &PlanSettings,
    decided: &Decided,
    at: time::OffsetDateTime,
) -> pb::Assignment {
    let (lead, decision) = (&decided.lead, &decided.decision);
    let (mode, strategy, prefer_related) = match settings.mode {
        _ if settings.names(lead) => (DecidedBy::Bulk, "", false),
        Mode::Manual => (DecidedBy::Manual, "", false),
        Mode::Auto {
            prefer_related,
            strategy,
        } => (DecidedBy::Auto, strategy.as_str(), prefer_related),
    };
    pb::Assignment {
        intake_id: decided.intake_id.to_string(),
        account_id: account_id.to_owned(),
        plan_id: plan_id.to_string(),
        deal_id: String::new(),
        mode: mode.as_str().into(),
        strategy: strategy.into(),
        prefer_related,
        related_manager_id: lead
            .named_related
            .clone()
            .or_else(|| lead.previous_manager.clone()),
        candidates: decision
            .candidates
            .iter()
            .map(|c: &Candidate| pb::Candidate {
                manager_id: c.manager_id.clone(),
                open_deals: c.open_deals,
                chosen: c.chosen,
                note: c.note.clone(),
            })
            .collect(),
        manager_id: decision.manager.clone(),
        reason: decision.reason.clone(),
        decided_at: Some(salesplan_proto::time::timestamp(at)),
        plan_version,
        missed_deadlines: Vec::new(),
    }
}

fn decode(index: usize, delivery: &Delivery) -> Result<Decoded, String> {
    let event = pb::IntakeEvent::decode(delivery.payload.clone())
        .map_err(|e| format!("undecodable intake event: {e}"))?;
    if !valid_account_id(&event.account_id) {
        return Err("intake event with an invalid account id".into());
    }
    delivery.check_account(&event.account_id)?;
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

fn pending_lead(item: &Decoded, keys: &ContactKeys) -> PendingLead {
    let lead = item.event.lead.as_ref();
    let contact = lead.and_then(|l| l.contact.as_ref());
    PendingLead {
        intake_id: item.intake_id,
        plan_version: item.event.plan_version,
        // Events from before the stamp (and leads without a known plan version) have none.
        availability: (item.event.plan_version > 0).then_some(AvailabilityStamp {
            versions: item.event.availability_version,
            sequence: item.event.availability_sequence,
        }),
        lead: Lead {
            assign_to: item.event.assign_to_manager_id.clone(),
            named_related: lead.and_then(|l| l.related_manager_id.clone()),
            previous_manager: None,
        },
        contact_key: contact
            .and_then(|c| keys.of(&item.event.account_id, &c.external_id, &c.email, &c.phone)),
    }
}
