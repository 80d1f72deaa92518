//! The live feed of deal changes behind WatchDeals.
//!
//! One ordered consumer of SALESPLAN_DEALS per replica reads every account's events once.
//! Only the events of accounts with a watcher here are decoded and completed with their
//! deal's title and contact (from the store, once per batch and account: events carry no
//! personal data), and each batch goes to the watchers through a bounded broadcast. A
//! watcher that falls a whole buffer behind is cut off and resumes with its token; nothing
//! is buffered without bound. A resumed watch reads its account's history from the stream
//! itself up to where the broadcast took over.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use async_nats::jetstream::{
    consumer::{DeliverPolicy, pull::OrderedConfig},
    stream::Stream as JsStream,
};
use futures::StreamExt as _;
use prost::Message as _;
use salesplan_platform::{
    ApiError, Reason,
    bus::{Bus, streams},
};
use salesplan_proto::v1 as pb;
use time::OffsetDateTime;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    config::WatchConfig,
    domain::feed::{Horizon, Refusal, WatchBounds},
    store::Store,
};

/// Messages read before a batch goes out (fewer when no more are waiting).
const BATCH: usize = 256;
/// How long the feed waits before reading again after the broker or the store failed.
const RETRY: Duration = Duration::from_secs(1);
/// How often the feed reads the newest outbox horizon (one small read per replica).
const HORIZON_EVERY: Duration = Duration::from_secs(1);

/// One change as the watchers get it.
#[derive(Debug, Clone)]
pub struct Change {
    /// Its position in SALESPLAN_DEALS.
    pub position: u64,
    /// The deal-service transaction that wrote it (unknown for events from before it was
    /// recorded).
    pub xid: Option<i64>,
    pub account_id: String,
    pub change: pb::DealChange,
}

pub type Batch = Arc<Vec<Change>>;

#[derive(Clone)]
pub struct Feed {
    inner: Arc<Inner>,
}

struct Inner {
    sender: broadcast::Sender<Batch>,
    state: Mutex<State>,
    bus: Bus,
    store: Store,
    config: WatchConfig,
}

/// What a new watch and the feed agree on, under one lock.
#[derive(Default)]
struct State {
    /// Open watches per account (only these accounts' events are decoded).
    watched: HashMap<String, usize>,
    /// The end of the batch the feed read last: it takes the watched accounts as they are
    /// when it sets this, so a watch that joins later reads its account's changes up to
    /// here from the stream, and every later batch is sent with its account in it.
    position: u64,
    /// Whether the feed has taken its starting position: before, a watch resumed from a
    /// token could not tell where its history ends.
    started: bool,
    /// The newest outbox horizon read (none until one is).
    horizon: Option<Horizon>,
}

/// An admitted watch: its share of the broadcast, given back when dropped.
pub struct Watching {
    pub receiver: broadcast::Receiver<Batch>,
    /// Every change up to here was broadcast before `receiver` existed; every one after
    /// it reaches `receiver` (some at or below it may too).
    pub position: u64,
    feed: Feed,
    account_id: String,
}

impl Drop for Watching {
    fn drop(&mut self) {
        let mut state = self.feed.state();
        if let Some(n) = state.watched.get_mut(&self.account_id) {
            *n -= 1;
            if *n == 0 {
                state.watched.remove(&self.account_id);
            }
        }
    }
}

impl Feed {
    pub fn new(bus: Bus, store: Store, config: WatchConfig) -> Self {
        let (sender, _) = broadcast::channel(config.buffer.max(1));
        Self {
            inner: Arc::new(Inner {
                sender,
                state: Mutex::new(State::default()),
                bus,
                store,
                config,
            }),
        }
    }

