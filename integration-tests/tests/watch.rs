//! WatchDeals (issue 21) against real PostgreSQL and JetStream: every change once, in
//! order, with its contact; resuming after a token; filters, permissions and accounts;
//! a snapshot that adds up with the changes after it; slow watchers cut off without
//! slowing the others; the bounds; a drain and an expiring token end a watch with a
//! status to act on.

use std::{collections::HashMap, time::Duration};

use integration_tests::{
    api::{Mode, Strategy, create_plan, plan_request},
    stack::{DealStack, eventually},
};
use salesplan_platform::{Permission, grpc::outgoing, service::Service as _};
use salesplan_proto::v1::{self as pb, deal_service_client::DealServiceClient};
use tokio_util::sync::CancellationToken;
use tonic::{Code, Streaming, transport::Channel};
use tonic_types::StatusExt as _;

const ACCOUNT: &str = "acme";
const BOSS: &[Permission] = &[Permission::DealsEditAll, Permission::DealsBulkEdit];
/// How long a test waits for one message of a watch.
const NEXT: Duration = Duration::from_secs(20);

type Watch = Streaming<pb::WatchDealsResponse>;

async fn watch(
    channel: Channel,
    token: &str,
    request: pb::WatchDealsRequest,
) -> Result<Watch, tonic::Status> {
    DealServiceClient::new(channel)
        .watch_deals(outgoing(request, token))
        .await
        .map(tonic::Response::into_inner)
}

fn of_plan(plan: &pb::Plan) -> pb::WatchDealsRequest {
    pb::WatchDealsRequest {
        plan_id: plan.id.clone(),
        ..Default::default()
    }
}

/// The next message of a watch (an error when the watch ends, or none comes in time).
async fn next(watch: &mut Watch) -> anyhow::Result<pb::WatchDealsResponse> {
    match tokio::time::timeout(NEXT, watch.message()).await {
        Err(_) => anyhow::bail!("no message within {NEXT:?}"),
        Ok(Err(status)) => Err(status.into()),
        Ok(Ok(None)) => anyhow::bail!("the watch ended without a status"),
        Ok(Ok(Some(message))) => Ok(message),
    }
}

/// The next change of a watch, with its resume token (past checkpoints: the token every
/// watch opens with, and those of a quiet filter).
async fn next_change(watch: &mut Watch) -> anyhow::Result<(pb::DealChange, String)> {
    loop {
        let message = next(watch).await?;
        match message.item {
            Some(pb::watch_deals_response::Item::Change(change)) => {
                return Ok((change, message.resume_token));
            }
            None => continue,
            other => anyhow::bail!("not a change: {other:?}"),
        }
    }
}

/// The status a watch ends with, after any messages still in it (returned).
async fn end_of(watch: &mut Watch) -> anyhow::Result<(tonic::Status, Vec<pb::WatchDealsResponse>)> {
    let mut before = Vec::new();
    loop {
        match tokio::time::timeout(NEXT, watch.message()).await {
            Err(_) => anyhow::bail!("the watch did not end within {NEXT:?}"),
            Ok(Err(status)) => return Ok((status, before)),
            Ok(Ok(None)) => anyhow::bail!("the watch ended without a status"),
            Ok(Ok(Some(message))) => before.push(message),
        }
    }
}

/// A channel to `replica` that takes 1 kB at a time until it is read: what its watches do
/// not read stays on the server.
async fn narrow_channel(replica: &salesplan_platform::service::Running) -> anyhow::Result<Channel> {
    Ok(tonic::transport::Endpoint::from_shared(replica.grpc_url())?
        .initial_stream_window_size(Some(1024))
        .initial_connection_window_size(Some(1024))
        .connect()
        .await?)
}

/// A watch opened as soon as the account has a place for it (at most 20 s).
async fn admitted(
    channel: &Channel,
    token: &str,
    request: pb::WatchDealsRequest,
) -> anyhow::Result<Watch> {
    eventually(Duration::from_secs(20), || async {
        match watch(channel.clone(), token, request.clone()).await {
            Ok(watch) => Ok(Some(watch)),
            Err(status) if status.code() == Code::ResourceExhausted => Ok(None),
            Err(status) => Err(status.into()),
        }
    })
    .await
}

