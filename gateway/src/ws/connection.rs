//! One WebSocket connection's loop: frames in, frames out, heartbeat, limits.

use super::close;
use super::throttle::{Throttle, Verdict, millis_ceil};
use crate::hub::{Conn, Delivery, Inbox, PresenceScope, Registration};
use crate::messages::{self, Draft, Refusal};
use crate::permissions::{self, Permission};
use crate::read_state::{self, ReadError};
use crate::resume::{self, Watch};
use crate::room_events;
use crate::state::{App, AppState};
use crate::support::{self, DeskError, Rejoined};
use axum::extract::ws::{Message, Utf8Bytes, WebSocket};
use chatter_shared::auth::Identity;
use chatter_shared::protocol::{
    ClientFrame, CloseCode, Confirmation, Join, JoinSide, MarkRead, Resume, SendMessage,
    ServerFrame, SupportRequestView, Typing,
};
use chatter_shared::store::SupportState;
use chatter_shared::telemetry::metric;
use futures::SinkExt;
use std::borrow::Cow;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Sleep;
use tracing::Instrument;

/// Rooms a socket remembers its last `Typing` for; past it the memory is reset
/// (at worst one extra `Typing` is passed on).
const TYPING_ROOMS: usize = 64;

/// Queued frames written to a socket with one flush, at most.
const WRITE_BATCH: usize = 64;

/// Write batches in a row after which the socket loop looks at everything
/// else (the socket's inbound side, timers) before the next one.
const FAIR_TURN: u32 = 4;

/// Waits for `timer` if there is one, forever if not.
async fn until(timer: &mut Option<Pin<Box<Sleep>>>) {
    match timer {
        Some(timer) => timer.as_mut().await,
        None => std::future::pending().await,
    }
}

/// What handling one inbound frame decided.
enum Next {
    Continue,
    Close(CloseCode, &'static str),
    /// The socket is gone; nothing more can be sent.
    Gone,
}

/// The socket's task: serves it until it should end, closes it, leaves the hub.
///
/// A plain function building the connection before the future: an `async fn`
/// would keep its arguments in the task beside the `Connection` they are moved
/// into, and every idle socket's task would carry both (4.4 KB per socket
/// where this is 1.9: measured with `size_of_val` of the whole future).
pub fn run(
    socket: WebSocket,
    state: AppState,
    identity: Identity,
    registration: Registration,
    inbox: Inbox,
    permit: OwnedSemaphorePermit,
) -> impl Future<Output = ()> + Send {
    let throttle = Throttle::new(state.config.frames_per_sec);
    let mut connection = Connection {
        socket,
        state,
        identity,
        throttle,
        bad_frames: 0,
        watch: Watch::at_connect(),
        typing: HashMap::new(),
    };
    async move {
        let conn = registration.conn.id;
        tracing::debug!(conn, user = %connection.identity.user_id, "connected");
        let end = connection.serve(&registration, inbox).await;
        if let Some((code, reason)) = end {
            tracing::debug!(conn, code = code.code(), %reason, "closing");
            close(&mut connection.socket, code, &reason).await;
        }
        // Leave the hub before the permit frees the slot.
        drop(registration);
        drop(permit);
        tracing::debug!(conn, "disconnected");
    }
}

struct Connection {
    socket: WebSocket,
    state: AppState,
    identity: Identity,
    throttle: Throttle,
    bad_frames: u32,
    watch: Watch,
    /// When this socket last passed on `Typing` per room, for its rate limit.
    typing: HashMap<uuid::Uuid, Instant>,
}

impl Connection {
    /// The span of what this socket logs. Made for each inbound frame, not
    /// held for the socket's life: a span lives in the tracing registry with
    /// its fields formatted, a cost every idle socket would carry, and the
    /// whole task entered it at every wake-up, each delivery's too.
    fn span(&self, conn: &Conn) -> tracing::Span {
        tracing::info_span!("ws", conn = conn.id, user = %self.identity.user_id)
    }

