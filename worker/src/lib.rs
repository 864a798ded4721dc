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
use tokio_util::sync::CancellationToken;

/// Runs a worker until `shutdown` is cancelled.
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
    let store = Store::connect_postgres(&database_url, config.database_max_connections)
        .await
        .context("cannot connect to Postgres (DATABASE_URL)")?;
    let redis = chatter_shared::redis::connect(&redis_url)
        .await
        .context("cannot connect to Redis (REDIS_URL)")?;
    // Blocking reads get their own connection so acknowledgements never queue
    // behind an XREADGROUP that is waiting for entries.
    let reader = chatter_shared::redis::connect(&redis_url)
        .await
        .context("cannot connect to Redis (REDIS_URL)")?;
    let dead_letters = dead_letter::DeadLetters::Redis(redis.clone());
    let notifier = notify::Notifier::start(&config, dead_letters.clone(), shutdown.clone())?;
    let batches = batch::Batches {
        store,
        notifier: notifier.clone(),
        dead_letters,
        presence: batch::Presence::Redis(redis.clone()),
    };
    let persister = persist::Persister::new(&config, batches, redis, reader).await?;
    let listener = tokio::net::TcpListener::bind((config.host.as_str(), config.worker_port))
        .await
        .with_context(|| {
            format!(
                "cannot listen on {}:{} (HOST, WORKER_PORT)",
                config.host, config.worker_port
            )
        })?;
    let http_addr = listener.local_addr()?;
    tokio::spawn(serve_probes(listener, shutdown.clone()));
    tracing::info!(consumer = %persister.consumer(), %http_addr, "worker ready");
    persister.run(shutdown).await;
    notifier.finish().await;
    Ok(())
}

/// `/healthz` and `/metrics` for Kubernetes probes and Prometheus.
async fn serve_probes(listener: tokio::net::TcpListener, shutdown: CancellationToken) {
    use axum::routing::get;
    let metrics = chatter_shared::telemetry::metrics();
    let app = axum::Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/metrics",
            get(move || std::future::ready(metrics.render())),
        );
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
    if let Err(error) = served {
        tracing::error!(%error, "the worker's HTTP listener failed");
    }
}
