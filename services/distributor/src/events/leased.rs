//! Durable work leased from a table and made by calls to deal-service (the queue's orders,
//! the response deadlines that ran out), as a continuous pipeline: a slot that frees takes
//! the next item at once, so a slow call holds only its own slot, and one account holds
//! at most a few slots, so its slow calls never hold back another account's work.

use std::{collections::HashMap, future::Future, sync::Arc, time::Duration};

use futures::{StreamExt as _, stream::FuturesUnordered};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::store::{Held, StoreError};

/// What one kind of leased work is.
pub trait LeasedWork: Send + Sync + 'static {
    type Item: Send + Sync + 'static;

    /// What the work is, for the log.
    const WHAT: &'static str;

    /// The account an item is of.
    fn account(item: &Self::Item) -> &str;

    /// Leases up to `limit` due items to this process, none that would give an account
    /// more than `per_account` in hand, counting those `held` already.
    fn lease(
        &self,
        limit: usize,
        per_account: usize,
        held: &Held,
    ) -> impl Future<Output = Result<Vec<Self::Item>, StoreError>> + Send;

    /// Makes one item and records how it ended (errors are the item's own: logged, and the
    /// item is taken again when its lease runs out).
    fn work(&self, item: &Self::Item) -> impl Future<Output = ()> + Send;
}

/// Items in hand, per account.
#[derive(Debug, Default)]
struct InHand(HashMap<String, usize>);

impl InHand {
    /// As a lease counts them.
    fn held(&self) -> Held {
        let (accounts, counts) = self
            .0
            .iter()
            .map(|(account, n)| (account.clone(), i32::try_from(*n).unwrap_or(i32::MAX)))
            .unzip();
        Held { accounts, counts }
    }

    fn take(&mut self, account: &str) {
        *self.0.entry(account.to_owned()).or_default() += 1;
    }

    fn give_back(&mut self, account: &str) {
        if let Some(n) = self.0.get_mut(account) {
            *n -= 1;
            if *n == 0 {
                self.0.remove(account);
            }
        }
    }
}

/// How much is in hand at once.
#[derive(Debug, Clone, Copy)]
pub struct Slots {
    /// Calls in flight.
    pub calls: usize,
    /// Calls in flight for one account.
    pub per_account: usize,
    /// How often the table is looked at when nothing woke the worker.
    pub poll: Duration,
}

/// How long an item whose call could not be made now waits before its next try: 1 s
/// doubling with each attempt, up to 64 s.
pub fn backoff(attempts: i32) -> time::Duration {
    time::Duration::seconds(1_i64 << attempts.clamp(0, 6))
}

