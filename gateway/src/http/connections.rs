//! `GET /connections`: who the caller may see, and whether each is online anywhere
//! in the cluster.

use super::error::{ApiError, ErrorBody};
use super::extract::{Json, User};
use crate::state::AppState;
use axum::Router;
use axum::extract::State;
use axum::routing::get;
use serde::Serialize;
use utoipa::ToSchema;

pub fn router() -> Router<AppState> {
    Router::new().route("/connections", get(connections))
}

/// A contact and their presence, cluster-wide.
#[derive(Serialize, ToSchema)]
struct Connection {
    user_id: String,
    #[schema(required)]
    name: Option<String>,
    /// Connected to some gateway right now.
    online: bool,
    /// When the user last went offline (RFC 3339), if known.
    #[schema(required, format = DateTime)]
    last_seen_at: Option<String>,
}

/// Users who share a room or a `user_group` with the caller.
#[utoipa::path(
    get,
    path = "/connections",
    operation_id = "list_connections",
    tag = "presence",
    security(("user" = [])),
    responses(
        (status = 200, description = "The caller's contacts and whether each is online", body = Vec<Connection>),
        (status = 401, description = "`unauthenticated`: no, invalid or expired JWT", body = ErrorBody),
        (status = 503, description = "`unavailable`: Redis or the database is unavailable", body = ErrorBody),
    ),
)]
async fn connections(
    State(state): State<AppState>,
    User(caller): User,
) -> Result<Json<Vec<Connection>>, ApiError> {
    let contacts = state.store.contacts_of(&caller.user_id).await?;
    let ids: Vec<String> = contacts.iter().map(|c| c.id.clone()).collect();
    let presence = state.bus.presence_of(&ids).await?;
    Ok(Json(
        contacts
            .into_iter()
            .zip(presence)
            .map(|(contact, (online, last_seen_at))| Connection {
                user_id: contact.id,
                name: contact.name,
                online,
                last_seen_at: if online { None } else { last_seen_at },
            })
            .collect(),
    ))
}
