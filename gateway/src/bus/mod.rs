//! The message bus: Redis in a cluster, an in-process stand-in in the embedded mode.
//!
//! Everything the gateway asks of Redis goes through [`Bus`]: accepting a message
//! (sequence, dedupe, durable hand-off to the worker, fan-out), single-use
//! tickets, publishing events, presence, and the readiness ping. This module
//! only dispatches: `redis.rs` talks to Redis (its scripts live in
//! `chatter_shared`), `local.rs` keeps the same semantics with a mutex and maps,
//! so clients cannot tell the two apart.

mod local;
mod redis;

pub use local::LocalBus;

use chatter_shared::ingest::{AppendLimits, AppendOutcome, Ending, NewMessage, RecentLog};
use chatter_shared::keyspace::Keyspace;
use fred::prelude::{Client, Error};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
#[error("the message bus is unavailable: {0}")]
pub struct BusError(String);

impl From<Error> for BusError {
    fn from(error: Error) -> BusError {
        BusError(error.to_string())
    }
}

// One `Bus` per process, cloned a handful of times: the variants' size
// difference costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Clone)]
pub enum Bus {
    Redis(redis::RedisBus),
    Local(Arc<LocalBus>),
}

impl Bus {
    /// The Redis bus; its appender's batching task stops with `stop`.
    pub fn redis(
        client: Client,
        appends: Client,
        keyspace: Keyspace,
        limits: AppendLimits,
        stop: CancellationToken,
    ) -> Bus {
        Bus::Redis(redis::RedisBus::start(
            client, appends, keyspace, limits, stop,
        ))
    }

    /// Accepts a message; see `chatter_shared::ingest` for the Redis script.
    pub async fn append(
        &self,
        message: &NewMessage<'_>,
        floor: Option<i64>,
    ) -> Result<AppendOutcome, BusError> {
        match self {
            Bus::Redis(redis) => Ok(redis.append(message, floor).await?),
            Bus::Local(local) => local.append(message, floor),
        }
    }

    /// Starts a new room's counter at 0, so its first message needs no floor read.
    pub async fn seed_room(&self, room_id: Uuid) -> Result<(), BusError> {
        match self {
            Bus::Redis(redis) => Ok(redis.seed_room(room_id).await?),
            Bus::Local(local) => {
                local.seed_room(room_id);
                Ok(())
            }
        }
    }

    /// Marks a support chat as ended: from now on the bus refuses its messages
    /// ([`AppendOutcome::Ended`]). The database holds the same fact; a bus that
    /// lost the marker learns it again on the room's next cold start.
    pub async fn end_room(&self, room_id: Uuid, ending: Ending) -> Result<(), BusError> {
        match self {
            Bus::Redis(redis) => Ok(redis.end_room(room_id, ending).await?),
            Bus::Local(local) => {
                local.end_room(room_id, ending);
                Ok(())
            }
        }
    }

    /// Sends `frame` to every gateway's subscribers of `channel`.
    pub async fn publish(&self, channel: &str, frame: String) -> Result<(), BusError> {
        match self {
            Bus::Redis(redis) => Ok(redis.publish(channel, frame).await?),
            Bus::Local(local) => {
                local.publish(channel, frame);
                Ok(())
            }
        }
    }

    /// Stores a ticket for `ttl_secs` (first writer wins).
    pub async fn put_ticket(
        &self,
        token: &str,
        identity: String,
        ttl_secs: u64,
    ) -> Result<(), BusError> {
        match self {
            Bus::Redis(redis) => Ok(redis.put_ticket(token, identity, ttl_secs).await?),
            Bus::Local(local) => {
                local.put_ticket(token, identity, ttl_secs);
                Ok(())
            }
        }
    }

    /// Removes and returns a live ticket: each works exactly once.
    pub async fn take_ticket(&self, token: &str) -> Result<Option<String>, BusError> {
        match self {
            Bus::Redis(redis) => Ok(redis.take_ticket(token).await?),
            Bus::Local(local) => Ok(local.take_ticket(token)),
        }
    }

