//! A consumer that serves accounts in turn: for a work-queue stream whose subjects carry the
//! account (`salesplan.bulk.v1.<account>.…`), each account gets a durable consumer of its
//! own subjects, and every round takes up to an equal share of the batch from each account
//! with work. An account that queued 100,000 messages first does not make another wait for
//! them: both progress at comparable rates.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use async_nats::jetstream::consumer::PullConsumer;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use super::{
    BatchHandler, Bus, BusError, ConsumerSpec,
    consumer::{Counters, durable_consumer, log_panic, pause, process},
    streams::{self, StreamSpec},
};

/// Work that a fair consumer yields to (the interactive lane). While any is in progress,
/// no new round starts (for at most [`MAX_YIELD`] at a time, so the yielding lane still
/// moves under a steady stream of the other's work); while any was seen within
/// [`SHARING_WINDOW`], the yielding lane takes at most its share of the time.
#[derive(Debug, Clone)]
pub struct Activity(Arc<ActivityState>);

#[derive(Debug)]
struct ActivityState {
    in_progress: AtomicUsize,
    epoch: std::time::Instant,
    /// When work was last seen, in milliseconds since `epoch` plus one (0: never).
    last_seen_ms: AtomicU64,
}

impl Default for Activity {
    fn default() -> Self {
        Self(Arc::new(ActivityState {
            in_progress: AtomicUsize::new(0),
            epoch: std::time::Instant::now(),
            last_seen_ms: AtomicU64::new(0),
        }))
    }
}

/// One piece of work in progress; the activity is idle again once every guard is dropped.
pub struct ActivityGuard(Activity);

