//! Single-use WebSocket tickets.
//!
//! Browsers cannot set headers on a WebSocket upgrade, and a long-lived JWT in a
//! URL ends up in proxy logs. So a client trades its JWT for a ticket
//! (`GET /ws_token`) and opens `/ws?token=<ticket>` within `TICKET_TTL_SECS`. The
//! ticket lives on the bus (Redis), so it works on any gateway replica, and is
//! consumed atomically (`GETDEL`), so it works exactly once.

use crate::bus::{Bus, BusError};
use crate::http::error::{ApiError, ErrorBody};
use crate::http::extract::{Json, User};
use crate::state::AppState;
use axum::Router;
use axum::extract::State;
use axum::routing::get;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chatter_shared::auth::Identity;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;

pub fn router() -> Router<AppState> {
    Router::new().route("/ws_token", get(issue))
}

#[derive(Serialize, ToSchema)]
struct Ticket {
    /// Single use: pass it as `GET /ws?token=` before `expires_at`.
    token: String,
    #[serde(with = "time::serde::rfc3339")]
    expires_at: OffsetDateTime,
}

/// What a ticket stores: the identity it stands for.
#[derive(Serialize, Deserialize)]
struct Stored {
    user_id: String,
    name: Option<String>,
    group: Option<String>,
    roles: Vec<String>,
    /// Absent in tickets issued before permissions existed.
    #[serde(default)]
    permissions: Option<Vec<String>>,
}

/// Trade a JWT for a single-use WebSocket ticket (valid `TICKET_TTL_SECS`, any gateway).
#[utoipa::path(
    get,
    path = "/ws_token",
    operation_id = "issue_ws_ticket",
    tag = "auth",
    security(("user" = [])),
    responses(
        (status = 200, description = "The ticket and when it expires", body = Ticket),
        (status = 401, description = "`unauthenticated`: no, invalid or expired JWT", body = ErrorBody),
        (status = 403, description = "`banned`: the user is banned", body = ErrorBody),
        (status = 503, description = "`unavailable`: Redis, the database or the identity service (`VERIFICATION_URL`) is unavailable", body = ErrorBody),
    ),
)]
async fn issue(
    State(state): State<AppState>,
    User(identity): User,
) -> Result<Json<Ticket>, ApiError> {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let token = URL_SAFE_NO_PAD.encode(bytes);
    let ttl = state.config.ticket_ttl_secs;
    let stored = Stored {
        user_id: identity.user_id,
        name: identity.name,
        group: identity.group,
        roles: identity.roles,
        permissions: identity.permissions,
    };
    let value = serde_json::to_string(&stored)
        .map_err(|_| ApiError::unavailable("cannot encode ticket"))?;
    state.bus.put_ticket(&token, value, ttl).await?;
    let expires_at = OffsetDateTime::now_utc() + time::Duration::seconds(ttl as i64);
    Ok(Json(Ticket { token, expires_at }))
}

/// Consumes a ticket: `Ok(None)` when it is unknown, expired or already used.
pub async fn redeem(bus: &Bus, token: &str) -> Result<Option<Identity>, BusError> {
    if token.len() > 128 {
        return Ok(None);
    }
    let stored = bus.take_ticket(token).await?;
    Ok(stored
        .and_then(|json| serde_json::from_str::<Stored>(&json).ok())
        .map(|stored| Identity {
            user_id: stored.user_id,
            name: stored.name,
            group: stored.group,
            roles: stored.roles,
            permissions: stored.permissions,
        }))
}
