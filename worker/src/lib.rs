//! The chatter worker: persists the ingest stream to Postgres and notifies
//! recipients.
//!
//! Several workers share the stream through one Redis consumer group. Each reads a
//! batch, writes it in one idempotent statement, and only then acknowledges it; a
//! worker that dies leaves its batch pending, and a live one reclaims it after
//! `WORKER_CLAIM_IDLE_MS`. Replays are harmless: stored rows are skipped.
//!
//! Notifications and webhook events leave through durable streams of their own
//! (`outbox.rs`, `webhook.rs`), each read by every worker through its own
//! consumer group (`delivery.rs`), so a worker killed at any moment loses none.

pub mod batch;
pub mod cli;
pub mod dead_letter;
pub mod delivery;
pub mod embedded;
pub mod notify;
pub mod outbox;
pub mod persist;
pub mod streams;
pub mod webhook;

use anyhow::Context;
use chatter_shared::config::{Config, Mode};
use chatter_shared::store::Store;
use chatter_shared::telemetry::metric;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How long the batch in hand may still take to be stored and acknowledged once
/// SIGTERM came, before it is left pending for another worker.
const DRAIN_GRACE: Duration = Duration::from_secs(10);
/// How often the ingest backlog gauges are sampled.
const BACKLOG_EVERY: Duration = Duration::from_secs(5);

/// Runs a worker until `shutdown` is cancelled, then drains: the batch in hand is
/// stored and acknowledged (within [`DRAIN_GRACE`]), notifications queued so far
/// go out, and only then do the probes stop answering.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let Mode::Cluster {
        redis_url,
        database_url,
    } = config.mode()?
    else {
        anyhow::bail!(
            "the worker needs REDIS_URL and DATABASE_URL (in the embedded mode the worker runs inside chatter-gateway)"
        );
    };
    chatter_shared::telemetry::register(chatter_shared::telemetry::Process::Worker);
    let store = Store::connect_postgres(&database_url, config.database_max_connections)
        .await
        .context("cannot connect to Postgres (DATABASE_URL)")?;
    let redis = chatter_shared::redis::connect(&redis_url)
        .await
        .context("cannot connect to Redis (REDIS_URL)")?;
    let redis_risks =
        chatter_shared::redis::check_durability(&redis, config.redis_require_durable).await?;
    // Blocking reads get their own connection so acknowledgements never queue
    // behind an XREADGROUP that is waiting for entries.
    let reader = chatter_shared::redis::connect(&redis_url)
        .await
        .context("cannot connect to Redis (REDIS_URL)")?;
    // Retries of the batch in hand stop DRAIN_GRACE after SIGTERM.
    let give_up = CancellationToken::new();
    let deliveries_stop = CancellationToken::new();
    let dead_letters = dead_letter::DeadLetters::Redis(redis.clone());
    let notifier = notify::Notifier::start(
        &config,
        false,
        dead_letters.clone(),
        deliveries_stop.clone(),
    )?;
    let batches = batch::Batches {
        store: store.clone(),
        notifier,
        dead_letters,
        presence: batch::Presence::Redis(
            redis.clone(),
            chatter_shared::presence::PresenceKeys::new(config.keyspace()),
        ),
        events: chatter_shared::events::Events::redis(&config, redis.clone()),
    };
    let persister = persist::Persister::new(&config, batches, redis.clone(), reader).await?;
    let deliveries = start_deliveries(
        &config,
        &redis_url,
        &redis,
        persister.consumer(),
        &deliveries_stop,
    )
    .await?;
    let listener = tokio::net::TcpListener::bind((config.host.as_str(), config.worker_port))
        .await
        .with_context(|| {
            format!(
                "cannot listen on {}:{} (HOST, WORKER_PORT)",
                config.host, config.worker_port
            )
        })?;
    let http_addr = listener.local_addr()?;
    let probes_stop = CancellationToken::new();
    let probes = tokio::spawn(serve_probes(
        listener,
        Probes {
            redis: redis.clone(),
            store,
            draining: shutdown.clone(),
            redis_risks,
        },
        probes_stop.clone(),
    ));
    tokio::spawn(sample_backlog(
        redis,
        config.keyspace(),
        probes_stop.clone(),
    ));
    tokio::spawn(chatter_shared::telemetry::keep_metrics(probes_stop.clone()));
    tracing::info!(consumer = %persister.consumer(), %http_addr, "worker ready");
    tokio::spawn({
        let (shutdown, give_up) = (shutdown.clone(), give_up.clone());
        async move {
            shutdown.cancelled().await;
            metrics::gauge!(metric::DRAINING).set(1.0);
            tracing::info!(
                grace_secs = DRAIN_GRACE.as_secs(),
                "draining: finishing the batch in hand"
            );
            tokio::time::sleep(DRAIN_GRACE).await;
            give_up.cancel();
        }
    });
    persister.run(&shutdown, &give_up).await;
    // What is not delivered yet stays in its stream for the other workers.
    deliveries_stop.cancel();
    for delivery in deliveries {
        let _ = delivery.await;
    }
    probes_stop.cancel();
    let _ = probes.await;
    tracing::info!("stopped");
    Ok(())
}

