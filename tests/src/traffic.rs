//! Steady chat traffic from clients that behave as a careful real client does,
//! and the check that nothing acknowledged was lost, for the tests that break
//! a cluster on purpose (chaos, rolling restarts).
//!
//! Each [`run_client`] sends about one message a second to its room and reads
//! everything; on a close or a refused connect it reconnects (to the next
//! address it is given) and sends `Resume` from its last contiguous seq; a send
//! that got no confirmation, or `confirmed: false`, is sent again with its
//! original temp id; a live seq past a hole asks for the hole with `Resume`.
//! [`verify`] then compares what was acknowledged, stored and held.

use crate::{Cluster, Incoming, WsClient, eventually};
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How often a client sends, on average.
pub const SEND_EVERY: Duration = Duration::from_millis(1000);
/// How long a client may take to catch up once traffic has stopped.
pub const CATCH_UP: Duration = Duration::from_secs(45);

/// Where clients connect: WebSocket URLs (`ws://…/ws`), tried in turn; a test
/// updates them when a gateway comes back on a new port.
pub type Addresses = Arc<RwLock<Vec<String>>>;

/// What one client saw and did.
#[derive(Debug, Default)]
pub struct ClientReport {
    pub user: String,
    pub room: String,
    /// Confirmed sends: temp id → (message id, seq).
    pub acked: HashMap<String, (String, i64)>,
    /// `SendMessage` frames written (retries included).
    pub sent: u64,
    /// The room's messages held: seq → message id.
    pub held: BTreeMap<i64, String>,
    /// Deliveries of a seq already held (same message: harmless, counted).
    pub redelivered: u64,
    /// The same seq delivered with two different message ids (a real bug).
    pub conflicts: Vec<String>,
    pub resync_required: u64,
    /// Resumes sent at the end because the last messages never came live.
    pub stalled_resumes: u64,
    pub reconnects: u64,
    pub longest_outage: Duration,
    /// From `created_at` to arrival, for messages that came live (not replayed).
    pub live_latencies: Vec<Duration>,
}

impl ClientReport {
    /// The highest seq below which nothing is missing.
    pub fn contiguous(&self) -> i64 {
        let mut last = 0;
        for seq in self.held.keys() {
            if *seq != last + 1 {
                break;
            }
            last = *seq;
        }
        last
    }
}

/// Tells running clients when to stop sending, and (once known) each room's
/// final seq to catch up to.
#[derive(Clone)]
pub struct Control {
    sending: Arc<AtomicBool>,
    finals: watch::Sender<Option<HashMap<String, i64>>>,
}

impl Control {
    pub fn new() -> Control {
        Control {
            sending: Arc::new(AtomicBool::new(true)),
            finals: watch::channel(None).0,
        }
    }

    pub fn stop_sending(&self) {
        self.sending.store(false, Ordering::SeqCst);
    }
}

impl Default for Control {
    fn default() -> Self {
        Control::new()
    }
}

