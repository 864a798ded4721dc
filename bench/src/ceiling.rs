//! The ceiling: the least a WebSocket broadcast server can do, to measure chatter
//! against on the same machine with the same load generator.
//!
//! No auth, no Redis, no database, no rate limits. `GET /ws?token=<user>&room=<room>`
//! joins that room (the room exists once someone names it) and is told so with
//! `MemberAdded`, like a chatter member. `SendMessage` assigns the room's next seq
//! and pushes one `MessageReceived` frame, shaped like chatter's and serialized
//! once, into every member's bounded queue, then confirms to the sender. A member
//! whose queue is full is closed with 4009, as chatter does. `Ping` → `Pong`.

use crate::frames::{self, ClientFrame};
use futures::{SinkExt, StreamExt};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_util::sync::CancellationToken;

/// Frames queued per socket before it counts as too slow (chatter's default).
const SEND_QUEUE: usize = 512;
/// A client must finish its handshake within this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

struct Member {
    conn: u64,
    tx: mpsc::Sender<Message>,
    overflow: CancellationToken,
}

#[derive(Default)]
struct Room {
    /// seq and members under one lock, so every member sees seqs in order.
    inner: Mutex<RoomInner>,
}

#[derive(Default)]
struct RoomInner {
    seq: u64,
    members: Vec<Member>,
}

impl Room {
    fn lock(&self) -> MutexGuard<'_, RoomInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[derive(Default)]
pub struct Ceiling {
    rooms: Mutex<HashMap<String, Arc<Room>>>,
    next_conn: AtomicU64,
}

impl Ceiling {
    fn room(&self, name: &str) -> Arc<Room> {
        let mut rooms = self.rooms.lock().unwrap_or_else(|p| p.into_inner());
        rooms.entry(name.to_owned()).or_default().clone()
    }
}

/// Socket settings, so the benchmark can show what they cost.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// tungstenite's per-socket read buffer, allocated and zero-filled up front
    /// (its default, and axum's, is 128 KiB).
    pub read_buffer: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            read_buffer: 4 * 1024,
        }
    }
}

/// Accepts connections on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, shutdown: CancellationToken, options: Options) {
    let state = Arc::new(Ceiling::default());
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _)) => {
                // Small frames go out at once, not after the peer's delayed ACK.
                let _ = stream.set_nodelay(true);
                let config = WebSocketConfig::default().read_buffer_size(options.read_buffer);
                tokio::spawn(connection(stream, config, state.clone(), shutdown.clone()));
            }
            // Out of file descriptors and the like: back off instead of spinning.
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// `token` and `room` from a query string.
fn params(query: &str) -> (Option<String>, Option<String>) {
    let (mut user, mut room) = (None, None);
    for pair in query.split('&') {
        match pair.split_once('=') {
            Some(("token", v)) if !v.is_empty() => user = Some(v.to_owned()),
            Some(("room", v)) if !v.is_empty() => room = Some(v.to_owned()),
            _ => {}
        }
    }
    (user, room)
}

async fn connection(
    stream: TcpStream,
    config: WebSocketConfig,
    state: Arc<Ceiling>,
    shutdown: CancellationToken,
) {
    let mut query = String::new();
    // The callback's signature (and its large error type) is tungstenite's.
    #[allow(clippy::result_large_err)]
    let callback = |request: &Request, response: Response| {
        query = request.uri().query().unwrap_or_default().to_owned();
        Ok(response)
    };
    let ws = match tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(config)),
    )
    .await
    {
        Ok(Ok(ws)) => ws,
        _ => return,
    };
    let (user, room_name) = params(&query);
    let user = user.unwrap_or_else(|| "anonymous".to_owned());
    let conn = state.next_conn.fetch_add(1, Ordering::Relaxed);
    let (tx, mut rx) = mpsc::channel::<Message>(SEND_QUEUE);
    let overflow = CancellationToken::new();
    let (mut sink, mut stream) = ws.split();

    let room = room_name.as_deref().map(|name| {
        let room = state.room(name);
        room.lock().members.push(Member {
            conn,
            tx: tx.clone(),
            overflow: overflow.clone(),
        });
        let _ = tx.try_send(Message::text(frames::member_added(name, &user)));
        room
    });

    // Writer: drains the queue, batching what is ready into one flush.
    let writer_overflow = overflow.clone();
    let writer = tokio::spawn(async move {
        loop {
            let next = tokio::select! {
                () = writer_overflow.cancelled() => {
                    let close = CloseFrame {
                        code: CloseCode::from(4009),
                        reason: "too slow: the send queue is full".into(),
                    };
                    let _ = sink.send(Message::Close(Some(close))).await;
                    return;
                }
                next = rx.recv() => next,
            };
            let Some(first) = next else { return };
            if sink.feed(first).await.is_err() {
                return;
            }
            for _ in 0..64 {
                match rx.try_recv() {
                    Ok(more) => {
                        if sink.feed(more).await.is_err() {
                            return;
                        }
                    }
                    Err(_) => break,
                }
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
    });

    loop {
        let next = tokio::select! {
            () = shutdown.cancelled() => break,
            () = overflow.cancelled() => break,
            next = stream.next() => next,
        };
        let text = match next {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
            Some(Ok(_)) => continue,
        };
        match frames::parse_client(text.as_str()) {
            Some(ClientFrame::SendMessage {
                room_id,
                message,
                temp_id,
            }) => {
                let answer = match (&room, &room_name) {
                    (Some(room), Some(name)) if *name == *room_id => {
                        broadcast(room, name, &user, &message, temp_id.as_deref())
                    }
                    _ => frames::confirmation(None, None, temp_id.as_deref(), Some("not_a_member")),
                };
                // Waiting here (not try_send) is the sender's own backpressure.
                if tx.send(Message::text(answer)).await.is_err() {
                    break;
                }
            }
            Some(ClientFrame::Ping) => {
                if tx.send(Message::text(frames::pong())).await.is_err() {
                    break;
                }
            }
            Some(ClientFrame::Other) | None => {}
        }
    }
    if let Some(room) = room {
        room.lock().members.retain(|m| m.conn != conn);
    }
    drop(tx);
    // The writer ends once every sender of its queue is gone (ours and the room's).
    let _ = tokio::time::timeout(Duration::from_secs(5), writer).await;
}

/// Assigns the next seq, pushes the frame to every member; returns the sender's
/// confirmation.
fn broadcast(
    room: &Room,
    room_id: &str,
    sender: &str,
    message: &str,
    temp_id: Option<&str>,
) -> String {
    let id = uuid::Uuid::now_v7().to_string();
    let created_at = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let mut inner = room.lock();
    inner.seq += 1;
    let seq = inner.seq;
    let frame = Message::text(frames::message_received(
        seq,
        &id,
        room_id,
        sender,
        message,
        &created_at,
        temp_id,
    ));
    for member in &inner.members {
        if let Err(TrySendError::Full(_)) = member.tx.try_send(frame.clone()) {
            member.overflow.cancel();
        }
    }
    drop(inner);
    frames::confirmation(Some(seq), Some(&id), temp_id, None)
}

#[cfg(test)]
mod tests {
    use super::params;

    #[test]
    fn query_params() {
        assert_eq!(
            params("token=u1&room=room-3"),
            (Some("u1".into()), Some("room-3".into()))
        );
        assert_eq!(params("token="), (None, None));
    }
}
