//! A room's messages over HTTP: history, publishing, edits and deletions, and the
//! direct-chat history between two users.

use super::{page_limit, room_not_found, room_of_member};
use crate::http::error::{ApiError, ErrorBody};
use crate::http::extract::{Json, Path, Query, User, bearer, is_admin};
use crate::messages::{self, Draft, Refusal};
use crate::room_events;
use crate::state::AppState;
use axum::Router;
use axum::extract::{FromRequestParts, State};
use axum::http::StatusCode;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::routing::{get, patch};
use chatter_shared::auth::{Identity, is_service_secret, validate_user_id};
use chatter_shared::events::EventType;
use chatter_shared::protocol::{MessageView, ServerFrame};
use chatter_shared::store::HistoryPage;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/rooms/{id}/messages", get(history).post(publish))
        .route(
            "/rooms/{id}/messages/{message_id}",
            patch(edit_message).delete(delete_message),
        )
        .route("/messages", get(direct_history))
}

/// The paging parameters of a history query (no `#[serde(flatten)]` into other
/// query structs: flattened query fields lose their number parsing).
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct HistoryQuery {
    /// The page just after this seq, oldest first. Not with `before_seq`.
    #[param(minimum = 0)]
    after_seq: Option<i64>,
    /// The page just before this seq. Not with `after_seq`.
    #[param(minimum = 0)]
    before_seq: Option<i64>,
    /// Page size, 1 to `PAGE_SIZE_MAX` (200); default `PAGE_SIZE_DEFAULT` (50).
    #[param(value_type = Option<i64>, minimum = 1)]
    limit: Option<String>,
}

impl HistoryQuery {
    fn page(&self, state: &AppState) -> Result<HistoryPage, ApiError> {
        let limit = page_limit(state, self.limit.as_deref())?;
        match (self.after_seq, self.before_seq) {
            (Some(_), Some(_)) => Err(ApiError::bad_request(
                "bad_query",
                "give after_seq or before_seq, not both",
            )),
            (Some(seq), None) if seq >= 0 => Ok(HistoryPage::After { seq, limit }),
            (None, Some(seq)) if seq >= 0 => Ok(HistoryPage::Before { seq, limit }),
            (None, None) => Ok(HistoryPage::Latest { limit }),
            _ => Err(ApiError::bad_request(
                "bad_query",
                "seq values are not negative",
            )),
        }
    }
}

/// A page of a room's history.
#[derive(Serialize, ToSchema)]
struct HistoryBody {
    /// In seq order (oldest first).
    messages: Vec<MessageView>,
}

