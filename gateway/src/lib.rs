//! The chatter gateway: WebSocket connections and the REST API.
//!
//! [`serve`] is the whole gateway given a configuration, a bound listener and a
//! shutdown token; the binary only wires those up (see [`cli`]). It runs in one of
//! two modes (see `Config::mode`):
//! - **cluster**: Redis carries messages between gateways, Postgres stores them,
//!   `chatter-worker` processes persist and notify;
//! - **embedded** (no `REDIS_URL`, no `DATABASE_URL`): one process does it all,
//!   with an in-process bus, SQLite under `DATA_DIR` and the worker loop inside.

pub mod arrivals;
pub mod authenticate;
pub mod bus;
pub mod cli;
pub mod embedded;
pub mod http;
pub mod hub;
pub mod identity_service;
pub mod limits;
pub mod messages;
pub mod moderation;
pub mod permissions;
pub mod presence;
pub mod read_state;
pub mod resume;
pub mod room_events;
pub mod server;
pub mod state;
pub mod storable;
pub mod support;
pub mod tickets;
pub mod ws;

use anyhow::Context;
use chatter_shared::auth::Tokens;
use chatter_shared::config::{Config, Mode};
use chatter_shared::events::Events;
use chatter_shared::ingest::AppendLimits;
use chatter_shared::redis::StreamDepth;
use chatter_shared::store::Store;
use chatter_shared::telemetry::metric;
use chatter_worker::batch::{Batches, Presence};
use chatter_worker::dead_letter::DeadLetters;
use chatter_worker::notify::Notifier;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long past the drain window sockets get to finish closing before the
/// process exits anyway (the close handshake itself waits up to 3 s).
const SOCKET_CLOSE_GRACE: Duration = Duration::from_secs(5);
/// How long the embedded worker gets to store what was accepted before exit.
const WORKER_DRAIN_GRACE: Duration = Duration::from_secs(10);

