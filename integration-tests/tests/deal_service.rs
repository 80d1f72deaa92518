//! deal-service against real PostgreSQL and JetStream: plans, stages, reasons, deals,
//! list and board, bulk changes, reopening, history, permissions and isolation.

use std::collections::{HashMap, HashSet};

use integration_tests::{
    postgres::{dangling_references, kept_counts_drift},
    stack::DealStack,
};
use salesplan_platform::{Permission, grpc::outgoing};
use salesplan_proto::v1::{
    self as pb, deal_service_client::DealServiceClient, plan_service_client::PlanServiceClient,
};
use tonic::{Code, transport::Channel};

const ACCOUNT: &str = "acme";
const ADMIN: &[Permission] = &[Permission::PlansAdmin];
const BOSS: &[Permission] = &[Permission::DealsEditAll, Permission::DealsBulkEdit];

struct Clients {
    plans: PlanServiceClient<Channel>,
    deals: DealServiceClient<Channel>,
}

/// The board's kept counts still equal a recount of the deals, and every deal and
/// history row points at what exists (no foreign keys check it, see migration 0004).
async fn assert_store_consistent(stack: &DealStack) -> anyhow::Result<()> {
    let pool = stack.pool().await?;
    let drift = kept_counts_drift(&pool).await?;
    assert!(
        drift.is_empty(),
        "kept counts disagree with the deals: {drift:?}"
    );
    assert_eq!(
        dangling_references(&pool).await?,
        (0, 0),
        "dangling references"
    );
    Ok(())
}

async fn clients(stack: &DealStack) -> anyhow::Result<Clients> {
    let channel = stack.channel().await?;
    Ok(Clients {
        plans: PlanServiceClient::new(channel.clone()),
        deals: DealServiceClient::new(channel),
    })
}

fn plan_request(managers: &[&str]) -> pb::CreatePlanRequest {
    pb::CreatePlanRequest {
        name: "Sales".into(),
        average_amount: Some(pb::Money {
            amount_minor: 1_000,
            currency: "USD".into(),
        }),
        chat_label: "SALES".into(),
        distribution: Some(pb::Distribution {
            mode: pb::distribution::Mode::Manual as i32,
            ..Default::default()
        }),
        manager_ids: managers.iter().map(|m| (*m).to_owned()).collect(),
        members: vec![],
    }
}

async fn create_plan(c: &mut Clients, token: &str, managers: &[&str]) -> anyhow::Result<pb::Plan> {
    Ok(c.plans
        .create_plan(outgoing(plan_request(managers), token))
        .await?
        .into_inner()
        .plan
        .expect("plan"))
}

fn contact(i: usize) -> pb::Contact {
    pb::Contact {
        external_id: format!("ext-{i}"),
        name: format!("Person {i}"),
        email: format!("person{i}@example.com"),
        phone: format!("+1 (555) 010-{i:04}"),
    }
}

async fn create_deal(
    c: &mut Clients,
    token: &str,
    plan: &pb::Plan,
    i: usize,
    manager: Option<&str>,
) -> anyhow::Result<pb::Deal> {
    Ok(c.deals
        .create_deal(outgoing(
            pb::CreateDealRequest {
                plan_id: plan.id.clone(),
                contact: Some(contact(i)),
                manager_id: manager.map(str::to_owned),
                idempotency_key: format!("key-{}-{i}", plan.id),
                amount: Some(pb::Money {
                    amount_minor: 100 * (i as i64 + 1),
                    currency: "USD".into(),
                }),
                ..Default::default()
            },
            token,
        ))
        .await?
        .into_inner()
        .deal
        .expect("deal"))
}

async fn move_deal(
    c: &mut Clients,
    token: &str,
    deal: &pb::Deal,
    stage: &str,
    reason: Option<&str>,
) -> Result<pb::Deal, tonic::Status> {
    c.deals
        .move_deal(outgoing(
            pb::MoveDealRequest {
                deal_id: deal.id.clone(),
                expected_version: deal.version,
                stage_id: stage.to_owned(),
                loss_reason_id: reason.map(str::to_owned),
            },
            token,
        ))
        .await
        .map(|r| r.into_inner().deal.expect("deal"))
}

async fn reopen(c: &mut Clients, token: &str, deal: &pb::Deal) -> Result<pb::Deal, tonic::Status> {
    c.deals
        .reopen_deal(outgoing(
            pb::ReopenDealRequest {
                deal_id: deal.id.clone(),
                expected_version: deal.version,
            },
            token,
        ))
        .await
        .map(|r| r.into_inner().deal.expect("deal"))
}

fn stage_named<'a>(plan: &'a pb::Plan, name: &str) -> &'a pb::Stage {
    plan.stages
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no stage {name}"))
}

