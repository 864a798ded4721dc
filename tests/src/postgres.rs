//! A throwaway Postgres cluster per test, started from a pre-initialized template.
//!
//! `initdb` takes a second or more, far too slow to run for every test. It runs
//! once per machine into a template folder (cached in the system temp dir, keyed
//! by the Postgres version, and created atomically so parallel test processes
//! don't race), which already contains the `chatter` database. Each server is a
//! `cp -a` of that template plus a `postgres` child process on a free port, with
//! durability turned off because the data is thrown away.
//!
//! Postgres refuses to run as root; CI runs as root, so there both `initdb` and
//! `postgres` run as the `postgres` system user and the folders are given to it.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use rustix::process::Signal;
use sqlx::Connection;
use sqlx::postgres::{PgConnection, PgPool, PgPoolOptions};
use tempfile::TempDir;
use tokio::time::Instant;

use crate::sys;

/// How long a (re)started server may take to accept connections. Crash
/// recovery after SIGKILL replays WAL, which is quick for test-sized data.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Attempts at `start` with a fresh port (see [`sys::free_port`]).
const START_ATTEMPTS: usize = 3;
/// Bump when the template's contents change, so stale caches are not reused.
const TEMPLATE_VERSION: &str = "v1";
/// The database the product uses; created in the template.
const DATABASE: &str = "chatter";

/// A running `postgres` server with its own data directory. Killed and
/// deleted when dropped.
pub struct PostgresServer {
    port: u16,
    dir: TempDir,
    owner: Option<(u32, u32)>,
    child: Option<Child>,
    pool: PgPool,
}

impl PostgresServer {
    /// Starts a fresh server whose `chatter` database is empty (no tables; the
    /// product's migrations create them) and waits until it accepts connections.
    pub async fn start() -> Result<Self> {
        let template = tokio::task::spawn_blocking(template)
            .await
            .context("template task panicked")?
            .map_err(|err| anyhow!("{err}"))?;

        let owner = if sys::is_root() {
            Some(sys::postgres_user()?)
        } else {
            None
        };
        let dir = tempfile::Builder::new()
            .prefix("chatter-pg-")
            .tempdir_in(sys::scratch_root())
            .context("creating a temp dir for postgres")?;
        sys::chown(dir.path(), owner)?;
        let sockets = dir.path().join("sock");
        std::fs::create_dir(&sockets).context("creating the socket dir")?;
        sys::chown(&sockets, owner)?;
        // `cp -a` keeps the postgres ownership and 0700 mode the server insists on.
        let status = tokio::process::Command::new("cp")
            .arg("-a")
            .arg(template.join("data"))
            .arg(dir.path().join("data"))
            .status()
            .await
            .context("running cp -a")?;
        if !status.success() {
            bail!("copying the postgres template failed: {status}");
        }

        let mut last_err = anyhow!("postgres never started");
        for _ in 0..START_ATTEMPTS {
            let port = sys::free_port()?;
            match launch(dir.path(), port, owner).await {
                Ok(child) => {
                    let pool = PgPoolOptions::new()
                        .max_connections(5)
                        .acquire_timeout(Duration::from_secs(10))
                        .connect_lazy(&url_for(port, DATABASE))
                        .context("building the pool")?;
                    return Ok(PostgresServer {
                        port,
                        dir,
                        owner,
                        child: Some(child),
                        pool,
                    });
                }
                Err(err) => last_err = err,
            }
        }
        Err(last_err)
    }

    /// `postgres://postgres@127.0.0.1:PORT/chatter` (trust auth, no password).
    pub fn url(&self) -> String {
        url_for(self.port, DATABASE)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// A small pool to the `chatter` database, for tests to inspect rows. It
    /// checks connections before handing them out, so it keeps working after
    /// [`restart`](PostgresServer::restart).
    pub fn pool(&self) -> PgPool {
        self.pool.clone()
    }

    /// The server's log (its stderr).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(None)))
    }

    /// SIGKILLs the postmaster (a crash) and waits for it. Its backends notice
    /// and exit on their own; [`restart`](PostgresServer::restart) recovers from WAL.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Clean "fast" shutdown (SIGINT): open sessions are ended, data is kept.
    pub async fn stop(&mut self) -> Result<()> {
        let Some(child) = self.child.as_mut() else {
            return Ok(());
        };
        sys::signal(child, Signal::INT)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while matches!(child.try_wait(), Ok(None)) {
            if Instant::now() >= deadline {
                self.kill();
                bail!("postgres did not shut down within 10s; killed it");
            }
            tokio::time::sleep(crate::wait::POLL_INTERVAL).await;
        }
        self.child = None;
        Ok(())
    }

