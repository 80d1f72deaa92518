//! Intake and distribution end to end: every mode from the webhook to the deal, related
//! contacts kept with their manager, several distributor replicas, retries, bulk adds,
//! membership changes.

use std::{collections::HashMap, time::Duration};

use futures::StreamExt;
use integration_tests::{
    Stack,
    api::{Mode, Strategy, all_deals, create_plan, lead_json, plan_request},
    stack::eventually,
};
use salesplan_platform::{Permission, grpc::outgoing};
use salesplan_proto::v1::{
    self as pb, deal_service_client::DealServiceClient,
    distributor_service_client::DistributorServiceClient,
    intake_service_client::IntakeServiceClient, plan_service_client::PlanServiceClient,
    report_service_client::ReportServiceClient,
};
use serde_json::json;

const ACCOUNT: &str = "acme";

struct Tokens {
    admin: String,
    boss: String,
    funnel: String,
}

fn tokens(stack: &Stack) -> Tokens {
    Tokens {
        admin: stack.token(ACCOUNT, "admin", &[Permission::PlansAdmin]),
        boss: stack.token(
            ACCOUNT,
            "boss",
            &[Permission::DealsEditAll, Permission::DealsBulkEdit],
        ),
        funnel: stack.token(ACCOUNT, "funnel", &[Permission::IntakeWrite]),
    }
}

async fn post(
    stack: &Stack,
    token: &str,
    body: &serde_json::Value,
) -> anyhow::Result<(u16, serde_json::Value)> {
    let response = reqwest::Client::new()
        .post(stack.webhook_url())
        .bearer_auth(token)
        .json(body)
        .send()
        .await?;
    let status = response.status().as_u16();
    Ok((status, response.json().await?))
}

async fn deals_of(
    stack: &Stack,
    token: &str,
    plan_id: &str,
    expected: usize,
) -> anyhow::Result<Vec<pb::Deal>> {
    let channel = stack.channel(&stack.deal_service).await?;
    let filter = pb::DealFilter {
        plan_id: plan_id.to_owned(),
        ..Default::default()
    };
    // Poll the count (cheap), then read the deals once.
    let deals = DealServiceClient::new(channel.clone());
    eventually(Duration::from_secs(60), || {
        let request = outgoing(
            pb::ListDealsRequest {
                filter: Some(filter.clone()),
                page_size: 1,
                ..Default::default()
            },
            token,
        );
        let mut deals = deals.clone();
        async move {
            let total = deals.list_deals(request).await?.into_inner().total_count as usize;
            anyhow::ensure!(total <= expected, "more deals than leads: {total}");
            Ok((total == expected).then_some(()))
        }
    })
    .await?;
    all_deals(channel, token, filter).await
}

fn per_manager(deals: &[pb::Deal]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for deal in deals {
        *counts
            .entry(deal.manager_id.clone().unwrap_or_else(|| "-".into()))
            .or_default() += 1;
    }
    counts
}

fn counts(pairs: &[(&str, usize)]) -> HashMap<String, usize> {
    pairs.iter().map(|(m, n)| ((*m).to_owned(), *n)).collect()
}

/// The distributor's open-deal counts equal a recount of deal-service's data.
async fn counts_agree(stack: &Stack) -> anyhow::Result<()> {
    let pool = stack.pool().await?;
    eventually(Duration::from_secs(20), || {
        let pool = pool.clone();
        async move {
            let kept: Vec<(uuid::Uuid, String, i64)> = sqlx::query_as(
                "SELECT plan_id, manager_id, open FROM distributor.open_deals WHERE open <> 0 ORDER BY 1, 2",
            )
            .fetch_all(&pool)
            .await?;
            let recount: Vec<(uuid::Uuid, String, i64)> = sqlx::query_as(
                "SELECT plan_id, manager_id, count(*) FROM deal_service.deals
                 WHERE status = 'open' AND manager_id IS NOT NULL GROUP BY 1, 2 ORDER BY 1, 2",
            )
            .fetch_all(&pool)
            .await?;
            Ok((kept == recount).then_some(()))
        }
    })
    .await
}

#[tokio::test]
async fn each_mode_from_webhook_to_deal() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let t = tokens(&stack);
    let channel = stack.channel(&stack.deal_service).await?;
    let members = ["m1", "m2", "m3"];
    let manual = create_plan(
        channel.clone(),
        &t.admin,
        plan_request(
            "Manual",
            Mode::Manual,
            Strategy::Unspecified,
            false,
            &members,
        ),
    )
    .await?;
    let random = create_plan(
        channel.clone(),
        &t.admin,
        plan_request("Random", Mode::Auto, Strategy::Random, false, &members),
    )
    .await?;
    let turns = create_plan(
        channel.clone(),
        &t.admin,
        plan_request("Turns", Mode::Auto, Strategy::RoundRobin, false, &members),
    )
    .await?;
    let fewest = create_plan(
        channel.clone(),
        &t.admin,
        plan_request(
            "Fewest",
            Mode::Auto,
            Strategy::LeastOpenDeals,
            false,
            &members,
        ),
    )
    .await?;

    // m1 already works three deals of the least-open plan (created by hand).
    let mut deals = DealServiceClient::new(channel.clone());
    for i in 0..3 {
        deals
            .create_deal(outgoing(
                pb::CreateDealRequest {
                    plan_id: fewest.id.clone(),
                    contact: Some(pb::Contact {
                        external_id: format!("old-{i}"),
                        ..Default::default()
                    }),
                    manager_id: Some("m1".into()),
                    idempotency_key: format!("by-hand-{i}"),
                    ..Default::default()
                },
                &t.boss,
            ))
            .await?;
    }
    let pool = stack.pool().await?;
    eventually(Duration::from_secs(10), || {
        let pool = pool.clone();
        async move {
            let n: Option<i64> = sqlx::query_scalar(
                "SELECT open FROM distributor.open_deals WHERE manager_id = 'm1'",
            )
            .fetch_optional(&pool)
            .await?;
            Ok((n == Some(3)).then_some(()))
        }
    })
    .await?;

    for plan in [&manual, &random, &turns, &fewest] {
        for run in 0..6 {
            let (status, _) = post(
                &stack,
                &t.funnel,
                &lead_json(
                    &plan.id,
                    &format!("run-{run}"),
                    &format!("{}-{run}", plan.name),
                ),
            )
            .await?;
            assert_eq!(status, 202);
        }
    }
    let got = deals_of(&stack, &t.boss, &manual.id, 6).await?;
    assert_eq!(
        per_manager(&got),
        counts(&[("-", 6)]),
        "MANUAL leaves deals unassigned"
    );
    let got = deals_of(&stack, &t.boss, &random.id, 6).await?;
    assert!(got.iter().all(|d| {
        d.manager_id
            .as_deref()
            .is_some_and(|m| members.contains(&m))
    }));
    let got = deals_of(&stack, &t.boss, &turns.id, 6).await?;
    assert_eq!(
        per_manager(&got),
        counts(&[("m1", 2), ("m2", 2), ("m3", 2)])
    );
    let got = deals_of(&stack, &t.boss, &fewest.id, 9).await?;
    assert_eq!(
        per_manager(&got),
        counts(&[("m1", 3), ("m2", 3), ("m3", 3)]),
        "the new leads went to m2 and m3"
    );

    // Why: the explanation of a least-open decision.
    let lead_deal = got
        .iter()
        .find(|d| d.manager_id.as_deref() == Some("m2"))
        .expect("a deal of m2");
    let mut distributor = DistributorServiceClient::new(stack.channel(&stack.distributor).await?);
    let assignment = explanation(&stack, &t.boss, &lead_deal.id).await?;
    assert_eq!(assignment.mode, "auto");
    assert_eq!(assignment.strategy, "least_open_deals");
    assert_eq!(assignment.manager_id.as_deref(), Some("m2"));
    let m1 = assignment
        .candidates
        .iter()
        .find(|c| c.manager_id == "m1")
        .expect("m1 considered");
    assert!(m1.note.starts_with("more open deals"), "{}", m1.note);
    assert!(!m1.chosen);
    // The same record went out as an event.
    let js = async_nats::jetstream::new(async_nats::connect(&stack.nats.url).await?);
    let mut decisions = js.get_stream("SALESPLAN_ASSIGNMENTS").await?;
    assert_eq!(decisions.info().await?.state.messages, 24, "one per lead");
    let stranger = stack.token(
        "globex",
        "boss",
        &[
            salesplan_platform::Permission::DealsRead,
            salesplan_platform::Permission::ReportsRead,
        ],
    );
    let err = distributor
        .explain_assignment(outgoing(
            pb::ExplainAssignmentRequest {
                deal_id: lead_deal.id.clone(),
            },
            &stranger,
        ))
        .await
        .expect_err("another account");
    assert_eq!(err.code(), tonic::Code::NotFound);

    // Several at once (ExportContact's look-up): in the order asked, a repeated id once,
    // the deals created by hand and another account's left out.
    let mut asked: Vec<String> = got.iter().map(|d| d.id.clone()).collect();
    asked.push(lead_deal.id.clone());
    let batch = |token: &str| {
        outgoing(
            pb::ExplainAssignmentsRequest {
                deal_ids: asked.clone(),
            },
            token,
        )
    };
    let explained = distributor
        .explain_assignments(batch(&t.boss))
        .await?
        .into_inner()
        .assignments;
    let from_leads: Vec<&pb::Deal> = got
        .iter()
        .filter(|d| !d.idempotency_key.starts_with("by-hand"))
        .collect();
    assert_eq!(from_leads.len(), 6);
    assert_eq!(
        explained
            .iter()
            .map(|a| (a.deal_id.as_str(), a.manager_id.as_deref()))
            .collect::<Vec<_>>(),
        from_leads
            .iter()
            .map(|d| (d.id.as_str(), d.manager_id.as_deref()))
            .collect::<Vec<_>>()
    );
    let foreign = distributor
        .explain_assignments(batch(&stranger))
        .await?
        .into_inner();
    assert!(foreign.assignments.is_empty());
    // Ids the distributor knows nothing of cost a look-up at deal-service each: more than
    // a hundred at once are refused, not looked up.
    let unknown = distributor
        .explain_assignments(outgoing(
            pb::ExplainAssignmentsRequest {
                deal_ids: (0..101).map(|_| uuid::Uuid::new_v4().to_string()).collect(),
            },
            &t.boss,
        ))
        .await
        .expect_err("101 deals unknown here");
    assert_eq!(unknown.code(), tonic::Code::Unavailable);
    let refused = distributor
        .explain_assignments(outgoing(
            pb::ExplainAssignmentsRequest {
                deal_ids: vec!["x".into(), lead_deal.id.clone(), "y".into()],
            },
            &t.boss,
        ))
        .await
        .expect_err("two ids are not ids");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    let fields = violated_fields(&refused);
    assert_eq!(fields, ["deal_ids[0]", "deal_ids[2]"]);

    // Closing, reassigning and reopening keep the distributor's counts exact.
    let won = fewest
        .stages
        .iter()
        .find(|s| s.kind == pb::StageKind::Won as i32)
        .expect("won")
        .id
        .clone();
    let m2_deals: Vec<&pb::Deal> = got
        .iter()
        .filter(|d| d.manager_id.as_deref() == Some("m2"))
        .collect();
    let closed = deals
        .move_deal(outgoing(
            pb::MoveDealRequest {
                deal_id: m2_deals[0].id.clone(),
                expected_version: m2_deals[0].version,
                stage_id: won,
                loss_reason_id: None,
            },
            &t.boss,
        ))
        .await?
        .into_inner()
        .deal
        .expect("deal");
    deals
        .assign_deal(outgoing(
            pb::AssignDealRequest {
                deal_id: m2_deals[1].id.clone(),
                expected_version: m2_deals[1].version,
                manager_id: Some("m3".into()),
                ..Default::default()
            },
            &t.boss,
        ))
        .await?;
    deals
        .reopen_deal(outgoing(
            pb::ReopenDealRequest {
                deal_id: closed.id.clone(),
                expected_version: closed.version,
            },
            &t.boss,
        ))
        .await?;
    counts_agree(&stack).await?;
    drop(distributor);
    stack.stop().await
}

