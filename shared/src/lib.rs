//! What the chatter gateway and worker share: the wire protocol, configuration,
//! authentication, the Redis keyspace and its scripts, and the Postgres store.
//!
//! Both binaries are thin; everything they agree on lives here so that a change
//! to, say, the ingest stream's field names is made in exactly one place.

pub mod auth;
pub mod batches;
pub mod config;
pub mod error_mail;
pub mod events;
pub mod ingest;
pub mod keyspace;
pub mod presence;
pub mod protocol;
pub mod redis;
pub mod shutdown;
pub mod signature;
pub mod store;
pub mod telemetry;

/// Installs the process-wide rustls crypto provider.
///
/// fred, reqwest and sqlx all use rustls; with more than one provider compiled in,
/// rustls refuses to guess and fred's TLS setup panics. Both binaries call this
/// first thing in `main`. Installing twice (e.g. in tests) is harmless.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}
