//! Command line: `chatter-worker [--config chatter.toml]`.

use chatter_shared::config::Config;
use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

/// chatter's persistence and notification worker.
///
/// Reads REDIS_URL, DATABASE_URL, NOTIFICATION_URL, NOTIFICATION_AUTH, APP_URL and
/// the WORKER_* settings from the environment (or the optional TOML file); see the
/// README for every key.
#[derive(Parser)]
#[command(name = "chatter-worker", version)]
struct Args {
    /// A TOML file with configuration keys (lower-case env names).
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
}

/// The worker binary's whole `main`.
pub fn main() -> ExitCode {
    chatter_shared::install_crypto_provider();
    let args = Args::parse();
    let config = match Config::load(args.config.as_deref(), std::env::vars().collect()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("chatter-worker: {error}");
            return ExitCode::FAILURE;
        }
    };
    chatter_shared::telemetry::init(&config.log_level, config.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("chatter-worker: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(chatter_shared::shutdown::cancel_on_signal(shutdown.clone()));
        crate::run(config, shutdown).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            eprintln!("chatter-worker: {error:#}");
            ExitCode::FAILURE
        }
    }
}
