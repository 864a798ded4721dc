//! Extractors: JSON/path/query with JSON error bodies, and the two kinds of caller.

use super::error::ApiError;
use crate::authenticate::{self, Refused};
use crate::state::AppState;
use axum::extract::{FromRef, FromRequest, FromRequestParts};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use chatter_shared::auth::{Identity, is_service_secret};
use chatter_shared::config::Config;

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

/// A user authenticated by `Authorization: Bearer <token>` (a JWT, or with
/// `AUTH_MODE` delegated/both the identity service's token), upserted on first sight.
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
            refuse_banned(&state, &identity)?;
            state.ensure_user(&identity).await?;
            return Ok(User(identity));
        }
        if let Some(NotVerified(refused)) = parts.extensions.remove::<NotVerified>() {
            return Err(refused.into());
        }
        let token =
            bearer(parts).ok_or_else(|| ApiError::unauthorized("a Bearer token is required"))?;
        let identity = authenticate::user(&state, token).await?;
        refuse_banned(&state, &identity)?;
        state.ensure_user(&identity).await?;
        Ok(User(identity))
    }
}

/// 403 `banned` for a banned user (an in-memory check; see `crate::moderation`).
fn refuse_banned(state: &AppState, identity: &Identity) -> Result<(), ApiError> {
    if state.moderation.is_banned(&identity.user_id) {
        return Err(ApiError::forbidden("banned", "this user is banned"));
    }
    Ok(())
}

/// A user with the role `admin`, in their token or in their stored user record
/// (`POST /users`); anyone else gets 403 `not_admin`.
pub struct Admin(pub Identity);

impl<S> FromRequestParts<S> for Admin
where
    AppState: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Admin, ApiError> {
        let User(identity) = User::from_request_parts(parts, state).await?;
        if is_admin(&AppState::from_ref(state), &identity).await? {
            return Ok(Admin(identity));
        }
        Err(ApiError::forbidden(
            "not_admin",
            "this needs the role admin",
        ))
    }
}

/// Whether `identity` has the role `admin`, in their token or stored record.
pub async fn is_admin(state: &AppState, identity: &Identity) -> Result<bool, sqlx::Error> {
    let admin = |roles: &[String]| roles.iter().any(|role| role == "admin");
    if admin(&identity.roles) {
        return Ok(true);
    }
    Ok(admin(&state.store.roles_of(&identity.user_id).await?))
}

/// The caller's identity, verified already by the rate-limit layer
/// (`http::rate_limit`), which had to know the user to charge them.
#[derive(Clone)]
pub struct Verified(pub Identity);

/// The rate-limit layer's verdict on a token that authenticates nobody, so the
/// route does not ask (the identity service, maybe slowly) a second time.
#[derive(Clone)]
pub struct NotVerified(pub Refused);

/// A service authenticated by `SERVICE_SECRET` (`Bearer <secret>` or the raw secret).
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
        check_secrets(parts, &[secret])?;
        Ok(Service)
    }
}

/// The older identity service calling `POST /user`: it authenticates with
/// `SERVICE_SECRET` or with `NOTIFICATION_AUTH`, the one secret it was deployed
/// with. No other route accepts `NOTIFICATION_AUTH`: chatter sends it to the
/// notification service with every call, so whoever runs or observes that
/// service knows it, and the worst it may do here is declare a user.
pub struct LegacyIdentityService;

impl<S> FromRequestParts<S> for LegacyIdentityService
where
    AppState: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &S,
    ) -> Result<LegacyIdentityService, ApiError> {
        let state = AppState::from_ref(state);
        let accepted: Vec<&str> = [
            state.config.service_secret(),
            state.config.notification_auth.as_deref(),
        ]
        .into_iter()
        .flatten()
        .filter(|secret| !secret.is_empty())
        .collect();
        if accepted.is_empty() {
            return Err(ApiError::unauthorized(
                "service calls are disabled: SERVICE_SECRET is not set",
            ));
        }
        check_secrets(parts, &accepted)?;
        Ok(LegacyIdentityService)
    }
}

/// Says at start-up what a deployment that sets only `NOTIFICATION_AUTH` gets:
/// before, that value also worked as `SERVICE_SECRET` everywhere.
pub fn log_service_secret_use(config: &Config) {
    if config.service_secret().is_none()
        && config
            .notification_auth
            .as_deref()
            .is_some_and(|auth| !auth.is_empty())
    {
        tracing::warn!(
            "NOTIFICATION_AUTH is set but SERVICE_SECRET is not: NOTIFICATION_AUTH is accepted \
             only by POST /user (the older identity service); POST /users, POST /tokens and \
             service publishing are disabled until SERVICE_SECRET is set"
        );
    }
}

/// Accepts the request when its `Authorization` header carries one of `secrets`.
fn check_secrets(parts: &Parts, secrets: &[&str]) -> Result<(), ApiError> {
    let header = parts
        .headers
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .ok_or_else(|| ApiError::unauthorized("the service secret is required"))?;
    // Every secret is compared (in constant time), so which one matched does not
    // show in the timing either.
    let matched = secrets.iter().fold(false, |matched, secret| {
        matched | is_service_secret(header, secret)
    });
    if matched {
        Ok(())
    } else {
        Err(ApiError::unauthorized("the service secret is wrong"))
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
