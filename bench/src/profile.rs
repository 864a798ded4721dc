//! `chatter-bench profile` (`bash bench/profile.sh`): where the time goes under one
//! load at a fixed rate, in a form anyone can rerun.
//!
//! It starts a throwaway deployment like `chatter-bench deploy` (Redis, Postgres
//! with `pg_stat_statements`, 2 gateways, a worker), connects the load, warms it
//! up, and then over one measured window collects:
//!
//! - CPU per process from `/proc` (cores, and µs per message);
//! - Redis `INFO commandstats` (the window's delta) and `SLOWLOG` (≥ 1 ms);
//! - the top statements of `pg_stat_statements`;
//! - the gateways' own `/metrics` (the window's delta, both summed): where a
//!   message's latency builds up (`chatter_publish_seconds` on the sending
//!   side, `chatter_delivery_seconds` up to the receiving hub) and every
//!   counter that moved (repairs, slow consumers, refusals);
//! - `perf record -e cpu-clock -g` of the first gateway and
//!   `perf report --no-children --percent-limit 1 --stdio`, when `perf` is installed.
//!
//! and prints it all as Markdown.

use crate::coordinator::{LoadRun, StepReport};
use crate::report::int;
use crate::scenarios::{self, Bench, Deployment, RedisKind};
use crate::sys::{self, CpuSampler, MACHINE_BUSY, MACHINE_SOFTIRQ, OTHER};
use anyhow::{Context, Result};
use chatter_tests::{PostgresServer, RedisServer, Resp};
use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

/// What load to profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Load {
    /// Rooms of 2, members on different gateways, both send.
    OneToOne,
    /// Rooms of 100 (or `room_size`), members on both gateways.
    Fanout,
    /// No messages: the window is the connect of every socket at once.
    Connect,
}

#[derive(Debug, Clone)]
pub struct Options {
    pub load: Load,
    pub connections: usize,
    /// Members per room (one-to-one: 2; fan-out: 100 unless given).
    pub room_size: usize,
    /// Messages per second, all senders together (ignored by `Connect`).
    pub rate: f64,
    /// The measured window.
    pub seconds: f64,
}

/// Redis's slow log keeps commands that took at least this long (µs) during
/// the window (its default, 10 ms, would show nothing here).
const SLOWLOG_US: &str = "1000";
/// Arguments of a slow command shown.
const SLOWLOG_ARGS: usize = 4;
/// Lines of `perf report`'s call graphs printed (the whole report is kept in
/// the log folder); the flat profile is printed whole.
const PERF_LINES: usize = 120;

/// Loads `pg_stat_statements` into a fresh server: `shared_preload_libraries`
/// needs a restart, done before anything else connects.
pub(crate) async fn enable_pg_stat_statements(postgres: &mut PostgresServer) -> Result<()> {
    sqlx::query("ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'")
        .execute(&postgres.pool())
        .await
        .context("ALTER SYSTEM SET shared_preload_libraries")?;
    postgres.stop().await.context("stopping Postgres")?;
    postgres.restart().await.context("restarting Postgres")?;
    sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        .execute(&postgres.pool())
        .await
        .context("CREATE EXTENSION pg_stat_statements (is it installed?)")?;
    Ok(())
}