#[tokio::test]
async fn the_seeds_example_related_contacts_keep_their_manager_new_ones_go_to_the_fewest()
-> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let t = tokens(&stack);
    let channel = stack.channel(&stack.deal_service).await?;
    let plan = create_plan(
        channel.clone(),
        &t.admin,
        plan_request(
            "New SP",
            Mode::Auto,
            Strategy::LeastOpenDeals,
            true,
            &["anna", "boris", "chen"],
        ),
    )
    .await?;
    // (run, contact, expected manager)
    let script = [
        ("r1", "known", "anna"),  // all equal: first in turn
        ("r2", "new-a", "boris"), // fewest, next in turn
        ("r3", "new-b", "chen"),
        ("r4", "new-c", "anna"), // all at one: next in turn after chen
        ("r5", "known", "anna"), // related: anna again although she has the most
        ("r6", "new-d", "boris"),
    ];
    for (i, (run, contact, _)) in script.iter().enumerate() {
        let (status, _) = post(&stack, &t.funnel, &lead_json(&plan.id, run, contact)).await?;
        assert_eq!(status, 202);
        // One at a time, so the order of decisions is the order of the script.
        deals_of(&stack, &t.boss, &plan.id, i + 1).await?;
    }
    let mut named = lead_json(&plan.id, "r7", "new-e");
    named["related_manager_id"] = json!("chen");
    assert_eq!(post(&stack, &t.funnel, &named).await?.0, 202);
    let got = deals_of(&stack, &t.boss, &plan.id, 7).await?;
    let by_contact: HashMap<String, Vec<String>> = got.iter().fold(HashMap::new(), |mut m, d| {
        let contact = d
            .contact
            .as_ref()
            .map(|c| c.external_id.clone())
            .unwrap_or_default();
        m.entry(contact)
            .or_default()
            .push(d.manager_id.clone().unwrap_or_default());
        m
    });
    for (_, contact, manager) in script {
        assert!(
            by_contact[contact].iter().all(|m| m == manager),
            "{contact}: {:?}",
            by_contact[contact]
        );
    }
    assert_eq!(
        by_contact["new-e"],
        ["chen"],
        "a related manager named by the caller"
    );
    stack.stop().await
}

async fn bulk_add(
    stack: &Stack,
    token: &str,
    plan_id: &str,
    job: &str,
    contacts: Vec<pb::AudienceContact>,
    assign_to: Option<&str>,
) -> anyhow::Result<Vec<pb::ContactResult>> {
    let mut intake = IntakeServiceClient::new(stack.channel(&stack.tunnel_listener).await?);
    let chunks: Vec<pb::AddAudienceRequest> = contacts
        .chunks(1_000)
        .map(|chunk| pb::AddAudienceRequest {
            plan_id: plan_id.to_owned(),
            job_id: job.to_owned(),
            assign_to_manager_id: assign_to.map(str::to_owned),
            contacts: chunk.to_vec(),
        })
        .collect();
    let mut request = tonic::Request::new(futures::stream::iter(chunks));
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    let mut responses = intake.add_audience(request).await?.into_inner();
    let mut results = Vec::new();
    while let Some(response) = responses.next().await {
        results.extend(response?.results);
    }
    Ok(results)
}

fn audience(n: usize, prefix: &str) -> Vec<pb::AudienceContact> {
    (0..n)
        .map(|i| pb::AudienceContact {
            contact: Some(pb::Contact {
                external_id: format!("{prefix}-{i}"),
                name: format!("Subscriber {i}"),
                ..Default::default()
            }),
            ..Default::default()
        })
        .collect()
}

fn outcomes(results: &[pb::ContactResult]) -> HashMap<i32, usize> {
    let mut counts = HashMap::new();
    for r in results {
        *counts.entry(r.outcome).or_default() += 1;
    }
    counts
}

#[tokio::test]
async fn three_distributor_replicas_split_a_plan_exactly() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let second = stack.add_distributor().await?;
    let third = stack.add_distributor().await?;
    let t = tokens(&stack);
    let channel = stack.channel(&stack.deal_service).await?;
    let plan = create_plan(
        channel,
        &t.admin,
        plan_request(
            "Even",
            Mode::Auto,
            Strategy::RoundRobin,
            false,
            &["m1", "m2", "m3"],
        ),
    )
    .await?;
    let results = bulk_add(
        &stack,
        &t.funnel,
        &plan.id,
        "job-even",
        audience(3_000, "sub"),
        None,
    )
    .await?;
    assert_eq!(
        outcomes(&results),
        HashMap::from([(pb::ContactOutcome::Accepted as i32, 3_000)])
    );
    let got = deals_of(&stack, &t.boss, &plan.id, 3_000).await?;
    assert_eq!(
        per_manager(&got),
        counts(&[("m1", 1_000), ("m2", 1_000), ("m3", 1_000)])
    );
    counts_agree(&stack).await?;
    // Each replica took its part: the leads it turned into deals (its own metrics).
    let mut made = Vec::new();
    for replica in [&stack.distributor, &second, &third] {
        let text = integration_tests::metrics::scrape(replica).await?;
        made.push(integration_tests::metrics::sample(
            &text,
            "salesplan_distributor_lead_to_deal_seconds_count",
            &[],
        ));
    }
    assert!(
        made.iter().all(|&n| n > 0.0),
        "a replica stayed idle: {made:?}"
    );
    assert!(made.iter().sum::<f64>() >= 3_000.0, "{made:?}");
    drop((second, third));
    stack.stop().await
}

#[tokio::test]
async fn the_same_webhook_five_times_makes_one_deal() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let t = tokens(&stack);
    let channel = stack.channel(&stack.deal_service).await?;
    let plan = create_plan(
        channel,
        &t.admin,
        plan_request("Once", Mode::Auto, Strategy::RoundRobin, false, &["m1"]),
    )
    .await?;
    let body = lead_json(&plan.id, "run-42", "tg-42");
    let posts = futures::future::join_all((0..5).map(|_| post(&stack, &t.funnel, &body))).await;
    let mut ids = Vec::new();
    let mut fresh = 0;
    for result in posts {
        let (status, reply) = result?;
        assert_eq!(status, 202);
        ids.push(reply["intake_id"].clone());
        if reply["duplicate"] == false {
            fresh += 1;
        }
    }
    assert_eq!(fresh, 1, "one delivery was new, four were retries");
    assert!(ids.windows(2).all(|w| w[0] == w[1]));
    deals_of(&stack, &t.boss, &plan.id, 1).await?;
    // Once every delivery was handled, there is still one deal.
    stack.intake_settled().await?;
    assert_eq!(deals_of(&stack, &t.boss, &plan.id, 1).await?.len(), 1);
    stack.stop().await
}

#[tokio::test]
async fn a_bulk_add_of_ten_thousand_contacts_makes_ten_thousand_deals() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let t = tokens(&stack);
    let channel = stack.channel(&stack.deal_service).await?;
    let plan = create_plan(
        channel.clone(),
        &t.admin,
        plan_request(
            "Audience",
            Mode::Auto,
            Strategy::LeastOpenDeals,
            false,
            &["m1", "m2"],
        ),
    )
    .await?;
    let mut contacts = audience(10_000, "aud");
    contacts.insert(
        17,
        pb::AudienceContact {
            contact: Some(pb::Contact {
                email: "broken@".into(),
                ..Default::default()
            }),
            ..Default::default()
        },
    );
    let results = bulk_add(&stack, &t.funnel, &plan.id, "job-1", contacts.clone(), None).await?;
    assert_eq!(results.len(), 10_001);
    let rejected: Vec<&pb::ContactResult> = results
        .iter()
        .filter(|r| r.outcome == pb::ContactOutcome::Rejected as i32)
        .collect();
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0].index, 17);
    assert!(
        rejected[0].reason.starts_with("contact.email:"),
        "{}",
        rejected[0].reason
    );
    let got = deals_of(&stack, &t.boss, &plan.id, 10_000).await?;
    assert_eq!(per_manager(&got), counts(&[("m1", 5_000), ("m2", 5_000)]));

    // The same job again: every contact is a duplicate, no deal is added.
    let again = bulk_add(&stack, &t.funnel, &plan.id, "job-1", contacts, None).await?;
    assert_eq!(
        outcomes(&again),
        HashMap::from([
            (pb::ContactOutcome::Duplicate as i32, 10_000),
            (pb::ContactOutcome::Rejected as i32, 1)
        ])
    );
    stack.intake_settled().await?;
    assert_eq!(
        deals_of(&stack, &t.boss, &plan.id, 10_000).await?.len(),
        10_000
    );

    // Straight to one manager; a non-member is refused.
    let manual = create_plan(
        channel,
        &t.admin,
        plan_request(
            "Direct",
            Mode::Manual,
            Strategy::Unspecified,
            false,
            &["m1", "m2"],
        ),
    )
    .await?;
    bulk_add(
        &stack,
        &t.funnel,
        &manual.id,
        "job-2",
        audience(50, "direct"),
        Some("m2"),
    )
    .await?;
    let got = deals_of(&stack, &t.boss, &manual.id, 50).await?;
    assert_eq!(per_manager(&got), counts(&[("m2", 50)]));
    let err = bulk_add(
        &stack,
        &t.funnel,
        &manual.id,
        "job-3",
        audience(1, "x"),
        Some("stranger"),
    )
    .await
    .expect_err("not a member");
    let status = err.downcast_ref::<tonic::Status>().expect("a gRPC status");
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    stack.stop().await
}

#[tokio::test]
async fn a_removed_manager_gets_nothing_after_the_change() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let t = tokens(&stack);
    let channel = stack.channel(&stack.deal_service).await?;
    let plan = create_plan(
        channel.clone(),
        &t.admin,
        plan_request(
            "Team",
            Mode::Auto,
            Strategy::RoundRobin,
            false,
            &["m1", "m2", "m3"],
        ),
    )
    .await?;
    for run in 0..6 {
        post(
            &stack,
            &t.funnel,
            &lead_json(&plan.id, &format!("a{run}"), &format!("a{run}")),
        )
        .await?;
    }
    deals_of(&stack, &t.boss, &plan.id, 6).await?;
    PlanServiceClient::new(channel)
        .set_plan_managers(outgoing(
            pb::SetPlanManagersRequest {
                plan_id: plan.id.clone(),
                manager_ids: vec!["m1".into(), "m3".into()],
                ..Default::default()
            },
            &t.admin,
        ))
        .await?;
    // Leads keep streaming in right after the change.
    for run in 0..12 {
        post(
            &stack,
            &t.funnel,
            &lead_json(&plan.id, &format!("b{run}"), &format!("b{run}")),
        )
        .await?;
    }
    let got = deals_of(&stack, &t.boss, &plan.id, 18).await?;
    let after: Vec<&pb::Deal> = got
        .iter()
        .filter(|d| {
            d.contact
                .as_ref()
                .is_some_and(|c| c.external_id.starts_with('b'))
        })
        .collect();
    let m2_after = after
        .iter()
        .filter(|d| d.manager_id.as_deref() == Some("m2"))
        .count();
    assert_eq!(m2_after, 0, "m2 left the plan");
    assert_eq!(per_manager(&got)["m2"], 2, "m2 keeps the deals it had");
    stack.stop().await
}

