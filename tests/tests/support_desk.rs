//! The live support desk (issue 11), from outside: users ask for help over
//! WebSocket and REST, agents on two gateways see the queue, exactly one of
//! twenty racing agents wins a claim, the chat works as a room, expires from the
//! database even when the gateway that created it is dead, and each side hears
//! when the other has gone. The flows run on both backends; what needs a second
//! gateway or killing one runs on the cluster.

use chatter_tests::backend::Backend;
use chatter_tests::chat::{FRAME_WAIT, send_and_confirm};
use chatter_tests::{Cluster, Incoming, WsClient, binaries};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

fn agent_token(cluster: &Cluster, agent: &str) -> String {
    cluster.token_with_roles(agent, &["support"])
}

/// The last gateway: the second one on a cluster, the only one embedded.
fn other(cluster: &Cluster) -> usize {
    cluster.gateways().len() - 1
}

/// Sends `Ping` and waits for `Pong`: every frame sent before has been handled.
async fn settle(ws: &mut WsClient) {
    ws.send_frame("Ping", json!({})).await.expect("ping");
    ws.recv_type("Pong", FRAME_WAIT).await.expect("pong");
}

/// A `type` frame whose `data.room_id` is `room_id`, skipping others of the type.
async fn recv_for(ws: &mut WsClient, type_name: &str, room_id: &str) -> Value {
    let deadline = Instant::now() + FRAME_WAIT;
    loop {
        let left = deadline
            .checked_duration_since(Instant::now())
            .unwrap_or_default();
        let data = ws
            .recv_type(type_name, left)
            .await
            .unwrap_or_else(|e| panic!("{type_name} for {room_id}: {e}"));
        if data["room_id"] == room_id {
            return data;
        }
    }
}

/// An agent's socket on gateway `gateway`.
async fn agent_socket(cluster: &Cluster, gateway: usize, name: &str) -> WsClient {
    cluster
        .connect_ws(gateway, &agent_token(cluster, name))
        .await
        .unwrap_or_else(|e| panic!("agent {name}: {e}"))
}

/// A user's socket on gateway `gateway`.
async fn user_socket(cluster: &Cluster, gateway: usize, name: &str) -> WsClient {
    cluster
        .connect_ws(gateway, &cluster.token(name))
        .await
        .unwrap_or_else(|e| panic!("user {name}: {e}"))
}

/// `JoinUser` from an agent's socket that wins: its `ChatHistory`.
async fn claim(agent: &mut WsClient, room_id: &str) -> Value {
    agent
        .send_frame("JoinUser", json!({"room_id": room_id}))
        .await
        .expect("claim");
    recv_for(agent, "ChatHistory", room_id).await
}

/// `ask`, for the new request's room id.
async fn ask_room(ws: &mut WsClient, topic: &str) -> String {
    ask(ws, topic).await["room_id"]
        .as_str()
        .expect("room id")
        .to_owned()
}

/// `Join {from: "User"}`: a new request's `UserJoined` answer.
async fn ask(ws: &mut WsClient, topic: &str) -> Value {
    ws.send_frame("Join", json!({"from": "User", "topic": topic}))
        .await
        .expect("join");
    ws.recv_type("UserJoined", FRAME_WAIT)
        .await
        .expect("UserJoined answer")
}