/// The deal versions of the changes among `messages`, in order.
fn change_versions(messages: &[pb::WatchDealsResponse]) -> Vec<i64> {
    messages
        .iter()
        .filter_map(|m| match &m.item {
            Some(pb::watch_deals_response::Item::Change(c)) => Some(version(c)),
            _ => None,
        })
        .collect()
}

fn reason(status: &tonic::Status) -> String {
    status
        .get_error_details()
        .error_info()
        .map(|i| i.reason.clone())
        .unwrap_or_default()
}

fn kind(change: &pb::DealChange) -> pb::ChangeKind {
    pb::ChangeKind::try_from(change.kind).unwrap_or(pb::ChangeKind::Unspecified)
}

fn version(change: &pb::DealChange) -> i64 {
    change.deal.as_ref().map_or(0, |d| d.version)
}

struct Deals {
    client: DealServiceClient<Channel>,
    token: String,
}

impl Deals {
    async fn create(
        &mut self,
        plan: &pb::Plan,
        name: &str,
        manager: &str,
    ) -> anyhow::Result<pb::Deal> {
        let request = pb::CreateDealRequest {
            plan_id: plan.id.clone(),
            contact: Some(pb::Contact {
                name: name.into(),
                email: format!("{}@example.com", name.to_lowercase().replace(' ', ".")),
                ..Default::default()
            }),
            title: format!("{name}'s order"),
            manager_id: Some(manager.into()),
            idempotency_key: format!("watch-{name}"),
            ..Default::default()
        };
        let deal = self
            .client
            .create_deal(outgoing(request, &self.token))
            .await?;
        deal.into_inner()
            .deal
            .ok_or_else(|| anyhow::anyhow!("no deal"))
    }

    async fn move_to(&mut self, deal: &pb::Deal, stage: &str) -> anyhow::Result<pb::Deal> {
        let request = pb::MoveDealRequest {
            deal_id: deal.id.clone(),
            expected_version: deal.version,
            stage_id: stage.into(),
            loss_reason_id: None,
        };
        let moved = self
            .client
            .move_deal(outgoing(request, &self.token))
            .await?;
        moved
            .into_inner()
            .deal
            .ok_or_else(|| anyhow::anyhow!("no deal"))
    }

    async fn retitle(&mut self, deal: &pb::Deal, title: &str) -> anyhow::Result<pb::Deal> {
        let request = pb::UpdateDealRequest {
            deal_id: deal.id.clone(),
            expected_version: deal.version,
            title: Some(title.into()),
            ..Default::default()
        };
        let updated = self
            .client
            .update_deal(outgoing(request, &self.token))
            .await?;
        updated
            .into_inner()
            .deal
            .ok_or_else(|| anyhow::anyhow!("no deal"))
    }
}

fn stage(plan: &pb::Plan, kind: pb::StageKind, nth: usize) -> String {
    plan.stages
        .iter()
        .filter(|s| s.kind == kind as i32)
        .nth(nth)
        .map(|s| s.id.clone())
        .expect("the plan has the stage")
}

async fn manual_plan(stack: &DealStack, name: &str) -> anyhow::Result<pb::Plan> {
    let admin = stack.token(ACCOUNT, "admin", &[Permission::PlansAdmin]);
    let request = plan_request(
        name,
        Mode::Manual,
        Strategy::RoundRobin,
        false,
        &["m1", "m2"],
    );
    create_plan(stack.channel().await?, &admin, request).await
}

