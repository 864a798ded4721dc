//! Delivering a durable stream's entries to an HTTP service at least once: the
//! notification outbox (`chatter:notify:outbox` → notif) and the webhook events
//! (`chatter:events` → `WEBHOOK_URL`).
//!
//! Like the ingest stream, each has a consumer group shared by every worker. An
//! entry is acknowledged (and deleted) only once it was delivered or
//! dead-lettered, so an entry in the hands of a worker that dies stays pending
//! and a live worker takes it over (`XAUTOCLAIM`) once it has been idle for
//! longer than a delivery can take. A worker that stops on SIGTERM leaves the
//! entries it has not finished to the same mechanism. Delivery is therefore at
//! least once: the receiver deduplicates by the id each call carries.
//!
//! At most `concurrency` entries are in flight per worker: reads ask for as many
//! entries as there are free slots, so little queues in memory. On Redis
//! Cluster a plan has one stream per shard (`keyspace.rs`), polled together
//! (`streams.rs`).

use crate::batch::{RETRY_MIN, sleep_or_cancel};
use crate::streams::{self, GroupStreams};
use chatter_shared::telemetry::metric;
use fred::prelude::*;
use fred::types::scripts::Script;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long in-flight deliveries may finish after shutdown before they are left
/// pending for another worker.
const FINISH_GRACE: Duration = Duration::from_secs(5);

/// `XDEL` then `XACK` in one round trip: were it ever cut between the two, a
/// pending id whose entry is gone is dropped by the next `XAUTOCLAIM`, where
/// the other order would leave an acknowledged entry nothing ever deletes.
const ACK_LUA: &str = r#"
-- KEYS: 1 stream. ARGV: 1 group, 2 entry id.
redis.call('XDEL', KEYS[1], ARGV[2])
return redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
"#;

/// One attempt at delivering an entry, and what its dead letter keeps.
pub trait Attempt: Send + Sync + 'static {
    /// `Err` says why the attempt failed; the entry is tried again.
    fn attempt(
        &self,
        fields: &HashMap<String, String>,
        attempt: u32,
    ) -> impl Future<Output = Result<(), String>> + Send;

    /// The fields of the dead letter (the consumer adds `problem` and `stream_id`).
    fn dead_letter(&self, fields: &HashMap<String, String>) -> Vec<(String, String)>;
}

/// Which streams, for whom, and how hard to try.
pub struct Plan {
    /// One on a single Redis; one per shard (and the gateways' own, for the
    /// events) on Redis Cluster.
    pub streams: Vec<String>,
    pub group: &'static str,
    pub dead_letter: &'static str,
    pub dead_letter_max_len: u64,
    /// Counter with an `outcome` label (`sent`, `dead_lettered`).
    pub metric: &'static str,
    pub consumer: String,
    pub concurrency: usize,
    pub retries: u32,
    pub backoff: Duration,
    /// Pending this long: the holder is dead. Must exceed a delivery's budget.
    pub claim_idle: Duration,
    pub claim_every: Duration,
    pub block_ms: u64,
}

struct Shared<A> {
    plan: Plan,
    target: A,
    redis: Client,
    ack: Script,
}

/// Reads and delivers until `shutdown`, then waits (bounded) for in-flight
/// deliveries. `reader` is a connection of its own for the blocking reads.
pub async fn run<A: Attempt>(
    plan: Plan,
    target: A,
    redis: Client,
    reader: Client,
    shutdown: CancellationToken,
) {
    let shared = Arc::new(Shared {
        plan,
        target,
        redis,
        ack: Script::from_lua(ACK_LUA),
    });
    let plan = &shared.plan;
    let slots = Arc::new(Semaphore::new(plan.concurrency.max(1)));
    let tracker = TaskTracker::new();
    let mut next_claim = Instant::now();
    let mut backoff = RETRY_MIN;
    let mut streams = GroupStreams::new(
        plan.streams.clone(),
        plan.group,
        plan.consumer.clone(),
        plan.block_ms,
    );
    while !shutdown.is_cancelled() {
        if slots.available_permits() == 0 {
            tokio::select! {
                () = shutdown.cancelled() => break,
                permit = slots.clone().acquire_owned() => drop(permit),
            }
            continue;
        }
        let free = slots.available_permits() as u64;
        let entries = if Instant::now() >= next_claim {
            next_claim = Instant::now() + plan.claim_every;
            let mut claimed = Vec::new();
            for index in 0..plan.streams.len() {
                claimed.push((index, reclaim(&shared, index, free).await));
            }
            claimed
        } else {
            // Free slots shared over the streams, at least one each.
            let count = free.div_ceil(plan.streams.len().max(1) as u64);
            let round = streams
                .read(&reader, &shared.redis, count, streams::maps, &shutdown)
                .await;
            for (index, error) in &round.failed {
                let stream = &plan.streams[*index];
                metrics::counter!(metric::REDIS_ERRORS).increment(1);
                if error.details().contains("NOGROUP") {
                    let _ = streams::ensure_group(
                        &shared.redis,
                        std::slice::from_ref(stream),
                        plan.group,
                    )
                    .await;
                }
                tracing::warn!(%error, %stream, "cannot read; retrying");
            }
            if round.failed.is_empty() {
                backoff = RETRY_MIN;
            } else if round.entries.is_empty() {
                sleep_or_cancel(&mut backoff, &shutdown).await;
                continue;
            }
            round.entries
        };
        for (index, entries) in entries {
            for (id, fields) in entries {
                let Ok(permit) = slots.clone().acquire_owned().await else {
                    break;
                };
                let (shared, shutdown) = (shared.clone(), shutdown.clone());
                tracker.spawn(async move {
                    deliver(&shared, index, id, fields, &shutdown).await;
                    drop(permit);
                });
            }
        }
    }
    tracker.close();
    let _ = tokio::time::timeout(FINISH_GRACE, tracker.wait()).await;
}

