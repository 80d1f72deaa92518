//! Every OK is a promise, end to end on real NATS and PostgreSQL: a plan change
//! answered OK is in force for the next lead, a lead that got 202 becomes a deal whatever
//! happens to its plan afterwards, and a visible deal has its explanation.

use std::{collections::HashMap, time::Duration};

use futures::{StreamExt, future::try_join_all};
use integration_tests::{
    Stack,
    api::{Mode, Strategy, all_deals, create_plan, lead_json, plan_request, write_token},
    stack::eventually,
};
use salesplan_platform::{Permission, bus::streams, consistency, grpc::outgoing};
use salesplan_proto::v1::{
    self as pb, deal_service_client::DealServiceClient,
    distributor_service_client::DistributorServiceClient,
    intake_service_client::IntakeServiceClient, plan_service_client::PlanServiceClient,
};
use tonic::{Code, transport::Channel};

/// Plan changes per account in one test: within the account's burst of plan changes (20,
/// one of them the CreatePlan), so no change waits for the allowance.
const CHANGES_PER_ACCOUNT: usize = 19;
/// Accounts changing their plans at once: 12 × 19 = 228 changes, each followed at once by
/// a lead.
const ACCOUNTS: usize = 12;

const ALL: [Permission; 4] = [
    Permission::PlansAdmin,
    Permission::DealsEditAll,
    Permission::DealsBulkEdit,
    Permission::IntakeWrite,
];

struct Channels {
    plans: PlanServiceClient<Channel>,
    deals: DealServiceClient<Channel>,
    intake: IntakeServiceClient<Channel>,
    distributor: DistributorServiceClient<Channel>,
    deal_channel: Channel,
}

async fn channels(stack: &Stack) -> anyhow::Result<Channels> {
    let deal_channel = stack.channel(&stack.deal_service).await?;
    Ok(Channels {
        plans: PlanServiceClient::new(deal_channel.clone()),
        deals: DealServiceClient::new(deal_channel.clone()),
        intake: IntakeServiceClient::new(stack.channel(&stack.tunnel_listener).await?),
        distributor: DistributorServiceClient::new(stack.channel(&stack.distributor).await?),
        deal_channel,
    })
}

