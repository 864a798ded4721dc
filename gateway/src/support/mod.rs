//! The live support desk: users ask for help, agents (role `support`) claim
//! requests and chat with them in an ordinary room of kind `support`.
//!
//! The WebSocket frames (`Join`, `Load`, `JoinUser`) and the REST routes
//! (`/support/...`) are two doors to the functions here, so both behave alike.
//! State lives in the database (`support_requests`), never in one gateway:
//! - a claim is one conditional update, so one agent wins a race whatever
//!   gateways the agents are on;
//! - expiry is swept by every gateway from the database (`expiry`), so a chat
//!   expires even when the gateway that created it is gone;
//! - `UserLeft` / `SupportLeft` follow cluster-wide presence (`departures`).
//!
//! Queue events travel on the agents' channel, which only agents' sockets
//! join; what the two sides of a chat hear travels on the room's channel or
//! the user's own channel, like any room event.

pub mod departures;
pub mod expiry;

use crate::bus::Bus;
use crate::room_events;
use crate::state::App;
use chatter_shared::auth::Identity;
use chatter_shared::events::EventType;
use chatter_shared::ingest::Ending;
use chatter_shared::keyspace;
use chatter_shared::protocol::{MessageView, ServerFrame, SupportRequestView};
use chatter_shared::store::{Claim, HistoryPage, NewRequest, SupportRequest, SupportState};
use time::OffsetDateTime;
use uuid::Uuid;

/// The role that makes a user a support agent.
pub const AGENT_ROLE: &str = "support";

/// Messages a re-`Join` replays in `ChatHistory` (the newest ones).
const HISTORY_LIMIT: i64 = 200;

/// How long a history waits for the worker to store what was accepted.
const HISTORY_WAIT: std::time::Duration = std::time::Duration::from_secs(3);
const HISTORY_POLL: std::time::Duration = std::time::Duration::from_millis(50);

/// Requests `Load` and `GET /support/requests` list at most.
pub const QUEUE_LIMIT: i64 = 500;

/// Topics longer than this are refused.
const MAX_TOPIC_CHARS: usize = 200;

pub fn is_agent(identity: &Identity) -> bool {
    identity.roles.iter().any(|role| role == AGENT_ROLE)
}

/// Why a desk operation was refused; the WebSocket and REST doors each turn it
/// into their own answer (an `Error` frame, a JSON error).
#[derive(Debug)]
pub enum DeskError {
    /// Only agents may do this.
    NotAnAgent,
    /// Another agent claimed it first (or it is no longer pending).
    AlreadyClaimed,
    NotFound,
    /// The chat has ended this way.
    Ended(SupportState),
    BadInput(&'static str),
    Unavailable(String),
}

impl DeskError {
    pub fn code(&self) -> &'static str {
        match self {
            DeskError::NotAnAgent => "forbidden",
            DeskError::AlreadyClaimed => "already_claimed",
            DeskError::NotFound => "request_not_found",
            DeskError::Ended(SupportState::Closed) => "chat_closed",
            DeskError::Ended(_) => "chat_expired",
            DeskError::BadInput(_) => "bad_request",
            DeskError::Unavailable(_) => "unavailable",
        }
    }

    pub fn message(&self) -> &str {
        match self {
            DeskError::NotAnAgent => "only support agents (role `support`) may do this",
            DeskError::AlreadyClaimed => "another agent has claimed this request",
            DeskError::NotFound => "no such support request",
            DeskError::Ended(SupportState::Closed) => "the chat was closed",
            DeskError::Ended(_) => "the chat has expired",
            DeskError::BadInput(problem) => problem,
            DeskError::Unavailable(_) => "the support desk is unavailable; retry",
        }
    }
}

impl From<sqlx::Error> for DeskError {
    fn from(error: sqlx::Error) -> DeskError {
        tracing::warn!(%error, "support desk: database error");
        DeskError::Unavailable(error.to_string())
    }
}

/// When a chat touched now expires: unix milliseconds.
pub fn deadline_from_now(app: &App) -> i64 {
    let expiry_ms = i64::try_from(app.config.support_expiry_secs)
        .unwrap_or(i64::MAX / 1000)
        .saturating_mul(1000);
    unix_ms(OffsetDateTime::now_utc()).saturating_add(expiry_ms)
}

