//! Where a run's CPU time went: the processes of this machine by name (PostgreSQL's
//! server and backends, nats-server, each service, the load generator), read from /proc
//! before and after. A run on two shared cores is bounded by the CPU every lead costs in
//! all of them together; this says how much that is and who spends it.

use std::collections::BTreeMap;

use serde_json::json;

use super::Line;

/// CPU ticks so far (or between two samples): per process name, and the whole machine's
/// busy and total ticks.
#[derive(Default, Clone)]
pub struct Sample {
    by_name: BTreeMap<String, u64>,
    busy: u64,
    total: u64,
}

/// The names a run's CPU is split by; every other process counts as "other".
const NAMES: [&str; 7] = [
    "postgres",
    "nats-server",
    "deal-service",
    "distributor",
    "reporting",
    "tunnel-listener",
    "bench",
];

/// User + system ticks of every process, its reaped children's included (PostgreSQL's
/// backends that ended are in the postmaster's), by name.
pub fn sample() -> Sample {
    let mut by_name = BTreeMap::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        if let Some((name, ticks)) = parse_stat(&stat) {
            let name = NAMES.iter().find(|n| **n == name).map_or("other", |n| *n);
            *by_name.entry(name.to_owned()).or_default() += ticks;
        }
    }
    let (busy, total) = machine_ticks().unwrap_or((0, 0));
    Sample {
        by_name,
        busy,
        total,
    }
}

/// A process's name and its user, system and reaped children's ticks, from
/// `/proc/<pid>/stat` (the name is in parentheses and may hold spaces).
fn parse_stat(stat: &str) -> Option<(String, u64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat[open + 1..close].to_owned();
    // After the name: state is field 3; utime, stime, cutime, cstime are 14–17.
    let fields: Vec<&str> = stat[close + 2..].split_whitespace().collect();
    let ticks = fields
        .get(11..15)?
        .iter()
        .map(|f| f.parse::<i64>().map(|t| t.max(0) as u64))
        .sum::<Result<u64, _>>()
        .ok()?;
    Some((name, ticks))
}

impl Sample {
    /// The ticks spent from `before` to `self`.
    pub fn since(&self, before: &Sample) -> Sample {
        let by_name = self
            .by_name
            .iter()
            .map(|(name, ticks)| {
                let was = before.by_name.get(name).copied().unwrap_or(0);
                (name.clone(), ticks.saturating_sub(was))
            })
            .collect();
        Sample {
            by_name,
            busy: self.busy.saturating_sub(before.busy),
            total: self.total.saturating_sub(before.total),
        }
    }

    /// The ticks of two spans together (runs measured in parts).
    pub fn plus(&self, other: &Sample) -> Sample {
        let mut by_name = self.by_name.clone();
        for (name, ticks) in &other.by_name {
            *by_name.entry(name.clone()).or_default() += ticks;
        }
        Sample {
            by_name,
            busy: self.busy + other.busy,
            total: self.total + other.total,
        }
    }
}

/// The machine's busy and total ticks over all cores (`/proc/stat`, line `cpu`).
fn machine_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|t| t.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    let idle = ticks.get(3)? + ticks.get(4)?;
    let total: u64 = ticks.iter().take(8).sum();
    Some((total - idle, total))
}

/// The kernel's clock ticks per second (USER_HZ): 100 on Linux.
const TICKS_PER_SECOND: f64 = 100.0;

/// The CPU `items` cost between two samples, as a report line: microseconds per item, by
/// process, and how busy the machine's cores were meanwhile.
pub fn line(what: &str, items: usize, before: &Sample, after: &Sample) -> Line {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let per_item = |ticks: u64| ticks as f64 / TICKS_PER_SECOND * 1e6 / items.max(1) as f64;
    let mut spent: Vec<(String, f64)> = after
        .by_name
        .iter()
        .map(|(name, ticks)| {
            let was = before.by_name.get(name).copied().unwrap_or(0);
            (name.clone(), per_item(ticks.saturating_sub(was)))
        })
        .filter(|(_, us)| *us >= 0.5)
        .collect();
    spent.sort_by(|a, b| b.1.total_cmp(&a.1));
    let total: f64 = spent.iter().map(|(_, us)| us).sum();
    let busy = (after.busy - before.busy) as f64 / (after.total - before.total).max(1) as f64;
    let split = spent
        .iter()
        .map(|(name, us)| format!("{name} {us:.0}"))
        .collect::<Vec<_>>()
        .join(", ");
    Line {
        group: "cpu",
        what: format!(
            "{what}: CPU µs per item ({:.2} of {cores:.0} cores busy)",
            busy * cores
        ),
        value: format!("{total:.0} µs: {split}"),
        target: "—".into(),
        json: json!({
            "items": items,
            "per_item_us": total,
            "by_process_us": spent.iter().map(|(n, us)| (n.clone(), json!(us))).collect::<serde_json::Map<_, _>>(),
            "cores_busy": busy * cores,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stat_line_gives_the_name_and_all_four_times() {
        let stat = "4242 (tunnel listener) S 1 4242 4242 0 -1 4194560 100 0 0 0 \
                    30 12 5 3 20 0 8 0 1000 0 0";
        assert_eq!(parse_stat(stat), Some(("tunnel listener".into(), 50)));
    }

    #[test]
    fn this_process_spends_cpu_between_two_samples() -> anyhow::Result<()> {
        let own = || {
            std::fs::read_to_string("/proc/self/stat")
                .ok()
                .and_then(|s| parse_stat(&s))
                .map_or(0, |(_, ticks)| ticks)
        };
        let before = sample();
        let (start, deadline) = (
            own(),
            std::time::Instant::now() + std::time::Duration::from_secs(20),
        );
        let mut x = 0u64;
        // 200 ms of this process's own CPU, however busy the machine is.
        while own() < start + 20 {
            anyhow::ensure!(std::time::Instant::now() < deadline, "no CPU in 20 s");
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            }
        }
        let line = line("spin", 1, &before, &sample());
        let spent = line.json["per_item_us"].as_f64().unwrap_or(0.0);
        assert!(spent >= 190_000.0, "{}", line.value);
        Ok(())
    }
}
