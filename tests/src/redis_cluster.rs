//! A real Redis Cluster per test: six `redis-server` nodes on free ports, three
//! masters and three replicas, formed by `redis-cli --cluster create`.
//!
//! Cluster mode is tested against the real thing, not a stand-in, because what
//! matters is what only a cluster does: `MOVED` redirections, `CROSSSLOT`
//! refusals, sharded pub/sub living on the node that owns a slot, and a
//! replica taking over when its master dies. The nodes are [`RedisServer`]s in
//! cluster mode (append-only, `cluster-node-timeout` 1 s, each in its own
//! folder with its `nodes.conf`), so a killed node restarts as the same node
//! and rejoins as a replica of whoever took over its slots.

use std::ops::RangeInclusive;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures::future::try_join_all;

use crate::redis::{self, RedisServer};

/// Three masters, each with one replica.
const NODES: usize = 6;
/// Hash slots in every Redis Cluster.
const SLOTS: u32 = 16384;
/// How long `redis-cli --cluster create` may take (it polls until the nodes
/// agree, about a second here).
const CREATE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the nodes may take to agree on a healthy cluster: after creation,
/// after a failover (failure detection is 1-2 node timeouts, the election
/// about one more), after a restarted node rejoins.
const HEALTHY_TIMEOUT: Duration = Duration::from_secs(20);

/// A running six-node Redis Cluster. Every node is killed when dropped.
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

/// A master and the hash slots it serves, as the cluster reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Master {
    /// The node id (stable across restarts: it is kept in `nodes.conf`).
    pub id: String,
    pub port: u16,
    pub slots: Vec<RangeInclusive<u16>>,
}

impl Master {
    /// `127.0.0.1:PORT`, as in the cluster URL and in fred's `Server`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn owns(&self, slot: u16) -> bool {
        self.slots.iter().any(|range| range.contains(&slot))
    }
}

impl RedisCluster {
    /// Starts six empty nodes, forms them into a cluster (three masters, one
    /// replica each) and waits until every node reports `cluster_state:ok`
    /// with all 16384 slots served and every replica in sync with its master.
    pub async fn start() -> Result<Self> {
        let nodes = try_join_all((0..NODES).map(|_| RedisServer::start_cluster_node())).await?;
        let cluster = RedisCluster { nodes };
        cluster.create().await?;
        cluster.wait_healthy().await?;
        Ok(cluster)
    }

