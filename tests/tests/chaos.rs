//! Chaos: a cluster under steady traffic while its processes are killed.
//!
//! 3 gateways, 2 workers, 300 clients in 30 rooms, each sending about one message
//! a second and resuming after every disconnect, as a real client would (resend
//! an unconfirmed message with its original temp id; `Resume` from the last
//! contiguous seq on reconnect or on a gap). For `CHAOS_SECS` (default 60) a
//! random gateway or worker is `kill -9`ed and started again every few seconds;
//! once Redis is killed and restarted (AOF, `appendfsync always`), once Postgres
//! is `SIGSTOP`ed for 10 s. Then: every acknowledged message is in Postgres
//! exactly once, seqs have no gap, and every client holds every message of its
//! room once, in order. The figures are printed.
//!
//! Cluster only: the embedded mode is one process.

use chatter_tests::chat::{create_room, ensure_users};
use chatter_tests::{Cluster, Incoming, WsClient, binaries, eventually};
use rand::Rng;
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::watch;

const CLIENTS: usize = 300;
const ROOM_SIZE: usize = 10;
const SEND_EVERY: Duration = Duration::from_millis(1000);
const EVENT_EVERY: Duration = Duration::from_secs(4);
const POSTGRES_PAUSE: Duration = Duration::from_secs(10);
/// How long a client may take to catch up once traffic has stopped.
const CATCH_UP: Duration = Duration::from_secs(45);

/// What one client saw and did.
#[derive(Debug, Default)]
struct ClientReport {
    user: String,
    room: String,
    /// Confirmed sends: temp id → (message id, seq).
    acked: HashMap<String, (String, i64)>,
    /// `SendMessage` frames written (retries included).
    sent: u64,
    /// The room's messages held: seq → message id.
    held: BTreeMap<i64, String>,
    /// Deliveries of a seq already held (same message: harmless, counted).
    redelivered: u64,
    /// The same seq delivered with two different message ids (a real bug).
    conflicts: Vec<String>,
    resync_required: u64,
    /// Resumes sent at the end because the last messages never came live.
    stalled_resumes: u64,
    reconnects: u64,
    longest_outage: Duration,
}

