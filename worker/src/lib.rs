//! The chatter worker: persists the ingest stream to Postgres and notifies
//! recipients.
//!
//! Several workers share the stream through one Redis consumer group. Each reads a
//! batch, writes it in one idempotent statement, and only then acknowledges it; a
//! worker that dies leaves its batch pending, and a live one reclaims it after
//! `WORKER_CLAIM_IDLE_MS`. Replays are harmless: stored rows are skipped and only
//! newly stored messages trigger notifications.

pub mod batch;
pub mod cli;
pub mod dead_letter;
pub mod embedded;
pub mod notify;
pub mod persist;

use anyhow::Context;
use chatter_shared::config::{Config, Mode};
use chatter_shared::store::Store;
use chatter_shared::telemetry::metric;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How long the batch in hand may still take to be stored and acknowledged once
/// SIGTERM came, before it is left pending for another worker.
const DRAIN_GRACE: Duration = Duration::from_secs(10);
/// How often the ingest backlog gauges are sampled.
const BACKLOG_EVERY: Duration = Duration::from_secs(5);

/// Runs a worker until `shutdown` is cancelled, then drains: the batch in hand is
/// stored and acknowledged (within [`DRAIN_GRACE`]), notifications queued so far
/// go out, and only then do the probes stop answering.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let Mode::Cluster {
        redis_url,
        database_url,
    } = config.mode()?
    else {
        anyhow::bail!(
            "the worker needs REDIS_URL and DATABASE_URL (in the embedded mode the worker runs inside chatter-gateway)"
        );
    };
    chatter_shared::telemetry::register(chatter_shared::telemetry::Process::Worker);
    let store = Store::connect_postgres(&database_url, config.database_max_connections)
        .await
        .context("cannot connect to Postgres (DATABASE_URL)")?;
    let redis = chatter_shared::redis::connect(&redis_url)
        .await
        .context("cannot connect to Redis (REDIS_URL)")?;
    let redis_risks =
        chatter_shared::redis::check_durability(&redis, config.redis_require_durable).await?;
    // Blocking reads get their own connection so acknowledgements never queue
    // behind an XREADGROUP that is waiting for entries.
    let reader = chatter_shared::redis::connect(&redis_url)
        .await
        .context("cannot connect to Redis (REDIS_URL)")?;
    // Retries of the batch in hand stop DRAIN_GRACE after SIGTERM.
    let give_up = CancellationToken::new();
    let notify_stop = CancellationToken::new();
    let dead_letters = dead_letter::DeadLetters::Redis(redis.clone());
    let notifier = notify::Notifier::start(&config, dead_letters.clone(), notify_stop.clone())?;
    let batches = batch::Batches {
        store: store.clone(),
        notifier: notifier.clone(),
        dead_letters,
        presence: batch::Presence::Redis(redis.clone()),
    };
    let persister = persist::Persister::new(&config, batches, redis.clone(), reader).await?;
    let listener = tokio::net::TcpListener::bind((config.host.as_str(), config.worker_port))
        .await
        .with_context(|| {
            format!(
                "cannot listen on {}:{} (HOST, WORKER_PORT)",
                config.host, config.worker_port
            )
        })?;
    let http_addr = listener.local_addr()?;
    let probes_stop = CancellationToken::new();
    let probes = tokio::spawn(serve_probes(
        listener,
        Probes {
            redis: redis.clone(),
            store,
            draining: shutdown.clone(),
            redis_risks,
        },
        probes_stop.clone(),
    ));
    tokio::spawn(sample_backlog(redis, probes_stop.clone()));
    tracing::info!(consumer = %persister.consumer(), %http_addr, "worker ready");
    tokio::spawn({
        let (shutdown, give_up) = (shutdown.clone(), give_up.clone());
        async move {
            shutdown.cancelled().await;
            metrics::gauge!(metric::DRAINING).set(1.0);
            tracing::info!(
                grace_secs = DRAIN_GRACE.as_secs(),
                "draining: finishing the batch in hand"
            );
            tokio::time::sleep(DRAIN_GRACE).await;
            give_up.cancel();
        }
    });
    persister.run(&shutdown, &give_up).await;
    notify_stop.cancel();
    notifier.finish().await;
    probes_stop.cancel();
    let _ = probes.await;
    tracing::info!("stopped");
    Ok(())
}

/// What the worker's `/readyz` looks at.
struct Probes {
    redis: fred::clients::Client,
    store: Store,
    draining: CancellationToken,
    redis_risks: Vec<String>,
}

/// `/healthz`, `/readyz` and `/metrics` for Kubernetes probes and Prometheus.
/// They keep answering through the drain, until the worker exits.
async fn serve_probes(listener: tokio::net::TcpListener, probes: Probes, stop: CancellationToken) {
    use axum::http::StatusCode;
    use axum::routing::get;
    let metrics = chatter_shared::telemetry::metrics();
    let probes = std::sync::Arc::new(probes);
    let app = axum::Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let probes = probes.clone();
                async move {
                    match probes.readiness().await {
                        Ok(body) => (StatusCode::OK, body),
                        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, reason),
                    }
                }
            }),
        )
        .route(
            "/metrics",
            get(move || std::future::ready(metrics.render())),
        );
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await;
    if let Err(error) = served {
        tracing::error!(%error, "the worker's HTTP listener failed");
    }
}

impl Probes {
    async fn readiness(&self) -> Result<String, String> {
        use fred::prelude::*;
        const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
        if self.draining.is_cancelled() {
            return Err("draining".into());
        }
        let redis = tokio::time::timeout(PROBE_TIMEOUT, self.redis.ping::<String>(None)).await;
        if !matches!(redis, Ok(Ok(_))) {
            return Err("Redis does not answer".into());
        }
        let database = tokio::time::timeout(PROBE_TIMEOUT, self.store.ping()).await;
        if !matches!(database, Ok(Ok(()))) {
            return Err("Postgres does not answer".into());
        }
        if self.redis_risks.is_empty() {
            return Ok("ready".into());
        }
        Ok(format!(
            "ready; warning: Redis is not durable: {}",
            self.redis_risks.join("; ")
        ))
    }
}

/// Samples the ingest backlog: the stream holds exactly the entries not yet
/// stored (stored ones are deleted), and XPENDING counts those read but not
/// acknowledged. Every worker samples; the values are cluster-wide.
async fn sample_backlog(redis: fred::clients::Client, stop: CancellationToken) {
    use chatter_shared::keyspace::{INGEST_GROUP, INGEST_STREAM};
    use fred::prelude::*;
    loop {
        let length: Result<u64, Error> = redis.xlen(INGEST_STREAM).await;
        let pending: Result<Value, Error> = redis.xpending(INGEST_STREAM, INGEST_GROUP, ()).await;
        match (length, pending) {
            (Ok(length), Ok(pending)) => {
                metrics::gauge!(metric::INGEST_BACKLOG).set(length as f64);
                // The summary form: [count, first id, last id, consumers].
                let count = match pending {
                    Value::Array(fields) => fields.first().and_then(Value::as_u64).unwrap_or(0),
                    _ => 0,
                };
                metrics::gauge!(metric::INGEST_PENDING).set(count as f64);
            }
            (Err(error), _) | (_, Err(error)) => {
                metrics::counter!(metric::REDIS_ERRORS).increment(1);
                tracing::debug!(%error, "cannot sample the ingest backlog");
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(BACKLOG_EVERY) => {}
        }
    }
}
