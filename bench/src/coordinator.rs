//! The load generator's controller: plans connections, starts agent processes,
//! creates rooms, runs steps and adds up what the agents measured.
//!
//! ```text
//! LoadRun::start ── spawn agents ── Setup (connect) ── create rooms ── AwaitRooms
//!        └── step(rate, duration) ×n ── Step to every agent, same start instant ── merge
//! ```
//!
//! **Lost messages.** Sequence numbers are per room and gap-free, and every member
//! is connected before the first send, so after a drain every open member of a
//! room whose highest seq is `m` must have received `m` deliveries. Agents report,
//! per room, the deliveries received by members that are still open, how many
//! those are, and the highest seq anyone saw (in a delivery or a confirmation);
//! what is missing is `Σ rooms (m × open members − received)`. A socket the server
//! closed is counted as a close (an error of the step it happened in) rather than
//! as missing deliveries in every later step.

use crate::plan::{self, Command, ConnSpec, Event, Setup, StatusStats, StepCmd, StepStats};
use crate::stats::{self, Summary};
use crate::sys::CpuSampler;
use anyhow::{Context, Result, bail};
use futures::StreamExt;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin};
use tokio::sync::mpsc;

/// What the load is aimed at.
#[derive(Debug, Clone)]
pub enum Target {
    /// chatter gateways; tokens are HS256 JWTs signed with the gateways' secret,
    /// rooms are created with `POST /rooms`.
    Chatter {
        gateways: Vec<SocketAddr>,
        jwt_secret: String,
    },
    /// `chatter-ceiling` servers; the user and room go in the URL.
    Ceiling { servers: Vec<SocketAddr> },
}

impl Target {
    fn servers(&self) -> &[SocketAddr] {
        match self {
            Target::Chatter { gateways, .. } => gateways,
            Target::Ceiling { servers } => servers,
        }
    }
}

/// How connections are spread over the servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Connection `i` goes to server `i mod K`: a room's members sit on every
    /// server (chatter's cross-gateway path).
    Spread,
    /// Room `r`'s members all go to server `r mod K` (the ceiling has no bus
    /// between its processes).
    RoomTogether,
}

#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub connections: usize,
    /// Members per room; 0 = no rooms (idle connections).
    pub room_size: usize,
    pub placement: Placement,
    pub agents: usize,
    pub agent_threads: usize,
    /// Local addresses connections are bound to, round robin.
    pub source_ips: Vec<IpAddr>,
    /// Handshakes in flight per agent.
    pub connect_concurrency: usize,
    pub connect_timeout: Duration,
    pub message_bytes: usize,
    /// User ids are `<prefix><i>`.
    pub user_prefix: String,
    /// The `chatter-loadgen` binary (agents run as `chatter-loadgen agent`).
    pub loadgen_exe: PathBuf,
    /// Where agents' stderr goes (`agent-N.log`); inherited when `None`.
    pub log_dir: Option<PathBuf>,
    /// Concurrent `POST /rooms` requests.
    pub room_concurrency: usize,
    pub rooms_timeout: Duration,
    /// Budget of each agent process; it exits by itself after this.
    pub agent_max_secs: u64,
    /// Reconnect mode for idle connections (`room_size` 0): a socket the server
    /// closes is reopened at once on the next server, at most this many attempts
    /// per close. 0 = off.
    pub reconnect_attempts: u32,
}

impl LoadOptions {
    pub fn new(connections: usize, room_size: usize, loadgen_exe: PathBuf) -> LoadOptions {
        LoadOptions {
            connections,
            room_size,
            placement: Placement::Spread,
            agents: connections.div_ceil(MAX_CONNS_PER_AGENT).max(1),
            agent_threads: 1,
            source_ips: default_source_ips(),
            connect_concurrency: 64,
            connect_timeout: Duration::from_secs(30),
            message_bytes: 64,
            // Unique per run, so rooms on a ceiling that served an earlier run
            // (and users in an earlier run's database) are never reused.
            user_prefix: format!(
                "b{}x{}u",
                std::process::id(),
                plan::unix_us() % 1_000_000_000
            ),
            loadgen_exe,
            log_dir: None,
            room_concurrency: 16,
            rooms_timeout: Duration::from_secs(60),
            agent_max_secs: 1800,
            reconnect_attempts: 0,
        }
    }
}

