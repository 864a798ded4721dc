//! A real `redis-server` per test, on a free port, with its data in a temp dir.
//!
//! Tests kill and restart it to check that gateways and workers survive a Redis
//! outage, so the harness owns the process (not daemonized) and restarts it on
//! the same port and directory: clients reconnect to the same URL and the
//! append-only file brings the data back.
//!
//! The same server also runs as one node of a Redis Cluster
//! ([`RedisServer::start_cluster_node`]); `redis_cluster.rs` forms six of them
//! into a cluster.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::sys;

/// How long a (re)started server may take to answer `PING`.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts at `start` with a fresh port, in case another process grabbed the
/// port between [`sys::free_port`] and redis binding it.
const START_ATTEMPTS: usize = 3;

/// A running `redis-server` child process. Killed when dropped.
pub struct RedisServer {
    port: u16,
    /// The cluster bus port when this server is a Redis Cluster node. Chosen
    /// like `port` (Redis's default, port + 10000, may be above 65535 or taken).
    cluster_bus_port: Option<u16>,
    dir: TempDir,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a fresh, empty server and waits until it answers `PING`.
    pub async fn start() -> Result<Self> {
        Self::start_in_mode(false).await
    }

    /// Starts a fresh, empty Redis Cluster node (`cluster-enabled`, its
    /// `nodes.conf` in its own folder, so a restart rejoins the cluster as the
    /// same node) and waits until it answers `PING`. It owns no slots until it
    /// is part of a cluster.
    pub async fn start_cluster_node() -> Result<Self> {
        Self::start_in_mode(true).await
    }

    async fn start_in_mode(cluster: bool) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("chatter-redis-")
            .tempdir_in(sys::scratch_root())
            .context("creating a temp dir for redis")?;
        let mut server = RedisServer {
            port: 0,
            cluster_bus_port: None,
            dir,
            child: None,
        };
        let mut last_err = anyhow!("redis never started");
        for _ in 0..START_ATTEMPTS {
            server.port = sys::free_port()?;
            if cluster {
                server.cluster_bus_port = Some(sys::free_port()?);
            }
            match server.launch().await {
                Ok(()) => return Ok(server),
                Err(err) => last_err = err,
            }
        }
        Err(last_err)
    }

    /// `redis://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Redis's own log file (startup errors, AOF loading, client errors).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    /// The server's pid; `None` once [`kill`](Self::kill)ed.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the server process is still alive.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(None)))
    }

    /// SIGKILLs the server (a crash: no shutdown, no final AOF rewrite) and waits
    /// for it to be gone. Data already written to the AOF survives for [`restart`].
    ///
    /// [`restart`]: RedisServer::restart
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // An error here means it already exited, which is what we want.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the server if it is running, then starts it again on the same port
    /// and directory so the append-only file is replayed.
    pub async fn restart(&mut self) -> Result<()> {
        self.kill();
        self.launch().await
    }

    /// Deletes every key (`FLUSHALL`), simulating Redis losing its data.
    pub async fn flushall(&self) -> Result<()> {
        self.cmd(&["FLUSHALL"]).await.map(drop)
    }

    /// Sends one command on a fresh connection and returns the reply; a Redis
    /// error reply becomes `Err`. Enough for tests to inspect keys and streams
    /// without a Redis client crate.
    pub async fn cmd(&self, args: &[&str]) -> Result<Resp> {
        cmd(self.port, args).await
    }

    /// Spawns redis-server on `self.port` and waits until it answers `PING`.
    async fn launch(&mut self) -> Result<()> {
        let dir = self.dir.path();
        let stderr =
            std::fs::File::create(dir.join("redis.stderr")).context("creating redis.stderr")?;
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(dir)
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--save",
                "",
            ])
            .arg("--logfile")
            .arg(self.log_path());
        if let Some(bus_port) = self.cluster_bus_port {
            command.args([
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-port",
                &bus_port.to_string(),
                // A dead master is marked failed after 1 s (not the default 15),
                // so a failover fits in a test.
                "--cluster-node-timeout",
                "1000",
            ]);
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .context("spawning redis-server (is it installed and on PATH?)")?;
        self.child = Some(child);

        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                self.child = None;
                bail!(
                    "redis-server on port {} exited with {status} before it was ready:\n{}\n{}",
                    self.port,
                    sys::tail_file(&dir.join("redis.stderr"), 20),
                    sys::tail_file(&self.log_path(), 20)
                );
            }
            // LOADING (AOF replay) and refused connections both mean "not yet".
            let ping = tokio::time::timeout(Duration::from_secs(1), self.cmd(&["PING"])).await;
            if let Ok(Ok(Resp::Simple(pong))) = ping
                && pong == "PONG"
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.kill();
                bail!(
                    "redis-server on port {} not ready after {READY_TIMEOUT:?}:\n{}",
                    self.port,
                    sys::tail_file(&self.log_path(), 20)
                );
            }
            tokio::time::sleep(crate::wait::POLL_INTERVAL).await;
        }
    }

    /// Folder holding the AOF and logs (kept across [`RedisServer::restart`]).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "----- redis log (last 15 lines) -----\n{}",
                sys::tail_file(&self.log_path(), 15)
            );
        }
        self.kill();
    }
}

