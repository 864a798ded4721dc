//! `/support/...`: the support desk over REST — the same operations as the
//! WebSocket frames `Join`, `Load` and `JoinUser` (see `crate::support`).

use super::error::{ApiError, ErrorBody};
use super::extract::{Json, Path, Query, User};
use crate::state::AppState;
use crate::support::{self, DeskError};
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use chatter_shared::protocol::SupportRequestView;
use chatter_shared::store::SupportState;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/support/requests", post(ask).get(list))
        .route("/support/requests/{room_id}/claim", post(claim))
        .route("/support/requests/{room_id}/close", post(close))
        .route("/support/agents", get(agents))
}

impl From<DeskError> for ApiError {
    fn from(error: DeskError) -> ApiError {
        let status = match &error {
            DeskError::NotAnAgent => StatusCode::FORBIDDEN,
            DeskError::AlreadyClaimed | DeskError::Ended(_) => StatusCode::CONFLICT,
            DeskError::NotFound => StatusCode::NOT_FOUND,
            DeskError::BadInput(_) => StatusCode::BAD_REQUEST,
            DeskError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        ApiError::new(status, error.code(), error.message())
    }
}

/// What the user needs help with; both optional. Unknown fields are refused.
#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
struct AskBody {
    /// One line, at most 200 characters; becomes the room's name.
    topic: Option<String>,
    /// Any JSON object, shown to agents.
    #[schema(value_type = Option<Object>)]
    metadata: Option<serde_json::Value>,
}

/// The user's request.
#[derive(Serialize, ToSchema)]
struct Asked {
    room_id: Uuid,
    state: SupportState,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    created_at: time::OffsetDateTime,
}

/// Ask for help: creates a `support` room in state `pending` (the caller its
/// only member) and tells every connected agent (`UserJoined`), or returns the
/// caller's open request.
#[utoipa::path(
    post,
    path = "/support/requests",
    operation_id = "ask_for_support",
    tag = "support",
    security(("user" = [])),
    request_body(content = Option<AskBody>, description = "Optional"),
    responses(
        (status = 201, description = "A new request", body = Asked),
        (status = 200, description = "The caller's open request (pending or active)", body = Asked),
        (status = 400, description = "`bad_request`: topic too long or not one line, metadata not an object; `bad_json`", body = ErrorBody),
        (status = 401, description = "No or bad token", body = ErrorBody),
        (status = 503, description = "`unavailable`", body = ErrorBody),
    ),
)]
async fn ask(
    State(state): State<AppState>,
    User(caller): User,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<Asked>), ApiError> {
    // The body is optional: no body at all asks with no topic.
    let body: AskBody = if body.iter().all(u8::is_ascii_whitespace) {
        AskBody::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|error| ApiError::bad_request("bad_json", error.to_string()))?
    };
    let asked = support::ask(&state, &caller, body.topic.as_deref(), body.metadata).await?;
    let status = if asked.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(Asked {
            room_id: asked.request.room_id,
            state: asked.request.state,
            created_at: asked.request.created_at,
        }),
    ))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    /// `pending` (default), `active`, `expired` or `closed`.
    state: Option<String>,
}

/// Requests, oldest first.
#[derive(Serialize, ToSchema)]
struct RequestList {
    requests: Vec<SupportRequestView>,
}

/// The queue (agents only): the same list as the WebSocket `PendingUsers`.
#[utoipa::path(
    get,
    path = "/support/requests",
    operation_id = "list_support_requests",
    tag = "support",
    security(("user" = [])),
    params(ListQuery),
    responses(
        (status = 200, description = "Requests in that state, oldest first (at most 500)", body = RequestList),
        (status = 400, description = "`bad_state`: not one of the four states", body = ErrorBody),
        (status = 401, description = "No or bad token", body = ErrorBody),
        (status = 403, description = "`forbidden`: the caller is not an agent (role `support`)", body = ErrorBody),
    ),
)]
async fn list(
    State(state): State<AppState>,
    User(caller): User,
    Query(query): Query<ListQuery>,
) -> Result<Json<RequestList>, ApiError> {
    let caller = state.with_stored_roles(caller).await;
    if !support::is_agent(&caller) {
        return Err(DeskError::NotAnAgent.into());
    }
    let wanted = match query.state.as_deref() {
        None => SupportState::Pending,
        Some(name) => SupportState::parse(name).ok_or_else(|| {
            ApiError::bad_request(
                "bad_state",
                "state is one of pending, active, expired, closed",
            )
        })?,
    };
    let requests = support::requests(&state, wanted).await?;
    Ok(Json(RequestList { requests }))
}

