//! Tenant isolation: each test is one of the attacks by which an account could
//! stop, slow or skew another, run against the real services, and what must hold instead.

use std::time::Duration;

use futures::StreamExt as _;

use integration_tests::{
    Stack,
    api::{Mode, Strategy, create_plan, lead_json, plan_request},
    stack::eventually,
};
use salesplan_platform::{Permission, grpc::outgoing, validate::MAX_AMOUNT_MINOR};
use salesplan_proto::v1::{
    self as pb, deal_service_client::DealServiceClient, plan_service_client::PlanServiceClient,
    report_service_client::ReportServiceClient,
};
use serde_json::json;
use tonic::Code;

const ALL: [Permission; 7] = Permission::ALL;

fn usd(amount_minor: i64) -> pb::Money {
    pb::Money {
        amount_minor,
        currency: "USD".into(),
    }
}

fn deal_request(plan_id: &str, key: &str, amount_minor: i64) -> pb::CreateDealRequest {
    pb::CreateDealRequest {
        plan_id: plan_id.into(),
        contact: Some(pb::Contact {
            external_id: key.into(),
            ..Default::default()
        }),
        amount: Some(usd(amount_minor)),
        idempotency_key: key.into(),
        ..Default::default()
    }
}

/// An amount near i64::MAX was accepted (202) and then broke every board, list and
/// summary of the account, and every later batch of its leads. Now it is refused at every
/// entry point, naming the field and the bound.
#[tokio::test]
async fn an_amount_beyond_the_bound_is_refused_at_every_entry_point() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let admin = stack.token("acme", "boss", &ALL);
    let manager = stack.token(
        "acme",
        "m1",
        &[
            salesplan_platform::Permission::DealsRead,
            salesplan_platform::Permission::ReportsRead,
        ],
    );
    let channel = stack.channel(&stack.deal_service).await?;
    let plan = create_plan(
        channel.clone(),
        &admin,
        plan_request("Inbound", Mode::Auto, Strategy::RoundRobin, false, &["m1"]),
    )
    .await?;
    let too_much = [MAX_AMOUNT_MINOR + 1, i64::MAX];

    let webhook = reqwest::Client::new();
    for amount in too_much {
        let mut lead = lead_json(&plan.id, &format!("run-{amount}"), "tg-1");
        lead["amount"] = json!({ "amount_minor": amount, "currency": "USD" });
        let answer = webhook
            .post(stack.webhook_url())
            .bearer_auth(&admin)
            .json(&lead)
            .send()
            .await?;
        assert_eq!(answer.status(), 400, "webhook with {amount}");
        let body: serde_json::Value = answer.json().await?;
        assert_eq!(body["error"]["field"], "amount.amount_minor");
    }

    let mut intake = pb::intake_service_client::IntakeServiceClient::new(
        stack.channel(&stack.tunnel_listener).await?,
    );
    let mut deals = DealServiceClient::new(channel.clone());
    let mut plans = PlanServiceClient::new(channel.clone());
    let mine = deals
        .create_deal(outgoing(deal_request(&plan.id, "k-0", 100), &admin))
        .await?
        .into_inner()
        .deal
        .expect("deal");
    deals
        .assign_deal(outgoing(
            pb::AssignDealRequest {
                deal_id: mine.id.clone(),
                expected_version: mine.version,
                manager_id: Some("m1".into()),
                ..Default::default()
            },
            &admin,
        ))
        .await?;
    for amount in too_much {
        let lead = pb::Lead {
            plan_id: plan.id.clone(),
            run_id: format!("grpc-{amount}"),
            contact: Some(pb::Contact {
                external_id: "tg-2".into(),
                ..Default::default()
            }),
            amount: Some(usd(amount)),
            ..Default::default()
        };
        let refused = intake
            .add_to_sales_plan(outgoing(
                pb::AddToSalesPlanRequest { lead: Some(lead) },
                &admin,
            ))
            .await
            .expect_err("AddToSalesPlan");
        assert_eq!(refused.code(), Code::InvalidArgument);
        assert!(
            refused.message().starts_with("amount.amount_minor"),
            "{refused:?}"
        );

        let refused = deals
            .create_deal(outgoing(
                deal_request(&plan.id, &format!("k-{amount}"), amount),
                &admin,
            ))
            .await
            .expect_err("CreateDeal");
        assert_eq!(refused.code(), Code::InvalidArgument);
        assert!(
            refused.message().starts_with("amount.amount_minor"),
            "{refused:?}"
        );

        let created = deals
            .create_deals(outgoing(
                pb::CreateDealsRequest {
                    deals: vec![
                        deal_request(&plan.id, &format!("ok-{amount}"), 500),
                        deal_request(&plan.id, &format!("big-{amount}"), amount),
                    ],
                },
                &admin,
            ))
            .await?
            .into_inner()
            .results;
        assert_eq!(created[0].code, 0, "the valid deal of the batch is created");
        assert_eq!(created[1].code, Code::InvalidArgument as i32);
        assert!(
            created[1]
                .message
                .starts_with("deals[1].amount.amount_minor")
        );

        // A manager with no permission, on their own deal.
        let current = deals
            .get_deal(outgoing(
                pb::GetDealRequest {
                    deal_id: mine.id.clone(),
                    ..Default::default()
                },
                &manager,
            ))
            .await?
            .into_inner()
            .deal
            .expect("deal");
        let refused = deals
            .update_deal(outgoing(
                pb::UpdateDealRequest {
                    deal_id: mine.id.clone(),
                    expected_version: current.version,
                    amount: Some(usd(amount)),
                    ..Default::default()
                },
                &manager,
            ))
            .await
            .expect_err("UpdateDeal");
        assert_eq!(refused.code(), Code::InvalidArgument);

        let refused = plans
            .update_plan(outgoing(
                pb::UpdatePlanRequest {
                    plan_id: plan.id.clone(),
                    average_amount: Some(usd(amount)),
                    ..Default::default()
                },
                &admin,
            ))
            .await
            .expect_err("UpdatePlan");
        assert_eq!(refused.code(), Code::InvalidArgument);
        assert!(refused.message().starts_with("average_amount.amount_minor"));

        let mut new_plan = plan_request("Too rich", Mode::Manual, Strategy::RoundRobin, false, &[]);
        new_plan.average_amount = Some(usd(amount));
        let refused = plans
            .create_plan(outgoing(new_plan, &admin))
            .await
            .expect_err("CreatePlan");
        assert_eq!(refused.code(), Code::InvalidArgument);
        assert!(
            refused.message().starts_with("average_amount.amount_minor"),
            "{refused:?}"
        );

        // A bulk add: that contact is rejected with its reason, the other accepted.
        let contact = |id: &str, amount: Option<i64>| pb::AudienceContact {
            contact: Some(pb::Contact {
                external_id: id.into(),
                ..Default::default()
            }),
            amount: amount.map(usd),
            ..Default::default()
        };
        let chunk = pb::AddAudienceRequest {
            plan_id: plan.id.clone(),
            job_id: format!("job-{amount}"),
            contacts: vec![contact("fine", Some(100)), contact("whale", Some(amount))],
            ..Default::default()
        };
        let results: Vec<pb::ContactResult> = intake
            .add_audience(outgoing(futures::stream::iter(vec![chunk]), &admin))
            .await?
            .into_inner()
            .next()
            .await
            .expect("one answer")?
            .results;
        assert_eq!(results[0].outcome, pb::ContactOutcome::Accepted as i32);
        assert_eq!(results[1].outcome, pb::ContactOutcome::Rejected as i32);
        assert!(
            results[1].reason.starts_with("amount.amount_minor"),
            "{results:?}"
        );
    }
    // The bound itself is accepted.
    deals
        .create_deal(outgoing(
            deal_request(&plan.id, "k-max", MAX_AMOUNT_MINOR),
            &admin,
        ))
        .await?;
    stack.stop().await
}

/// Sums beyond the int64 range: 10,000 deals of the largest amount add up to 10^19. Boards,
/// lists (kept and aggregated totals) and the pipeline summary answer with the sum capped
/// and exact, and the plan keeps taking deals. A bulk change of all of them (10,001) is
/// more than one call takes, and is refused whole.
#[tokio::test]
async fn sums_beyond_int64_keep_boards_lists_and_reports_working() -> anyhow::Result<()> {
    const DEALS: usize = 10_000;
    let stack = Stack::start().await?;
    let admin = stack.token("acme", "boss", &ALL);
    let channel = stack.channel(&stack.deal_service).await?;
    let plan = create_plan(
        channel.clone(),
        &admin,
        plan_request("Whales", Mode::Manual, Strategy::RoundRobin, false, &[]),
    )
    .await?;
    let mut deals = DealServiceClient::new(channel.clone());
    for chunk in 0..DEALS / 1_000 {
        let results = deals
            .create_deals(outgoing(
                pb::CreateDealsRequest {
                    deals: (0..1_000)
                        .map(|i| {
                            deal_request(&plan.id, &format!("w-{chunk}-{i}"), MAX_AMOUNT_MINOR)
                        })
                        .collect(),
                },
                &admin,
            ))
            .await?
            .into_inner()
            .results;
        assert!(results.iter().all(|r| r.code == 0 && r.created));
    }
    let exact = (DEALS as i128 * i128::from(MAX_AMOUNT_MINOR)).to_string();
    let capped = |totals: &[pb::MoneyTotal]| {
        assert_eq!(totals.len(), 1, "{totals:?}");
        assert_eq!(totals[0].currency, "USD");
        assert_eq!(totals[0].exact_amount_minor, exact);
        assert_eq!(totals[0].amount_minor, i64::MAX);
    };

    let board = deals
        .get_board(outgoing(
            pb::GetBoardRequest {
                plan_id: plan.id.clone(),
                ..Default::default()
            },
            &admin,
        ))
        .await?
        .into_inner();
    assert_eq!(board.total_count, DEALS as i64);
    capped(&board.total_amounts);
    capped(&board.columns[0].amounts);
    for filter in [
        // Kept counts.
        pb::DealFilter {
            plan_id: plan.id.clone(),
            ..Default::default()
        },
        // Aggregated over the deals.
        pb::DealFilter {
            plan_id: plan.id.clone(),
            statuses: vec![pb::DealStatus::Open as i32],
            ..Default::default()
        },
    ] {
        let listed = deals
            .list_deals(outgoing(
                pb::ListDealsRequest {
                    filter: Some(filter),
                    ..Default::default()
                },
                &admin,
            ))
            .await?
            .into_inner();
        assert_eq!(listed.total_count, DEALS as i64);
        capped(&listed.total_amounts);
    }

    let mut reports = ReportServiceClient::new(stack.channel(&stack.reporting).await?);
    let summary = eventually(Duration::from_secs(60), || {
        let mut reports = reports.clone();
        let request = outgoing(
            pb::PipelineSummaryRequest {
                plan_id: Some(plan.id.clone()),
                ..Default::default()
            },
            &admin,
        );
        async move {
            let summary = reports.pipeline_summary(request).await?.into_inner();
            Ok((summary.total_deals == DEALS as i64).then_some(summary))
        }
    })
    .await?;
    assert_eq!(summary.stages.len(), 1);
    assert_eq!(summary.stages[0].exact_amount_minor, exact);
    assert_eq!(summary.stages[0].amount_minor, i64::MAX);
    assert_eq!(summary.stages[0].currency, "USD");
    reports
        .pipeline_summary(outgoing(pb::PipelineSummaryRequest::default(), &admin))
        .await?;

    // Still taking deals in the same cell.
    let more = deals
        .create_deal(outgoing(deal_request(&plan.id, "one-more", 1), &admin))
        .await?
        .into_inner();
    assert!(more.created);

    // A bulk change of more than 10,000 deals is refused whole, by filter or by ids.
    let to = plan.stages[1].id.clone();
    let by_filter = pb::BulkMoveDealsRequest {
        target: Some(pb::bulk_move_deals_request::Target::Filter(
            pb::DealFilter {
                plan_id: plan.id.clone(),
                ..Default::default()
            },
        )),
        stage_id: to.clone(),
        loss_reason_id: None,
    };
    let refused = deals
        .bulk_move_deals(outgoing(by_filter, &admin))
        .await
        .expect_err("10,001 deals by filter");
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(refused.message().contains("10000"), "{refused:?}");
    let by_ids = pb::BulkMoveDealsRequest {
        target: Some(pb::bulk_move_deals_request::Target::DealIds(pb::DealIds {
            ids: vec![more.deal.expect("deal").id; 10_001],
        })),
        stage_id: to,
        loss_reason_id: None,
    };
    let refused = deals
        .bulk_move_deals(outgoing(by_ids, &admin))
        .await
        .expect_err("10,001 ids");
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(refused.message().starts_with("deal_ids.ids"), "{refused:?}");
    let board = deals
        .get_board(outgoing(
            pb::GetBoardRequest {
                plan_id: plan.id.clone(),
                ..Default::default()
            },
            &admin,
        ))
        .await?
        .into_inner();
    assert_eq!(board.columns[0].count, DEALS as i64 + 1, "nothing moved");
    stack.stop().await
}

