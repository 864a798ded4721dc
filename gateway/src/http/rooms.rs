//! Rooms: create one, read its history.

use super::error::ApiError;
use super::extract::{Json, Path, Query, User};
use crate::bus::Bus;
use crate::state::AppState;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use chatter_shared::auth::validate_user_id;
use chatter_shared::keyspace;
use chatter_shared::protocol::{MessageView, ServerFrame};
use chatter_shared::store::{HistoryPage, NewRoom, Room, RoomKind};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/rooms", post(create_room))
        .route("/rooms/{id}/messages", get(history))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateRoom {
    members: Vec<String>,
    #[serde(default)]
    kind: Option<RoomKind>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    metadata: Option<serde_json::Value>,
}

/// `POST /rooms`: the caller becomes owner and member; every member (on any
/// gateway) is told with `MemberAdded` and starts receiving the room at once.
async fn create_room(
    State(state): State<AppState>,
    User(caller): User,
    Json(body): Json<CreateRoom>,
) -> Result<(StatusCode, Json<Room>), ApiError> {
    let kind = body.kind.unwrap_or(RoomKind::Group);
    if kind != RoomKind::Group {
        return Err(ApiError::bad_request(
            "unsupported_kind",
            "only group rooms can be created here",
        ));
    }
    if let Some(name) = &body.name
        && name.chars().count() > state.config.max_room_name_chars
    {
        return Err(ApiError::bad_request(
            "name_too_long",
            format!(
                "room names are at most {} characters",
                state.config.max_room_name_chars
            ),
        ));
    }
    let mut members = vec![caller.user_id.clone()];
    for member in body.members {
        validate_user_id(&member)
            .map_err(|problem| ApiError::bad_request("bad_user_id", problem))?;
        if !members.contains(&member) {
            members.push(member);
        }
    }
    if members.len() > state.config.max_room_members {
        return Err(ApiError::bad_request(
            "too_many_members",
            format!(
                "rooms have at most {} members",
                state.config.max_room_members
            ),
        ));
    }
    let unknown = state.store.unknown_users(&members).await?;
    if !unknown.is_empty() {
        return Err(ApiError::bad_request(
            "unknown_user",
            format!("unknown users: {}", unknown.join(", ")),
        ));
    }
    let metadata = body.metadata.unwrap_or_else(|| serde_json::json!({}));
    let room = state
        .store
        .create_room(NewRoom {
            kind,
            name: body.name.as_deref(),
            owner_id: &caller.user_id,
            members: &members,
            metadata,
        })
        .await?;
    if let Err(error) = state.bus.seed_room(room.id).await {
        tracing::warn!(%error, "cannot initialise a room's seq counter; the first send will");
    }
    announce_members(&state.bus, room.id, &room.members).await;
    Ok((StatusCode::CREATED, Json(room)))
}

/// Publishes `MemberAdded` on each member's channel. Gateways holding that user
/// join the room's channel before forwarding the event, so once a client sees it,
/// the room's messages reach it.
async fn announce_members(bus: &Bus, room_id: Uuid, members: &[String]) {
    let publishes = members.iter().map(|member| {
        let frame = ServerFrame::MemberAdded {
            room_id,
            user_id: member,
        }
        .to_json();
        async move {
            if let Err(error) = bus.publish(&keyspace::user_channel(member), frame).await {
                // The room exists; the member sees it on the next connect.
                tracing::warn!(%error, "could not announce a new member");
            }
        }
    });
    futures::future::join_all(publishes).await;
}

#[derive(Deserialize)]
struct HistoryQuery {
    after_seq: Option<i64>,
    before_seq: Option<i64>,
    limit: Option<i64>,
}

#[derive(Serialize)]
struct HistoryBody {
    messages: Vec<MessageView>,
}

/// `GET /rooms/{id}/messages`: a page of history in seq order. A room the caller
/// is not a member of answers 404, the same as a room that does not exist, so
/// room ids cannot be probed.
async fn history(
    State(state): State<AppState>,
    User(caller): User,
    Path(room_id): Path<Uuid>,
    Query(query): Query<HistoryQuery>,
) -> Result<Json<HistoryBody>, ApiError> {
    let max = i64::from(state.config.page_size_max);
    let limit = query
        .limit
        .unwrap_or(i64::from(state.config.page_size_default));
    if !(1..=max).contains(&limit) {
        return Err(ApiError::bad_request(
            "bad_limit",
            format!("limit must be between 1 and {max}"),
        ));
    }
    let page = match (query.after_seq, query.before_seq) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "bad_query",
                "give after_seq or before_seq, not both",
            ));
        }
        (Some(seq), None) if seq >= 0 => HistoryPage::After { seq, limit },
        (None, Some(seq)) if seq >= 0 => HistoryPage::Before { seq, limit },
        (None, None) => HistoryPage::Latest { limit },
        _ => {
            return Err(ApiError::bad_request(
                "bad_query",
                "seq values are not negative",
            ));
        }
    };
    if !state.store.is_member(room_id, &caller.user_id).await? {
        return Err(ApiError::not_found("room_not_found", "no such room"));
    }
    let messages = state.store.history(room_id, page).await?;
    Ok(Json(HistoryBody { messages }))
}
