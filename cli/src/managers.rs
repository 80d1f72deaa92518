//! `salesplanctl managers …`: availability (ManagerService), and the parsing of working
//! hours and days off from the command line.

use anyhow::{Context, bail};
use salesplan_proto::v1::{self as pb, manager_service_client::ManagerServiceClient};
use serde_json::json;

use crate::{
    args::{Managers, Usage},
    commands::Ctx,
    output::{table, time_text},
};

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

pub async fn run(ctx: &Ctx, command: Managers) -> anyhow::Result<()> {
    let mut client = ManagerServiceClient::new(ctx.channel(&ctx.global.deal_service).await?);
    let shown = match command {
        Managers::List => {
            let mut all = Vec::new();
            let mut page_token = String::new();
            loop {
                let page = client
                    .list_availability(ctx.request(pb::ListAvailabilityRequest {
                        page_size: 500,
                        page_token,
                    }))
                    .await?
                    .into_inner();
                all.extend(page.managers);
                if page.next_page_token.is_empty() {
                    break;
                }
                page_token = page.next_page_token;
            }
            ctx.print(
                json!(all.iter().map(availability_json).collect::<Vec<_>>()),
                || {
                    let rows: Vec<Vec<String>> = all.iter().map(row).collect();
                    table(
                        &["manager", "time zone", "paused", "now", "available from"],
                        &rows,
                    )
                },
            );
            return Ok(());
        }
        Managers::Show { manager } => {
            client
                .get_availability(ctx.request(pb::GetAvailabilityRequest {
                    manager_id: manager,
                }))
                .await?
                .into_inner()
                .availability
        }
        Managers::Schedule {
            manager,
            tz,
            hours,
            off,
        } => {
            let schedule = schedule(tz, &hours, &off).map_err(Usage::of)?;
            client
                .set_schedule(ctx.request(pb::SetScheduleRequest {
                    manager_id: manager,
                    schedule: Some(schedule),
                }))
                .await?
                .into_inner()
                .availability
        }
        Managers::Pause { manager } => pause(ctx, &mut client, manager, true).await?,
        Managers::Resume { manager } => pause(ctx, &mut client, manager, false).await?,
    };
    let a = shown.context("the answer has no availability")?;
    ctx.print(availability_json(&a), || text(&a));
    Ok(())
}

async fn pause(
    ctx: &Ctx,
    client: &mut ManagerServiceClient<tonic::transport::Channel>,
    manager_id: String,
    paused: bool,
) -> anyhow::Result<Option<pb::ManagerAvailability>> {
    Ok(client
        .set_paused(ctx.request(pb::SetPausedRequest { manager_id, paused }))
        .await?
        .into_inner()
        .availability)
}

/// A schedule from `--tz`, `--hours DAYS=HH:MM-HH:MM,…` and `--off FIRST[..LAST]`.
pub fn schedule(tz: String, hours: &[String], off: &[String]) -> anyhow::Result<pb::Schedule> {
    let mut week: Vec<pb::WorkingDay> = Vec::new();
    for spec in hours {
        let (days, intervals) = spec
            .split_once('=')
            .with_context(|| format!("--hours {spec:?}: DAYS=HH:MM-HH:MM"))?;
        let intervals = intervals
            .split(',')
            .map(|i| interval(i).with_context(|| format!("--hours {spec:?}")))
            .collect::<anyhow::Result<Vec<_>>>()?;
        for day in weekdays(days).with_context(|| format!("--hours {spec:?}"))? {
            match week.iter_mut().find(|d| d.weekday == day) {
                Some(d) => d.hours.extend(intervals.iter().cloned()),
                None => week.push(pb::WorkingDay {
                    weekday: day,
                    hours: intervals.clone(),
                }),
            }
        }
    }
    let days_off = off
        .iter()
        .map(|range| {
            let (first, last) = range.split_once("..").unwrap_or((range, range));
            pb::DaysOff {
                first: first.trim().to_owned(),
                last: last.trim().to_owned(),
            }
        })
        .collect();
    Ok(pb::Schedule {
        time_zone: tz,
        week,
        days_off,
    })
}

/// `mon`, `mon-fri`, `sat,sun` → weekdays (1 Monday … 7 Sunday).
fn weekdays(spec: &str) -> anyhow::Result<Vec<i32>> {
    let day = |name: &str| {
        DAYS.iter()
            .position(|d| *d == name.trim().to_ascii_lowercase())
            .map(|i| i as i32 + 1)
            .with_context(|| format!("{name:?} is not one of {}", DAYS.join(", ")))
    };
    let mut days = Vec::new();
    for part in spec.split(',') {
        match part.split_once('-') {
            Some((from, to)) => {
                let (from, to) = (day(from)?, day(to)?);
                if from > to {
                    bail!("{part:?}: the first day comes after the last");
                }
                days.extend(from..=to);
            }
            None => days.push(day(part)?),
        }
    }
    Ok(days)
}

