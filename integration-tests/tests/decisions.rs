//! The distributor's decision store against real PostgreSQL.

use std::collections::HashMap;

use distributor::{
    domain::{
        batch::{AvailabilityStamp, PendingLead},
        distribution::{Lead, Mode, PlanSettings, Strategy},
    },
    events::intake::{PlanBatch, decide_on_copy},
    store::{Held, ManagerCopy, PlanCopy, Store},
};
use integration_tests::TestDatabase;
use salesplan_platform::schedule::Availability;
use salesplan_platform::service::Service;
use uuid::Uuid;

const ACCOUNT: &str = "acme";

/// A copy of `plan_id` at `version`: AUTO round robin over `managers`, no weights or
/// limits, with the response deadline `response`.
fn round_robin(
    plan_id: Uuid,
    version: i64,
    managers: &[&str],
    response: Option<distributor::domain::deadline::Response>,
) -> PlanCopy {
    PlanCopy {
        plan_id,
        account_id: ACCOUNT.into(),
        version,
        settings: PlanSettings {
            mode: Mode::Auto {
                prefer_related: false,
                strategy: Strategy::RoundRobin,
            },
            managers: managers.iter().map(|m| (*m).to_owned()).collect(),
            weights: Vec::new(),
            caps: Vec::new(),
            keep_related: false,
            response,
            archived: false,
        },
    }
}

/// The distributor's store on a database of its own, and a pool on its schema.
async fn empty_store() -> anyhow::Result<(TestDatabase, Store, sqlx::PgPool)> {
    let db = TestDatabase::create().await?;
    let config = distributor::Config::local(&db.url, "nats://127.0.0.1:1", "http://127.0.0.1:1");
    config.migrate().await?;
    let pool = salesplan_platform::db::connect(&config.database, distributor::SCHEMA).await?;
    let store = Store::new(
        pool.clone(),
        salesplan_platform::privacy::ContactKeys::dev(),
    );
    Ok((db, store, pool))
}

async fn store_with_round_robin_plan() -> anyhow::Result<(TestDatabase, Store, Uuid)> {
    let (db, store, _) = empty_store().await?;
    let plan_id = Uuid::new_v4();
    store
        .apply_plan(&round_robin(plan_id, 1, &["m1", "m2", "m3"], None))
        .await?;
    Ok((db, store, plan_id))
}

fn lead(n: u128) -> PendingLead {
    PendingLead {
        intake_id: Uuid::from_u128(n),
        plan_version: 1,
        availability: None,
        lead: Lead::default(),
        contact_key: Some(format!("ext:c{n}")),
    }
}

/// A lead published again after JetStream's duplicate window (a funnel retrying the same
/// run minutes later) can arrive twice in one batch: it is decided once, the turn moves
/// once, and it counts once.
#[tokio::test]
async fn a_lead_twice_in_one_batch_is_decided_once() -> anyhow::Result<()> {
    let (_db, store, plan_id) = store_with_round_robin_plan().await?;
    let batch = [lead(1), lead(1), lead(2), lead(3)];
    let PlanBatch::Decided { decisions, new } =
        decide_on_copy(&store, ACCOUNT, plan_id, &batch, || 0).await?
    else {
        anyhow::bail!("the plan is known and open");
    };

    assert_eq!(new.len(), 3, "one decision per distinct lead: {new:?}");
    let mut per_manager: HashMap<String, usize> = HashMap::new();
    for manager in decisions.values() {
        *per_manager
            .entry(manager.manager.clone().unwrap_or_default())
            .or_default() += 1;
    }
    assert_eq!(
        per_manager,
        HashMap::from([("m1".into(), 1), ("m2".into(), 1), ("m3".into(), 1)])
    );
    // What the caller is told is what was stored.
    let first = &new[0];
    assert_eq!(first.intake_id, Uuid::from_u128(1).to_string());
    assert_eq!(first.manager_id, decisions[&Uuid::from_u128(1)].manager);
    assert_eq!(
        store.open_counts(plan_id).await?,
        HashMap::from([("m1".into(), 1), ("m2".into(), 1), ("m3".into(), 1)])
    );

    // The next lead continues the turn where three decisions left it.
    let PlanBatch::Decided { decisions, .. } =
        decide_on_copy(&store, ACCOUNT, plan_id, &[lead(4)], || 0).await?
    else {
        anyhow::bail!("the plan is known and open");
    };
    assert_eq!(
        decisions[&Uuid::from_u128(4)].manager.as_deref(),
        Some("m1")
    );
    Ok(())
}