/// A plan whose event was larger than the broker's max payload stopped the outbox relay
/// for every account. Plans are bounded now, and an event the broker refuses all the same
/// (here: a broker configured with 64 KiB) is parked with its reason while everyone else's
/// events flow: another account's plan takes a lead that becomes a deal and is reported.
#[tokio::test]
async fn an_event_the_broker_refuses_is_parked_and_other_accounts_keep_flowing()
-> anyhow::Result<()> {
    let nats = integration_tests::TestNats::start_with_config("max_payload: 65536").await?;
    let stack = Stack::start_with(nats).await?;
    let channel = stack.channel(&stack.deal_service).await?;
    let a_admin = stack.token("a", "admin", &ALL);
    let b_admin = stack.token("b", "admin", &ALL);
    let operator = stack.token("platform", "oncall", &[Permission::PlatformOperate]);
    let mut plans = PlanServiceClient::new(channel.clone());

    // The original attack is refused outright: 3,000 reasons of 385 bytes.
    let plain = create_plan(
        channel.clone(),
        &a_admin,
        plan_request("Plain", Mode::Manual, Strategy::RoundRobin, false, &[]),
    )
    .await?;
    let refused = plans
        .set_loss_reasons(outgoing(
            pb::SetLossReasonsRequest {
                plan_id: plain.id.clone(),
                require_reason: false,
                reasons: (0..3_000)
                    .map(|i| pb::LossReasonInput {
                        id: String::new(),
                        name: format!("{i:04}{}", "ы".repeat(96)),
                    })
                    .collect(),
            },
            &a_admin,
        ))
        .await
        .expect_err("3,000 reasons");
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(
        refused.message().starts_with("reasons: at most 100"),
        "{refused:?}"
    );

    // Within every cap, but over this broker's limit: 1,000 managers with long ids.
    let managers: Vec<String> = (0..1_000)
        .map(|i| format!("{i:04}-{}", "m".repeat(100)))
        .collect();
    let managers: Vec<&str> = managers.iter().map(String::as_str).collect();
    let big = create_plan(
        channel.clone(),
        &a_admin,
        plan_request("Big", Mode::Auto, Strategy::RoundRobin, false, &managers),
    )
    .await?;
    let mut outbox = pb::outbox_service_client::OutboxServiceClient::new(channel.clone());
    let parked = eventually(Duration::from_secs(20), || {
        let mut outbox = outbox.clone();
        let request = outgoing(pb::ListParkedEventsRequest::default(), &a_admin);
        async move {
            let events = outbox
                .list_parked_events(request)
                .await?
                .into_inner()
                .events;
            Ok((!events.is_empty()).then_some(events))
        }
    })
    .await?;
    assert_eq!(parked.len(), 1, "{parked:?}");
    assert_eq!(parked[0].account_id, "a");
    assert!(parked[0].subject.starts_with("salesplan.plans.v1.a."));
    assert!(parked[0].payload_bytes > 65_536);
    assert!(
        parked[0].reason.contains("max payload"),
        "{}",
        parked[0].reason
    );

    // Account B, after it: its plan event, its lead, its deal and its report all go through.
    let b_plan = create_plan(
        channel.clone(),
        &b_admin,
        plan_request("B", Mode::Auto, Strategy::RoundRobin, false, &["b1"]),
    )
    .await?;
    let answer = reqwest::Client::new()
        .post(stack.webhook_url())
        .bearer_auth(&b_admin)
        .json(&lead_json(&b_plan.id, "run-1", "tg-b"))
        .send()
        .await?;
    assert_eq!(answer.status(), 202);
    let reports = ReportServiceClient::new(stack.channel(&stack.reporting).await?);
    let summary = eventually(Duration::from_secs(20), || {
        let mut reports = reports.clone();
        let request = outgoing(
            pb::PipelineSummaryRequest {
                plan_id: Some(b_plan.id.clone()),
                ..Default::default()
            },
            &b_admin,
        );
        async move {
            let summary = reports.pipeline_summary(request).await?.into_inner();
            Ok((summary.total_deals == 1).then_some(summary))
        }
    })
    .await?;
    assert_eq!(summary.managers[0].manager_id.as_deref(), Some("b1"));

    // Who sees what: B nothing, the operator A's (or filtered to B: nothing).
    let reader = outbox.clone();
    let seen = |token: &str, account: &str| {
        let mut outbox = reader.clone();
        let request = outgoing(
            pb::ListParkedEventsRequest {
                account_id: account.into(),
                ..Default::default()
            },
            token,
        );
        async move {
            anyhow::Ok(
                outbox
                    .list_parked_events(request)
                    .await?
                    .into_inner()
                    .events,
            )
        }
    };
    assert!(seen(&b_admin, "a").await?.is_empty(), "B never sees A's");
    assert_eq!(seen(&operator, "").await?.len(), 1);
    assert_eq!(seen(&operator, "a").await?.len(), 1);
    assert!(seen(&operator, "b").await?.is_empty());
    let no_admin = stack.token("a", "m1", &[]);
    let denied = outbox
        .list_parked_events(outgoing(pb::ListParkedEventsRequest::default(), &no_admin))
        .await
        .expect_err("no permission");
    assert_eq!(denied.code(), Code::PermissionDenied);

    // B cannot replay A's; A can, and an event still too large is parked again.
    let ids = vec![parked[0].id];
    let replayed = outbox
        .replay_parked_events(outgoing(
            pb::ReplayParkedEventsRequest { ids: ids.clone() },
            &b_admin,
        ))
        .await?
        .into_inner();
    assert_eq!(replayed.replayed, 0);
    let replayed = outbox
        .replay_parked_events(outgoing(pb::ReplayParkedEventsRequest { ids }, &a_admin))
        .await?
        .into_inner();
    assert_eq!(replayed.replayed, 1);
    let again = eventually(Duration::from_secs(20), || {
        let seen = seen(&a_admin, "");
        let first = parked[0].id;
        async move {
            let events = seen.await?;
            Ok(events.iter().any(|e| e.id != first).then_some(events))
        }
    })
    .await?;
    assert_eq!(again.len(), 1, "parked again, once");
    assert_eq!(again[0].message_id, parked[0].message_id);

    let metrics = integration_tests::metrics::scrape(&stack.deal_service).await?;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("salesplan_outbox_parked_total") && !l.ends_with(" 0")),
        "{metrics}"
    );
    // The big plan itself is intact: deal-service is its system of record.
    let got = plans
        .get_plan(outgoing(
            pb::GetPlanRequest {
                plan_id: big.id.clone(),
                with_availability: false,
            },
            &a_admin,
        ))
        .await?
        .into_inner()
        .plan
        .expect("plan");
    assert_eq!(got.manager_ids.len(), 1_000);
    stack.stop().await
}

/// Waits until the distributor and reporting have consumed every deal event so far.
async fn deal_events_consumed(stack: &Stack) -> anyhow::Result<()> {
    let js = async_nats::jetstream::new(async_nats::connect(&stack.nats.url).await?);
    eventually(Duration::from_secs(20), || {
        let js = js.clone();
        async move {
            let mut idle = true;
            for consumer in ["distributor-deals", "reporting-deals"] {
                let backlog =
                    integration_tests::nats::consumer_backlog(&js, "SALESPLAN_DEALS", consumer)
                        .await?;
                idle &= backlog.is_empty();
            }
            Ok(idle.then_some(()))
        }
    })
    .await
}

/// The newest deals of a plan, as a reader sees them.
async fn plan_deals(stack: &Stack, token: &str, plan_id: &str) -> anyhow::Result<Vec<pb::Deal>> {
    integration_tests::api::all_deals(
        stack.channel(&stack.deal_service).await?,
        token,
        pb::DealFilter {
            plan_id: plan_id.into(),
            ..Default::default()
        },
    )
    .await
}

