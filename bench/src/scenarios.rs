//! The benchmark scenarios: each starts its own throwaway deployment (real
//! `redis-server`, Postgres, gateways, a worker — the e2e harness's process
//! helpers), drives it with the load generator, and does the same against the
//! ceiling server where there is one.
//!
//! | scenario | deployment | load |
//! |---|---|---|
//! | idle | 1 gateway | as many idle authenticated sockets as one process may hold |
//! | fan-out | 2 gateways + worker | 10,000 sockets, rooms of 100, rising send rate |
//! | 1:1 | 2 gateways + worker | 20,000 sockets in pairs (one per gateway), rising rate |
//! | persist | 2 gateways, worker stopped | fill the ingest stream, start the worker, time the drain, then a bulk `COPY` of the same rows |
//! | storm | 2 gateways | ~9,500 idle sockets on each; SIGTERM one: its sockets reconnect to the other |
//! | content-policy | 2 gateways + worker, twice | 1:1 pairs at fixed rates, content policy off, then on |
//! | scaling ([`crate::scaling`]) | one Redis, then a Redis Cluster; 2, then 4 gateways | 1:1 at one rate; fan-out at one rate |
//!
//! Persistence *under load* (worker rows/s and lag) is measured during the
//! fan-out scenario's fixed-rate step.

use crate::coordinator::{
    Bound, ConnectReport, LoadOptions, LoadRun, Placement, RoomsReport, StepReport, Target,
};
use crate::sys::{self, CpuSampler};
use anyhow::{Context, Result, bail};
use chatter_tests::{Gateway, PostgresServer, RedisCluster, RedisServer, Resp, Worker};
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The p99 bound of the "highest rate" searches.
pub const P99_BOUND_MS: f64 = 50.0;
/// The idle scenario's target number of connections on one gateway.
pub const IDLE_TARGET: usize = 50_000;
/// File descriptors a gateway keeps for itself (listener, Redis, Postgres pool,
/// logs) below its limit.
const GATEWAY_FD_RESERVE: u64 = 1_000;
/// Handshakes in flight per agent when a scenario connects everything at once
/// (a connection storm: every client of a pod reconnecting after a drain or crash).
pub const STORM_CONCURRENCY: usize = 512;

/// Paths of the binaries a benchmark runs.
#[derive(Debug, Clone)]
pub struct Bins {
    pub gateway: PathBuf,
    pub worker: PathBuf,
    pub loadgen: PathBuf,
    pub ceiling: PathBuf,
}

impl Bins {
    /// The binaries in the same folder as the running executable (`target/release`).
    pub fn beside_current_exe() -> Result<Bins> {
        let exe = std::env::current_exe().context("locating the current executable")?;
        let dir = exe.parent().context("the executable has no folder")?;
        Bins::in_dir(dir)
    }

    /// The binaries in `dir` (e.g. another commit's `target/release`).
    pub fn in_dir(dir: &Path) -> Result<Bins> {
        let bins = Bins {
            gateway: dir.join("chatter-gateway"),
            worker: dir.join("chatter-worker"),
            loadgen: dir.join("chatter-loadgen"),
            ceiling: dir.join("chatter-ceiling"),
        };
        for path in [&bins.gateway, &bins.worker, &bins.loadgen, &bins.ceiling] {
            if !path.exists() {
                bail!(
                    "{} is missing: cargo build --release -p chatter-bench -p chatter-gateway -p chatter-worker",
                    path.display()
                );
            }
        }
        Ok(bins)
    }
}

/// Settings shared by every scenario.
#[derive(Debug, Clone)]
pub struct Bench {
    pub bins: Bins,
    /// Another build's binaries (`--baseline-bins`): the content-policy scenario
    /// also runs them, policy off, as "before" in the same run.
    pub baseline: Option<Bins>,
    /// Logs of every process, one folder per scenario.
    pub work: PathBuf,
    /// Small loads and short steps: a smoke test of the whole pipeline.
    pub quick: bool,
}

impl Bench {
    pub(crate) fn dir(&self, scenario: &str) -> Result<PathBuf> {
        let dir = self.work.join(scenario);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(dir)
    }

    pub(crate) fn options(&self, connections: usize, room_size: usize, dir: &Path) -> LoadOptions {
        let mut options = LoadOptions::new(connections, room_size, self.bins.loadgen.clone());
        options.log_dir = Some(dir.to_owned());
        options
    }

    fn step_secs(&self) -> f64 {
        if self.quick { 3.0 } else { 8.0 }
    }
}

// ------------------------------------------------------------------ deployment

/// Which Redis a deployment runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RedisKind {
    /// One `redis-server` (`redis://`): what every scenario but `scaling` uses.
    One,
    /// A six-node Redis Cluster, 3 masters + 3 replicas (`redis-cluster://`):
    /// gateways and workers shard rooms over `REDIS_SHARDS` hash-tagged shards.
    Cluster,
}

/// The Redis of a deployment: one server or a cluster.
pub(crate) enum Redis {
    One(RedisServer),
    Cluster(RedisCluster),
}

impl Redis {
    async fn start(kind: RedisKind) -> Result<Redis> {
        Ok(match kind {
            RedisKind::One => Redis::One(RedisServer::start().await?),
            RedisKind::Cluster => Redis::Cluster(RedisCluster::start().await?),
        })
    }

    /// `REDIS_URL` for the gateways and workers.
    pub(crate) fn url(&self) -> String {
        match self {
            Redis::One(server) => server.url(),
            Redis::Cluster(cluster) => cluster.url(),
        }
    }

    /// The one server; an error on a cluster (the scenarios that read the single
    /// node's `chatter:ingest` or run `redis-benchmark` need one).
    pub(crate) fn one(&self) -> Result<&RedisServer> {
        match self {
            Redis::One(server) => Ok(server),
            Redis::Cluster(_) => bail!("this needs one redis-server, not a Redis Cluster"),
        }
    }

    /// Every `redis-server` process of it (a cluster's masters and replicas).
    pub(crate) fn servers(&self) -> Vec<&RedisServer> {
        match self {
            Redis::One(server) => vec![server],
            Redis::Cluster(cluster) => cluster.nodes().iter().collect(),
        }
    }
}

/// Redis, Postgres, gateways and maybe a worker; everything is killed on drop.
pub(crate) struct Deployment {
    pub(crate) gateways: Vec<Gateway>,
    pub(crate) worker: Option<Worker>,
    pub(crate) redis: Redis,
    pub(crate) postgres: PostgresServer,
    env: Vec<(String, String)>,
    jwt_secret: String,
    dir: PathBuf,
    spawned: usize,
}

impl Deployment {
    async fn start(dir: &Path, bins: &Bins, gateways: usize, worker: bool) -> Result<Deployment> {
        Deployment::start_with(dir, bins, gateways, worker, &[]).await
    }

