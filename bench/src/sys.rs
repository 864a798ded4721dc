//! What the operating system tells about processes: open-file limits, resident
//! memory, CPU time. Linux only (`/proc`).

use std::collections::BTreeMap;
use std::time::Instant;

/// Raises this process's soft open-file limit to the hard limit and returns the
/// new soft limit. Children inherit it, so the gateways and agents a benchmark
/// starts get it too.
pub fn raise_nofile_limit() -> u64 {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if let Some(hard) = limit.maximum {
        let raised = rustix::process::Rlimit {
            current: Some(hard),
            maximum: Some(hard),
        };
        if setrlimit(Resource::Nofile, raised).is_ok() {
            return hard;
        }
    }
    limit.current.unwrap_or(u64::MAX)
}

/// The soft open-file limit in force.
pub fn nofile_limit() -> u64 {
    rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(u64::MAX)
}

/// `VmRSS` of a process in KiB, from `/proc/PID/status`.
pub fn rss_kib(pid: u32) -> Option<u64> {
    status_field(pid, "VmRSS:")
}

/// `VmHWM` (peak resident set) of a process in KiB.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    status_field(pid, "VmHWM:")
}

fn status_field(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// User+system CPU seconds of every process on the machine: pid → (name, seconds).
/// Kernel workers (`kworker/1:1-events`, whose names change with their work) are
/// all called `kworker`.
pub fn cpu_seconds_by_pid() -> BTreeMap<u32, (String, f64)> {
    let ticks = rustix::param::clock_ticks_per_second() as f64;
    let ticks = if ticks > 0.0 { ticks } else { 100.0 };
    let mut totals = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return totals;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // `pid (comm) state ...`: comm may hold spaces, so split at the last ')'.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = &stat[open + 1..close];
        let comm = if comm.starts_with("kworker/") {
            "kworker"
        } else {
            comm
        };
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        // After the comm: state is field 0, utime 11, stime 12.
        let (Some(utime), Some(stime)) = (fields.get(11), fields.get(12)) else {
            continue;
        };
        let (Ok(utime), Ok(stime)) = (utime.parse::<u64>(), stime.parse::<u64>()) else {
            continue;
        };
        totals.insert(pid, (comm.to_owned(), (utime + stime) as f64 / ticks));
    }
    totals
}

/// User+system CPU seconds of one process (`None` once it is gone).
pub fn cpu_seconds_of(pid: u32) -> Option<f64> {
    let ticks = rustix::param::clock_ticks_per_second() as f64;
    let ticks = if ticks > 0.0 { ticks } else { 100.0 };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let close = stat.rfind(')')?;
    let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / ticks)
}

/// CPU seconds of a fixed set of processes between two moments. Unlike
/// [`CpuSampler`], which sums by name, this counts only the pids it is given:
/// another session's `redis-server` or gateway on the same machine is not
/// charged to this run.
pub struct PidCpu {
    start: Instant,
    before: Vec<(u32, f64)>,
}

impl PidCpu {
    pub fn start(pids: &[u32]) -> PidCpu {
        PidCpu {
            start: Instant::now(),
            before: pids
                .iter()
                .map(|&pid| (pid, cpu_seconds_of(pid).unwrap_or(0.0)))
                .collect(),
        }
    }

    /// Wall seconds since `start`, and the CPU seconds each pid used since then
    /// (0 for one that exited).
    pub fn finish(&self) -> (f64, BTreeMap<u32, f64>) {
        let used = self
            .before
            .iter()
            .map(|&(pid, before)| {
                let after = cpu_seconds_of(pid).unwrap_or(before);
                (pid, (after - before).max(0.0))
            })
            .collect();
        (self.start.elapsed().as_secs_f64(), used)
    }
}

/// Processes that belong to a benchmark run; everything else on the machine is
/// "other" load competing for the same cores.
pub const BENCH_PROCESSES: &[&str] = &[
    "chatter-gateway",
    "chatter-worker",
    "chatter-loadgen",
    "chatter-ceiling",
    "chatter-bench",
    "redis-server",
    "redis-benchmark",
    "postgres",
];

