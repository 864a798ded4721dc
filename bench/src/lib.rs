//! Load generator, ceiling server and benchmark scenarios for chatter
//! (see bench/README.md).
//!
//! - [`agent`]: a load generator process holding a share of the connections;
//! - [`coordinator`]: plans a load, starts agents, makes rooms, adds results up;
//! - [`ceiling`]: the minimal broadcast server chatter is compared with;
//! - [`scenarios`]: idle, fan-out, 1:1, persist and storm;
//! - [`scaling`]: one Redis against a Redis Cluster's masters, 2 gateways against 4;
//! - [`report`]: the results file;
//! - [`profile`]: one load at a fixed rate with CPU, Redis, Postgres and `perf` profiles.

pub mod agent;
pub mod ceiling;
pub mod coordinator;
pub mod frames;
pub mod plan;
pub mod profile;
pub mod report;
pub mod scaling;
pub mod scenarios;
pub mod stats;
pub mod sys;