/// Runs the profile and returns it as Markdown.
pub async fn profile(bench: &Bench, options: &Options) -> Result<String> {
    let dir = bench.dir("profile")?;
    let (deployment, pg_note) =
        match Deployment::start_opts(&dir, &bench.bins, 2, true, &[], true, RedisKind::One).await {
            Ok(deployment) => (deployment, None),
            Err(error) => {
                eprintln!("profile: without pg_stat_statements: {error:#}");
                let deployment =
                    Deployment::start_opts(&dir, &bench.bins, 2, true, &[], false, RedisKind::One)
                        .await?;
                (deployment, Some(format!("{error:#}")))
            }
        };
    let gateway_pid = deployment.gateways[0].pid();
    let room_size = match options.load {
        Load::Connect => 0,
        _ => options.room_size,
    };
    let mut load_options = bench.options(options.connections, room_size, &dir);
    load_options.agents = options.connections.div_ceil(10_000).max(2);
    load_options.agent_max_secs = 3600;
    if options.load == Load::Connect {
        load_options.connect_concurrency = scenarios::STORM_CONCURRENCY;
    }
    let target = deployment.target();

    let mut run = None;
    if options.load != Load::Connect {
        let mut loaded = LoadRun::start(&target, &load_options).await?;
        scenarios::report_setup("chatter", &loaded);
        scenarios::warm_up(&mut loaded, bench).await?;
        run = Some(loaded);
    }

    // The window.
    let redis_before = commandstats(deployment.redis.one()?).await?;
    let _ = deployment
        .redis
        .one()?
        .cmd(&["CONFIG", "SET", "slowlog-log-slower-than", SLOWLOG_US])
        .await;
    let _ = deployment.redis.one()?.cmd(&["SLOWLOG", "RESET"]).await;
    let pg_ready = pg_note.is_none()
        && sqlx::query("SELECT pg_stat_statements_reset()")
            .execute(&deployment.postgres.pool())
            .await
            .is_ok();
    let gateway_urls: Vec<String> = deployment.gateways.iter().map(|g| g.http_url()).collect();
    let metrics_before = scrape_gateways(&gateway_urls).await;
    let perf_data = dir.join("perf.data");
    let perf = start_perf(gateway_pid, options.seconds, &perf_data, &dir);
    let cpu = CpuSampler::start();
    let (step, connect_s) = match run.as_mut() {
        Some(run) => (
            Some(scenarios::step(run, options.rate, options.seconds, 15.0).await?),
            None,
        ),
        None => {
            let started = std::time::Instant::now();
            let loaded = LoadRun::start(&target, &load_options).await?;
            let secs = started.elapsed().as_secs_f64();
            eprintln!(
                "  {} connected in {secs:.1}s ({:.0}/s)",
                loaded.connect.ok,
                loaded.connect.ok as f64 / secs.max(1e-3)
            );
            run = Some(loaded);
            (None, Some(secs))
        }
    };
    let cores = match &step {
        // The step's own sampler covers its send window exactly.
        Some(step) if !step.cpu.is_empty() => step.cpu.clone(),
        _ => cpu.finish(),
    };
    let metrics_after = scrape_gateways(&gateway_urls).await;
    let redis_after = commandstats(deployment.redis.one()?).await?;
    let slowlog = deployment
        .redis
        .one()?
        .cmd(&["SLOWLOG", "GET", "20"])
        .await
        .ok();
    let statements = if pg_ready {
        top_statements(&deployment.postgres).await.ok()
    } else {
        None
    };
    let perf_report = match perf {
        Some(child) => finish_perf(child, &perf_data, &dir, options.seconds).await,
        None => Err("perf is not installed (Debian: apt-get install linux-perf)".to_owned()),
    };
    if let Some(run) = run {
        run.quit().await;
    }
    drop(deployment);

    let mut md = String::new();
    let _ = writeln!(md, "# chatter profile\n");
    let load = match options.load {
        Load::OneToOne => format!(
            "1:1: {} connections in rooms of 2 (members on different gateways), {} msg/s for {} s",
            int(options.connections as f64),
            int(options.rate),
            options.seconds
        ),
        Load::Fanout => format!(
            "fan-out: {} connections in rooms of {}, {} msg/s for {} s",
            int(options.connections as f64),
            options.room_size,
            int(options.rate),
            options.seconds
        ),
        Load::Connect => format!(
            "connect: {} sockets at once ({} handshakes in flight per agent)",
            int(options.connections as f64),
            scenarios::STORM_CONCURRENCY
        ),
    };
    let machine = sys::machine();
    let _ = writeln!(
        md,
        "{load}. 2 gateways, 1 worker, Redis, Postgres (release builds), all on this machine \
         ({} cores, {}). Logs and `perf.data` in `{}`.\n",
        machine.cores,
        machine.cpu_model,
        dir.display()
    );
    if let Some(step) = &step {
        step_line(&mut md, step);
    }
    if let Some(secs) = connect_s {
        let _ = writeln!(
            md,
            "Connected {} sockets in {secs:.1} s: {}/s.\n",
            int(options.connections as f64),
            int(options.connections as f64 / secs.max(1e-3))
        );
    }
    cpu_table(&mut md, &cores, step.as_ref().map(|s| s.messages_per_s));
    redis_table(
        &mut md,
        &redis_before,
        &redis_after,
        step.as_ref().map(|s| s.confirmed),
    );
    slowlog_section(&mut md, slowlog.as_ref());
    gateway_metrics_section(&mut md, &metrics_before, &metrics_after);
    match (&statements, &pg_note) {
        (Some(rows), _) => statements_table(&mut md, rows),
        (None, Some(why)) => {
            let _ = writeln!(md, "**Postgres**: no `pg_stat_statements`: {why}\n");
        }
        (None, None) => {
            let _ = writeln!(md, "**Postgres**: reading `pg_stat_statements` failed.\n");
        }
    }
    let _ = writeln!(
        md,
        "## `perf` of gateway 1 (pid {gateway_pid})\n\n`perf record -e cpu-clock -g -p {gateway_pid} -- sleep {}` then `perf report --no-children --percent-limit 1 --stdio`: by binary (`-g none --sort dso`), by symbol (`-g none`) and with call graphs:\n",
        options.seconds
    );
    match perf_report {
        Ok(text) => {
            let _ = writeln!(md, "```text\n{text}\n```\n");
        }
        Err(why) => {
            let _ = writeln!(md, "Not recorded: {why}\n");
        }
    }
    Ok(md)
}