/// Connects the backends for the configured mode, then serves on `listener`
/// until `shutdown`.
pub async fn serve(
    mut config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mode = config.mode()?;
    if let Mode::Embedded { data_dir } = &mode {
        use_dev_secret_if_unset(&mut config, data_dir)?;
    }
    let tokens = Tokens::from_config(&config).context("invalid JWT configuration")?;
    http::extract::log_service_secret_use(&config);
    // The hub keeps delivering while sockets drain; it stops after they are gone.
    let hub_stop = CancellationToken::new();
    let (store, bus, hub, embedded_worker, redis_risks, notices, events) = match mode {
        Mode::Cluster {
            redis_url,
            database_url,
        } => {
            let store = Store::connect_postgres(&database_url, config.database_max_connections)
                .await
                .context("cannot connect to Postgres (DATABASE_URL)")?;
            let redis = chatter_shared::redis::connect(&redis_url)
                .await
                .context("cannot connect to Redis (REDIS_URL)")?;
            let redis_risks =
                chatter_shared::redis::check_durability(&redis, config.redis_require_durable)
                    .await?;
            let subscriber =
                chatter_shared::redis::connect_subscriber(&redis_url, StreamDepth::FAN_OUT)
                    .await
                    .context("cannot connect to Redis (REDIS_URL)")?;
            let notices =
                chatter_shared::redis::connect_subscriber(&redis_url, StreamDepth::NOTICES)
                    .await
                    .context("cannot connect to Redis (REDIS_URL)")?;
            let keyspace = config.keyspace();
            let appends = chatter_shared::redis::connect(&redis_url)
                .await
                .context("cannot connect to Redis (REDIS_URL)")?;
            let reader = hub::RecentReader {
                client: redis.clone(),
                script: chatter_shared::ingest::RecentScript::new(keyspace),
                limit: config.recent_log_size,
            };
            let hub = hub::Hub::start(
                Some((subscriber, reader)),
                store.clone(),
                Duration::from_secs(config.membership_recheck_secs),
                hub_stop.clone(),
            );
            let events = Events::redis(&config, redis.clone());
            (
                store,
                bus::Bus::redis(
                    redis,
                    appends,
                    keyspace,
                    AppendLimits::from_config(&config),
                    hub_stop.clone(),
                ),
                hub,
                None,
                redis_risks,
                Some(notices),
                events,
            )
        }
        Mode::Embedded { data_dir } => {
            let path = embedded::prepare_database(&data_dir)
                .with_context(|| format!("cannot prepare DATA_DIR {}", data_dir.display()))?;
            let store = Store::open_sqlite(&path)
                .await
                .with_context(|| format!("cannot open {}", path.display()))?;
            tracing::info!(database = %path.display(), "embedded mode: in-process bus, SQLite, worker inside");
            let hub = hub::Hub::start(
                None,
                store.clone(),
                Duration::from_secs(config.membership_recheck_secs),
                hub_stop.clone(),
            );
            let backlog = usize::try_from(config.ingest_max_backlog)
                .unwrap_or(usize::MAX)
                .max(1);
            let (ingest, entries) = tokio::sync::mpsc::channel(backlog);
            // The worker's notifier must outlive `shutdown` long enough to drain.
            let notifier =
                Notifier::start(&config, true, DeadLetters::Log, CancellationToken::new())?;
            let (events, queued_events) = Events::in_process(&config);
            if let (Some(target), Some(queued)) = (
                chatter_worker::webhook::WebhookTarget::from_config(&config)?,
                queued_events,
            ) {
                // Stops when the queue's senders are gone (the process ends).
                tokio::spawn(chatter_worker::webhook::run_in_process(
                    target,
                    queued,
                    CancellationToken::new(),
                ));
            }
            let bus = bus::LocalBus::new(hub.clone(), ingest, AppendLimits::from_config(&config));
            // The in-memory dedupe starts from what was stored before a restart.
            let since = time::OffsetDateTime::now_utc()
                - Duration::from_secs(config.dedupe_ttl_secs.min(30 * 24 * 3600));
            let sent = store
                .recent_temp_ids(since)
                .await
                .context("cannot read recent temp ids for the dedupe")?;
            bus.remember_sent(&sent);
            let presence_view = bus.clone();
            let batches = Batches {
                store: store.clone(),
                notifier,
                dead_letters: DeadLetters::Log,
                presence: Presence::Local(Arc::new(move |user: &str| {
                    presence_view.is_online(user)
                })),
                events: events.clone(),
            };
            let worker = tokio::spawn(chatter_worker::embedded::run(
                entries,
                batches,
                config.worker_batch_size,
            ));
            (
                store,
                bus::Bus::Local(bus),
                hub,
                Some(worker),
                Vec::new(),
                None,
                events,
            )
        }
    };
    let (departures, departed) = support::departures::Departures::channel();
    let presence = tokio::spawn(presence::run(
        hub.clone(),
        bus.clone(),
        Duration::from_secs(config.presence_ttl_secs),
        departures,
        hub_stop.clone(),
    ));
    chatter_shared::telemetry::register(chatter_shared::telemetry::Process::Gateway);
    if embedded_worker.is_some() {
        chatter_shared::telemetry::register(chatter_shared::telemetry::Process::Worker);
    }
    tokio::spawn(sample_send_queues(hub.clone(), hub_stop.clone()));
    tokio::spawn(chatter_shared::telemetry::keep_metrics(hub_stop.clone()));
    let mut app = state::App::new(config, tokens, store, bus, hub, shutdown.clone());
    app.redis_risks = redis_risks;
    // Bans are known before the first request: a restart lets no banned user in.
    app.moderation
        .reload(&app.store)
        .await
        .context("cannot read bans and restrictions from the database")?;
    app.identity_service = identity_service::IdentityService::from_config(&app.config)?;
    app.client_configs = http::client_config::ClientConfigs::from_config(&app.config)?;
    app.events = events;
    let state = Arc::new(app);
    if let Some(content) = &state.moderation.content {
        content.start(hub_stop.clone());
    }
    tokio::spawn(moderation::notices::listen(
        state.clone(),
        notices,
        hub_stop.clone(),
    ));
    // Like the hub, the limiter sweep runs until the sockets are gone.
    let sweep = tokio::spawn(limits::sweep(state.limits.clone(), hub_stop.clone()));
    // The support desk's expiry sweep and departure notices, like presence.
    tokio::spawn(support::expiry::run(state.clone(), hub_stop.clone()));
    tokio::spawn(support::departures::run(
        state.clone(),
        departed,
        hub_stop.clone(),
    ));
    tracing::info!(addr = %listener.local_addr()?, "listening");
    // The listener stays open through the drain (probes and REST keep answering,
    // upgrades get 503 `draining`); it closes once the last socket is gone.
    let listener_stop = CancellationToken::new();
    let server = tokio::spawn(server::serve(
        listener,
        http::app(state.clone()),
        server::Limits::from_config(&state.config),
        shutdown.clone(),
        listener_stop.clone(),
    ));
    shutdown.cancelled().await;
    metrics::gauge!(metric::DRAINING).set(1.0);
    // Sockets close themselves at random moments within the drain window.
    state.hub.drain();
    let drain_window = Duration::from_secs(state.config.drain_window_secs);
    tracing::info!(
        open = state.sockets.len(),
        window_secs = drain_window.as_secs(),
        "draining"
    );
    state.sockets.close();
    if tokio::time::timeout(drain_window + SOCKET_CLOSE_GRACE, state.sockets.wait())
        .await
        .is_err()
    {
        tracing::warn!(open = state.sockets.len(), "sockets still open at exit");
    }
    listener_stop.cancel();
    if let Err(error) = server.await {
        tracing::error!(%error, "the HTTP listener task failed");
    }
    hub_stop.cancel();
    let _ = presence.await;
    let _ = sweep.await;
    if let (bus::Bus::Local(bus), Some(worker)) = (&state.bus, embedded_worker) {
        drain_embedded_worker(bus, worker).await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// Samples the send-queue gauges: queue depth is what shows a gateway (or its
/// clients) falling behind before sockets start closing as slow consumers.
async fn sample_send_queues(hub: hub::Hub, stop: CancellationToken) {
    const EVERY: Duration = Duration::from_secs(5);
    loop {
        let (total, fullest) = hub.queued_frames();
        metrics::gauge!(metric::SEND_QUEUE_FRAMES).set(total as f64);
        metrics::gauge!(metric::SEND_QUEUE_MAX_FRAMES).set(fullest as f64);
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(EVERY) => {}
        }
    }
}

/// Stops the in-process bus and waits for the worker to store what it accepted.
async fn drain_embedded_worker(bus: &bus::LocalBus, worker: JoinHandle<()>) {
    bus.close();
    if tokio::time::timeout(WORKER_DRAIN_GRACE, worker)
        .await
        .is_err()
    {
        tracing::error!("the embedded worker did not finish storing accepted messages in time");
    }
}

/// Embedded mode without `JWT_SECRET`: use (or create) the development secret.
pub fn use_dev_secret_if_unset(
    config: &mut Config,
    data_dir: &std::path::Path,
) -> anyhow::Result<()> {
    if !config.uses_dev_secret() {
        return Ok(());
    }
    let (secret, created) = embedded::dev_secret(data_dir).with_context(|| {
        format!(
            "cannot keep a development JWT secret in {}",
            data_dir.display()
        )
    })?;
    tracing::warn!(
        file = %data_dir.join("jwt_secret").display(),
        created,
        host = %config.host,
        "no JWT_SECRET configured: using a development secret (fine for trying chatter, not for production); \
         mint tokens with `chatter-gateway token --user NAME`; without HOST set it listens on 127.0.0.1 only"
    );
    config.jwt_secret = Some(secret);
    Ok(())
}