    /// [`Deployment::start`] with extra gateway and worker environment.
    async fn start_with(
        dir: &Path,
        bins: &Bins,
        gateways: usize,
        worker: bool,
        extra: &[(&str, String)],
    ) -> Result<Deployment> {
        Deployment::start_opts(dir, bins, gateways, worker, extra, false, RedisKind::One).await
    }

    /// [`Deployment::start_with`], with `pg_stat_statements` loaded into
    /// Postgres (before any gateway connects) when `pg_stats` is set, on one
    /// Redis or a Redis Cluster.
    pub(crate) async fn start_opts(
        dir: &Path,
        bins: &Bins,
        gateways: usize,
        worker: bool,
        extra: &[(&str, String)],
        pg_stats: bool,
        redis: RedisKind,
    ) -> Result<Deployment> {
        let (redis, mut postgres) = tokio::try_join!(Redis::start(redis), PostgresServer::start())?;
        if pg_stats {
            crate::profile::enable_pg_stat_statements(&mut postgres).await?;
        }
        let jwt_secret = uuid::Uuid::new_v4().simple().to_string();
        let service_secret = uuid::Uuid::new_v4().simple().to_string();
        let env: Vec<(String, String)> = [
            ("REDIS_URL", redis.url()),
            ("DATABASE_URL", postgres.url()),
            ("JWT_SECRET", jwt_secret.clone()),
            ("SERVICE_SECRET", service_secret),
            ("HOST", "127.0.0.1".to_owned()),
            ("PORT", "0".to_owned()),
            // The worker's metrics port too: another deployment (a test run, a
            // second bench) may hold the default one.
            ("WORKER_PORT", "0".to_owned()),
            ("LOG_FORMAT", "json".to_owned()),
            ("LOG_LEVEL", "info".to_owned()),
            // The load's own needs: senders may burst, and sockets are many.
            ("FRAMES_PER_SEC", "1000".to_owned()),
            ("MAX_CONNECTIONS", "100000".to_owned()),
            // Set-up creates rooms as fast as it can, several per user.
            ("REST_RATE_PER_SEC", "100000".to_owned()),
            ("REST_RATE_BURST", "100000".to_owned()),
            // Every load-generator socket comes from 127.0.0.1 and connects in
            // bursts: no per-address cap on connections still upgrading.
            ("MAX_HTTP_CONNECTIONS_PER_IP", "0".to_owned()),
            // The worker's probe port: any free one (another deployment may
            // hold the default).
            ("WORKER_PORT", "0".to_owned()),
        ]
        .into_iter()
        .chain(extra.iter().cloned())
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let mut deployment = Deployment {
            gateways: Vec::new(),
            worker: None,
            redis,
            postgres,
            env,
            jwt_secret,
            dir: dir.to_owned(),
            spawned: 0,
        };
        for _ in 0..gateways {
            let log = deployment.next_log("gateway");
            let gateway = Gateway::spawn(&bins.gateway, &deployment.env, &log).await?;
            deployment.gateways.push(gateway);
        }
        if worker {
            deployment.start_worker(&bins.worker).await?;
        }
        Ok(deployment)
    }

    fn next_log(&mut self, kind: &str) -> PathBuf {
        self.spawned += 1;
        self.dir.join(format!("{kind}-{}.log", self.spawned))
    }

    pub(crate) fn target(&self) -> Target {
        Target::Chatter {
            gateways: self.gateways.iter().map(Gateway::addr).collect(),
            jwt_secret: self.jwt_secret.clone(),
        }
    }

    async fn start_worker(&mut self, path: &Path) -> Result<()> {
        let log = self.next_log("worker");
        self.worker = Some(Worker::spawn(path, &self.env, &log).await?);
        Ok(())
    }

    /// SIGTERM (the worker finishes the batch in hand), SIGKILL if it lingers.
    async fn stop_worker(&mut self) {
        if let Some(mut worker) = self.worker.take() {
            if worker.sigterm().is_ok() && worker.wait_exit(Duration::from_secs(15)).await.is_some()
            {
                return;
            }
            worker.kill9();
        }
    }

    /// Entries in the ingest stream: accepted, not yet stored.
    async fn backlog(&self) -> Result<u64> {
        match self
            .redis
            .one()?
            .cmd(&["XLEN", chatter_shared::keyspace::INGEST_STREAM])
            .await?
        {
            Resp::Int(n) => Ok(u64::try_from(n).unwrap_or(0)),
            other => bail!("XLEN answered {other:?}"),
        }
    }

    async fn persisted(&self) -> Result<i64> {
        let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM messages")
            .fetch_one(&self.postgres.pool())
            .await
            .context("counting messages")?;
        Ok(n)
    }

    /// Waits until the ingest stream is empty; false if it did not empty in time.
    async fn wait_backlog_empty(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if matches!(self.backlog().await, Ok(0)) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        false
    }
}

/// `count` ceiling server processes, with extra environment (its options).
async fn start_ceilings(
    bins: &Bins,
    dir: &Path,
    count: usize,
    extra: &[(&str, &str)],
) -> Result<Vec<Gateway>> {
    let mut env = vec![
        ("HOST".to_owned(), "127.0.0.1".to_owned()),
        ("PORT".to_owned(), "0".to_owned()),
    ];
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let mut servers = Vec::new();
    for i in 0..count {
        let log = dir.join(format!("ceiling-{i}-{}.log", extra.len()));
        servers.push(Gateway::spawn(&bins.ceiling, &env, &log).await?);
    }
    Ok(servers)
}

fn ceiling_target(servers: &[Gateway]) -> Target {
    Target::Ceiling {
        servers: servers
            .iter()
            .map(Gateway::addr)
            .collect::<Vec<SocketAddr>>(),
    }
}

/// One step: `rate` msg/s for `secs`, a drain of 1 s to `drain_max` s.
pub(crate) async fn step(
    run: &mut LoadRun,
    rate: f64,
    secs: f64,
    drain_max: f64,
) -> Result<StepReport> {
    run.step(
        rate,
        Duration::from_secs_f64(secs),
        Duration::from_secs(1),
        Duration::from_secs_f64(drain_max),
    )
    .await
}

/// How much a ramp raises the rate after a passing step.
pub const RAMP_FACTOR: f64 = 1.4;

