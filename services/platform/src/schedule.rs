//! A manager's working time: a time zone, weekly hours, days off, and a pause switch.
//! Pure: whether a manager is available at an instant and why not, when they are next, and
//! how much working time lies between two instants (for response deadlines). deal-service
//! validates schedules with it; the distributor decides with it. Time zones come from the
//! IANA database bundled into the build, so every replica agrees whatever its system has.

use jiff::{
    Timestamp,
    civil::{Date, DateTime},
    tz::TimeZone,
};
use salesplan_proto::v1 as pb;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::{ApiError, Checks};

pub const MAX_HOURS_PER_DAY: usize = 8;
pub const MAX_DAYS_OFF: usize = 100;
/// The longest range of days off, in days.
pub const MAX_DAYS_OFF_SPAN: i32 = 366;
/// How far ahead working time is looked for: a schedule with none in this many days has
/// none (and a manager on it waits to be resumed by a new schedule).
pub const HORIZON_DAYS: i32 = 400;
const MINUTES_PER_DAY: u16 = 1440;
const MAX_TIME_ZONE_CHARS: usize = 64;

/// Working hours of one day: minutes after local midnight, `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hours {
    pub start: u16,
    pub end: u16,
}

/// Local dates, both included.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaysOff {
    pub first: Date,
    pub last: Date,
}

/// A validated schedule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schedule {
    /// An IANA name known to the bundled database.
    pub time_zone: String,
    /// Hours per weekday, Monday first, each day's sorted and apart. Every day empty: the
    /// manager works around the clock.
    pub week: [Vec<Hours>; 7],
    pub days_off: Vec<DaysOff>,
}

impl Default for Schedule {
    fn default() -> Self {
        Self {
            time_zone: "UTC".into(),
            week: Default::default(),
            days_off: Vec::new(),
        }
    }
}

/// Why a manager is unavailable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Away {
    Paused,
    DayOff,
    OutsideHours,
}

impl Away {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Paused => "paused",
            Self::DayOff => "day off",
            Self::OutsideHours => "outside working hours",
        }
    }
}

/// A manager's schedule and pause switch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Availability {
    pub schedule: Schedule,
    pub paused: bool,
}

impl Availability {
    /// Why the manager is unavailable at `at`, if they are.
    pub fn away_at(&self, at: OffsetDateTime) -> Option<Away> {
        if self.paused {
            return Some(Away::Paused);
        }
        self.schedule.away_at(at)
    }

    /// When the manager is available again from `at` on (`at` itself when available now);
    /// `None` while paused or without working time within [`HORIZON_DAYS`].
    pub fn available_from(&self, at: OffsetDateTime) -> Option<OffsetDateTime> {
        if self.paused {
            return None;
        }
        self.schedule.periods(at).next().map(|(start, _)| start)
    }
}

impl Schedule {
    fn zone(&self) -> TimeZone {
        TimeZone::get(&self.time_zone).unwrap_or(TimeZone::UTC)
    }

    fn around_the_clock(&self) -> bool {
        self.week.iter().all(Vec::is_empty)
    }

    /// The range of days off holding `date`, if one does (the ranges are sorted and apart:
    /// a binary search).
    fn days_off_holding(&self, date: Date) -> Option<&DaysOff> {
        let i = self.days_off.partition_point(|d| d.last < date);
        self.days_off.get(i).filter(|d| d.first <= date)
    }

    /// The hours of `date` (before days off are considered).
    fn hours_of(&self, date: Date) -> &[Hours] {
        const ALL_DAY: &[Hours] = &[Hours {
            start: 0,
            end: MINUTES_PER_DAY,
        }];
        if self.around_the_clock() {
            return ALL_DAY;
        }
        &self.week[date.weekday().to_monday_zero_offset() as usize]
    }

