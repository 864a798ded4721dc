//! Command line: `chatter-gateway [--config chatter.toml]`.

use chatter_shared::auth::{Identity, Tokens};
use chatter_shared::config::{Config, Mode};
use chatter_shared::shutdown::{load_config, run_service};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// chatter's WebSocket and REST gateway.
///
/// Configuration comes from built-in defaults, then the optional TOML file, then
/// environment variables (PORT, REDIS_URL, DATABASE_URL, JWT_SECRET, ...); see the
/// README for every key.
#[derive(Parser)]
#[command(name = "chatter-gateway", version)]
struct Args {
    /// A TOML file with configuration keys (lower-case env names, e.g. `port = 8080`).
    /// Also `CHATTER_CONFIG` (a container image cannot take arguments as easily).
    #[arg(long, value_name = "PATH", env = "CHATTER_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Print a user token signed with the configured key (JWT_SECRET), for trying
    /// chatter out and for scripts.
    Token {
        /// The user id (`sub`).
        #[arg(long)]
        user: String,
        /// Display name.
        #[arg(long)]
        name: Option<String>,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl_secs: i64,
    },
}

/// The gateway binary's whole `main`.
pub fn main() -> ExitCode {
    chatter_shared::install_crypto_provider();
    let args = Args::parse();
    let config = match load_config("chatter-gateway", args.config.as_deref()) {
        Ok(config) => config,
        Err(code) => return code,
    };
    if let Some(Command::Token {
        user,
        name,
        ttl_secs,
    }) = args.command
    {
        return print_token(&config, user, name, ttl_secs);
    }
    run_service("chatter-gateway", config, |config, shutdown| async move {
        let addr = format!("{}:{}", config.host, config.port);
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .map_err(|error| anyhow::anyhow!("cannot listen on {addr} (HOST, PORT): {error}"))?;
        crate::serve(config, listener, shutdown).await
    })
}

fn print_token(config: &Config, user: String, name: Option<String>, ttl_secs: i64) -> ExitCode {
    // The embedded mode signs with the development secret in DATA_DIR; so does this.
    let mut config = config.clone();
    if let Ok(Mode::Embedded { data_dir }) = config.mode()
        && let Err(error) = crate::use_dev_secret_if_unset(&mut config, &data_dir)
    {
        eprintln!("chatter-gateway: {error:#}");
        return ExitCode::FAILURE;
    }
    let tokens = match Tokens::from_config(&config) {
        Ok(tokens) => tokens,
        Err(error) => {
            eprintln!("chatter-gateway: {error}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(problem) = chatter_shared::auth::validate_user_id(&user) {
        eprintln!("chatter-gateway: --user: {problem}");
        return ExitCode::FAILURE;
    }
    let identity = Identity {
        user_id: user,
        name,
        group: None,
        roles: Vec::new(),
        permissions: None,
    };
    match tokens.mint(&identity, time::Duration::seconds(ttl_secs)) {
        Some((token, _)) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        None => {
            eprintln!(
                "chatter-gateway: no signing key: set JWT_SECRET (or JWT_PRIVATE_KEY for RS256)"
            );
            ExitCode::FAILURE
        }
    }
}
