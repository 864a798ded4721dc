//! The product's gateway and worker binaries as child processes.
//!
//! Each child's stdout and stderr are read line by line by two threads that
//! copy them to a log file in the test's temp dir, keep recent lines in memory
//! for assertions, and watch for the JSON log line that says the process is
//! ready (`"listening"` with its address for a gateway, `"worker ready"` for a
//! worker). Waiting for that line, rather than sleeping or probing ports, is
//! what lets gateways bind port 0.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use rustix::process::Signal;
use serde_json::Value;
use tokio::time::Instant;

use crate::sys;
use crate::wait::POLL_INTERVAL;

/// How long a binary may take from spawn to its ready line. Startup runs
/// database migrations, and a cold CI box can be slow.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Lines kept in memory per process for [`ChildProcess::logs`]; the log file keeps all.
const MAX_LINES_IN_MEMORY: usize = 20_000;
/// Lines of each process's log printed when a test panics.
const LINES_ON_PANIC: usize = 80;
/// Variables passed through from the test's environment. Everything else is
/// cleared so that, say, a `DATABASE_URL` in a developer's shell can't leak
/// into a test that means to run without one.
const INHERITED_ENV: &[&str] = &[
    "PATH",
    "HOME",
    "TMPDIR",
    "RUST_BACKTRACE",
    "RUST_LIB_BACKTRACE",
];

/// Which binary a child runs; decides its ready line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessKind {
    Gateway,
    Worker,
}

impl ProcessKind {
    /// `fields.message` of the log line printed once the process is serving.
    pub fn ready_message(self) -> &'static str {
        match self {
            ProcessKind::Gateway => "listening",
            ProcessKind::Worker => "worker ready",
        }
    }
}

/// Output shared between the reader threads and the test.
#[derive(Default)]
struct Output {
    lines: VecDeque<String>,
    /// The `fields` object of the ready line, once seen.
    ready: Option<Value>,
}

struct Shared {
    output: Mutex<Output>,
    file: Mutex<File>,
}

impl Shared {
    /// Never held across an await; a reader thread panicking mid-push can't
    /// corrupt a VecDeque, so poisoning is ignored.
    fn output(&self) -> MutexGuard<'_, Output> {
        self.output
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A running gateway or worker. Killed when dropped; if the test is panicking,
/// the end of its log is printed first.
pub struct ChildProcess {
    kind: ProcessKind,
    label: String,
    child: Child,
    shared: Arc<Shared>,
    log_path: PathBuf,
}

impl ChildProcess {
    /// Spawns `path` with exactly `env` (plus `PATH`, `HOME` and a few more
    /// passed through), in the folder holding `log_path` (so relative paths such
    /// as the embedded mode's `./data/` stay in the test's temp dir), and waits
    /// up to [`READY_TIMEOUT`] for its ready line. On failure the error includes
    /// the end of its log.
    pub async fn spawn(
        kind: ProcessKind,
        path: &Path,
        env: &[(String, String)],
        log_path: &Path,
    ) -> Result<Self> {
        let label = log_path
            .file_stem()
            .map_or_else(|| format!("{kind:?}"), |s| s.to_string_lossy().into_owned());
        let file =
            File::create(log_path).with_context(|| format!("creating {}", log_path.display()))?;
        let mut command = command(path, env, log_path);
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .with_context(|| format!("spawning {}", path.display()))?;

        let shared = Arc::new(Shared {
            output: Mutex::default(),
            file: Mutex::new(file),
        });
        let stdout = child.stdout.take().context("child stdout")?;
        let stderr = child.stderr.take().context("child stderr")?;
        for (pipe, prefix) in [
            (Box::new(stdout) as Box<dyn Read + Send>, ""),
            (Box::new(stderr), "stderr: "),
        ] {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("{label}-log"))
                .spawn(move || copy_lines(pipe, prefix, kind.ready_message(), &shared))
                .context("starting a log reader thread")?;
        }