/// A lead accepted after a member's availability changed (its stamp is newer than the
/// copy here) is not decided until the change is applied; then it passes the paused
/// member over. A stamp older than the copy (on the same plan version) is decided at once.
#[tokio::test]
async fn a_lead_waits_for_the_availability_it_was_accepted_after() -> anyhow::Result<()> {
    let (_db, store, plan_id) = store_with_round_robin_plan().await?;
    let stamped = PendingLead {
        availability: Some(AvailabilityStamp {
            versions: 1,
            sequence: 1,
        }),
        ..lead(21)
    };
    // Stamped before any change: the copy has nothing newer, decided at once (below).
    assert!(matches!(
        decide_on_copy(
            &store,
            ACCOUNT,
            plan_id,
            std::slice::from_ref(&stamped),
            || 0
        )
        .await?,
        PlanBatch::Stale
    ));
    store
        .apply_manager(&ManagerCopy {
            account_id: ACCOUNT.into(),
            manager_id: "m1".into(),
            version: 1,
            sequence: 1,
            availability: Availability {
                schedule: Default::default(),
                paused: true,
            },
        })
        .await?;
    let PlanBatch::Decided { decisions, .. } =
        decide_on_copy(&store, ACCOUNT, plan_id, &[stamped, lead(22)], || 0).await?
    else {
        anyhow::bail!("the copy has the availability the lead was stamped with");
    };
    let chosen: Vec<Option<&str>> = [21, 22]
        .iter()
        .map(|n| decisions[&Uuid::from_u128(*n)].manager.as_deref())
        .collect();
    assert_eq!(chosen, [Some("m2"), Some("m3")], "m1 is paused");
    // A lead stamped before m1's pause, decided after it was applied: the copy may hold
    // changes the lead's stamp did not see (a sum alone could hide one missing behind
    // another newer), so it is brought up to date first.
    let before = PendingLead {
        availability: Some(AvailabilityStamp::default()),
        ..lead(23)
    };
    assert!(matches!(
        decide_on_copy(&store, ACCOUNT, plan_id, &[before], || 0).await?,
        PlanBatch::Stale
    ));
    Ok(())
}

/// A lead accepted at a plan version the copy here has not reached is not decided on the
/// older copy; once the copy is there, the decision records the version it was made on.
#[tokio::test]
async fn a_lead_is_never_decided_on_a_plan_older_than_it_was_accepted_at() -> anyhow::Result<()> {
    let (_db, store, plan_id) = store_with_round_robin_plan().await?;
    let newer = PendingLead {
        plan_version: 2,
        availability: None,
        ..lead(7)
    };
    let batch = [lead(6), newer];
    assert!(matches!(
        decide_on_copy(&store, ACCOUNT, plan_id, &batch, || 0).await?,
        PlanBatch::Stale
    ));
    assert!(
        store.open_counts(plan_id).await?.is_empty(),
        "nothing was decided on the old copy"
    );
    assert!(matches!(
        decide_on_copy(&store, ACCOUNT, Uuid::new_v4(), &[lead(8)], || 0).await?,
        PlanBatch::Stale
    ));

    // Version 2 distributes manually.
    store
        .apply_plan(&PlanCopy {
            plan_id,
            account_id: ACCOUNT.into(),
            version: 2,
            settings: PlanSettings {
                mode: Mode::Manual,
                managers: vec!["m1".into()],
                weights: Vec::new(),
                caps: Vec::new(),
                keep_related: false,
                response: None,
                archived: false,
            },
        })
        .await?;
    let PlanBatch::Decided { decisions, new } =
        decide_on_copy(&store, ACCOUNT, plan_id, &batch, || 0).await?
    else {
        anyhow::bail!("the copy is at version 2 now");
    };
    assert_eq!(decisions.len(), 2);
    assert!(
        decisions.values().all(|p| p.manager.is_none()),
        "{decisions:?}"
    );
    assert!(
        new.iter()
            .all(|a| a.plan_version == 2 && a.mode == "manual"),
        "{new:?}"
    );
    Ok(())
}