/// Finds the highest rate whose step passes ([`StepReport::passes_by`] with
/// `bound`): multiplies the rate by [`RAMP_FACTOR`] while steps pass, then bisects
/// between the best pass and the first failure. At most `max_steps` steps.
///
/// The first failing step is run once more before it bounds the search: on 2
/// shared cores one bad step (another process's burst, a cold path) would
/// otherwise cap chatter or the ceiling below what it sustains, and the ratio
/// between them would measure that accident.
async fn ramp(
    run: &mut LoadRun,
    start: f64,
    max_steps: usize,
    secs: f64,
    bound: Bound,
    label: &str,
) -> Result<Vec<StepReport>> {
    let factor = RAMP_FACTOR;
    let mut steps = Vec::new();
    let (mut best, mut fail): (Option<f64>, Option<f64>) = (None, None);
    let mut rate = start;
    let mut retried = false;
    let mut steps_left = max_steps;
    while steps_left > 0 {
        steps_left -= 1;
        let report = step(run, rate, secs, 15.0).await?;
        let passed = report.passes_by(bound, P99_BOUND_MS);
        eprintln!(
            "  {label}: {rate:>8.0} msg/s → {:>9.0} deliveries/s, p99 {:>8.2} ms (own echo {:.2}, others {:.2}), missing {}, errors {} {}",
            report.deliveries_per_s,
            report.latency.p99_ms,
            report.latency_own.p99_ms,
            report.latency_peers.p99_ms,
            report.missing_new,
            report.errors(),
            if passed { "pass" } else { "FAIL" }
        );
        steps.push(report);
        if !passed && !retried {
            retried = true;
            steps_left += 1;
            continue;
        }
        if passed {
            best = Some(rate);
        } else {
            fail = Some(fail.map_or(rate, |f: f64| f.min(rate)));
        }
        rate = match (best, fail) {
            (Some(b), None) => b * factor,
            (Some(b), Some(f)) if f / b > 1.08 => (b + f) / 2.0,
            (Some(_), Some(_)) => break,
            (None, Some(f)) if f > start / 8.0 => f / factor / factor,
            (None, _) => break,
        };
    }
    Ok(steps)
}

/// The step with the highest delivery rate among those that passed.
fn best_step(steps: &[StepReport], bound: Bound) -> Option<StepReport> {
    steps
        .iter()
        .filter(|s| s.passes_by(bound, P99_BOUND_MS))
        .max_by(|a, b| a.deliveries_per_s.total_cmp(&b.deliveries_per_s))
        .cloned()
}

// ------------------------------------------------------------------ idle

