//! `chatter-bench`: runs the benchmark scenarios (each with its own throwaway
//! Redis, Postgres, gateways and worker) and writes the results as Markdown.
//!
//! `bench/run.sh` builds the release binaries and runs `chatter-bench all`.

use anyhow::Result;
use chatter_bench::profile;
use chatter_bench::report::{self, Meta};
use chatter_bench::scenarios::{self, Bench, Bins, Results};
use clap::{Parser, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(name = "chatter-bench", version)]
struct Args {
    /// Scenarios to run, in order.
    #[arg(value_enum, required = true)]
    scenarios: Vec<Scenario>,
    /// Write the Markdown results here (printed to stdout in any case).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Small loads and short steps: checks the pipeline in a minute or two.
    #[arg(long)]
    quick: bool,
    /// Folder for the processes' logs (default: a new folder in the temp dir).
    #[arg(long)]
    work: Option<PathBuf>,
    /// Another build's `target/release` (e.g. the commit before a change): the
    /// content-policy scenario also runs its binaries, policy off, in the same run.
    #[arg(long, value_name = "DIR")]
    baseline_bins: Option<PathBuf>,
    /// The whole run stops by itself after this many minutes.
    #[arg(long, default_value_t = 40)]
    max_minutes: u64,
    /// `profile`: the load (`bash bench/profile.sh LOAD …` sets it).
    #[arg(long, value_enum, default_value = "one-to-one")]
    load: ProfileLoad,
    /// `profile`: connections (default: 20,000 for one-to-one, 10,000 for fanout,
    /// 19,000 for connect).
    #[arg(long)]
    connections: Option<usize>,
    /// `profile`: messages per second, all senders together.
    #[arg(long, default_value_t = 2_500.0)]
    rate: f64,
    /// `profile`: seconds of the measured window (and of `perf record`).
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// `profile`: members per room for `fanout` (default 100).
    #[arg(long, default_value_t = 100)]
    room_size: usize,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ProfileLoad {
    OneToOne,
    Fanout,
    Connect,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    All,
    Idle,
    Fanout,
    OneToOne,
    Persist,
    /// A drain of one gateway: its sockets reconnect to the other at once.
    Storm,
    /// One Redis against a 3-master Redis Cluster at one rate (per-node CPU and
    /// commandstats), then 2 gateway processes against 4 (CPU per delivery).
    Scaling,
    /// The send path's cost of a content policy (off, then on); not part of `all`.
    ContentPolicy,
    /// Not a scenario: start Redis, Postgres, 2 gateways and a worker, print how to
    /// run chatter-loadgen against them, and keep them up until Ctrl-C.
    Deploy,
    /// Not a scenario: one load (`--load`) at a fixed rate on a throwaway
    /// deployment, with CPU per process, Redis commandstats and slowlog,
    /// pg_stat_statements and a perf profile of a gateway, as Markdown.
    Profile,
}

fn main() -> ExitCode {
    let args = Args::parse();
    chatter_shared::install_crypto_provider();
    let fd_limit = chatter_bench::sys::raise_nofile_limit();
    let budget = args.max_minutes;
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(budget * 60));
        eprintln!("chatter-bench: {budget} min budget spent; stopping");
        std::process::exit(3);
    });
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("chatter-bench: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args, fd_limit)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(2),
        Err(error) => {
            eprintln!("chatter-bench: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the scenarios; `Ok(false)` if any of them failed (the others still ran).
async fn run(args: Args, fd_limit: u64) -> Result<bool> {
    let started = Instant::now();
    let work = args.work.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("chatter-bench-{}", std::process::id()))
    });
    std::fs::create_dir_all(&work)?;
    eprintln!("chatter-bench: logs in {}", work.display());
    let bench = Bench {
        bins: Bins::beside_current_exe()?,
        baseline: args
            .baseline_bins
            .as_deref()
            .map(Bins::in_dir)
            .transpose()?,
        work,
        quick: args.quick,
    };
    let mut wanted = args.scenarios.clone();
    if wanted.contains(&Scenario::All) {
        wanted = vec![
            Scenario::Idle,
            Scenario::Fanout,
            Scenario::OneToOne,
            Scenario::Persist,
            Scenario::Storm,
            Scenario::Scaling,
        ];
    }
    if wanted == [Scenario::Profile] {
        let (load, connections) = match args.load {
            ProfileLoad::OneToOne => (profile::Load::OneToOne, 20_000),
            ProfileLoad::Fanout => (profile::Load::Fanout, 10_000),
            ProfileLoad::Connect => (profile::Load::Connect, 19_000),
        };
        let options = profile::Options {
            load,
            connections: args.connections.unwrap_or(connections),
            room_size: if load == profile::Load::OneToOne {
                2
            } else {
                args.room_size.max(2)
            },
            rate: args.rate,
            seconds: args.seconds.clamp(1.0, 600.0),
        };
        let md = profile::profile(&bench, &options).await?;
        println!("{md}");
        if let Some(out) = &args.out {
            std::fs::write(out, &md)?;
            eprintln!("chatter-bench: wrote {}", out.display());
        }
        return Ok(true);
    }
    let mut results = Results::default();
    for scenario in wanted {
        let (name, outcome) = match scenario {
            Scenario::Idle => (
                "idle",
                scenarios::idle(&bench)
                    .await
                    .map(|r| results.idle = Some(r)),
            ),
            Scenario::Fanout => (
                "fan-out",
                scenarios::fanout(&bench)
                    .await
                    .map(|r| results.fanout = Some(r)),
            ),
            Scenario::OneToOne => (
                "1:1",
                scenarios::one_to_one(&bench)
                    .await
                    .map(|r| results.one_to_one = Some(r)),
            ),
            Scenario::Persist => (
                "persist",
                scenarios::persist(&bench)
                    .await
                    .map(|r| results.persist = Some(r)),
            ),
            Scenario::Storm => (
                "storm",
                scenarios::storm(&bench)
                    .await
                    .map(|r| results.storm = Some(r)),
            ),
            Scenario::Scaling => (
                "scaling",
                chatter_bench::scaling::scaling(&bench)
                    .await
                    .map(|r| results.scaling = Some(r)),
            ),
            Scenario::ContentPolicy => (
                "content-policy",
                scenarios::content_policy(&bench)
                    .await
                    .map(|r| results.content_policy = Some(r)),
            ),
            Scenario::Deploy => ("deploy", scenarios::deploy(&bench, 2).await),
            Scenario::Profile => {
                eprintln!("chatter-bench: `profile` runs alone; skipped");
                continue;
            }
            Scenario::All => continue,
        };
        if let Err(error) = outcome {
            eprintln!("chatter-bench: {name} failed: {error:#}");
            results
                .failures
                .push((name.to_owned(), format!("{error:#}")));
        }
    }
    results.elapsed_s = started.elapsed().as_secs_f64();
    let machine = chatter_bench::sys::machine();
    let (commit, uncommitted_files) = commit();
    let meta = Meta {
        cores: machine.cores,
        memory_gib: machine.memory_gib,
        cpu_model: machine.cpu_model,
        kernel: machine.kernel,
        commit,
        uncommitted_files,
        date: date(),
        fd_limit,
        command: if args.quick {
            "chatter-bench --quick".into()
        } else {
            "bench/run.sh".into()
        },
    };
    let md = report::markdown(&results, &meta);
    println!("{md}");
    if let Some(out) = &args.out {
        std::fs::write(out, &md)?;
        eprintln!("chatter-bench: wrote {}", out.display());
    }
    Ok(results.failures.is_empty())
}

/// `git rev-parse HEAD` and how many tracked files have uncommitted changes.
fn commit() -> (String, usize) {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    match git(&["rev-parse", "HEAD"]) {
        Some(sha) => {
            let changed = git(&["status", "--porcelain", "--untracked-files=no"])
                .map_or(0, |changes| changes.lines().count());
            (sha, changed)
        }
        None => ("unknown (not a git checkout)".into(), 0),
    }
}

fn date() -> String {
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute] UTC");
    time::OffsetDateTime::now_utc()
        .format(&format)
        .unwrap_or_else(|_| "unknown".into())
}