    /// The days from `first` on that are not days off, within [`HORIZON_DAYS`]: a range of
    /// days off is stepped over at once, so its length costs nothing.
    fn working_days(&self, first: Date) -> impl Iterator<Item = Date> + '_ {
        let end = first.checked_add(jiff::Span::new().days(HORIZON_DAYS)).ok();
        let mut next = Some(first);
        std::iter::from_fn(move || {
            loop {
                let date = next.filter(|d| end.is_none_or(|end| *d < end))?;
                match self.days_off_holding(date) {
                    Some(off) => next = off.last.tomorrow().ok(),
                    None => {
                        next = date.tomorrow().ok();
                        return Some(date);
                    }
                }
            }
        })
    }

    /// The working periods of `date`'s hours, as instants (unclipped).
    fn periods_of(
        &self,
        zone: &TimeZone,
        date: Date,
    ) -> impl Iterator<Item = (Timestamp, Timestamp)> + '_ {
        let zone = zone.clone();
        self.hours_of(date).iter().filter_map(move |h| {
            let start = instant(&zone, date, h.start)?;
            let end = instant(&zone, date, h.end)?;
            (start < end).then_some((start, end))
        })
    }

    /// Why the schedule has no work at `at`, if it has none: `at` lies in no working
    /// period (the periods are the one rule: see [`Schedule::periods`]); a day off when its
    /// local date is one.
    pub fn away_at(&self, at: OffsetDateTime) -> Option<Away> {
        let zone = self.zone();
        let ts = timestamp(at);
        let date = zone.to_datetime(ts).date();
        let near = [date.yesterday().ok(), Some(date), date.tomorrow().ok()];
        let working = near
            .into_iter()
            .flatten()
            .filter(|d| self.days_off_holding(*d).is_none())
            .any(|d| self.periods_of(&zone, d).any(|(s, e)| s <= ts && ts < e));
        match (working, self.days_off_holding(date)) {
            (true, _) => None,
            (false, Some(_)) => Some(Away::DayOff),
            (false, None) => Some(Away::OutsideHours),
        }
    }

    /// The working periods from `from` on, in order, within [`HORIZON_DAYS`]; the first
    /// starts at `from` when `from` is working time. Each day's hours are local times made
    /// instants: a time the clocks skip moves forward by the gap, a time they repeat is its
    /// first pass (so an interval inside a repeated hour counts once).
    pub fn periods(
        &self,
        from: OffsetDateTime,
    ) -> impl Iterator<Item = (OffsetDateTime, OffsetDateTime)> + '_ {
        let zone = self.zone();
        let from_ts = timestamp(from);
        let first_day = zone.to_datetime(from_ts).date();
        let first_day = first_day.yesterday().unwrap_or(first_day);
        self.working_days(first_day)
            .flat_map(move |date| self.periods_of(&zone, date).collect::<Vec<_>>())
            .filter_map(move |(start, end)| {
                let start = start.max(from_ts);
                (start < end).then(|| (offset_date_time(start), offset_date_time(end)))
            })
            .scan(from, |covered, (start, end)| {
                // A repeated hour (clocks going back) can make two periods overlap.
                let start = start.max(*covered);
                *covered = (*covered).max(end);
                Some((start < end).then_some((start, end)))
            })
            .flatten()
    }

    /// The working time between `from` and `to`.
    pub fn working_time(&self, from: OffsetDateTime, to: OffsetDateTime) -> time::Duration {
        let mut total = time::Duration::ZERO;
        for (start, end) in self.periods(from) {
            if start >= to {
                break;
            }
            total += end.min(to) - start;
        }
        total
    }

    /// When a response deadline of `seconds` working time from `from` runs out (around
    /// the clock without a schedule). A schedule with no working time within its horizon
    /// gives wall-clock time: a deal is never held by a manager who never works. The
    /// distributor times its reassignment by it; deal-service tells a late acceptance.
    pub fn deadline(&self, from: OffsetDateTime, seconds: u32) -> OffsetDateTime {
        let working = time::Duration::seconds(i64::from(seconds));
        self.after_working(from, working).unwrap_or(from + working)
    }

    /// The instant at which `working` working time has passed since `from`; `None` when
    /// the schedule has not that much within [`HORIZON_DAYS`].
    pub fn after_working(
        &self,
        from: OffsetDateTime,
        working: time::Duration,
    ) -> Option<OffsetDateTime> {
        let mut left = working;
        for (start, end) in self.periods(from) {
            if end - start >= left {
                return Some(start + left);
            }
            left -= end - start;
        }
        None
    }
}

