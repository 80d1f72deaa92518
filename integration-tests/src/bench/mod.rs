//! `just bench`: the physical floors of this machine and the system's numbers, measured
//! side by side in one run, printed as a markdown table and written as JSON.

mod cpu;
mod floors;
mod intake;
mod isolation;
mod privacy;
mod queries;
mod reports;
mod watch;

use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// The lines the ratios to the floors are taken of.
pub const SCHEMA_FLOOR: &str =
    "PostgreSQL, deal-service's schema: 500 deals + history rows per transaction, 2 connections";
pub const MINIMAL_PIPELINE: &str =
    "minimal pipeline: publish protobuf → consume 500 → decode → idempotent UNNEST insert → ack";
pub const ADD_AUDIENCE_END_TO_END: &str =
    "AddAudience: end to end, every deal created, assigned and counted";
pub const WEBHOOK_END_TO_END: &str = "webhook (64 concurrent): end to end";

#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// Leads of the intake runs.
    pub leads: usize,
    /// Deals seeded for the query runs.
    pub deals: usize,
    /// Messages/rows of the floor runs.
    pub floor: usize,
    /// Offered rates of the latency runs (leads per second) and their length.
    pub rates: Vec<u64>,
    pub rate_seconds: u64,
    /// Seconds of the long latency run at 1,000 leads/s without flushing the page cache.
    pub long_seconds: u64,
    /// Plans of the latency run (at the first rate) whose leads go to each plan in turn.
    pub spread_plans: usize,
    /// Repetitions of each query.
    pub repeats: usize,
    /// WatchDeals: watches open, changes a second while they watch, plans they spread over.
    pub watchers: usize,
    pub watch_rate: u64,
    pub watch_plans: usize,
    /// The parts to run (all by default): while working on one stage, the others only
    /// cost time.
    pub parts: Vec<Part>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    Floors,
    Intake,
    Queries,
    /// One account against another: a noisy neighbour's bulk add and searches.
    Isolation,
    /// EraseContact's scan of an account's lanes.
    Privacy,
    /// WatchDeals: many watches of one account while deals change.
    Watch,
}

impl Part {
    /// Every part, in the order they run.
    pub const ALL: [Part; 6] = [
        Part::Floors,
        Part::Intake,
        Part::Queries,
        Part::Isolation,
        Part::Privacy,
        Part::Watch,
    ];
}

impl BenchConfig {
    pub fn full() -> Self {
        Self {
            leads: 100_000,
            deals: 1_000_000,
            floor: 100_000,
            rates: vec![1_000, 5_000],
            rate_seconds: 10,
            long_seconds: 120,
            spread_plans: 8,
            repeats: 50,
            watchers: 1_000,
            watch_rate: 1_000,
            watch_plans: 100,
            parts: Part::ALL.to_vec(),
        }
    }

    /// Tiny counts: checks that every part runs (CI), measures nothing worth reading.
    pub fn smoke() -> Self {
        Self {
            leads: 300,
            deals: 2_000,
            floor: 500,
            rates: vec![100],
            rate_seconds: 1,
            long_seconds: 2,
            spread_plans: 2,
            repeats: 3,
            watchers: 10,
            watch_rate: 20,
            watch_plans: 2,
            parts: Part::ALL.to_vec(),
        }
    }
}

/// One measured line of the report.
#[derive(Debug, Clone)]
pub struct Line {
    pub group: &'static str,
    pub what: String,
    pub value: String,
    pub target: String,
    pub json: Value,
}

impl Line {
    pub fn rate(
        group: &'static str,
        what: impl Into<String>,
        count: usize,
        took: Duration,
        target: &str,
    ) -> Self {
        let per_second = count as f64 / took.as_secs_f64().max(1e-9);
        Self {
            group,
            what: what.into(),
            value: format!("{per_second:.0}/s ({count} in {:.2} s)", took.as_secs_f64()),
            target: target.into(),
            json: json!({"count": count, "seconds": took.as_secs_f64(), "per_second": per_second}),
        }
    }

    pub fn latency(
        group: &'static str,
        what: impl Into<String>,
        mut samples: Vec<Duration>,
        target: &str,
    ) -> Self {
        samples.sort();
        let pick = |q: f64| {
            samples
                .get(
                    ((samples.len() as f64 * q).ceil() as usize)
                        .saturating_sub(1)
                        .min(samples.len().saturating_sub(1)),
                )
                .copied()
                .unwrap_or_default()
        };
        let (p50, p95, p99) = (pick(0.50), pick(0.95), pick(0.99));
        let max = samples.last().copied().unwrap_or_default();
        Self {
            group,
            what: what.into(),
            value: format!(
                "p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
                ms(p50),
                ms(p95),
                ms(p99),
                ms(max)
            ),
            target: target.into(),
            json: json!({"samples": samples.len(), "p50_ms": ms(p50), "p95_ms": ms(p95), "p99_ms": ms(p99), "max_ms": ms(max)}),
        }
    }
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1_000.0
}