#[tokio::test]
async fn plans_stages_managers_and_reasons() -> anyhow::Result<()> {
    let stack = DealStack::start().await?;
    let mut c = clients(&stack).await?;
    let admin = stack.token(ACCOUNT, "admin", ADMIN);
    let plan = create_plan(&mut c, &admin, &["m1", "m2"]).await?;
    let names: Vec<_> = plan.stages.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        ["New", "In progress", "Won", "Lost"],
        "usable at once"
    );

    // Update: twelve characters of a Cyrillic label are fine, thirteen are not.
    let update = |label: &str| pb::UpdatePlanRequest {
        plan_id: plan.id.clone(),
        chat_label: Some(label.into()),
        name: Some("Sales EU".into()),
        distribution: Some(pb::Distribution {
            mode: pb::distribution::Mode::Auto as i32,
            prefer_related: true,
            keep_related_when_unavailable: false,
            response_deadline_seconds: 0,
            max_reassignments: 0,
            strategy: pb::distribution::Strategy::LeastOpenDeals as i32,
        }),
        ..Default::default()
    };
    let updated = c
        .plans
        .update_plan(outgoing(update("Продажи2025!"), &admin))
        .await?
        .into_inner()
        .plan
        .expect("plan");
    assert_eq!(updated.chat_label, "Продажи2025!");
    assert_eq!(updated.name, "Sales EU");
    assert_eq!(updated.version, plan.version + 1);
    let err = c
        .plans
        .update_plan(outgoing(update("Продажи2025!!"), &admin))
        .await
        .expect_err("13 characters");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("chat_label:"));

    // Managers: kept in place, new ones appended, removed ones gone.
    let managers = c
        .plans
        .set_plan_managers(outgoing(
            pb::SetPlanManagersRequest {
                plan_id: plan.id.clone(),
                manager_ids: vec!["m3".into(), "m2".into()],
                ..Default::default()
            },
            &admin,
        ))
        .await?
        .into_inner()
        .plan
        .expect("plan")
        .manager_ids;
    assert_eq!(managers, ["m2", "m3"]);

    // Stages: add at a position, rename and recolour, reorder, delete.
    let added = c
        .plans
        .add_stage(outgoing(
            pb::AddStageRequest {
                plan_id: plan.id.clone(),
                name: "Qualified".into(),
                color: "#00AA00".into(),
                position: Some(1),
            },
            &admin,
        ))
        .await?
        .into_inner();
    let qualified = added.stage.expect("stage");
    assert_eq!(qualified.color, "#00aa00");
    let names: Vec<_> = added
        .plan
        .expect("plan")
        .stages
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, ["New", "Qualified", "In progress", "Won", "Lost"]);
    let err = c
        .plans
        .add_stage(outgoing(
            pb::AddStageRequest {
                plan_id: plan.id.clone(),
                name: "Bad".into(),
                color: "green".into(),
                position: None,
            },
            &admin,
        ))
        .await
        .expect_err("bad colour");
    assert!(err.message().starts_with("color:"), "{}", err.message());

    let renamed = c
        .plans
        .update_stage(outgoing(
            pb::UpdateStageRequest {
                stage_id: qualified.id.clone(),
                name: Some("Hot".into()),
                color: None,
            },
            &admin,
        ))
        .await?
        .into_inner()
        .plan
        .expect("plan");
    let open_ids: Vec<String> = renamed
        .stages
        .iter()
        .filter(|s| s.kind == pb::StageKind::Open as i32)
        .map(|s| s.id.clone())
        .rev()
        .collect();
    let reordered = c
        .plans
        .reorder_stages(outgoing(
            pb::ReorderStagesRequest {
                plan_id: plan.id.clone(),
                open_stage_ids: open_ids,
            },
            &admin,
        ))
        .await?
        .into_inner()
        .plan
        .expect("plan");
    let names: Vec<_> = reordered.stages.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["In progress", "Hot", "New", "Won", "Lost"]);
    let won_id = stage_named(&reordered, "Won").id.clone();
    let err = c
        .plans
        .reorder_stages(outgoing(
            pb::ReorderStagesRequest {
                plan_id: plan.id.clone(),
                open_stage_ids: vec![won_id.clone()],
            },
            &admin,
        ))
        .await
        .expect_err("WON is not reorderable");
    assert_eq!(err.code(), Code::InvalidArgument);

    // Deleting a stage that holds deals needs a target; the deals then move there.
    let boss = stack.token(ACCOUNT, "boss", BOSS);
    let hot = stage_named(&reordered, "Hot").id.clone();
    let deal = c
        .deals
        .create_deal(outgoing(
            pb::CreateDealRequest {
                plan_id: plan.id.clone(),
                stage_id: Some(hot.clone()),
                contact: Some(contact(1)),
                idempotency_key: "in-hot".into(),
                ..Default::default()
            },
            &boss,
        ))
        .await?
        .into_inner()
        .deal
        .expect("deal");
    let delete = |target: Option<String>| pb::DeleteStageRequest {
        stage_id: hot.clone(),
        target_stage_id: target,
    };
    let err = c
        .plans
        .delete_stage(outgoing(delete(None), &admin))
        .await
        .expect_err("holds a deal");
    assert_eq!(err.code(), Code::FailedPrecondition);
    let err = c
        .plans
        .delete_stage(outgoing(delete(Some(won_id)), &admin))
        .await
        .expect_err("target must be OPEN");
    assert_eq!(err.code(), Code::InvalidArgument);
    let new_id = stage_named(&reordered, "New").id.clone();
    let deleted = c
        .plans
        .delete_stage(outgoing(delete(Some(new_id.clone())), &admin))
        .await?
        .into_inner();
    assert_eq!(deleted.moved_deals, 1);
    let moved = c
        .deals
        .get_deal(outgoing(
            pb::GetDealRequest {
                deal_id: deal.id.clone(),
                ..Default::default()
            },
            &boss,
        ))
        .await?
        .into_inner()
        .deal
        .expect("deal");
    assert_eq!(moved.stage_id, new_id);
    assert_eq!(moved.version, deal.version + 1);

    // Reasons: add, rename, archive (kept, flagged) when a deal was lost with it, delete
    // when none was, require.
    let set = |reasons: Vec<pb::LossReasonInput>, require: bool| pb::SetLossReasonsRequest {
        plan_id: plan.id.clone(),
        require_reason: require,
        reasons,
    };
    let input = |id: &str, name: &str| pb::LossReasonInput {
        id: id.into(),
        name: name.into(),
    };
    let first = c
        .plans
        .set_loss_reasons(outgoing(
            set(
                vec![
                    input("", "Too expensive"),
                    input("", "No budget"),
                    input("", "Never used"),
                ],
                true,
            ),
            &admin,
        ))
        .await?
        .into_inner()
        .plan
        .expect("plan")
        .loss_reasons
        .expect("reasons");
    assert!(first.require_reason);
    let expensive = first.reasons[0].id.clone();
    let lost_deal = create_deal(&mut c, &boss, &plan, 900, None).await?;
    move_deal(
        &mut c,
        &boss,
        &lost_deal,
        &stage_named(&plan, "Lost").id,
        Some(&first.reasons[1].id),
    )
    .await?;
    let second = c
        .plans
        .set_loss_reasons(outgoing(
            set(vec![input(&expensive, "Price")], true),
            &admin,
        ))
        .await?
        .into_inner()
        .plan
        .expect("plan")
        .loss_reasons
        .expect("reasons");
    let summary: Vec<(&str, bool)> = second
        .reasons
        .iter()
        .map(|r| (r.name.as_str(), r.archived))
        .collect();
    assert_eq!(summary, [("Price", false), ("No budget", true)]);
    let err = c
        .plans
        .set_loss_reasons(outgoing(set(vec![], true), &admin))
        .await
        .expect_err("require without reasons");
    assert_eq!(err.code(), Code::InvalidArgument);

    // Permissions and accounts.
    let manager = stack.token(ACCOUNT, "m2", &[Permission::DealsEditAll]);
    let err = c
        .plans
        .archive_plan(outgoing(
            pb::ArchivePlanRequest {
                plan_id: plan.id.clone(),
            },
            &manager,
        ))
        .await
        .expect_err("not an admin");
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("plans:admin"));
    let stranger = stack.token("globex", "admin", ADMIN);
    let err = c
        .plans
        .get_plan(outgoing(
            pb::GetPlanRequest {
                plan_id: plan.id.clone(),
                with_availability: false,
            },
            &stranger,
        ))
        .await
        .expect_err("another account");
    assert_eq!(err.code(), Code::NotFound);
    let listed = c
        .plans
        .list_plans(outgoing(pb::ListPlansRequest::default(), &stranger))
        .await?
        .into_inner()
        .plans;
    assert!(listed.is_empty());

    // Archived: listed only on request, takes no new deals.
    c.plans
        .archive_plan(outgoing(
            pb::ArchivePlanRequest {
                plan_id: plan.id.clone(),
            },
            &admin,
        ))
        .await?;
    let listed = c
        .plans
        .list_plans(outgoing(
            pb::ListPlansRequest {
                include_archived: false,
                ..Default::default()
            },
            &admin,
        ))
        .await?
        .into_inner()
        .plans;
    assert!(listed.is_empty());
    let listed = c
        .plans
        .list_plans(outgoing(
            pb::ListPlansRequest {
                include_archived: true,
                ..Default::default()
            },
            &admin,
        ))
        .await?
        .into_inner()
        .plans;
    assert_eq!(listed.len(), 1);
    let err = create_deal(&mut c, &boss, &plan, 99, None)
        .await
        .expect_err("archived");
    assert_eq!(
        err.downcast_ref::<tonic::Status>().map(|s| s.code()),
        Some(Code::FailedPrecondition)
    );
    assert_store_consistent(&stack).await?;
    stack.stop().await
}

