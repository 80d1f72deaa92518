//! The broker of a fault run: one nats-server, or a JetStream cluster of three nodes on
//! this machine with R3 streams (the production topology), each node killed, stopped and
//! started again with its own store.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::bail;

use super::procs::{Proc, free_port};

/// One nats-server of the broker and the port of its monitoring endpoint (`/healthz`).
struct Node {
    process: Proc,
    monitor: u16,
}

pub struct Broker {
    nodes: Vec<Node>,
}

impl Broker {
    /// `size` nodes (1, or 3 for a cluster) configured under `logs`, not started yet.
    pub fn new(logs: &Path, size: usize) -> anyhow::Result<Self> {
        let client: Vec<u16> = (0..size).map(|_| free_port()).collect::<Result<_, _>>()?;
        let routes: Vec<u16> = (0..size).map(|_| free_port()).collect::<Result<_, _>>()?;
        let mut nodes = Vec::new();
        for i in 0..size {
            let monitor = free_port()?;
            let config = logs.join(format!("nats-{i}.conf"));
            let store = logs.join(format!("jetstream-{i}"));
            let mut text = format!(
                "server_name: n{i}\nlisten: 127.0.0.1:{}\nhttp: 127.0.0.1:{monitor}\n\
                 jetstream {{ store_dir: \"{}\" }}\n",
                client[i],
                store.display()
            );
            if size > 1 {
                let all: Vec<String> = routes
                    .iter()
                    .map(|p| format!("nats-route://127.0.0.1:{p}"))
                    .collect();
                text.push_str(&format!(
                    "cluster {{ name: chaos\n listen: 127.0.0.1:{}\n routes: [{}] }}\n",
                    routes[i],
                    all.join(", ")
                ));
            }
            std::fs::write(&config, text)?;
            nodes.push(Node {
                process: Proc {
                    name: format!("nats-server n{i}"),
                    program: crate::nats::TestNats::binary().into(),
                    args: vec!["-c".into(), config.display().to_string()],
                    env: vec![],
                    port: client[i],
                    child: None,
                    log: logs.join(format!("nats-{i}.log")),
                },
                monitor,
            });
        }
        Ok(Self { nodes })
    }

    pub fn size(&self) -> usize {
        self.nodes.len()
    }

    /// Every node's client URL, comma-separated (what `NATS_URL` takes).
    pub fn url(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("nats://127.0.0.1:{}", n.process.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Starts every node, then waits until JetStream answers (a cluster has elected its
    /// meta leader), so that services can create their streams.
    pub async fn start(&mut self) -> anyhow::Result<()> {
        for node in &mut self.nodes {
            node.process.start().await?;
        }
        for i in 0..self.nodes.len() {
            self.wait_healthy(i).await?;
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        let client = crate::nats::connect(&self.url()).await?;
        loop {
            // The account's JetStream information, read raw: it answers an error until the
            // cluster has a meta leader.
            let answer = client.request("$JS.API.INFO", "".into()).await;
            let info = answer
                .map_err(anyhow::Error::from)
                .and_then(|m| Ok(serde_json::from_slice::<serde_json::Value>(&m.payload)?));
            match info {
                Ok(info) if info["error"].is_null() => return Ok(()),
                other if Instant::now() >= deadline => {
                    bail!("JetStream did not answer within 60 s of the start: {other:?}")
                }
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// The node that leads `stream` now (by its `server_name`, `n{i}`).
    pub async fn leader_of(&self, stream: &str) -> anyhow::Result<usize> {
        let js = async_nats::jetstream::new(crate::nats::connect(&self.url()).await?);
        let info = js.get_stream(stream).await?.info().await?.clone();
        let leader = info.cluster.and_then(|c| c.leader).unwrap_or_default();
        leader
            .strip_prefix('n')
            .and_then(|i| i.parse().ok())
            .filter(|i| *i < self.nodes.len())
            .ok_or_else(|| anyhow::anyhow!("stream {stream} has no known leader ({leader:?})"))
    }

    /// Kills node `i` (SIGKILL), as a crash would.
    pub async fn kill(&mut self, i: usize) -> anyhow::Result<()> {
        self.nodes[i].process.kill().await
    }

    /// Stops node `i` (SIGTERM, as in a rolling upgrade) and waits for it to exit.
    pub async fn stop(&mut self, i: usize) -> anyhow::Result<()> {
        self.nodes[i].process.stop(Duration::from_secs(30)).await?;
        Ok(())
    }

    /// Starts node `i` again on its store and waits until it reports healthy (caught up
    /// with the cluster): how long that took.
    pub async fn start_node(&mut self, i: usize) -> anyhow::Result<Duration> {
        let started = Instant::now();
        self.nodes[i].process.start().await?;
        self.wait_healthy(i).await?;
        Ok(started.elapsed())
    }

    /// Waits until node `i`'s `/healthz` answers 200: the server is up and its JetStream
    /// is current (what a Kubernetes readiness probe waits for before the next node of a
    /// rolling restart goes down).
    async fn wait_healthy(&self, i: usize) -> anyhow::Result<()> {
        let url = format!("http://127.0.0.1:{}/healthz", self.nodes[i].monitor);
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let answer = http.get(&url).send().await;
            match answer {
                Ok(r) if r.status().is_success() => return Ok(()),
                other if Instant::now() >= deadline => bail!(
                    "{} not healthy within 60 s: {:?}",
                    self.nodes[i].process.name,
                    other.map(|r| r.status())
                ),
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    pub async fn kill_all(&mut self) -> anyhow::Result<()> {
        for node in &mut self.nodes {
            node.process.kill().await?;
        }
        Ok(())
    }
}
