//! Rich errors: every field violation of a request at once, a stable reason on
//! every error, over gRPC (google.rpc details) and on the webhook (JSON).

use integration_tests::{
    Stack,
    api::{Mode, Strategy, create_plan, plan_request, write_token},
};
use salesplan_platform::{Permission, grpc::outgoing};
use salesplan_proto::v1::{
    self as pb, deal_service_client::DealServiceClient, plan_service_client::PlanServiceClient,
};
use tonic::Code;
use tonic_types::StatusExt;

const ALL: [Permission; 4] = [
    Permission::PlansAdmin,
    Permission::DealsEditAll,
    Permission::DealsBulkEdit,
    Permission::IntakeWrite,
];

/// The ErrorInfo reason and the BadRequest fields of a status.
fn details(status: &tonic::Status) -> (String, Vec<String>) {
    let details = status.get_error_details();
    let info = details.error_info().expect("every error carries ErrorInfo");
    assert_eq!(info.domain, "salesplan.v1");
    let fields = details
        .bad_request()
        .map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect())
        .unwrap_or_default();
    (info.reason.clone(), fields)
}

#[tokio::test]
async fn grpc_errors_carry_every_violation_and_a_reason() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let channel = stack.channel(&stack.deal_service).await?;
    let token = stack.token("acme", "admin", &ALL);
    let mut plans = PlanServiceClient::new(channel.clone());
    let mut deals = DealServiceClient::new(channel.clone());

    // CreatePlan without average amount, label and distribution: one answer, all three.
    let err = plans
        .create_plan(outgoing(
            pb::CreatePlanRequest {
                name: "Sales".into(),
                ..Default::default()
            },
            &token,
        ))
        .await
        .expect_err("three fields missing");
    assert_eq!(err.code(), Code::InvalidArgument);
    let (reason, mut fields) = details(&err);
    fields.sort();
    assert_eq!(reason, "INVALID_FIELDS");
    assert_eq!(fields, ["average_amount", "chat_label", "distribution"]);

    // CreateDeal with a bad plan id, contact and amount: all of them.
    let err = deals
        .create_deal(outgoing(
            pb::CreateDealRequest {
                plan_id: "nope".into(),
                contact: Some(pb::Contact {
                    email: "not-mail".into(),
                    ..Default::default()
                }),
                amount: Some(pb::Money {
                    amount_minor: -1,
                    currency: "usd".into(),
                }),
                ..Default::default()
            },
            &token,
        ))
        .await
        .expect_err("bad deal");
    let (_, mut fields) = details(&err);
    fields.sort();
    assert_eq!(
        fields,
        [
            "amount.amount_minor",
            "amount.currency",
            "contact.email",
            "idempotency_key",
            "plan_id",
        ]
    );

    // The rules, each by its reason.
    let plan = create_plan(
        channel.clone(),
        &token,
        plan_request("P", Mode::Manual, Strategy::Unspecified, false, &["m1"]),
    )
    .await?;
    let plan = plans
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
        .await?
        .into_inner()
        .plan
        .expect("plan");
    let lost = plan
        .stages
        .iter()
        .find(|s| s.kind == pb::StageKind::Lost as i32)
        .expect("LOST")
        .id
        .clone();
    let deal = deals
        .create_deal(outgoing(
            pb::CreateDealRequest {
                plan_id: plan.id.clone(),
                contact: Some(pb::Contact {
                    external_id: "c1".into(),
                    ..Default::default()
                }),
                idempotency_key: "k1".into(),
                ..Default::default()
            },
            &token,
        ))
        .await?
        .into_inner()
        .deal
        .expect("deal");
    let close = |version: i64| pb::MoveDealRequest {
        deal_id: deal.id.clone(),
        expected_version: version,
        stage_id: lost.clone(),
        loss_reason_id: None,
    };
    let err = deals
        .move_deal(outgoing(close(deal.version), &token))
        .await
        .expect_err("no reason");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(
        details(&err),
        ("LOSS_REASON_REQUIRED".into(), vec!["loss_reason_id".into()])
    );
    let err = deals
        .move_deal(outgoing(close(deal.version + 7), &token))
        .await
        .expect_err("stale");
    assert_eq!(err.code(), Code::Aborted);
    assert_eq!(details(&err).0, "STALE_VERSION");
    let err = deals
        .assign_deal(outgoing(
            pb::AssignDealRequest {
                deal_id: deal.id.clone(),
                expected_version: deal.version,
                manager_id: Some("stranger".into()),
                ..Default::default()
            },
            &token,
        ))
        .await
        .expect_err("not a member");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(details(&err).0, "MANAGER_NOT_IN_PLAN");
    plans
        .archive_plan(outgoing(
            pb::ArchivePlanRequest {
                plan_id: plan.id.clone(),
            },
            &token,
        ))
        .await?;
    let err = deals
        .create_deal(outgoing(
            pb::CreateDealRequest {
                plan_id: plan.id.clone(),
                contact: Some(pb::Contact {
                    external_id: "c2".into(),
                    ..Default::default()
                }),
                idempotency_key: "k2".into(),
                ..Default::default()
            },
            &token,
        ))
        .await
        .expect_err("archived");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(details(&err).0, "PLAN_ARCHIVED");
    let err = deals
        .get_deal(outgoing(
            pb::GetDealRequest {
                deal_id: uuid::Uuid::new_v4().to_string(),
                ..Default::default()
            },
            &token,
        ))
        .await
        .expect_err("unknown");
    assert_eq!(details(&err).0, "NOT_FOUND");
    stack.stop().await
}