#[tokio::test]
async fn moving_closing_reopening_and_history() -> anyhow::Result<()> {
    let stack = DealStack::start().await?;
    let mut c = clients(&stack).await?;
    let admin = stack.token(ACCOUNT, "admin", ADMIN);
    let boss = stack.token(ACCOUNT, "boss", BOSS);
    let m1 = stack.token(
        ACCOUNT,
        "m1",
        &[
            salesplan_platform::Permission::DealsRead,
            salesplan_platform::Permission::ReportsRead,
        ],
    );
    let plan = create_plan(&mut c, &admin, &["m1", "m2"]).await?;
    let plan = c
        .plans
        .set_loss_reasons(outgoing(
            pb::SetLossReasonsRequest {
                plan_id: plan.id.clone(),
                require_reason: true,
                reasons: vec![pb::LossReasonInput {
                    id: String::new(),
                    name: "Too expensive".into(),
                }],
            },
            &admin,
        ))
        .await?
        .into_inner()
        .plan
        .expect("plan");
    let reason = plan.loss_reasons.as_ref().expect("reasons").reasons[0]
        .id
        .clone();
    let (new, progress, won, lost) = (
        stage_named(&plan, "New").id.clone(),
        stage_named(&plan, "In progress").id.clone(),
        stage_named(&plan, "Won").id.clone(),
        stage_named(&plan, "Lost").id.clone(),
    );

    // Idempotent create.
    let deal = create_deal(&mut c, &boss, &plan, 1, Some("m1")).await?;
    let again = create_deal(&mut c, &boss, &plan, 1, Some("m1")).await?;
    assert_eq!(again.id, deal.id);

    // A manager moves their own deal; not someone else's.
    let moved = move_deal(&mut c, &m1, &deal, &progress, None).await?;
    assert_eq!(moved.stage_id, progress);
    let m2 = stack.token(
        ACCOUNT,
        "m2",
        &[
            salesplan_platform::Permission::DealsRead,
            salesplan_platform::Permission::ReportsRead,
        ],
    );
    let err = move_deal(&mut c, &m2, &moved, &new, None)
        .await
        .expect_err("not theirs");
    assert_eq!(err.code(), Code::PermissionDenied);

    // A stale version is refused and nothing is written.
    let err = move_deal(&mut c, &m1, &deal, &new, None)
        .await
        .expect_err("stale");
    assert_eq!(err.code(), Code::Aborted);
    let current = c
        .deals
        .get_deal(outgoing(
            pb::GetDealRequest {
                deal_id: deal.id.clone(),
                ..Default::default()
            },
            &m1,
        ))
        .await?
        .into_inner()
        .deal
        .expect("deal");
    assert_eq!(
        (current.stage_id.as_str(), current.version),
        (progress.as_str(), moved.version)
    );

    // LOST needs one of the plan's reasons.
    let err = move_deal(&mut c, &m1, &moved, &lost, None)
        .await
        .expect_err("no reason");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().starts_with("loss_reason_id:"),
        "{}",
        err.message()
    );
    let lost_deal = move_deal(&mut c, &m1, &moved, &lost, Some(&reason)).await?;
    assert_eq!(lost_deal.status, pb::DealStatus::Lost as i32);
    assert_eq!(lost_deal.loss_reason_id.as_deref(), Some(reason.as_str()));
    assert_eq!(
        lost_deal.stage_before_close_id.as_deref(),
        Some(progress.as_str())
    );
    assert!(lost_deal.closed_at.is_some());
    let err = move_deal(&mut c, &m1, &lost_deal, &new, None)
        .await
        .expect_err("closed");
    assert_eq!(err.code(), Code::FailedPrecondition);

    // Reopening needs both permissions.
    for perms in [
        &[Permission::DealsEditAll][..],
        &[Permission::DealsBulkEdit][..],
    ] {
        let token = stack.token(ACCOUNT, "half-boss", perms);
        let err = reopen(&mut c, &token, &lost_deal)
            .await
            .expect_err("one permission only");
        assert_eq!(err.code(), Code::PermissionDenied);
    }
    let reopened = reopen(&mut c, &boss, &lost_deal).await?;
    assert_eq!(reopened.stage_id, progress, "back to the stage it left");
    assert_eq!(reopened.status, pb::DealStatus::Open as i32);
    assert!(reopened.closed_at.is_none() && reopened.loss_reason_id.is_none());
    // Open already (a retry whose answer was lost): done, nothing changes.
    assert_eq!(reopen(&mut c, &boss, &reopened).await?, reopened);

    // From WON: the last OPEN stage.
    let first = move_deal(&mut c, &m1, &reopened, &new, None).await?;
    let won_deal = move_deal(&mut c, &m1, &first, &won, None).await?;
    let back = reopen(&mut c, &boss, &won_deal).await?;
    assert_eq!(back.stage_id, progress);

    // From LOST after the remembered stage was deleted: the last OPEN stage.
    let other = create_deal(&mut c, &boss, &plan, 2, Some("m1")).await?;
    let other = move_deal(&mut c, &m1, &other, &lost, Some(&reason)).await?;
    assert_eq!(other.stage_before_close_id.as_deref(), Some(new.as_str()));
    c.plans
        .delete_stage(outgoing(
            pb::DeleteStageRequest {
                stage_id: new.clone(),
                target_stage_id: None,
            },
            &admin,
        ))
        .await?;
    let other = reopen(&mut c, &boss, &other).await?;
    assert_eq!(other.stage_id, progress);

    // Assign, edit, and the history of it all.
    let assigned = c
        .deals
        .assign_deal(outgoing(
            pb::AssignDealRequest {
                deal_id: back.id.clone(),
                expected_version: back.version,
                manager_id: Some("m2".into()),
                ..Default::default()
            },
            &boss,
        ))
        .await?
        .into_inner()
        .deal
        .expect("deal");
    let err = c
        .deals
        .assign_deal(outgoing(
            pb::AssignDealRequest {
                deal_id: back.id.clone(),
                expected_version: assigned.version,
                manager_id: Some("stranger".into()),
                ..Default::default()
            },
            &boss,
        ))
        .await
        .expect_err("not a member");
    assert_eq!(err.code(), Code::FailedPrecondition);
    let edited = c
        .deals
        .update_deal(outgoing(
            pb::UpdateDealRequest {
                deal_id: back.id.clone(),
                expected_version: assigned.version,
                title: Some("Big order".into()),
                amount: Some(pb::Money {
                    amount_minor: 500_000,
                    currency: "USD".into(),
                }),
                contact: None,
            },
            &boss,
        ))
        .await?
        .into_inner()
        .deal
        .expect("deal");
    assert_eq!(edited.title, "Big order");

    let history = c
        .deals
        .get_deal_history(outgoing(
            pb::GetDealHistoryRequest {
                deal_id: deal.id.clone(),
                ..Default::default()
            },
            &m1,
        ))
        .await?
        .into_inner()
        .entries;
    use pb::HistoryAction as A;
    let actions: Vec<i32> = history.iter().map(|e| e.action).collect();
    assert_eq!(
        actions,
        [
            A::Created,
            A::Moved,
            A::Closed,
            A::Reopened,
            A::Moved,
            A::Closed,
            A::Reopened,
            A::Assigned,
            A::Edited
        ]
        .map(|a| a as i32)
    );
    let reopen_entry = &history[3];
    assert_eq!(
        (reopen_entry.from.as_str(), reopen_entry.to.as_str()),
        (lost.as_str(), progress.as_str())
    );
    assert_eq!(reopen_entry.actor_id, "boss");
    assert_eq!(reopen_entry.status, pb::DealStatus::Lost as i32);
    assert_eq!(history[2].loss_reason_id.as_deref(), Some(reason.as_str()));
    assert_eq!(
        (history[7].from.as_str(), history[7].to.as_str()),
        ("m1", "m2")
    );
    assert!(history.iter().all(|e| e.at.is_some()));

    // Another account sees neither the deal nor its history.
    let stranger = stack.token("globex", "boss", BOSS);
    let err = c
        .deals
        .get_deal_history(outgoing(
            pb::GetDealHistoryRequest {
                deal_id: deal.id.clone(),
                ..Default::default()
            },
            &stranger,
        ))
        .await
        .expect_err("another account");
    assert_eq!(err.code(), Code::NotFound);
    let err = reopen(&mut c, &stranger, &lost_deal)
        .await
        .expect_err("another account");
    assert_eq!(err.code(), Code::NotFound);
    assert_store_consistent(&stack).await?;
    stack.stop().await
}

async fn list(
    c: &mut Clients,
    token: &str,
    filter: pb::DealFilter,
    page_size: i32,
    page_token: String,
) -> Result<pb::ListDealsResponse, tonic::Status> {
    c.deals
        .list_deals(outgoing(
            pb::ListDealsRequest {
                filter: Some(filter),
                sort: None,
                page_size,
                page_token,
                min_consistency_token: String::new(),
            },
            token,
        ))
        .await
        .map(|r| r.into_inner())
}

/// Per column, the board's count and sums equal the list's totals for the same filter and
/// stage, its cards start that list, and "load more" continues it.
async fn board_agrees_with_list(
    c: &mut Clients,
    boss: &str,
    plan: &pb::Plan,
    filter: pb::DealFilter,
) -> anyhow::Result<()> {
    let board = c
        .deals
        .get_board(outgoing(
            pb::GetBoardRequest {
                plan_id: plan.id.clone(),
                filter: Some(filter.clone()),
                sort: None,
                cards_per_stage: 3,
                min_consistency_token: String::new(),
            },
            boss,
        ))
        .await?
        .into_inner();
    assert_eq!(board.columns.len(), 4);
    let mut board_total = 0;
    for column in &board.columns {
        let stage = column.stage.as_ref().expect("stage");
        let column_filter = pb::DealFilter {
            stage_ids: vec![stage.id.clone()],
            ..filter.clone()
        };
        let listed = list(c, boss, column_filter.clone(), 500, String::new()).await?;
        assert_eq!(column.count, listed.total_count, "{}", stage.name);
        assert_eq!(column.amounts, listed.total_amounts, "{}", stage.name);
        assert!(column.deals.len() <= 3);
        let cards: Vec<&str> = column.deals.iter().map(|d| d.id.as_str()).collect();
        let first: Vec<&str> = listed.deals.iter().take(3).map(|d| d.id.as_str()).collect();
        assert_eq!(cards, first, "{}: the column's first cards", stage.name);
        board_total += column.count;
        // "Load more" continues the column through ListDeals.
        if !column.next_page_token.is_empty() {
            let more = list(c, boss, column_filter, 500, column.next_page_token.clone()).await?;
            assert_eq!(column.deals.len() + more.deals.len(), listed.deals.len());
        }
    }
    assert_eq!(board.total_count, board_total);
    let listed = list(c, boss, filter, 1, String::new()).await?;
    assert_eq!(board.total_count, listed.total_count);
    assert_eq!(board.total_amounts, listed.total_amounts);
    Ok(())
}

