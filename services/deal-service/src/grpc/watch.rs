//! WatchDeals: a watcher's stream of its account's deal changes, from the live feed
//! (`events/feed.rs`), after a resume token or a snapshot of the board.

use std::{
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use salesplan_platform::{
    AllChecks, ApiError, Checks, Permission, Reason,
    auth::{self, TokenExpiry},
    ids::parse_id,
};
use salesplan_proto::v1 as pb;
use tokio::sync::{broadcast::error::RecvError, mpsc, oneshot};
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
    /// The plan named, if one was.
    plan_id: Option<uuid::Uuid>,
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
        if let Some(plan_id) = asked.plan_id {
            // A plan that is not the account's is NOT_FOUND, as for GetBoard, and a stage
            // not of the plan is named: not a watch that stays silent for ever. A read
            // within the account's read allowance, like the snapshot's.
            let _permit = self.reads.admit(&actor.account_id)?;
            let plan = self.store.plan(&actor.account_id, plan_id).await?;
            salesplan_platform::error::every(asked.filter.stage_ids.iter().enumerate().map(
                |(i, stage)| match plan.stages.iter().any(|s| s.id.to_string() == *stage) {
                    true => Ok(()),
                    false => Err(ApiError::invalid(
                        format!("stage_ids[{i}]"),
                        "not a stage of this plan",
                    )),
                },
            ))?;
        }
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
        let (to_client, stream) = ToClient::new(feed.stall_limit());
        let watcher = Watcher {
            feed: feed.clone(),
            account,
            filter: asked.filter,
            from,
            out: to_client,
            shutdown: self.watch.shutdown.clone(),
            expires_in: expiry.map(TokenExpiry::remaining),
            passed: 0,
            last_sent: tokio::time::Instant::now(),
        };
        tokio::spawn(watcher.run(first, watching));
        Ok(Response::new(stream))
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
        plan_id,
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
    out: ToClient,
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
        let (shutdown, expires_in) = (self.shutdown.clone(), self.expires_in);
        // A client that leaves frees its place at once, not at the next change it would get.
        let client = self.out.messages.clone();
        let expiry = async move {
            match expires_in {
                Some(left) => tokio::time::sleep(left).await,
                None => std::future::pending().await,
            }
        };
        let end = tokio::select! {
            end = self.watch(first, &mut watching) => end,
            () = client.closed() => End::Left,
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
            self.out.end(status);
        }
    }

    async fn watch(&mut self, first: Option<pb::GetBoardResponse>, watching: &mut Watching) -> End {
        // The board, or a checkpoint: either way the client holds a token from the start,
        // so a watch that ends before its first change still resumes without a gap.
        let opening = pb::WatchDealsResponse {
            item: first.map(pb::watch_deals_response::Item::Snapshot),
            resume_token: self.from.encode(),
        };
        if let Err(end) = self.out.send(opening).await {
            return end;
        }
        // What the feed broadcast before this watch joined it comes from the stream.
        if let Some(end) = self.send_history(watching.position).await {
            return end;
        }
        loop {
            match watching.receiver.recv().await {
                Ok(batch) => {
                    if let Err(end) = self.send_all(&batch).await {
                        return end;
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
                    if let Err(end) = self.send_all(&batch).await {
                        return Some(end);
                    }
                }
                Ok(None) => return None,
                Err(err) => return Some(End::Status(err.into())),
            }
        }
    }

    /// Sends the changes of `batch` this watcher wants, in order, and a checkpoint when
    /// only others passed for a while; how the watch ended, if it did.
    async fn send_all(&mut self, batch: &[Change]) -> Result<(), End> {
        if self.from.snapshot.is_some() {
            self.from.past(self.feed.horizon());
        }
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
            self.out.send(response).await?;
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
            self.out.send(checkpoint).await?;
            self.from = token;
            self.last_sent = tokio::time::Instant::now();
        }
        Ok(())
    }
}

/// The way from a watcher's task to its client: changes in order, at most [`IN_HAND`] in
/// hand, each taken within the stall limit; and the status that ends the watch.
struct ToClient {
    messages: mpsc::Sender<pb::WatchDealsResponse>,
    last_word: Option<oneshot::Sender<Status>>,
    stall: Duration,
}

impl ToClient {
    fn new(stall: Duration) -> (Self, WatchStream) {
        let (messages, receiver) = mpsc::channel(IN_HAND);
        let (last_word, last) = oneshot::channel();
        let to_client = Self {
            messages,
            last_word: Some(last_word),
            stall,
        };
        let stream = FromWatcher {
            messages: receiver,
            last_word: Some(last),
            done: false,
        };
        (to_client, Box::pin(stream))
    }

    /// Sends `message` once there is room: the client left, or took nothing for the stall
    /// limit (a stalled client holds its place among the watches and its memory on the
    /// server: cut off, it resumes with its token), ends the watch.
    async fn send(&self, message: pb::WatchDealsResponse) -> Result<(), End> {
        match tokio::time::timeout(self.stall, self.messages.send(message)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(End::Left),
            Err(_) => Err(End::Status(ended(
                Code::Aborted,
                Reason::WatchLagged,
                &format!(
                    "this watcher's client took nothing for {} s while changes waited, and \
                     was cut off: reconnect with your last resume token",
                    self.stall.as_secs()
                ),
            ))),
        }
    }

    /// Ends the watch with `status`, ahead of the changes still in hand.
    fn end(&mut self, status: Status) {
        if let Some(last_word) = self.last_word.take() {
            let _ = last_word.send(status);
        }
    }
}

/// A watch's response stream: its watcher's changes, until the status that ends it. The
/// status goes ahead of changes still in hand (dropped: the client resumes after the last
/// change it got), so it reaches even a client that stopped reading as soon as it reads.
struct FromWatcher {
    messages: mpsc::Receiver<pb::WatchDealsResponse>,
    last_word: Option<oneshot::Receiver<Status>>,
    done: bool,
}

impl futures::Stream for FromWatcher {
    type Item = Result<pb::WatchDealsResponse, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        if let Some(last_word) = self.last_word.as_mut() {
            match Pin::new(last_word).poll(cx) {
                Poll::Ready(Ok(status)) => {
                    self.done = true;
                    return Poll::Ready(Some(Err(status)));
                }
                // The task ended without a word: the client left; what is in hand goes.
                Poll::Ready(Err(_)) => self.last_word = None,
                Poll::Pending => {}
            }
        }
        self.messages.poll_recv(cx).map(|message| message.map(Ok))
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
