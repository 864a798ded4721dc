//! Logging setup shared by both binaries.
//!
//! Human-readable lines by default, one JSON object per line with `LOG_FORMAT=json`
//! (what log shippers and the end-to-end harness read). Message bodies and tokens
//! are never logged: handlers log ids and sizes only.

use crate::config::LogFormat;
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. `level` is an `EnvFilter` directive such as
/// `info` or `info,chatter_gateway=debug`; an invalid one falls back to `info`
/// with a warning rather than refusing to start. `mail` (error e-mail, see
/// `error_mail`) sees the events the filter lets through.
pub fn init(level: &str, format: LogFormat, mail: Option<crate::error_mail::MailLayer>) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let (filter, bad_filter) = match EnvFilter::try_new(level) {
        Ok(filter) => (filter, None),
        Err(error) => (EnvFilter::new("info"), Some(error)),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(true);
    let result = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(false)
            .finish()
            .with(mail)
            .try_init(),
        LogFormat::Text => builder.finish().with(mail).try_init(),
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
    /// Frames waiting in socket send queues, over all sockets (sampled gauge).
    pub const SEND_QUEUE_FRAMES: &str = "chatter_send_queue_frames";
    /// Frames waiting in the fullest socket send queue (sampled gauge).
    pub const SEND_QUEUE_MAX_FRAMES: &str = "chatter_send_queue_max_frames";
    /// 1 while the process drains (after SIGTERM), else 0.
    pub const DRAINING: &str = "chatter_draining";
    /// WebSocket upgrades refused before opening, by `reason` (`draining`, `full`,
    /// `origin`, `identity`: the identity service was unavailable).
    pub const UPGRADES_REFUSED: &str = "chatter_upgrades_refused_total";
    /// TCP connections closed at accept because a cap was reached, by `cap` (`total`, `per_ip`).
    pub const HTTP_CONNECTIONS_REFUSED: &str = "chatter_http_connections_refused_total";
    /// Ingest stream entries not yet stored (sampled by workers).
    pub const INGEST_BACKLOG: &str = "chatter_ingest_backlog";
    /// Ingest entries read by a worker and not yet acknowledged (sampled by workers).
    pub const INGEST_PENDING: &str = "chatter_ingest_pending";
    /// Failed Redis commands in the worker (reads, acknowledgements, claims).
    pub const REDIS_ERRORS: &str = "chatter_redis_errors_total";
    /// Requests and frames refused by a rate limit, by `limit` (`socket`, `user`,
    /// `ip`, `sender`).
    pub const RATE_LIMITED: &str = "chatter_rate_limited_total";
    /// Sockets closed (4008) because their user opened more than
    /// `MAX_CONNECTIONS_PER_USER` on this gateway.
    pub const REPLACED_CONNECTIONS: &str = "chatter_replaced_connections_total";
    /// Membership events the gateway dropped because its membership task was
    /// behind; each is made good by re-checking the user against the database.
    pub const MEMBERSHIP_EVENTS_DROPPED: &str = "chatter_membership_events_dropped_total";
    /// Rooms a membership re-check joined or left on a socket: each is an event
    /// that was lost or dropped (label `change`: `joined`, `left`).
    pub const MEMBERSHIP_RECHECK_FIXES: &str = "chatter_membership_recheck_fixes_total";
    /// Webhook calls by outcome (`sent`, `dead_lettered`).
    pub const WEBHOOKS: &str = "chatter_webhooks_total";
    /// Notifications in the durable outbox, not yet delivered (sampled by workers).
    pub const NOTIFY_OUTBOX_BACKLOG: &str = "chatter_notify_outbox_backlog";
    /// Error e-mails by outcome (`sent`, `failed`, `dropped`: over
    /// `EMAIL_MAX_PER_HOUR` or the queue was full).
    pub const ERROR_EMAILS: &str = "chatter_error_emails_total";
    /// Support desk: requests created, claims won, chats expired.
    pub const SUPPORT_REQUESTS: &str = "chatter_support_requests_total";
    pub const SUPPORT_CLAIMS: &str = "chatter_support_claims_total";
    pub const SUPPORT_EXPIRED: &str = "chatter_support_expired_total";
    /// `UserLeft` / `SupportLeft` look-ups dropped because their queue was full.
    pub const SUPPORT_DEPARTURES_DROPPED: &str = "chatter_support_departures_dropped_total";
    /// Delegated verifications by `outcome`: `cached` (answered from the cache),
    /// `vouched` (the identity service said 200), `refused`, `unavailable`.
    pub const IDENTITY_CHECKS: &str = "chatter_identity_checks_total";
}

