//! Read state over HTTP: moving the caller's read marker, and every member's.

use super::room_not_found;
use crate::http::error::ApiError;
use crate::http::extract::{Json, Path, User};
use crate::read_state::{self, ReadError};
use crate::state::AppState;
use axum::Router;
use axum::extract::State;
use axum::routing::{get, post};
use chatter_shared::store::Receipt;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/rooms/{id}/read", post(mark_read))
        .route("/rooms/{id}/receipts", get(receipts))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReadBody {
    seq: i64,
}

#[derive(Serialize)]
struct ReadMarker {
    room_id: Uuid,
    last_read_seq: i64,
}

/// `POST /rooms/{id}/read`: moves the caller's marker forward (never back);
/// members get `ReadReceipt` when it moved.
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
        last_read_seq: moved.unwrap_or(marker).max(marker),
    }))
}

#[derive(Serialize)]
struct Receipts {
    receipts: Vec<Receipt>,
}

/// `GET /rooms/{id}/receipts`: each member's last read seq.
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
