//! Integrations the worker drives (issue 14, points 4–6), end to end with real
//! fakes of the services chatter does not own: the notification service (the
//! harness's `NotifFake`), a webhook receiver (an axum server here) and an SMTP
//! server (a tiny one here, speaking just enough SMTP for `lettre`).
//!
//! - Notifications are never lost: workers killed with SIGKILL at random
//!   moments under 2,000 messages to offline recipients; every expected
//!   notification arrives at least once (by `Idempotency-Key`).
//! - Coalescing: a burst in one room is one notification now and one that says
//!   how many came after.
//! - Webhooks: the receiver down, then back; every event arrives, each id at
//!   least once, correctly signed; `POST /webhook/verify` refuses wrong and
//!   tampered signatures.
//! - Error e-mail: an error line is mailed, an info line is not.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use chatter_tests::chat::{change_members, create_room, ensure_users, post_message};
use chatter_tests::{Auth, Cluster, Resp, binaries, eventually};
use serde_json::{Value, json};

/// Sends `per_room` messages by REST into each room (one task per room, each
/// as the room's sender with its token); returns the message ids per room.
/// Owned arguments: the cluster stays free for the test to restart workers.
async fn post_all(
    http: reqwest::Client,
    base: String,
    rooms: Vec<(String, String, String)>,
    per_room: usize,
    sent: Arc<AtomicUsize>,
) -> Result<HashMap<String, Vec<String>>> {
    let tasks: Vec<_> = rooms
        .into_iter()
        .map(|(sender, token, room)| {
            let (http, base, sent) = (http.clone(), base.clone(), sent.clone());
            tokio::spawn(async move {
                let mut ids = Vec::with_capacity(per_room);
                for n in 0..per_room {
                    let response = http
                        .post(format!("{base}/rooms/{room}/messages"))
                        .bearer_auth(&token)
                        .json(&json!({ "message": format!("{sender} says {n}") }))
                        .send()
                        .await?;
                    let status = response.status();
                    let answer: Value = response.json().await?;
                    ensure!(status.as_u16() == 201, "POST message: {status} {answer}");
                    let id = answer["message_id"].as_str().context("message_id")?;
                    ids.push(id.to_owned());
                    sent.fetch_add(1, Ordering::SeqCst);
                }
                anyhow::Ok((room, ids))
            })
        })
        .collect();
    let mut by_room = HashMap::new();
    for task in tasks {
        let (room, ids) = task.await.context("sender task")??;
        by_room.insert(room, ids);
    }
    Ok(by_room)
}

