//! `POST /users` (alias `POST /user`): the identity service tells chatter about a user.

use super::error::ApiError;
use super::extract::{Json, Service};
use crate::state::AppState;
use axum::Router;
use axum::extract::State;
use axum::routing::post;
use chatter_shared::auth::{Identity, validate_user_id};
use serde::{Deserialize, Serialize};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/users", post(upsert_user))
        .route("/user", post(upsert_user))
}

/// The body: `id`, or `username` as the older identity service sends it.
#[derive(Deserialize)]
struct UpsertUser {
    #[serde(alias = "username")]
    id: String,
    name: Option<String>,
    user_group: Option<String>,
    #[serde(default)]
    roles: Vec<String>,
}

#[derive(Serialize)]
struct UserBody {
    id: String,
    name: Option<String>,
    user_group: Option<String>,
    roles: Vec<String>,
}

async fn upsert_user(
    State(state): State<AppState>,
    _service: Service,
    Json(body): Json<UpsertUser>,
) -> Result<Json<UserBody>, ApiError> {
    validate_user_id(&body.id).map_err(|problem| ApiError::bad_request("bad_user_id", problem))?;
    let identity = Identity {
        user_id: body.id,
        name: body.name,
        group: body.user_group,
        roles: body.roles,
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