    /// Starts the server again on the same port and data directory (killing it
    /// first if it runs) and waits until it accepts connections.
    pub async fn restart(&mut self) -> Result<()> {
        self.kill();
        self.child = Some(launch(self.dir.path(), self.port, self.owner).await?);
        Ok(())
    }

    /// SIGSTOPs the postmaster and every backend: the server hangs (open
    /// connections stay open, queries get no answer) until [`resume`](Self::resume).
    pub fn pause(&self) -> Result<()> {
        self.signal_all(Signal::STOP)
    }

    /// SIGCONTs what [`pause`](Self::pause) stopped.
    pub fn resume(&self) -> Result<()> {
        self.signal_all(Signal::CONT)
    }

    fn signal_all(&self, signal: Signal) -> Result<()> {
        let child = self.child.as_ref().context("postgres is not running")?;
        sys::signal(child, signal)?;
        // A backend may exit between the listing and its signal (on resume the
        // postmaster reaps at once what exited while it was stopped).
        for pid in sys::children_of(child.id()) {
            sys::signal_pid_if_alive(pid, signal)?;
        }
        Ok(())
    }

    /// The server's data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "----- postgres log (last 15 lines) -----\n{}",
                sys::tail_file(&self.log_path(), 15)
            );
        }
        // SIGQUIT is an immediate shutdown: the postmaster stops its backends
        // too, so no orphans linger on the deleted data dir. SIGKILL if stuck.
        if let Some(mut child) = self.child.take() {
            if sys::signal(&child, Signal::QUIT).is_ok() {
                let deadline = std::time::Instant::now() + Duration::from_secs(2);
                while matches!(child.try_wait(), Ok(None)) && std::time::Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Spawns `postgres` on `port` over the data in `dir` and waits until it
/// accepts connections.
///
/// After a SIGKILL the old postmaster's backends may still hold the shared
/// memory for a moment, and postgres refuses to start ("pre-existing shared
/// memory block is still in use"); that case is retried until the deadline.
async fn launch(dir: &Path, port: u16, owner: Option<(u32, u32)>) -> Result<Child> {
    let log_path = dir.join("postgres.log");
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut child = spawn(dir, port, owner)?;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let log = sys::tail_file(&log_path, 20);
            if log.contains("could not bind") || log.contains("could not create any TCP/IP sockets")
            {
                bail!("postgres could not bind port {port}:\n{log}");
            }
            if Instant::now() >= deadline {
                bail!("postgres on port {port} exited with {status}:\n{log}");
            }
            tokio::time::sleep(crate::wait::POLL_INTERVAL).await;
            child = spawn(dir, port, owner)?;
            continue;
        }
        let connect = PgConnection::connect(&url_for(port, "postgres"));
        if let Ok(Ok(conn)) = tokio::time::timeout(Duration::from_secs(2), connect).await {
            let _ = conn.close().await;
            return Ok(child);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "postgres on port {port} not ready after {READY_TIMEOUT:?}:\n{}",
                sys::tail_file(&log_path, 20)
            );
        }
        tokio::time::sleep(crate::wait::POLL_INTERVAL).await;
    }
}

fn spawn(dir: &Path, port: u16, owner: Option<(u32, u32)>) -> Result<Child> {
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("postgres.log"))
        .context("opening postgres.log")?;
    let _ = writeln!(log, "----- harness: starting postgres on port {port} -----");
    let mut cmd = Command::new(bin_dir()?.join("postgres"));
    cmd.arg("-D")
        .arg(dir.join("data"))
        .args(["-p", &port.to_string()])
        .arg("-k")
        .arg(dir.join("sock"))
        .args(["-c", "listen_addresses=127.0.0.1"])
        // Throwaway data: surviving an OS crash only costs time. A *process*
        // crash (tests SIGKILL postgres) must still keep every acknowledged
        // commit, so `synchronous_commit` stays on: with it off, commits still
        // in the WAL buffers are lost and a test would blame the product for a
        // "lost" message. Without fsync the WAL write is cheap anyway.
        .args(["-c", "fsync=off", "-c", "full_page_writes=off"])
        // Several gateways and workers, each with its own pool.
        .args(["-c", "max_connections=200"])
        // Dynamic shared memory as files in the data dir rather than in
        // /dev/shm, so a SIGKILLed server leaves nothing behind once the
        // folder is deleted.
        .args(["-c", "dynamic_shared_memory_type=mmap"])
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone().context("cloning the log handle")?)
        .stderr(log);
    if let Some((uid, gid)) = owner {
        cmd.uid(uid).gid(gid);
    }
    cmd.spawn().context("spawning postgres")
}

