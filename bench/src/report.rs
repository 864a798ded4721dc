//! RESULTS.md: a header (machine, commit, date), the summary table against the
//! targets, and one section per scenario with every step.

use crate::coordinator::{Bound, StepReport};
use crate::scenarios::{
    DrainResult, FanoutResult, IdleResult, IdleSide, P99_BOUND_MS, PairsResult, RAMP_FACTOR,
    RampSide, Results, StormResult,
};
use crate::sys::{MACHINE_BUSY, MACHINE_SOFTIRQ, OTHER};
use std::collections::BTreeMap;
use std::fmt::Write;

/// Targets of issue 12 (2-core machine, load generator included), each against a
/// baseline measured in the same run.
pub const TARGET_PAIRS_SHARE: f64 = 0.40;
pub const TARGET_CONNECT_SHARE: f64 = 0.50;
pub const TARGET_FANOUT_SHARE: f64 = 0.85;
pub const TARGET_FIXED_P99_MS: f64 = 20.0;
pub const TARGET_RSS_KIB: f64 = 6.0;
pub const TARGET_BASELINE_RSS_MIB: f64 = 32.0;
pub const TARGET_PERSIST_PER_S: f64 = 30_000.0;
pub const TARGET_COPY_SHARE: f64 = 0.50;
/// Issue 6's bound on the worker's lag under load.
pub const TARGET_LAG_S: f64 = 1.0;

/// Facts about the run for the header.
pub struct Meta {
    pub cores: usize,
    pub memory_gib: f64,
    pub cpu_model: String,
    pub kernel: String,
    pub commit: String,
    /// Tracked files with uncommitted changes when the results were written.
    pub uncommitted_files: usize,
    pub date: String,
    pub fd_limit: u64,
    pub command: String,
}

pub fn markdown(results: &Results, meta: &Meta) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# chatter benchmark results\n");
    let _ = writeln!(
        md,
        "Written by `{}`. Every process — Redis, Postgres, gateways, worker, the load generator's \
         agents and the ceiling server — runs on this one machine and shares its cores. Release builds. \
         See [README.md](README.md) for what each number means. \
         CPU columns: cores busy on the whole machine (softirq included: loopback TCP does much \
         of its work there, and no process is charged for it), then per benchmark process and for \
         all other processes.\n",
        meta.command
    );
    let _ = writeln!(md, "| | |\n|---|---|");
    let _ = writeln!(
        md,
        "| machine | {} cores (nproc), {:.1} GiB RAM, {}, Linux {} |",
        meta.cores, meta.memory_gib, meta.cpu_model, meta.kernel
    );
    let _ = write!(md, "| commit | `{}`", meta.commit);
    if meta.uncommitted_files > 0 {
        let _ = write!(
            md,
            " plus uncommitted changes to {} tracked files",
            meta.uncommitted_files
        );
    }
    let _ = writeln!(md, " |");
    let _ = writeln!(md, "| date | {} |", meta.date);
    let _ = writeln!(
        md,
        "| open files | {} per process (hard limit) |",
        meta.fd_limit
    );
    let _ = writeln!(md, "| run time | {:.1} min |\n", results.elapsed_s / 60.0);

    summary(&mut md, results);

    for (scenario, error) in &results.failures {
        let _ = writeln!(md, "**{scenario} failed:** `{error}`\n");
    }
    observations(&mut md, results, meta.cores);
    if let Some(idle) = &results.idle {
        idle_section(&mut md, idle);
    }
    if let Some(fanout) = &results.fanout {
        fanout_section(&mut md, fanout);
    }
    if let Some(pairs) = &results.one_to_one {
        pairs_section(&mut md, pairs);
    }
    if let Some(drain) = &results.persist {
        persist_section(&mut md, drain);
    }
    if let Some(storm) = &results.storm {
        storm_section(&mut md, storm);
    }
    if let Some(scaling) = &results.scaling {
        crate::scaling::section(&mut md, scaling);
    }
    if let Some(policy) = &results.content_policy {
        policy_section(&mut md, policy);
    }
    md
}

fn policy_section(md: &mut String, p: &crate::scenarios::PolicyResult) {
    use crate::scenarios::gateway_cores;
    let _ = writeln!(md, "## Content policy\n");
    let _ = writeln!(
        md,
        "{} connections in rooms of 2 (members on different gateways), the same fixed rates \
         against two deployments in the same run: without a content policy (the baseline), and \
         with `CONTENT_BLOCKLIST_FILE` holding {} entries (words and regular expressions) that \
         no message matches, so every message is checked. Ratio = on / off.\n",
        int(p.connections as f64),
        p.blocklist_entries
    );
    let _ = writeln!(
        md,
        "The block list's check alone (the gateway's matcher, timed in this process): \
         {:.0} ns per 64-byte message, {:.1} µs per 4,000-character message.\n",
        p.check_ns_short,
        p.check_ns_long / 1000.0
    );
    let _ = writeln!(
        md,
        "| msg/s | ack p50 off → on (ratio) | ack p99 off → on (ratio) | delivery p99 off → on (ratio) | gateway cores off → on (ratio) | errors off / on |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|");
    for s in &p.steps {
        let pair = |off: f64, on: f64, unit: &str| {
            format!("{off:.2} → {on:.2}{unit} ({})", ratio(on, off))
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} / {} |",
            int(s.rate),
            pair(s.off.ack_latency.p50_ms, s.on.ack_latency.p50_ms, " ms"),
            pair(s.off.ack_latency.p99_ms, s.on.ack_latency.p99_ms, " ms"),
            pair(s.off.latency.p99_ms, s.on.latency.p99_ms, " ms"),
            pair(gateway_cores(&s.off), gateway_cores(&s.on), ""),
            s.off.errors(),
            s.on.errors()
        );
    }
    let _ = writeln!(md);
    if p.steps.iter().any(|s| s.before.is_some()) {
        let _ = writeln!(
            md,
            "With the policy off against the baseline binaries (`--baseline-bins`, run first, \
             in the same run). Ratio = off / before.\n"
        );
        let _ = writeln!(
            md,
            "| msg/s | ack p50 before → off (ratio) | ack p99 before → off (ratio) | delivery p99 before → off (ratio) | gateway cores before → off (ratio) |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|");
        for s in &p.steps {
            let Some(before) = &s.before else { continue };
            let pair = |before: f64, off: f64, unit: &str| {
                format!("{before:.2} → {off:.2}{unit} ({})", ratio(off, before))
            };
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} |",
                int(s.rate),
                pair(before.ack_latency.p50_ms, s.off.ack_latency.p50_ms, " ms"),
                pair(before.ack_latency.p99_ms, s.off.ack_latency.p99_ms, " ms"),
                pair(before.latency.p99_ms, s.off.latency.p99_ms, " ms"),
                pair(gateway_cores(before), gateway_cores(&s.off), "")
            );
        }
        let _ = writeln!(md);
    }
}