fn lead(plan_id: &str, run: &str) -> pb::AddToSalesPlanRequest {
    pb::AddToSalesPlanRequest {
        lead: Some(pb::Lead {
            plan_id: plan_id.into(),
            block_id: "block".into(),
            run_id: run.into(),
            title: format!("lead {run}"),
            contact: Some(pb::Contact {
                external_id: format!("tg-{run}"),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

fn distribution(manual: bool) -> pb::Distribution {
    pb::Distribution {
        mode: if manual { Mode::Manual } else { Mode::Auto } as i32,
        prefer_related: false,
        keep_related_when_unavailable: false,
        response_deadline_seconds: 0,
        max_reassignments: 0,
        strategy: Strategy::RoundRobin as i32,
    }
}

/// Waits until the plan holds `expected` deals, then reads them.
async fn deals_of(
    c: &Channels,
    token: &str,
    plan_id: &str,
    expected: usize,
) -> anyhow::Result<Vec<pb::Deal>> {
    let filter = pb::DealFilter {
        plan_id: plan_id.to_owned(),
        ..Default::default()
    };
    eventually(Duration::from_secs(60), || {
        let mut deals = c.deals.clone();
        let request = outgoing(
            pb::ListDealsRequest {
                filter: Some(filter.clone()),
                page_size: 1,
                ..Default::default()
            },
            token,
        );
        async move {
            let total = deals.list_deals(request).await?.into_inner().total_count as usize;
            anyhow::ensure!(total <= expected, "more deals than leads: {total}");
            Ok((total == expected).then_some(()))
        }
    })
    .await
    .map_err(|e| e.context(format!("waiting for {expected} deals in plan {plan_id}")))?;
    all_deals(c.deal_channel.clone(), token, filter).await
}

async fn explain(
    c: &Channels,
    token: &str,
    deal_id: &str,
) -> Result<pb::Assignment, tonic::Status> {
    c.distributor
        .clone()
        .explain_assignment(outgoing(
            pb::ExplainAssignmentRequest {
                deal_id: deal_id.into(),
            },
            token,
        ))
        .await?
        .into_inner()
        .assignment
        .ok_or_else(|| tonic::Status::internal("no assignment"))
}

/// The plan as one version has it: MANUAL, or AUTO among these members.
type Version = Option<Vec<String>>;

/// One account changes its plan in a cycle — MANUAL, AUTO, AUTO with other members, AUTO
/// with the first members — and sends a lead right after each change answered OK, with no
/// pause. Returns, per lead's run id, the plan version its change produced, and what every
/// version says.
async fn alternate_and_send(
    c: &Channels,
    token: &str,
    plan: &pb::Plan,
) -> anyhow::Result<(HashMap<String, i64>, HashMap<i64, Version>)> {
    let mut plans = c.plans.clone();
    let mut intake = c.intake.clone();
    let mut after_change = HashMap::new();
    let first: Vec<String> = plan.manager_ids.clone();
    let mut versions = HashMap::from([(plan.version, Some(first.clone()))]);
    for change in 0..CHANGES_PER_ACCOUNT {
        let (manual, members) = match change % 4 {
            0 => (true, None),
            1 => (false, None),
            2 => (false, Some(vec!["m3".to_owned()])),
            _ => (false, Some(first.clone())),
        };
        let changed = match &members {
            None => {
                plans
                    .update_plan(outgoing(
                        pb::UpdatePlanRequest {
                            plan_id: plan.id.clone(),
                            distribution: Some(distribution(manual)),
                            ..Default::default()
                        },
                        token,
                    ))
                    .await?
                    .into_inner()
                    .plan
            }
            Some(members) => {
                plans
                    .set_plan_managers(outgoing(
                        pb::SetPlanManagersRequest {
                            plan_id: plan.id.clone(),
                            manager_ids: members.clone(),
                            ..Default::default()
                        },
                        token,
                    ))
                    .await?
                    .into_inner()
                    .plan
            }
        }
        .ok_or_else(|| anyhow::anyhow!("the change returned no plan"))?;
        versions.insert(
            changed.version,
            (!manual).then(|| changed.manager_ids.clone()),
        );
        let run = format!("run-{change}");
        intake
            .add_to_sales_plan(outgoing(lead(&plan.id, &run), token))
            .await?;
        after_change.insert(run, changed.version);
    }
    Ok((after_change, versions))
}

/// Every lead accepted after a plan change was answered OK is decided
/// with that change (or a later one), never with the plan as it was: the decision records
/// the version it was made on, at least the one the change produced, and the lead went the
/// way that version says (its mode, and for AUTO one of its members).
#[tokio::test]
async fn every_lead_after_a_plan_change_is_decided_with_that_change() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let c = channels(&stack).await?;
    let mut accounts = Vec::new();
    for n in 0..ACCOUNTS {
        let token = stack.token(&format!("acct{n}"), "admin", &ALL);
        let plan = create_plan(
            c.deal_channel.clone(),
            &token,
            plan_request("P", Mode::Auto, Strategy::RoundRobin, false, &["m1", "m2"]),
        )
        .await?;
        accounts.push((token, plan));
    }
    let runs = try_join_all(
        accounts
            .iter()
            .map(|(token, plan)| alternate_and_send(&c, token, plan)),
    )
    .await?;

    let mut stale = Vec::new();
    for ((token, plan), (after_change, versions)) in accounts.iter().zip(runs) {
        let deals = deals_of(&c, token, &plan.id, CHANGES_PER_ACCOUNT).await?;
        for deal in deals {
            let run = deal.contact.as_ref().map(|c| c.external_id.clone());
            let run = run.unwrap_or_default().trim_start_matches("tg-").to_owned();
            let assignment = explain(&c, token, &deal.id).await?;
            let fresh_enough = assignment.plan_version >= after_change[&run];
            let followed = match versions.get(&assignment.plan_version) {
                Some(None) => assignment.mode == "manual" && deal.manager_id.is_none(),
                Some(Some(members)) => {
                    assignment.mode == "auto"
                        && deal
                            .manager_id
                            .as_ref()
                            .is_some_and(|m| members.contains(m))
                }
                None => false,
            };
            if !(fresh_enough && followed) {
                stale.push(format!(
                    "{run}: accepted after version {}, decided on {} ({}, members {:?}), \
                     manager {:?} (decided {:?}: {}), versions {versions:?}",
                    after_change[&run],
                    assignment.plan_version,
                    assignment.mode,
                    assignment
                        .candidates
                        .iter()
                        .map(|c| &c.manager_id)
                        .collect::<Vec<_>>(),
                    deal.manager_id,
                    assignment.manager_id,
                    assignment.reason,
                ));
            }
        }
    }
    assert!(
        stale.is_empty(),
        "{} of {} leads decided on an older plan: {stale:#?}",
        stale.len(),
        ACCOUNTS * CHANGES_PER_ACCOUNT
    );
    stack.stop().await
}

/// A plan read while its managers change is one version of the plan: the managers it
/// shows are the ones the change that produced its version answered with. (Read in
/// separate statements, the row could be one version and the managers the next; the
/// distributor, which copies plans this way, then decided leads on members the plan never
/// had at that version.)
#[tokio::test]
async fn a_plan_read_during_changes_is_one_version_of_the_plan() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let c = channels(&stack).await?;
    let reads = try_join_all((0..ACCOUNTS).map(|n| {
        let c = &c;
        let token = stack.token(&format!("acct{n}"), "admin", &ALL);
        async move {
            let plan = create_plan(
                c.deal_channel.clone(),
                &token,
                plan_request("P", Mode::Auto, Strategy::RoundRobin, false, &["m1", "m2"]),
            )
            .await?;
            let stop = tokio_util::sync::CancellationToken::new();
            let (versions, seen) = tokio::try_join!(
                toggle_managers(c, &token, &plan, stop.clone()),
                read_until(c, &token, &plan.id, stop),
            )?;
            anyhow::Ok((versions, seen))
        }
    }))
    .await?;
    let mut mixed = Vec::new();
    let mut count = 0;
    for (versions, seen) in reads {
        count += seen.len();
        mixed.extend(
            seen.into_iter()
                .filter(|(version, managers)| versions.get(version) != Some(managers)),
        );
    }
    // Enough reads that a read spanning a change would be caught (each change is read
    // several times over).
    assert!(
        count >= ACCOUNTS * CHANGES_PER_ACCOUNT,
        "only {count} reads"
    );
    assert!(
        mixed.is_empty(),
        "{} of {count} reads mixed two versions: {mixed:?}",
        mixed.len()
    );
    stack.stop().await
}

/// Sets the plan's managers to [m3] and back, each change right after the last answered;
/// returns each version's managers as the change answered them. Stops the readers after.
async fn toggle_managers(
    c: &Channels,
    token: &str,
    plan: &pb::Plan,
    stop: tokio_util::sync::CancellationToken,
) -> anyhow::Result<HashMap<i64, Vec<String>>> {
    let _stop = stop.drop_guard();
    let mut plans = c.plans.clone();
    let mut versions = HashMap::from([(plan.version, plan.manager_ids.clone())]);
    for change in 0..CHANGES_PER_ACCOUNT {
        let members = if change % 2 == 0 {
            vec!["m3"]
        } else {
            vec!["m1", "m2"]
        };
        let changed = plans
            .set_plan_managers(outgoing(
                pb::SetPlanManagersRequest {
                    plan_id: plan.id.clone(),
                    manager_ids: members.iter().map(|m| (*m).to_owned()).collect(),
                    ..Default::default()
                },
                token,
            ))
            .await?
            .into_inner()
            .plan
            .ok_or_else(|| anyhow::anyhow!("the change returned no plan"))?;
        versions.insert(changed.version, changed.manager_ids);
    }
    Ok(versions)
}

/// Reads the plan again and again until `stop`: each read's version and managers.
async fn read_until(
    c: &Channels,
    token: &str,
    plan_id: &str,
    stop: tokio_util::sync::CancellationToken,
) -> anyhow::Result<Vec<(i64, Vec<String>)>> {
    let mut plans = c.plans.clone();
    let mut seen = Vec::new();
    while !stop.is_cancelled() {
        let plan = plans
            .get_plan(outgoing(
                pb::GetPlanRequest {
                    plan_id: plan_id.to_owned(),
                    with_availability: false,
                },
                token,
            ))
            .await?
            .into_inner()
            .plan
            .ok_or_else(|| anyhow::anyhow!("GetPlan returned no plan"))?;
        seen.push((plan.version, plan.manager_ids));
    }
    Ok(seen)
}

/// Sends leads to the plan until `stop`, returning the run ids that got an accepted answer
/// (the others must have been refused with NOT_FOUND, the plan being archived then).
async fn keep_sending(
    c: &Channels,
    token: &str,
    plan_id: &str,
    prefix: String,
    stop: tokio_util::sync::CancellationToken,
) -> anyhow::Result<Vec<String>> {
    let mut intake = c.intake.clone();
    let mut accepted = Vec::new();
    let mut n = 0;
    while !stop.is_cancelled() {
        n += 1;
        let run = format!("{prefix}-{n}");
        match intake
            .add_to_sales_plan(outgoing(lead(plan_id, &run), token))
            .await
        {
            Ok(_) => accepted.push(run),
            Err(status) if status.code() == Code::NotFound => {}
            Err(status) => anyhow::bail!("lead {run}: {status:?}"),
        }
    }
    Ok(accepted)
}

/// One account archives and unarchives its plan again and again, and leaves it archived.
/// Right after ArchivePlan answered OK a lead is refused (404 on the webhook, NOT_FOUND
/// here), right after UnarchivePlan it is accepted; meanwhile other clients keep sending
/// leads, so some are accepted a moment before an archive commits.
async fn toggle_archive(
    c: &Channels,
    token: &str,
    plan_id: &str,
    stop: tokio_util::sync::CancellationToken,
) -> anyhow::Result<Vec<String>> {
    let mut plans = c.plans.clone();
    let mut intake = c.intake.clone();
    let mut accepted = Vec::new();
    let id = || plan_id.to_owned();
    for round in 0..CHANGES_PER_ACCOUNT / 2 {
        plans
            .archive_plan(outgoing(pb::ArchivePlanRequest { plan_id: id() }, token))
            .await?;
        let refused = intake
            .add_to_sales_plan(outgoing(lead(plan_id, &format!("archived-{round}")), token))
            .await
            .expect_err("a lead right after ArchivePlan answered OK");
        assert_eq!(refused.code(), Code::NotFound, "{refused:?}");
        plans
            .unarchive_plan(outgoing(pb::UnarchivePlanRequest { plan_id: id() }, token))
            .await?;
        let run = format!("open-{round}");
        intake
            .add_to_sales_plan(outgoing(lead(plan_id, &run), token))
            .await?;
        accepted.push(run);
    }
    plans
        .archive_plan(outgoing(pb::ArchivePlanRequest { plan_id: id() }, token))
        .await?;
    stop.cancel();
    Ok(accepted)
}

/// Clients sending leads to each plan while it is archived and unarchived.
const SENDERS: usize = 4;

/// A lead that got an accepted answer becomes a deal even when its plan
/// is archived a moment later (and stays archived); nothing ends in the rejections or the
/// dead-letter stream.
#[tokio::test]
async fn accepted_leads_become_deals_through_archive_races() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let c = channels(&stack).await?;
    let mut accounts = Vec::new();
    for n in 0..ACCOUNTS / 2 {
        let token = stack.token(&format!("acct{n}"), "admin", &ALL);
        let plan = create_plan(
            c.deal_channel.clone(),
            &token,
            plan_request("P", Mode::Auto, Strategy::RoundRobin, false, &["m1", "m2"]),
        )
        .await?;
        accounts.push((token, plan));
    }
    let races = try_join_all(accounts.iter().map(|(token, plan)| async {
        let stop = tokio_util::sync::CancellationToken::new();
        let senders = (0..SENDERS)
            .map(|n| keep_sending(&c, token, &plan.id, format!("meanwhile{n}"), stop.clone()));
        let (mut accepted, sent) = tokio::try_join!(
            toggle_archive(&c, token, &plan.id, stop.clone()),
            try_join_all(senders),
        )?;
        accepted.extend(sent.into_iter().flatten());
        anyhow::Ok(accepted)
    }))
    .await?;

    for ((token, plan), accepted) in accounts.iter().zip(races) {
        let deals = deals_of(&c, token, &plan.id, accepted.len()).await?;
        let mut made: Vec<String> = deals
            .iter()
            .filter_map(|d| d.contact.as_ref())
            .map(|c| c.external_id.trim_start_matches("tg-").to_owned())
            .collect();
        let mut accepted = accepted.clone();
        made.sort();
        accepted.sort();
        assert_eq!(
            made, accepted,
            "every accepted lead is a deal, and only those"
        );
        let rejected = c
            .distributor
            .clone()
            .list_intake_rejections(outgoing(pb::ListIntakeRejectionsRequest::default(), token))
            .await?
            .into_inner()
            .rejections;
        assert!(rejected.is_empty(), "{rejected:?}");
    }
    let js = async_nats::jetstream::new(async_nats::connect(&stack.nats.url).await?);
    let dead = js
        .get_stream(streams::DEAD_LETTERS.name)
        .await?
        .info()
        .await?
        .state
        .messages;
    assert_eq!(dead, 0, "no accepted lead is a dead letter");
    stack.stop().await
}

/// The moment a deal from a lead can be read, its explanation can be
/// too (the decision is committed before the deal is asked for; a deal whose event has not
/// linked it yet is found through its key).
#[tokio::test]
async fn a_visible_deal_is_explained_at_once() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let c = channels(&stack).await?;
    let token = stack.token("acme", "admin", &ALL);
    let plan = create_plan(
        c.deal_channel.clone(),
        &token,
        plan_request("P", Mode::Auto, Strategy::RoundRobin, false, &["m1", "m2"]),
    )
    .await?;
    let mut deals = c.deals.clone();
    let mut intake = c.intake.clone();
    // Deal events as they are published: each arrives at the distributor at the same moment,
    // which links the decision to the deal only after reading it (the window this guards
    // was 10-20 ms wide).
    let nats = async_nats::connect(&stack.nats.url).await?;
    let mut published = nats.subscribe(streams::deal_subject("acme", "*")).await?;
    for n in 0..40 {
        let run = format!("visible{n:03}");
        let accepted = intake
            .add_to_sales_plan(outgoing(lead(&plan.id, &run), &token))
            .await?
            .into_inner();
        let message = tokio::time::timeout(Duration::from_secs(20), published.next())
            .await?
            .ok_or_else(|| anyhow::anyhow!("no deal event for lead {run}"))?;
        let event = <pb::DealEvent as prost::Message>::decode(message.payload)?;
        let deal = event
            .deal
            .ok_or_else(|| anyhow::anyhow!("deal event without a deal"))?;
        let assignment = explain(&c, &token, &deal.id).await?;
        assert_eq!(assignment.deal_id, deal.id);
        assert_eq!(assignment.manager_id, deal.manager_id);
        // The event is this lead's (events carry no title: docs/privacy.md).
        assert_eq!(deal.idempotency_key, accepted.intake_id);
    }
    // A deal created directly has no decision: still NOT_FOUND.
    let direct = deals
        .create_deal(outgoing(
            pb::CreateDealRequest {
                plan_id: plan.id.clone(),
                contact: Some(pb::Contact {
                    external_id: "direct".into(),
                    ..Default::default()
                }),
                idempotency_key: uuid::Uuid::new_v4().to_string(),
                ..Default::default()
            },
            &token,
        ))
        .await?
        .into_inner()
        .deal
        .ok_or_else(|| anyhow::anyhow!("no deal"))?;
    let err = explain(&c, &token, &direct.id)
        .await
        .expect_err("no decision");
    assert_eq!(err.code(), Code::NotFound);
    stack.stop().await
}

/// A report given a write's consistency token includes that write —
/// read at once, with no polling — and every report says what it reflects. Without the
/// token, the same reads right after each change miss some (the read model is a few
/// milliseconds behind), which is what the token is for.
#[tokio::test]
async fn a_report_given_a_write_token_includes_that_write() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let c = channels(&stack).await?;
    let token = stack.token("acme", "admin", &ALL);
    let mut plans = c.plans.clone();
    let plan = create_plan(
        c.deal_channel.clone(),
        &token,
        plan_request("P", Mode::Manual, Strategy::Unspecified, false, &["m1"]),
    )
    .await?;
    let reasons = plans
        .set_loss_reasons(outgoing(
            pb::SetLossReasonsRequest {
                plan_id: plan.id.clone(),
                require_reason: true,
                reasons: vec![pb::LossReasonInput {
                    name: "Too expensive".into(),
                    ..Default::default()
                }],
            },
            &token,
        ))
        .await?;
    let plan_token = write_token(&reasons)?.to_string();
    let plan = reasons.into_inner().plan.expect("plan");
    let reason = plan.loss_reasons.clone().unwrap_or_default().reasons[0]
        .id
        .clone();
    let lost = plan
        .stages
        .iter()
        .find(|s| s.kind == pb::StageKind::Lost as i32)
        .expect("a LOST stage")
        .id
        .clone();
    let mut reports =
        pb::report_service_client::ReportServiceClient::new(stack.channel(&stack.reporting).await?);
    let mut deals = c.deals.clone();
    let report = |min_consistency_token: String| pb::LossReasonsRequest {
        group_by: pb::ReportGrouping::Plan as i32,
        plan_ids: vec![plan.id.clone()],
        min_consistency_token,
        ..Default::default()
    };
    let mut missed_without_token = 0;
    for n in 0..20 {
        let created = deals
            .create_deal(outgoing(
                pb::CreateDealRequest {
                    plan_id: plan.id.clone(),
                    contact: Some(pb::Contact {
                        external_id: format!("c{n}"),
                        ..Default::default()
                    }),
                    idempotency_key: format!("k{n}"),
                    ..Default::default()
                },
                &token,
            ))
            .await?;
        write_token(&created)?;
        let deal = created.into_inner().deal.expect("deal");
        let moved = deals
            .move_deal(outgoing(
                pb::MoveDealRequest {
                    deal_id: deal.id.clone(),
                    expected_version: deal.version,
                    stage_id: lost.clone(),
                    loss_reason_id: Some(reason.clone()),
                },
                &token,
            ))
            .await?;
        let written = write_token(&moved)?.to_string();
        let unwaited = reports
            .loss_reasons(outgoing(report(String::new()), &token))
            .await?
            .into_inner();
        if unwaited.totals.unwrap_or_default().lost != n + 1 {
            missed_without_token += 1;
        }
        let fresh = reports
            .loss_reasons(outgoing(report(written.clone()), &token))
            .await?
            .into_inner();
        let totals = fresh.totals.unwrap_or_default();
        assert_eq!(totals.lost, n + 1, "the report as of {written} misses it");
        assert_eq!(
            totals.reasons[0].name, "Too expensive",
            "names as of the token"
        );
        let as_of = fresh.as_of.expect("every report says what it reflects");
        let reflected =
            consistency::Token::parse("as_of", &as_of.consistency_token)?.expect("a token");
        let written = consistency::Token::parse("written", &written)?.expect("a token");
        assert!(reflected >= written, "{reflected} reflects {written}");
        assert!(as_of.published_at.is_some() && as_of.applied_at.is_some());
    }
    // The other reports take the token too; the plan change's token is older, so covered.
    let summary = reports
        .pipeline_summary(outgoing(
            pb::PipelineSummaryRequest {
                plan_id: Some(plan.id.clone()),
                min_consistency_token: plan_token.clone(),
            },
            &token,
        ))
        .await?
        .into_inner();
    assert_eq!(summary.total_deals, 20);
    assert!(summary.as_of.is_some());
    let stages = reports
        .stage_losses(outgoing(
            pb::StageLossesRequest {
                min_consistency_token: plan_token.clone(),
                ..Default::default()
            },
            &token,
        ))
        .await?
        .into_inner();
    assert!(stages.as_of.is_some());
    eprintln!(
        "reads without the token that missed the write just made: {missed_without_token} of 20"
    );

    // A token this system never wrote: refused, not waited for forever.
    let err = reports
        .loss_reasons(outgoing(report("v1.not-a-number".into()), &token))
        .await
        .expect_err("a malformed token");
    assert_eq!(err.code(), Code::InvalidArgument);
    let ahead = "v1.9000000000000000";
    let err = reports
        .loss_reasons(outgoing(report(ahead.into()), &token))
        .await
        .expect_err("a token the read model cannot reach");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    let err = deals
        .list_deals(outgoing(
            pb::ListDealsRequest {
                min_consistency_token: ahead.into(),
                ..Default::default()
            },
            &token,
        ))
        .await
        .expect_err("a token from the future");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    // deal-service's own lists take the token too (its reads may be on a replica).
    let listed = deals
        .list_deals(outgoing(
            pb::ListDealsRequest {
                filter: Some(pb::DealFilter {
                    plan_id: plan.id.clone(),
                    ..Default::default()
                }),
                min_consistency_token: plan_token,
                ..Default::default()
            },
            &token,
        ))
        .await?
        .into_inner();
    assert_eq!(listed.total_count, 20);
    stack.stop().await
}

/// A ListDeals of `plan_id` as of `min_consistency_token`.
async fn listed(
    c: &Channels,
    token: &str,
    plan_id: &str,
    min_consistency_token: &str,
) -> Result<pb::ListDealsResponse, tonic::Status> {
    c.deals
        .clone()
        .list_deals(outgoing(
            pb::ListDealsRequest {
                filter: Some(pb::DealFilter {
                    plan_id: plan_id.to_owned(),
                    ..Default::default()
                }),
                page_size: 500,
                min_consistency_token: min_consistency_token.to_owned(),
                ..Default::default()
            },
            token,
        ))
        .await
        .map(tonic::Response::into_inner)
}

/// Read your writes for intake answers: the webhook's 202, AddToSalesPlan and every
/// AddAudience chunk answer with a token, and a read given it includes the deals of those
/// leads — read at once, with no polling. Without the token the same reads right after
/// the answer miss the deal (it is made a few milliseconds later, by the distributor).
#[tokio::test]
async fn an_intake_answer_token_makes_reads_include_its_deals() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let c = channels(&stack).await?;
    let token = stack.token("acme", "admin", &ALL);
    let plan = create_plan(
        c.deal_channel.clone(),
        &token,
        plan_request("P", Mode::Auto, Strategy::RoundRobin, false, &["m1", "m2"]),
    )
    .await?;
    let mut reports =
        pb::report_service_client::ReportServiceClient::new(stack.channel(&stack.reporting).await?);
    let http = reqwest::Client::new();
    let (mut expected, mut missed_without_token) = (0, 0);
    let mut last = String::new();
    for n in 0..10 {
        // The webhook: the token in the body and the header, the same for a retry.
        let body = lead_json(&plan.id, &format!("w{n}"), &format!("w{n}"));
        let send = || {
            http.post(stack.webhook_url())
                .bearer_auth(&token)
                .json(&body)
                .send()
        };
        let response = send().await?;
        assert_eq!(response.status(), 202);
        let header = response.headers()[consistency::HEADER].to_str()?.to_owned();
        let answer: serde_json::Value = response.json().await?;
        assert_eq!(answer["consistency_token"], header.as_str());
        let retried: serde_json::Value = send().await?.json().await?;
        assert_eq!(retried["duplicate"], true);
        assert_eq!(
            retried["consistency_token"],
            header.as_str(),
            "a retry's answer"
        );
        expected += 1;
        if listed(&c, &token, &plan.id, "").await?.total_count != expected {
            missed_without_token += 1;
        }
        let fresh = listed(&c, &token, &plan.id, &header).await?;
        assert_eq!(fresh.total_count, expected, "as of the webhook's token");
        let deal = fresh
            .deals
            .iter()
            .find(|d| d.idempotency_key == answer["intake_id"].as_str().unwrap_or_default())
            .expect("the lead's deal is listed");
        assert!(deal.manager_id.is_some(), "with its decision");

        // AddToSalesPlan: the token in the answer and the header.
        let response = c
            .intake
            .clone()
            .add_to_sales_plan(outgoing(lead(&plan.id, &format!("g{n}")), &token))
            .await?;
        let header = response
            .metadata()
            .get(consistency::HEADER)
            .expect("the header")
            .to_str()?
            .to_owned();
        let accepted = response.into_inner();
        assert_eq!(accepted.consistency_token, header);
        expected += 1;
        let board = c
            .deals
            .clone()
            .get_board(outgoing(
                pb::GetBoardRequest {
                    plan_id: plan.id.clone(),
                    min_consistency_token: accepted.consistency_token.clone(),
                    ..Default::default()
                },
                &token,
            ))
            .await?
            .into_inner();
        assert_eq!(
            board.total_count, expected,
            "the board as of AddToSalesPlan's token"
        );
        last = accepted.consistency_token;
    }
    let summary = reports
        .pipeline_summary(outgoing(
            pb::PipelineSummaryRequest {
                plan_id: Some(plan.id.clone()),
                min_consistency_token: last,
            },
            &token,
        ))
        .await?
        .into_inner();
    assert_eq!(
        summary.total_deals, expected,
        "reporting as of the last lead"
    );

    // A bulk add: each chunk's token covers its accepted and duplicate contacts.
    let chunks = integration_tests::api::audience_chunks(&plan.id, "job", 1_000, 1_000, |i| {
        format!("bulk-{i}")
    });
    let mut responses = c
        .intake
        .clone()
        .add_audience(outgoing(futures::stream::iter(chunks), &token))
        .await?
        .into_inner();
    let chunk = responses.next().await.expect("one answer")?;
    assert_eq!(chunk.results.len(), 1_000);
    assert!(chunk.consistency_token.len() < 22_000);
    expected += 1_000;
    let summary = reports
        .pipeline_summary(outgoing(
            pb::PipelineSummaryRequest {
                plan_id: Some(plan.id.clone()),
                min_consistency_token: chunk.consistency_token.clone(),
            },
            &token,
        ))
        .await?
        .into_inner();
    assert_eq!(summary.total_deals, expected, "reporting as of the chunk");
    let fresh = listed(&c, &token, &plan.id, &chunk.consistency_token).await?;
    assert_eq!(fresh.total_count, expected, "deal-service as of the chunk");

    // Another account's reads do not see this account's leads: its wait runs out.
    let stranger = stack.token("globex", "admin", &ALL);
    let err = listed(&c, &stranger, &plan.id, &chunk.consistency_token)
        .await
        .expect_err("another account's leads are never its deals");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    eprintln!("reads without the token that missed the lead: {missed_without_token} of 10");
    stack.stop().await
}

