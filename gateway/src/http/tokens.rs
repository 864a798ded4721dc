//! `POST /tokens`: a trusted service mints a user token chatter will accept.

use super::error::ApiError;
use super::extract::{Json, Service};
use crate::state::AppState;
use axum::Router;
use axum::extract::State;
use axum::routing::post;
use chatter_shared::auth::{Identity, validate_user_id};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// The longest lifetime a minted token may have: a day.
const MAX_TTL_SECS: i64 = 24 * 3600;
const DEFAULT_TTL_SECS: i64 = 3600;

pub fn router() -> Router<AppState> {
    Router::new().route("/tokens", post(mint))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MintToken {
    user_id: String,
    ttl_seconds: Option<i64>,
    name: Option<String>,
}

#[derive(Serialize)]
struct Minted {
    user_id: String,
    token: String,
    #[serde(with = "time::serde::rfc3339")]
    expires_at: OffsetDateTime,
}

async fn mint(
    State(state): State<AppState>,
    _service: Service,
    Json(body): Json<MintToken>,
) -> Result<Json<Minted>, ApiError> {
    validate_user_id(&body.user_id)
        .map_err(|problem| ApiError::bad_request("bad_user_id", problem))?;
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
