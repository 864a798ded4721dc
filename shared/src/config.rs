//! Configuration: built-in defaults < optional TOML file < environment.
//!
//! One flat [`Config`] serves both binaries; each reads the keys it needs. Keys are
//! the lower-case forms of the environment variable names (`PORT` → `port`), so an
//! operator's `chatter.toml` and their Kubernetes env use the same words.
//!
//! The environment is passed in as a map rather than read here, so tests can feed
//! configuration without touching the process environment (`set_var` is unsafe in
//! edition 2024, and racy in any edition).

use serde::Deserialize;
use std::collections::HashMap;
use std::path::Path;

pub const DEFAULT_PORT: u16 = 8080;
pub const DEFAULT_TICKET_TTL_SECS: u64 = 30;
pub const DEFAULT_MAX_FRAME_BYTES: usize = 32 * 1024;
pub const DEFAULT_MAX_MESSAGE_CHARS: usize = 4000;
/// The shortest HS256 `JWT_SECRET` accepted: a shorter HMAC key can be found by
/// brute force offline from any one token (RFC 7518 §3.2 asks for at least the
/// hash size, 256 bits).
pub const MIN_JWT_SECRET_BYTES: usize = 32;
/// Where the embedded mode listens when it signs with its generated development
/// secret and no `HOST` is configured: that secret sits in a file anyone with the
/// data directory can read, so the server is not offered to the network by default.
pub const DEV_SECRET_HOST: &str = "127.0.0.1";
/// The longest `EXPIRATION_TOKEN_DURATION`: ten years (longer is "never", say so
/// by leaving it unset).
pub const MAX_EXPIRATION_TOKEN_DURATION: u64 = 10 * 365 * 24 * 3600;

/// Every setting chatter understands. See the README's configuration table.
///
/// `Debug` redacts the secrets (see the impl at the end of this file).
#[derive(Clone, Deserialize)]
#[serde(default)]
pub struct Config {
    // --- serving ---
    pub host: String,
    pub port: u16,
    /// Allowed browser origins for CORS and WebSocket upgrades; `*` allows any.
    /// Clients that send no `Origin` (mobile apps, servers) are not affected.
    pub allowed_origins: StringList,
    pub log_level: String,
    pub log_format: LogFormat,

    // --- backends ---
    pub database_url: Option<String>,
    pub redis_url: Option<String>,
    /// On Redis Cluster (`redis-cluster://` in `REDIS_URL`): how many logical
    /// shards the rooms are spread over (see `keyspace.rs`). Fixed at deploy,
    /// like a topic's partitions: a room's keys and stream are found by it.
    pub redis_shards: u16,
    /// Replicas that must hold an accepted batch before its senders are told
    /// `confirmed` (`WAIT` after the ingest call). Unset: 1 on Redis Cluster
    /// (a failover must not lose a confirmed message), 0 on one Redis.
    pub redis_wait_replicas: Option<u32>,
    /// How long that `WAIT` may take; past it the batch's sends are answered
    /// `unavailable` (the client resends; the dedupe answers the original).
    pub redis_wait_timeout_ms: u64,
    /// Postgres pool size per process.
    pub database_max_connections: u32,
    /// Embedded mode (no `REDIS_URL`, no `DATABASE_URL`): where the SQLite file and
    /// the generated development JWT secret live.
    pub data_dir: String,

    // --- auth ---
    pub jwt_algorithm: JwtAlgorithm,
    pub jwt_secret: Option<String>,
    /// PEM public key, for RS256.
    pub jwt_public_key: Option<String>,
    /// PEM private key, for minting RS256 tokens (`POST /tokens`); optional.
    pub jwt_private_key: Option<String>,
    pub jwt_issuer: Option<String>,
    pub jwt_audience: Option<String>,
    pub jwt_leeway_secs: u64,
    /// The claim holding the user id.
    pub jwt_user_claim: String,
    /// Authorizes service-to-service calls (user upsert, token minting, server
    /// publish). `NOTIFICATION_AUTH` does not stand in for it, except on
    /// `POST /user` (see the gateway's `http::extract::LegacyIdentityService`).
    pub service_secret: Option<String>,
    pub ticket_ttl_secs: u64,

    // --- WebSocket limits ---
    pub max_frame_bytes: usize,
    pub max_message_chars: usize,
    pub max_temp_id_chars: usize,
    /// Frames a connection may send per second (sustained); bursts up to twice that.
    pub frames_per_sec: u32,
    /// Unparseable, unknown or malformed frames in a row before closing with 4010.
    pub bad_frame_limit: u32,
    pub ping_interval_secs: u64,
    pub idle_timeout_secs: u64,
    /// Frames queued for one socket before it counts as a slow consumer and is closed.
    pub send_queue_frames: usize,
    pub max_connections: usize,
    /// On SIGTERM, sockets are closed (4007) at random moments spread over this
    /// window, so clients do not all reconnect elsewhere at once.
    pub drain_window_secs: u64,
    /// A killed gateway's users go offline within this many seconds.
    pub presence_ttl_secs: u64,
    /// Frames kept per room in Redis for `Resume` (the newest ones).
    pub recent_log_size: u64,
    /// How long a quiet room's recent log is kept.
    pub recent_log_ttl_secs: u64,
    /// Missed messages beyond which `Resume` answers `ResyncRequired`.
    pub resume_max: u64,

    // --- messages and rooms ---
    /// How long a `(room, sender, message_temp_id)` is remembered for deduplication.
    pub dedupe_ttl_secs: u64,
    /// Sends are refused once this many messages wait in the ingest stream
    /// (the worker fleet is down or far behind): a bound on Redis memory.
    pub ingest_max_backlog: u64,
    pub page_size_default: u32,
    pub page_size_max: u32,
    pub max_room_members: usize,
    pub max_room_name_chars: usize,
    /// A room's `metadata`, serialized, may not be larger than this.
    pub max_room_metadata_bytes: usize,
    /// Per socket and room, at most one `Typing` is passed on in this interval.
    pub typing_interval_ms: u64,

    // --- worker ---
    pub worker_name: Option<String>,
    /// The worker's HTTP port for `/healthz` and `/metrics` (0: any free port).
    pub worker_port: u16,
    pub worker_batch_size: usize,
    pub worker_block_ms: u64,
    /// A pending entry idle this long belongs to a dead worker and is reclaimed.
    pub worker_claim_idle_ms: u64,
    pub worker_claim_interval_ms: u64,
    pub notification_url: Option<String>,
    /// The raw `Authorization` chatter sends to the notification service. Inbound,
    /// only `POST /user` accepts it (see `service_secret`).
    pub notification_auth: Option<String>,
    /// Base URL of the web app, used to build links in notifications.
    /// `EMOTIVES_URL` is accepted as the older name.
    pub app_url: String,
    pub notification_retries: u32,
    pub notification_backoff_ms: u64,
    pub notification_timeout_ms: u64,
    pub notification_concurrency: usize,
    pub notification_queue: usize,