/// One agent process keeps well under the ~19,900 sockets the open-file limit allows.
pub const MAX_CONNS_PER_AGENT: usize = 12_000;

/// 127.0.0.2 … 127.0.0.9: eight source addresses, ~28k ephemeral ports each.
pub fn default_source_ips() -> Vec<IpAddr> {
    (2..=9)
        .map(|last| IpAddr::from([127, 0, 0, last]))
        .collect()
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ConnectReport {
    pub requested: u64,
    pub ok: u64,
    pub failed: u64,
    pub errors: BTreeMap<String, u64>,
    pub elapsed_s: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct RoomsReport {
    pub rooms: u64,
    pub created: u64,
    pub failed: u64,
    pub errors: BTreeMap<String, u64>,
    pub create_s: f64,
    pub members_ready: u64,
    pub members_missing: u64,
    pub ready_s: f64,
}

/// One step, all agents added up.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StepReport {
    pub id: u32,
    /// Messages per second asked for (all senders together).
    pub rate: f64,
    pub duration_s: f64,
    pub scheduled: u64,
    pub sent: u64,
    pub send_failed: u64,
    pub confirmed: u64,
    pub refused: BTreeMap<String, u64>,
    /// Deliveries of this step's messages (received by the end of the drain).
    pub deliveries: u64,
    pub deliveries_per_s: f64,
    /// Confirmed messages per second.
    pub messages_per_s: f64,
    pub late_deliveries: u64,
    pub latency: Summary,
    /// Deliveries to the sending socket itself (its own echo)…
    pub latency_own: Summary,
    /// …and to every other member.
    pub latency_peers: Summary,
    /// Send → `MessageSentConfirmation`.
    pub ack_latency: Summary,
    /// Share of deliveries that took 40 ms or more (Linux's minimum delayed-ACK
    /// time, the signature of a write waiting for an acknowledgement).
    pub share_over_40ms: f64,
    pub send_lag: Summary,
    /// Deliveries still missing at the end of this step's drain, over the whole
    /// run so far (see the module docs).
    pub missing_total: u64,
    /// Change of `missing_total` during this step.
    pub missing_new: i64,
    /// Deliveries beyond `seq × members` (duplicates), whole run.
    pub surplus_total: u64,
    /// Sockets that ended, by close code, whole run…
    pub closes: BTreeMap<String, u64>,
    /// …and how many ended during this step.
    pub closes_new: u64,
    pub error_frames: u64,
    pub parse_errors: u64,
    pub out_of_order: u64,
    pub foreign_deliveries: u64,
    pub open_conns: u64,
    pub drain_s: f64,
    /// Cores used during the send window, per process name and for the whole
    /// machine (see [`CpuSampler`]).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub cpu: BTreeMap<String, f64>,
}

/// Which deliveries a latency bound applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub enum Bound {
    /// Every delivery (the figure the targets name).
    #[default]
    All,
    /// Deliveries to other members only, leaving out the sender's own echo.
    Peers,
}

impl StepReport {
    /// p99 of the chosen deliveries, in ms.
    pub fn p99_ms(&self, bound: Bound) -> f64 {
        match bound {
            Bound::All => self.latency.p99_ms,
            Bound::Peers => self.latency_peers.p99_ms,
        }
    }

    /// Whether the step met a latency bound on all deliveries with nothing lost
    /// and no errors.
    pub fn passes(&self, p99_ms: f64) -> bool {
        self.passes_by(Bound::All, p99_ms)
    }

    /// [`passes`](Self::passes) with the bound on the chosen deliveries.
    pub fn passes_by(&self, bound: Bound, p99_ms: f64) -> bool {
        self.latency.count > 0
            && self.p99_ms(bound) <= p99_ms
            && self.missing_new <= 0
            && self.closes_new == 0
            && self.send_failed == 0
            && self.refused.is_empty()
            && self.error_frames == 0
            && self.sent == self.scheduled
    }

