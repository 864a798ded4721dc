//! Liveness and readiness probes, and Prometheus metrics.

use super::error::{ApiError, ErrorBody};
use crate::state::AppState;
use axum::Router;
use axum::extract::State;
use axum::routing::get;
use std::time::Duration;

const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
}

/// Prometheus metrics: connections, frames, publish and delivery latency, errors.
// `chatter_shared::telemetry::metric` lists the names.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses(
        (status = 200, description = "Prometheus text exposition format", body = String, content_type = "text/plain"),
    ),
)]
async fn metrics_text(State(state): State<AppState>) -> String {
    state.metrics.render()
}

/// Liveness: the process serves HTTP.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    responses(
        (status = 200, description = "Alive", body = String, content_type = "text/plain", example = "ok"),
    ),
)]
async fn healthz() -> &'static str {
    "ok"
}

/// Readiness: Redis and Postgres answer, and the pod is not shutting down.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    responses(
        (status = 200, description = "Ready to serve", body = String, content_type = "text/plain", example = "ready"),
        (status = 503, description = "`unavailable`: draining, or Redis or the database does not answer", body = ErrorBody),
    ),
)]
async fn readyz(State(state): State<AppState>) -> Result<&'static str, ApiError> {
    if state.shutdown.is_cancelled() {
        return Err(ApiError::unavailable("the gateway is draining"));
    }
    let redis = tokio::time::timeout(PROBE_TIMEOUT, state.bus.ping()).await;
    if !matches!(redis, Ok(Ok(()))) {
        return Err(ApiError::unavailable("Redis does not answer"));
    }
    let database = tokio::time::timeout(PROBE_TIMEOUT, state.store.ping()).await;
    if !matches!(database, Ok(Ok(()))) {
        return Err(ApiError::unavailable("Postgres does not answer"));
    }
    Ok("ready")
}
