//! The pure rules of the live feed of deal changes (WatchDeals): which changes a watcher
//! sees, what a resume token says, and whether a snapshot of the database holds a change.

#[cfg(test)]
use uuid::Uuid;

/// A PostgreSQL snapshot (`pg_current_snapshot()`): which transactions' writes it sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbSnapshot {
    /// Every transaction below it had ended.
    pub xmin: i64,
    /// No transaction from it on had ended.
    pub xmax: i64,
    /// Transactions between the two that were still running.
    pub running: Vec<i64>,
}

/// Transactions running at a snapshot that a token carries at most (PostgreSQL's own
/// bound is the connections; deal-service's pools hold far fewer).
const MAX_RUNNING: usize = 1_000;

impl DbSnapshot {
    /// From PostgreSQL's text form, `xmin:xmax:xip,xip,…`.
    pub fn parse(text: &str) -> Option<Self> {
        let mut parts = text.split(':');
        let (xmin, xmax, running) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let running: Vec<i64> = match running {
            "" => Vec::new(),
            list => list
                .split(',')
                .map(|x| x.parse().ok())
                .collect::<Option<_>>()?,
        };
        let snapshot = Self {
            xmin: xmin.parse().ok()?,
            xmax: xmax.parse().ok()?,
            running,
        };
        snapshot.is_sane().then_some(snapshot)
    }

    fn is_sane(&self) -> bool {
        self.xmin <= self.xmax
            && self.running.len() <= MAX_RUNNING
            && self
                .running
                .iter()
                .all(|x| (self.xmin..self.xmax).contains(x))
    }

    /// Whether the snapshot sees the writes of transaction `xid`: it had committed before
    /// the snapshot was taken (an aborted one wrote no event).
    pub fn holds(&self, xid: i64) -> bool {
        xid < self.xmin || (xid < self.xmax && !self.running.contains(&xid))
    }
}

/// deal-service's outbox horizon: every change written by a transaction below `xid` is in
/// the deal events' stream at or before `position`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Horizon {
    pub xid: i64,
    pub position: u64,
}

/// Where a watch resumes: after position `after` of the deal events' stream; with a
/// snapshot (a watch that began with the board), the changes the board held are skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumeToken {
    pub after: u64,
    pub snapshot: Option<DbSnapshot>,
}

const TOKEN_PREFIX: &str = "w1";

impl ResumeToken {
    /// `w1.<after>` or `w1.<after>.<xmin>.<xmax>.<running…>` (running joined by `_`).
    pub fn encode(&self) -> String {
        match &self.snapshot {
            None => format!("{TOKEN_PREFIX}.{}", self.after),
            Some(s) => {
                let running: Vec<String> = s.running.iter().map(i64::to_string).collect();
                let running = running.join("_");
                format!(
                    "{TOKEN_PREFIX}.{}.{}.{}.{running}",
                    self.after, s.xmin, s.xmax
                )
            }
        }
    }

    pub fn decode(text: &str) -> Option<Self> {
        let mut parts = text.split('.');
        if parts.next()? != TOKEN_PREFIX {
            return None;
        }
        let after = parts.next()?.parse().ok()?;
        let rest: Vec<&str> = parts.collect();
        let snapshot = match rest.as_slice() {
            [] => None,
            [xmin, xmax, running] => Some(DbSnapshot::parse(&format!(
                "{xmin}:{xmax}:{}",
                running.replace('_', ",")
            ))?),
            _ => return None,
        };
        Some(Self { after, snapshot })
    }

    /// Forgets the snapshot once `horizon` shows that every change it holds is at or
    /// before this token's position: nothing after it is skipped any more, and tokens
    /// shrink back to a position.
    pub fn past(&mut self, horizon: Option<Horizon>) {
        if let (Some(snapshot), Some(horizon)) = (&self.snapshot, horizon)
            && horizon.xid >= snapshot.xmax
            && self.after >= horizon.position
        {
            self.snapshot = None;
        }
    }