#[tokio::test]
async fn unknown_archived_and_foreign_plans_are_refused_before_publishing() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let t = tokens(&stack);
    let channel = stack.channel(&stack.deal_service).await?;
    let plan = create_plan(
        channel.clone(),
        &t.admin,
        plan_request("Old", Mode::Manual, Strategy::Unspecified, false, &["m1"]),
    )
    .await?;
    let (status, body) = post(
        &stack,
        &t.funnel,
        &lead_json(&uuid::Uuid::new_v4().to_string(), "r", "c"),
    )
    .await?;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    let foreign = stack.token("globex", "funnel", &[Permission::IntakeWrite]);
    let (status, _) = post(&stack, &foreign, &lead_json(&plan.id, "r", "c")).await?;
    assert_eq!(status, 404, "another account's plan");
    PlanServiceClient::new(channel)
        .archive_plan(outgoing(
            pb::ArchivePlanRequest {
                plan_id: plan.id.clone(),
            },
            &t.admin,
        ))
        .await?;
    // Refused from the moment ArchivePlan answered OK: the listener reads the plan as it
    // stands for every lead.
    let (status, body) = post(&stack, &t.funnel, &lead_json(&plan.id, "r2", "c2")).await?;
    assert_eq!(status, 404, "an archived plan takes no leads: {body}");
    let mut intake = IntakeServiceClient::new(stack.channel(&stack.tunnel_listener).await?);
    let err = intake
        .add_to_sales_plan(outgoing(
            pb::AddToSalesPlanRequest {
                lead: Some(pb::Lead {
                    plan_id: uuid::Uuid::new_v4().to_string(),
                    run_id: "r".into(),
                    contact: Some(pb::Contact {
                        external_id: "c".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
            },
            &t.funnel,
        ))
        .await
        .expect_err("unknown plan");
    assert_eq!(err.code(), tonic::Code::NotFound);

    let js = async_nats::jetstream::new(async_nats::connect(&stack.nats.url).await?);
    let mut stream = js.get_stream("SALESPLAN_INTAKE").await?;
    assert_eq!(
        stream.info().await?.state.last_sequence,
        0,
        "nothing refused was published"
    );
    stack.stop().await
}

/// Weights (issue 20): a ROUND_ROBIN plan of m1 (weight 3) and m2 (weight 1) gives m1
/// three leads of every four, exactly, and says so in its explanation; equal weights
/// set later share evenly from there.
#[tokio::test]
async fn weighted_round_robin_shares_leads_by_weight() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let t = tokens(&stack);
    let channel = stack.channel(&stack.deal_service).await?;
    let member = |id: &str, weight| pb::PlanMember {
        manager_id: id.into(),
        weight,
        max_open_deals: 0,
    };
    let mut request = plan_request("Weighted", Mode::Auto, Strategy::RoundRobin, false, &[]);
    request.members = vec![member("m1", 3), member("m2", 1)];
    let plan = create_plan(channel.clone(), &t.admin, request).await?;
    assert_eq!(
        (plan.manager_ids.clone(), plan.manager_weights.clone()),
        (vec!["m1".to_owned(), "m2".to_owned()], vec![3, 1])
    );
    for run in 0..8 {
        let lead = lead_json(&plan.id, &format!("run-{run}"), &format!("w-{run}"));
        assert_eq!(post(&stack, &t.funnel, &lead).await?.0, 202);
    }
    let got = deals_of(&stack, &t.boss, &plan.id, 8).await?;
    assert_eq!(per_manager(&got), counts(&[("m1", 6), ("m2", 2)]));
    let of_m2 = got
        .iter()
        .find(|d| d.manager_id.as_deref() == Some("m2"))
        .expect("a deal of m2");
    let mut distributor = DistributorServiceClient::new(stack.channel(&stack.distributor).await?);
    let explained = distributor
        .explain_assignments(outgoing(
            pb::ExplainAssignmentsRequest {
                deal_ids: vec![of_m2.id.clone()],
            },
            &t.boss,
        ))
        .await?
        .into_inner()
        .assignments;
    assert_eq!(
        explained.first().map(|a| a.reason.as_str()),
        Some("next in weighted turn (weight 1 of 4)")
    );

    // Equal weights from now on (once the distributor has the change): the next four
    // leads split two and two.
    let changed = PlanServiceClient::new(channel.clone())
        .set_plan_managers(outgoing(
            pb::SetPlanManagersRequest {
                plan_id: plan.id.clone(),
                members: vec![member("m1", 1), member("m2", 0)],
                ..Default::default()
            },
            &t.admin,
        ))
        .await?
        .into_inner()
        .plan
        .expect("plan");
    assert_eq!(changed.manager_weights, [1, 1]);
    let pool = stack.pool().await?;
    eventually(Duration::from_secs(10), || async {
        let version: i64 =
            sqlx::query_scalar("SELECT version FROM distributor.plans WHERE plan_id = $1")
                .bind(uuid::Uuid::parse_str(&plan.id)?)
                .fetch_one(&pool)
                .await?;
        Ok((version == changed.version).then_some(()))
    })
    .await?;
    for run in 8..12 {
        let lead = lead_json(&plan.id, &format!("run-{run}"), &format!("w-{run}"));
        assert_eq!(post(&stack, &t.funnel, &lead).await?.0, 202);
    }
    let got = deals_of(&stack, &t.boss, &plan.id, 12).await?;
    assert_eq!(per_manager(&got), counts(&[("m1", 8), ("m2", 4)]));

    // Interleaved, end to end: leads one at a time (each placed before the next comes, so
    // arrival order is decision order) to weights 3, 2 and 1 take the turns of the pure
    // rule's smooth sequence, never m1 m1 m1 m2 m2 m3.
    let mut request = plan_request("Smooth", Mode::Auto, Strategy::RoundRobin, false, &[]);
    request.members = vec![member("m1", 3), member("m2", 2), member("m3", 1)];
    let smooth = create_plan(channel, &t.admin, request).await?;
    let mut order: Vec<pb::Deal> = Vec::new();
    for run in 0..12 {
        let lead = lead_json(&smooth.id, &format!("run-{run}"), &format!("s-{run}"));
        assert_eq!(post(&stack, &t.funnel, &lead).await?.0, 202);
        let now = deals_of(&stack, &t.boss, &smooth.id, run + 1).await?;
        let new = now
            .into_iter()
            .find(|d| order.iter().all(|o| o.id != d.id))
            .expect("the lead's deal");
        order.push(new);
    }
    let turns: Vec<&str> = order
        .iter()
        .map(|d| d.manager_id.as_deref().unwrap_or("-"))
        .collect();
    let cycle = ["m1", "m2", "m1", "m3", "m2", "m1"];
    assert_eq!(turns, [cycle, cycle].concat(), "{turns:?}");
    stack.stop().await
}

/// The deals of a plan waiting for a manager, oldest first.
async fn waiting_deals(
    channel: tonic::transport::Channel,
    token: &str,
    plan_id: &str,
) -> anyhow::Result<Vec<pb::Deal>> {
    let response = DealServiceClient::new(channel)
        .list_deals(outgoing(
            pb::ListDealsRequest {
                filter: Some(pb::DealFilter {
                    plan_id: plan_id.to_owned(),
                    waiting: true,
                    ..Default::default()
                }),
                sort: Some(pb::DealSort {
                    field: pb::DealSortField::CreatedAt as i32,
                    ascending: true,
                }),
                ..Default::default()
            },
            token,
        ))
        .await?
        .into_inner();
    anyhow::ensure!(response.total_count as usize == response.deals.len());
    Ok(response.deals)
}

/// A deal made by hand in `plan`, left to its distribution (`wait_for_manager`); `key` is
/// its idempotency key and its contact.
async fn waiting_deal(
    deals: &mut DealServiceClient<tonic::transport::Channel>,
    plan: &pb::Plan,
    key: &str,
    token: &str,
) -> anyhow::Result<pb::Deal> {
    let request = pb::CreateDealRequest {
        plan_id: plan.id.clone(),
        contact: Some(pb::Contact {
            external_id: key.into(),
            ..Default::default()
        }),
        idempotency_key: key.into(),
        wait_for_manager: true,
        ..Default::default()
    };
    let created = deals.create_deal(outgoing(request, token)).await?;
    created
        .into_inner()
        .deal
        .ok_or_else(|| anyhow::anyhow!("no deal"))
}

/// The manager of `deal_id` once it has one.
async fn manager_of(
    channel: tonic::transport::Channel,
    token: &str,
    deal_id: &str,
) -> anyhow::Result<pb::Deal> {
    eventually(Duration::from_secs(20), || {
        let mut deals = DealServiceClient::new(channel.clone());
        let request = outgoing(
            pb::GetDealRequest {
                deal_id: deal_id.to_owned(),
                ..Default::default()
            },
            token,
        );
        async move {
            let deal = deals.get_deal(request).await?.into_inner().deal;
            Ok(deal.filter(|d| d.manager_id.is_some()))
        }
    })
    .await
}

/// Capacity and the waiting queue (issue 20): in a LEAST_OPEN_DEALS plan of m1 and m2,
/// each at most one open deal, the third and fourth leads wait, visible (ListDeals
/// `waiting`, PipelineSummary) and unassigned. A deal of m1 closed lets the oldest in, to
/// m1, explained; m2's limit raised lets the other in; of three waiting, room for two
/// lets the two oldest in. A deal made by hand may ask to
/// wait (and is assigned at once when a member has room); a plan that distributes by hand
/// has no queue.
#[tokio::test]
async fn a_full_plan_queues_leads_and_assigns_the_oldest_when_a_place_frees() -> anyhow::Result<()>
{
    let stack = Stack::start().await?;
    let t = tokens(&stack);
    let channel = stack.channel(&stack.deal_service).await?;
    let member = |id: &str, max_open_deals| pb::PlanMember {
        manager_id: id.into(),
        weight: 1,
        max_open_deals,
    };
    let mut request = plan_request("Capped", Mode::Auto, Strategy::LeastOpenDeals, false, &[]);
    request.members = vec![member("m1", 1), member("m2", 1)];
    let plan = create_plan(channel.clone(), &t.admin, request).await?;
    assert_eq!(plan.manager_max_open_deals, [1, 1]);
    // One lead at a time, each deal made before the next is sent: the queue's order is
    // the leads' order.
    for run in 0..4 {
        let lead = lead_json(&plan.id, &format!("cap-{run}"), &format!("c-{run}"));
        assert_eq!(post(&stack, &t.funnel, &lead).await?.0, 202);
        deals_of(&stack, &t.boss, &plan.id, run + 1).await?;
    }
    let deals = deals_of(&stack, &t.boss, &plan.id, 4).await?;
    assert_eq!(
        per_manager(&deals),
        counts(&[("m1", 1), ("m2", 1), ("-", 2)])
    );
    let waiting = waiting_deals(channel.clone(), &t.boss, &plan.id).await?;
    assert_eq!(waiting.len(), 2, "{waiting:?}");
    assert!(
        waiting
            .iter()
            .all(|d| d.manager_id.is_none() && d.waiting_since.is_some())
    );
    let reports = ReportServiceClient::new(stack.channel(&stack.reporting).await?);
    let waiting_in_summary = |reports: ReportServiceClient<tonic::transport::Channel>| {
        let request = outgoing(
            pb::PipelineSummaryRequest {
                plan_id: Some(plan.id.clone()),
                ..Default::default()
            },
            &t.admin,
        );
        let mut reports = reports;
        async move {
            let summary = reports.pipeline_summary(request).await?.into_inner();
            Ok::<i64, anyhow::Error>(
                summary
                    .managers
                    .iter()
                    .filter(|m| m.manager_id.is_none())
                    .map(|m| m.waiting)
                    .sum(),
            )
        }
    };
    eventually(Duration::from_secs(20), || {
        let reports = reports.clone();
        let count = waiting_in_summary(reports);
        async move { Ok((count.await? == 2).then_some(())) }
    })
    .await?;

    // m1 wins its deal: a place frees, and the oldest waiting deal goes to m1.
    let of_m1 = deals
        .iter()
        .find(|d| d.manager_id.as_deref() == Some("m1"))
        .expect("a deal of m1");
    let won = plan
        .stages
        .iter()
        .find(|s| s.kind == pb::StageKind::Won as i32)
        .expect("a WON stage");
    let mut deal_client = DealServiceClient::new(channel.clone());
    deal_client
        .move_deal(outgoing(
            pb::MoveDealRequest {
                deal_id: of_m1.id.clone(),
                expected_version: of_m1.version,
                stage_id: won.id.clone(),
                loss_reason_id: None,
            },
            &t.boss,
        ))
        .await?;
    let first = manager_of(channel.clone(), &t.boss, &waiting[0].id).await?;
    assert_eq!(
        (first.manager_id.as_deref(), first.waiting_since),
        (Some("m1"), None)
    );
    let still = waiting_deals(channel.clone(), &t.boss, &plan.id).await?;
    let still: Vec<&str> = still.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(still, [waiting[1].id.as_str()], "the younger one waits on");
    // The decision becomes the deal's explanation once the order is made (just after the
    // deal shows its manager).
    let distributor = DistributorServiceClient::new(stack.channel(&stack.distributor).await?);
    let explained = eventually(Duration::from_secs(10), || {
        let mut distributor = distributor.clone();
        let request = outgoing(
            pb::ExplainAssignmentsRequest {
                deal_ids: vec![first.id.clone()],
            },
            &t.boss,
        );
        async move {
            let found = distributor.explain_assignments(request).await?.into_inner();
            Ok(found
                .assignments
                .into_iter()
                .find(|a| a.reason.starts_with("waited since ")))
        }
    })
    .await?;
    assert!(
        explained.reason.contains("fewest open deals (0)"),
        "{}",
        explained.reason
    );
    let explained = [explained];
    let notes: Vec<(String, String)> = explained[0]
        .candidates
        .iter()
        .map(|c| (c.manager_id.clone(), c.note.clone()))
        .collect();
    assert!(
        notes.contains(&("m2".into(), "at capacity (1 of 1)".into())),
        "{notes:?}"
    );

    // m2 may hold two now: the last waiting deal goes to m2.
    PlanServiceClient::new(channel.clone())
        .set_plan_managers(outgoing(
            pb::SetPlanManagersRequest {
                plan_id: plan.id.clone(),
                members: vec![member("m1", 1), member("m2", 2)],
                ..Default::default()
            },
            &t.admin,
        ))
        .await?;
    let second = manager_of(channel.clone(), &t.boss, &waiting[1].id).await?;
    assert_eq!(second.manager_id.as_deref(), Some("m2"));
    assert!(
        waiting_deals(channel.clone(), &t.boss, &plan.id)
            .await?
            .is_empty()
    );
    eventually(Duration::from_secs(20), || {
        let count = waiting_in_summary(reports.clone());
        async move { Ok((count.await? == 0).then_some(())) }
    })
    .await?;
    counts_agree(&stack).await?;

    // Everyone is full again (m1 1 of 1, m2 2 of 2): a deal made by hand waits too; m1's
    // deal lost frees m1, who takes it.
    let by_hand = waiting_deal(&mut deal_client, &plan, "by-hand-1", &t.boss).await?;
    assert!(by_hand.waiting_since.is_some() && by_hand.manager_id.is_none());
    let lost = plan
        .stages
        .iter()
        .find(|s| s.kind == pb::StageKind::Lost as i32)
        .expect("a LOST stage");
    deal_client
        .move_deal(outgoing(
            pb::MoveDealRequest {
                deal_id: first.id.clone(),
                expected_version: first.version,
                stage_id: lost.id.clone(),
                loss_reason_id: None,
            },
            &t.boss,
        ))
        .await?;
    let by_hand = manager_of(channel.clone(), &t.boss, &by_hand.id).await?;
    assert_eq!(by_hand.manager_id.as_deref(), Some("m1"));
    counts_agree(&stack).await?;

    // A transfer frees a place too: full again, a new deal waits; m1's deals transferred
    // to m2 (a person's decision is not bound by limits) let it in, to m1.
    let next_in = waiting_deal(&mut deal_client, &plan, "by-hand-3", &t.boss).await?;
    assert!(next_in.waiting_since.is_some() && next_in.manager_id.is_none());
    let moved = deal_client
        .transfer_deals(outgoing(
            pb::TransferDealsRequest {
                from_manager_id: "m1".into(),
                to_manager_id: "m2".into(),
                filter: Some(pb::DealFilter {
                    plan_id: plan.id.clone(),
                    statuses: vec![pb::DealStatus::Open as i32],
                    ..Default::default()
                }),
            },
            &t.boss,
        ))
        .await?
        .into_inner();
    assert_eq!(moved.changed, 1, "m1's one open deal: {moved:?}");
    let next_in = manager_of(channel.clone(), &t.boss, &next_in.id).await?;
    assert_eq!(next_in.manager_id.as_deref(), Some("m1"));
    counts_agree(&stack).await?;

    // Three wait (everyone full: m1 1 of 1, m2 3 of 2 by the transfer); room for two more
    // with m1: the two oldest go in, the youngest waits on.
    let mut three = Vec::new();
    for n in 0..3 {
        let key = format!("queued-{n}");
        three.push(waiting_deal(&mut deal_client, &plan, &key, &t.boss).await?);
    }
    PlanServiceClient::new(channel.clone())
        .set_plan_managers(outgoing(
            pb::SetPlanManagersRequest {
                plan_id: plan.id.clone(),
                members: vec![member("m1", 3), member("m2", 2)],
                ..Default::default()
            },
            &t.admin,
        ))
        .await?;
    for older in &three[..2] {
        let placed = manager_of(channel.clone(), &t.boss, &older.id).await?;
        assert_eq!(placed.manager_id.as_deref(), Some("m1"));
    }
    let still = waiting_deals(channel.clone(), &t.boss, &plan.id).await?;
    let still: Vec<&str> = still.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(still, [three[2].id.as_str()], "the youngest waits on");
    counts_agree(&stack).await?;

    // Leaving a deal to the distributor gives it to someone: a manager without
    // deals:edit_all may not.
    let member = stack.token(ACCOUNT, "m1", &[]);
    let refused = deal_client
        .create_deal(outgoing(
            pb::CreateDealRequest {
                plan_id: plan.id.clone(),
                contact: Some(pb::Contact {
                    external_id: "by-m1".into(),
                    ..Default::default()
                }),
                idempotency_key: "by-m1".into(),
                wait_for_manager: true,
                ..Default::default()
            },
            &member,
        ))
        .await
        .expect_err("a member may not hand deals out");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);

    // A plan that distributes by hand has no queue to wait in.
    let manual = create_plan(
        channel.clone(),
        &t.admin,
        plan_request(
            "By hand",
            Mode::Manual,
            Strategy::RoundRobin,
            false,
            &["m1"],
        ),
    )
    .await?;
    let refused = deal_client
        .create_deal(outgoing(
            pb::CreateDealRequest {
                plan_id: manual.id.clone(),
                contact: Some(pb::Contact {
                    external_id: "by-hand".into(),
                    ..Default::default()
                }),
                idempotency_key: "by-hand-2".into(),
                wait_for_manager: true,
                ..Default::default()
            },
            &t.boss,
        ))
        .await
        .expect_err("no queue in a manual plan");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert!(
        refused.message().contains("distributes by hand"),
        "{refused:?}"
    );
    stack.stop().await
}

/// A related contact whose manager is away (issue 20): a plan that keeps such leads for
/// their manager gives the returning contact's lead to them though paused (the contact
/// knows them), explained so; a plan that falls back gives it to another member.
#[tokio::test]
async fn a_related_lead_is_kept_for_its_away_manager_or_falls_back_as_the_plan_says()
-> anyhow::Result<()> {
    use pb::manager_service_client::ManagerServiceClient;
    let stack = Stack::start().await?;
    let t = tokens(&stack);
    let channel = stack.channel(&stack.deal_service).await?;
    let mut keep = plan_request(
        "Keep",
        Mode::Auto,
        Strategy::RoundRobin,
        true,
        &["m1", "m2"],
    );
    if let Some(d) = keep.distribution.as_mut() {
        d.keep_related_when_unavailable = true;
    }
    let keep = create_plan(channel.clone(), &t.admin, keep).await?;
    let fall = plan_request(
        "Fall",
        Mode::Auto,
        Strategy::RoundRobin,
        true,
        &["m1", "m2"],
    );
    let fall = create_plan(channel.clone(), &t.admin, fall).await?;
    // The contact's first deal in each plan: m1's (first in turn).
    for (plan, run) in [(&keep, "k-1"), (&fall, "f-1")] {
        assert_eq!(
            post(&stack, &t.funnel, &lead_json(&plan.id, run, "known"))
                .await?
                .0,
            202
        );
        let got = deals_of(&stack, &t.boss, &plan.id, 1).await?;
        assert_eq!(got[0].manager_id.as_deref(), Some("m1"), "{got:?}");
    }
    let mut managers = ManagerServiceClient::new(channel.clone());
    let m1 = stack.token(ACCOUNT, "m1", &[]);
    let pause = |paused: bool| {
        let request = pb::SetPausedRequest {
            manager_id: "m1".into(),
            paused,
        };
        outgoing(request, &m1)
    };
    managers.set_paused(pause(true)).await?;
    // The contact comes back while m1 is paused: to Keep, then (its deal made) to Fall.
    // One after the other: a contact's related manager is its newest deal's, account-wide,
    // so a fall-back deal made first would make m2 the related one for Keep.
    let mut made = Vec::new();
    for (plan, run) in [(&keep, "k-2"), (&fall, "f-2")] {
        assert_eq!(
            post(&stack, &t.funnel, &lead_json(&plan.id, run, "known"))
                .await?
                .0,
            202
        );
        made.push(deals_of(&stack, &t.boss, &plan.id, 2).await?);
    }
    let fell = made.pop().expect("Fall's deals");
    assert_eq!(
        per_manager(&fell),
        counts(&[("m1", 1), ("m2", 1)]),
        "falls back to the strategy: {fell:?}"
    );
    let kept = made.pop().expect("Keep's deals");
    assert_eq!(
        per_manager(&kept),
        counts(&[("m1", 2)]),
        "kept for m1 though paused: {kept:?}"
    );
    let ids: Vec<String> = kept.iter().map(|d| d.id.clone()).collect();
    let mut distributor = DistributorServiceClient::new(stack.channel(&stack.distributor).await?);
    let reasons: Vec<String> = distributor
        .explain_assignments(outgoing(
            pb::ExplainAssignmentsRequest { deal_ids: ids },
            &t.boss,
        ))
        .await?
        .into_inner()
        .assignments
        .into_iter()
        .map(|a| a.reason)
        .collect();
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("kept for them by the plan while unavailable")),
        "{reasons:?}"
    );
    stack.stop().await
}