    /// `redis-cli --cluster create` with the six nodes: assigns the slots to
    /// three of them, the other three replicate one each.
    async fn create(&self) -> Result<()> {
        let mut command = tokio::process::Command::new("redis-cli");
        command
            .args(["--cluster", "create"])
            .args(self.nodes.iter().map(|node| addr(node.port())))
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let output = tokio::time::timeout(CREATE_TIMEOUT, command.output())
            .await
            .with_context(|| {
                format!("redis-cli --cluster create still running after {CREATE_TIMEOUT:?}")
            })?
            .context("running redis-cli --cluster create (is redis-tools installed?)")?;
        if !output.status.success() {
            bail!(
                "redis-cli --cluster create exited with {}:\n{}\n{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(())
    }

    /// fred's cluster URL: `redis-cluster://` one node, every other node as a
    /// `node=` parameter, so the client can start from any of them.
    pub fn url(&self) -> String {
        let mut ports = self.nodes.iter().map(RedisServer::port);
        let first = ports.next().map(addr).unwrap_or_default();
        let others: Vec<String> = ports.map(|port| format!("node={}", addr(port))).collect();
        format!("redis-cluster://{first}?{}", others.join("&"))
    }

    /// The node listening on `port`, for raw commands ([`RedisServer::cmd`]
    /// answers `MOVED` for a key of a slot it does not serve) and its log.
    pub fn node(&self, port: u16) -> Option<&RedisServer> {
        self.nodes.iter().find(|node| node.port() == port)
    }

    /// Every node, masters and replicas, in start order (their pids and
    /// ports: a benchmark reads each node's CPU and `INFO commandstats`).
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// The masters serving slots, ordered by their first slot, as the first
    /// running node sees them.
    pub async fn masters(&self) -> Result<Vec<Master>> {
        let port = self
            .running_ports()
            .first()
            .copied()
            .context("no cluster node is running")?;
        let mut masters: Vec<Master> = nodes_view(port)
            .await?
            .into_iter()
            .filter(|node| node.flags.iter().any(|flag| flag == "master") && !node.slots.is_empty())
            .map(|node| Master {
                id: node.id,
                port: node.port,
                slots: node.slots,
            })
            .collect();
        masters.sort_by_key(|master| master.slots.first().map(|range| *range.start()));
        Ok(masters)
    }

    /// The master serving `slot` (see `fred::util::redis_keyslot`).
    pub async fn master_of(&self, slot: u16) -> Result<Master> {
        self.masters()
            .await?
            .into_iter()
            .find(|master| master.owns(slot))
            .with_context(|| format!("no master serves slot {slot}"))
    }

    /// SIGKILLs the `n`th master of [`masters`](Self::masters) (a crash: no
    /// shutdown, no failover handed over) and returns it as it was.
    pub async fn kill_master(&mut self, n: usize) -> Result<Master> {
        let masters = self.masters().await?;
        let master = masters
            .get(n)
            .cloned()
            .with_context(|| format!("there is no master {n} in {masters:?}"))?;
        self.nodes
            .iter_mut()
            .find(|node| node.port() == master.port)
            .with_context(|| format!("master {master:?} is not one of this cluster's nodes"))?
            .kill();
        Ok(master)
    }

    /// Waits until a replica has taken over the slots of `killed` and the
    /// cluster is healthy again; returns the masters now serving.
    pub async fn wait_for_failover(&self, killed: &Master) -> Result<Vec<Master>> {
        self.wait_healthy().await?;
        let masters = self.masters().await?;
        if masters.iter().any(|master| master.port == killed.port) {
            bail!("{killed:?} still serves slots: {masters:?}");
        }
        Ok(masters)
    }

    /// Starts the (killed) node on `port` again, with its folder and
    /// `nodes.conf`, and waits until it has rejoined: a former master comes
    /// back as a replica of the node that took over its slots.
    pub async fn restart(&mut self, port: u16) -> Result<()> {
        self.nodes
            .iter_mut()
            .find(|node| node.port() == port)
            .with_context(|| format!("no cluster node on port {port}"))?
            .restart()
            .await?;
        self.wait_healthy().await
    }

    /// The nodes not killed by [`kill_master`](Self::kill_master).
    fn running_ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|node| node.pid().is_some())
            .map(RedisServer::port)
            .collect()
    }

    /// Polls until every running node agrees that the cluster is healthy.
    async fn wait_healthy(&self) -> Result<()> {
        crate::wait::eventually(HEALTHY_TIMEOUT, || async {
            let running = self.running_ports();
            for &port in &running {
                check_healthy(port, &running).await?;
            }
            Ok(())
        })
        .await
    }
}

/// What a healthy cluster looks like from the node on `port`: state ok with
/// every slot served, three masters serving slots (all of them running), no
/// running node flagged as failing, and this node, if a replica, in sync with
/// its master.
async fn check_healthy(port: u16, running: &[u16]) -> Result<()> {
    let info = text(redis::cmd(port, &["CLUSTER", "INFO"]).await?)?;
    for (field, want) in [
        ("cluster_state", "ok".to_owned()),
        ("cluster_slots_ok", SLOTS.to_string()),
    ] {
        let got = info_field(&info, field);
        if got != Some(want.as_str()) {
            bail!("node {port}: {field} is {got:?}, not {want}");
        }
    }
    let view = nodes_view(port).await?;
    let serving: Vec<&NodeLine> = view
        .iter()
        .filter(|node| node.flags.iter().any(|flag| flag == "master") && !node.slots.is_empty())
        .collect();
    if serving.len() != NODES / 2 || serving.iter().any(|node| !running.contains(&node.port)) {
        bail!("node {port}: the masters serving slots are {serving:?}, running nodes {running:?}");
    }
    if let Some(failing) = view.iter().find(|node| {
        running.contains(&node.port)
            && node
                .flags
                .iter()
                .any(|flag| matches!(flag.as_str(), "fail" | "fail?" | "handshake" | "noaddr"))
    }) {
        bail!("node {port} flags a running node: {failing:?}");
    }
    let replication = text(redis::cmd(port, &["INFO", "replication"]).await?)?;
    if info_field(&replication, "role") == Some("slave")
        && info_field(&replication, "master_link_status") != Some("up")
    {
        bail!("node {port} is a replica not yet in sync:\n{replication}");
    }
    Ok(())
}

