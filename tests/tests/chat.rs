//! The core chat path, end to end: real gateways and workers over real Redis and
//! Postgres, driven by real WebSocket and HTTP clients.

use chatter_tests::backend::Backend;
use chatter_tests::chat::{
    FRAME_WAIT, await_membership, create_room, ensure_users, next_message, send_and_confirm,
    send_message,
};
use chatter_tests::ws::Incoming;
use chatter_tests::{Auth, Cluster, binaries, eventually, process::run_to_exit};
use serde_json::{Value, json};
use std::time::Duration;

const SILENCE: Duration = Duration::from_millis(700);

async fn cluster(backend: Backend, gateways: usize) -> Cluster {
    backend
        .builder(binaries!())
        .gateways(gateways)
        .start()
        .await
        .expect("cluster starts")
}

chatter_tests::for_each_backend!(
    message_reaches_every_member_device_on_every_gateway,
    seqs_are_gap_free_and_ordered_with_senders_on_both_gateways,
    resending_a_temp_id_returns_the_original_message,
    history_lists_a_rooms_messages_to_members_only,
    a_ticket_opens_one_socket_on_any_gateway,
    an_expired_ticket_is_refused,
    bad_credentials_get_their_close_codes,
    browser_origins_are_checked_on_upgrade,
    bad_frames_get_their_documented_answers_while_others_are_served,
    flooding_closes_with_4013,
    a_silent_client_is_closed_with_4003_and_a_listening_one_is_not,
    rest_bad_input_gets_json_errors,
    resume_replays_what_a_client_missed_from_the_log_and_the_database,
    a_burst_as_a_fresh_sockets_first_frames_is_confirmed_and_echoed_once_each_in_order,
);

