//! The REST side of `JWT_PERMISSIONS_CLAIM` (the table: `crate::permissions`).
//! Installed only when the claim is configured, inside the rate-limit layer,
//! whose verified identity it reads: a caller the layer did not identify (no
//! token, a refused one, the service secret) passes on to the route, which
//! answers 401 or checks the secret as before.

use super::error::ApiError;
use super::extract::Verified;
use crate::permissions;
use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// 403 `missing_permission` unless the caller's token holds the route's permission.
pub async fn require(request: Request, next: Next) -> Response {
    let Some(Verified(identity)) = request.extensions().get::<Verified>() else {
        return next.run(request).await;
    };
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("", MatchedPath::as_str);
    let refusal = match permissions::for_route(request.method(), route) {
        Some(need) => need
            .missing(identity)
            .map(|permission| format!("this token lacks the {} permission", permission.name())),
        None => Some("this route needs a permission no token can hold yet".to_owned()),
    };
    match refusal {
        None => next.run(request).await,
        Some(message) => ApiError::forbidden("missing_permission", message).into_response(),
    }
}