    // --- operations ---
    /// Refuse to start when Redis keeps no append-only file or may evict keys.
    pub redis_require_durable: bool,
    /// A client must send a request's headers within this time, and an idle
    /// keep-alive connection is closed after it (slow-header attacks).
    pub http_header_timeout_secs: u64,
    /// HTTP connections not (yet) upgraded to a WebSocket, over all clients.
    pub max_http_connections: usize,
    /// The same, per client address (0: no per-address cap). Behind a load
    /// balancer every connection comes from its address: raise it there.
    pub max_http_connections_per_ip: usize,
    // --- rate and connection limits (docs/SECURITY.md ("Rate limits")) ---
    /// A socket over `FRAMES_PER_SEC` is told to wait; once more than this many of
    /// its refused frames are outstanding (told to wait, slot not yet come) it is
    /// flooding and is closed with 4013.
    pub rate_flood_frames: u32,
    /// Sockets one user may hold on one gateway; a newer one closes the oldest (4008).
    pub max_connections_per_user: usize,
    /// REST requests per second per authenticated user (sustained) and the burst.
    pub rest_rate_per_sec: u32,
    pub rest_rate_burst: u32,
    /// REST requests per second per client IP for requests without valid
    /// credentials (none, or refused), and the burst.
    pub rest_ip_rate_per_sec: u32,
    pub rest_ip_rate_burst: u32,
    /// Take the client IP from the last `X-Forwarded-For` entry (the one the
    /// proxy in front appended) instead of the peer address. Only behind a proxy
    /// that always sets it: otherwise clients could pick their own IP.
    pub trust_forwarded_for: bool,
    // --- membership and resume bounds ---
    /// Every local user's rooms are re-read from the database once per this many
    /// seconds (spread over the interval), so a removal whose event was lost
    /// still takes effect.
    pub membership_recheck_secs: u64,
    /// Rooms one `Resume` frame may list; more are refused with `too_many_rooms`.
    pub resume_max_rooms: usize,
    // --- moderation (README "Moderation") ---
    /// A file of blocked words and `/regular expressions/`, one a line; re-read
    /// when it changes. Unset: no block list.
    pub content_blocklist_file: Option<String>,
    /// An external moderation service chatter asks about every message; unset: none.
    pub moderation_url: Option<String>,
    /// How long a message waits for the moderation service's answer.
    pub moderation_timeout_ms: u64,
    /// What a message gets when the moderation service is down or slow.
    pub moderation_fail: ModerationFail,
    /// Rejected messages within `CONTENT_STRIKE_WINDOW_SECS` that close the
    /// sender's sockets with 4011; 0 never closes.
    pub content_strikes: u32,
    pub content_strike_window_secs: u64,
    /// `multi` (any number of connections per user) or `single` (a new
    /// connection closes the user's older ones, on every gateway, with 4008).
    pub session_policy: SessionPolicy,
    // --- integrations: outbox, webhooks, error e-mail (README "Integrations") ---
    /// At most one notification per recipient and room in this many seconds;
    /// the rest of the window's messages go out as one that says how many (0: off).
    pub notification_coalesce_secs: u64,
    /// Where the worker POSTs events (none: outbound webhooks are off).
    pub webhook_url: Option<String>,
    /// Signs outbound webhooks (`X-Signature`) and checks `POST /webhook/verify`.
    pub webhook_secret: Option<String>,
    /// The event types sent to `WEBHOOK_URL` (empty: all of them).
    pub webhook_events: StringList,
    pub webhook_retries: u32,
    pub webhook_backoff_ms: u64,
    pub webhook_timeout_ms: u64,
    /// The notification and webhook dead-letter streams keep about this many entries.
    pub dead_letter_max_len: u64,
    /// Error e-mail: the sender address (and SMTP user name).
    pub email_from: Option<String>,
    pub email_password: Option<String>,
    /// Log events at or above this level are mailed (`error`, `warn`, …).
    pub email_level: String,
    /// Recipients of error e-mail (none: error e-mail is off).
    pub email_to: StringList,
    pub smtp_host: Option<String>,
    /// Default by `SMTP_TLS`: 25 (off), 587 (starttls), 465 (tls).
    pub smtp_port: Option<u16>,
    pub smtp_tls: SmtpTls,
    /// Log events are collected for this long into one mail.
    pub email_batch_secs: u64,
    pub email_max_per_hour: u32,
    // --- support desk ---
    /// A support chat expires after this many seconds without a message
    /// (counted from the request while nobody has claimed it).
    pub support_expiry_secs: u64,

