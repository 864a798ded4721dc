//! The token provider as the older Mia-Platform chat backend exposed it:
//! `GET /token/{user_id}` (service secret) and `GET /api-key`. `POST /tokens`
//! (`tokens.rs`) stays chatter's own, richer form.

use super::error::{ApiError, ErrorBody};
use super::extract::{Json, Path, Service};
use crate::state::AppState;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use chatter_shared::auth::{Identity, validate_user_id};
use serde::Serialize;
use time::OffsetDateTime;
use utoipa::ToSchema;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/token/{user_id}", get(provide_token))
        .route("/api-key", get(api_key))
}

/// The older provider's answer, field names included.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct ProvidedToken {
    user_id: String,
    /// A JWT for `Authorization: Bearer` and `GET /ws?token=`; it expires after
    /// `EXPIRATION_TOKEN_DURATION` seconds, or never when that is unset.
    token: String,
}

#[derive(Serialize, ToSchema)]
struct ApiKey {
    /// `CLIENT_API_KEY`: a public client identifier, not a secret.
    api_key: String,
}

/// Mint a user token the older way (for trusted services).
///
/// The token carries `user_id` and chatter's user claim; `exp` is
/// `EXPIRATION_TOKEN_DURATION` seconds away, and when that is unset there is no
/// `exp` at all, as the older service did (docs/SECURITY.md: such a token is
/// good until the signing key changes).
#[utoipa::path(
    get,
    path = "/token/{user_id}",
    operation_id = "provide_token",
    tag = "auth",
    security(("service" = [])),
    params(("user_id" = String, Path, description = "Whom the token is for (1 to 128 characters)")),
    responses(
        (status = 201, description = "The token (the older provider answered 201)", body = ProvidedToken),
        (status = 400, description = "`bad_user_id`", body = ErrorBody),
        (status = 401, description = "`unauthenticated`: no or wrong service secret", body = ErrorBody),
        (status = 403, description = "`banned`: the user is banned", body = ErrorBody),
        (status = 503, description = "`unavailable`: this gateway has no signing key", body = ErrorBody),
    ),
)]
async fn provide_token(
    State(state): State<AppState>,
    _service: Service,
    Path(user_id): Path<String>,
) -> Result<(StatusCode, Json<ProvidedToken>), ApiError> {
    validate_user_id(&user_id).map_err(|problem| ApiError::bad_request("bad_user_id", problem))?;
    if state.moderation.is_banned(&user_id) {
        return Err(ApiError::forbidden("banned", "this user is banned"));
    }
    let token = provider_token(&state, &user_id)?;
    Ok((StatusCode::CREATED, Json(ProvidedToken { user_id, token })))
}

/// A token for `user_id` under the provider's expiry rule (also `GET /config`'s
/// `user_token` for a caller named by the trusted user-id header).
pub fn provider_token(state: &AppState, user_id: &str) -> Result<String, ApiError> {
    let identity = Identity {
        user_id: user_id.to_owned(),
        name: None,
        group: None,
        roles: Vec::new(),
        permissions: None,
    };
    let expires_at = match state.config.expiration_token_duration {
        None => None,
        Some(secs) => Some(
            i64::try_from(secs)
                .ok()
                .and_then(|secs| {
                    OffsetDateTime::now_utc().checked_add(time::Duration::seconds(secs))
                })
                .ok_or_else(|| {
                    ApiError::unavailable("EXPIRATION_TOKEN_DURATION is out of range")
                })?,
        ),
    };
    state
        .tokens
        .mint_provider_token(&identity, expires_at)
        .ok_or_else(|| {
            ApiError::unavailable("this gateway has no signing key (JWT_SECRET or JWT_PRIVATE_KEY)")
        })
}

/// The public client identifier (`CLIENT_API_KEY`).
#[utoipa::path(
    get,
    path = "/api-key",
    operation_id = "api_key",
    tag = "auth",
    responses(
        (status = 200, description = "The configured client identifier", body = ApiKey),
        (status = 404, description = "`api_key_not_configured`: `CLIENT_API_KEY` is unset", body = ErrorBody),
    ),
)]
async fn api_key(State(state): State<AppState>) -> Result<Json<ApiKey>, ApiError> {
    let api_key = state
        .config
        .client_api_key
        .clone()
        .filter(|key| !key.is_empty())
        .ok_or_else(|| {
            ApiError::not_found("api_key_not_configured", "CLIENT_API_KEY is not set")
        })?;
    Ok(Json(ApiKey { api_key }))
}