/// Name under which [`CpuSampler`] reports CPU used by processes outside the run.
pub const OTHER: &str = "(other)";
/// The whole machine's busy time (every state but idle and iowait), in cores.
/// Unlike the per-process figures it includes softirq time, where loopback TCP
/// does much of its work.
pub const MACHINE_BUSY: &str = "(machine busy)";
/// The machine's softirq time, in cores.
pub const MACHINE_SOFTIRQ: &str = "(machine softirq)";

/// `(busy, softirq)` CPU seconds of the whole machine, from `/proc/stat`.
fn machine_seconds() -> (f64, f64) {
    let ticks = rustix::param::clock_ticks_per_second() as f64;
    let ticks = if ticks > 0.0 { ticks } else { 100.0 };
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return (0.0, 0.0);
    };
    let values: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal guest guest_nice; guest time
    // is already part of user.
    let total: f64 = values.iter().take(8).sum();
    let idle = values.get(3).copied().unwrap_or(0.0) + values.get(4).copied().unwrap_or(0.0);
    let softirq = values.get(6).copied().unwrap_or(0.0);
    ((total - idle) / ticks, softirq / ticks)
}

/// CPU use between two moments, per process name, in cores (1.0 = one core busy).
pub struct CpuSampler {
    start: Instant,
    before: BTreeMap<u32, (String, f64)>,
    machine_before: (f64, f64),
}

impl CpuSampler {
    pub fn start() -> CpuSampler {
        CpuSampler {
            start: Instant::now(),
            before: cpu_seconds_by_pid(),
            machine_before: machine_seconds(),
        }
    }

    /// Cores used per process name since `start` — benchmark processes by name,
    /// everything else summed as [`OTHER`] — keeping entries of ≥ 1 % of a core;
    /// plus the whole machine's [`MACHINE_BUSY`] and [`MACHINE_SOFTIRQ`].
    /// Processes that exited in between are missing; ones that started count whole.
    pub fn finish(&self) -> BTreeMap<String, f64> {
        let elapsed = self.start.elapsed().as_secs_f64().max(1e-3);
        let mut used: BTreeMap<String, f64> = BTreeMap::new();
        for (pid, (name, after)) in cpu_seconds_by_pid() {
            let before = match self.before.get(&pid) {
                Some((old_name, seconds)) if *old_name == name => *seconds,
                _ => 0.0,
            };
            let key = if BENCH_PROCESSES.contains(&name.as_str()) {
                name
            } else {
                OTHER.to_owned()
            };
            *used.entry(key).or_default() += (after - before).max(0.0) / elapsed;
        }
        used.retain(|_, cores| *cores >= 0.01);
        let (busy, softirq) = machine_seconds();
        used.insert(
            MACHINE_BUSY.to_owned(),
            (busy - self.machine_before.0).max(0.0) / elapsed,
        );
        used.insert(
            MACHINE_SOFTIRQ.to_owned(),
            (softirq - self.machine_before.1).max(0.0) / elapsed,
        );
        used
    }
}

/// Machine facts for the results header.
pub struct Machine {
    pub cores: usize,
    pub memory_gib: f64,
    pub cpu_model: String,
    pub kernel: String,
}

pub fn machine() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find(|line| line.starts_with("model name"))
        .and_then(|line| line.split_once(':'))
        .map_or_else(|| "unknown".to_owned(), |(_, v)| v.trim().to_owned());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory_kib: f64 = meminfo
        .lines()
        .find(|line| line.starts_with("MemTotal:"))
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned();
    Machine {
        cores: std::thread::available_parallelism().map_or(0, usize::from),
        memory_gib: memory_kib / 1024.0 / 1024.0,
        cpu_model,
        kernel,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process() {
        let pid = std::process::id();
        assert!(rss_kib(pid).is_some_and(|kib| kib > 0));
        assert!(peak_rss_kib(pid).is_some());
        let cpu = cpu_seconds_by_pid();
        assert!(cpu.contains_key(&pid));
        assert!(cpu_seconds_of(pid).is_some());
        let (secs, used) = PidCpu::start(&[pid]).finish();
        assert!(secs >= 0.0 && used.get(&pid).is_some_and(|s| *s >= 0.0));
        assert!(machine().cores >= 1);
    }
}