    // --- integrations: identity service, token provider, client config ---
    /// The identity service that verifies tokens chatter cannot verify itself
    /// (delegated verification, SPEC §2): `GET` with the caller's `Authorization`.
    pub verification_url: Option<String>,
    /// A slower answer counts as the service being down (503 to the caller).
    pub verification_timeout_ms: u64,
    /// How long a positive answer is reused (0: every request asks).
    pub verification_cache_secs: u64,
    /// `jwt`, `delegated` or `both`; unset: `both` with `VERIFICATION_URL`, else `jwt`.
    pub auth_mode: Option<AuthMode>,
    /// Lifetime of `GET /token/{user_id}` tokens; unset: they never expire (the
    /// older token provider's behaviour; see docs/SECURITY.md for the risk).
    pub expiration_token_duration: Option<u64>,
    /// The public client identifier `GET /api-key` hands out (not a secret).
    pub client_api_key: Option<String>,
    /// A JSON file holding the client configurations, one object per client type;
    /// replaces `[client_config.<type>]` tables of the config file.
    pub client_config_file: Option<String>,
    /// `[client_config.<type>]` tables of the config file (`GET /config`).
    pub client_config: serde_json::Map<String, serde_json::Value>,
    /// The header naming the caller of `GET /config`, set by a trusted proxy.
    pub userid_header_key: String,
    /// Whether that header is believed: only behind a proxy that always sets or
    /// strips it, since otherwise anyone could name any user.
    pub trust_userid_header: bool,
    /// The key of a client type's error messages (`{title, message}`).
    pub error_obj_key: String,
    /// `authentication.api_url` and `.ws_url` of `GET /config`; unset, they are
    /// built from the request's `Host`.
    pub client_api_url: Option<String>,
    pub client_ws_url: Option<String>,
    /// The claim listing a token's permissions; set, each route and WebSocket
    /// action needs its permission (docs/API.md "Permissions"). Unset: no checks.
    pub jwt_permissions_claim: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            host: "0.0.0.0".into(),
            port: DEFAULT_PORT,
            allowed_origins: StringList::default(),
            log_level: "info".into(),
            log_format: LogFormat::Text,
            database_url: None,
            redis_url: None,
            redis_shards: 64,
            redis_wait_replicas: None,
            redis_wait_timeout_ms: 1000,
            database_max_connections: 20,
            data_dir: "./data".into(),
            jwt_algorithm: JwtAlgorithm::HS256,
            jwt_secret: None,
            jwt_public_key: None,
            jwt_private_key: None,
            jwt_issuer: None,
            jwt_audience: None,
            jwt_leeway_secs: 5,
            jwt_user_claim: "sub".into(),
            service_secret: None,
            ticket_ttl_secs: DEFAULT_TICKET_TTL_SECS,
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            max_message_chars: DEFAULT_MAX_MESSAGE_CHARS,
            max_temp_id_chars: 128,
            frames_per_sec: 50,
            bad_frame_limit: 3,
            ping_interval_secs: 20,
            idle_timeout_secs: 60,
            send_queue_frames: 512,
            max_connections: 100_000,
            drain_window_secs: 10,
            presence_ttl_secs: 30,
            recent_log_size: 200,
            recent_log_ttl_secs: 3600,
            resume_max: 1000,
            dedupe_ttl_secs: 24 * 3600,
            ingest_max_backlog: 1_000_000,
            page_size_default: 50,
            page_size_max: 200,
            max_room_members: 1000,
            max_room_name_chars: 200,
            max_room_metadata_bytes: 4096,
            typing_interval_ms: 1000,
            worker_name: None,
            worker_port: 9091,
            worker_batch_size: 500,
            worker_block_ms: 1000,
            worker_claim_idle_ms: 30_000,
            worker_claim_interval_ms: 5_000,
            notification_url: None,
            notification_auth: None,
            app_url: "http://localhost:3000/".into(),
            notification_retries: 3,
            notification_backoff_ms: 200,
            notification_timeout_ms: 5_000,
            notification_concurrency: 32,
            notification_queue: 10_000,
            redis_require_durable: false,
            http_header_timeout_secs: 10,
            max_http_connections: 8192,
            max_http_connections_per_ip: 256,
            rate_flood_frames: 1000,
            max_connections_per_user: 32,
            rest_rate_per_sec: 20,
            rest_rate_burst: 100,
            rest_ip_rate_per_sec: 10,
            rest_ip_rate_burst: 50,
            trust_forwarded_for: false,
            membership_recheck_secs: 30,
            resume_max_rooms: 100,
            content_blocklist_file: None,
            moderation_url: None,
            moderation_timeout_ms: 500,
            moderation_fail: ModerationFail::Open,
            content_strikes: 3,
            content_strike_window_secs: 600,
            session_policy: SessionPolicy::Multi,
            notification_coalesce_secs: 10,
            webhook_url: None,
            webhook_secret: None,
            webhook_events: StringList::default(),
            webhook_retries: 5,
            webhook_backoff_ms: 500,
            webhook_timeout_ms: 5_000,
            dead_letter_max_len: 100_000,
            email_from: None,
            email_password: None,
            email_level: "error".into(),
            email_to: StringList::default(),
            smtp_host: None,
            smtp_port: None,
            smtp_tls: SmtpTls::Starttls,
            email_batch_secs: 60,
            email_max_per_hour: 10,
            support_expiry_secs: 120,
            verification_url: None,
            verification_timeout_ms: 2000,
            verification_cache_secs: 30,
            auth_mode: None,
            expiration_token_duration: None,
            client_api_key: None,
            client_config_file: None,
            client_config: serde_json::Map::new(),
            userid_header_key: "userid".into(),
            trust_userid_header: false,
            error_obj_key: "errors".into(),
            client_api_url: None,
            client_ws_url: None,
            jwt_permissions_claim: None,
        }
    }
}

/// How user tokens are verified (`AUTH_MODE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Locally, as JWTs (SPEC §2).
    Jwt,
    /// By the identity service at `VERIFICATION_URL`.
    Delegated,
    /// Locally first; a token that fails there is asked about.
    Both,
}

/// Cluster (Redis + Postgres, separate workers) or embedded (one process, SQLite).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    Cluster {
        redis_url: String,
        database_url: String,
    },
    Embedded {
        data_dir: std::path::PathBuf,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// `MODERATION_FAIL`: whether a message passes (`open`) or is rejected
/// (`closed`) when the moderation service cannot answer in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModerationFail {
    Open,
    Closed,
}

/// `SESSION_POLICY`: how many connections a user may hold at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionPolicy {
    Multi,
    Single,
}

/// How error e-mail reaches `SMTP_HOST`: plain, upgraded with STARTTLS, or TLS
/// from the first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    Off,
    Starttls,
    Tls,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum JwtAlgorithm {
    HS256,
    RS256,
}

/// A list given either as a TOML array or as a comma-separated string (env vars).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StringList(pub Vec<String>);

impl<'de> Deserialize<'de> for StringList {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            List(Vec<String>),
            Csv(String),
        }
        let items = match Raw::deserialize(deserializer)? {
            Raw::List(items) => items,
            Raw::Csv(csv) => csv.split(',').map(str::to_owned).collect(),
        };
        Ok(StringList(
            items
                .into_iter()
                .map(|item| item.trim().trim_end_matches('/').to_owned())
                .filter(|item| !item.is_empty())
                .collect(),
        ))
    }
}