async fn asking_claiming_and_chatting(backend: Backend) {
    let cluster = backend
        .builder(binaries!())
        .gateways(2)
        .start()
        .await
        .expect("cluster");
    let far = other(&cluster);
    let mut anna = agent_socket(&cluster, 0, "anna").await;
    let mut ben = agent_socket(&cluster, far, "ben").await;
    let mut bystander = user_socket(&cluster, 0, "bystander").await;
    let mut user = user_socket(&cluster, far, "uma").await;

    // Asking: the user's answer and every agent's UserJoined, nobody else's.
    let asked = ask(&mut user, "card blocked").await;
    let room_id = asked["room_id"].as_str().expect("room id").to_owned();
    assert_eq!(asked["user_id"], "uma");
    assert_eq!(asked["state"], "pending");
    for agent in [&mut anna, &mut ben] {
        let joined = recv_for(agent, "UserJoined", &room_id).await;
        assert_eq!(joined["user_id"], "uma");
        assert_eq!(joined["username"], "uma");
        assert!(joined["created_at"].is_string(), "{joined}");
    }
    bystander
        .expect_silence("UserJoined", Duration::from_millis(500))
        .await
        .expect("queue events reach agents only");

    // Asking again (REST) returns the open request, not a second one.
    let (status, body) = cluster
        .api(0)
        .post_json("/support/requests", cluster.token("uma"), &json!({}))
        .await
        .expect("ask again");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["room_id"], room_id.as_str());
    assert_eq!(body["state"], "pending");

    // The queue, over WebSocket and REST; refused to non-agents.
    anna.send_frame("Load", json!({})).await.expect("load");
    let pending = anna
        .recv_type("PendingUsers", FRAME_WAIT)
        .await
        .expect("queue");
    let requests = pending["requests"].as_array().expect("list");
    assert_eq!(requests.len(), 1, "{pending}");
    assert_eq!(requests[0]["room_id"], room_id.as_str());
    assert!(requests[0]["waiting_secs"].as_i64().is_some(), "{pending}");
    let (status, body) = cluster
        .api(far)
        .get(
            "/support/requests?state=pending",
            agent_token(&cluster, "ben"),
        )
        .await
        .expect("rest queue");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["requests"][0]["room_id"], room_id.as_str());
    let (status, body) = cluster
        .api(0)
        .get("/support/requests", cluster.token("bystander"))
        .await
        .expect("rest queue as a user");
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "forbidden");
    bystander.send_frame("Load", json!({})).await.expect("load");
    let refused = bystander
        .recv_type("Error", FRAME_WAIT)
        .await
        .expect("error");
    assert_eq!(refused["code"], "forbidden");

    // Anna claims over WebSocket; Ben's claims (REST and WebSocket) lose.
    let history = claim(&mut anna, &room_id).await;
    assert_eq!(history["messages"], json!([]));
    for agent in [&mut anna, &mut ben] {
        let removed = recv_for(agent, "RemoveUser", &room_id).await;
        assert_eq!(removed["user_id"], "uma");
    }
    let joined = recv_for(&mut user, "SupportJoinedUser", &room_id).await;
    assert_eq!(joined["support_id"], "anna");
    assert_eq!(joined["support_name"], "anna");
    let (status, body) = cluster
        .api(far)
        .post_json(
            &format!("/support/requests/{room_id}/claim"),
            agent_token(&cluster, "ben"),
            &json!({}),
        )
        .await
        .expect("late claim");
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "already_claimed");
    ben.send_frame("JoinUser", json!({"room_id": room_id}))
        .await
        .expect("late claim");
    let lost = ben.recv_type("Error", FRAME_WAIT).await.expect("lost");
    assert_eq!(lost["code"], "already_claimed");
    assert_eq!(lost["ref"], room_id.as_str());

    // An ordinary room now: both directions, `ChatMessage` as an alias.
    let confirmed = send_and_confirm(&mut user, &room_id, "it says blocked", "u-1")
        .await
        .expect("user sends");
    assert_eq!(confirmed["confirmed"], true, "{confirmed}");
    let got = recv_for(&mut anna, "MessageReceived", &room_id).await;
    assert_eq!(got["message"], "it says blocked");
    anna.send_frame(
        "ChatMessage",
        json!({"room_id": room_id, "content": "unblocked now", "message_temp_id": "a-1"}),
    )
    .await
    .expect("agent sends");
    let confirmed = anna
        .recv_type("MessageSentConfirmation", FRAME_WAIT)
        .await
        .expect("confirmation");
    assert_eq!(confirmed["confirmed"], true, "{confirmed}");
    // The user's own message comes back to them first (every device sees it).
    let got = loop {
        let got = recv_for(&mut user, "MessageReceived", &room_id).await;
        if got["sender_id"] != "uma" {
            break got;
        }
    };
    assert_eq!(got["message"], "unblocked now");
    assert_eq!(got["sender_id"], "anna");

    // Typing, receipts, REST history and Resume work as in any room.
    anna.send_frame("Typing", json!({"room_id": room_id}))
        .await
        .expect("typing");
    let typing = recv_for(&mut user, "Typing", &room_id).await;
    assert_eq!(typing["user_id"], "anna");
    let last_seq = got["seq"].as_i64().expect("seq");
    user.send_frame("MarkRead", json!({"room_id": room_id, "seq": last_seq}))
        .await
        .expect("mark read");
    let receipt = recv_for(&mut anna, "ReadReceipt", &room_id).await;
    assert_eq!(receipt["user_id"], "uma");
    assert_eq!(receipt["seq"], last_seq);
    // The worker stores messages a few milliseconds after they are accepted.
    chatter_tests::chat::history_until(&cluster, 0, "anna", &room_id, "both messages", |m| {
        m.len() == 2
    })
    .await
    .expect("REST history");
    let mut anna_again = agent_socket(&cluster, far, "anna").await;
    let (replayed, resumed) = chatter_tests::chat::resume(&mut anna_again, &room_id, 0)
        .await
        .expect("resume");
    assert_eq!(replayed, (1..=last_seq).collect::<Vec<_>>());
    assert_eq!(resumed, last_seq);

    // Agents and their chats.
    let (status, body) = cluster
        .api(0)
        .get("/support/agents", agent_token(&cluster, "anna"))
        .await
        .expect("agents");
    assert_eq!(status, 200, "{body}");
    let agents = body["agents"].as_array().expect("list");
    let anna_row = agents
        .iter()
        .find(|a| a["user_id"] == "anna")
        .expect("anna");
    assert_eq!(anna_row["online"], true, "{body}");
    assert_eq!(anna_row["active_chats"], 1, "{body}");
    let ben_row = agents.iter().find(|a| a["user_id"] == "ben").expect("ben");
    assert_eq!(ben_row["active_chats"], 0, "{body}");
    let (status, _) = cluster
        .api(0)
        .get("/support/agents", cluster.token("bystander"))
        .await
        .expect("agents as a user");
    assert_eq!(status, 403);

    // A re-join before the end replays the chat.
    let mut user_again = user_socket(&cluster, 0, "uma").await;
    user_again
        .send_frame("Join", json!({"from": "User", "room_id": room_id}))
        .await
        .expect("rejoin");
    let history = recv_for(&mut user_again, "ChatHistory", &room_id).await;
    let texts: Vec<&str> = history["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .filter_map(|m| m["message"].as_str())
        .collect();
    assert_eq!(texts, ["it says blocked", "unblocked now"]);

    // Closing on purpose: both sides hear it, sends are refused, re-join says so.
    let (status, body) = cluster
        .api(far)
        .post_json(
            &format!("/support/requests/{room_id}/close"),
            cluster.token("uma"),
            &json!({}),
        )
        .await
        .expect("close");
    assert_eq!(status, 204, "{body}");
    recv_for(&mut user, "ChatClosed", &room_id).await;
    recv_for(&mut anna, "ChatClosed", &room_id).await;
    let refused = send_and_confirm(&mut user, &room_id, "hello?", "u-2")
        .await
        .expect("answer");
    assert_eq!(refused["confirmed"], false);
    assert_eq!(refused["reason"], "chat_closed");
    user_again
        .send_frame("Join", json!({"from": "User", "room_id": room_id}))
        .await
        .expect("rejoin");
    recv_for(&mut user_again, "ChatClosed", &room_id).await;
    let (status, body) = cluster
        .api(0)
        .post_json(
            &format!("/support/requests/{room_id}/close"),
            cluster.token("uma"),
            &json!({}),
        )
        .await
        .expect("close twice");
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "chat_closed");

    // A new request after the end (REST this time).
    let (status, body) = cluster
        .api(0)
        .post_json(
            "/support/requests",
            cluster.token("uma"),
            &json!({"topic": "again", "metadata": {"plan": "gold"}}),
        )
        .await
        .expect("new request");
    assert_eq!(status, 201, "{body}");
    assert_ne!(body["room_id"], room_id.as_str());
    let joined = recv_for(
        &mut ben,
        "UserJoined",
        body["room_id"].as_str().expect("id"),
    )
    .await;
    assert_eq!(joined["topic"], "again");
    assert_eq!(joined["metadata"]["plan"], "gold");
}