    /// Errors of every kind in this step (refusals, failed sends, error frames,
    /// parse errors, out-of-order deliveries).
    pub fn errors(&self) -> u64 {
        self.send_failed
            + self.refused.values().sum::<u64>()
            + self.error_frames
            + self.parse_errors
            + self.out_of_order
            + self.foreign_deliveries
    }
}

struct AgentProc {
    child: Child,
    stdin: ChildStdin,
    events: mpsc::UnboundedReceiver<Event>,
    /// Connections of this agent that are in a room (they send).
    senders: u64,
}

impl AgentProc {
    async fn send(&mut self, command: &Command) -> Result<()> {
        let mut line = serde_json::to_vec(command).context("encoding a command")?;
        line.push(b'\n');
        self.stdin
            .write_all(&line)
            .await
            .context("writing to an agent")?;
        self.stdin.flush().await.context("writing to an agent")
    }

    async fn next(&mut self, timeout: Duration) -> Result<Event> {
        match tokio::time::timeout(timeout, self.events.recv()).await {
            Err(_) => bail!("an agent did not answer within {timeout:?}"),
            Ok(None) => {
                let status = self.child.try_wait().ok().flatten();
                bail!("an agent exited ({status:?}) without answering")
            }
            Ok(Some(Event::Fatal { message })) => bail!("an agent failed: {message}"),
            Ok(Some(event)) => Ok(event),
        }
    }
}

/// A running load: agents connected, rooms made.
pub struct LoadRun {
    agents: Vec<AgentProc>,
    /// Room id → number of members.
    rooms: HashMap<String, u64>,
    pub connect: ConnectReport,
    pub rooms_report: RoomsReport,
    next_step: u32,
    last_missing: u64,
    last_closes: u64,
}

/// One planned connection.
struct Planned {
    user: String,
    room: Option<usize>,
    server: usize,
    agent: usize,
    source: IpAddr,
    order: u64,
}