    /// How long a watcher's client may take nothing while changes wait for it.
    pub fn stall_limit(&self) -> std::time::Duration {
        self.inner.config.stall
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while counting leaves the counts as they were: still usable.
        self.inner
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Admits a watch of `account_id`, within the account's and the replica's bounds
    /// ([`WatchBounds::admit`]; RESOURCE_EXHAUSTED beyond them).
    pub fn watch(&self, account_id: &str) -> Result<Watching, ApiError> {
        let mut state = self.state();
        if !state.started {
            return Err(ApiError::Unavailable(
                "the live feed is starting: retry in a moment".into(),
            ));
        }
        let config = self.inner.config;
        let total: usize = state.watched.values().sum();
        let mine = state.watched.get(account_id).copied().unwrap_or(0);
        let bounds = WatchBounds {
            per_account: config.per_account,
            total: config.total,
        };
        if let Err(Refusal { whose, limit }) = bounds.admit(mine, total) {
            return Err(ApiError::ResourceExhausted {
                message: format!("{whose} watches are at their limit ({limit}): close one"),
                retry_after: Duration::from_secs(1),
            });
        }
        *state.watched.entry(account_id.to_owned()).or_default() += 1;
        // Under the lock the feed takes the accounts and the position under: every batch
        // after `position` is sent after this subscription, with this account in it.
        let receiver = self.inner.sender.subscribe();
        let position = state.position;
        drop(state);
        Ok(Watching {
            receiver,
            position,
            feed: self.clone(),
            account_id: account_id.to_owned(),
        })
    }

    /// The last position of SALESPLAN_DEALS and the first one it still holds.
    pub async fn bounds(&self) -> Result<(u64, u64), ApiError> {
        let mut stream = self.stream().await?;
        let info = stream
            .info()
            .await
            .map_err(|e| ApiError::Unavailable(format!("deal events' stream: {e}")))?;
        Ok((info.state.last_sequence, info.state.first_sequence))
    }

    async fn stream(&self) -> Result<JsStream, ApiError> {
        self.inner
            .bus
            .jetstream()
            .get_stream(streams::DEALS.name)
            .await
            .map_err(|e| ApiError::Unavailable(format!("deal events' stream: {e}")))
    }

    /// Reads SALESPLAN_DEALS from where it ends now, until `stop`, broadcasting the
    /// watched accounts' changes.
    pub async fn run(self, stop: CancellationToken) {
        while !stop.is_cancelled() {
            if let Err(err) = self.follow(&stop).await {
                tracing::warn!(error = %err, "the live feed stopped reading; again in a second");
                tokio::select! {
                    () = stop.cancelled() => {}
                    () = tokio::time::sleep(RETRY) => {}
                }
            }
        }
    }

    /// Reads the newest outbox horizon (SALESPLAN_HORIZONS keeps only that) every
    /// [`HORIZON_EVERY`] until `stop`: a watch that began with a snapshot forgets it once
    /// the horizon passed it ([`ResumeToken::past`]).
    pub async fn follow_horizons(self, stop: CancellationToken) {
        // The stream's handle is looked up once, and again only after a failed read.
        let mut stream = None;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(HORIZON_EVERY) => {}
            }
            match self.newest_horizon(&mut stream).await {
                Ok(Some(horizon)) => self.state().horizon = Some(horizon),
                Ok(None) => {}
                Err(err) => {
                    stream = None;
                    tracing::debug!(error = %err, "the outbox horizon is not readable");
                }
            }
        }
    }

    /// The newest outbox horizon read.
    pub fn horizon(&self) -> Option<Horizon> {
        self.state().horizon
    }

    async fn newest_horizon(
        &self,
        stream: &mut Option<JsStream>,
    ) -> Result<Option<Horizon>, ApiError> {
        use async_nats::jetstream::stream::LastRawMessageErrorKind;
        let stream = match stream {
            Some(stream) => stream,
            None => stream.insert(
                self.inner
                    .bus
                    .jetstream()
                    .get_stream(streams::HORIZONS.name)
                    .await
                    .map_err(|e| ApiError::Unavailable(format!("horizons' stream: {e}")))?,
            ),
        };
        let message = match stream
            .get_last_raw_message_by_subject(streams::HORIZON_SUBJECT)
            .await
        {
            Ok(message) => message,
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => return Ok(None),
            Err(e) => return Err(ApiError::Unavailable(format!("the newest horizon: {e}"))),
        };
        let horizon = pb::Horizon::decode(message.payload)
            .map_err(|e| ApiError::internal(format!("undecodable horizon: {e}")))?;
        Ok(Some(Horizon {
            xid: horizon.xid_horizon,
            position: horizon.deals_sequence,
        }))
    }

    /// Takes the feed's starting position, where SALESPLAN_DEALS ends now: nothing before
    /// it is broadcast (a watch resumed from before reads it from the stream). The service
    /// does this before it serves, so no watch meets a feed that has not started.
    pub async fn start(&self) -> Result<(), ApiError> {
        let (last, _) = self.bounds().await?;
        let mut state = self.state();
        if !state.started {
            state.position = last;
            state.started = true;
        }
        Ok(())
    }

    async fn follow(&self, stop: &CancellationToken) -> Result<(), ApiError> {
        self.start().await?;
        let after = self.state().position;
        // What is ready, up to a batch: a batch shares one lookup of the contacts.
        let mut messages = ordered(&self.stream().await?, None, after, false)
            .await?
            .ok_or_else(|| ApiError::Unavailable("the deal events' consumer".into()))?
            .ready_chunks(BATCH);
        loop {
            let chunk = tokio::select! {
                () = stop.cancelled() => return Ok(()),
                next = messages.next() => next,
            };
            let Some(chunk) = chunk else {
                return Err(ApiError::Unavailable(
                    "the deal events' consumer ended".into(),
                ));
            };
            let read = chunk
                .into_iter()
                .collect::<Result<Vec<_>, _>>()
                .map_err(unavailable)?;
            let last = read.iter().map(position).max().unwrap_or(after);
            let watched: HashSet<String> = {
                let mut state = self.state();
                state.position = last;
                state.watched.keys().cloned().collect()
            };
            let batch = loop {
                match complete(&self.inner.store, &read, |a| watched.contains(a)).await {
                    Ok(batch) => break batch,
                    Err(err) => {
                        tracing::warn!(error = %err, "the live feed cannot read deals; again in a second");
                        tokio::select! {
                            () = stop.cancelled() => return Ok(()),
                            () = tokio::time::sleep(RETRY) => {}
                        }
                    }
                }
            };
            if !batch.is_empty() {
                // No receiver: nobody watches; nothing to do.
                let _ = self.inner.sender.send(Arc::new(batch));
            }
        }
    }

    /// The changes of `account_id` after `after` up to `until`, read from the stream a
    /// batch at a time (no faster than they are taken).
    pub async fn history(
        &self,
        account_id: &str,
        (after, until): (u64, u64),
    ) -> Result<History, ApiError> {
        let messages = if until > after {
            let filter = streams::deal_subjects_of(account_id);
            ordered(&self.stream().await?, Some(filter), after, true)
                .await?
                .map(|m| m.ready_chunks(BATCH))
        } else {
            None
        };
        Ok(History {
            feed: self.clone(),
            messages,
            until,
            checked: false,
        })
    }
}