/// A deal's state as its deal event shows it.
fn deal_state(
    deal: u128,
    plan_id: Uuid,
    version: i64,
    manager: Option<&str>,
    waiting: bool,
) -> distributor::domain::deal_view::DealState {
    let at = time::OffsetDateTime::UNIX_EPOCH + time::Duration::minutes(deal as i64);
    distributor::domain::deal_view::DealState {
        deal_id: Uuid::from_u128(deal),
        account_id: ACCOUNT.into(),
        plan_id,
        manager_id: manager.map(str::to_owned),
        open: true,
        version,
        idempotency_key: format!("by-hand-{deal}"),
        contact_key: None,
        erased_contact: None,
        created_at: at,
        waiting_since: waiting.then_some(at),
        accepted: false,
        assigned_by_distributor: false,
        updated_at: at,
        assigned_at: manager.map(|_| at),
        response_due_at: None,
    }
}

/// The waiting queue's orders (issue 20) against real PostgreSQL: two drains at once
/// decide a waiting deal once; an order is leased to one relay at a time; a refusal
/// restores the wait and the count; the assignment's own event counts nothing twice.
#[tokio::test]
async fn a_waiting_deal_is_ordered_once_and_a_refusal_puts_it_back() -> anyhow::Result<()> {
    use distributor::events::queue::Queue;
    use salesplan_platform::auth::{ServiceTokens, TokenIssuer};

    let (db, store, plan_id) = store_with_round_robin_plan().await?;
    store
        .apply_plan(&PlanCopy {
            plan_id,
            account_id: ACCOUNT.into(),
            version: 2,
            settings: PlanSettings {
                mode: Mode::Auto {
                    prefer_related: false,
                    strategy: Strategy::RoundRobin,
                },
                managers: vec!["m1".into()],
                weights: Vec::new(),
                caps: vec![1],
                keep_related: false,
                response: None,
                archived: false,
            },
        })
        .await?;
    // Nobody calls deal-service here: the relay is played by the test.
    let config = distributor::Config::local(&db.url, "nats://127.0.0.1:1", "http://127.0.0.1:1");
    let tokens = ServiceTokens::new(
        TokenIssuer::hs256(b"unused"),
        distributor::ACTOR_ID,
        &[salesplan_platform::Permission::DealsEditAll],
    );
    let upstream = distributor::upstream::DealService::new(
        salesplan_platform::grpc::lazy_channel("http://127.0.0.1:1")?,
        std::sync::Arc::new(tokens),
    );
    let metrics =
        salesplan_platform::metrics::Metrics::new("distributor", &config.common.telemetry);
    let queue = Queue::new(store.clone(), upstream, &metrics);

    // m1 holds one deal (its limit); deal 2 waits.
    store
        .apply_deals(&[
            deal_state(1, plan_id, 1, Some("m1"), false),
            deal_state(2, plan_id, 1, None, true),
        ])
        .await?;
    assert_eq!(queue.drain(ACCOUNT, plan_id, 1).await?, 0, "m1 is full");
    // m1's deal closes: two drains at once decide the waiting deal once.
    let mut closed = deal_state(1, plan_id, 2, Some("m1"), false);
    closed.open = false;
    store.apply_deals(&[closed]).await?;
    let (a, b) = tokio::join!(
        queue.drain(ACCOUNT, plan_id, 1),
        queue.drain(ACCOUNT, plan_id, 1)
    );
    assert_eq!(a? + b?, 1);
    assert_eq!(
        store.open_counts(plan_id).await?["m1"],
        1,
        "counted at once"
    );

    let lease = time::Duration::seconds(30);
    let orders = store
        .lease_orders((50, 50), &Held::default(), lease)
        .await?;
    assert_eq!(orders.len(), 1);
    let order = orders[0].clone();
    assert_eq!(
        (order.deal_id, order.version, order.manager_id.as_str()),
        (Uuid::from_u128(2), 1, "m1")
    );
    assert!(
        store
            .lease_orders((50, 50), &Held::default(), lease)
            .await?
            .is_empty(),
        "leased to one relay at a time"
    );
    store.order_later(&order, time::Duration::ZERO).await?;
    let again = store
        .lease_orders((50, 50), &Held::default(), lease)
        .await?;
    assert_eq!((again.len(), again[0].attempts), (1, 1), "tried again");

    // Deal-service refuses (the deal changed meanwhile): the deal waits again, uncounted.
    store.order_refused(&order, false).await?;
    assert_eq!(store.open_counts(plan_id).await?["m1"], 0);
    assert_eq!(
        store
            .plans_with_waiting(&[(ACCOUNT.into(), plan_id)])
            .await?
            .len(),
        1
    );
    assert!(
        store
            .lease_orders((50, 50), &Held::default(), lease)
            .await?
            .is_empty(),
        "forgotten"
    );

    // Decided again; before the order is made, someone assigns the deal by hand to x:
    // the refusal that follows changes nothing, and x's count stands.
    assert_eq!(queue.drain(ACCOUNT, plan_id, 1).await?, 1);
    let order = store
        .lease_orders((50, 50), &Held::default(), lease)
        .await?
        .remove(0);
    store
        .apply_deals(&[deal_state(2, plan_id, 2, Some("x"), false)])
        .await?;
    store.order_refused(&order, false).await?;
    let counts = store.open_counts(plan_id).await?;
    assert_eq!((counts["m1"], counts["x"]), (0, 1));
    assert!(
        store
            .plans_with_waiting(&[(ACCOUNT.into(), plan_id)])
            .await?
            .is_empty()
    );
    assert!(
        store
            .assignment_of_deal(ACCOUNT, Uuid::from_u128(2))
            .await?
            .is_none(),
        "a refused order explains nothing"
    );

    // Another deal waits and goes to m1; this time the order is made: the assignment's
    // event counts nothing twice, and the decision becomes the deal's explanation.
    store
        .apply_deals(&[deal_state(3, plan_id, 1, None, true)])
        .await?;
    assert_eq!(queue.drain(ACCOUNT, plan_id, 1).await?, 1);
    let order = store
        .lease_orders((50, 50), &Held::default(), lease)
        .await?
        .remove(0);
    store
        .apply_deals(&[deal_state(3, plan_id, 2, Some("m1"), false)])
        .await?;
    store.order_done(&order).await?;
    assert_eq!(
        store.open_counts(plan_id).await?["m1"],
        1,
        "not counted twice"
    );
    let explained = store
        .assignment_of_deal(ACCOUNT, Uuid::from_u128(3))
        .await?
        .expect("explained once made");
    let explained = <salesplan_proto::v1::Assignment as prost::Message>::decode(&explained[..])?;
    assert!(
        explained
            .reason
            .starts_with("waited since 1970-01-01T00:03:00Z; "),
        "{}",
        explained.reason
    );
    Ok(())
}