    /// Whether a change at `position`, written by transaction `xid` (unknown for events
    /// from before it was recorded), is one to deliver after this token.
    pub fn wants(&self, position: u64, xid: Option<i64>) -> bool {
        position > self.after
            && !matches!((&self.snapshot, xid), (Some(s), Some(xid)) if s.holds(xid))
    }
}

/// Which deals a watcher follows: a change is theirs if the deal matches before it or
/// after it (a deal moved out of a watched stage, or taken from a watched manager, is a
/// change the board must see). Ids in their text form, as events carry them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WatchFilter {
    pub plan_id: Option<String>,
    pub stage_ids: Vec<String>,
    pub manager_id: Option<String>,
}

/// A change as the filter looks at it.
#[derive(Debug, Clone, Copy)]
pub struct Seen<'a> {
    pub plan_id: &'a str,
    pub stage_id: &'a str,
    pub previous_stage_id: Option<&'a str>,
    pub manager_id: Option<&'a str>,
    pub previous_manager_id: Option<&'a str>,
}

impl WatchFilter {
    pub fn matches(&self, change: Seen<'_>) -> bool {
        let plan = self.plan_id.as_deref().is_none_or(|p| p == change.plan_id);
        let stage = self.stage_ids.is_empty()
            || [Some(change.stage_id), change.previous_stage_id]
                .into_iter()
                .flatten()
                .any(|s| self.stage_ids.iter().any(|w| w == s));
        let manager = self
            .manager_id
            .as_deref()
            .is_none_or(|m| change.manager_id == Some(m) || change.previous_manager_id == Some(m));
        plan && stage && manager
    }
}

/// The bounds of a replica's watches: per account, in all, and the share an account keeps
/// once the replica is crowded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchBounds {
    pub per_account: usize,
    pub total: usize,
}

/// Why a watch is refused: whose watches are at which limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub whose: &'static str,
    pub limit: usize,
}