    /// Runs until the connection should end; `Some` carries the close to send.
    async fn serve(
        &mut self,
        registration: &Registration,
        mut inbox: Inbox,
    ) -> Option<(CloseCode, Cow<'static, str>)> {
        let conn = registration.conn.clone();
        let drain_window = Duration::from_secs(self.state.config.drain_window_secs);
        let idle_timeout = Duration::from_secs(self.state.config.idle_timeout_secs);
        let mut heartbeat =
            tokio::time::interval(Duration::from_secs(self.state.config.ping_interval_secs));
        heartbeat.tick().await;
        let mut last_heard = Instant::now();
        // Timers that only some moments need, boxed so that an idle socket's
        // task does not carry them: the end of the hold (the first seconds)
        // and, once the pod drains, this socket's own moment to close.
        let mut hold_ends = Some(Box::pin(tokio::time::sleep_until(self.watch.hold_ends())));
        let mut closing: Option<Pin<Box<Sleep>>> = None;
        // Keep serving until a random moment in the drain window, so clients
        // reconnect to other pods gradually, not all at once. A socket that
        // started after the hub told every socket of the drain learns it here.
        let close_within_window = || Some(Box::pin(tokio::time::sleep(random_delay(drain_window))));
        if self.state.shutdown.is_cancelled() {
            closing = close_within_window();
        }
        // Frames written since the socket was last read from (see `recv`).
        let mut streak = 0;
        loop {
            if !self.watch.holding() {
                hold_ends = None;
            }
            let yield_first = streak >= FAIR_TURN;
            if yield_first {
                streak = 0;
            }
            tokio::select! {
                // First, because an outbound frame is the common wake-up: most
                // wake-ups then poll nothing else.
                biased;
                delivery = inbox.recv(self.watch.holding(), yield_first) => match delivery {
                    Delivery::Frame(frame) => {
                        streak += 1;
                        self.write_queued(frame, &mut inbox).await?;
                    }
                    // A busy room must not make a new socket look like a slow
                    // consumer before it has spoken.
                    Delivery::Crowded => self.watch.release(),
                    Delivery::Overflowed => {
                        metrics::counter!(metric::SLOW_CONSUMERS).increment(1);
                        return Some((CloseCode::ConnectionClosed, "too slow: the send queue is full".into()));
                    }
                    Delivery::Drain => {
                        if closing.is_none() {
                            closing = close_within_window();
                        }
                    }
                    Delivery::MustClose => {
                        if let Some((code, reason)) = conn.ordered_close() {
                            return Some((code, reason.to_owned().into()));
                        }
                        return Some((CloseCode::NewDevice, "replaced by a newer connection of the same user".into()));
                    }
                },
                () = until(&mut closing) => {
                    return Some((CloseCode::ServerShutdown, "server shutting down; reconnect".into()));
                }
                // The hold ends at its deadline, or early when held frames
                // crowd the queue (above).
                () = until(&mut hold_ends) => {
                    self.watch.release();
                }
                incoming = self.socket.recv() => {
                    streak = 0;
                    let message = match incoming? {
                        Ok(message) => message,
                        Err(error) => {
                            let too_big = error.to_string().to_ascii_lowercase().contains("too long");
                            return too_big.then_some((CloseCode::MessageTooLarge, "frame too large".into()));
                        }
                    };
                    last_heard = Instant::now();
                    metrics::counter!(metric::FRAMES_IN).increment(1);
                    // Boxed: inline, every idle socket's task would carry the
                    // space of handling a frame; boxed, only a frame being
                    // handled does. `handle` boxes its large branches, so this
                    // is a small allocation (1.3 KB): a 16 KB one per message cost
                    // glibc's slow path, more of it the more sockets fragmented the heap.
                    let span = self.span(&conn);
                    let next = Box::pin(self.handle(message, &conn, &mut inbox).instrument(span)).await;
                    // The first frame (normally `Resume`) has been answered: live
                    // frames held since the upgrade may flow now.
                    self.watch.release();
                    match next {
                        Next::Continue => {}
                        Next::Close(code, reason) => return Some((code, reason.into())),
                        Next::Gone => return None,
                    }
                }
                _ = heartbeat.tick() => {
                    if last_heard.elapsed() >= idle_timeout {
                        return Some((CloseCode::Idle, "idle timeout".into()));
                    }
                    self.socket.send(Message::Ping(Default::default())).await.ok()?;
                }
            }
        }
    }