/// The summary: exactly the rows of issue 12's table, each chatter figure next to
/// its baseline measured in the same run, as a ratio, with the target and verdict.
fn summary(md: &mut String, r: &Results) {
    let _ = writeln!(md, "## Summary\n");
    let _ = writeln!(
        md,
        "The targets of issue 12. Every baseline was measured in this run, on this machine, \
         with the same load. For a target that is missed, [README.md](README.md#what-limits-the-targets-still-missed) \
         gives the profile that shows what limits it and what would move it.\n"
    );
    let _ = writeln!(
        md,
        "| figure | chatter | baseline (same run) | chatter / baseline | target | verdict |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|");
    let missing = |what: &str| format!("not measured (the {what} scenario did not run)");

    // 1:1 messages/s at p99 ≤ 50 ms.
    match &r.one_to_one {
        Some(p) => {
            let best = p.chatter.best.as_ref();
            let ceiling_best = p.ceiling.as_ref().and_then(|c| c.best.as_ref());
            let (a, b) = (
                best.map_or(0.0, |s| s.messages_per_s),
                ceiling_best.map_or(0.0, |s| s.messages_per_s),
            );
            let _ = writeln!(
                md,
                "| 1:1 messages/s at p99 ≤ {P99_BOUND_MS} ms ({} conns in pairs, 2 gateways) | {} | ceiling: {} | {} | ≥ {:.0} % of the ceiling | {} |",
                int(p.connections as f64),
                msg_cell(best, Bound::All),
                msg_cell(ceiling_best, Bound::All),
                share(a, b),
                TARGET_PAIRS_SHARE * 100.0,
                share_verdict(a, b, TARGET_PAIRS_SHARE)
            );
        }
        None => summary_gap(md, "1:1 messages/s at p99 ≤ 50 ms", &missing("one-to-one")),
    }

    // Connects/s of the idle scenario's storm.
    match &r.idle {
        Some(idle) => {
            let rate = |s: &IdleSide| s.connect.ok as f64 / s.connect.elapsed_s.max(1e-3);
            let c = &idle.chatter;
            let ceiling = idle.ceiling.as_ref();
            let _ = writeln!(
                md,
                "| connects/s ({} sockets at once, {} handshakes in flight per agent) | {}/s ({:.1} s) | ceiling: {} | {} | ≥ {:.0} % of the ceiling | {} |",
                int(c.requested as f64),
                crate::scenarios::STORM_CONCURRENCY,
                int(rate(c)),
                c.connect.elapsed_s,
                ceiling.map_or("–".into(), |s| format!(
                    "{}/s ({:.1} s)",
                    int(rate(s)),
                    s.connect.elapsed_s
                )),
                ceiling.map_or("–".into(), |s| share(rate(c), rate(s))),
                TARGET_CONNECT_SHARE * 100.0,
                share_verdict(rate(c), ceiling.map_or(0.0, rate), TARGET_CONNECT_SHARE)
            );
        }
        None => summary_gap(md, "connects/s", &missing("idle")),
    }

    // Fan-out: highest deliveries/s, and p99 at the fixed step.
    match &r.fanout {
        Some(f) => {
            let best = f.chatter.best.as_ref();
            let ceiling_best = f.ceiling.as_ref().and_then(|c| c.best.as_ref());
            let (a, b) = (
                best.map_or(0.0, |s| s.deliveries_per_s),
                ceiling_best.map_or(0.0, |s| s.deliveries_per_s),
            );
            let _ = writeln!(
                md,
                "| fan-out deliveries/s at p99 ≤ {P99_BOUND_MS} ms ({} conns, rooms of {}, 2 gateways) | {} | ceiling: {} | {} | ≥ {:.0} % of the ceiling | {} |",
                int(f.connections as f64),
                f.room_size,
                rate_cell(best, Bound::All),
                rate_cell(ceiling_best, Bound::All),
                share(a, b),
                TARGET_FANOUT_SHARE * 100.0,
                share_verdict(a, b, TARGET_FANOUT_SHARE)
            );
            let fixed = f.chatter.fixed.as_ref();
            let ceiling_fixed = f.ceiling.as_ref().and_then(|c| c.fixed.as_ref());
            let _ = writeln!(
                md,
                "| p99 at the fixed {} msg/s fan-out step (after a warm-up at that rate) | {} | ceiling: {} | {} | ≤ {TARGET_FIXED_P99_MS} ms | {} |",
                int(f.fixed_rate),
                fixed.map_or("–".into(), |s| format!("{:.2} ms", s.latency.p99_ms)),
                ceiling_fixed.map_or("–".into(), |s| format!("{:.2} ms", s.latency.p99_ms)),
                match (fixed, ceiling_fixed) {
                    (Some(a), Some(b)) => ratio(a.latency.p99_ms, b.latency.p99_ms),
                    _ => "–".into(),
                },
                fixed.map_or("not measured".into(), |s| if s.latency.count == 0 {
                    "no deliveries".into()
                } else {
                    at_most(s.latency.p99_ms, TARGET_FIXED_P99_MS, "ms")
                })
            );
        }
        None => {
            summary_gap(
                md,
                "fan-out deliveries/s at p99 ≤ 50 ms",
                &missing("fanout"),
            );
            summary_gap(md, "p99 at the fixed fan-out step", &missing("fanout"));
        }
    }

    // Memory.
    match &r.idle {
        Some(idle) => {
            let c = &idle.chatter;
            let ceiling = idle.ceiling.as_ref();
            let _ = writeln!(
                md,
                "| RSS per idle authenticated socket ({} sockets on one gateway) | {:.2} KiB | ceiling (4 KiB read buffers): {} | {} | ≤ {TARGET_RSS_KIB} KiB | {} |",
                int(c.connect.ok as f64),
                c.per_conn_kib,
                ceiling.map_or("–".into(), |s| format!("{:.2} KiB", s.per_conn_kib)),
                ceiling.map_or("–".into(), |s| ratio(c.per_conn_kib, s.per_conn_kib)),
                at_most(c.per_conn_kib, TARGET_RSS_KIB, "KiB")
            );
            let mib = |kib: u64| kib as f64 / 1024.0;
            let _ = writeln!(
                md,
                "| gateway RSS with no socket (2 s after start) | {:.1} MiB | ceiling: {} | {} | ≤ {TARGET_BASELINE_RSS_MIB} MiB | {} |",
                mib(c.rss_before_kib),
                ceiling.map_or("–".into(), |s| format!(
                    "{:.1} MiB",
                    mib(s.rss_before_kib)
                )),
                ceiling.map_or("–".into(), |s| ratio(
                    c.rss_before_kib as f64,
                    s.rss_before_kib as f64
                )),
                at_most(mib(c.rss_before_kib), TARGET_BASELINE_RSS_MIB, "MiB")
            );
        }
        None => {
            summary_gap(md, "RSS per idle socket", &missing("idle"));
            summary_gap(md, "gateway RSS with no socket", &missing("idle"));
        }
    }

    // Persistence.
    match &r.persist {
        Some(d) => {
            let drained = if d.complete {
                at_least(d.per_s, TARGET_PERSIST_PER_S, "msg/s")
            } else {
                format!(
                    "the backlog was not drained in {:.0} s; {}",
                    d.wall_s,
                    at_least(d.per_s, TARGET_PERSIST_PER_S, "msg/s")
                )
            };
            let _ = writeln!(
                md,
                "| worker drain into Postgres (one worker, a backlog of {}) | {} msg/s | – | – | ≥ {} msg/s | {} |",
                int(d.backlog as f64),
                int(d.per_s),
                int(TARGET_PERSIST_PER_S),
                drained
            );
            let copy = d.copy.as_ref();
            let _ = writeln!(
                md,
                "| worker drain vs a bulk `COPY … FROM STDIN` of the same rows (same Postgres, a table `LIKE messages INCLUDING ALL`) | {} rows/s | COPY: {} | {} | ≥ {:.0} % of COPY | {} |",
                int(d.per_s),
                copy.map_or("not measured".into(), |c| format!(
                    "{} rows/s ({} rows in {:.2} s)",
                    int(c.per_s),
                    int(c.rows as f64),
                    c.seconds
                )),
                copy.map_or("–".into(), |c| share(d.per_s, c.per_s)),
                TARGET_COPY_SHARE * 100.0,
                share_verdict(d.per_s, copy.map_or(0.0, |c| c.per_s), TARGET_COPY_SHARE)
            );
        }
        None => {
            summary_gap(md, "worker drain into Postgres", &missing("persist"));
            summary_gap(md, "worker drain vs a bulk COPY", &missing("persist"));
        }
    }
    let _ = writeln!(md);
    other_checks(md, r);
}