#[derive(Debug, Clone, Default, Serialize)]
pub struct IdleSide {
    pub requested: usize,
    pub connect: ConnectReport,
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
    pub per_conn_kib: f64,
    pub open_after_settle: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct IdleResult {
    pub target: usize,
    pub fd_limit: u64,
    pub chatter: IdleSide,
    /// The ceiling with 4 KiB read buffers.
    pub ceiling: Option<IdleSide>,
    /// The ceiling with tungstenite's default 128 KiB read buffers, as a gateway
    /// built on axum's `WebSocketUpgrade` defaults has.
    pub ceiling_default_buffers: Option<IdleSide>,
}

/// The open-file limit, and how many idle sockets one gateway process can hold
/// under it (the idle target, or what fits; fewer with `--quick`).
fn sockets_one_gateway_holds(bench: &Bench) -> (u64, usize) {
    let fd_limit = sys::nofile_limit();
    let fits = usize::try_from(fd_limit.saturating_sub(GATEWAY_FD_RESERVE)).unwrap_or(usize::MAX);
    let n = if bench.quick {
        2_000
    } else {
        IDLE_TARGET.min(fits)
    };
    (fd_limit, n)
}

/// Idle authenticated connections on one gateway: RSS per connection and the time
/// to connect them all. One process may hold ~19,900 sockets here, so the count is
/// what fits under the limit, not the 50,000 asked for.
pub async fn idle(bench: &Bench) -> Result<IdleResult> {
    let dir = bench.dir("idle")?;
    let (fd_limit, n) = sockets_one_gateway_holds(bench);
    eprintln!("idle: {n} connections on one gateway (fd limit {fd_limit})");

    let deployment = Deployment::start(&dir, &bench.bins, 1, false).await?;
    let pid = deployment.gateways[0].pid();
    let chatter = idle_side(bench, &deployment.target(), pid, n, &dir).await?;
    drop(deployment);

    let mut sides = Vec::new();
    for extra in [&[][..], &[("CEILING_READ_BUFFER_KIB", "128")][..]] {
        let ceilings = start_ceilings(&bench.bins, &dir, 1, extra).await?;
        let target = ceiling_target(&ceilings);
        sides.push(idle_side(bench, &target, ceilings[0].pid(), n, &dir).await?);
    }
    let default_buffers = sides.pop();
    Ok(IdleResult {
        target: IDLE_TARGET,
        fd_limit,
        chatter,
        ceiling: sides.pop(),
        ceiling_default_buffers: default_buffers,
    })
}

async fn idle_side(
    bench: &Bench,
    target: &Target,
    pid: u32,
    n: usize,
    dir: &Path,
) -> Result<IdleSide> {
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = sys::rss_kib(pid).context("reading the server's RSS")?;
    let mut options = bench.options(n, 0, dir);
    // Several processes, each far below the per-process socket limit, with many
    // handshakes in flight: the connect is a storm.
    options.agents = n.div_ceil(10_000).max(2);
    options.connect_concurrency = STORM_CONCURRENCY;
    let mut run = LoadRun::start(target, &options).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = sys::rss_kib(pid).context("reading the server's RSS")?;
    let status = run
        .step(0.0, Duration::ZERO, Duration::ZERO, Duration::ZERO)
        .await?;
    let connect = run.connect.clone();
    eprintln!(
        "  {} connected in {:.1}s; RSS {} → {} KiB",
        connect.ok, connect.elapsed_s, before, after
    );
    run.quit().await;
    Ok(IdleSide {
        requested: n,
        per_conn_kib: after.saturating_sub(before) as f64 / connect.ok.max(1) as f64,
        connect,
        rss_before_kib: before,
        rss_after_kib: after,
        open_after_settle: status.open_conns,
    })
}

// ------------------------------------------------------------------ storm

/// The drain window the storm scenario gives its gateways (`DRAIN_WINDOW_SECS`):
/// short, so the whole pod's clients come back at nearly the same moment.
pub const STORM_DRAIN_WINDOW_SECS: u64 = 2;
/// Attempts per closed socket in the storm's reconnect mode.
const STORM_RECONNECT_ATTEMPTS: u32 = 20;

#[derive(Debug, Clone, Default, Serialize)]
pub struct StormResult {
    pub connections: usize,
    pub connect: ConnectReport,
    pub drain_window_secs: u64,
    /// Sockets on the gateway that was drained (every other connection).
    pub drained: u64,
    /// The agents' sockets at the end (reconnects, failed attempts, closes).
    pub status: crate::plan::StatusStats,
    /// From SIGTERM to the first close…
    pub first_close_s: f64,
    /// …and to the last reconnect, when every socket was open again.
    pub all_open_s: f64,
    /// Reconnects over the span from the first close to the last reconnect.
    pub reconnects_per_s: f64,
    /// Every closed socket was open again on the other gateway before the deadline.
    pub complete: bool,
    /// From SIGTERM until the drained gateway exited (None: it had not, in time).
    pub exit_s: Option<f64>,
}

/// A connection storm after a drain: 2 gateways with half of the idle sockets
/// each (connected all at once, [`STORM_CONCURRENCY`] handshakes in flight per
/// agent); SIGTERM one, which closes its sockets (4007) over a short drain window,
/// and every closed socket reconnects at once to the other gateway. Measures the
/// time from SIGTERM until every socket is open again, and the reconnect rate.
pub async fn storm(bench: &Bench) -> Result<StormResult> {
    let dir = bench.dir("storm")?;
    // The survivor ends up holding every socket.
    let (_, n) = sockets_one_gateway_holds(bench);
    let window = STORM_DRAIN_WINDOW_SECS;
    eprintln!("storm: {n} idle sockets on 2 gateways, drain one (window {window}s)");
    let mut deployment = Deployment::start_with(
        &dir,
        &bench.bins,
        2,
        false,
        &[("DRAIN_WINDOW_SECS", window.to_string())],
    )
    .await?;
    let mut options = bench.options(n, 0, &dir);
    options.agents = n.div_ceil(10_000).max(2);
    options.connect_concurrency = STORM_CONCURRENCY;
    options.reconnect_attempts = STORM_RECONNECT_ATTEMPTS;
    let mut run = LoadRun::start(&deployment.target(), &options).await?;
    let connect = run.connect.clone();
    eprintln!(
        "  {} connected in {:.1}s ({:.0}/s) {:?}",
        connect.ok,
        connect.elapsed_s,
        connect.ok as f64 / connect.elapsed_s.max(1e-3),
        connect.errors
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = run.status().await?;
    let closes_before: u64 = before.closes.values().sum();
    // Connection i is on gateway i mod 2: the odd ones are drained.
    let drained = (n / 2) as u64;

    let sigterm_us = crate::plan::unix_us();
    let sigterm_at = Instant::now();
    deployment.gateways[1]
        .sigterm()
        .context("SIGTERM to the gateway")?;
    let deadline = sigterm_at + Duration::from_secs(window + 90);
    let mut exit_s = None;
    let (status, complete) = loop {
        let status = run.status().await?;
        let closed = status
            .closes
            .values()
            .sum::<u64>()
            .saturating_sub(closes_before);
        if exit_s.is_none() && !deployment.gateways[1].is_running() {
            exit_s = Some(sigterm_at.elapsed().as_secs_f64());
        }
        // The drained gateway exits only once all its sockets are closed, so its
        // exit also ends the wait when some sockets never connected.
        let done = (closed >= drained || exit_s.is_some())
            && closed > 0
            && status.reconnects >= closed
            && status.open >= before.open;
        if done || Instant::now() >= deadline {
            break (status, done);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    if exit_s.is_none()
        && deployment.gateways[1]
            .wait_exit(Duration::from_secs(window + 15))
            .await
            .is_some()
    {
        exit_s = Some(sigterm_at.elapsed().as_secs_f64());
    }
    run.quit().await;
    let secs_from = |us: u64| us.saturating_sub(sigterm_us) as f64 / 1e6;
    let span = status
        .last_reconnect_us
        .saturating_sub(status.first_close_us) as f64
        / 1e6;
    let result = StormResult {
        connections: n,
        connect,
        drain_window_secs: window,
        drained,
        first_close_s: secs_from(status.first_close_us),
        all_open_s: secs_from(status.last_reconnect_us),
        reconnects_per_s: if span > 0.0 {
            status.reconnects as f64 / span
        } else {
            0.0
        },
        complete,
        exit_s,
        status,
    };
    eprintln!(
        "  SIGTERM → first close {:.2}s, every socket open again {:.2}s ({} reconnects, {:.0}/s, {} failed attempts {:?}); complete: {}",
        result.first_close_s,
        result.all_open_s,
        result.status.reconnects,
        result.reconnects_per_s,
        result.status.reconnect_failed,
        result.status.reconnect_errors,
        result.complete
    );
    Ok(result)
}

// ------------------------------------------------------------------ fan-out and 1:1

#[derive(Debug, Clone, Default, Serialize)]
pub struct RampSide {
    pub connect: ConnectReport,
    pub rooms: RoomsReport,
    /// The fixed moderate rate step (fan-out only).
    pub fixed: Option<StepReport>,
    pub steps: Vec<StepReport>,
    /// The bound the ramp climbed by.
    pub bound: Bound,
    /// The passing step with the most deliveries/s (p99 of every delivery)…
    pub best: Option<StepReport>,
    /// …and the same leaving out the sender's own echo.
    pub best_peers: Option<StepReport>,
    /// After a final drain: deliveries still missing over the whole run.
    pub final_missing: u64,
    pub final_surplus: u64,
    pub closes: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct PersistUnderLoad {
    /// Messages per second sent during the step.
    pub offered_per_s: f64,
    /// Rows the worker inserted per second during the step.
    pub rows_per_s: f64,
    pub max_backlog: u64,
    pub lag_count: i64,
    pub lag_p50_s: f64,
    pub lag_p99_s: f64,
    pub lag_max_s: f64,
    pub caught_up: bool,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct FanoutResult {
    pub connections: usize,
    pub room_size: usize,
    /// Messages per second of the fixed step.
    pub fixed_rate: f64,
    pub chatter: RampSide,
    pub ceiling: Option<RampSide>,
    pub persist: Option<PersistUnderLoad>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct PairsResult {
    pub connections: usize,
    pub chatter: RampSide,
    pub ceiling: Option<RampSide>,
    /// `redis-benchmark` PUBLISH requests/s on the scenario's Redis, by setting.
    pub redis_publish: Vec<(String, f64)>,
}

/// 2 gateways, 10,000 connections, rooms of 100: a fixed moderate rate (with the
/// worker's rows/s and lag measured meanwhile), then a rising rate.
pub async fn fanout(bench: &Bench) -> Result<FanoutResult> {
    let dir = bench.dir("fanout")?;
    let (n, size) = if bench.quick {
        (1_000, 100)
    } else {
        (10_000, 100)
    };
    // An eighth of the 200,000 deliveries/s target.
    let fixed_rate = if bench.quick { 150.0 } else { 250.0 };
    let start_rate = if bench.quick { 200.0 } else { 500.0 };
    eprintln!("fan-out: {n} connections, rooms of {size}, 2 gateways");
    let mut result = FanoutResult {
        connections: n,
        room_size: size,
        fixed_rate,
        ..FanoutResult::default()
    };

    let deployment = Deployment::start(&dir, &bench.bins, 2, true).await?;
    let mut options = bench.options(n, size, &dir);
    options.agents = 2;
    let mut run = LoadRun::start(&deployment.target(), &options).await?;
    report_setup("chatter", &run);
    warm_up(&mut run, bench).await?;

    fixed_warm_up(&mut run, fixed_rate, bench).await?;
    // Fixed rate, while watching the worker.
    let before_rows = deployment.persisted().await?;
    let window_start = time::OffsetDateTime::now_utc();
    let watch = BacklogWatch::start(&deployment);
    let fixed = step(&mut run, fixed_rate, bench.step_secs() * 2.0, 15.0).await?;
    let window_end = time::OffsetDateTime::now_utc();
    let max_backlog = watch.stop().await;
    let after_rows = deployment.persisted().await?;
    let caught_up = deployment.wait_backlog_empty(Duration::from_secs(60)).await;
    let (lag_count, p50, p99, max) = lag(&deployment, window_start, window_end).await?;
    let window = (window_end - window_start).as_seconds_f64().max(1e-3);
    result.persist = Some(PersistUnderLoad {
        offered_per_s: fixed.messages_per_s,
        rows_per_s: (after_rows - before_rows) as f64 / window,
        max_backlog,
        lag_count,
        lag_p50_s: p50,
        lag_p99_s: p99,
        lag_max_s: max,
        caught_up,
    });
    eprintln!(
        "  fixed {fixed_rate} msg/s: {:.0} deliveries/s, p99 {:.2} ms; worker lag p99 {:.3}s",
        fixed.deliveries_per_s, fixed.latency.p99_ms, p99
    );

    let steps = ramp(
        &mut run,
        start_rate,
        9,
        bench.step_secs(),
        Bound::All,
        "chatter",
    )
    .await?;
    result.chatter = finish_side(run, Some(fixed), steps, Bound::All).await?;
    drop(deployment);

    // The ceiling: same load, members of a room on one server.
    let ceilings = start_ceilings(&bench.bins, &dir, 2, &[]).await?;
    let mut options = bench.options(n, size, &dir);
    options.agents = 2;
    options.placement = Placement::RoomTogether;
    let mut run = LoadRun::start(&ceiling_target(&ceilings), &options).await?;
    report_setup("ceiling", &run);
    warm_up(&mut run, bench).await?;
    fixed_warm_up(&mut run, fixed_rate, bench).await?;
    let fixed = step(&mut run, fixed_rate, bench.step_secs() * 2.0, 15.0).await?;
    let start = result
        .chatter
        .best
        .as_ref()
        .map_or(start_rate, |b| b.rate.max(start_rate));
    let steps = ramp(&mut run, start, 8, bench.step_secs(), Bound::All, "ceiling").await?;
    result.ceiling = Some(finish_side(run, Some(fixed), steps, Bound::All).await?);
    drop(ceilings);
    Ok(result)
}

/// 20,000 connections in pairs, the two members of a pair on different
/// gateways; both send. Then `redis-benchmark` PUBLISH on the same Redis.
pub async fn one_to_one(bench: &Bench) -> Result<PairsResult> {
    let dir = bench.dir("one-to-one")?;
    let n = if bench.quick { 2_000 } else { 20_000 };
    let start_rate = if bench.quick { 500.0 } else { 2_000.0 };
    eprintln!("1:1: {n} connections in pairs over 2 gateways");
    let mut result = PairsResult {
        connections: n,
        ..PairsResult::default()
    };

    let deployment = Deployment::start(&dir, &bench.bins, 2, true).await?;
    let mut options = bench.options(n, 2, &dir);
    options.agents = 2;
    options.agent_max_secs = 3600;
    let mut run = LoadRun::start(&deployment.target(), &options).await?;
    report_setup("chatter", &run);
    warm_up(&mut run, bench).await?;
    // The ramp climbs by the deliveries to the peer, so that the sender's own echo
    // (see RESULTS.md) does not end it early; both bests are reported.
    let steps = ramp(
        &mut run,
        start_rate,
        10,
        bench.step_secs(),
        Bound::Peers,
        "chatter",
    )
    .await?;
    result.chatter = finish_side(run, None, steps, Bound::Peers).await?;
    deployment.wait_backlog_empty(Duration::from_secs(30)).await;
    result.redis_publish = redis_benchmark(deployment.redis.one()?).await;
    drop(deployment);

    let ceilings = start_ceilings(&bench.bins, &dir, 2, &[]).await?;
    let mut options = bench.options(n, 2, &dir);
    options.agents = 2;
    options.placement = Placement::RoomTogether;
    let mut run = LoadRun::start(&ceiling_target(&ceilings), &options).await?;
    report_setup("ceiling", &run);
    warm_up(&mut run, bench).await?;
    let chatter_best = result
        .chatter
        .best_peers
        .as_ref()
        .map_or(start_rate, |b| b.rate.max(start_rate));
    let steps = ramp(
        &mut run,
        chatter_best,
        8,
        bench.step_secs(),
        Bound::Peers,
        "ceiling",
    )
    .await?;
    result.ceiling = Some(finish_side(run, None, steps, Bound::Peers).await?);
    drop(ceilings);

    Ok(result)
}

pub(crate) fn report_setup(label: &str, run: &LoadRun) {
    let (c, r) = (&run.connect, &run.rooms_report);
    eprintln!(
        "  {label}: {}/{} connected in {:.1}s {:?}; {}/{} rooms in {:.1}s {:?}; {} members told ({} missing) in {:.1}s",
        c.ok,
        c.requested,
        c.elapsed_s,
        c.errors,
        r.created,
        r.rooms,
        r.create_s,
        r.errors,
        r.members_ready,
        r.members_missing,
        r.ready_s
    );
}

/// A short unreported step so every room has taken its first message (chatter's
/// first send into a room reads the seq floor from Postgres). Each agent walks all
/// rooms its senders are in, so it takes about `rooms × agents` messages; they go
/// at no more than 2,000 msg/s, far below any limit measured here.
pub(crate) async fn warm_up(run: &mut LoadRun, bench: &Bench) -> Result<()> {
    let needed = (run.room_count() * run.agent_count()) as f64 * 1.1;
    let min_secs = if bench.quick { 2.0 } else { 5.0 };
    let rate = (needed / min_secs).clamp(20.0, 2_000.0);
    let secs = (needed / rate).max(min_secs);
    let warm = step(run, rate, secs, 15.0).await?;
    eprintln!(
        "  warm-up {rate:.0} msg/s for {secs:.1}s: p99 {:.2} ms, missing {}",
        warm.latency.p99_ms, warm.missing_new
    );
    Ok(())
}

/// Several seconds (not reported) at the fixed step's own rate right before it, so
/// the measured step starts warm rather than straight after thousands of connects
/// and the room set-up (issue 12: a cold start gave a p99 of 105 ms there).
pub(crate) async fn fixed_warm_up(run: &mut LoadRun, rate: f64, bench: &Bench) -> Result<()> {
    let secs = if bench.quick { 2.0 } else { 6.0 };
    let warm = step(run, rate, secs, 15.0).await?;
    eprintln!(
        "  warm-up at the fixed {rate:.0} msg/s for {secs:.0}s: p99 {:.2} ms, missing {}",
        warm.latency.p99_ms, warm.missing_new
    );
    Ok(())
}

pub(crate) async fn finish_side(
    mut run: LoadRun,
    fixed: Option<StepReport>,
    steps: Vec<StepReport>,
    bound: Bound,
) -> Result<RampSide> {
    // An empty step: a last drain, then the whole run's loss count.
    let last = run
        .step(
            0.0,
            Duration::ZERO,
            Duration::from_secs(2),
            Duration::from_secs(15),
        )
        .await?;
    let side = RampSide {
        connect: run.connect.clone(),
        rooms: run.rooms_report.clone(),
        best: best_step(&steps, Bound::All),
        best_peers: best_step(&steps, Bound::Peers),
        bound,
        fixed,
        steps,
        final_missing: last.missing_total,
        final_surplus: last.surplus_total,
        closes: last.closes,
    };
    run.quit().await;
    Ok(side)
}

/// Samples the ingest backlog in the background; `stop` returns its maximum.
struct BacklogWatch {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<u64>,
}

impl BacklogWatch {
    fn start(deployment: &Deployment) -> BacklogWatch {
        // On a cluster there is no one stream to watch: the maximum stays 0.
        let url_port = deployment.redis.one().map(RedisServer::port).ok();
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let mut max = 0;
            let Some(url_port) = url_port else {
                return max;
            };
            for _ in 0..36_000 {
                if let Ok(n) = xlen_on(url_port).await {
                    max = max.max(n);
                }
                tokio::select! {
                    _ = &mut stopped => break,
                    () = tokio::time::sleep(Duration::from_millis(250)) => {}
                }
            }
            max
        });
        BacklogWatch { stop, task }
    }

    async fn stop(self) -> u64 {
        let _ = self.stop.send(());
        self.task.await.unwrap_or(0)
    }
}

/// `XLEN chatter:ingest` on a fresh connection to the Redis on `port`.
async fn xlen_on(port: u16) -> Result<u64> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let key = chatter_shared::keyspace::INGEST_STREAM;
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let request = format!("*2\r\n$4\r\nXLEN\r\n${}\r\n{key}\r\n", key.len());
    stream.write_all(request.as_bytes()).await?;
    let mut line = String::new();
    tokio::time::timeout(
        Duration::from_secs(2),
        tokio::io::BufReader::new(stream).read_line(&mut line),
    )
    .await??;
    line.trim()
        .strip_prefix(':')
        .and_then(|n| n.parse().ok())
        .context("unexpected XLEN reply")
}

/// Persistence lag (`persisted_at - created_at`) of messages created in a window:
/// count, p50, p99, max in seconds.
async fn lag(
    deployment: &Deployment,
    from: time::OffsetDateTime,
    to: time::OffsetDateTime,
) -> Result<(i64, f64, f64, f64)> {
    let row: (i64, Option<f64>, Option<f64>, Option<f64>) = sqlx::query_as(
        "SELECT count(*), \
           percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM persisted_at - created_at)::float8), \
           percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM persisted_at - created_at)::float8), \
           max(extract(epoch FROM persisted_at - created_at)::float8) \
         FROM messages WHERE created_at >= $1 AND created_at < $2",
    )
    .bind(from)
    .bind(to)
    .fetch_one(&deployment.postgres.pool())
    .await
    .context("reading persistence lag")?;
    Ok((
        row.0,
        row.1.unwrap_or(0.0),
        row.2.unwrap_or(0.0),
        row.3.unwrap_or(0.0),
    ))
}

/// `redis-benchmark` PUBLISH: 50 clients, without and with pipelining.
async fn redis_benchmark(redis: &RedisServer) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    for (label, pipeline, requests) in [
        ("50 clients, no pipelining", "1", "200000"),
        ("50 clients, pipeline 16", "16", "1000000"),
    ] {
        let port = redis.port().to_string();
        let run = tokio::process::Command::new("redis-benchmark")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-c",
                "50",
                "-n",
                requests,
                "-P",
                pipeline,
                "--csv",
                "PUBLISH",
                "bench:channel",
                "a-64-byte-message-body-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
            ])
            .kill_on_drop(true)
            .output();
        match tokio::time::timeout(Duration::from_secs(120), run).await {
            Ok(Ok(output)) if output.status.success() => {
                let text = String::from_utf8_lossy(&output.stdout);
                let rps = text.lines().rev().find_map(|line| {
                    let mut fields = line.split(',');
                    fields.next()?;
                    fields.next()?.trim_matches('"').parse::<f64>().ok()
                });
                match rps {
                    Some(rps) => out.push((label.to_owned(), rps)),
                    None => eprintln!("redis-benchmark printed no rate: {text}"),
                }
            }
            other => eprintln!("redis-benchmark failed: {other:?}"),
        }
    }
    out
}

// ------------------------------------------------------------------ persist

#[derive(Debug, Clone, Default, Serialize)]
pub struct DrainResult {
    pub fill: StepReport,
    /// Entries in the ingest stream when the worker started.
    pub backlog: u64,
    pub rows: i64,
    /// From the first to the last batch (`persisted_at` of the rows).
    pub seconds: f64,
    pub per_s: f64,
    /// Wall time from starting the worker until the stream was empty.
    pub wall_s: f64,
    pub complete: bool,
    pub cpu: BTreeMap<String, f64>,
    /// The same rows bulk-loaded with one `COPY … FROM STDIN` in the same Postgres.
    pub copy: Option<CopyCeiling>,
    /// The same drain with the baseline binaries (`--baseline-bins`), run
    /// first, in the same run.
    pub before: Option<Box<DrainResult>>,
}

/// A bulk `COPY` of the rows the worker stored: the most Postgres takes in here.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CopyCeiling {
    pub rows: u64,
    pub seconds: f64,
    pub per_s: f64,
}

