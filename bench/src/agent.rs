//! A load generator agent: one process holding a share of the connections.
//!
//! It reads [`Command`]s on stdin and answers with [`Event`]s on stdout (see
//! [`crate::plan`]). Each connection is two tasks: a reader that parses every
//! frame and records deliveries, and a writer that sends what the schedule hands
//! it. The schedule is **open loop**: send *j* of a step is due at
//! `start + j / rate`, computed from the step's start, never from when the previous
//! send finished, and latency is measured from that due instant. A server that
//! slows down therefore cannot slow the sender down and hide its own latency
//! (coordinated omission); if the sender itself falls behind, that shows up both
//! as latency and as `send_lag`.
//!
//! In **reconnect mode** (`Setup::reconnect_attempts` > 0, idle connections with a
//! `fallback_url`), one task per connection reads it and, when the server closes
//! it, reopens it at once on the fallback (boundedly retried); `Command::Status`
//! reports the progress (the storm scenario's drain).
//!
//! Nothing here waits forever: connects, the room wait, every step and its drain
//! have deadlines, and the whole process exits by itself after `max_secs`.

use crate::frames::{self, ServerFrame};
use crate::plan::{
    self, Command, ConnSpec, Event, RoomCount, Setup, StatusStats, StepCmd, StepStats,
};
use crate::stats;
use anyhow::{Context, Result, bail};
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;
use tokio::io::AsyncBufReadExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::http::Uri;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{WebSocketStream, client_async_with_config};
use tokio_util::sync::CancellationToken;

type Ws = WebSocketStream<TcpStream>;

/// Deliveries count as finished once none arrived for this long (and nothing is
/// outstanding).
const QUIET_MS: u64 = 300;
/// How long closing all sockets at `Quit` may take.
const CLOSE_GRACE: Duration = Duration::from_secs(3);
/// Reconnect mode: the pause after the n-th failed attempt is this × 2ⁿ…
const RECONNECT_BACKOFF: Duration = Duration::from_millis(50);
/// …at most this.
const RECONNECT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// A client's read buffer. tungstenite's default (128 KiB, allocated eagerly) is
/// sized for a few busy sockets, not tens of thousands.
const READ_BUFFER: usize = 16 * 1024;

/// Runs an agent until `Quit`, end of stdin, or `max_secs`.
pub fn main(threads: usize, max_secs: u64) -> std::process::ExitCode {
    crate::sys::raise_nofile_limit();
    // The watchdog: an agent never outlives its budget, whatever the coordinator does.
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(max_secs));
        eprintln!("chatter-loadgen agent: {max_secs}s budget spent; exiting");
        std::process::exit(3);
    });
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            emit(&Event::Fatal {
                message: format!("cannot start the runtime: {error}"),
            });
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run());
    let code = match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            emit(&Event::Fatal {
                message: format!("{error:#}"),
            });
            std::process::ExitCode::FAILURE
        }
    };
    // Sockets are closed by the OS; don't wait for thousands of tasks to unwind.
    runtime.shutdown_timeout(Duration::from_millis(500));
    code
}