fn step_line(md: &mut String, s: &StepReport) {
    let _ = writeln!(
        md,
        "{} msg/s asked, {} confirmed, {} deliveries/s; p50 {:.2} ms, p99 {:.2} ms (others {:.2}, confirmation {:.2}); missing {}, errors {}.\n",
        int(s.rate),
        int(s.messages_per_s),
        int(s.deliveries_per_s),
        s.latency.p50_ms,
        s.latency.p99_ms,
        s.latency_peers.p99_ms,
        s.ack_latency.p99_ms,
        s.missing_new,
        s.errors()
    );
}

fn cpu_table(md: &mut String, cores: &BTreeMap<String, f64>, messages_per_s: Option<f64>) {
    let _ = writeln!(md, "## CPU (from /proc)\n");
    let _ = writeln!(md, "| process | cores | µs of CPU per message |");
    let _ = writeln!(md, "|---|---|---|");
    let mut rows: Vec<(&String, &f64)> = cores.iter().collect();
    rows.sort_by(|a, b| b.1.total_cmp(a.1));
    for (name, cores) in rows {
        let label = match name.as_str() {
            MACHINE_BUSY => "(the whole machine, busy)",
            MACHINE_SOFTIRQ => "(… of which softirq)",
            OTHER => "(every other process)",
            other => other,
        };
        let per_message = match messages_per_s {
            Some(rate) if rate > 0.0 => format!("{:.1}", cores * 1e6 / rate),
            _ => "–".into(),
        };
        let _ = writeln!(md, "| {label} | {cores:.3} | {per_message} |");
    }
    let _ = writeln!(md);
}

/// `INFO commandstats`: command → (calls, µs).
pub(crate) async fn commandstats(redis: &RedisServer) -> Result<BTreeMap<String, (u64, u64)>> {
    let reply = redis.cmd(&["INFO", "commandstats"]).await?;
    let text = reply.as_str().unwrap_or_default();
    let mut out = BTreeMap::new();
    for line in text.lines() {
        // cmdstat_evalsha:calls=5,usec=120,usec_per_call=24.00,...
        let Some((name, fields)) = line
            .strip_prefix("cmdstat_")
            .and_then(|l| l.split_once(':'))
        else {
            continue;
        };
        let field = |key: &str| {
            fields
                .split(',')
                .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse::<u64>().ok())
                .unwrap_or(0)
        };
        out.insert(name.to_owned(), (field("calls"), field("usec")));
    }
    Ok(out)
}

fn redis_table(
    md: &mut String,
    before: &BTreeMap<String, (u64, u64)>,
    after: &BTreeMap<String, (u64, u64)>,
    messages: Option<u64>,
) {
    let _ = writeln!(md, "## Redis `INFO commandstats` (the window's delta)\n");
    let _ = writeln!(
        md,
        "| command | calls | per message | µs in Redis | µs per call | µs per message |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|");
    let mut rows: Vec<(&String, u64, u64)> = after
        .iter()
        .map(|(name, (calls, usec))| {
            let (c0, u0) = before.get(name).copied().unwrap_or_default();
            (name, calls.saturating_sub(c0), usec.saturating_sub(u0))
        })
        .filter(|(_, calls, _)| *calls > 0)
        .collect();
    rows.sort_by_key(|row| std::cmp::Reverse(row.2));
    let per = |v: u64| match messages {
        Some(m) if m > 0 => format!("{:.2}", v as f64 / m as f64),
        _ => "–".into(),
    };
    for (name, calls, usec) in rows {
        let _ = writeln!(
            md,
            "| {name} | {} | {} | {} | {:.2} | {} |",
            int(calls as f64),
            per(calls),
            int(usec as f64),
            usec as f64 / calls.max(1) as f64,
            per(usec)
        );
    }
    let _ = writeln!(md);
}