/// The fields an INVALID_ARGUMENT names, in order.
fn violated_fields(status: &tonic::Status) -> Vec<String> {
    use tonic_types::StatusExt as _;
    status
        .get_error_details()
        .bad_request()
        .map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect())
        .unwrap_or_default()
}

/// The ErrorInfo reason of a status.
fn reason_of(status: &tonic::Status) -> Option<String> {
    use tonic_types::StatusExt as _;
    status
        .get_error_details()
        .error_info()
        .map(|i| i.reason.clone())
}

/// The explanation of how `deal_id` was assigned (or left waiting), once recorded.
async fn explanation(stack: &Stack, token: &str, deal_id: &str) -> anyhow::Result<pb::Assignment> {
    let distributor = DistributorServiceClient::new(stack.channel(&stack.distributor).await?);
    eventually(Duration::from_secs(20), || {
        let mut distributor = distributor.clone();
        let request = outgoing(
            pb::ExplainAssignmentRequest {
                deal_id: deal_id.to_owned(),
            },
            token,
        );
        async move {
            match distributor.explain_assignment(request).await {
                Ok(r) => Ok(r.into_inner().assignment),
                Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
                Err(s) => Err(s.into()),
            }
        }
    })
    .await
}

/// Availability (issue 20): a manager pauses themself (nobody else may but an admin), an
/// admin gives another a day off; from the moment each call answers OK, leads pass them
/// over, and with nobody available the leads wait, each member's note saying why. A bad
/// schedule is refused with every violation at once; a repeat changes nothing. The paused
/// manager resumes, and the whole queue goes to them (the order a queue is placed in is
/// the capacity test's: `a_full_plan_queues_leads_and_assigns_the_oldest_when_a_place_frees`).
#[tokio::test]
async fn unavailable_managers_get_no_leads_and_the_queue_moves_when_one_is_back()
-> anyhow::Result<()> {
    use pb::manager_service_client::ManagerServiceClient;
    let stack = Stack::start().await?;
    let t = tokens(&stack);
    let channel = stack.channel(&stack.deal_service).await?;
    let mut managers = ManagerServiceClient::new(channel.clone());
    let request = plan_request(
        "Shifts",
        Mode::Auto,
        Strategy::RoundRobin,
        true,
        &["m1", "m2"],
    );
    let plan = create_plan(channel.clone(), &t.admin, request).await?;
    let m1 = stack.token(ACCOUNT, "m1", &[]);
    let m2 = stack.token(ACCOUNT, "m2", &[]);
    let pause = |paused: bool, token: &str| {
        outgoing(
            pb::SetPausedRequest {
                manager_id: "m1".into(),
                paused,
            },
            token,
        )
    };

    let denied = managers
        .set_paused(pause(true, &m2))
        .await
        .expect_err("m2 may not pause m1");
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    let paused = managers
        .set_paused(pause(true, &m1))
        .await?
        .into_inner()
        .availability
        .expect("availability");
    assert_eq!(
        (
            paused.paused,
            paused.available_now,
            paused.unavailable_because.as_str(),
            paused.version
        ),
        (true, false, "paused", 1)
    );
    assert_eq!(paused.available_from, None, "a pause has no end");
    let again = managers.set_paused(pause(true, &m1)).await?.into_inner();
    assert_eq!(
        again.availability.map(|a| a.version),
        Some(1),
        "a repeat changes nothing"
    );

    // A bad schedule: every violation at once, nothing written.
    let bad = pb::Schedule {
        time_zone: "Nowhere/Else".into(),
        week: vec![pb::WorkingDay {
            weekday: 0,
            hours: vec![pb::WorkingHours {
                start_minute: 600,
                end_minute: 500,
            }],
        }],
        days_off: vec![pb::DaysOff {
            first: "soon".into(),
            last: "2026-13-01".into(),
        }],
    };
    let schedule = |schedule: pb::Schedule| {
        outgoing(
            pb::SetScheduleRequest {
                manager_id: "m2".into(),
                schedule: Some(schedule),
            },
            &t.admin,
        )
    };
    let refused = managers
        .set_schedule(schedule(bad))
        .await
        .expect_err("a bad schedule");
    let fields = violated_fields(&refused);
    assert_eq!(
        fields,
        [
            "schedule.time_zone",
            "schedule.week[0].weekday",
            "schedule.week[0].hours[0]",
            "schedule.days_off[0].first",
            "schedule.days_off[0].last",
        ]
    );
    let m2_now = managers
        .get_availability(outgoing(
            pb::GetAvailabilityRequest {
                manager_id: "m2".into(),
            },
            &t.boss,
        ))
        .await?
        .into_inner()
        .availability
        .expect("availability");
    assert_eq!((m2_now.version, m2_now.available_now), (0, true));
    let m2_schedule = managers
        .set_schedule(outgoing(
            pb::SetScheduleRequest {
                manager_id: "m2".into(),
                schedule: None,
            },
            &m2,
        ))
        .await
        .expect_err("a schedule needs plans:admin");
    assert_eq!(m2_schedule.code(), tonic::Code::PermissionDenied);

    // m2 is off from yesterday to tomorrow (UTC).
    let today = time::OffsetDateTime::now_utc().date();
    let off = pb::Schedule {
        time_zone: "UTC".into(),
        week: Vec::new(),
        days_off: vec![pb::DaysOff {
            first: (today - time::Duration::days(1)).to_string(),
            last: (today + time::Duration::days(1)).to_string(),
        }],
    };
    let day_off = managers
        .set_schedule(schedule(off))
        .await?
        .into_inner()
        .availability
        .expect("availability");
    assert_eq!(
        (day_off.available_now, day_off.unavailable_because.as_str()),
        (false, "day off")
    );
    let back = (today + time::Duration::days(2)).midnight().assume_utc();
    assert_eq!(
        day_off.available_from.map(|t| t.seconds),
        Some(back.unix_timestamp())
    );

    // Nobody is available: leads sent right after the OKs wait.
    for run in 0..2 {
        let lead = lead_json(&plan.id, &format!("shift-{run}"), &format!("s-{run}"));
        assert_eq!(post(&stack, &t.funnel, &lead).await?.0, 202);
        deals_of(&stack, &t.boss, &plan.id, run + 1).await?;
    }
    let waiting = waiting_deals(channel.clone(), &t.boss, &plan.id).await?;
    assert_eq!(waiting.len(), 2, "{waiting:?}");
    let why = explanation(&stack, &t.boss, &waiting[0].id).await?;
    assert_eq!(why.manager_id, None);
    assert!(
        why.reason.starts_with("no member is available"),
        "{}",
        why.reason
    );
    let notes: HashMap<String, String> = why
        .candidates
        .iter()
        .map(|c| (c.manager_id.clone(), c.note.clone()))
        .collect();
    assert_eq!(notes["m1"], "unavailable: paused");
    assert!(
        notes["m2"].starts_with("unavailable: day off, back at "),
        "{}",
        notes["m2"]
    );

    // m1 resumes: the whole queue goes to m1 (no limit: the order shows nothing here).
    managers.set_paused(pause(false, &m1)).await?;
    for deal in &waiting {
        let assigned = manager_of(channel.clone(), &t.boss, &deal.id).await?;
        assert_eq!(
            (assigned.manager_id.as_deref(), assigned.waiting_since),
            (Some("m1"), None)
        );
    }
    let first = explanation(&stack, &t.boss, &waiting[0].id).await?;
    assert!(first.reason.starts_with("waited since"), "{}", first.reason);

    // A new lead goes to m1 too: m2 is still off.
    let lead = lead_json(&plan.id, "shift-2", "s-2");
    assert_eq!(post(&stack, &t.funnel, &lead).await?.0, 202);
    let deals = deals_of(&stack, &t.boss, &plan.id, 3).await?;
    assert_eq!(per_manager(&deals), counts(&[("m1", 3)]));
    counts_agree(&stack).await?;
    stack.stop().await
}

