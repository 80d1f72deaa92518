//! What a list or board query asks for: the filter, the sort, and the page token that
//! continues it. Pure: the store turns it into SQL.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use super::{DomainError, deal::DealStatus};

pub const DEFAULT_PAGE_SIZE: usize = 50;
pub const MAX_PAGE_SIZE: usize = 500;

/// [from, to) on a timestamp.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TimeRange {
    pub from: Option<OffsetDateTime>,
    pub to: Option<OffsetDateTime>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DealQuery {
    pub plan_id: Option<Uuid>,
    pub stage_ids: Vec<Uuid>,
    pub managers: Vec<String>,
    pub unassigned: bool,
    pub statuses: Vec<DealStatus>,
    pub loss_reason_ids: Vec<Uuid>,
    pub without_loss_reason: bool,
    pub created: TimeRange,
    pub closed: TimeRange,
    pub search: Option<Search>,
    /// Only deals waiting for the distributor to assign them.
    pub waiting: bool,
}

impl DealQuery {
    /// Whether the kept counts answer this query's totals: it narrows by plan, stage and
    /// manager only (the cells they are kept in).
    pub fn counted_by_cells(&self) -> bool {
        self.statuses.is_empty()
            && self.loss_reason_ids.is_empty()
            && !self.without_loss_reason
            && self.created == TimeRange::default()
            && self.closed == TimeRange::default()
            && self.search.is_none()
            && !self.waiting
    }
}

/// A search text, ready for `LIKE`: lower-cased with `%`, `_` and `\` escaped, plus the
/// digits when the text looks like (part of) a phone number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Search {
    pub pattern: String,
    pub digits_pattern: Option<String>,
}

/// Letters or digits in a row a search needs: the trigram index can only narrow a
/// search down by a fragment of three (shorter ones read every deal of the account).
pub const MIN_SEARCH_RUN: usize = 3;

impl Search {
    /// The search of `text` (none for blank text), or why the index cannot serve it.
    pub fn new(text: &str) -> Result<Option<Self>, DomainError> {
        let text = text.trim();
        if text.is_empty() {
            return Ok(None);
        }
        if longest_word_run(text) < MIN_SEARCH_RUN {
            return Err(DomainError::invalid(
                "search",
                format!(
                    "needs at least {MIN_SEARCH_RUN} letters or digits in a row (the search \
                     index matches fragments of {MIN_SEARCH_RUN})"
                ),
            ));
        }
        let digits: String = text.chars().filter(char::is_ascii_digit).collect();
        let phone_like = text
            .chars()
            .all(|c| c.is_ascii_digit() || " +-().".contains(c));
        Ok(Some(Self {
            pattern: format!("%{}%", escape_like(&text.to_lowercase())),
            digits_pattern: (phone_like && digits.len() >= MIN_SEARCH_RUN && digits != text)
                .then(|| format!("%{digits}%")),
        }))
    }
}

/// The most letters or digits in a row in `text` (what a trigram is made of); for a
/// phone-like text, its digits together (they are matched without the punctuation).
fn longest_word_run(text: &str) -> usize {
    let phone_like = text
        .chars()
        .all(|c| c.is_ascii_digit() || " +-().".contains(c));
    if phone_like {
        return text.chars().filter(char::is_ascii_digit).count();
    }
    text.split(|c: char| !c.is_alphanumeric())
        .map(|run| run.chars().count())
        .max()
        .unwrap_or(0)
}

/// Makes `%`, `_` and `\` match themselves in a `LIKE` pattern (escape character `\`).
pub fn escape_like(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SortField {
    CreatedAt,
    UpdatedAt,
    ClosedAt,
    Amount,
    Title,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sort {
    pub field: SortField,
    pub ascending: bool,
}

impl Default for Sort {
    fn default() -> Self {
        Self {
            field: SortField::CreatedAt,
            ascending: false,
        }
    }
}

/// The sort value of the last deal of a page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SortValue {
    Time(i128),
    Amount(i64),
    Text(String),
}

/// Where the next page starts: after (value, id) in `sort` order. Bound to the sort and a
/// fingerprint of the filter, so it cannot continue a different query.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageToken {
    pub sort: Sort,
    pub filter: u64,
    pub value: SortValue,
    pub id: Uuid,
}

impl PageToken {
    pub fn encode(&self) -> String {
        // Serialising this plain struct cannot fail.
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(self).unwrap_or_default())
    }

    pub fn decode(token: &str, sort: Sort, filter: u64) -> Result<Self, DomainError> {
        let invalid = || DomainError::invalid("page_token", "not a token of this query");
        let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
        let token: PageToken = serde_json::from_slice(&bytes).map_err(|_| invalid())?;
        if token.sort != sort || token.filter != filter {
            return Err(invalid());
        }
        Ok(token)
    }
}