/// Starts the consumers of the notification outbox and the webhook events (and
/// the coalescing flush), each with its own blocking connection.
async fn start_deliveries(
    config: &Config,
    redis_url: &str,
    redis: &fred::clients::Client,
    consumer: &str,
    stop: &CancellationToken,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    use chatter_shared::keyspace::*;
    let mut tasks = Vec::new();
    let shards = config.keyspace().shards();
    let claim_idle = |budget: Duration| {
        // Longer than a delivery can take, or a live worker's entries would be
        // taken from it while it still tries them.
        Duration::from_millis(config.worker_claim_idle_ms).max(budget + Duration::from_secs(2))
    };
    let plan = |streams, group, dead_letter, metric, concurrency, retries, backoff, budget| {
        delivery::Plan {
            streams,
            group,
            dead_letter,
            dead_letter_max_len: config.dead_letter_max_len,
            metric,
            consumer: consumer.to_owned(),
            concurrency,
            retries,
            backoff,
            claim_idle: claim_idle(budget),
            claim_every: Duration::from_millis(config.worker_claim_interval_ms.max(1)),
            block_ms: config.worker_block_ms,
        }
    };
    if let Some(target) = notify::NotifTarget::from_config(config)? {
        let outboxes: Vec<String> = shards.iter().map(|shard| shard.notify_outbox()).collect();
        streams::ensure_group(redis, &outboxes, NOTIFY_GROUP).await?;
        let plan = plan(
            outboxes,
            NOTIFY_GROUP,
            NOTIFY_DEAD_LETTER,
            metric::NOTIFICATIONS,
            config.notification_concurrency,
            target.retries,
            target.backoff,
            target.budget(config),
        );
        let reader = chatter_shared::redis::connect(redis_url)
            .await
            .context("cannot connect to Redis (REDIS_URL)")?;
        tasks.push(tokio::spawn(delivery::run(
            plan,
            target,
            redis.clone(),
            reader,
            stop.clone(),
        )));
        if config.notification_coalesce_secs > 0 {
            tasks.push(tokio::spawn(outbox::flush_due(
                redis.clone(),
                config.keyspace(),
                config.notification_coalesce_secs,
                stop.clone(),
            )));
        }
    }
    if let Some(target) = webhook::WebhookTarget::from_config(config)? {
        // The gateways' own events, and the shards' `message.created` (one
        // stream on a single Redis).
        let mut events = vec![EVENTS_STREAM.to_owned()];
        events.extend(shards.iter().map(|shard| shard.events()));
        events.dedup();
        streams::ensure_group(redis, &events, EVENTS_GROUP).await?;
        let plan = plan(
            events,
            EVENTS_GROUP,
            WEBHOOK_DEAD_LETTER,
            metric::WEBHOOKS,
            webhook::CONCURRENCY,
            target.retries,
            target.backoff,
            target.budget(),
        );
        let reader = chatter_shared::redis::connect(redis_url)
            .await
            .context("cannot connect to Redis (REDIS_URL)")?;
        tasks.push(tokio::spawn(delivery::run(
            plan,
            target,
            redis.clone(),
            reader,
            stop.clone(),
        )));
    }
    Ok(tasks)
}

