//! End-to-end test harness for chatter.
//!
//! Everything here is real: a `redis-server` (or a six-node Redis Cluster,
//! [`RedisCluster`]) and a `postgres` per test, the product's gateway and worker binaries as child processes, a small HTTP
//! server standing in for the notification service, and real WebSocket/HTTP
//! clients. Ports are always chosen by the kernel and waits always poll with a
//! deadline, so tests can run in parallel and don't depend on timing luck.
//!
//! ```ignore
//! use chatter_tests::{Cluster, binaries};
//! use std::time::Duration;
//!
//! #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
//! async fn ping() {
//!     let cluster = Cluster::builder(binaries!()).gateways(2).start().await.expect("cluster");
//!     let mut ws = cluster.connect_ws(1, &cluster.token("alice")).await.expect("connect");
//!     ws.send_frame("Ping", serde_json::json!({})).await.expect("send");
//!     ws.recv_type("Pong", Duration::from_secs(5)).await.expect("pong");
//! }
//! ```
//!
//! The gateway and worker are thin `[[bin]]`s of this crate (`src/bin/`), so
//! cargo builds them for the tests and hands their paths over as
//! `CARGO_BIN_EXE_*` ([`binaries!`]). Servers' data lives in `/dev/shm` when it
//! has room (see `CHATTER_E2E_TMPDIR`); a failing test keeps its cluster's logs
//! and prints where.

pub mod backend;
pub mod chat;
pub mod cluster;
pub mod nginx;
pub mod notif;
pub mod postgres;
pub mod process;
pub mod redis;
pub mod redis_cluster;
mod sys;
pub mod traffic;
pub mod wait;
pub mod ws;

pub use cluster::{Api, Auth, Binaries, Cluster, ClusterBuilder};
pub use notif::{NotifCall, NotifFake};
pub use postgres::PostgresServer;
pub use process::{ChildProcess, Gateway, ProcessKind, Worker};
pub use redis::{RedisServer, Resp};
pub use redis_cluster::RedisCluster;
pub use wait::{eventually, until};
pub use ws::{CloseInfo, ConnectError, Incoming, WsClient};

/// The product binaries as built for this test crate. Expands to a
/// [`Binaries`]; only usable from integration tests (`tests/tests/*.rs`),
/// because cargo sets `CARGO_BIN_EXE_*` only when compiling those.
#[macro_export]
macro_rules! binaries {
    () => {
        $crate::Binaries {
            gateway: ::std::path::PathBuf::from(env!("CARGO_BIN_EXE_e2e-gateway")),
            worker: ::std::path::PathBuf::from(env!("CARGO_BIN_EXE_e2e-worker")),
        }
    };
}
