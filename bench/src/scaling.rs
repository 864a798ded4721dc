//! The `scaling` scenario (issue 13, point 5): does the Redis work split over a
//! Redis Cluster's masters, and do gateways scale by process?
//!
//! 1. **Redis split.** The same 1:1 load at one fixed rate (2 gateways, one
//!    worker) once on one `redis-server` and once on a six-node Redis Cluster
//!    (3 masters + 3 replicas, `REDIS_SHARDS` shards). Per Redis process: its
//!    CPU from `/proc/<pid>/stat` over the step, and the step's `INFO
//!    commandstats` delta, both per confirmed message. The claim: the masters
//!    together cost about what the one server costs per message, and each
//!    carries about a third of it.
//! 2. **Gateways by process.** Fan-out into rooms spread over every gateway at
//!    one fixed total delivery rate, once with 2 gateway processes and once with
//!    4 (one Redis): gateway CPU per delivery should not change.
//!
//! CPU is read per pid (only this run's processes: the machine is shared, and
//! another session's `redis-server` must not be charged to this one) over the
//! whole step, send window and drain, so the per-message figures hold the
//! drain's work too. Each half runs its two deployments back to back in the
//! same run, so the ratios compare like with like on a noisy machine.

use crate::coordinator::{Bound, LoadRun, StepReport};
use crate::profile::commandstats;
use crate::report::int;
use crate::scenarios::{
    Bench, Deployment, RedisKind, finish_side, fixed_warm_up, report_setup, step, warm_up,
};
use crate::sys::PidCpu;
use anyhow::{Context, Result};
use chatter_shared::keyspace::Keyspace;
use chatter_tests::{RedisServer, Resp};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

/// `REDIS_SHARDS` of the cluster deployment: the product's default, set
/// explicitly so the report can map shards to masters.
pub const SHARDS: u16 = 64;

/// Commands shown in their own columns of the per-process table (the rest are
/// summed, the largest named).
const COLUMNS: &[&str] = &["evalsha", "publish+spublish", "xreadgroup", "xack"];

/// One `redis-server` of a side: its role, CPU and command counts over the step.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RedisNode {
    pub port: u16,
    /// `one` (the single server), `master` or `replica`.
    pub role: String,
    /// Shards (of [`SHARDS`]) and rooms of the load whose slots this master serves.
    pub shards: Option<usize>,
    pub rooms: Option<usize>,
    pub cpu_s: f64,
    /// Cores it used in the idle window before the step (no messages).
    pub idle_cores: f64,
    /// `INFO commandstats` delta: command → (calls, µs inside Redis).
    pub commands: BTreeMap<String, (u64, u64)>,
}

impl RedisNode {
    fn calls(&self, name: &str) -> u64 {
        if name == "publish+spublish" {
            return self.calls("publish") + self.calls("spublish");
        }
        self.commands.get(name).map_or(0, |c| c.0)
    }

    fn all_calls(&self) -> u64 {
        self.commands.values().map(|c| c.0).sum()
    }

    fn command_us(&self) -> u64 {
        self.commands.values().map(|c| c.1).sum()
    }

    fn serves(&self) -> bool {
        self.role != "replica"
    }
}

/// Warnings and errors in one process's log.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LogNote {
    pub file: String,
    pub warnings: usize,
    pub errors: usize,
    /// The first few distinct messages, with their level.
    pub samples: Vec<String>,
}

/// One deployment of the Redis half.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RedisSide {
    pub label: String,
    pub step: StepReport,
    /// Wall seconds of the CPU window (the step's send window and its drain).
    pub window_s: f64,
    /// Seconds of the idle window before it.
    pub idle_s: f64,
    pub nodes: Vec<RedisNode>,
    pub gateway_cpu_s: f64,
    pub worker_cpu_s: f64,
    pub gateway_idle_cores: f64,
    pub worker_idle_cores: f64,
    /// Deliveries missing over the whole run, after a final drain.
    pub final_missing: u64,
    pub logs: Vec<LogNote>,
}

impl RedisSide {
    fn serving(&self) -> impl Iterator<Item = &RedisNode> {
        self.nodes.iter().filter(|n| n.serves())
    }

