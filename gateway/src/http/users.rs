//! `POST /users` (alias `POST /user`): the identity service tells chatter about a user.
//!
//! `POST /user` is the older identity service's call: besides `SERVICE_SECRET` it
//! accepts `NOTIFICATION_AUTH` ([`LegacyIdentityService`]), and is the only route
//! that does.

use super::error::{ApiError, ErrorBody};
use super::extract::{Json, LegacyIdentityService, Service};
use crate::state::AppState;
use axum::Router;
use axum::extract::State;
use axum::routing::post;
use chatter_shared::auth::{Identity, validate_user_id};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/users", post(upsert_user))
        .route("/user", post(upsert_user_legacy))
}

/// A user as the identity service declares it.
#[derive(Deserialize, ToSchema)]
struct UpsertUser {
    /// The user id (1 to 128 bytes, no control characters); `username` is accepted
    /// as an alias.
    #[serde(alias = "username")]
    id: String,
    /// Display name.
    name: Option<String>,
    /// Users of the same group see each other in `GET /connections`.
    user_group: Option<String>,
    /// `support` and `admin` see everyone's presence.
    #[serde(default)]
    roles: Vec<String>,
}

/// The user as stored.
#[derive(Serialize, ToSchema)]
struct UserBody {
    id: String,
    #[schema(required)]
    name: Option<String>,
    #[schema(required)]
    user_group: Option<String>,
    roles: Vec<String>,
}

/// Create or update a user (the identity service calls this).
#[utoipa::path(
    post,
    path = "/users",
    operation_id = "upsert_user",
    tag = "users",
    security(("service" = [])),
    request_body = UpsertUser,
    responses(
        (status = 200, description = "The user as stored", body = UserBody),
        (status = 400, description = "`bad_user_id`, `bad_json`, `bad_name`, `bad_user_group`, \
            `bad_roles`: a NUL character", body = ErrorBody),
        (status = 401, description = "`unauthenticated`: no or wrong service secret", body = ErrorBody),
        (status = 413, description = "`too_large`: body over 256 KiB", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`: not `application/json`", body = ErrorBody),
        (status = 503, description = "`unavailable`: the database is unavailable", body = ErrorBody),
    ),
)]
async fn upsert_user(
    State(state): State<AppState>,
    _service: Service,
    Json(body): Json<UpsertUser>,
) -> Result<Json<UserBody>, ApiError> {
    upsert(state, body).await
}

/// `POST /user`: the same, for the older identity service (documented as an
/// alias of `POST /users` in `openapi.rs`).
async fn upsert_user_legacy(
    State(state): State<AppState>,
    _service: LegacyIdentityService,
    Json(body): Json<UpsertUser>,
) -> Result<Json<UserBody>, ApiError> {
    upsert(state, body).await
}

async fn upsert(state: AppState, body: UpsertUser) -> Result<Json<UserBody>, ApiError> {
    validate_user_id(&body.id).map_err(|problem| ApiError::bad_request("bad_user_id", problem))?;
    // The database cannot store NUL: refused with a reason rather than a 500.
    let nul = |text: &Option<String>| text.as_deref().is_some_and(|t| t.contains('\0'));
    for (code, field, bad) in [
        ("bad_name", "name", nul(&body.name)),
        ("bad_user_group", "user_group", nul(&body.user_group)),
        (
            "bad_roles",
            "roles",
            body.roles.iter().any(|role| role.contains('\0')),
        ),
    ] {
        if bad {
            return Err(ApiError::bad_request(
                code,
                format!("{field} may not contain NUL characters"),
            ));
        }
    }
    let identity = Identity {
        user_id: body.id,
        name: body.name,
        group: body.user_group,
        roles: body.roles,
        permissions: None,
    };
    state.store.upsert_user(&identity).await?;
    state.forget_user(&identity.user_id);
    Ok(Json(UserBody {
        id: identity.user_id,
        name: identity.name,
        user_group: identity.group,
        roles: identity.roles,
    }))
}