    /// Writes `first` and whatever else is already queued (up to
    /// [`WRITE_BATCH`] frames) with one flush: a socket that fell behind
    /// catches up in a few writes instead of one system call per frame, and a
    /// sender's confirmation goes out with its own copy of the message, which
    /// was published while the ingest script's reply was on its way and
    /// usually waits in the queue by then (one system call and one wake-up of
    /// the client instead of two). While the socket is held (before its first
    /// frame is answered) queued frames stay queued. `None`: the socket is gone.
    async fn write_queued(&mut self, first: Utf8Bytes, inbox: &mut Inbox) -> Option<()> {
        let mut next = Some(first);
        let mut written = 0;
        while let Some(frame) = next.take() {
            if self.watch.admit(frame.as_str()) {
                self.socket.feed(Message::Text(frame)).await.ok()?;
            }
            written += 1;
            if written < WRITE_BATCH && !self.watch.holding() {
                next = inbox.try_recv();
            }
        }
        self.socket.flush().await.ok()
    }

    async fn handle(&mut self, message: Message, conn: &Arc<Conn>, inbox: &mut Inbox) -> Next {
        let text = match message {
            Message::Text(text) => text,
            Message::Binary(_) => {
                return self
                    .bad_frame("bad_frame", "binary frames are not supported", None)
                    .await;
            }
            Message::Ping(_) | Message::Pong(_) => return Next::Continue,
            Message::Close(_) => return Next::Gone,
        };
        if text.len() > self.state.config.max_frame_bytes {
            return Next::Close(CloseCode::MessageTooLarge, "frame too large");
        }
        let over_rate = match self.throttle.check(self.state.config.rate_flood_frames) {
            Verdict::Pass => None,
            Verdict::RetryAfter(wait) => Some(millis_ceil(wait)),
            Verdict::Flood => {
                return Next::Close(
                    CloseCode::RateLimited,
                    "too many frames: kept sending after being told to wait",
                );
            }
        };
        match ClientFrame::parse(text.as_str()) {
            Ok(frame) => {
                self.bad_frames = 0;
                if let Some(retry_after_ms) = over_rate {
                    return self.rate_limited(frame, retry_after_ms).await;
                }
                if let Some(permission) = permissions::for_frame(&frame).missing(&self.identity) {
                    return self.missing_permission(frame, permission).await;
                }
                // The frames that wait on the database are boxed each: kept
                // inline they would make every frame's future (and its
                // allocation, see `serve`) as large as the largest of them.
                match frame {
                    ClientFrame::SendMessage(send) => self.send_message(send, conn, inbox).await,
                    ClientFrame::Resume(request) => Box::pin(self.resume(request, conn)).await,
                    ClientFrame::SubscribePresence => Box::pin(self.subscribe_presence(conn)).await,
                    ClientFrame::Ping => reply(&mut self.socket, &ServerFrame::Pong {}).await,
                    ClientFrame::Typing(typing) => self.typing(typing, conn).await,
                    ClientFrame::MarkRead(mark) => Box::pin(self.mark_read(mark, conn)).await,
                    ClientFrame::Join(join) => Box::pin(self.join(join, conn)).await,
                    ClientFrame::Load => Box::pin(self.load()).await,
                    ClientFrame::JoinUser(claim) => Box::pin(self.claim(claim.room_id, conn)).await,
                }
            }
            Err(error) => {
                self.bad_frame(error.code, &error.message, error.reference.as_deref())
                    .await
            }
        }
    }