/// Response deadlines (issue 20) from deal events, against real PostgreSQL: the
/// distributor's assignment starts one; someone else's change keeps it at the deal's new
/// version; acceptance ends it, and the assignment's event delivered again afterwards
/// does not bring it back; a person's new assignment (even to the same manager) ends it;
/// an assignment's event that arrives after a newer one of its deal still starts it; the
/// timer runs out when deal-service said the assignment's deadline does.
#[tokio::test]
async fn a_deadline_follows_its_assignment_and_a_late_event_brings_none_back() -> anyhow::Result<()>
{
    use distributor::domain::{deadline::Response, deal_view::DealState};
    let (db, store, plan_id) = store_with_round_robin_plan().await?;
    store
        .apply_plan(&round_robin(
            plan_id,
            2,
            &["m1", "m2"],
            Some(Response {
                seconds: 3_600,
                max_reassignments: 1,
            }),
        ))
        .await?;
    let pool = sqlx::PgPool::connect(&db.url).await?;
    let timer = |deal: u128| {
        let pool = pool.clone();
        async move {
            let row: Option<(String, i64)> = sqlx::query_as(
                "SELECT manager_id, version FROM distributor.response_timers WHERE deal_id = $1",
            )
            .bind(Uuid::from_u128(deal))
            .fetch_optional(&pool)
            .await?;
            anyhow::Ok(row)
        }
    };
    let assigned = |deal: u128| DealState {
        assigned_by_distributor: true,
        ..deal_state(deal, plan_id, 1, Some("m1"), false)
    };
    let changed = |deal: u128, version: i64, manager: &str| {
        let mut state = deal_state(deal, plan_id, version, Some(manager), false);
        // Still the assignment of version 1.
        state.assigned_at =
            Some(time::OffsetDateTime::UNIX_EPOCH + time::Duration::minutes(deal as i64));
        state
    };
    for deal in 1..=3 {
        store.apply_deals(&[assigned(deal)]).await?;
        assert_eq!(timer(deal).await?, Some(("m1".into(), 1)), "deal {deal}");
    }
    // 1: accepted, then its assignment's event again.
    store
        .apply_deals(&[DealState {
            accepted: true,
            ..changed(1, 2, "m1")
        }])
        .await?;
    assert_eq!(timer(1).await?, None);
    store.apply_deals(&[assigned(1)]).await?;
    assert_eq!(
        timer(1).await?,
        None,
        "a late event brings no ended deadline back"
    );
    // 2: someone else's edit: the deadline runs on at the new version.
    store.apply_deals(&[changed(2, 2, "m1")]).await?;
    assert_eq!(timer(2).await?, Some(("m1".into(), 2)));
    // 3: a person took it and gave it back to m1 (a new assignment, at version 3).
    let mut back = changed(3, 3, "m1");
    back.assigned_at = Some(time::OffsetDateTime::UNIX_EPOCH + time::Duration::hours(5));
    store.apply_deals(&[back]).await?;
    assert_eq!(
        timer(3).await?,
        None,
        "a person's assignment has no deadline"
    );
    // 4: someone else's edit applied before the assignment's event (another replica, a
    // redelivery): the deadline starts when the assignment arrives, at the edit's version.
    store.apply_deals(&[changed(4, 2, "m1")]).await?;
    assert_eq!(timer(4).await?, None);
    store.apply_deals(&[assigned(4)]).await?;
    assert_eq!(timer(4).await?, Some(("m1".into(), 2)), "a late start");
    // 5: accepted before its assignment's event arrived: none.
    store
        .apply_deals(&[DealState {
            accepted: true,
            ..changed(5, 2, "m1")
        }])
        .await?;
    store.apply_deals(&[assigned(5)]).await?;
    assert_eq!(timer(5).await?, None, "accepted before");
    // 6: the due time deal-service kept with the assignment (the plan's deadline was five
    // seconds then; this copy has an hour by now): the timer runs out by it. 7: an event
    // from before deal-service said so: reckoned here, by the plan's hour.
    let due_at = |deal: u128| {
        let pool = pool.clone();
        async move {
            let due: time::OffsetDateTime = sqlx::query_scalar(
                "SELECT due_at FROM distributor.response_timers WHERE deal_id = $1",
            )
            .bind(Uuid::from_u128(deal))
            .fetch_one(&pool)
            .await?;
            anyhow::Ok(due)
        }
    };
    let at = |deal: u128| time::OffsetDateTime::UNIX_EPOCH + time::Duration::minutes(deal as i64);
    store
        .apply_deals(&[DealState {
            response_due_at: Some(at(6) + time::Duration::seconds(5)),
            ..assigned(6)
        }])
        .await?;
    assert_eq!(due_at(6).await?, at(6) + time::Duration::seconds(5));
    store.apply_deals(&[assigned(7)]).await?;
    assert_eq!(due_at(7).await?, at(7) + time::Duration::hours(1));
    // This copy of the plan without a deadline (deal-service's had one at the assignment,
    // just added): deal-service's word starts it; an event that says nothing starts none.
    store
        .apply_plan(&round_robin(plan_id, 3, &["m1", "m2"], None))
        .await?;
    store
        .apply_deals(&[DealState {
            response_due_at: Some(at(8) + time::Duration::seconds(5)),
            ..assigned(8)
        }])
        .await?;
    assert_eq!(due_at(8).await?, at(8) + time::Duration::seconds(5));
    store.apply_deals(&[assigned(9)]).await?;
    assert_eq!(timer(9).await?, None);
    Ok(())
}

