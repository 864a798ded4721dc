//! Rooms: create, list, read, change members, delete.
//!
//! Who may do what (docs/API.md): a room the caller is not a member of answers
//! 404 `room_not_found`, exactly like a missing or deleted room, so room ids
//! cannot be probed; owner-only actions by a member answer 403 `not_owner`.
//! Messages and read state of a room are in the submodules.

mod member_list;
pub(super) mod messages;
pub(super) mod moderation;
pub(super) mod read;

use super::error::{ApiError, ErrorBody};
use super::extract::{Json, Path, Query, User};
use crate::room_events;
use crate::state::AppState;
use crate::storable;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, put};
use chatter_shared::events::EventType;
use chatter_shared::protocol::MessageView;
use chatter_shared::store::{
    HistoryPage, MembersChange, NewRoom, Room, RoomCursor, RoomKind, RoomSummary,
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use serde_json::value::RawValue;
use std::collections::HashSet;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/rooms", get(list_rooms).post(create_room))
        .route("/rooms/{id}", get(room).delete(delete_room))
        .route("/rooms/{id}/members", put(change_members))
        .merge(messages::router())
        .merge(moderation::router())
        .merge(read::router())
}

/// The live room `room_id` if `user_id` is one of its members; 404 otherwise.
async fn room_of_member(state: &AppState, room_id: Uuid, user_id: &str) -> Result<Room, ApiError> {
    match state.store.room(room_id).await? {
        Some(room) if room.has_member(user_id) => Ok(room),
        _ => Err(room_not_found()),
    }
}

fn room_not_found() -> ApiError {
    ApiError::not_found("room_not_found", "no such room")
}

/// `limit` within 1..=`PAGE_SIZE_MAX`, `PAGE_SIZE_DEFAULT` when absent. Taken as
/// text so that a number too large for any integer is `bad_limit` too.
pub(in crate::http) fn page_limit(state: &AppState, limit: Option<&str>) -> Result<i64, ApiError> {
    let max = i64::from(state.config.page_size_max);
    let Some(limit) = limit else {
        return Ok(i64::from(state.config.page_size_default));
    };
    match limit.parse::<i64>() {
        Ok(limit) if (1..=max).contains(&limit) => Ok(limit),
        _ => Err(ApiError::bad_request(
            "bad_limit",
            format!("limit must be a number between 1 and {max}"),
        )),
    }
}

/// A member list of a request body, parsed only when the handler asks (see
/// [`member_list`]): the body extractor just checks that it is JSON.
type RawList = Box<RawValue>;

fn too_many_members(state: &AppState) -> ApiError {
    ApiError::bad_request(
        "too_many_members",
        format!(
            "rooms have at most {} members",
            state.config.max_room_members
        ),
    )
}

async fn refuse_unknown_users(state: &AppState, ids: &[String]) -> Result<(), ApiError> {
    let unknown = state.store.unknown_users(ids).await?;
    if unknown.is_empty() {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "unknown_user",
            format!("unknown users: {}", unknown.join(", ")),
        ))
    }
}

/// A new room. Unknown fields are refused (`bad_json`).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateRoom {
    /// The other members (the caller is added as owner); for a `direct` room,
    /// exactly one other user. Every one must be a user the server has seen.
    #[schema(value_type = Vec<String>)]
    members: RawList,
    /// `group` (default) or `direct`; `support` is refused (`unsupported_kind`).
    #[serde(default)]
    kind: Option<RoomKind>,
    /// At most `MAX_ROOM_NAME_CHARS` characters.
    #[serde(default)]
    name: Option<String>,
    /// A JSON object, at most `MAX_ROOM_METADATA_BYTES` (4096) serialized;
    /// default `{}`.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    metadata: Option<serde_json::Value>,
}

