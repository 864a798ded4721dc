//! Small steps most chat tests take: create a room, send a message, await it.

use crate::cluster::Cluster;
use crate::ws::{Incoming, WsClient};
use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use std::time::Duration;

/// How long a test waits for a frame that should come.
pub const FRAME_WAIT: Duration = Duration::from_secs(10);

/// Makes users exist (users are created on first sight of any authenticated request).
pub async fn ensure_users(cluster: &Cluster, users: &[&str]) -> Result<()> {
    for user in users {
        let (status, body) = cluster.api(0).get("/ws_token", cluster.token(user)).await?;
        if !status.is_success() {
            bail!("GET /ws_token for {user}: {status} {body}");
        }
    }
    Ok(())
}

/// `POST /rooms` on gateway `gateway` as `owner` with `members`; returns the room id.
pub async fn create_room(
    cluster: &Cluster,
    gateway: usize,
    owner: &str,
    members: &[&str],
) -> Result<String> {
    let (status, body) = cluster
        .api(gateway)
        .post_json(
            "/rooms",
            cluster.token(owner),
            &json!({ "members": members, "name": "test room" }),
        )
        .await?;
    if status.as_u16() != 201 {
        bail!("POST /rooms: {status} {body}");
    }
    body["id"]
        .as_str()
        .map(str::to_owned)
        .context("room id in the answer")
}

/// Waits until `ws` has been told it belongs to `room_id` (and so receives it).
pub async fn await_membership(ws: &mut WsClient, room_id: &str) -> Result<()> {
    loop {
        let added = ws.recv_type("MemberAdded", FRAME_WAIT).await?;
        if added["room_id"] == room_id {
            return Ok(());
        }
    }
}

/// Sends `SendMessage` without waiting for the answer.
pub async fn send_message(
    ws: &mut WsClient,
    room_id: &str,
    text: &str,
    temp_id: &str,
) -> Result<()> {
    ws.send_frame(
        "SendMessage",
        json!({ "room_id": room_id, "message": text, "message_temp_id": temp_id }),
    )
    .await
}

/// Sends a message and returns its `MessageSentConfirmation` data.
pub async fn send_and_confirm(
    ws: &mut WsClient,
    room_id: &str,
    text: &str,
    temp_id: &str,
) -> Result<Value> {
    send_message(ws, room_id, text, temp_id).await?;
    ws.recv_type("MessageSentConfirmation", FRAME_WAIT).await
}

/// The next `MessageReceived` data on `ws`.
pub async fn next_message(ws: &mut WsClient) -> Result<Value> {
    ws.recv_type("MessageReceived", FRAME_WAIT).await
}

/// Reads frames until `Resumed` for `room`, collecting replayed seqs.
pub async fn resume(
    ws: &mut WsClient,
    room: &str,
    last_seq: i64,
) -> anyhow::Result<(Vec<i64>, i64)> {
    ws.send_frame("Resume", json!({ "rooms": { room: last_seq } }))
        .await?;
    let mut seqs = Vec::new();
    loop {
        match ws.recv(FRAME_WAIT).await? {
            Incoming::Frame(frame) if frame["type"] == "MessageReceived" => {
                seqs.push(frame["data"]["seq"].as_i64().unwrap_or(-1))
            }
            Incoming::Frame(frame) if frame["type"] == "Resumed" => {
                return Ok((seqs, frame["data"]["seq"].as_i64().unwrap_or(-1)));
            }
            Incoming::Frame(frame) if frame["type"] == "ResyncRequired" => {
                anyhow::bail!("resync required: {frame}")
            }
            Incoming::Frame(_) => {}
            Incoming::Closed { code, reason } => anyhow::bail!("closed {code} {reason}"),
        }
    }
}

/// Reads `MessageReceived` seqs until `until` is seen (or the socket closes).
pub async fn read_until(ws: &mut WsClient, seqs: &mut Vec<i64>, until: i64) -> anyhow::Result<()> {
    while seqs.iter().copied().max().unwrap_or(0) < until {
        match ws.recv(FRAME_WAIT).await? {
            Incoming::Frame(frame) if frame["type"] == "MessageReceived" => {
                seqs.push(frame["data"]["seq"].as_i64().unwrap_or(-1))
            }
            Incoming::Frame(_) => {}
            Incoming::Closed { code, reason } => anyhow::bail!("closed {code} {reason}"),
        }
    }
    Ok(())
}

// ----------------------------------------------------------------- rooms API helpers

