//! Every gRPC method against missing, malformed, expired and foreign-key tokens, tokens of
//! another account, and tokens without the needed permission.

use std::time::Duration;

use integration_tests::{
    Stack,
    api::{Mode, Strategy, create_plan, plan_request},
};
use salesplan_platform::{Actor, Permission, auth::TokenIssuer, grpc::outgoing};
use salesplan_proto::v1::{
    self as pb, deal_service_client::DealServiceClient,
    distributor_service_client::DistributorServiceClient,
    intake_service_client::IntakeServiceClient, outbox_service_client::OutboxServiceClient,
    plan_service_client::PlanServiceClient, report_service_client::ReportServiceClient,
};
use tonic::{Code, Status, transport::Channel};

const ALL: &[Permission] = &Permission::ALL;

/// Ids of account "acme"'s data, which "globex" must never reach.
struct Ids {
    plan: String,
    stage: String,
    won: String,
    deal: String,
}

struct Channels {
    deals: Channel,
    intake: Channel,
    reports: Channel,
    distributor: Channel,
}

const METHODS: &[&str] = &[
    "CreatePlan",
    "GetPlan",
    "ListPlans",
    "UpdatePlan",
    "ArchivePlan",
    "UnarchivePlan",
    "SetPlanManagers",
    "AddStage",
    "UpdateStage",
    "ReorderStages",
    "DeleteStage",
    "SetLossReasons",
    "CreateDeal",
    "CreateDeals",
    "GetDeal",
    "UpdateDeal",
    "MoveDeal",
    "AssignDeal",
    "AcceptDeal",
    "ReopenDeal",
    "TransferDeals",
    "BulkMoveDeals",
    "BulkAssignDeals",
    "ListDeals",
    "GetBoard",
    "WatchDeals",
    "GetDealHistory",
    "AddToSalesPlan",
    "AddAudience",
    "PipelineSummary",
    "LossReasons",
    "StageLosses",
    "ResponseTimes",
    "ExplainAssignment",
    "ExplainAssignments",
    "ForgetContacts",
    "ListIntakeRejections",
    "ListParkedEvents",
    "ReplayParkedEvents",
    "EraseContact",
    "ExportContact",
    "GetAvailability",
    "ListAvailability",
    "SetSchedule",
    "SetPaused",
];

