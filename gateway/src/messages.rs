//! Accepting a message: validation, policy, and the single Redis round trip.
//!
//! [`send`] is the one seam every way of sending goes through (WebSocket
//! `SendMessage` and its `ChatMessage` alias, the HTTP publish route, the support
//! desk), so all of them get the same checks, ordering, deduplication and answers.
//! A check that applies to every message belongs in [`send`], nowhere else.
//!
//! Messages are stored by the worker a few milliseconds after they are accepted.
//! Whatever refers to an earlier message (a reply's `parent_id`, an edit, a
//! deletion) looks it up with [`stored_message`], which waits that long.

use crate::moderation::SendVerdict;
use crate::state::App;
use crate::storable;
use chatter_shared::ingest::{AppendOutcome, Ending, NewMessage};
use chatter_shared::protocol::{MessageView, now_micros};
use chatter_shared::store::SupportState;
use chatter_shared::telemetry::metric;
use std::time::Duration;
use uuid::Uuid;

/// How long after a message was accepted a lookup waits for the worker to store
/// it. Ids are UUIDv7, so a message's age is known from its id alone: an old id
/// that is not stored is answered at once.
const STORE_WAIT: Duration = Duration::from_secs(5);
const STORE_POLL: Duration = Duration::from_millis(50);

/// Why a message was not accepted; the `reason` of a negative confirmation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    NotMember,
    BadParent,
    EmptyMessage,
    MessageTooLong,
    TempIdTooLong,
    /// The text holds a character it may not (see [`crate::storable`]).
    BadMessage,
    /// The temp id holds a control character.
    BadTempId,
    Backlogged,
    Unavailable,
    /// The sender is muted in this room (`POST /rooms/{id}/mutes`).
    Muted,
    /// A direct room whose other member blocked the sender.
    Blocked,
    /// The content policy rejected the text (or could not judge it and
    /// `MODERATION_FAIL=closed`).
    ContentRejected,
    /// The sender is banned (a service publishing for them).
    Banned,
    /// A support chat that expired (`SUPPORT_EXPIRY_SECS` without a message).
    ChatExpired,
    /// A support chat that was closed.
    ChatClosed,
}

impl Refusal {
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::NotMember => "not_a_member",
            Refusal::BadParent => "bad_parent",
            Refusal::EmptyMessage => "empty_message",
            Refusal::MessageTooLong => "message_too_long",
            Refusal::TempIdTooLong => "temp_id_too_long",
            Refusal::BadMessage => "bad_message",
            Refusal::BadTempId => "bad_temp_id",
            Refusal::Backlogged => "server_busy",
            Refusal::Unavailable => "unavailable",
            Refusal::Muted => "muted",
            Refusal::Blocked => "blocked",
            Refusal::ContentRejected => "content_rejected",
            Refusal::Banned => "banned",
            Refusal::ChatExpired => "chat_expired",
            Refusal::ChatClosed => "chat_closed",
        }
    }

    /// The refusal for a human (HTTP error messages).
    pub fn explanation(self) -> &'static str {
        match self {
            Refusal::NotMember => "not a member of the room",
            Refusal::BadParent => "parent_id is not a message of this room",
            Refusal::EmptyMessage => "the message is empty",
            Refusal::MessageTooLong => "the message is longer than MAX_MESSAGE_CHARS",
            Refusal::TempIdTooLong => "the temp id is longer than MAX_TEMP_ID_CHARS",
            Refusal::BadMessage => {
                "the message contains a control character (only tab, line feed and carriage return are allowed)"
            }
            Refusal::BadTempId => "the temp id contains a control character",
            Refusal::Backlogged => "the server is busy; retry later",
            Refusal::Unavailable => "the service is unavailable; retry later",
            Refusal::Muted => "you are muted in this room",
            Refusal::Blocked => "the other member of this direct room blocked you",
            Refusal::ContentRejected => "the message was rejected by the content policy",
            Refusal::Banned => "the sender is banned",
            Refusal::ChatExpired => "the support chat has expired; ask for help again",
            Refusal::ChatClosed => "the support chat was closed; ask for help again",
        }
    }
}

/// A message Redis accepted (or had accepted before, for a repeated temp id).
#[derive(Debug, Clone, Copy)]
pub struct Accepted {
    pub id: Uuid,
    pub seq: i64,
}

pub struct Draft<'a> {
    pub room_id: Uuid,
    pub sender_id: &'a str,
    pub body: &'a str,
    pub temp_id: Option<&'a str>,
    pub parent_id: Option<Uuid>,
}

/// Sends a message: checks its shape, its parent, asks moderation (mutes,
/// blocks, the content policy: once per message), then appends it to the bus.
///
/// Membership is the caller's to check first, because the callers know it in
/// different ways (a socket holds its rooms, HTTP asks the database) and answer a
/// non-member differently.
pub async fn send(app: &App, draft: &Draft<'_>) -> Result<Accepted, Refusal> {
    validate(app, draft)?;
    // Database and network waits off the common path are boxed, so that a
    // plain message's future stays small (see `ws::connection`).
    if draft.parent_id.is_some() {
        Box::pin(check_parent(app, draft)).await?;
    }
    let verdict = crate::moderation::check_send(app, draft).await?;
    let accepted = accept(app, draft).await?;
    if verdict == SendVerdict::Flagged
        && let Err(error) =
            Box::pin(
                app.store
                    .flag(accepted.id, draft.room_id, draft.sender_id, draft.body),
            )
            .await
    {
        tracing::warn!(%error, message_id = %accepted.id, "cannot list a flagged message");
    }
    Ok(accepted)
}

