//! The REST API: one module per resource, merged here with the cross-cutting layers
//! (request ids, tracing, CORS, body limits, rate limits).

pub(crate) mod admin;
mod blocks;
pub(crate) mod client_config;
mod connections;
pub mod error;
pub mod extract;
mod health;
pub mod openapi;
mod pages;
mod permissions;
mod provider;
pub(crate) mod rate_limit;
mod rooms;
mod support;
mod tokens;
mod users;
mod webhooks;

use crate::state::AppState;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, HeaderValue, Method, Request, header};
use axum::routing::get;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

/// Request bodies above this are refused with 413 before any handler runs.
const MAX_BODY_BYTES: usize = 256 * 1024;

static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The whole HTTP surface of a gateway, ready to serve.
pub fn app(state: AppState) -> Router {
    let cors = cors(&state.config.allowed_origins.0);
    let routes = Router::new()
        .merge(health::router())
        .merge(openapi::router())
        .merge(connections::router())
        .merge(users::router())
        .merge(rooms::router())
        .merge(admin::router())
        .merge(blocks::router())
        .merge(tokens::router())
        .merge(webhooks::router())
        .merge(support::router())
        .merge(pages::router())
        .merge(crate::tickets::router())
        .merge(provider::router())
        .merge(client_config::router())
        .route("/ws", get(crate::ws::upgrade));
    // Off (no claim configured), the check costs nothing: it is not installed.
    let routes = if state.config.jwt_permissions_claim.is_some() {
        routes.route_layer(axum::middleware::from_fn(permissions::require))
    } else {
        routes
    };
    routes
        .fallback(|| async { error::ApiError::not_found("not_found", "no such route") })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        // Inside CORS, so a browser can read a 429 (and preflights are not charged).
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            rate_limit::limit,
        ))
        .layer(cors)
        .layer(
            // Only the path is logged: query strings may carry tickets or tokens.
            TraceLayer::new_for_http().make_span_with(|request: &Request<_>| {
                let id = request.headers().get(&REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or("-");
                tracing::info_span!("http", method = %request.method(), path = %request.uri().path(), request_id = %id)
            }),
        )
        .layer(PropagateRequestIdLayer::new(REQUEST_ID.clone()))
        .layer(SetRequestIdLayer::new(REQUEST_ID.clone(), MakeRequestUuid))
        .with_state(state)
}

fn cors(allowed: &[String]) -> CorsLayer {
    let origins = if allowed.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(allowed.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    CorsLayer::new()
        .allow_origin(origins)
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
        ])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
}