/// A resumed watch's history, from the stream itself.
pub struct History {
    feed: Feed,
    /// None: nothing to read (or all read).
    messages: Option<futures::stream::ReadyChunks<async_nats::jetstream::consumer::pull::Ordered>>,
    until: u64,
    checked: bool,
}

impl History {
    /// The next batch of changes, or none once everything up to the end was read. Refused
    /// (FAILED_PRECONDITION `WATCH_TOKEN_EXPIRED`) when the first of them is older than
    /// the resume window.
    pub async fn next(&mut self) -> Result<Option<Vec<Change>>, ApiError> {
        let Some(messages) = self.messages.as_mut() else {
            return Ok(None);
        };
        let Some(chunk) = messages.next().await else {
            return Err(ApiError::Unavailable("the history's consumer ended".into()));
        };
        let mut read = chunk
            .into_iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(unavailable)?;
        let until = self.until;
        let is_last = |m: &async_nats::jetstream::Message| pending(m) == 0 || position(m) >= until;
        let done = match read.iter().position(is_last) {
            Some(last) => {
                read.truncate(last + 1);
                true
            }
            None => false,
        };
        if !self.checked {
            self.checked = true;
            self.check_window(&read[0])?;
        }
        if done {
            self.messages = None;
        }
        read.retain(|m| position(m) <= until);
        let batch = complete(&self.feed.inner.store, &read, |_| true).await?;
        Ok(Some(batch))
    }