/// Writes one event line to stdout.
fn emit(event: &Event) {
    let line = serde_json::to_string(event).unwrap_or_else(|error| {
        format!(r#"{{"event":"fatal","message":"cannot encode an event: {error}"}}"#)
    });
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

async fn run() -> Result<()> {
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut agent: Option<Agent> = None;
    while let Some(line) = lines.next_line().await.context("reading stdin")? {
        if line.trim().is_empty() {
            continue;
        }
        let command: Command = serde_json::from_str(&line).context("parsing a command")?;
        match command {
            Command::Setup(setup) => {
                if agent.is_some() {
                    bail!("setup sent twice");
                }
                let (new, event) = Agent::setup(setup).await;
                agent = Some(new);
                emit(&event);
            }
            Command::AwaitRooms { timeout_ms } => {
                let agent = agent.as_ref().context("await_rooms before setup")?;
                emit(&agent.await_rooms(Duration::from_millis(timeout_ms)).await);
            }
            Command::Step(step) => {
                let agent = agent.as_ref().context("step before setup")?;
                let stats = agent.step(&step).await;
                emit(&Event::Step(Box::new(stats)));
            }
            Command::Status => {
                let agent = agent.as_ref().context("status before setup")?;
                emit(&Event::Status(agent.status()));
            }
            Command::Quit => break,
        }
    }
    if let Some(agent) = agent {
        agent.close().await;
    }
    Ok(())
}

/// What a writer task is asked to do.
enum Out {
    Send {
        step: u32,
        scheduled_us: u64,
        n: u64,
    },
    Close,
}

/// One connection's state shared by its reader, its writer and the agent.
#[derive(Default)]
struct ConnState {
    /// [`plan::origin`] of this connection.
    origin: u64,
    room: OnceLock<Box<str>>,
    received: AtomicU64,
    max_seq: AtomicU64,
    open: AtomicBool,
}

struct Conn {
    spec_in_room: bool,
    order: u64,
    state: Arc<ConnState>,
    tx: mpsc::UnboundedSender<Out>,
}

/// Per-step counters, behind one lock taken once per frame.
struct Acc {
    step: u32,
    window_end_us: u64,
    latency: Histogram<u64>,
    own_latency: Histogram<u64>,
    ack_latency: Histogram<u64>,
    send_lag: Histogram<u64>,
    stats: StepStats,
    /// Cumulative: connections that ended, by close code.
    closes: BTreeMap<String, u64>,
}

struct Shared {
    acc: Mutex<Acc>,
    rooms_ready: AtomicU64,
    last_delivery_us: AtomicU64,
    agent: usize,
    message_bytes: usize,
    /// Reconnect mode (see [`Setup::reconnect_attempts`]): attempts per close…
    reconnect_attempts: u32,
    connect_timeout: Duration,
    /// …and its progress, for [`Command::Status`].
    reconnects: AtomicU64,
    reconnect_failed: AtomicU64,
    reconnect_errors: Mutex<BTreeMap<String, u64>>,
    first_close_us: AtomicU64,
    last_reconnect_us: AtomicU64,
}

impl Shared {
    /// Never held across an await; a panic while holding it leaves plain counters,
    /// so poisoning is ignored.
    fn acc(&self) -> MutexGuard<'_, Acc> {
        self.acc.lock().unwrap_or_else(|p| p.into_inner())
    }
}

struct Agent {
    agent_index: usize,
    agents: usize,
    conns: Vec<Conn>,
    shared: Arc<Shared>,
    cancel: CancellationToken,
    next_n: AtomicU64,
}

impl Agent {
    async fn setup(setup: Setup) -> (Agent, Event) {
        let started = std::time::Instant::now();
        let shared = Arc::new(Shared {
            acc: Mutex::new(Acc {
                step: u32::MAX,
                window_end_us: 0,
                latency: stats::new_histogram(),
                own_latency: stats::new_histogram(),
                ack_latency: stats::new_histogram(),
                send_lag: stats::new_histogram(),
                stats: StepStats::default(),
                closes: BTreeMap::new(),
            }),
            rooms_ready: AtomicU64::new(0),
            last_delivery_us: AtomicU64::new(0),
            agent: setup.agent,
            message_bytes: setup.message_bytes,
            reconnect_attempts: setup.reconnect_attempts,
            connect_timeout: Duration::from_millis(setup.connect_timeout_ms),
            reconnects: AtomicU64::new(0),
            reconnect_failed: AtomicU64::new(0),
            reconnect_errors: Mutex::new(BTreeMap::new()),
            first_close_us: AtomicU64::new(u64::MAX),
            last_reconnect_us: AtomicU64::new(0),
        });
        let cancel = CancellationToken::new();
        let timeout = Duration::from_millis(setup.connect_timeout_ms);
        let mut errors: BTreeMap<String, u64> = BTreeMap::new();
        let mut conns = Vec::with_capacity(setup.conns.len());
        let mut results = futures::stream::iter(setup.conns.into_iter().enumerate())
            .map(|(index, spec)| async move {
                let result = tokio::time::timeout(timeout, connect(&spec))
                    .await
                    .unwrap_or_else(|_| Err("timeout".to_owned()));
                (index, spec, result)
            })
            .buffer_unordered(setup.connect_concurrency.max(1));
        let (mut ok, mut failed) = (0u64, 0u64);
        while let Some((index, spec, result)) = results.next().await {
            match result {
                Ok(ws) => {
                    ok += 1;
                    conns.push(start_conn(index, &spec, ws, &shared, &cancel));
                }
                Err(kind) => {
                    failed += 1;
                    *errors.entry(kind).or_default() += 1;
                }
            }
        }
        let event = Event::Connected {
            ok,
            failed,
            errors,
            elapsed_ms: millis(started.elapsed()),
        };
        let agent = Agent {
            agent_index: setup.agent,
            agents: setup.agents,
            conns,
            shared,
            cancel,
            next_n: AtomicU64::new(0),
        };
        (agent, event)
    }

    fn status(&self) -> StatusStats {
        let shared = &self.shared;
        let first_close = shared.first_close_us.load(Ordering::Relaxed);
        StatusStats {
            open: self
                .conns
                .iter()
                .filter(|c| c.state.open.load(Ordering::Relaxed))
                .count() as u64,
            reconnects: shared.reconnects.load(Ordering::Relaxed),
            reconnect_failed: shared.reconnect_failed.load(Ordering::Relaxed),
            reconnect_errors: shared
                .reconnect_errors
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            first_close_us: if first_close == u64::MAX {
                0
            } else {
                first_close
            },
            last_reconnect_us: shared.last_reconnect_us.load(Ordering::Relaxed),
            closes: shared.acc().closes.clone(),
        }
    }

    async fn await_rooms(&self, timeout: Duration) -> Event {
        let started = std::time::Instant::now();
        let expected = self.conns.iter().filter(|c| c.spec_in_room).count() as u64;
        loop {
            let ready = self.shared.rooms_ready.load(Ordering::Relaxed);
            if ready >= expected || started.elapsed() >= timeout {
                return Event::Rooms {
                    ready,
                    missing: expected.saturating_sub(ready),
                    elapsed_ms: millis(started.elapsed()),
                };
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn step(&self, cmd: &StepCmd) -> StepStats {
        let duration_us = cmd.duration_ms.saturating_mul(1000);
        let end_us = cmd.start_unix_us.saturating_add(duration_us);
        {
            let mut acc = self.shared.acc();
            acc.step = cmd.id;
            acc.window_end_us = end_us;
            acc.latency.reset();
            acc.own_latency.reset();
            acc.ack_latency.reset();
            acc.send_lag.reset();
            acc.stats = StepStats {
                id: cmd.id,
                ..StepStats::default()
            };
        }
        let mut senders: Vec<&Conn> = self
            .conns
            .iter()
            .filter(|c| c.spec_in_room && c.state.room.get().is_some())
            .collect();
        senders.sort_by_key(|c| c.order);
        // The rotation walks the rooms (member k of every room, then k + 1), and
        // every agent has the same rooms in the same order and starts at the same
        // instant: agent a starts a/agents of the way through the rooms, so that
        // two agents never send into one room at the same moment.
        let rooms = senders
            .iter()
            .filter_map(|c| c.state.room.get())
            .collect::<HashSet<_>>()
            .len();
        let len = senders.len();
        if len > 0 {
            senders.rotate_left(rooms * self.agent_index / self.agents.max(1) % len);
        }
        let scheduled = self.schedule(cmd, &senders).await;

        // Drain: at least drain_min after the window, then until nothing is
        // outstanding and deliveries went quiet, at most drain_max.
        let drain_from = unix_now().max(end_us);
        sleep_until_unix(end_us.saturating_add(cmd.drain_min_ms * 1000)).await;
        let drain_deadline = end_us.saturating_add(cmd.drain_max_ms * 1000);
        loop {
            let now = unix_now();
            let outstanding = {
                let acc = self.shared.acc();
                let answered = acc.stats.confirmed
                    + acc.stats.send_failed
                    + acc.stats.refused.values().sum::<u64>();
                scheduled.saturating_sub(answered)
            };
            let quiet = now.saturating_sub(self.shared.last_delivery_us.load(Ordering::Relaxed))
                >= QUIET_MS * 1000;
            if (outstanding == 0 && quiet) || now >= drain_deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let drain_ms = unix_now().saturating_sub(drain_from) / 1000;

        // Per room: deliveries to members still open, how many are open, the
        // highest seq anyone saw. A closed socket is counted once, as a close.
        let mut rooms: HashMap<&str, (u64, u64, u64)> = HashMap::new();
        let mut open = 0;
        for conn in &self.conns {
            let is_open = conn.state.open.load(Ordering::Relaxed);
            if is_open {
                open += 1;
            }
            if let Some(room) = conn.state.room.get() {
                let entry = rooms.entry(room).or_default();
                if is_open {
                    entry.0 += conn.state.received.load(Ordering::Relaxed);
                    entry.1 += 1;
                }
                entry.2 = entry.2.max(conn.state.max_seq.load(Ordering::Relaxed));
            }
        }
        let mut acc = self.shared.acc();
        // Late frames of this step now count as late for the next one.
        acc.step = u32::MAX;
        let mut out = std::mem::take(&mut acc.stats);
        out.scheduled = scheduled;
        out.latency_us = stats::to_pairs(&acc.latency);
        out.own_latency_us = stats::to_pairs(&acc.own_latency);
        out.ack_latency_us = stats::to_pairs(&acc.ack_latency);
        out.send_lag_us = stats::to_pairs(&acc.send_lag);
        out.closes = acc.closes.clone();
        out.open_conns = open;
        out.drain_ms = drain_ms;
        out.rooms = rooms
            .into_iter()
            .map(|(room, (received, open_members, max_seq))| RoomCount {
                room: room.to_owned(),
                received,
                open_members,
                max_seq,
            })
            .collect();
        out
    }

    /// Hands out the step's sends at their due instants; returns how many.
    async fn schedule(&self, cmd: &StepCmd, senders: &[&Conn]) -> u64 {
        let total = (cmd.rate.max(0.0) * cmd.duration_ms as f64 / 1000.0).floor() as u64;
        if total == 0 || senders.is_empty() {
            return 0;
        }
        let interval_us = 1e6 / cmd.rate;
        let due_at = |j: u64| cmd.start_unix_us + (j as f64 * interval_us) as u64;
        // However far behind the schedule gets, handing out stops here.
        let hard_end = due_at(total).saturating_add(60_000_000);
        let mut j = 0u64;
        while j < total {
            let now = unix_now();
            if now >= hard_end {
                break;
            }
            if now >= cmd.start_unix_us {
                let elapsed = (now - cmd.start_unix_us) as f64;
                let due = ((elapsed / interval_us).floor() as u64 + 1).min(total);
                while j < due {
                    let conn = senders[(j % senders.len() as u64) as usize];
                    let n = self.next_n.fetch_add(1, Ordering::Relaxed);
                    let send = Out::Send {
                        step: cmd.id,
                        scheduled_us: due_at(j),
                        n,
                    };
                    if conn.tx.send(send).is_err() {
                        self.shared.acc().stats.send_failed += 1;
                    }
                    j += 1;
                }
            }
            if j < total {
                // Tokio's timer has 1 ms granularity; sends due meanwhile go out
                // together at the next wake-up, each stamped with its own due time.
                sleep_until_unix(due_at(j)).await;
            }
        }
        j
    }

    async fn close(self) {
        for conn in &self.conns {
            let _ = conn.tx.send(Out::Close);
        }
        let deadline = std::time::Instant::now() + CLOSE_GRACE;
        while std::time::Instant::now() < deadline
            && self
                .conns
                .iter()
                .any(|c| c.state.open.load(Ordering::Relaxed))
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.cancel.cancel();
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn unix_now() -> u64 {
    plan::unix_us()
}

/// Sleeps until a wall-clock instant (µs since the epoch), at most 1 s at a time
/// so a clock step cannot park us for long.
async fn sleep_until_unix(at_us: u64) {
    for _ in 0..3600 {
        let now = unix_now();
        if now >= at_us {
            return;
        }
        let wait = (at_us - now).min(1_000_000);
        tokio::time::sleep(Duration::from_micros(wait)).await;
    }
}

/// Opens one WebSocket from `spec.source`. Errors are short kinds for counting.
async fn connect(spec: &ConnSpec) -> Result<Ws, String> {
    let uri: Uri = spec.url.parse().map_err(|_| "bad url".to_owned())?;
    let host = uri.host().ok_or("url without host")?;
    let ip: std::net::IpAddr = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .map_err(|_| "host is not an IP address".to_owned())?;
    // Load goes to this machine only.
    if !ip.is_loopback() {
        return Err("refusing a non-loopback target".to_owned());
    }
    let addr = SocketAddr::new(ip, uri.port_u16().unwrap_or(80));
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(|e| format!("socket: {:?}", e.kind()))?;
    socket
        .bind(SocketAddr::new(spec.source, 0))
        .map_err(|e| format!("bind: {:?}", e.kind()))?;
    let stream = socket
        .connect(addr)
        .await
        .map_err(|e| format!("connect: {:?}", e.kind()))?;
    let _ = stream.set_nodelay(true);
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0);
    let (ws, _response) = client_async_with_config(spec.url.as_str(), stream, Some(config))
        .await
        .map_err(|e| {
            let text = e.to_string();
            format!("handshake: {}", text.chars().take(60).collect::<String>())
        })?;
    Ok(ws)
}

fn start_conn(
    index: usize,
    spec: &ConnSpec,
    ws: Ws,
    shared: &Arc<Shared>,
    cancel: &CancellationToken,
) -> Conn {
    let state = Arc::new(ConnState {
        origin: plan::origin(shared.agent, index),
        ..ConnState::default()
    });
    state.open.store(true, Ordering::Relaxed);
    let (tx, rx) = mpsc::unbounded_channel();
    if shared.reconnect_attempts > 0
        && !spec.in_room
        && let Some(fallback) = &spec.fallback_url
    {
        tokio::spawn(reconnecting(
            ws,
            (spec.clone(), fallback.clone()),
            rx,
            state.clone(),
            shared.clone(),
            cancel.clone(),
        ));
        return Conn {
            spec_in_room: spec.in_room,
            order: spec.order,
            state,
            tx,
        };
    }
    let (sink, stream) = ws.split();
    tokio::spawn(read_loop(
        stream,
        state.clone(),
        shared.clone(),
        cancel.clone(),
    ));
    tokio::spawn(write_loop(
        sink,
        rx,
        state.clone(),
        shared.clone(),
        cancel.clone(),
    ));
    Conn {
        spec_in_room: spec.in_room,
        order: spec.order,
        state,
        tx,
    }
}

async fn read_loop(
    mut stream: SplitStream<Ws>,
    state: Arc<ConnState>,
    shared: Arc<Shared>,
    cancel: CancellationToken,
) {
    let ended = tokio::select! {
        () = cancel.cancelled() => None,
        kind = read_frames(&mut stream, &state, &shared) => Some(kind),
    };
    state.open.store(false, Ordering::Relaxed);
    if let Some(kind) = ended {
        *shared.acc().closes.entry(kind).or_default() += 1;
    }
}

/// Reads and accounts frames until the socket ends; returns how it ended (the
/// close code, `eof`, or an error kind).
async fn read_frames(stream: &mut SplitStream<Ws>, state: &ConnState, shared: &Shared) -> String {
    let mut last_seq = 0u64;
    loop {
        match stream.next().await {
            None => return "eof".to_owned(),
            Some(Err(error)) => return error_kind(&error),
            Some(Ok(Message::Text(text))) => {
                on_text(text.as_str(), state, shared, &mut last_seq);
            }
            Some(Ok(Message::Close(frame))) => {
                return frame.map_or_else(|| "close".to_owned(), |f| u16::from(f.code).to_string());
            }
            Some(Ok(_)) => {}
        }
    }
}

/// An idle connection in reconnect mode: whenever the server closes it, it is
/// reopened at once on the other URL (`urls.1`, then back to `urls.0`), with at
/// most [`Shared::reconnect_attempts`] attempts per close and a short backoff
/// between them. It never sends; `Out::Close` (or the end of the agent) ends it.
async fn reconnecting(
    mut ws: Ws,
    urls: (ConnSpec, String),
    mut rx: mpsc::UnboundedReceiver<Out>,
    state: Arc<ConnState>,
    shared: Arc<Shared>,
    cancel: CancellationToken,
) {
    let (mut spec, mut other) = urls;
    loop {
        let (mut sink, mut stream) = ws.split();
        let ended = tokio::select! {
            () = cancel.cancelled() => None,
            kind = read_frames(&mut stream, &state, &shared) => Some(kind),
            () = close_asked(&mut rx, &shared) => {
                let _ = tokio::time::timeout(CLOSE_GRACE, sink.close()).await;
                None
            }
        };
        state.open.store(false, Ordering::Relaxed);
        let Some(kind) = ended else { return };
        shared
            .first_close_us
            .fetch_min(unix_now(), Ordering::Relaxed);
        *shared.acc().closes.entry(kind).or_default() += 1;
        std::mem::swap(&mut spec.url, &mut other);
        let mut reopened = None;
        for attempt in 0..shared.reconnect_attempts {
            let result = tokio::select! {
                () = cancel.cancelled() => return,
                result = tokio::time::timeout(shared.connect_timeout, connect(&spec)) => result,
            };
            match result.unwrap_or_else(|_| Err("timeout".to_owned())) {
                Ok(new) => {
                    reopened = Some(new);
                    break;
                }
                Err(kind) => {
                    shared.reconnect_failed.fetch_add(1, Ordering::Relaxed);
                    *shared
                        .reconnect_errors
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .entry(kind)
                        .or_default() += 1;
                    let pause = RECONNECT_BACKOFF
                        .saturating_mul(1 << attempt.min(16))
                        .min(RECONNECT_BACKOFF_MAX);
                    tokio::time::sleep(pause).await;
                }
            }
        }
        let Some(new) = reopened else { return };
        ws = new;
        state.open.store(true, Ordering::Relaxed);
        shared.reconnects.fetch_add(1, Ordering::Relaxed);
        shared
            .last_reconnect_us
            .fetch_max(unix_now(), Ordering::Relaxed);
    }
}

/// Resolves when the agent asks this (idle) connection to close; sends asked of
/// it count as failed.
async fn close_asked(rx: &mut mpsc::UnboundedReceiver<Out>, shared: &Shared) {
    while let Some(out) = rx.recv().await {
        match out {
            Out::Close => return,
            Out::Send { .. } => shared.acc().stats.send_failed += 1,
        }
    }
}

fn error_kind(error: &tokio_tungstenite::tungstenite::Error) -> String {
    use tokio_tungstenite::tungstenite::Error;
    match error {
        Error::ConnectionClosed | Error::AlreadyClosed => "eof".to_owned(),
        Error::Io(io) => format!("io: {:?}", io.kind()),
        Error::Protocol(p) => format!("protocol: {p}"),
        other => format!(
            "error: {}",
            other.to_string().chars().take(40).collect::<String>()
        ),
    }
}

fn on_text(text: &str, state: &ConnState, shared: &Shared, last_seq: &mut u64) {
    let now = unix_now();
    match frames::parse_server(text) {
        None => shared.acc().stats.parse_errors += 1,
        Some(ServerFrame::MessageReceived {
            room_id,
            seq,
            message,
        }) => {
            let mine = match state.room.get() {
                Some(room) => **room == *room_id,
                None => false,
            };
            let timing = plan::parse_body(&message);
            let mut acc = shared.acc();
            if !mine {
                acc.stats.foreign_deliveries += 1;
                return;
            }
            state.received.fetch_add(1, Ordering::Relaxed);
            state.max_seq.fetch_max(seq, Ordering::Relaxed);
            if seq <= *last_seq {
                acc.stats.out_of_order += 1;
            } else {
                *last_seq = seq;
            }
            match timing {
                Some((step, scheduled, origin)) if step == acc.step => {
                    let latency = now.saturating_sub(scheduled);
                    stats::record(&mut acc.latency, latency);
                    if origin == state.origin {
                        stats::record(&mut acc.own_latency, latency);
                    }
                    acc.stats.deliveries += 1;
                    if now <= acc.window_end_us {
                        acc.stats.deliveries_in_window += 1;
                    }
                }
                Some(_) => acc.stats.late_deliveries += 1,
                None => acc.stats.parse_errors += 1,
            }
            drop(acc);
            shared.last_delivery_us.store(now, Ordering::Relaxed);
        }
        Some(ServerFrame::Confirmation {
            confirmed,
            reason,
            temp_id,
            seq,
        }) => {
            if let Some(seq) = seq {
                state.max_seq.fetch_max(seq, Ordering::Relaxed);
            }
            let timing = temp_id.as_deref().and_then(plan::parse_temp_id);
            let mut acc = shared.acc();
            if let Some((step, scheduled)) = timing
                && step == acc.step
            {
                stats::record(&mut acc.ack_latency, now.saturating_sub(scheduled));
            }
            if confirmed {
                acc.stats.confirmed += 1;
            } else {
                let reason = reason.map_or_else(|| "none".to_owned(), |r| r.into_owned());
                *acc.stats.refused.entry(reason).or_default() += 1;
            }
        }
        Some(ServerFrame::MemberAdded { room_id }) => {
            if state.room.set(room_id.into()).is_ok() {
                shared.rooms_ready.fetch_add(1, Ordering::Relaxed);
            }
        }
        Some(ServerFrame::Error) => shared.acc().stats.error_frames += 1,
        Some(ServerFrame::Other) => {}
    }
}

async fn write_loop(
    mut sink: SplitSink<Ws, Message>,
    mut rx: mpsc::UnboundedReceiver<Out>,
    state: Arc<ConnState>,
    shared: Arc<Shared>,
    cancel: CancellationToken,
) {
    let mut batch = Vec::new();
    loop {
        let first = tokio::select! {
            () = cancel.cancelled() => return,
            first = rx.recv() => first,
        };
        let Some(first) = first else { return };
        batch.push(first);
        while batch.len() < 64 {
            match rx.try_recv() {
                Ok(more) => batch.push(more),
                Err(_) => break,
            }
        }
        for out in batch.drain(..) {
            let (step, scheduled_us, n) = match out {
                Out::Close => {
                    let _ = tokio::time::timeout(CLOSE_GRACE, sink.close()).await;
                    return;
                }
                Out::Send {
                    step,
                    scheduled_us,
                    n,
                } => (step, scheduled_us, n),
            };
            let room = match state.room.get() {
                Some(room) if state.open.load(Ordering::Relaxed) => room,
                _ => {
                    shared.acc().stats.send_failed += 1;
                    continue;
                }
            };
            let body = plan::message_body(step, scheduled_us, state.origin, shared.message_bytes);
            let temp_id = plan::temp_id(step, scheduled_us, state.origin, n);
            let frame = frames::send_message(room, &body, &temp_id);
            let fed = tokio::select! {
                () = cancel.cancelled() => return,
                fed = sink.feed(Message::text(frame)) => fed,
            };
            let mut acc = shared.acc();
            if fed.is_ok() {
                acc.stats.sent += 1;
                let lag = unix_now().saturating_sub(scheduled_us);
                stats::record(&mut acc.send_lag, lag);
            } else {
                acc.stats.send_failed += 1;
            }
        }
        let flushed = tokio::select! {
            () = cancel.cancelled() => return,
            flushed = sink.flush() => flushed,
        };
        if flushed.is_err() {
            state.open.store(false, Ordering::Relaxed);
        }
    }
}