impl ClientReport {
    /// The highest seq below which nothing is missing.
    fn contiguous(&self) -> i64 {
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

/// Where the clients connect: the live gateways' URLs, updated on restarts.
type Gateways = Arc<RwLock<Vec<String>>>;

fn chaos_secs() -> u64 {
    std::env::var("CHAOS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_acknowledged_message_survives_killed_gateways_workers_redis_and_a_frozen_postgres() {
    let chaos = Duration::from_secs(chaos_secs());
    let mut cluster = Cluster::builder(binaries!())
        .gateways(3)
        .workers(2)
        .env("FRAMES_PER_SEC", "1000")
        .env("WORKER_CLAIM_IDLE_MS", "2000")
        .env("WORKER_CLAIM_INTERVAL_MS", "1000")
        .env("DRAIN_WINDOW_SECS", "2")
        // A whole room fits the Resume window even after the longest outage.
        .env("RESUME_MAX", "5000")
        .env("MAX_HTTP_CONNECTIONS_PER_IP", "0")
        .start()
        .await
        .expect("cluster");
    fsync_every_write(&cluster).await;
    let users: Vec<String> = (0..CLIENTS).map(|i| format!("c{i}")).collect();
    let refs: Vec<&str> = users.iter().map(String::as_str).collect();
    ensure_users(&cluster, &refs).await.expect("users");
    let mut rooms = Vec::new();
    for group in refs.chunks(ROOM_SIZE) {
        rooms.push(
            create_room(&cluster, 0, group[0], &group[1..])
                .await
                .expect("room"),
        );
    }
    let gateways: Gateways = Arc::new(RwLock::new(
        cluster.gateways().iter().map(|g| g.ws_url()).collect(),
    ));
    let sending = Arc::new(AtomicBool::new(true));
    // Once known: the final seq of every room, for clients to catch up to.
    let (finals_tx, finals_rx) = watch::channel(None::<HashMap<String, i64>>);
    let mut clients = Vec::new();
    for (i, user) in users.iter().enumerate() {
        clients.push(tokio::spawn(run_client(
            user.clone(),
            cluster.token(user),
            rooms[i / ROOM_SIZE].clone(),
            gateways.clone(),
            sending.clone(),
            finals_rx.clone(),
        )));
    }

    // The chaos.
    let started = Instant::now();
    let mut rng = rand::rng();
    let mut events = Vec::new();
    let mut redis_done = false;
    let mut postgres_done = false;
    while started.elapsed() < chaos {
        tokio::time::sleep(EVENT_EVERY).await;
        let at = started.elapsed();
        if !redis_done && at > chaos / 4 {
            redis_done = true;
            cluster.redis_mut().restart().await.expect("redis restarts");
            fsync_every_write(&cluster).await;
            events.push(format!("{at:.1?} redis kill -9 + restart"));
        } else if !postgres_done && at > chaos / 2 {
            postgres_done = true;
            cluster.postgres().pause().expect("SIGSTOP postgres");
            tokio::time::sleep(POSTGRES_PAUSE).await;
            cluster.postgres().resume().expect("SIGCONT postgres");
            events.push(format!("{at:.1?} postgres SIGSTOP {POSTGRES_PAUSE:?}"));
        } else if rng.random_bool(0.6) {
            let i = rng.random_range(0..3);
            cluster.restart_gateway(i).await.expect("gateway restarts");
            if let Ok(mut urls) = gateways.write() {
                urls[i] = cluster.gateway(i).ws_url();
            }
            events.push(format!("{at:.1?} gateway {i} kill -9 + restart"));
        } else {
            let i = rng.random_range(0..2);
            cluster.restart_worker(i).await.expect("worker restarts");
            events.push(format!("{at:.1?} worker {i} kill -9 + restart"));
        }
    }
    assert!(
        redis_done && postgres_done,
        "chaos too short for every event: {events:?}"
    );
    sending.store(false, Ordering::SeqCst);
    let chaos_took = started.elapsed();

    // Quiet: every unconfirmed send gets its answer, the workers store the rest.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let db = cluster.db();
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
    .bind(&rooms)
    .fetch_all(&db)
    .await
    .expect("stored messages");
    let mut finals: HashMap<String, i64> = HashMap::new();
    let mut by_seq: HashMap<(String, i64), String> = HashMap::new();
    let mut seq_dups = 0;
    let mut temp_ids: HashMap<(String, String), u32> = HashMap::new();
    for (room, seq, id, sender, temp) in &stored {
        let top = finals.entry(room.clone()).or_default();
        *top = (*top).max(*seq);
        if by_seq.insert((room.clone(), *seq), id.clone()).is_some() {
            seq_dups += 1;
        }
        if let Some(temp) = temp {
            *temp_ids.entry((sender.clone(), temp.clone())).or_default() += 1;
        }
    }
    let gaps: i64 = rooms
        .iter()
        .map(|room| {
            let top = finals.get(room).copied().unwrap_or(0);
            (1..=top)
                .filter(|seq| !by_seq.contains_key(&(room.clone(), *seq)))
                .count() as i64
        })
        .sum();
    let stored_twice = temp_ids.values().filter(|n| **n > 1).count();
    finals_tx.send_replace(Some(finals.clone()));

    let mut reports = Vec::new();
    for client in clients {
        match tokio::time::timeout(CATCH_UP + Duration::from_secs(30), client).await {
            Ok(Ok(report)) => reports.push(report),
            Ok(Err(error)) => panic!("a client task failed: {error}"),
            Err(_) => panic!("a client did not catch up in time"),
        }
    }

    // The figures.
    let sent: u64 = reports.iter().map(|r| r.sent).sum();
    let acked: usize = reports.iter().map(|r| r.acked.len()).sum();
    let reconnects: u64 = reports.iter().map(|r| r.reconnects).sum();
    let redelivered: u64 = reports.iter().map(|r| r.redelivered).sum();
    let resyncs: u64 = reports.iter().map(|r| r.resync_required).sum();
    let stalled: u64 = reports.iter().map(|r| r.stalled_resumes).sum();
    let longest = reports
        .iter()
        .map(|r| r.longest_outage)
        .max()
        .unwrap_or_default();
    let mut lost = Vec::new();
    for report in &reports {
        for (temp, (id, seq)) in &report.acked {
            if by_seq.get(&(report.room.clone(), *seq)) != Some(id) {
                lost.push(format!("{} {temp} seq {seq}", report.user));
            }
        }
    }
    let mut client_problems = Vec::new();
    for report in &reports {
        let top = finals.get(&report.room).copied().unwrap_or(0);
        let held: Vec<i64> = report.held.keys().copied().collect();
        if held != (1..=top).collect::<Vec<_>>() {
            let missing = (1..=top).filter(|s| !report.held.contains_key(s)).count();
            client_problems.push(format!(
                "{} holds {} of {top} ({missing} missing)",
                report.user,
                held.len()
            ));
        }
        for (seq, id) in &report.held {
            if by_seq.get(&(report.room.clone(), *seq)) != Some(id) {
                client_problems.push(format!(
                    "{} seq {seq} is not the stored message",
                    report.user
                ));
            }
        }
        client_problems.extend(report.conflicts.iter().cloned());
    }
    eprintln!(
        "chaos events ({chaos_took:.1?}):\n  {}",
        events.join("\n  ")
    );
    eprintln!(
        "chaos figures: sent {sent} SendMessage frames, acknowledged {acked}, stored {} \
         (duplicates: {seq_dups} by seq, {stored_twice} temp ids stored twice), gaps {gaps}, \
         acknowledged but not stored {}, reconnects {reconnects}, longest outage seen by a client {longest:.1?}, \
         redelivered (already held) {redelivered}, ResyncRequired {resyncs}, \
         Resumes for a silent tail {stalled}, client problems {}",
        stored.len(),
        lost.len(),
        client_problems.len()
    );
    assert!(
        lost.is_empty(),
        "acknowledged, then lost: {:?}",
        &lost[..lost.len().min(20)]
    );
    assert_eq!(seq_dups, 0, "one row per seq");
    assert_eq!(stored_twice, 0, "no temp id stored twice");
    assert_eq!(gaps, 0, "no seq gap in any room");
    assert!(
        client_problems.is_empty(),
        "every client holds its room once, in order: {:?}",
        &client_problems[..client_problems.len().min(20)]
    );
    assert!(acked > CLIENTS, "traffic flowed: {acked} acknowledged");
}

/// Every acknowledged write reaches the AOF before Redis answers, so a
/// `kill -9` of Redis loses nothing that was confirmed (with the default
/// `everysec`, up to a second of confirmed messages would be at risk).
async fn fsync_every_write(cluster: &Cluster) {
    cluster
        .redis()
        .cmd(&["CONFIG", "SET", "appendfsync", "always"])
        .await
        .expect("CONFIG SET appendfsync always");
}

/// One client: connects, resumes, sends, reconnects; when `finals` arrive, reads
/// until it holds its room's last message, then reports.
async fn run_client(
    user: String,
    token: String,
    room: String,
    gateways: Gateways,
    sending: Arc<AtomicBool>,
    mut finals: watch::Receiver<Option<HashMap<String, i64>>>,
) -> ClientReport {
    let mut report = ClientReport {
        user: user.clone(),
        room: room.clone(),
        ..ClientReport::default()
    };
    let mut next = 0u64;
    let mut attempt = rand::random_range(0..3usize);
    let mut down_since: Option<Instant> = None;
    let mut connected_once = false;
    let mut catching_up: Option<Instant> = None;
    let give_up = Instant::now() + Duration::from_secs(chaos_secs() + 240);
    loop {
        if Instant::now() > give_up || catching_up.is_some_and(|since| since.elapsed() > CATCH_UP) {
            return report;
        }
        let url = gateways
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
                // Report what it holds rather than hang: the checks say what is missing.
                if done || since.elapsed() > CATCH_UP {
                    return report;
                }
            }
            if sending.load(Ordering::SeqCst) || in_flight.is_some() {
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
                            // Refused (Redis away, say): the same temp id again soon.
                            in_flight =
                                Some((temp.to_owned(), Instant::now() - Duration::from_secs(4)));
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