/// What a call returned that matters here: an error status, or how much of the other
/// account's data it showed (`Ok(n)`: n items, changes or results that were not refusals).
async fn call(
    ch: &Channels,
    method: &str,
    token: Option<&str>,
    ids: &Ids,
) -> Result<usize, Status> {
    fn req<T>(message: T, token: Option<&str>) -> tonic::Request<T> {
        match token {
            Some(t) => outgoing(message, t),
            None => tonic::Request::new(message),
        }
    }
    let mut plans = PlanServiceClient::new(ch.deals.clone());
    let mut deals = DealServiceClient::new(ch.deals.clone());
    let mut reports = ReportServiceClient::new(ch.reports.clone());
    let filter = || pb::DealFilter {
        plan_id: ids.plan.clone(),
        ..Default::default()
    };
    Ok(match method {
        "CreatePlan" => plans
            .create_plan(req(
                plan_request("X", Mode::Manual, Strategy::Unspecified, false, &[]),
                token,
            ))
            .await
            .map(|_| 1)?,
        "GetPlan" => plans
            .get_plan(req(
                pb::GetPlanRequest {
                    plan_id: ids.plan.clone(),
                    with_availability: false,
                },
                token,
            ))
            .await
            .map(|_| 1)?,
        "ListPlans" => plans
            .list_plans(req(
                pb::ListPlansRequest {
                    include_archived: true,
                    ..Default::default()
                },
                token,
            ))
            .await?
            .into_inner()
            .plans
            .iter()
            .filter(|p| p.id == ids.plan)
            .count(),
        "UpdatePlan" => plans
            .update_plan(req(
                pb::UpdatePlanRequest {
                    plan_id: ids.plan.clone(),
                    name: Some("Y".into()),
                    ..Default::default()
                },
                token,
            ))
            .await
            .map(|_| 1)?,
        "ArchivePlan" => plans
            .archive_plan(req(
                pb::ArchivePlanRequest {
                    plan_id: ids.plan.clone(),
                },
                token,
            ))
            .await
            .map(|_| 1)?,
        "UnarchivePlan" => plans
            .unarchive_plan(req(
                pb::UnarchivePlanRequest {
                    plan_id: ids.plan.clone(),
                },
                token,
            ))
            .await
            .map(|_| 1)?,
        "SetPlanManagers" => plans
            .set_plan_managers(req(
                pb::SetPlanManagersRequest {
                    plan_id: ids.plan.clone(),
                    manager_ids: vec!["x".into()],
                    ..Default::default()
                },
                token,
            ))
            .await
            .map(|_| 1)?,
        "AddStage" => plans
            .add_stage(req(
                pb::AddStageRequest {
                    plan_id: ids.plan.clone(),
                    name: "S".into(),
                    color: String::new(),
                    position: None,
                },
                token,
            ))
            .await
            .map(|_| 1)?,
        "UpdateStage" => plans
            .update_stage(req(
                pb::UpdateStageRequest {
                    stage_id: ids.stage.clone(),
                    name: Some("Z".into()),
                    color: None,
                },
                token,
            ))
            .await
            .map(|_| 1)?,
        "ReorderStages" => plans
            .reorder_stages(req(
                pb::ReorderStagesRequest {
                    plan_id: ids.plan.clone(),
                    open_stage_ids: vec![ids.stage.clone()],
                },
                token,
            ))
            .await
            .map(|_| 1)?,
        "DeleteStage" => plans
            .delete_stage(req(
                pb::DeleteStageRequest {
                    stage_id: ids.stage.clone(),
                    target_stage_id: None,
                },
                token,
            ))
            .await
            .map(|_| 1)?,
        "SetLossReasons" => plans
            .set_loss_reasons(req(
                pb::SetLossReasonsRequest {
                    plan_id: ids.plan.clone(),
                    require_reason: false,
                    reasons: vec![],
                },
                token,
            ))
            .await
            .map(|_| 1)?,
        "CreateDeal" => deals
            .create_deal(req(
                pb::CreateDealRequest {
                    plan_id: ids.plan.clone(),
                    contact: Some(pb::Contact {
                        external_id: "x".into(),
                        ..Default::default()
                    }),
                    manager_id: Some("m1".into()),
                    idempotency_key: "sec-1".into(),
                    ..Default::default()
                },
                token,
            ))
            .await
            .map(|_| 1)?,
        "CreateDeals" => {
            let results = deals
                .create_deals(req(
                    pb::CreateDealsRequest {
                        deals: vec![pb::CreateDealRequest {
                            plan_id: ids.plan.clone(),
                            contact: Some(pb::Contact {
                                external_id: "x".into(),
                                ..Default::default()
                            }),
                            manager_id: Some("m1".into()),
                            idempotency_key: "sec-2".into(),
                            ..Default::default()
                        }],
                    },
                    token,
                ))
                .await?
                .into_inner()
                .results;
            match results.first() {
                Some(r) if r.code != 0 => {
                    return Err(Status::new(Code::from(r.code), r.message.clone()));
                }
                _ => results.len(),
            }
        }
        "GetDeal" => deals
            .get_deal(req(
                pb::GetDealRequest {
                    deal_id: ids.deal.clone(),
                    ..Default::default()
                },
                token,
            ))
            .await
            .map(|_| 1)?,
        "UpdateDeal" => deals
            .update_deal(req(
                pb::UpdateDealRequest {
                    deal_id: ids.deal.clone(),
                    expected_version: 1,
                    title: Some("T".into()),
                    ..Default::default()
                },
                token,
            ))
            .await
            .map(|_| 1)?,
        "MoveDeal" => deals
            .move_deal(req(
                pb::MoveDealRequest {
                    deal_id: ids.deal.clone(),
                    expected_version: 1,
                    stage_id: ids.won.clone(),
                    loss_reason_id: None,
                },
                token,
            ))
            .await
            .map(|_| 1)?,
        "AssignDeal" => deals
            .assign_deal(req(
                pb::AssignDealRequest {
                    deal_id: ids.deal.clone(),
                    expected_version: 1,
                    manager_id: Some("m2".into()),
                    ..Default::default()
                },
                token,
            ))
            .await
            .map(|_| 1)?,
        "AcceptDeal" => deals
            .accept_deal(req(
                pb::AcceptDealRequest {
                    deal_id: ids.deal.clone(),
                    expected_version: 1,
                },
                token,
            ))
            .await
            .map(|_| 1)?,
        "ReopenDeal" => deals
            .reopen_deal(req(
                pb::ReopenDealRequest {
                    deal_id: ids.deal.clone(),
                    expected_version: 1,
                },
                token,
            ))
            .await
            .map(|_| 1)?,
        "TransferDeals" => {
            deals
                .transfer_deals(req(
                    pb::TransferDealsRequest {
                        from_manager_id: "m1".into(),
                        to_manager_id: "m2".into(),
                        filter: None,
                    },
                    token,
                ))
                .await?
                .into_inner()
                .changed as usize
        }
        "BulkMoveDeals" => {
            deals
                .bulk_move_deals(req(
                    pb::BulkMoveDealsRequest {
                        target: Some(pb::bulk_move_deals_request::Target::DealIds(pb::DealIds {
                            ids: vec![ids.deal.clone()],
                        })),
                        stage_id: ids.won.clone(),
                        loss_reason_id: None,
                    },
                    token,
                ))
                .await?
                .into_inner()
                .changed as usize
        }
        "BulkAssignDeals" => {
            deals
                .bulk_assign_deals(req(
                    pb::BulkAssignDealsRequest {
                        target: Some(pb::bulk_assign_deals_request::Target::Filter(filter())),
                        manager_id: Some("m2".into()),
                    },
                    token,
                ))
                .await?
                .into_inner()
                .changed as usize
        }
        "ListDeals" => {
            deals
                .list_deals(req(
                    pb::ListDealsRequest {
                        filter: Some(filter()),
                        ..Default::default()
                    },
                    token,
                ))
                .await?
                .into_inner()
                .total_count as usize
        }
        "GetBoard" => deals
            .get_board(req(
                pb::GetBoardRequest {
                    plan_id: ids.plan.clone(),
                    ..Default::default()
                },
                token,
            ))
            .await
            .map(|_| 1)?,
        // The board it starts with: the plan's, or NOT_FOUND from another account.
        "WatchDeals" => {
            let request = pb::WatchDealsRequest {
                plan_id: ids.plan.clone(),
                start_with_snapshot: true,
                ..Default::default()
            };
            let mut watch = deals.watch_deals(req(request, token)).await?.into_inner();
            watch.message().await?.map_or(0, |_| 1)
        }
        "GetDealHistory" => deals
            .get_deal_history(req(
                pb::GetDealHistoryRequest {
                    deal_id: ids.deal.clone(),
                    ..Default::default()
                },
                token,
            ))
            .await?
            .into_inner()
            .entries
            .len(),
        "AddToSalesPlan" => IntakeServiceClient::new(ch.intake.clone())
            .add_to_sales_plan(req(
                pb::AddToSalesPlanRequest {
                    lead: Some(pb::Lead {
                        plan_id: ids.plan.clone(),
                        run_id: "r".into(),
                        contact: Some(pb::Contact {
                            external_id: "x".into(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                },
                token,
            ))
            .await
            .map(|_| 1)?,
        "AddAudience" => {
            let chunk = pb::AddAudienceRequest {
                plan_id: ids.plan.clone(),
                job_id: "job".into(),
                contacts: vec![pb::AudienceContact {
                    contact: Some(pb::Contact {
                        external_id: "x".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            };
            let mut answers = IntakeServiceClient::new(ch.intake.clone())
                .add_audience(req(futures::stream::iter([chunk]), token))
                .await?
                .into_inner();
            let mut accepted = 0;
            while let Some(answer) = answers.message().await? {
                accepted += answer
                    .results
                    .iter()
                    .filter(|r| r.outcome != pb::ContactOutcome::Rejected as i32)
                    .count();
            }
            accepted
        }
        "PipelineSummary" => {
            reports
                .pipeline_summary(req(
                    pb::PipelineSummaryRequest {
                        plan_id: Some(ids.plan.clone()),
                        ..Default::default()
                    },
                    token,
                ))
                .await?
                .into_inner()
                .total_deals as usize
        }
        "LossReasons" => {
            let report = reports
                .loss_reasons(req(
                    pb::LossReasonsRequest {
                        group_by: pb::ReportGrouping::Plan as i32,
                        ..Default::default()
                    },
                    token,
                ))
                .await?
                .into_inner();
            report.rows.len()
        }
        "StageLosses" => reports
            .stage_losses(req(pb::StageLossesRequest::default(), token))
            .await?
            .into_inner()
            .plans
            .len(),
        "ResponseTimes" => reports
            .response_times(req(pb::ResponseTimesRequest::default(), token))
            .await?
            .into_inner()
            .rows
            .len(),
        "ExplainAssignment" => DistributorServiceClient::new(ch.distributor.clone())
            .explain_assignment(req(
                pb::ExplainAssignmentRequest {
                    deal_id: ids.deal.clone(),
                },
                token,
            ))
            .await
            .map(|_| 1)?,
        "ExplainAssignments" => DistributorServiceClient::new(ch.distributor.clone())
            .explain_assignments(req(
                pb::ExplainAssignmentsRequest {
                    deal_ids: vec![ids.deal.clone()],
                },
                token,
            ))
            .await?
            .into_inner()
            .assignments
            .len(),
        // The setup's deal is of the contact "vip": no relation of another account's is
        // forgotten (0), its own may be.
        "ForgetContacts" => {
            DistributorServiceClient::new(ch.distributor.clone())
                .forget_contacts(req(
                    pb::ForgetContactsRequest {
                        contact_keys: vec![
                            salesplan_platform::privacy::ContactKeys::dev()
                                .every_of("acme", "vip", "", "")
                                .pop()
                                .expect("a key"),
                        ],
                    },
                    token,
                ))
                .await?
                .into_inner()
                .forgotten as usize
        }
        "ListIntakeRejections" => DistributorServiceClient::new(ch.distributor.clone())
            .list_intake_rejections(req(
                pb::ListIntakeRejectionsRequest {
                    plan_id: ids.plan.clone(),
                    ..Default::default()
                },
                token,
            ))
            .await?
            .into_inner()
            .rejections
            .len(),
        "ListParkedEvents" => OutboxServiceClient::new(ch.deals.clone())
            .list_parked_events(req(
                pb::ListParkedEventsRequest {
                    account_id: "acme".into(),
                    ..Default::default()
                },
                token,
            ))
            .await?
            .into_inner()
            .events
            .len(),
        "ReplayParkedEvents" => {
            OutboxServiceClient::new(ch.deals.clone())
                .replay_parked_events(req(
                    pb::ReplayParkedEventsRequest {
                        ids: (1..100).collect(),
                    },
                    token,
                ))
                .await?
                .into_inner()
                .replayed as usize
        }
        // The setup's deal is of the contact "vip": how many of its deals were erased.
        "EraseContact" => {
            salesplan_proto::v1::contact_service_client::ContactServiceClient::new(ch.deals.clone())
                .erase_contact(req(
                    pb::EraseContactRequest {
                        external_id: "vip".into(),
                        ..Default::default()
                    },
                    token,
                ))
                .await?
                .into_inner()
                .deals_erased_in_total as usize
        }
        "ExportContact" => {
            salesplan_proto::v1::contact_service_client::ContactServiceClient::new(ch.deals.clone())
                .export_contact(req(
                    pb::ExportContactRequest {
                        external_id: "vip".into(),
                        ..Default::default()
                    },
                    token,
                ))
                .await?
                .into_inner()
                .deals
                .len()
        }
        // m1 of the account is paused (version 1): another account's calls see and change
        // their own m1 (version 0, then 1), never this one.
        "GetAvailability" => managers(ch)
            .get_availability(req(
                pb::GetAvailabilityRequest {
                    manager_id: "m1".into(),
                },
                token,
            ))
            .await?
            .into_inner()
            .availability
            .map_or(0, |a| a.version as usize),
        "ListAvailability" => managers(ch)
            .list_availability(req(pb::ListAvailabilityRequest::default(), token))
            .await?
            .into_inner()
            .managers
            .len(),
        "SetSchedule" => managers(ch)
            .set_schedule(req(
                pb::SetScheduleRequest {
                    manager_id: "m1".into(),
                    schedule: Some(pb::Schedule::default()),
                },
                token,
            ))
            .await?
            .into_inner()
            .availability
            .map_or(0, |a| a.version as usize - 1),
        "SetPaused" => managers(ch)
            .set_paused(req(
                pb::SetPausedRequest {
                    manager_id: "m1".into(),
                    paused: false,
                },
                token,
            ))
            .await?
            .into_inner()
            .availability
            .map_or(0, |a| a.version as usize - 1),
        other => panic!("unknown method {other}"),
    })
}

fn managers(ch: &Channels) -> pb::manager_service_client::ManagerServiceClient<Channel> {
    pb::manager_service_client::ManagerServiceClient::new(ch.deals.clone())
}

async fn setup(stack: &Stack) -> anyhow::Result<(Channels, Ids)> {
    let channels = Channels {
        deals: stack.channel(&stack.deal_service).await?,
        intake: stack.channel(&stack.tunnel_listener).await?,
        reports: stack.channel(&stack.reporting).await?,
        distributor: stack.channel(&stack.distributor).await?,
    };
    let acme = stack.token("acme", "boss", ALL);
    let plan = create_plan(
        channels.deals.clone(),
        &acme,
        plan_request(
            "Secret",
            Mode::Manual,
            Strategy::Unspecified,
            false,
            &["m1", "m2"],
        ),
    )
    .await?;
    let plan = PlanServiceClient::new(channels.deals.clone())
        .set_loss_reasons(outgoing(
            pb::SetLossReasonsRequest {
                plan_id: plan.id.clone(),
                require_reason: false,
                reasons: vec![pb::LossReasonInput {
                    id: String::new(),
                    name: "Price".into(),
                }],
            },
            &acme,
        ))
        .await?
        .into_inner()
        .plan
        .expect("plan");
    let deal = DealServiceClient::new(channels.deals.clone())
        .create_deal(outgoing(
            pb::CreateDealRequest {
                plan_id: plan.id.clone(),
                contact: Some(pb::Contact {
                    external_id: "vip".into(),
                    ..Default::default()
                }),
                manager_id: Some("m1".into()),
                idempotency_key: "acme-1".into(),
                ..Default::default()
            },
            &acme,
        ))
        .await?
        .into_inner()
        .deal
        .expect("deal");
    managers(&channels)
        .set_paused(outgoing(
            pb::SetPausedRequest {
                manager_id: "m1".into(),
                paused: true,
            },
            &acme,
        ))
        .await?;
    let ids = Ids {
        stage: plan.stages[0].id.clone(),
        won: plan
            .stages
            .iter()
            .find(|s| s.kind == pb::StageKind::Won as i32)
            .expect("won")
            .id
            .clone(),
        plan: plan.id,
        deal: deal.id,
    };
    Ok((channels, ids))
}

/// The list the tests walk is every RPC the services offer: a new method cannot be
/// added without being tried here.
#[test]
fn the_method_list_is_every_rpc() -> anyhow::Result<()> {
    use prost::Message as _;
    let set = prost_types::FileDescriptorSet::decode(salesplan_proto::FILE_DESCRIPTOR_SET)?;
    let mut offered: Vec<String> = set
        .file
        .iter()
        .flat_map(|file| &file.service)
        .flat_map(|service| &service.method)
        .filter_map(|method| method.name.clone())
        .collect();
    offered.sort();
    let mut listed: Vec<String> = METHODS.iter().map(|m| (*m).to_owned()).collect();
    listed.sort();
    assert_eq!(listed, offered);
    Ok(())
}

#[tokio::test]
async fn no_bad_token_gets_through_any_method() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let (channels, ids) = setup(&stack).await?;
    let expired = stack.token_expired("acme", "boss", ALL);
    let foreign_key = TokenIssuer::hs256(b"a-key-nobody-here-trusts-at-all").issue(
        &Actor::new("acme", "boss", ALL.iter().copied()),
        Duration::from_secs(60),
    )?;
    let cases: [(&str, Option<&str>); 4] = [
        ("no token", None),
        ("malformed", Some("not.a.jwt")),
        ("signed by another key", Some(&foreign_key)),
        ("expired", Some(&expired)),
    ];
    for method in METHODS {
        for (case, token) in &cases {
            let err = call(&channels, method, *token, &ids)
                .await
                .expect_err(&format!("{method} with {case}"));
            assert_eq!(
                err.code(),
                Code::Unauthenticated,
                "{method} with {case}: {err:?}"
            );
        }
    }
    // The account's data is untouched.
    let acme = stack.token(
        "acme",
        "viewer",
        &[
            salesplan_platform::Permission::DealsRead,
            salesplan_platform::Permission::ReportsRead,
        ],
    );
    let plan = PlanServiceClient::new(channels.deals.clone())
        .get_plan(outgoing(
            pb::GetPlanRequest {
                plan_id: ids.plan.clone(),
                with_availability: false,
            },
            &acme,
        ))
        .await?
        .into_inner()
        .plan
        .expect("plan");
    assert_eq!((plan.name.as_str(), plan.archived), ("Secret", false));
    stack.stop().await
}

#[tokio::test]
async fn another_account_neither_sees_nor_changes_anything() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let (channels, ids) = setup(&stack).await?;
    let globex = stack.token("globex", "boss", ALL);
    for method in METHODS {
        match call(&channels, method, Some(&globex), &ids).await {
            Err(status) => assert_eq!(status.code(), Code::NotFound, "{method}: {status:?}"),
            // Creating its own plan is allowed; everything else shows nothing of acme.
            Ok(n) if *method == "CreatePlan" => assert_eq!(n, 1),
            Ok(n) => assert_eq!(n, 0, "{method} showed or changed {n} of acme's items"),
        }
    }
    // Nothing of acme changed.
    let acme = stack.token(
        "acme",
        "viewer",
        &[
            salesplan_platform::Permission::DealsRead,
            salesplan_platform::Permission::ReportsRead,
        ],
    );
    let deal = DealServiceClient::new(channels.deals.clone())
        .get_deal(outgoing(
            pb::GetDealRequest {
                deal_id: ids.deal.clone(),
                ..Default::default()
            },
            &acme,
        ))
        .await?
        .into_inner()
        .deal
        .expect("deal");
    assert_eq!((deal.version, deal.manager_id.as_deref()), (1, Some("m1")));
    let m1 = managers(&channels)
        .get_availability(outgoing(
            pb::GetAvailabilityRequest {
                manager_id: "m1".into(),
            },
            &acme,
        ))
        .await?
        .into_inner()
        .availability
        .expect("availability");
    assert_eq!((m1.version, m1.paused), (1, true), "acme's m1 is as it was");
    stack.stop().await
}

#[tokio::test]
async fn each_permission_is_required_where_it_should_be() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let (channels, ids) = setup(&stack).await?;
    // A manager of the account with no permissions, who does not own the deal.
    let plain = stack.token("acme", "m2", &[]);
    let needs: &[(&str, &str)] = &[
        ("CreatePlan", "plans:admin"),
        ("UpdatePlan", "plans:admin"),
        ("ArchivePlan", "plans:admin"),
        ("UnarchivePlan", "plans:admin"),
        ("SetPlanManagers", "plans:admin"),
        ("AddStage", "plans:admin"),
        ("UpdateStage", "plans:admin"),
        ("ReorderStages", "plans:admin"),
        ("DeleteStage", "plans:admin"),
        ("SetLossReasons", "plans:admin"),
        ("CreateDeal", "deals:edit_all"),
        ("CreateDeals", "deals:edit_all"),
        ("UpdateDeal", "deals:edit_all"),
        ("MoveDeal", "deals:edit_all"),
        ("AssignDeal", "deals:edit_all"),
        // m2 accepting m1's deal: only its manager may, whatever the permissions.
        ("AcceptDeal", "only the deal's manager"),
        ("ReopenDeal", "deals:edit_all"),
        ("TransferDeals", "deals:bulk_edit"),
        ("BulkMoveDeals", "deals:bulk_edit"),
        ("BulkAssignDeals", "deals:bulk_edit"),
        ("AddToSalesPlan", "intake:write"),
        ("AddAudience", "intake:write"),
        ("ListIntakeRejections", "plans:admin"),
        ("ListParkedEvents", "plans:admin"),
        ("ReplayParkedEvents", "plans:admin"),
        ("GetPlan", "deals:read"),
        ("ListPlans", "deals:read"),
        ("GetDeal", "deals:read"),
        ("ListDeals", "deals:read"),
        ("GetBoard", "deals:read"),
        ("WatchDeals", "deals:read"),
        ("GetDealHistory", "deals:read"),
        ("ExplainAssignment", "deals:read"),
        ("ExplainAssignments", "deals:read"),
        ("PipelineSummary", "reports:read"),
        ("LossReasons", "reports:read"),
        ("StageLosses", "reports:read"),
        ("ResponseTimes", "reports:read"),
        ("EraseContact", "contacts:erase"),
        ("ForgetContacts", "contacts:erase"),
        ("ExportContact", "deals:read"),
        ("GetAvailability", "deals:read"),
        ("ListAvailability", "deals:read"),
        ("SetSchedule", "plans:admin"),
        // Pausing another manager (m2 may pause only themself).
        ("SetPaused", "plans:admin"),
    ];
    for (method, permission) in needs {
        let err = call(&channels, method, Some(&plain), &ids)
            .await
            .expect_err(method);
        assert_eq!(err.code(), Code::PermissionDenied, "{method}: {err:?}");
        assert!(
            err.message().contains(permission),
            "{method}: {}",
            err.message()
        );
    }
    // Reopening needs both deals:edit_all and deals:bulk_edit.
    for one in [Permission::DealsEditAll, Permission::DealsBulkEdit] {
        let token = stack.token("acme", "half", &[one]);
        let err = call(&channels, "ReopenDeal", Some(&token), &ids)
            .await
            .expect_err("reopen");
        assert_eq!(err.code(), Code::PermissionDenied);
    }
    // Reading: deals:read for plans, deals, boards, history and explanations, granted by
    // every permission that changes them; reports:read for reports, granted by plans:admin.
    // A funnel's token (intake:write) reads nothing.
    let deal_reads = [
        "GetPlan",
        "ListPlans",
        "GetDeal",
        "ListDeals",
        "GetBoard",
        "WatchDeals",
        "GetDealHistory",
        "ExplainAssignment",
        "ExplainAssignments",
        "ExportContact",
    ];
    let report_reads = [
        "PipelineSummary",
        "LossReasons",
        "StageLosses",
        "ResponseTimes",
    ];
    let readers = [
        (vec![Permission::DealsRead], true, false),
        (vec![Permission::ReportsRead], false, true),
        (vec![Permission::DealsEditAll], true, false),
        (vec![Permission::DealsBulkEdit], true, false),
        (vec![Permission::PlansAdmin], true, true),
        (vec![Permission::IntakeWrite], false, false),
    ];
    for (perms, reads_deals, reads_reports) in readers {
        let token = stack.token("acme", "reader", &perms);
        for (methods, allowed) in [
            (&deal_reads[..], reads_deals),
            (&report_reads[..], reads_reports),
        ] {
            for method in methods {
                let answer = call(&channels, method, Some(&token), &ids).await;
                // Allowed: past the permission check (a deal created directly has no
                // assignment to explain: NOT_FOUND is an answer, not a refusal).
                let denied = matches!(&answer, Err(err) if err.code() == Code::PermissionDenied);
                let answered =
                    answer.is_ok() || matches!(&answer, Err(err) if err.code() == Code::NotFound);
                assert!(
                    if allowed { answered } else { denied },
                    "{method} with {perms:?}: {answer:?}"
                );
            }
        }
    }
    // A create repeating a deal's key answers with the deal's id alone to a caller who may
    // not read it: a funnel can work out intake ids, and a key is no way around deals:read.
    for (perms, whole) in [
        (vec![Permission::IntakeWrite], false),
        (vec![], false),
        (vec![Permission::DealsRead], true),
    ] {
        let token = stack.token("acme", "funnel", &perms);
        let answer = DealServiceClient::new(channels.deals.clone())
            .create_deal(outgoing(
                pb::CreateDealRequest {
                    plan_id: ids.plan.clone(),
                    contact: Some(pb::Contact {
                        external_id: "vip".into(),
                        ..Default::default()
                    }),
                    idempotency_key: "acme-1".into(),
                    ..Default::default()
                },
                &token,
            ))
            .await?
            .into_inner();
        let deal = answer.deal.expect("the deal");
        assert!(!answer.created);
        assert_eq!(deal.id, ids.deal);
        assert_eq!(deal.contact.is_some(), whole, "{perms:?}: {deal:?}");
        assert_eq!(deal.manager_id.is_some(), whole, "{perms:?}: {deal:?}");
    }
    stack.stop().await
}