async fn bad_desk_input_gets_clear_errors(backend: Backend) {
    let cluster = backend.builder(binaries!()).start().await.expect("cluster");
    let api = cluster.api(0);
    for (body, code) in [
        (json!({"topic": "x".repeat(201)}), "bad_request"),
        (json!({"topic": "two\nlines"}), "bad_request"),
        (json!({"metadata": [1, 2]}), "bad_request"),
        (json!({"surprise": true}), "bad_json"),
    ] {
        let (status, answer) = api
            .post_json("/support/requests", cluster.token("uma"), &body)
            .await
            .expect("ask");
        assert_eq!(status, 400, "{body} → {answer}");
        assert_eq!(answer["error"]["code"], code, "{body} → {answer}");
    }
    let (status, answer) = api
        .get(
            "/support/requests?state=lost",
            agent_token(&cluster, "anna"),
        )
        .await
        .expect("list");
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["error"]["code"], "bad_state");
    let missing = uuid::Uuid::now_v7();
    let (status, answer) = api
        .post_json(
            &format!("/support/requests/{missing}/claim"),
            agent_token(&cluster, "anna"),
            &json!({}),
        )
        .await
        .expect("claim");
    assert_eq!(status, 404, "{answer}");
    assert_eq!(answer["error"]["code"], "request_not_found");
    let (status, answer) = api
        .post_json(
            &format!("/support/requests/{missing}/claim"),
            cluster.token("uma"),
            &json!({}),
        )
        .await
        .expect("claim as a user");
    assert_eq!(status, 403, "{answer}");
    let (status, _) = api
        .post_json("/support/requests", "not-a-token", &json!({}))
        .await
        .expect("no auth");
    assert_eq!(status, 401);

    let mut ws = agent_socket(&cluster, 0, "anna").await;
    ws.send_frame("Join", json!({"from": "Support"}))
        .await
        .expect("join without room");
    let error = ws.recv_type("Error", FRAME_WAIT).await.expect("error");
    assert_eq!(error["code"], "bad_request");
    ws.send_frame("JoinUser", json!({"room_id": "nope"}))
        .await
        .expect("bad claim");
    let error = ws.recv_type("Error", FRAME_WAIT).await.expect("error");
    assert_eq!(error["code"], "bad_data");
    ws.send_frame("Join", json!({"from": "Support", "room_id": missing}))
        .await
        .expect("join unknown");
    let error = ws.recv_type("Error", FRAME_WAIT).await.expect("error");
    assert_eq!(error["code"], "request_not_found");
    settle(&mut ws).await;
}

