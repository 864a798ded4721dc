//! Read state over HTTP: moving the caller's read marker, and every member's.

use super::room_not_found;
use crate::http::error::{ApiError, ErrorBody};
use crate::http::extract::{Json, Path, User};
use crate::read_state::{self, ReadError};
use crate::state::AppState;
use axum::Router;
use axum::extract::State;
use axum::routing::{get, post};
use chatter_shared::store::Receipt;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/rooms/{id}/read", post(mark_read))
        .route("/rooms/{id}/receipts", get(receipts))
}

/// How far the caller has read. Unknown fields are refused (`bad_json`).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct ReadBody {
    /// 0 to the seq of the room's latest message.
    #[schema(minimum = 0)]
    seq: i64,
}

/// The caller's read marker in the room.
#[derive(Serialize, ToSchema)]
struct ReadMarker {
    room_id: Uuid,
    /// Where the marker now is: `seq`, or further if it already was.
    last_read_seq: i64,
}

/// Mark a room read up to a seq.
///
/// Moves the caller's marker forward (never back); members get `ReadReceipt`
/// when it moved, the caller's own sockets too.
#[utoipa::path(
    post,
    path = "/rooms/{id}/read",
    operation_id = "mark_read",
    tag = "rooms",
    security(("user" = [])),
    params(("id" = Uuid, Path, description = "The room")),
    request_body = ReadBody,
    responses(
        (status = 200, description = "The caller's marker as it now is", body = ReadMarker),
        (status = 400, description = "`bad_path`, `bad_json` (unknown fields too), \
            `bad_seq`: negative, or past the room's latest message", body = ErrorBody),
        (status = 401, description = "`unauthenticated`: no, invalid or expired JWT", body = ErrorBody),
        (status = 404, description = "`room_not_found`: no such room, deleted, or the caller is not a member", body = ErrorBody),
        (status = 413, description = "`too_large`: body over 256 KiB", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`: not `application/json`", body = ErrorBody),
        (status = 503, description = "`unavailable`: the database or Redis is unavailable", body = ErrorBody),
    ),
)]
async fn mark_read(
    State(state): State<AppState>,
    User(caller): User,
    Path(room_id): Path<Uuid>,
    Json(body): Json<ReadBody>,
) -> Result<Json<ReadMarker>, ApiError> {
    let marker = state
        .store
        .read_marker(room_id, &caller.user_id)
        .await?
        .ok_or_else(room_not_found)?;
    let moved = read_state::mark_read(&state, room_id, &caller.user_id, body.seq)
        .await
        .map_err(|error| match error {
            ReadError::BadSeq { .. } => ApiError::bad_request("bad_seq", error.to_string()),
            ReadError::Database(error) => error.into(),
            ReadError::Bus(error) => error.into(),
        })?;
    Ok(Json(ReadMarker {
        room_id,
        last_read_seq: moved.unwrap_or(marker),
    }))
}

/// Every member's read marker.
#[derive(Serialize, ToSchema)]
struct Receipts {
    /// One per member.
    receipts: Vec<Receipt>,
}

/// Every member's read marker in a room.
#[utoipa::path(
    get,
    path = "/rooms/{id}/receipts",
    operation_id = "list_receipts",
    tag = "rooms",
    security(("user" = [])),
    params(("id" = Uuid, Path, description = "The room")),
    responses(
        (status = 200, description = "Each member's last read seq", body = Receipts),
        (status = 400, description = "`bad_path`: the id is not a UUID", body = ErrorBody),
        (status = 401, description = "`unauthenticated`: no, invalid or expired JWT", body = ErrorBody),
        (status = 404, description = "`room_not_found`: no such room, deleted, or the caller is not a member", body = ErrorBody),
        (status = 503, description = "`unavailable`: the database is unavailable", body = ErrorBody),
    ),
)]
async fn receipts(
    State(state): State<AppState>,
    User(caller): User,
    Path(room_id): Path<Uuid>,
) -> Result<Json<Receipts>, ApiError> {
    if !state.store.is_member(room_id, &caller.user_id).await? {
        return Err(room_not_found());
    }
    let receipts = state.store.receipts(room_id).await?;
    Ok(Json(Receipts { receipts }))
}
