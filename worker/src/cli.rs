//! Command line: `chatter-worker [--config chatter.toml]`.

use chatter_shared::shutdown::{load_config, run_service};
use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;

/// chatter's persistence and notification worker.
///
/// Reads REDIS_URL, DATABASE_URL, NOTIFICATION_URL, NOTIFICATION_AUTH, APP_URL and
/// the WORKER_* settings from the environment (or the optional TOML file); see the
/// README for every key.
#[derive(Parser)]
#[command(name = "chatter-worker", version)]
struct Args {
    /// A TOML file with configuration keys (lower-case env names).
    /// Also `CHATTER_CONFIG` (a container image cannot take arguments as easily).
    #[arg(long, value_name = "PATH", env = "CHATTER_CONFIG")]
    config: Option<PathBuf>,
}

/// The worker binary's whole `main`.
pub fn main() -> ExitCode {
    chatter_shared::install_crypto_provider();
    let args = Args::parse();
    match load_config("chatter-worker", args.config.as_deref()) {
        Ok(config) => run_service("chatter-worker", config, crate::run),
        Err(code) => code,
    }
}
