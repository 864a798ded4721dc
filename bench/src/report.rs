//! RESULTS.md: a header (machine, commit, date), the summary table against the
//! targets, and one section per scenario with every step.

use crate::coordinator::StepReport;
use crate::scenarios::{
    DrainResult, FanoutResult, IdleResult, IdleSide, P99_BOUND_MS, PairsResult, RampSide, Results,
};
use crate::sys::OTHER;
use std::collections::BTreeMap;
use std::fmt::Write;

/// Targets of issue 6 (2-core machine, load generator included).
pub const TARGET_RSS_KIB: f64 = 8.0;
pub const TARGET_FANOUT_DELIVERIES: f64 = 200_000.0;
pub const TARGET_FANOUT_CEILING_SHARE: f64 = 0.5;
pub const TARGET_PERSIST_PER_S: f64 = 30_000.0;
pub const TARGET_LAG_S: f64 = 1.0;

/// Facts about the run for the header.
pub struct Meta {
    pub cores: usize,
    pub memory_gib: f64,
    pub cpu_model: String,
    pub kernel: String,
    pub commit: String,
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
         See [README.md](README.md) for what each number means.\n",
        meta.command
    );
    let _ = writeln!(md, "| | |\n|---|---|");
    let _ = writeln!(
        md,
        "| machine | {} cores (nproc), {:.1} GiB RAM, {}, Linux {} |",
        meta.cores, meta.memory_gib, meta.cpu_model, meta.kernel
    );
    let _ = writeln!(md, "| commit | `{}` |", meta.commit);
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
    md
}