/// A new connection that sends a burst before anything else (so its first
/// frames arrive while the socket still holds live frames for `Resume`): every
/// message is confirmed once and echoed back once, each confirmation before its
/// own copy, in seq order, and the peer on the other gateway gets each once.
/// The confirmation is written in one flush with the frames that queued for the
/// socket meanwhile, so this is what that batching must not break.
async fn a_burst_as_a_fresh_sockets_first_frames_is_confirmed_and_echoed_once_each_in_order(
    backend: Backend,
) {
    const BURST: usize = 40;
    let cluster = backend
        .builder(binaries!())
        .gateways(2)
        .env("FRAMES_PER_SEC", "10000")
        .start()
        .await
        .expect("cluster");
    ensure_users(&cluster, &["alice", "bob"])
        .await
        .expect("users");
    let room = create_room(&cluster, 0, "alice", &["bob"])
        .await
        .expect("room");
    let mut bob = cluster
        .connect_ws(1, &cluster.token("bob"))
        .await
        .expect("bob");
    let mut alice = cluster
        .connect_ws(0, &cluster.token("alice"))
        .await
        .expect("alice");
    for i in 0..BURST {
        send_message(&mut alice, &room, &format!("burst {i}"), &format!("b-{i}"))
            .await
            .expect("sent");
    }
    // Alice's frames in arrival order: each temp id's confirmation, then its copy.
    let mut confirmed: Vec<(String, i64)> = Vec::new();
    let mut echoed: Vec<(String, i64)> = Vec::new();
    while echoed.len() < BURST || confirmed.len() < BURST {
        let frame = match alice.recv(FRAME_WAIT).await.expect("alice's frames") {
            Incoming::Frame(frame) => frame,
            Incoming::Closed { code, reason } => panic!("alice closed: {code} {reason}"),
        };
        let data = &frame["data"];
        let temp = data["message_temp_id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let seq = data["seq"].as_i64().unwrap_or(-1);
        match frame["type"].as_str() {
            Some("MessageSentConfirmation") => {
                assert_eq!(data["confirmed"], true, "{frame}");
                confirmed.push((temp, seq));
            }
            Some("MessageReceived") if data["room_id"] == room.as_str() => {
                assert!(
                    confirmed.iter().any(|(t, _)| *t == temp),
                    "{temp}'s copy came before its confirmation"
                );
                echoed.push((temp, seq));
            }
            _ => {}
        }
    }
    let expected: Vec<(String, i64)> = (0..BURST)
        .map(|i| (format!("b-{i}"), i as i64 + 1))
        .collect();
    assert_eq!(
        confirmed, expected,
        "one confirmation per message, in order"
    );
    assert_eq!(
        echoed, expected,
        "one copy per message back to the sender, in order"
    );
    alice
        .expect_silence("MessageReceived", SILENCE)
        .await
        .expect("no copy twice");
    let mut seqs = Vec::new();
    for _ in 0..BURST {
        let message = next_message(&mut bob).await.expect("bob's copy");
        seqs.push(message["seq"].as_i64().unwrap_or(-1));
    }
    assert_eq!(seqs, (1..=BURST as i64).collect::<Vec<_>>());
    bob.expect_silence("MessageReceived", SILENCE)
        .await
        .expect("bob gets each once");
}

async fn message_reaches_every_member_device_on_every_gateway(backend: Backend) {
    let cluster = cluster(backend, 2).await;
    let mut alice_phone = cluster
        .connect_ws(0, &cluster.token("alice"))
        .await
        .expect("alice phone");
    let mut alice_laptop = cluster
        .connect_ws(0, &cluster.token("alice"))
        .await
        .expect("alice laptop");
    let mut bob = cluster
        .connect_ws(1, &cluster.token("bob"))
        .await
        .expect("bob");
    let mut carol = cluster
        .connect_ws(1, &cluster.token("carol"))
        .await
        .expect("carol");

    let room = create_room(&cluster, 0, "alice", &["bob"])
        .await
        .expect("room");
    for ws in [&mut alice_phone, &mut alice_laptop, &mut bob] {
        await_membership(ws, &room).await.expect("members are told");
    }

    let confirmation = send_and_confirm(&mut alice_phone, &room, "hello bob", "t-1")
        .await
        .expect("confirmed");
    assert_eq!(confirmation["confirmed"], true, "{confirmation}");
    assert_eq!(confirmation["message_temp_id"], "t-1");
    assert_eq!(confirmation["seq"], 1);
    let id = confirmation["message_id"]
        .as_str()
        .expect("message id")
        .to_owned();

    for ws in [&mut bob, &mut alice_laptop, &mut alice_phone] {
        let message = next_message(ws).await.expect("delivered");
        assert_eq!(message["id"], id.as_str());
        assert_eq!(message["seq"], 1);
        assert_eq!(message["room_id"], room.as_str());
        assert_eq!(message["sender_id"], "alice");
        assert_eq!(message["message"], "hello bob");
        assert_eq!(message["message_temp_id"], "t-1");
        assert!(message["created_at"].is_string());
    }
    carol
        .expect_silence("MessageReceived", SILENCE)
        .await
        .expect("a non-member gets nothing");
}

async fn seqs_are_gap_free_and_ordered_with_senders_on_both_gateways(backend: Backend) {
    const PER_SENDER: usize = 60;
    let cluster = backend
        .builder(binaries!())
        .gateways(2)
        .env("FRAMES_PER_SEC", "10000")
        .start()
        .await
        .expect("cluster");
    ensure_users(&cluster, &["alice", "bob", "watcher"])
        .await
        .expect("users");
    let room = create_room(&cluster, 0, "alice", &["bob", "watcher"])
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
    let mut watcher0 = cluster
        .connect_ws(0, &cluster.token("watcher"))
        .await
        .expect("watcher 0");
    let mut watcher1 = cluster
        .connect_ws(1, &cluster.token("watcher"))
        .await
        .expect("watcher 1");

    // Both senders pipeline their frames at once, racing each other through Redis.
    let send_all = |mut ws: chatter_tests::WsClient, who: &'static str, room: String| async move {
        for i in 0..PER_SENDER {
            send_message(&mut ws, &room, &format!("{who} {i}"), &format!("{who}-{i}"))
                .await
                .expect("send");
        }
        let mut seqs = Vec::new();
        for _ in 0..PER_SENDER {
            let confirmation = ws
                .recv_type("MessageSentConfirmation", FRAME_WAIT)
                .await
                .expect("confirmation");
            assert_eq!(confirmation["confirmed"], true, "{confirmation}");
            seqs.push(confirmation["seq"].as_i64().expect("seq"));
        }
        (ws, seqs)
    };
    let ((alice_ws, alice_seqs), (bob_ws, bob_seqs)) = tokio::join!(
        send_all(alice, "alice", room.clone()),
        send_all(bob, "bob", room.clone())
    );
    alice = alice_ws;
    bob = bob_ws;
    // Each sender's own messages get increasing seqs, in the order it sent them.
    assert!(alice_seqs.windows(2).all(|w| w[0] < w[1]), "{alice_seqs:?}");
    assert!(bob_seqs.windows(2).all(|w| w[0] < w[1]), "{bob_seqs:?}");

    // Every member socket, on both gateways, sees seqs 1..=N in order, once each.
    let total = (2 * PER_SENDER) as i64;
    for ws in [&mut watcher0, &mut watcher1, &mut alice, &mut bob] {
        let mut seen = Vec::new();
        while seen.len() < total as usize {
            seen.push(
                next_message(ws).await.expect("message")["seq"]
                    .as_i64()
                    .expect("seq"),
            );
        }
        assert_eq!(seen, (1..=total).collect::<Vec<_>>());
    }
}