    fn messages(&self) -> f64 {
        self.step.confirmed.max(1) as f64
    }

    fn serving_cpu_s(&self) -> f64 {
        self.serving().map(|n| n.cpu_s).sum()
    }

    fn serving_idle_cores(&self) -> f64 {
        self.serving().map(|n| n.idle_cores).sum()
    }

    /// Serving Redis CPU µs per message above what it uses with no message.
    fn serving_us_above_idle(&self) -> f64 {
        let above = self.serving_cpu_s() - self.serving_idle_cores() * self.window_s;
        above.max(0.0) * 1e6 / self.messages()
    }

    fn replica_cpu_s(&self) -> f64 {
        self.nodes
            .iter()
            .filter(|n| !n.serves())
            .map(|n| n.cpu_s)
            .sum()
    }

    /// The busiest serving node's share of the serving nodes' CPU…
    fn largest_cpu_share(&self) -> f64 {
        let total = self.serving_cpu_s();
        let max = self.serving().map(|n| n.cpu_s).fold(0.0, f64::max);
        if total > 0.0 { max / total } else { 0.0 }
    }

    /// …and of their `EVALSHA` calls (the ingest script: one per message).
    fn largest_evalsha_share(&self) -> f64 {
        let total: u64 = self.serving().map(|n| n.calls("evalsha")).sum();
        let max = self
            .serving()
            .map(|n| n.calls("evalsha"))
            .max()
            .unwrap_or(0);
        if total > 0 {
            max as f64 / total as f64
        } else {
            0.0
        }
    }
}

/// One deployment of the gateway half.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GatewaySide {
    pub gateways: usize,
    pub step: StepReport,
    pub window_s: f64,
    /// CPU seconds of each gateway process over the window.
    pub gateway_cpu_s: Vec<f64>,
    /// Cores of all gateways together in the idle window before the step.
    pub gateway_idle_cores: f64,
    pub redis_cpu_s: f64,
    pub final_missing: u64,
    pub logs: Vec<LogNote>,
}

impl GatewaySide {
    fn total_gateway_cpu_s(&self) -> f64 {
        self.gateway_cpu_s.iter().sum()
    }

    /// Gateway CPU µs per delivery.
    fn us_per_delivery(&self) -> f64 {
        self.total_gateway_cpu_s() * 1e6 / self.step.deliveries.max(1) as f64
    }