/// Twenty agents, half on each gateway, half claiming over WebSocket and half
/// over REST, all released at the same instant: exactly one wins, every time.
async fn twenty_agents_race_for_one_request(backend: Backend) {
    const AGENTS: usize = 20;
    const ROUNDS: usize = 10;
    let cluster = backend
        .builder(binaries!())
        .gateways(2)
        .start()
        .await
        .expect("cluster");
    let gateways = cluster.gateways().len();
    let mut sockets = Vec::new();
    for i in 0..AGENTS / 2 {
        let ws = cluster
            .connect_ws(
                i % gateways,
                &agent_token(&cluster, &format!("ws-agent-{i}")),
            )
            .await
            .expect("agent socket");
        sockets.push(ws);
    }
    let mut wins = Vec::new();
    for round in 0..ROUNDS {
        let user = format!("racer-{round}");
        let (status, body) = cluster
            .api(0)
            .post_json("/support/requests", cluster.token(&user), &json!({}))
            .await
            .expect("ask");
        assert_eq!(status, 201, "{body}");
        let room_id = body["room_id"].as_str().expect("room").to_owned();
        let start = tokio::sync::Barrier::new(AGENTS);
        let start = &start;
        let room = room_id.as_str();
        let cluster = &cluster;
        let rest = (0..AGENTS / 2).map(|i| async move {
            let token = agent_token(cluster, &format!("rest-agent-{i}"));
            let api = cluster.api(i % gateways);
            start.wait().await;
            let (status, body) = api
                .post_json(
                    &format!("/support/requests/{room}/claim"),
                    token,
                    &json!({}),
                )
                .await
                .expect("claim");
            match status.as_u16() {
                200 => true,
                409 => {
                    assert_eq!(body["error"]["code"], "already_claimed", "{body}");
                    false
                }
                other => panic!("claim answered {other} {body}"),
            }
        });
        let ws = sockets.iter_mut().map(|ws| async move {
            start.wait().await;
            ws.send_frame("JoinUser", json!({"room_id": room}))
                .await
                .expect("claim");
            loop {
                match ws.recv(FRAME_WAIT).await.expect("answer") {
                    Incoming::Frame(frame)
                        if frame["type"] == "ChatHistory" && frame["data"]["room_id"] == room =>
                    {
                        return true;
                    }
                    Incoming::Frame(frame)
                        if frame["type"] == "Error" && frame["data"]["ref"] == room =>
                    {
                        assert_eq!(frame["data"]["code"], "already_claimed", "{frame}");
                        return false;
                    }
                    Incoming::Frame(_) => {}
                    Incoming::Closed { code, reason } => panic!("closed {code} {reason}"),
                }
            }
        });
        let (rest, ws) = futures::join!(
            futures::future::join_all(rest),
            futures::future::join_all(ws)
        );
        let winners = rest.iter().chain(ws.iter()).filter(|won| **won).count();
        assert_eq!(winners, 1, "round {round}: {winners} winners");
        wins.push(winners);
        // The database agrees: one agent member, the request active.
        let (status, body) = cluster
            .api(0)
            .get(
                "/support/requests?state=active",
                agent_token(cluster, "rest-agent-0"),
            )
            .await
            .expect("active");
        assert_eq!(status, 200);
        let row = body["requests"]
            .as_array()
            .expect("list")
            .iter()
            .find(|r| r["room_id"] == room)
            .cloned()
            .expect("active request");
        assert!(row["agent_id"].is_string(), "{row}");
    }
    println!(
        "claim race: {ROUNDS} rounds × {AGENTS} agents on {gateways} gateway(s): winners per round {wins:?}"
    );
}