/// The history entries of a deal the distributor wrote with a note (its reassignments
/// after missed response deadlines), oldest first: (to, note).
async fn reassignments(
    channel: tonic::transport::Channel,
    token: &str,
    deal_id: &str,
) -> anyhow::Result<Vec<(String, String)>> {
    let entries = DealServiceClient::new(channel)
        .get_deal_history(outgoing(
            pb::GetDealHistoryRequest {
                deal_id: deal_id.to_owned(),
                ..Default::default()
            },
            token,
        ))
        .await?
        .into_inner()
        .entries;
    Ok(entries
        .into_iter()
        .filter(|e| !e.note.is_empty())
        .map(|e| {
            assert_eq!(
                (e.actor_id.as_str(), e.action),
                ("system:distributor", pb::HistoryAction::Assigned as i32)
            );
            (e.to, e.note)
        })
        .collect())
}

/// The deal once `done` holds for it.
async fn deal_when(
    channel: tonic::transport::Channel,
    token: &str,
    deal_id: &str,
    done: impl Fn(&pb::Deal) -> bool,
) -> anyhow::Result<pb::Deal> {
    eventually(Duration::from_secs(30), || {
        let mut deals = DealServiceClient::new(channel.clone());
        let request = outgoing(
            pb::GetDealRequest {
                deal_id: deal_id.to_owned(),
                ..Default::default()
            },
            token,
        );
        let done = &done;
        async move {
            let deal = deals.get_deal(request).await?.into_inner().deal;
            Ok(deal.filter(|d| done(d)))
        }
    })
    .await
}

fn deadline_plan(name: &str, seconds: u32, reassignments: u32) -> pb::CreatePlanRequest {
    let mut request = plan_request(
        name,
        Mode::Auto,
        Strategy::RoundRobin,
        false,
        &["m1", "m2", "m3"],
    );
    if let Some(d) = request.distribution.as_mut() {
        d.response_deadline_seconds = seconds;
        d.max_reassignments = reassignments;
    }
    request
}