/// A summary row whose scenario did not run.
fn summary_gap(md: &mut String, figure: &str, why: &str) {
    let _ = writeln!(md, "| {figure} | – | – | – | – | {why} |");
}

/// "met", or how far a share of the baseline is from the target share.
fn share_verdict(value: f64, baseline: f64, target: f64) -> String {
    if baseline <= 0.0 {
        return "no baseline figure".into();
    }
    let got = value / baseline;
    if got >= target {
        "met".into()
    } else {
        format!(
            "**missed**: {:.0} %, {:.0} points short",
            got * 100.0,
            (target - got) * 100.0
        )
    }
}

/// What else a run checks: losses, the other bounds, the storm after a drain.
fn other_checks(md: &mut String, r: &Results) {
    let _ = writeln!(md, "## Other checks\n");
    let _ = writeln!(
        md,
        "| scenario | figure | chatter | ceiling | chatter / ceiling | target | verdict |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|");
    if let Some(idle) = &r.idle {
        let c = &idle.chatter;
        let ceiling = idle.ceiling.as_ref();
        let _ = writeln!(
            md,
            "| idle | idle authenticated connections on one gateway | {} | {} | – | {} | {} |",
            int(c.connect.ok as f64),
            ceiling.map_or("–".into(), |s| int(s.connect.ok as f64)),
            int(idle.target as f64),
            if (c.connect.ok as usize) < idle.target {
                format!(
                    "**not reachable here**: one process may hold at most ~{} sockets (open-file limit {}, hard); measured with {}",
                    int(idle.fd_limit.saturating_sub(100) as f64),
                    idle.fd_limit,
                    int(c.requested as f64)
                )
            } else {
                "met".into()
            }
        );
        if let Some(d) = &idle.ceiling_default_buffers {
            let _ = writeln!(
                md,
                "| idle | … the ceiling with 128 KiB read buffers (tungstenite's and axum's default) | {:.1} KiB | {:.1} KiB | {} | – | – |",
                c.per_conn_kib,
                d.per_conn_kib,
                ratio(c.per_conn_kib, d.per_conn_kib)
            );
        }
    }
    if let Some(f) = &r.fanout {
        peers_row(md, "fan-out", &f.chatter, f.ceiling.as_ref(), rate_cell);
        if let Some(fixed) = &f.chatter.fixed {
            let ceiling_fixed = f.ceiling.as_ref().and_then(|c| c.fixed.as_ref());
            let _ = writeln!(
                md,
                "| fan-out | p99 / p99.9 / max at {} msg/s ({} deliveries/s) | {} | {} | {} | p99 ≤ {P99_BOUND_MS} ms | {} |",
                int(f.fixed_rate),
                int(f.fixed_rate * f.room_size as f64),
                latency_cell(fixed),
                ceiling_fixed.map_or("–".into(), latency_cell),
                ceiling_fixed.map_or("–".into(), |c| ratio(
                    fixed.latency.p99_ms,
                    c.latency.p99_ms
                )),
                at_most(fixed.latency.p99_ms, P99_BOUND_MS, "ms")
            );
        }
        lost_row(md, "fan-out", &f.chatter, f.ceiling.as_ref());
    }
    if let Some(p) = &r.one_to_one {
        let best = p.chatter.best.as_ref();
        peers_row(md, "1:1", &p.chatter, p.ceiling.as_ref(), msg_cell);
        for (label, rps) in &p.redis_publish {
            let _ = writeln!(
                md,
                "| 1:1 | chatter messages/s vs `redis-benchmark` PUBLISH ({label}) on the same Redis | {} | {} PUBLISH/s | {} | – | – |",
                msg_cell(best, Bound::All),
                int(*rps),
                share(best.map_or(0.0, |b| b.messages_per_s), *rps)
            );
        }
        lost_row(md, "1:1", &p.chatter, p.ceiling.as_ref());
    }
    if let Some(f) = &r.fanout
        && let Some(p) = &f.persist
    {
        let _ = writeln!(
            md,
            "| persist | worker rows/s and lag (persisted_at − created_at) under the fan-out fixed load | {} rows/s for {} msg/s sent; lag p50 {:.3} s, p99 {:.3} s, max {:.3} s | – | – | lag < {TARGET_LAG_S} s | {} |",
            int(p.rows_per_s),
            int(p.offered_per_s),
            p.lag_p50_s,
            p.lag_p99_s,
            p.lag_max_s,
            if p.lag_count == 0 {
                "no rows measured".into()
            } else {
                at_most(p.lag_max_s, TARGET_LAG_S, "s (max)")
            }
        );
    }
    if let Some(st) = &r.storm {
        let _ = writeln!(
            md,
            "| storm | every socket of a drained gateway open again on the other ({} of {} sockets, `DRAIN_WINDOW_SECS` {}) | {:.1} s after SIGTERM; {} reconnects/s | – | – | – | {} |",
            int(st.drained as f64),
            int(st.connect.ok as f64),
            st.drain_window_secs,
            st.all_open_s,
            int(st.reconnects_per_s),
            if st.complete {
                "all reopened".to_owned()
            } else {
                format!(
                    "**not all reopened**: {} reconnects for {} closes",
                    int(st.status.reconnects as f64),
                    int(st.status.closes.values().sum::<u64>() as f64)
                )
            }
        );
    }
    let _ = writeln!(md);
}