#[tokio::test]
async fn list_search_pagination_and_board_agree() -> anyhow::Result<()> {
    let stack = DealStack::start().await?;
    let mut c = clients(&stack).await?;
    let admin = stack.token(ACCOUNT, "admin", ADMIN);
    let boss = stack.token(ACCOUNT, "boss", BOSS);
    let plan = create_plan(&mut c, &admin, &["m1", "m2", "m3"]).await?;
    let progress = stage_named(&plan, "In progress").id.clone();
    let won = stage_named(&plan, "Won").id.clone();
    let mut deals = Vec::new();
    for i in 0..40 {
        let manager = ["m1", "m2", "m3"][i % 3];
        let mut deal = create_deal(&mut c, &boss, &plan, i, Some(manager)).await?;
        if i % 4 == 1 {
            deal = move_deal(&mut c, &boss, &deal, &progress, None).await?;
        } else if i % 4 == 2 {
            deal = move_deal(&mut c, &boss, &deal, &won, None).await?;
        }
        deals.push(deal);
    }
    let plan_filter = || pb::DealFilter {
        plan_id: plan.id.clone(),
        ..Default::default()
    };

    // Search: a phone written differently than stored, e-mail and name fragments, and
    // LIKE metacharacters taken literally.
    let search = |text: &str| pb::DealFilter {
        search: text.into(),
        ..plan_filter()
    };
    let found = list(&mut c, &boss, search("555.010.0007"), 50, String::new()).await?;
    assert_eq!(found.total_count, 1);
    assert_eq!(
        found.deals[0].contact.as_ref().map(|c| c.name.as_str()),
        Some("Person 7")
    );
    let found = list(&mut c, &boss, search("(555) 010-0012"), 50, String::new()).await?;
    assert_eq!(found.deals.len(), 1);
    let found = list(&mut c, &boss, search("PERSON1@EXAMPLE"), 50, String::new()).await?;
    assert_eq!(found.total_count, 1);
    let found = list(&mut c, &boss, search("PERSON 27"), 50, String::new()).await?;
    let names: HashSet<String> = found
        .deals
        .iter()
        .filter_map(|d| d.contact.as_ref().map(|c| c.name.clone()))
        .collect();
    assert_eq!(
        names,
        HashSet::from(["Person 27".to_owned()]),
        "case-insensitive"
    );
    // Totals of a search: counted from a first page that holds every match, aggregated
    // otherwise — the same either way ("Person 1" and "Person 10" to "Person 19").
    let whole = list(&mut c, &boss, search("person 1"), 50, String::new()).await?;
    let first = list(&mut c, &boss, search("person 1"), 4, String::new()).await?;
    let second = list(
        &mut c,
        &boss,
        search("person 1"),
        4,
        first.next_page_token.clone(),
    )
    .await?;
    for page in [&whole, &first, &second] {
        assert_eq!(page.total_count, 11);
        assert_eq!(page.total_amounts, whole.total_amounts);
    }
    assert_eq!(whole.deals.len(), 11);
    let amount: i64 = whole
        .deals
        .iter()
        .filter_map(|d| d.amount.as_ref())
        .map(|m| m.amount_minor)
        .sum();
    assert_eq!(
        whole
            .total_amounts
            .iter()
            .map(|m| m.amount_minor)
            .sum::<i64>(),
        amount
    );
    // As wildcards, `%` and `_` would match "person 1…"; they are literal text.
    for literal in ["person%1", "person_1", "person\\", "person'"] {
        let found = list(&mut c, &boss, search(literal), 50, String::new()).await?;
        assert_eq!(found.total_count, 0, "{literal} is literal text");
    }
    // A search the trigram index cannot serve is refused, not run over every deal.
    for short in ["%", "ъ", "p 1"] {
        let err = list(&mut c, &boss, search(short), 50, String::new())
            .await
            .expect_err(short);
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(
            err.message().starts_with("filter.search: needs at least 3"),
            "{err:?}"
        );
    }

    // Pagination walks every deal once, newest first, with the totals on every page.
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = list(&mut c, &boss, plan_filter(), 7, token).await?;
        assert_eq!(page.total_count, 40);
        assert_eq!(page.total_amounts.len(), 1);
        seen.extend(page.deals.iter().map(|d| d.id.clone()));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let mut expected: Vec<String> = deals.iter().rev().map(|d| d.id.clone()).collect();
    assert_eq!(seen, expected, "newest first, each once");
    expected.sort();
    let first = list(&mut c, &boss, plan_filter(), 7, String::new()).await?;
    let err = list(&mut c, &boss, search("Person"), 7, first.next_page_token)
        .await
        .expect_err("token of another filter");
    assert_eq!(err.code(), Code::InvalidArgument);
    let capped = list(&mut c, &boss, plan_filter(), 1_000_000, String::new()).await?;
    assert_eq!(capped.deals.len(), 40);

    // Board: per column count and sum equal the list's totals for the same filter.
    for filter in [
        plan_filter(),
        pb::DealFilter {
            manager_ids: vec!["m2".into()],
            ..plan_filter()
        },
        pb::DealFilter {
            search: "person 1".into(),
            ..plan_filter()
        },
    ] {
        board_agrees_with_list(&mut c, &boss, &plan, filter).await?;
    }
    assert_store_consistent(&stack).await?;
    stack.stop().await
}

/// A board with a search is built from one read of the matches when they are few (at most
/// 500), else column by column: both give the same columns as the list.
#[tokio::test]
async fn board_search_with_few_and_with_many_matches() -> anyhow::Result<()> {
    let stack = DealStack::start().await?;
    let mut c = clients(&stack).await?;
    let admin = stack.token(ACCOUNT, "admin", ADMIN);
    let boss = stack.token(ACCOUNT, "boss", BOSS);
    let plan = create_plan(&mut c, &admin, &["m1", "m2"]).await?;
    let stages = [
        plan.stages[0].id.clone(),
        stage_named(&plan, "In progress").id.clone(),
    ];
    let requests: Vec<pb::CreateDealRequest> = (0..520)
        .map(|i| pb::CreateDealRequest {
            plan_id: plan.id.clone(),
            stage_id: Some(stages[i % 2].clone()),
            contact: Some(pb::Contact {
                external_id: format!("bulk-{i}"),
                name: format!("Bulk {i}"),
                ..Default::default()
            }),
            manager_id: Some(["m1", "m2"][i % 2].into()),
            idempotency_key: format!("bulk-{i}"),
            amount: Some(pb::Money {
                amount_minor: i as i64,
                currency: ["USD", "EUR"][i % 3 % 2].into(),
            }),
            ..Default::default()
        })
        .collect();
    let created = c
        .deals
        .create_deals(outgoing(pb::CreateDealsRequest { deals: requests }, &boss))
        .await?
        .into_inner()
        .results;
    assert!(created.iter().all(|r| r.code == 0 && r.created));
    for i in 0..5 {
        create_deal(&mut c, &boss, &plan, i, Some("m1")).await?;
    }

    for (search, matches) in [("bulk", 520), ("bulk 7", 11), ("BULK 51", 11)] {
        let filter = pb::DealFilter {
            plan_id: plan.id.clone(),
            search: search.into(),
            ..Default::default()
        };
        let listed = list(&mut c, &boss, filter.clone(), 1, String::new()).await?;
        assert_eq!(listed.total_count, matches, "{search}");
        board_agrees_with_list(&mut c, &boss, &plan, filter).await?;
    }
    assert_store_consistent(&stack).await?;
    stack.stop().await
}