/// `POST /rooms` on gateway `gateway` as `owner` with any body (kind, name,
/// metadata…); returns the room as answered. Fails unless the answer is 201.
pub async fn create_room_with(
    cluster: &Cluster,
    gateway: usize,
    owner: &str,
    body: &Value,
) -> Result<Value> {
    let (status, room) = cluster
        .api(gateway)
        .post_json("/rooms", cluster.token(owner), body)
        .await?;
    if status.as_u16() != 201 {
        bail!("POST /rooms {body} as {owner}: {status} {room}");
    }
    Ok(room)
}

/// `PUT /rooms/{room}/members` as `caller`; returns the room as it now is.
/// Fails unless the answer is 200.
pub async fn change_members(
    cluster: &Cluster,
    gateway: usize,
    caller: &str,
    room_id: &str,
    change: &Value,
) -> Result<Value> {
    let (status, room) = cluster
        .api(gateway)
        .put_json(
            &format!("/rooms/{room_id}/members"),
            cluster.token(caller),
            change,
        )
        .await?;
    if status.as_u16() != 200 {
        bail!("PUT /rooms/{room_id}/members {change} as {caller}: {status} {room}");
    }
    Ok(room)
}

/// `POST /rooms/{room}/messages` as `sender` (a user JWT); returns
/// `{message_id, seq, message_temp_id}`. Fails unless the answer is 201.
pub async fn post_message(
    cluster: &Cluster,
    gateway: usize,
    sender: &str,
    room_id: &str,
    body: &Value,
) -> Result<Value> {
    let (status, answer) = cluster
        .api(gateway)
        .post_json(
            &format!("/rooms/{room_id}/messages"),
            cluster.token(sender),
            body,
        )
        .await?;
    if status.as_u16() != 201 {
        bail!("POST /rooms/{room_id}/messages {body} as {sender}: {status} {answer}");
    }
    Ok(answer)
}

/// `POST /rooms/{room}/messages` as `sender` that must be refused with `status`
/// and error `code` (a mute, a block, a content policy, an ended chat…).
pub async fn post_refused(
    cluster: &Cluster,
    gateway: usize,
    sender: &str,
    room_id: &str,
    status: u16,
    code: &str,
) -> Result<()> {
    let (got, answer) = cluster
        .api(gateway)
        .post_json(
            &format!("/rooms/{room_id}/messages"),
            cluster.token(sender),
            &json!({"message": "refused?"}),
        )
        .await?;
    if got.as_u16() != status || answer["error"]["code"] != code {
        bail!(
            "POST /rooms/{room_id}/messages as {sender}: expected {status} {code}, got {got} {answer}"
        );
    }
    Ok(())
}

/// Polls `GET /rooms/{room}/messages?limit=200` as `user` until `check` accepts
/// the page (messages are stored by a worker a few ms after they are accepted);
/// returns the messages. `what` names the condition in the error.
pub async fn history_until(
    cluster: &Cluster,
    gateway: usize,
    user: &str,
    room_id: &str,
    what: &str,
    check: impl Fn(&[Value]) -> bool,
) -> Result<Vec<Value>> {
    let path = format!("/rooms/{room_id}/messages?limit=200");
    let api = cluster.api(gateway);
    crate::wait::eventually(FRAME_WAIT, || async {
        let (status, body) = api.get(&path, cluster.token(user)).await?;
        if status != 200 {
            bail!("GET {path} as {user}: {status} {body}");
        }
        let messages = body["messages"].as_array().cloned().unwrap_or_default();
        if !check(&messages) {
            bail!("history of {room_id} as {user} is not yet {what}: {messages:?}");
        }
        Ok(messages)
    })
    .await
}

/// Polls history until it holds at least `count` messages; returns them.
pub async fn stored_messages(
    cluster: &Cluster,
    gateway: usize,
    user: &str,
    room_id: &str,
    count: usize,
) -> Result<Vec<Value>> {
    history_until(
        cluster,
        gateway,
        user,
        room_id,
        &format!("{count} messages long"),
        |messages| messages.len() >= count,
    )
    .await
}

/// Every room `GET /rooms` lists for `user`, following `next_cursor` page by page.
pub async fn list_rooms(cluster: &Cluster, gateway: usize, user: &str) -> Result<Vec<Value>> {
    let mut rooms = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..1000 {
        let path = match &cursor {
            Some(cursor) => format!("/rooms?limit=50&cursor={cursor}"),
            None => "/rooms?limit=50".to_owned(),
        };
        let (status, body) = cluster.api(gateway).get(&path, cluster.token(user)).await?;
        if status != 200 {
            bail!("GET {path} as {user}: {status} {body}");
        }
        rooms.extend(body["rooms"].as_array().cloned().unwrap_or_default());
        match body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return Ok(rooms),
        }
    }
    bail!("GET /rooms as {user}: next_cursor never ended")
}

