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
}