#[tokio::test]
async fn transfers_and_bulk_changes() -> anyhow::Result<()> {
    let stack = DealStack::start().await?;
    let mut c = clients(&stack).await?;
    let admin = stack.token(ACCOUNT, "admin", ADMIN);
    let boss = stack.token(ACCOUNT, "boss", BOSS);
    let plan = create_plan(&mut c, &admin, &["m1", "m2"]).await?;
    let won = stage_named(&plan, "Won").id.clone();
    let progress = stage_named(&plan, "In progress").id.clone();
    let mut ids = Vec::new();
    for i in 0..12 {
        let deal = create_deal(
            &mut c,
            &boss,
            &plan,
            i,
            Some(if i < 8 { "m1" } else { "m2" }),
        )
        .await?;
        ids.push(deal.id);
    }

    // Without deals:bulk_edit: refused.
    let m1 = stack.token(ACCOUNT, "m1", &[Permission::DealsEditAll]);
    let err = c
        .deals
        .transfer_deals(outgoing(
            pb::TransferDealsRequest {
                from_manager_id: "m1".into(),
                to_manager_id: "m2".into(),
                filter: None,
            },
            &m1,
        ))
        .await
        .expect_err("no bulk_edit");
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("deals:bulk_edit"));

    // Close two of m1's deals, then transfer all of m1's deals to m2.
    let closed = c
        .deals
        .bulk_move_deals(outgoing(
            pb::BulkMoveDealsRequest {
                target: Some(pb::bulk_move_deals_request::Target::DealIds(pb::DealIds {
                    ids: ids[..2].to_vec(),
                })),
                stage_id: won.clone(),
                loss_reason_id: None,
            },
            &boss,
        ))
        .await?
        .into_inner();
    assert_eq!(closed.changed, 2);
    let transferred = c
        .deals
        .transfer_deals(outgoing(
            pb::TransferDealsRequest {
                from_manager_id: "m1".into(),
                to_manager_id: "m2".into(),
                filter: None,
            },
            &boss,
        ))
        .await?
        .into_inner();
    assert_eq!(transferred.changed, 8);
    let m2_deals = list(
        &mut c,
        &boss,
        pb::DealFilter {
            manager_ids: vec!["m2".into()],
            ..Default::default()
        },
        500,
        String::new(),
    )
    .await?;
    assert_eq!(m2_deals.total_count, 12);

    // Bulk move by filter: closed deals are reported, not moved.
    let moved = c
        .deals
        .bulk_move_deals(outgoing(
            pb::BulkMoveDealsRequest {
                target: Some(pb::bulk_move_deals_request::Target::Filter(
                    pb::DealFilter {
                        plan_id: plan.id.clone(),
                        ..Default::default()
                    },
                )),
                stage_id: progress.clone(),
                loss_reason_id: None,
            },
            &boss,
        ))
        .await?
        .into_inner();
    assert_eq!(moved.changed, 10);
    assert_eq!(moved.failures.len(), 2);
    assert!(
        moved.failures.iter().all(|f| f.reason.contains("closed")),
        "{:?}",
        moved.failures
    );

    // Bulk assign by ids, back to m1; unknown ids are reported.
    let missing = uuid::Uuid::new_v4().to_string();
    let assigned = c
        .deals
        .bulk_assign_deals(outgoing(
            pb::BulkAssignDealsRequest {
                target: Some(pb::bulk_assign_deals_request::Target::DealIds(
                    pb::DealIds {
                        ids: vec![ids[5].clone(), ids[6].clone(), missing.clone()],
                    },
                )),
                manager_id: Some("m1".into()),
            },
            &boss,
        ))
        .await?
        .into_inner();
    assert_eq!(assigned.changed, 2);
    assert_eq!(assigned.failures.len(), 1);
    assert_eq!(assigned.failures[0].deal_id, missing);

    // A bulk editor without edit_all only touches their own deals.
    let m1_bulk = stack.token(ACCOUNT, "m1", &[Permission::DealsBulkEdit]);
    let own = c
        .deals
        .bulk_assign_deals(outgoing(
            pb::BulkAssignDealsRequest {
                target: Some(pb::bulk_assign_deals_request::Target::Filter(
                    pb::DealFilter {
                        plan_id: plan.id.clone(),
                        statuses: vec![pb::DealStatus::Open as i32],
                        ..Default::default()
                    },
                )),
                manager_id: Some("m1".into()),
            },
            &m1_bulk,
        ))
        .await?
        .into_inner();
    assert_eq!(own.changed, 0, "m2's deals are not m1's to reassign");
    assert_eq!(
        (own.failures.len(), own.unchanged),
        (8, 2),
        "m2's eight refused; m1's own two are m1's already"
    );
    assert_store_consistent(&stack).await?;
    stack.stop().await
}