/// One line of `CLUSTER NODES`.
#[derive(Debug)]
struct NodeLine {
    id: String,
    port: u16,
    /// `myself`, `master`, `slave`, `fail?`, `fail`, …
    flags: Vec<String>,
    slots: Vec<RangeInclusive<u16>>,
}

/// The cluster as the node on `port` sees it (`CLUSTER NODES`).
async fn nodes_view(port: u16) -> Result<Vec<NodeLine>> {
    let nodes = text(redis::cmd(port, &["CLUSTER", "NODES"]).await?)?;
    nodes
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| parse_node_line(line).with_context(|| format!("CLUSTER NODES line {line:?}")))
        .collect()
}

/// `<id> <ip:port@cport[,hostname]> <flags> <master> <ping> <pong> <epoch>
/// <link> <slot>...`, a slot being `N`, `N-M`, or `[N-<-id]`/`[N->-id]` while
/// it migrates (skipped: the node does not serve it yet or any more).
fn parse_node_line(line: &str) -> Result<NodeLine> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let (Some(id), Some(address), Some(flags)) = (fields.first(), fields.get(1), fields.get(2))
    else {
        bail!("too few fields");
    };
    let port = address
        .split('@')
        .next()
        .and_then(|ip_port| ip_port.rsplit(':').next())
        .and_then(|port| port.parse().ok())
        .context("no port in the address")?;
    let mut slots = Vec::new();
    for slot in fields.iter().skip(8).filter(|slot| !slot.starts_with('[')) {
        let (start, end) = slot.split_once('-').unwrap_or((slot, slot));
        slots.push(start.parse().context("bad slot")?..=end.parse().context("bad slot")?);
    }
    Ok(NodeLine {
        id: (*id).to_owned(),
        port,
        flags: flags.split(',').map(str::to_owned).collect(),
        slots,
    })
}

/// The value of `field` in an `INFO`-style `field:value` text.
fn info_field<'a>(info: &'a str, field: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .map(str::trim)
}

fn text(reply: redis::Resp) -> Result<String> {
    reply
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("expected a text reply, got {reply:?}"))
}

fn addr(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

#[cfg(test)]
mod tests {
    use super::{info_field, parse_node_line};

    #[test]
    fn reads_a_master_line_with_slot_ranges_and_a_migrating_slot() {
        let line = "a6d5 127.0.0.1:47100@48100,host myself,master - 0 1796155786000 1 connected 0-5460 7000 [5461->-b7c1]";
        let node = parse_node_line(line).expect("parses");
        assert_eq!(node.id, "a6d5");
        assert_eq!(node.port, 47100);
        assert_eq!(node.flags, ["myself", "master"]);
        assert_eq!(node.slots, [0..=5460, 7000..=7000]);
    }

    #[test]
    fn reads_a_failed_replica_line_without_slots() {
        let line = "1831 127.0.0.1:47104@48104 slave,fail e37a 0 1796155786000 5 disconnected";
        let node = parse_node_line(line).expect("parses");
        assert_eq!(node.flags, ["slave", "fail"]);
        assert!(node.slots.is_empty());
    }

    #[test]
    fn info_fields_are_read_exactly() {
        let info = "cluster_state:ok\r\ncluster_slots_ok:16384\r\ncluster_slots_okay:1\r\n";
        assert_eq!(info_field(info, "cluster_state"), Some("ok"));
        assert_eq!(info_field(info, "cluster_slots_ok"), Some("16384"));
        assert_eq!(info_field(info, "cluster_size"), None);
    }
}