/// A pseudo-random number in `0..n` (the clock's nanoseconds are random enough
/// for choosing kill moments).
fn random_below(n: u64) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    u64::from(nanos) % n.max(1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn workers_killed_at_random_moments_lose_no_notification() {
    const ROOMS: usize = 4;
    const PER_ROOM: usize = 500;
    const RECIPIENTS: usize = 2;
    let started = Instant::now();
    let mut cluster = Cluster::builder(binaries!())
        .workers(2)
        // A sender's message budget is a socket's frame rate, over HTTP too.
        .env("FRAMES_PER_SEC", "100000")
        .env("REST_RATE_PER_SEC", "100000")
        .env("REST_RATE_BURST", "100000")
        .env("WORKER_BATCH_SIZE", "25")
        .env("WORKER_CLAIM_IDLE_MS", "1500")
        .env("WORKER_CLAIM_INTERVAL_MS", "300")
        .env("NOTIFICATION_TIMEOUT_MS", "2000")
        .env("NOTIFICATION_RETRIES", "3")
        .env("NOTIFICATION_BACKOFF_MS", "50")
        .start()
        .await
        .expect("cluster starts");
    // Senders post by REST and no one is connected: every recipient is offline.
    let mut rooms = Vec::new();
    let mut recipients_of: HashMap<String, Vec<String>> = HashMap::new();
    for r in 0..ROOMS {
        let sender = format!("s{r}");
        let recipients: Vec<String> = (0..RECIPIENTS).map(|i| format!("r{r}-{i}")).collect();
        let mut users: Vec<&str> = recipients.iter().map(String::as_str).collect();
        users.push(&sender);
        ensure_users(&cluster, &users).await.expect("users");
        let members: Vec<&str> = recipients.iter().map(String::as_str).collect();
        let room = create_room(&cluster, 0, &sender, &members)
            .await
            .expect("room");
        recipients_of.insert(room.clone(), recipients);
        rooms.push((sender.clone(), cluster.token(&sender), room));
    }

    let sent = Arc::new(AtomicUsize::new(0));
    let sending = tokio::spawn(post_all(
        cluster.http().clone(),
        cluster.gateway(0).http_url(),
        rooms,
        PER_ROOM,
        sent.clone(),
    ));
    // Kill a random worker at a random moment, start a fresh one in its place,
    // again and again while messages flow and notifications go out.
    let expected_total = ROOMS * PER_ROOM * RECIPIENTS;
    let mut kills = Vec::new();
    let kill_until = Instant::now() + Duration::from_secs(90);
    while Instant::now() < kill_until {
        tokio::time::sleep(Duration::from_millis(150 + random_below(450))).await;
        let delivered = cluster.notif().calls().len();
        if sending.is_finished() && delivered >= expected_total / 2 && kills.len() >= 6 {
            break;
        }
        let victim = random_below(2) as usize;
        let at = sent.load(Ordering::SeqCst);
        cluster
            .restart_worker(victim)
            .await
            .expect("worker restarts");
        kills.push((victim, at, delivered));
    }
    let by_room = sending
        .await
        .expect("sender task")
        .expect("every message accepted");

    let mut expected = HashSet::new();
    for (room, ids) in &by_room {
        for id in ids {
            for recipient in &recipients_of[room] {
                expected.insert(format!("{id}:{recipient}"));
            }
        }
    }
    assert_eq!(expected.len(), expected_total);
    let delivered = eventually(Duration::from_secs(120), || async {
        let calls = cluster.notif().calls();
        let keys: HashSet<String> = calls
            .iter()
            .filter_map(|c| c.idempotency_key.clone())
            .collect();
        let missing = expected.difference(&keys).count();
        ensure!(
            missing == 0,
            "{missing} of {} expected notifications not delivered yet",
            expected.len()
        );
        Ok(calls)
    })
    .await
    .expect("every expected notification arrives");
    let keys: Vec<String> = delivered
        .iter()
        .filter_map(|c| c.idempotency_key.clone())
        .collect();
    let distinct: HashSet<&String> = keys.iter().collect();
    assert_eq!(
        keys.len(),
        delivered.len(),
        "every call has an Idempotency-Key"
    );
    assert!(
        distinct.iter().all(|k| expected.contains(*k)),
        "a notification nobody should get"
    );
    // Each body matches its key: the recipient and the message it names.
    for call in &delivered {
        let key = call.idempotency_key.as_deref().unwrap_or("");
        let recipient = key.split_once(':').map(|(_, r)| r).unwrap_or("");
        assert_eq!(call.body["username"], recipient, "{:?}", call.body);
        assert_eq!(call.authorization.as_deref(), Some(cluster.notif_auth()));
    }
    eprintln!(
        "workers_killed_at_random_moments_lose_no_notification: {} kills (worker, messages \
         accepted, notifications delivered at the kill: {kills:?}); notifications expected {}, \
         delivered {} distinct, {} duplicates ({} calls); {:?}",
        kills.len(),
        expected.len(),
        distinct.len(),
        keys.len() - distinct.len(),
        keys.len(),
        started.elapsed()
    );
}

// ----- notification coalescing -----

/// How many messages a notification stands for: "N new messages; …" or one.
fn count_of(message: &str) -> usize {
    message
        .split_once(" new messages; ")
        .and_then(|(n, _)| n.parse().ok())
        .unwrap_or(1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_in_one_room_is_coalesced_into_one_notification_that_counts() {
    const BURST: usize = 12;
    const WINDOW_SECS: u64 = 3;
    let started = Instant::now();
    let cluster = Cluster::builder(binaries!())
        .env("NOTIFICATION_COALESCE_SECS", WINDOW_SECS.to_string())
        .env("FRAMES_PER_SEC", "1000")
        .env("REST_RATE_BURST", "1000")
        .start()
        .await
        .expect("cluster starts");
    ensure_users(&cluster, &["alice", "bob"])
        .await
        .expect("users");
    let room = create_room(&cluster, 0, "alice", &["bob"])
        .await
        .expect("room");
    let sending = Instant::now();
    for n in 0..BURST {
        post_message(
            &cluster,
            0,
            "alice",
            &room,
            &json!({ "message": format!("m{n}") }),
        )
        .await
        .expect("posted");
    }
    let sent_in = sending.elapsed();
    // Every message is counted by some notification; the last one names the last message.
    let calls = eventually(Duration::from_secs(30), || async {
        let calls = cluster.notif().calls();
        let counted: usize = calls
            .iter()
            .map(|c| count_of(c.body["message"].as_str().unwrap_or("")))
            .sum();
        ensure!(
            counted == BURST,
            "{counted} of {BURST} messages notified: {calls:?}"
        );
        Ok(calls)
    })
    .await
    .expect("the burst is notified");
    let windows = sent_in.as_secs() / WINDOW_SECS + 2;
    assert!(
        calls.len() as u64 <= windows,
        "{} notifications for a burst of {BURST} sent in {sent_in:?} (window {WINDOW_SECS} s)",
        calls.len()
    );
    assert_eq!(calls[0].body["message"], "alice messaged you: m0");
    let last = &calls[calls.len() - 1].body["message"];
    assert_eq!(
        last,
        &format!(
            "{} new messages; alice messaged you: m{}",
            count_of(last.as_str().unwrap_or("")),
            BURST - 1
        )
    );
    // Nothing more comes once the windows have ended.
    tokio::time::sleep(Duration::from_secs(WINDOW_SECS + 1)).await;
    assert_eq!(cluster.notif().calls().len(), calls.len());
    eprintln!(
        "a_burst_in_one_room_is_coalesced: {BURST} messages in {sent_in:?} → {} notifications ({:?}); {:?}",
        calls.len(),
        calls
            .iter()
            .map(|c| c.body["message"].as_str().unwrap_or("").to_owned())
            .collect::<Vec<_>>(),
        started.elapsed()
    );
}

// ----- webhooks -----

/// One request the webhook receiver got.
#[derive(Debug, Clone)]
struct Hook {
    id: String,
    attempt: u32,
    signature: String,
    body: String,
    status: u16,
}

/// A webhook receiver: a real HTTP server recording each call; while
/// `failing`, it answers 503.
#[derive(Default)]
struct Receiver {
    hooks: Mutex<Vec<Hook>>,
    failing: AtomicBool,
}

impl Receiver {
    async fn start() -> (Arc<Receiver>, String, tokio::task::JoinHandle<()>) {
        let receiver = Arc::new(Receiver::default());
        let app = axum::Router::new()
            .fallback(receive)
            .with_state(receiver.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the webhook receiver");
        let url = format!("http://{}/hooks", listener.local_addr().expect("addr"));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (receiver, url, task)
    }

    fn hooks(&self) -> Vec<Hook> {
        self.hooks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}

async fn receive(
    State(receiver): State<Arc<Receiver>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let status = if receiver.failing.load(Ordering::SeqCst) {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    receiver
        .hooks
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .push(Hook {
            id: header("x-webhook-id"),
            attempt: header("x-webhook-attempt").parse().unwrap_or(0),
            signature: header("x-signature"),
            body: String::from_utf8_lossy(&body).into_owned(),
            status: status.as_u16(),
        });
    status
}

/// A Redis reply's strings, space-separated (for searching a stream's entries).
fn flatten(resp: &Resp) -> String {
    match resp {
        Resp::Array(Some(items)) => items.iter().map(flatten).collect::<Vec<_>>().join(" "),
        other => other.as_str().unwrap_or("").to_owned(),
    }
}

/// `POST /webhook/verify` as the service; returns the status and the answer.
async fn verify(cluster: &Cluster, body: &Value) -> (u16, Value) {
    let (status, answer) = cluster
        .api(0)
        .post_json(
            "/webhook/verify",
            Auth::Raw(cluster.service_secret().to_owned()),
            body,
        )
        .await
        .expect("POST /webhook/verify");
    (status.as_u16(), answer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn webhooks_reach_a_receiver_that_was_down_each_at_least_once() {
    const MESSAGES: usize = 5;
    let started = Instant::now();
    let (receiver, url, _server) = Receiver::start().await;
    receiver.failing.store(true, Ordering::SeqCst);
    let cluster = Cluster::builder(binaries!())
        .env("WEBHOOK_URL", &url)
        .env("WEBHOOK_SECRET", "webhook-secret-for-tests")
        .env("WEBHOOK_RETRIES", "6")
        .env("WEBHOOK_BACKOFF_MS", "100")
        .env("FRAMES_PER_SEC", "1000")
        .env("REST_RATE_BURST", "1000")
        .start()
        .await
        .expect("cluster starts");
    ensure_users(&cluster, &["alice", "bob", "carol"])
        .await
        .expect("users");
    // One event of each kind the REST API makes, and MESSAGES message.created.
    let room = create_room(&cluster, 0, "alice", &["bob"])
        .await
        .expect("room");
    change_members(&cluster, 0, "alice", &room, &json!({ "add": ["carol"] }))
        .await
        .expect("carol added");
    change_members(&cluster, 0, "alice", &room, &json!({ "remove": ["bob"] }))
        .await
        .expect("bob removed");
    let mut ids = Vec::new();
    for n in 0..MESSAGES {
        let posted = post_message(
            &cluster,
            0,
            "alice",
            &room,
            &json!({ "message": format!("hook {n}") }),
        )
        .await
        .expect("posted");
        ids.push(posted["message_id"].as_str().expect("id").to_owned());
    }
    // Edits and deletions need the message stored.
    chatter_tests::chat::history_until(&cluster, 0, "alice", &room, "all stored", |page| {
        page.len() >= MESSAGES
    })
    .await
    .expect("stored");
    let (status, body) = cluster
        .api(0)
        .request(
            reqwest::Method::PATCH,
            &format!("/rooms/{room}/messages/{}", ids[0]),
            cluster.token("alice").into(),
            Some(&json!({ "message": "hook 0, edited" })),
        )
        .await
        .expect("PATCH");
    assert_eq!(status.as_u16(), 200, "{body}");
    let (status, body) = cluster
        .api(0)
        .delete(
            &format!("/rooms/{room}/messages/{}", ids[1]),
            cluster.token("alice"),
        )
        .await
        .expect("DELETE message");
    assert_eq!(status.as_u16(), 204, "{body}");
    let (status, body) = cluster
        .api(0)
        .delete(&format!("/rooms/{room}"), cluster.token("alice"))
        .await
        .expect("DELETE room");
    assert_eq!(status.as_u16(), 204, "{body}");
    let expected: HashMap<&str, usize> = HashMap::from([
        ("room.created", 1),
        ("member.added", 1),
        ("member.removed", 1),
        ("message.created", MESSAGES),
        ("message.edited", 1),
        ("message.deleted", 1),
        ("room.deleted", 1),
    ]);
    let total: usize = expected.values().sum();

    // Down: every event is tried (and refused) at least once, some again.
    chatter_tests::until(Duration::from_secs(30), "attempts while down", || async {
        let hooks = receiver.hooks();
        let tried: HashSet<&str> = hooks.iter().map(|h| h.id.as_str()).collect();
        tried.len() >= total && hooks.iter().any(|h| h.attempt >= 2)
    })
    .await
    .expect("the worker tries while the receiver is down");
    receiver.failing.store(false, Ordering::SeqCst);

    // Back: every event arrives.
    let hooks = eventually(Duration::from_secs(60), || async {
        let hooks = receiver.hooks();
        let delivered: HashSet<&str> = hooks
            .iter()
            .filter(|h| h.status == 200)
            .map(|h| h.id.as_str())
            .collect();
        ensure!(
            delivered.len() >= total,
            "{} of {total} events delivered",
            delivered.len()
        );
        Ok(hooks)
    })
    .await
    .expect("every event is delivered");
    let ok: Vec<&Hook> = hooks.iter().filter(|h| h.status == 200).collect();
    let mut by_type: HashMap<String, HashSet<String>> = HashMap::new();
    for hook in &ok {
        let body: Value = serde_json::from_str(&hook.body).expect("JSON body");
        assert_eq!(
            body["id"],
            hook.id.as_str(),
            "X-Webhook-Id is the body's id"
        );
        by_type
            .entry(body["type"].as_str().unwrap_or("?").to_owned())
            .or_default()
            .insert(hook.id.clone());
        if body["type"] == "message.created" {
            assert!(ids.iter().any(|id| body["data"]["id"] == id.as_str()));
            assert_eq!(
                body["data"]["id"],
                hook.id.as_str(),
                "message.created's id is the message's"
            );
        }
    }
    for (kind, count) in &expected {
        assert_eq!(
            by_type.get(*kind).map_or(0, HashSet::len),
            *count,
            "{kind} events: {by_type:?}"
        );
    }
    // The same id and body on every attempt, numbered 1, 2, …; correctly signed.
    let mut attempts: HashMap<&str, Vec<&Hook>> = HashMap::new();
    for hook in &hooks {
        attempts.entry(hook.id.as_str()).or_default().push(hook);
    }
    for (id, tries) in &attempts {
        assert!(
            tries.iter().all(|h| h.body == tries[0].body),
            "{id}: body changed between attempts"
        );
        let numbers: Vec<u32> = tries.iter().map(|h| h.attempt).collect();
        assert!(numbers.contains(&1), "{id}: attempts {numbers:?}");
    }
    for hook in ok.iter().take(3) {
        let (status, verdict) = verify(
            &cluster,
            &json!({ "raw_body": hook.body, "signature": hook.signature }),
        )
        .await;
        assert_eq!(
            (status, verdict["is_valid"].clone()),
            (200, json!(true)),
            "{hook:?}"
        );
    }
    let failed = hooks.iter().filter(|h| h.status != 200).count();
    let duplicates = ok.len() - attempts.len();
    let max_attempt = hooks.iter().map(|h| h.attempt).max().unwrap_or(0);

    // Down for good: after the last retry an event is dead-lettered.
    receiver.failing.store(true, Ordering::SeqCst);
    let second = create_room(&cluster, 0, "alice", &["carol"])
        .await
        .expect("second room");
    let dead = eventually(Duration::from_secs(60), || async {
        let dead = cluster
            .redis()
            .cmd(&["XRANGE", "chatter:webhooks:dead", "-", "+"])
            .await?;
        let text = flatten(&dead);
        ensure!(
            text.contains(&second),
            "no dead letter for room {second} yet: {text}"
        );
        Ok(text)
    })
    .await
    .expect("dead-lettered");
    assert!(dead.contains("503"), "the dead letter says why: {dead}");
    eprintln!(
        "webhooks_reach_a_receiver_that_was_down: {total} events, {} requests ({failed} refused \
         while down), every id delivered, {duplicates} delivered twice, highest X-Webhook-Attempt \
         {max_attempt}; then dead-lettered after {} attempts; {:?}",
        hooks.len(),
        receiver
            .hooks()
            .iter()
            .filter(|h| h.body.contains(&second))
            .count(),
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_verify_refuses_wrong_and_tampered_signatures() {
    // RFC 4231, test case 2: HMAC-SHA256("Jefe", "what do ya want for nothing?").
    const BODY: &str = "what do ya want for nothing?";
    const SIGNATURE: &str = "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843";
    let cluster = Cluster::builder(binaries!())
        .embedded()
        .env("WEBHOOK_SECRET", "Jefe")
        .start()
        .await
        .expect("embedded server starts");
    let cases = [
        (
            json!({ "raw_body": BODY, "signature": SIGNATURE }),
            true,
            "the right signature",
        ),
        (
            json!({ "rawBody": BODY, "signature": SIGNATURE }),
            true,
            "the older field name",
        ),
        (
            json!({ "raw_body": BODY, "signature": SIGNATURE.to_uppercase() }),
            true,
            "upper-case hex",
        ),
        (
            json!({ "raw_body": "what do ya want for nothing!", "signature": SIGNATURE }),
            false,
            "a tampered body",
        ),
        (
            json!({ "raw_body": BODY, "signature": format!("{}4", &SIGNATURE[..63]) }),
            false,
            "a wrong signature",
        ),
        (
            json!({ "raw_body": BODY, "signature": &SIGNATURE[..32] }),
            false,
            "a truncated signature",
        ),
        (
            json!({ "raw_body": BODY, "signature": "not hex at all" }),
            false,
            "not hex",
        ),
        (
            json!({ "raw_body": BODY, "signature": "" }),
            false,
            "no signature",
        ),
    ];
    for (body, valid, what) in cases {
        let (status, verdict) = verify(&cluster, &body).await;
        assert_eq!(status, 200, "{what}: {verdict}");
        assert_eq!(verdict["is_valid"], valid, "{what}: {verdict}");
        assert_eq!(verdict["isValid"], valid, "{what}: {verdict}");
    }
    let (status, error) = verify(&cluster, &json!({ "signature": SIGNATURE })).await;
    assert_eq!(
        (status, error["error"]["code"].clone()),
        (400, json!("bad_json")),
        "{error}"
    );
    let (status, error) = cluster
        .api(0)
        .post_json(
            "/webhook/verify",
            Auth::None,
            &json!({ "raw_body": BODY, "signature": SIGNATURE }),
        )
        .await
        .expect("POST");
    assert_eq!(status.as_u16(), 401, "{error}");
    let (status, error) = cluster
        .api(0)
        .post_json(
            "/webhook/verify",
            cluster.token("alice"),
            &json!({ "raw_body": BODY, "signature": SIGNATURE }),
        )
        .await
        .expect("POST");
    assert_eq!(
        status.as_u16(),
        401,
        "a user token is not the service secret: {error}"
    );
}

// ----- error e-mail -----

/// A tiny SMTP server: enough of RFC 5321 for `lettre` without TLS or AUTH.
/// Records each message's DATA.
struct SmtpFake {
    port: u16,
    mails: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl SmtpFake {
    async fn start() -> SmtpFake {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the SMTP fake");
        let port = listener.local_addr().expect("addr").port();
        let mails = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn({
            let mails = mails.clone();
            async move {
                while let Ok((socket, _)) = listener.accept().await {
                    tokio::spawn(smtp_session(socket, mails.clone()));
                }
            }
        });
        SmtpFake { port, mails, task }
    }

    fn mails(&self) -> Vec<String> {
        self.mails
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}

impl Drop for SmtpFake {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn smtp_session(socket: tokio::net::TcpStream, mails: Arc<Mutex<Vec<String>>>) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let (read, mut write) = socket.into_split();
    let mut lines = BufReader::new(read).lines();
    if write.write_all(b"220 fake ESMTP\r\n").await.is_err() {
        return;
    }
    while let Ok(Some(line)) = lines.next_line().await {
        let verb = line.split(' ').next().unwrap_or("").to_ascii_uppercase();
        let answer: &[u8] = match verb.as_str() {
            "EHLO" => b"250-fake\r\n250 8BITMIME\r\n",
            "DATA" => {
                if write.write_all(b"354 go on\r\n").await.is_err() {
                    return;
                }
                let mut mail = String::new();
                while let Ok(Some(line)) = lines.next_line().await {
                    if line == "." {
                        break;
                    }
                    mail.push_str(&line);
                    mail.push('\n');
                }
                mails
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .push(mail);
                b"250 queued\r\n"
            }
            "QUIT" => {
                let _ = write.write_all(b"221 bye\r\n").await;
                return;
            }
            _ => b"250 ok\r\n",
        };
        if write.write_all(answer).await.is_err() {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_error_is_mailed_and_an_info_line_is_not() {
    const SECRET_BODY: &str = "top-secret-message-body";
    let started = Instant::now();
    let smtp = SmtpFake::start().await;
    let cluster = Cluster::builder(binaries!())
        .env("EMAIL_TO", "ops@example.com")
        .env("EMAIL_FROM", "chatter@example.com")
        .env("SMTP_HOST", "127.0.0.1")
        .env("SMTP_PORT", smtp.port.to_string())
        .env("SMTP_TLS", "off")
        .env("EMAIL_LEVEL", "error")
        .env("EMAIL_BATCH_SECS", "1")
        .start()
        .await
        .expect("cluster starts");
    // Both processes logged their info lines ("listening", "worker ready") and
    // served a request; a batch would have gone out after 1 s.
    ensure_users(&cluster, &["alice"]).await.expect("a request");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        smtp.mails().is_empty(),
        "mailed without an error: {:?}",
        smtp.mails()
    );

    // An ingest entry that can never be stored: the worker logs an error.
    cluster
        .redis()
        .cmd(&[
            "XADD",
            "chatter:ingest",
            "*",
            "id",
            "not-a-uuid",
            "body",
            SECRET_BODY,
        ])
        .await
        .expect("XADD");
    let mails = eventually(Duration::from_secs(30), || async {
        let mails = smtp.mails();
        ensure!(!mails.is_empty(), "no mail yet");
        Ok(mails)
    })
    .await
    .expect("the error is mailed");
    let mail = mails.join("\n");
    assert!(mail.contains("cannot be stored"), "{mail}");
    assert!(mail.contains("chatter-worker"), "{mail}");
    assert!(mail.contains("To: ops@example.com"), "{mail}");
    assert!(
        !mail.contains(SECRET_BODY),
        "a message body in the mail: {mail}"
    );
    assert!(!mail.contains(cluster.jwt_secret()), "{mail}");
    assert!(!mail.contains(" INFO "), "an info line in the mail: {mail}");
    eprintln!(
        "an_error_is_mailed_and_an_info_line_is_not: {} mail(s); {:?}",
        mails.len(),
        started.elapsed()
    );
}

// ----- both backends -----

chatter_tests::for_each_backend!(
    a_message_reaches_notif_and_the_webhook,
    the_support_desk_sends_its_events
);

/// The plain path on both deployments: a message to an offline member is one
/// notification with its `Idempotency-Key`, and `room.created` and
/// `message.created` reach the webhook, signed so that `/webhook/verify` agrees.
async fn a_message_reaches_notif_and_the_webhook(backend: chatter_tests::backend::Backend) {
    let (receiver, url, _server) = Receiver::start().await;
    let cluster = backend
        .builder(binaries!())
        .env("WEBHOOK_URL", &url)
        .env("WEBHOOK_SECRET", "webhook-secret-for-tests")
        .start()
        .await
        .expect("started");
    ensure_users(&cluster, &["alice", "bob"])
        .await
        .expect("users");
    let room = create_room(&cluster, 0, "alice", &["bob"])
        .await
        .expect("room");
    let posted = post_message(
        &cluster,
        0,
        "alice",
        &room,
        &json!({ "message": "hello bob" }),
    )
    .await
    .expect("posted");
    let message_id = posted["message_id"].as_str().expect("id").to_owned();

    let calls = cluster
        .notif()
        .wait_for_calls(1, Duration::from_secs(20))
        .await
        .expect("bob is notified");
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(
        calls[0].idempotency_key.as_deref(),
        Some(format!("{message_id}:bob").as_str())
    );
    assert_eq!(calls[0].body["message"], "alice messaged you: hello bob");

    let hooks = eventually(Duration::from_secs(20), || async {
        let hooks = receiver.hooks();
        let types: HashSet<String> = hooks
            .iter()
            .filter_map(|h| serde_json::from_str::<Value>(&h.body).ok())
            .filter_map(|b| b["type"].as_str().map(str::to_owned))
            .collect();
        ensure!(
            types.contains("room.created") && types.contains("message.created"),
            "events so far: {types:?}"
        );
        Ok(hooks)
    })
    .await
    .expect("the events arrive");
    for hook in &hooks {
        assert_eq!(hook.attempt, 1, "{hook:?}");
        let body: Value = serde_json::from_str(&hook.body).expect("JSON");
        if body["type"] == "message.created" {
            assert_eq!(hook.id, message_id);
            assert_eq!(body["data"]["message"], "hello bob");
            assert_eq!(body["data"]["room_id"], room.as_str());
        }
        let (status, verdict) = verify(
            &cluster,
            &json!({ "rawBody": hook.body, "signature": hook.signature }),
        )
        .await;
        assert_eq!((status, verdict["is_valid"].clone()), (200, json!(true)));
    }
}

/// `support.requested`, `support.claimed` and `support.expired` reach the
/// webhook: two requests, one claimed, the other left to expire.
async fn the_support_desk_sends_its_events(backend: chatter_tests::backend::Backend) {
    let (receiver, url, _server) = Receiver::start().await;
    let cluster = backend
        .builder(binaries!())
        .env("WEBHOOK_URL", &url)
        .env("WEBHOOK_SECRET", "webhook-secret-for-tests")
        .env(
            "WEBHOOK_EVENTS",
            "support.requested,support.claimed,support.expired",
        )
        .env("SUPPORT_EXPIRY_SECS", "2")
        .start()
        .await
        .expect("started");
    let agent = cluster.token_with_roles("agnes", &["support"]);
    let mut rooms = Vec::new();
    for user in ["uma", "ulf"] {
        let (status, body) = cluster
            .api(0)
            .post_json("/support/requests", cluster.token(user), &json!({}))
            .await
            .expect("ask");
        assert_eq!(status.as_u16(), 201, "{body}");
        rooms.push(body["room_id"].as_str().expect("room_id").to_owned());
    }
    let (status, body) = cluster
        .api(0)
        .post_json(
            &format!("/support/requests/{}/claim", rooms[0]),
            agent.as_str(),
            &json!({}),
        )
        .await
        .expect("claim");
    assert!(status.is_success(), "{status} {body}");
    let events = eventually(Duration::from_secs(30), || async {
        let events: Vec<Value> = receiver
            .hooks()
            .iter()
            .filter_map(|h| serde_json::from_str(&h.body).ok())
            .collect();
        let of = |kind: &str| {
            events
                .iter()
                .filter(|e| e["type"] == kind)
                .map(|e| {
                    e["data"]["request"]["room_id"]
                        .as_str()
                        .unwrap_or("")
                        .to_owned()
                })
                .collect::<HashSet<String>>()
        };
        ensure!(
            of("support.requested") == HashSet::from([rooms[0].clone(), rooms[1].clone()])
                && of("support.claimed").contains(&rooms[0])
                && of("support.expired").contains(&rooms[1]),
            "events so far: {events:?}"
        );
        Ok(events)
    })
    .await
    .expect("the desk's events arrive");
    let claimed = events
        .iter()
        .find(|e| e["type"] == "support.claimed")
        .expect("claimed");
    assert_eq!(claimed["data"]["agent_id"], "agnes");
    assert!(
        events.iter().all(|e| e["type"]
            .as_str()
            .is_some_and(|t| t.starts_with("support."))),
        "WEBHOOK_EVENTS filters: {events:?}"
    );
}
