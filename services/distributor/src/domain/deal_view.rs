//! What deal events change in the distributor's view: open deals per manager (the
//! least-open strategy's counts), the link from a lead's decision to its deal, and the
//! manager each contact is related to. Pure: the store loads what it knew of the deals
//! and saves the [`Changes`].

use std::collections::{BTreeMap, HashMap};

use time::OffsetDateTime;
use uuid::Uuid;

/// A deal as a deal event shows it.
#[derive(Debug, Clone)]
pub struct DealState {
    pub deal_id: Uuid,
    pub account_id: String,
    pub plan_id: Uuid,
    pub manager_id: Option<String>,
    pub open: bool,
    pub version: i64,
    pub idempotency_key: String,
    pub contact_key: Option<String>,
    /// The keyed key of the contact this change erased (ContactService.EraseContact): the
    /// relation to forget.
    pub erased_contact: Option<String>,
    pub created_at: OffsetDateTime,
    /// Since when the deal waits in its plan's queue for a manager.
    pub waiting_since: Option<OffsetDateTime>,
    /// Whether the deal's manager accepted it.
    pub accepted: bool,
    /// Whether this change was the distributor's assignment (a new deal it decided, or a
    /// waiting or reassigned deal it placed): it starts a response deadline.
    pub assigned_by_distributor: bool,
    /// When the change was made.
    pub updated_at: OffsetDateTime,
    /// When the deal's manager got it (the assignment a response deadline belongs to).
    pub assigned_at: Option<OffsetDateTime>,
    /// When that assignment's response deadline runs out, as deal-service reckoned it at
    /// the assignment (absent in events from before it said so: reckoned here then).
    pub response_due_at: Option<OffsetDateTime>,
}

impl DealState {
    /// Since when the deal waits, while it does: open and unassigned.
    pub fn waiting(&self) -> Option<OffsetDateTime> {
        self.waiting_since
            .filter(|_| self.open && self.manager_id.is_none())
    }

    /// Where the deal counts as open: its plan and manager, while open and assigned.
    fn counted(&self) -> Option<(Uuid, String)> {
        self.manager_id
            .clone()
            .filter(|_| self.open)
            .map(|m| (self.plan_id, m))
    }

    /// The intake id of the lead the deal came from, if its key is one.
    pub fn lead(&self) -> Option<Uuid> {
        Uuid::parse_str(&self.idempotency_key).ok()
    }
}

/// A deal as the distributor last applied it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub plan_id: Uuid,
    pub manager_id: Option<String>,
    pub open: bool,
    pub version: i64,
}

/// A lead's decision: its plan and the manager it counted for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeadDecision {
    pub plan_id: Uuid,
    pub manager_id: Option<String>,
}

/// What the store knew of a batch's deals.
#[derive(Debug, Clone, Default)]
pub struct KnownDeals {
    /// Deals applied before, by id (within their event's account).
    pub seen: HashMap<Uuid, Seen>,
    /// Decisions of the leads of deals never seen, by intake id (within the same account
    /// and plan: a deal's key is its creator's choice).
    pub decided: HashMap<Uuid, LeadDecision>,
}

/// Count changes per (plan, manager), sorted so concurrent transactions lock counter rows
/// in one order.
pub type Deltas = BTreeMap<(Uuid, String), i64>;