/// Expiry with `SUPPORT_EXPIRY_SECS=2`: a request nobody answers, an active
/// chat kept alive by messages then left quiet, sends and re-joins after it.
async fn chats_expire_without_messages(backend: Backend) {
    let cluster = backend
        .builder(binaries!())
        .env("SUPPORT_EXPIRY_SECS", "2")
        .start()
        .await
        .expect("cluster");
    let mut agent = agent_socket(&cluster, 0, "anna").await;
    let mut user = user_socket(&cluster, 0, "uma").await;

    // Unanswered: expires ~2 s after the request.
    let asked_at = Instant::now();
    let room_id = ask_room(&mut user, "nobody home").await;
    recv_for(&mut agent, "UserJoined", &room_id).await;
    recv_for(&mut user, "ChatExpired", &room_id).await;
    let waited = asked_at.elapsed();
    assert!(
        waited >= Duration::from_millis(1900),
        "expired after {waited:?}"
    );
    recv_for(&mut agent, "RemoveUser", &room_id).await;
    println!("pending request expired after {waited:?} (SUPPORT_EXPIRY_SECS=2)");

    // Re-join after expiry says so; a Join without a room starts a new request.
    user.send_frame("Join", json!({"from": "User", "room_id": room_id}))
        .await
        .expect("rejoin");
    recv_for(&mut user, "ChatExpired", &room_id).await;
    let refused = send_and_confirm(&mut user, &room_id, "anyone?", "late-1")
        .await
        .expect("answer");
    assert_eq!(refused["confirmed"], false);
    assert_eq!(refused["reason"], "chat_expired");
    let room_id = ask_room(&mut user, "second try").await;
    recv_for(&mut agent, "UserJoined", &room_id).await;
    claim(&mut agent, &room_id).await;

    // Messages every second keep it open past three expiry periods…
    let kept_from = Instant::now();
    for i in 0..6 {
        let confirmed = send_and_confirm(
            &mut user,
            &room_id,
            &format!("still here {i}"),
            &format!("k-{i}"),
        )
        .await
        .expect("send");
        assert_eq!(confirmed["confirmed"], true, "message {i}: {confirmed}");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(kept_from.elapsed() > Duration::from_secs(5));
    // …then quiet: both sides hear ChatExpired.
    recv_for(&mut user, "ChatExpired", &room_id).await;
    recv_for(&mut agent, "ChatExpired", &room_id).await;
    let refused = send_and_confirm(&mut agent, &room_id, "bye", "late-2")
        .await
        .expect("answer");
    assert_eq!(refused["reason"], "chat_expired");
    // The same over HTTP publish: one send path.
    chatter_tests::chat::post_refused(&cluster, 0, "uma", &room_id, 409, "chat_expired")
        .await
        .expect("HTTP publish refused");
}

/// The gateway that created a request is killed; the request still expires,
/// swept by the surviving gateway from the database.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_expires_after_its_gateway_died() {
    let mut cluster = Cluster::builder(binaries!())
        .gateways(2)
        .env("SUPPORT_EXPIRY_SECS", "2")
        .start()
        .await
        .expect("cluster");
    let mut agent = agent_socket(&cluster, 0, "anna").await;
    let mut user = user_socket(&cluster, 1, "uma").await;
    let room_id = ask_room(&mut user, "orphan").await;
    recv_for(&mut agent, "UserJoined", &room_id).await;
    cluster.gateway_mut(1).kill9();
    recv_for(&mut agent, "RemoveUser", &room_id).await;
    let (status, body) = cluster
        .api(0)
        .get(
            "/support/requests?state=expired",
            agent_token(&cluster, "anna"),
        )
        .await
        .expect("expired list");
    assert_eq!(status, 200);
    assert!(
        body["requests"]
            .as_array()
            .expect("list")
            .iter()
            .any(|r| r["room_id"] == room_id.as_str()),
        "{body}"
    );
}