/// A bulk add to a named manager was accepted while the manager was a
/// member; the manager leaves the plan before the leads are distributed. Every accepted
/// contact still becomes a deal — distributed as the plan says — and none is rejected.
#[tokio::test]
async fn a_bulk_add_whose_named_manager_left_still_becomes_deals() -> anyhow::Result<()> {
    let stack = integration_tests::stack::DealStack::start().await?;
    let listener = stack.start_listener().await?;
    let token = stack.token("acme", "admin", &ALL);
    let channel = stack.channel().await?;
    let plan = create_plan(
        channel.clone(),
        &token,
        plan_request(
            "P",
            Mode::Auto,
            Strategy::RoundRobin,
            false,
            &["m1", "m2", "m3"],
        ),
    )
    .await?;
    let mut chunks =
        integration_tests::api::audience_chunks(&plan.id, "job", 30, 30, |i| format!("c{i}"));
    chunks[0].assign_to_manager_id = Some("m3".into());
    let intake_channel = tonic::transport::Endpoint::from_shared(listener.grpc_url())?
        .connect()
        .await?;
    let mut responses = IntakeServiceClient::new(intake_channel)
        .add_audience(outgoing(futures::stream::iter(chunks), &token))
        .await?
        .into_inner();
    let chunk = responses.next().await.expect("one answer")?;
    let accepted = pb::ContactOutcome::Accepted as i32;
    assert!(chunk.results.iter().all(|r| r.outcome == accepted));
    // No distributor yet: the leads wait in the intake stream while m3 leaves.
    PlanServiceClient::new(channel.clone())
        .set_plan_managers(outgoing(
            pb::SetPlanManagersRequest {
                plan_id: plan.id.clone(),
                manager_ids: vec!["m1".into(), "m2".into()],
                ..Default::default()
            },
            &token,
        ))
        .await?;
    let distributor = stack.start_distributor().await?;
    let deals = DealServiceClient::new(channel.clone());
    eventually(Duration::from_secs(60), || {
        let channel = channel.clone();
        let (token, plan_id) = (token.clone(), plan.id.clone());
        async move {
            let made = integration_tests::api::deal_count(channel, &token, &plan_id).await?;
            Ok((made == 30).then_some(()))
        }
    })
    .await?;
    let fresh = deals
        .clone()
        .list_deals(outgoing(
            pb::ListDealsRequest {
                filter: Some(pb::DealFilter {
                    plan_id: plan.id.clone(),
                    ..Default::default()
                }),
                page_size: 100,
                min_consistency_token: chunk.consistency_token.clone(),
                ..Default::default()
            },
            &token,
        ))
        .await?
        .into_inner();
    assert_eq!(fresh.total_count, 30);
    let mut per_manager: HashMap<String, usize> = HashMap::new();
    for deal in &fresh.deals {
        *per_manager
            .entry(deal.manager_id.clone().unwrap_or_default())
            .or_default() += 1;
    }
    assert_eq!(
        per_manager,
        HashMap::from([("m1".to_owned(), 15), ("m2".to_owned(), 15)]),
        "round robin over the members"
    );
    let distributor_channel = tonic::transport::Endpoint::from_shared(distributor.grpc_url())?
        .connect()
        .await?;
    let explained = DistributorServiceClient::new(distributor_channel.clone())
        .explain_assignment(outgoing(
            pb::ExplainAssignmentRequest {
                deal_id: fresh.deals[0].id.clone(),
            },
            &token,
        ))
        .await?
        .into_inner()
        .assignment
        .expect("an assignment");
    assert!(
        explained
            .reason
            .contains("m3 named by the bulk add is no longer a member"),
        "{}",
        explained.reason
    );
    let rejections = DistributorServiceClient::new(distributor_channel)
        .list_intake_rejections(outgoing(pb::ListIntakeRejectionsRequest::default(), &token))
        .await?
        .into_inner();
    assert!(
        rejections.rejections.is_empty(),
        "{:?}",
        rejections.rejections
    );
    stack.stop().await?;
    listener.wait().await?;
    distributor.wait().await
}

