//! WatchDeals: a watcher's stream of its account's deal changes, from the live feed
//! (`events/feed.rs`), after a resume token or a snapshot of the board.

use std::{pin::Pin, time::Duration};

use salesplan_platform::{
    AllChecks, ApiError, Checks, Permission, Reason,
    auth::{self, TokenExpiry},
    ids::parse_id,
};
use salesplan_proto::v1 as pb;
use tokio::sync::{broadcast::error::RecvError, mpsc};
use tokio_util::sync::CancellationToken;
use tonic::{Code, Request, Response, Status};

use super::{
    Api,
    deals::{board_response, cards_per_stage},
};
use crate::{
    convert,
    domain::{
        feed::{ResumeToken, Seen, WatchFilter},
        query::DealQuery,
    },
    events::feed::{Change, Feed, Watching, expired},
};

pub type WatchStream =
    Pin<Box<dyn futures::Stream<Item = Result<pb::WatchDealsResponse, Status>> + Send>>;

/// Messages in hand for one watcher beyond what the connection buffers: a watcher that
/// does not take them holds up only its own task, until the feed cuts it off.
const IN_HAND: usize = 16;
/// Stage ids one watch may name (a plan has at most 50 stages).
const MAX_STAGES: usize = 100;
/// How long a watch's closing status waits for room in its client's stream.
const LAST_WORD: Duration = Duration::from_secs(5);
/// A watcher that got nothing for this long while its account's other changes passed
/// gets a checkpoint: a resume token past them.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(30);

/// What WatchDeals needs beside the store: the live feed, and the service's shutdown,
/// which ends every watch with a status to reconnect elsewhere.
#[derive(Clone)]
pub struct Watch {
    pub feed: Feed,
    pub shutdown: CancellationToken,
}

/// A watch as asked, checked.
struct Asked {
    filter: WatchFilter,
    resume: Option<ResumeToken>,
    /// With `start_with_snapshot`: the board's query, sort and cards per stage.
    snapshot: Option<(DealQuery, crate::domain::query::Sort, usize)>,
}

impl Api {
    pub(super) async fn watch(
        &self,
        request: Request<pb::WatchDealsRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        let actor = auth::reader(&request, Permission::DealsRead)?;
        let expiry = TokenExpiry::of(&request);
        let asked = asked(request.into_inner())?;
        let feed = &self.watch.feed;
        let watching = feed.watch(&actor.account_id)?;
        let account = actor.account_id.clone();
        let (first, from) = match (&asked.snapshot, &asked.resume) {
            (Some(board), _) => {
                let (board, from) = self.snapshot(&account, board).await?;
                (Some(board), from)
            }
            (None, Some(token)) => (None, resumed(feed, token).await?),
            (None, None) => {
                let from = ResumeToken {
                    after: watching.position,
                    snapshot: None,
                };
                (None, from)
            }
        };
        let (sender, receiver) = mpsc::channel(IN_HAND);
        let watcher = Watcher {
            feed: feed.clone(),
            account,
            filter: asked.filter,
            from,
            sender,
            shutdown: self.watch.shutdown.clone(),
            expires_in: expiry.map(TokenExpiry::remaining),
            passed: 0,
            last_sent: tokio::time::Instant::now(),
        };
        tokio::spawn(watcher.run(first, watching));
        let stream = tokio_stream::wrappers::ReceiverStream::new(receiver);
        Ok(Response::new(Box::pin(stream)))
    }
}

impl Api {
    /// The board a watch starts with, and the token of the changes after it: the stream's
    /// position read first (every change up to it is in the board), then the board with
    /// the database snapshot it was read in (changes it already holds are skipped).
    async fn snapshot(
        &self,
        account: &str,
        (query, sort, cards): &(DealQuery, crate::domain::query::Sort, usize),
    ) -> Result<(pb::GetBoardResponse, ResumeToken), Status> {
        let _permit = self.reads.admit(account)?;
        let (last, _) = self.watch.feed.bounds().await?;
        let plan_id = query.plan_id.unwrap_or_default();
        let plan = self.store.plan(account, plan_id).await?;
        let stages: Vec<uuid::Uuid> = plan
            .stages
            .iter()
            .map(|s| s.id)
            .filter(|id| query.stage_ids.is_empty() || query.stage_ids.contains(id))
            .collect();
        let (board, snapshot) = self
            .store
            .board_at_snapshot(account, query, (&stages, *sort, *cards))
            .await?;
        let filter = pb::DealFilter {
            plan_id: plan_id.to_string(),
            stage_ids: query.stage_ids.iter().map(ToString::to_string).collect(),
            manager_ids: query.managers.clone(),
            ..Default::default()
        };
        let from = ResumeToken {
            after: last,
            snapshot: Some(snapshot),
        };
        Ok((board_response(&plan, &board, &filter, *sort), from))
    }
}