/// Runs every part; returns the lines in order.
pub async fn run(config: &BenchConfig) -> anyhow::Result<Vec<Line>> {
    let env = intake::Env::start().await?;
    let mut lines = Vec::new();
    if config.parts.contains(&Part::Floors) {
        lines.extend(floors::run(&env, config).await?);
    }
    if config.parts.contains(&Part::Intake) {
        lines.extend(intake::run(&env, config).await?);
        let ratios = ratios_to_the_floor(&lines);
        lines.extend(ratios);
    }
    if config.parts.contains(&Part::Queries) {
        lines.extend(queries::run(&env, config).await?);
    }
    if config.parts.contains(&Part::Isolation) {
        lines.extend(isolation::run(&env, config).await?);
    }
    if config.parts.contains(&Part::Watch) {
        lines.extend(watch::run(&env, config).await?);
    }
    if config.parts.contains(&Part::Privacy) {
        lines.extend(privacy::run(config).await?);
    }
    env.stop().await?;
    Ok(lines)
}

/// The intake's end-to-end rates as a fraction of the floors' (issue 17's target is taken
/// of deal-service's schema floor), when this run measured both.
fn ratios_to_the_floor(lines: &[Line]) -> Vec<Line> {
    let rate = |what: &str| {
        lines
            .iter()
            .find(|l| l.what == what)
            .and_then(|l| l.json["per_second"].as_f64())
            .filter(|r| *r > 0.0)
    };
    let mut ratios = Vec::new();
    for (floor_name, floor_what, target) in [
        ("deal-service's schema floor", SCHEMA_FLOOR, "≥ 0.5×"),
        ("minimal pipeline", MINIMAL_PIPELINE, "—"),
    ] {
        let Some(floor) = rate(floor_what) else {
            continue;
        };
        for (name, what) in [
            ("AddAudience", ADD_AUDIENCE_END_TO_END),
            ("webhook", WEBHOOK_END_TO_END),
        ] {
            if let Some(end_to_end) = rate(what) {
                let ratio = end_to_end / floor;
                ratios.push(Line {
                    group: "intake",
                    what: format!("{name} end to end ÷ {floor_name}"),
                    value: format!("{ratio:.2}×"),
                    target: target.into(),
                    json: json!({ "ratio": ratio }),
                });
            }
        }
    }
    ratios
}

pub fn markdown(lines: &[Line]) -> String {
    let mut out = String::from("| group | measurement | result | target |\n|---|---|---|---|\n");
    for line in lines {
        out.push_str(&format!(
            "| {} | {} | {} | {} |\n",
            line.group, line.what, line.value, line.target
        ));
    }
    out
}

pub fn to_json(lines: &[Line]) -> Value {
    json!(
        lines
            .iter()
            .map(
                |l| json!({"group": l.group, "what": l.what, "target": l.target, "result": l.json})
            )
            .collect::<Vec<_>>()
    )
}

/// Writes the page cache's dirty pages out (`sync`) and says how much there was. The
/// kernel writes pages back 30 s after they were dirtied: a bulk run's or the seeding's WAL
/// and tables (up to a few GB) otherwise went out in one burst in the middle of the next
/// measurement, stalling every commit and read for about a second. Sustained traffic
/// writes back continuously instead.
pub async fn flush_page_cache(before: &str) -> anyhow::Result<()> {
    let meminfo = tokio::fs::read_to_string("/proc/meminfo").await?;
    let dirty_kib: u64 = meminfo
        .lines()
        .find_map(|line| line.strip_prefix("Dirty:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    let started = Instant::now();
    let status = tokio::process::Command::new("sync").status().await?;
    anyhow::ensure!(status.success(), "sync failed: {status}");
    eprintln!(
        "bench: wrote {} MiB of dirty pages back in {:.1} s before {before}",
        dirty_kib / 1024,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(group: &'static str, what: &str, count: usize, secs: u64) -> Line {
        Line::rate(group, what, count, Duration::from_secs(secs), "—")
    }

    #[test]
    fn ratios_divide_each_end_to_end_rate_by_each_floor() {
        let lines = vec![
            rate("floor", SCHEMA_FLOOR, 20_000, 1),
            rate("floor", MINIMAL_PIPELINE, 80_000, 1),
            rate("intake", ADD_AUDIENCE_END_TO_END, 100_000, 10),
            rate("intake", WEBHOOK_END_TO_END, 20_000, 4),
        ];
        let ratios = ratios_to_the_floor(&lines);
        let values: Vec<(&str, &str)> = ratios
            .iter()
            .map(|l| (l.what.as_str(), l.value.as_str()))
            .collect();
        assert_eq!(
            values,
            [
                (
                    "AddAudience end to end ÷ deal-service's schema floor",
                    "0.50×"
                ),
                ("webhook end to end ÷ deal-service's schema floor", "0.25×"),
                ("AddAudience end to end ÷ minimal pipeline", "0.12×"),
                ("webhook end to end ÷ minimal pipeline", "0.06×"),
            ]
        );
        assert_eq!(ratios[2].json["ratio"].as_f64(), Some(0.125));
    }

    #[test]
    fn no_ratio_without_the_floor_in_the_same_run() {
        let lines = vec![rate("intake", ADD_AUDIENCE_END_TO_END, 100_000, 10)];
        assert!(ratios_to_the_floor(&lines).is_empty());
    }
}