impl LoadRun {
    /// Spawns the agents, connects everything, makes the rooms and waits until
    /// every member was told about its room.
    pub async fn start(target: &Target, options: &LoadOptions) -> Result<LoadRun> {
        let servers = target.servers();
        if servers.is_empty() {
            bail!("no server to connect to");
        }
        if let Some(addr) = servers.iter().find(|a| !a.ip().is_loopback()) {
            bail!("{addr} is not a loopback address: load goes to this machine only");
        }
        if options.source_ips.iter().any(|ip| !ip.is_loopback()) {
            bail!("source addresses must be loopback addresses");
        }
        let agents_n = options.agents.max(1);
        let plan = plan_connections(options, servers.len(), agents_n);
        let rooms_n = if options.room_size == 0 {
            0
        } else {
            options.connections.div_ceil(options.room_size)
        };

        // Tokens (chatter) or plain user ids (ceiling) in the URL.
        let exp = time_now_secs() + 4 * 3600;
        let tokens: Vec<String> = match target {
            Target::Chatter { jwt_secret, .. } => plan
                .iter()
                .map(|p| mint_token(&p.user, exp, jwt_secret))
                .collect::<Result<_>>()?,
            Target::Ceiling { .. } => plan.iter().map(|p| p.user.clone()).collect(),
        };
        let mut per_agent: Vec<Vec<ConnSpec>> = vec![Vec::new(); agents_n];
        for (p, token) in plan.iter().zip(&tokens) {
            let url = |server: SocketAddr| match (target, p.room) {
                (Target::Ceiling { .. }, Some(room)) => {
                    format!(
                        "ws://{server}/ws?token={token}&room={}room-{room}",
                        options.user_prefix
                    )
                }
                _ => format!("ws://{server}/ws?token={token}"),
            };
            // Reconnect mode: the next server is where a closed socket goes.
            let fallback = (options.reconnect_attempts > 0 && p.room.is_none())
                .then(|| url(servers[(p.server + 1) % servers.len()]));
            per_agent[p.agent].push(ConnSpec {
                url: url(servers[p.server]),
                source: p.source,
                in_room: p.room.is_some(),
                order: p.order,
                fallback_url: fallback,
            });
        }

        let mut agents = Vec::with_capacity(agents_n);
        for (i, conns) in per_agent.iter().enumerate() {
            let senders = conns.iter().filter(|c| c.in_room).count() as u64;
            agents.push(spawn_agent(i, options, senders)?);
        }

        // Connect: every agent at once; the time is until the last one is done.
        let started = Instant::now();
        for (i, (agent, conns)) in agents.iter_mut().zip(per_agent).enumerate() {
            agent
                .send(&Command::Setup(Setup {
                    agent: i,
                    agents: agents_n,
                    conns,
                    connect_concurrency: options.connect_concurrency,
                    connect_timeout_ms: millis(options.connect_timeout),
                    message_bytes: options.message_bytes,
                    reconnect_attempts: options.reconnect_attempts,
                }))
                .await?;
        }
        let per_agent_conns = options.connections.div_ceil(agents_n);
        let connect_budget = Duration::from_secs(
            (options.connect_timeout.as_secs() * (per_agent_conns as u64 + 1)
                / options.connect_concurrency.max(1) as u64)
                .clamp(60, 900),
        );
        let mut connect = ConnectReport {
            requested: options.connections as u64,
            ..ConnectReport::default()
        };
        for agent in &mut agents {
            match agent.next(connect_budget).await? {
                Event::Connected {
                    ok, failed, errors, ..
                } => {
                    connect.ok += ok;
                    connect.failed += failed;
                    plan::merge_counts(&mut connect.errors, &errors);
                }
                other => bail!("expected `connected`, got {other:?}"),
            }
        }
        connect.elapsed_s = started.elapsed().as_secs_f64();

        let mut run = LoadRun {
            agents,
            rooms: HashMap::new(),
            connect,
            rooms_report: RoomsReport::default(),
            next_step: 0,
            last_missing: 0,
            last_closes: 0,
        };
        if rooms_n == 0 {
            return Ok(run);
        }

        // Rooms.
        let mut members: Vec<Vec<usize>> = vec![Vec::new(); rooms_n];
        for (i, p) in plan.iter().enumerate() {
            if let Some(room) = p.room {
                members[room].push(i);
            }
        }
        let started = Instant::now();
        let mut report = RoomsReport {
            rooms: rooms_n as u64,
            ..RoomsReport::default()
        };
        match target {
            Target::Ceiling { .. } => {
                for (r, m) in members.iter().enumerate() {
                    run.rooms
                        .insert(format!("{}room-{r}", options.user_prefix), m.len() as u64);
                }
                report.created = rooms_n as u64;
            }
            Target::Chatter { gateways, .. } => {
                let created = create_rooms(gateways, &members, &plan, &tokens, options).await?;
                for (result, m) in created.into_iter().zip(&members) {
                    match result {
                        Ok(id) => {
                            report.created += 1;
                            run.rooms.insert(id, m.len() as u64);
                        }
                        Err(kind) => {
                            report.failed += 1;
                            *report.errors.entry(kind).or_default() += 1;
                        }
                    }
                }
            }
        }
        report.create_s = started.elapsed().as_secs_f64();
        let started = Instant::now();
        let timeout_ms = millis(options.rooms_timeout);
        for agent in &mut run.agents {
            agent.send(&Command::AwaitRooms { timeout_ms }).await?;
        }
        for agent in &mut run.agents {
            match agent
                .next(options.rooms_timeout + Duration::from_secs(30))
                .await?
            {
                Event::Rooms { ready, missing, .. } => {
                    report.members_ready += ready;
                    report.members_missing += missing;
                }
                other => bail!("expected `rooms`, got {other:?}"),
            }
        }
        report.ready_s = started.elapsed().as_secs_f64();
        run.rooms_report = report;
        Ok(run)
    }