/// Worker throughput: fill the ingest stream with the worker stopped, then start
/// one and time how fast it empties it into Postgres. With `--baseline-bins`
/// the baseline's worker drains a deployment of its own first, filled the same
/// way, so before and after come from the same run.
pub async fn persist(bench: &Bench) -> Result<DrainResult> {
    let before = match &bench.baseline {
        Some(baseline) => Some(Box::new(drain(bench, baseline, "before").await?)),
        None => None,
    };
    let mut result = drain(bench, &bench.bins, "chatter").await?;
    if let Some(before) = &before {
        let cores = |d: &DrainResult, name: &str| d.cpu.get(name).copied().unwrap_or(0.0);
        eprintln!(
            "  before → after: {:.0} → {:.0} rows/s ({:.2}×); cores: worker {:.2} → {:.2}, postgres {:.2} → {:.2}, redis {:.2} → {:.2}",
            before.per_s,
            result.per_s,
            if before.per_s > 0.0 {
                result.per_s / before.per_s
            } else {
                0.0
            },
            cores(before, "chatter-worker"),
            cores(&result, "chatter-worker"),
            cores(before, "postgres"),
            cores(&result, "postgres"),
            cores(before, "redis-server"),
            cores(&result, "redis-server"),
        );
    }
    result.before = before;
    Ok(result)
}

