//! `chatter-ceiling`: the minimal broadcast WebSocket server chatter is measured
//! against (see `chatter_bench::ceiling`).

use clap::Parser;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

/// A minimal broadcast WebSocket server speaking enough of chatter's protocol
/// for chatter-loadgen: no auth, no Redis, no database.
#[derive(Parser)]
#[command(name = "chatter-ceiling", version)]
struct Args {
    #[arg(long, env = "HOST", default_value = "127.0.0.1")]
    host: String,
    /// 0 picks a free port; the address is printed as
    /// `{"message":"listening","addr":"..."}`.
    #[arg(long, env = "PORT", default_value_t = 0)]
    port: u16,
    /// Runtime worker threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// Per-socket read buffer in KiB (tungstenite's and axum's default is 128).
    #[arg(long, env = "CEILING_READ_BUFFER_KIB", default_value_t = 4)]
    read_buffer_kib: usize,
}

fn main() -> ExitCode {
    let args = Args::parse();
    chatter_bench::sys::raise_nofile_limit();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = args.threads {
        builder.worker_threads(threads.max(1));
    }
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("chatter-ceiling: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let addr = format!("{}:{}", args.host, args.port);
        let listener = match tokio::net::TcpListener::bind(&addr).await {
            Ok(listener) => listener,
            Err(error) => {
                eprintln!("chatter-ceiling: cannot listen on {addr}: {error}");
                return ExitCode::FAILURE;
            }
        };
        let local = listener
            .local_addr()
            .map_or_else(|_| addr.clone(), |a| a.to_string());
        println!(
            "{}",
            serde_json::json!({ "message": "listening", "addr": local })
        );
        let shutdown = CancellationToken::new();
        let on_signal = shutdown.clone();
        tokio::spawn(async move {
            let _ = tokio::signal::ctrl_c().await;
            on_signal.cancel();
        });
        let options = chatter_bench::ceiling::Options {
            read_buffer: args.read_buffer_kib.max(1) * 1024,
        };
        chatter_bench::ceiling::serve(listener, shutdown, options).await;
        ExitCode::SUCCESS
    })
}