/// Describes every metric a process serves and records it once at its zero
/// value, so a fresh pod's `/metrics` already shows each series (dashboards show
/// 0, not "no data", and absence alerts stay quiet).
pub fn register(process: Process) {
    use metric::*;
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    // Descriptions and values recorded before the recorder exists would be lost.
    let _ = metrics();
    let counters: &[(&str, &str)] = match process {
        Process::Gateway => &[
            (FRAMES_IN, "Frames received from clients."),
            (
                FRAMES_OUT,
                "Frames queued to client sockets (each delivery counts).",
            ),
            (BUS_ERRORS, "Sends refused because the bus (Redis) failed."),
            (DB_ERRORS, "Database errors seen by the REST API."),
            (
                SLOW_CONSUMERS,
                "Sockets closed because they read too slowly (4009).",
            ),
            (
                REPLACED_CONNECTIONS,
                "Sockets closed (4008) because their user opened more than MAX_CONNECTIONS_PER_USER here.",
            ),
            (
                MEMBERSHIP_EVENTS_DROPPED,
                "Membership events dropped because the membership task was behind (each user re-checked).",
            ),
            (SUPPORT_REQUESTS, "Support requests created."),
            (SUPPORT_CLAIMS, "Support requests claimed by an agent."),
            (
                SUPPORT_EXPIRED,
                "Support chats expired by this gateway's sweep.",
            ),
            (
                SUPPORT_DEPARTURES_DROPPED,
                "UserLeft/SupportLeft notices dropped because their queue was full.",
            ),
        ],
        Process::Worker => &[
            (WORKER_STORED, "Messages newly stored by the worker."),
            (DB_ERRORS, "Failed batch writes to the database."),
            (
                REDIS_ERRORS,
                "Failed Redis commands (reads, acknowledgements, claims).",
            ),
        ],
    };
    for (name, help) in counters {
        describe_counter!(*name, Unit::Count, *help);
        metrics::counter!(*name).absolute(0);
    }
    let gauges: &[(&str, &str)] = match process {
        Process::Gateway => &[
            (CONNECTIONS, "Open WebSocket connections."),
            (
                SEND_QUEUE_FRAMES,
                "Frames waiting in socket send queues, over all sockets (sampled).",
            ),
            (
                SEND_QUEUE_MAX_FRAMES,
                "Frames waiting in the fullest socket send queue (sampled).",
            ),
            (
                DRAINING,
                "1 while the gateway drains after SIGTERM, else 0.",
            ),
        ],
        Process::Worker => &[
            (
                INGEST_BACKLOG,
                "Ingest stream entries not yet stored (sampled).",
            ),
            (
                INGEST_PENDING,
                "Ingest entries read by a worker, not yet acknowledged (sampled).",
            ),
            (DRAINING, "1 while the worker drains after SIGTERM, else 0."),
            (
                NOTIFY_OUTBOX_BACKLOG,
                "Notifications in the durable outbox, not yet delivered (sampled).",
            ),
        ],
    };
    for (name, help) in gauges {
        describe_gauge!(*name, Unit::Count, *help);
        metrics::gauge!(*name).set(0.0);
    }
    let histograms: &[(&str, Unit, &str)] = match process {
        Process::Gateway => &[
            (
                PUBLISH_SECONDS,
                Unit::Seconds,
                "Accepting a message: the one bus round trip.",
            ),
            (
                DELIVERY_SECONDS,
                Unit::Seconds,
                "From a message's created_at to its hand-off to this gateway's sockets.",
            ),
        ],
        Process::Worker => &[
            (
                WORKER_BATCH_SIZE,
                Unit::Count,
                "Messages per batch the worker stored.",
            ),
            (
                WORKER_LAG_SECONDS,
                Unit::Seconds,
                "From a message's created_at to its commit in the database.",
            ),
        ],
    };
    for (name, unit, help) in histograms {
        describe_histogram!(*name, *unit, *help);
        // Registering the handle is enough for the exporter to render the series.
        let _ = metrics::histogram!(*name);
    }
    let labelled: &[(&str, &str, &str, &[&str])] = match process {
        Process::Gateway => &[
            (
                UPGRADES_REFUSED,
                "reason",
                "WebSocket upgrades refused before opening.",
                &["draining", "full", "origin", "identity"],
            ),
            (
                HTTP_CONNECTIONS_REFUSED,
                "cap",
                "TCP connections closed at accept because a cap was reached.",
                &["total", "per_ip"],
            ),
            (
                RATE_LIMITED,
                "limit",
                "Requests and frames refused by a rate limit.",
                &["socket", "user", "ip", "sender"],
            ),
            (
                MEMBERSHIP_RECHECK_FIXES,
                "change",
                "Rooms a membership re-check joined or left on a socket (a lost or dropped event).",
                &["joined", "left"],
            ),
            (
                IDENTITY_CHECKS,
                "outcome",
                "Delegated verifications (VERIFICATION_URL) by outcome.",
                &["cached", "vouched", "refused", "unavailable"],
            ),
            (
                ERROR_EMAILS,
                "outcome",
                "Error e-mails by outcome.",
                &["sent", "failed", "dropped"],
            ),
        ],
        Process::Worker => &[
            (
                NOTIFICATIONS,
                "outcome",
                "Notification calls by outcome.",
                &["sent", "dead_lettered"],
            ),
            (
                WEBHOOKS,
                "outcome",
                "Webhook calls by outcome.",
                &["sent", "dead_lettered"],
            ),
            (
                ERROR_EMAILS,
                "outcome",
                "Error e-mails by outcome.",
                &["sent", "failed", "dropped"],
            ),
        ],
    };
    for (name, label, help, values) in labelled {
        describe_counter!(*name, Unit::Count, *help);
        for value in *values {
            metrics::counter!(*name, *label => *value).absolute(0);
        }
    }
}

/// Which binary's metrics [`register`] sets up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Process {
    Gateway,
    /// In the embedded mode the gateway registers both.
    Worker,
}

/// How often recorded histogram samples are folded into their buckets.
const METRICS_UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Folds recorded histogram samples into their buckets every few seconds until
/// `stop`. The recorder keeps every sample of a histogram until it is folded,
/// and only `render` (a scrape) or this upkeep folds them: without it, a process
/// nobody scrapes grows by every delivery it times.
pub async fn keep_metrics(stop: tokio_util::sync::CancellationToken) {
    let handle = metrics();
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(METRICS_UPKEEP_EVERY) => handle.run_upkeep(),
        }
    }
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