/// One drain of [`persist`] with `bins`' gateways and worker.
async fn drain(bench: &Bench, bins: &Bins, label: &str) -> Result<DrainResult> {
    let dir = bench.dir("persist")?;
    let n = if bench.quick { 400 } else { 2_000 };
    let (rate, secs) = if bench.quick {
        (2_000.0, 3.0)
    } else {
        (10_000.0, 15.0)
    };
    eprintln!(
        "persist ({label}): fill the stream at {rate} msg/s for {secs}s with no worker, then drain"
    );
    let mut deployment = Deployment::start(&dir, bins, 2, false).await?;
    let mut options = bench.options(n, 2, &dir);
    options.agents = 2;
    let mut run = LoadRun::start(&deployment.target(), &options).await?;
    report_setup(label, &run);
    warm_up(&mut run, bench).await?;
    let fill_from = time::OffsetDateTime::now_utc();
    let fill = step(&mut run, rate, secs, 30.0).await?;
    run.quit().await;
    // Wait for the stream to stop growing (sends still queued when the step ended).
    let mut backlog = deployment.backlog().await?;
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = deployment.backlog().await?;
        if now == backlog {
            break;
        }
        backlog = now;
    }
    eprintln!(
        "  filled: {:.0} msg/s accepted, backlog {backlog}",
        fill.messages_per_s
    );

    let cpu = CpuSampler::start();
    let started = Instant::now();
    deployment.start_worker(&bins.worker).await?;
    let complete = deployment
        .wait_backlog_empty(Duration::from_secs(if bench.quick { 30 } else { 180 }))
        .await;
    let wall_s = started.elapsed().as_secs_f64();
    let cpu = cpu.finish();
    let (rows, first, last): (i64, Option<time::OffsetDateTime>, Option<time::OffsetDateTime>) =
        sqlx::query_as(
            "SELECT count(*), min(persisted_at), max(persisted_at) FROM messages WHERE created_at >= $1",
        )
        .bind(fill_from)
        .fetch_one(&deployment.postgres.pool())
        .await
        .context("reading the drain's rows")?;
    let seconds = match (first, last) {
        (Some(first), Some(last)) => (last - first).as_seconds_f64(),
        _ => 0.0,
    };
    deployment.stop_worker().await;
    let per_s = if seconds > 0.0 {
        rows as f64 / seconds
    } else {
        0.0
    };
    eprintln!("  drained {rows} rows in {seconds:.2}s ({per_s:.0}/s), wall {wall_s:.1}s");
    let copy = match copy_ceiling(&deployment, fill_from).await {
        Ok(copy) => Some(copy),
        Err(error) => {
            eprintln!("  the COPY ceiling failed: {error:#}");
            None
        }
    };
    Ok(DrainResult {
        fill,
        backlog,
        rows,
        seconds,
        per_s,
        wall_s,
        complete,
        cpu,
        copy,
        before: None,
    })
}