async fn resending_a_temp_id_returns_the_original_message(backend: Backend) {
    let cluster = cluster(backend, 2).await;
    ensure_users(&cluster, &["alice", "bob"])
        .await
        .expect("users");
    let room = create_room(&cluster, 0, "alice", &["bob"])
        .await
        .expect("room");
    let mut alice0 = cluster
        .connect_ws(0, &cluster.token("alice"))
        .await
        .expect("alice on 0");
    let mut alice1 = cluster
        .connect_ws(1, &cluster.token("alice"))
        .await
        .expect("alice on 1");
    let mut bob = cluster
        .connect_ws(1, &cluster.token("bob"))
        .await
        .expect("bob");

    let first = send_and_confirm(&mut alice0, &room, "only once", "same-id")
        .await
        .expect("first");
    // The resend comes from another device on another gateway, like a retry after a reconnect.
    let again = send_and_confirm(&mut alice1, &room, "only once", "same-id")
        .await
        .expect("again");
    assert_eq!(first["confirmed"], true);
    assert_eq!(again["confirmed"], true);
    assert_eq!(first["message_id"], again["message_id"]);
    assert_eq!(first["seq"], again["seq"]);

    // Bob got it once; the next message takes the next seq.
    let next = send_and_confirm(&mut alice0, &room, "second", "other-id")
        .await
        .expect("second");
    assert_eq!(next["seq"], first["seq"].as_i64().expect("seq") + 1);
    assert_eq!(
        next_message(&mut bob).await.expect("first")["id"],
        first["message_id"]
    );
    assert_eq!(
        next_message(&mut bob).await.expect("second")["id"],
        next["message_id"]
    );

    // Stored once: history holds the two messages, the resent one a single time.
    let path = format!("/rooms/{room}/messages");
    let api = cluster.api(0);
    let stored: Vec<Value> = eventually(Duration::from_secs(10), || async {
        let (status, body) = api.get(&path, cluster.token("bob")).await?;
        anyhow::ensure!(status == 200, "{status} {body}");
        let messages = body["messages"].as_array().cloned().unwrap_or_default();
        anyhow::ensure!(messages.len() >= 2, "{} stored so far", messages.len());
        Ok(messages)
    })
    .await
    .expect("both messages stored");
    let temp_ids: Vec<&str> = stored
        .iter()
        .filter_map(|m| m["message_temp_id"].as_str())
        .collect();
    assert_eq!(
        temp_ids,
        ["same-id", "other-id"],
        "the resent message is stored once"
    );
}