/// The best step when the bound leaves out the sender's own echo; `cell` is
/// [`rate_cell`] or [`msg_cell`], as in the scenario's main row.
fn peers_row(
    md: &mut String,
    scenario: &str,
    chatter: &RampSide,
    ceiling: Option<&RampSide>,
    cell: fn(Option<&StepReport>, Bound) -> String,
) {
    let ceiling_best = ceiling.and_then(|c| c.best_peers.as_ref());
    let _ = writeln!(
        md,
        "| {scenario} | … the same with the p99 bound on deliveries to *other* members only (the sender's own echo left out) | {} | {} | {} | – | – |",
        cell(chatter.best_peers.as_ref(), Bound::Peers),
        cell(ceiling_best, Bound::Peers),
        share(
            chatter
                .best_peers
                .as_ref()
                .map_or(0.0, |b| b.deliveries_per_s),
            ceiling_best.map_or(0.0, |b| b.deliveries_per_s)
        )
    );
}

/// Facts worth reading the tables for, drawn from the numbers of this run.
fn observations(md: &mut String, r: &Results, cores: usize) {
    let mut notes: Vec<String> = Vec::new();

    // The sender's own echo against the other deliveries.
    let mut chatter_steps: Vec<&StepReport> = Vec::new();
    let mut ceiling_steps: Vec<&StepReport> = Vec::new();
    if let Some(f) = &r.fanout {
        chatter_steps.extend(f.chatter.fixed.iter().chain(&f.chatter.steps));
        if let Some(c) = &f.ceiling {
            ceiling_steps.extend(c.fixed.iter().chain(&c.steps));
        }
    }
    if let Some(p) = &r.one_to_one {
        chatter_steps.extend(&p.chatter.steps);
        if let Some(c) = &p.ceiling {
            ceiling_steps.extend(&c.steps);
        }
    }
    let calm = |steps: &[&StepReport]| -> Vec<(f64, f64, f64)> {
        steps
            .iter()
            .filter(|s| s.latency_peers.count > 0 && s.latency_peers.p99_ms <= P99_BOUND_MS)
            .map(|s| {
                (
                    s.latency_own.p99_ms,
                    s.latency_peers.p99_ms,
                    s.ack_latency.p99_ms,
                )
            })
            .collect()
    };
    let (chatter_calm, ceiling_calm) = (calm(&chatter_steps), calm(&ceiling_steps));
    if !chatter_calm.is_empty() {
        let med = |values: &[(f64, f64, f64)], pick: fn(&(f64, f64, f64)) -> f64| {
            let mut v: Vec<f64> = values.iter().map(pick).collect();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let (own, peers, ack) = (
            med(&chatter_calm, |t| t.0),
            med(&chatter_calm, |t| t.1),
            med(&chatter_calm, |t| t.2),
        );
        let mut note = format!(
            "**The sender's own copy.** Over the {} chatter steps whose deliveries to other members had p99 ≤ {P99_BOUND_MS} ms, the median p99 was {own:.1} ms for the copy delivered back to the sender's own socket, {peers:.1} ms for the copies to other members and {ack:.1} ms for the sender's `MessageSentConfirmation`",
            chatter_calm.len()
        );
        if !ceiling_calm.is_empty() {
            let _ = write!(
                note,
                " (ceiling: {:.1} / {:.1} / {:.1} ms)",
                med(&ceiling_calm, |t| t.0),
                med(&ceiling_calm, |t| t.1),
                med(&ceiling_calm, |t| t.2)
            );
        }
        note.push('.');
        let floor: Vec<&&StepReport> = chatter_steps
            .iter()
            .filter(|s| s.latency.p50_ms < 10.0 && (40.0..=60.0).contains(&s.latency.p99_ms))
            .collect();
        if !floor.is_empty() {
            let shares: Vec<f64> = floor.iter().map(|s| s.share_over_40ms * 100.0).collect();
            let (lo, hi) = shares
                .iter()
                .fold((f64::MAX, 0.0f64), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
            let ceiling_floor = ceiling_steps
                .iter()
                .filter(|s| s.latency.p50_ms < 10.0 && (40.0..=60.0).contains(&s.latency.p99_ms))
                .count();
            let _ = write!(
                note,
                " In {} of {} chatter steps p50 was under 10 ms while p99 sat between 40 and 60 ms, with {lo:.1}–{hi:.1} % of deliveries taking 40 ms or more whatever the rate (ceiling: {ceiling_floor} such steps). 40 ms is Linux's minimum delayed-ACK time: it is the signature of a small write held back by Nagle's algorithm (a socket without `TCP_NODELAY`) until the peer acknowledges the previous one, which the peer delays while it has nothing to send.",
                floor.len(),
                chatter_steps.len()
            );
        }
        if own > 3.0 * peers && own >= 30.0 {
            note.push_str(
                " The own copy follows the confirmation on the sender's socket, a second small write right behind the first. In a room of n members it is 1/n of the deliveries, so in rooms of 100 it alone can set the p99; the \"other members only\" rows show the rates without it.",
            );
        }
        notes.push(note);
    }

    // Where the cores went at the first failing step after the best one (by the
    // bound the ramp climbed by).
    let saturation = |label: &str, side: &RampSide| -> Option<String> {
        let best = match side.bound {
            Bound::All => side.best.as_ref(),
            Bound::Peers => side.best_peers.as_ref(),
        }?;
        let over = side
            .steps
            .iter()
            .filter(|s| s.rate > best.rate && !s.passes_by(side.bound, P99_BOUND_MS))
            .min_by(|a, b| a.rate.total_cmp(&b.rate))?;
        let get = |s: &StepReport, k: &str| s.cpu.get(k).copied().unwrap_or(0.0);
        Some(format!(
            "{label}: at {} msg/s (passing) the machine was {:.2} of {cores} cores busy, at {} msg/s (failing) {:.2} — softirq {:.2}, load generator {:.2}, gateways {:.2}, Redis {:.2}, ceiling {:.2}, other processes {:.2}",
            int(best.rate),
            get(best, MACHINE_BUSY),
            int(over.rate),
            get(over, MACHINE_BUSY),
            get(over, MACHINE_SOFTIRQ),
            get(over, "chatter-loadgen"),
            get(over, "chatter-gateway"),
            get(over, "redis-server"),
            get(over, "chatter-ceiling"),
            get(over, OTHER),
        ))
    };
    let mut sat = Vec::new();
    if let Some(f) = &r.fanout {
        sat.extend(saturation("fan-out, chatter", &f.chatter));
        if let Some(c) = &f.ceiling {
            sat.extend(saturation("fan-out, ceiling", c));
        }
    }
    if let Some(p) = &r.one_to_one {
        sat.extend(saturation("1:1, chatter", &p.chatter));
        if let Some(c) = &p.ceiling {
            sat.extend(saturation("1:1, ceiling", c));
        }
    }
    if !sat.is_empty() {
        notes.push(format!(
            "**Cores.** Everything shares this machine's {cores} cores, the load generator included, and loopback TCP spends much of its time in softirq, which no process is charged for. Past the best rate: {}.",
            sat.join("; ")
        ));
    }

    // Other load on the machine during the run.
    let mut busy_steps = Vec::new();
    let mut scan = |label: &str, steps: &[&StepReport]| {
        for s in steps {
            let other = s.cpu.get(OTHER).copied().unwrap_or(0.0);
            if other >= 0.25 {
                busy_steps.push(format!("{label} {} msg/s ({other:.2})", int(s.rate)));
            }
        }
    };
    if let Some(f) = &r.fanout {
        scan(
            "fan-out chatter",
            &f.chatter
                .fixed
                .iter()
                .chain(&f.chatter.steps)
                .collect::<Vec<_>>(),
        );
        if let Some(c) = &f.ceiling {
            scan(
                "fan-out ceiling",
                &c.fixed.iter().chain(&c.steps).collect::<Vec<_>>(),
            );
        }
    }
    if let Some(p) = &r.one_to_one {
        scan("1:1 chatter", &p.chatter.steps.iter().collect::<Vec<_>>());
        if let Some(c) = &p.ceiling {
            scan("1:1 ceiling", &c.steps.iter().collect::<Vec<_>>());
        }
    }
    if !busy_steps.is_empty() {
        notes.push(format!(
            "**Other load.** Processes outside the benchmark used ≥ 0.25 cores during: {}. Those steps competed for the cores and may read worse than a quiet machine would give.",
            busy_steps.join(", ")
        ));
    }

    if let Some(d) = &r.persist {
        let get = |k: &str| d.cpu.get(k).copied().unwrap_or(0.0);
        notes.push(format!(
            "**Persistence.** While draining, the worker used {:.2} cores, Postgres {:.2}, Redis {:.2}; the machine was {:.2} of {cores} cores busy. One worker reads, stores and acknowledges batches (WORKER_BATCH_SIZE, default 500) in a pipeline: while one batch is in Postgres the next is read and the one before acknowledged.",
            get("chatter-worker"),
            get("postgres"),
            get("redis-server"),
            get(MACHINE_BUSY)
        ));
    }

    if notes.is_empty() {
        return;
    }
    let _ = writeln!(md, "## Observations\n");
    for note in notes {
        let _ = writeln!(md, "- {note}\n");
    }
}

fn lost_row(md: &mut String, scenario: &str, chatter: &RampSide, ceiling: Option<&RampSide>) {
    let _ = writeln!(
        md,
        "| {scenario} | lost deliveries over the whole run (after a final drain) | {} | {} | – | 0 | {} |",
        lost_cell(chatter),
        ceiling.map_or("–".into(), lost_cell),
        if chatter.final_missing == 0 {
            "met".to_owned()
        } else {
            format!("**{} missing**", int(chatter.final_missing as f64))
        }
    );
}

fn lost_cell(side: &RampSide) -> String {
    let closes: u64 = side.closes.values().sum();
    let mut cell = int(side.final_missing as f64);
    if side.final_surplus > 0 {
        let _ = write!(cell, " (+{} duplicates)", int(side.final_surplus as f64));
    }
    if closes > 0 {
        let _ = write!(cell, "; closed sockets {:?}", side.closes);
    }
    cell
}

/// A best step led by its deliveries/s, with the p99 of the deliveries `bound` names.
fn rate_cell(step: Option<&StepReport>, bound: Bound) -> String {
    match step {
        Some(s) => format!(
            "{} deliveries/s ({} msg/s, p99 {:.1} ms)",
            int(s.deliveries_per_s),
            int(s.messages_per_s),
            s.p99_ms(bound)
        ),
        None => "no step passed".into(),
    }
}

/// A best step led by its messages/s, with the p99 of the deliveries `bound` names.
fn msg_cell(step: Option<&StepReport>, bound: Bound) -> String {
    match step {
        Some(s) => format!(
            "{} msg/s ({} deliveries/s, p99 {:.1} ms)",
            int(s.messages_per_s),
            int(s.deliveries_per_s),
            s.p99_ms(bound)
        ),
        None => "no step passed".into(),
    }
}

fn latency_cell(s: &StepReport) -> String {
    format!(
        "{:.2} / {:.2} / {:.1} ms",
        s.latency.p99_ms, s.latency.p999_ms, s.latency.max_ms
    )
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.2}×", a / b)
    } else {
        "–".into()
    }
}