#[tokio::test]
async fn every_change_is_published_in_order_through_the_outbox() -> anyhow::Result<()> {
    let stack = DealStack::start().await?;
    let mut c = clients(&stack).await?;
    let admin = stack.token(ACCOUNT, "admin", ADMIN);
    let boss = stack.token(ACCOUNT, "boss", BOSS);
    let plan = create_plan(&mut c, &admin, &["m1"]).await?;
    let won = stage_named(&plan, "Won").id.clone();
    let deal = create_deal(&mut c, &boss, &plan, 1, Some("m1")).await?;
    let closed = move_deal(&mut c, &boss, &deal, &won, None).await?;
    reopen(&mut c, &boss, &closed).await?;

    let js = async_nats::jetstream::new(async_nats::connect(&stack.nats.url).await?);
    let events =
        integration_tests::stack::eventually(std::time::Duration::from_secs(10), || async {
            let mut stream = js.get_stream("SALESPLAN_DEALS").await?;
            let count = stream.info().await?.state.messages;
            if count < 3 {
                return Ok(None);
            }
            let mut events = Vec::new();
            for seq in 1..=count {
                let message = stream.get_raw_message(seq).await?;
                let event = <pb::DealEvent as prost::Message>::decode(message.payload.clone())?;
                events.push((message.subject.to_string(), event));
            }
            Ok((events.len() >= 3).then_some(events))
        })
        .await?;
    let summary: Vec<(String, i64)> = events
        .iter()
        .map(|(subject, e)| {
            (
                subject.clone(),
                e.deal.as_ref().map(|d| d.version).unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("salesplan.deals.v1.acme.created".to_owned(), 1),
            ("salesplan.deals.v1.acme.closed".to_owned(), 2),
            ("salesplan.deals.v1.acme.reopened".to_owned(), 3),
        ]
    );
    let closed_event = &events[1].1;
    assert_eq!(closed_event.actor_id, "boss");
    assert_eq!(closed_event.account_id, ACCOUNT);
    let snapshot = closed_event.deal.as_ref().expect("deal");
    assert_eq!(snapshot.status, pb::DealStatus::Won as i32);
    assert_eq!(snapshot.manager_id.as_deref(), Some("m1"));
    assert_eq!(
        snapshot.stage_before_close_id.as_deref(),
        Some(deal.stage_id.as_str())
    );

    // Plan snapshots carry the stages and managers, so consumers need no call back.
    let plans = js.get_stream("SALESPLAN_PLANS").await?;
    let message = plans
        .get_last_raw_message_by_subject(&salesplan_platform::bus::streams::plan_subject(
            ACCOUNT, "created",
        ))
        .await?;
    let event = <pb::PlanEvent as prost::Message>::decode(message.payload)?;
    let snapshot = event.plan.expect("plan");
    assert_eq!(snapshot.stages.len(), 4);
    assert_eq!(snapshot.manager_ids, ["m1"]);

    let pool = stack.pool().await?;
    integration_tests::stack::outbox_drained(&pool).await?;
    let by_kind: HashMap<String, i64> = HashMap::from_iter(
        sqlx::query_as::<_, (String, i64)>(
            "SELECT action, count(*) FROM deal_service.deal_history GROUP BY action",
        )
        .fetch_all(&pool)
        .await?,
    );
    assert_eq!(by_kind.get("closed"), Some(&1));
    assert_store_consistent(&stack).await?;
    stack.stop().await
}

#[tokio::test]
async fn filters_and_sorts() -> anyhow::Result<()> {
    let stack = DealStack::start().await?;
    let mut c = clients(&stack).await?;
    let admin = stack.token(ACCOUNT, "admin", ADMIN);
    let boss = stack.token(ACCOUNT, "boss", BOSS);
    let plan = create_plan(&mut c, &admin, &["m1", "m2"]).await?;
    let plan = c
        .plans
        .set_loss_reasons(outgoing(
            pb::SetLossReasonsRequest {
                plan_id: plan.id.clone(),
                require_reason: false,
                reasons: vec![pb::LossReasonInput {
                    id: String::new(),
                    name: "Price".into(),
                }],
            },
            &admin,
        ))
        .await?
        .into_inner()
        .plan
        .expect("plan");
    let price = plan.loss_reasons.as_ref().expect("reasons").reasons[0]
        .id
        .clone();
    let won = stage_named(&plan, "Won").id.clone();
    let lost = stage_named(&plan, "Lost").id.clone();

    let before = prost_types::Timestamp::from(std::time::SystemTime::now());
    let mut deals = Vec::new();
    for i in 0..10 {
        let manager = match i % 3 {
            0 => Some("m1"),
            1 => Some("m2"),
            _ => None,
        };
        deals.push(create_deal(&mut c, &boss, &plan, i, manager).await?);
    }
    move_deal(&mut c, &boss, &deals[0], &won, None).await?;
    move_deal(&mut c, &boss, &deals[1], &lost, Some(&price)).await?;
    move_deal(&mut c, &boss, &deals[2], &lost, None).await?;

    let ids = |r: &pb::ListDealsResponse| -> Vec<String> {
        r.deals.iter().map(|d| d.id.clone()).collect()
    };
    let f = |mutate: &dyn Fn(&mut pb::DealFilter)| {
        let mut filter = pb::DealFilter {
            plan_id: plan.id.clone(),
            ..Default::default()
        };
        mutate(&mut filter);
        filter
    };

    let open = list(
        &mut c,
        &boss,
        f(&|f| f.statuses = vec![pb::DealStatus::Open as i32]),
        50,
        String::new(),
    )
    .await?;
    assert_eq!(open.total_count, 7);
    let by_reason = list(
        &mut c,
        &boss,
        f(&|f| f.loss_reason_ids = vec![price.clone()]),
        50,
        String::new(),
    )
    .await?;
    assert_eq!(ids(&by_reason), [deals[1].id.clone()]);
    let no_reason = list(
        &mut c,
        &boss,
        f(&|f| f.without_loss_reason = true),
        50,
        String::new(),
    )
    .await?;
    assert_eq!(ids(&no_reason), [deals[2].id.clone()]);
    let unassigned = list(
        &mut c,
        &boss,
        f(&|f| f.unassigned = true),
        50,
        String::new(),
    )
    .await?;
    assert_eq!(unassigned.total_count, 3);
    let m1_or_none = list(
        &mut c,
        &boss,
        f(&|f| {
            f.unassigned = true;
            f.manager_ids = vec!["m1".into()];
        }),
        50,
        String::new(),
    )
    .await?;
    assert_eq!(m1_or_none.total_count, 7);
    let closed_now = list(
        &mut c,
        &boss,
        f(&|f| {
            f.closed = Some(pb::TimeRange {
                from: Some(before),
                to: None,
            })
        }),
        50,
        String::new(),
    )
    .await?;
    assert_eq!(closed_now.total_count, 3);
    let created_before = list(
        &mut c,
        &boss,
        f(&|f| {
            f.created = Some(pb::TimeRange {
                from: None,
                to: Some(before),
            })
        }),
        50,
        String::new(),
    )
    .await?;
    assert_eq!(created_before.total_count, 0);
    let err = list(
        &mut c,
        &boss,
        f(&|f| f.statuses = vec![42]),
        50,
        String::new(),
    )
    .await
    .expect_err("unknown status");
    assert!(
        err.message().starts_with("filter.statuses"),
        "{}",
        err.message()
    );

    // Sorting: by amount ascending across pages, by title, by closed time.
    let mut amounts = Vec::new();
    let mut token = String::new();
    loop {
        let page = c
            .deals
            .list_deals(outgoing(
                pb::ListDealsRequest {
                    filter: Some(f(&|_| {})),
                    sort: Some(pb::DealSort {
                        field: pb::DealSortField::Amount as i32,
                        ascending: true,
                    }),
                    page_size: 3,
                    page_token: token,
                    min_consistency_token: String::new(),
                },
                &boss,
            ))
            .await?
            .into_inner();
        amounts.extend(
            page.deals
                .iter()
                .map(|d| d.amount.as_ref().map(|a| a.amount_minor).unwrap_or(0)),
        );
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let mut sorted = amounts.clone();
    sorted.sort();
    assert_eq!(amounts, sorted);
    assert_eq!(amounts.len(), 10);

    let by_closed = c
        .deals
        .list_deals(outgoing(
            pb::ListDealsRequest {
                filter: Some(f(&|_| {})),
                sort: Some(pb::DealSort {
                    field: pb::DealSortField::ClosedAt as i32,
                    ascending: false,
                }),
                page_size: 3,
                page_token: String::new(),
                min_consistency_token: String::new(),
            },
            &boss,
        ))
        .await?
        .into_inner();
    assert_eq!(
        ids(&by_closed),
        [
            deals[2].id.clone(),
            deals[1].id.clone(),
            deals[0].id.clone()
        ]
    );
    assert_store_consistent(&stack).await?;
    stack.stop().await
}

/// A client whose answer was lost retries with the version it had. A move to the stage the
/// deal is in, a close to the same result and reason, an assignment to its manager — the
/// change it asked for holds — are answered as done with the deal as it is: no error, no
/// second history entry (events are written with history, only for a change). A different
/// change with that stale version is ABORTED.
#[tokio::test]
async fn a_repeated_move_or_assignment_is_answered_as_done() -> anyhow::Result<()> {
    let stack = DealStack::start().await?;
    let mut c = clients(&stack).await?;
    let admin = stack.token(ACCOUNT, "admin", ADMIN);
    let boss = stack.token(ACCOUNT, "boss", BOSS);
    let plan = create_plan(&mut c, &admin, &["m1", "m2"]).await?;
    let (progress, lost) = (
        stage_named(&plan, "In progress").id.clone(),
        stage_named(&plan, "Lost").id.clone(),
    );
    let deal = create_deal(&mut c, &boss, &plan, 1, None).await?;

    let moved = move_deal(&mut c, &boss, &deal, &progress, None).await?;
    let again = move_deal(&mut c, &boss, &deal, &progress, None).await?;
    assert_eq!(
        again, moved,
        "the retry sees the deal as the first move left it"
    );
    let stale = move_deal(&mut c, &boss, &deal, &lost, None)
        .await
        .expect_err("another change with a stale version");
    assert_eq!(stale.code(), Code::Aborted);

    let assign = |deal: &pb::Deal, manager: &str| pb::AssignDealRequest {
        deal_id: deal.id.clone(),
        expected_version: deal.version,
        manager_id: Some(manager.into()),
        ..Default::default()
    };
    let assigned = c
        .deals
        .assign_deal(outgoing(assign(&moved, "m1"), &boss))
        .await?
        .into_inner()
        .deal
        .expect("deal");
    let again = c
        .deals
        .assign_deal(outgoing(assign(&moved, "m1"), &boss))
        .await?
        .into_inner()
        .deal
        .expect("deal");
    assert_eq!(again, assigned);
    let stale = c
        .deals
        .assign_deal(outgoing(assign(&moved, "m2"), &boss))
        .await
        .expect_err("another manager with a stale version");
    assert_eq!(stale.code(), Code::Aborted);

    let closed = move_deal(&mut c, &boss, &assigned, &lost, None).await?;
    let again = move_deal(&mut c, &boss, &assigned, &lost, None).await?;
    assert_eq!(again, closed);

    // A reopen, an edit and a bulk move, each repeated with the version the first one had.
    let reopened = reopen(&mut c, &boss, &closed).await?;
    assert_eq!(reopen(&mut c, &boss, &closed).await?, reopened);
    let edit = |deal: &pb::Deal| pb::UpdateDealRequest {
        deal_id: deal.id.clone(),
        expected_version: deal.version,
        title: Some("Renamed".into()),
        ..Default::default()
    };
    let edited = c
        .deals
        .update_deal(outgoing(edit(&reopened), &boss))
        .await?
        .into_inner()
        .deal
        .expect("deal");
    let again = c
        .deals
        .update_deal(outgoing(edit(&reopened), &boss))
        .await?
        .into_inner()
        .deal
        .expect("deal");
    assert_eq!(again, edited, "an edit whose values hold is done");
    let here = edited.stage_id.clone();
    let bulk = c
        .deals
        .bulk_move_deals(outgoing(
            pb::BulkMoveDealsRequest {
                stage_id: here.clone(),
                target: Some(pb::bulk_move_deals_request::Target::DealIds(pb::DealIds {
                    ids: vec![deal.id.clone()],
                })),
                ..Default::default()
            },
            &boss,
        ))
        .await?
        .into_inner();
    assert_eq!(
        (bulk.changed, bulk.unchanged, bulk.failures.len()),
        (0, 1, 0),
        "a deal already in the stage is not a failure: {bulk:?}"
    );
    // A reason goes only with LOST, also for the stage the deal is in.
    let some_reason = uuid::Uuid::new_v4().to_string();
    let err = move_deal(&mut c, &boss, &edited, &here, Some(&some_reason))
        .await
        .expect_err("a reason for an OPEN stage");
    assert_eq!(err.code(), Code::InvalidArgument);

    let history = c
        .deals
        .get_deal_history(outgoing(
            pb::GetDealHistoryRequest {
                deal_id: deal.id.clone(),
                ..Default::default()
            },
            &boss,
        ))
        .await?
        .into_inner()
        .entries;
    let actions: Vec<i32> = history.iter().map(|e| e.action).collect();
    assert_eq!(
        actions,
        [
            pb::HistoryAction::Created as i32,
            pb::HistoryAction::Moved as i32,
            pb::HistoryAction::Assigned as i32,
            pb::HistoryAction::Closed as i32,
            pb::HistoryAction::Reopened as i32,
            pb::HistoryAction::Edited as i32,
        ],
        "one entry per change made: {history:?}"
    );
    assert_store_consistent(&stack).await?;
    stack.stop().await
}

/// The plan events of the account in the stream, by subject, once the one of `version`
/// (an `updated` event, the last change made) is in.
async fn plan_events_through(
    stack: &DealStack,
    version: i64,
) -> anyhow::Result<HashMap<String, u64>> {
    use futures::StreamExt as _;
    use prost::Message as _;
    let js = async_nats::jetstream::new(async_nats::connect(&stack.nats.url).await?);
    let stream = js.get_stream("SALESPLAN_PLANS").await?;
    let last_updated = salesplan_platform::bus::streams::plan_subject(ACCOUNT, "updated");
    integration_tests::stack::eventually(std::time::Duration::from_secs(20), || async {
        let last = match stream.get_last_raw_message_by_subject(&last_updated).await {
            Ok(message) => pb::PlanEvent::decode(message.payload)?,
            Err(_) => return Ok(None),
        };
        Ok((last.plan.is_some_and(|p| p.version == version)).then_some(()))
    })
    .await?;
    let mut subjects = stream
        .info_with_subjects(salesplan_platform::bus::streams::plan_subject(ACCOUNT, "*"))
        .await?;
    let mut counts = HashMap::new();
    while let Some(item) = subjects.next().await {
        let (subject, count) = item?;
        counts.insert(
            subject.rsplit('.').next().unwrap_or_default().to_owned(),
            count as u64,
        );
    }
    Ok(counts)
}

/// A plan change already in force (archive an archived plan, unarchive an open
/// one, the same order, managers or settings) answers OK with the plan as it stands and
/// writes no new version and no event.
#[tokio::test]
async fn a_repeated_plan_change_is_answered_as_done() -> anyhow::Result<()> {
    let stack = DealStack::start().await?;
    let mut c = clients(&stack).await?;
    let admin = stack.token(ACCOUNT, "admin", ADMIN);
    let plan = create_plan(&mut c, &admin, &["m1", "m2"]).await?;
    let id = || plan.id.clone();
    let answer = |plan: Option<pb::Plan>| plan.expect("plan");

    let unchanged = answer(
        c.plans
            .unarchive_plan(outgoing(pb::UnarchivePlanRequest { plan_id: id() }, &admin))
            .await?
            .into_inner()
            .plan,
    );
    assert_eq!(unchanged, plan, "unarchiving an open plan changes nothing");
    let archived = answer(
        c.plans
            .archive_plan(outgoing(pb::ArchivePlanRequest { plan_id: id() }, &admin))
            .await?
            .into_inner()
            .plan,
    );
    assert!(archived.archived && archived.version == plan.version + 1);
    let again = answer(
        c.plans
            .archive_plan(outgoing(pb::ArchivePlanRequest { plan_id: id() }, &admin))
            .await?
            .into_inner()
            .plan,
    );
    assert_eq!(
        again, archived,
        "archiving an archived plan changes nothing"
    );
    let reopened = answer(
        c.plans
            .unarchive_plan(outgoing(pb::UnarchivePlanRequest { plan_id: id() }, &admin))
            .await?
            .into_inner()
            .plan,
    );
    assert!(!reopened.archived && reopened.version == archived.version + 1);

    let open_stages: Vec<String> = reopened
        .stages
        .iter()
        .filter(|s| s.kind == pb::StageKind::Open as i32)
        .map(|s| s.id.clone())
        .collect();
    let same_order = answer(
        c.plans
            .reorder_stages(outgoing(
                pb::ReorderStagesRequest {
                    plan_id: id(),
                    open_stage_ids: open_stages,
                },
                &admin,
            ))
            .await?
            .into_inner()
            .plan,
    );
    let same_managers = answer(
        c.plans
            .set_plan_managers(outgoing(
                pb::SetPlanManagersRequest {
                    plan_id: id(),
                    manager_ids: vec!["m1".into(), "m2".into()],
                    ..Default::default()
                },
                &admin,
            ))
            .await?
            .into_inner()
            .plan,
    );
    let same_settings = answer(
        c.plans
            .update_plan(outgoing(
                pb::UpdatePlanRequest {
                    plan_id: id(),
                    name: Some(reopened.name.clone()),
                    distribution: reopened.distribution,
                    ..Default::default()
                },
                &admin,
            ))
            .await?
            .into_inner()
            .plan,
    );
    for repeat in [&same_order, &same_managers, &same_settings] {
        assert_eq!(repeat, &reopened);
    }

    // One real change last: the events are the create, archive, unarchive and this one.
    let renamed = answer(
        c.plans
            .update_plan(outgoing(
                pb::UpdatePlanRequest {
                    plan_id: id(),
                    name: Some("Renamed".into()),
                    ..Default::default()
                },
                &admin,
            ))
            .await?
            .into_inner()
            .plan,
    );
    assert_eq!(renamed.version, reopened.version + 1);
    let events = plan_events_through(&stack, renamed.version).await?;
    assert_eq!(
        events,
        HashMap::from([
            ("created".into(), 1),
            ("archived".into(), 1),
            ("unarchived".into(), 1),
            ("updated".into(), 1),
        ])
    );
    stack.stop().await
}

/// Case-insensitive search of non-Latin text on a database created with the C locale
/// (CloudNativePG's default), where PostgreSQL's own `lower()` leaves Cyrillic as it is.
#[tokio::test]
async fn search_ignores_case_of_any_script_under_the_c_locale() -> anyhow::Result<()> {
    let db = integration_tests::TestDatabase::create_with(
        "TEMPLATE template0 LC_COLLATE 'C' LC_CTYPE 'C'",
    )
    .await?;
    let stack = DealStack::start_on(db).await?;
    let mut c = clients(&stack).await?;
    let admin = stack.token(ACCOUNT, "admin", ADMIN);
    let boss = stack.token(ACCOUNT, "boss", BOSS);
    let plan = create_plan(&mut c, &admin, &["m1"]).await?;
    for (i, name) in ["Анна Каренина", "Ὀδυσσεύς Λαέρτιάδης", "Anna Müller"]
        .into_iter()
        .enumerate()
    {
        c.deals
            .create_deal(outgoing(
                pb::CreateDealRequest {
                    plan_id: plan.id.clone(),
                    contact: Some(pb::Contact {
                        external_id: format!("script-{i}"),
                        name: name.into(),
                        ..Default::default()
                    }),
                    idempotency_key: format!("script-{i}"),
                    ..Default::default()
                },
                &boss,
            ))
            .await?;
    }
    for (term, expected) in [
        ("анна", "Анна Каренина"),
        ("КАРЕНИНА", "Анна Каренина"),
        ("λαέρτ", "Ὀδυσσεύς Λαέρτιάδης"),
        ("MÜLLER", "Anna Müller"),
    ] {
        let found = list(
            &mut c,
            &boss,
            pb::DealFilter {
                plan_id: plan.id.clone(),
                search: term.into(),
                ..Default::default()
            },
            50,
            String::new(),
        )
        .await?;
        let names: Vec<String> = found
            .deals
            .iter()
            .map(|d| d.contact.clone().unwrap_or_default().name)
            .collect();
        assert_eq!(names, [expected], "{term}");
    }
    stack.stop().await
}

/// The relay's listener comes back after the database refused it a connection, dropped
/// the one it had, or it was found deaf: a notification wakes the relay again, not only
/// its poll, and a wait that starts listening anew says so (what was announced meanwhile
/// is lost, so the relay looks at once).
#[tokio::test]
async fn the_relay_listens_again_after_losing_its_connection() -> anyhow::Result<()> {
    use std::time::Duration;

    use anyhow::Context as _;
    use deal_service::{
        events::outbox::{Wakeup, Woke},
        store::OUTBOX_CHANNEL,
    };
    use sqlx::postgres::PgPoolOptions;
    use tokio_util::sync::CancellationToken;

    let database = integration_tests::postgres::TestDatabase::create().await?;
    // One connection, soon given up on: while the test holds it, the listener has none.
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_millis(300))
        .connect(&database.url)
        .await?;
    let other = PgPoolOptions::new()
        .max_connections(1)
        .connect(&database.url)
        .await?;
    let notify = || async {
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(OUTBOX_CHANNEL)
            .execute(&other)
            .await
    };
    let shutdown = CancellationToken::new();
    // Far longer than the test's deadlines: only a notification or listening anew ends a
    // wait in time.
    let poll = Duration::from_secs(600);
    let deadline = Duration::from_secs(30);
    let wait = async |wakeup: &mut Wakeup, what: &str| {
        tokio::time::timeout(deadline, wakeup.wait(&shutdown, poll))
            .await
            .with_context(|| format!("the wait did not end: {what}"))
    };

    let held = pool.acquire().await?;
    let mut wakeup = Wakeup::new(pool.clone()).await;
    assert!(!wakeup.listening(), "the pool had no connection to give");
    drop(held);
    assert_eq!(wait(&mut wakeup, "listen again").await?, Woke::Listening);
    assert!(wakeup.listening());
    notify().await?;
    assert_eq!(wait(&mut wakeup, "a notification").await?, Woke::Notified);

    // The listening backend terminated (a failover, a proxy's idle cut).
    let terminated: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid() \
           AND backend_type = 'client backend'",
    )
    .fetch_all(&other)
    .await?;
    assert_eq!(terminated, [true], "the listener's backend, and only it");
    assert_eq!(
        wait(&mut wakeup, "notice the lost connection").await?,
        Woke::Listening
    );
    assert!(wakeup.listening());
    notify().await?;
    assert_eq!(
        wait(&mut wakeup, "a notification after the loss").await?,
        Woke::Notified
    );

    // Found deaf (a pass after a quiet poll found events nobody announced).
    wakeup.suspect();
    assert_eq!(wait(&mut wakeup, "listen anew").await?, Woke::Listening);
    notify().await?;
    assert_eq!(
        wait(&mut wakeup, "a notification on the new connection").await?,
        Woke::Notified
    );
    Ok(())
}