/// The data of the next frame of type `type_name` whose data `matches`; frames
/// of that type that do not match are dropped (frames of other types are kept).
pub async fn recv_matching(
    ws: &mut WsClient,
    type_name: &str,
    what: &str,
    matches: impl Fn(&Value) -> bool,
) -> Result<Value> {
    let deadline = tokio::time::Instant::now() + FRAME_WAIT;
    let mut dropped = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let data = ws
            .recv_type(type_name, left)
            .await
            .with_context(|| format!("waiting for {type_name} {what}; dropped: {dropped:?}"))?;
        if matches(&data) {
            return Ok(data);
        }
        dropped.push(data);
    }
}

/// The next frame of `type_name` about room `room_id` (other rooms' are dropped).
pub async fn recv_in_room(ws: &mut WsClient, type_name: &str, room_id: &str) -> Result<Value> {
    recv_matching(ws, type_name, &format!("for room {room_id}"), |data| {
        data["room_id"] == room_id
    })
    .await
}

/// Reads whole frames (`{type, data}`), in arrival order, until one satisfies
/// `last`; returns all of them, that one included. Frames other calls skipped
/// come first. Fails on close or after [`FRAME_WAIT`].
pub async fn frames_until(
    ws: &mut WsClient,
    what: &str,
    last: impl Fn(&Value) -> bool,
) -> Result<Vec<Value>> {
    let deadline = tokio::time::Instant::now() + FRAME_WAIT;
    let mut frames = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match ws.recv(left).await {
            Ok(Incoming::Frame(frame)) => {
                let done = last(&frame);
                frames.push(frame);
                if done {
                    return Ok(frames);
                }
            }
            Ok(Incoming::Closed { code, reason }) => {
                bail!("closed ({code} {reason:?}) while waiting for {what}; frames: {frames:?}")
            }
            Err(error) => {
                return Err(error)
                    .with_context(|| format!("waiting for {what}; frames so far: {frames:?}"));
            }
        }
    }
}

/// Opens a socket to gateway `gateway` as `user` and waits until it is served
/// (a `Ping` answered), so live events published afterwards reach it.
pub async fn connect_ready(cluster: &Cluster, gateway: usize, user: &str) -> Result<WsClient> {
    let mut ws = cluster
        .connect_ws(gateway, &cluster.token(user))
        .await
        .with_context(|| format!("connecting {user} to gateway {gateway}"))?;
    ws.send_frame("Ping", json!({})).await?;
    ws.recv_type("Pong", FRAME_WAIT)
        .await
        .with_context(|| format!("{user}'s socket on gateway {gateway} is served"))?;
    Ok(ws)
}

/// Starts the cluster `builder` describes, runs `test` against it, and panics
/// with the whole error chain if it fails: while the cluster is still alive, so
/// its logs are kept (see [`Cluster`]'s `Drop`). Lets a test use `?` throughout.
pub async fn run_with_cluster(
    builder: crate::cluster::ClusterBuilder,
    test: impl AsyncFnOnce(&Cluster) -> Result<()>,
) {
    let cluster = builder.start().await.expect("cluster starts");
    if let Err(error) = test(&cluster).await {
        panic!("{error:?}");
    }
}

/// Runs each named test once per backend, as `cluster::name` (Redis, Postgres,
/// two gateways and a worker), `redis_cluster::name` (the same on a six-node
/// Redis Cluster: sharded keys and pub/sub) and `embedded::name` (one process
/// whose single gateway answers for both gateway indexes). Each entry is
/// `name: setup`, where `setup` may configure the builder further (`|b| b` for
/// nothing); the test is an `async fn name(cluster: &Cluster) ->
/// anyhow::Result<()>` run through [`run_with_cluster`].
#[macro_export]
macro_rules! on_every_backend {
    ($($test:ident: $setup:expr),* $(,)?) => {
        mod cluster {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $test() {
                    let setup: fn($crate::ClusterBuilder) -> $crate::ClusterBuilder = $setup;
                    let builder = $crate::Cluster::builder($crate::binaries!()).gateways(2);
                    $crate::chat::run_with_cluster(setup(builder), super::$test).await
                }
            )*
        }
        mod redis_cluster {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $test() {
                    let setup: fn($crate::ClusterBuilder) -> $crate::ClusterBuilder = $setup;
                    let builder = $crate::Cluster::builder($crate::binaries!())
                        .gateways(2)
                        .on_redis_cluster();
                    $crate::chat::run_with_cluster(setup(builder), super::$test).await
                }
            )*
        }
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $test() {
                    let setup: fn($crate::ClusterBuilder) -> $crate::ClusterBuilder = $setup;
                    let builder = $crate::Cluster::builder($crate::binaries!()).gateways(2).embedded();
                    $crate::chat::run_with_cluster(setup(builder), super::$test).await
                }
            )*
        }
    };
}
