//! Shutdown signalling.
//!
//! One [`CancellationToken`] per process is the shutdown story: `main` cancels it on
//! SIGTERM or SIGINT, and every long-lived loop selects on it. Child tokens let a
//! part (a socket, the drain) be cancelled without cancelling the whole process.

use tokio_util::sync::CancellationToken;

/// Waits for SIGTERM or SIGINT (Ctrl-C), then cancels `token`.
///
/// Both signals mean the same thing: Kubernetes sends SIGTERM, a developer presses
/// Ctrl-C, and either way the process should drain and exit cleanly.
pub async fn cancel_on_signal(token: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => tracing::info!("SIGINT received, shutting down"),
                    _ = term.recv() => tracing::info!("SIGTERM received, shutting down"),
                    () = token.cancelled() => return,
                }
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM; only Ctrl-C will stop the process");
                tokio::select! {
                    _ = ctrl_c => tracing::info!("SIGINT received, shutting down"),
                    () = token.cancelled() => return,
                }
            }
        }
    }
    #[cfg(not(unix))]
    tokio::select! {
        _ = ctrl_c => tracing::info!("Ctrl-C received, shutting down"),
        () = token.cancelled() => return,
    }
    token.cancel();
}

/// What both binaries' `main` do around their own work: load the configuration
/// (defaults < `config_file` < environment), start logging, run `work` on a tokio
/// runtime until it returns — SIGTERM and SIGINT cancel the token it gets — and
/// turn the outcome into an exit code, with errors on stderr and in the log.
pub fn run_service<Work, Done>(
    name: &str,
    config: crate::config::Config,
    work: Work,
) -> std::process::ExitCode
where
    Work: FnOnce(crate::config::Config, CancellationToken) -> Done,
    Done: std::future::Future<Output = anyhow::Result<()>>,
{
    let (mail, mailer) = match crate::error_mail::from_config(&config, name) {
        Ok(Some((mail, mailer))) => (Some(mail), Some(mailer)),
        Ok(None) => (None, None),
        Err(problem) => {
            eprintln!("{name}: invalid configuration: {problem}");
            return std::process::ExitCode::FAILURE;
        }
    };
    crate::telemetry::init(&config.log_level, config.log_format, mail);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("{name}: cannot start the runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(cancel_on_signal(shutdown.clone()));
        // The mailer outlives `work`, so the errors of a failed start are mailed.
        let mail_stop = CancellationToken::new();
        let mailer = mailer.map(|mailer| tokio::spawn(mailer.run(mail_stop.clone())));
        let result = work(config, shutdown).await;
        if let Err(error) = &result {
            tracing::error!("{error:#}");
        }
        mail_stop.cancel();
        if let Some(mailer) = mailer {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(30), mailer).await;
        }
        result
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{name}: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Loads the configuration for a binary, or says on stderr which key is wrong.
pub fn load_config(
    name: &str,
    file: Option<&std::path::Path>,
) -> Result<crate::config::Config, std::process::ExitCode> {
    crate::config::Config::load(file, std::env::vars().collect()).map_err(|error| {
        eprintln!("{name}: {error}");
        std::process::ExitCode::FAILURE
    })
}
