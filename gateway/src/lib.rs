//! The chatter gateway: WebSocket connections and the REST API.
//!
//! [`serve`] is the whole gateway given a configuration, a bound listener and a
//! shutdown token; the binary only wires those up (see [`cli`]).

pub mod cli;
pub mod http;
pub mod hub;
pub mod messages;
pub mod state;
pub mod tickets;
pub mod ws;

use anyhow::Context;
use chatter_shared::auth::Tokens;
use chatter_shared::config::Config;
use chatter_shared::store::Store;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// How long sockets get to close after shutdown before the process exits anyway.
const SOCKET_CLOSE_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Connects to Redis and Postgres, then serves on `listener` until `shutdown`.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let tokens = Tokens::from_config(&config).context("invalid JWT configuration")?;
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
    let subscriber = chatter_shared::redis::connect_subscriber(&redis_url)
        .await
        .context("cannot connect to Redis (REDIS_URL)")?;
    let hub = hub::Hub::start(subscriber, shutdown.clone());
    let state = Arc::new(state::App::new(
        config,
        tokens,
        store,
        redis,
        hub,
        shutdown.clone(),
    ));
    tracing::info!(addr = %listener.local_addr()?, "listening");
    axum::serve(listener, http::app(state.clone()))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
        .context("server error")?;
    // Sockets were told to close when `shutdown` fired; give their close frames
    // time to go out before the runtime stops.
    state.sockets.close();
    if tokio::time::timeout(SOCKET_CLOSE_GRACE, state.sockets.wait())
        .await
        .is_err()
    {
        tracing::warn!(open = state.sockets.len(), "sockets still open at exit");
    }
    tracing::info!("stopped");
    Ok(())
}
