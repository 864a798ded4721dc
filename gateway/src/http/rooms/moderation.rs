//! A room's moderation: mutes (by its owner or an admin) and members' reports
//! about its messages.
//!
//! A muted member still reads the room; every send of theirs is refused with
//! `reason: "muted"` (403 `muted` over HTTP), on every gateway: the mute is
//! stored, then announced (`crate::moderation::notices`).

use super::{room_not_found, room_of_member};
use crate::http::admin::{reason, until};
use crate::http::error::{ApiError, ErrorBody};
use crate::http::extract::{Json, Path, User, is_admin};
use crate::messages;
use crate::moderation::notices::{self, Change};
use crate::state::AppState;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{delete, post};
use chatter_shared::auth::{Identity, validate_user_id};
use chatter_shared::store::Report;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;
use uuid::Uuid;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/rooms/{id}/mutes", post(mute))
        .route("/rooms/{id}/mutes/{user_id}", delete(unmute))
        .route("/rooms/{id}/messages/{message_id}/report", post(report))
}

/// The room's owner or an admin may mute; a member who is neither gets 403
/// `not_owner`, anyone else 404 `room_not_found`.
async fn may_mute(state: &AppState, room_id: Uuid, caller: &Identity) -> Result<(), ApiError> {
    let is_admin = is_admin(state, caller).await?;
    let room = state
        .store
        .room(room_id)
        .await?
        .ok_or_else(room_not_found)?;
    if is_admin || room.owner_id == caller.user_id {
        return Ok(());
    }
    if room.has_member(&caller.user_id) {
        return Err(ApiError::forbidden(
            "not_owner",
            "only the room's owner or an admin may mute",
        ));
    }
    Err(room_not_found())
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct MuteBody {
    /// The member to mute.
    user_id: String,
    /// When the mute ends (RFC 3339, in the future); absent: until unmuted.
    #[serde(default, with = "time::serde::rfc3339::option")]
    until: Option<OffsetDateTime>,
}

/// A mute as set.
#[derive(Serialize, ToSchema)]
struct Mute {
    room_id: Uuid,
    user_id: String,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(required)]
    until: Option<OffsetDateTime>,
}

/// Mute a user in a room: they still read it, but every send is refused
/// (`reason: "muted"`). A new mute replaces an older one.
#[utoipa::path(
    post,
    path = "/rooms/{id}/mutes",
    operation_id = "mute_member",
    tag = "moderation",
    security(("user" = [])),
    params(("id" = Uuid, Path, description = "The room")),
    request_body = MuteBody,
    responses(
        (status = 200, description = "Muted (on every gateway within a second)", body = Mute),
        (status = 400, description = "`bad_path`, `bad_json`, `bad_user_id`, `bad_until`: not in the future", body = ErrorBody),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
        (status = 403, description = "`not_owner`: a member who is neither the owner nor an admin; `banned`", body = ErrorBody),
        (status = 404, description = "`room_not_found`", body = ErrorBody),
        (status = 503, description = "`unavailable`: the database is unavailable", body = ErrorBody),
    ),
)]
async fn mute(
    State(state): State<AppState>,
    User(caller): User,
    Path(room_id): Path<Uuid>,
    Json(body): Json<MuteBody>,
) -> Result<Json<Mute>, ApiError> {
    validate_user_id(&body.user_id)
        .map_err(|problem| ApiError::bad_request("bad_user_id", problem))?;
    let until = until(body.until)?;
    may_mute(&state, room_id, &caller).await?;
    state
        .store
        .mute(room_id, &body.user_id, until, &caller.user_id)
        .await?;
    let target = format!("{room_id}/{}", body.user_id);
    state
        .store
        .audit(&caller.user_id, "mute", &target, None)
        .await?;
    notices::announce(&state, Change::Room(room_id)).await;
    Ok(Json(Mute {
        room_id,
        user_id: body.user_id,
        until,
    }))
}

/// Unmute a user in a room.
#[utoipa::path(
    delete,
    path = "/rooms/{id}/mutes/{user_id}",
    operation_id = "unmute_member",
    tag = "moderation",
    security(("user" = [])),
    params(
        ("id" = Uuid, Path, description = "The room"),
        ("user_id" = String, Path, description = "The muted user"),
    ),
    responses(
        (status = 204, description = "Unmuted (on every gateway within a second)"),
        (status = 400, description = "`bad_path`", body = ErrorBody),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
        (status = 403, description = "`not_owner`, `banned`", body = ErrorBody),
        (status = 404, description = "`room_not_found`, `not_muted`", body = ErrorBody),
        (status = 503, description = "`unavailable`: the database is unavailable", body = ErrorBody),
    ),
)]
async fn unmute(
    State(state): State<AppState>,
    User(caller): User,
    Path((room_id, user_id)): Path<(Uuid, String)>,
) -> Result<StatusCode, ApiError> {
    may_mute(&state, room_id, &caller).await?;
    if !state.store.unmute(room_id, &user_id).await? {
        return Err(ApiError::not_found(
            "not_muted",
            "this user is not muted in this room",
        ));
    }
    let target = format!("{room_id}/{user_id}");
    state
        .store
        .audit(&caller.user_id, "unmute", &target, None)
        .await?;
    notices::announce(&state, Change::Room(room_id)).await;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct ReportBody {
    /// Why (1 to 1000 characters).
    reason: String,
}

/// Report a message to the admins (`GET /admin/reports`).
#[utoipa::path(
    post,
    path = "/rooms/{id}/messages/{message_id}/report",
    operation_id = "report_message",
    tag = "moderation",
    security(("user" = [])),
    params(
        ("id" = Uuid, Path, description = "The room"),
        ("message_id" = Uuid, Path, description = "The message"),
    ),
    request_body = ReportBody,
    responses(
        (status = 201, description = "Reported", body = Report),
        (status = 400, description = "`bad_path`, `bad_json`, `bad_reason`: empty, too long or NUL", body = ErrorBody),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
        (status = 403, description = "`banned`", body = ErrorBody),
        (status = 404, description = "`room_not_found` (or not a member), `message_not_found`", body = ErrorBody),
        (status = 503, description = "`unavailable`: the database is unavailable", body = ErrorBody),
    ),
)]
async fn report(
    State(state): State<AppState>,
    User(caller): User,
    Path((room_id, message_id)): Path<(Uuid, Uuid)>,
    Json(body): Json<ReportBody>,
) -> Result<(StatusCode, Json<Report>), ApiError> {
    let reason = reason(Some(&body.reason))?
        .ok_or_else(|| ApiError::bad_request("bad_reason", "a report needs a reason"))?;
    room_of_member(&state, room_id, &caller.user_id).await?;
    let message = messages::stored_message(&state, room_id, message_id)
        .await?
        .ok_or_else(|| ApiError::not_found("message_not_found", "no such message in this room"))?;
    let report = state
        .store
        .report(
            room_id,
            message_id,
            &message.sender_id,
            &caller.user_id,
            reason,
        )
        .await?;
    Ok((StatusCode::CREATED, Json(report)))
}