    /// The room's last seq and at most `limit` of its logged frames after
    /// `after_seq`, for `Resume`.
    pub async fn recent(
        &self,
        room_id: Uuid,
        after_seq: i64,
        limit: u64,
    ) -> Result<RecentLog, BusError> {
        match self {
            Bus::Redis(redis) => Ok(redis.recent(room_id, after_seq, limit).await?),
            Bus::Local(local) => Ok(local.recent(room_id, after_seq, limit)),
        }
    }

    /// The room's last assigned seq; `None` when the counter is gone (then the
    /// database's highest stored seq is the answer).
    pub async fn latest_seq(&self, room_id: Uuid) -> Result<Option<i64>, BusError> {
        match self {
            Bus::Redis(redis) => Ok(redis.latest_seq(room_id).await?),
            Bus::Local(local) => Ok(local.latest_seq(room_id)),
        }
    }

    /// Replaces message `seq`'s frame in the room's recent log (after an edit or
    /// a deletion), so `Resume` replays the message as it now is.
    pub async fn rewrite_recent(
        &self,
        room_id: Uuid,
        seq: i64,
        frame: String,
    ) -> Result<(), BusError> {
        match self {
            Bus::Redis(redis) => Ok(redis.rewrite_recent(room_id, seq, frame).await?),
            Bus::Local(local) => {
                local.rewrite_recent(room_id, seq, frame);
                Ok(())
            }
        }
    }

    /// The first connection of each of `users` on this gateway: register
    /// them (and tell presence subscribers of those who just came online).
    pub async fn presence_up(&self, users: &[String]) -> Result<(), BusError> {
        match self {
            Bus::Redis(redis) => Ok(redis.presence_up(users).await?),
            Bus::Local(local) => {
                local.presence_up(users);
                Ok(())
            }
        }
    }

    /// The last connection of each of `users` on this gateway is gone; for
    /// each, in order, true if that took them offline in the whole cluster
    /// (decided once, by the script).
    pub async fn presence_down(&self, users: &[String]) -> Result<Vec<bool>, BusError> {
        match self {
            Bus::Redis(redis) => Ok(redis.presence_down(users).await?),
            Bus::Local(local) => Ok(local.presence_down(users)),
        }
    }

    /// Whether each of `users` is online anywhere, and when each was last seen.
    pub async fn presence_of(
        &self,
        users: &[String],
    ) -> Result<Vec<(bool, Option<String>)>, BusError> {
        match self {
            Bus::Redis(redis) => Ok(redis.presence_of(users).await?),
            Bus::Local(local) => Ok(local.presence_of(users)),
        }
    }

    /// Refreshes this gateway's liveness entry; true if it was missing (first
    /// beat, Redis lost its data, or the gateway was reaped after a stall), in
    /// which case its users must be registered again. The embedded mode is
    /// one gateway: nothing to beat, reap or leave.
    pub async fn presence_heartbeat(&self, ttl: Duration) -> Result<bool, BusError> {
        match self {
            Bus::Redis(redis) => Ok(redis.presence_heartbeat(ttl).await?),
            Bus::Local(_) => Ok(false),
        }
    }

    /// Takes the users of gateways that stopped beating offline; the users who
    /// went offline (each reaped by exactly one gateway).
    pub async fn reap_dead_gateways(&self) -> Result<Vec<String>, BusError> {
        match self {
            Bus::Redis(redis) => Ok(redis.reap_dead_gateways().await?),
            Bus::Local(_) => Ok(Vec::new()),
        }
    }

    /// Leaves the cluster's presence on a clean stop.
    pub async fn presence_leave(&self) -> Result<(), BusError> {
        match self {
            Bus::Redis(redis) => Ok(redis.presence_leave().await?),
            Bus::Local(_) => Ok(()),
        }
    }

    /// Readiness: does the bus answer?
    pub async fn ping(&self) -> Result<(), BusError> {
        match self {
            Bus::Redis(redis) => Ok(redis.ping().await?),
            Bus::Local(_) => Ok(()),
        }
    }
}
