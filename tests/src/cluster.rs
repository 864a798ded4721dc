//! A whole chatter deployment for one test: Redis, Postgres, the fake
//! notification service, and any number of gateways and workers, configured
//! the way the product is configured in production (environment variables).
//!
//! ```ignore
//! let cluster = Cluster::builder(chatter_tests::binaries!()).gateways(2).start().await?;
//! let mut alice = cluster.connect_ws(0, &cluster.token("alice")).await?;
//! let (status, body) = cluster.api(1).get("/rooms", &cluster.token("bob")).await?;
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures::future::try_join_all;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::PgPool;
use tempfile::TempDir;

use crate::notif::NotifFake;
use crate::postgres::PostgresServer;
use crate::process::{Gateway, Worker};
use crate::redis::RedisServer;
use crate::redis_cluster::RedisCluster;
use crate::ws::{ConnectError, WsClient};

/// Paths of the product binaries; build it with [`binaries!`](crate::binaries).
#[derive(Debug, Clone)]
pub struct Binaries {
    pub gateway: PathBuf,
    pub worker: PathBuf,
}

/// Configures a [`Cluster`]. Defaults: one gateway, one worker (none in
/// embedded mode), Redis and Postgres.
pub struct ClusterBuilder {
    binaries: Binaries,
    gateways: usize,
    workers: Option<usize>,
    embedded: bool,
    on_redis_cluster: bool,
    env: Vec<(String, String)>,
    removed: Vec<String>,
}

impl ClusterBuilder {
    pub fn gateways(mut self, n: usize) -> Self {
        self.gateways = n;
        self
    }

    pub fn workers(mut self, n: usize) -> Self {
        self.workers = Some(n);
        self
    }

    /// Sets (or overrides) an environment variable for every gateway and worker.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Leaves a default variable unset (to test a missing setting).
    pub fn without_env(mut self, key: impl Into<String>) -> Self {
        self.removed.push(key.into());
        self
    }

    /// Runs the product's embedded mode: no Redis, no Postgres, no
    /// `REDIS_URL`/`DATABASE_URL` (the gateway uses an in-process bus and
    /// SQLite under `./data/` in the cluster's temp dir). No workers by default.
    pub fn embedded(mut self) -> Self {
        self.embedded = true;
        self
    }

    /// Runs on a six-node Redis Cluster ([`RedisCluster`], `redis-cluster://`
    /// in `REDIS_URL`) instead of one `redis-server`.
    pub fn on_redis_cluster(mut self) -> Self {
        self.on_redis_cluster = true;
        self
    }