/// `09:00-13:00` → minutes after midnight (24:00 ends the day).
fn interval(spec: &str) -> anyhow::Result<pb::WorkingHours> {
    let minute = |t: &str| -> anyhow::Result<u32> {
        let (h, m) = t
            .trim()
            .split_once(':')
            .with_context(|| format!("{t:?} is not HH:MM"))?;
        let (h, m): (u32, u32) = (h.parse()?, m.parse()?);
        if h > 24 || m >= 60 || h * 60 + m > 1440 {
            bail!("{t:?} is not a time of day");
        }
        Ok(h * 60 + m)
    };
    let (start, end) = spec
        .split_once('-')
        .with_context(|| format!("{spec:?} is not HH:MM-HH:MM"))?;
    Ok(pb::WorkingHours {
        start_minute: minute(start)?,
        end_minute: minute(end)?,
    })
}

fn clock(minute: u32) -> String {
    format!("{:02}:{:02}", minute / 60, minute % 60)
}

fn hours_text(day: &pb::WorkingDay) -> String {
    day.hours
        .iter()
        .map(|h| format!("{}–{}", clock(h.start_minute), clock(h.end_minute)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn now_text(a: &pb::ManagerAvailability) -> String {
    if a.available_now {
        "available".into()
    } else {
        a.unavailable_because.clone()
    }
}

fn row(a: &pb::ManagerAvailability) -> Vec<String> {
    let schedule = a.schedule.clone().unwrap_or_default();
    vec![
        a.manager_id.clone(),
        schedule.time_zone,
        if a.paused { "yes" } else { "no" }.into(),
        now_text(a),
        time_text(a.available_from.as_ref()).unwrap_or_default(),
    ]
}

fn text(a: &pb::ManagerAvailability) -> String {
    let schedule = a.schedule.clone().unwrap_or_default();
    let mut out = format!("{} (version {}): {}", a.manager_id, a.version, now_text(a));
    if let Some(from) = time_text(a.available_from.as_ref()) {
        out.push_str(&format!(", available from {from}"));
    }
    out.push_str(&format!("\ntime zone {}", schedule.time_zone));
    if schedule.week.is_empty() {
        out.push_str("\nhours: around the clock");
    }
    for day in &schedule.week {
        let name = DAYS.get((day.weekday - 1).max(0) as usize).unwrap_or(&"?");
        out.push_str(&format!("\n{name} {}", hours_text(day)));
    }
    for off in &schedule.days_off {
        out.push_str(&format!("\noff {} to {}", off.first, off.last));
    }
    out
}

fn availability_json(a: &pb::ManagerAvailability) -> serde_json::Value {
    let schedule = a.schedule.clone().unwrap_or_default();
    json!({
        "manager_id": a.manager_id,
        "version": a.version,
        "paused": a.paused,
        "available_now": a.available_now,
        "unavailable_because": a.unavailable_because,
        "available_from": time_text(a.available_from.as_ref()),
        "time_zone": schedule.time_zone,
        "week": schedule.week.iter().map(|d| json!({
            "weekday": DAYS.get((d.weekday - 1).max(0) as usize).unwrap_or(&"?"),
            "hours": d.hours.iter().map(|h| json!([clock(h.start_minute), clock(h.end_minute)])).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "days_off": schedule.days_off.iter().map(|d| json!([d.first, d.last])).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hours_and_days_off_parse_from_the_command_line() {
        let s = schedule(
            "Europe/Berlin".into(),
            &[
                "mon-fri=09:00-13:00,14:00-18:00".into(),
                "sat=10:00-24:00".into(),
            ],
            &["2026-12-24..2026-12-26".into(), "2027-01-01".into()],
        )
        .expect("parses");
        assert_eq!(s.week.len(), 6);
        assert_eq!(s.week[4].weekday, 5);
        assert_eq!(hours_text(&s.week[0]), "09:00–13:00, 14:00–18:00");
        assert_eq!(
            (s.week[5].weekday, s.week[5].hours[0].end_minute),
            (6, 1440)
        );
        assert_eq!(
            s.days_off
                .iter()
                .map(|d| (d.first.as_str(), d.last.as_str()))
                .collect::<Vec<_>>(),
            [("2026-12-24", "2026-12-26"), ("2027-01-01", "2027-01-01")]
        );
        for bad in [
            "mon=9-13",
            "fri-mon=09:00-10:00",
            "someday=09:00-10:00",
            "mon=09:00-25:00",
            "mon",
        ] {
            assert!(schedule("UTC".into(), &[bad.into()], &[]).is_err(), "{bad}");
        }
    }
}
