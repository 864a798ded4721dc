//! Redis connections, configured the same way in both binaries.
//!
//! fred reconnects by itself with backoff; every command carries a timeout so
//! that, while Redis is away, callers get an error they can report (a send is
//! answered `confirmed: false`) instead of waiting forever.

use fred::clients::SubscriberClient;
use fred::prelude::*;
use std::time::Duration;

/// How long one command may take, including time spent waiting for a reconnect.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(3);

fn builder(url: &str) -> Result<Builder, Error> {
    let config = Config::from_url(url)?;
    let mut builder = Builder::from_config(config);
    builder
        .with_performance_config(|perf| {
            perf.default_command_timeout = COMMAND_TIMEOUT;
            // The subscriber's broadcast channel: deep enough to absorb a burst while
            // the dispatcher is busy; overflow is counted and logged, never silent.
            perf.broadcast_channel_capacity = 64 * 1024;
        })
        .with_connection_config(|conn| {
            conn.connection_timeout = Duration::from_secs(2);
            conn.internal_command_timeout = Duration::from_secs(2);
        })
        // Retry forever, 50 ms doubling up to 2 s: Redis outages end, pods should not.
        .set_policy(ReconnectPolicy::new_exponential(0, 50, 2_000, 2));
    Ok(builder)
}

/// A command client. Call `init().await` (done by [`connect`]) before use.
pub async fn connect(url: &str) -> Result<Client, Error> {
    let client = builder(url)?.build()?;
    client.init().await?;
    Ok(client)
}

/// A pub/sub client. It reconnects by itself but does **not** re-subscribe: the
/// caller listens to `reconnect_rx()` and subscribes again, because only it can
/// tell when every channel is back (the gateway's hub then re-checks what a
/// reconnect may have made it miss). fred's `manage_subscriptions` would
/// re-subscribe in a task of its own, with no way to know when it is done.
pub async fn connect_subscriber(url: &str) -> Result<SubscriberClient, Error> {
    let client = builder(url)?.build_subscriber_client()?;
    client.init().await?;
    Ok(client)
}