/// `UserLeft` / `SupportLeft` follow cluster-wide presence: a side with a
/// device left on another gateway has not left.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_side_hears_when_the_other_has_no_connection_left() {
    let cluster = Cluster::builder(binaries!())
        .gateways(2)
        .start()
        .await
        .expect("cluster");
    let mut agent = agent_socket(&cluster, 0, "anna").await;
    let mut phone = user_socket(&cluster, 0, "uma").await;
    let mut laptop = user_socket(&cluster, 1, "uma").await;
    let room_id = ask_room(&mut phone, "two devices").await;
    claim(&mut agent, &room_id).await;
    recv_for(&mut laptop, "SupportJoinedUser", &room_id).await;

    phone.close().await.expect("phone leaves");
    agent
        .expect_silence("UserLeft", Duration::from_secs(2))
        .await
        .expect("the laptop is still connected");
    laptop.close().await.expect("laptop leaves");
    let left = recv_for(&mut agent, "UserLeft", &room_id).await;
    assert_eq!(left["user_id"], "uma");

    let mut back = user_socket(&cluster, 1, "uma").await;
    settle(&mut back).await;
    agent.close().await.expect("agent leaves");
    let left = recv_for(&mut back, "SupportLeft", &room_id).await;
    assert_eq!(left["user_id"], "anna");
}