fn slowlog_section(md: &mut String, slowlog: Option<&Resp>) {
    let _ = writeln!(md, "## Redis `SLOWLOG` (commands ≥ {SLOWLOG_US} µs)\n");
    let entries = match slowlog {
        Some(Resp::Array(Some(entries))) => entries,
        _ => {
            let _ = writeln!(md, "None.\n");
            return;
        }
    };
    if entries.is_empty() {
        let _ = writeln!(md, "None.\n");
        return;
    }
    let _ = writeln!(md, "| µs | command |");
    let _ = writeln!(md, "|---|---|");
    for entry in entries {
        let Resp::Array(Some(fields)) = entry else {
            continue;
        };
        let usec = fields.get(2).and_then(Resp::as_int).unwrap_or(0);
        // The command and its first keys; scripts' long arguments left out.
        let args = match fields.get(3) {
            Some(Resp::Array(Some(args))) => {
                let mut text = args
                    .iter()
                    .take(SLOWLOG_ARGS)
                    .filter_map(|a| a.as_str())
                    .map(|a| a.chars().take(48).collect::<String>())
                    .collect::<Vec<_>>()
                    .join(" ");
                if args.len() > SLOWLOG_ARGS {
                    let _ = write!(text, " … ({} arguments)", args.len());
                }
                text
            }
            _ => String::new(),
        };
        let _ = writeln!(
            md,
            "| {} | `{}` |",
            int(usec as f64),
            args.replace('|', "\\|")
        );
    }
    let _ = writeln!(md);
}

/// (query, calls, total ms, mean ms, rows), the ten with the most time.
async fn top_statements(postgres: &PostgresServer) -> Result<Vec<(String, i64, f64, f64, i64)>> {
    sqlx::query_as(
        "SELECT query, calls, total_exec_time, mean_exec_time, rows FROM pg_stat_statements \
         WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) \
           AND query NOT LIKE '%pg_stat_statements%' \
         ORDER BY total_exec_time DESC LIMIT 10",
    )
    .fetch_all(&postgres.pool())
    .await
    .context("reading pg_stat_statements")
}

fn statements_table(md: &mut String, rows: &[(String, i64, f64, f64, i64)]) {
    let _ = writeln!(md, "## Postgres `pg_stat_statements` (top 10 by time)\n");
    let _ = writeln!(md, "| total ms | calls | mean ms | rows | statement |");
    let _ = writeln!(md, "|---|---|---|---|---|");
    for (query, calls, total, mean, rows) in rows {
        let query: String = query
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .chars()
            .take(160)
            .collect();
        let _ = writeln!(
            md,
            "| {total:.1} | {} | {mean:.3} | {} | `{}` |",
            int(*calls as f64),
            int(*rows as f64),
            query.replace('|', "\\|")
        );
    }
    let _ = writeln!(md);
}

/// `perf record` of `pid` for the window, if `perf` is on PATH.
fn start_perf(pid: u32, seconds: f64, data: &Path, dir: &Path) -> Option<tokio::process::Child> {
    let log = std::fs::File::create(dir.join("perf-record.log")).ok()?;
    tokio::process::Command::new("perf")
        .args([
            "record",
            "-e",
            "cpu-clock",
            "-g",
            "-p",
            &pid.to_string(),
            "-o",
        ])
        .arg(data)
        .args(["--", "sleep", &format!("{seconds}")])
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .kill_on_drop(true)
        .spawn()
        .ok()
}

