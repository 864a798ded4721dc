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