/// A database of its own with deal-service's schema, for tests that shape the outbox's
/// table and statistics by hand.
async fn outbox_database()
-> anyhow::Result<(integration_tests::postgres::TestDatabase, sqlx::PgPool)> {
    let database = integration_tests::postgres::TestDatabase::create().await?;
    let pool = salesplan_platform::db::connect_and_migrate(
        &salesplan_platform::config::DatabaseConfig::local(&database.url),
        deal_service::SCHEMA,
        &deal_service::MIGRATOR,
    )
    .await?;
    Ok((database, pool))
}

/// A relay pass reads each waiting row once whatever the statistics say: analysed when every
/// event was published (as between bursts), then 2,000 events waiting (as in a bulk add). A
/// join of the rows with their own window was planned as a nested loop that ran the
/// window once per row on such statistics (the bench caught passes of 8 s).
#[tokio::test]
async fn a_relay_pass_reads_each_row_once_when_the_statistics_say_the_outbox_is_empty()
-> anyhow::Result<()> {
    use deal_service::store::outbox::Pass;

    let (_database, pool) = outbox_database().await?;
    sqlx::raw_sql(
        "ALTER TABLE outbox SET (autovacuum_enabled = false);
         INSERT INTO outbox (subject, message_id, payload)
           SELECT 'salesplan.deals.v1.a.created', 'old-' || i, convert_to(repeat('x', 300), 'UTF8')
           FROM generate_series(1, 2000) i;
         DELETE FROM outbox;
         ANALYZE outbox;
         INSERT INTO outbox (subject, message_id, payload)
           SELECT 'salesplan.deals.v1.a.created', 'e-' || i, convert_to(repeat('x', 300), 'UTF8')
           FROM generate_series(1, 2000) i;",
    )
    .execute(&pool)
    .await?;
    let mut pass = Pass::begin(&pool).await?.expect("no other relay");
    let explained = pass.explain_rows().await?;
    pass.finish(&[], &[]).await?;
    /// The most times any node of the plan ran.
    fn most_loops(node: &serde_json::Value) -> i64 {
        let own = node["Actual Loops"].as_i64().unwrap_or(0);
        node["Plans"]
            .as_array()
            .map(|children| children.iter().map(most_loops).max().unwrap_or(0))
            .unwrap_or(0)
            .max(own)
    }
    assert_eq!(most_loops(&explained[0]["Plan"]), 1, "{explained:#}");
    Ok(())
}

