//! Liveness and readiness probes, and Prometheus metrics.

use super::error::{ApiError, ErrorBody};
use crate::state::AppState;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
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
        (status = 200, description = "Ready to serve: `ready`, followed by `; warning: Redis is not durable: …` when Redis keeps no append-only file or may evict", body = String, content_type = "text/plain", example = "ready"),
        (status = 503, description = "`draining`: shutting down; `unavailable`: Redis or the database does not answer", body = ErrorBody),
    ),
)]
async fn readyz(State(state): State<AppState>) -> Result<String, ApiError> {
    if state.shutdown.is_cancelled() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining",
            "the gateway is draining",
        ));
    }
    let redis = tokio::time::timeout(PROBE_TIMEOUT, state.bus.ping()).await;
    if !matches!(redis, Ok(Ok(()))) {
        return Err(ApiError::unavailable("Redis does not answer"));
    }
    let database = tokio::time::timeout(PROBE_TIMEOUT, state.store.ping()).await;
    if !matches!(database, Ok(Ok(()))) {
        return Err(ApiError::unavailable("Postgres does not answer"));
    }
    if state.redis_risks.is_empty() {
        return Ok("ready".into());
    }
    // Still ready (REDIS_REQUIRE_DURABLE would have refused to start), but say why
    // acknowledged messages are at risk where an operator looks.
    Ok(format!(
        "ready; warning: Redis is not durable: {}",
        state.redis_risks.join("; ")
    ))
}