    /// Sends `rate` messages per second (all senders together) for `duration`,
    /// then drains (at least `drain_min`, at most `drain_max`) and reports.
    pub async fn step(
        &mut self,
        rate: f64,
        duration: Duration,
        drain_min: Duration,
        drain_max: Duration,
    ) -> Result<StepReport> {
        let id = self.next_step;
        self.next_step += 1;
        let senders: u64 = self.agents.iter().map(|a| a.senders).sum();
        // Far enough ahead that every agent has the command before the start.
        let start_unix_us = plan::unix_us() + 300_000;
        for agent in &mut self.agents {
            let share = if senders == 0 {
                0.0
            } else {
                rate * agent.senders as f64 / senders as f64
            };
            agent
                .send(&Command::Step(StepCmd {
                    id,
                    start_unix_us,
                    rate: share,
                    duration_ms: millis(duration),
                    drain_min_ms: millis(drain_min),
                    drain_max_ms: millis(drain_max),
                }))
                .await?;
        }
        // CPU use over the send window only (not the drain), sampled meanwhile.
        let cpu_window = (!duration.is_zero()).then(|| {
            tokio::spawn(async move {
                let wait = start_unix_us.saturating_sub(plan::unix_us());
                tokio::time::sleep(Duration::from_micros(wait)).await;
                let sampler = CpuSampler::start();
                tokio::time::sleep(duration).await;
                sampler.finish()
            })
        });
        let budget = duration + drain_max + Duration::from_secs(90);
        let mut parts = Vec::with_capacity(self.agents.len());
        for agent in &mut self.agents {
            match agent.next(budget).await? {
                Event::Step(stats) => parts.push(*stats),
                other => bail!("expected `step`, got {other:?}"),
            }
        }
        let mut report = self.merge(id, rate, duration, parts);
        if let Some(window) = cpu_window {
            report.cpu = window.await.unwrap_or_default();
        }
        Ok(report)
    }

    fn merge(
        &mut self,
        id: u32,
        rate: f64,
        duration: Duration,
        parts: Vec<StepStats>,
    ) -> StepReport {
        let mut latency = stats::new_histogram();
        let mut own = stats::new_histogram();
        let mut ack = stats::new_histogram();
        let mut send_lag = stats::new_histogram();
        let mut report = StepReport {
            id,
            rate,
            duration_s: duration.as_secs_f64(),
            ..StepReport::default()
        };
        let mut rooms: HashMap<String, (u64, u64, u64)> = HashMap::new();
        let mut drain_ms = 0;
        for part in parts {
            report.scheduled += part.scheduled;
            report.sent += part.sent;
            report.send_failed += part.send_failed;
            report.confirmed += part.confirmed;
            plan::merge_counts(&mut report.refused, &part.refused);
            report.deliveries += part.deliveries;
            report.late_deliveries += part.late_deliveries;
            stats::add_pairs(&mut latency, &part.latency_us);
            stats::add_pairs(&mut own, &part.own_latency_us);
            stats::add_pairs(&mut ack, &part.ack_latency_us);
            stats::add_pairs(&mut send_lag, &part.send_lag_us);
            plan::merge_counts(&mut report.closes, &part.closes);
            report.error_frames += part.error_frames;
            report.parse_errors += part.parse_errors;
            report.out_of_order += part.out_of_order;
            report.foreign_deliveries += part.foreign_deliveries;
            report.open_conns += part.open_conns;
            drain_ms = drain_ms.max(part.drain_ms);
            for room in part.rooms {
                let entry = rooms.entry(room.room).or_default();
                entry.0 += room.received;
                entry.1 += room.open_members;
                entry.2 = entry.2.max(room.max_seq);
            }
        }
        let (mut missing, mut surplus) = (0u64, 0u64);
        for room in self.rooms.keys() {
            let (received, open_members, max_seq) = rooms.get(room).copied().unwrap_or_default();
            let expected = max_seq * open_members;
            missing += expected.saturating_sub(received);
            surplus += received.saturating_sub(expected);
        }
        let closes: u64 = report.closes.values().sum();
        report.closes_new = closes.saturating_sub(self.last_closes);
        self.last_closes = closes;
        report.latency = stats::summarize(&latency);
        report.share_over_40ms = stats::share_at_least(&latency, 40_000);
        report.latency_own = stats::summarize(&own);
        report.ack_latency = stats::summarize(&ack);
        // Every delivery is either an own echo or a peer's; the histograms subtract.
        let _ = latency.subtract(&own);
        report.latency_peers = stats::summarize(&latency);
        report.send_lag = stats::summarize(&send_lag);
        report.missing_total = missing;
        report.missing_new = missing as i64 - self.last_missing as i64;
        self.last_missing = missing;
        report.surplus_total = surplus;
        report.drain_s = drain_ms as f64 / 1000.0;
        let secs = duration.as_secs_f64().max(1e-3);
        report.deliveries_per_s = report.deliveries as f64 / secs;
        report.messages_per_s = report.confirmed as f64 / secs;
        report
    }