/// A shift starting, at the drain (issue 20): a waiting deal of a plan whose only member
/// works 09:00–17:00 UTC is not decided at 08:59 (the member's note says when they are
/// back), and goes to them at 09:00, from the same store and queue.
#[tokio::test]
async fn a_waiting_deal_goes_to_a_member_whose_shift_starts() -> anyhow::Result<()> {
    use distributor::domain::queue::assign_waiting;
    use salesplan_platform::schedule::{Hours, Schedule};
    use time::macros::datetime;
    let (_db, store, plan_id) = store_with_round_robin_plan().await?;
    store
        .apply_plan(&round_robin(plan_id, 2, &["m1"], None))
        .await?;
    let mut schedule = Schedule::default();
    for day in schedule.week.iter_mut() {
        day.push(Hours {
            start: 9 * 60,
            end: 17 * 60,
        });
    }
    store
        .apply_manager(&ManagerCopy {
            account_id: ACCOUNT.into(),
            manager_id: "m1".into(),
            version: 1,
            sequence: 1,
            availability: Availability {
                schedule,
                paused: false,
            },
        })
        .await?;
    store
        .apply_deals(&[deal_state(1, plan_id, 1, None, true)])
        .await?;
    let decide = |at| {
        let store = store.clone();
        async move {
            let (_, known) = store
                .open_queue(ACCOUNT, plan_id, 100, at)
                .await?
                .expect("a deal waits");
            let (mut cursor, mut open) = (known.cursor.clone(), known.open.clone());
            let decided = assign_waiting(
                &known.settings,
                &mut cursor,
                &mut open,
                &known.away,
                &known.queue,
                || 0,
            );
            anyhow::Ok((known.away, decided))
        }
    };
    let (away, decided) = decide(datetime!(2026-12-07 08:59 UTC)).await?;
    assert!(decided.is_empty(), "{decided:?}");
    assert_eq!(
        away.get("m1").map(String::as_str),
        Some("unavailable: outside working hours, back at 2026-12-07T09:00:00Z")
    );
    let (away, decided) = decide(datetime!(2026-12-07 09:00 UTC)).await?;
    assert!(away.is_empty(), "{away:?}");
    let got: Vec<(u128, Option<&str>)> = decided
        .iter()
        .map(|(w, d)| (w.deal_id.as_u128(), d.manager.as_deref()))
        .collect();
    assert_eq!(got, [(1, Some("m1"))]);
    Ok(())
}