/// What the worker's `/readyz` looks at.
struct Probes {
    redis: fred::clients::Client,
    store: Store,
    draining: CancellationToken,
    redis_risks: Vec<String>,
}

/// `/healthz`, `/readyz` and `/metrics` for Kubernetes probes and Prometheus.
/// They keep answering through the drain, until the worker exits.
async fn serve_probes(listener: tokio::net::TcpListener, probes: Probes, stop: CancellationToken) {
    use axum::http::StatusCode;
    use axum::routing::get;
    let metrics = chatter_shared::telemetry::metrics();
    let probes = std::sync::Arc::new(probes);
    let app = axum::Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let probes = probes.clone();
                async move {
                    match probes.readiness().await {
                        Ok(body) => (StatusCode::OK, body),
                        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, reason),
                    }
                }
            }),
        )
        .route(
            "/metrics",
            get(move || std::future::ready(metrics.render())),
        );
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await;
    if let Err(error) = served {
        tracing::error!(%error, "the worker's HTTP listener failed");
    }
}

impl Probes {
    async fn readiness(&self) -> Result<String, String> {
        use fred::prelude::*;
        const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
        if self.draining.is_cancelled() {
            return Err("draining".into());
        }
        let redis = tokio::time::timeout(PROBE_TIMEOUT, self.redis.ping::<String>(None)).await;
        if !matches!(redis, Ok(Ok(_))) {
            return Err("Redis does not answer".into());
        }
        let database = tokio::time::timeout(PROBE_TIMEOUT, self.store.ping()).await;
        if !matches!(database, Ok(Ok(()))) {
            return Err("Postgres does not answer".into());
        }
        if self.redis_risks.is_empty() {
            return Ok("ready".into());
        }
        Ok(format!(
            "ready; warning: Redis is not durable: {}",
            self.redis_risks.join("; ")
        ))
    }
}

/// Samples the ingest backlog: the stream holds exactly the entries not yet
/// stored (stored ones are deleted), and XPENDING counts those read but not
/// acknowledged. Every worker samples; the values are cluster-wide, summed
/// over the shards.
async fn sample_backlog(
    redis: fred::clients::Client,
    keyspace: chatter_shared::keyspace::Keyspace,
    stop: CancellationToken,
) {
    use chatter_shared::keyspace::{INGEST_GROUP, Shard};
    use fred::prelude::*;
    async fn sample(redis: &Client, shard: Shard) -> Result<(u64, u64, u64), Error> {
        let length: u64 = redis.xlen(shard.ingest()).await?;
        let pending: Value = redis.xpending(shard.ingest(), INGEST_GROUP, ()).await?;
        // The summary form: [count, first id, last id, consumers].
        let pending = match pending {
            Value::Array(fields) => fields.first().and_then(Value::as_u64).unwrap_or(0),
            _ => 0,
        };
        let outbox: u64 = redis.xlen(shard.notify_outbox()).await?;
        Ok((length, pending, outbox))
    }
    let shards = keyspace.shards();
    loop {
        let samples = shards.iter().map(|&shard| sample(&redis, shard));
        let sums = futures::future::join_all(samples)
            .await
            .into_iter()
            .try_fold((0, 0, 0), |sum, sample| {
                sample.map(|(l, p, o)| (sum.0 + l, sum.1 + p, sum.2 + o))
            });
        match sums {
            Ok((length, pending, outbox)) => {
                metrics::gauge!(metric::INGEST_BACKLOG).set(length as f64);
                metrics::gauge!(metric::INGEST_PENDING).set(pending as f64);
                metrics::gauge!(metric::NOTIFY_OUTBOX_BACKLOG).set(outbox as f64);
            }
            Err(error) => {
                metrics::counter!(metric::REDIS_ERRORS).increment(1);
                tracing::debug!(%error, "cannot sample the ingest backlog");
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(BACKLOG_EVERY) => {}
        }
    }
}