    pub async fn start(self) -> Result<Cluster> {
        let dir = tempfile::Builder::new()
            .prefix("chatter-e2e-")
            .tempdir()
            .context("creating the cluster dir")?;
        let (redis, redis_cluster, postgres, notif) = if self.embedded {
            (None, None, None, NotifFake::start().await?)
        } else if self.on_redis_cluster {
            let (redis_cluster, postgres, notif) = tokio::try_join!(
                RedisCluster::start(),
                PostgresServer::start(),
                NotifFake::start()
            )?;
            (None, Some(redis_cluster), Some(postgres), notif)
        } else {
            let (redis, postgres, notif) = tokio::try_join!(
                RedisServer::start(),
                PostgresServer::start(),
                NotifFake::start()
            )?;
            (Some(redis), None, Some(postgres), notif)
        };

        let secret = || uuid::Uuid::new_v4().simple().to_string();
        let (jwt_secret, service_secret, notif_auth) = (secret(), secret(), secret());
        let mut env: Vec<(String, String)> = Vec::new();
        let redis_url = match (&redis, &redis_cluster) {
            (Some(redis), _) => Some(redis.url()),
            (_, Some(redis_cluster)) => Some(redis_cluster.url()),
            _ => None,
        };
        if let (Some(redis_url), Some(postgres)) = (redis_url, &postgres) {
            env.push(("REDIS_URL".into(), redis_url));
            env.push(("DATABASE_URL".into(), postgres.url()));
        }
        if redis_cluster.is_some() {
            // Several six-node clusters share the test machine's 2 cores: a
            // replica's acknowledgement can take longer than in production.
            env.push(("REDIS_WAIT_TIMEOUT_MS".into(), "2000".into()));
        }
        let defaults = [
            ("HOST", "127.0.0.1"),
            ("PORT", "0"),
            ("WORKER_PORT", "0"),
            ("JWT_SECRET", &jwt_secret),
            ("SERVICE_SECRET", &service_secret),
            ("NOTIFICATION_URL", &notif.url()),
            ("NOTIFICATION_AUTH", &notif_auth),
            ("APP_URL", "http://app.test/"),
            // One notification per message, as most tests count them; the
            // coalescing tests turn it back on.
            ("NOTIFICATION_COALESCE_SECS", "0"),
            ("ALLOWED_ORIGINS", "http://allowed.test"),
            ("LOG_FORMAT", "json"),
            (
                "LOG_LEVEL",
                "info,chatter_gateway=debug,chatter_worker=debug,chatter_shared=debug",
            ),
        ];
        env.extend(defaults.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        for (key, value) in self.env {
            set_env(&mut env, key, value);
        }
        env.retain(|(key, _)| !self.removed.contains(key));

        let http = reqwest::Client::builder()
            // Never route 127.0.0.1 through a proxy from the developer's environment.
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .build()
            .context("building the HTTP client")?;

        let mut cluster = Cluster {
            gateways: Vec::new(),
            workers: Vec::new(),
            notif,
            redis,
            redis_cluster,
            postgres,
            binaries: self.binaries,
            env,
            jwt_secret,
            service_secret,
            notif_auth,
            http,
            spawned: 0,
            dir,
        };
        let workers = self.workers.unwrap_or(if self.embedded { 0 } else { 1 });
        // Both binaries run migrations at start-up; that is safe concurrently.
        // One embedded process is the whole product: a second would be a second,
        // unconnected chat server on the same SQLite file.
        let gateway_count = if self.embedded { 1 } else { self.gateways };
        let gateways = (0..gateway_count)
            .map(|_| cluster.spawn_gateway(&[]))
            .collect::<Vec<_>>();
        let workers = (0..workers)
            .map(|_| cluster.spawn_worker(&[]))
            .collect::<Vec<_>>();
        let (gateways, workers) = tokio::try_join!(try_join_all(gateways), try_join_all(workers))?;
        cluster.gateways = gateways;
        cluster.workers = workers;
        Ok(cluster)
    }
}

fn set_env(env: &mut Vec<(String, String)>, key: String, value: String) {
    match env.iter_mut().find(|(k, _)| *k == key) {
        Some(slot) => slot.1 = value,
        None => env.push((key, value)),
    }
}

/// A running deployment. Dropping it stops everything (processes first). If
/// the test is panicking, each process prints the end of its log and the
/// folder with the full logs is kept (its path is printed).
pub struct Cluster {
    // Declaration order is drop order: the product processes go before the
    // services they talk to, so their logs don't end in a storm of errors.
    gateways: Vec<Gateway>,
    workers: Vec<Worker>,
    notif: NotifFake,
    redis: Option<RedisServer>,
    redis_cluster: Option<RedisCluster>,
    postgres: Option<PostgresServer>,
    binaries: Binaries,
    env: Vec<(String, String)>,
    jwt_secret: String,
    service_secret: String,
    notif_auth: String,
    http: reqwest::Client,
    /// Processes spawned so far; numbers the log files.
    spawned: usize,
    dir: TempDir,
}

impl Cluster {
    pub fn builder(binaries: Binaries) -> ClusterBuilder {
        ClusterBuilder {
            binaries,
            gateways: 1,
            workers: None,
            embedded: false,
            on_redis_cluster: false,
            env: Vec::new(),
            removed: Vec::new(),
        }
    }

    // ----- processes -----

    /// Gateway `i`. In embedded mode every index names the one process, so a
    /// test written for several gateways runs unchanged against it.
    /// Panics if there is no gateway `i` (a bug in the test).
    pub fn gateway(&self, i: usize) -> &Gateway {
        &self.gateways[self.gateway_index(i)]
    }

    pub fn gateway_mut(&mut self, i: usize) -> &mut Gateway {
        let i = self.gateway_index(i);
        &mut self.gateways[i]
    }

    fn gateway_index(&self, i: usize) -> usize {
        if self.is_embedded() { 0 } else { i }
    }

    /// True when the cluster runs the embedded mode (one process, no Redis/Postgres).
    pub fn is_embedded(&self) -> bool {
        self.redis.is_none()
    }

    pub fn gateways(&self) -> &[Gateway] {
        &self.gateways
    }

    pub fn worker(&self, i: usize) -> &Worker {
        &self.workers[i]
    }

    pub fn worker_mut(&mut self, i: usize) -> &mut Worker {
        &mut self.workers[i]
    }

    pub fn workers(&self) -> &[Worker] {
        &self.workers
    }