/// A relay pass reads its rows by the primary key even when the outbox's table is mostly
/// deleted rows awaiting a vacuum and its statistics say so (after an auto-analyze): not
/// by a scan of the whole table, whose cost grows with every event published since.
#[tokio::test]
async fn a_relay_pass_reads_by_the_key_however_many_rows_await_a_vacuum() -> anyhow::Result<()> {
    use deal_service::store::outbox::Pass;

    let (_database, pool) = outbox_database().await?;
    // 20,000 events published (deleted) and 10 waiting, no vacuum since, analyzed.
    sqlx::raw_sql(
        "ALTER TABLE outbox SET (autovacuum_enabled = false);
         INSERT INTO outbox (subject, message_id, payload)
           SELECT 'salesplan.deals.v1.a.created', 'e-' || i, convert_to(repeat('x', 900), 'UTF8')
           FROM generate_series(1, 20010) i;
         DELETE FROM outbox WHERE id <= 20000;
         ANALYZE outbox;",
    )
    .execute(&pool)
    .await?;
    let table_pages: i64 = sqlx::query_scalar(
        "SELECT pg_relation_size('outbox') / current_setting('block_size')::bigint",
    )
    .fetch_one(&pool)
    .await?;
    let mut buffers = Vec::new();
    for _ in 0..2 {
        let mut pass = Pass::begin(&pool).await?.expect("no other relay");
        let explained = pass.explain_rows().await?;
        let text = explained.to_string();
        assert!(
            !text.contains("Seq Scan"),
            "a scan of the table: {explained:#}"
        );
        assert!(text.contains("outbox_pkey"), "{explained:#}");
        buffers.push(
            explained[0]["Plan"]["Shared Hit Blocks"]
                .as_i64()
                .unwrap_or(0)
                + explained[0]["Plan"]["Shared Read Blocks"]
                    .as_i64()
                    .unwrap_or(0),
        );
        pass.finish(&[], &[]).await?;
    }
    // The first pass walks the deleted rows' index entries and marks them dead; the next
    // reads a small part of the table's pages.
    assert!(
        buffers[1] * 5 < table_pages,
        "pages read per pass {buffers:?}, of {table_pages} in the table"
    );
    Ok(())
}
