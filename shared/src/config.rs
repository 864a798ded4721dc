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

/// Every setting chatter understands. See the README's configuration table.
#[derive(Debug, Clone, Deserialize)]
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
    /// Authorizes service-to-service calls. Falls back to `NOTIFICATION_AUTH`,
    /// the name the older identity service uses for the same shared secret.
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
    pub notification_auth: Option<String>,
    /// Base URL of the web app, used to build links in notifications.
    /// `EMOTIVES_URL` is accepted as the older name.
    pub app_url: String,
    pub notification_retries: u32,
    pub notification_backoff_ms: u64,
    pub notification_timeout_ms: u64,
    pub notification_concurrency: usize,
    pub notification_queue: usize,

    // --- membership and resume bounds ---
    /// Every local user's rooms are re-read from the database once per this many
    /// seconds (spread over the interval), so a removal whose event was lost
    /// still takes effect.
    pub membership_recheck_secs: u64,
    /// Rooms one `Resume` frame may list; more are refused with `too_many_rooms`.
    pub resume_max_rooms: usize,
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
            membership_recheck_secs: 30,
            resume_max_rooms: 100,
        }
    }
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
        let config: Config = builder
            .add_source(config::Environment::default().source(Some(env)))
            .build()?
            .try_deserialize()?;
        config.validate()?;
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

    /// The secret that authorizes service calls, if any is configured.
    pub fn service_secret(&self) -> Option<&str> {
        self.service_secret
            .as_deref()
            .or(self.notification_auth.as_deref())
            .filter(|secret| !secret.is_empty())
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
            (
                "DATABASE_MAX_CONNECTIONS",
                u64::from(self.database_max_connections),
            ),
            ("MEMBERSHIP_RECHECK_SECS", self.membership_recheck_secs),
            ("RESUME_MAX_ROOMS", self.resume_max_rooms as u64),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(ConfigError::Key {
                    key,
                    problem: "must be greater than 0".into(),
                });
            }
        }
        if self.page_size_default > self.page_size_max {
            return Err(ConfigError::Key {
                key: "PAGE_SIZE_DEFAULT",
                problem: format!("must not exceed PAGE_SIZE_MAX ({})", self.page_size_max),
            });
        }
        Ok(())
    }
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
    "membership_recheck_secs",
    "resume_max_rooms",
];

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
        assert_eq!(config.service_secret(), Some("s3cret"));
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
}