    /// Starts one more gateway with the cluster's environment; returns its index.
    pub async fn add_gateway(&mut self) -> Result<usize> {
        self.add_gateway_with(&[]).await
    }

    /// Starts one more gateway with some variables overridden; returns its index.
    pub async fn add_gateway_with(&mut self, overrides: &[(&str, &str)]) -> Result<usize> {
        let gateway = self.spawn_gateway(overrides).await?;
        self.gateways.push(gateway);
        Ok(self.gateways.len() - 1)
    }

    pub async fn add_worker(&mut self) -> Result<usize> {
        self.add_worker_with(&[]).await
    }

    pub async fn add_worker_with(&mut self, overrides: &[(&str, &str)]) -> Result<usize> {
        let worker = self.spawn_worker(overrides).await?;
        self.workers.push(worker);
        Ok(self.workers.len() - 1)
    }

    /// SIGKILLs gateway `i` (if still running) and starts a fresh one in its
    /// place. The new one listens on a new port.
    pub async fn restart_gateway(&mut self, i: usize) -> Result<()> {
        let i = self.gateway_index(i);
        self.gateways[i].kill9();
        self.gateways[i] = self.spawn_gateway(&[]).await?;
        Ok(())
    }

    /// SIGKILLs worker `i` (if still running) and starts a fresh one in its place.
    pub async fn restart_worker(&mut self, i: usize) -> Result<()> {
        self.workers[i].kill9();
        self.workers[i] = self.spawn_worker(&[]).await?;
        Ok(())
    }

    fn spawn_gateway(
        &mut self,
        overrides: &[(&str, &str)],
    ) -> impl Future<Output = Result<Gateway>> + use<> {
        let (log, env) = self.next_spawn("gateway", overrides);
        let path = self.binaries.gateway.clone();
        async move { Gateway::spawn(&path, &env, &log).await }
    }

    fn spawn_worker(
        &mut self,
        overrides: &[(&str, &str)],
    ) -> impl Future<Output = Result<Worker>> + use<> {
        let (log, env) = self.next_spawn("worker", overrides);
        let path = self.binaries.worker.clone();
        async move { Worker::spawn(&path, &env, &log).await }
    }

    /// Log path and environment for the next process.
    fn next_spawn(
        &mut self,
        kind: &str,
        overrides: &[(&str, &str)],
    ) -> (PathBuf, Vec<(String, String)>) {
        self.spawned += 1;
        let log = self.dir.path().join(format!("{kind}-{}.log", self.spawned));
        let mut env = self.env.clone();
        for (key, value) in overrides {
            set_env(&mut env, key.to_string(), value.to_string());
        }
        (log, env)
    }

    /// The environment every gateway and worker gets (for tests that run a
    /// binary by hand, e.g. with [`run_to_exit`](crate::process::run_to_exit)).
    pub fn env(&self) -> &[(String, String)] {
        &self.env
    }

    pub fn binaries(&self) -> &Binaries {
        &self.binaries
    }

    /// The cluster's folder: process logs, and the working directory of every process.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    // ----- services -----

    /// Panics in embedded mode (there is no Redis).
    pub fn redis(&self) -> &RedisServer {
        self.redis
            .as_ref()
            .expect("this cluster runs in embedded mode: no Redis")
    }

    pub fn redis_mut(&mut self) -> &mut RedisServer {
        self.redis
            .as_mut()
            .expect("this cluster runs in embedded mode: no Redis")
    }

    /// Panics unless built [`ClusterBuilder::on_redis_cluster`].
    pub fn redis_cluster(&self) -> &RedisCluster {
        self.redis_cluster
            .as_ref()
            .expect("this cluster runs on one redis-server")
    }

    pub fn redis_cluster_mut(&mut self) -> &mut RedisCluster {
        self.redis_cluster
            .as_mut()
            .expect("this cluster runs on one redis-server")
    }

    /// Panics in embedded mode (there is no Postgres).
    pub fn postgres(&self) -> &PostgresServer {
        self.postgres
            .as_ref()
            .expect("this cluster runs in embedded mode: no Postgres")
    }

    pub fn postgres_mut(&mut self) -> &mut PostgresServer {
        self.postgres
            .as_mut()
            .expect("this cluster runs in embedded mode: no Postgres")
    }

    /// A pool to the product's database, to check what was persisted.
    pub fn db(&self) -> PgPool {
        self.postgres().pool()
    }

    pub fn notif(&self) -> &NotifFake {
        &self.notif
    }

