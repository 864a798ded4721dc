//! The one piece of shared state every handler receives.

use crate::arrivals::Arrivals;
use crate::bus::Bus;
use crate::http::client_config::ClientConfigs;
use crate::hub::Hub;
use crate::identity_service::IdentityService;
use crate::limits::Limits;
use crate::moderation::Moderation;
use chatter_shared::auth::{Identity, Tokens};
use chatter_shared::config::Config;
use chatter_shared::store::Store;
use dashmap::DashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long a user counts as "recently upserted": within it, further requests by
/// the same user skip the database write.
const USER_REFRESH: Duration = Duration::from_secs(60);
/// Past this many remembered users the memo is cleared rather than grown.
const USER_MEMO_LIMIT: usize = 200_000;

pub type AppState = Arc<App>;

pub struct App {
    pub config: Config,
    pub tokens: Tokens,
    pub store: Store,
    pub bus: Bus,
    pub hub: Hub,
    /// The database's part of opening a WebSocket, batched (`crate::arrivals`).
    pub arrivals: Arrivals,
    /// One permit per open WebSocket: `MAX_CONNECTIONS` is a hard cap.
    pub connection_slots: Arc<Semaphore>,
    pub shutdown: CancellationToken,
    /// Every socket task, so shutdown can wait for their close frames to go out
    /// (axum's graceful shutdown does not track upgraded connections).
    pub sockets: TaskTracker,
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
    /// Why Redis may lose acknowledged messages, as found at start-up (readiness
    /// repeats it); empty when it is durable or in the embedded mode.
    pub redis_risks: Vec<String>,
    recently_seen: DashMap<String, Instant>,
    /// Per-user and per-IP rate limits (REST, upgrades, HTTP publish).
    pub limits: Arc<Limits>,
    /// Bans, mutes, blocks and the content policy (`crate::moderation`).
    pub moderation: Arc<Moderation>,
    /// Delegated verification (`VERIFICATION_URL`), when configured.
    pub identity_service: Option<IdentityService>,
    /// What `GET /config` serves, per client type.
    pub client_configs: ClientConfigs,
    /// Where webhook events are recorded (`chatter_shared::events`); off
    /// unless `WEBHOOK_URL` is set.
    pub events: chatter_shared::events::Events,
}

impl App {
    pub fn new(
        config: Config,
        tokens: Tokens,
        store: Store,
        bus: Bus,
        hub: Hub,
        shutdown: CancellationToken,
    ) -> App {
        App {
            connection_slots: Arc::new(Semaphore::new(config.max_connections)),
            arrivals: Arrivals::start(store.clone(), shutdown.clone()),
            limits: Arc::new(Limits::new(&config)),
            moderation: Arc::new(Moderation::new(&config)),
            config,
            tokens,
            store,
            bus,
            hub,
            shutdown,
            sockets: TaskTracker::new(),
            metrics: chatter_shared::telemetry::metrics(),
            redis_risks: Vec::new(),
            recently_seen: DashMap::new(),
            identity_service: None,
            client_configs: ClientConfigs::default(),
            events: chatter_shared::events::Events::off(),
        }
    }

    /// Users are created on first sight: upsert unless done within `USER_REFRESH`.
    pub async fn ensure_user(&self, identity: &Identity) -> Result<(), sqlx::Error> {
        if !self.needs_upsert(&identity.user_id) {
            return Ok(());
        }
        self.store.upsert_user(identity).await?;
        self.upserted(&identity.user_id);
        Ok(())
    }

    /// Whether `user_id`'s record was not written within `USER_REFRESH`.
    pub fn needs_upsert(&self, user_id: &str) -> bool {
        self.recently_seen
            .get(user_id)
            .is_none_or(|seen| seen.elapsed() >= USER_REFRESH)
    }

    /// `user_id`'s record was just written.
    pub fn upserted(&self, user_id: &str) {
        if self.recently_seen.len() >= USER_MEMO_LIMIT {
            self.recently_seen.clear();
        }
        self.recently_seen
            .insert(user_id.to_owned(), Instant::now());
    }

    /// The caller with the roles of their stored record (`POST /users`) when
    /// their token carries none: a user is an agent or an admin by either. (A
    /// token with roles wrote them to the record already, see `upsert_user`.)
    /// If the record cannot be read, the token's (no) roles stand.
    pub async fn with_stored_roles(&self, mut identity: Identity) -> Identity {
        if identity.roles.is_empty() {
            match self.store.roles_of(&identity.user_id).await {
                Ok(roles) => identity.roles = roles,
                Err(error) => tracing::warn!(%error, "cannot read a user's stored roles"),
            }
        }
        identity
    }

    /// Forgets that a user was seen, so the next request writes them again
    /// (after an explicit `POST /users` changed them).
    pub fn forget_user(&self, user_id: &str) {
        self.recently_seen.remove(user_id);
    }
}
