//! `/users/me/blocks`: a user blocks another.
//!
//! The blocked user can no longer open a direct room with the blocker (403
//! `blocked`) nor write to the one they have (`reason: "blocked"`), and gets
//! no presence for the blocker. Group rooms are unaffected: a group is shared
//! with other members, whose conversation one member's block must not censor
//! or split (the owner mutes, an admin kicks or bans); a blocking user who
//! does not want to see someone's group messages can leave the group.

use super::error::{ApiError, ErrorBody};
use super::extract::{Json, Path, User};
use crate::moderation::notices::{self, Change};
use crate::state::AppState;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{delete, get};
use chatter_shared::auth::validate_user_id;
use chatter_shared::store::Block;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/users/me/blocks", get(list).post(block))
        .route("/users/me/blocks/{user_id}", delete(unblock))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct BlockBody {
    /// The user to block.
    user_id: String,
}

/// The users the caller blocks.
#[derive(Serialize, ToSchema)]
struct Blocks {
    /// Newest first.
    blocks: Vec<Block>,
}

/// The direct room between the pair, if any, has other restrictions now.
async fn direct_room_changed(state: &AppState, a: &str, b: &str) -> Result<(), ApiError> {
    if let Some(room) = state.store.find_direct(a, b).await? {
        notices::announce(state, Change::Room(room.id)).await;
    }
    Ok(())
}

/// Block a user.
#[utoipa::path(
    post,
    path = "/users/me/blocks",
    operation_id = "block_user",
    tag = "moderation",
    security(("user" = [])),
    request_body = BlockBody,
    responses(
        (status = 201, description = "Blocked"),
        (status = 200, description = "Already blocked"),
        (status = 400, description = "`bad_json`, `bad_user_id`: malformed, or the caller themself", body = ErrorBody),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
        (status = 403, description = "`banned`", body = ErrorBody),
        (status = 503, description = "`unavailable`: the database is unavailable", body = ErrorBody),
    ),
)]
async fn block(
    State(state): State<AppState>,
    User(caller): User,
    Json(body): Json<BlockBody>,
) -> Result<StatusCode, ApiError> {
    validate_user_id(&body.user_id)
        .map_err(|problem| ApiError::bad_request("bad_user_id", problem))?;
    if body.user_id == caller.user_id {
        return Err(ApiError::bad_request(
            "bad_user_id",
            "you cannot block yourself",
        ));
    }
    let new = state.store.block(&caller.user_id, &body.user_id).await?;
    direct_room_changed(&state, &caller.user_id, &body.user_id).await?;
    Ok(if new {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    })
}

/// Unblock a user.
#[utoipa::path(
    delete,
    path = "/users/me/blocks/{user_id}",
    operation_id = "unblock_user",
    tag = "moderation",
    security(("user" = [])),
    params(("user_id" = String, Path, description = "The blocked user")),
    responses(
        (status = 204, description = "Unblocked"),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
        (status = 403, description = "`banned`", body = ErrorBody),
        (status = 404, description = "`not_blocked`", body = ErrorBody),
        (status = 503, description = "`unavailable`: the database is unavailable", body = ErrorBody),
    ),
)]
async fn unblock(
    State(state): State<AppState>,
    User(caller): User,
    Path(user_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    if !state.store.unblock(&caller.user_id, &user_id).await? {
        return Err(ApiError::not_found(
            "not_blocked",
            "you do not block this user",
        ));
    }
    direct_room_changed(&state, &caller.user_id, &user_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The users the caller blocks.
#[utoipa::path(
    get,
    path = "/users/me/blocks",
    operation_id = "list_blocks",
    tag = "moderation",
    security(("user" = [])),
    responses(
        (status = 200, description = "Whom the caller blocks", body = Blocks),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
        (status = 403, description = "`banned`", body = ErrorBody),
        (status = 503, description = "`unavailable`: the database is unavailable", body = ErrorBody),
    ),
)]
async fn list(State(state): State<AppState>, User(caller): User) -> Result<Json<Blocks>, ApiError> {
    let blocks = state.store.blocked_by(&caller.user_id).await?;
    Ok(Json(Blocks { blocks }))
}