/// A webhook retried after its plan was archived is answered as the duplicate it is (its
/// lead is a deal), not 404; a new lead for the plan is 404. A plan id spelled another way
/// (upper case) is the same plan and the same lead.
#[tokio::test]
async fn a_lead_retried_after_its_plan_is_archived_is_a_duplicate() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let c = channels(&stack).await?;
    let token = stack.token("acme", "admin", &ALL);
    let plan = create_plan(
        c.deal_channel.clone(),
        &token,
        plan_request("P", Mode::Auto, Strategy::RoundRobin, false, &["m1"]),
    )
    .await?;
    let http = reqwest::Client::new();
    let send = |plan_id: String, run: &'static str| {
        let request = http
            .post(stack.webhook_url())
            .bearer_auth(&token)
            .json(&lead_json(&plan_id, run, run));
        async move {
            let response = request.send().await?;
            let status = response.status().as_u16();
            anyhow::Ok((status, response.json::<serde_json::Value>().await?))
        }
    };
    let (status, first) = send(plan.id.to_uppercase(), "r1").await?;
    assert_eq!(status, 202);
    let (_, same) = send(plan.id.clone(), "r1").await?;
    assert_eq!(same["duplicate"], true, "one plan, however spelled: {same}");
    assert_eq!(same["intake_id"], first["intake_id"]);
    let token_of = |answer: &serde_json::Value| {
        answer["consistency_token"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(
        listed(&c, &token, &plan.id, &token_of(&first))
            .await?
            .total_count,
        1
    );
    // A deal key that spells the same id in upper case is not that lead's deal: reporting
    // waits for the lead it names, not for any key that parses to it.
    let lead = uuid::Uuid::new_v4();
    for key in [lead.to_string(), lead.to_string().to_uppercase()] {
        c.deals
            .clone()
            .create_deal(outgoing(
                pb::CreateDealRequest {
                    plan_id: plan.id.clone(),
                    contact: Some(pb::Contact {
                        external_id: key.clone(),
                        ..Default::default()
                    }),
                    idempotency_key: key,
                    ..Default::default()
                },
                &token,
            ))
            .await?;
    }
    let never = consistency::LeadsToken::new(vec![lead, uuid::Uuid::new_v4()]).to_string();
    let err =
        pb::report_service_client::ReportServiceClient::new(stack.channel(&stack.reporting).await?)
            .pipeline_summary(outgoing(
                pb::PipelineSummaryRequest {
                    plan_id: Some(plan.id.clone()),
                    min_consistency_token: never,
                },
                &token,
            ))
            .await
            .expect_err("one of the two leads is no deal");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    c.plans
        .clone()
        .archive_plan(outgoing(
            pb::ArchivePlanRequest {
                plan_id: plan.id.clone(),
            },
            &token,
        ))
        .await?;
    let (status, retried) = send(plan.id.clone(), "r1").await?;
    assert_eq!(
        (status, &retried["duplicate"]),
        (202, &serde_json::json!(true))
    );
    assert_eq!(retried["intake_id"], first["intake_id"]);
    assert_eq!(token_of(&retried), token_of(&first));
    let (status, _) = send(plan.id.clone(), "r2").await?;
    assert_eq!(status, 404, "a new lead for an archived plan");

    stack.stop().await
}