/// The instant of `minute` after local midnight of `date` (1440: the next midnight).
fn instant(zone: &TimeZone, date: Date, minute: u16) -> Option<Timestamp> {
    let (date, minute) = if minute >= MINUTES_PER_DAY {
        (date.tomorrow().ok()?, 0)
    } else {
        (date, minute)
    };
    let local: DateTime = date.at((minute / 60) as i8, (minute % 60) as i8, 0, 0);
    zone.to_timestamp(local).ok()
}

fn timestamp(at: OffsetDateTime) -> Timestamp {
    Timestamp::from_second(at.unix_timestamp()).unwrap_or(Timestamp::UNIX_EPOCH)
}

fn offset_date_time(at: Timestamp) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(at.as_second()).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

impl Schedule {
    /// A schedule from the wire, with every violation at once (fields under `field`).
    pub fn from_proto(field: &str, schedule: pb::Schedule) -> Result<Self, ApiError> {
        let mut checks = Checks::new();
        let time_zone = checks.take(time_zone(&schedule.time_zone));
        let mut week: [Vec<Hours>; 7] = Default::default();
        let mut listed = [false; 7];
        if schedule.week.len() > 7 {
            checks.note(ApiError::invalid(
                "week",
                "at most 7 days, each listed once",
            ));
        }
        for (i, day) in schedule.week.iter().take(7).enumerate() {
            let at = format!("week[{i}]");
            let again = weekday_index(day.weekday)
                .is_some_and(|index| std::mem::replace(&mut listed[index], true));
            if again {
                checks.note(ApiError::invalid(
                    format!("{at}.weekday"),
                    "the weekday is listed twice",
                ));
                continue;
            }
            match checks.check(working_day(&at, day)) {
                Some((_, hours)) if hours.is_empty() => checks.note(ApiError::invalid(
                    format!("{at}.hours"),
                    "a listed weekday needs hours (leave a day without work out)",
                )),
                Some((index, hours)) => week[index] = hours,
                None => {}
            }
        }
        if schedule.days_off.len() > MAX_DAYS_OFF {
            checks.note(ApiError::invalid(
                "days_off",
                format!("at most {MAX_DAYS_OFF} ranges"),
            ));
        }
        let days_off = merged(
            schedule
                .days_off
                .iter()
                .take(MAX_DAYS_OFF)
                .enumerate()
                .filter_map(|(i, d)| checks.check(days_off(&format!("days_off[{i}]"), d)))
                .collect(),
        );
        checks.finish().map_err(|e| e.within(field))?;
        Ok(Self {
            time_zone,
            week,
            days_off,
        })
    }

    pub fn to_proto(&self) -> pb::Schedule {
        let week = self
            .week
            .iter()
            .enumerate()
            .filter(|(_, hours)| !hours.is_empty())
            .map(|(i, hours)| pb::WorkingDay {
                weekday: i as i32 + 1,
                hours: hours
                    .iter()
                    .map(|h| pb::WorkingHours {
                        start_minute: h.start.into(),
                        end_minute: h.end.into(),
                    })
                    .collect(),
            })
            .collect();
        pb::Schedule {
            time_zone: self.time_zone.clone(),
            week,
            days_off: self
                .days_off
                .iter()
                .map(|d| pb::DaysOff {
                    first: d.first.to_string(),
                    last: d.last.to_string(),
                })
                .collect(),
        }
    }
}

/// The database's own spelling of the zone `name` names (lookups ignore case: a schedule
/// given `europe/berlin` reads back `Europe/Berlin`).
fn time_zone(name: &str) -> Result<String, ApiError> {
    let name = name.trim();
    if name.is_empty() {
        return Ok("UTC".into());
    }
    let zone = (name.chars().count() <= MAX_TIME_ZONE_CHARS)
        .then(|| TimeZone::get(name).ok())
        .flatten()
        .ok_or_else(|| ApiError::invalid("time_zone", "an IANA time zone such as Europe/Berlin"))?;
    Ok(zone.iana_name().unwrap_or(name).to_owned())
}