    async fn send_message(&mut self, send: SendMessage, conn: &Conn, inbox: &mut Inbox) -> Next {
        let draft = Draft {
            room_id: send.room_id,
            sender_id: &self.identity.user_id,
            body: &send.message,
            temp_id: send.message_temp_id.as_deref(),
            parent_id: send.parent_id,
        };
        let outcome = async {
            if !conn.is_member(send.room_id) {
                return Err(Refusal::NotMember);
            }
            messages::send(&self.state, &draft).await
        }
        .await;
        let confirmation = match outcome {
            Ok(accepted) => Confirmation {
                confirmed: true,
                reason: None,
                message_id: Some(accepted.id),
                message_temp_id: draft.temp_id,
                seq: Some(accepted.seq),
                retry_after_ms: None,
            },
            Err(refusal) => Confirmation {
                confirmed: false,
                reason: Some(refusal.reason()),
                message_id: None,
                message_temp_id: draft.temp_id,
                seq: None,
                retry_after_ms: None,
            },
        };
        let confirmation = ServerFrame::MessageSentConfirmation(confirmation).to_json();
        // One flush with what queued meanwhile: see `write_queued`.
        match self.write_queued(confirmation.into(), inbox).await {
            Some(()) => Next::Continue,
            None => Next::Gone,
        }
    }

    /// Answers a frame over the socket's rate without handling it: a
    /// `SendMessage` gets a negative confirmation echoing its temp id (the client
    /// resends it after `retry_after_ms`), anything else an `Error`.
    async fn rate_limited(&mut self, frame: ClientFrame, retry_after_ms: u64) -> Next {
        metrics::counter!(metric::RATE_LIMITED, "limit" => "socket").increment(1);
        let answer = match &frame {
            ClientFrame::SendMessage(send) => ServerFrame::MessageSentConfirmation(Confirmation {
                confirmed: false,
                reason: Some("rate_limited"),
                message_id: None,
                message_temp_id: send.message_temp_id.as_deref(),
                seq: None,
                retry_after_ms: Some(retry_after_ms),
            }),
            _ => ServerFrame::RateLimited {
                code: "rate_limited",
                message: "too many frames: send again after retry_after_ms",
                retry_after_ms,
            },
        };
        reply(&mut self.socket, &answer).await
    }

    /// Answers a frame the token has no permission for (`JWT_PERMISSIONS_CLAIM`):
    /// a `SendMessage` gets a negative confirmation echoing its temp id, with
    /// reason `missing_permission`, anything else an `Error` with that code.
    async fn missing_permission(&mut self, frame: ClientFrame, permission: Permission) -> Next {
        let message = format!("this token lacks the {} permission", permission.name());
        let answer = match &frame {
            ClientFrame::SendMessage(send) => ServerFrame::MessageSentConfirmation(Confirmation {
                confirmed: false,
                reason: Some("missing_permission"),
                message_id: None,
                message_temp_id: send.message_temp_id.as_deref(),
                seq: None,
                retry_after_ms: None,
            }),
            _ => ServerFrame::Error {
                code: "missing_permission",
                message: &message,
                reference: None,
            },
        };
        reply(&mut self.socket, &answer).await
    }

    async fn resume(&mut self, request: Resume, conn: &Conn) -> Next {
        if let Some(message) = resume::too_many_rooms(&self.state, &request) {
            let frame = ServerFrame::Error {
                code: "too_many_rooms",
                message: &message,
                reference: None,
            };
            return reply(&mut self.socket, &frame).await;
        }
        let mut rooms: Vec<(uuid::Uuid, i64)> = request.rooms.into_iter().collect();
        rooms.sort_unstable();
        let deadline = std::time::Instant::now() + resume::FRAME_GAP_BUDGET;
        for (room_id, last_seq) in rooms {
            let frames = if conn.is_member(room_id) {
                resume::replay(&self.state, room_id, last_seq, &mut self.watch, deadline).await
            } else {
                let message = format!("not a member of room {room_id}");
                vec![
                    ServerFrame::Error {
                        code: "not_a_member",
                        message: &message,
                        reference: None,
                    }
                    .to_json(),
                ]
            };
            for frame in frames {
                if self.socket.send(Message::Text(frame.into())).await.is_err() {
                    return Next::Gone;
                }
            }
        }
        Next::Continue
    }