/// A watcher gets every change of its plan's deals once, in order, each with the deal's
/// contact (from deal-service: events carry none), the previous stage and manager; a
/// watch resumed with a token gets exactly the changes after it; a manager's watch only
/// the changes of their deals (before or after); another account's watch none of these.
#[tokio::test]
async fn a_watcher_sees_each_change_once_and_resumes_after_its_token() -> anyhow::Result<()> {
    let stack = DealStack::start().await?;
    let channel = stack.channel().await?;
    let plan = manual_plan(&stack, "Watched").await?;
    let reader = stack.token(ACCOUNT, "board", &[Permission::DealsRead]);
    let mut everything = watch(channel.clone(), &reader, of_plan(&plan)).await?;
    let m2_only = pb::WatchDealsRequest {
        manager_id: Some("m2".into()),
        ..of_plan(&plan)
    };
    let mut of_m2 = watch(channel.clone(), &reader, m2_only).await?;
    let stranger = stack.token("other", "board", &[Permission::DealsRead]);
    let mut other = watch(channel.clone(), &stranger, pb::WatchDealsRequest::default()).await?;

    let mut deals = Deals {
        client: DealServiceClient::new(channel.clone()),
        token: stack.token(ACCOUNT, "boss", BOSS),
    };
    let created = deals.create(&plan, "Ann Example", "m1").await?;
    let moved = deals
        .move_to(&created, &stage(&plan, pb::StageKind::Open, 1))
        .await?;
    let assigned = deals
        .client
        .assign_deal(outgoing(
            pb::AssignDealRequest {
                deal_id: moved.id.clone(),
                expected_version: moved.version,
                manager_id: Some("m2".into()),
                ..Default::default()
            },
            &deals.token,
        ))
        .await?
        .into_inner()
        .deal
        .expect("deal");
    let retitled = deals.retitle(&assigned, "Bigger order").await?;
    let won = deals
        .move_to(&retitled, &stage(&plan, pb::StageKind::Won, 0))
        .await?;
    let reopened = deals
        .client
        .reopen_deal(outgoing(
            pb::ReopenDealRequest {
                deal_id: won.id.clone(),
                expected_version: won.version,
            },
            &deals.token,
        ))
        .await?
        .into_inner()
        .deal
        .expect("deal");

    let mut seen = Vec::new();
    for _ in 0..6 {
        seen.push(next_change(&mut everything).await?);
    }
    let kinds: Vec<pb::ChangeKind> = seen.iter().map(|(c, _)| kind(c)).collect();
    use pb::ChangeKind as K;
    assert_eq!(
        kinds,
        [
            K::Created,
            K::Moved,
            K::Assigned,
            K::Updated,
            K::Closed,
            K::Reopened
        ]
    );
    let versions: Vec<i64> = seen.iter().map(|(c, _)| version(c)).collect();
    assert_eq!(versions, (1..=6).collect::<Vec<i64>>());
    assert_eq!(versions.last(), Some(&reopened.version));
    for (change, token) in &seen {
        let deal = change.deal.as_ref().expect("deal");
        let contact = deal
            .contact
            .as_ref()
            .expect("the contact, as GetDeal gives it");
        assert_eq!(contact.name, "Ann Example", "{change:?}");
        assert!(!token.is_empty());
    }
    assert_eq!(
        seen[1].0.previous_stage_id.as_deref(),
        Some(created.stage_id.as_str())
    );
    assert_eq!(seen[2].0.previous_manager_id.as_deref(), Some("m1"));
    assert_eq!(
        seen[2]
            .0
            .deal
            .as_ref()
            .and_then(|d| d.manager_id.as_deref()),
        Some("m2")
    );

    // Resumed after the second change: the third to the sixth, then what comes next.
    let resumed = pb::WatchDealsRequest {
        resume_token: seen[1].1.clone(),
        ..of_plan(&plan)
    };
    let mut again = watch(channel.clone(), &reader, resumed).await?;
    let mut replayed = Vec::new();
    for _ in 0..4 {
        replayed.push(version(&next_change(&mut again).await?.0));
    }
    assert_eq!(replayed, [3, 4, 5, 6]);
    let last = deals.retitle(&reopened, "Biggest order").await?;
    for w in [&mut everything, &mut again] {
        let (change, _) = next_change(w).await?;
        assert_eq!(
            (kind(&change), version(&change)),
            (K::Updated, last.version),
            "none twice"
        );
    }

    // m2's watch: from the assignment to m2 on (the deal matched after it).
    let (first, _) = next_change(&mut of_m2).await?;
    assert_eq!((kind(&first), version(&first)), (K::Assigned, 3));
    // The other account's watch sees its own deal first: nothing of acme's came before.
    let other_plan = {
        let admin = stack.token("other", "admin", &[Permission::PlansAdmin]);
        let request = plan_request("Theirs", Mode::Manual, Strategy::RoundRobin, false, &["o1"]);
        create_plan(channel.clone(), &admin, request).await?
    };
    let mut theirs = Deals {
        client: DealServiceClient::new(channel.clone()),
        token: stack.token("other", "boss", BOSS),
    };
    let their_deal = theirs.create(&other_plan, "Olga Other", "o1").await?;
    let (change, _) = next_change(&mut other).await?;
    assert_eq!(change.deal.map(|d| d.id), Some(their_deal.id));
    stack.stop().await
}