#[tokio::test]
async fn webhook_errors_list_every_violation_and_name_method_and_media_type() -> anyhow::Result<()>
{
    let stack = Stack::start().await?;
    let funnel = stack.token("acme", "funnel", &[Permission::IntakeWrite]);
    let http = reqwest::Client::new();

    let response = http
        .post(stack.webhook_url())
        .bearer_auth(&funnel)
        .json(&serde_json::json!({
            "plan_id": "nope",
            "contact": {"email": "not-mail"},
            "amount": {"amount_minor": -1, "currency": "USD"},
        }))
        .send()
        .await?;
    assert_eq!(response.status(), 400);
    let body: serde_json::Value = response.json().await?;
    let error = &body["error"];
    assert_eq!(error["code"], "invalid_argument");
    assert_eq!(error["reason"], "INVALID_FIELDS");
    let mut fields: Vec<&str> = error["violations"]
        .as_array()
        .expect("violations")
        .iter()
        .filter_map(|v| v["field"].as_str())
        .collect();
    fields.sort();
    assert_eq!(
        fields,
        ["amount.amount_minor", "contact.email", "plan_id", "run_id"],
        "{body}"
    );

    let response = http
        .get(stack.webhook_url())
        .bearer_auth(&funnel)
        .send()
        .await?;
    assert_eq!(response.status(), 405);
    assert_eq!(
        response
            .headers()
            .get("allow")
            .and_then(|v| v.to_str().ok()),
        Some("POST")
    );
    let body: serde_json::Value = response.json().await?;
    assert_eq!(body["error"]["code"], "method_not_allowed");
    assert_eq!(body["error"]["reason"], "METHOD_NOT_ALLOWED");

    let response = http
        .post(stack.webhook_url())
        .bearer_auth(&funnel)
        .header("content-type", "text/plain")
        .body("plan_id=1")
        .send()
        .await?;
    assert_eq!(response.status(), 415);
    let body: serde_json::Value = response.json().await?;
    assert_eq!(body["error"]["code"], "unsupported_media_type");
    assert_eq!(body["error"]["reason"], "UNSUPPORTED_MEDIA_TYPE");
    stack.stop().await
}