async fn finish_perf(
    mut child: tokio::process::Child,
    data: &Path,
    dir: &Path,
    seconds: f64,
) -> Result<String, String> {
    let waited = tokio::time::timeout(Duration::from_secs_f64(seconds + 60.0), child.wait()).await;
    match waited {
        Ok(Ok(status)) if status.success() => {}
        other => {
            let _ = child.kill().await;
            return Err(format!(
                "perf record ended with {other:?}; see {}",
                dir.join("perf-record.log").display()
            ));
        }
    }
    // By binary first: the gateway's own code is spread over many symbols
    // below the 1 % limit, so this is where its share shows.
    let by_dso = perf_report(data, &["-g", "none", "--sort", "dso"]).await?;
    let flat = perf_report(data, &["-g", "none"]).await?;
    let graph = perf_report(data, &[]).await?;
    let full = dir.join("perf-report.txt");
    let _ = std::fs::write(&full, graph.as_bytes());
    let lines = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(str::to_owned)
            .collect()
    };
    let mut shown = lines(&by_dso).join("\n");
    let _ = write!(shown, "\n\nBy symbol:\n\n{}", lines(&flat).join("\n"));
    let graph_lines = lines(&graph);
    let _ = write!(shown, "\n\nCall graphs:\n\n");
    shown.push_str(&graph_lines[..graph_lines.len().min(PERF_LINES)].join("\n"));
    if graph_lines.len() > PERF_LINES {
        let _ = write!(
            shown,
            "\n… {} more lines in {}",
            graph_lines.len() - PERF_LINES,
            full.display()
        );
    }
    Ok(shown)
}

/// `perf report --no-children --percent-limit 1 --stdio` of `data`, plus `extra`.
async fn perf_report(data: &Path, extra: &[&str]) -> Result<String, String> {
    let report = tokio::process::Command::new("perf")
        .args(["report", "-i"])
        .arg(data)
        .args(["--no-children", "--percent-limit", "1", "--stdio"])
        .args(extra)
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(Duration::from_secs(180), report).await {
        Ok(Ok(output)) if output.status.success() => {
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        }
        other => Err(format!("perf report failed: {other:?}")),
    }
}

/// Every series of every gateway's `/metrics`, summed over the gateways (a
/// gateway that does not answer counts as empty: the section says what moved).
async fn scrape_gateways(urls: &[String]) -> BTreeMap<String, f64> {
    let mut sum = BTreeMap::new();
    let Ok(http) = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
    else {
        return sum;
    };
    for url in urls {
        let Ok(response) = http.get(format!("{url}/metrics")).send().await else {
            continue;
        };
        let Ok(text) = response.text().await else {
            continue;
        };
        for (series, value) in parse_prometheus(&text) {
            *sum.entry(series).or_default() += value;
        }
    }
    sum
}

/// `name{labels} value` lines of the Prometheus text format; comments and
/// lines that do not parse are skipped.
fn parse_prometheus(text: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// The latency histograms' window delta as shares past a few bounds, then
/// every other series that moved.
fn gateway_metrics_section(
    md: &mut String,
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
) {
    let delta = |series: &str| {
        after.get(series).copied().unwrap_or(0.0) - before.get(series).copied().unwrap_or(0.0)
    };
    let _ = writeln!(
        md,
        "## The gateways' `/metrics` during the window (both summed)\n"
    );
    let _ = writeln!(
        md,
        "`chatter_publish_seconds`: the sending gateway's append (waiting in its appender, then the ingest script's round trip); `chatter_delivery_seconds`: from the message's `created_at`, stamped just before that append, to its hand-off to the receiving gateway's sockets. What the load generator sees beyond those is the sockets' two ends: reading and checking the frame before the append, writing it out after the hand-off.\n"
    );
    let _ = writeln!(
        md,
        "| histogram | samples | > 5 ms | > 10 ms | > 25 ms | > 50 ms | > 100 ms |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|");
    for name in ["chatter_publish_seconds", "chatter_delivery_seconds"] {
        let count = delta(&format!("{name}_count"));
        let share_past = |bound: &str| {
            let within = delta(&format!("{name}_bucket{{le=\"{bound}\"}}"));
            if count > 0.0 {
                format!("{:.2} %", 100.0 * (count - within) / count)
            } else {
                "–".into()
            }
        };
        let _ = writeln!(
            md,
            "| `{name}` | {} | {} | {} | {} | {} | {} |",
            int(count),
            share_past("0.005"),
            share_past("0.01"),
            share_past("0.025"),
            share_past("0.05"),
            share_past("0.1")
        );
    }
    let _ = writeln!(
        md,
        "\nOther series that moved (histogram buckets left out):\n"
    );
    let _ = writeln!(md, "| series | change |");
    let _ = writeln!(md, "|---|---|");
    for series in after.keys() {
        if series.contains("_bucket{") || series.contains("_seconds") {
            continue;
        }
        let change = delta(series);
        if change != 0.0 {
            let _ = writeln!(md, "| `{series}` | {change} |");
        }
    }
    let _ = writeln!(md);
}