type Entries = streams::Entries<String, String>;

/// Entries of stream `index` another worker (or this one, before a restart)
/// left pending too long.
async fn reclaim<A>(shared: &Shared<A>, index: usize, count: u64) -> Entries {
    let plan = &shared.plan;
    let stream = plan.streams[index].as_str();
    let claimed: Result<(String, Entries), Error> = shared
        .redis
        .xautoclaim_values(
            stream,
            plan.group,
            plan.consumer.as_str(),
            plan.claim_idle.as_millis() as u64,
            "0-0",
            Some(count),
            false,
        )
        .await;
    match claimed {
        Ok((_, entries)) => {
            if !entries.is_empty() {
                tracing::info!(
                    count = entries.len(),
                    stream,
                    "reclaimed pending deliveries of a dead consumer"
                );
            }
            entries
        }
        Err(error) => {
            metrics::counter!(metric::REDIS_ERRORS).increment(1);
            tracing::warn!(%error, stream, "cannot reclaim pending deliveries");
            Vec::new()
        }
    }
}

/// Tries the entry until it is delivered or its retries are spent, then
/// dead-letters it; acknowledges either way. Left pending (for another worker)
/// when shutdown interrupts the retries or Redis refuses the dead letter.
async fn deliver<A: Attempt>(
    shared: &Shared<A>,
    index: usize,
    id: String,
    fields: HashMap<String, String>,
    shutdown: &CancellationToken,
) {
    let plan = &shared.plan;
    let stream = plan.streams[index].as_str();
    let mut wait = plan.backoff;
    let mut problem = String::new();
    for attempt in 1..=plan.retries.saturating_add(1) {
        if attempt > 1 {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
            wait = wait.saturating_mul(2);
        }
        match shared.target.attempt(&fields, attempt).await {
            Ok(()) => {
                metrics::counter!(plan.metric, "outcome" => "sent").increment(1);
                acknowledge(shared, stream, &id).await;
                return;
            }
            Err(error) => {
                tracing::debug!(attempt, %error, stream, "delivery attempt failed");
                problem = error;
            }
        }
    }
    let mut record = shared.target.dead_letter(&fields);
    record.push(("problem".into(), problem.clone()));
    record.push(("stream_id".into(), id.clone()));
    let added: Result<String, Error> = shared
        .redis
        .xadd(
            plan.dead_letter,
            false,
            (
                "MAXLEN",
                "~",
                plan.dead_letter_max_len.min(i64::MAX as u64) as i64,
            ),
            "*",
            record,
        )
        .await;
    match added {
        Ok(_) => {
            metrics::counter!(plan.metric, "outcome" => "dead_lettered").increment(1);
            tracing::warn!(%problem, stream, "delivery dead-lettered");
            acknowledge(shared, stream, &id).await;
        }
        Err(error) => {
            metrics::counter!(metric::REDIS_ERRORS).increment(1);
            tracing::error!(%error, stream = plan.dead_letter, "cannot write a dead letter; left pending");
        }
    }
}

async fn acknowledge<A>(shared: &Shared<A>, stream: &str, id: &str) {
    let plan = &shared.plan;
    let acked: Result<i64, Error> = shared
        .ack
        .evalsha_with_reload(&shared.redis, vec![stream], vec![plan.group, id])
        .await;
    if let Err(error) = acked {
        // Left pending: another delivery after the claim timeout (at least once).
        metrics::counter!(metric::REDIS_ERRORS).increment(1);
        tracing::warn!(%error, stream, "cannot acknowledge a delivery");
    }
}