/// The claimed request.
#[derive(Serialize, ToSchema)]
struct Claimed {
    room_id: Uuid,
    user_id: String,
    state: SupportState,
}

/// Claim a pending request (agents only). Exactly one of concurrent claims wins.
#[utoipa::path(
    post,
    path = "/support/requests/{room_id}/claim",
    operation_id = "claim_support_request",
    tag = "support",
    security(("user" = [])),
    params(("room_id" = Uuid, Path, description = "The request's room")),
    responses(
        (status = 200, description = "The caller won: a member of the room (role `agent`), the room `active`", body = Claimed),
        (status = 401, description = "No or bad token", body = ErrorBody),
        (status = 403, description = "`forbidden`: not an agent", body = ErrorBody),
        (status = 404, description = "`request_not_found`", body = ErrorBody),
        (status = 409, description = "`already_claimed`: another agent was first; `chat_expired`, `chat_closed`", body = ErrorBody),
    ),
)]
async fn claim(
    State(state): State<AppState>,
    User(caller): User,
    Path(room_id): Path<Uuid>,
) -> Result<Json<Claimed>, ApiError> {
    let caller = state.with_stored_roles(caller).await;
    let request = support::claim(&state, &caller, room_id).await?;
    Ok(Json(Claimed {
        room_id,
        user_id: request.user_id,
        state: request.state,
    }))
}

/// End a chat on purpose: the user who asked, its agent, or any agent.
#[utoipa::path(
    post,
    path = "/support/requests/{room_id}/close",
    operation_id = "close_support_request",
    tag = "support",
    security(("user" = [])),
    params(("room_id" = Uuid, Path, description = "The request's room")),
    responses(
        (status = 204, description = "Closed: both sides got `ChatClosed`"),
        (status = 401, description = "No or bad token", body = ErrorBody),
        (status = 404, description = "`request_not_found` (also for a caller who takes no part)", body = ErrorBody),
        (status = 409, description = "`chat_expired`, `chat_closed`: it had ended already", body = ErrorBody),
    ),
)]
async fn close(
    State(state): State<AppState>,
    User(caller): User,
    Path(room_id): Path<Uuid>,
) -> Result<StatusCode, ApiError> {
    let caller = state.with_stored_roles(caller).await;
    support::close(&state, &caller, room_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// An agent and whether they are online anywhere in the cluster.
#[derive(Serialize, ToSchema)]
struct AgentView {
    user_id: String,
    #[schema(required)]
    name: Option<String>,
    online: bool,
    /// Chats they have claimed that are still open.
    active_chats: i64,
}

#[derive(Serialize, ToSchema)]
struct AgentList {
    agents: Vec<AgentView>,
}

/// Agents (users whose record carries the role `support`), agents only.
#[utoipa::path(
    get,
    path = "/support/agents",
    operation_id = "list_support_agents",
    tag = "support",
    security(("user" = [])),
    responses(
        (status = 200, description = "Every known agent", body = AgentList),
        (status = 401, description = "No or bad token", body = ErrorBody),
        (status = 403, description = "`forbidden`: not an agent", body = ErrorBody),
    ),
)]
async fn agents(
    State(state): State<AppState>,
    User(caller): User,
) -> Result<Json<AgentList>, ApiError> {
    let caller = state.with_stored_roles(caller).await;
    if !support::is_agent(&caller) {
        return Err(DeskError::NotAnAgent.into());
    }
    let agents = state.store.support_agents().await?;
    let ids: Vec<String> = agents.iter().map(|a| a.user_id.clone()).collect();
    let presence = state.bus.presence_of(&ids).await?;
    let agents = agents
        .into_iter()
        .zip(presence)
        .map(|(agent, (online, _))| AgentView {
            user_id: agent.user_id,
            name: agent.name,
            online,
            active_chats: agent.active_chats,
        })
        .collect();
    Ok(Json(AgentList { agents }))
}