/// Dashboards see agents' and waiting users' presence.
async fn dashboards_see_who_is_online(backend: Backend) {
    let cluster = backend.builder(binaries!()).start().await.expect("cluster");
    let mut desk = agent_socket(&cluster, 0, "anna").await;
    desk.send_frame("SubscribePresence", json!({}))
        .await
        .expect("subscribe");
    settle(&mut desk).await;
    let mut user = user_socket(&cluster, 0, "uma").await;
    ask(&mut user, "hello").await;
    let online = loop {
        let change = desk
            .recv_type("PresenceChanged", FRAME_WAIT)
            .await
            .expect("presence");
        if change["user_id"] == "uma" {
            break change;
        }
    };
    assert_eq!(online["user_id"], "uma");
    assert_eq!(online["online"], true);
}

/// The figure for the closing note: from a user's `Join` on one gateway to
/// the agent's `UserJoined` on the other, over 200 requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn join_to_user_joined_latency_across_gateways() {
    const REQUESTS: usize = 200;
    let cluster = Cluster::builder(binaries!())
        .gateways(2)
        .start()
        .await
        .expect("cluster");
    let mut agent = agent_socket(&cluster, 0, "anna").await;
    let mut users = Vec::with_capacity(REQUESTS);
    for i in 0..REQUESTS {
        let ws = cluster
            .connect_ws(1, &cluster.token(&format!("latency-{i}")))
            .await
            .expect("user");
        users.push(ws);
    }
    let mut samples = Vec::with_capacity(REQUESTS);
    for user in &mut users {
        let sent = Instant::now();
        user.send_frame("Join", json!({"from": "User"}))
            .await
            .expect("join");
        let joined = agent
            .recv_type("UserJoined", FRAME_WAIT)
            .await
            .expect("UserJoined on the other gateway");
        samples.push(sent.elapsed());
        let answer = user
            .recv_type("UserJoined", FRAME_WAIT)
            .await
            .expect("answer");
        assert_eq!(answer["room_id"], joined["room_id"]);
    }
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    println!(
        "Join → UserJoined on the other gateway over {REQUESTS} requests: p50 {:?}, p99 {:?}, max {:?}",
        at(0.50),
        at(0.99),
        samples[samples.len() - 1]
    );
}

/// A user is an agent by their token's roles or by their stored record's
/// (`POST /users`), e.g. with tokens minted by `POST /tokens`, which carry none.
async fn an_agent_by_record_works_the_desk(backend: Backend) {
    let cluster = backend.builder(binaries!()).start().await.expect("cluster");
    let (status, body) = cluster
        .api(0)
        .post_json(
            "/users",
            cluster.service_secret(),
            &json!({"id": "rita", "name": "Rita", "roles": ["support"]}),
        )
        .await
        .expect("declare rita");
    assert_eq!(status, 200, "{body}");
    let token = cluster.token("rita");
    let (status, body) = cluster
        .api(0)
        .get("/support/requests", &token)
        .await
        .expect("queue");
    assert_eq!(status, 200, "{body}");
    let mut rita = user_socket(&cluster, 0, "rita").await;
    settle(&mut rita).await;
    let mut uma = user_socket(&cluster, 0, "uma").await;
    let room_id = ask_room(&mut uma, "record roles").await;
    recv_for(&mut rita, "UserJoined", &room_id).await;
    claim(&mut rita, &room_id).await;
    let joined = recv_for(&mut uma, "SupportJoinedUser", &room_id).await;
    assert_eq!(joined["support_name"], "rita");
}

chatter_tests::for_each_backend!(
    an_agent_by_record_works_the_desk,
    asking_claiming_and_chatting,
    bad_desk_input_gets_clear_errors,
    twenty_agents_race_for_one_request,
    chats_expire_without_messages,
    dashboards_see_who_is_online,
);