/// Two distributor replicas share the response deadlines (issue 20): rounds of leads in a
/// plan with a 2-second deadline and one reassignment, until each replica has acted on
/// some deadlines (at most five rounds). Every deal is reassigned exactly once and then
/// escalated exactly once — never twice by the two replicas, never forgotten — and the
/// replicas' own counts of missed deadlines add up to exactly that.
#[tokio::test]
async fn two_distributor_replicas_act_on_each_missed_deadline_once() -> anyhow::Result<()> {
    const ROUND: usize = 20;
    let stack = Stack::start().await?;
    let second = stack.add_distributor().await?;
    let t = tokens(&stack);
    let channel = stack.channel(&stack.deal_service).await?;
    let pool = stack.pool().await?;
    let plan = create_plan(channel, &t.admin, deadline_plan("Shared", 2, 1)).await?;
    let plan_id = uuid::Uuid::parse_str(&plan.id)?;
    let missed_by = |text: &str, outcome: &str| {
        let label = format!("outcome=\"{outcome}\"");
        let metric = "salesplan_distributor_deadlines_missed_total";
        integration_tests::metrics::sample(text, metric, &[label.as_str()])
    };
    let mut rounds = 0;
    let per_replica = loop {
        rounds += 1;
        let job = format!("sla-{rounds}");
        bulk_add(
            &stack,
            &t.funnel,
            &plan.id,
            &job,
            audience(ROUND, &job),
            None,
        )
        .await?;
        eventually(Duration::from_secs(60), || async {
            let escalated: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM deal_service.deals
                 WHERE plan_id = $1 AND escalated_at IS NOT NULL",
            )
            .bind(plan_id)
            .fetch_one(&pool)
            .await?;
            Ok((escalated == (rounds * ROUND) as i64).then_some(()))
        })
        .await?;
        let mut per_replica = Vec::new();
        for replica in [&stack.distributor, &second] {
            let text = integration_tests::metrics::scrape(replica).await?;
            per_replica.push((
                missed_by(&text, "reassigned"),
                missed_by(&text, "escalated"),
            ));
        }
        let both = per_replica.iter().all(|(r, e)| r + e > 0.0);
        if both || rounds == 5 {
            break per_replica;
        }
    };
    let deals = rounds * ROUND;
    // Per deal, from its history: the distributor's reassignments to a manager, and to
    // nobody (the escalation), each with its note.
    let steps: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT d.idempotency_key,
            count(*) FILTER (WHERE h.to_value IS NOT NULL),
            count(*) FILTER (WHERE h.to_value IS NULL)
         FROM deal_service.deals d JOIN deal_service.deal_history h ON h.deal_id = d.id
         WHERE d.plan_id = $1 AND h.detail ? 'note' AND h.actor_id = 'system:distributor'
         GROUP BY 1 ORDER BY 1",
    )
    .bind(plan_id)
    .fetch_all(&pool)
    .await?;
    assert_eq!(steps.len(), deals, "{steps:?}");
    for (deal, reassigned, escalated) in &steps {
        assert_eq!((*reassigned, *escalated), (1, 1), "deal {deal}");
    }
    let (reassigned, escalated) = per_replica
        .iter()
        .fold((0.0, 0.0), |(r, e), (rr, ee)| (r + rr, e + ee));
    assert_eq!(
        (reassigned, escalated),
        (deals as f64, deals as f64),
        "{per_replica:?}"
    );
    assert!(
        per_replica.iter().all(|(r, e)| r + e > 0.0),
        "a replica acted on no deadline in {rounds} rounds: {per_replica:?}"
    );
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM distributor.response_timers")
        .fetch_one(&pool)
        .await?;
    assert_eq!(left, 0, "no timer is left");
    drop(second);
    stack.stop().await
}