/// A filter by ids of another account answers exactly as one by ids that exist
/// nowhere — an empty result, never NOT_FOUND — in every list and report of the four
/// services; a call about one entity (a board is its plan's, an intake names its plan)
/// answers NOT_FOUND for both. So no answer tells whether another account's id exists.
#[tokio::test]
async fn foreign_and_unknown_ids_answer_the_same_everywhere() -> anyhow::Result<()> {
    use pb::{
        distributor_service_client::DistributorServiceClient,
        intake_service_client::IntakeServiceClient, report_service_client::ReportServiceClient,
    };
    let stack = Stack::start().await?;
    let channel = stack.channel(&stack.deal_service).await?;
    let (a, b) = (
        stack.token("a", "admin", &ALL),
        stack.token("b", "admin", &ALL),
    );
    // B's plan with a deal: ids that exist, in another account.
    let b_plan = create_plan(
        channel.clone(),
        &b,
        plan_request("B", Mode::Manual, Strategy::Unspecified, false, &["b1"]),
    )
    .await?;
    let b_stage = b_plan.stages[0].id.clone();
    let unknown = uuid::Uuid::new_v4().to_string();
    let mut deals = DealServiceClient::new(channel.clone());
    let mut reports = ReportServiceClient::new(stack.channel(&stack.reporting).await?);
    let created = deals
        .create_deal(outgoing(
            pb::CreateDealRequest {
                plan_id: b_plan.id.clone(),
                contact: Some(pb::Contact {
                    external_id: "b-contact".into(),
                    ..Default::default()
                }),
                idempotency_key: "b-1".into(),
                ..Default::default()
            },
            &b,
        ))
        .await?;
    let written = write_token(&created)?.to_string();
    // B sees its deal in the read model: what A is about to ask for exists.
    let of_b = reports
        .pipeline_summary(outgoing(
            pb::PipelineSummaryRequest {
                plan_id: Some(b_plan.id.clone()),
                min_consistency_token: written,
            },
            &b,
        ))
        .await?
        .into_inner();
    assert_eq!(of_b.total_deals, 1);
    let mut distributor = DistributorServiceClient::new(stack.channel(&stack.distributor).await?);
    let mut intake = IntakeServiceClient::new(stack.channel(&stack.tunnel_listener).await?);

    for (what, plan, stage) in [
        ("B's ids", b_plan.id.clone(), b_stage.clone()),
        ("unknown ids", unknown.clone(), unknown.clone()),
    ] {
        let listed = deals
            .list_deals(outgoing(
                pb::ListDealsRequest {
                    filter: Some(pb::DealFilter {
                        plan_id: plan.clone(),
                        stage_ids: vec![stage.clone()],
                        loss_reason_ids: vec![unknown.clone()],
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                &a,
            ))
            .await?
            .into_inner();
        assert_eq!((listed.deals.len(), listed.total_count), (0, 0), "{what}");
        let report = reports
            .loss_reasons(outgoing(
                pb::LossReasonsRequest {
                    group_by: pb::ReportGrouping::Plan as i32,
                    plan_ids: vec![plan.clone()],
                    ..Default::default()
                },
                &a,
            ))
            .await?
            .into_inner();
        assert!(report.rows.is_empty(), "{what}");
        let stages = reports
            .stage_losses(outgoing(
                pb::StageLossesRequest {
                    plan_ids: vec![plan.clone()],
                    ..Default::default()
                },
                &a,
            ))
            .await?
            .into_inner();
        assert!(stages.plans.is_empty(), "{what}");
        let summary = reports
            .pipeline_summary(outgoing(
                pb::PipelineSummaryRequest {
                    plan_id: Some(plan.clone()),
                    ..Default::default()
                },
                &a,
            ))
            .await?
            .into_inner();
        assert_eq!(summary.total_deals, 0, "{what}");
        let rejections = distributor
            .list_intake_rejections(outgoing(
                pb::ListIntakeRejectionsRequest {
                    plan_id: plan.clone(),
                    ..Default::default()
                },
                &a,
            ))
            .await?
            .into_inner();
        assert!(rejections.rejections.is_empty(), "{what}");

        // One entity: NOT_FOUND, the same for both.
        let board = deals
            .get_board(outgoing(
                pb::GetBoardRequest {
                    plan_id: plan.clone(),
                    ..Default::default()
                },
                &a,
            ))
            .await
            .expect_err("a board of a plan A does not have");
        assert_eq!(board.code(), Code::NotFound, "{what}");
        let lead = intake
            .add_to_sales_plan(outgoing(
                pb::AddToSalesPlanRequest {
                    lead: Some(pb::Lead {
                        plan_id: plan.clone(),
                        run_id: "r".into(),
                        contact: Some(pb::Contact {
                            external_id: "c".into(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                },
                &a,
            ))
            .await
            .expect_err("a lead for a plan A does not have");
        assert_eq!(lead.code(), Code::NotFound, "{what}");
    }
    stack.stop().await
}

/// The fields of an INVALID_ARGUMENT answer, sorted.
fn violated(result: Result<impl std::fmt::Debug, tonic::Status>) -> Vec<String> {
    let err = result.expect_err("invalid fields");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let (reason, mut fields) = details(&err);
    assert_eq!(reason, "INVALID_FIELDS");
    fields.sort();
    fields
}

/// Every request, not only the creates, answers all its field violations at once — across
/// deal-service, reporting and the distributor — and a missing or bad token carries its
/// reason too.
#[tokio::test]
async fn every_request_reports_all_its_violations_at_once() -> anyhow::Result<()> {
    use pb::{
        distributor_service_client::DistributorServiceClient,
        report_service_client::ReportServiceClient,
    };
    let stack = Stack::start().await?;
    let channel = stack.channel(&stack.deal_service).await?;
    let token = stack.token("acme", "admin", &ALL);
    let mut plans = PlanServiceClient::new(channel.clone());
    let mut deals = DealServiceClient::new(channel.clone());
    let mut reports = ReportServiceClient::new(stack.channel(&stack.reporting).await?);
    let mut distributor = DistributorServiceClient::new(stack.channel(&stack.distributor).await?);
    let bad = || "x".to_owned();

    let fields = violated(
        deals
            .move_deal(outgoing(
                pb::MoveDealRequest {
                    deal_id: bad(),
                    expected_version: -1,
                    stage_id: bad(),
                    loss_reason_id: Some(bad()),
                },
                &token,
            ))
            .await,
    );
    assert_eq!(
        fields,
        ["deal_id", "expected_version", "loss_reason_id", "stage_id"]
    );
    let fields = violated(
        deals
            .get_board(outgoing(
                pb::GetBoardRequest {
                    plan_id: bad(),
                    min_consistency_token: "zz".into(),
                    ..Default::default()
                },
                &token,
            ))
            .await,
    );
    assert_eq!(fields, ["min_consistency_token", "plan_id"]);
    let fields = violated(
        deals
            .list_deals(outgoing(
                pb::ListDealsRequest {
                    filter: Some(pb::DealFilter {
                        plan_id: bad(),
                        ..Default::default()
                    }),
                    page_token: "not-a-token".into(),
                    min_consistency_token: "zz".into(),
                    ..Default::default()
                },
                &token,
            ))
            .await,
    );
    assert_eq!(
        fields,
        ["filter.plan_id", "min_consistency_token", "page_token"]
    );
    let fields = violated(
        deals
            .bulk_move_deals(outgoing(
                pb::BulkMoveDealsRequest {
                    stage_id: bad(),
                    target: Some(pb::bulk_move_deals_request::Target::DealIds(pb::DealIds {
                        ids: vec![bad(), bad()],
                    })),
                    ..Default::default()
                },
                &token,
            ))
            .await,
    );
    assert_eq!(fields, ["deal_ids.ids[0]", "deal_ids.ids[1]", "stage_id"]);
    let fields = violated(
        plans
            .set_plan_managers(outgoing(
                pb::SetPlanManagersRequest {
                    plan_id: bad(),
                    manager_ids: vec!["ok".into(), String::new(), String::new()],
                    ..Default::default()
                },
                &token,
            ))
            .await,
    );
    assert_eq!(fields, ["manager_ids[1]", "manager_ids[2]", "plan_id"]);
    let fields = violated(
        plans
            .set_loss_reasons(outgoing(
                pb::SetLossReasonsRequest {
                    plan_id: bad(),
                    reasons: vec![pb::LossReasonInput {
                        id: bad(),
                        name: String::new(),
                    }],
                    ..Default::default()
                },
                &token,
            ))
            .await,
    );
    assert_eq!(fields, ["plan_id", "reasons[0].id", "reasons[0].name"]);
    let fields = violated(
        reports
            .pipeline_summary(outgoing(
                pb::PipelineSummaryRequest {
                    plan_id: Some(bad()),
                    min_consistency_token: "zz".into(),
                },
                &token,
            ))
            .await,
    );
    assert_eq!(fields, ["min_consistency_token", "plan_id"]);
    let fields = violated(
        reports
            .stage_losses(outgoing(
                pb::StageLossesRequest {
                    plan_ids: vec![bad(), bad()],
                    min_consistency_token: "zz".into(),
                    ..Default::default()
                },
                &token,
            ))
            .await,
    );
    assert_eq!(
        fields,
        ["min_consistency_token", "plan_ids[0]", "plan_ids[1]"]
    );
    let fields = violated(
        distributor
            .list_intake_rejections(outgoing(
                pb::ListIntakeRejectionsRequest {
                    plan_id: bad(),
                    page_token: bad(),
                    ..Default::default()
                },
                &token,
            ))
            .await,
    );
    assert_eq!(fields, ["page_token", "plan_id"]);

    // No token, or a forged one: UNAUTHENTICATED, with its reason.
    for bearer in ["", "Bearer forged"] {
        let mut request = tonic::Request::new(pb::ListPlansRequest::default());
        if !bearer.is_empty() {
            request
                .metadata_mut()
                .insert("authorization", bearer.parse()?);
        }
        let err = plans.list_plans(request).await.expect_err("no valid token");
        assert_eq!(err.code(), Code::Unauthenticated);
        assert_eq!(details(&err).0, "UNAUTHENTICATED");
    }
    stack.stop().await
}