/// Start-up configuration problems, each naming the key to fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid configuration: {0} (environment variables use the upper-case key, e.g. PORT)")]
    Invalid(#[from] config::ConfigError),
    #[error("invalid configuration: {key}: {problem}")]
    Key { key: &'static str, problem: String },
}

impl Config {
    /// Loads defaults, then `file` (TOML) if given, then `env` (e.g. `std::env::vars()`).
    pub fn load(file: Option<&Path>, env: HashMap<String, String>) -> Result<Config, ConfigError> {
        let mut env = env;
        // Seed-compatible names: older deployments set these for the same settings.
        alias(&mut env, "EMOTIVES_URL", "APP_URL");
        let mut builder = config::Config::builder();
        if let Some(path) = file {
            builder = builder.add_source(config::File::from(path).format(config::FileFormat::Toml));
        }
        let env: config::Map<String, String> = env
            .into_iter()
            // Only our own keys: the rest of the environment (PATH, HOME…) is not config.
            .filter(|(key, _)| KNOWN_KEYS.contains(&key.to_ascii_lowercase().as_str()))
            .collect();
        let sources = builder
            .add_source(config::Environment::default().source(Some(env)))
            .build()?;
        // Defaults come from `Default`, not from a source: a key the sources hold
        // was set by the operator.
        let host_is_set = sources.get_string("host").is_ok();
        let mut config: Config = sources.try_deserialize()?;
        config.validate()?;
        if !host_is_set && config.uses_dev_secret() {
            config.host = DEV_SECRET_HOST.into();
        }
        Ok(config)
    }

    /// Which deployment this configuration describes.
    pub fn mode(&self) -> Result<Mode, ConfigError> {
        match (&self.redis_url, &self.database_url) {
            (Some(redis), Some(database)) => Ok(Mode::Cluster {
                redis_url: redis.clone(),
                database_url: database.clone(),
            }),
            (None, None) => Ok(Mode::Embedded {
                data_dir: self.data_dir.clone().into(),
            }),
            (None, Some(_)) => Err(ConfigError::Key {
                key: "REDIS_URL",
                problem: "DATABASE_URL is set but REDIS_URL is not: set both to run as a cluster, \
                          or neither for the embedded mode"
                    .into(),
            }),
            (Some(_), None) => Err(ConfigError::Key {
                key: "DATABASE_URL",
                problem: "REDIS_URL is set but DATABASE_URL is not: set both to run as a cluster, \
                          or neither for the embedded mode"
                    .into(),
            }),
        }
    }

    /// How Redis keys and channels are laid out: sharded over `REDIS_SHARDS`
    /// when `REDIS_URL` names a Redis Cluster, today's single-node names otherwise.
    pub fn keyspace(&self) -> crate::keyspace::Keyspace {
        match &self.redis_url {
            Some(url) if crate::keyspace::is_cluster_url(url) => {
                crate::keyspace::Keyspace::Sharded {
                    shards: self.redis_shards,
                }
            }
            _ => crate::keyspace::Keyspace::Single,
        }
    }

    /// `REDIS_WAIT_REPLICAS`, or its default for the keyspace: 1 on Redis
    /// Cluster, 0 on one Redis.
    pub fn redis_wait_replicas(&self) -> u32 {
        self.redis_wait_replicas
            .unwrap_or(u32::from(self.keyspace().sharded()))
    }

    /// The secret that authorizes service calls (`SERVICE_SECRET`), if configured.
    ///
    /// Never `NOTIFICATION_AUTH`: chatter sends that value to the notification
    /// service with every call, so whoever runs or observes that service could mint
    /// tokens and publish as anyone with it. Only `POST /user` accepts it.
    pub fn service_secret(&self) -> Option<&str> {
        self.service_secret
            .as_deref()
            .filter(|secret| !secret.is_empty())
    }

    /// True when the gateway will sign with the development secret it keeps in
    /// `DATA_DIR` (embedded mode, HS256, no `JWT_SECRET`).
    pub fn uses_dev_secret(&self) -> bool {
        self.jwt_algorithm == JwtAlgorithm::HS256
            && self.jwt_secret.is_none()
            && matches!(self.mode(), Ok(Mode::Embedded { .. }))
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("TICKET_TTL_SECS", self.ticket_ttl_secs),
            ("MAX_FRAME_BYTES", self.max_frame_bytes as u64),
            ("MAX_MESSAGE_CHARS", self.max_message_chars as u64),
            ("FRAMES_PER_SEC", u64::from(self.frames_per_sec)),
            ("BAD_FRAME_LIMIT", u64::from(self.bad_frame_limit)),
            ("PING_INTERVAL_SECS", self.ping_interval_secs),
            ("PRESENCE_TTL_SECS", self.presence_ttl_secs),
            ("IDLE_TIMEOUT_SECS", self.idle_timeout_secs),
            ("SEND_QUEUE_FRAMES", self.send_queue_frames as u64),
            ("MAX_CONNECTIONS", self.max_connections as u64),
            ("PAGE_SIZE_DEFAULT", u64::from(self.page_size_default)),
            ("WORKER_BATCH_SIZE", self.worker_batch_size as u64),
            (
                "NOTIFICATION_CONCURRENCY",
                self.notification_concurrency as u64,
            ),
            ("NOTIFICATION_QUEUE", self.notification_queue as u64),
            ("RATE_FLOOD_FRAMES", u64::from(self.rate_flood_frames)),
            (
                "MAX_CONNECTIONS_PER_USER",
                self.max_connections_per_user as u64,
            ),
            ("REST_RATE_PER_SEC", u64::from(self.rest_rate_per_sec)),
            ("REDIS_SHARDS", u64::from(self.redis_shards)),
            ("REDIS_WAIT_TIMEOUT_MS", self.redis_wait_timeout_ms),
            ("REST_RATE_BURST", u64::from(self.rest_rate_burst)),
            ("REST_IP_RATE_PER_SEC", u64::from(self.rest_ip_rate_per_sec)),
            ("REST_IP_RATE_BURST", u64::from(self.rest_ip_rate_burst)),
            (
                "DATABASE_MAX_CONNECTIONS",
                u64::from(self.database_max_connections),
            ),
            ("HTTP_HEADER_TIMEOUT_SECS", self.http_header_timeout_secs),
            ("MAX_HTTP_CONNECTIONS", self.max_http_connections as u64),
            ("MEMBERSHIP_RECHECK_SECS", self.membership_recheck_secs),
            ("RESUME_MAX_ROOMS", self.resume_max_rooms as u64),
            ("MODERATION_TIMEOUT_MS", self.moderation_timeout_ms),
            (
                "CONTENT_STRIKE_WINDOW_SECS",
                self.content_strike_window_secs,
            ),
            ("SUPPORT_EXPIRY_SECS", self.support_expiry_secs),
            ("VERIFICATION_TIMEOUT_MS", self.verification_timeout_ms),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(ConfigError::Key {
                    key,
                    problem: "must be greater than 0".into(),
                });
            }
        }
        if usize::from(self.redis_shards) > crate::keyspace::MAX_SHARDS {
            return Err(ConfigError::Key {
                key: "REDIS_SHARDS",
                problem: format!(
                    "at most {} (one per hash slot of a Redis Cluster)",
                    crate::keyspace::MAX_SHARDS
                ),
            });
        }
        self.validate_secrets()?;
        self.validate_identity_settings()?;
        self.validate_delivery_settings()?;
        if self.page_size_default > self.page_size_max {
            return Err(ConfigError::Key {
                key: "PAGE_SIZE_DEFAULT",
                problem: format!("must not exceed PAGE_SIZE_MAX ({})", self.page_size_max),
            });
        }
        Ok(())
    }
}

impl Config {
    /// How user tokens are verified: `AUTH_MODE`, or when unset `both` with a
    /// `VERIFICATION_URL` (tokens chatter minted keep working) and `jwt` without.
    pub fn auth_mode(&self) -> AuthMode {
        match (self.auth_mode, &self.verification_url) {
            (Some(mode), _) => mode,
            (None, Some(_)) => AuthMode::Both,
            (None, None) => AuthMode::Jwt,
        }
    }