/// What applying a batch of deal events changes.
#[derive(Debug, Default)]
pub struct Changes<'a> {
    pub deltas: Deltas,
    /// The states newer than what was applied: written to the view.
    pub applied: Vec<&'a DealState>,
    /// (intake id, deal id, account): decisions whose deal now exists.
    pub links: Vec<(Uuid, Uuid, &'a str)>,
    /// The manager of each (account, contact key)'s most recent deal, and when it was
    /// created.
    pub relations: BTreeMap<(String, String), (&'a str, OffsetDateTime)>,
    /// (account, contact key): relations of erased contacts, deleted before the relations
    /// above are written (a deal of the same identity made after the erasure is a new
    /// contact's); see [`forgotten`].
    pub forgotten: Vec<(String, String)>,
}

/// The newest state of each deal in `states`.
pub fn newest(states: &[DealState]) -> BTreeMap<Uuid, &DealState> {
    let mut newest: BTreeMap<Uuid, &DealState> = BTreeMap::new();
    for state in states {
        let slot = newest.entry(state.deal_id).or_insert(state);
        if state.version > slot.version {
            *slot = state;
        }
    }
    newest
}

/// What the `newest` states change, given what was `known`. A state not newer than the
/// one applied changes nothing; a deal seen for the first time counts from its decision
/// (which counted it already when it was made).
pub fn changes<'a>(newest: &BTreeMap<Uuid, &'a DealState>, known: &KnownDeals) -> Changes<'a> {
    let mut changes = Changes::default();
    for state in newest.values().copied() {
        let before = match known.seen.get(&state.deal_id) {
            Some(seen) if seen.version >= state.version => continue,
            Some(seen) => seen
                .manager_id
                .clone()
                .filter(|_| seen.open)
                .map(|m| (seen.plan_id, m)),
            None => match state.lead().and_then(|k| Some((k, known.decided.get(&k)?))) {
                Some((intake_id, decision)) => {
                    changes
                        .links
                        .push((intake_id, state.deal_id, state.account_id.as_str()));
                    decision.manager_id.clone().map(|m| (decision.plan_id, m))
                }
                None => None,
            },
        };
        let after = state.counted();
        if before != after {
            if let Some(b) = before {
                *changes.deltas.entry(b).or_default() -= 1;
            }
            if let Some(a) = after {
                *changes.deltas.entry(a).or_default() += 1;
            }
        }
        changes.applied.push(state);
    }
    // The contact's relation follows the manager of its most recent deal.
    for s in &changes.applied {
        if let (Some(key), Some(manager)) = (&s.contact_key, &s.manager_id) {
            let slot = changes
                .relations
                .entry((s.account_id.clone(), key.clone()))
                .or_insert((manager, s.created_at));
            if s.created_at > slot.1 {
                *slot = (manager, s.created_at);
            }
        }
    }
    changes
}

/// The states of `states` newer than what was applied of their deal (`known`): a
/// redelivered or late event is not.
pub fn fresh<'a>(states: &'a [DealState], known: &KnownDeals) -> Vec<&'a DealState> {
    states
        .iter()
        .filter(|s| {
            known
                .seen
                .get(&s.deal_id)
                .is_none_or(|seen| s.version > seen.version)
        })
        .collect()
}