/// Create a room (or find the caller's direct room with a user).
///
/// The caller becomes owner and member; every member (on any gateway) is told
/// with `MemberAdded` and starts receiving the room at once. A direct room is
/// found or created: the same pair always gets the same room.
#[utoipa::path(
    post,
    path = "/rooms",
    operation_id = "create_room",
    tag = "rooms",
    security(("user" = [])),
    request_body = CreateRoom,
    responses(
        (status = 201, description = "The room, created; the caller is its owner", body = RoomSummary),
        (status = 200, description = "`direct`: the pair's existing live direct room", body = RoomSummary),
        (status = 400, description = "`bad_json` (unknown fields too), `bad_user_id`, `unknown_user`, \
            `too_many_members`, `name_too_long`, `bad_name`: a control character in the name, \
            `bad_metadata`: not an object, or U+0000 in it, `metadata_too_large`, \
            `bad_direct_members`, `unsupported_kind`", body = ErrorBody),
        (status = 401, description = "`unauthenticated`: no, invalid or expired JWT", body = ErrorBody),
        (status = 403, description = "`blocked`: (direct) the other user blocked the caller; `banned`", body = ErrorBody),
        (status = 413, description = "`too_large`: body over 256 KiB", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`: not `application/json`", body = ErrorBody),
        (status = 503, description = "`unavailable`: the database is unavailable", body = ErrorBody),
    ),
)]
async fn create_room(
    State(state): State<AppState>,
    User(caller): User,
    Json(body): Json<CreateRoom>,
) -> Result<(StatusCode, Json<RoomSummary>), ApiError> {
    let kind = body.kind.unwrap_or(RoomKind::Group);
    if kind == RoomKind::Support {
        return Err(ApiError::bad_request(
            "unsupported_kind",
            "support rooms are opened by the support desk",
        ));
    }
    if let Some(name) = &body.name {
        if name.chars().count() > state.config.max_room_name_chars {
            return Err(ApiError::bad_request(
                "name_too_long",
                format!(
                    "room names are at most {} characters",
                    state.config.max_room_name_chars
                ),
            ));
        }
        if !storable::is_one_line(name) {
            return Err(ApiError::bad_request(
                "bad_name",
                "room names cannot contain control characters",
            ));
        }
    }
    let metadata = body.metadata.unwrap_or_else(|| serde_json::json!({}));
    if !metadata.is_object() {
        return Err(ApiError::bad_request(
            "bad_metadata",
            "metadata must be a JSON object",
        ));
    }
    if !storable::json_is_storable(&metadata) {
        return Err(ApiError::bad_request(
            "bad_metadata",
            "metadata cannot contain the character U+0000",
        ));
    }
    if metadata.to_string().len() > state.config.max_room_metadata_bytes {
        return Err(ApiError::bad_request(
            "metadata_too_large",
            format!(
                "metadata is at most {} bytes",
                state.config.max_room_metadata_bytes
            ),
        ));
    }
    let max = state.config.max_room_members;
    let others = member_list::parse(&body.members, max, || too_many_members(&state))?;
    let members: Vec<String> = std::iter::once(caller.user_id.clone())
        .chain(others.into_iter().filter(|id| *id != caller.user_id))
        .collect();
    if kind == RoomKind::Direct && members.len() != 2 {
        return Err(ApiError::bad_request(
            "bad_direct_members",
            "a direct room has exactly one member besides you",
        ));
    }
    if members.len() > max {
        return Err(too_many_members(&state));
    }
    refuse_unknown_users(&state, &members).await?;
    // A blocked user may not open a direct room with the blocker (found or new).
    if kind == RoomKind::Direct && state.store.blocks(&members[1], &caller.user_id).await? {
        return Err(ApiError::forbidden("blocked", "this user blocked you"));
    }
    if kind == RoomKind::Direct
        && let Some(existing) = state.store.find_direct(&members[0], &members[1]).await?
    {
        return Ok((
            StatusCode::OK,
            Json(summary(&state, existing, &caller.user_id).await?),
        ));
    }
    let created = state
        .store
        .create_room(NewRoom {
            kind,
            name: body.name.as_deref(),
            owner_id: &caller.user_id,
            members: &members,
            metadata,
        })
        .await;
    let room = match created {
        Ok(room) => room,
        // The pair's direct room was created meanwhile by another request.
        Err(error) if chatter_shared::store::is_unique_violation(&error) => {
            let existing = state
                .store
                .find_direct(&members[0], &members[1])
                .await?
                .ok_or_else(|| ApiError::from(error))?;
            return Ok((
                StatusCode::OK,
                Json(summary(&state, existing, &caller.user_id).await?),
            ));
        }
        Err(error) => return Err(error.into()),
    };
    if let Err(error) = state.bus.seed_room(room.id).await {
        tracing::warn!(%error, "cannot initialise a room's seq counter; the first send will");
    }
    room_events::room_created(&state.bus, &room).await;
    // The blocker opened a room with someone they block: that user may not
    // write to it, on any gateway.
    if kind == RoomKind::Direct && state.store.blocks(&caller.user_id, &members[1]).await? {
        crate::moderation::notices::announce(
            &state,
            crate::moderation::notices::Change::Room(room.id),
        )
        .await;
    }
    state
        .events
        .record(
            EventType::RoomCreated,
            || json!({ "room": &room, "by": &caller.user_id }),
        )
        .await;
    Ok((
        StatusCode::CREATED,
        Json(RoomSummary {
            is_owner: true,
            last_message: None,
            last_read_seq: 0,
            unread_count: 0,
            room,
        }),
    ))
}

/// The room as `user_id` sees it; a user who is not (or no longer) a member
/// gets the room's shared fields with empty read state.
async fn summary(state: &AppState, room: Room, user_id: &str) -> Result<RoomSummary, ApiError> {
    if let Some(summary) = state.store.room_summary(room.id, user_id).await? {
        return Ok(summary);
    }
    Ok(RoomSummary {
        is_owner: room.owner_id == user_id,
        last_message: None,
        last_read_seq: 0,
        unread_count: 0,
        room,
    })
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// Page size, 1 to `PAGE_SIZE_MAX` (200); default `PAGE_SIZE_DEFAULT` (50).
    #[param(value_type = Option<i64>, minimum = 1)]
    limit: Option<String>,
    /// The `next_cursor` of the previous page; absent or empty for the first.
    cursor: Option<String>,
}

/// A page of the caller's rooms.
#[derive(Serialize, ToSchema)]
struct RoomList {
    /// Newest activity (last message, else creation) first.
    rooms: Vec<RoomSummary>,
    /// Pass back as `cursor` for the next page; `null` after the last one.
    #[schema(required)]
    next_cursor: Option<String>,
}

/// List the caller's rooms.
///
/// Newest activity (last message, else creation) first, keyset-paginated: pass
/// `next_cursor` back as `cursor` for the next page.
#[utoipa::path(
    get,
    path = "/rooms",
    operation_id = "list_rooms",
    tag = "rooms",
    security(("user" = [])),
    params(ListQuery),
    responses(
        (status = 200, description = "A page of the caller's rooms", body = RoomList),
        (status = 400, description = "`bad_limit`, `bad_cursor`: a cursor `GET /rooms` did not give, \
            `bad_query`: a malformed query string", body = ErrorBody),
        (status = 401, description = "`unauthenticated`: no, invalid or expired JWT", body = ErrorBody),
        (status = 503, description = "`unavailable`: the database is unavailable", body = ErrorBody),
    ),
)]
async fn list_rooms(
    State(state): State<AppState>,
    User(caller): User,
    Query(query): Query<ListQuery>,
) -> Result<Json<RoomList>, ApiError> {
    let limit = page_limit(&state, query.limit.as_deref())?;
    let after = match query.cursor.as_deref() {
        None | Some("") => None,
        Some(text) => Some(RoomCursor::parse(text).ok_or_else(|| {
            ApiError::bad_request("bad_cursor", "cursor must be a next_cursor from GET /rooms")
        })?),
    };
    let (rooms, next) = state
        .store
        .rooms_page(&caller.user_id, after, limit)
        .await?;
    Ok(Json(RoomList {
        rooms,
        next_cursor: next.map(|cursor| cursor.encode()),
    }))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct RoomQuery {
    /// How many of the latest messages, 1 to `PAGE_SIZE_MAX` (200); default
    /// `PAGE_SIZE_DEFAULT` (50).
    #[param(value_type = Option<i64>, minimum = 1)]
    limit: Option<String>,
}

/// A room as the caller sees it, with its latest messages.
#[derive(Serialize, ToSchema)]
struct RoomWithMessages {
    #[serde(flatten)]
    room: RoomSummary,
    /// The latest messages, oldest first.
    messages: Vec<MessageView>,
}

/// Read a room and its latest messages.
#[utoipa::path(
    get,
    path = "/rooms/{id}",
    operation_id = "get_room",
    tag = "rooms",
    security(("user" = [])),
    params(
        ("id" = Uuid, Path, description = "The room"),
        RoomQuery,
    ),
    responses(
        (status = 200, description = "The room and its latest messages, oldest first", body = RoomWithMessages),
        (status = 400, description = "`bad_path`: the id is not a UUID, `bad_limit`, \
            `bad_query`: a malformed query string", body = ErrorBody),
        (status = 401, description = "`unauthenticated`: no, invalid or expired JWT", body = ErrorBody),
        (status = 404, description = "`room_not_found`: no such room, deleted, or the caller is not a member", body = ErrorBody),
        (status = 503, description = "`unavailable`: the database is unavailable", body = ErrorBody),
    ),
)]
async fn room(
    State(state): State<AppState>,
    User(caller): User,
    Path(room_id): Path<Uuid>,
    Query(query): Query<RoomQuery>,
) -> Result<Json<RoomWithMessages>, ApiError> {
    let limit = page_limit(&state, query.limit.as_deref())?;
    let mut room = state
        .store
        .room_summary(room_id, &caller.user_id)
        .await?
        .ok_or_else(room_not_found)?;
    let messages = state
        .store
        .history(room_id, HistoryPage::Latest { limit })
        .await?;
    // Read after the summary: the worker may have stored more meanwhile.
    if let Some(newest) = messages.last() {
        room.last_message = Some(newest.clone());
    }
    Ok(Json(RoomWithMessages { room, messages }))
}

/// A membership change. Unknown fields are refused (`bad_json`).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct MembersBody {
    /// Users to add (owner only); adding a member is a no-op. Every one must be
    /// a user the server has seen.
    #[serde(default)]
    #[schema(value_type = Option<Vec<String>>)]
    add: Option<RawList>,
    /// Users to remove (owner only; a member may name only themself, to leave);
    /// removing a non-member is a no-op.
    #[serde(default)]
    #[schema(value_type = Option<Vec<String>>)]
    remove: Option<RawList>,
}

/// Add and remove members, or leave.
///
/// The owner adds and removes; any member may remove themself (leave). On every
/// gateway, each added or removed user is told (`MemberAdded`/`MemberRemoved`
/// about themself) and the members who stayed get those events then one
/// `RoomUpdated` with the change and the member count (not the member list). A
/// removed member stops receiving the room at once.
///
/// The caller is authorized before the lists are read: a non-member gets 404,
/// and a member who is not the owner gets 403 as soon as their lists name more
/// than themself, however long they are.
#[utoipa::path(
    put,
    path = "/rooms/{id}/members",
    operation_id = "change_members",
    tag = "rooms",
    security(("user" = [])),
    params(("id" = Uuid, Path, description = "The room")),
    request_body = MembersBody,
    responses(
        (status = 200, description = "The room as it now is", body = RoomSummary),
        (status = 400, description = "`bad_path`, `bad_json` (unknown fields too), `bad_user_id`, \
            `bad_members`: a user in both `add` and `remove`, `unknown_user`, `too_many_members`, \
            `direct_room`: a direct room's members cannot change, `owner_cannot_leave`", body = ErrorBody),
        (status = 401, description = "`unauthenticated`: no, invalid or expired JWT", body = ErrorBody),
        (status = 403, description = "`not_owner`: a member other than the owner did more than remove themself", body = ErrorBody),
        (status = 404, description = "`room_not_found`: no such room, deleted, or the caller is not a member", body = ErrorBody),
        (status = 413, description = "`too_large`: body over 256 KiB", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`: not `application/json`", body = ErrorBody),
        (status = 503, description = "`unavailable`: the database is unavailable", body = ErrorBody),
    ),
)]
async fn change_members(
    State(state): State<AppState>,
    User(caller): User,
    Path(room_id): Path<Uuid>,
    Json(body): Json<MembersBody>,
) -> Result<Json<RoomSummary>, ApiError> {
    // Who asks comes first: an outsider learns nothing (404) and a member who is
    // not the owner may name only themself, so their lists are cut off at one
    // entry (403) before any id is checked or looked up.
    let mut room = room_of_member(&state, room_id, &caller.user_id).await?;
    let is_owner = room.owner_id == caller.user_id;
    let not_owner = || {
        ApiError::forbidden(
            "not_owner",
            "only the room's owner may change its members; members may only remove themselves",
        )
    };
    let max = state.config.max_room_members;
    let (add, remove) = if is_owner {
        let too_many = || too_many_members(&state);
        (
            member_list::parse_optional(body.add.as_deref(), max, too_many)?,
            member_list::parse_optional(body.remove.as_deref(), max, too_many)?,
        )
    } else {
        (
            member_list::parse_optional(body.add.as_deref(), 0, not_owner)?,
            member_list::parse_optional(body.remove.as_deref(), 1, not_owner)?,
        )
    };
    let leaving = add.is_empty() && remove == [caller.user_id.as_str()];
    if !is_owner && !leaving {
        return Err(not_owner());
    }
    let removing: HashSet<&str> = remove.iter().map(String::as_str).collect();
    if add.iter().any(|user| removing.contains(user.as_str())) {
        return Err(ApiError::bad_request(
            "bad_members",
            "a user cannot be both added and removed",
        ));
    }
    if room.kind == RoomKind::Direct {
        return Err(ApiError::bad_request(
            "direct_room",
            "a direct room's members cannot change",
        ));
    }
    if is_owner && removing.contains(caller.user_id.as_str()) {
        return Err(ApiError::bad_request(
            "owner_cannot_leave",
            "the owner cannot leave the room; delete it instead",
        ));
    }
    refuse_unknown_users(&state, &add).await?;
    let current: HashSet<&str> = room.members.iter().map(String::as_str).collect();
    let added: Vec<String> = add
        .into_iter()
        .filter(|u| !current.contains(u.as_str()))
        .collect();
    let removed: Vec<String> = remove
        .into_iter()
        .filter(|u| current.contains(u.as_str()))
        .collect();
    if !added.is_empty() || !removed.is_empty() {
        let change = state
            .store
            .change_members(room_id, &added, &removed, state.config.max_room_members)
            .await?;
        room.members = match change {
            MembersChange::Changed(members) => members,
            MembersChange::NoRoom => return Err(room_not_found()),
            MembersChange::TooMany => return Err(too_many_members(&state)),
        };
        room_events::members_changed(&state.bus, &room, &added, &removed).await;
        let changes = added
            .iter()
            .map(|user| (EventType::MemberAdded, user))
            .chain(removed.iter().map(|user| (EventType::MemberRemoved, user)));
        for (kind, user_id) in changes {
            state
                .events
                .record(
                    kind,
                    || json!({ "room_id": room_id, "user_id": user_id, "by": &caller.user_id }),
                )
                .await;
        }
    }
    Ok(Json(summary(&state, room, &caller.user_id).await?))
}