    /// Delegated verification needs somewhere to delegate to.
    fn validate_identity_settings(&self) -> Result<(), ConfigError> {
        if self.auth_mode() != AuthMode::Jwt && self.verification_url.is_none() {
            return Err(ConfigError::Key {
                key: "VERIFICATION_URL",
                problem: "AUTH_MODE=delegated or both needs the identity service's URL".into(),
            });
        }
        if let Some(url) = &self.verification_url
            && url::Url::parse(url).is_err()
        {
            return Err(ConfigError::Key {
                key: "VERIFICATION_URL",
                problem: "not a URL".into(),
            });
        }
        if self
            .jwt_permissions_claim
            .as_deref()
            .is_some_and(|claim| claim.trim().is_empty())
        {
            return Err(ConfigError::Key {
                key: "JWT_PERMISSIONS_CLAIM",
                problem: "must name a claim (unset it to turn permission checks off)".into(),
            });
        }
        if let Some(secs) = self.expiration_token_duration
            && !(1..=MAX_EXPIRATION_TOKEN_DURATION).contains(&secs)
        {
            return Err(ConfigError::Key {
                key: "EXPIRATION_TOKEN_DURATION",
                problem: format!(
                    "must be 1 to {MAX_EXPIRATION_TOKEN_DURATION} seconds \
                     (unset it for tokens without expiry)"
                ),
            });
        }
        Ok(())
    }

    /// Webhooks need a signing secret and known event names; error e-mail needs
    /// a server, a sender and a level that means something.
    fn validate_delivery_settings(&self) -> Result<(), ConfigError> {
        let key = |key: &'static str, problem: String| Err(ConfigError::Key { key, problem });
        if self.webhook_url.is_some() && self.webhook_secret.as_deref().is_none_or(str::is_empty) {
            return key(
                "WEBHOOK_SECRET",
                "WEBHOOK_URL is set: outbound webhooks are signed, so a secret is needed".into(),
            );
        }
        if let Some(unknown) = self
            .webhook_events
            .0
            .iter()
            .find(|name| !crate::events::EVENT_TYPES.contains(&name.as_str()))
        {
            return key(
                "WEBHOOK_EVENTS",
                format!(
                    "unknown event type {unknown:?}; known: {}",
                    crate::events::EVENT_TYPES.join(", ")
                ),
            );
        }
        if self.email_level.parse::<tracing::Level>().is_err() {
            return key(
                "EMAIL_LEVEL",
                format!(
                    "{:?} is not one of error, warn, info, debug, trace",
                    self.email_level
                ),
            );
        }
        if !self.email_to.0.is_empty() {
            if self.smtp_host.is_none() {
                return key(
                    "SMTP_HOST",
                    "EMAIL_TO is set: error e-mail needs an SMTP server".into(),
                );
            }
            if self.email_from.is_none() {
                return key(
                    "EMAIL_FROM",
                    "EMAIL_TO is set: error e-mail needs a sender".into(),
                );
            }
            if self.email_batch_secs == 0 {
                return key("EMAIL_BATCH_SECS", "must be greater than 0".into());
            }
        }
        Ok(())
    }

    /// HS256 keys long enough not to be guessed (see [`MIN_JWT_SECRET_BYTES`]).
    fn validate_secrets(&self) -> Result<(), ConfigError> {
        if self.jwt_algorithm == JwtAlgorithm::HS256
            && let Some(secret) = &self.jwt_secret
            && secret.len() < MIN_JWT_SECRET_BYTES
        {
            return Err(ConfigError::Key {
                key: "JWT_SECRET",
                problem: format!(
                    "an HS256 secret must be at least {MIN_JWT_SECRET_BYTES} bytes long \
                     (this one is {}); generate one with `openssl rand -hex 32`",
                    secret.len()
                ),
            });
        }
        Ok(())
    }
}