fn summary(md: &mut String, r: &Results) {
    let _ = writeln!(md, "## Summary\n");
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
        let _ = writeln!(
            md,
            "| idle | server RSS per idle connection | {:.1} KiB | {} | {} | ≤ {TARGET_RSS_KIB} KiB | {} |",
            c.per_conn_kib,
            ceiling.map_or("–".into(), |s| format!("{:.1} KiB", s.per_conn_kib)),
            ceiling.map_or("–".into(), |s| ratio(c.per_conn_kib, s.per_conn_kib)),
            at_most(c.per_conn_kib, TARGET_RSS_KIB, "KiB")
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
        let _ = writeln!(
            md,
            "| idle | time to connect them all | {:.1} s ({}/s) | {} | {} | – | – |",
            c.connect.elapsed_s,
            int(c.connect.ok as f64 / c.connect.elapsed_s.max(1e-3)),
            ceiling.map_or("–".into(), |s| format!(
                "{:.1} s ({}/s)",
                s.connect.elapsed_s,
                int(s.connect.ok as f64 / s.connect.elapsed_s.max(1e-3))
            )),
            ceiling.map_or("–".into(), |s| ratio(
                c.connect.elapsed_s,
                s.connect.elapsed_s
            )),
        );
    }
    if let Some(f) = &r.fanout {
        let best = f.chatter.best.as_ref();
        let ceiling_best = f.ceiling.as_ref().and_then(|c| c.best.as_ref());
        let chatter_rate = best.map_or(0.0, |b| b.deliveries_per_s);
        let ceiling_rate = ceiling_best.map_or(0.0, |b| b.deliveries_per_s);
        let _ = writeln!(
            md,
            "| fan-out | highest deliveries/s with p99 ≤ {P99_BOUND_MS} ms (2 gateways, {} conns, rooms of {}) | {} | {} | {} | ≥ {} and ≥ {:.0} % of the ceiling | {}; {} |",
            int(f.connections as f64),
            f.room_size,
            rate_cell(best),
            rate_cell(ceiling_best),
            share(chatter_rate, ceiling_rate),
            int(TARGET_FANOUT_DELIVERIES),
            TARGET_FANOUT_CEILING_SHARE * 100.0,
            at_least(chatter_rate, TARGET_FANOUT_DELIVERIES, "deliveries/s"),
            if ceiling_rate > 0.0 {
                at_least(
                    chatter_rate / ceiling_rate * 100.0,
                    TARGET_FANOUT_CEILING_SHARE * 100.0,
                    "% of the ceiling",
                )
            } else {
                "no ceiling figure".into()
            }
        );
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
        let ceiling_best = p.ceiling.as_ref().and_then(|c| c.best.as_ref());
        let _ = writeln!(
            md,
            "| 1:1 | highest messages/s with p99 ≤ {P99_BOUND_MS} ms ({} conns in pairs across 2 gateways) | {} | {} | {} | – | – |",
            int(p.connections as f64),
            msg_cell(best),
            msg_cell(ceiling_best),
            share(
                best.map_or(0.0, |b| b.messages_per_s),
                ceiling_best.map_or(0.0, |b| b.messages_per_s)
            ),
        );
        if let (Some(flush), Some(nagle), Some(best)) =
            (&p.ceiling_flush_each, &p.ceiling_nagle, best)
        {
            let _ = writeln!(
                md,
                "| 1:1 | p50 / p99 at {} msg/s; ceiling flushing every frame: with TCP_NODELAY → without | {:.2} / {:.2} ms | {:.2} / {:.2} ms → {:.2} / {:.2} ms | – | – | – |",
                int(nagle.rate),
                best.latency.p50_ms,
                best.latency.p99_ms,
                flush.latency.p50_ms,
                flush.latency.p99_ms,
                nagle.latency.p50_ms,
                nagle.latency.p99_ms
            );
        }
        for (label, rps) in &p.redis_publish {
            let _ = writeln!(
                md,
                "| 1:1 | chatter messages/s vs `redis-benchmark` PUBLISH ({label}) on the same Redis | {} | {} PUBLISH/s | {} | – | – |",
                msg_cell(best),
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
    if let Some(d) = &r.persist {
        let _ = writeln!(
            md,
            "| persist | worker throughput into Postgres (draining a backlog of {}) | {} msg/s | – | – | ≥ {} msg/s | {} |",
            int(d.backlog as f64),
            int(d.per_s),
            int(TARGET_PERSIST_PER_S),
            if d.complete {
                at_least(d.per_s, TARGET_PERSIST_PER_S, "msg/s")
            } else {
                format!(
                    "the backlog was not drained in {:.0} s; {}",
                    d.wall_s,
                    at_least(d.per_s, TARGET_PERSIST_PER_S, "msg/s")
                )
            }
        );
    }
    let _ = writeln!(md);
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

fn rate_cell(step: Option<&StepReport>) -> String {
    match step {
        Some(s) => format!(
            "{} deliveries/s ({} msg/s, p99 {:.1} ms)",
            int(s.deliveries_per_s),
            int(s.messages_per_s),
            s.latency.p99_ms
        ),
        None => "no step passed".into(),
    }
}

fn msg_cell(step: Option<&StepReport>) -> String {
    match step {
        Some(s) => format!(
            "{} msg/s ({} deliveries/s, p99 {:.1} ms)",
            int(s.messages_per_s),
            int(s.deliveries_per_s),
            s.latency.p99_ms
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

fn cpu_cell(cpu: &BTreeMap<String, f64>) -> String {
    let mut items: Vec<(&String, &f64)> = cpu.iter().filter(|(name, _)| *name != OTHER).collect();
    items.sort_by(|a, b| b.1.total_cmp(a.1));
    let total: f64 = cpu.values().sum();
    let top: Vec<String> = items
        .iter()
        .take(5)
        .map(|(name, cores)| format!("{} {:.2}", short_name(name), cores))
        .collect();
    format!(
        "{:.2}: {}; other {:.2}",
        total,
        top.join(", "),
        cpu.get(OTHER).copied().unwrap_or(0.0)
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

fn steps_table(md: &mut String, title: &str, steps: &[&StepReport]) {
    let _ = writeln!(md, "{title}\n");
    let _ = writeln!(
        md,
        "| msg/s asked | msg/s confirmed | deliveries/s | p50 ms | p99 ms | p99 ms: own echo / others / confirmation | p99.9 ms | max ms | sender lag p99 ms | missing | errors | closes | p99 ≤ {P99_BOUND_MS} ms, nothing lost | CPU cores used (of the machine's): total: benchmark processes; other processes |"
    );
    let _ = writeln!(
        md,
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for s in steps {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {:.2} | {:.2} | {:.2} / {:.2} / {:.2} | {:.2} | {:.1} | {:.2} | {} | {} | {} | {} | {} |",
            int(s.rate),
            int(s.messages_per_s),
            int(s.deliveries_per_s),
            s.latency.p50_ms,
            s.latency.p99_ms,
            s.latency_own.p99_ms,
            s.latency_peers.p99_ms,
            s.ack_latency.p99_ms,
            s.latency.p999_ms,
            s.latency.max_ms,
            s.send_lag.p99_ms,
            s.missing_new,
            error_text(s),
            s.closes.values().sum::<u64>(),
            if s.passes(P99_BOUND_MS) { "yes" } else { "no" },
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
         a rising rate (×1.4 while p99 ≤ {P99_BOUND_MS} ms and nothing is lost, then bisection).\n",
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
    steps_table(md, "**chatter, fixed rate**", &fixed);
    steps_table(
        md,
        "**chatter, rising rate**",
        &f.chatter.steps.iter().collect::<Vec<_>>(),
    );
    if let Some(c) = &f.ceiling {
        fixed = c.fixed.iter().collect();
        steps_table(md, "**ceiling, fixed rate**", &fixed);
        steps_table(
            md,
            "**ceiling, rising rate**",
            &c.steps.iter().collect::<Vec<_>>(),
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
         delivered twice (to the peer and back to the sender's socket).\n",
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
    );
    if let Some(c) = &p.ceiling {
        steps_table(md, "**ceiling**", &c.steps.iter().collect::<Vec<_>>());
    }
    if let (Some(flush), Some(nagle)) = (&p.ceiling_flush_each, &p.ceiling_nagle) {
        steps_table(
            md,
            "**ceiling writing and flushing every frame on its own** (like a per-frame `socket.send()`), at chatter's best rate: first with `TCP_NODELAY`, then without (Nagle's algorithm on, as on a socket accepted by a plain `axum::serve`)",
            &[flush, nagle],
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
        "| backlog | rows stored | span of persisted_at | rows/s | wall time to empty the stream | emptied | CPU cores meanwhile |"
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
            date: "today".into(),
            fd_limit: 20_000,
            command: "bench/run.sh".into(),
        };
        let md = markdown(&Results::default(), &meta);
        assert!(md.contains("| commit | `abc` |"));
    }
}