/// Leases and makes `work`'s items until `stop`, `slots.calls` at once; `wake` (if any)
/// says new items were recorded by this process. On `stop`, the calls in flight finish
/// first (each bounded by its call timeout); nothing more is leased.
pub async fn run<W: LeasedWork>(
    work: Arc<W>,
    slots: Slots,
    wake: Option<&Notify>,
    stop: CancellationToken,
) {
    let mut in_hand = InHand::default();
    let mut in_flight = FuturesUnordered::new();
    loop {
        let free = slots.calls.saturating_sub(in_flight.len());
        // Whether the table may hold more than was leased: then the next free slot leases.
        let mut more = false;
        if free > 0 && !stop.is_cancelled() {
            match work.lease(free, slots.per_account, &in_hand.held()).await {
                Ok(items) => {
                    more = items.len() == free;
                    for item in items {
                        in_hand.take(W::account(&item));
                        let work = Arc::clone(&work);
                        in_flight.push(async move {
                            work.work(&item).await;
                            item
                        });
                    }
                }
                Err(err) => tracing::warn!(error = %err, "cannot lease {}", W::WHAT),
            }
        }
        if stop.is_cancelled() && in_flight.is_empty() {
            return;
        }
        let idle = async {
            match wake {
                Some(wake) => tokio::select! {
                    () = wake.notified() => {}
                    () = tokio::time::sleep(slots.poll) => {}
                },
                None => tokio::time::sleep(slots.poll).await,
            }
        };
        tokio::select! {
            Some(item) = in_flight.next(), if !in_flight.is_empty() => {
                in_hand.give_back(W::account(&item));
            }
            () = idle, if !more => {}
            () = stop.cancelled(), if !stop.is_cancelled() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// Items are (account, number); account "slow"'s calls never end until released.
    struct Fake {
        due: Mutex<Vec<(String, u32)>>,
        done: Mutex<Vec<(String, u32)>>,
        /// The most items of one account ever in hand at once.
        most_held: Mutex<usize>,
        held_now: Mutex<HashMap<String, usize>>,
        /// Closed until the test lets account "slow"'s calls end.
        gate: tokio::sync::Semaphore,
        progress: Notify,
    }

    impl Fake {
        fn new(due: &[(&str, u32)]) -> Arc<Self> {
            Arc::new(Self {
                due: Mutex::new(due.iter().map(|(a, n)| ((*a).to_owned(), *n)).collect()),
                done: Mutex::default(),
                most_held: Mutex::new(0),
                held_now: Mutex::default(),
                gate: tokio::sync::Semaphore::new(0),
                progress: Notify::new(),
            })
        }

        fn done(&self) -> Vec<(String, u32)> {
            self.done.lock().unwrap().clone()
        }
    }

    impl LeasedWork for Fake {
        type Item = (String, u32);
        const WHAT: &'static str = "fake items";

        fn account(item: &Self::Item) -> &str {
            &item.0
        }

        // Like the stores' leases: the oldest due items whose account is below its share.
        async fn lease(
            &self,
            limit: usize,
            per_account: usize,
            held: &Held,
        ) -> Result<Vec<Self::Item>, StoreError> {
            let mut due = self.due.lock().unwrap();
            let mut counts: HashMap<String, usize> = held
                .accounts
                .iter()
                .cloned()
                .zip(held.counts.iter().map(|n| *n as usize))
                .collect();
            let mut leased = Vec::new();
            due.retain(|item| {
                let n = counts.entry(item.0.clone()).or_default();
                if leased.len() < limit && *n < per_account {
                    *n += 1;
                    leased.push(item.clone());
                    false
                } else {
                    true
                }
            });
            Ok(leased)
        }

        async fn work(&self, item: &Self::Item) {
            {
                let mut now = self.held_now.lock().unwrap();
                let n = now.entry(item.0.clone()).or_default();
                *n += 1;
                let mut most = self.most_held.lock().unwrap();
                *most = (*most).max(*n);
            }
            if item.0 == "slow" {
                let _pass = self.gate.acquire().await;
            } else {
                tokio::task::yield_now().await;
            }
            *self.held_now.lock().unwrap().get_mut(&item.0).unwrap() -= 1;
            self.done.lock().unwrap().push(item.clone());
            self.progress.notify_one();
        }
    }

    const SLOTS: Slots = Slots {
        calls: 4,
        per_account: 2,
        poll: Duration::from_millis(10),
    };

    /// Waits (at most 10 s) until `fake` made `n` items.
    async fn until_done(fake: &Fake, n: usize) {
        tokio::time::timeout(Duration::from_secs(10), async {
            while fake.done().len() < n {
                tokio::select! {
                    () = fake.progress.notified() => {}
                    () = tokio::time::sleep(Duration::from_millis(5)) => {}
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("made only {:?}", fake.done()));
    }

    // The clock is paused: it moves only when every task waits, so a sleep in the test ends
    // only once the worker can do nothing more.
    #[tokio::test(start_paused = true)]
    async fn an_account_whose_calls_hang_holds_its_share_of_slots_and_no_more() {
        let fake = Fake::new(&[("slow", 1), ("slow", 2), ("slow", 3), ("a", 1)]);
        let stop = CancellationToken::new();
        let worker = tokio::spawn(run(Arc::clone(&fake), SLOTS, None, stop.clone()));
        until_done(&fake, 1).await;
        // Items recorded after the hanging calls began still go through, one after another.
        for n in 2..=20 {
            fake.due.lock().unwrap().push(("b".into(), n));
        }
        until_done(&fake, 20).await;
        assert!(fake.done().iter().all(|(account, _)| account != "slow"));
        assert_eq!(*fake.most_held.lock().unwrap(), 2);
        // The third of "slow" waits for a slot of its account; let through, all end.
        fake.gate.add_permits(1);
        until_done(&fake, 23).await;
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(10), worker)
            .await
            .expect("the worker stops")
            .expect("the worker does not panic");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stop_lets_the_calls_in_flight_finish_and_leases_nothing_more() {
        let fake = Fake::new(&[("slow", 1)]);
        let stop = CancellationToken::new();
        let worker = tokio::spawn(run(Arc::clone(&fake), SLOTS, None, stop.clone()));
        while fake.held_now.lock().unwrap().get("slow").copied() != Some(1) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        stop.cancel();
        fake.due.lock().unwrap().push(("a".into(), 1));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!worker.is_finished(), "a call in flight is waited for");
        fake.gate.add_permits(1);
        tokio::time::timeout(Duration::from_secs(10), worker)
            .await
            .expect("the worker stops")
            .expect("the worker does not panic");
        assert_eq!(fake.done(), vec![("slow".to_owned(), 1)]);
    }
}