/// FNV-1a: a stable fingerprint of the encoded filter (the same in every process).
pub fn fingerprint(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, b| {
        (hash ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

pub fn page_size(requested: i32) -> usize {
    bounded_page_size(requested, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
}

/// `requested`, or `default` when not given, never more than `max`.
pub fn bounded_page_size(requested: i32, default: usize, max: usize) -> usize {
    match requested {
        n if n <= 0 => default,
        n => (n as usize).min(max),
    }
}

/// The token of a list paged by one key (plans by id, history by entry id): the last key
/// of the page, opaque to clients.
pub struct AfterKey;

impl AfterKey {
    pub fn encode(key: &str) -> String {
        URL_SAFE_NO_PAD.encode(key)
    }

    /// The key after which the page starts; none for an empty token.
    pub fn decode<K: std::str::FromStr>(token: &str) -> Result<Option<K>, DomainError> {
        if token.is_empty() {
            return Ok(None);
        }
        let invalid = || DomainError::invalid("page_token", "not a token of this list");
        let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
        let key = std::str::from_utf8(&bytes).map_err(|_| invalid())?;
        key.parse().map(Some).map_err(|_| invalid())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn only_plan_stage_and_manager_filters_are_answered_by_the_kept_counts() {
        let mut q = DealQuery {
            plan_id: Some(Uuid::nil()),
            stage_ids: vec![Uuid::nil()],
            managers: vec!["m1".into()],
            unassigned: true,
            ..Default::default()
        };
        assert!(q.counted_by_cells());
        q.search = Search::new("ann").unwrap();
        assert!(!q.counted_by_cells());
        q.search = None;
        q.statuses = vec![DealStatus::Won];
        assert!(!q.counted_by_cells());
        q.statuses.clear();
        q.created.from = Some(OffsetDateTime::UNIX_EPOCH);
        assert!(!q.counted_by_cells());
        q.created.from = None;
        q.waiting = true;
        assert!(!q.counted_by_cells(), "the waiting are not a kept cell");
    }

    #[test]
    fn like_metacharacters_are_literal() {
        assert_eq!(escape_like(r"50%_off\"), r"50\%\_off\\");
        assert_eq!(Search::new("  Ann ").unwrap().unwrap().pattern, "%ann%");
    }

    #[test]
    fn phone_searches_match_on_digits() {
        let s = Search::new("+7 (912) 345").unwrap().unwrap();
        assert_eq!(s.digits_pattern.as_deref(), Some("%7912345%"));
        assert_eq!(
            Search::new("912").unwrap().unwrap().digits_pattern,
            None,
            "already digits"
        );
        assert_eq!(Search::new("ann 12").unwrap().unwrap().digits_pattern, None);
        assert!(Search::new("   ").unwrap().is_none());
    }

    #[test]
    fn a_search_needs_a_fragment_the_index_can_serve() {
        for short in ["ъ", "ab", "a b c", "a@b.c", "%_", "+7 (9", "12"] {
            let err = Search::new(short).unwrap_err();
            assert!(
                matches!(err, DomainError::Invalid { ref field, .. } if field == "search"),
                "{short}"
            );
        }
        for fine in ["ann", "ъъъ", "日本語", "a@bcd.io", "+7 (91", "50%_off"] {
            assert!(Search::new(fine).unwrap().is_some(), "{fine}");
        }
    }

    #[test]
    fn tokens_only_continue_their_own_query() {
        let token = PageToken {
            sort: Sort::default(),
            filter: 7,
            value: SortValue::Text("x".into()),
            id: Uuid::nil(),
        };
        let encoded = token.encode();
        assert_eq!(
            PageToken::decode(&encoded, Sort::default(), 7).unwrap(),
            token
        );
        assert!(PageToken::decode(&encoded, Sort::default(), 8).is_err());
        let other = Sort {
            field: SortField::Amount,
            ascending: true,
        };
        assert!(PageToken::decode(&encoded, other, 7).is_err());
        assert!(PageToken::decode("garbage!", Sort::default(), 7).is_err());
    }

    #[test]
    fn key_tokens_round_trip_and_refuse_anything_else() {
        let id = Uuid::now_v7();
        let token = AfterKey::encode(&id.to_string());
        assert_eq!(AfterKey::decode::<Uuid>(&token).unwrap(), Some(id));
        assert_eq!(AfterKey::decode::<Uuid>("").unwrap(), None);
        assert_eq!(
            AfterKey::decode::<i64>(&AfterKey::encode("42")).unwrap(),
            Some(42)
        );
        for bad in ["%%", "bm90IGFuIGlk", &AfterKey::encode(&id.to_string())] {
            assert!(AfterKey::decode::<i64>(bad).is_err(), "{bad}");
        }
        assert_eq!(bounded_page_size(0, 20, 50), 20);
        assert_eq!(bounded_page_size(500, 20, 50), 50);
    }

    #[test]
    fn page_sizes_are_capped() {
        assert_eq!(page_size(0), DEFAULT_PAGE_SIZE);
        assert_eq!(page_size(-3), DEFAULT_PAGE_SIZE);
        assert_eq!(page_size(10), 10);
        assert_eq!(page_size(1_000_000), MAX_PAGE_SIZE);
    }

    proptest! {
        #[test]
        fn escaped_text_has_no_unescaped_wildcards(text in ".*") {
            let escaped = escape_like(&text);
            let mut chars = escaped.chars();
            while let Some(c) = chars.next() {
                if c == '\\' {
                    prop_assert!(matches!(chars.next(), Some('%' | '_' | '\\')));
                } else {
                    prop_assert!(c != '%' && c != '_');
                }
            }
        }
    }
}