/// Secrets print as `<redacted>`, and a password inside `DATABASE_URL` or
/// `REDIS_URL` too, so a logged or panicking `{config:?}` leaks no credential.
/// Every field is named (no `..`), so a new one cannot be added without
/// deciding here whether it is a secret.
impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Config {
            host,
            port,
            allowed_origins,
            log_level,
            log_format,
            database_url,
            redis_url,
            redis_shards,
            redis_wait_replicas,
            redis_wait_timeout_ms,
            database_max_connections,
            data_dir,
            jwt_algorithm,
            jwt_secret,
            jwt_public_key,
            jwt_private_key,
            jwt_issuer,
            jwt_audience,
            jwt_leeway_secs,
            jwt_user_claim,
            service_secret,
            ticket_ttl_secs,
            max_frame_bytes,
            max_message_chars,
            max_temp_id_chars,
            frames_per_sec,
            bad_frame_limit,
            ping_interval_secs,
            idle_timeout_secs,
            send_queue_frames,
            max_connections,
            drain_window_secs,
            presence_ttl_secs,
            recent_log_size,
            recent_log_ttl_secs,
            resume_max,
            dedupe_ttl_secs,
            ingest_max_backlog,
            page_size_default,
            page_size_max,
            max_room_members,
            max_room_name_chars,
            max_room_metadata_bytes,
            typing_interval_ms,
            worker_name,
            worker_port,
            worker_batch_size,
            worker_block_ms,
            worker_claim_idle_ms,
            worker_claim_interval_ms,
            notification_url,
            notification_auth,
            app_url,
            notification_retries,
            notification_backoff_ms,
            notification_timeout_ms,
            notification_concurrency,
            notification_queue,
            redis_require_durable,
            http_header_timeout_secs,
            max_http_connections,
            max_http_connections_per_ip,
            rate_flood_frames,
            max_connections_per_user,
            rest_rate_per_sec,
            rest_rate_burst,
            rest_ip_rate_per_sec,
            rest_ip_rate_burst,
            trust_forwarded_for,
            membership_recheck_secs,
            resume_max_rooms,
            content_blocklist_file,
            moderation_url,
            moderation_timeout_ms,
            moderation_fail,
            content_strikes,
            content_strike_window_secs,
            session_policy,
            notification_coalesce_secs,
            webhook_url,
            webhook_secret,
            webhook_events,
            webhook_retries,
            webhook_backoff_ms,
            webhook_timeout_ms,
            dead_letter_max_len,
            email_from,
            email_password,
            email_level,
            email_to,
            smtp_host,
            smtp_port,
            smtp_tls,
            email_batch_secs,
            email_max_per_hour,
            support_expiry_secs,
            verification_url,
            verification_timeout_ms,
            verification_cache_secs,
            auth_mode,
            expiration_token_duration,
            client_api_key,
            client_config_file,
            client_config,
            userid_header_key,
            trust_userid_header,
            error_obj_key,
            client_api_url,
            client_ws_url,
            jwt_permissions_claim,
        } = self;
        let secret = |value: &Option<String>| value.as_ref().map(|_| Redacted);
        let url = |value: &Option<String>| value.as_deref().map(redact_url);
        f.debug_struct("Config")
            .field("host", host)
            .field("port", port)
            .field("allowed_origins", allowed_origins)
            .field("log_level", log_level)
            .field("log_format", log_format)
            .field("database_url", &url(database_url))
            .field("redis_url", &url(redis_url))
            .field("redis_shards", redis_shards)
            .field("redis_wait_replicas", redis_wait_replicas)
            .field("redis_wait_timeout_ms", redis_wait_timeout_ms)
            .field("database_max_connections", database_max_connections)
            .field("data_dir", data_dir)
            .field("jwt_algorithm", jwt_algorithm)
            .field("jwt_secret", &secret(jwt_secret))
            .field("jwt_public_key", jwt_public_key)
            .field("jwt_private_key", &secret(jwt_private_key))
            .field("jwt_issuer", jwt_issuer)
            .field("jwt_audience", jwt_audience)
            .field("jwt_leeway_secs", jwt_leeway_secs)
            .field("jwt_user_claim", jwt_user_claim)
            .field("service_secret", &secret(service_secret))
            .field("ticket_ttl_secs", ticket_ttl_secs)
            .field("max_frame_bytes", max_frame_bytes)
            .field("max_message_chars", max_message_chars)
            .field("max_temp_id_chars", max_temp_id_chars)
            .field("frames_per_sec", frames_per_sec)
            .field("bad_frame_limit", bad_frame_limit)
            .field("ping_interval_secs", ping_interval_secs)
            .field("idle_timeout_secs", idle_timeout_secs)
            .field("send_queue_frames", send_queue_frames)
            .field("max_connections", max_connections)
            .field("drain_window_secs", drain_window_secs)
            .field("presence_ttl_secs", presence_ttl_secs)
            .field("recent_log_size", recent_log_size)
            .field("recent_log_ttl_secs", recent_log_ttl_secs)
            .field("resume_max", resume_max)
            .field("dedupe_ttl_secs", dedupe_ttl_secs)
            .field("ingest_max_backlog", ingest_max_backlog)
            .field("page_size_default", page_size_default)
            .field("page_size_max", page_size_max)
            .field("max_room_members", max_room_members)
            .field("max_room_name_chars", max_room_name_chars)
            .field("max_room_metadata_bytes", max_room_metadata_bytes)
            .field("typing_interval_ms", typing_interval_ms)
            .field("worker_name", worker_name)
            .field("worker_port", worker_port)
            .field("worker_batch_size", worker_batch_size)
            .field("worker_block_ms", worker_block_ms)
            .field("worker_claim_idle_ms", worker_claim_idle_ms)
            .field("worker_claim_interval_ms", worker_claim_interval_ms)
            .field("notification_url", notification_url)
            .field("notification_auth", &secret(notification_auth))
            .field("app_url", app_url)
            .field("notification_retries", notification_retries)
            .field("notification_backoff_ms", notification_backoff_ms)
            .field("notification_timeout_ms", notification_timeout_ms)
            .field("notification_concurrency", notification_concurrency)
            .field("notification_queue", notification_queue)
            .field("redis_require_durable", redis_require_durable)
            .field("http_header_timeout_secs", http_header_timeout_secs)
            .field("max_http_connections", max_http_connections)
            .field("max_http_connections_per_ip", max_http_connections_per_ip)
            .field("rate_flood_frames", rate_flood_frames)
            .field("max_connections_per_user", max_connections_per_user)
            .field("rest_rate_per_sec", rest_rate_per_sec)
            .field("rest_rate_burst", rest_rate_burst)
            .field("rest_ip_rate_per_sec", rest_ip_rate_per_sec)
            .field("rest_ip_rate_burst", rest_ip_rate_burst)
            .field("trust_forwarded_for", trust_forwarded_for)
            .field("membership_recheck_secs", membership_recheck_secs)
            .field("resume_max_rooms", resume_max_rooms)
            .field("content_blocklist_file", content_blocklist_file)
            // The URL may carry credentials (user:password@ or a token in the query).
            .field("moderation_url", &moderation_url.as_deref().map(redact_url))
            .field("moderation_timeout_ms", moderation_timeout_ms)
            .field("moderation_fail", moderation_fail)
            .field("content_strikes", content_strikes)
            .field("content_strike_window_secs", content_strike_window_secs)
            .field("session_policy", session_policy)
            .field("notification_coalesce_secs", notification_coalesce_secs)
            .field("webhook_url", webhook_url)
            .field("webhook_secret", &secret(webhook_secret))
            .field("webhook_events", webhook_events)
            .field("webhook_retries", webhook_retries)
            .field("webhook_backoff_ms", webhook_backoff_ms)
            .field("webhook_timeout_ms", webhook_timeout_ms)
            .field("dead_letter_max_len", dead_letter_max_len)
            .field("email_from", email_from)
            .field("email_password", &secret(email_password))
            .field("email_level", email_level)
            .field("email_to", email_to)
            .field("smtp_host", smtp_host)
            .field("smtp_port", smtp_port)
            .field("smtp_tls", smtp_tls)
            .field("email_batch_secs", email_batch_secs)
            .field("email_max_per_hour", email_max_per_hour)
            .field("support_expiry_secs", support_expiry_secs)
            .field("verification_url", &url(verification_url))
            .field("verification_timeout_ms", verification_timeout_ms)
            .field("verification_cache_secs", verification_cache_secs)
            .field("auth_mode", auth_mode)
            .field("expiration_token_duration", expiration_token_duration)
            .field("client_api_key", client_api_key)
            .field("client_config_file", client_config_file)
            // Client configs are public by design (sent to unauthenticated clients).
            .field("client_config", client_config)
            .field("userid_header_key", userid_header_key)
            .field("trust_userid_header", trust_userid_header)
            .field("error_obj_key", error_obj_key)
            .field("client_api_url", client_api_url)
            .field("client_ws_url", client_ws_url)
            .field("jwt_permissions_claim", jwt_permissions_claim)
            .finish()
    }
}

/// Prints as `<redacted>` (without quotes) in place of a secret.
struct Redacted;

impl std::fmt::Debug for Redacted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A connection URL with its password (in the user part or a `password=` query
/// parameter) replaced; an unparseable one is redacted whole, since where its
/// password sits is unknown.
fn redact_url(raw: &str) -> String {
    let Ok(mut url) = url::Url::parse(raw) else {
        return "<redacted: not a URL>".into();
    };
    if url.password().is_some() && url.set_password(Some("redacted")).is_err() {
        return "<redacted: not a URL>".into();
    }
    if url.query_pairs().any(|(key, _)| key == "password") {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(key, value)| {
                let value = if key == "password" {
                    "redacted".into()
                } else {
                    value.into_owned()
                };
                (key.into_owned(), value)
            })
            .collect();
        url.query_pairs_mut().clear().extend_pairs(pairs);
    }
    url.into()
}