/// Account B created a deal whose idempotency key was account A's intake id: the
/// distributor took it for A's lead, lowered A's open-deal count and linked A's decision to
/// B's deal. A deal's key is now matched to a decision only within its account and plan.
#[tokio::test]
async fn another_accounts_idempotency_key_changes_nothing_of_this_account() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let channel = stack.channel(&stack.deal_service).await?;
    let a = stack.token("a", "admin", &ALL);
    let b = stack.token("b", "admin", &ALL);
    let a_plan = create_plan(
        channel.clone(),
        &a,
        plan_request(
            "A",
            Mode::Auto,
            Strategy::LeastOpenDeals,
            false,
            &["a1", "a2"],
        ),
    )
    .await?;
    let b_plan = create_plan(
        channel.clone(),
        &b,
        plan_request("B", Mode::Manual, Strategy::RoundRobin, false, &[]),
    )
    .await?;
    let http = reqwest::Client::new();
    let send = |run: &str, contact: &str| {
        http.post(stack.webhook_url())
            .bearer_auth(&a)
            .json(&lead_json(&a_plan.id, run, contact))
            .send()
    };
    let first: serde_json::Value = send("run-1", "tg-1").await?.json().await?;
    let intake_id = first["intake_id"].as_str().expect("intake id").to_owned();
    let first_deal = eventually(Duration::from_secs(20), || async {
        Ok(plan_deals(&stack, &a, &a_plan.id).await?.pop())
    })
    .await?;
    assert_eq!(
        first_deal.manager_id.as_deref(),
        Some("a1"),
        "a tie goes first in turn"
    );

    // B's deal with A's intake id as its key, then B closes it.
    let mut deals = DealServiceClient::new(channel.clone());
    let foreign = deals
        .create_deal(outgoing(deal_request(&b_plan.id, &intake_id, 100), &b))
        .await?
        .into_inner()
        .deal
        .expect("deal");
    let won = b_plan
        .stages
        .iter()
        .find(|s| s.kind == pb::StageKind::Won as i32)
        .expect("won");
    deals
        .move_deal(outgoing(
            pb::MoveDealRequest {
                deal_id: foreign.id.clone(),
                expected_version: foreign.version,
                stage_id: won.id.clone(),
                loss_reason_id: None,
            },
            &b,
        ))
        .await?;
    deal_events_consumed(&stack).await?;

    // A's counts are untouched: a1 still has one open deal, so the next lead goes to a2.
    let pool = stack.pool().await?;
    let open: Vec<(String, i64)> = sqlx::query_as(
        "SELECT manager_id, open FROM distributor.open_deals WHERE plan_id = $1 ORDER BY 1",
    )
    .bind(uuid::Uuid::parse_str(&a_plan.id)?)
    .fetch_all(&pool)
    .await?;
    assert_eq!(open, [("a1".to_owned(), 1)]);
    send("run-2", "tg-2").await?;
    let second = eventually(Duration::from_secs(20), || async {
        let deals = plan_deals(&stack, &a, &a_plan.id).await?;
        Ok(deals.into_iter().find(|d| d.id != first_deal.id))
    })
    .await?;
    assert_eq!(second.manager_id.as_deref(), Some("a2"));

    // A's decision explains A's deal; B's deal has none.
    let mut distributor = pb::distributor_service_client::DistributorServiceClient::new(
        stack.channel(&stack.distributor).await?,
    );
    let explained = distributor
        .explain_assignment(outgoing(
            pb::ExplainAssignmentRequest {
                deal_id: first_deal.id.clone(),
            },
            &a,
        ))
        .await?
        .into_inner()
        .assignment
        .expect("assignment");
    assert_eq!(explained.intake_id, intake_id);
    assert_eq!(explained.deal_id, first_deal.id);
    let none = distributor
        .explain_assignment(outgoing(
            pb::ExplainAssignmentRequest {
                deal_id: foreign.id.clone(),
            },
            &b,
        ))
        .await
        .expect_err("B's deal was not decided");
    assert_eq!(none.code(), Code::NotFound);
    stack.stop().await
}

/// A deal the database refuses (here: a check constraint the test adds, standing for any
/// row-level refusal) used to fail the whole CreateDeals call, so every other lead of the
/// batch failed with it. Now it fails alone, with its reason.
#[tokio::test]
async fn a_deal_the_database_refuses_fails_alone() -> anyhow::Result<()> {
    let stack = integration_tests::stack::DealStack::start().await?;
    let admin = stack.token("acme", "boss", &ALL);
    let channel = stack.channel().await?;
    let plan = create_plan(
        channel.clone(),
        &admin,
        plan_request("P", Mode::Manual, Strategy::RoundRobin, false, &[]),
    )
    .await?;
    let pool = stack.pool().await?;
    sqlx::query("ALTER TABLE deal_service.deals ADD CONSTRAINT poison CHECK (title <> 'poison')")
        .execute(&pool)
        .await?;
    let titled = |key: &str, title: &str| pb::CreateDealRequest {
        title: title.into(),
        ..deal_request(&plan.id, key, 100)
    };
    let results = DealServiceClient::new(channel.clone())
        .create_deals(outgoing(
            pb::CreateDealsRequest {
                deals: vec![
                    titled("k1", "fine"),
                    titled("k2", "poison"),
                    titled("k3", "also fine"),
                    titled("k1", "fine"),
                ],
            },
            &admin,
        ))
        .await?
        .into_inner()
        .results;
    let codes: Vec<i32> = results.iter().map(|r| r.code).collect();
    assert_eq!(
        codes,
        [0, Code::InvalidArgument as i32, 0, 0],
        "{results:?}"
    );
    assert!(
        results[1].message.contains("cannot be stored"),
        "{}",
        results[1].message
    );
    assert!(results[0].created && results[2].created && !results[3].created);
    assert_eq!(
        results[3].deal, results[0].deal,
        "a repeated key is the same deal"
    );
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM deal_service.deals")
        .fetch_one(&pool)
        .await?;
    assert_eq!(stored, 2);
    stack.stop().await
}

/// Publishes an intake event the way the listener does, bypassing its checks (an old
/// listener, or a lead whose plan changed after it was accepted).
async fn publish_intake(
    stack: &Stack,
    account: &str,
    plan_id: &str,
    run: &str,
    amount: Option<i64>,
) -> anyhow::Result<String> {
    use prost::Message as _;
    let js = async_nats::jetstream::new(async_nats::connect(&stack.nats.url).await?);
    let intake_id = uuid::Uuid::new_v4().to_string();
    let event = pb::IntakeEvent {
        intake_id: intake_id.clone(),
        account_id: account.into(),
        received_at: Some(prost_types::Timestamp::default()),
        source: pb::IntakeSource::Webhook as i32,
        lead: Some(pb::Lead {
            plan_id: plan_id.into(),
            tunnel_id: "funnel".into(),
            block_id: "block".into(),
            run_id: run.into(),
            contact: Some(pb::Contact {
                external_id: format!("tg-{run}"),
                ..Default::default()
            }),
            amount: amount.map(usd),
            ..Default::default()
        }),
        assign_to_manager_id: None,
        plan_version: 0,
        availability_version: 0,
        availability_sequence: 0,
    };
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", intake_id.as_str());
    js.publish_with_headers(
        salesplan_platform::bus::streams::intake_subject(account, plan_id),
        headers,
        event.encode_to_vec().into(),
    )
    .await?
    .await?;
    Ok(intake_id)
}

/// A lead that cannot become a deal (data deal-service refuses, a plan archived after it
/// was accepted) used to fail its whole batch, or be dead-lettered out of the account's
/// sight. Now it is rejected alone, listed to its account with its reason and counted,
/// its decision forgotten; the other leads of the batch become deals.
#[tokio::test]
async fn a_lead_that_cannot_become_a_deal_is_rejected_alone_and_listed() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let channel = stack.channel(&stack.deal_service).await?;
    let a = stack.token("a", "admin", &ALL);
    let b = stack.token("b", "admin", &ALL);
    let plan = create_plan(
        channel.clone(),
        &a,
        plan_request("A", Mode::Auto, Strategy::RoundRobin, false, &["a1"]),
    )
    .await?;
    let closed = create_plan(
        channel.clone(),
        &a,
        plan_request("Closed", Mode::Auto, Strategy::RoundRobin, false, &["a1"]),
    )
    .await?;
    PlanServiceClient::new(channel.clone())
        .archive_plan(outgoing(
            pb::ArchivePlanRequest {
                plan_id: closed.id.clone(),
            },
            &a,
        ))
        .await?;
    let mut good = Vec::new();
    for run in ["r1", "r2"] {
        good.push(publish_intake(&stack, "a", &plan.id, run, Some(100)).await?);
    }
    let too_big = publish_intake(&stack, "a", &plan.id, "r3", Some(i64::MAX)).await?;
    let archived = publish_intake(&stack, "a", &closed.id, "r4", None).await?;
    good.push(publish_intake(&stack, "a", &plan.id, "r5", None).await?);

    let mut distributor = pb::distributor_service_client::DistributorServiceClient::new(
        stack.channel(&stack.distributor).await?,
    );
    let listed = eventually(Duration::from_secs(30), || {
        let mut distributor = distributor.clone();
        let request = outgoing(pb::ListIntakeRejectionsRequest::default(), &a);
        async move {
            let listed = distributor
                .list_intake_rejections(request)
                .await?
                .into_inner()
                .rejections;
            Ok((listed.len() == 2).then_some(listed))
        }
    })
    .await?;
    let deals = eventually(Duration::from_secs(30), || async {
        let deals = plan_deals(&stack, &a, &plan.id).await?;
        Ok((deals.len() == 3).then_some(deals))
    })
    .await?;
    let mut keys: Vec<String> = deals.into_iter().map(|d| d.idempotency_key).collect();
    keys.sort();
    good.sort();
    assert_eq!(keys, good);

    let by_id = |id: &str| {
        listed
            .iter()
            .find(|r| r.intake_id == id)
            .unwrap_or_else(|| panic!("{id} listed"))
    };
    let amount = by_id(&too_big);
    assert_eq!(amount.code, "INVALID_ARGUMENT");
    assert!(
        amount.reason.contains("amount.amount_minor"),
        "{}",
        amount.reason
    );
    assert_eq!(
        (amount.plan_id.as_str(), amount.run_id.as_str()),
        (plan.id.as_str(), "r3")
    );
    assert_eq!(amount.source, "webhook");
    let gone = by_id(&archived);
    assert_eq!(gone.code, "FAILED_PRECONDITION");
    assert!(gone.reason.contains("archived"), "{}", gone.reason);

    // Only the account's own, and per plan.
    let of_b = distributor
        .list_intake_rejections(outgoing(pb::ListIntakeRejectionsRequest::default(), &b))
        .await?
        .into_inner()
        .rejections;
    assert!(of_b.is_empty());
    let of_plan = distributor
        .list_intake_rejections(outgoing(
            pb::ListIntakeRejectionsRequest {
                plan_id: closed.id.clone(),
                page_size: 1,
                ..Default::default()
            },
            &a,
        ))
        .await?
        .into_inner();
    assert_eq!(of_plan.rejections.len(), 1);
    assert_eq!(of_plan.rejections[0].intake_id, archived);

    // Nothing was dead-lettered, and the rejected lead's decision counts for nobody.
    let js = async_nats::jetstream::new(async_nats::connect(&stack.nats.url).await?);
    let mut dead = js.get_stream("SALESPLAN_DEAD_LETTERS").await?;
    assert_eq!(dead.info().await?.state.messages, 0);
    deal_events_consumed(&stack).await?;
    let pool = stack.pool().await?;
    let open: Vec<(String, i64)> =
        sqlx::query_as("SELECT manager_id, open FROM distributor.open_deals WHERE plan_id = $1")
            .bind(uuid::Uuid::parse_str(&plan.id)?)
            .fetch_all(&pool)
            .await?;
    assert_eq!(open, [("a1".to_owned(), 3)]);
    let metrics = integration_tests::metrics::scrape(&stack.distributor).await?;
    assert!(
        metrics.lines().any(
            |l| l.starts_with("salesplan_distributor_rejected_leads_total")
                && l.contains("INVALID_ARGUMENT")
        ),
        "{metrics}"
    );
    stack.stop().await
}