    /// Whether the oldest change a resumed watch needs is within the resume window.
    fn check_window(&self, first: &async_nats::jetstream::Message) -> Result<(), ApiError> {
        let Ok(info) = first.info() else {
            return Ok(());
        };
        let age = OffsetDateTime::now_utc() - info.published;
        if age > self.feed.inner.config.resume_window {
            return Err(expired(format!(
                "the changes after this token are {} s old, beyond the {} s kept for resuming",
                age.whole_seconds(),
                self.feed.inner.config.resume_window.as_secs()
            )));
        }
        Ok(())
    }
}

/// FAILED_PRECONDITION `WATCH_TOKEN_EXPIRED`, telling the client what to do.
pub fn expired(why: String) -> ApiError {
    ApiError::precondition(
        Reason::WatchTokenExpired,
        format!("{why}: reload the board (GetBoard, or WatchDeals with start_with_snapshot)"),
    )
}

/// An ordered consumer of SALESPLAN_DEALS (of `filter`'s subjects) from after `after`;
/// none when `only_pending` and nothing waits for it (it would wait for what comes next).
async fn ordered(
    stream: &JsStream,
    filter: Option<String>,
    after: u64,
    only_pending: bool,
) -> Result<Option<async_nats::jetstream::consumer::pull::Ordered>, ApiError> {
    let consumer = stream
        .create_consumer(OrderedConfig {
            filter_subject: filter.unwrap_or_default(),
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: after + 1,
            },
            ..Default::default()
        })
        .await
        .map_err(|e| ApiError::Unavailable(format!("deal events' consumer: {e}")))?;
    if only_pending && consumer.cached_info().num_pending == 0 {
        return Ok(None);
    }
    let messages = consumer
        .messages()
        .await
        .map_err(|e| ApiError::Unavailable(format!("deal events' consumer: {e}")))?;
    Ok(Some(messages))
}

fn unavailable(err: impl std::fmt::Display) -> ApiError {
    ApiError::Unavailable(format!("deal events: {err}"))
}

fn position(message: &async_nats::jetstream::Message) -> u64 {
    message.info().map(|i| i.stream_sequence).unwrap_or(0)
}

fn pending(message: &async_nats::jetstream::Message) -> u64 {
    message.info().map(|i| i.pending).unwrap_or(0)
}

/// The changes of `read` whose account is `wanted`, with their deals' titles and contacts
/// as the store holds them now (one query per account).
async fn complete(
    store: &Store,
    read: &[async_nats::jetstream::Message],
    wanted: impl Fn(&str) -> bool,
) -> Result<Vec<Change>, crate::store::StoreError> {
    let mut changes = Vec::new();
    for message in read {
        let Some(account) = streams::account_of(&message.subject).filter(|a| wanted(a)) else {
            continue;
        };
        let Ok(event) = pb::DealEvent::decode(message.payload.clone()) else {
            tracing::warn!(subject = %message.subject, "an undecodable deal event is not watched");
            continue;
        };
        if event.account_id != account {
            continue;
        }
        let xid = message
            .headers
            .as_ref()
            .and_then(|h| h.get(streams::XID_HEADER))
            .and_then(|v| v.as_str().parse().ok());
        changes.push(Change {
            position: position(message),
            xid,
            account_id: event.account_id.clone(),
            change: change_of(event),
        });
    }
    let mut by_account: HashMap<&str, Vec<Uuid>> = HashMap::new();
    for change in &changes {
        let id = change.change.deal.as_ref().and_then(|d| d.id.parse().ok());
        if let Some(id) = id {
            by_account.entry(&change.account_id).or_default().push(id);
        }
    }
    let mut personal = HashMap::new();
    for (account, ids) in by_account {
        personal.extend(store.personal_data(account, &ids).await?);
    }
    for change in &mut changes {
        let Some(deal) = change.change.deal.as_mut() else {
            continue;
        };
        if let Some((title, contact)) = deal.id.parse().ok().and_then(|id| personal.get(&id)) {
            deal.title = title.clone();
            deal.contact = Some(contact.clone().into());
        }
    }
    Ok(changes)
}

/// A deal event as a watcher's change (its deal still without title and contact).
fn change_of(event: pb::DealEvent) -> pb::DealChange {
    pb::DealChange {
        kind: event.kind,
        deal: event.deal,
        previous_stage_id: event.previous_stage_id,
        previous_manager_id: event.previous_manager_id,
        actor_id: event.actor_id,
        occurred_at: event.occurred_at,
    }
}