impl Drop for ActivityGuard {
    fn drop(&mut self) {
        self.0.touch();
        self.0.0.in_progress.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Activity {
    pub fn start(&self) -> ActivityGuard {
        self.0.in_progress.fetch_add(1, Ordering::SeqCst);
        self.touch();
        ActivityGuard(self.clone())
    }

    fn now_ms(&self) -> u64 {
        self.0.epoch.elapsed().as_millis() as u64 + 1
    }

    fn touch(&self) {
        self.0
            .last_seen_ms
            .fetch_max(self.now_ms(), Ordering::SeqCst);
    }

    pub fn is_busy(&self) -> bool {
        self.0.in_progress.load(Ordering::SeqCst) > 0
    }

    /// Whether work was in progress at any time within the last `window`.
    pub fn seen_within(&self, window: Duration) -> bool {
        let last = self.0.last_seen_ms.load(Ordering::SeqCst);
        self.is_busy()
            || (last > 0 && self.now_ms().saturating_sub(last) <= window.as_millis() as u64)
    }
}

/// The longest a fair consumer waits for the work it yields to before its next round.
pub const MAX_YIELD: Duration = Duration::from_millis(100);
/// How recently the work yielded to must have been seen for the yielding lane to share.
pub const SHARING_WINDOW: Duration = Duration::from_secs(1);

/// A fair consumer of a work-queue stream.
#[derive(Debug, Clone)]
pub struct FairSpec {
    pub stream: &'static StreamSpec,
    /// Each account's durable consumer is `<prefix>-<account>` (shared by the replicas).
    pub prefix: &'static str,
    /// The subjects of one account (e.g. [`streams::bulk_subjects_of`]).
    pub subjects_of: fn(&str) -> String,
    /// Rounds handled at once (the next round is fetched while one is handled).
    pub rounds_in_flight: usize,
    /// How often to look for work when there is none.
    pub idle_poll: Duration,
    /// Work that goes first: no round starts while it is in progress.
    pub yields_to: Option<Activity>,
    /// While that work is flowing, rounds run one at a time and each is followed by a pause,
    /// so this lane takes at most this share of the time (0 < share ≤ 1).
    pub share: f64,
    /// The most messages of a round while sharing: a smaller round is a shorter wait for
    /// the work that arrives while it runs.
    pub sharing_round: usize,
}

/// How many messages the stream holds per account (for a work queue: its backlog, the
/// messages delivered but not yet acked included), for subjects matching `filter`.
pub async fn pending_by_account(
    bus: &Bus,
    stream: &StreamSpec,
    filter: &str,
) -> Result<BTreeMap<String, u64>, BusError> {
    let js_stream = bus
        .jetstream()
        .get_stream(stream.name)
        .await
        .map_err(|e| BusError::jetstream("get stream", e))?;
    let mut subjects = js_stream
        .info_with_subjects(filter)
        .await
        .map_err(|e| BusError::jetstream("stream info", e))?;
    let mut pending = BTreeMap::new();
    while let Some(item) = subjects.next().await {
        let (subject, count) = item.map_err(|e| BusError::jetstream("stream subjects", e))?;
        if let Some(account) = streams::account_of(&subject) {
            *pending.entry(account.to_owned()).or_default() += count as u64;
        }
    }
    Ok(pending)
}

/// Runs until `shutdown`: rounds over the accounts with work, each round one batch for the
/// handler; the rounds in hand are finished and acked before it returns.
pub async fn run_fair_consumer<H: BatchHandler>(
    bus: Bus,
    spec: FairSpec,
    handler: Arc<H>,
    shutdown: CancellationToken,
    metrics: crate::metrics::Metrics,
) {
    let counters = Arc::new(Counters::new(spec.prefix, &metrics));
    // Dead letters and logs name the lane (`<prefix>`), not each account's consumer.
    let lane = Arc::new(ConsumerSpec::new(spec.stream, spec.prefix));
    let mut rounds = Rounds::default();
    let mut in_flight = tokio::task::JoinSet::new();
    while !shutdown.is_cancelled() {
        let sharing = spec
            .yields_to
            .as_ref()
            .is_some_and(|other| other.seen_within(SHARING_WINDOW));
        let most = if sharing {
            1
        } else {
            spec.rounds_in_flight.max(1)
        };
        while in_flight.len() >= most {
            if let Some(done) = in_flight.join_next().await {
                log_panic(&lane, done);
            }
        }
        if let Some(other) = &spec.yields_to {
            let waited = tokio::time::Instant::now();
            while other.is_busy() && waited.elapsed() < MAX_YIELD && !shutdown.is_cancelled() {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        let most_messages = if sharing {
            spec.sharing_round.max(1)
        } else {
            bus.config().batch_size
        };
        // Looking for work asks the broker several things (each bounded by the JetStream
        // timeout); a stopping service does not wait for the answers. Nothing is taken
        // from a consumer that is not handled: a fetch cut short is delivered again.
        let next = tokio::select! {
            next = rounds.next(&bus, &spec, most_messages) => next,
            _ = shutdown.cancelled() => break,
        };
        let round = match next {
            Ok(round) => round,
            Err(err) => {
                tracing::warn!(stream = spec.stream.name, error = %err, "cannot read the backlog, retrying");
                pause(&shutdown, Duration::from_secs(1)).await;
                continue;
            }
        };
        if round.is_empty() {
            pause(&shutdown, spec.idle_poll).await;
            continue;
        }
        if sharing {
            // One round, then a pause in proportion, so the work yielded to has the rest.
            let started = tokio::time::Instant::now();
            process(&bus, &lane, &*handler, round, &counters).await;
            let share = spec.share.clamp(0.05, 1.0);
            pause(&shutdown, started.elapsed().mul_f64((1.0 - share) / share)).await;
            continue;
        }
        let (bus, lane, handler, counters) =
            (bus.clone(), lane.clone(), handler.clone(), counters.clone());
        // One handler call for the whole round.
        in_flight.spawn(async move { process(&bus, &lane, &*handler, round, &counters).await });
    }
    while let Some(done) = in_flight.join_next().await {
        log_panic(&lane, done);
    }
    tracing::info!(consumer = spec.prefix, "fair consumer stopped");
}

/// Whose turn it is: the accounts with work, each account's consumer, and where the last
/// round stopped.
#[derive(Default)]
struct Rounds {
    consumers: BTreeMap<String, PullConsumer>,
    /// The account after which the next round starts: every account gets its turn first.
    last_served: String,
}

impl Rounds {
    /// The next round: up to an equal share of `most` messages from each account with
    /// work, in turn after the last one served.
    async fn next(
        &mut self,
        bus: &Bus,
        spec: &FairSpec,
        most: usize,
    ) -> Result<Vec<async_nats::jetstream::Message>, BusError> {
        let accounts: Vec<String> = pending_by_account(bus, spec.stream, spec.stream.subjects)
            .await?
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .map(|(account, _)| account)
            .collect();
        self.consumers
            .retain(|account, _| accounts.contains(account));
        let quantum = (most / accounts.len().max(1)).max(1);
        let mut round = Vec::new();
        for account in turn_order(&accounts, &self.last_served) {
            if round.len() >= most {
                break;
            }
            let Some(consumer) = consumer_of(bus, spec, &mut self.consumers, account).await else {
                continue;
            };
            match consumer.fetch().max_messages(quantum).messages().await {
                Ok(messages) => {
                    let fetched: Vec<_> = messages.filter_map(|m| async { m.ok() }).collect().await;
                    if !fetched.is_empty() {
                        self.last_served = account.to_owned();
                        round.extend(fetched);
                    }
                }
                Err(err) => {
                    // Removed by the server meanwhile (idle): made again next round.
                    tracing::debug!(%account, error = %err, "fetch failed");
                    self.consumers.remove(account);
                }
            }
        }
        Ok(round)
    }
}

/// The accounts (sorted) in turn: those after `last_served` first, then from the start.
fn turn_order<'a>(
    accounts: &'a [String],
    last_served: &str,
) -> impl Iterator<Item = &'a str> + use<'a> {
    let start = accounts.partition_point(|a| a.as_str() <= last_served);
    accounts[start..]
        .iter()
        .chain(&accounts[..start])
        .map(String::as_str)
}

/// The durable consumer of `account`, made when first needed.
async fn consumer_of(
    bus: &Bus,
    spec: &FairSpec,
    consumers: &mut BTreeMap<String, PullConsumer>,
    account: &str,
) -> Option<PullConsumer> {
    if let Some(known) = consumers.get(account) {
        return Some(known.clone());
    }
    let account_spec = ConsumerSpec {
        filter_subject: (spec.subjects_of)(account),
        // Gone an hour after the account's last bulk add.
        inactive_threshold: Some(Duration::from_secs(3600)),
        ..ConsumerSpec::new(spec.stream, &format!("{}-{account}", spec.prefix))
    };
    match durable_consumer(bus, &account_spec).await {
        Ok(consumer) => {
            consumers.insert(account.to_owned(), consumer.clone());
            Some(consumer)
        }
        Err(err) => {
            tracing::warn!(%account, error = %err, "cannot create the account's consumer");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(accounts: &[&str], last: &str) -> Vec<String> {
        let accounts: Vec<String> = accounts.iter().map(|a| (*a).to_owned()).collect();
        turn_order(&accounts, last).map(str::to_owned).collect()
    }

    #[test]
    fn every_account_has_its_turn_after_the_last_served() {
        assert_eq!(order(&["a", "b", "c"], ""), ["a", "b", "c"]);
        assert_eq!(order(&["a", "b", "c"], "a"), ["b", "c", "a"]);
        assert_eq!(order(&["a", "b", "c"], "c"), ["a", "b", "c"]);
        // The last one served has no work any more: the next one after it still goes first.
        assert_eq!(order(&["a", "c"], "b"), ["c", "a"]);
    }

    #[test]
    fn activity_is_seen_while_in_progress_and_shortly_after() {
        let activity = Activity::default();
        assert!(!activity.is_busy() && !activity.seen_within(SHARING_WINDOW));
        let guard = activity.start();
        assert!(activity.is_busy());
        drop(guard);
        assert!(!activity.is_busy());
        assert!(activity.seen_within(SHARING_WINDOW), "seen a moment ago");
    }
}