/// A resume token checked against what the stream holds: not ahead of it, and not older
/// than its first change kept.
async fn resumed(feed: &Feed, token: &ResumeToken) -> Result<ResumeToken, ApiError> {
    let (last, first) = feed.bounds().await?;
    if token.after > last {
        return Err(ApiError::invalid(
            "resume_token",
            "not a resume token of this feed (ahead of it)",
        ));
    }
    if token.after + 1 < first {
        return Err(expired(
            "the changes after this token are no longer kept".into(),
        ));
    }
    Ok(token.clone())
}

/// The request's fields, checked all at once.
fn asked(req: pb::WatchDealsRequest) -> Result<Asked, ApiError> {
    let mut checks = Checks::new();
    if req.stage_ids.len() > MAX_STAGES {
        checks.note(ApiError::invalid(
            "stage_ids",
            format!("at most {MAX_STAGES}"),
        ));
    }
    let resume = (!req.resume_token.is_empty()).then(|| {
        ResumeToken::decode(&req.resume_token)
            .ok_or_else(|| ApiError::invalid("resume_token", "not a resume token of this feed"))
    });
    let (plan_id, stage_ids, manager_id, resume, sort) = checks
        .take(
            (
                (!req.plan_id.is_empty())
                    .then(|| parse_id("plan_id", &req.plan_id))
                    .transpose(),
                convert::ids("stage_ids", &req.stage_ids),
                convert::optional_manager("manager_id", req.manager_id.as_deref()),
                resume.transpose(),
                convert::sort_from(req.sort),
            )
                .all()
                .map(Some),
        )
        .unwrap_or_default();
    if req.start_with_snapshot && req.plan_id.is_empty() {
        checks.note(ApiError::invalid(
            "plan_id",
            "required with start_with_snapshot (a board is a plan's)",
        ));
    }
    if req.start_with_snapshot && !req.resume_token.is_empty() {
        checks.note(ApiError::invalid(
            "resume_token",
            "not with start_with_snapshot: a snapshot starts over",
        ));
    }
    checks.finish()?;
    let filter = WatchFilter {
        plan_id: plan_id.map(|p| p.to_string()),
        stage_ids: stage_ids.iter().map(ToString::to_string).collect(),
        manager_id: manager_id.clone(),
    };
    let snapshot = req.start_with_snapshot.then(|| {
        let query = DealQuery {
            plan_id,
            stage_ids,
            managers: manager_id.into_iter().collect(),
            ..DealQuery::default()
        };
        (query, sort, cards_per_stage(req.cards_per_stage))
    });
    Ok(Asked {
        filter,
        resume,
        snapshot,
    })
}

/// One watch's task: its history from the stream, then the feed's changes, each one that
/// matches to the client with its resume token, until the client leaves, the feed cuts
/// it off, the caller's token expires or the service stops.
struct Watcher {
    feed: Feed,
    account: String,
    filter: WatchFilter,
    /// Where the client is: the last change sent (the snapshot's, at first).
    from: ResumeToken,
    sender: mpsc::Sender<Result<pb::WatchDealsResponse, Status>>,
    shutdown: CancellationToken,
    expires_in: Option<Duration>,
    /// The last of the account's changes this watcher passed over (not its filter's).
    passed: u64,
    last_sent: tokio::time::Instant,
}

/// Why a watch ends.
enum End {
    /// The client left (or the stream ended as it should): nothing more to send.
    Left,
    Status(Status),
}

impl Watcher {
    async fn run(mut self, first: Option<pb::GetBoardResponse>, mut watching: Watching) {
        let (shutdown, sender, expires_in) =
            (self.shutdown.clone(), self.sender.clone(), self.expires_in);
        let expiry = async move {
            match expires_in {
                Some(left) => tokio::time::sleep(left).await,
                None => std::future::pending().await,
            }
        };
        let end = tokio::select! {
            end = self.watch(first, &mut watching) => end,
            () = shutdown.cancelled() => End::Status(ended(
                Code::Unavailable,
                Reason::Draining,
                "this replica is stopping: reconnect, with your last resume token",
            )),
            () = expiry => End::Status(ended(
                Code::Unauthenticated,
                Reason::Unauthenticated,
                "your token expired: reconnect with a fresh one and your last resume token",
            )),
        };
        if let End::Status(status) = end {
            // After what is in hand, as soon as the client reads; a client that reads
            // nothing (or is gone) is not waited for long.
            let _ = tokio::time::timeout(LAST_WORD, sender.send(Err(status))).await;
        }
    }