/// A weekday's index (Monday 0) and its hours, sorted and checked apart.
fn working_day(at: &str, day: &pb::WorkingDay) -> Result<(usize, Vec<Hours>), ApiError> {
    let mut checks = Checks::new();
    let index = weekday_index(day.weekday).unwrap_or_else(|| {
        checks.note(ApiError::invalid(
            format!("{at}.weekday"),
            "WEEKDAY_MONDAY to WEEKDAY_SUNDAY",
        ));
        0
    });
    if day.hours.len() > MAX_HOURS_PER_DAY {
        checks.note(ApiError::invalid(
            format!("{at}.hours"),
            format!("at most {MAX_HOURS_PER_DAY} intervals a day"),
        ));
    }
    let mut hours: Vec<Hours> = day
        .hours
        .iter()
        .take(MAX_HOURS_PER_DAY)
        .enumerate()
        .filter_map(|(j, h)| {
            let within = h.start_minute < h.end_minute && h.end_minute <= MINUTES_PER_DAY.into();
            if !within {
                checks.note(ApiError::invalid(
                    format!("{at}.hours[{j}]"),
                    "0 ≤ start_minute < end_minute ≤ 1440",
                ));
            }
            within.then_some(Hours {
                start: h.start_minute as u16,
                end: h.end_minute as u16,
            })
        })
        .collect();
    hours.sort_by_key(|h| h.start);
    if hours.windows(2).any(|w| w[1].start < w[0].end) {
        checks.note(ApiError::invalid(
            format!("{at}.hours"),
            "intervals of a day may not overlap",
        ));
    }
    checks.finish()?;
    Ok((index, hours))
}

/// The ranges sorted, and those that overlap or touch made one: what a schedule keeps
/// (and answers), so a day's range is found by a binary search.
fn merged(mut ranges: Vec<DaysOff>) -> Vec<DaysOff> {
    ranges.sort_by_key(|d| d.first);
    let mut out: Vec<DaysOff> = Vec::with_capacity(ranges.len());
    for range in ranges {
        match out.last_mut() {
            Some(last) if last.last.tomorrow().is_ok_and(|next| range.first <= next) => {
                last.last = last.last.max(range.last);
            }
            _ => out.push(range),
        }
    }
    out
}

/// Monday 0 … Sunday 6.
fn weekday_index(weekday: i32) -> Option<usize> {
    (1..=7).contains(&weekday).then(|| weekday as usize - 1)
}