/// The leases of the queue's orders and of the response deadlines count what a process has
/// in hand: an account gets at most its share of slots however much of its work is due.
#[tokio::test]
async fn a_lease_gives_an_account_no_more_than_its_share_of_what_is_in_hand() -> anyhow::Result<()>
{
    let (_db, store, pool) = empty_store().await?;
    // Five due items of "big", one of "small", in both tables.
    let accounts = ["big", "big", "big", "big", "big", "small"];
    for (i, account) in accounts.iter().enumerate() {
        let deal = Uuid::from_u128(i as u128 + 1);
        let due = time::OffsetDateTime::now_utc() - time::Duration::minutes(10 - i as i64);
        sqlx::query(
            "INSERT INTO assignment_orders (deal_id, account_id, plan_id, version, manager_id,
                waiting_since, decision_key, reason, explanation, next_attempt)
             VALUES ($1, $2, $1, 1, 'm1', $3, $1, '', '', $3)",
        )
        .bind(deal)
        .bind(account)
        .bind(due)
        .execute(&pool)
        .await?;
        sqlx::query(
            "INSERT INTO response_timers (deal_id, account_id, plan_id, manager_id, version,
                assigned_at, due_at, next_attempt)
             VALUES ($1, $2, $1, 'm1', 1, $3, $3, $3)",
        )
        .bind(deal)
        .bind(account)
        .bind(due)
        .execute(&pool)
        .await?;
    }
    let lease = time::Duration::seconds(30);
    let accounts_of = |mut accounts: Vec<String>| {
        accounts.sort();
        accounts
    };
    // "big" holds one already: one more of it (its oldest), and "small"'s.
    let one_held = Held {
        accounts: vec!["big".into()],
        counts: vec![1],
    };
    let orders = store.lease_orders((4, 2), &one_held, lease).await?;
    assert_eq!(
        accounts_of(orders.iter().map(|o| o.account_id.clone()).collect()),
        ["big", "small"]
    );
    assert_eq!(
        orders
            .iter()
            .find(|o| o.account_id == "big")
            .map(|o| o.deal_id),
        Some(Uuid::from_u128(1))
    );
    let timers = store.lease_timers((4, 2), &one_held, lease).await?;
    assert_eq!(
        accounts_of(timers.iter().map(|t| t.account_id.clone()).collect()),
        ["big", "small"]
    );
    // "big" holds its share: nothing of it, however many slots are free.
    let full = Held {
        accounts: vec!["big".into()],
        counts: vec![2],
    };
    assert!(store.lease_orders((4, 2), &full, lease).await?.is_empty());
    assert!(store.lease_timers((4, 2), &full, lease).await?.is_empty());
    // Nothing held: two of "big" at most, in one lease.
    assert_eq!(
        store
            .lease_orders((4, 2), &Held::default(), lease)
            .await?
            .len(),
        2
    );
    Ok(())
}

