//! Reading a consumer group's new entries from one stream or from many.
//!
//! On one Redis each of the worker's streams (ingest, outbox, events) is a
//! single key, read with a blocking `XREADGROUP` on a connection of its own. On
//! Redis Cluster there is one per shard (`keyspace.rs`), and `XREADGROUP` may
//! not span hash slots; a blocking read per shard would hold a connection per
//! shard. So the shards are *polled*: one non-blocking `XREADGROUP` per stream,
//! all sent at once (fred pipelines them per node), and after a round that
//! found nothing the next waits, from [`POLL_MIN`] doubling up to
//! [`POLL_MAX`] — an idle worker costs each master a few commands per shard
//! per second, and a busy one never waits.

use fred::prelude::*;
use fred::types::{FromKey, Key};
use std::collections::HashMap;
use std::hash::Hash;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The wait after the first round that found nothing.
pub const POLL_MIN: Duration = Duration::from_millis(5);
/// The longest wait between two rounds of an idle worker: how late a
/// message's persistence can start.
pub const POLL_MAX: Duration = Duration::from_millis(250);

/// Entries of one stream: `(entry id, fields)`.
pub type Entries<K, V> = Vec<(String, HashMap<K, V>)>;

/// A consumer of one group on a set of streams (see the module doc).
pub struct GroupStreams {
    pub streams: Vec<String>,
    pub group: &'static str,
    pub consumer: String,
    /// `BLOCK` of the read when there is one stream.
    pub block_ms: u64,
    idle: Duration,
}

/// What one round read: entries per stream (by index in `streams`), and the
/// streams that could not be read (the others' entries are still handed on:
/// they are this consumer's now).
pub struct Round<K, V> {
    pub entries: Vec<(usize, Entries<K, V>)>,
    pub failed: Vec<(usize, Error)>,
}

impl GroupStreams {
    pub fn new(
        streams: Vec<String>,
        group: &'static str,
        consumer: String,
        block_ms: u64,
    ) -> GroupStreams {
        GroupStreams {
            streams,
            group,
            consumer,
            block_ms,
            idle: Duration::ZERO,
        }
    }

    /// Reads up to `count` new entries per stream: blocking on `reader` (a
    /// connection of its own) for one stream, one polling round on `commands`
    /// for several, after the idle wait the last empty round set. Returns
    /// early, empty, on `shutdown`.
    pub async fn read<K, V>(
        &mut self,
        reader: &Client,
        commands: &Client,
        count: u64,
        shutdown: &CancellationToken,
    ) -> Round<K, V>
    where
        K: FromKey + Hash + Eq,
        V: FromValue,
    {
        let mut round = Round {
            entries: Vec::new(),
            failed: Vec::new(),
        };
        if let [stream] = self.streams.as_slice() {
            let block = Some(self.block_ms);
            match self.read_one::<K, V>(reader, stream, count, block).await {
                Ok(entries) if entries.is_empty() => {}
                Ok(entries) => round.entries.push((0, entries)),
                Err(error) => round.failed.push((0, error)),
            }
            return round;
        }
        if !self.idle.is_zero() {
            tokio::select! {
                () = shutdown.cancelled() => return round,
                () = tokio::time::sleep(self.idle) => {}
            }
        }
        let reads = self
            .streams
            .iter()
            .map(|stream| self.read_one::<K, V>(commands, stream, count, None));
        for (index, read) in futures::future::join_all(reads)
            .await
            .into_iter()
            .enumerate()
        {
            match read {
                Ok(entries) if entries.is_empty() => {}
                Ok(entries) => round.entries.push((index, entries)),
                Err(error) => round.failed.push((index, error)),
            }
        }
        self.idle = if round.entries.is_empty() {
            (self.idle * 2).clamp(POLL_MIN, POLL_MAX)
        } else {
            Duration::ZERO
        };
        round
    }

    async fn read_one<K, V>(
        &self,
        client: &Client,
        stream: &str,
        count: u64,
        block: Option<u64>,
    ) -> Result<Entries<K, V>, Error>
    where
        K: FromKey + Hash + Eq,
        V: FromValue,
    {
        let reply: Value = client
            .xreadgroup(
                self.group,
                self.consumer.as_str(),
                Some(count),
                block,
                false,
                stream,
                ">",
            )
            .await?;
        if reply.is_null() {
            return Ok(Vec::new());
        }
        let mut streams = reply.into_xread_response::<Key, String, K, V>()?;
        Ok(streams.remove(&Key::from(stream)).unwrap_or_default())
    }
}

/// Creates `group` on each of `streams` (and the streams) if missing; "0": a
/// group created after entries were added still reads them all.
pub async fn ensure_group(redis: &Client, streams: &[String], group: &str) -> anyhow::Result<()> {
    for stream in streams {
        let created: Result<(), Error> = redis.xgroup_create(stream, group, "0", true).await;
        if let Err(error) = created
            && !error.details().contains("BUSYGROUP")
        {
            anyhow::bail!("cannot create the consumer group {group} of {stream}: {error}");
        }
    }
    Ok(())
}
