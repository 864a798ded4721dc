//! Reading the ingest stream and writing it to Postgres.
//!
//! On Redis Cluster there is one ingest stream per shard (`keyspace.rs`):
//! every worker reads every shard through the one consumer group (polled, see
//! `streams.rs`), so adding a worker adds a consumer on every shard without
//! touching the others, and a dead worker's pending entries are reclaimed shard
//! by shard. Leasing shards to workers was not chosen: it would need a lease
//! protocol and a rebalance on every scale-up, where the group already spreads
//! entries over whoever reads.

use crate::batch::{Batches, RETRY_MIN, sleep_or_cancel};
use crate::outbox::Outbox;
use crate::streams::{self, GroupStreams, RawEntry};
use chatter_shared::config::Config;
use chatter_shared::ingest::IngestEntry;
use chatter_shared::keyspace::{INGEST_GROUP, Shard};
use chatter_shared::telemetry::metric;
use fred::bytes::Bytes;
use fred::prelude::*;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub struct Persister {
    batches: Batches,
    outbox: Outbox,
    redis: Client,
    reader: Client,
    /// Every shard of the keyspace (one on a single Redis).
    shards: Vec<Shard>,
    consumer: String,
    batch_size: u64,
    block_ms: u64,
    claim_idle_ms: u64,
    claim_every: Duration,
}

