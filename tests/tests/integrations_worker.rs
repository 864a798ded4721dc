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
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use chatter_tests::chat::{create_room, ensure_users};
use chatter_tests::{Cluster, binaries, eventually};
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