/// Bad requests are refused with every violation at once; a watcher needs `deals:read`;
/// a token that is not this feed's, or ahead of it, is refused.
#[tokio::test]
async fn watch_requests_are_checked() -> anyhow::Result<()> {
    let stack = DealStack::start().await?;
    let channel = stack.channel().await?;
    let reader = stack.token(ACCOUNT, "board", &[Permission::DealsRead]);
    let bad = pb::WatchDealsRequest {
        stage_ids: vec!["not-a-stage".into()],
        resume_token: "nonsense".into(),
        start_with_snapshot: true,
        ..Default::default()
    };
    let refused = watch(channel.clone(), &reader, bad)
        .await
        .expect_err("bad request");
    assert_eq!(refused.code(), Code::InvalidArgument);
    let mut fields: Vec<String> = refused
        .get_error_details()
        .bad_request()
        .map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect())
        .unwrap_or_default();
    fields.sort();
    fields.dedup();
    assert_eq!(fields, ["plan_id", "resume_token", "stage_ids[0]"]);
    let ahead = pb::WatchDealsRequest {
        resume_token: "w1.999999999".into(),
        ..Default::default()
    };
    let refused = watch(channel.clone(), &reader, ahead)
        .await
        .expect_err("ahead");
    assert_eq!(refused.code(), Code::InvalidArgument);
    let manager = stack.token(ACCOUNT, "m1", &[]);
    let denied = watch(channel.clone(), &manager, pb::WatchDealsRequest::default())
        .await
        .expect_err("no deals:read");
    assert_eq!(denied.code(), Code::PermissionDenied);
    // A plan of another account (or none at all) is NOT_FOUND, not a silent watch.
    let theirs = manual_plan(&stack, "Theirs").await?;
    let other = stack.token("other-account", "board", &[Permission::DealsRead]);
    let missing = watch(channel.clone(), &other, of_plan(&theirs))
        .await
        .expect_err("another account's plan");
    assert_eq!(missing.code(), Code::NotFound);
    let mut ours = watch(channel.clone(), &reader, of_plan(&theirs)).await?;
    assert_eq!(next(&mut ours).await?.item, None, "opens with a token");
    let elsewhere = manual_plan(&stack, "Elsewhere").await?;
    let foreign_stage = pb::WatchDealsRequest {
        stage_ids: vec![elsewhere.stages[0].id.clone()],
        ..of_plan(&theirs)
    };
    let refused = watch(channel.clone(), &reader, foreign_stage)
        .await
        .expect_err("a stage of another plan");
    assert_eq!(
        (refused.code(), refused.message()),
        (
            Code::InvalidArgument,
            "stage_ids[0]: not a stage of this plan"
        )
    );
    stack.stop().await
}

/// A board's deals per stage, the empty stages left out.
fn counts_of(board: &pb::GetBoardResponse) -> HashMap<String, i64> {
    board
        .columns
        .iter()
        .filter(|c| c.count != 0)
        .map(|c| {
            (
                c.stage.as_ref().map(|s| s.id.clone()).unwrap_or_default(),
                c.count,
            )
        })
        .collect()
}

