//! `chatter-loadgen`: opens N authenticated WebSocket connections over K gateways,
//! puts them in rooms of S members, sends open-loop at R messages/s and reports
//! deliveries/s, latency percentiles, errors and lost messages.
//!
//! `chatter-loadgen run ...` is the controller; it starts `chatter-loadgen agent`
//! processes (each holds < 19,900 sockets) and talks to them over pipes.

use anyhow::{Context, Result, bail};
use chatter_bench::coordinator::{LoadOptions, LoadRun, Placement, StepReport, Target};
use clap::{Parser, Subcommand, ValueEnum};
use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(name = "chatter-loadgen", version)]
struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a load against running servers and print the results.
    Run(Box<RunArgs>),
    /// (internal) One agent process, driven over stdin/stdout by `run`.
    Agent {
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// The agent exits by itself after this many seconds.
        #[arg(long, default_value_t = 1800)]
        max_secs: u64,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Kind {
    Chatter,
    Ceiling,
}

#[derive(Clone, Copy, ValueEnum)]
enum PlacementArg {
    /// Connection i → server i mod K (room members on every server).
    Spread,
    /// All members of a room on the same server.
    Together,
}

#[derive(clap::Args)]
struct RunArgs {
    #[arg(long, value_enum, default_value = "chatter")]
    target: Kind,
    /// A gateway (or ceiling) address, host:port on 127.0.0.0/8; repeat for several.
    #[arg(long = "gateway", required = true)]
    gateways: Vec<SocketAddr>,
    /// The gateways' JWT_SECRET (chatter only).
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    /// Members per room; 0 = idle connections, no rooms.
    #[arg(long, default_value_t = 100)]
    room_size: usize,
    #[arg(long, value_enum, default_value = "spread")]
    placement: PlacementArg,
    /// Messages per second, all senders together.
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// Several rates, one step each (overrides --rate), e.g. 500,1000,2000.
    #[arg(long, value_delimiter = ',')]
    ramp: Vec<f64>,
    /// Stop a ramp after the first step whose p99 exceeds this (ms).
    #[arg(long)]
    stop_above_p99_ms: Option<f64>,
    /// Seconds per step.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of unreported sending at 10 % of the first rate before the steps.
    #[arg(long, default_value_t = 0.0)]
    warmup: f64,
    /// Minimum and maximum drain after each step, seconds.
    #[arg(long, default_value_t = 1.0)]
    drain: f64,
    #[arg(long, default_value_t = 15.0)]
    drain_max: f64,
    /// Agent processes (default: one per 12,000 connections).
    #[arg(long)]
    agents: Option<usize>,
    #[arg(long, default_value_t = 1)]
    agent_threads: usize,
    /// Source addresses, comma separated (default 127.0.0.2-127.0.0.9).
    #[arg(long, value_delimiter = ',')]
    source_ips: Vec<IpAddr>,
    #[arg(long, default_value_t = 64)]
    message_bytes: usize,
    /// Handshakes in flight per agent.
    #[arg(long, default_value_t = 64)]
    connect_concurrency: usize,
    /// User ids are this prefix and the connection's number (default: unique
    /// per run). An earlier run's prefix connects the same users again, with
    /// the rooms that run made: a reconnect storm.
    #[arg(long)]
    user_prefix: Option<String>,
    /// Print each step as JSON too.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match args.command {
        Cmd::Agent { threads, max_secs } => chatter_bench::agent::main(threads, max_secs),
        Cmd::Run(run) => {
            chatter_shared::install_crypto_provider();
            chatter_bench::sys::raise_nofile_limit();
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(runtime) => runtime,
                Err(error) => {
                    eprintln!("chatter-loadgen: {error}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(run_load(*run)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("chatter-loadgen: {error:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

async fn run_load(args: RunArgs) -> Result<()> {
    let target = match args.target {
        Kind::Chatter => Target::Chatter {
            gateways: args.gateways.clone(),
            jwt_secret: args
                .jwt_secret
                .clone()
                .context("--jwt-secret (or JWT_SECRET) is needed for chatter")?,
        },
        Kind::Ceiling => Target::Ceiling {
            servers: args.gateways.clone(),
        },
    };
    if !(args.duration > 0.0 && args.duration <= 3600.0) {
        bail!("--duration must be in (0, 3600] seconds");
    }
    let exe = std::env::current_exe().context("locating chatter-loadgen")?;
    let mut options = LoadOptions::new(args.connections, args.room_size, exe);
    options.placement = match args.placement {
        PlacementArg::Spread => Placement::Spread,
        PlacementArg::Together => Placement::RoomTogether,
    };
    if let Some(agents) = args.agents {
        options.agents = agents.max(1);
    }
    options.agent_threads = args.agent_threads;
    if !args.source_ips.is_empty() {
        options.source_ips = args.source_ips.clone();
    }
    options.message_bytes = args.message_bytes;
    options.connect_concurrency = args.connect_concurrency;
    if let Some(prefix) = &args.user_prefix {
        options.user_prefix.clone_from(prefix);
    }

    let mut run = LoadRun::start(&target, &options).await?;
    let c = &run.connect;
    println!(
        "connected {}/{} in {:.1}s ({:.0}/s), failed {} {:?}; users {}<n>",
        c.ok,
        c.requested,
        c.elapsed_s,
        c.ok as f64 / c.elapsed_s.max(1e-3),
        c.failed,
        c.errors,
        options.user_prefix
    );
    let r = &run.rooms_report;
    if r.rooms > 0 {
        println!(
            "rooms {}/{} created in {:.1}s (failed {} {:?}); members told {} (missing {}) in {:.1}s",
            r.created,
            r.rooms,
            r.create_s,
            r.failed,
            r.errors,
            r.members_ready,
            r.members_missing,
            r.ready_s
        );
    }
    let secs = |s: f64| Duration::from_secs_f64(s.max(0.0));
    let rates = if args.ramp.is_empty() {
        vec![args.rate]
    } else {
        args.ramp.clone()
    };
    if args.warmup > 0.0 && args.room_size > 0 {
        let warm = run
            .step(
                rates[0] * 0.1,
                secs(args.warmup),
                secs(args.drain),
                secs(args.drain_max),
            )
            .await?;
        println!("warm-up: {}", line(&warm));
    }
    println!("{}", header());
    for rate in rates {
        let step = run
            .step(
                rate,
                secs(args.duration),
                secs(args.drain),
                secs(args.drain_max),
            )
            .await?;
        println!("{}", line(&step));
        if args.json {
            println!("{}", serde_json::to_string(&step)?);
        }
        if let Some(bound) = args.stop_above_p99_ms
            && step.latency.p99_ms > bound
        {
            println!("p99 above {bound} ms: stopping the ramp");
            break;
        }
    }
    // A last, empty step collects whatever arrived late and the final loss count.
    if args.room_size > 0 {
        let last = run
            .step(0.0, Duration::ZERO, secs(args.drain), secs(args.drain_max))
            .await?;
        println!(
            "after the final drain: lost (missing deliveries) {}, duplicates {}, closes {:?}",
            last.missing_total, last.surplus_total, last.closes
        );
    }
    run.quit().await;
    Ok(())
}

fn header() -> String {
    format!(
        "{:>9} {:>9} {:>11} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>7}",
        "rate/s",
        "sent",
        "deliv/s",
        "p50ms",
        "p99ms",
        "p99own",
        "p99peer",
        "p99ack",
        "p99.9ms",
        "maxms",
        "lag99ms",
        "missing",
        "errors"
    )
}

fn line(s: &StepReport) -> String {
    format!(
        "{:>9.0} {:>9} {:>11.0} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.1} {:>8.2} {:>8} {:>7}",
        s.rate,
        s.sent,
        s.deliveries_per_s,
        s.latency.p50_ms,
        s.latency.p99_ms,
        s.latency_own.p99_ms,
        s.latency_peers.p99_ms,
        s.ack_latency.p99_ms,
        s.latency.p999_ms,
        s.latency.max_ms,
        s.send_lag.p99_ms,
        s.missing_new,
        s.errors()
    )
}