/// (account, contact key) of every erasure among `states` newer than what was `known`,
/// the newest of its deal or not: an erasure followed by another change of the same deal
/// in one batch is still an erasure, and one applied before (a redelivery, a replay)
/// forgets nothing again (the person may be back as a new contact since).
pub fn forgotten(states: &[DealState], known: &KnownDeals) -> Vec<(String, String)> {
    fresh(states, known)
        .into_iter()
        .filter_map(|s| Some((s.account_id.clone(), s.erased_contact.clone()?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(deal: u128, version: i64, manager: Option<&str>, open: bool) -> DealState {
        DealState {
            deal_id: Uuid::from_u128(deal),
            account_id: "acme".into(),
            plan_id: Uuid::from_u128(100),
            manager_id: manager.map(str::to_owned),
            open,
            version,
            idempotency_key: Uuid::from_u128(1_000 + deal).to_string(),
            contact_key: Some(format!("c{deal}")),
            erased_contact: None,
            created_at: OffsetDateTime::UNIX_EPOCH + time::Duration::seconds(deal as i64),
            waiting_since: None,
            accepted: false,
            assigned_by_distributor: false,
            updated_at: OffsetDateTime::UNIX_EPOCH,
            assigned_at: None,
            response_due_at: None,
        }
    }

    fn delta(manager: &str, n: i64) -> ((Uuid, String), i64) {
        ((Uuid::from_u128(100), manager.to_owned()), n)
    }

    #[test]
    fn a_new_deal_counts_from_its_decision_and_links_it() {
        let states = [state(1, 1, Some("a"), true), state(2, 1, Some("b"), true)];
        let newest = newest(&states);
        let known = KnownDeals {
            seen: HashMap::new(),
            decided: HashMap::from([(
                Uuid::from_u128(1_001),
                LeadDecision {
                    plan_id: Uuid::from_u128(100),
                    manager_id: Some("a".into()),
                },
            )]),
        };
        let changes = changes(&newest, &known);
        // Deal 1 was counted by its decision; deal 2 (made by hand) counts now.
        assert_eq!(changes.deltas, Deltas::from([delta("b", 1)]));
        assert_eq!(
            changes.links,
            [(Uuid::from_u128(1_001), Uuid::from_u128(1), "acme")]
        );
        assert_eq!(changes.applied.len(), 2);
        assert_eq!(changes.relations.len(), 2);
    }

    #[test]
    fn transfers_and_closes_move_counts_and_old_events_change_nothing() {
        let states = [
            state(1, 3, Some("b"), true),
            state(1, 2, Some("a"), true),
            state(2, 5, Some("a"), false),
            state(3, 4, Some("a"), true),
        ];
        let newest = newest(&states);
        assert_eq!(
            newest[&Uuid::from_u128(1)].version,
            3,
            "the newest state wins"
        );
        let seen = |version, manager: &str, open| Seen {
            plan_id: Uuid::from_u128(100),
            manager_id: Some(manager.into()),
            open,
            version,
        };
        let known = KnownDeals {
            seen: HashMap::from([
                (Uuid::from_u128(1), seen(1, "a", true)),
                (Uuid::from_u128(2), seen(4, "a", true)),
                (Uuid::from_u128(3), seen(4, "a", true)),
            ]),
            decided: HashMap::new(),
        };
        let changes = changes(&newest, &known);
        assert_eq!(
            changes.deltas,
            Deltas::from([delta("a", -2), delta("b", 1)]),
            "1 moved from a to b, 2 closed, 3 is not newer"
        );
        let applied: Vec<u128> = changes
            .applied
            .iter()
            .map(|s| s.deal_id.as_u128())
            .collect();
        assert_eq!(applied, [1, 2]);
        assert!(changes.links.is_empty());
    }

    #[test]
    fn an_erasure_is_forgotten_even_when_the_deal_changed_again_in_the_batch() {
        let mut erased = state(1, 5, Some("a"), true);
        erased.contact_key = None;
        erased.erased_contact = Some("k".into());
        let mut moved = state(1, 6, Some("b"), true);
        moved.contact_key = None;
        let states = [erased, moved];
        let newest = newest(&states);
        assert_eq!(newest[&Uuid::from_u128(1)].version, 6);
        assert_eq!(
            forgotten(&states, &KnownDeals::default()),
            [("acme".to_owned(), "k".to_owned())]
        );
        assert!(
            changes(&newest, &KnownDeals::default())
                .relations
                .is_empty()
        );
        // Applied before (a redelivery): nothing is forgotten again.
        let known = KnownDeals {
            seen: HashMap::from([(
                Uuid::from_u128(1),
                Seen {
                    plan_id: Uuid::from_u128(100),
                    manager_id: Some("b".into()),
                    open: true,
                    version: 6,
                },
            )]),
            decided: HashMap::new(),
        };
        assert!(forgotten(&states, &known).is_empty());
    }

    #[test]
    fn a_contact_follows_the_manager_of_its_latest_deal() {
        let mut older = state(1, 1, Some("a"), true);
        let mut newer = state(2, 1, Some("b"), true);
        older.contact_key = Some("same".into());
        newer.contact_key = Some("same".into());
        for states in [[older.clone(), newer.clone()], [newer, older]] {
            let newest = newest(&states);
            let changes = changes(&newest, &KnownDeals::default());
            assert_eq!(
                changes.relations[&("acme".to_owned(), "same".to_owned())].0,
                "b"
            );
        }
    }
}