/// A board loaded by WatchDeals (`start_with_snapshot`) while deals keep moving, plus
/// the changes after it, adds up to the board as it is at the end: per stage, the counts
/// agree. A change the snapshot already holds, sent again, or one it lacks, lost, would
/// show as a difference.
#[tokio::test]
async fn a_snapshot_and_the_changes_after_it_add_up_to_the_board() -> anyhow::Result<()> {
    const DEALS: usize = 20;
    const MOVES: usize = 200;
    let stack = DealStack::start().await?;
    let channel = stack.channel().await?;
    let plan = manual_plan(&stack, "Moving").await?;
    let boss = stack.token(ACCOUNT, "boss", BOSS);
    let mut deals = Deals {
        client: DealServiceClient::new(channel.clone()),
        token: boss.clone(),
    };
    let mut made = Vec::new();
    for i in 0..DEALS {
        made.push(deals.create(&plan, &format!("Mover {i}"), "m1").await?);
    }
    let open: Vec<String> = plan
        .stages
        .iter()
        .filter(|s| s.kind == pb::StageKind::Open as i32)
        .map(|s| s.id.clone())
        .collect();
    // Four movers at once, each its own deals, each deal round the open stages.
    let mut movers: Vec<tokio::task::JoinHandle<anyhow::Result<Vec<pb::Deal>>>> = Vec::new();
    for part in 0..4 {
        let mut mine: Vec<pb::Deal> = made.iter().skip(part).step_by(4).cloned().collect();
        let (mut client, token, open) = (deals.client.clone(), boss.clone(), open.clone());
        movers.push(tokio::spawn(async move {
            for step in 0..MOVES / 4 {
                let n = mine.len();
                let deal = &mut mine[step % n];
                let at = open.iter().position(|s| *s == deal.stage_id).unwrap_or(0);
                let request = pb::MoveDealRequest {
                    deal_id: deal.id.clone(),
                    expected_version: deal.version,
                    stage_id: open[(at + 1) % open.len()].clone(),
                    loss_reason_id: None,
                };
                let moved = client.move_deal(outgoing(request, &token)).await?;
                *deal = moved.into_inner().deal.expect("deal");
            }
            Ok(mine)
        }));
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let reader = stack.token(ACCOUNT, "board", &[Permission::DealsRead]);
    let snapshot = pb::WatchDealsRequest {
        start_with_snapshot: true,
        cards_per_stage: 0,
        ..of_plan(&plan)
    };
    let mut live = watch(channel.clone(), &reader, snapshot).await?;
    let first = next(&mut live).await?;
    let Some(pb::watch_deals_response::Item::Snapshot(board)) = first.item else {
        anyhow::bail!("the first message is not the board: {first:?}");
    };
    assert_eq!(
        first.resume_token.split('.').count(),
        5,
        "the board's token carries its snapshot: {}",
        first.resume_token
    );
    let mut counts = counts_of(&board);
    let mut last = Vec::new();
    for mover in movers {
        last.extend(mover.await??);
    }
    // A last change to know when everything before it has come.
    let marker = deals.retitle(&last[0], "marker").await?;
    loop {
        let (change, _) = next_change(&mut live).await?;
        let deal = change.deal.as_ref().expect("deal");
        if let Some(from) = &change.previous_stage_id {
            *counts.entry(from.clone()).or_default() -= 1;
            *counts.entry(deal.stage_id.clone()).or_default() += 1;
        }
        if deal.id == marker.id && deal.version == marker.version {
            break;
        }
    }
    let now = deals
        .client
        .get_board(outgoing(
            pb::GetBoardRequest {
                plan_id: plan.id.clone(),
                ..Default::default()
            },
            &reader,
        ))
        .await?
        .into_inner();
    counts.retain(|_, n| *n != 0);
    assert_eq!(
        counts,
        counts_of(&now),
        "the snapshot and the changes after it"
    );
    // The snapshot rides in the tokens (`w1.<position>.<xmin>.<xmax>.<running>`) only
    // until the outbox horizon passed it: then they are positions again (`w1.<position>`).
    let with_snapshot = |token: &str| token.split('.').count() > 2;
    let mut marker = marker;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        marker = deals
            .retitle(&marker, &format!("marker {}", marker.version))
            .await?;
        let (change, token) = next_change(&mut live).await?;
        assert_eq!(version(&change), marker.version);
        if !with_snapshot(&token) {
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the tokens still carry the snapshot: {token}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stack.stop().await
}

/// On a deal-service replica that lets a watcher fall 16 batches behind and an account
/// hold 3 watches: a watcher that reads nothing is cut off (ABORTED `WATCH_LAGGED`) while
/// one that reads gets every change in time, and the cut one resumes with its last token
/// to the rest, none twice; a fourth watch is refused; a watch ends UNAUTHENTICATED when
/// its token expires, and UNAVAILABLE `DRAINING` when the replica stops.
#[tokio::test]
async fn slow_watchers_are_cut_off_and_every_watch_ends_with_a_status() -> anyhow::Result<()> {
    const CHANGES: i64 = 300;
    let stack = DealStack::start().await?;
    let mut config = deal_service::Config::local(&stack.db.url, &stack.nats.url);
    config.watch.buffer = 16;
    config.watch.per_account = 3;
    let stop = CancellationToken::new();
    let replica = config.start(stop.clone()).await?;
    let channel = stack.channel_to(&replica).await?;
    let plan = manual_plan(&stack, "Busy").await?;
    let reader = stack.token(ACCOUNT, "board", &[Permission::DealsRead]);
    let narrow = narrow_channel(&replica).await?;
    let mut slow = watch(narrow, &reader, of_plan(&plan)).await?;
    let mut fast = watch(channel.clone(), &reader, of_plan(&plan)).await?;
    let third = watch(channel.clone(), &reader, of_plan(&plan)).await?;
    let refused = watch(channel.clone(), &reader, of_plan(&plan))
        .await
        .expect_err("a fourth watch of the account");
    assert_eq!(refused.code(), Code::ResourceExhausted);
    drop(third);

    let mut deals = Deals {
        client: DealServiceClient::new(stack.channel().await?),
        token: stack.token(ACCOUNT, "boss", BOSS),
    };
    let mut deal = deals.create(&plan, "Busy Bee", "m1").await?;
    let writer = tokio::spawn(async move {
        for i in 1..CHANGES {
            deal = deals.retitle(&deal, &format!("change {i}")).await?;
        }
        anyhow::Ok(deal)
    });
    let mut fast_versions = Vec::new();
    while fast_versions.len() < CHANGES as usize {
        fast_versions.push(version(&next_change(&mut fast).await?.0));
    }
    assert_eq!(fast_versions, (1..=CHANGES).collect::<Vec<_>>());
    writer.await??;
    let (status, before) = end_of(&mut slow).await?;
    assert_eq!(
        (status.code(), reason(&status)),
        (Code::Aborted, "WATCH_LAGGED".into())
    );
    let mut slow_versions = change_versions(&before);
    let token = before
        .last()
        .map(|m| m.resume_token.clone())
        .unwrap_or_default();
    assert!(
        slow_versions.len() < CHANGES as usize,
        "cut off before the end"
    );
    let resumed = pb::WatchDealsRequest {
        resume_token: token,
        ..of_plan(&plan)
    };
    let mut resumed = watch(channel.clone(), &reader, resumed).await?;
    while slow_versions.len() < CHANGES as usize {
        slow_versions.push(version(&next_change(&mut resumed).await?.0));
    }
    assert_eq!(slow_versions, (1..=CHANGES).collect::<Vec<_>>());
    drop(resumed);

    let brief = stack.token_lasting(
        (ACCOUNT, "board", &[Permission::DealsRead]),
        Duration::from_secs(2),
    );
    let mut expiring = watch(channel.clone(), &brief, of_plan(&plan)).await?;
    let (status, _) = end_of(&mut expiring).await?;
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");

    let mut draining = watch(channel.clone(), &reader, of_plan(&plan)).await?;
    stop.cancel();
    let (status, _) = end_of(&mut draining).await?;
    assert_eq!(
        (status.code(), reason(&status)),
        (Code::Unavailable, "DRAINING".into())
    );
    drop((fast, slow, draining));
    replica.wait().await?;
    stack.stop().await
}

/// A client that stops reading while changes wait for it is cut off by time (here a
/// 1-second stall limit; the feed's buffer is far from full), not only once it reads
/// again: its place among the account's watches (here one) frees for a new watch, and
/// when it does read, its stream ends ABORTED `WATCH_LAGGED`, resumable with its last
/// token to every later change.
#[tokio::test]
async fn a_client_that_reads_nothing_is_cut_off_in_time() -> anyhow::Result<()> {
    const CHANGES: i64 = 300;
    let stack = DealStack::start().await?;
    let mut config = deal_service::Config::local(&stack.db.url, &stack.nats.url);
    config.watch.per_account = 1;
    config.watch.stall = Duration::from_secs(1);
    let stop = CancellationToken::new();
    let replica = config.start(stop.clone()).await?;
    let channel = stack.channel_to(&replica).await?;
    let plan = manual_plan(&stack, "Stalled").await?;
    let reader = stack.token(ACCOUNT, "board", &[Permission::DealsRead]);
    let narrow = narrow_channel(&replica).await?;
    let mut stalled = watch(narrow, &reader, of_plan(&plan)).await?;
    let refused = watch(channel.clone(), &reader, of_plan(&plan))
        .await
        .expect_err("the account's one watch is taken");
    assert_eq!(refused.code(), Code::ResourceExhausted);

    let mut deals = Deals {
        client: DealServiceClient::new(stack.channel().await?),
        token: stack.token(ACCOUNT, "boss", BOSS),
    };
    let mut deal = deals.create(&plan, "Still Waiting", "m1").await?;
    for i in 1..CHANGES {
        deal = deals.retitle(&deal, &format!("change {i}")).await?;
    }
    // Nothing of `stalled` is read: its place frees once its task gave up on it.
    let next_watch = admitted(&channel, &reader, of_plan(&plan)).await?;
    let (status, before) = end_of(&mut stalled).await?;
    assert_eq!(
        (status.code(), reason(&status)),
        (Code::Aborted, "WATCH_LAGGED".into()),
        "{status:?}"
    );
    let got = change_versions(&before);
    assert!(
        got.len() < CHANGES as usize && got == (1..=got.len() as i64).collect::<Vec<_>>(),
        "the first changes in order, not all: {got:?}"
    );
    // Its place frees as soon as the replica sees the client leave.
    drop(next_watch);
    let token = before.last().map(|m| m.resume_token.clone());
    let resumed = pb::WatchDealsRequest {
        resume_token: token.unwrap_or_default(),
        ..of_plan(&plan)
    };
    let mut resumed = admitted(&channel, &reader, resumed).await?;
    let mut rest = got;
    while rest.len() < CHANGES as usize {
        rest.push(version(&next_change(&mut resumed).await?.0));
    }
    assert_eq!(rest, (1..=CHANGES).collect::<Vec<_>>());
    drop((stalled, resumed));
    stop.cancel();
    replica.wait().await?;
    stack.stop().await
}

/// A watch the client closes gives its place back at once, on a quiet account too (no
/// change comes that would show the replica the client is gone): an account at its
/// bound of two opens two more right after closing its two.
#[tokio::test]
async fn a_closed_watch_gives_its_place_back_at_once() -> anyhow::Result<()> {
    let stack = DealStack::start().await?;
    let mut config = deal_service::Config::local(&stack.db.url, &stack.nats.url);
    config.watch.per_account = 2;
    let stop = CancellationToken::new();
    let replica = config.start(stop.clone()).await?;
    let channel = stack.channel_to(&replica).await?;
    let plan = manual_plan(&stack, "Quiet").await?;
    let reader = stack.token(ACCOUNT, "board", &[Permission::DealsRead]);
    let nobody = pb::WatchDealsRequest {
        manager_id: Some("nobody".into()),
        ..of_plan(&plan)
    };
    for round in 0..3 {
        // Within moments (the replica sees the stream close), not at some later change.
        let admitted = eventually(Duration::from_secs(3), || async {
            let mut open = Vec::new();
            for _ in 0..2 {
                match watch(channel.clone(), &reader, nobody.clone()).await {
                    Ok(watch) => open.push(watch),
                    Err(status) if status.code() == Code::ResourceExhausted => return Ok(None),
                    Err(status) => return Err(status.into()),
                }
            }
            Ok(Some(open))
        })
        .await;
        let mut admitted = admitted.map_err(|e| anyhow::anyhow!("round {round}: {e}"))?;
        // Open: each got the token it opens with.
        for watch in &mut admitted {
            assert_eq!(next(watch).await?.item, None);
        }
        drop(admitted);
    }
    stop.cancel();
    replica.wait().await?;
    stack.stop().await
}

/// Watches come and go: after every watch of the account closed (and the replica noticed
/// it), a new one still gets the changes.
#[tokio::test]
async fn a_watch_after_all_others_closed_sees_the_changes() -> anyhow::Result<()> {
    let stack = DealStack::start().await?;
    let channel = stack.channel().await?;
    let plan = manual_plan(&stack, "Again").await?;
    let reader = stack.token(ACCOUNT, "board", &[Permission::DealsRead]);
    let mut deals = Deals {
        client: DealServiceClient::new(channel.clone()),
        token: stack.token(ACCOUNT, "boss", BOSS),
    };
    let mut first = watch(channel.clone(), &reader, of_plan(&plan)).await?;
    let mut deal = deals.create(&plan, "Once Again", "m1").await?;
    assert_eq!(version(&next_change(&mut first).await?.0), 1);
    drop(first);
    for round in 0..3 {
        // A change the closed watch's task meets, and ends on.
        deal = deals.retitle(&deal, &format!("round {round}")).await?;
        let mut next_one = watch(channel.clone(), &reader, of_plan(&plan)).await?;
        deal = deals.retitle(&deal, &format!("round {round} seen")).await?;
        // From about where the feed was when it opened: the change before may come too.
        let mut seen = version(&next_change(&mut next_one).await?.0);
        if seen < deal.version {
            seen = version(&next_change(&mut next_one).await?.0);
        }
        assert_eq!(seen, deal.version, "round {round}");
    }
    stack.stop().await
}
