//! Redis connections, configured the same way in both binaries.
//!
//! fred reconnects by itself with backoff; every command carries a timeout so
//! that, while Redis is away, callers get an error they can report (a send is
//! answered `confirmed: false`) instead of waiting forever.

use fred::clients::SubscriberClient;
use fred::prelude::*;
use std::collections::HashMap;
use std::time::Duration;

/// How long one command may take, including time spent waiting for a reconnect.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(3);

/// Depth of each of a command client's broadcast channels. fred gives every
/// client nine (errors, pub/sub, keyspace events, reconnects, …), all of one
/// capacity and each allocated whole at start; nothing reads a command
/// client's, so they stay at fred's default.
const COMMAND_CLIENT_BROADCAST: usize = 32;

/// How deep a pub/sub client's message stream is: frames the reader may be
/// behind by before it loses some (`RecvError::Lagged`, which its reader
/// must repair). It sizes all nine of the client's broadcast channels, so
/// memory grows with it: about 0.75 KiB per slot over the nine (measured with
/// fred 10.1: 64 Ki slots on each of a gateway's three clients were 138 of
/// the 161 MiB it held with no socket).
#[derive(Debug, Clone, Copy)]
pub struct StreamDepth(pub usize);

impl StreamDepth {
    /// A gateway's room and user frames. The dispatcher moves them into a
    /// backlog of its own between any two frames it routes
    /// (`gateway/src/hub/dispatch.rs`), so this ring holds only what arrives
    /// while one frame is routed or the dispatcher waits to be scheduled:
    /// 4 Ki slots, about 3 MiB. (At 64 Ki, before that backlog, it was about
    /// 46 MiB, most of a gateway's memory at start; at 8 or 16 Ki the
    /// 15,000-event burst of `tests/tests/membership.rs` overflowed it.)
    pub const FAN_OUT: StreamDepth = StreamDepth(4 * 1024);
    /// A trickle of notices, reloaded whole when one is missed.
    pub const NOTICES: StreamDepth = StreamDepth(64);
}

fn builder(url: &str, broadcast: usize) -> Result<Builder, Error> {
    let config = Config::from_url(url)?;
    let mut builder = Builder::from_config(config);
    builder
        .with_performance_config(|perf| {
            perf.default_command_timeout = COMMAND_TIMEOUT;
            perf.broadcast_channel_capacity = broadcast;
        })
        .with_connection_config(|conn| {
            conn.connection_timeout = Duration::from_secs(2);
            conn.internal_command_timeout = Duration::from_secs(2);
            // fred leaves Nagle's algorithm on: a command written while the
            // previous one is unacknowledged (the appender keeps several batches
            // in flight) would wait for that ACK, up to the peer's 40 ms delayed ACK.
            conn.tcp.nodelay = Some(true);
        })
        // Retry forever, 50 ms doubling up to 2 s: Redis outages end, pods should not.
        .set_policy(ReconnectPolicy::new_exponential(0, 50, 2_000, 2));
    Ok(builder)
}

/// A command client. Call `init().await` (done by [`connect`]) before use.
pub async fn connect(url: &str) -> Result<Client, Error> {
    let client = builder(url, COMMAND_CLIENT_BROADCAST)?.build()?;
    client.init().await?;
    Ok(client)
}

/// A pub/sub client whose message stream holds `depth` frames. It reconnects
/// by itself but does **not** re-subscribe: the caller listens to
/// `reconnect_rx()` and subscribes again, because only it can tell when every
/// channel is back (the gateway's hub then re-checks what a reconnect may have
/// made it miss). fred's `manage_subscriptions` would re-subscribe in a task
/// of its own, with no way to know when it is done.
pub async fn connect_subscriber(url: &str, depth: StreamDepth) -> Result<SubscriberClient, Error> {
    let client = builder(url, depth.0)?.build_subscriber_client()?;
    client.init().await?;
    Ok(client)
}