fn url_for(port: u16, database: &str) -> String {
    format!("postgres://postgres@127.0.0.1:{port}/{database}")
}

/// Folder with `initdb` and `postgres` (`pg_config --bindir`; on Debian they
/// are not on PATH).
fn bin_dir() -> Result<PathBuf> {
    static BIN_DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BIN_DIR
        .get_or_init(|| {
            let out = Command::new("pg_config")
                .arg("--bindir")
                .output()
                .map_err(|err| {
                    format!("running pg_config --bindir (is postgresql installed?): {err}")
                })?;
            if !out.status.success() {
                return Err(format!(
                    "pg_config --bindir failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
        })
        .clone()
        .map_err(|err| anyhow!(err))
}

/// The template cluster's folder (its `data/` is copied per server), created on
/// first use. Blocking: call from `spawn_blocking`.
fn template() -> Result<PathBuf, String> {
    static TEMPLATE: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    TEMPLATE
        .get_or_init(|| create_template().map_err(|err| format!("{err:#}")))
        .clone()
}

fn create_template() -> Result<PathBuf> {
    let bin = bin_dir()?;
    let version = Command::new(bin.join("postgres"))
        .arg("--version")
        .output()
        .context("running postgres --version")?;
    let version: String = String::from_utf8_lossy(&version.stdout)
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '.')
        .collect();
    let uid = rustix::process::geteuid().as_raw();
    let final_dir = sys::scratch_root().join(format!(
        "chatter-pg-template-{TEMPLATE_VERSION}-{version}-uid{uid}"
    ));
    if final_dir.join("data").join("PG_VERSION").exists() {
        return Ok(final_dir);
    }

    // Build in a private folder, then rename: another test process doing the
    // same either wins the rename (we use its template) or loses it.
    let owner = if sys::is_root() {
        Some(sys::postgres_user()?)
    } else {
        None
    };
    let building = tempfile::Builder::new()
        .prefix("chatter-pg-template-building-")
        .tempdir_in(sys::scratch_root())
        .context("creating the template build dir")?;
    sys::chown(building.path(), owner)?;
    let data = building.path().join("data");
    let as_owner = |cmd: &mut Command| {
        if let Some((uid, gid)) = owner {
            cmd.uid(uid).gid(gid);
        }
        cmd.current_dir(building.path());
    };

    let mut initdb = Command::new(bin.join("initdb"));
    initdb
        .arg("-D")
        .arg(&data)
        .args([
            "-U",
            "postgres",
            "--auth=trust",
            "-N",
            "--no-instructions",
            "-E",
            "UTF8",
            "--no-locale",
        ])
        // 1 MiB WAL segments instead of 16: less to copy per server.
        .arg("--wal-segsize=1");
    as_owner(&mut initdb);
    let out = initdb.output().context("running initdb")?;
    if !out.status.success() {
        bail!(
            "initdb failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // Single-user mode creates the product database without a port or socket.
    let mut single = Command::new(bin.join("postgres"));
    single
        .args(["--single", "-F", "-D"])
        .arg(&data)
        .arg("postgres")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    as_owner(&mut single);
    let mut child = single.spawn().context("starting postgres --single")?;
    child
        .stdin
        .take()
        .context("postgres --single stdin")?
        .write_all(format!("CREATE DATABASE {DATABASE};\n").as_bytes())
        .context("writing to postgres --single")?;
    let out = child
        .wait_with_output()
        .context("waiting for postgres --single")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() || stderr.contains("ERROR") {
        bail!(
            "creating the {DATABASE} database failed ({}):\n{stderr}",
            out.status
        );
    }

    let building = building.keep();
    if std::fs::rename(&building, &final_dir).is_err() {
        // Lost the race (the folder exists now): use the winner's template.
        let _ = std::fs::remove_dir_all(&building);
        if !final_dir.join("data").join("PG_VERSION").exists() {
            bail!(
                "could not create the postgres template at {}",
                final_dir.display()
            );
        }
    }
    Ok(final_dir)
}
