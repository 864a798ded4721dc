//! A gateway whose Redis pub/sub connection drops misses what is published
//! until it has subscribed again. Its sockets must not: once the subscriber is
//! back, the gateway replays each room's missed messages from the recent log,
//! in order, without duplicates — also to a socket that sends nothing at all
//! (a quiet room never shows the client a gap to resume from).

use chatter_tests::chat::{FRAME_WAIT, create_room, ensure_users, send_and_confirm};
use chatter_tests::{Cluster, Incoming, binaries};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn messages_published_while_the_subscriber_reconnects_still_arrive_once_in_order() {
    const MESSAGES: i64 = 60;
    let cluster = Cluster::builder(binaries!())
        .gateways(2)
        .start()
        .await
        .expect("cluster");
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
    // One message first, so bob's gateway has delivered something in the room.
    let first = send_and_confirm(&mut alice, &room, "before", "m-0")
        .await
        .expect("send");
    assert_eq!(first["confirmed"], true);
    let got = bob
        .recv_type("MessageReceived", FRAME_WAIT)
        .await
        .expect("first");
    assert_eq!(got["seq"], first["seq"]);

    // Keep killing every pub/sub connection (both gateways') while alice sends.
    let redis = cluster.redis();
    let mut kills = 0;
    for i in 1..MESSAGES {
        if i % 3 == 1 {
            let killed = redis
                .cmd(&["CLIENT", "KILL", "TYPE", "pubsub"])
                .await
                .expect("CLIENT KILL");
            kills += killed.as_int().unwrap_or(0);
        }
        let confirmed =
            send_and_confirm(&mut alice, &room, &format!("during {i}"), &format!("m-{i}"))
                .await
                .expect("send");
        assert_eq!(confirmed["confirmed"], true, "{confirmed}");
    }
    assert!(kills > 0, "no pub/sub connection was killed");
    let last_seq = first["seq"].as_i64().expect("seq") + MESSAGES - 1;

    // Bob sends nothing; every message must reach him anyway, once, in order.
    let mut seqs = vec![first["seq"].as_i64().expect("seq")];
    let deadline = Instant::now() + Duration::from_secs(20);
    while seqs.last().copied().unwrap_or(0) < last_seq {
        let left = deadline
            .checked_duration_since(Instant::now())
            .unwrap_or_else(|| panic!("bob got seqs {seqs:?}, expected up to {last_seq}"));
        match bob.recv(left).await {
            Ok(Incoming::Frame(frame)) if frame["type"] == "MessageReceived" => {
                seqs.push(frame["data"]["seq"].as_i64().expect("seq"));
            }
            Ok(Incoming::Frame(frame)) if frame["type"] == "ResyncRequired" => {
                panic!("the recent log holds every message; got {frame}")
            }
            Ok(Incoming::Frame(_)) => {}
            Ok(Incoming::Closed { code, reason }) => panic!("closed {code} {reason}"),
            Err(error) => panic!("bob got seqs {seqs:?}, expected up to {last_seq}: {error}"),
        }
    }
    let expected: Vec<i64> = (seqs[0]..=last_seq).collect();
    assert_eq!(seqs, expected, "every message once, in order");
    bob.expect_silence("MessageReceived", Duration::from_millis(500))
        .await
        .expect("no duplicates after the last");
    println!(
        "{kills} pub/sub connections killed; bob got {} messages once, in order",
        seqs.len()
    );
}