/// A lease's read costs the same however large one account's backlog: an account with
/// 5,000 response deadlines run out (a bulk add into a plan nobody answers) adds nothing to
/// the lease that finds another account's one, and nothing once it holds its share. (The
/// read used to rank every due row of every account: 170 ms at 200,000.)
#[tokio::test]
async fn a_lease_reads_no_more_rows_for_one_accounts_backlog() -> anyhow::Result<()> {
    let (_db, store, pool) = empty_store().await?;
    sqlx::raw_sql(
        "INSERT INTO response_timers (deal_id, account_id, plan_id, manager_id, version,
            assigned_at, due_at, next_attempt)
         SELECT gen_random_uuid(), 'big', gen_random_uuid(), 'm1', 1, now(), now(),
            now() - interval '1 hour' + i * interval '1 ms'
         FROM generate_series(1, 5000) i;
         INSERT INTO response_timers (deal_id, account_id, plan_id, manager_id, version,
            assigned_at, due_at, next_attempt)
         VALUES (gen_random_uuid(), 'small', gen_random_uuid(), 'm1', 1, now(), now(),
            now() - interval '1 minute');
         ANALYZE response_timers;",
    )
    .execute(&pool)
    .await?;
    /// Rows the plan's scans of the timers returned, over all their runs.
    fn rows_read(node: &serde_json::Value) -> i64 {
        let own = if node["Relation Name"] == "response_timers" {
            node["Actual Rows"].as_i64().unwrap_or(0) * node["Actual Loops"].as_i64().unwrap_or(1)
                + node["Rows Removed by Filter"].as_i64().unwrap_or(0)
        } else {
            0
        };
        own + node["Plans"]
            .as_array()
            .map_or(0, |children| children.iter().map(rows_read).sum())
    }
    let full = Held {
        accounts: vec!["big".into()],
        counts: vec![2],
    };
    for (held, most) in [(Held::default(), 10), (full, 10)] {
        let plan = store.explain_timer_lease((4, 2), &held).await?;
        let read = rows_read(&plan[0]["Plan"]);
        assert!(read <= most, "{read} rows read for {held:?}: {plan:#}");
    }
    Ok(())
}