    /// The same less what the gateways use with no message (heartbeats, timers,
    /// reconciles: a cost per process and socket, not per delivery).
    fn us_per_delivery_above_idle(&self) -> f64 {
        let above = self.total_gateway_cpu_s() - self.gateway_idle_cores * self.window_s;
        above.max(0.0) * 1e6 / self.step.deliveries.max(1) as f64
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ScalingResult {
    pub pairs_connections: usize,
    pub pairs_rate: f64,
    pub redis: Vec<RedisSide>,
    pub fanout_connections: usize,
    pub room_size: usize,
    pub fanout_rate: f64,
    pub gateway_sides: Vec<GatewaySide>,
}

/// Both halves; see the module docs.
pub async fn scaling(bench: &Bench) -> Result<ScalingResult> {
    // 1,000 msg/s: one Redis takes it with room to spare here, and the cluster's
    // six processes still leave the 2 cores short of full (at 1,500 msg/s the
    // cluster run filled them, and queueing, not Redis, set its latency).
    let (pairs_connections, pairs_rate) = if bench.quick {
        (1_000, 500.0)
    } else {
        (4_000, 1_000.0)
    };
    // Rooms of 100, as in the fan-out scenario: with every room on every
    // gateway, each gateway also pays a per-message cost (the pub/sub frame,
    // the room's lookup), shared by its share of the room's members.
    let (fanout_connections, room_size, fanout_rate) = if bench.quick {
        (1_000, 100, 50.0)
    } else {
        (4_000, 100, 150.0)
    };
    let mut result = ScalingResult {
        pairs_connections,
        pairs_rate,
        fanout_connections,
        room_size,
        fanout_rate,
        ..ScalingResult::default()
    };
    for kind in [RedisKind::One, RedisKind::Cluster] {
        result
            .redis
            .push(redis_side(bench, kind, pairs_connections, pairs_rate).await?);
    }
    for gateways in [2, 4] {
        result
            .gateway_sides
            .push(gateway_side(bench, gateways, fanout_connections, room_size, fanout_rate).await?);
    }
    Ok(result)
}

/// The idle window's length.
fn idle_secs(bench: &Bench) -> f64 {
    if bench.quick { 2.0 } else { 3.0 }
}

/// Cores each pid uses while no message is sent (the warm-up's drain is over):
/// heartbeats, timers, a worker polling empty streams, a cluster's gossip. It
/// tells the cost per process from the cost per message.
async fn idle_cores(pids: &[u32], secs: f64) -> BTreeMap<u32, f64> {
    let cpu = PidCpu::start(pids);
    tokio::time::sleep(std::time::Duration::from_secs_f64(secs)).await;
    let (elapsed, used) = cpu.finish();
    used.into_iter()
        .map(|(pid, s)| (pid, s / elapsed.max(1e-3)))
        .collect()
}

/// The measured step's length: longer than the other scenarios' steps, because
/// a per-process CPU figure over a few seconds is coarse (10 ms ticks).
fn measured_secs(bench: &Bench) -> f64 {
    if bench.quick { 3.0 } else { 10.0 }
}

async fn redis_side(bench: &Bench, kind: RedisKind, n: usize, rate: f64) -> Result<RedisSide> {
    let (name, label) = match kind {
        RedisKind::One => ("redis-one", "one redis-server"),
        RedisKind::Cluster => ("redis-cluster", "Redis Cluster, 3 masters + 3 replicas"),
    };
    let dir = bench.dir(&format!("scaling/{name}"))?;
    eprintln!("scaling: {n} connections in pairs at {rate} msg/s, 2 gateways, 1 worker, {label}");
    let extra = [("REDIS_SHARDS", SHARDS.to_string())];
    let deployment =
        Deployment::start_opts(&dir, &bench.bins, 2, true, &extra, false, kind).await?;
    let mut options = bench.options(n, 2, &dir);
    options.agents = 2;
    let mut run = LoadRun::start(&deployment.target(), &options).await?;
    report_setup(label, &run);
    warm_up(&mut run, bench).await?;
    fixed_warm_up(&mut run, rate, bench).await?;

    let mut nodes = roles(&deployment).await?;
    let servers = deployment.redis.servers();
    let mut before = Vec::new();
    for server in &servers {
        before.push(commandstats(server).await?);
    }
    let redis_pids: Vec<u32> = servers.iter().filter_map(|s| s.pid()).collect();
    let gateway_pids: Vec<u32> = deployment.gateways.iter().map(|g| g.pid()).collect();
    let worker_pid = deployment.worker.as_ref().map(|w| w.pid());
    let all: Vec<u32> = redis_pids
        .iter()
        .chain(&gateway_pids)
        .chain(worker_pid.iter())
        .copied()
        .collect();
    let idle = idle_cores(&all, idle_secs(bench)).await;
    let cpu = PidCpu::start(&all);
    let report = step(&mut run, rate, measured_secs(bench), 15.0).await?;
    let (window_s, used) = cpu.finish();
    for ((server, node), before) in servers.iter().zip(nodes.iter_mut()).zip(&before) {
        node.idle_cores = server
            .pid()
            .and_then(|pid| idle.get(&pid))
            .copied()
            .unwrap_or(0.0);
        let after = commandstats(server).await?;
        node.commands = delta(before, &after);
        node.cpu_s = server
            .pid()
            .and_then(|pid| used.get(&pid))
            .copied()
            .unwrap_or(0.0);
    }
    let cpu_of = |pids: &[u32]| pids.iter().filter_map(|p| used.get(p)).sum::<f64>();
    let idle_of = |pids: &[u32]| pids.iter().filter_map(|p| idle.get(p)).sum::<f64>();
    let worker_pids: Vec<u32> = worker_pid.into_iter().collect();
    let side = finish_side(run, None, Vec::new(), Bound::All).await?;
    let logs = scan_logs(&dir);
    drop(deployment);
    let result = RedisSide {
        label: label.to_owned(),
        window_s,
        idle_s: idle_secs(bench),
        nodes,
        gateway_cpu_s: cpu_of(&gateway_pids),
        worker_cpu_s: cpu_of(&worker_pids),
        gateway_idle_cores: idle_of(&gateway_pids),
        worker_idle_cores: idle_of(&worker_pids),
        final_missing: side.final_missing,
        logs,
        step: report,
    };
    eprintln!(
        "  {label}: {:.0} msg/s, p99 {:.2} ms, missing {}; Redis (serving) {:.1} µs CPU per message, largest master {:.0} % of it",
        result.step.messages_per_s,
        result.step.latency.p99_ms,
        result.step.missing_new,
        result.serving_cpu_s() * 1e6 / result.messages(),
        result.largest_cpu_share() * 100.0
    );
    Ok(result)
}

/// Every Redis process of the deployment in [`crate::scenarios::Redis::servers`]
/// order, with its role, and for a cluster's masters the shards and the load's
/// rooms (from Postgres) whose hash slots they serve.
async fn roles(deployment: &Deployment) -> Result<Vec<RedisNode>> {
    use crate::scenarios::Redis;
    let cluster = match &deployment.redis {
        Redis::One(server) => {
            return Ok(vec![RedisNode {
                port: server.port(),
                role: "one".into(),
                ..RedisNode::default()
            }]);
        }
        Redis::Cluster(cluster) => cluster,
    };
    let masters = cluster.masters().await?;
    let any = cluster.nodes().first().context("the cluster has no node")?;
    let keyspace = Keyspace::Sharded { shards: SHARDS };
    // The master of each shard, by its ingest stream's slot (every key of a
    // shard carries the same hash tag, so the same slot).
    let mut shard_master = Vec::new();
    for shard in keyspace.shards() {
        let key = shard.ingest();
        let slot = keyslot(any, &key).await?;
        shard_master.push(masters.iter().position(|m| m.owns(slot)));
    }
    let rooms: Vec<(String,)> = sqlx::query_as("SELECT id::text FROM rooms")
        .fetch_all(&deployment.postgres.pool())
        .await
        .context("reading the rooms")?;
    let mut rooms_per_master = vec![0usize; masters.len()];
    for (id,) in rooms {
        let Ok(room) = id.parse::<uuid::Uuid>() else {
            continue;
        };
        let shard = keyspace.shard_of_room(room);
        let index = keyspace.shards().iter().position(|s| *s == shard);
        if let Some(Some(master)) = index.and_then(|i| shard_master.get(i)) {
            rooms_per_master[*master] += 1;
        }
    }
    Ok(cluster
        .nodes()
        .iter()
        .map(|node| {
            let master = masters.iter().position(|m| m.port == node.port());
            RedisNode {
                port: node.port(),
                role: if master.is_some() {
                    "master"
                } else {
                    "replica"
                }
                .into(),
                shards: master.map(|m| shard_master.iter().filter(|s| **s == Some(m)).count()),
                rooms: master.and_then(|m| rooms_per_master.get(m).copied()),
                ..RedisNode::default()
            }
        })
        .collect())
}

/// `CLUSTER KEYSLOT key`.
async fn keyslot(node: &RedisServer, key: &str) -> Result<u16> {
    match node.cmd(&["CLUSTER", "KEYSLOT", key]).await? {
        Resp::Int(slot) => u16::try_from(slot).context("slot out of range"),
        other => anyhow::bail!("CLUSTER KEYSLOT answered {other:?}"),
    }
}

fn delta(
    before: &BTreeMap<String, (u64, u64)>,
    after: &BTreeMap<String, (u64, u64)>,
) -> BTreeMap<String, (u64, u64)> {
    after
        .iter()
        .map(|(name, (calls, usec))| {
            let (c0, u0) = before.get(name).copied().unwrap_or_default();
            (
                name.clone(),
                (calls.saturating_sub(c0), usec.saturating_sub(u0)),
            )
        })
        .filter(|(_, (calls, _))| *calls > 0)
        .collect()
}

async fn gateway_side(
    bench: &Bench,
    gateways: usize,
    n: usize,
    size: usize,
    rate: f64,
) -> Result<GatewaySide> {
    let dir = bench.dir(&format!("scaling/gateways-{gateways}"))?;
    eprintln!(
        "scaling: {n} connections in rooms of {size} over {gateways} gateways, {rate} msg/s, one Redis"
    );
    let deployment = Deployment::start_opts(
        &dir,
        &bench.bins,
        gateways,
        true,
        &[],
        false,
        RedisKind::One,
    )
    .await?;
    let mut options = bench.options(n, size, &dir);
    options.agents = 2;
    let mut run = LoadRun::start(&deployment.target(), &options).await?;
    report_setup(&format!("{gateways} gateways"), &run);
    warm_up(&mut run, bench).await?;
    fixed_warm_up(&mut run, rate, bench).await?;
    let gateway_pids: Vec<u32> = deployment.gateways.iter().map(|g| g.pid()).collect();
    let redis_pids: Vec<u32> = deployment
        .redis
        .servers()
        .iter()
        .filter_map(|s| s.pid())
        .collect();
    let all: Vec<u32> = gateway_pids.iter().chain(&redis_pids).copied().collect();
    let idle = idle_cores(&gateway_pids, idle_secs(bench)).await;
    let cpu = PidCpu::start(&all);
    let report = step(&mut run, rate, measured_secs(bench), 15.0).await?;
    let (window_s, used) = cpu.finish();
    let side = finish_side(run, None, Vec::new(), Bound::All).await?;
    let logs = scan_logs(&dir);
    drop(deployment);
    let result = GatewaySide {
        gateways,
        window_s,
        gateway_cpu_s: gateway_pids
            .iter()
            .map(|p| used.get(p).copied().unwrap_or(0.0))
            .collect(),
        redis_cpu_s: redis_pids.iter().filter_map(|p| used.get(p)).sum(),
        gateway_idle_cores: idle.values().sum(),
        final_missing: side.final_missing,
        logs,
        step: report,
    };
    eprintln!(
        "  {gateways} gateways: {:.0} deliveries/s, p99 {:.2} ms, missing {}; {:.2} µs gateway CPU per delivery",
        result.step.deliveries_per_s,
        result.step.latency.p99_ms,
        result.step.missing_new,
        result.us_per_delivery()
    );
    Ok(result)
}

/// Warnings and errors in the gateway and worker logs of `dir` (JSON lines:
/// `"level":"WARN"` / `"ERROR"`), with the first few distinct messages.
fn scan_logs(dir: &Path) -> Vec<LogNote> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<_> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with(".log") && !n.starts_with("agent"))
        })
        .collect();
    files.sort();
    let mut notes = Vec::new();
    for path in files {
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let mut note = LogNote {
            file: path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            ..LogNote::default()
        };
        for line in text.lines() {
            let Ok(value) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            let level = value.get("level").and_then(|l| l.as_str()).unwrap_or("");
            match level {
                "WARN" => note.warnings += 1,
                "ERROR" => note.errors += 1,
                _ => continue,
            }
            let message = value
                .pointer("/fields/message")
                .and_then(|m| m.as_str())
                .unwrap_or("(no message)");
            let sample = format!("{level}: {message}");
            if note.samples.len() < 3 && !note.samples.contains(&sample) {
                note.samples.push(sample);
            }
        }
        if note.warnings + note.errors > 0 {
            notes.push(note);
        }
    }
    notes
}