        let mut process = ChildProcess {
            kind,
            label,
            child,
            shared,
            log_path: log_path.to_owned(),
        };
        process.wait_ready().await?;
        Ok(process)
    }

    async fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if self.shared.output().ready.is_some() {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait().context("checking the child")? {
                // Give the reader threads a moment to drain what it printed last.
                let _ = self.wait_for_log_quiet(Duration::from_millis(200)).await;
                bail!(
                    "{} exited with {status} before it was ready; log:\n{}",
                    self.label,
                    self.tail(50)
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} printed no {:?} line within {READY_TIMEOUT:?}; log:\n{}",
                    self.label,
                    self.kind.ready_message(),
                    self.tail(50)
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Waits until the log stops growing for one poll interval (or `max` passes).
    async fn wait_for_log_quiet(&self, max: Duration) -> Result<()> {
        let deadline = Instant::now() + max;
        let mut seen = usize::MAX;
        while Instant::now() < deadline {
            let now = self.shared.output().lines.len();
            if now == seen {
                return Ok(());
            }
            seen = now;
            tokio::time::sleep(POLL_INTERVAL).await;
        }
        Ok(())
    }

    pub fn kind(&self) -> ProcessKind {
        self.kind
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The `fields` of the ready log line (e.g. `addr` for a gateway).
    pub fn ready_fields(&self) -> Value {
        self.shared.output().ready.clone().unwrap_or(Value::Null)
    }

    /// SIGKILL (a crashed pod: no drain, no cleanup) and wait for it to be gone.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM (a pod being stopped by Kubernetes); use [`wait_exit`](Self::wait_exit) to see it finish.
    pub fn sigterm(&self) -> Result<()> {
        sys::signal(&self.child, Signal::TERM)
    }

    /// Waits up to `timeout` for the process to exit; `None` if it still runs.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Err(_) => return None,
                Ok(None) if Instant::now() >= deadline => return None,
                Ok(None) => tokio::time::sleep(POLL_INTERVAL).await,
            }
        }
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Everything it printed (the most recent lines if it printed a lot),
    /// stderr lines prefixed with `stderr: `.
    pub fn logs(&self) -> String {
        let output = self.shared.output();
        output
            .lines
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Waits until a log line contains `needle` and returns that line.
    pub async fn wait_for_log(&self, needle: &str, timeout: Duration) -> Result<String> {
        crate::wait::eventually(timeout, || async {
            let output = self.shared.output();
            match output.lines.iter().find(|line| line.contains(needle)) {
                Some(line) => Ok(line.clone()),
                None => bail!("{} has not logged {needle:?}", self.label),
            }
        })
        .await
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The last `n` lines of its output.
    pub fn tail(&self, n: usize) -> String {
        let output = self.shared.output();
        let skip = output.lines.len().saturating_sub(n);
        output
            .lines
            .iter()
            .skip(skip)
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "----- {} log, last {LINES_ON_PANIC} lines ({}) -----\n{}",
                self.label,
                self.log_path.display(),
                self.tail(LINES_ON_PANIC)
            );
        }
        self.kill9();
    }
}

/// Copies a pipe into the log, line by line, until the process closes it.
fn copy_lines(pipe: Box<dyn Read + Send>, prefix: &str, ready_message: &str, shared: &Shared) {
    let mut reader = BufReader::new(pipe);
    let mut raw = Vec::new();
    loop {
        raw.clear();
        match reader.read_until(b'\n', &mut raw) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let text = String::from_utf8_lossy(&raw);
        let line = format!("{prefix}{}", text.trim_end_matches(['\n', '\r']));
        if let Ok(mut file) = shared.file.lock() {
            let _ = writeln!(file, "{line}");
        }
        let ready = ready_fields(&text, ready_message);
        let mut output = shared.output();
        if output.ready.is_none() {
            output.ready = ready;
        }
        if output.lines.len() == MAX_LINES_IN_MEMORY {
            output.lines.pop_front();
        }
        output.lines.push_back(line);
    }
}

/// If `line` is a tracing JSON event whose message is `ready_message`, its
/// fields. Accepts both the default layout (`{"fields":{"message":..}}`) and
/// the flattened one (`{"message":..}`).
fn ready_fields(line: &str, ready_message: &str) -> Option<Value> {
    let event: Value = serde_json::from_str(line.trim()).ok()?;
    let fields = if event.get("fields").is_some_and(Value::is_object) {
        &event["fields"]
    } else {
        &event
    };
    (fields["message"] == ready_message).then(|| fields.clone())
}

fn command(path: &Path, env: &[(String, String)], log_path: &Path) -> Command {
    let mut command = Command::new(path);
    command.env_clear();
    for name in INHERITED_ENV {
        if let Some(value) = std::env::var_os(name) {
            command.env(name, value);
        }
    }
    command.env(
        "RUST_BACKTRACE",
        std::env::var_os("RUST_BACKTRACE").unwrap_or_else(|| "1".into()),
    );
    command.envs(env.iter().map(|(k, v)| (k, v)));
    if let Some(dir) = log_path.parent() {
        command.current_dir(dir);
    }
    command
}

/// Runs a binary that is expected to exit by itself (e.g. with an invalid
/// config) and returns its exit status and output. Same environment rules as
/// [`ChildProcess::spawn`]; runs in `dir`. Killed if it runs past `timeout`.
pub async fn run_to_exit(
    path: &Path,
    env: &[(String, String)],
    dir: &Path,
    timeout: Duration,
) -> Result<std::process::Output> {
    let mut command = tokio::process::Command::from(command(path, env, &dir.join("run.log")));
    command.stdin(Stdio::null()).kill_on_drop(true);
    match tokio::time::timeout(timeout, command.output()).await {
        Ok(output) => output.with_context(|| format!("running {}", path.display())),
        Err(_) => bail!("{} still running after {timeout:?}", path.display()),
    }
}

/// A running gateway: a [`ChildProcess`] plus the address it listens on.
pub struct Gateway {
    process: ChildProcess,
    addr: SocketAddr,
}

impl Gateway {
    /// Spawns a gateway (which must be configured with `PORT=0` or a free
    /// port) and reads its address from the `listening` line.
    pub async fn spawn(path: &Path, env: &[(String, String)], log_path: &Path) -> Result<Self> {
        let process = ChildProcess::spawn(ProcessKind::Gateway, path, env, log_path).await?;
        let fields = process.ready_fields();
        let addr = fields["addr"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .with_context(|| {
                format!("the gateway's \"listening\" line has no usable `addr`: {fields}")
            })?;
        Ok(Gateway { process, addr })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`
    pub fn http_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `ws://127.0.0.1:PORT/ws`
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }
}

impl Deref for Gateway {
    type Target = ChildProcess;
    fn deref(&self) -> &ChildProcess {
        &self.process
    }
}

impl DerefMut for Gateway {
    fn deref_mut(&mut self) -> &mut ChildProcess {
        &mut self.process
    }
}

/// A running worker.
pub struct Worker {
    process: ChildProcess,
}

impl Worker {
    pub async fn spawn(path: &Path, env: &[(String, String)], log_path: &Path) -> Result<Self> {
        Ok(Worker {
            process: ChildProcess::spawn(ProcessKind::Worker, path, env, log_path).await?,
        })
    }

    /// `http://127.0.0.1:PORT` of the worker's probes and metrics, from its
    /// ready line (`http_addr`).
    pub fn http_url(&self) -> String {
        let addr = self.ready_fields()["http_addr"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_default();
        format!("http://{addr}")
    }
}

impl Deref for Worker {
    type Target = ChildProcess;
    fn deref(&self) -> &ChildProcess {
        &self.process
    }
}

impl DerefMut for Worker {
    fn deref_mut(&mut self) -> &mut ChildProcess {
        &mut self.process
    }
}