fn share(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.0} %", a / b * 100.0)
    } else {
        "–".into()
    }
}

fn at_most(value: f64, target: f64, unit: &str) -> String {
    if value <= target {
        "met".into()
    } else {
        format!(
            "**missed** by {:.2} {unit} ({:.0} % over)",
            value - target,
            (value / target - 1.0) * 100.0
        )
    }
}

fn at_least(value: f64, target: f64, unit: &str) -> String {
    if value >= target {
        "met".into()
    } else {
        format!(
            "**missed** by {} {unit} ({:.0} % short)",
            int(target - value),
            (1.0 - value / target) * 100.0
        )
    }
}

/// 1234567.8 → "1,234,568".
pub fn int(value: f64) -> String {
    let rounded = value.round();
    let negative = rounded < 0.0;
    let digits = format!("{:.0}", rounded.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if negative { format!("-{out}") } else { out }
}

pub(crate) fn cpu_cell(cpu: &BTreeMap<String, f64>) -> String {
    let mut items: Vec<(&String, &f64)> = cpu
        .iter()
        .filter(|(name, _)| !name.starts_with('('))
        .collect();
    items.sort_by(|a, b| b.1.total_cmp(a.1));
    let top: Vec<String> = items
        .iter()
        .take(5)
        .map(|(name, cores)| format!("{} {:.2}", short_name(name), cores))
        .collect();
    let get = |key: &str| cpu.get(key).copied().unwrap_or(0.0);
    format!(
        "{:.2} (softirq {:.2}): {}; other {:.2}",
        get(MACHINE_BUSY),
        get(MACHINE_SOFTIRQ),
        top.join(", "),
        get(OTHER)
    )
}

fn short_name(name: &str) -> &str {
    match name {
        "chatter-gateway" => "gateway",
        "chatter-loadgen" => "loadgen",
        "chatter-ceiling" => "ceiling",
        "chatter-worker" => "worker",
        "redis-server" => "redis",
        "redis-benchmark" => "redis-benchmark",
        other => other,
    }
}

/// One row per step; the pass column applies `bound` (the one the ramp climbed by).
fn steps_table(md: &mut String, title: &str, steps: &[&StepReport], bound: Bound) {
    let _ = writeln!(md, "{title}\n");
    let which = match bound {
        Bound::All => "p99",
        Bound::Peers => "p99 of others",
    };
    let _ = writeln!(
        md,
        "| msg/s asked | msg/s confirmed | deliveries/s | p50 ms | p99 ms | p99 ms: own echo / others / confirmation | deliveries ≥ 40 ms | p99.9 ms | max ms | sender lag p99 ms | missing | errors | closes | {which} ≤ {P99_BOUND_MS} ms, nothing lost | CPU, cores: machine busy (softirq): benchmark processes; other processes |"
    );
    let _ = writeln!(
        md,
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for s in steps {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {:.2} | {:.2} | {:.2} / {:.2} / {:.2} | {:.2} % | {:.2} | {:.1} | {:.2} | {} | {} | {} | {} | {} |",
            int(s.rate),
            int(s.messages_per_s),
            int(s.deliveries_per_s),
            s.latency.p50_ms,
            s.latency.p99_ms,
            s.latency_own.p99_ms,
            s.latency_peers.p99_ms,
            s.ack_latency.p99_ms,
            s.share_over_40ms * 100.0,
            s.latency.p999_ms,
            s.latency.max_ms,
            s.send_lag.p99_ms,
            s.missing_new,
            error_text(s),
            s.closes_new,
            if s.passes_by(bound, P99_BOUND_MS) {
                "yes"
            } else {
                "no"
            },
            cpu_cell(&s.cpu)
        );
    }
    let _ = writeln!(md);
}

fn error_text(s: &StepReport) -> String {
    let mut parts = Vec::new();
    if s.send_failed > 0 {
        parts.push(format!("{} send failed", s.send_failed));
    }
    for (reason, n) in &s.refused {
        parts.push(format!("{n} refused {reason}"));
    }
    if s.sent < s.scheduled {
        parts.push(format!("{} not sent", s.scheduled - s.sent));
    }
    for (label, n) in [
        ("error frames", s.error_frames),
        ("unparsable", s.parse_errors),
        ("out of order", s.out_of_order),
        ("foreign room", s.foreign_deliveries),
    ] {
        if n > 0 {
            parts.push(format!("{n} {label}"));
        }
    }
    if parts.is_empty() {
        "0".into()
    } else {
        parts.join(", ")
    }
}

fn idle_section(md: &mut String, idle: &IdleResult) {
    let _ = writeln!(md, "## Idle connections\n");
    let _ = writeln!(
        md,
        "The target is {} idle authenticated connections on one gateway. A process here may \
         have at most {} open files (hard limit), so one gateway can hold at most ~{} sockets; \
         the scenario connects as many as fit with room for the gateway's own files. The load \
         generator spreads them over several agent processes and source addresses. RSS is \
         `VmRSS` of the server process before and after connecting (plus 3 s to settle), \
         divided by the connections made.\n",
        int(idle.target as f64),
        idle.fd_limit,
        int(idle.fd_limit.saturating_sub(100) as f64)
    );
    let _ = writeln!(
        md,
        "| server | asked | connected | failed | time | conn/s | RSS before | RSS after | per connection | still open after 3 s |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|");
    let mut row = |name: &str, s: &IdleSide| {
        let _ = writeln!(
            md,
            "| {name} | {} | {} | {} {} | {:.1} s | {} | {} KiB | {} KiB | {:.2} KiB | {} |",
            int(s.requested as f64),
            int(s.connect.ok as f64),
            s.connect.failed,
            if s.connect.errors.is_empty() {
                String::new()
            } else {
                format!("{:?}", s.connect.errors)
            },
            s.connect.elapsed_s,
            int(s.connect.ok as f64 / s.connect.elapsed_s.max(1e-3)),
            int(s.rss_before_kib as f64),
            int(s.rss_after_kib as f64),
            s.per_conn_kib,
            int(s.open_after_settle as f64)
        );
    };
    row("chatter-gateway", &idle.chatter);
    if let Some(ceiling) = &idle.ceiling {
        row("chatter-ceiling (4 KiB read buffers)", ceiling);
    }
    if let Some(ceiling) = &idle.ceiling_default_buffers {
        row(
            "chatter-ceiling (128 KiB read buffers: tungstenite's and axum's default)",
            ceiling,
        );
    }
    let _ = writeln!(md);
}

fn setup_line(md: &mut String, name: &str, side: &RampSide) {
    let (c, r) = (&side.connect, &side.rooms);
    let _ = writeln!(
        md,
        "- {name}: {}/{} connected in {:.1} s{}; {}/{} rooms made in {:.1} s; {} members told, {} not, in {:.1} s.",
        int(c.ok as f64),
        int(c.requested as f64),
        c.elapsed_s,
        if c.errors.is_empty() {
            String::new()
        } else {
            format!(" (errors {:?})", c.errors)
        },
        int(r.created as f64),
        int(r.rooms as f64),
        r.create_s,
        int(r.members_ready as f64),
        r.members_missing,
        r.ready_s
    );
}

fn fanout_section(md: &mut String, f: &FanoutResult) {
    let _ = writeln!(md, "## Fan-out\n");
    let _ = writeln!(
        md,
        "{} connections in rooms of {}; chatter: 2 gateways, every room has members on both \
         (connection i on gateway i mod 2), plus 1 worker; ceiling: 2 `chatter-ceiling` \
         processes, a room's members on one. Every member sends, in turn; a message is \
         delivered to all {} members (the sender's socket included). First a fixed {} msg/s, then \
         a rising rate (×{RAMP_FACTOR} while p99 ≤ {P99_BOUND_MS} ms and nothing is lost, then bisection; the first failing step is run once more before it counts).\n",
        int(f.connections as f64),
        f.room_size,
        f.room_size,
        int(f.fixed_rate)
    );
    setup_line(md, "chatter", &f.chatter);
    if let Some(c) = &f.ceiling {
        setup_line(md, "ceiling", c);
    }
    let _ = writeln!(md);
    let mut fixed: Vec<&StepReport> = f.chatter.fixed.iter().collect();
    steps_table(md, "**chatter, fixed rate**", &fixed, Bound::All);
    steps_table(
        md,
        "**chatter, rising rate**",
        &f.chatter.steps.iter().collect::<Vec<_>>(),
        f.chatter.bound,
    );
    if let Some(c) = &f.ceiling {
        fixed = c.fixed.iter().collect();
        steps_table(md, "**ceiling, fixed rate**", &fixed, Bound::All);
        steps_table(
            md,
            "**ceiling, rising rate**",
            &c.steps.iter().collect::<Vec<_>>(),
            c.bound,
        );
    }
    if let Some(p) = &f.persist {
        let _ = writeln!(
            md,
            "**Persistence during the fixed step**: {} msg/s sent, the worker inserted {} rows/s; \
             ingest backlog peaked at {} entries; lag (`persisted_at − created_at`) over {} messages: \
             p50 {:.3} s, p99 {:.3} s, max {:.3} s; {}.\n",
            int(p.offered_per_s),
            int(p.rows_per_s),
            int(p.max_backlog as f64),
            int(p.lag_count as f64),
            p.lag_p50_s,
            p.lag_p99_s,
            p.lag_max_s,
            if p.caught_up {
                "the worker caught up"
            } else {
                "the worker had NOT caught up 60 s after the step"
            }
        );
    }
}

fn pairs_section(md: &mut String, p: &PairsResult) {
    let _ = writeln!(md, "## 1:1\n");
    let _ = writeln!(
        md,
        "{} connections in {} rooms of 2; chatter: the two members of a room on different \
         gateways, both send, plus 1 worker; ceiling: 2 processes, a pair on one. A message is \
         delivered twice (to the peer and back to the sender's socket). The rate rises \
         ×{RAMP_FACTOR} while the deliveries to the peer have p99 ≤ {P99_BOUND_MS} ms and nothing is \
         lost, then bisects; the first failing step is run once more before it counts.\n",
        int(p.connections as f64),
        int(p.connections as f64 / 2.0)
    );
    setup_line(md, "chatter", &p.chatter);
    if let Some(c) = &p.ceiling {
        setup_line(md, "ceiling", c);
    }
    let _ = writeln!(md);
    steps_table(
        md,
        "**chatter**",
        &p.chatter.steps.iter().collect::<Vec<_>>(),
        p.chatter.bound,
    );
    if let Some(c) = &p.ceiling {
        steps_table(
            md,
            "**ceiling**",
            &c.steps.iter().collect::<Vec<_>>(),
            c.bound,
        );
    }
    if !p.redis_publish.is_empty() {
        let _ = writeln!(
            md,
            "**`redis-benchmark` PUBLISH on the scenario's Redis** (after the load):\n"
        );
        for (label, rps) in &p.redis_publish {
            let _ = writeln!(md, "- {label}: {} requests/s", int(*rps));
        }
        let _ = writeln!(md);
    }
}

fn persist_section(md: &mut String, d: &DrainResult) {
    let _ = writeln!(md, "## Persist\n");
    let _ = writeln!(
        md,
        "2 gateways and no worker; 1:1 load filled the ingest stream ({} msg/s asked, {} msg/s \
         accepted, backlog {} entries). Then one worker (default settings: WORKER_BATCH_SIZE 500) \
         was started; rows/s is the count of stored rows over the span of their `persisted_at` \
         (first to last batch). Postgres runs with the e2e harness's settings (`fsync=off`, data \
         on tmpfs when there is room), so this is an upper bound for a durable disk.\n",
        int(d.fill.rate),
        int(d.fill.messages_per_s),
        int(d.backlog as f64)
    );
    let _ = writeln!(
        md,
        "| backlog | rows stored | span of persisted_at | rows/s | wall time to empty the stream | emptied | CPU, cores: machine busy (softirq): benchmark processes; other processes |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|");
    let _ = writeln!(
        md,
        "| {} | {} | {:.2} s | {} | {:.1} s | {} | {} |\n",
        int(d.backlog as f64),
        int(d.rows as f64),
        d.seconds,
        int(d.per_s),
        d.wall_s,
        if d.complete { "yes" } else { "no" },
        cpu_cell(&d.cpu)
    );
    match &d.copy {
        Some(c) => {
            let _ = writeln!(
                md,
                "**The `COPY` ceiling**: the same {} rows, read out of `messages` into memory, then \
                 loaded with one `COPY … FROM STDIN` into a fresh table `LIKE messages INCLUDING ALL` \
                 (same columns, primary key and unique indexes) in the same Postgres: {:.2} s, {} rows/s. \
                 The worker reached {} of that.\n",
                int(c.rows as f64),
                c.seconds,
                int(c.per_s),
                share(d.per_s, c.per_s)
            );
        }
        None => {
            let _ = writeln!(
                md,
                "**The `COPY` ceiling** was not measured (see the log).\n"
            );
        }
    }
}

fn storm_section(md: &mut String, st: &StormResult) {
    let _ = writeln!(md, "## Storm after a drain\n");
    let _ = writeln!(
        md,
        "2 gateways, {} idle authenticated sockets, connection i on gateway i mod 2, connected \
         all at once ({} agents × {} handshakes in flight). Then SIGTERM to one gateway, which \
         closes its sockets (4007) at random moments over `DRAIN_WINDOW_SECS` = {} s; the load \
         generator reopens each closed socket at once on the other gateway (at most 20 attempts, \
         50 ms doubling to 1 s between them). Times are from the SIGTERM.\n",
        int(st.connections as f64),
        st.connections.div_ceil(10_000).max(2),
        crate::scenarios::STORM_CONCURRENCY,
        st.drain_window_secs
    );
    let _ = writeln!(
        md,
        "| connected first | in | sockets on the drained gateway | first close | every socket open again | reconnects | reconnects/s | failed attempts | closes | drained gateway exited |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|");
    let _ = writeln!(
        md,
        "| {} | {:.1} s ({}/s) | {} | {:.2} s | {} | {} | {} | {} {} | {:?} | {} |\n",
        int(st.connect.ok as f64),
        st.connect.elapsed_s,
        int(st.connect.ok as f64 / st.connect.elapsed_s.max(1e-3)),
        int(st.drained as f64),
        st.first_close_s,
        if st.complete {
            format!("{:.2} s", st.all_open_s)
        } else {
            format!("**not reached** (last reconnect at {:.2} s)", st.all_open_s)
        },
        int(st.status.reconnects as f64),
        int(st.reconnects_per_s),
        int(st.status.reconnect_failed as f64),
        if st.status.reconnect_errors.is_empty() {
            String::new()
        } else {
            format!("{:?}", st.status.reconnect_errors)
        },
        st.status.closes,
        st.exit_s
            .map_or("not within the deadline".into(), |s| format!(
                "after {s:.1} s"
            ))
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_format() {
        assert_eq!(int(0.0), "0");
        assert_eq!(int(999.4), "999");
        assert_eq!(int(1_234_567.8), "1,234,568");
        assert_eq!(int(-1500.0), "-1,500");
        assert_eq!(at_most(5.0, 8.0, "KiB"), "met");
        assert!(at_least(100_000.0, 200_000.0, "x").contains("50 % short"));
    }

    #[test]
    fn an_empty_run_renders() {
        let meta = Meta {
            cores: 2,
            memory_gib: 24.0,
            cpu_model: "cpu".into(),
            kernel: "6".into(),
            commit: "abc".into(),
            uncommitted_files: 0,
            date: "today".into(),
            fd_limit: 20_000,
            command: "bench/run.sh".into(),
        };
        let md = markdown(&Results::default(), &meta);
        assert!(md.contains("| commit | `abc` |"));
    }

    fn step(rate: f64, p99_ms: f64, peers_p99_ms: f64) -> StepReport {
        let summary = |p99_ms| crate::stats::Summary {
            count: 100,
            p50_ms: 2.0,
            p99_ms,
            ..Default::default()
        };
        StepReport {
            rate,
            messages_per_s: rate,
            deliveries_per_s: rate * 100.0,
            scheduled: 10,
            sent: 10,
            confirmed: 10,
            latency: summary(p99_ms),
            latency_own: summary(p99_ms),
            latency_peers: summary(peers_p99_ms),
            ack_latency: summary(p99_ms),
            cpu: [
                (MACHINE_BUSY.to_owned(), 1.5),
                ("chatter-gateway".into(), 1.0),
            ]
            .into(),
            ..StepReport::default()
        }
    }

    fn side(bound: Bound) -> RampSide {
        let steps = vec![
            step(500.0, 45.0, 20.0),
            step(700.0, 55.0, 48.0),
            step(980.0, 400.0, 400.0),
        ];
        RampSide {
            fixed: Some(step(250.0, 44.0, 10.0)),
            best: Some(steps[0].clone()),
            best_peers: Some(steps[1].clone()),
            steps,
            bound,
            ..RampSide::default()
        }
    }

    /// Every Markdown table has as many cells in each row as in its header.
    #[test]
    fn a_full_run_renders_well_formed_tables() {
        let results = Results {
            idle: Some(IdleResult {
                target: 50_000,
                fd_limit: 20_000,
                ceiling: Some(IdleSide::default()),
                ..IdleResult::default()
            }),
            fanout: Some(FanoutResult {
                connections: 10_000,
                room_size: 100,
                fixed_rate: 250.0,
                chatter: side(Bound::All),
                ceiling: Some(side(Bound::All)),
                ..FanoutResult::default()
            }),
            one_to_one: Some(PairsResult {
                connections: 20_000,
                chatter: side(Bound::Peers),
                ceiling: Some(side(Bound::Peers)),
                redis_publish: vec![("50 clients".into(), 60_000.0)],
            }),
            persist: Some(DrainResult {
                copy: Some(crate::scenarios::CopyCeiling::default()),
                ..DrainResult::default()
            }),
            storm: Some(StormResult::default()),
            scaling: Some(crate::scaling::ScalingResult {
                redis: vec![
                    crate::scaling::RedisSide {
                        nodes: vec![crate::scaling::RedisNode {
                            role: "one".into(),
                            commands: [("evalsha".to_owned(), (10, 100))].into(),
                            ..Default::default()
                        }],
                        ..Default::default()
                    },
                    crate::scaling::RedisSide {
                        nodes: vec![
                            crate::scaling::RedisNode {
                                role: "master".into(),
                                shards: Some(21),
                                rooms: Some(600),
                                commands: [("spublish".to_owned(), (10, 100))].into(),
                                ..Default::default()
                            },
                            crate::scaling::RedisNode {
                                role: "replica".into(),
                                ..Default::default()
                            },
                        ],
                        logs: vec![crate::scaling::LogNote::default()],
                        ..Default::default()
                    },
                ],
                gateway_sides: vec![
                    crate::scaling::GatewaySide {
                        gateways: 2,
                        gateway_cpu_s: vec![1.0, 1.0],
                        ..Default::default()
                    },
                    crate::scaling::GatewaySide {
                        gateways: 4,
                        gateway_cpu_s: vec![0.5; 4],
                        ..Default::default()
                    },
                ],
                ..Default::default()
            }),
            ..Results::default()
        };
        let meta = Meta {
            cores: 2,
            memory_gib: 24.0,
            cpu_model: "cpu".into(),
            kernel: "6".into(),
            commit: "abc".into(),
            uncommitted_files: 3,
            date: "today".into(),
            fd_limit: 20_000,
            command: "bench/run.sh".into(),
        };
        let md = markdown(&results, &meta);
        assert!(md.contains("| commit | `abc` plus uncommitted changes to 3 tracked files |"));
        assert!(md.contains("## Observations"));
        assert!(md.contains("### Gateways: 2 processes against 4"));
        let mut tables = 0;
        let mut columns: Option<usize> = None;
        for line in md.lines() {
            if !line.starts_with('|') {
                columns = None;
                continue;
            }
            let cells = line.matches('|').count() - 1;
            match columns {
                None => {
                    tables += 1;
                    columns = Some(cells);
                }
                Some(n) => assert_eq!(
                    cells, n,
                    "row with {cells} cells under a header of {n}: {line}"
                ),
            }
        }
        assert!(tables >= 10, "{tables} tables");
        // The 1:1 ramp climbed by the peers' p99: its 700 msg/s step passes there.
        assert!(md.contains("p99 of others ≤ 50 ms, nothing lost"));
    }
}