// ------------------------------------------------------------------ report

/// The `## Scaling` section of RESULTS.md.
pub fn section(md: &mut String, r: &ScalingResult) {
    let _ = writeln!(
        md,
        "## Scaling: Redis Cluster masters and gateway processes\n"
    );
    redis_tables(md, r);
    gateway_table(md, r);
    let logs: Vec<(String, &LogNote)> = r
        .redis
        .iter()
        .flat_map(|s| s.logs.iter().map(move |l| (s.label.clone(), l)))
        .chain(r.gateway_sides.iter().flat_map(|s| {
            s.logs
                .iter()
                .map(move |l| (format!("{} gateways", s.gateways), l))
        }))
        .collect();
    if logs.is_empty() {
        let _ = writeln!(
            md,
            "No warning or error in any gateway or worker log of this scenario.\n"
        );
    } else {
        let _ = writeln!(md, "Warnings and errors in the gateway and worker logs:\n");
        for (side, note) in logs {
            let _ = writeln!(
                md,
                "- {side}, `{}`: {} warnings, {} errors ({})",
                note.file,
                note.warnings,
                note.errors,
                note.samples.join("; ")
            );
        }
        let _ = writeln!(md);
    }
}

fn redis_tables(md: &mut String, r: &ScalingResult) {
    let Some(one) = r.redis.first() else {
        return;
    };
    let _ = writeln!(md, "### Redis: one server against a 3-master cluster\n");
    let _ = writeln!(
        md,
        "{} sockets in pairs (the two members on different gateways, both send), {} msg/s for \
         {:.0} s, 2 gateways and one worker; first on one `redis-server`, then on a six-node \
         Redis Cluster (3 masters + 3 replicas, `REDIS_SHARDS={SHARDS}`), in the same run. \
         CPU of each `redis-server` process from `/proc/<pid>/stat` over the step (send window \
         and drain, {:.1} s and {:.1} s), per confirmed message; `INFO commandstats` is the \
         step's delta on each node. \"Serving\" = the single server, or the masters (replicas \
         only apply what their master sends them: the price of failover, counted apart).\n",
        int(r.pairs_connections as f64),
        int(r.pairs_rate),
        one.step.duration_s,
        one.window_s,
        r.redis.get(1).map_or(0.0, |s| s.window_s),
    );
    let _ = writeln!(
        md,
        "| Redis | msg/s confirmed | deliveries (missing in the step) | ack p50 / p99 | delivery p50 / p99 | machine during the send window: busy cores (softirq): by name; other |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|");
    for s in &r.redis {
        let _ = writeln!(
            md,
            "| {} | {} | {} ({}) | {:.2} / {:.2} ms | {:.2} / {:.2} ms | {} |",
            s.label,
            int(s.step.messages_per_s),
            int(s.step.deliveries as f64),
            s.step.missing_new.max(0),
            s.step.ack_latency.p50_ms,
            s.step.ack_latency.p99_ms,
            s.step.latency.p50_ms,
            s.step.latency.p99_ms,
            crate::report::cpu_cell(&s.step.cpu)
        );
    }
    let _ = writeln!(
        md,
        "\nCPU per confirmed message (\"above idle\" leaves out what the same processes used \
         in {:.0} s with no message just before the step):\n",
        r.redis.first().map_or(0.0, |s| s.idle_s)
    );
    let _ = writeln!(
        md,
        "| Redis | serving Redis: cores (idle) | serving Redis: µs CPU / msg | …above idle | replicas: µs CPU / msg | µs in commands / msg | commands / msg | busiest master: share of CPU, of `EVALSHA` | gateways: µs / msg (idle cores) | worker: µs / msg (idle cores) |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|");
    for s in &r.redis {
        let m = s.messages();
        let serving_cmd_us: u64 = s.serving().map(RedisNode::command_us).sum();
        let serving_calls: u64 = s.serving().map(RedisNode::all_calls).sum();
        let replicas = if s.nodes.iter().any(|n| !n.serves()) {
            format!("{:.1}", s.replica_cpu_s() * 1e6 / m)
        } else {
            "–".into()
        };
        let busiest = if s.serving().count() > 1 {
            format!(
                "{:.0} %, {:.0} %",
                s.largest_cpu_share() * 100.0,
                s.largest_evalsha_share() * 100.0
            )
        } else {
            "– (one node)".into()
        };
        let _ = writeln!(
            md,
            "| {} | {:.2} ({:.3}) | {:.1} | {:.1} | {} | {:.1} | {:.2} | {} | {:.1} ({:.3}) | {:.1} ({:.3}) |",
            s.label,
            s.serving_cpu_s() / s.window_s.max(1e-3),
            s.serving_idle_cores(),
            s.serving_cpu_s() * 1e6 / m,
            s.serving_us_above_idle(),
            replicas,
            serving_cmd_us as f64 / m,
            serving_calls as f64 / m,
            busiest,
            s.gateway_cpu_s * 1e6 / m,
            s.gateway_idle_cores,
            s.worker_cpu_s * 1e6 / m,
            s.worker_idle_cores,
        );
    }
    if let [one, cluster] = &r.redis[..] {
        let per = |s: &RedisSide| s.serving_cpu_s() / s.messages();
        let cmd = |s: &RedisSide| {
            s.serving().map(RedisNode::command_us).sum::<u64>() as f64 / s.messages()
        };
        let _ = writeln!(
            md,
            "\nCluster / one server, per message: serving Redis CPU {} ({} above idle), time in \
             commands {}, gateways' CPU {}, worker's CPU {}. Deliveries missing after the final \
             drain: {} (one), {} (cluster).\n",
            ratio(per(cluster), per(one)),
            ratio(cluster.serving_us_above_idle(), one.serving_us_above_idle()),
            ratio(cmd(cluster), cmd(one)),
            ratio(
                cluster.gateway_cpu_s / cluster.messages(),
                one.gateway_cpu_s / one.messages()
            ),
            ratio(
                cluster.worker_cpu_s / cluster.messages(),
                one.worker_cpu_s / one.messages()
            ),
            one.final_missing,
            cluster.final_missing
        );
    } else {
        let _ = writeln!(md);
    }
    commands_table(md, r);
    let _ = writeln!(
        md,
        "Per Redis process (calls per confirmed message; \"share\" = of the serving nodes' CPU):\n"
    );
    let _ = writeln!(
        md,
        "| Redis | node | shards, rooms | cores | µs CPU / msg | share | {} | other commands / msg | µs in commands / msg |",
        COLUMNS
            .iter()
            .map(|c| format!("`{c}`"))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    let _ = writeln!(
        md,
        "|---|---|---|---|---|---|{}---|---|",
        "---|".repeat(COLUMNS.len())
    );
    for s in &r.redis {
        let m = s.messages();
        let total = s.serving_cpu_s();
        for node in &s.nodes {
            let shards = match (node.shards, node.rooms) {
                (Some(shards), Some(rooms)) => format!("{shards}, {}", int(rooms as f64)),
                _ => "–".into(),
            };
            let share = if node.serves() && total > 0.0 {
                format!("{:.0} %", node.cpu_s / total * 100.0)
            } else {
                "–".into()
            };
            let columns: Vec<String> = COLUMNS
                .iter()
                .map(|c| format!("{:.2}", node.calls(c) as f64 / m))
                .collect();
            let named: u64 = COLUMNS.iter().map(|c| node.calls(c)).sum();
            let other = node.all_calls().saturating_sub(named);
            let largest_other = node
                .commands
                .iter()
                .filter(|(name, _)| {
                    !COLUMNS.contains(&name.as_str())
                        && !matches!(name.as_str(), "publish" | "spublish")
                })
                .max_by_key(|(_, (calls, _))| *calls)
                .map(|(name, _)| format!(" (most: `{name}`)"))
                .unwrap_or_default();
            let _ = writeln!(
                md,
                "| {} | {} :{} | {} | {:.3} | {:.1} | {} | {} | {:.2}{} | {:.1} |",
                s.label,
                node.role,
                node.port,
                shards,
                node.cpu_s / s.window_s.max(1e-3),
                node.cpu_s * 1e6 / m,
                share,
                columns.join(" | "),
                other as f64 / m,
                largest_other,
                node.command_us() as f64 / m,
            );
        }
    }
    let _ = writeln!(md);
}

/// `INFO commandstats` per command: the one server against the masters' sum,
/// and each master's part (commands inside scripts count as calls of their own).
fn commands_table(md: &mut String, r: &ScalingResult) {
    let [one, cluster] = &r.redis[..] else {
        return;
    };
    let (one_sum, cluster_sum) = (command_sum(one), command_sum(cluster));
    let mut names: Vec<&str> = one_sum.keys().chain(cluster_sum.keys()).copied().collect();
    names.sort_unstable();
    names.dedup();
    let calls =
        |t: &BTreeMap<&str, (u64, u64)>, name: &str| t.get(name).copied().unwrap_or_default();
    // The busiest commands first (by calls on either side); the long tail of
    // set-up and monitoring commands (under 0.005 per message) left out.
    names.sort_by_key(|name| {
        std::cmp::Reverse(calls(&one_sum, name).0.max(calls(&cluster_sum, name).0))
    });
    let (m1, m2) = (one.messages(), cluster.messages());
    names.retain(|name| {
        calls(&one_sum, name).0 as f64 / m1 >= 0.005
            || calls(&cluster_sum, name).0 as f64 / m2 >= 0.005
    });
    let masters: Vec<&RedisNode> = cluster.serving().collect();
    let _ = writeln!(
        md,
        "`INFO commandstats` of the serving nodes, per confirmed message (commands run inside \
         the ingest and acknowledgement scripts count as calls of their own):\n"
    );
    let _ = writeln!(
        md,
        "| command | one: calls / msg | one: µs / msg | masters' sum: calls / msg | masters' sum: µs / msg | calls / msg on each master | calls cluster / one |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|");
    for name in names {
        let (c1, u1) = calls(&one_sum, name);
        let (c2, u2) = calls(&cluster_sum, name);
        let each: Vec<String> = masters
            .iter()
            .map(|node| {
                format!(
                    "{:.3}",
                    node.commands.get(name).map_or(0, |c| c.0) as f64 / m2
                )
            })
            .collect();
        let _ = writeln!(
            md,
            "| `{name}` | {:.3} | {:.2} | {:.3} | {:.2} | {} | {} |",
            c1 as f64 / m1,
            u1 as f64 / m1,
            c2 as f64 / m2,
            u2 as f64 / m2,
            each.join(" / "),
            ratio(c2 as f64 / m2, c1 as f64 / m1)
        );
    }
    let _ = writeln!(md);
}

/// The serving nodes' commands added up: command → (calls, µs).
fn command_sum(side: &RedisSide) -> BTreeMap<&str, (u64, u64)> {
    let mut total: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    for node in side.serving() {
        for (name, (calls, usec)) in &node.commands {
            let entry = total.entry(name.as_str()).or_default();
            entry.0 += calls;
            entry.1 += usec;
        }
    }
    total
}

fn gateway_table(md: &mut String, r: &ScalingResult) {
    let Some(base) = r.gateway_sides.first() else {
        return;
    };
    let _ = writeln!(md, "### Gateways: 2 processes against 4\n");
    let _ = writeln!(
        md,
        "{} sockets in rooms of {} (connection *i* on gateway *i* mod K, so every room spans \
         every gateway), {} msg/s (= {} deliveries/s) for {:.0} s, one Redis, one worker; first \
         with 2 gateway processes, then with 4, in the same run. Gateway CPU (every gateway \
         process, `/proc/<pid>/stat`) over the step and its drain, per delivery.\n",
        int(r.fanout_connections as f64),
        r.room_size,
        int(r.fanout_rate),
        int(r.fanout_rate * r.room_size as f64),
        base.step.duration_s
    );
    let _ = writeln!(
        md,
        "| gateway processes | deliveries/s | p99 | missing (step / after the final drain) | gateway cores (each) | idle gateway cores | µs gateway CPU / delivery (ratio to 2) | …above idle (ratio to 2) | Redis cores | machine during the send window |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|");
    for s in &r.gateway_sides {
        let window = s.window_s.max(1e-3);
        let each: Vec<String> = s
            .gateway_cpu_s
            .iter()
            .map(|c| format!("{:.2}", c / window))
            .collect();
        let _ = writeln!(
            md,
            "| {} | {} | {:.2} ms | {} / {} | {:.2} ({}) | {:.3} | {:.2} ({}) | {:.2} ({}) | {:.2} | {} |",
            s.gateways,
            int(s.step.deliveries_per_s),
            s.step.latency.p99_ms,
            s.step.missing_new.max(0),
            s.final_missing,
            s.total_gateway_cpu_s() / window,
            each.join(", "),
            s.gateway_idle_cores,
            s.us_per_delivery(),
            ratio(s.us_per_delivery(), base.us_per_delivery()),
            s.us_per_delivery_above_idle(),
            ratio(
                s.us_per_delivery_above_idle(),
                base.us_per_delivery_above_idle()
            ),
            s.redis_cpu_s / window,
            crate::report::cpu_cell(&s.step.cpu)
        );
    }
    let _ = writeln!(md);
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.2}×", a / b)
    } else {
        "–".into()
    }
}
