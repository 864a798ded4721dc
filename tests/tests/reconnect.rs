//! Gateways come and go: drain on SIGTERM, resume after a crash, Redis restarts.
//! Cluster only: these are about processes dying, which the embedded mode (one
//! process) does not have; its own restart test is in `embedded.rs`.

use chatter_tests::chat::{
    FRAME_WAIT, create_room, ensure_users, read_until, resume, send_and_confirm,
};
use chatter_tests::{Cluster, Incoming, WsClient, binaries, eventually};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Every message exactly once, in seq order: a client that sends `Resume` as its
/// first frame gets the replay before any live frame.
fn assert_exactly_once(seen: &[i64], total: i64) {
    assert_eq!(
        seen,
        (1..=total).collect::<Vec<_>>(),
        "every message exactly once, in order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_gateways_client_resumes_on_another_without_loss() {
    const TOTAL: i64 = 500;
    let mut cluster = Cluster::builder(binaries!())
        .gateways(2)
        .env("FRAMES_PER_SEC", "100000")
        // Smaller than the gap, so the replay reads both the log and Postgres.
        .env("RECENT_LOG_SIZE", "50")
        .env("PRESENCE_TTL_SECS", "3")
        .start()
        .await
        .expect("cluster");
    // A support dashboard on the surviving gateway watches alice's presence.
    let mut desk = cluster
        .connect_ws(1, &cluster.token_with_roles("desk", &["support"]))
        .await
        .expect("desk");
    desk.send_frame("SubscribePresence", json!({}))
        .await
        .expect("subscribe");
    desk.send_frame("Ping", json!({})).await.expect("ping");
    desk.recv_type("Pong", FRAME_WAIT)
        .await
        .expect("subscribed");
    ensure_users(&cluster, &["alice", "bob"])
        .await
        .expect("users");
    let room = create_room(&cluster, 1, "bob", &["alice"])
        .await
        .expect("room");
    let mut alice = cluster
        .connect_ws(0, &cluster.token("alice"))
        .await
        .expect("alice on 0");

    let mut bob = cluster
        .connect_ws(1, &cluster.token("bob"))
        .await
        .expect("bob on 1");
    let sender_room = room.clone();
    let sender = tokio::spawn(async move {
        for i in 1..=TOTAL {
            let confirmation =
                send_and_confirm(&mut bob, &sender_room, &format!("m{i}"), &format!("t{i}"))
                    .await
                    .expect("confirmed");
            assert_eq!(confirmation["confirmed"], true, "{confirmation}");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });

    let mut seen = Vec::new();
    read_until(&mut alice, &mut seen, 100)
        .await
        .expect("live messages before the crash");
    cluster.gateway_mut(0).kill9();
    let killed = Instant::now();
    // While she is away, her presence flips offline within the TTL...
    let alice_went = |online: bool| {
        move |frame: &Value| frame["user_id"] == "alice" && frame["online"] == online
    };
    let offline = loop {
        let change = desk
            .recv_type("PresenceChanged", FRAME_WAIT)
            .await
            .expect("offline");
        if alice_went(false)(&change) {
            break change;
        }
    };
    assert_eq!(offline["online"], false);
    let away = killed.elapsed();
    eprintln!("alice went offline {away:?} after her gateway was killed (TTL 3 s)");
    assert!(away <= Duration::from_secs(3), "{away:?}");
    let last = *seen.last().expect("some");
    let mut alice = cluster
        .connect_ws(1, &cluster.token("alice"))
        .await
        .expect("alice on 1");
    let (replayed, resumed_at) = resume(&mut alice, &room, last).await.expect("resumed");
    // ...and back online when she reconnects.
    let online = loop {
        let change = desk
            .recv_type("PresenceChanged", FRAME_WAIT)
            .await
            .expect("online");
        if alice_went(true)(&change) {
            break change;
        }
    };
    assert_eq!(online["online"], true);
    assert!(
        replayed.windows(2).all(|w| w[0] < w[1]),
        "the replay is in seq order: {replayed:?}"
    );
    assert!(
        replayed.last().is_none_or(|seq| *seq == resumed_at),
        "Resumed names the replay's last seq"
    );
    seen.extend(replayed);
    sender.await.expect("all sent");
    read_until(&mut alice, &mut seen, TOTAL)
        .await
        .expect("the rest live");
    assert_exactly_once(&seen, TOTAL);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_gap_beyond_resume_max_asks_for_a_resync() {
    let cluster = Cluster::builder(binaries!())
        .env("RESUME_MAX", "10")
        .start()
        .await
        .expect("cluster");
    ensure_users(&cluster, &["alice", "bob"])
        .await
        .expect("users");
    let room = create_room(&cluster, 0, "bob", &["alice"])
        .await
        .expect("room");
    let mut bob = cluster
        .connect_ws(0, &cluster.token("bob"))
        .await
        .expect("bob");
    for i in 0..15 {
        send_and_confirm(&mut bob, &room, &format!("m{i}"), &format!("t{i}"))
            .await
            .expect("sent");
    }
    let mut alice = cluster
        .connect_ws(0, &cluster.token("alice"))
        .await
        .expect("alice");
    alice
        .send_frame("Resume", json!({ "rooms": { &room: 0 } }))
        .await
        .expect("send");
    let resync = alice
        .recv_type("ResyncRequired", FRAME_WAIT)
        .await
        .expect("resync");
    assert_eq!(resync["room_id"], room.as_str());
    // Within the limit, the same room replays.
    let (replayed, at) = resume(&mut alice, &room, 10).await.expect("resumed");
    assert_eq!((replayed, at), ((11..=15).collect(), 15));
    // A room the caller is not in is an error, not a leak.
    let (status, _) = cluster
        .api(0)
        .get("/ws_token", cluster.token("mallory"))
        .await
        .expect("mallory exists");
    assert_eq!(status, 200);
    let mut mallory = cluster
        .connect_ws(0, &cluster.token("mallory"))
        .await
        .expect("mallory");
    mallory
        .send_frame("Resume", json!({ "rooms": { &room: 0 } }))
        .await
        .expect("send");
    assert_eq!(
        mallory.recv_type("Error", FRAME_WAIT).await.expect("error")["code"],
        "not_a_member"
    );
    mallory
        .expect_silence("MessageReceived", Duration::from_millis(500))
        .await
        .expect("nothing leaks");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_drains_sockets_with_4007_spread_over_the_window_and_nothing_is_lost() {
    const CLIENTS: usize = 300;
    const MESSAGES: i64 = 60;
    const WINDOW: Duration = Duration::from_secs(3);
    let mut cluster = Cluster::builder(binaries!())
        .gateways(2)
        .env("DRAIN_WINDOW_SECS", "3")
        .env("FRAMES_PER_SEC", "100000")
        .start()
        .await
        .expect("cluster");
    let users: Vec<String> = (0..CLIENTS).map(|i| format!("user{i}")).collect();
    let mut everyone: Vec<&str> = users.iter().map(String::as_str).collect();
    everyone.push("bob");
    ensure_users(&cluster, &everyone).await.expect("users");
    let room = create_room(&cluster, 1, "bob", &everyone[..CLIENTS])
        .await
        .expect("room");

    // 300 sockets on gateway 0, each reading until its 4007, then moving to gateway 1.
    let mut clients = Vec::new();
    for user in &users {
        clients.push(
            cluster
                .connect_ws(0, &cluster.token(user))
                .await
                .expect("connect"),
        );
    }
    let other_gateway = cluster.gateway(1).ws_url();
    let tokens: Vec<String> = users.iter().map(|u| cluster.token(u)).collect();
    let mut tasks = Vec::new();
    for (mut ws, token) in clients.into_iter().zip(tokens) {
        let (room, other_gateway) = (room.clone(), other_gateway.clone());
        tasks.push(tokio::spawn(async move {
            let mut seen: Vec<i64> = Vec::new();
            let (code, closed_at) = loop {
                match ws
                    .recv(Duration::from_secs(20))
                    .await
                    .expect("frame or close")
                {
                    Incoming::Frame(frame) if frame["type"] == "MessageReceived" => {
                        seen.push(frame["data"]["seq"].as_i64().unwrap_or(-1))
                    }
                    Incoming::Frame(_) => {}
                    Incoming::Closed { code, .. } => break (code, Instant::now()),
                }
            };
            let mut ws = WsClient::connect(&format!("{other_gateway}?token={token}"))
                .await
                .expect("reconnect");
            let last = seen.iter().copied().max().unwrap_or(0);
            let (replayed, _) = resume(&mut ws, &room, last).await.expect("resume");
            seen.extend(replayed);
            read_until(&mut ws, &mut seen, MESSAGES)
                .await
                .expect("all messages");
            (code, closed_at, seen)
        }));
    }

    let mut bob = cluster
        .connect_ws(1, &cluster.token("bob"))
        .await
        .expect("bob");
    let mut sent = 0;
    let drain_started = Instant::now();
    cluster.gateway(0).sigterm().expect("SIGTERM");
    // Bob keeps talking through the whole drain.
    while sent < MESSAGES {
        let confirmation =
            send_and_confirm(&mut bob, &room, &format!("m{sent}"), &format!("t{sent}"))
                .await
                .expect("sent");
        assert_eq!(confirmation["confirmed"], true);
        sent += 1;
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    let status = cluster
        .gateway_mut(0)
        .wait_exit(WINDOW + Duration::from_secs(8))
        .await
        .expect("exits in time");
    assert!(status.success(), "drained gateway exits 0: {status:?}");

    let mut closes = Vec::new();
    for task in tasks {
        let (code, closed_at, seen) = task.await.expect("client task");
        assert_eq!(code, 4007);
        assert_exactly_once(&seen, MESSAGES);
        closes.push(closed_at.duration_since(drain_started));
    }
    closes.sort();
    let (first, last) = (closes[0], closes[closes.len() - 1]);
    let median = closes[closes.len() / 2];
    eprintln!("4007 closes after SIGTERM: first {first:?}, median {median:?}, last {last:?}");
    assert!(
        last - first >= WINDOW / 2,
        "closes are spread over the window: {first:?}..{last:?}"
    );
    assert!(
        last <= WINDOW + Duration::from_secs(1),
        "all closed within the window: {last:?}"
    );
    let early = closes.iter().filter(|c| **c < WINDOW / 4).count();
    assert!(
        early < CLIENTS / 2,
        "no stampede at the start: {early} of {CLIENTS} in the first quarter"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn messages_flow_again_after_redis_restarts_and_none_acknowledged_is_lost() {
    let mut cluster = Cluster::builder(binaries!())
        .gateways(2)
        .start()
        .await
        .expect("cluster");
    // Every acknowledged write must survive a kill: fsync each one.
    cluster
        .redis()
        .cmd(&["CONFIG", "SET", "appendfsync", "always"])
        .await
        .expect("config");
    ensure_users(&cluster, &["alice", "bob"])
        .await
        .expect("users");
    let room = create_room(&cluster, 0, "alice", &["bob"])
        .await
        .expect("room");
    let mut alice = cluster
        .connect_ws(0, &cluster.token("alice"))
        .await
        .expect("alice");
    let mut bob = cluster
        .connect_ws(1, &cluster.token("bob"))
        .await
        .expect("bob");

    let mut confirmed: HashMap<String, Value> = HashMap::new();
    for i in 0..20 {
        let c = send_and_confirm(&mut alice, &room, &format!("before {i}"), &format!("b{i}"))
            .await
            .expect("sent");
        confirmed.insert(c["message_id"].as_str().expect("id").to_owned(), c);
    }
    cluster.redis_mut().kill();
    // During the outage sends are refused clearly, and the sockets stay open.
    let refused = send_and_confirm(&mut alice, &room, "during", "d1")
        .await
        .expect("answered");
    assert_eq!(refused["confirmed"], false);
    assert_eq!(refused["reason"], "unavailable");
    cluster.redis_mut().restart().await.expect("redis back");

    // Delivery between the two gateways resumes by itself.
    let deadline = Instant::now() + Duration::from_secs(20);
    for attempt in 1.. {
        let marker = format!("after {attempt}");
        let flowed: anyhow::Result<()> = async {
            let c = send_and_confirm(&mut alice, &room, &marker, &marker).await?;
            anyhow::ensure!(c["confirmed"] == true, "{c}");
            loop {
                let m = bob
                    .recv_type("MessageReceived", Duration::from_secs(1))
                    .await?;
                if m["message"] == marker.as_str() {
                    return Ok(());
                }
            }
        }
        .await;
        match flowed {
            Ok(()) => break,
            Err(error) if Instant::now() < deadline => {
                eprintln!("not yet: {error}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(error) => panic!("messages do not flow again: {error}"),
        }
    }

    let db = cluster.db();
    eventually(Duration::from_secs(15), || async {
        let ids: Vec<uuid::Uuid> = sqlx::query_scalar("SELECT id FROM messages")
            .fetch_all(&db)
            .await?;
        let stored: Vec<String> = ids.iter().map(|id| id.to_string()).collect();
        let missing: Vec<&String> = confirmed.keys().filter(|id| !stored.contains(id)).collect();
        anyhow::ensure!(missing.is_empty(), "missing {missing:?}");
        Ok(())
    })
    .await
    .expect("every acknowledged message is stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigint_drains_like_sigterm() {
    let mut cluster = Cluster::builder(binaries!())
        .env("DRAIN_WINDOW_SECS", "1")
        .start()
        .await
        .expect("cluster");
    let mut alice = cluster
        .connect_ws(0, &cluster.token("alice"))
        .await
        .expect("alice");
    let pid = cluster.gateway(0).pid().to_string();
    let sent = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .expect("kill runs");
    assert!(sent.success());
    let close = alice
        .expect_close(Duration::from_secs(5))
        .await
        .expect("closed");
    assert_eq!(close.code, 4007, "{close:?}");
    assert_eq!(
        close.frame("Disconnection").expect("told why")["code"],
        4007
    );
    let status = cluster
        .gateway_mut(0)
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("exits");
    assert!(status.success(), "{status:?}");
}

/// A socket holds live frames briefly after connecting (waiting for `Resume`);
/// a busy room must not overflow that hold into a slow-consumer close.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_quiet_socket_in_a_busy_room_is_not_taken_for_a_slow_consumer() {
    const BURST: i64 = 40;
    let cluster = Cluster::builder(binaries!())
        .env("SEND_QUEUE_FRAMES", "16")
        .env("FRAMES_PER_SEC", "100000")
        .start()
        .await
        .expect("cluster");
    ensure_users(&cluster, &["alice", "bob"])
        .await
        .expect("users");
    let room = create_room(&cluster, 0, "bob", &["alice"])
        .await
        .expect("room");
    let mut bob = cluster
        .connect_ws(0, &cluster.token("bob"))
        .await
        .expect("bob");
    let mut alice = cluster
        .connect_ws(0, &cluster.token("alice"))
        .await
        .expect("alice");
    for i in 1..=BURST {
        send_and_confirm(&mut bob, &room, &format!("m{i}"), &format!("t{i}"))
            .await
            .expect("sent");
    }
    let mut seen = Vec::new();
    read_until(&mut alice, &mut seen, BURST)
        .await
        .expect("no close, every message");
    assert_exactly_once(&seen, BURST);
}