/// A page of a room's history.
///
/// In seq order; without `after_seq` or `before_seq`, the latest page. Deleted
/// messages are tombstones (empty `message`, `deleted_at` set).
#[utoipa::path(
    get,
    path = "/rooms/{id}/messages",
    operation_id = "list_messages",
    tag = "rooms",
    security(("user" = [])),
    params(
        ("id" = Uuid, Path, description = "The room"),
        HistoryQuery,
    ),
    responses(
        (status = 200, description = "The page, in seq order", body = HistoryBody),
        (status = 400, description = "`bad_path`: the id is not a UUID, `bad_limit`, \
            `bad_query`: `after_seq` and `before_seq` together, a negative one, or not a number", body = ErrorBody),
        (status = 401, description = "`unauthenticated`: no, invalid or expired JWT", body = ErrorBody),
        (status = 404, description = "`room_not_found`: no such room, deleted, or the caller is not a member", body = ErrorBody),
        (status = 503, description = "`unavailable`: the database is unavailable", body = ErrorBody),
    ),
)]
async fn history(
    State(state): State<AppState>,
    User(caller): User,
    Path(room_id): Path<Uuid>,
    Query(query): Query<HistoryQuery>,
) -> Result<Json<HistoryBody>, ApiError> {
    let page = query.page(&state)?;
    if !state.store.is_member(room_id, &caller.user_id).await? {
        return Err(room_not_found());
    }
    let messages = state.store.history(room_id, page).await?;
    Ok(Json(HistoryBody { messages }))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct DirectQuery {
    /// The caller's own user id.
    #[param(required = true)]
    from: Option<String>,
    /// The other user.
    #[param(required = true)]
    to: Option<String>,
    /// The page just after this seq, oldest first. Not with `before_seq`.
    #[param(minimum = 0)]
    after_seq: Option<i64>,
    /// The page just before this seq. Not with `after_seq`.
    #[param(minimum = 0)]
    before_seq: Option<i64>,
    /// Page size, 1 to `PAGE_SIZE_MAX` (200); default `PAGE_SIZE_DEFAULT` (50).
    #[param(value_type = Option<i64>, minimum = 1)]
    limit: Option<String>,
}

/// The direct chat between two users.
#[derive(Serialize, ToSchema)]
struct DirectHistory {
    /// The pair's direct room; `null` when they have none yet.
    #[schema(required)]
    room_id: Option<Uuid>,
    /// Oldest first; empty when they have no direct room.
    messages: Vec<MessageView>,
}

/// The direct chat between the caller and another user.
///
/// `from` must be the caller. Paged like a room's history; `room_id: null` and
/// no messages when the pair has no direct room.
#[utoipa::path(
    get,
    path = "/messages",
    operation_id = "direct_messages",
    tag = "rooms",
    security(("user" = [])),
    params(DirectQuery),
    responses(
        (status = 200, description = "The pair's direct room (or `null`) and a page of its messages", body = DirectHistory),
        (status = 400, description = "`bad_query`: `from` or `to` missing, `after_seq` and `before_seq` \
            together, a negative one, or not a number, `bad_user_id`: `to` is not a valid user id, \
            `bad_limit`", body = ErrorBody),
        (status = 401, description = "`unauthenticated`: no, invalid or expired JWT", body = ErrorBody),
        (status = 403, description = "`forbidden`: `from` is not the caller", body = ErrorBody),
        (status = 503, description = "`unavailable`: the database is unavailable", body = ErrorBody),
    ),
)]
async fn direct_history(
    State(state): State<AppState>,
    User(caller): User,
    Query(query): Query<DirectQuery>,
) -> Result<Json<DirectHistory>, ApiError> {
    let (Some(from), Some(to)) = (&query.from, &query.to) else {
        return Err(ApiError::bad_request(
            "bad_query",
            "from and to are required",
        ));
    };
    if *from != caller.user_id {
        return Err(ApiError::forbidden("forbidden", "from must be the caller"));
    }
    validate_user_id(to).map_err(|problem| ApiError::bad_request("bad_user_id", problem))?;
    let page = HistoryQuery {
        after_seq: query.after_seq,
        before_seq: query.before_seq,
        limit: query.limit,
    }
    .page(&state)?;
    let Some(room) = state.store.find_direct(from, to).await? else {
        return Ok(Json(DirectHistory {
            room_id: None,
            messages: Vec::new(),
        }));
    };
    let messages = state.store.history(room.id, page).await?;
    Ok(Json(DirectHistory {
        room_id: Some(room.id),
        messages,
    }))
}

/// Who publishes over HTTP: a member with their JWT, or a service with the
/// shared secret naming the sender.
enum Publisher {
    User(Identity),
    Service,
}

impl FromRequestParts<AppState> for Publisher {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if let Some(secret) = state.config.service_secret() {
            let presented = parts
                .headers
                .get(AUTHORIZATION)
                .and_then(|v| v.to_str().ok());
            if presented.is_some_and(|header| is_service_secret(header, secret)) {
                return Ok(Publisher::Service);
            }
        }
        if bearer(parts).is_none() {
            return Err(ApiError::unauthorized(
                "a Bearer token or the service secret is required",
            ));
        }
        let User(identity) = User::from_request_parts(parts, state).await?;
        Ok(Publisher::User(identity))
    }
}

