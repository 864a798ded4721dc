//! Logging setup shared by both binaries.
//!
//! Human-readable lines by default, one JSON object per line with `LOG_FORMAT=json`
//! (what log shippers and the end-to-end harness read). Message bodies and tokens
//! are never logged: handlers log ids and sizes only.

use crate::config::LogFormat;
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. `level` is an `EnvFilter` directive such as
/// `info` or `info,chatter_gateway=debug`; an invalid one falls back to `info`
/// with a warning rather than refusing to start.
pub fn init(level: &str, format: LogFormat) {
    let (filter, bad_filter) = match EnvFilter::try_new(level) {
        Ok(filter) => (filter, None),
        Err(error) => (EnvFilter::new("info"), Some(error)),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(true);
    let result = match format {
        LogFormat::Json => builder.json().flatten_event(false).try_init(),
        LogFormat::Text => builder.try_init(),
    };
    if let Err(error) = result {
        // Tests may install a subscriber first; that is not worth failing over.
        eprintln!("logging already initialised: {error}");
    }
    if let Some(error) = bad_filter {
        tracing::warn!(%error, "LOG_LEVEL is not a valid filter; using `info`");
    }
}

/// The names of chatter's Prometheus metrics, in one place.
pub mod metric {
    /// Open WebSocket connections (gauge).
    pub const CONNECTIONS: &str = "chatter_connections";
    /// Frames received from clients.
    pub const FRAMES_IN: &str = "chatter_frames_in_total";
    /// Frames queued to client sockets (each delivery of a message counts).
    pub const FRAMES_OUT: &str = "chatter_frames_out_total";
    /// Accepting a message: the one bus round trip (seconds).
    pub const PUBLISH_SECONDS: &str = "chatter_publish_seconds";
    /// From a message's `created_at` to its hand-off to this gateway's sockets (seconds).
    pub const DELIVERY_SECONDS: &str = "chatter_delivery_seconds";
    /// Sends refused because the bus (Redis) failed.
    pub const BUS_ERRORS: &str = "chatter_bus_errors_total";
    /// Database errors seen by the REST API.
    pub const DB_ERRORS: &str = "chatter_db_errors_total";
    /// Sockets closed because they read too slowly.
    pub const SLOW_CONSUMERS: &str = "chatter_slow_consumer_closes_total";
    /// Messages per batch the worker stored.
    pub const WORKER_BATCH_SIZE: &str = "chatter_worker_batch_size";
    /// From a message's `created_at` to its commit in the database (seconds).
    pub const WORKER_LAG_SECONDS: &str = "chatter_worker_lag_seconds";
    /// Messages newly stored by the worker.
    pub const WORKER_STORED: &str = "chatter_worker_stored_total";
    /// Notification calls by outcome (`sent`, `dead_lettered`).
    pub const NOTIFICATIONS: &str = "chatter_notifications_total";
    /// Membership events the gateway dropped because its membership task was
    /// behind; each is made good by re-checking the user against the database.
    pub const MEMBERSHIP_EVENTS_DROPPED: &str = "chatter_membership_events_dropped_total";
    /// Rooms a membership re-check joined or left on a socket: each is an event
    /// that was lost or dropped (label `change`: `joined`, `left`).
    pub const MEMBERSHIP_RECHECK_FIXES: &str = "chatter_membership_recheck_fixes_total";
}

static METRICS: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> =
    std::sync::OnceLock::new();

/// Installs the process-wide Prometheus recorder on first use and returns the
/// handle `/metrics` renders. (The recorder is global by nature of the `metrics`
/// facade; this is the one place that touches it.)
pub fn metrics() -> metrics_exporter_prometheus::PrometheusHandle {
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    const SECONDS: &[f64] = &[
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ];
    const SIZES: &[f64] = &[1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0];
    METRICS
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS)
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full(metric::WORKER_BATCH_SIZE.into()), SIZES));
            match builder {
                Ok(builder) => match builder.install_recorder() {
                    Ok(handle) => handle,
                    Err(error) => {
                        tracing::warn!(%error, "metrics recorder not installed; /metrics will be empty");
                        PrometheusBuilder::new().build_recorder().handle()
                    }
                },
                Err(error) => {
                    tracing::warn!(%error, "invalid metric buckets; /metrics will be empty");
                    PrometheusBuilder::new().build_recorder().handle()
                }
            }
        })
        .clone()
}
