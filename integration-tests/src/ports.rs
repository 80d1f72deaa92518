//! TCP ports for the processes the tests start.
//!
//! A port found free by binding port 0 and letting go is drawn from the kernel's ephemeral
//! range, the same range every outgoing connection of every parallel test takes its local
//! port from: by the time the service binds it, a connection to PostgreSQL may hold it and
//! the service exits with "address in use". So the ports here come from below that range,
//! and each is locked (a file lock, released when the process ends) so that no other test
//! process hands out the same one meanwhile.

use std::{
    fs::{File, OpenOptions, TryLockError},
    net::TcpListener,
    path::PathBuf,
    sync::Mutex,
};

use anyhow::Context as _;

/// The locks this process holds: its ports stay its own until it exits.
static HELD: Mutex<Vec<File>> = Mutex::new(Vec::new());

/// Where the ports are handed out from: below the ephemeral range (Linux starts it at
/// 32768 by default), above the well-known and common development ports.
const FIRST: u16 = 20_000;

fn last() -> u16 {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok();
    let low = range
        .as_deref()
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse::<u16>().ok())
        .unwrap_or(32_768);
    low.saturating_sub(1).max(FIRST + 1_000)
}

fn lock_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join("salesplan-test-ports");
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    Ok(dir)
}

/// A port nothing listens on and no other test process holds, kept for this process.
pub fn reserve() -> anyhow::Result<u16> {
    let dir = lock_dir()?;
    let span = u32::from(last() - FIRST) + 1;
    // Start somewhere random, so parallel processes rarely try the same locks first.
    let start = (uuid::Uuid::new_v4().as_u128() % u128::from(span)) as u32;
    for step in 0..span {
        let port = FIRST + ((start + step) % span) as u16;
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(port.to_string()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => continue,
            Err(TryLockError::Error(e)) => return Err(e).context("lock a test port"),
        }
        if TcpListener::bind(("127.0.0.1", port)).is_err() {
            continue;
        }
        HELD.lock()
            .map_err(|_| anyhow::anyhow!("port registry poisoned"))?
            .push(file);
        return Ok(port);
    }
    anyhow::bail!("no free port between {FIRST} and {}", last())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_ports_differ_and_stay_out_of_the_ephemeral_range() -> anyhow::Result<()> {
        let ports: Vec<u16> = (0..50).map(|_| reserve()).collect::<Result<_, _>>()?;
        let mut distinct = ports.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), ports.len(), "{ports:?}");
        assert!(
            ports.iter().all(|p| (FIRST..=last()).contains(p)),
            "{ports:?}"
        );
        // Another process (here: another open of the same file) cannot take a held port.
        let held = OpenOptions::new()
            .write(true)
            .open(lock_dir()?.join(ports[0].to_string()))?;
        assert!(matches!(held.try_lock(), Err(TryLockError::WouldBlock)));
        Ok(())
    }
}
