//! The chatter worker: persists the ingest stream to Postgres and notifies
//! recipients.
//!
//! Several workers share the stream through one Redis consumer group. Each reads a
//! batch, writes it in one idempotent statement, and only then acknowledges it; a
//! worker that dies leaves its batch pending, and a live one reclaims it after
//! `WORKER_CLAIM_IDLE_MS`. Replays are harmless: stored rows are skipped and only
//! newly stored messages trigger notifications.

pub mod cli;
pub mod notify;
pub mod persist;

use anyhow::Context;
use chatter_shared::config::Config;
use chatter_shared::store::Store;
use tokio_util::sync::CancellationToken;

/// Runs a worker until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let redis_url = config.redis_url.clone().context("REDIS_URL must be set")?;
    let database_url = config
        .database_url
        .clone()
        .context("DATABASE_URL must be set")?;
    let store = Store::connect(&database_url, config.database_max_connections)
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
    let notifier = notify::Notifier::start(&config, redis.clone(), shutdown.clone())?;
    let persister =
        persist::Persister::new(&config, store, redis, reader, notifier.clone()).await?;
    tracing::info!(consumer = %persister.consumer(), "worker ready");
    persister.run(shutdown).await;
    notifier.finish().await;
    Ok(())
}