/// Checks the draft's shape; membership is the caller's to check (a socket knows
/// its rooms locally, HTTP asks the database).
///
/// Everything the database will store is checked here, before Redis assigns a
/// seq: a message that could only fail in the worker would be confirmed and
/// delivered, then never stored, leaving a gap in the room.
pub fn validate(app: &App, draft: &Draft<'_>) -> Result<(), Refusal> {
    if draft.body.trim().is_empty() {
        return Err(Refusal::EmptyMessage);
    }
    if draft.body.chars().count() > app.config.max_message_chars {
        return Err(Refusal::MessageTooLong);
    }
    if !storable::is_message_text(draft.body) {
        return Err(Refusal::BadMessage);
    }
    if let Some(temp_id) = draft.temp_id {
        if temp_id.chars().count() > app.config.max_temp_id_chars {
            return Err(Refusal::TempIdTooLong);
        }
        if !storable::is_one_line(temp_id) {
            return Err(Refusal::BadTempId);
        }
    }
    Ok(())
}

/// A reply's parent must be a message of the same room (deleted ones included:
/// a thread outlives its first message).
async fn check_parent(app: &App, draft: &Draft<'_>) -> Result<(), Refusal> {
    let Some(parent_id) = draft.parent_id else {
        return Ok(());
    };
    match stored_message(app, draft.room_id, parent_id).await {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(Refusal::BadParent),
        Err(error) => {
            tracing::warn!(%error, "cannot look up a parent message");
            Err(Refusal::Unavailable)
        }
    }
}

/// Message `message_id` of `room_id` as stored, waiting for the worker if the id
/// is younger than [`STORE_WAIT`]. `None`: the room has no such message.
pub async fn stored_message(
    app: &App,
    room_id: Uuid,
    message_id: Uuid,
) -> Result<Option<MessageView>, sqlx::Error> {
    let accepted_at = message_id.get_timestamp().map(|t| {
        let (secs, nanos) = t.to_unix();
        std::time::UNIX_EPOCH + Duration::new(secs, nanos)
    });
    loop {
        if let Some(message) = app.store.message(room_id, message_id).await? {
            return Ok(Some(message));
        }
        let still_young = accepted_at
            .and_then(|at| at.elapsed().ok())
            .is_some_and(|age| age < STORE_WAIT);
        if !still_young {
            return Ok(None);
        }
        tokio::time::sleep(STORE_POLL).await;
    }
}

/// Appends the message to Redis: sequence, stream, dedupe and publish in one call.
async fn accept(app: &App, draft: &Draft<'_>) -> Result<Accepted, Refusal> {
    let message = NewMessage {
        id: Uuid::now_v7(),
        room_id: draft.room_id,
        sender_id: draft.sender_id,
        body: draft.body,
        temp_id: draft.temp_id.filter(|t| !t.is_empty()),
        parent_id: draft.parent_id,
        created_at: now_micros(),
    };
    let mut floor = None;
    loop {
        let started = std::time::Instant::now();
        let outcome = app.bus.append(&message, floor).await.map_err(|error| {
            tracing::warn!(%error, "append failed");
            metrics::counter!(metric::BUS_ERRORS).increment(1);
            Refusal::Unavailable
        })?;
        metrics::histogram!(metric::PUBLISH_SECONDS).record(started.elapsed().as_secs_f64());
        match outcome {
            AppendOutcome::Accepted { seq } => {
                return Ok(Accepted {
                    id: message.id,
                    seq,
                });
            }
            AppendOutcome::Duplicate { id, seq } => return Ok(Accepted { id, seq }),
            AppendOutcome::BacklogFull => return Err(Refusal::Backlogged),
            AppendOutcome::Ended(ending) => return Err(ended(ending)),
            AppendOutcome::Cold if floor.is_none() => {
                floor = Some(Box::pin(seq_floor(app, draft.room_id)).await?);
            }
            AppendOutcome::Cold => return Err(Refusal::Unavailable),
        }
    }
}

/// The room's counter is gone (new room, or Redis lost its data): the seq to
/// resume above, what is persisted, so seqs never go backwards. A support chat
/// that ended meanwhile is told to the bus again.
async fn seq_floor(app: &App, room_id: Uuid) -> Result<i64, Refusal> {
    let unavailable = |error: sqlx::Error| {
        tracing::warn!(%error, "cannot read the persisted seq floor");
        Refusal::Unavailable
    };
    if let Some(ending) = ended_chat(app, room_id).await.map_err(unavailable)? {
        if let Err(error) = app.bus.end_room(room_id, ending).await {
            tracing::warn!(%error, "cannot mark an ended chat on the bus");
        }
        return Err(self::ended(ending));
    }
    app.store.max_seq(room_id).await.map_err(unavailable)
}

fn ended(ending: Ending) -> Refusal {
    match ending {
        Ending::Expired => Refusal::ChatExpired,
        Ending::Closed => Refusal::ChatClosed,
    }
}

/// How the room's support chat ended, if it is one that did.
async fn ended_chat(app: &App, room_id: Uuid) -> Result<Option<Ending>, sqlx::Error> {
    Ok(match app.store.support_request(room_id).await? {
        Some(request) if request.state == SupportState::Expired => Some(Ending::Expired),
        Some(request) if request.state == SupportState::Closed => Some(Ending::Closed),
        _ => None,
    })
}