/// The rows created since `from` (what the worker just stored), bulk-loaded again
/// with one `COPY … FROM STDIN` into a fresh table `LIKE messages INCLUDING ALL`
/// (same columns, indexes and constraints) in the same Postgres. Only the `COPY`
/// is timed: the rows are read out into memory first.
async fn copy_ceiling(deployment: &Deployment, from: time::OffsetDateTime) -> Result<CopyCeiling> {
    use futures::TryStreamExt;
    let mut conn = deployment
        .postgres
        .pool()
        .acquire()
        .await
        .context("connecting to Postgres")?;
    for sql in [
        "DROP TABLE IF EXISTS bench_copy_rows, bench_copy",
        "CREATE UNLOGGED TABLE bench_copy_rows (LIKE messages)",
        "CREATE TABLE bench_copy (LIKE messages INCLUDING ALL)",
    ] {
        sqlx::query(sql)
            .execute(&mut *conn)
            .await
            .with_context(|| format!("running {sql}"))?;
    }
    sqlx::query("INSERT INTO bench_copy_rows SELECT * FROM messages WHERE created_at >= $1")
        .bind(from)
        .execute(&mut *conn)
        .await
        .context("selecting the rows to copy")?;
    let data: Vec<u8> = conn
        .copy_out_raw("COPY bench_copy_rows TO STDOUT")
        .await
        .context("COPY … TO STDOUT")?
        .map_ok(|chunk| chunk.to_vec())
        .try_concat()
        .await
        .context("reading the rows out")?;
    let started = Instant::now();
    let mut copy = conn
        .copy_in_raw("COPY bench_copy FROM STDIN")
        .await
        .context("COPY … FROM STDIN")?;
    copy.send(data).await.context("sending the rows")?;
    let rows = copy.finish().await.context("finishing the COPY")?;
    let seconds = started.elapsed().as_secs_f64();
    sqlx::query("DROP TABLE bench_copy_rows, bench_copy")
        .execute(&mut *conn)
        .await
        .context("dropping the copies")?;
    let per_s = rows as f64 / seconds.max(1e-6);
    eprintln!("  COPY of the same {rows} rows: {seconds:.2}s ({per_s:.0}/s)");
    Ok(CopyCeiling {
        rows,
        seconds,
        per_s,
    })
}

// ------------------------------------------------------------------ by hand

/// Starts a deployment (Redis, Postgres, `gateways` gateways, a worker) and keeps
/// it up until Ctrl-C, printing how to point `chatter-loadgen` at it.
pub async fn deploy(bench: &Bench, gateways: usize) -> Result<()> {
    let dir = bench.dir("deploy")?;
    let deployment = Deployment::start(&dir, &bench.bins, gateways.max(1), true).await?;
    let flags: Vec<String> = deployment
        .gateways
        .iter()
        .map(|g| format!("--gateway {}", g.addr()))
        .collect();
    println!(
        "chatter is up: redis {} · postgres {} · logs in {}",
        deployment.redis.url(),
        deployment.postgres.url(),
        dir.display()
    );
    println!(
        "JWT_SECRET={} {} run {} --connections 2000 --room-size 2 --rate 1000 --duration 10",
        deployment.jwt_secret,
        bench.bins.loadgen.display(),
        flags.join(" ")
    );
    println!("Ctrl-C stops it.");
    let _ = tokio::signal::ctrl_c().await;
    Ok(())
}