    /// Passes `Typing` on to the room's other members, at most once per
    /// `TYPING_INTERVAL_MS` per room; the rest are dropped without an answer
    /// (clients send one per keystroke).
    async fn typing(&mut self, typing: Typing, conn: &Conn) -> Next {
        if !conn.is_member(typing.room_id) {
            return self.not_a_member(typing.room_id).await;
        }
        let interval = Duration::from_millis(self.state.config.typing_interval_ms);
        let now = Instant::now();
        if self
            .typing
            .get(&typing.room_id)
            .is_some_and(|last| now.duration_since(*last) < interval)
        {
            return Next::Continue;
        }
        if self.typing.len() >= TYPING_ROOMS {
            self.typing.clear();
        }
        self.typing.insert(typing.room_id, now);
        let frame = ServerFrame::Typing {
            user_id: &self.identity.user_id,
            room_id: typing.room_id,
        }
        .to_json();
        // Boxed: a publish's future is larger than the rest of `handle`.
        Box::pin(room_events::to_room(&self.state.bus, typing.room_id, frame)).await;
        Next::Continue
    }

    /// Moves the read marker; members (this socket too) get `ReadReceipt`.
    async fn mark_read(&mut self, mark: MarkRead, conn: &Conn) -> Next {
        if !conn.is_member(mark.room_id) {
            return self.not_a_member(mark.room_id).await;
        }
        let outcome =
            read_state::mark_read(&self.state, mark.room_id, &self.identity.user_id, mark.seq)
                .await;
        let (code, message) = match outcome {
            Ok(_) => return Next::Continue,
            Err(error @ ReadError::BadSeq { .. }) => ("bad_seq", error.to_string()),
            Err(error) => {
                tracing::warn!(%error, "cannot mark a room read");
                ("unavailable", "try again shortly".to_owned())
            }
        };
        let frame = ServerFrame::Error {
            code,
            message: &message,
            reference: None,
        };
        reply(&mut self.socket, &frame).await
    }

    async fn not_a_member(&mut self, room_id: uuid::Uuid) -> Next {
        let message = format!("not a member of room {room_id}");
        let frame = ServerFrame::Error {
            code: "not_a_member",
            message: &message,
            reference: None,
        };
        reply(&mut self.socket, &frame).await
    }

    /// Presence events for dashboards: everyone for support agents and admins,
    /// otherwise the users the caller shares a room or group with.
    async fn subscribe_presence(&mut self, conn: &Arc<Conn>) -> Next {
        let sees_everyone = self
            .identity
            .roles
            .iter()
            .any(|r| r == "support" || r == "admin");
        let scope = if sees_everyone {
            Ok(PresenceScope::Everyone)
        } else {
            self.state
                .store
                .contacts_of(&self.identity.user_id)
                .await
                .map(|contacts| PresenceScope::Users(contacts.into_iter().map(|c| c.id).collect()))
        };
        let subscribed = match scope {
            Ok(scope) => self
                .state
                .hub
                .subscribe_presence(conn, scope)
                .await
                .map_err(|e| e.to_string()),
            Err(error) => Err(error.to_string()),
        };
        match subscribed {
            Ok(()) => Next::Continue,
            Err(error) => {
                tracing::warn!(%error, "cannot subscribe to presence");
                let frame = ServerFrame::Error {
                    code: "unavailable",
                    message: "presence is unavailable",
                    reference: None,
                };
                reply(&mut self.socket, &frame).await
            }
        }
    }

    /// Support desk `Join`: a user asks for help (answered with `UserJoined`) or
    /// re-joins their open chat (`ChatHistory`); either side re-joins a chat by
    /// its `room_id` (`ChatHistory`, or `ChatExpired` / `ChatClosed`).
    async fn join(&mut self, join: Join, conn: &Arc<Conn>) -> Next {
        let room = join.room_id;
        let answer = match (join.from, join.room_id) {
            (_, Some(room_id)) => support::rejoin(&self.state, &self.identity, room_id)
                .await
                .map(Answer::Rejoined),
            (JoinSide::User, None) => ask(&self.state, &self.identity, join, conn).await,
            (JoinSide::Support, None) => Err(DeskError::BadInput(
                "an agent's Join names the chat's room_id; claim requests with JoinUser",
            )),
        };
        self.desk_answer(answer, room).await
    }

    /// Support desk `Load`: the queue, for agents.
    async fn load(&mut self) -> Next {
        let answer = support::queue(&self.state, &self.identity)
            .await
            .map(Answer::Queue);
        self.desk_answer(answer, None).await
    }