/// Response deadlines (issue 20). A bad deadline is refused with every violation. In a
/// plan with a 2-second deadline and one reassignment, a deal m1 does not accept goes to
/// the next in turn who never had it (m2), then, missed again, waits for a person: each
/// step in the deal's history with its note and in ExplainAssignment's chain; the
/// distributor leaves the escalated deal alone, and a person's assignment starts no
/// deadline. In a plan with a long deadline, AcceptDeal (only by the deal's manager;
/// a repeat changes nothing) and any change by the manager end the deadline.
#[tokio::test]
async fn a_deal_not_accepted_in_time_moves_on_then_waits_for_a_person() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let t = tokens(&stack);
    let channel = stack.channel(&stack.deal_service).await?;
    let mut deals = DealServiceClient::new(channel.clone());
    let pool = stack.pool().await?;

    let refused = PlanServiceClient::new(channel.clone())
        .create_plan(outgoing(deadline_plan("Bad", 700_000, 11), &t.admin))
        .await
        .expect_err("a deadline beyond a week and eleven reassignments");
    let fields = violated_fields(&refused);
    assert_eq!(
        fields,
        [
            "distribution.response_deadline_seconds",
            "distribution.max_reassignments"
        ]
    );

    // Missed twice: to the next manager, then to a person.
    let fast = create_plan(channel.clone(), &t.admin, deadline_plan("Fast", 2, 1)).await?;
    let lead = lead_json(&fast.id, "run-1", "slow-1");
    assert_eq!(post(&stack, &t.funnel, &lead).await?.0, 202);
    let deal = deals_of(&stack, &t.boss, &fast.id, 1).await?.remove(0);
    assert_eq!(deal.manager_id.as_deref(), Some("m1"));
    let moved = deal_when(channel.clone(), &t.boss, &deal.id, |d| {
        d.manager_id.as_deref() != Some("m1")
    })
    .await?;
    assert_eq!(
        moved.manager_id.as_deref(),
        Some("m2"),
        "next in turn: {moved:?}"
    );
    let escalated = deal_when(channel.clone(), &t.boss, &deal.id, |d| {
        d.escalated_at.is_some()
    })
    .await?;
    assert_eq!(escalated.manager_id, None);
    assert!(
        escalated.waiting_since.is_some(),
        "an escalated deal is in the plan's queue"
    );
    let steps = reassignments(channel.clone(), &t.boss, &deal.id).await?;
    assert_eq!(steps.len(), 2, "{steps:?}");
    assert_eq!(steps[0].0, "m2");
    assert!(
        steps[0]
            .1
            .starts_with("response deadline missed by m1 (assigned "),
        "{steps:?}"
    );
    assert_eq!(steps[1].0, "");
    assert!(
        steps[1].1.starts_with("response deadline missed by m2")
            && steps[1]
                .1
                .ends_with("reassigned 1 of 1 times: waits for a person"),
        "{steps:?}"
    );
    let explained = eventually(Duration::from_secs(20), || async {
        let e = explanation(&stack, &t.boss, &deal.id).await?;
        Ok((e.missed_deadlines.len() == 2).then_some(e))
    })
    .await?;
    let chain: Vec<&str> = explained
        .missed_deadlines
        .iter()
        .map(|m| m.manager_id.as_str())
        .collect();
    assert_eq!(chain, ["m1", "m2"]);
    assert_eq!(explained.manager_id, None);
    // The decisions this one replaced are kept, oldest first: the lead's, with its
    // candidates, then the reassignment to m2.
    let earlier = DistributorServiceClient::new(stack.channel(&stack.distributor).await?)
        .explain_assignment(outgoing(
            pb::ExplainAssignmentRequest {
                deal_id: deal.id.clone(),
            },
            &t.boss,
        ))
        .await?
        .into_inner()
        .earlier;
    let managers: Vec<Option<&str>> = earlier.iter().map(|a| a.manager_id.as_deref()).collect();
    assert_eq!(managers, [Some("m1"), Some("m2")], "{earlier:?}");
    let lead_decision: Vec<(&str, bool)> = earlier[0]
        .candidates
        .iter()
        .map(|c| (c.manager_id.as_str(), c.chosen))
        .collect();
    let expected = [("m1", true), ("m2", false), ("m3", false)];
    assert_eq!(lead_decision, expected, "{earlier:?}");
    assert_eq!(earlier[1].missed_deadlines.len(), 1, "{earlier:?}");
    for missed in &explained.missed_deadlines {
        let (from, to) = (
            missed.assigned_at.expect("from"),
            missed.due_at.expect("due"),
        );
        // Around the clock (no schedule): two seconds of working time are two seconds.
        assert_eq!(
            (to.seconds - from.seconds, to.nanos),
            (2, from.nanos),
            "{missed:?}"
        );
    }
    // Not the distributor's any more: out of its queue, no deadline running.
    applied(&pool, &deal.id, escalated.version).await?;
    let queued: Option<time::OffsetDateTime> = sqlx::query_scalar(
        "SELECT waiting_since FROM distributor.deal_view WHERE deal_id = $1::uuid",
    )
    .bind(&deal.id)
    .fetch_one(&pool)
    .await?;
    assert_eq!(queued, None);
    assert_eq!(timers(&pool, &deal.id).await?, 0);
    // A person decides: no deadline for their choice.
    let assigned = deals
        .assign_deal(outgoing(
            pb::AssignDealRequest {
                deal_id: deal.id.clone(),
                expected_version: escalated.version,
                manager_id: Some("m2".into()),
                ..Default::default()
            },
            &t.boss,
        ))
        .await?
        .into_inner()
        .deal
        .expect("deal");
    assert_eq!(
        (assigned.escalated_at, assigned.waiting_since),
        (None, None)
    );
    applied(&pool, &deal.id, assigned.version).await?;
    assert_eq!(
        timers(&pool, &deal.id).await?,
        0,
        "a person's assignment has no deadline"
    );
    // Only the platform's distributor reassigns with a note.
    let forged = deals
        .assign_deal(outgoing(
            pb::AssignDealRequest {
                deal_id: deal.id.clone(),
                expected_version: assigned.version,
                manager_id: None,
                note: "response deadline missed".into(),
                escalate: true,
                missed_assigned_at: None,
            },
            &t.boss,
        ))
        .await
        .expect_err("a person's escalation");
    assert_eq!(forged.code(), tonic::Code::InvalidArgument);

    // Accepted in time: the deadline ends.
    let slow = create_plan(channel.clone(), &t.admin, deadline_plan("Slow", 3_600, 2)).await?;
    for n in 0..2 {
        let lead = lead_json(&slow.id, &format!("run-{n}"), &format!("taken-{n}"));
        assert_eq!(post(&stack, &t.funnel, &lead).await?.0, 202);
    }
    let taken = deals_of(&stack, &t.boss, &slow.id, 2).await?;
    let by = |m: &str| {
        taken
            .iter()
            .find(|d| d.manager_id.as_deref() == Some(m))
            .cloned()
            .expect(m)
    };
    let (first, second) = (by("m1"), by("m2"));
    for d in [&first, &second] {
        eventually(Duration::from_secs(20), || async {
            Ok((timers(&pool, &d.id).await? == 1).then_some(()))
        })
        .await?;
    }
    let accept = |deal: &pb::Deal, token: &str| {
        outgoing(
            pb::AcceptDealRequest {
                deal_id: deal.id.clone(),
                expected_version: deal.version,
            },
            token,
        )
    };
    let m1 = stack.token(ACCOUNT, "m1", &[]);
    let m2 = stack.token(ACCOUNT, "m2", &[]);
    let denied = deals
        .accept_deal(accept(&first, &m2))
        .await
        .expect_err("only the deal's manager accepts it");
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    let stale = pb::Deal {
        version: first.version + 1,
        ..first.clone()
    };
    let conflict = deals
        .accept_deal(accept(&stale, &m1))
        .await
        .expect_err("a version that is not the deal's is refused");
    assert_eq!(conflict.code(), tonic::Code::Aborted);
    // Version 0: whatever version the deal is at (a manager without `deals:read`).
    let unread = pb::Deal {
        version: 0,
        ..first.clone()
    };
    let accepted = deals
        .accept_deal(accept(&unread, &m1))
        .await?
        .into_inner()
        .deal
        .expect("deal");
    assert!(accepted.accepted_at.is_some());
    let again = deals
        .accept_deal(accept(&first, &m1))
        .await?
        .into_inner()
        .deal
        .expect("deal");
    assert_eq!(again.version, accepted.version, "a repeat changes nothing");
    // Any change by the manager accepts the deal too.
    let stage = slow
        .stages
        .iter()
        .find(|s| s.kind == pb::StageKind::Open as i32 && s.id != second.stage_id)
        .expect("another open stage");
    let moved = deals
        .move_deal(outgoing(
            pb::MoveDealRequest {
                deal_id: second.id.clone(),
                expected_version: second.version,
                stage_id: stage.id.clone(),
                loss_reason_id: None,
            },
            &m2,
        ))
        .await?
        .into_inner()
        .deal
        .expect("deal");
    assert!(
        moved.accepted_at.is_some(),
        "a move by the manager accepts the deal"
    );
    for d in [&accepted, &moved] {
        applied(&pool, &d.id, d.version).await?;
        assert_eq!(timers(&pool, &d.id).await?, 0, "accepted: no deadline");
        assert!(d.accept_seconds.is_some_and(|s| s >= 0), "{d:?}");
    }

    // m3 takes an unassigned deal: accepted the moment it is theirs, it is not a deal they
    // got, and the report leaves it out (else it would read "accepted in 0 s").
    let unassigned = deals
        .create_deal(outgoing(
            pb::CreateDealRequest {
                plan_id: slow.id.clone(),
                contact: Some(pb::Contact {
                    external_id: "self-taken".into(),
                    ..Default::default()
                }),
                idempotency_key: "self-taken".into(),
                ..Default::default()
            },
            &t.boss,
        ))
        .await?
        .into_inner()
        .deal
        .expect("deal");
    let taken = deals
        .assign_deal(outgoing(
            pb::AssignDealRequest {
                deal_id: unassigned.id.clone(),
                expected_version: unassigned.version,
                manager_id: Some("m3".into()),
                ..Default::default()
            },
            &stack.token(ACCOUNT, "m3", &[]),
        ))
        .await?;
    let taken_token = integration_tests::api::write_token(&taken)?.to_string();
    let taken = taken.into_inner().deal.expect("deal");
    assert_eq!(taken.accepted_at, taken.assigned_at, "{taken:?}");

    // The report: who got what, who accepted, who missed.
    let mut reports = ReportServiceClient::new(stack.channel(&stack.reporting).await?);
    let rows = eventually(Duration::from_secs(20), || {
        let mut reports = reports.clone();
        let request = pb::ResponseTimesRequest {
            min_consistency_token: taken_token.clone(),
            ..Default::default()
        };
        let request = outgoing(request, &t.admin);
        async move {
            let rows = reports.response_times(request).await?.into_inner().rows;
            let total: i64 = rows.iter().map(|r| r.accepted + r.deadlines_missed).sum();
            Ok((total == 4).then_some(rows))
        }
    })
    .await?;
    let line = |plan: &pb::Plan, m: &str| {
        rows.iter()
            .find(|r| r.plan_id == plan.id && r.manager_id == m)
            .map(|r| {
                (
                    r.plan_name.clone(),
                    r.assigned,
                    r.accepted,
                    r.deadlines_missed,
                )
            })
    };
    assert_eq!(line(&fast, "m1"), Some(("Fast".into(), 1, 0, 1)));
    assert_eq!(
        line(&fast, "m2"),
        Some(("Fast".into(), 2, 0, 1)),
        "m2 missed it, then a person gave it back"
    );
    assert_eq!(line(&slow, "m1"), Some(("Slow".into(), 1, 1, 0)));
    assert_eq!(line(&slow, "m2"), Some(("Slow".into(), 1, 1, 0)));
    assert_eq!(line(&slow, "m3"), None, "a deal m3 took is not one m3 got");
    let m1_slow = rows
        .iter()
        .find(|r| r.plan_id == slow.id && r.manager_id == "m1")
        .expect("m1");
    assert_eq!(
        m1_slow.median_seconds,
        accepted.accept_seconds.map(|s| s as f64)
    );
    assert_eq!(m1_slow.p90_seconds, m1_slow.median_seconds);
    let fast_m1 = rows
        .iter()
        .find(|r| r.plan_id == fast.id && r.manager_id == "m1")
        .expect("m1");
    assert_eq!(fast_m1.median_seconds, None, "nothing accepted");
    // Only the asked plan.
    let only = reports
        .response_times(outgoing(
            pb::ResponseTimesRequest {
                plan_ids: vec![slow.id.clone()],
                ..Default::default()
            },
            &t.admin,
        ))
        .await?
        .into_inner()
        .rows;
    assert!(
        only.iter().all(|r| r.plan_id == slow.id) && only.len() == 2,
        "{only:?}"
    );

    // The distributor's reassignment names the assignment that missed its deadline, not
    // a version: others' edits meanwhile do not hold it up; once the deal is in another
    // assignment it is refused (ASSIGNMENT_ENDED), and a repeat answers as done.
    let lead = lead_json(&slow.id, "run-2", "taken-2");
    assert_eq!(post(&stack, &t.funnel, &lead).await?.0, 202);
    let fresh = deals_of(&stack, &t.boss, &slow.id, 4)
        .await?
        .into_iter()
        .find(|d| ![&first.id, &second.id, &unassigned.id].contains(&&d.id))
        .expect("the new lead's deal");
    let given_to = fresh.manager_id.clone().expect("given by the distributor");
    let edited = deals
        .update_deal(outgoing(
            pb::UpdateDealRequest {
                deal_id: fresh.id.clone(),
                expected_version: fresh.version,
                title: Some("edited by the boss".into()),
                ..Default::default()
            },
            &t.boss,
        ))
        .await?
        .into_inner()
        .deal
        .expect("deal");
    assert_eq!(edited.manager_id, fresh.manager_id);
    let distributor = stack.token(ACCOUNT, "system:distributor", &[Permission::PlatformIntake]);
    let reassign = |deal: &pb::Deal, to: &str| {
        outgoing(
            pb::AssignDealRequest {
                deal_id: deal.id.clone(),
                expected_version: deal.version,
                manager_id: Some(to.into()),
                note: "response deadline missed".into(),
                escalate: false,
                missed_assigned_at: deal.assigned_at,
            },
            &distributor,
        )
    };
    let others: Vec<&str> = ["m1", "m2", "m3"]
        .into_iter()
        .filter(|m| *m != given_to)
        .collect();
    let moved_on = deals
        .assign_deal(reassign(&fresh, others[0]))
        .await?
        .into_inner()
        .deal
        .expect("deal");
    assert_eq!(
        moved_on.manager_id.as_deref(),
        Some(others[0]),
        "{moved_on:?}"
    );
    let repeated = deals
        .assign_deal(reassign(&fresh, others[0]))
        .await?
        .into_inner()
        .deal
        .expect("deal");
    assert_eq!(
        repeated.version, moved_on.version,
        "a repeat changes nothing"
    );
    let ended = deals
        .assign_deal(reassign(&fresh, others[1]))
        .await
        .expect_err("the deal is in another assignment now");
    assert_eq!(
        (ended.code(), reason_of(&ended).as_deref()),
        (tonic::Code::FailedPrecondition, Some("ASSIGNMENT_ENDED"))
    );
    // A person's assignment runs under no deadline: nothing to reassign for.
    let none = deals
        .assign_deal(reassign(&assigned, "m3"))
        .await
        .expect_err("a person's assignment has no deadline to miss");
    assert_eq!(
        (none.code(), reason_of(&none).as_deref()),
        (tonic::Code::FailedPrecondition, Some("DEADLINE_ENDED"))
    );

    // A deadline removed and put back while a deal runs under it: that deadline ended.
    // When it runs out nobody reassigns the deal (deal-service refuses, DEADLINE_ENDED),
    // and no missed deadline is recorded; the distributor's timer ends.
    let fickle = create_plan(channel.clone(), &t.admin, deadline_plan("Fickle", 4, 1)).await?;
    let lead = lead_json(&fickle.id, "run-f", "fickle-1");
    assert_eq!(post(&stack, &t.funnel, &lead).await?.0, 202);
    let kept = deals_of(&stack, &t.boss, &fickle.id, 1).await?.remove(0);
    assert_eq!(kept.manager_id.as_deref(), Some("m1"));
    eventually(Duration::from_secs(20), || async {
        Ok((timers(&pool, &kept.id).await? == 1).then_some(()))
    })
    .await?;
    let mut plans = PlanServiceClient::new(channel.clone());
    let mut restored = 0;
    for (seconds, reassignments) in [(0, 0), (4, 1)] {
        restored = plans
            .update_plan(outgoing(
                pb::UpdatePlanRequest {
                    plan_id: fickle.id.clone(),
                    distribution: deadline_plan("Fickle", seconds, reassignments).distribution,
                    ..Default::default()
                },
                &t.admin,
            ))
            .await?
            .into_inner()
            .plan
            .expect("plan")
            .version;
    }
    // The distributor has the plan with its deadline again (well before the timer runs
    // out): the timer is not dropped as one of a plan without a deadline; deal-service's
    // refusal must end it.
    eventually(Duration::from_secs(10), || async {
        let version: i64 =
            sqlx::query_scalar("SELECT version FROM distributor.plans WHERE plan_id = $1")
                .bind(uuid::Uuid::parse_str(&fickle.id)?)
                .fetch_one(&pool)
                .await?;
        Ok((version == restored).then_some(()))
    })
    .await?;
    // The timer runs out four seconds after the assignment, and ends.
    eventually(Duration::from_secs(30), || async {
        Ok((timers(&pool, &kept.id).await? == 0).then_some(()))
    })
    .await?;
    let now = deal_when(channel.clone(), &t.boss, &kept.id, |_| true).await?;
    assert_eq!(
        (now.manager_id.as_deref(), now.version),
        (Some("m1"), kept.version),
        "not reassigned: {now:?}"
    );
    let explained = explanation(&stack, &t.boss, &kept.id).await?;
    assert!(explained.missed_deadlines.is_empty(), "{explained:?}");
    stack.stop().await
}