/// Sends one command to the Redis on `127.0.0.1:port` on a fresh connection
/// and returns the reply; a Redis error reply (including a cluster node's
/// `MOVED`) becomes `Err`.
pub(crate) async fn cmd(port: u16, args: &[&str]) -> Result<Resp> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .with_context(|| format!("connecting to redis on port {port}"))?;
    let mut request = format!("*{}\r\n", args.len());
    for arg in args {
        request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    stream
        .write_all(request.as_bytes())
        .await
        .context("writing to redis")?;
    let mut reader = BufReader::new(stream);
    match read_resp(&mut reader).await? {
        Resp::Error(msg) => bail!("redis {:?} failed: {msg}", args.first().unwrap_or(&"")),
        reply => Ok(reply),
    }
}

/// A RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resp {
    Simple(String),
    Error(String),
    Int(i64),
    /// `None` is the nil bulk string (e.g. `GET` of a missing key).
    Bulk(Option<Vec<u8>>),
    /// `None` is the nil array.
    Array(Option<Vec<Resp>>),
}

impl Resp {
    /// The reply as text, for simple and bulk strings.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Resp::Simple(s) => Some(s),
            Resp::Bulk(Some(bytes)) => std::str::from_utf8(bytes).ok(),
            _ => None,
        }
    }

    pub fn as_int(&self) -> Option<i64> {
        match self {
            Resp::Int(n) => Some(*n),
            _ => None,
        }
    }
}

/// Reads one RESP2 value. Boxed because arrays nest.
fn read_resp<'a>(
    reader: &'a mut BufReader<TcpStream>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Resp>> + Send + 'a>> {
    Box::pin(async move {
        let mut line = String::new();
        if reader
            .read_line(&mut line)
            .await
            .context("reading from redis")?
            == 0
        {
            bail!("redis closed the connection");
        }
        let line = line.trim_end_matches("\r\n");
        let (kind, rest) = line.split_at_checked(1).context("empty redis reply line")?;
        let number = || {
            rest.parse::<i64>()
                .with_context(|| format!("bad redis length {rest:?}"))
        };
        Ok(match kind {
            "+" => Resp::Simple(rest.to_owned()),
            "-" => Resp::Error(rest.to_owned()),
            ":" => Resp::Int(number()?),
            "$" => match usize::try_from(number()?) {
                Err(_) => Resp::Bulk(None),
                Ok(len) => {
                    let mut buf = vec![0; len + 2];
                    reader
                        .read_exact(&mut buf)
                        .await
                        .context("reading a redis bulk string")?;
                    buf.truncate(len);
                    Resp::Bulk(Some(buf))
                }
            },
            "*" => match usize::try_from(number()?) {
                Err(_) => Resp::Array(None),
                Ok(len) => {
                    let mut items = Vec::with_capacity(len);
                    for _ in 0..len {
                        items.push(read_resp(reader).await?);
                    }
                    Resp::Array(Some(items))
                }
            },
            _ => bail!("unexpected redis reply {line:?}"),
        })
    })
}
