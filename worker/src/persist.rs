//! Reading the ingest stream and writing it to Postgres.

use crate::batch::{Batches, RETRY_MIN, sleep_or_cancel};
use crate::outbox::Outbox;
use chatter_shared::config::Config;
use chatter_shared::ingest::IngestEntry;
use chatter_shared::keyspace::{INGEST_GROUP, INGEST_STREAM};
use chatter_shared::telemetry::metric;
use fred::bytes::Bytes;
use fred::prelude::*;
use fred::types::Key;
use std::collections::HashMap;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// An entry's fields as Redis holds them: bytes. Read as text, a single field
/// that is not UTF-8 (only something with direct access to Redis could write
/// one) would make the whole reply unreadable, and every entry in it would stay
/// pending for ever; as bytes, that one entry is dead-lettered and the rest go on.
type Fields = HashMap<Key, Bytes>;

pub struct Persister {
    batches: Batches,
    outbox: Outbox,
    redis: Client,
    reader: Client,
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
        // "0": a group created after gateways already appended still reads it all.
        let created: Result<(), Error> = redis
            .xgroup_create(INGEST_STREAM, INGEST_GROUP, "0", true)
            .await;
        if let Err(error) = created
            && !error.details().contains("BUSYGROUP")
        {
            return Err(anyhow::anyhow!("cannot create the consumer group: {error}"));
        }
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

    /// Reads, stores and acknowledges until `shutdown`. A read in flight when the
    /// shutdown comes is not abandoned (Redis may already have handed its entries
    /// to this consumer): its batch is stored and acknowledged, retrying until
    /// `give_up`, and only a batch still failing then is left pending for another
    /// worker.
    pub async fn run(&self, shutdown: &CancellationToken, give_up: &CancellationToken) {
        let mut next_claim = Instant::now();
        let mut backoff = RETRY_MIN;
        while !shutdown.is_cancelled() {
            if Instant::now() >= next_claim {
                self.reclaim(shutdown, give_up).await;
                next_claim = Instant::now() + self.claim_every;
            }
            let read: Result<Value, Error> = self
                .reader
                .xreadgroup(
                    INGEST_GROUP,
                    self.consumer.as_str(),
                    Some(self.batch_size),
                    Some(self.block_ms),
                    false,
                    INGEST_STREAM,
                    ">",
                )
                .await;
            match read {
                Ok(Value::Null) => backoff = RETRY_MIN, // BLOCK timed out: nothing new
                Ok(reply) => {
                    backoff = RETRY_MIN;
                    match reply.into_xread_response::<String, String, Key, Bytes>() {
                        Ok(mut streams) => {
                            let entries = streams.remove(INGEST_STREAM).unwrap_or_default();
                            self.handle(entries, false, give_up).await;
                        }
                        Err(error) => tracing::error!(%error, "unreadable XREADGROUP reply"),
                    }
                }
                Err(error) => {
                    metrics::counter!(metric::REDIS_ERRORS).increment(1);
                    if error.details().contains("NOGROUP") {
                        // Redis lost its data (restart without persistence): recreate.
                        let _: Result<(), Error> = self
                            .redis
                            .xgroup_create(INGEST_STREAM, INGEST_GROUP, "0", true)
                            .await;
                    }
                    tracing::warn!(%error, "cannot read the ingest stream; retrying");
                    sleep_or_cancel(&mut backoff, shutdown).await;
                }
            }
        }
    }

    /// Takes over entries another consumer left pending too long (it died).
    async fn reclaim(&self, shutdown: &CancellationToken, give_up: &CancellationToken) {
        let mut cursor = String::from("0-0");
        loop {
            let claimed: Result<(String, Vec<(String, Fields)>), Error> = self
                .redis
                .xautoclaim_values(
                    INGEST_STREAM,
                    INGEST_GROUP,
                    self.consumer.as_str(),
                    self.claim_idle_ms,
                    cursor.as_str(),
                    Some(self.batch_size),
                    false,
                )
                .await;
            match claimed {
                Ok((next, entries)) => {
                    if !entries.is_empty() {
                        tracing::info!(
                            count = entries.len(),
                            "reclaimed pending entries of a dead consumer"
                        );
                        self.handle(entries, true, give_up).await;
                    }
                    if next == "0-0" || shutdown.is_cancelled() {
                        return;
                    }
                    cursor = next;
                }
                Err(error) => {
                    metrics::counter!(metric::REDIS_ERRORS).increment(1);
                    tracing::warn!(%error, "cannot reclaim pending entries");
                    return;
                }
            }
        }
    }

    /// Stores a batch, then writes its notifications and events to the outbox
    /// while acknowledging it (one atomic call). Retries stop at `give_up`,
    /// leaving the batch pending.
    ///
    /// Fresh entries notify for the messages stored now: one already stored
    /// came in again as a new entry (an operator's replay), and its first entry
    /// wrote its notifications with its acknowledgement. `reclaimed` entries
    /// notify for every stored message: their holder may have died after
    /// storing them and before that call — at least once, not at most once.
    async fn handle(
        &self,
        entries: Vec<(String, Fields)>,
        reclaimed: bool,
        give_up: &CancellationToken,
    ) {
        if entries.is_empty() {
            return;
        }
        let mut ids = Vec::with_capacity(entries.len());
        let mut batch = Vec::with_capacity(entries.len());
        for (stream_id, fields) in entries {
            match as_text(&fields).and_then(|text| IngestEntry::from_fields(&text)) {
                Ok(entry) => batch.push(entry),
                Err(problem) => {
                    let mut record: Vec<(Bytes, Bytes)> = fields
                        .into_iter()
                        .map(|(name, value)| (name.into_bytes(), value))
                        .collect();
                    record.push(("stream_id".into(), stream_id.clone().into()));
                    if !self.batches.dead_letters.ingest(record, &problem).await {
                        return; // left pending: retried once Redis takes the dead letter
                    }
                }
            }
            ids.push(stream_id);
        }
        let Some(stored) = self.batches.store(&batch, give_up).await else {
            return; // out of time while draining: left pending for the next worker
        };
        let notify = if reclaimed {
            &stored.persisted
        } else {
            &stored.inserted
        };
        let followups = self.batches.followups(&batch, notify).await;
        self.acknowledge(&ids, &followups, give_up).await;
        tracing::debug!(
            read = ids.len(),
            stored = stored.inserted.len(),
            notifications = followups.notifications.len(),
            "batch persisted"
        );
    }

    /// Writes the follow-ups and acknowledges in one script call (XDEL then
    /// XACK: the stream only holds what is not yet stored; see `outbox.rs`).
    async fn acknowledge(
        &self,
        ids: &[String],
        followups: &crate::outbox::Followups,
        give_up: &CancellationToken,
    ) {
        let mut backoff = RETRY_MIN;
        loop {
            // The script runs XDEL before XACK: were it ever cut between the two,
            // a pending id whose entry is gone is dropped by the next XAUTOCLAIM,
            // where the other order would leave an acknowledged entry in the
            // stream that nothing ever deletes.
            match self.outbox.commit(&self.redis, ids, followups).await {
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

/// The fields as text; `Err` names the first one that is not UTF-8.
fn as_text(fields: &Fields) -> Result<HashMap<String, String>, String> {
    fields
        .iter()
        .map(|(name, value)| {
            let name = name
                .as_str()
                .ok_or_else(|| "a field name is not UTF-8".to_owned())?;
            let value =
                std::str::from_utf8(value).map_err(|_| format!("field {name} is not UTF-8"))?;
            Ok((name.to_owned(), value.to_owned()))
        })
        .collect()
}