fn alias(env: &mut HashMap<String, String>, old: &str, new: &str) {
    if !env.contains_key(new)
        && let Some(value) = env.get(old).cloned()
    {
        env.insert(new.to_owned(), value);
    }
}

/// The keys [`Config`] reads; anything else in the environment is ignored.
const KNOWN_KEYS: &[&str] = &[
    "host",
    "port",
    "allowed_origins",
    "log_level",
    "log_format",
    "database_url",
    "redis_url",
    "redis_shards",
    "redis_wait_replicas",
    "redis_wait_timeout_ms",
    "database_max_connections",
    "data_dir",
    "jwt_algorithm",
    "jwt_secret",
    "jwt_public_key",
    "jwt_private_key",
    "jwt_issuer",
    "jwt_audience",
    "jwt_leeway_secs",
    "jwt_user_claim",
    "service_secret",
    "ticket_ttl_secs",
    "max_frame_bytes",
    "max_message_chars",
    "max_temp_id_chars",
    "frames_per_sec",
    "bad_frame_limit",
    "ping_interval_secs",
    "idle_timeout_secs",
    "send_queue_frames",
    "max_connections",
    "drain_window_secs",
    "presence_ttl_secs",
    "recent_log_size",
    "recent_log_ttl_secs",
    "resume_max",
    "dedupe_ttl_secs",
    "ingest_max_backlog",
    "page_size_default",
    "page_size_max",
    "max_room_members",
    "max_room_name_chars",
    "max_room_metadata_bytes",
    "typing_interval_ms",
    "worker_name",
    "worker_port",
    "worker_batch_size",
    "worker_block_ms",
    "worker_claim_idle_ms",
    "worker_claim_interval_ms",
    "notification_url",
    "notification_auth",
    "app_url",
    "notification_retries",
    "notification_backoff_ms",
    "notification_timeout_ms",
    "notification_concurrency",
    "notification_queue",
    "redis_require_durable",
    "http_header_timeout_secs",
    "max_http_connections",
    "max_http_connections_per_ip",
    "rate_flood_frames",
    "max_connections_per_user",
    "rest_rate_per_sec",
    "rest_rate_burst",
    "rest_ip_rate_per_sec",
    "rest_ip_rate_burst",
    "trust_forwarded_for",
    "membership_recheck_secs",
    "resume_max_rooms",
    "content_blocklist_file",
    "moderation_url",
    "moderation_timeout_ms",
    "moderation_fail",
    "content_strikes",
    "content_strike_window_secs",
    "session_policy",
    "notification_coalesce_secs",
    "webhook_url",
    "webhook_secret",
    "webhook_events",
    "webhook_retries",
    "webhook_backoff_ms",
    "webhook_timeout_ms",
    "dead_letter_max_len",
    "email_from",
    "email_password",
    "email_level",
    "email_to",
    "smtp_host",
    "smtp_port",
    "smtp_tls",
    "email_batch_secs",
    "email_max_per_hour",
    "support_expiry_secs",
    "verification_url",
    "verification_timeout_ms",
    "verification_cache_secs",
    "auth_mode",
    "expiration_token_duration",
    "client_api_key",
    "client_config_file",
    "userid_header_key",
    "trust_userid_header",
    "error_obj_key",
    "client_api_url",
    "client_ws_url",
    "jwt_permissions_claim",
];

