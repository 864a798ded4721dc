//! Logging setup shared by both binaries.
//!
//! Human-readable lines by default, one JSON object per line with `LOG_FORMAT=json`
//! (what log shippers and the end-to-end harness read). Message bodies and tokens
//! are never logged: handlers log ids and sizes only.

use crate::config::LogFormat;
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. `level` is an `EnvFilter` directive such as
/// `info` or `info,chatter_gateway=debug`; an invalid one falls back to `info`
/// with a warning rather than refusing to start.
pub fn init(level: &str, format: LogFormat) {
    let (filter, bad_filter) = match EnvFilter::try_new(level) {
        Ok(filter) => (filter, None),
        Err(error) => (EnvFilter::new("info"), Some(error)),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(true);
    let result = match format {
        LogFormat::Json => builder.json().flatten_event(false).try_init(),
        LogFormat::Text => builder.try_init(),
    };
    if let Err(error) = result {
        // Tests may install a subscriber first; that is not worth failing over.
        eprintln!("logging already initialised: {error}");
    }
    if let Some(error) = bad_filter {
        tracing::warn!(%error, "LOG_LEVEL is not a valid filter; using `info`");
    }
}