impl Persister {
    /// Prepares the consumer group (creating the stream if needed).
    pub async fn new(
        config: &Config,
        batches: Batches,
        redis: Client,
        reader: Client,
    ) -> anyhow::Result<Persister> {
        let shards = config.keyspace().shards();
        let streams: Vec<String> = shards.iter().map(|shard| shard.ingest()).collect();
        streams::ensure_group(&redis, &streams, INGEST_GROUP).await?;
        let consumer = config.worker_name.clone().unwrap_or_else(|| {
            let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "worker".into());
            format!(
                "{host}-{}-{:08x}",
                std::process::id(),
                rand::random::<u32>()
            )
        });
        let outbox = Outbox::new(config.notification_coalesce_secs, batches.events.max_len());
        Ok(Persister {
            batches,
            outbox,
            redis,
            reader,
            shards,
            consumer,
            batch_size: config.worker_batch_size as u64,
            block_ms: config.worker_block_ms,
            claim_idle_ms: config.worker_claim_idle_ms,
            claim_every: Duration::from_millis(config.worker_claim_interval_ms.max(1)),
        })
    }

    pub fn consumer(&self) -> &str {
        &self.consumer
    }

    /// Reads, stores and acknowledges until `shutdown`, as a pipeline of three
    /// stages joined by queues of one batch: while batch N is written to
    /// Postgres, N+1 is read from Redis and N−1 acknowledged, so one worker's
    /// rate is set by its slowest stage (Postgres) rather than by the sum of the
    /// three round trips. At most five batches are in memory: one in each stage
    /// and one in each queue.
    ///
    /// A read in flight when the shutdown comes is not abandoned (Redis may
    /// already have handed its entries to this consumer): reading stops, and
    /// every batch read is still stored and acknowledged, retrying until
    /// `give_up`; only a batch still failing then is left pending for another
    /// worker.
    pub async fn run(&self, shutdown: &CancellationToken, give_up: &CancellationToken) {
        let (to_store, stored_from) = mpsc::channel(1);
        let (to_acknowledge, acknowledged_from) = mpsc::channel(1);
        tokio::join!(
            self.read(to_store, shutdown, give_up),
            self.store(stored_from, to_acknowledge, give_up),
            self.acknowledge(acknowledged_from, give_up),
        );
    }

    /// The first stage: reads batches (and reclaims those of dead consumers)
    /// until `shutdown`, dead-letters the entries that cannot be parsed, and
    /// hands the rest on. Dropping `to_store` at the end lets the next stages
    /// drain and stop.
    async fn read(
        &self,
        to_store: mpsc::Sender<Read>,
        shutdown: &CancellationToken,
        give_up: &CancellationToken,
    ) {
        let mut next_claim = Instant::now();
        let mut backoff = RETRY_MIN;
        let mut streams = GroupStreams::new(
            self.shards.iter().map(|shard| shard.ingest()).collect(),
            INGEST_GROUP,
            self.consumer.clone(),
            self.block_ms,
        );
        while !shutdown.is_cancelled() {
            if Instant::now() >= next_claim {
                for &shard in &self.shards {
                    if !self.reclaim(shard, &to_store, shutdown, give_up).await {
                        return;
                    }
                }
                next_claim = Instant::now() + self.claim_every;
            }
            let round = streams
                .read(
                    &self.reader,
                    &self.redis,
                    self.batch_size,
                    streams::raw,
                    shutdown,
                )
                .await;
            for (index, entries) in round.entries {
                if !self
                    .hand_on(self.shards[index], entries, false, &to_store)
                    .await
                {
                    return;
                }
            }
            if round.failed.is_empty() {
                backoff = RETRY_MIN;
                continue;
            }
            for (index, error) in &round.failed {
                metrics::counter!(metric::REDIS_ERRORS).increment(1);
                if error.details().contains("NOGROUP") {
                    // Redis lost its data (restart without persistence): recreate.
                    let stream = std::slice::from_ref(&streams.streams[*index]);
                    let _ = streams::ensure_group(&self.redis, stream, INGEST_GROUP).await;
                }
                tracing::warn!(%error, stream = %streams.streams[*index], "cannot read the ingest stream; retrying");
            }
            sleep_or_cancel(&mut backoff, shutdown).await;
        }
    }

    /// Takes over entries another consumer left pending too long (it died).
    /// False if the next stage is gone.
    async fn reclaim(
        &self,
        shard: Shard,
        to_store: &mpsc::Sender<Read>,
        shutdown: &CancellationToken,
        give_up: &CancellationToken,
    ) -> bool {
        let mut cursor = String::from("0-0");
        loop {
            // `[next cursor, entries, ids of entries deleted meanwhile]`.
            let claimed: Result<Vec<Value>, Error> = self
                .redis
                .xautoclaim(
                    shard.ingest(),
                    INGEST_GROUP,
                    self.consumer.as_str(),
                    self.claim_idle_ms,
                    cursor.as_str(),
                    Some(self.batch_size),
                    false,
                )
                .await;
            match claimed.and_then(claimed_entries) {
                Ok((next, entries)) => {
                    if !entries.is_empty() {
                        tracing::info!(
                            count = entries.len(),
                            "reclaimed pending entries of a dead consumer"
                        );
                        if !self.hand_on(shard, entries, true, to_store).await {
                            return false;
                        }
                    }
                    if next == "0-0" || shutdown.is_cancelled() || give_up.is_cancelled() {
                        return true;
                    }
                    cursor = next;
                }
                Err(error) => {
                    metrics::counter!(metric::REDIS_ERRORS).increment(1);
                    tracing::warn!(%error, "cannot reclaim pending entries");
                    return true;
                }
            }
        }
    }

    /// Parses the entries read, dead-letters those that cannot be stored, and
    /// queues the batch for Postgres. If a dead letter cannot be written, the
    /// whole batch is left pending (retried once Redis takes the dead letter).
    /// False if the next stage is gone.
    async fn hand_on(
        &self,
        shard: Shard,
        entries: Vec<RawEntry>,
        reclaimed: bool,
        to_store: &mpsc::Sender<Read>,
    ) -> bool {
        if entries.is_empty() {
            return true;
        }
        let mut ids = Vec::with_capacity(entries.len());
        let mut batch = Vec::with_capacity(entries.len());
        for raw in entries {
            match parse(&raw) {
                Ok(entry) => batch.push(entry),
                Err(problem) => {
                    let mut record: Vec<(Bytes, Bytes)> = raw.fields;
                    record.push(("stream_id".into(), raw.id.clone().into()));
                    if !self.batches.dead_letters.ingest(record, &problem).await {
                        return true;
                    }
                }
            }
            ids.push(raw.id);
        }
        let read = Read {
            shard,
            ids,
            batch,
            reclaimed,
        };
        to_store.send(read).await.is_ok()
    }

    /// The second stage: stores each batch (see [`Batches::store`]) and hands
    /// the stored ones on. A batch out of time at `give_up` is dropped here,
    /// left pending for the next worker.
    async fn store(
        &self,
        mut from: mpsc::Receiver<Read>,
        to_acknowledge: mpsc::Sender<StoredBatch>,
        give_up: &CancellationToken,
    ) {
        while let Some(read) = from.recv().await {
            let Some(stored) = self.batches.store(&read.batch, give_up).await else {
                continue;
            };
            if to_acknowledge
                .send(StoredBatch { read, stored })
                .await
                .is_err()
            {
                return;
            }
        }
    }

    /// The last stage: writes each stored batch's notifications and events to
    /// the outbox while acknowledging it (one atomic call), retrying until
    /// `give_up`.
    ///
    /// Fresh entries notify for the messages stored now: one already stored
    /// came in again as a new entry (an operator's replay), and its first entry
    /// wrote its notifications with its acknowledgement. `reclaimed` entries
    /// notify for every stored message: their holder may have died after
    /// storing them and before that call — at least once, not at most once.
    async fn acknowledge(
        &self,
        mut from: mpsc::Receiver<StoredBatch>,
        give_up: &CancellationToken,
    ) {
        while let Some(StoredBatch { read, stored }) = from.recv().await {
            let notify = if read.reclaimed {
                &stored.persisted
            } else {
                &stored.inserted
            };
            let followups = self.batches.followups(&read.batch, notify).await;
            self.commit(read.shard, &read.ids, &followups, give_up)
                .await;
            tracing::debug!(
                read = read.ids.len(),
                stored = stored.inserted.len(),
                notifications = followups.notifications.len(),
                "batch persisted"
            );
        }
    }

    /// Writes the follow-ups and acknowledges in one script call, which also
    /// trims the stream of what is stored (see `outbox.rs`).
    async fn commit(
        &self,
        shard: Shard,
        ids: &[String],
        followups: &crate::outbox::Followups,
        give_up: &CancellationToken,
    ) {
        let mut backoff = RETRY_MIN;
        loop {
            // The script acknowledges, then trims the stream below its oldest
            // entry still pending: were it ever cut between the two, the next
            // commit trims what this one left.
            match self.outbox.commit(&self.redis, shard, ids, followups).await {
                Ok(()) => return,
                Err(error) => {
                    metrics::counter!(metric::REDIS_ERRORS).increment(1);
                    // Not acknowledging is safe (a replay is skipped and
                    // notifies again, at least once), just wasteful.
                    tracing::warn!(%error, "cannot acknowledge a stored batch; retrying");
                    if !sleep_or_cancel(&mut backoff, give_up).await {
                        return;
                    }
                }
            }
        }
    }
}