// ------------------------------------------------------------------ results

#[derive(Debug, Clone, Default, Serialize)]
pub struct Results {
    pub idle: Option<IdleResult>,
    pub content_policy: Option<PolicyResult>,
    pub fanout: Option<FanoutResult>,
    pub one_to_one: Option<PairsResult>,
    pub persist: Option<DrainResult>,
    pub storm: Option<StormResult>,
    pub scaling: Option<crate::scaling::ScalingResult>,
    /// Scenarios that failed, with the error.
    pub failures: Vec<(String, String)>,
    pub elapsed_s: f64,
}

// ------------------------------------------------------------------ content policy

/// One fixed-rate step with the content policy off, and the same with it on
/// (and with the baseline binaries, when given).
#[derive(Debug, Clone, Serialize)]
pub struct PolicyStep {
    pub rate: f64,
    pub off: StepReport,
    pub on: StepReport,
    pub before: Option<StepReport>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct PolicyResult {
    pub connections: usize,
    /// Entries of the block list the "on" deployment reads.
    pub blocklist_entries: usize,
    /// The block list's check alone, in this process: ns per load message
    /// (64 bytes) and per `MAX_MESSAGE_CHARS` (4,000-character) message.
    pub check_ns_short: f64,
    pub check_ns_long: f64,
    pub steps: Vec<PolicyStep>,
}

/// The send path's cost of a content policy: the same 1:1 load at the same
/// fixed rates against a deployment without a policy (the baseline) and one
/// with a block list of 1,000 words and 20 regular expressions (none of which
/// the load's messages hit, so every message is checked and delivered).
pub async fn content_policy(bench: &Bench) -> Result<PolicyResult> {
    let dir = bench.dir("content-policy")?;
    let n = if bench.quick { 1_000 } else { 4_000 };
    let rates: &[f64] = if bench.quick {
        &[300.0, 600.0]
    } else {
        &[1_000.0, 2_000.0, 4_000.0]
    };
    let list = dir.join("blocklist.txt");
    let mut text = String::from("# chatter-bench: words no load message contains\n");
    for i in 0..1_000 {
        text.push_str(&format!("forbiddenword{i}\n"));
    }
    for i in 0..20 {
        text.push_str(&format!("/bad[o0]pattern{i}\\d+/\n"));
    }
    std::fs::write(&list, &text).context("writing the block list")?;
    let (check_ns_short, check_ns_long) = time_blocklist(&text)?;
    eprintln!(
        "  block list check alone: {check_ns_short:.0} ns per 64-byte message, {check_ns_long:.0} ns per 4,000 characters"
    );
    eprintln!("content policy: {n} connections in pairs, off then on");
    // (binaries, policy on, label); "before" first when baseline binaries are given.
    let mut sides_wanted: Vec<(&Bins, bool, &str)> = Vec::new();
    if let Some(baseline) = &bench.baseline {
        sides_wanted.push((baseline, false, "before"));
    }
    sides_wanted.push((&bench.bins, false, "policy off"));
    sides_wanted.push((&bench.bins, true, "policy on"));
    let mut sides = Vec::new();
    for (bins, on, label) in sides_wanted {
        let extra = if on {
            vec![("CONTENT_BLOCKLIST_FILE", list.display().to_string())]
        } else {
            Vec::new()
        };
        let deployment = Deployment::start_with(&dir, bins, 2, true, &extra).await?;
        let mut options = bench.options(n, 2, &dir);
        options.agents = 1;
        let mut run = LoadRun::start(&deployment.target(), &options).await?;
        report_setup(label, &run);
        warm_up(&mut run, bench).await?;
        let mut steps = Vec::new();
        for &rate in rates {
            let report = step(&mut run, rate, bench.step_secs(), 15.0).await?;
            eprintln!(
                "  {label}: {rate:>6.0} msg/s → ack p50 {:.2} ms p99 {:.2} ms, gateway cores {:.2}",
                report.ack_latency.p50_ms,
                report.ack_latency.p99_ms,
                gateway_cores(&report)
            );
            steps.push(report);
        }
        finish_side(run, None, Vec::new(), Bound::All).await?;
        drop(deployment);
        sides.push(steps);
    }
    let on = sides.pop().unwrap_or_default();
    let off = sides.pop().unwrap_or_default();
    let before = sides.pop();
    Ok(PolicyResult {
        connections: n,
        blocklist_entries: 1_020,
        check_ns_short,
        check_ns_long,
        steps: rates
            .iter()
            .zip(off.into_iter().zip(on))
            .enumerate()
            .map(|(i, (rate, (off, on)))| PolicyStep {
                rate: *rate,
                off,
                on,
                before: before.as_ref().and_then(|steps| steps.get(i).cloned()),
            })
            .collect(),
    })
}

/// The gateway's block-list matcher on messages shaped like the load's (none
/// matches): mean ns per check, for 64-byte and 4,000-character messages.
fn time_blocklist(text: &str) -> Result<(f64, f64)> {
    let (regex, _) = chatter_gateway::moderation::content::compile(text);
    let regex = regex.context("the block list compiles")?;
    let short: Vec<String> = (0..1_000u64)
        .map(|i| format!("1:{}:{i}:{}", 1_700_000_000_000_000 + i, "x".repeat(40)))
        .collect();
    let long = "plain words ".repeat(334);
    let time = |texts: &[&str], rounds: usize| {
        let started = Instant::now();
        let mut hits = 0usize;
        for i in 0..rounds {
            hits += usize::from(regex.is_match(texts[i % texts.len()]));
        }
        (started.elapsed().as_nanos() as f64 / rounds as f64, hits)
    };
    let short_refs: Vec<&str> = short.iter().map(String::as_str).collect();
    let (short_ns, short_hits) = time(&short_refs, 200_000);
    let (long_ns, long_hits) = time(&[&long[..4_000]], 2_000);
    if short_hits + long_hits > 0 {
        bail!("the benchmark's messages matched the block list");
    }
    Ok((short_ns, long_ns))
}

/// Cores the gateway processes used during a step's send window.
pub fn gateway_cores(report: &StepReport) -> f64 {
    report
        .cpu
        .iter()
        .filter(|(name, _)| name.contains("gateway"))
        .map(|(_, cores)| cores)
        .sum()
}
