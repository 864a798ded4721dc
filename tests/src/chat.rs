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