/// How much of what Redis acknowledged survives a Redis restart and memory
/// pressure. An accepted message is "confirmed" once Redis holds it in the
/// ingest stream; without an append-only file a Redis restart loses every
/// confirmed message the worker has not stored yet, and an evicting
/// `maxmemory-policy` may drop stream entries, counters or dedupe keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Durability {
    pub appendonly: String,
    pub appendfsync: String,
    pub maxmemory_policy: String,
}

impl Durability {
    /// Reads `appendonly`, `appendfsync` and `maxmemory-policy` with CONFIG GET.
    /// Managed Redis services may refuse CONFIG: that is an error for the caller
    /// to report, not a verdict.
    pub async fn read(client: &Client) -> Result<Durability, Error> {
        async fn get(client: &Client, name: &str) -> Result<String, Error> {
            let pairs: HashMap<String, String> = client.config_get(name).await?;
            pairs.get(name).cloned().ok_or_else(|| {
                Error::new(ErrorKind::Unknown, format!("CONFIG GET {name}: no value"))
            })
        }
        Ok(Durability {
            appendonly: get(client, "appendonly").await?,
            appendfsync: get(client, "appendfsync").await?,
            maxmemory_policy: get(client, "maxmemory-policy").await?,
        })
    }

    /// What makes this Redis lose acknowledged messages, one sentence per risk;
    /// empty when it keeps them.
    pub fn risks(&self) -> Vec<String> {
        let mut risks = Vec::new();
        if self.appendonly != "yes" {
            risks.push(
                "appendonly is not yes: a Redis restart loses every acknowledged message not yet stored by a worker"
                    .to_owned(),
            );
        } else if self.appendfsync == "no" {
            risks.push(
                "appendfsync is no: a machine crash can lose tens of seconds of acknowledged messages".to_owned(),
            );
        }
        if self.maxmemory_policy != "noeviction" {
            risks.push(format!(
                "maxmemory-policy is {}: under memory pressure Redis may evict acknowledged messages, \
                 sequence counters or dedupe keys (use noeviction)",
                self.maxmemory_policy
            ));
        }
        risks
    }
}

/// Start-up check both binaries run: warns about each durability risk, and with
/// `REDIS_REQUIRE_DURABLE=true` refuses to start. Returns the warnings, which
/// readiness repeats.
pub async fn check_durability(client: &Client, require: bool) -> anyhow::Result<Vec<String>> {
    let risks = match Durability::read(client).await {
        Ok(durability) => durability.risks(),
        Err(error) => vec![format!(
            "cannot read Redis's persistence settings ({error}); acknowledged messages may not survive a Redis restart"
        )],
    };
    if risks.is_empty() {
        return Ok(risks);
    }
    if require {
        anyhow::bail!(
            "Redis is not durable and REDIS_REQUIRE_DURABLE is set: {}",
            risks.join("; ")
        );
    }
    for risk in &risks {
        tracing::warn!(risk = %risk, "Redis is not durable: acknowledged messages can be lost");
    }
    Ok(risks)
}

#[cfg(test)]
mod tests {
    use super::Durability;

    fn durability(appendonly: &str, appendfsync: &str, policy: &str) -> Durability {
        Durability {
            appendonly: appendonly.into(),
            appendfsync: appendfsync.into(),
            maxmemory_policy: policy.into(),
        }
    }

    #[test]
    fn aof_with_noeviction_is_durable() {
        assert!(
            durability("yes", "everysec", "noeviction")
                .risks()
                .is_empty()
        );
        assert!(durability("yes", "always", "noeviction").risks().is_empty());
    }

    #[test]
    fn each_risk_is_named() {
        let risks = durability("no", "everysec", "allkeys-lru").risks();
        assert_eq!(risks.len(), 2, "{risks:?}");
        assert!(risks[0].contains("appendonly"));
        assert!(risks[1].contains("allkeys-lru"));
        assert_eq!(durability("yes", "no", "noeviction").risks().len(), 1);
        assert_eq!(
            durability("yes", "everysec", "volatile-ttl").risks().len(),
            1
        );
    }
}