/// One client: connects, resumes, sends, reconnects; once [`verify`] has read
/// the final seqs, reads until it holds its room's last message, then reports.
pub async fn run_client(
    user: String,
    token: String,
    room: String,
    addresses: Addresses,
    control: Control,
) -> ClientReport {
    let mut finals = control.finals.subscribe();
    let mut report = ClientReport {
        user: user.clone(),
        room: room.clone(),
        ..ClientReport::default()
    };
    let mut next = 0u64;
    let mut attempt = rand::random_range(0..16usize);
    let mut down_since: Option<Instant> = None;
    let mut connected_once = false;
    let mut catching_up: Option<Instant> = None;
    loop {
        if catching_up.is_some_and(|since| since.elapsed() > CATCH_UP) {
            return report;
        }
        let url = addresses
            .read()
            .map(|urls| urls[attempt % urls.len()].clone())
            .unwrap_or_default();
        attempt += 1;
        let Ok(mut ws) = WsClient::connect(&format!("{url}?token={token}")).await else {
            down_since.get_or_insert_with(Instant::now);
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        if connected_once {
            report.reconnects += 1;
        }
        connected_once = true;
        let mut resuming = true;
        if ws
            .send_frame("Resume", json!({ "rooms": { &room: report.contiguous() } }))
            .await
            .is_err()
        {
            continue;
        }
        // The one message in flight: (temp id, when sent).
        let mut in_flight: Option<(String, Instant)> = None;
        let mut next_send = Instant::now() + jitter(SEND_EVERY);
        let mut last_frame = Instant::now();
        loop {
            let target = finals
                .borrow_and_update()
                .as_ref()
                .map(|f| f.get(&room).copied().unwrap_or(0));
            if let Some(target) = target {
                let since = *catching_up.get_or_insert_with(Instant::now);
                let done = in_flight.is_none() && report.contiguous() >= target;
                // Report what it holds rather than hang: `verify` says what is missing.
                if done || since.elapsed() > CATCH_UP {
                    return report;
                }
            }
            if control.sending.load(Ordering::SeqCst) || in_flight.is_some() {
                let due = match &in_flight {
                    // No answer: the gateway may have died with it; send again.
                    Some((_, at)) => at.elapsed() > Duration::from_secs(5),
                    None => Instant::now() >= next_send,
                };
                if due && !resuming {
                    let temp = in_flight
                        .as_ref()
                        .map(|(t, _)| t.clone())
                        .unwrap_or_else(|| format!("{user}-{next}"));
                    let frame = json!({ "room_id": room, "message": format!("hi from {temp}"), "message_temp_id": temp });
                    if ws.send_frame("SendMessage", frame).await.is_err() {
                        break;
                    }
                    report.sent += 1;
                    in_flight = Some((temp, Instant::now()));
                }
            }
            let frame = match ws.recv(Duration::from_millis(100)).await {
                Ok(Incoming::Frame(frame)) => {
                    last_frame = Instant::now();
                    frame
                }
                Ok(Incoming::Closed { .. }) => break,
                Err(error) if error.to_string().contains("no websocket frame within") => {
                    // Traffic has stopped and the room's last messages never came
                    // (published while this gateway's subscriber was away): no
                    // later message will show the gap, so ask.
                    if target.is_some_and(|t| report.contiguous() < t)
                        && last_frame.elapsed() > Duration::from_secs(2)
                    {
                        last_frame = Instant::now();
                        report.stalled_resumes += 1;
                        let resume = json!({ "rooms": { &room: report.contiguous() } });
                        if ws.send_frame("Resume", resume).await.is_err() {
                            break;
                        }
                    }
                    continue;
                }
                Err(_) => break,
            };
            let data = &frame["data"];
            match frame["type"].as_str().unwrap_or_default() {
                "MessageReceived" if data["room_id"] == room.as_str() => {
                    let seq = data["seq"].as_i64().unwrap_or(-1);
                    let id = data["id"].as_str().unwrap_or_default().to_owned();
                    if !resuming && let Some(latency) = age(data["created_at"].as_str()) {
                        report.live_latencies.push(latency);
                    }
                    match report.held.get(&seq) {
                        Some(held) if *held == id => report.redelivered += 1,
                        Some(held) => report
                            .conflicts
                            .push(format!("{user}: seq {seq} was {held}, now {id}")),
                        None => {
                            report.held.insert(seq, id);
                        }
                    }
                    // A gap while live (a subscriber reconnected, say): ask for it.
                    if !resuming && seq > report.contiguous() + 1 {
                        resuming = true;
                        let resume = json!({ "rooms": { &room: report.contiguous() } });
                        if ws.send_frame("Resume", resume).await.is_err() {
                            break;
                        }
                    }
                }
                "Resumed" => {
                    resuming = false;
                    if let Some(since) = down_since.take() {
                        report.longest_outage = report.longest_outage.max(since.elapsed());
                    }
                }
                "ResyncRequired" => {
                    report.resync_required += 1;
                    resuming = false;
                }
                "MessageSentConfirmation" => {
                    let temp = data["message_temp_id"].as_str().unwrap_or_default();
                    if in_flight.as_ref().is_some_and(|(t, _)| t == temp) {
                        if data["confirmed"] == true {
                            let id = data["message_id"].as_str().unwrap_or_default().to_owned();
                            let seq = data["seq"].as_i64().unwrap_or(-1);
                            report.acked.insert(temp.to_owned(), (id, seq));
                            in_flight = None;
                            next += 1;
                            next_send = Instant::now() + jitter(SEND_EVERY);
                        } else {
                            // Refused (Redis away, rate limited): the same temp id
                            // again, after what the gateway asked for or a second.
                            let wait = data["retry_after_ms"].as_u64().unwrap_or(1000);
                            let resend_at = Instant::now() + Duration::from_millis(wait);
                            in_flight = Some((temp.to_owned(), resend_at - Duration::from_secs(5)));
                        }
                    }
                }
                _ => {}
            }
        }
        down_since.get_or_insert_with(Instant::now);
    }
}

fn jitter(base: Duration) -> Duration {
    base.mul_f64(rand::random_range(0.5..1.5))
}

/// How long ago an RFC 3339 `created_at` was.
fn age(created_at: Option<&str>) -> Option<Duration> {
    let created =
        time::OffsetDateTime::parse(created_at?, &time::format_description::well_known::Rfc3339)
            .ok()?;
    let age = time::OffsetDateTime::now_utc() - created;
    age.try_into().ok()
}

/// What a run came to.
#[derive(Debug, Default)]
pub struct Figures {
    pub sent: u64,
    pub acknowledged: usize,
    pub stored: usize,
    /// Rows sharing a (room, seq), and temp ids stored more than once.
    pub duplicate_seqs: usize,
    pub temp_ids_stored_twice: usize,
    pub gaps: i64,
    pub reconnects: u64,
    pub longest_outage: Duration,
    pub redelivered: u64,
    pub resync_required: u64,
    pub stalled_resumes: u64,
    pub live_p99: Duration,
    /// Acknowledged messages not stored as acknowledged.
    pub lost: Vec<String>,
    /// Clients not holding their whole room once, in order.
    pub client_problems: Vec<String>,
}

impl std::fmt::Display for Figures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "sent {} SendMessage frames, acknowledged {}, stored {} (duplicates: {} by seq, {} temp ids \
             stored twice), gaps {}, acknowledged but not stored {}, reconnects {}, longest outage seen \
             by a client {:.1?}, live delivery p99 {:.1?}, redelivered (already held) {}, ResyncRequired {}, \
             Resumes for a silent tail {}, client problems {}",
            self.sent,
            self.acknowledged,
            self.stored,
            self.duplicate_seqs,
            self.temp_ids_stored_twice,
            self.gaps,
            self.lost.len(),
            self.reconnects,
            self.longest_outage,
            self.live_p99,
            self.redelivered,
            self.resync_required,
            self.stalled_resumes,
            self.client_problems.len(),
        )
    }
}