/// A message to send. Unknown fields are refused (`bad_json`).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct PublishBody {
    /// The text: not blank, at most `MAX_MESSAGE_CHARS` characters.
    message: String,
    /// The client's id for the message (at most `MAX_TEMP_ID_CHARS`, 128):
    /// repeating it returns the original message instead of sending again.
    #[serde(default)]
    message_temp_id: Option<String>,
    /// Reply to this message (a thread); it must be a message of the same room.
    #[serde(default)]
    parent_id: Option<Uuid>,
    /// Required with the service secret; a user may only name themself.
    #[serde(default)]
    sender_id: Option<String>,
}

/// The message as accepted.
#[derive(Serialize, ToSchema)]
struct Published {
    message_id: Uuid,
    seq: i64,
    /// As sent.
    #[schema(required)]
    message_temp_id: Option<String>,
}

/// Send a message to a room.
///
/// The WebSocket send path over HTTP: same validation, ordering, dedupe (a
/// repeated `message_temp_id` returns the original) and fan-out
/// (`MessageReceived` to every member). With the service secret, `sender_id`
/// names the sender, who must be a member.
#[utoipa::path(
    post,
    path = "/rooms/{id}/messages",
    operation_id = "send_message",
    tag = "rooms",
    security(("user" = []), ("service" = [])),
    params(("id" = Uuid, Path, description = "The room")),
    request_body = PublishBody,
    responses(
        (status = 201, description = "Accepted (or, for a repeated temp id, the original)", body = Published),
        (status = 400, description = "`bad_path`, `bad_json` (unknown fields too), `empty_message`, \
            `message_too_long`, `temp_id_too_long`, `bad_message`: a control character other than tab, \
            line feed or carriage return, `bad_temp_id`: a control character in the temp id, \
            `bad_parent`: not a message of this room, \
            `sender_required`: a service call without `sender_id`, `bad_user_id`: a malformed \
            `sender_id`, `content_rejected`: the content policy refused the text", body = ErrorBody),
        (status = 401, description = "`unauthenticated`: no, invalid or expired JWT, and not the service secret", body = ErrorBody),
        (status = 403, description = "`not_allowed`: a user naming someone else in `sender_id`, \
            `sender_not_member`: (service) the sender is not a member, `muted`: the sender is muted \
            in the room, `blocked`: the other member of this direct room blocked the sender, \
            `banned`: the caller (or, for a service, the sender) is banned", body = ErrorBody),
        (status = 404, description = "`room_not_found`: no such room, deleted, or the sender is not a member (user calls)", body = ErrorBody),
        (status = 413, description = "`too_large`: body over 256 KiB", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`: not `application/json`", body = ErrorBody),
        (status = 503, description = "`unavailable`: the database or Redis is unavailable, \
            `server_busy`: the room's backlog is full; retry", body = ErrorBody),
    ),
)]
async fn publish(
    State(state): State<AppState>,
    publisher: Publisher,
    Path(room_id): Path<Uuid>,
    Json(body): Json<PublishBody>,
) -> Result<(StatusCode, Json<Published>), ApiError> {
    let sender = match (&publisher, body.sender_id) {
        (Publisher::User(identity), None) => identity.user_id.clone(),
        (Publisher::User(identity), Some(sender)) if sender == identity.user_id => sender,
        (Publisher::User(_), Some(_)) => {
            return Err(ApiError::forbidden(
                "not_allowed",
                "users may only send as themselves",
            ));
        }
        (Publisher::Service, None) => {
            return Err(ApiError::bad_request(
                "sender_required",
                "service calls name the sender in sender_id",
            ));
        }
        (Publisher::Service, Some(sender)) => {
            validate_user_id(&sender)
                .map_err(|problem| ApiError::bad_request("bad_user_id", problem))?;
            sender
        }
    };
    // The sender's message budget, whoever publishes for them.
    state
        .limits
        .message(&sender)
        .map_err(|limited| ApiError::rate_limited(limited.retry_after))?;
    match publisher {
        Publisher::User(_) => {
            if !state.store.is_member(room_id, &sender).await? {
                return Err(room_not_found());
            }
        }
        Publisher::Service => {
            let room = state
                .store
                .room(room_id)
                .await?
                .ok_or_else(room_not_found)?;
            if !room.has_member(&sender) {
                return Err(ApiError::forbidden(
                    "sender_not_member",
                    "the sender is not a member of the room",
                ));
            }
        }
    }
    let draft = Draft {
        room_id,
        sender_id: &sender,
        body: &body.message,
        temp_id: body.message_temp_id.as_deref(),
        parent_id: body.parent_id,
    };
    let accepted = messages::send(&state, &draft)
        .await
        .map_err(refusal_error)?;
    Ok((
        StatusCode::CREATED,
        Json(Published {
            message_id: accepted.id,
            seq: accepted.seq,
            message_temp_id: body.message_temp_id,
        }),
    ))
}

/// A refused send as an HTTP error: the confirmation's `reason` is the code.
fn refusal_error(refusal: Refusal) -> ApiError {
    let status = match refusal {
        Refusal::NotMember => return room_not_found(),
        Refusal::Backlogged | Refusal::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Refusal::Muted | Refusal::Blocked | Refusal::Banned => StatusCode::FORBIDDEN,
        Refusal::ContentRejected => StatusCode::BAD_REQUEST,
        Refusal::ChatExpired | Refusal::ChatClosed => StatusCode::CONFLICT,
        Refusal::BadParent
        | Refusal::EmptyMessage
        | Refusal::MessageTooLong
        | Refusal::TempIdTooLong
        | Refusal::BadMessage
        | Refusal::BadTempId => StatusCode::BAD_REQUEST,
    };
    ApiError::new(status, refusal.reason(), refusal.explanation())
}

fn message_not_found() -> ApiError {
    ApiError::not_found("message_not_found", "no such message in this room")
}

/// The new text. Unknown fields are refused (`bad_json`).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct EditBody {
    /// Not blank, at most `MAX_MESSAGE_CHARS` characters.
    message: String,
}

/// Edit a message (its sender).
///
/// The sender replaces the text; members get `MessageEdited`.
#[utoipa::path(
    patch,
    path = "/rooms/{id}/messages/{message_id}",
    operation_id = "edit_message",
    tag = "rooms",
    security(("user" = [])),
    params(
        ("id" = Uuid, Path, description = "The room"),
        ("message_id" = Uuid, Path, description = "The message"),
    ),
    request_body = EditBody,
    responses(
        (status = 200, description = "The message as edited, `edited_at` set", body = MessageView),
        (status = 400, description = "`bad_path`, `bad_json` (unknown fields too), `empty_message`, \
            `message_too_long`, `bad_message`: a control character other than tab, line feed or \
            carriage return", body = ErrorBody),
        (status = 401, description = "`unauthenticated`: no, invalid or expired JWT", body = ErrorBody),
        (status = 403, description = "`not_sender`: someone else's message", body = ErrorBody),
        (status = 404, description = "`room_not_found`: no such room, deleted, or the caller is not a member; \
            `message_not_found`: no such message in this room", body = ErrorBody),
        (status = 409, description = "`message_deleted`: a deleted message cannot be edited", body = ErrorBody),
        (status = 413, description = "`too_large`: body over 256 KiB", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`: not `application/json`", body = ErrorBody),
        (status = 503, description = "`unavailable`: the database is unavailable", body = ErrorBody),
    ),
)]
async fn edit_message(
    State(state): State<AppState>,
    User(caller): User,
    Path((room_id, message_id)): Path<(Uuid, Uuid)>,
    Json(body): Json<EditBody>,
) -> Result<Json<MessageView>, ApiError> {
    if !state.store.is_member(room_id, &caller.user_id).await? {
        return Err(room_not_found());
    }
    let original = messages::stored_message(&state, room_id, message_id)
        .await?
        .ok_or_else(message_not_found)?;
    if original.sender_id != caller.user_id {
        return Err(ApiError::forbidden(
            "not_sender",
            "only the sender may edit a message",
        ));
    }
    let draft = Draft {
        room_id,
        sender_id: &caller.user_id,
        body: &body.message,
        temp_id: None,
        parent_id: None,
    };
    messages::validate(&state, &draft).map_err(refusal_error)?;
    let deleted = || {
        ApiError::new(
            StatusCode::CONFLICT,
            "message_deleted",
            "a deleted message cannot be edited",
        )
    };
    if original.deleted_at.is_some() {
        return Err(deleted());
    }
    let edited = state
        .store
        .edit_message(room_id, message_id, &body.message)
        .await?
        .ok_or_else(deleted)?;
    let edited_at = edited.edited_at.unwrap_or(edited.created_at);
    let frame = ServerFrame::MessageEdited {
        id: edited.id,
        room_id,
        seq: edited.seq,
        message: &edited.message,
        edited_at,
    }
    .to_json();
    tell_room(&state, &edited, frame).await;
    state
        .events
        .record(
            EventType::MessageEdited,
            || serde_json::json!({ "message": &edited, "by": &caller.user_id }),
        )
        .await;
    Ok(Json(edited))
}