    async fn watch(&mut self, first: Option<pb::GetBoardResponse>, watching: &mut Watching) -> End {
        if let Some(board) = first {
            let response = pb::WatchDealsResponse {
                item: Some(pb::watch_deals_response::Item::Snapshot(board)),
                resume_token: self.from.encode(),
            };
            if self.sender.send(Ok(response)).await.is_err() {
                return End::Left;
            }
        }
        // What the feed broadcast before this watch joined it comes from the stream.
        if let Some(end) = self.send_history(watching.position).await {
            return end;
        }
        loop {
            match watching.receiver.recv().await {
                Ok(batch) => {
                    if !self.send_all(&batch).await {
                        return End::Left;
                    }
                }
                Err(RecvError::Lagged(missed)) => {
                    return End::Status(ended(
                        Code::Aborted,
                        Reason::WatchLagged,
                        &format!(
                            "this watcher fell {missed} batches of changes behind and was cut \
                             off: reconnect with your last resume token"
                        ),
                    ));
                }
                Err(RecvError::Closed) => {
                    return End::Status(ended(
                        Code::Unavailable,
                        Reason::Draining,
                        "this replica is stopping: reconnect, with your last resume token",
                    ));
                }
            }
        }
    }

    /// Sends the account's changes from after `self.from` up to `until` from the stream;
    /// how the watch ended, if it did.
    async fn send_history(&mut self, until: u64) -> Option<End> {
        let history = self
            .feed
            .history(&self.account, (self.from.after, until))
            .await;
        let mut history = match history {
            Ok(history) => history,
            Err(err) => return Some(End::Status(err.into())),
        };
        loop {
            match history.next().await {
                Ok(Some(batch)) => {
                    if !self.send_all(&batch).await {
                        return Some(End::Left);
                    }
                }
                Ok(None) => return None,
                Err(err) => return Some(End::Status(err.into())),
            }
        }
    }

    /// Sends the changes of `batch` this watcher wants, in order, and a checkpoint when
    /// only others passed for a while; false once the client left.
    async fn send_all(&mut self, batch: &[Change]) -> bool {
        for change in batch {
            if change.account_id != self.account || !self.from.wants(change.position, change.xid) {
                continue;
            }
            if !self.filter.matches(seen(&change.change)) {
                self.passed = self.passed.max(change.position);
                continue;
            }
            let token = ResumeToken {
                after: change.position,
                snapshot: self.from.snapshot.clone(),
            };
            let response = pb::WatchDealsResponse {
                item: Some(pb::watch_deals_response::Item::Change(
                    change.change.clone(),
                )),
                resume_token: token.encode(),
            };
            if self.sender.send(Ok(response)).await.is_err() {
                return false;
            }
            self.from = token;
            self.last_sent = tokio::time::Instant::now();
        }
        if self.passed > self.from.after && self.last_sent.elapsed() >= CHECKPOINT_EVERY {
            // The account's other changes move the token on, so a narrow watch's token
            // does not age out of the resume window while the account is busy.
            let token = ResumeToken {
                after: self.passed,
                snapshot: self.from.snapshot.clone(),
            };
            let checkpoint = pb::WatchDealsResponse {
                item: None,
                resume_token: token.encode(),
            };
            if self.sender.send(Ok(checkpoint)).await.is_err() {
                return false;
            }
            self.from = token;
            self.last_sent = tokio::time::Instant::now();
        }
        true
    }
}

/// A change as the filter looks at it.
fn seen(change: &pb::DealChange) -> Seen<'_> {
    let deal = change.deal.as_ref();
    Seen {
        plan_id: deal.map_or("", |d| d.plan_id.as_str()),
        stage_id: deal.map_or("", |d| d.stage_id.as_str()),
        previous_stage_id: change.previous_stage_id.as_deref(),
        manager_id: deal.and_then(|d| d.manager_id.as_deref()),
        previous_manager_id: change.previous_manager_id.as_deref(),
    }
}

fn ended(code: Code, reason: Reason, message: &str) -> Status {
    ApiError::Ended {
        code,
        reason,
        message: message.to_owned(),
    }
    .into()
}