    pub fn jwt_secret(&self) -> &str {
        &self.jwt_secret
    }

    pub fn service_secret(&self) -> &str {
        &self.service_secret
    }

    pub fn notif_auth(&self) -> &str {
        &self.notif_auth
    }

    // ----- clients -----

    /// The standard claims for `user_id`, valid for an hour: `{sub, name, iat, exp}`.
    /// Modify and sign with [`token_with`](Cluster::token_with) for special cases.
    pub fn claims(user_id: &str) -> Value {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        json!({ "sub": user_id, "name": user_id, "iat": now, "exp": now + 3600 })
    }

    /// An HS256 user token the cluster's gateways accept.
    pub fn token(&self, user_id: &str) -> String {
        Self::token_with(&Self::claims(user_id), &self.jwt_secret)
    }

    /// A user token carrying `roles` (e.g. `["support"]`).
    pub fn token_with_roles(&self, user_id: &str, roles: &[&str]) -> String {
        let mut claims = Self::claims(user_id);
        claims["roles"] = json!(roles);
        Self::token_with(&claims, &self.jwt_secret)
    }

    /// Signs arbitrary claims with HS256 and any secret (expired tokens, foreign keys…).
    pub fn token_with(claims: &Value, secret: &str) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .expect("HS256 signing of JSON claims cannot fail")
    }

    /// One HTTP client for the whole test (connection reuse, no proxy, 30 s timeout).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// JSON API helper for gateway `i`.
    pub fn api(&self, i: usize) -> Api<'_> {
        Api {
            http: &self.http,
            base: self.gateway(i).http_url(),
        }
    }

    /// Opens a WebSocket to gateway `i` with `?token=`.
    pub async fn connect_ws(&self, i: usize, token: &str) -> Result<WsClient, ConnectError> {
        WsClient::connect(&format!("{}?token={token}", self.gateway(i).ws_url())).await
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dir.disable_cleanup(true);
            eprintln!(
                "----- cluster logs kept in {} -----",
                self.dir.path().display()
            );
        }
    }
}

/// How a request authenticates.
#[derive(Debug, Clone)]
pub enum Auth {
    None,
    /// `Authorization: Bearer <token>` (user JWTs and tickets).
    Bearer(String),
    /// `Authorization: <value>` verbatim.
    Raw(String),
}

impl From<&str> for Auth {
    fn from(token: &str) -> Self {
        Auth::Bearer(token.to_owned())
    }
}

impl From<&String> for Auth {
    fn from(token: &String) -> Self {
        Auth::Bearer(token.clone())
    }
}

impl From<String> for Auth {
    fn from(token: String) -> Self {
        Auth::Bearer(token)
    }
}

/// JSON requests to one gateway. Every call returns the status and the body,
/// parsed as JSON when it is JSON and as `Value::String` otherwise, so tests
/// can assert on error bodies as easily as on success.
pub struct Api<'a> {
    http: &'a reqwest::Client,
    base: String,
}

impl Api<'_> {
    pub async fn get(&self, path: &str, auth: impl Into<Auth>) -> Result<(StatusCode, Value)> {
        self.request(Method::GET, path, auth.into(), None).await
    }

    pub async fn post_json(
        &self,
        path: &str,
        auth: impl Into<Auth>,
        body: &Value,
    ) -> Result<(StatusCode, Value)> {
        self.request(Method::POST, path, auth.into(), Some(body))
            .await
    }

    pub async fn put_json(
        &self,
        path: &str,
        auth: impl Into<Auth>,
        body: &Value,
    ) -> Result<(StatusCode, Value)> {
        self.request(Method::PUT, path, auth.into(), Some(body))
            .await
    }

    pub async fn delete(&self, path: &str, auth: impl Into<Auth>) -> Result<(StatusCode, Value)> {
        self.request(Method::DELETE, path, auth.into(), None).await
    }

    /// `path` starts with `/` and may carry a query string.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        auth: Auth,
        body: Option<&Value>,
    ) -> Result<(StatusCode, Value)> {
        if !path.starts_with('/') {
            bail!("API paths start with '/': {path:?}");
        }
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.base));
        request = match auth {
            Auth::None => request,
            Auth::Bearer(token) => request.bearer_auth(token),
            Auth::Raw(value) => request.header(reqwest::header::AUTHORIZATION, value),
        };
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("{method} {path}"))?;
        let status = response.status();
        let text = response
            .text()
            .await
            .with_context(|| format!("reading the body of {method} {path}"))?;
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok((status, body))
    }
}