/// Delete a message (its sender or the room's owner).
///
/// The message becomes a tombstone (empty `message`, `deleted_at` set) and
/// members get `MessageDeleted`. Deleting twice is fine.
#[utoipa::path(
    delete,
    path = "/rooms/{id}/messages/{message_id}",
    operation_id = "delete_message",
    tag = "rooms",
    security(("user" = [])),
    params(
        ("id" = Uuid, Path, description = "The room"),
        ("message_id" = Uuid, Path, description = "The message"),
    ),
    responses(
        (status = 204, description = "Deleted (or already deleted)"),
        (status = 400, description = "`bad_path`: an id is not a UUID", body = ErrorBody),
        (status = 401, description = "`unauthenticated`: no, invalid or expired JWT", body = ErrorBody),
        (status = 403, description = "`not_allowed`: neither the sender, the room's owner nor an admin", body = ErrorBody),
        (status = 404, description = "`room_not_found`: no such room, deleted, or the caller is not a member; \
            `message_not_found`: no such message in this room", body = ErrorBody),
        (status = 503, description = "`unavailable`: the database is unavailable", body = ErrorBody),
    ),
)]
async fn delete_message(
    State(state): State<AppState>,
    User(caller): User,
    Path((room_id, message_id)): Path<(Uuid, Uuid)>,
) -> Result<StatusCode, ApiError> {
    // Admins delete reported messages in rooms they are not members of.
    let admin = is_admin(&state, &caller).await?;
    let room = if admin {
        state
            .store
            .room(room_id)
            .await?
            .ok_or_else(room_not_found)?
    } else {
        room_of_member(&state, room_id, &caller.user_id).await?
    };
    let original = messages::stored_message(&state, room_id, message_id)
        .await?
        .ok_or_else(message_not_found)?;
    if original.sender_id != caller.user_id && room.owner_id != caller.user_id && !admin {
        return Err(ApiError::forbidden(
            "not_allowed",
            "only the sender, the room's owner or an admin may delete a message",
        ));
    }
    if original.deleted_at.is_some() {
        return Ok(StatusCode::NO_CONTENT);
    }
    let deleted = state
        .store
        .delete_message(room_id, message_id)
        .await?
        .ok_or_else(message_not_found)?;
    let frame = ServerFrame::MessageDeleted {
        id: deleted.id,
        room_id,
        seq: deleted.seq,
        deleted_at: deleted.deleted_at.unwrap_or(deleted.created_at),
    }
    .to_json();
    tell_room(&state, &deleted, frame).await;
    state
        .events
        .record(
            EventType::MessageDeleted,
            || serde_json::json!({ "message": &deleted, "by": &caller.user_id }),
        )
        .await;
    Ok(StatusCode::NO_CONTENT)
}

/// Publishes an edit or deletion and rewrites the message in the room's recent
/// log, so a client that resumes later gets the message as it now is.
async fn tell_room(state: &AppState, message: &MessageView, frame: String) {
    room_events::to_room(&state.bus, message.room_id, frame).await;
    if let Err(error) = state
        .bus
        .rewrite_recent(message.room_id, message.seq, message.to_frame())
        .await
    {
        tracing::warn!(%error, "cannot update the recent log after an edit");
    }
}
