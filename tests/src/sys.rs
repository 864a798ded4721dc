//! Small operating-system helpers shared by the server and process modules:
//! free ports, signals, and who we are running as.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::Mutex;

use anyhow::{Context, Result, bail};
use rustix::process::{Pid, Signal};

/// Asks the kernel for a free TCP port on 127.0.0.1.
///
/// Servers that cannot be handed an already-bound socket (redis-server,
/// postgres) need a port number up front. Binding port 0 and releasing it leaves
/// a tiny window where something else could grab it, so callers that start a
/// server retry with a fresh port when the server fails to bind.
///
/// Within this process a port is handed out once: the kernel may give a port
/// just released to the next bind of port 0, and two servers started at the
/// same moment (the six nodes of a Redis Cluster) were once both given one
/// port; the second then found the first listening and counted it as itself.
pub fn free_port() -> Result<u16> {
    static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    for _ in 0..100 {
        let listener =
            TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0 to find a free port")?;
        let port = listener
            .local_addr()
            .context("reading the bound port")?
            .port();
        let mut handed_out = HANDED_OUT
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if handed_out.insert(port) {
            return Ok(port);
        }
    }
    bail!("the kernel kept offering ports this process has handed out already")
}

/// The pids whose parent is `parent` (read from `/proc`).
pub fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            // `pid (comm) state ppid ...`; comm may hold spaces, so split after ')'.
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    let rest = stat.rsplit_once(')')?.1.to_owned();
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(parent)
        })
        .collect()
}

/// Sends `signal` to a process by pid. A process that is gone already is no
/// error: a child listed a moment ago may have exited (and been reaped) since.
pub fn signal_pid_if_alive(pid: u32, signal: Signal) -> Result<()> {
    let Some(target) = i32::try_from(pid).ok().and_then(Pid::from_raw) else {
        anyhow::bail!("bad pid {pid}");
    };
    match rustix::process::kill_process(target, signal) {
        Ok(()) | Err(rustix::io::Errno::SRCH) => Ok(()),
        Err(error) => Err(error).with_context(|| format!("signal {signal:?} to {target:?}")),
    }
}

/// Sends `signal` to a child we spawned. Errors if the process is already gone.
pub fn signal(child: &Child, signal: Signal) -> Result<()> {
    rustix::process::kill_process(Pid::from_child(child), signal)
        .with_context(|| format!("sending {signal:?} to pid {}", child.id()))
}

/// Whether this test process runs as root (as it does in CI containers).
/// `initdb` and `postgres` refuse to run as root, so they are then started as the
/// `postgres` user instead.
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// uid and gid of the `postgres` system user, read from `/etc/passwd`.
pub fn postgres_user() -> Result<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").context("reading /etc/passwd")?;
    for line in passwd.lines() {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() >= 4 && fields[0] == "postgres" {
            let uid = fields[2].parse().context("parsing the postgres uid")?;
            let gid = fields[3].parse().context("parsing the postgres gid")?;
            return Ok((uid, gid));
        }
    }
    bail!(
        "running as root but there is no `postgres` user to run initdb/postgres as (install postgresql)"
    )
}

/// Gives `path` (not recursively) to `owner`, when one is given.
pub fn chown(path: &Path, owner: Option<(u32, u32)>) -> Result<()> {
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .with_context(|| format!("chown {} to {uid}:{gid}", path.display()))?;
    }
    Ok(())
}

/// The last `n` lines of a log file, or a note saying why there are none.
pub fn tail_file(path: &Path, n: usize) -> String {
    match std::fs::File::open(path) {
        Ok(file) => {
            let lines: Vec<String> = BufReader::new(file).lines().map_while(Result::ok).collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        }
        Err(err) => format!("(no log at {}: {err})", path.display()),
    }
}

/// Where servers keep their throwaway data: `/dev/shm` (tmpfs) when it has
/// room, else the system temp dir. Copying a Postgres template and writing WAL
/// on a VM's disk costs a second per test; on tmpfs it is ~100 ms. Docker's
/// default 64 MiB `/dev/shm` is too small for a few Postgres clusters, hence the
/// free-space check. `CHATTER_E2E_TMPDIR` overrides both.
pub fn scratch_root() -> PathBuf {
    /// Enough for a dozen Postgres clusters of a test run side by side.
    const MIN_FREE: u64 = 2 << 30;
    if let Some(dir) = std::env::var_os("CHATTER_E2E_TMPDIR") {
        return PathBuf::from(dir);
    }
    let shm = Path::new("/dev/shm");
    match rustix::fs::statvfs(shm) {
        Ok(st) if st.f_bavail.saturating_mul(st.f_frsize) >= MIN_FREE && is_writable(shm) => {
            shm.to_path_buf()
        }
        _ => std::env::temp_dir(),
    }
}

fn is_writable(dir: &Path) -> bool {
    tempfile::Builder::new()
        .prefix("chatter-probe-")
        .tempdir_in(dir)
        .is_ok()
}
