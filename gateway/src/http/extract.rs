//! Extractors: JSON/path/query with JSON error bodies, and the two kinds of caller.

use super::error::ApiError;
use crate::state::AppState;
use axum::extract::{FromRef, FromRequest, FromRequestParts};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use chatter_shared::auth::{AuthError, Identity, is_service_secret};

/// `axum::Json` whose rejections are [`ApiError`]s.
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct Json<T>(pub T);

impl<T: serde::Serialize> axum::response::IntoResponse for Json<T> {
    fn into_response(self) -> axum::response::Response {
        axum::Json(self.0).into_response()
    }
}

#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct Path<T>(pub T);

#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct Query<T>(pub T);

/// A user authenticated by `Authorization: Bearer <JWT>`, upserted on first sight.
pub struct User(pub Identity);

impl<S> FromRequestParts<S> for User
where
    AppState: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<User, ApiError> {
        let state = AppState::from_ref(state);
        if let Some(Verified(identity)) = parts.extensions.remove::<Verified>() {
            state.ensure_user(&identity).await?;
            return Ok(User(identity));
        }
        let token =
            bearer(parts).ok_or_else(|| ApiError::unauthorized("a Bearer token is required"))?;
        let identity = state.tokens.verify(token).map_err(|error| match error {
            AuthError::Missing | AuthError::Invalid => {
                ApiError::unauthorized("the token is invalid or expired")
            }
            AuthError::NoUserId => ApiError::unauthorized("the token carries no usable user id"),
        })?;
        state.ensure_user(&identity).await?;
        Ok(User(identity))
    }
}

/// The caller's identity, verified already by the rate-limit layer
/// (`http::rate_limit`), which had to know the user to charge them.
#[derive(Clone)]
pub struct Verified(pub Identity);

/// A service authenticated by the shared secret (`Bearer <secret>` or the raw secret).
pub struct Service;

impl<S> FromRequestParts<S> for Service
where
    AppState: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Service, ApiError> {
        let state = AppState::from_ref(state);
        let secret = state.config.service_secret().ok_or_else(|| {
            ApiError::unauthorized("service calls are disabled: SERVICE_SECRET is not set")
        })?;
        let header = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .ok_or_else(|| ApiError::unauthorized("the service secret is required"))?;
        if is_service_secret(header, secret) {
            Ok(Service)
        } else {
            Err(ApiError::unauthorized("the service secret is wrong"))
        }
    }
}

/// The token of an `Authorization: Bearer <token>` header.
pub fn bearer(parts: &Parts) -> Option<&str> {
    parts
        .headers
        .get(AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
        .filter(|token| !token.is_empty())
}
