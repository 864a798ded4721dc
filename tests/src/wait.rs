//! Polling with a deadline instead of sleeping.
//!
//! Distributed behaviour (a message reaching another gateway, a worker writing a
//! row, a killed pod's users going offline) happens "soon", not at a known
//! instant. A fixed sleep is either too short (flaky) or too long (slow); polling
//! until a deadline is both fast in the common case and tolerant of a slow CI box.

use std::future::Future;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use tokio::time::Instant;

/// How often [`eventually`] re-checks its condition. Short enough not to add
/// visible latency, long enough not to hammer Postgres/Redis while waiting.
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Runs `check` every [`POLL_INTERVAL`] until it returns `Ok`, and returns that
/// value. After `timeout` it gives up and returns the last error, so a failing
/// test says *what* was still wrong rather than just "timed out".
///
/// ```ignore
/// let row = eventually(Duration::from_secs(5), || async {
///     sqlx::query("SELECT 1").fetch_one(&pool).await.context("no row yet")
/// }).await?;
/// ```
pub async fn eventually<T, F, Fut>(timeout: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let err = match check().await {
            Ok(value) => return Ok(value),
            Err(err) => err,
        };
        if Instant::now() >= deadline {
            return Err(err).with_context(|| format!("condition still not met after {timeout:?}"));
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Like [`eventually`] for a plain boolean condition; `what` names it in the error.
pub async fn until<F, Fut>(timeout: Duration, what: &str, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    eventually(timeout, || {
        let fut = check();
        async move {
            if fut.await {
                Ok(())
            } else {
                Err(anyhow!("waiting for: {what}"))
            }
        }
    })
    .await
}
