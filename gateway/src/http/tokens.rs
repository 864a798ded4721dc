//! `POST /tokens`: a trusted service mints a user token chatter will accept.

use super::error::{ApiError, ErrorBody};
use super::extract::{Json, Service};
use crate::state::AppState;
use axum::Router;
use axum::extract::State;
use axum::routing::post;
use chatter_shared::auth::{Identity, validate_user_id};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;

/// The longest lifetime a minted token may have: a day.
const MAX_TTL_SECS: i64 = 24 * 3600;
const DEFAULT_TTL_SECS: i64 = 3600;

pub fn router() -> Router<AppState> {
    Router::new().route("/tokens", post(mint))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct MintToken {
    /// Whom the token is for (1 to 128 bytes, no control characters).
    user_id: String,
    /// Lifetime, 1 to 86400 seconds; default 3600.
    #[schema(minimum = 1, maximum = 86400)]
    ttl_seconds: Option<i64>,
    /// Display name carried in the token.
    name: Option<String>,
    /// Permissions carried in the token's `JWT_PERMISSIONS_CLAIM` (ignored
    /// when that is unset).
    permissions: Option<Vec<String>>,
}

#[derive(Serialize, ToSchema)]
struct Minted {
    user_id: String,
    /// A JWT for `Authorization: Bearer` and `GET /ws?token=`.
    token: String,
    #[serde(with = "time::serde::rfc3339")]
    expires_at: OffsetDateTime,
}

/// Mint a user JWT (for trusted services).
#[utoipa::path(
    post,
    path = "/tokens",
    operation_id = "mint_token",
    tag = "auth",
    security(("service" = [])),
    request_body = MintToken,
    responses(
        (status = 200, description = "The token and when it expires", body = Minted),
        (status = 400, description = "`bad_user_id`, `bad_ttl`, `bad_json` (unknown fields too)", body = ErrorBody),
        (status = 401, description = "`unauthenticated`: no or wrong service secret", body = ErrorBody),
        (status = 403, description = "`banned`: the user is banned", body = ErrorBody),
        (status = 413, description = "`too_large`: body over 256 KiB", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`: not `application/json`", body = ErrorBody),
        (status = 503, description = "`unavailable`: this gateway has no signing key", body = ErrorBody),
    ),
)]
async fn mint(
    State(state): State<AppState>,
    _service: Service,
    Json(body): Json<MintToken>,
) -> Result<Json<Minted>, ApiError> {
    validate_user_id(&body.user_id)
        .map_err(|problem| ApiError::bad_request("bad_user_id", problem))?;
    if state.moderation.is_banned(&body.user_id) {
        return Err(ApiError::forbidden("banned", "this user is banned"));
    }
    let ttl = body.ttl_seconds.unwrap_or(DEFAULT_TTL_SECS);
    if !(1..=MAX_TTL_SECS).contains(&ttl) {
        return Err(ApiError::bad_request(
            "bad_ttl",
            format!("ttl_seconds must be 1 to {MAX_TTL_SECS}"),
        ));
    }
    let identity = Identity {
        user_id: body.user_id,
        name: body.name,
        group: None,
        roles: Vec::new(),
        permissions: body.permissions,
    };
    let (token, expires_at) = state
        .tokens
        .mint(&identity, time::Duration::seconds(ttl))
        .ok_or_else(|| {
            ApiError::unavailable("this gateway has no signing key (JWT_SECRET or JWT_PRIVATE_KEY)")
        })?;
    Ok(Json(Minted {
        user_id: identity.user_id,
        token,
        expires_at,
    }))
}