    /// Every agent's sockets right now, added up (`first_close_us` is the
    /// earliest, `last_reconnect_us` the latest).
    pub async fn status(&mut self) -> Result<StatusStats> {
        for agent in &mut self.agents {
            agent.send(&Command::Status).await?;
        }
        let mut total = StatusStats::default();
        for agent in &mut self.agents {
            match agent.next(Duration::from_secs(30)).await? {
                Event::Status(s) => {
                    total.open += s.open;
                    total.reconnects += s.reconnects;
                    total.reconnect_failed += s.reconnect_failed;
                    plan::merge_counts(&mut total.reconnect_errors, &s.reconnect_errors);
                    plan::merge_counts(&mut total.closes, &s.closes);
                    if s.first_close_us > 0
                        && (total.first_close_us == 0 || s.first_close_us < total.first_close_us)
                    {
                        total.first_close_us = s.first_close_us;
                    }
                    total.last_reconnect_us = total.last_reconnect_us.max(s.last_reconnect_us);
                }
                other => bail!("expected `status`, got {other:?}"),
            }
        }
        Ok(total)
    }

    /// Closes every connection and waits (boundedly) for the agents to exit.
    pub async fn quit(mut self) {
        for agent in &mut self.agents {
            let _ = agent.send(&Command::Quit).await;
        }
        for agent in &mut self.agents {
            if tokio::time::timeout(Duration::from_secs(15), agent.child.wait())
                .await
                .is_err()
            {
                let _ = agent.child.kill().await;
            }
        }
    }

    /// How many agent processes hold the connections.
    pub fn agent_count(&self) -> usize {
        self.agents.len()
    }

    /// How many rooms the load has.
    pub fn room_count(&self) -> usize {
        self.rooms.len()
    }

    /// Process ids of the agents (for CPU and memory accounting).
    pub fn agent_pids(&self) -> Vec<u32> {
        self.agents.iter().filter_map(|a| a.child.id()).collect()
    }
}

fn plan_connections(options: &LoadOptions, servers: usize, agents: usize) -> Vec<Planned> {
    let n = options.connections;
    let size = options.room_size;
    let rooms = if size == 0 { 0 } else { n.div_ceil(size) };
    let ips = if options.source_ips.is_empty() {
        default_source_ips()
    } else {
        options.source_ips.clone()
    };
    (0..n)
        .map(|i| {
            let room = (size > 0).then(|| i / size);
            let server = match (options.placement, room) {
                (Placement::RoomTogether, Some(room)) => room % servers,
                _ => i % servers,
            };
            // Consecutive sends walk the rooms: member k of every room, then k+1.
            let order = match room {
                Some(room) => ((i % size) * rooms + room) as u64,
                None => i as u64,
            };
            Planned {
                user: format!("{}{i}", options.user_prefix),
                room,
                server,
                agent: i % agents,
                source: ips[i % ips.len()],
                order,
            }
        })
        .collect()
}

fn spawn_agent(index: usize, options: &LoadOptions, senders: u64) -> Result<AgentProc> {
    let stderr = match &options.log_dir {
        Some(dir) => {
            let file = std::fs::File::create(dir.join(format!("agent-{index}.log")))
                .context("creating an agent log")?;
            Stdio::from(file)
        }
        None => Stdio::inherit(),
    };
    let mut child = tokio::process::Command::new(&options.loadgen_exe)
        .args([
            "agent",
            "--threads",
            &options.agent_threads.to_string(),
            "--max-secs",
            &options.agent_max_secs.to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", options.loadgen_exe.display()))?;
    let stdin = child.stdin.take().context("agent stdin")?;
    let stdout = child.stdout.take().context("agent stdout")?;
    let (tx, events) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            match serde_json::from_str::<Event>(&line) {
                Ok(event) => {
                    if tx.send(event).is_err() {
                        return;
                    }
                }
                Err(_) => eprintln!("agent {index}: {line}"),
            }
        }
    });
    Ok(AgentProc {
        child,
        stdin,
        events,
        senders,
    })
}