/// An acceptance after the response deadline (issue 20), when the distributor did not
/// reassign in time (here: none runs, as when it is down or behind): the manager keeps
/// the deal, the deal says it was accepted late, and ResponseTimes counts the deadline as
/// missed. Only the distributor's assignments run under the deadline: a person's
/// assignment accepted just as late is not late, nor one accepted in time, nor a deal
/// closed before its deadline and reopened, nor one in a plan whose deadline was removed
/// (and put back) or that was archived (and unarchived) meanwhile.
#[tokio::test]
async fn a_late_acceptance_keeps_the_deal_and_counts_as_a_missed_deadline() -> anyhow::Result<()> {
    let stack = integration_tests::stack::DealStack::start().await?;
    let reporting = stack.start_reporting().await?;
    let channel = stack.channel().await?;
    let mut deals = DealServiceClient::new(channel.clone());
    let admin = stack.token(ACCOUNT, "admin", &[Permission::PlansAdmin]);
    let boss = stack.token(ACCOUNT, "boss", &[Permission::DealsEditAll]);
    let distributor = stack.token(
        ACCOUNT,
        "system:distributor",
        &[Permission::PlatformIntake, Permission::DealsEditAll],
    );
    let m1 = stack.token(ACCOUNT, "m1", &[]);
    let tight = create_plan(channel.clone(), &admin, deadline_plan("Tight", 1, 1)).await?;
    let roomy = create_plan(channel.clone(), &admin, deadline_plan("Roomy", 3_600, 1)).await?;
    let create = |plan: &pb::Plan, key: &str, manager: Option<&str>, token: &str| {
        outgoing(
            pb::CreateDealRequest {
                plan_id: plan.id.clone(),
                contact: Some(pb::Contact {
                    external_id: key.into(),
                    ..Default::default()
                }),
                idempotency_key: key.into(),
                manager_id: manager.map(Into::into),
                wait_for_manager: manager.is_none(),
                ..Default::default()
            },
            token,
        )
    };
    let mut made = Vec::new();
    // The distributor's lead with its manager, and its placement of a waiting deal.
    let lead = deals
        .create_deal(create(&tight, "lead", Some("m1"), &distributor))
        .await?;
    made.push(lead.into_inner().deal.expect("deal"));
    let waiting = deals
        .create_deal(create(&tight, "queued", None, &boss))
        .await?
        .into_inner()
        .deal
        .expect("deal");
    let place = |deal: &pb::Deal, token: &str| {
        outgoing(
            pb::AssignDealRequest {
                deal_id: deal.id.clone(),
                expected_version: deal.version,
                manager_id: Some("m1".into()),
                ..Default::default()
            },
            token,
        )
    };
    let placed = deals.assign_deal(place(&waiting, &distributor)).await?;
    made.push(placed.into_inner().deal.expect("deal"));
    // A person's assignment, and the distributor's in a plan with an hour to accept.
    let by_person = deals
        .create_deal(create(&tight, "by-person", None, &boss))
        .await?
        .into_inner()
        .deal
        .expect("deal");
    let by_person = deals.assign_deal(place(&by_person, &boss)).await?;
    made.push(by_person.into_inner().deal.expect("deal"));
    let in_time = deals
        .create_deal(create(&roomy, "in-time", Some("m1"), &distributor))
        .await?;
    made.push(in_time.into_inner().deal.expect("deal"));
    // Closed before its deadline and reopened: no deadline runs any more.
    let closed = deals
        .create_deal(create(&tight, "reopened", Some("m1"), &distributor))
        .await?
        .into_inner()
        .deal
        .expect("deal");
    let lost = tight
        .stages
        .iter()
        .find(|s| s.kind == pb::StageKind::Lost as i32)
        .expect("a LOST stage");
    let closed = deals
        .move_deal(outgoing(
            pb::MoveDealRequest {
                deal_id: closed.id.clone(),
                expected_version: closed.version,
                stage_id: lost.id.clone(),
                loss_reason_id: None,
            },
            &boss,
        ))
        .await?
        .into_inner()
        .deal
        .expect("deal");
    let reopener = stack.token(
        ACCOUNT,
        "head",
        &[Permission::DealsEditAll, Permission::DealsBulkEdit],
    );
    let reopened = deals
        .reopen_deal(outgoing(
            pb::ReopenDealRequest {
                deal_id: closed.id.clone(),
                expected_version: closed.version,
            },
            &reopener,
        ))
        .await?;
    made.push(reopened.into_inner().deal.expect("deal"));
    // In a plan whose deadline was removed after the assignment, or that was archived,
    // the deadline ended: none is missed, though the deadline is back, or the plan
    // unarchived, by the time the manager accepts.
    let mut plans = PlanServiceClient::new(channel.clone());
    let dropped = create_plan(channel.clone(), &admin, deadline_plan("Dropped", 1, 1)).await?;
    let under = deals
        .create_deal(create(&dropped, "dropped", Some("m1"), &distributor))
        .await?;
    made.push(under.into_inner().deal.expect("deal"));
    for seconds in [0, 1] {
        plans
            .update_plan(outgoing(
                pb::UpdatePlanRequest {
                    plan_id: dropped.id.clone(),
                    distribution: deadline_plan("Dropped", seconds, seconds).distribution,
                    ..Default::default()
                },
                &admin,
            ))
            .await?;
    }
    let shelved = create_plan(channel.clone(), &admin, deadline_plan("Shelved", 1, 1)).await?;
    let under = deals
        .create_deal(create(&shelved, "shelved", Some("m1"), &distributor))
        .await?;
    made.push(under.into_inner().deal.expect("deal"));
    let plan_id = shelved.id.clone();
    plans
        .archive_plan(outgoing(pb::ArchivePlanRequest { plan_id }, &admin))
        .await?;
    let plan_id = shelved.id.clone();
    plans
        .unarchive_plan(outgoing(pb::UnarchivePlanRequest { plan_id }, &admin))
        .await?;
    // Time itself is the condition: more than the one second of working time (m1 has no
    // schedule: around the clock) passes before m1 accepts.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let mut late = Vec::new();
    let mut token = String::new();
    for deal in &made {
        let accepted = deals
            .accept_deal(outgoing(
                pb::AcceptDealRequest {
                    deal_id: deal.id.clone(),
                    expected_version: 0,
                },
                &m1,
            ))
            .await?;
        token = integration_tests::api::write_token(&accepted)?.to_string();
        let accepted = accepted.into_inner().deal.expect("deal");
        assert_eq!(accepted.manager_id.as_deref(), Some("m1"), "kept");
        assert!(
            accepted.accept_seconds.is_some_and(|s| s >= 1),
            "{accepted:?}"
        );
        late.push(accepted.accepted_late);
    }
    assert_eq!(late, [true, true, false, false, false, false, false]);
    let read = deals
        .get_deal(outgoing(
            pb::GetDealRequest {
                deal_id: made[0].id.clone(),
                ..Default::default()
            },
            &boss,
        ))
        .await?
        .into_inner()
        .deal
        .expect("deal");
    assert!(read.accepted_late, "kept with the deal: {read:?}");
    // The due time the distributor's timer takes too: a second of working time (around
    // the clock) after the assignment.
    let (given, due) = (
        read.assigned_at.expect("assigned"),
        read.response_due_at.expect("due"),
    );
    assert_eq!(
        (due.seconds - given.seconds, due.nanos),
        (1, given.nanos),
        "{read:?}"
    );

    let reports = ReportServiceClient::new(stack.channel_to(&reporting).await?);
    let rows = eventually(Duration::from_secs(20), || {
        let mut reports = reports.clone();
        let request = pb::ResponseTimesRequest {
            min_consistency_token: token.clone(),
            ..Default::default()
        };
        let request = outgoing(request, &admin);
        async move {
            let rows = reports.response_times(request).await?.into_inner().rows;
            let accepted: i64 = rows.iter().map(|r| r.accepted).sum();
            Ok((accepted == 7).then_some(rows))
        }
    })
    .await?;
    let line = |plan: &pb::Plan| {
        rows.iter()
            .find(|r| r.plan_id == plan.id && r.manager_id == "m1")
            .map(|r| (r.assigned, r.accepted, r.deadlines_missed))
    };
    assert_eq!(line(&tight), Some((4, 4, 2)), "{rows:?}");
    assert_eq!(line(&roomy), Some((1, 1, 0)), "{rows:?}");
    assert_eq!(line(&dropped), Some((1, 1, 0)), "{rows:?}");
    assert_eq!(line(&shelved), Some((1, 1, 0)), "{rows:?}");
    stack.stop().await?;
    reporting.wait().await
}

/// A shift start lets a waiting lead in (issue 20), with nobody's action: the plan's one
/// member works from a whole minute (UTC, at least 30 s away); a lead that comes
/// before waits ("no member is available"), and the distributor places it once the shift
/// has begun (its queue sweep notices the time, not an event).
#[tokio::test]
async fn a_shift_start_lets_a_waiting_lead_in() -> anyhow::Result<()> {
    use pb::manager_service_client::ManagerServiceClient;
    let stack = Stack::start().await?;
    let t = tokens(&stack);
    let channel = stack.channel(&stack.deal_service).await?;
    let request = plan_request(
        "Late shift",
        Mode::Auto,
        Strategy::RoundRobin,
        false,
        &["m1"],
    );
    let plan = create_plan(channel.clone(), &t.admin, request).await?;
    let now = time::OffsetDateTime::now_utc();
    // 30 to 90 s away: room for the schedule and the lead to arrive before it.
    let start = (now + time::Duration::seconds(90))
        .replace_second(0)?
        .replace_nanosecond(0)?;
    let minute = i32::from(start.hour()) * 60 + i32::from(start.minute());
    let schedule = pb::Schedule {
        time_zone: "UTC".into(),
        week: vec![pb::WorkingDay {
            weekday: i32::from(start.weekday().number_from_monday()),
            hours: vec![pb::WorkingHours {
                start_minute: minute as u32,
                end_minute: (minute + 10).min(1_440) as u32,
            }],
        }],
        days_off: vec![],
    };
    let set = ManagerServiceClient::new(channel.clone())
        .set_schedule(outgoing(
            pb::SetScheduleRequest {
                manager_id: "m1".into(),
                schedule: Some(schedule),
            },
            &t.admin,
        ))
        .await?
        .into_inner()
        .availability
        .expect("availability");
    assert!(!set.available_now, "{set:?}");
    let lead = lead_json(&plan.id, "run-shift", "before-the-shift");
    assert_eq!(post(&stack, &t.funnel, &lead).await?.0, 202);
    let deal = deals_of(&stack, &t.boss, &plan.id, 1).await?.remove(0);
    assert_eq!(deal.manager_id, None, "nobody works yet: {deal:?}");
    let placed = eventually(Duration::from_secs(150), || {
        let mut deals = DealServiceClient::new(channel.clone());
        let request = outgoing(
            pb::GetDealRequest {
                deal_id: deal.id.clone(),
                ..Default::default()
            },
            &t.boss,
        );
        async move {
            let deal = deals.get_deal(request).await?.into_inner().deal;
            Ok(deal.filter(|d| d.manager_id.is_some()))
        }
    })
    .await?;
    assert_eq!(placed.manager_id.as_deref(), Some("m1"));
    let assigned = placed.assigned_at.expect("assigned_at");
    assert!(
        assigned.seconds >= start.unix_timestamp(),
        "placed at {assigned:?}, the shift starts at {start}"
    );
    stack.stop().await
}

/// Running response deadlines of a deal in the distributor.
async fn timers(pool: &sqlx::PgPool, deal_id: &str) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM distributor.response_timers WHERE deal_id = $1::uuid",
    )
    .bind(deal_id)
    .fetch_one(pool)
    .await?)
}

/// Waits until the distributor applied the deal's event of `version`.
async fn applied(pool: &sqlx::PgPool, deal_id: &str, version: i64) -> anyhow::Result<()> {
    eventually(Duration::from_secs(20), || async {
        let seen: Option<i64> = sqlx::query_scalar(
            "SELECT version FROM distributor.deal_view WHERE deal_id = $1::uuid",
        )
        .bind(deal_id)
        .fetch_optional(pool)
        .await?;
        Ok((seen >= Some(version)).then_some(()))
    })
    .await
}
