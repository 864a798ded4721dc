//! The bus in a cluster: Redis, shared by every gateway and worker.
//!
//! Thin on purpose: the ingest script and its batching (`chatter_shared::ingest`)
//! and presence (`chatter_shared::presence`) live beside the worker's side of the
//! same keys; this file holds the handles and the few single commands.

use chatter_shared::ingest::{
    AppendLimits, AppendOutcome, Appender, Ending, NewMessage, RecentLog, RecentScript,
};
use chatter_shared::keyspace::{self, Keyspace};
use chatter_shared::presence::GatewayPresence;
use fred::prelude::*;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The Redis side of [`super::Bus`]: each method is the `Bus` method of the
/// same name.
#[derive(Clone)]
pub struct RedisBus {
    client: Client,
    keyspace: Keyspace,
    appender: Appender,
    recent: RecentScript,
    presence: GatewayPresence,
}

impl RedisBus {
    /// Starts the appender's batching task, which stops with `stop`, on
    /// `appends`: a connection of its own (its `WAIT`s hold it; see `ingest.rs`).
    pub fn start(
        client: Client,
        appends: Client,
        keyspace: Keyspace,
        limits: AppendLimits,
        stop: CancellationToken,
    ) -> RedisBus {
        RedisBus {
            appender: Appender::start(appends, keyspace, limits, stop),
            presence: GatewayPresence::new(client.clone(), keyspace),
            client,
            keyspace,
            recent: RecentScript::new(keyspace),
        }
    }

    pub async fn append(
        &self,
        message: &NewMessage<'_>,
        floor: Option<i64>,
    ) -> Result<AppendOutcome, Error> {
        self.appender.append(message, floor).await
    }

    pub async fn seed_room(&self, room_id: Uuid) -> Result<(), Error> {
        self.client
            .set(
                self.keyspace.room_seq(room_id),
                0,
                None,
                Some(SetOptions::NX),
                false,
            )
            .await
    }

    pub async fn end_room(&self, room_id: Uuid, ending: Ending) -> Result<(), Error> {
        self.client
            .set(
                self.keyspace.room_ended(room_id),
                ending.as_str(),
                None,
                None,
                false,
            )
            .await
    }

    /// On Redis Cluster, room and user channels are shard channels (see
    /// `keyspace.rs`): `SPUBLISH` reaches only the node owning the slot.
    pub async fn publish(&self, channel: &str, frame: String) -> Result<(), Error> {
        let wire = self.keyspace.wire(channel);
        let name = wire.name.into_owned();
        if wire.sharded {
            self.client.spublish(name, frame).await
        } else {
            self.client.publish(name, frame).await
        }
    }

    pub async fn put_ticket(
        &self,
        token: &str,
        identity: String,
        ttl_secs: u64,
    ) -> Result<(), Error> {
        self.client
            .set(
                keyspace::ticket(token),
                identity,
                Some(Expiration::EX(ttl_secs as i64)),
                Some(SetOptions::NX),
                false,
            )
            .await
    }

    pub async fn take_ticket(&self, token: &str) -> Result<Option<String>, Error> {
        self.client.getdel(keyspace::ticket(token)).await
    }

    pub async fn recent(
        &self,
        room_id: Uuid,
        after_seq: i64,
        limit: u64,
    ) -> Result<RecentLog, Error> {
        self.recent
            .read(&self.client, room_id, after_seq, limit)
            .await
    }

    pub async fn latest_seq(&self, room_id: Uuid) -> Result<Option<i64>, Error> {
        self.client.get(self.keyspace.room_seq(room_id)).await
    }

    pub async fn rewrite_recent(
        &self,
        room_id: Uuid,
        seq: i64,
        frame: String,
    ) -> Result<(), Error> {
        self.recent.rewrite(&self.client, room_id, seq, frame).await
    }

    pub async fn presence_up(&self, users: &[String]) -> Result<(), Error> {
        self.presence.up(users).await.map(drop)
    }

    pub async fn presence_down(&self, users: &[String]) -> Result<Vec<bool>, Error> {
        self.presence.down(users).await
    }

    pub async fn presence_of(
        &self,
        users: &[String],
    ) -> Result<Vec<(bool, Option<String>)>, Error> {
        self.presence.of(users).await
    }

    pub async fn presence_heartbeat(&self, ttl: Duration) -> Result<bool, Error> {
        self.presence.heartbeat(ttl).await
    }

    pub async fn reap_dead_gateways(&self) -> Result<Vec<String>, Error> {
        self.presence.reap_dead_gateways().await
    }

    pub async fn presence_leave(&self) -> Result<(), Error> {
        self.presence.leave().await
    }

    pub async fn ping(&self) -> Result<(), Error> {
        self.client.ping::<String>(None).await.map(drop)
    }
}
