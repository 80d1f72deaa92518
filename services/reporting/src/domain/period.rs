//! The period and scope of a report, in whole UTC days where the kept totals count.

use time::{Duration, OffsetDateTime, Time};
use uuid::Uuid;

/// [from, to) on the closing time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Period {
    pub from: Option<OffsetDateTime>,
    pub to: Option<OffsetDateTime>,
}

#[derive(Debug, Clone, Default)]
pub struct Scope {
    pub plans: Vec<Uuid>,
    pub managers: Vec<String>,
}

fn midnight(at: OffsetDateTime) -> OffsetDateTime {
    at.to_offset(time::UtcOffset::UTC)
        .replace_time(Time::MIDNIGHT)
}

/// The whole UTC days inside the period, as [first day start, end day start).
pub fn whole_days(period: Period) -> (Option<OffsetDateTime>, Option<OffsetDateTime>) {
    let first = period.from.map(|from| {
        let day = midnight(from);
        if day == from {
            day
        } else {
            day + Duration::DAY
        }
    });
    let end = period.to.map(midnight);
    (first, end)
}

/// A period as the kept totals answer it: its whole UTC days from the daily totals (none
/// when it holds no whole day), its partial days at the edges counted from the deals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    pub whole_days: Option<(Option<OffsetDateTime>, Option<OffsetDateTime>)>,
    pub edges: Vec<(Option<OffsetDateTime>, Option<OffsetDateTime>)>,
}

/// Splits a bounded-on-some-side `period` into whole days and the edges around them:
/// [from, first whole day) and [end day, to), or all of [from, to) when the period holds
/// no whole day.
pub fn split(period: Period) -> Split {
    let (first, end) = whole_days(period);
    let has_whole_days = match (first, end) {
        (Some(f), Some(e)) => f < e,
        _ => true,
    };
    if !has_whole_days {
        return Split {
            whole_days: None,
            edges: vec![(period.from, period.to)],
        };
    }
    let mut edges = Vec::new();
    if let (Some(from), Some(first)) = (period.from, first)
        && from < first
    {
        edges.push((Some(from), Some(first)));
    }
    if let (Some(end), Some(to)) = (end, period.to)
        && end < to
    {
        edges.push((Some(end), Some(to)));
    }
    Split {
        whole_days: Some((first, end)),
        edges,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn whole_days_of_a_period() {
        let p = Period {
            from: Some(datetime!(2026-01-01 10:00 UTC)),
            to: Some(datetime!(2026-01-04 05:00 UTC)),
        };
        assert_eq!(
            whole_days(p),
            (
                Some(datetime!(2026-01-02 00:00 UTC)),
                Some(datetime!(2026-01-04 00:00 UTC))
            )
        );
        let exact = Period {
            from: Some(datetime!(2026-01-01 00:00 UTC)),
            to: None,
        };
        assert_eq!(
            whole_days(exact),
            (Some(datetime!(2026-01-01 00:00 UTC)), None)
        );
    }

    #[test]
    fn a_period_splits_into_whole_days_and_edges() {
        let p = Period {
            from: Some(datetime!(2026-01-01 10:00 UTC)),
            to: Some(datetime!(2026-01-04 05:00 UTC)),
        };
        assert_eq!(
            split(p),
            Split {
                whole_days: Some((
                    Some(datetime!(2026-01-02 00:00 UTC)),
                    Some(datetime!(2026-01-04 00:00 UTC))
                )),
                edges: vec![
                    (
                        Some(datetime!(2026-01-01 10:00 UTC)),
                        Some(datetime!(2026-01-02 00:00 UTC))
                    ),
                    (
                        Some(datetime!(2026-01-04 00:00 UTC)),
                        Some(datetime!(2026-01-04 05:00 UTC))
                    ),
                ],
            }
        );
        let within_a_day = Period {
            from: Some(datetime!(2026-01-01 10:00 UTC)),
            to: Some(datetime!(2026-01-01 12:00 UTC)),
        };
        assert_eq!(
            split(within_a_day),
            Split {
                whole_days: None,
                edges: vec![(within_a_day.from, within_a_day.to)],
            }
        );
    }
}