pub fn unix_ms(at: OffsetDateTime) -> i64 {
    i64::try_from(at.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

pub fn view(request: &SupportRequest) -> SupportRequestView {
    SupportRequestView::new(request, OffsetDateTime::now_utc())
}

/// What asking for help came to.
pub struct Asked {
    pub request: SupportRequest,
    /// False: the user already had an open request, which is returned.
    pub created: bool,
}

/// A user asks for help: their open request, or a new `pending` one whose room
/// has them as its only member; agents on every gateway hear `UserJoined`.
pub async fn ask(
    app: &App,
    user: &Identity,
    topic: Option<&str>,
    metadata: Option<serde_json::Value>,
) -> Result<Asked, DeskError> {
    if let Some(topic) = topic {
        if topic.chars().count() > MAX_TOPIC_CHARS {
            return Err(DeskError::BadInput("topic is longer than 200 characters"));
        }
        if !crate::storable::is_one_line(topic) {
            return Err(DeskError::BadInput("topic contains a control character"));
        }
    }
    let metadata = metadata.unwrap_or_else(|| serde_json::json!({}));
    if !metadata.is_object() {
        return Err(DeskError::BadInput("metadata must be a JSON object"));
    }
    let (request, created) = app
        .store
        .open_support_request(NewRequest {
            user_id: &user.user_id,
            topic,
            metadata,
            deadline_ms: deadline_from_now(app),
        })
        .await?;
    if created {
        if let Err(error) = app.bus.seed_room(request.room_id).await {
            tracing::warn!(%error, "cannot seed a support room's counter");
        }
        // The user's sockets join the room's channel before agents hear of it.
        if let Some(room) = app.store.room(request.room_id).await? {
            room_events::room_created(&app.bus, &room).await;
        }
        metrics::counter!(chatter_shared::telemetry::metric::SUPPORT_REQUESTS).increment(1);
        app.events
            .record(
                EventType::SupportRequested,
                || serde_json::json!({ "request": view(&request) }),
            )
            .await;
        let frame = ServerFrame::UserJoined(&view(&request)).to_json();
        to_agents(&app.bus, frame).await;
    }
    Ok(Asked { request, created })
}

/// The queue: pending requests, oldest first.
pub async fn queue(app: &App, caller: &Identity) -> Result<Vec<SupportRequestView>, DeskError> {
    if !is_agent(caller) {
        return Err(DeskError::NotAnAgent);
    }
    requests(app, SupportState::Pending).await
}

/// Requests in `state`, oldest first (agents only: the caller is checked by the
/// routes and frames that call this).
pub async fn requests(
    app: &App,
    state: SupportState,
) -> Result<Vec<SupportRequestView>, DeskError> {
    let requests = app.store.support_requests(state, QUEUE_LIMIT).await?;
    let now = OffsetDateTime::now_utc();
    Ok(requests
        .iter()
        .map(|request| SupportRequestView::new(request, now))
        .collect())
}

/// An agent claims a pending request. Exactly one of any number of concurrent
/// claims wins (one conditional update in the database); the winner is made a
/// member (role `agent`), every dashboard hears `RemoveUser`, the user's
/// sockets `SupportJoinedUser`.
pub async fn claim(
    app: &App,
    agent: &Identity,
    room_id: Uuid,
) -> Result<SupportRequest, DeskError> {
    if !is_agent(agent) {
        return Err(DeskError::NotAnAgent);
    }
    let request = match app
        .store
        .claim_support_request(room_id, &agent.user_id, deadline_from_now(app))
        .await?
    {
        Claim::Won(request) => request,
        Claim::Lost(request) if request.state.is_open() => return Err(DeskError::AlreadyClaimed),
        Claim::Lost(request) => return Err(DeskError::Ended(request.state)),
        Claim::NotFound => return Err(DeskError::NotFound),
    };
    metrics::counter!(chatter_shared::telemetry::metric::SUPPORT_CLAIMS).increment(1);
    app.events
        .record(
            EventType::SupportClaimed,
            || serde_json::json!({ "request": view(&request), "agent_id": &agent.user_id }),
        )
        .await;
    // The agent's sockets join the room (MemberAdded on their channel), the
    // user's other devices hear of the new member.
    if let Some(room) = app.store.room(room_id).await? {
        room_events::members_changed(&app.bus, &room, std::slice::from_ref(&agent.user_id), &[])
            .await;
    }
    let support_name = agent.name.as_deref().unwrap_or(&agent.user_id);
    let joined = ServerFrame::SupportJoinedUser {
        support_id: &agent.user_id,
        support_name,
        room_id,
    }
    .to_json();
    publish(&app.bus, &keyspace::user_channel(&request.user_id), joined).await;
    let removed = ServerFrame::RemoveUser {
        user_id: &request.user_id,
        room_id,
    }
    .to_json();
    to_agents(&app.bus, removed).await;
    Ok(request)
}

/// Ends a chat on purpose: the user who asked, the agent of the chat or any
/// agent may. Both sides hear `ChatClosed`; a pending request leaves the queue.
pub async fn close(app: &App, caller: &Identity, room_id: Uuid) -> Result<(), DeskError> {
    let request = app
        .store
        .support_request(room_id)
        .await?
        .ok_or(DeskError::NotFound)?;
    let takes_part = request.user_id == caller.user_id
        || request.agent_id.as_deref() == Some(caller.user_id.as_str());
    if !takes_part && !is_agent(caller) {
        // Not theirs to see either.
        return Err(DeskError::NotFound);
    }
    if !request.state.is_open() {
        return Err(DeskError::Ended(request.state));
    }
    match app
        .store
        .end_support_request(room_id, SupportState::Closed, None)
        .await?
    {
        Some(before) => {
            end(app, &before, Ending::Closed).await;
            Ok(())
        }
        // Ended by someone else a moment ago.
        None => match app.store.support_request(room_id).await? {
            Some(now) => Err(DeskError::Ended(now.state)),
            None => Err(DeskError::NotFound),
        },
    }
}

/// Tells the bus and both sides that a chat ended (`before`: the request as it
/// was, to know whether it was still in the queue).
pub async fn end(app: &App, before: &SupportRequest, ending: Ending) {
    let room_id = before.room_id;
    // First the bus, so no message is accepted after the notice.
    if let Err(error) = app.bus.end_room(room_id, ending).await {
        tracing::warn!(%error, %room_id, "cannot mark an ended chat on the bus");
    }
    let frame = match ending {
        Ending::Expired => ServerFrame::ChatExpired { room_id },
        Ending::Closed => ServerFrame::ChatClosed { room_id },
    }
    .to_json();
    publish(&app.bus, &keyspace::room_channel(room_id), frame.clone()).await;
    if before.state == SupportState::Pending {
        let removed = ServerFrame::RemoveUser {
            user_id: &before.user_id,
            room_id,
        }
        .to_json();
        to_agents(&app.bus, removed).await;
    }
}

/// What a re-`Join` answers.
pub enum Rejoined {
    /// The chat is open: its history.
    History(Uuid, Vec<MessageView>),
    /// The chat ended this way.
    Ended(Uuid, SupportState),
}

/// A re-join of `room_id` by one of its two sides.
pub async fn rejoin(app: &App, caller: &Identity, room_id: Uuid) -> Result<Rejoined, DeskError> {
    let request = app
        .store
        .support_request(room_id)
        .await?
        .ok_or(DeskError::NotFound)?;
    let takes_part = request.user_id == caller.user_id
        || request.agent_id.as_deref() == Some(caller.user_id.as_str());
    if !takes_part {
        return Err(DeskError::NotFound);
    }
    if !request.state.is_open() {
        return Ok(Rejoined::Ended(room_id, request.state));
    }
    history(app, room_id).await
}

/// The open chat's newest messages, oldest first. Messages are stored by the
/// worker a few milliseconds after they are accepted: the history waits (up
/// to [`HISTORY_WAIT`]) until the store holds the room's last accepted seq, so
/// a re-join right after a message still shows it.
pub async fn history(app: &App, room_id: Uuid) -> Result<Rejoined, DeskError> {
    let latest = app
        .bus
        .latest_seq(room_id)
        .await
        .ok()
        .flatten()
        .unwrap_or(0);
    let started = std::time::Instant::now();
    loop {
        let messages = app
            .store
            .history(
                room_id,
                HistoryPage::Latest {
                    limit: HISTORY_LIMIT,
                },
            )
            .await?;
        let stored = messages.last().map_or(0, |m| m.seq);
        if stored >= latest || started.elapsed() >= HISTORY_WAIT {
            return Ok(Rejoined::History(room_id, messages));
        }
        tokio::time::sleep(HISTORY_POLL).await;
    }
}

async fn to_agents(bus: &Bus, frame: String) {
    publish(bus, keyspace::SUPPORT_AGENTS_CHANNEL, frame).await;
}

/// A notice that is lost when the bus fails is logged, not retried: the state
/// is committed, and dashboards reload it with `Load` when they reconnect.
async fn publish(bus: &Bus, channel: &str, frame: String) {
    if let Err(error) = bus.publish(channel, frame).await {
        tracing::warn!(%error, channel, "support desk: cannot publish a notice");
    }
}