/// A batch read from the stream, on its way to Postgres: the stream ids of all
/// its entries (dead-lettered ones included: they are acknowledged with it)
/// and the entries to store.
struct Read {
    /// The shard whose stream it came from: it is acknowledged there.
    shard: Shard,
    ids: Vec<String>,
    batch: Vec<IngestEntry>,
    reclaimed: bool,
}

/// A batch stored, on its way to its acknowledgement.
struct StoredBatch {
    read: Read,
    stored: crate::batch::Stored,
}

/// The `XAUTOCLAIM` reply's next cursor and entries.
fn claimed_entries(reply: Vec<Value>) -> Result<(String, Vec<RawEntry>), Error> {
    let mut parts = reply.into_iter();
    match (parts.next().and_then(Value::into_string), parts.next()) {
        (Some(next), Some(entries)) => Ok((next, streams::raw_entries(entries)?)),
        _ => Err(Error::new(
            ErrorKind::Parse,
            "an XAUTOCLAIM reply without a cursor or entries",
        )),
    }
}

/// The message in a raw entry; `Err` names the field that is missing, not
/// UTF-8 or not of its type. The fields are read as bytes: read as text, a
/// single field that is not UTF-8 (only something with direct access to Redis
/// could write one) would make the whole reply unreadable, and every entry in
/// it would stay pending for ever; as bytes, that one entry is dead-lettered
/// and the rest go on.
fn parse(raw: &RawEntry) -> Result<IngestEntry, String> {
    IngestEntry::from_fields(|name| match raw.field(name) {
        None => Ok(None),
        Some(value) => std::str::from_utf8(value)
            .map(Some)
            .map_err(|_| format!("field {name} is not UTF-8")),
    })
}