/// `POST /rooms` for every room, by its first member, naming the others. Returns
/// the room id or an error kind per room, in order.
async fn create_rooms(
    gateways: &[SocketAddr],
    members: &[Vec<usize>],
    plan: &[Planned],
    tokens: &[String],
    options: &LoadOptions,
) -> Result<Vec<Result<String, String>>> {
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .context("building the HTTP client")?;
    let requests = members.iter().enumerate().map(|(r, m)| {
        let http = http.clone();
        let gateway = gateways[r % gateways.len()];
        async move {
            let Some((&creator, others)) = m.split_first() else {
                return Err("empty room".to_owned());
            };
            let others: Vec<&str> = others.iter().map(|&i| plan[i].user.as_str()).collect();
            let body = serde_json::json!({ "members": others, "name": format!("bench-{r}") });
            let response = http
                .post(format!("http://{gateway}/rooms"))
                .bearer_auth(&tokens[creator])
                .json(&body)
                .send()
                .await
                .map_err(|e| format!("request: {}", short(&e.to_string())))?;
            let status = response.status();
            let text = response
                .text()
                .await
                .map_err(|e| format!("body: {}", short(&e.to_string())))?;
            if !status.is_success() {
                return Err(format!("{status}: {}", short(&text)));
            }
            let value: serde_json::Value =
                serde_json::from_str(&text).map_err(|_| "body is not JSON".to_owned())?;
            value["id"]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| "no id in the answer".to_owned())
        }
    });
    let mut results: Vec<(usize, Result<String, String>)> = futures::stream::iter(requests)
        .enumerate()
        .map(|(r, fut)| async move { (r, fut.await) })
        .buffer_unordered(options.room_concurrency.max(1))
        .collect()
        .await;
    results.sort_by_key(|(r, _)| *r);
    Ok(results.into_iter().map(|(_, result)| result).collect())
}

fn short(text: &str) -> String {
    text.chars().take(80).collect()
}

/// An HS256 user token `{sub, exp}` as chatter's gateways verify it.
pub fn mint_token(user: &str, exp: u64, secret: &str) -> Result<String> {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &serde_json::json!({ "sub": user, "name": user, "exp": exp }),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .context("signing a token")
}

fn time_now_secs() -> u64 {
    plan::unix_us() / 1_000_000
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_spreads_rooms_and_agents() {
        let mut options = LoadOptions::new(400, 100, PathBuf::from("x"));
        options.source_ips = vec![IpAddr::from([127, 0, 0, 2]), IpAddr::from([127, 0, 0, 3])];
        let plan = plan_connections(&options, 2, 2);
        assert_eq!(plan.len(), 400);
        // Spread: every room has members on both servers.
        let room0: Vec<_> = plan.iter().filter(|p| p.room == Some(0)).collect();
        assert_eq!(room0.len(), 100);
        assert_eq!(room0.iter().filter(|p| p.server == 0).count(), 50);
        // The send order is a permutation that walks the rooms.
        let mut orders: Vec<u64> = plan.iter().map(|p| p.order).collect();
        orders.sort_unstable();
        assert_eq!(orders, (0..400).collect::<Vec<_>>());
        let first_four: Vec<_> = {
            let mut by_order: Vec<&Planned> = plan.iter().collect();
            by_order.sort_by_key(|p| p.order);
            by_order[..4].iter().map(|p| p.room).collect()
        };
        assert_eq!(first_four, vec![Some(0), Some(1), Some(2), Some(3)]);

        options.placement = Placement::RoomTogether;
        let plan = plan_connections(&options, 2, 2);
        assert!(
            plan.iter()
                .all(|p| p.server == p.room.unwrap_or_default() % 2)
        );
    }

    #[test]
    fn tokens_are_jwts() {
        let token = mint_token("alice", 4_000_000_000, "secret").expect("token");
        assert_eq!(token.split('.').count(), 3);
    }
}