impl Figures {
    /// Fails the test on any loss, duplicate, gap or client holding less.
    pub fn assert_nothing_lost(&self) {
        let few = |v: &Vec<String>| v[..v.len().min(20)].to_vec();
        assert!(
            self.lost.is_empty(),
            "acknowledged, then lost: {:?}",
            few(&self.lost)
        );
        assert_eq!(self.duplicate_seqs, 0, "one row per seq");
        assert_eq!(self.temp_ids_stored_twice, 0, "no temp id stored twice");
        assert_eq!(self.gaps, 0, "no seq gap in any room");
        assert!(
            self.client_problems.is_empty(),
            "every client holds its room once, in order: {:?}",
            few(&self.client_problems)
        );
    }
}

/// Stops the traffic, waits for the workers to store the backlog, lets every
/// client catch up to its room's last stored seq, and compares.
pub async fn verify(
    cluster: &Cluster,
    rooms: &[String],
    control: &Control,
    clients: Vec<tokio::task::JoinHandle<ClientReport>>,
) -> Figures {
    control.stop_sending();
    // Every unconfirmed send gets its answer; then the workers store the rest.
    tokio::time::sleep(Duration::from_secs(3)).await;
    eventually(Duration::from_secs(60), || async {
        let backlog = cluster.redis().cmd(&["XLEN", "chatter:ingest"]).await?;
        anyhow::ensure!(backlog.as_int() == Some(0), "ingest backlog {backlog:?}");
        Ok(())
    })
    .await
    .expect("the workers store the whole backlog");
    let stored: Vec<(String, i64, String, String, Option<String>)> = sqlx::query_as(
        "SELECT room_id::text, seq, id::text, sender_id, client_msg_id FROM messages \
         WHERE room_id::text = ANY($1) ORDER BY room_id, seq",
    )
    .bind(rooms)
    .fetch_all(&cluster.db())
    .await
    .expect("stored messages");
    let mut figures = Figures {
        stored: stored.len(),
        ..Figures::default()
    };
    let mut finals: HashMap<String, i64> = HashMap::new();
    let mut by_seq: HashMap<(String, i64), String> = HashMap::new();
    let mut temp_ids: HashMap<(String, String), u32> = HashMap::new();
    for (room, seq, id, sender, temp) in &stored {
        let top = finals.entry(room.clone()).or_default();
        *top = (*top).max(*seq);
        if by_seq.insert((room.clone(), *seq), id.clone()).is_some() {
            figures.duplicate_seqs += 1;
        }
        if let Some(temp) = temp {
            *temp_ids.entry((sender.clone(), temp.clone())).or_default() += 1;
        }
    }
    figures.gaps = rooms
        .iter()
        .map(|room| {
            let top = finals.get(room).copied().unwrap_or(0);
            (1..=top)
                .filter(|seq| !by_seq.contains_key(&(room.clone(), *seq)))
                .count() as i64
        })
        .sum();
    figures.temp_ids_stored_twice = temp_ids.values().filter(|n| **n > 1).count();
    control.finals.send_replace(Some(finals.clone()));

    let mut reports = Vec::new();
    for client in clients {
        match tokio::time::timeout(CATCH_UP + Duration::from_secs(30), client).await {
            Ok(Ok(report)) => reports.push(report),
            Ok(Err(error)) => panic!("a client task failed: {error}"),
            Err(_) => panic!("a client did not catch up in time"),
        }
    }
    let mut latencies = Vec::new();
    for report in &reports {
        figures.sent += report.sent;
        figures.acknowledged += report.acked.len();
        figures.reconnects += report.reconnects;
        figures.redelivered += report.redelivered;
        figures.resync_required += report.resync_required;
        figures.stalled_resumes += report.stalled_resumes;
        figures.longest_outage = figures.longest_outage.max(report.longest_outage);
        latencies.extend(report.live_latencies.iter().copied());
        for (temp, (id, seq)) in &report.acked {
            if by_seq.get(&(report.room.clone(), *seq)) != Some(id) {
                figures
                    .lost
                    .push(format!("{} {temp} seq {seq}", report.user));
            }
        }
        let top = finals.get(&report.room).copied().unwrap_or(0);
        let held: Vec<i64> = report.held.keys().copied().collect();
        if held != (1..=top).collect::<Vec<_>>() {
            let missing = (1..=top).filter(|s| !report.held.contains_key(s)).count();
            figures.client_problems.push(format!(
                "{} holds {} of {top} ({missing} missing)",
                report.user,
                held.len()
            ));
        }
        for (seq, id) in &report.held {
            if by_seq.get(&(report.room.clone(), *seq)) != Some(id) {
                figures.client_problems.push(format!(
                    "{} seq {seq} is not the stored message",
                    report.user
                ));
            }
        }
        figures
            .client_problems
            .extend(report.conflicts.iter().cloned());
    }
    latencies.sort();
    if !latencies.is_empty() {
        figures.live_p99 = latencies[(latencies.len() * 99 / 100).min(latencies.len() - 1)];
    }
    figures
}