fn days_off(at: &str, range: &pb::DaysOff) -> Result<DaysOff, ApiError> {
    let date = |field: &str, value: &str| -> Result<Date, ApiError> {
        value
            .trim()
            .parse::<Date>()
            .ok()
            .filter(|d| (2000..=2199).contains(&d.year()))
            .ok_or_else(|| {
                ApiError::invalid(
                    format!("{at}.{field}"),
                    "a date from 2000 to 2199 such as 2026-12-24",
                )
            })
    };
    let (first, last) =
        crate::AllChecks::all((date("first", &range.first), date("last", &range.last)))?;
    let span = first.until(last).map(|s| s.get_days()).unwrap_or(i32::MAX);
    if first > last || span >= MAX_DAYS_OFF_SPAN {
        return Err(ApiError::invalid(
            format!("{at}.last"),
            format!("from first, within {MAX_DAYS_OFF_SPAN} days"),
        ));
    }
    Ok(DaysOff { first, last })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use time::macros::datetime;

    /// Monday to Friday 09:00–13:00 and 14:00–18:00 in Berlin, off 24–26 December 2026.
    fn office() -> Schedule {
        let day = vec![
            Hours {
                start: 540,
                end: 780,
            },
            Hours {
                start: 840,
                end: 1080,
            },
        ];
        let mut week: [Vec<Hours>; 7] = Default::default();
        for d in week.iter_mut().take(5) {
            *d = day.clone();
        }
        Schedule {
            time_zone: "Europe/Berlin".into(),
            week,
            days_off: vec![DaysOff {
                first: jiff::civil::date(2026, 12, 24),
                last: jiff::civil::date(2026, 12, 26),
            }],
        }
    }

    #[test]
    fn a_time_zone_reads_back_as_the_database_spells_it() {
        assert_eq!(time_zone("europe/berlin").unwrap(), "Europe/Berlin");
        assert_eq!(time_zone(" ").unwrap(), "UTC");
        assert_eq!(
            time_zone("Mars/Olympus").unwrap_err().field(),
            Some("time_zone")
        );
    }

    #[test]
    fn a_manager_works_in_their_own_time_zone() {
        let s = office();
        // Thursday 3 December 2026: 08:30 UTC is 09:30 in Berlin.
        assert_eq!(s.away_at(datetime!(2026-12-03 08:30 UTC)), None);
        assert_eq!(
            s.away_at(datetime!(2026-12-03 07:30 UTC)),
            Some(Away::OutsideHours)
        );
        // The lunch break, 13:00–14:00 Berlin.
        assert_eq!(
            s.away_at(datetime!(2026-12-03 12:30 UTC)),
            Some(Away::OutsideHours)
        );
        // Saturday.
        assert_eq!(
            s.away_at(datetime!(2026-12-05 10:00 UTC)),
            Some(Away::OutsideHours)
        );
        // Christmas Eve is a Thursday, but a day off.
        assert_eq!(
            s.away_at(datetime!(2026-12-24 10:00 UTC)),
            Some(Away::DayOff)
        );
        let paused = Availability {
            schedule: s,
            paused: true,
        };
        assert_eq!(
            paused.away_at(datetime!(2026-12-03 08:30 UTC)),
            Some(Away::Paused)
        );
        assert_eq!(paused.available_from(datetime!(2026-12-03 08:30 UTC)), None);
    }

    #[test]
    fn the_next_working_time_skips_nights_weekends_and_days_off() {
        let a = Availability {
            schedule: office(),
            paused: false,
        };
        // Friday 18:30 Berlin → Monday 09:00 Berlin (08:00 UTC).
        assert_eq!(
            a.available_from(datetime!(2026-12-04 17:30 UTC)),
            Some(datetime!(2026-12-07 08:00 UTC))
        );
        // Wednesday 23 December after work → Monday 28 December (24–26 off, 27 Sunday).
        assert_eq!(
            a.available_from(datetime!(2026-12-23 20:00 UTC)),
            Some(datetime!(2026-12-28 08:00 UTC))
        );
        let at = datetime!(2026-12-03 08:30 UTC);
        assert_eq!(a.available_from(at), Some(at));
    }

    #[test]
    fn working_time_counts_only_working_hours() {
        let s = office();
        // Thursday 12:00 Berlin to Friday 10:00 Berlin: 1 h + 4 h on Thursday, 1 h on Friday.
        let from = datetime!(2026-12-03 11:00 UTC);
        let to = datetime!(2026-12-04 09:00 UTC);
        assert_eq!(s.working_time(from, to), time::Duration::hours(6));
        assert_eq!(s.after_working(from, time::Duration::hours(6)), Some(to));
        // 30 working minutes from Friday 17:45 Berlin: 15 minutes on Friday, the rest on Monday.
        assert_eq!(
            s.after_working(datetime!(2026-12-04 16:45 UTC), time::Duration::minutes(30)),
            Some(datetime!(2026-12-07 08:15 UTC))
        );
    }

    #[test]
    fn clock_changes_neither_add_nor_lose_working_time() {
        // Berlin moves from 02:00 to 03:00 on 29 March 2026 and back on 25 October 2026.
        let mut week: [Vec<Hours>; 7] = Default::default();
        week[6] = vec![Hours {
            start: 0,
            end: 1440,
        }];
        let s = Schedule {
            time_zone: "Europe/Berlin".into(),
            week,
            days_off: Vec::new(),
        };
        let day = |from, to| s.working_time(from, to);
        assert_eq!(
            day(
                datetime!(2026-03-28 00:00 UTC),
                datetime!(2026-03-30 00:00 UTC)
            ),
            time::Duration::hours(23)
        );
        assert_eq!(
            day(
                datetime!(2026-10-24 00:00 UTC),
                datetime!(2026-10-27 00:00 UTC)
            ),
            time::Duration::hours(25)
        );
    }

    #[test]
    fn on_a_clock_change_day_away_and_periods_agree() {
        // Berlin skips 02:00–03:00 on 29 March 2026 (01:00 UTC) and repeats 02:00–03:00 on
        // 25 October 2026 (00:00–01:00 UTC the first pass, 01:00–02:00 UTC the second).
        let mut week: [Vec<Hours>; 7] = Default::default();
        week[6] = vec![Hours {
            start: 135,
            end: 165,
        }];
        let skipped = Schedule {
            time_zone: "Europe/Berlin".into(),
            week,
            days_off: Vec::new(),
        };
        // 02:15–02:45 does not exist on that day: it moves forward by the gap, to
        // 03:15–03:45 CEST (01:15–01:45 UTC), and both rules say so.
        assert_eq!(skipped.away_at(datetime!(2026-03-29 01:20 UTC)), None);
        assert_eq!(
            skipped.periods(datetime!(2026-03-29 00:00 UTC)).next(),
            Some((
                datetime!(2026-03-29 01:15 UTC),
                datetime!(2026-03-29 01:45 UTC)
            ))
        );
        // 02:40–02:50 on the day the hour repeats: its first pass only.
        let mut week: [Vec<Hours>; 7] = Default::default();
        week[6] = vec![Hours {
            start: 160,
            end: 170,
        }];
        let repeated = Schedule {
            time_zone: "Europe/Berlin".into(),
            week,
            days_off: Vec::new(),
        };
        assert_eq!(repeated.away_at(datetime!(2026-10-25 00:45 UTC)), None);
        assert_eq!(
            repeated.away_at(datetime!(2026-10-25 01:45 UTC)),
            Some(Away::OutsideHours)
        );
    }

    #[test]
    fn days_off_are_kept_sorted_and_merged_and_long_ones_cost_nothing() {
        let wire = |ranges: &[(&str, &str)]| pb::Schedule {
            time_zone: "UTC".into(),
            week: Vec::new(),
            days_off: ranges
                .iter()
                .map(|(f, l)| pb::DaysOff {
                    first: (*f).into(),
                    last: (*l).into(),
                })
                .collect(),
        };
        let s = Schedule::from_proto(
            "s",
            wire(&[
                ("2026-12-27", "2026-12-31"),
                ("2026-12-24", "2026-12-26"),
                ("2026-12-30", "2027-01-02"),
                ("2027-03-01", "2027-03-01"),
            ]),
        )
        .expect("valid");
        let days: Vec<(String, String)> = s
            .days_off
            .iter()
            .map(|d| (d.first.to_string(), d.last.to_string()))
            .collect();
        assert_eq!(
            days,
            [
                ("2026-12-24".to_owned(), "2027-01-02".to_owned()),
                ("2027-03-01".to_owned(), "2027-03-01".to_owned())
            ]
        );
        let a = Availability {
            schedule: s,
            paused: false,
        };
        assert_eq!(
            a.available_from(datetime!(2026-12-25 12:00 UTC)),
            Some(datetime!(2027-01-03 00:00 UTC))
        );
        // A hundred year-long vacations back to back: the next working day is found by
        // stepping over each range at once, not day by day.
        let long: Vec<(String, String)> = (0..100)
            .map(|i| {
                let first = jiff::civil::date(2030, 1, 1)
                    .checked_add(jiff::Span::new().days(i * 366))
                    .expect("in range");
                let last = first
                    .checked_add(jiff::Span::new().days(365))
                    .expect("in range");
                (first.to_string(), last.to_string())
            })
            .collect();
        let refs: Vec<(&str, &str)> = long.iter().map(|(f, l)| (f.as_str(), l.as_str())).collect();
        let s = Schedule::from_proto("s", wire(&refs)).expect("valid");
        assert_eq!(s.days_off.len(), 1, "back to back: one range");
        assert_eq!(
            s.away_at(datetime!(2031-06-01 12:00 UTC)),
            Some(Away::DayOff)
        );
        assert_eq!(
            Availability {
                schedule: s,
                paused: false
            }
            .available_from(datetime!(2031-06-01 12:00 UTC)),
            None,
            "nothing within the horizon"
        );
    }

    #[test]
    fn a_schedule_without_hours_works_around_the_clock_except_days_off() {
        let s = Schedule {
            days_off: office().days_off,
            ..Schedule::default()
        };
        assert_eq!(s.away_at(datetime!(2026-12-06 03:00 UTC)), None);
        assert_eq!(
            s.away_at(datetime!(2026-12-25 03:00 UTC)),
            Some(Away::DayOff)
        );
    }

    #[test]
    fn a_bad_schedule_names_every_violation() {
        let bad = pb::Schedule {
            time_zone: "Mars/Olympus".into(),
            week: vec![
                pb::WorkingDay {
                    weekday: 1,
                    hours: vec![
                        pb::WorkingHours {
                            start_minute: 540,
                            end_minute: 720,
                        },
                        pb::WorkingHours {
                            start_minute: 700,
                            end_minute: 800,
                        },
                    ],
                },
                pb::WorkingDay {
                    weekday: 1,
                    hours: vec![pb::WorkingHours {
                        start_minute: 0,
                        end_minute: 60,
                    }],
                },
                pb::WorkingDay {
                    weekday: 9,
                    hours: vec![pb::WorkingHours {
                        start_minute: 60,
                        end_minute: 1441,
                    }],
                },
            ],
            days_off: vec![
                pb::DaysOff {
                    first: "2026-12-26".into(),
                    last: "2026-12-24".into(),
                },
                pb::DaysOff {
                    first: "someday".into(),
                    last: "2026-12-24".into(),
                },
            ],
        };
        let err = Schedule::from_proto("schedule", bad).expect_err("refused");
        let fields: Vec<&str> = err.violations().iter().map(|v| v.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "schedule.time_zone",
                "schedule.week[0].hours",
                "schedule.week[1].weekday",
                "schedule.week[2].weekday",
                "schedule.week[2].hours[0]",
                "schedule.days_off[0].last",
                "schedule.days_off[1].first",
            ]
        );
    }

    #[test]
    fn a_schedule_survives_the_wire() {
        let s = office();
        assert_eq!(Schedule::from_proto("s", s.to_proto()).expect("valid"), s);
        assert_eq!(
            Schedule::from_proto("s", pb::Schedule::default()).expect("valid"),
            Schedule::default()
        );
    }

    proptest! {
        /// Working time is additive, and the instant after `w` of it is where it adds up
        /// to `w`; an instant is working time exactly when a period holds it.
        #[test]
        fn working_time_and_periods_agree(
            zone in prop::sample::select(vec!["UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata", "Australia/Lord_Howe"]),
            days in prop::collection::vec(prop::collection::vec((0u16..1440, 1u16..600), 0..3), 7),
            start in 1_767_225_600i64..1_798_761_600, // 2026
            minutes in 0i64..20_000,
            probe in 0i64..14 * 86_400,
            off in prop::collection::vec((0i32..20, 0i32..4), 0..3),
        ) {
            let mut week: [Vec<Hours>; 7] = Default::default();
            for (d, hours) in days.iter().enumerate() {
                let mut hs: Vec<Hours> = hours.iter().map(|(s, l)| Hours { start: *s, end: (*s + *l).min(1440) }).collect();
                hs.sort_by_key(|h| h.start);
                hs.dedup_by(|b, a| b.start < a.end);
                week[d] = hs;
            }
            let from = OffsetDateTime::from_unix_timestamp(start).expect("in range");
            let first_day = TimeZone::get(zone).expect("known").to_datetime(timestamp(from)).date();
            let days_off = merged(
                off.iter()
                    .map(|(at, len)| {
                        let first = first_day.checked_add(jiff::Span::new().days(*at)).expect("in range");
                        let last = first.checked_add(jiff::Span::new().days(*len)).expect("in range");
                        DaysOff { first, last }
                    })
                    .collect(),
            );
            let s = Schedule { time_zone: zone.into(), week, days_off };
            let w = time::Duration::minutes(minutes);
            if let Some(at) = s.after_working(from, w) {
                prop_assert_eq!(s.working_time(from, at), w);
            }
            let t = from + time::Duration::seconds(probe);
            let inside = s.periods(from).take_while(|(a, _)| *a <= t).any(|(a, b)| a <= t && t < b);
            prop_assert_eq!(inside, s.away_at(t).is_none());
        }
    }
}