/// The RetryInfo delay of a RESOURCE_EXHAUSTED answer.
fn retry_delay(status: &tonic::Status) -> Duration {
    use tonic_types::StatusExt;
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    status
        .get_details_retry_info()
        .and_then(|r| r.retry_delay)
        .expect("RetryInfo with a delay")
}

/// Reads, bulk changes and reports are charged by the time they take: an account whose
/// calls took more than its busy allowance waits until the time is repaid, whatever their
/// count, and another account does not. (An allowance of 10 µs a second with its 20 µs
/// reserve: any call that reaches the database overdraws it for seconds.)
#[tokio::test]
async fn calls_that_take_long_draw_on_the_accounts_time() -> anyhow::Result<()> {
    use salesplan_platform::{limits::ClassLimit, service::Service};
    let stack = Stack::start().await?;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let timed = ClassLimit {
        concurrency: 4,
        rate: 1_000.0,
        burst: 1_000.0,
        busy: 0.000_01,
    };
    let mut deal_config = deal_service::Config::local(&stack.db.url, &stack.nats.url);
    deal_config.limits.reads = timed;
    deal_config.limits.bulk = timed;
    let deal_service = deal_config.start(shutdown.clone()).await?;
    let mut reporting_config = reporting::Config::local(&stack.db.url, &stack.nats.url);
    reporting_config.reports_limit = timed;
    let reporting = reporting_config.start(shutdown.clone()).await?;
    let (a, b) = (
        stack.token("a", "admin", &ALL),
        stack.token("b", "admin", &ALL),
    );
    let plan = create_plan(
        stack.channel(&deal_service).await?,
        &a,
        plan_request("A", Mode::Manual, Strategy::RoundRobin, false, &["a1"]),
    )
    .await?;
    let deals = DealServiceClient::new(stack.channel(&deal_service).await?);
    let reports = ReportServiceClient::new(stack.channel(&reporting).await?);
    let list = pb::ListDealsRequest {
        filter: Some(pb::DealFilter {
            plan_id: plan.id.clone(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let bulk_move = pb::BulkMoveDealsRequest {
        target: Some(pb::bulk_move_deals_request::Target::Filter(
            pb::DealFilter {
                plan_id: plan.id.clone(),
                ..Default::default()
            },
        )),
        stage_id: plan.stages[1].id.clone(),
        loss_reason_id: None,
    };
    let report = || pb::LossReasonsRequest {
        group_by: pb::ReportGrouping::Plan as i32,
        ..Default::default()
    };
    for (class, first, second) in [
        (
            "reads",
            deals
                .clone()
                .list_deals(outgoing(list.clone(), &a))
                .await
                .map(drop),
            deals
                .clone()
                .list_deals(outgoing(list.clone(), &a))
                .await
                .map(drop),
        ),
        (
            "bulk",
            deals
                .clone()
                .bulk_move_deals(outgoing(bulk_move.clone(), &a))
                .await
                .map(drop),
            deals
                .clone()
                .bulk_move_deals(outgoing(bulk_move.clone(), &a))
                .await
                .map(drop),
        ),
        (
            "reports",
            reports
                .clone()
                .loss_reasons(outgoing(report(), &a))
                .await
                .map(drop),
            reports
                .clone()
                .loss_reasons(outgoing(report(), &a))
                .await
                .map(drop),
        ),
    ] {
        first.map_err(|e| anyhow::anyhow!("{class}: the first call: {e:?}"))?;
        let refused = second.expect_err(class);
        assert_eq!(
            refused.code(),
            Code::ResourceExhausted,
            "{class}: {refused:?}"
        );
        assert!(
            refused.message().contains("took more than"),
            "{class}: {refused:?}"
        );
    }
    // Another account's allowance is its own.
    deals
        .clone()
        .list_deals(outgoing(pb::ListDealsRequest::default(), &b))
        .await?;
    reports.clone().loss_reasons(outgoing(report(), &b)).await?;
    shutdown.cancel();
    Ok(())
}

/// deal-service's limits with every class at `limit`.
fn every_class(limit: salesplan_platform::limits::ClassLimit) -> deal_service::Limits {
    deal_service::Limits {
        reads: limit,
        bulk: limit,
        creates: limit,
        plan_changes: limit,
    }
}

/// Bulk reads, bulk writes, reports and intake had no per-account limits: one account
/// could take every connection of a service. Each class now admits an account's calls up
/// to its rate and calls at once, answering RESOURCE_EXHAUSTED with a retry delay; other
/// accounts are not affected.
#[tokio::test]
async fn every_bulk_entry_point_limits_each_account_apart() -> anyhow::Result<()> {
    use salesplan_platform::{limits::ClassLimit, service::Service};
    let stack = Stack::start().await?;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let tight = ClassLimit {
        concurrency: 4,
        rate: 0.5,
        burst: 2.0,
        busy: f64::INFINITY,
    };
    let mut deal_config = deal_service::Config::local(&stack.db.url, &stack.nats.url);
    deal_config.limits = every_class(tight);
    let deal_service = deal_config.start(shutdown.clone()).await?;
    let mut reporting_config = reporting::Config::local(&stack.db.url, &stack.nats.url);
    reporting_config.reports_limit = tight;
    let reporting = reporting_config.start(shutdown.clone()).await?;
    let mut listener_config =
        tunnel_listener::Config::local(&stack.nats.url, &stack.deal_service.grpc_url());
    listener_config.webhook_limit = ClassLimit::rate_only(0.5, 2.0);
    let listener = listener_config.start(shutdown.clone()).await?;

    let a = stack.token("a", "admin", &ALL);
    let b = stack.token("b", "admin", &ALL);
    let plan = create_plan(
        stack.channel(&deal_service).await?,
        &a,
        plan_request("A", Mode::Manual, Strategy::RoundRobin, false, &[]),
    )
    .await?;
    let mut deals = DealServiceClient::new(stack.channel(&deal_service).await?);
    let list = |token: &str| {
        outgoing(
            pb::ListDealsRequest {
                filter: Some(pb::DealFilter {
                    search: "contact".into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            token,
        )
    };
    for _ in 0..2 {
        deals.list_deals(list(&a)).await?;
    }
    let refused = deals.list_deals(list(&a)).await.expect_err("third read");
    assert!(
        retry_delay(&refused) > Duration::from_millis(500),
        "{refused:?}"
    );
    deals.list_deals(list(&b)).await?;

    let bulk = || pb::BulkAssignDealsRequest {
        target: Some(pb::bulk_assign_deals_request::Target::DealIds(
            pb::DealIds { ids: vec![] },
        )),
        manager_id: None,
    };
    for _ in 0..2 {
        deals.bulk_assign_deals(outgoing(bulk(), &a)).await?;
    }
    let refused = deals
        .bulk_assign_deals(outgoing(bulk(), &a))
        .await
        .expect_err("third bulk change");
    retry_delay(&refused);
    deals.bulk_assign_deals(outgoing(bulk(), &b)).await?;

    let create = |key: &str| pb::CreateDealsRequest {
        deals: vec![deal_request(&plan.id, key, 1)],
    };
    for key in ["c1", "c2"] {
        deals.create_deals(outgoing(create(key), &a)).await?;
    }
    let refused = deals
        .create_deals(outgoing(create("c3"), &a))
        .await
        .expect_err("third CreateDeals");
    retry_delay(&refused);

    let mut reports = ReportServiceClient::new(stack.channel(&reporting).await?);
    for _ in 0..2 {
        reports
            .pipeline_summary(outgoing(pb::PipelineSummaryRequest::default(), &a))
            .await?;
    }
    let refused = reports
        .loss_reasons(outgoing(pb::LossReasonsRequest::default(), &a))
        .await
        .expect_err("third report");
    retry_delay(&refused);
    reports
        .loss_reasons(outgoing(
            pb::LossReasonsRequest {
                group_by: pb::ReportGrouping::Plan as i32,
                ..Default::default()
            },
            &b,
        ))
        .await?;

    // The webhook and AddToSalesPlan draw on one allowance of leads.
    let webhook = format!(
        "http://{}{}",
        listener.http_addr.expect("http"),
        tunnel_listener::http::webhook::PATH
    );
    let http = reqwest::Client::new();
    let answer = http
        .post(&webhook)
        .bearer_auth(&a)
        .json(&lead_json(&plan.id, "w1", "tg-1"))
        .send()
        .await?;
    assert_eq!(answer.status(), 202);
    let mut intake =
        pb::intake_service_client::IntakeServiceClient::new(stack.channel(&listener).await?);
    let grpc_lead = |run: &str| pb::AddToSalesPlanRequest {
        lead: Some(pb::Lead {
            plan_id: plan.id.clone(),
            run_id: run.into(),
            contact: Some(pb::Contact {
                external_id: "tg-2".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
    };
    intake
        .add_to_sales_plan(outgoing(grpc_lead("g1"), &a))
        .await?;
    let refused = intake
        .add_to_sales_plan(outgoing(grpc_lead("g2"), &a))
        .await
        .expect_err("third lead");
    retry_delay(&refused);
    let answer = http
        .post(&webhook)
        .bearer_auth(&a)
        .json(&lead_json(&plan.id, "w2", "tg-1"))
        .send()
        .await?;
    assert_eq!(answer.status(), 429);
    assert!(answer.headers().contains_key("retry-after"));

    shutdown.cancel();
    for running in [deal_service, reporting, listener] {
        running.wait().await?;
    }
    stack.stop().await
}

type Call = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), tonic::Status>>>>;

/// Runs each call and names those not refused with RESOURCE_EXHAUSTED.
async fn not_limited(calls: Vec<(&'static str, Call)>) -> Vec<String> {
    let mut missed = Vec::new();
    for (name, call) in calls {
        match call.await {
            Err(status) if status.code() == Code::ResourceExhausted => {}
            other => missed.push(format!("{name}: {:?}", other.map_err(|s| s.code()))),
        }
    }
    missed
}

/// Every method of a limited class checks the class's allowance, not only the one or two
/// a test happens to call: with an allowance of one call, spent, each method of the class
/// is refused for that account, and another account still gets through.
#[tokio::test]
async fn every_method_of_a_limited_class_draws_on_its_allowance() -> anyhow::Result<()> {
    use salesplan_platform::{limits::ClassLimit, service::Service};
    let stack = Stack::start().await?;
    let shutdown = tokio_util::sync::CancellationToken::new();
    // One call, then one per 1,000 s.
    let one = ClassLimit {
        concurrency: 1,
        rate: 0.001,
        burst: 1.0,
        busy: f64::INFINITY,
    };
    let mut deal_config = deal_service::Config::local(&stack.db.url, &stack.nats.url);
    deal_config.limits = every_class(one);
    let deal_service = deal_config.start(shutdown.clone()).await?;
    let mut reporting_config = reporting::Config::local(&stack.db.url, &stack.nats.url);
    reporting_config.reports_limit = one;
    let reporting = reporting_config.start(shutdown.clone()).await?;
    let mut distributor_config =
        distributor::Config::local(&stack.db.url, &stack.nats.url, &deal_service.grpc_url());
    distributor_config.lookups_limit = ClassLimit::rate_only(0.001, 1.0);
    let distributor = distributor_config.start(shutdown.clone()).await?;
    let (a, b) = (
        stack.token("a", "admin", &ALL),
        stack.token("b", "admin", &ALL),
    );
    let plans = PlanServiceClient::new(stack.channel(&deal_service).await?);
    let deals = DealServiceClient::new(stack.channel(&deal_service).await?);
    let outbox =
        pb::outbox_service_client::OutboxServiceClient::new(stack.channel(&deal_service).await?);
    let reports = ReportServiceClient::new(stack.channel(&reporting).await?);
    let explain = pb::distributor_service_client::DistributorServiceClient::new(
        stack.channel(&distributor).await?,
    );

    // Plan changes: the first spends the allowance.
    let plan = create_plan(
        stack.channel(&deal_service).await?,
        &a,
        plan_request("A", Mode::Manual, Strategy::RoundRobin, false, &["a1"]),
    )
    .await?;
    macro_rules! call {
        ($client:expr, $method:ident, $request:expr, $token:expr) => {{
            let mut client = $client.clone();
            let request = outgoing($request, $token);
            Box::pin(async move { client.$method(request).await.map(|_| ()) }) as Call
        }};
    }
    let plan_id = plan.id.clone();
    let missed = not_limited(vec![
        (
            "CreatePlan",
            call!(
                plans,
                create_plan,
                plan_request("A2", Mode::Manual, Strategy::RoundRobin, false, &[]),
                &a
            ),
        ),
        (
            "UpdatePlan",
            call!(
                plans,
                update_plan,
                pb::UpdatePlanRequest {
                    plan_id: plan_id.clone(),
                    ..Default::default()
                },
                &a
            ),
        ),
        (
            "ArchivePlan",
            call!(
                plans,
                archive_plan,
                pb::ArchivePlanRequest {
                    plan_id: plan_id.clone()
                },
                &a
            ),
        ),
        (
            "UnarchivePlan",
            call!(
                plans,
                unarchive_plan,
                pb::UnarchivePlanRequest {
                    plan_id: plan_id.clone()
                },
                &a
            ),
        ),
        (
            "SetPlanManagers",
            call!(
                plans,
                set_plan_managers,
                pb::SetPlanManagersRequest {
                    plan_id: plan_id.clone(),
                    ..Default::default()
                },
                &a
            ),
        ),
        (
            "AddStage",
            call!(
                plans,
                add_stage,
                pb::AddStageRequest {
                    plan_id: plan_id.clone(),
                    ..Default::default()
                },
                &a
            ),
        ),
        (
            "UpdateStage",
            call!(plans, update_stage, pb::UpdateStageRequest::default(), &a),
        ),
        (
            "ReorderStages",
            call!(
                plans,
                reorder_stages,
                pb::ReorderStagesRequest {
                    plan_id: plan_id.clone(),
                    ..Default::default()
                },
                &a
            ),
        ),
        (
            "DeleteStage",
            call!(plans, delete_stage, pb::DeleteStageRequest::default(), &a),
        ),
        (
            "SetLossReasons",
            call!(
                plans,
                set_loss_reasons,
                pb::SetLossReasonsRequest {
                    plan_id: plan_id.clone(),
                    ..Default::default()
                },
                &a
            ),
        ),
    ])
    .await;
    assert!(missed.is_empty(), "plan changes not limited: {missed:?}");

    // Reads: ListDeals spends the allowance.
    deals
        .clone()
        .list_deals(outgoing(pb::ListDealsRequest::default(), &a))
        .await?;
    let missed = not_limited(vec![
        (
            "ListDeals",
            call!(deals, list_deals, pb::ListDealsRequest::default(), &a),
        ),
        (
            "GetBoard",
            call!(
                deals,
                get_board,
                pb::GetBoardRequest {
                    plan_id: plan_id.clone(),
                    ..Default::default()
                },
                &a
            ),
        ),
        (
            "GetDealHistory",
            call!(
                deals,
                get_deal_history,
                pb::GetDealHistoryRequest::default(),
                &a
            ),
        ),
        (
            "ListPlans",
            call!(plans, list_plans, pb::ListPlansRequest::default(), &a),
        ),
        (
            "ListParkedEvents",
            call!(
                outbox,
                list_parked_events,
                pb::ListParkedEventsRequest::default(),
                &a
            ),
        ),
    ])
    .await;
    assert!(missed.is_empty(), "reads not limited: {missed:?}");

    // Bulk changes: BulkAssignDeals spends the allowance.
    let nobody = || pb::BulkAssignDealsRequest {
        target: Some(pb::bulk_assign_deals_request::Target::DealIds(
            pb::DealIds { ids: vec![] },
        )),
        manager_id: None,
    };
    deals
        .clone()
        .bulk_assign_deals(outgoing(nobody(), &a))
        .await?;
    let missed = not_limited(vec![
        (
            "BulkAssignDeals",
            call!(deals, bulk_assign_deals, nobody(), &a),
        ),
        (
            "BulkMoveDeals",
            call!(
                deals,
                bulk_move_deals,
                pb::BulkMoveDealsRequest::default(),
                &a
            ),
        ),
        (
            "TransferDeals",
            call!(
                deals,
                transfer_deals,
                pb::TransferDealsRequest::default(),
                &a
            ),
        ),
        (
            "ReplayParkedEvents",
            call!(
                outbox,
                replay_parked_events,
                pb::ReplayParkedEventsRequest::default(),
                &a
            ),
        ),
    ])
    .await;
    assert!(missed.is_empty(), "bulk changes not limited: {missed:?}");

    // Reports: PipelineSummary spends the allowance.
    reports
        .clone()
        .pipeline_summary(outgoing(pb::PipelineSummaryRequest::default(), &a))
        .await?;
    let missed = not_limited(vec![
        (
            "PipelineSummary",
            call!(
                reports,
                pipeline_summary,
                pb::PipelineSummaryRequest::default(),
                &a
            ),
        ),
        (
            "LossReasons",
            call!(reports, loss_reasons, pb::LossReasonsRequest::default(), &a),
        ),
        (
            "StageLosses",
            call!(reports, stage_losses, pb::StageLossesRequest::default(), &a),
        ),
    ])
    .await;
    assert!(missed.is_empty(), "reports not limited: {missed:?}");

    // The distributor's lookups: ListIntakeRejections spends the allowance.
    explain
        .clone()
        .list_intake_rejections(outgoing(pb::ListIntakeRejectionsRequest::default(), &a))
        .await?;
    let missed = not_limited(vec![
        (
            "ListIntakeRejections",
            call!(
                explain,
                list_intake_rejections,
                pb::ListIntakeRejectionsRequest::default(),
                &a
            ),
        ),
        (
            "ExplainAssignment",
            call!(
                explain,
                explain_assignment,
                pb::ExplainAssignmentRequest::default(),
                &a
            ),
        ),
    ])
    .await;
    assert!(missed.is_empty(), "lookups not limited: {missed:?}");

    // Account B has its own allowance of each.
    create_plan(
        stack.channel(&deal_service).await?,
        &b,
        plan_request("B", Mode::Manual, Strategy::RoundRobin, false, &[]),
    )
    .await?;
    plans
        .clone()
        .list_plans(outgoing(pb::ListPlansRequest::default(), &b))
        .await?;
    deals
        .clone()
        .bulk_assign_deals(outgoing(nobody(), &b))
        .await?;
    reports
        .clone()
        .loss_reasons(outgoing(
            pb::LossReasonsRequest {
                group_by: pb::ReportGrouping::Plan as i32,
                ..Default::default()
            },
            &b,
        ))
        .await?;
    explain
        .clone()
        .list_intake_rejections(outgoing(pb::ListIntakeRejectionsRequest::default(), &b))
        .await?;

    shutdown.cancel();
    for running in [deal_service, reporting, distributor] {
        running.wait().await?;
    }
    stack.stop().await
}

/// An account could create plans without end, and ListPlans loaded them all in one answer
/// (four queries a plan, on the writes' pool). Now an account has at most 200 plans that
/// are not archived, and ListPlans and GetDealHistory answer in pages.
#[tokio::test]
async fn plans_are_capped_and_plans_and_history_come_in_pages() -> anyhow::Result<()> {
    use salesplan_platform::{limits::ClassLimit, service::Service};
    let stack = Stack::start().await?;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let mut deal_config = deal_service::Config::local(&stack.db.url, &stack.nats.url);
    deal_config.limits.plan_changes = ClassLimit {
        concurrency: 4,
        rate: 10_000.0,
        burst: 10_000.0,
        busy: f64::INFINITY,
    };
    let deal_service = deal_config.start(shutdown.clone()).await?;
    let channel = stack.channel(&deal_service).await?;
    let admin = stack.token("a", "admin", &ALL);
    let mut plans = PlanServiceClient::new(channel.clone());
    let cap = 200;
    let mut created = Vec::new();
    for i in 0..cap {
        let plan = create_plan(
            channel.clone(),
            &admin,
            plan_request(
                &format!("P{i}"),
                Mode::Manual,
                Strategy::RoundRobin,
                false,
                &[],
            ),
        )
        .await?;
        created.push(plan.id);
    }
    let refused = plans
        .create_plan(outgoing(
            plan_request(
                "one too many",
                Mode::Manual,
                Strategy::RoundRobin,
                false,
                &[],
            ),
            &admin,
        ))
        .await
        .expect_err("plan beyond the cap");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(refused.message().contains("200"), "{refused:?}");
    plans
        .archive_plan(outgoing(
            pb::ArchivePlanRequest {
                plan_id: created[0].clone(),
            },
            &admin,
        ))
        .await?;
    let last = create_plan(
        channel.clone(),
        &admin,
        plan_request(
            "after archiving one",
            Mode::Manual,
            Strategy::RoundRobin,
            false,
            &[],
        ),
    )
    .await?;
    created.push(last.id.clone());
    // Another account is not affected by this one's plans.
    create_plan(
        channel.clone(),
        &stack.token("b", "admin", &ALL),
        plan_request("B", Mode::Manual, Strategy::RoundRobin, false, &[]),
    )
    .await?;

    // Pages of at most 50, oldest first, every plan once.
    let list = |include_archived: bool, page_size: i32| {
        let (mut plans, admin) = (plans.clone(), admin.clone());
        async move {
            let (mut ids, mut pages, mut page_token) = (Vec::new(), 0, String::new());
            loop {
                let page = plans
                    .list_plans(outgoing(
                        pb::ListPlansRequest {
                            include_archived,
                            page_size,
                            page_token,
                        },
                        &admin,
                    ))
                    .await?
                    .into_inner();
                assert!(
                    page.plans.len() <= 50,
                    "{} plans in a page",
                    page.plans.len()
                );
                pages += 1;
                ids.extend(page.plans.into_iter().map(|p| p.id));
                if page.next_page_token.is_empty() {
                    return anyhow::Ok((ids, pages));
                }
                page_token = page.next_page_token;
            }
        }
    };
    let (all, pages) = list(true, 1_000).await?;
    assert_eq!(all, created, "every plan once, oldest first");
    assert_eq!(pages, 5, "201 plans in pages of 50");
    let (open, _) = list(false, 0).await?;
    assert_eq!(open, created[1..].to_vec());
    let refused = plans
        .list_plans(outgoing(
            pb::ListPlansRequest {
                page_token: "not a token".into(),
                ..Default::default()
            },
            &admin,
        ))
        .await
        .expect_err("bad token");
    assert_eq!(refused.code(), Code::InvalidArgument);

    // A deal's history in pages.
    let mut deals = DealServiceClient::new(channel.clone());
    let plan = create_plan(
        channel.clone(),
        &stack.token("c", "admin", &ALL),
        plan_request("C", Mode::Manual, Strategy::RoundRobin, false, &["c1"]),
    )
    .await?;
    let c = stack.token("c", "admin", &ALL);
    let deal = deals
        .create_deal(outgoing(deal_request(&plan.id, "k", 1), &c))
        .await?
        .into_inner()
        .deal
        .expect("deal");
    let mut version = deal.version;
    for stage in plan.stages.iter().skip(1).chain(plan.stages.iter().take(1)) {
        version = deals
            .move_deal(outgoing(
                pb::MoveDealRequest {
                    deal_id: deal.id.clone(),
                    stage_id: stage.id.clone(),
                    expected_version: version,
                    ..Default::default()
                },
                &c,
            ))
            .await
            .map(|r| r.into_inner().deal.expect("deal").version)
            .unwrap_or(version);
    }
    let whole = deals
        .get_deal_history(outgoing(
            pb::GetDealHistoryRequest {
                deal_id: deal.id.clone(),
                ..Default::default()
            },
            &c,
        ))
        .await?
        .into_inner();
    assert!(whole.entries.len() >= 3, "{:?}", whole.entries);
    assert!(whole.next_page_token.is_empty());
    let (mut paged, mut page_token) = (Vec::new(), String::new());
    loop {
        let page = deals
            .get_deal_history(outgoing(
                pb::GetDealHistoryRequest {
                    deal_id: deal.id.clone(),
                    page_size: 2,
                    page_token,
                },
                &c,
            ))
            .await?
            .into_inner();
        assert!(page.entries.len() <= 2);
        paged.extend(page.entries.into_iter().map(|e| e.id));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(
        paged,
        whole.entries.iter().map(|e| e.id).collect::<Vec<_>>()
    );

    shutdown.cancel();
    deal_service.wait().await?;
    stack.stop().await
}

/// A bulk add that sends nothing held its stream forever, and an account could open as
/// many as it liked. Now an account has two at once, and an idle one ends.
#[tokio::test]
async fn bulk_adds_are_bounded_in_number_and_idle_time() -> anyhow::Result<()> {
    use salesplan_platform::service::Service;
    let stack = Stack::start().await?;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let mut config =
        tunnel_listener::Config::local(&stack.nats.url, &stack.deal_service.grpc_url());
    config.audience_idle_timeout = Duration::from_millis(300);
    let listener = config.start(shutdown.clone()).await?;
    let channel = stack.channel(&listener).await?;
    let mut intake = pb::intake_service_client::IntakeServiceClient::new(channel);
    let a = stack.token("a", "admin", &ALL);
    let b = stack.token("b", "admin", &ALL);

    // Two open calls that send nothing: a third of the same account is refused.
    let mut open = Vec::new();
    for _ in 0..2 {
        let (tx, rx) = tokio::sync::mpsc::channel::<pb::AddAudienceRequest>(1);
        let call = intake
            .add_audience(outgoing(
                tokio_stream::wrappers::ReceiverStream::new(rx),
                &a,
            ))
            .await?;
        open.push((tx, call.into_inner()));
    }
    let (_tx, rx) = tokio::sync::mpsc::channel::<pb::AddAudienceRequest>(1);
    let refused = intake
        .add_audience(outgoing(
            tokio_stream::wrappers::ReceiverStream::new(rx),
            &a,
        ))
        .await
        .expect_err("a third bulk add at once");
    retry_delay(&refused);
    let (_tx_b, rx) = tokio::sync::mpsc::channel::<pb::AddAudienceRequest>(1);
    let mut of_b = intake
        .add_audience(outgoing(
            tokio_stream::wrappers::ReceiverStream::new(rx),
            &b,
        ))
        .await?
        .into_inner();

    // Idle calls end with DEADLINE_EXCEEDED after the idle timeout, freeing their places.
    for (_tx, mut responses) in open {
        let ended = tokio::time::timeout(Duration::from_secs(10), responses.message())
            .await?
            .expect_err("idle call ends");
        assert_eq!(ended.code(), Code::DeadlineExceeded, "{ended:?}");
    }
    let ended = tokio::time::timeout(Duration::from_secs(10), of_b.message())
        .await?
        .expect_err("idle call ends");
    assert_eq!(ended.code(), Code::DeadlineExceeded);
    // Their places are free again.
    eventually(Duration::from_secs(5), || {
        let mut intake = intake.clone();
        let (tx, rx) = tokio::sync::mpsc::channel::<pb::AddAudienceRequest>(1);
        let request = outgoing(tokio_stream::wrappers::ReceiverStream::new(rx), &a);
        async move {
            let admitted = intake.add_audience(request).await.is_ok();
            drop(tx);
            Ok(admitted.then_some(()))
        }
    })
    .await?;
    shutdown.cancel();
    listener.wait().await?;
    stack.stop().await
}

/// No query had a time limit, nor any call. A read that scans is now cut off at the read
/// pool's statement timeout (DEADLINE_EXCEEDED), while point reads and writes, on their
/// own pool, go on; and every call is cut off at the server's deadline.
#[tokio::test]
async fn slow_reads_and_calls_are_cut_off() -> anyhow::Result<()> {
    use salesplan_platform::service::Service;
    let stack = Stack::start().await?;
    let admin = stack.token("acme", "boss", &ALL);
    let plan = create_plan(
        stack.channel(&stack.deal_service).await?,
        &admin,
        plan_request("P", Mode::Manual, Strategy::RoundRobin, false, &[]),
    )
    .await?;
    let mut deals = DealServiceClient::new(stack.channel(&stack.deal_service).await?);
    let mut first = None;
    for chunk in 0..3 {
        let results = deals
            .create_deals(outgoing(
                pb::CreateDealsRequest {
                    deals: (0..1_000)
                        .map(|i| pb::CreateDealRequest {
                            title: format!("contact {chunk} {i}"),
                            ..deal_request(&plan.id, &format!("k-{chunk}-{i}"), 1)
                        })
                        .collect(),
                },
                &admin,
            ))
            .await?
            .into_inner()
            .results;
        first = first.or(results[0].deal.clone());
    }
    let first = first.expect("a deal");

    let shutdown = tokio_util::sync::CancellationToken::new();
    let mut config = deal_service::Config::local(&stack.db.url, &stack.nats.url);
    config.database.read_timeout = Duration::from_millis(1);
    let short_reads = config.start(shutdown.clone()).await?;
    let mut config = deal_service::Config::local(&stack.db.url, &stack.nats.url);
    config.common.grpc_timeout = Duration::from_millis(1);
    let short_calls = config.start(shutdown.clone()).await?;
    let search = pb::ListDealsRequest {
        filter: Some(pb::DealFilter {
            plan_id: plan.id.clone(),
            search: "contact".into(),
            ..Default::default()
        }),
        page_size: 500,
        ..Default::default()
    };

    let channel = stack.channel(&short_reads).await?;
    let mut reads = DealServiceClient::new(channel);
    let cut = reads
        .list_deals(outgoing(search.clone(), &admin))
        .await
        .expect_err("a scan longer than 1 ms");
    assert_eq!(cut.code(), Code::DeadlineExceeded, "{cut:?}");
    assert!(cut.message().contains("narrow the filter"), "{cut:?}");
    let got = reads
        .get_deal(outgoing(
            pb::GetDealRequest {
                deal_id: first.id.clone(),
                ..Default::default()
            },
            &admin,
        ))
        .await?
        .into_inner()
        .deal
        .expect("deal");
    assert_eq!(got.id, first.id, "a point read is not a scan");

    let channel = stack.channel(&short_calls).await?;
    let cut = DealServiceClient::new(channel)
        .list_deals(outgoing(search, &admin))
        .await
        .expect_err("a call longer than 1 ms");
    assert_eq!(cut.code(), Code::Cancelled, "{cut:?}");

    shutdown.cancel();
    short_reads.wait().await?;
    short_calls.wait().await?;
    stack.stop().await
}

/// Streams a bulk add of `n` contacts (chunks of 1,000) and waits for every answer.
async fn bulk_add(
    stack: &Stack,
    token: &str,
    plan_id: &str,
    job: &str,
    n: usize,
) -> anyhow::Result<()> {
    use futures::StreamExt;
    let chunks =
        integration_tests::api::audience_chunks(plan_id, job, n, 1_000, |i| format!("{job}-{i}"));
    let mut answers = pb::intake_service_client::IntakeServiceClient::new(
        stack.channel(&stack.tunnel_listener).await?,
    )
    .add_audience(outgoing(futures::stream::iter(chunks), token))
    .await?
    .into_inner();
    let mut accepted = 0;
    while let Some(answer) = answers.next().await {
        accepted += answer?.results.len();
    }
    anyhow::ensure!(accepted == n, "{accepted} of {n} answered");
    Ok(())
}

/// How many deals a plan holds (its kept counts: one cheap read).
async fn deal_count(stack: &Stack, token: &str, plan_id: &str) -> anyhow::Result<i64> {
    integration_tests::api::deal_count(stack.channel(&stack.deal_service).await?, token, plan_id)
        .await
}

/// One FIFO consumer served everyone: while account A bulk-added, account B's single
/// funnel lead waited behind A's contacts, and a second account's bulk add behind the
/// first's. Interactive leads now have a lane of their own, and bulk adds of several
/// accounts are served in turn.
#[tokio::test]
async fn bulk_adds_delay_neither_funnel_leads_nor_other_accounts_bulk_adds() -> anyhow::Result<()> {
    // Enough that B's lead, even on a loaded machine (a second or two), arrives well before
    // half of A's contacts are deals.
    const A_CONTACTS: usize = 20_000;
    const C_CONTACTS: usize = 1_000;
    let stack = Stack::start().await?;
    let channel = stack.channel(&stack.deal_service).await?;
    let (a, b, c) = (
        stack.token("a", "admin", &ALL),
        stack.token("b", "admin", &ALL),
        stack.token("c", "admin", &ALL),
    );
    let manual = |name: &str| plan_request(name, Mode::Manual, Strategy::RoundRobin, false, &[]);
    let a_plan = create_plan(channel.clone(), &a, manual("A")).await?;
    let b_plan = create_plan(channel.clone(), &b, manual("B")).await?;
    let c_plan = create_plan(channel.clone(), &c, manual("C")).await?;

    // A's whole bulk add is queued before anyone else sends anything.
    bulk_add(&stack, &a, &a_plan.id, "a-job", A_CONTACTS).await?;

    // B's funnel lead: a deal while most of A's contacts still wait. (A's contacts are
    // distributed while they stream in, so count what is still ahead of B's lead.)
    let a_at_send = deal_count(&stack, &a, &a_plan.id).await?;
    let ahead = A_CONTACTS as i64 - a_at_send;
    anyhow::ensure!(
        ahead >= A_CONTACTS as i64 / 4,
        "only {ahead} of A's contacts were left when B's lead was sent: too few to tell"
    );
    let sent = reqwest::Client::new()
        .post(stack.webhook_url())
        .bearer_auth(&b)
        .json(&lead_json(&b_plan.id, "run-1", "tg-b"))
        .send()
        .await?;
    assert_eq!(sent.status(), 202);
    eventually(Duration::from_secs(30), || async {
        Ok((deal_count(&stack, &b, &b_plan.id).await? == 1).then_some(()))
    })
    .await?;
    let waited_for = deal_count(&stack, &a, &a_plan.id).await? - a_at_send;
    assert!(
        waited_for < ahead / 2,
        "B's lead waited for {waited_for} of the {ahead} contacts of A ahead of it"
    );

    // C's bulk add, sent after A's: it finishes while A's is still going, with A
    // progressing about as fast meanwhile.
    let a_before = deal_count(&stack, &a, &a_plan.id).await?;
    bulk_add(&stack, &c, &c_plan.id, "c-job", C_CONTACTS).await?;
    eventually(Duration::from_secs(60), || async {
        Ok((deal_count(&stack, &c, &c_plan.id).await? == C_CONTACTS as i64).then_some(()))
    })
    .await?;
    let a_after = deal_count(&stack, &a, &a_plan.id).await?;
    assert!(
        a_after < A_CONTACTS as i64,
        "C's bulk add waited for the whole of A's ({a_after})"
    );
    let a_meanwhile = a_after - a_before;
    assert!(
        a_meanwhile <= 3 * C_CONTACTS as i64,
        "A progressed {a_meanwhile} while C did {C_CONTACTS}: not in turn"
    );
    eventually(Duration::from_secs(120), || async {
        Ok((deal_count(&stack, &a, &a_plan.id).await? == A_CONTACTS as i64).then_some(()))
    })
    .await?;
    stack.stop().await
}

/// An account could queue any number of contacts in bulk adds. Now a chunk beyond the
/// account's allowance of undistributed contacts waits for room, and is refused when none
/// comes in time; other accounts are not held back.
#[tokio::test]
async fn an_accounts_bulk_backlog_is_capped() -> anyhow::Result<()> {
    use salesplan_platform::service::Service;
    // No distributor: whatever is queued stays queued.
    let nats = integration_tests::TestNats::start().await?;
    let db = integration_tests::TestDatabase::create().await?;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let deal_service = deal_service::Config::local(&db.url, &nats.url)
        .start(shutdown.clone())
        .await?;
    let mut config = tunnel_listener::Config::local(&nats.url, &deal_service.grpc_url());
    config.audience_max_in_flight = 1_500;
    config.audience_idle_timeout = Duration::from_millis(500);
    let listener = config.start(shutdown.clone()).await?;
    let issuer = salesplan_platform::auth::TokenIssuer::hs256(
        salesplan_platform::config::AuthConfig::DEV_SECRET.as_bytes(),
    );
    let token = |account: &str| {
        issuer.issue(
            &salesplan_platform::Actor::new(account, "admin", ALL),
            Duration::from_secs(600),
        )
    };
    let (a, b) = (token("a")?, token("b")?);
    let channel = tonic::transport::Endpoint::from_shared(deal_service.grpc_url())?.connect_lazy();
    let manual = |name: &str| plan_request(name, Mode::Manual, Strategy::RoundRobin, false, &[]);
    let a_plan = create_plan(channel.clone(), &a, manual("A")).await?;
    let b_plan = create_plan(channel.clone(), &b, manual("B")).await?;
    let mut intake = pb::intake_service_client::IntakeServiceClient::new(
        tonic::transport::Endpoint::from_shared(listener.grpc_url())?.connect_lazy(),
    );
    let chunk = |plan: &str, from: usize, n: usize| pb::AddAudienceRequest {
        plan_id: plan.into(),
        job_id: "job".into(),
        assign_to_manager_id: None,
        contacts: (from..from + n)
            .map(|i| pb::AudienceContact {
                contact: Some(pb::Contact {
                    external_id: format!("x-{i}"),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .collect(),
    };
    let mut answers = intake
        .add_audience(outgoing(
            futures::stream::iter(vec![
                chunk(&a_plan.id, 0, 1_000),
                chunk(&a_plan.id, 1_000, 1_000),
            ]),
            &a,
        ))
        .await?
        .into_inner();
    let first = answers.message().await?.expect("first chunk answered");
    assert_eq!(first.results.len(), 1_000);
    let refused = answers.message().await.expect_err("no room for the second");
    let delay = retry_delay(&refused);
    assert!(delay >= Duration::from_secs(1));
    assert!(
        refused.message().contains("1000 contacts of bulk adds"),
        "{refused:?}"
    );
    let js = async_nats::jetstream::new(async_nats::connect(&nats.url).await?);
    assert_eq!(
        integration_tests::nats::bulk_backlog(&js).await?,
        1_000,
        "nothing more queued"
    );

    // Another account still has its whole allowance.
    let mut answers = intake
        .add_audience(outgoing(
            futures::stream::iter(vec![chunk(&b_plan.id, 0, 1_000)]),
            &b,
        ))
        .await?
        .into_inner();
    assert_eq!(
        answers.message().await?.expect("answered").results.len(),
        1_000
    );
    shutdown.cancel();
    listener.wait().await?;
    deal_service.wait().await?;
    Ok(())
}

/// Publishes a protobuf event as deal-service's relay or the listener would.
async fn publish_raw(
    stack: &Stack,
    subject: String,
    id: &str,
    payload: Vec<u8>,
) -> anyhow::Result<()> {
    let js = async_nats::jetstream::new(async_nats::connect(&stack.nats.url).await?);
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", id);
    js.publish_with_headers(subject, headers, payload.into())
        .await?
        .await?;
    Ok(())
}

/// Events name their own account; lookups by the ids they carry (intake ids, deal ids,
/// stage ids, plan ids) are scoped by it. Events of account B that carry account A's ids —
/// the most an account could do with access to the bus — change nothing of A's: its
/// decision, counts and plan copy in the distributor, its deal and stage names in
/// reporting, its plan in the listener (A's funnel leads still go in).
#[tokio::test]
async fn events_of_one_account_carrying_anothers_ids_change_nothing_of_it() -> anyhow::Result<()> {
    use prost::Message as _;
    use salesplan_platform::bus::streams;
    let stack = Stack::start().await?;
    let channel = stack.channel(&stack.deal_service).await?;
    let (a, b) = (
        stack.token("a", "admin", &ALL),
        stack.token("b", "admin", &ALL),
    );
    let a_plan = create_plan(
        channel.clone(),
        &a,
        plan_request("A", Mode::Auto, Strategy::RoundRobin, false, &["a1"]),
    )
    .await?;
    let b_plan = create_plan(
        channel.clone(),
        &b,
        plan_request("B", Mode::Auto, Strategy::RoundRobin, false, &["b1"]),
    )
    .await?;
    reqwest::Client::new()
        .post(stack.webhook_url())
        .bearer_auth(&a)
        .json(&lead_json(&a_plan.id, "run-1", "tg-a"))
        .send()
        .await?
        .error_for_status()?;
    let a_deal = eventually(Duration::from_secs(20), || async {
        Ok(plan_deals(&stack, &a, &a_plan.id).await?.pop())
    })
    .await?;
    deal_events_consumed(&stack).await?;
    let pool = stack.pool().await?;
    let a_state = || async {
        let decision: (Option<String>, Option<uuid::Uuid>) = sqlx::query_as(
            "SELECT manager_id, deal_id FROM distributor.assignments WHERE account_id = 'a'",
        )
        .fetch_one(&pool)
        .await?;
        let open: Vec<(String, i64)> = sqlx::query_as(
            "SELECT manager_id, open FROM distributor.open_deals WHERE plan_id = $1",
        )
        .bind(uuid::Uuid::parse_str(&a_plan.id)?)
        .fetch_all(&pool)
        .await?;
        let view: (String, bool, i64) = sqlx::query_as(
            "SELECT account_id, open, version FROM distributor.deal_view WHERE deal_id = $1",
        )
        .bind(uuid::Uuid::parse_str(&a_deal.id)?)
        .fetch_one(&pool)
        .await?;
        let reported: (String, String, i64) = sqlx::query_as(
            "SELECT account_id, status, version FROM reporting.deals WHERE deal_id = $1",
        )
        .bind(uuid::Uuid::parse_str(&a_deal.id)?)
        .fetch_one(&pool)
        .await?;
        let stages: Vec<String> = sqlx::query_scalar(
            "SELECT name FROM reporting.stages WHERE plan_id = $1 ORDER BY position",
        )
        .bind(uuid::Uuid::parse_str(&a_plan.id)?)
        .fetch_all(&pool)
        .await?;
        let plan: (String, bool, Vec<String>, i64) = sqlx::query_as(
            "SELECT account_id, archived, managers, version FROM distributor.plans WHERE plan_id = $1",
        )
        .bind(uuid::Uuid::parse_str(&a_plan.id)?)
        .fetch_one(&pool)
        .await?;
        anyhow::Ok((decision, open, view, reported, stages, plan))
    };
    let before = a_state().await?;
    assert_eq!(before.0.0.as_deref(), Some("a1"));

    // An intake event of B with A's intake id: B's lead, decided for B.
    let forged_lead = pb::IntakeEvent {
        intake_id: a_deal.idempotency_key.clone(),
        account_id: "b".into(),
        received_at: Some(prost_types::Timestamp::default()),
        source: pb::IntakeSource::Webhook as i32,
        lead: Some(pb::Lead {
            plan_id: b_plan.id.clone(),
            run_id: "forged".into(),
            contact: Some(pb::Contact {
                external_id: "tg-b".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        assign_to_manager_id: None,
        plan_version: 0,
        availability_version: 0,
        availability_sequence: 0,
    };
    publish_raw(
        &stack,
        streams::intake_subject("b", &b_plan.id),
        "forged-intake",
        forged_lead.encode_to_vec(),
    )
    .await?;
    let b_deal = eventually(Duration::from_secs(20), || async {
        Ok(plan_deals(&stack, &b, &b_plan.id).await?.pop())
    })
    .await?;
    assert_eq!(b_deal.manager_id.as_deref(), Some("b1"));

    // A deal event of B about A's deal, and a plan event of B renaming A's stages.
    let mut hijacked = a_deal.clone();
    hijacked.plan_id = b_plan.id.clone();
    hijacked.status = pb::DealStatus::Won as i32;
    hijacked.version = 99;
    let forged_deal = pb::DealEvent {
        event_id: "forged-deal".into(),
        account_id: "b".into(),
        kind: pb::deal_event::Kind::Closed as i32,
        deal: Some(hijacked),
        ..Default::default()
    };
    publish_raw(
        &stack,
        streams::deal_subject("b", "closed"),
        "forged-deal",
        forged_deal.encode_to_vec(),
    )
    .await?;
    let mut renamed = b_plan.clone();
    renamed.version = 99;
    renamed.stages = a_plan
        .stages
        .iter()
        .map(|s| pb::Stage {
            name: "hijacked".into(),
            ..s.clone()
        })
        .collect();
    let forged_plan = pb::PlanEvent {
        event_id: "forged-plan".into(),
        account_id: "b".into(),
        kind: pb::plan_event::Kind::Updated as i32,
        plan: Some(renamed),
        ..Default::default()
    };
    publish_raw(
        &stack,
        streams::plan_subject("b", "updated"),
        "forged-plan",
        forged_plan.encode_to_vec(),
    )
    .await?;
    // A plan event of B with A's plan id: archived, another manager, a later version.
    let mut taken = a_plan.clone();
    taken.version = 99;
    taken.archived = true;
    taken.manager_ids = vec!["evil".into()];
    taken.stages = a_plan
        .stages
        .iter()
        .map(|s| pb::Stage {
            name: "taken".into(),
            ..s.clone()
        })
        .collect();
    let forged_takeover = pb::PlanEvent {
        event_id: "forged-takeover".into(),
        account_id: "b".into(),
        kind: pb::plan_event::Kind::Updated as i32,
        plan: Some(taken),
        ..Default::default()
    };
    publish_raw(
        &stack,
        streams::plan_subject("b", "updated"),
        "forged-takeover",
        forged_takeover.encode_to_vec(),
    )
    .await?;
    deal_events_consumed(&stack).await?;
    // Every plan consumer (the distributor's, reporting's, each listener's) has them.
    let js = async_nats::jetstream::new(async_nats::connect(&stack.nats.url).await?);
    eventually(Duration::from_secs(20), || {
        let js = js.clone();
        async move {
            Ok(
                integration_tests::nats::all_consumers_caught_up(&js, "SALESPLAN_PLANS")
                    .await?
                    .then_some(()),
            )
        }
    })
    .await?;
    assert_eq!(a_state().await?, before, "nothing of A's changed");
    // A's plan still takes A's leads, for A's manager.
    let status = reqwest::Client::new()
        .post(stack.webhook_url())
        .bearer_auth(&a)
        .json(&lead_json(&a_plan.id, "run-2", "tg-a2"))
        .send()
        .await?
        .status();
    assert_eq!(status, 202, "A's plan still open to A's funnel");
    let second = eventually(Duration::from_secs(20), || async {
        let deals = plan_deals(&stack, &a, &a_plan.id).await?;
        Ok((deals.len() == 2).then_some(deals))
    })
    .await?;
    assert!(
        second.iter().all(|d| d.manager_id.as_deref() == Some("a1")),
        "{second:?}"
    );
    stack.stop().await
}

/// The relay read 1,000 outbox rows per pass whatever their size: with plan events near
/// their cap, one pass could hold hundreds of megabytes. A pass now stops after about
/// 8 MiB of payloads (always taking at least one row), and the next pass goes on at once.
#[tokio::test]
async fn the_relay_reads_a_bounded_number_of_bytes_per_pass() -> anyhow::Result<()> {
    use salesplan_platform::{
        bus::{Bus, streams},
        db,
        service::ServiceConfig,
    };
    let database = integration_tests::postgres::TestDatabase::create().await?;
    let nats = integration_tests::nats::TestNats::start().await?;
    let config = ServiceConfig::local(&nats.url);
    let pool = db::connect_and_migrate(
        &salesplan_platform::config::DatabaseConfig::local(&database.url),
        deal_service::SCHEMA,
        &deal_service::MIGRATOR,
    )
    .await?;
    let bus = Bus::connect(&config.nats, "relay-test").await?;
    bus.ensure_streams(&streams::ALL).await?;
    let payload = vec![7u8; 600 * 1024];
    for i in 0..20 {
        sqlx::query("INSERT INTO outbox (subject, message_id, payload) VALUES ($1, $2, $3)")
            .bind(streams::deal_subject("a", "created"))
            .bind(format!("big-{i}"))
            .bind(&payload)
            .execute(&pool)
            .await?;
    }
    let first = deal_service::events::outbox::publish_batch(&pool, &bus).await?;
    // The rows whose payload starts below 8 MiB: ⌈8 MiB / 600 KiB⌉ = 14.
    let most = (deal_service::events::outbox::BATCH_BYTES as usize).div_ceil(payload.len());
    assert_eq!(first.published, most, "{first:?}");
    let second = deal_service::events::outbox::publish_batch(&pool, &bus).await?;
    assert_eq!(second.published, 20 - most, "{second:?}");
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(&pool)
        .await?;
    assert_eq!(left, 0);
    // Each published once.
    let js = bus.jetstream();
    let stored = js
        .get_stream("SALESPLAN_DEALS")
        .await?
        .info()
        .await?
        .state
        .messages;
    assert_eq!(stored, 20);
    Ok(())
}

/// Subjects carry the account, and the broker's permissions are per subject: an event
/// whose payload names another account than its subject (forged, or from a publisher
/// allowed one account's subjects) is refused by every consumer — dead-lettered with the
/// reason, counted — and changes nothing.
#[tokio::test]
async fn an_event_naming_another_account_than_its_subject_is_dead_lettered() -> anyhow::Result<()> {
    use prost::Message as _;
    use salesplan_platform::bus::{HEADER_REASON, streams};
    let stack = Stack::start().await?;
    let channel = stack.channel(&stack.deal_service).await?;
    let a = stack.token("a", "admin", &ALL);
    let a_plan = create_plan(
        channel,
        &a,
        plan_request("A", Mode::Auto, Strategy::RoundRobin, false, &["a1"]),
    )
    .await?;
    let lead = pb::IntakeEvent {
        intake_id: uuid::Uuid::new_v4().to_string(),
        account_id: "a".into(),
        received_at: Some(prost_types::Timestamp::default()),
        lead: Some(pb::Lead {
            plan_id: a_plan.id.clone(),
            run_id: "forged".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let deal = pb::DealEvent {
        event_id: "forged-deal".into(),
        account_id: "a".into(),
        kind: pb::deal_event::Kind::Created as i32,
        ..Default::default()
    };
    let plan = pb::PlanEvent {
        event_id: "forged-plan".into(),
        account_id: "a".into(),
        kind: pb::plan_event::Kind::Updated as i32,
        plan: Some(pb::Plan {
            archived: true,
            version: 99,
            ..a_plan.clone()
        }),
        ..Default::default()
    };
    for (subject, id, payload) in [
        (
            streams::intake_subject("b", &a_plan.id),
            "forged-intake",
            lead.encode_to_vec(),
        ),
        (
            streams::deal_subject("b", "created"),
            "forged-deal",
            deal.encode_to_vec(),
        ),
        (
            streams::plan_subject("b", "updated"),
            "forged-plan",
            plan.encode_to_vec(),
        ),
    ] {
        publish_raw(&stack, subject, id, payload).await?;
    }
    // Refused by each consumer: the distributor's intake, deals and plans, reporting's
    // deals and plans.
    let js = async_nats::jetstream::new(async_nats::connect(&stack.nats.url).await?);
    let mut dead = Vec::new();
    for consumer in [
        "distributor-intake",
        "distributor-deals",
        "reporting-deals",
        "distributor-plans",
        "reporting-plans",
    ] {
        let subject = streams::dead_letters_of(consumer);
        let message = eventually(Duration::from_secs(20), || {
            let (js, subject) = (js.clone(), subject.clone());
            async move {
                let stream = js.get_stream(streams::DEAD_LETTERS.name).await?;
                Ok(stream.get_last_raw_message_by_subject(&subject).await.ok())
            }
        })
        .await
        .map_err(|e| e.context(format!("no dead letter of {consumer}")))?;
        let reason = message
            .headers
            .get(HEADER_REASON)
            .map(|v| v.as_str().to_owned())
            .unwrap_or_default();
        dead.push((consumer, reason));
    }
    for (consumer, reason) in &dead {
        assert!(
            reason.contains("event of account \"a\" on a subject of account \"b\""),
            "{consumer}: {reason}"
        );
    }
    // A's plan is untouched: not archived, still at its version, still takes A's leads.
    // (The distributor's copy of it comes from A's own plan event, applied on its own
    // time: wait for the copy, then look at it.)
    let pool = stack.pool().await?;
    let plan_id = uuid::Uuid::parse_str(&a_plan.id)?;
    let kept: (bool, i64) =
        eventually(Duration::from_secs(20), || {
            let pool = pool.clone();
            async move {
                Ok(sqlx::query_as(
                    "SELECT archived, version FROM distributor.plans WHERE plan_id = $1",
                )
                .bind(plan_id)
                .fetch_optional(&pool)
                .await?)
            }
        })
        .await?;
    assert_eq!(kept, (false, a_plan.version));
    stack.stop().await
}