    /// Support desk `JoinUser`: claim a request. The winner gets the chat's
    /// history, a loser `Error {code: "already_claimed"}`.
    async fn claim(&mut self, room_id: uuid::Uuid, conn: &Arc<Conn>) -> Next {
        let answer = match support::claim(&self.state, &self.identity, room_id).await {
            Ok(_) => match enter(&self.state, conn, room_id).await {
                Ok(()) => support::history(&self.state, room_id)
                    .await
                    .map(Answer::Rejoined),
                Err(error) => Err(error),
            },
            Err(error) => Err(error),
        };
        self.desk_answer(answer, Some(room_id)).await
    }

    async fn desk_answer(
        &mut self,
        answer: Result<Answer, DeskError>,
        room: Option<uuid::Uuid>,
    ) -> Next {
        let reference = room.map(|id| id.to_string());
        match answer {
            Ok(Answer::Created(view)) => {
                reply(&mut self.socket, &ServerFrame::UserJoined(&view)).await
            }
            Ok(Answer::Queue(requests)) => {
                reply(
                    &mut self.socket,
                    &ServerFrame::PendingUsers {
                        requests: &requests,
                    },
                )
                .await
            }
            Ok(Answer::Rejoined(Rejoined::History(room_id, messages))) => {
                let frame = ServerFrame::ChatHistory {
                    room_id,
                    messages: &messages,
                };
                reply(&mut self.socket, &frame).await
            }
            Ok(Answer::Rejoined(Rejoined::Ended(room_id, state))) => {
                let frame = if state == SupportState::Closed {
                    ServerFrame::ChatClosed { room_id }
                } else {
                    ServerFrame::ChatExpired { room_id }
                };
                reply(&mut self.socket, &frame).await
            }
            Err(error) => {
                let frame = ServerFrame::Error {
                    code: error.code(),
                    message: error.message(),
                    reference: reference.as_deref(),
                };
                reply(&mut self.socket, &frame).await
            }
        }
    }

    /// Answers a frame that was not understood; too many in a row close the socket.
    async fn bad_frame(&mut self, code: &str, message: &str, reference: Option<&str>) -> Next {
        self.bad_frames += 1;
        if self.bad_frames >= self.state.config.bad_frame_limit {
            return Next::Close(CloseCode::BadMessageStructure, "too many malformed frames");
        }
        reply(
            &mut self.socket,
            &ServerFrame::Error {
                code,
                message,
                reference,
            },
        )
        .await
    }
}

/// A user's `Join` without a room: their open chat's history, or a new request.
async fn ask(
    app: &App,
    identity: &Identity,
    join: Join,
    conn: &Arc<Conn>,
) -> Result<Answer, DeskError> {
    let asked = support::ask(app, identity, join.topic.as_deref(), join.metadata).await?;
    let room_id = asked.request.room_id;
    enter(app, conn, room_id).await?;
    if asked.created {
        Ok(Answer::Created(support::view(&asked.request)))
    } else {
        support::history(app, room_id).await.map(Answer::Rejoined)
    }
}

/// Makes this socket a member of a support room at once, so its next
/// `SendMessage` is accepted (the `MemberAdded` event follows anyway).
async fn enter(app: &App, conn: &Arc<Conn>, room_id: uuid::Uuid) -> Result<(), DeskError> {
    app.hub
        .enter_room(conn, room_id)
        .await
        .map_err(|error| DeskError::Unavailable(error.to_string()))
}

/// What a support desk frame is answered with.
enum Answer {
    Created(SupportRequestView),
    Queue(Vec<SupportRequestView>),
    Rejoined(Rejoined),
}

async fn reply(socket: &mut WebSocket, frame: &ServerFrame<'_>) -> Next {
    match socket.send(Message::Text(frame.to_json().into())).await {
        Ok(()) => Next::Continue,
        Err(_) => Next::Gone,
    }
}

fn random_delay(window: Duration) -> Duration {
    let millis = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
    if millis == 0 {
        Duration::ZERO
    } else {
        Duration::from_millis(rand::random_range(0..millis))
    }
}