/// Whether `name` is an environment variable chatter reads: a configuration key
/// in upper case (older aliases such as `EMOTIVES_URL` do not count). Anything
/// else is silently ignored, so deployment files check their names with this
/// (see `tests/tests/manifests.rs`).
pub fn is_known_env_name(name: &str) -> bool {
    name.bytes().all(|b| !b.is_ascii_lowercase())
        && KNOWN_KEYS.contains(&name.to_ascii_lowercase().as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_apply_without_any_input() {
        let config = Config::load(None, HashMap::new()).expect("defaults are valid");
        assert_eq!(config.port, DEFAULT_PORT);
        assert_eq!(config.ticket_ttl_secs, DEFAULT_TICKET_TTL_SECS);
    }

    #[test]
    fn environment_overrides_and_seed_names_are_honoured() {
        let config = Config::load(
            None,
            env(&[
                ("PORT", "9000"),
                ("EMOTIVES_URL", "https://emotives.example/"),
                ("NOTIFICATION_AUTH", "s3cret"),
                ("ALLOWED_ORIGINS", "https://a.example, https://b.example/"),
                ("PATH", "/usr/bin"),
            ]),
        )
        .expect("valid");
        assert_eq!(config.port, 9000);
        assert_eq!(config.app_url, "https://emotives.example/");
        assert_eq!(config.notification_auth.as_deref(), Some("s3cret"));
        // The value chatter sends to notif never authorizes calls into chatter.
        assert_eq!(config.service_secret(), None);
        assert_eq!(
            config.allowed_origins.0,
            vec!["https://a.example", "https://b.example"]
        );
    }

    #[test]
    fn a_malformed_value_names_its_key() {
        let error = Config::load(None, env(&[("PORT", "eighty")])).expect_err("invalid");
        assert!(error.to_string().contains("port"), "{error}");
        let error = Config::load(None, env(&[("FRAMES_PER_SEC", "0")])).expect_err("invalid");
        assert!(error.to_string().contains("FRAMES_PER_SEC"), "{error}");
    }

    #[test]
    fn file_sits_between_defaults_and_environment() {
        let dir = std::env::temp_dir().join(format!("chatter-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("chatter.toml");
        std::fs::write(
            &path,
            "port = 7000\nhost = \"127.0.0.1\"\nallowed_origins = [\"https://x.example\"]\n",
        )
        .expect("write");
        let config = Config::load(Some(&path), env(&[("PORT", "7100")])).expect("valid");
        assert_eq!(config.port, 7100);
        assert_eq!(config.host, "127.0.0.1");
        assert_eq!(config.allowed_origins.0, vec!["https://x.example"]);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_short_hs256_secret_stops_startup_naming_jwt_secret() {
        let short = "x".repeat(MIN_JWT_SECRET_BYTES - 1);
        let error = Config::load(None, env(&[("JWT_SECRET", &short)])).expect_err("too short");
        assert!(error.to_string().contains("JWT_SECRET"), "{error}");
        assert!(error.to_string().contains("32 bytes"), "{error}");
        let long = "x".repeat(MIN_JWT_SECRET_BYTES);
        assert!(Config::load(None, env(&[("JWT_SECRET", &long)])).is_ok());
        // RS256 does not use it.
        let rs = env(&[("JWT_SECRET", "x"), ("JWT_ALGORITHM", "RS256")]);
        assert!(Config::load(None, rs).is_ok());
    }

    #[test]
    fn the_development_secret_listens_on_loopback_unless_host_is_set() {
        let secret = "s".repeat(MIN_JWT_SECRET_BYTES);
        let cluster = [
            ("REDIS_URL", "redis://127.0.0.1:1"),
            ("DATABASE_URL", "postgres://x@127.0.0.1:1/x"),
        ];
        let cases: [(&[(&str, &str)], &str); 4] = [
            (&[], DEV_SECRET_HOST),
            (&[("HOST", "0.0.0.0")], "0.0.0.0"),
            (&[("JWT_SECRET", &secret)], "0.0.0.0"),
            (&cluster, "0.0.0.0"),
        ];
        for (pairs, host) in cases {
            let config = Config::load(None, env(pairs)).expect("valid");
            assert_eq!(config.host, host, "{pairs:?}");
        }
    }

    #[test]
    fn debug_output_redacts_every_secret() {
        let config = Config::load(
            None,
            env(&[
                ("JWT_SECRET", "jwt-secret-value-0123456789abcdef"),
                ("JWT_PRIVATE_KEY", "private-key-value"),
                ("SERVICE_SECRET", "service-secret-value"),
                ("NOTIFICATION_AUTH", "notification-auth-value"),
                ("WEBHOOK_SECRET", "webhook-secret-value"),
                ("EMAIL_PASSWORD", "email-password-value"),
                (
                    "DATABASE_URL",
                    "postgres://chat:db-password@db.internal:5432/chat?sslmode=require&password=query-password",
                ),
                ("REDIS_URL", "redis://:redis-password@redis.internal:6379"),
                (
                    "VERIFICATION_URL",
                    "https://chatter:verify-password@id.internal/verify",
                ),
            ]),
        )
        .expect("valid");
        let printed = format!("{config:?}");
        for leaked in [
            "jwt-secret-value",
            "private-key-value",
            "service-secret-value",
            "notification-auth-value",
            "webhook-secret-value",
            "email-password-value",
            "db-password",
            "query-password",
            "redis-password",
            "verify-password",
        ] {
            assert!(!printed.contains(leaked), "{leaked} in {printed}");
        }
        assert!(
            printed.contains("jwt_secret: Some(<redacted>)"),
            "{printed}"
        );
        // What is not secret stays readable.
        assert!(printed.contains("db.internal:5432/chat"), "{printed}");
        assert!(printed.contains("sslmode=require"), "{printed}");
        assert!(printed.contains("redis.internal:6379"), "{printed}");
        assert!(printed.contains("jwt_leeway_secs: 5"), "{printed}");
        assert_eq!(redact_url("not a url"), "<redacted: not a URL>");
    }

    #[test]
    fn client_config_tables_and_auth_mode_load_as_written() {
        let dir =
            std::env::temp_dir().join(format!("chatter-client-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("chatter.toml");
        std::fs::write(
            &path,
            "[client_config.web]\nthemeColor = \"#fff\"\nerrors = { title = \"Oops\", message = \"Sign in\" }\n",
        )
        .expect("write");
        let config = Config::load(Some(&path), env(&[])).expect("valid");
        let web = &config.client_config["web"];
        assert_eq!(web["themeColor"], "#fff", "{web}");
        assert_eq!(web["errors"]["title"], "Oops", "{web}");
        let _ = std::fs::remove_dir_all(dir);

        assert_eq!(config.auth_mode(), AuthMode::Jwt);
        let delegated = Config::load(
            None,
            env(&[("VERIFICATION_URL", "http://id.example/verify")]),
        )
        .expect("valid");
        assert_eq!(delegated.auth_mode(), AuthMode::Both);
        let error = Config::load(None, env(&[("AUTH_MODE", "delegated")])).expect_err("no URL");
        assert!(error.to_string().contains("VERIFICATION_URL"), "{error}");
        let error =
            Config::load(None, env(&[("EXPIRATION_TOKEN_DURATION", "0")])).expect_err("zero");
        assert!(
            error.to_string().contains("EXPIRATION_TOKEN_DURATION"),
            "{error}"
        );
    }

    #[test]
    fn integration_settings_are_checked_naming_their_key() {
        let cases: [(&[(&str, &str)], &str); 5] = [
            (&[("WEBHOOK_URL", "http://hooks.test/")], "WEBHOOK_SECRET"),
            (
                &[("WEBHOOK_EVENTS", "message.created,room.exploded")],
                "WEBHOOK_EVENTS",
            ),
            (&[("EMAIL_LEVEL", "loud")], "EMAIL_LEVEL"),
            (&[("EMAIL_TO", "ops@example.com")], "SMTP_HOST"),
            (&[("SMTP_TLS", "maybe")], "smtp_tls"),
        ];
        for (pairs, key) in cases {
            let error = Config::load(None, env(pairs)).expect_err("invalid");
            assert!(error.to_string().contains(key), "{pairs:?}: {error}");
        }
        let config = Config::load(
            None,
            env(&[
                ("WEBHOOK_URL", "http://hooks.test/"),
                ("WEBHOOK_SECRET", "s"),
                ("WEBHOOK_EVENTS", "room.created, member.added"),
                ("EMAIL_TO", "a@example.com,b@example.com"),
                ("EMAIL_FROM", "chatter@example.com"),
                ("SMTP_HOST", "smtp.example.com"),
                ("SMTP_TLS", "tls"),
                ("NOTIFICATION_COALESCE_SECS", "0"),
            ]),
        )
        .expect("valid");
        assert_eq!(
            config.webhook_events.0,
            vec!["room.created", "member.added"]
        );
        assert_eq!(config.email_to.0.len(), 2);
        assert_eq!(config.smtp_tls, SmtpTls::Tls);
        assert_eq!(config.notification_coalesce_secs, 0);
        assert_eq!(Config::default().notification_coalesce_secs, 10);
    }

    #[test]
    fn rate_limit_settings_load_from_the_environment() {
        let config = Config::load(
            None,
            env(&[
                ("TRUST_FORWARDED_FOR", "true"),
                ("MAX_CONNECTIONS_PER_USER", "4"),
                ("REST_RATE_BURST", "7"),
            ]),
        )
        .expect("valid");
        assert!(config.trust_forwarded_for);
        assert_eq!(config.max_connections_per_user, 4);
        assert_eq!(config.rest_rate_burst, 7);
        assert!(!Config::default().trust_forwarded_for);
        let error = Config::load(None, env(&[("REST_IP_RATE_PER_SEC", "0")])).expect_err("zero");
        assert!(
            error.to_string().contains("REST_IP_RATE_PER_SEC"),
            "{error}"
        );
    }
}