impl WatchBounds {
    /// Whether an account with `mine` watches may open one more while the replica holds
    /// `total`. Past four fifths of the replica's bound an account keeps to half its own,
    /// so the last fifth stays for accounts that watch little: a few accounts at their
    /// full bound cannot take every place of a replica.
    pub fn admit(&self, mine: usize, total: usize) -> Result<(), Refusal> {
        let crowded = total * 5 >= self.total * 4;
        let share = if crowded {
            (self.per_account / 2).max(1)
        } else {
            self.per_account
        };
        if total >= self.total {
            return Err(Refusal {
                whose: "this replica's",
                limit: self.total,
            });
        }
        if mine >= share {
            let whose = if crowded {
                "this account's (the replica is crowded: half the account's bound)"
            } else {
                "this account's"
            };
            return Err(Refusal {
                whose,
                limit: share,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crowded_replica_keeps_its_last_fifth_for_accounts_that_watch_little() {
        let bounds = WatchBounds {
            per_account: 2_000,
            total: 10_000,
        };
        assert_eq!(bounds.admit(1_999, 7_999), Ok(()));
        assert_eq!(bounds.admit(2_000, 7_999).unwrap_err().limit, 2_000);
        // Four accounts at 2,000 make the replica crowded: a fifth keeps to 1,000, and
        // so does every account after it, until the replica is full.
        assert_eq!(bounds.admit(999, 8_000), Ok(()));
        assert_eq!(bounds.admit(1_000, 8_000).unwrap_err().limit, 1_000);
        assert_eq!(bounds.admit(0, 9_999), Ok(()));
        assert_eq!(bounds.admit(0, 10_000).unwrap_err().whose, "this replica's");
        let tiny = WatchBounds {
            per_account: 1,
            total: 1,
        };
        assert_eq!(tiny.admit(0, 0), Ok(()));
        assert!(tiny.admit(0, 1).is_err());
    }

    #[test]
    fn a_token_forgets_its_snapshot_once_the_horizon_passed_it() {
        let snapshot = DbSnapshot::parse("100:110:103,107");
        let token = |after| ResumeToken {
            after,
            snapshot: snapshot.clone(),
        };
        let past = |mut t: ResumeToken, xid, position| {
            t.past(Some(Horizon { xid, position }));
            t.snapshot.is_some()
        };
        assert!(
            past(token(50), 110, 60),
            "changes up to 60 may still be held"
        );
        assert!(
            past(token(60), 109, 60),
            "transaction 109 may not be in the stream yet"
        );
        assert!(!past(token(60), 110, 60));
        assert!(!past(token(70), 200, 60));
        let mut kept = token(70);
        kept.past(None);
        assert!(kept.snapshot.is_some(), "no horizon known");
        assert_eq!(token(70).encode().split('.').count(), 5);
        let mut forgotten = token(70);
        forgotten.past(Some(Horizon {
            xid: 110,
            position: 70,
        }));
        assert_eq!(forgotten.encode(), "w1.70");
    }

    #[test]
    fn a_snapshot_holds_what_had_committed_before_it() {
        let s = DbSnapshot::parse("100:110:103,107").unwrap();
        assert_eq!(s.running, [103, 107]);
        let held: Vec<i64> = (98..112).filter(|x| s.holds(*x)).collect();
        assert_eq!(held, [98, 99, 100, 101, 102, 104, 105, 106, 108, 109]);
        assert_eq!(DbSnapshot::parse("5:5:").map(|s| s.holds(4)), Some(true));
        for bad in ["", "1:2", "1:2:3:4", "9:5:", "1:5:7", "a:5:", "1:5:2,x"] {
            assert_eq!(DbSnapshot::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_token_says_where_to_resume_and_what_the_board_held() {
        let plain = ResumeToken {
            after: 42,
            snapshot: None,
        };
        assert_eq!(plain.encode(), "w1.42");
        let board = ResumeToken {
            after: 42,
            snapshot: DbSnapshot::parse("100:110:103,107"),
        };
        assert_eq!(board.encode(), "w1.42.100.110.103_107");
        for token in [&plain, &board] {
            assert_eq!(ResumeToken::decode(&token.encode()).as_ref(), Some(token));
        }
        let empty = ResumeToken {
            after: 7,
            snapshot: DbSnapshot::parse("9:9:"),
        };
        assert_eq!(ResumeToken::decode(&empty.encode()), Some(empty));
        for bad in [
            "",
            "w1",
            "w2.42",
            "w1.-1",
            "w1.42.100",
            "w1.42.1.2.3.4",
            "w1.x",
        ] {
            assert_eq!(ResumeToken::decode(bad), None, "{bad}");
        }
        // After the token only, and not what the board held.
        assert!(!plain.wants(42, None) && plain.wants(43, Some(105)));
        assert!(!board.wants(43, Some(105)), "committed before the board");
        assert!(
            board.wants(43, Some(103)),
            "running while the board was read"
        );
        assert!(board.wants(43, Some(110)) && board.wants(43, None));
    }

    #[test]
    fn a_change_is_a_watchers_if_the_deal_matched_before_or_after_it() {
        let (plan, a, b) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let (plan_s, a_s, b_s) = (plan.to_string(), a.to_string(), b.to_string());
        let moved = Seen {
            plan_id: &plan_s,
            stage_id: &b_s,
            previous_stage_id: Some(&a_s),
            manager_id: Some("m2"),
            previous_manager_id: Some("m1"),
        };
        let watching = |stage: Option<Uuid>, manager: Option<&str>| WatchFilter {
            plan_id: Some(plan.to_string()),
            stage_ids: stage.into_iter().map(|s| s.to_string()).collect(),
            manager_id: manager.map(Into::into),
        };
        assert!(watching(None, None).matches(moved));
        assert!(watching(Some(a), None).matches(moved), "moved out of a");
        assert!(watching(Some(b), None).matches(moved), "moved into b");
        assert!(!watching(Some(Uuid::new_v4()), None).matches(moved));
        assert!(watching(None, Some("m1")).matches(moved), "taken from m1");
        assert!(watching(None, Some("m2")).matches(moved), "given to m2");
        assert!(!watching(None, Some("m3")).matches(moved));
        let other_plan = WatchFilter {
            plan_id: Some(Uuid::new_v4().to_string()),
            ..WatchFilter::default()
        };
        assert!(!other_plan.matches(moved));
        assert!(WatchFilter::default().matches(moved));
    }
}