async fn history_lists_a_rooms_messages_to_members_only(backend: Backend) {
    let cluster = cluster(backend, 1).await;
    ensure_users(&cluster, &["alice", "bob", "mallory"])
        .await
        .expect("users");
    let room = create_room(&cluster, 0, "alice", &["bob"])
        .await
        .expect("room");
    let mut alice = cluster
        .connect_ws(0, &cluster.token("alice"))
        .await
        .expect("alice");
    let mut sent = Vec::new();
    for i in 0..5 {
        let confirmation = send_and_confirm(&mut alice, &room, &format!("m{i}"), &format!("h-{i}"))
            .await
            .expect("sent");
        sent.push(confirmation["message_id"].as_str().expect("id").to_owned());
    }
    let api = cluster.api(0);
    let path = format!("/rooms/{room}/messages");
    let page: Value = eventually(Duration::from_secs(10), || async {
        let (status, body) = api.get(&path, cluster.token("bob")).await?;
        anyhow::ensure!(status == 200, "{status} {body}");
        anyhow::ensure!(
            body["messages"].as_array().map(Vec::len) == Some(5),
            "{body}"
        );
        Ok(body)
    })
    .await
    .expect("history");
    let ids: Vec<&str> = page["messages"]
        .as_array()
        .expect("list")
        .iter()
        .map(|m| m["id"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(ids, sent);
    assert_eq!(page["messages"][0]["message"], "m0");
    assert_eq!(page["messages"][0]["sender_id"], "alice");
    assert_eq!(page["messages"][0]["seq"], 1);

    let seqs = |body: &Value| -> Vec<i64> {
        body["messages"]
            .as_array()
            .expect("list")
            .iter()
            .filter_map(|m| m["seq"].as_i64())
            .collect()
    };
    let (_, after) = api
        .get(&format!("{path}?after_seq=2&limit=2"), cluster.token("bob"))
        .await
        .expect("after");
    assert_eq!(seqs(&after), vec![3, 4]);
    let (_, before) = api
        .get(
            &format!("{path}?before_seq=4&limit=2"),
            cluster.token("bob"),
        )
        .await
        .expect("before");
    assert_eq!(seqs(&before), vec![2, 3]);
    let (_, latest) = api
        .get(&format!("{path}?limit=2"), cluster.token("bob"))
        .await
        .expect("latest");
    assert_eq!(seqs(&latest), vec![4, 5]);

    // A non-member cannot tell the room from one that does not exist.
    let (status, body) = api
        .get(&path, cluster.token("mallory"))
        .await
        .expect("mallory");
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "room_not_found");
    let (status, _) = api
        .get(
            &format!("/rooms/{}/messages", uuid::Uuid::new_v4()),
            cluster.token("bob"),
        )
        .await
        .expect("missing");
    assert_eq!(status, 404);
}

async fn a_ticket_opens_one_socket_on_any_gateway(backend: Backend) {
    let cluster = cluster(backend, 2).await;
    let (status, ticket) = cluster
        .api(0)
        .get("/ws_token", cluster.token("alice"))
        .await
        .expect("ticket");
    assert_eq!(status, 200, "{ticket}");
    let token = ticket["token"].as_str().expect("token");
    let expires_at = time::OffsetDateTime::parse(
        ticket["expires_at"].as_str().expect("expires_at"),
        &time::format_description::well_known::Rfc3339,
    )
    .expect("RFC 3339");
    let ttl = expires_at - time::OffsetDateTime::now_utc();
    assert!(
        ttl > time::Duration::seconds(20) && ttl <= time::Duration::seconds(31),
        "{ttl}"
    );

    // Issued by gateway 0, redeemed on gateway 1.
    let mut ws = cluster.connect_ws(1, token).await.expect("first use");
    ws.send_frame("Ping", json!({})).await.expect("ping");
    ws.recv_type("Pong", FRAME_WAIT)
        .await
        .expect("the socket works");

    for gateway in [1, 0] {
        let mut again = cluster
            .connect_ws(gateway, token)
            .await
            .expect("upgrade, then refusal");
        let close = again.expect_close(FRAME_WAIT).await.expect("closed");
        assert_eq!(close.code, 4002, "a used ticket is refused: {close:?}");
        assert_eq!(
            close.frame("Disconnection").expect("told why first")["code"],
            4002
        );
    }
}

async fn an_expired_ticket_is_refused(backend: Backend) {
    let cluster = backend
        .builder(binaries!())
        .env("TICKET_TTL_SECS", "1")
        .start()
        .await
        .expect("cluster");
    let (_, ticket) = cluster
        .api(0)
        .get("/ws_token", cluster.token("alice"))
        .await
        .expect("ticket");
    tokio::time::sleep(Duration::from_millis(2200)).await; // let the ticket expire: the point of the test
    let mut ws = cluster
        .connect_ws(0, ticket["token"].as_str().expect("token"))
        .await
        .expect("upgrade");
    assert_eq!(
        ws.expect_close(FRAME_WAIT).await.expect("closed").code,
        4002
    );
}

async fn bad_credentials_get_their_close_codes(backend: Backend) {
    let cluster = cluster(backend, 1).await;
    let ws_url = cluster.gateway(0).ws_url();

    let mut none = chatter_tests::WsClient::connect(&ws_url)
        .await
        .expect("upgrade");
    let close = none.expect_close(FRAME_WAIT).await.expect("closed");
    assert_eq!(close.code, 4001, "{close:?}");
    assert_eq!(
        close.frame("Disconnection").expect("told why")["code"],
        4001
    );

    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let expired = Cluster::token_with(
        &json!({"sub": "alice", "exp": now - 3600}),
        cluster.jwt_secret(),
    );
    let foreign = Cluster::token_with(&Cluster::claims("alice"), "some-other-key");
    let no_expiry = Cluster::token_with(&json!({"sub": "alice"}), cluster.jwt_secret());
    for (what, token) in [
        ("expired", expired.as_str()),
        ("foreign key", &foreign),
        ("no exp", &no_expiry),
        ("unknown ticket", "nope"),
    ] {
        let mut ws = cluster.connect_ws(0, token).await.expect("upgrade");
        let close = ws.expect_close(FRAME_WAIT).await.expect("closed");
        assert_eq!(close.code, 4002, "{what}: {close:?}");
    }

    // A JWT in the Authorization header works as well as ?token=.
    let bearer = format!("Bearer {}", cluster.token("alice"));
    let mut ws =
        chatter_tests::WsClient::connect_with_headers(&ws_url, &[("authorization", &bearer)])
            .await
            .expect("header auth");
    ws.send_frame("Ping", json!({})).await.expect("ping");
    ws.recv_type("Pong", FRAME_WAIT).await.expect("pong");

    // The same refusals over HTTP are 401 JSON errors.
    for auth in [
        Auth::None,
        Auth::Bearer(expired.clone()),
        Auth::Bearer(foreign.clone()),
    ] {
        let (status, body) = cluster
            .api(0)
            .get("/ws_token", auth)
            .await
            .expect("request");
        assert_eq!(status, 401, "{body}");
        assert_eq!(body["error"]["code"], "unauthenticated");
    }
}

async fn browser_origins_are_checked_on_upgrade(backend: Backend) {
    let cluster = cluster(backend, 1).await;
    let url = format!(
        "{}?token={}",
        cluster.gateway(0).ws_url(),
        cluster.token("alice")
    );
    let refused =
        chatter_tests::WsClient::connect_with_headers(&url, &[("origin", "http://evil.test")])
            .await;
    assert_eq!(refused.err().and_then(|e| e.status()), Some(403));
    let mut allowed =
        chatter_tests::WsClient::connect_with_headers(&url, &[("origin", "http://allowed.test")])
            .await
            .expect("allowed origin");
    allowed.send_frame("Ping", json!({})).await.expect("ping");
    allowed.recv_type("Pong", FRAME_WAIT).await.expect("pong");
}

async fn bad_frames_get_their_documented_answers_while_others_are_served(backend: Backend) {
    let cluster = backend
        .builder(binaries!())
        .gateways(2)
        .env("MAX_FRAME_BYTES", "4096")
        .env("MAX_MESSAGE_CHARS", "100")
        .start()
        .await
        .expect("cluster");
    ensure_users(&cluster, &["alice", "bob", "carol"])
        .await
        .expect("users");
    let ours = create_room(&cluster, 0, "alice", &["bob"])
        .await
        .expect("room");
    let foreign = create_room(&cluster, 0, "bob", &["carol"])
        .await
        .expect("foreign room");
    let mut alice = cluster
        .connect_ws(0, &cluster.token("alice"))
        .await
        .expect("alice");
    let mut bob = cluster
        .connect_ws(1, &cluster.token("bob"))
        .await
        .expect("bob");
    let mut carol = cluster
        .connect_ws(1, &cluster.token("carol"))
        .await
        .expect("carol");

    // Each kind of bad frame gets an Error naming what was wrong; a good frame in
    // between resets the count toward 4010.
    let cases: [(&str, &str); 4] = [
        ("not json at all", "bad_frame"),
        (r#"{"type":"Dance","data":{},"ref":"r-7"}"#, "unknown_type"),
        (
            r#"{"type":"SendMessage","data":{"message":"no room"}}"#,
            "bad_data",
        ),
        (
            r#"{"type":"SendMessage","data":{"room_id":"not-a-uuid","message":"x"}}"#,
            "bad_data",
        ),
    ];
    for (frame, code) in cases {
        alice.send_text(frame).await.expect("send");
        let error = alice
            .recv_type("Error", FRAME_WAIT)
            .await
            .expect("error frame");
        assert_eq!(error["code"], code, "{frame}: {error}");
        alice.send_frame("Ping", json!({})).await.expect("ping");
        alice
            .recv_type("Pong", FRAME_WAIT)
            .await
            .expect("still served");
    }
    alice
        .send_text(r#"{"type":"Dance","ref":"r-8"}"#)
        .await
        .expect("send");
    assert_eq!(
        alice.recv_type("Error", FRAME_WAIT).await.expect("error")["ref"],
        "r-8"
    );

    // A room alice is not in: refused, and its members see nothing.
    let refused = send_and_confirm(&mut alice, &foreign, "let me in", "f-1")
        .await
        .expect("answer");
    assert_eq!(refused["confirmed"], false);
    assert_eq!(refused["reason"], "not_a_member");
    assert_eq!(refused["message_temp_id"], "f-1");
    assert!(refused["message_id"].is_null());
    carol
        .expect_silence("MessageReceived", SILENCE)
        .await
        .expect("nothing leaks");

    // A message over MAX_MESSAGE_CHARS, or empty, is refused without a close.
    let refused = send_and_confirm(&mut alice, &ours, &"x".repeat(101), "long")
        .await
        .expect("answer");
    assert_eq!(refused["reason"], "message_too_long");
    let refused = send_and_confirm(&mut alice, &ours, "   ", "blank")
        .await
        .expect("answer");
    assert_eq!(refused["reason"], "empty_message");

    // Bob and alice still talk.
    let ok = send_and_confirm(&mut alice, &ours, "still here", "ok-1")
        .await
        .expect("answer");
    assert_eq!(ok["confirmed"], true);
    assert_eq!(
        next_message(&mut bob).await.expect("delivered")["message"],
        "still here"
    );

    // Three malformed frames in a row: 4010.
    for _ in 0..3 {
        alice.send_text("{{{").await.expect("send");
    }
    let close = alice.expect_close(FRAME_WAIT).await.expect("closed");
    assert_eq!(close.code, 4010, "{close:?}");

    // A frame over MAX_FRAME_BYTES: 4014.
    let mut big = cluster
        .connect_ws(0, &cluster.token("alice"))
        .await
        .expect("alice again");
    let oversize =
        json!({"type": "SendMessage", "data": {"room_id": ours, "message": "y".repeat(5000)}});
    big.send_json(&oversize).await.expect("send");
    assert_eq!(
        big.expect_close(FRAME_WAIT).await.expect("closed").code,
        4014
    );

    // A binary frame is a bad frame, not a crash.
    let mut binary = cluster
        .connect_ws(0, &cluster.token("alice"))
        .await
        .expect("alice again");
    binary
        .send_raw_binary(vec![0, 159, 146, 150])
        .await
        .expect("send");
    assert_eq!(
        binary.recv_type("Error", FRAME_WAIT).await.expect("error")["code"],
        "bad_frame"
    );

    // Bob was served throughout.
    let ok = send_and_confirm(&mut bob, &ours, "all good", "ok-2")
        .await
        .expect("answer");
    assert_eq!(ok["confirmed"], true);
}

async fn flooding_closes_with_4013(backend: Backend) {
    // Bursts of 10, then refusals; the 11th refusal outstanding is a flood.
    // (Being slowed down rather than closed is `tests/tests/limits.rs`.)
    let cluster = backend
        .builder(binaries!())
        .env("FRAMES_PER_SEC", "5")
        .env("RATE_FLOOD_FRAMES", "10")
        .start()
        .await
        .expect("cluster");
    let mut ws = cluster
        .connect_ws(0, &cluster.token("alice"))
        .await
        .expect("alice");
    for _ in 0..30 {
        if ws.send_frame("Ping", json!({})).await.is_err() {
            break;
        }
    }
    let close = ws.expect_close(FRAME_WAIT).await.expect("closed");
    assert_eq!(close.code, 4013, "{close:?}");
    assert_eq!(
        close.frame("Disconnection").expect("told why")["code"],
        4013
    );
}

async fn a_silent_client_is_closed_with_4003_and_a_listening_one_is_not(backend: Backend) {
    let cluster = backend
        .builder(binaries!())
        .env("PING_INTERVAL_SECS", "1")
        .env("IDLE_TIMEOUT_SECS", "2")
        .start()
        .await
        .expect("cluster");
    let mut silent = cluster
        .connect_ws(0, &cluster.token("alice"))
        .await
        .expect("silent");
    let mut listening = cluster
        .connect_ws(0, &cluster.token("bob"))
        .await
        .expect("listening");
    // Reading answers the server's pings (the client library pongs as it reads);
    // the silent client does not read, so it never pongs.
    listening
        .expect_silence("Nothing", Duration::from_millis(3500))
        .await
        .expect("stays open");
    listening.send_frame("Ping", json!({})).await.expect("ping");
    listening
        .recv_type("Pong", FRAME_WAIT)
        .await
        .expect("still connected");
    let close = silent.expect_close(FRAME_WAIT).await.expect("closed");
    assert_eq!(close.code, 4003, "{close:?}");
}

async fn rest_bad_input_gets_json_errors(backend: Backend) {
    let cluster = cluster(backend, 1).await;
    ensure_users(&cluster, &["alice", "bob"])
        .await
        .expect("users");
    let api = cluster.api(0);
    let alice = cluster.token("alice");
    let room = create_room(&cluster, 0, "alice", &["bob"])
        .await
        .expect("room");
    let history = format!("/rooms/{room}/messages");

    let gets: Vec<(String, u16, &str)> = vec![
        ("/rooms/not-a-uuid/messages".into(), 400, "bad_path"),
        (format!("{history}?limit=0"), 400, "bad_limit"),
        (format!("{history}?limit=201"), 400, "bad_limit"),
        (format!("{history}?limit=-5"), 400, "bad_limit"),
        (format!("{history}?limit=lots"), 400, "bad_limit"),
        (
            format!("{history}?after_seq=1&before_seq=5"),
            400,
            "bad_query",
        ),
        (format!("{history}?after_seq=-1"), 400, "bad_query"),
        ("/no/such/route".into(), 404, "not_found"),
    ];
    for (path, status, code) in gets {
        let (got, body) = api.get(&path, &alice).await.expect("request");
        assert_eq!(got.as_u16(), status, "{path}: {body}");
        assert_eq!(body["error"]["code"], code, "{path}: {body}");
        assert!(body["error"]["message"].is_string());
    }

    let posts: Vec<(Value, u16, &str)> = vec![
        (json!({"members": ["nobody-knows-me"]}), 400, "unknown_user"),
        (json!({"members": [""]}), 400, "bad_user_id"),
        (json!({"members": "bob"}), 400, "bad_json"),
        (
            json!({"members": ["bob"], "name": "n".repeat(500)}),
            400,
            "name_too_long",
        ),
        (
            json!({"members": ["bob"], "kind": "castle"}),
            400,
            "bad_json",
        ),
    ];
    for (body, status, code) in posts {
        let (got, answer) = api
            .post_json("/rooms", &alice, &body)
            .await
            .expect("request");
        assert_eq!(got.as_u16(), status, "{body}: {answer}");
        assert_eq!(answer["error"]["code"], code, "{body}: {answer}");
    }
    let raw = cluster
        .http()
        .post(format!("{}/rooms", cluster.gateway(0).http_url()))
        .header("authorization", format!("Bearer {alice}"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .expect("request");
    assert_eq!(raw.status(), 400);
    let body: Value = raw.json().await.expect("a JSON error body");
    assert_eq!(body["error"]["code"], "bad_json");

    // Service routes: the secret as Bearer or raw; anything else is 401.
    let upsert = json!({"username": "dora", "name": "Dora", "user_group": "g1"});
    let (status, _) = api
        .post_json("/users", Auth::None, &upsert)
        .await
        .expect("request");
    assert_eq!(status, 401);
    let (status, _) = api
        .post_json("/users", &alice, &upsert)
        .await
        .expect("request");
    assert_eq!(status, 401, "a user token is not the service secret");
    let (status, body) = api
        .post_json("/user", Auth::Raw(cluster.service_secret().into()), &upsert)
        .await
        .expect("request");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["id"], "dora");
    let (status, _) = api
        .post_json(
            "/users",
            Auth::Bearer(cluster.service_secret().into()),
            &json!({"id": "eve"}),
        )
        .await
        .expect("request");
    assert_eq!(status, 200);
    if !cluster.is_embedded() {
        // Reading the row needs Postgres; the membership check below covers both.
        let group: Option<String> =
            sqlx::query_scalar("SELECT user_group FROM users WHERE id = 'dora'")
                .fetch_one(&cluster.db())
                .await
                .expect("dora stored");
        assert_eq!(group.as_deref(), Some("g1"));
    }
    // Upserted users can be room members right away.
    let (status, _) = api
        .post_json("/rooms", &alice, &json!({"members": ["dora", "eve"]}))
        .await
        .expect("request");
    assert_eq!(status, 201);

    // Minted tokens work.
    let (status, minted) = api
        .post_json(
            "/tokens",
            Auth::Raw(cluster.service_secret().into()),
            &json!({"user_id": "frank", "ttl_seconds": 60}),
        )
        .await
        .expect("request");
    assert_eq!(status, 200, "{minted}");
    let (status, _) = api
        .get("/ws_token", minted["token"].as_str().expect("token"))
        .await
        .expect("request");
    assert_eq!(status, 200);
}

/// Cluster only: the embedded mode has no Redis to lose.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readiness_follows_redis() {
    let mut cluster = cluster(Backend::Cluster, 1).await;
    let api = || cluster.api(0);
    let (status, _) = api().get("/readyz", Auth::None).await.expect("readyz");
    assert_eq!(status, 200);
    let (status, body) = api().get("/healthz", Auth::None).await.expect("healthz");
    assert_eq!((status.as_u16(), body), (200, Value::String("ok".into())));

    cluster.redis_mut().kill();
    let api = cluster.api(0);
    eventually(Duration::from_secs(10), || async {
        let (status, body) = api.get("/readyz", Auth::None).await?;
        anyhow::ensure!(status == 503, "{status}");
        anyhow::ensure!(body["error"]["code"] == "unavailable", "{body}");
        Ok(())
    })
    .await
    .expect("not ready without Redis");
    drop(api);
    cluster.redis_mut().restart().await.expect("redis back");
    let api = cluster.api(0);
    eventually(Duration::from_secs(15), || async {
        let (status, _) = api.get("/readyz", Auth::None).await?;
        anyhow::ensure!(status == 200, "{status}");
        Ok(())
    })
    .await
    .expect("ready again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn invalid_configuration_stops_startup_naming_the_key() {
    let dir = tempfile_dir();
    let bins = binaries!();
    let cases: [(&[(&str, &str)], &str); 5] = [
        (
            &[
                ("PORT", "eighty"),
                ("REDIS_URL", "redis://127.0.0.1:1"),
                ("DATABASE_URL", "postgres://x@127.0.0.1:1/x"),
            ],
            "port",
        ),
        (&[("FRAMES_PER_SEC", "0")], "FRAMES_PER_SEC"),
        // One backend URL without the other is neither mode: the error names the missing one.
        (&[("REDIS_URL", "redis://127.0.0.1:1")], "DATABASE_URL"),
        (
            &[
                ("JWT_SECRET", "a-jwt-secret-of-at-least-32-bytes"),
                ("DATABASE_URL", "postgres://x@127.0.0.1:1/x"),
            ],
            "REDIS_URL",
        ),
        // An HS256 secret shorter than 32 bytes could be brute-forced from one token.
        (&[("JWT_SECRET", "short-secret")], "JWT_SECRET"),
    ];
    for (env, key) in cases {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        for binary in [&bins.gateway, &bins.worker] {
            let output = run_to_exit(binary, &env, &dir, Duration::from_secs(20))
                .await
                .expect("runs");
            assert!(!output.status.success(), "{env:?} must not start");
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(stderr.contains(key), "{binary:?} {env:?}: {stderr}");
        }
    }
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("chatter-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

async fn resume_replays_what_a_client_missed_from_the_log_and_the_database(backend: Backend) {
    // A two-frame recent log: seqs 1-3 must come from the database, 4-5 from the log.
    let cluster = backend
        .builder(binaries!())
        .env("RECENT_LOG_SIZE", "2")
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
    for i in 1..=5 {
        send_and_confirm(&mut bob, &room, &format!("m{i}"), &format!("t{i}"))
            .await
            .expect("sent");
    }
    let mut alice = cluster
        .connect_ws(0, &cluster.token("alice"))
        .await
        .expect("alice");
    let (replayed, resumed_at) = eventually(FRAME_WAIT, || async {
        // The database may trail the log by the worker's lag; a gap it cannot
        // close in time is answered ResyncRequired, and asking again is fine.
        let mut alice = cluster.connect_ws(0, &cluster.token("alice")).await?;
        chatter_tests::chat::resume(&mut alice, &room, 0).await
    })
    .await
    .expect("resumed");
    assert_eq!(replayed, vec![1, 2, 3, 4, 5]);
    assert_eq!(resumed_at, 5);

    // Resuming from the newest seq replays nothing; live delivery goes on after it.
    alice
        .send_frame("Resume", json!({ "rooms": { &room: 5 } }))
        .await
        .expect("send");
    assert_eq!(
        alice
            .recv_type("Resumed", FRAME_WAIT)
            .await
            .expect("resumed")["seq"],
        5
    );
    send_and_confirm(&mut bob, &room, "m6", "t6")
        .await
        .expect("sent");
    assert_eq!(next_message(&mut alice).await.expect("live")["seq"], 6);
    alice
        .expect_silence("MessageReceived", SILENCE)
        .await
        .expect("no duplicates");
}