/// Delete a room (owner).
///
/// A soft delete. Every member is told with `RoomDeleted`; the room then answers
/// 404 and sends to it are refused.
#[utoipa::path(
    delete,
    path = "/rooms/{id}",
    operation_id = "delete_room",
    tag = "rooms",
    security(("user" = [])),
    params(("id" = Uuid, Path, description = "The room")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "`bad_path`: the id is not a UUID", body = ErrorBody),
        (status = 401, description = "`unauthenticated`: no, invalid or expired JWT", body = ErrorBody),
        (status = 403, description = "`not_owner`: only the owner may delete the room", body = ErrorBody),
        (status = 404, description = "`room_not_found`: no such room, deleted, or the caller is not a member", body = ErrorBody),
        (status = 503, description = "`unavailable`: the database is unavailable", body = ErrorBody),
    ),
)]
async fn delete_room(
    State(state): State<AppState>,
    User(caller): User,
    Path(room_id): Path<Uuid>,
) -> Result<StatusCode, ApiError> {
    let room = room_of_member(&state, room_id, &caller.user_id).await?;
    if room.owner_id != caller.user_id {
        return Err(ApiError::forbidden(
            "not_owner",
            "only the room's owner may delete it",
        ));
    }
    if state.store.delete_room(room_id).await? {
        room_events::room_deleted(&state.bus, room_id, &room.members).await;
        state
            .events
            .record(
                EventType::RoomDeleted,
                || json!({ "room_id": room_id, "members": &room.members, "by": &caller.user_id }),
            )
            .await;
    }
    Ok(StatusCode::NO_CONTENT)
}
