//! Chaos: a cluster under steady traffic while its processes are killed.
//!
//! 3 gateways, 2 workers, 300 clients in 30 rooms, each sending about one message
//! a second and resuming after every disconnect, as a careful client does
//! (`chatter_tests::traffic`). For `CHAOS_SECS` (default 60) a random gateway or
//! worker is `kill -9`ed and started again every few seconds; once Redis is
//! killed and restarted (AOF, `appendfsync always`), once Postgres is `SIGSTOP`ed
//! for 10 s. Then: every acknowledged message is in Postgres exactly once, seqs
//! have no gap, and every client holds every message of its room once, in order.
//! The figures are printed.
//!
//! Cluster only: the embedded mode is one process.

use chatter_tests::chat::{create_room, ensure_users};
use chatter_tests::traffic::{Addresses, Control, run_client, verify};
use chatter_tests::{Cluster, binaries};
use rand::Rng;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

const CLIENTS: usize = 300;
const ROOM_SIZE: usize = 10;
const EVENT_EVERY: Duration = Duration::from_secs(4);
const POSTGRES_PAUSE: Duration = Duration::from_secs(10);

fn chaos_secs() -> u64 {
    std::env::var("CHAOS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_acknowledged_message_survives_killed_gateways_workers_redis_and_a_frozen_postgres() {
    let chaos = Duration::from_secs(chaos_secs());
    let mut cluster = Cluster::builder(binaries!())
        .gateways(3)
        .workers(2)
        .env("FRAMES_PER_SEC", "1000")
        .env("WORKER_CLAIM_IDLE_MS", "2000")
        .env("WORKER_CLAIM_INTERVAL_MS", "1000")
        .env("DRAIN_WINDOW_SECS", "2")
        // A whole room fits the Resume window even after the longest outage.
        .env("RESUME_MAX", "5000")
        .env("MAX_HTTP_CONNECTIONS_PER_IP", "0")
        .start()
        .await
        .expect("cluster");
    fsync_every_write(&cluster).await;
    let users: Vec<String> = (0..CLIENTS).map(|i| format!("c{i}")).collect();
    let refs: Vec<&str> = users.iter().map(String::as_str).collect();
    ensure_users(&cluster, &refs).await.expect("users");
    let mut rooms = Vec::new();
    for group in refs.chunks(ROOM_SIZE) {
        rooms.push(
            create_room(&cluster, 0, group[0], &group[1..])
                .await
                .expect("room"),
        );
    }
    let gateways: Addresses = Arc::new(RwLock::new(
        cluster.gateways().iter().map(|g| g.ws_url()).collect(),
    ));
    let control = Control::new();
    let mut clients = Vec::new();
    for (i, user) in users.iter().enumerate() {
        clients.push(tokio::spawn(run_client(
            user.clone(),
            cluster.token(user),
            rooms[i / ROOM_SIZE].clone(),
            gateways.clone(),
            control.clone(),
        )));
    }

    // The chaos.
    let started = Instant::now();
    let mut rng = rand::rng();
    let mut events = Vec::new();
    let mut redis_done = false;
    let mut postgres_done = false;
    while started.elapsed() < chaos {
        tokio::time::sleep(EVENT_EVERY).await;
        let at = started.elapsed();
        if !redis_done && at > chaos / 4 {
            redis_done = true;
            cluster.redis_mut().restart().await.expect("redis restarts");
            fsync_every_write(&cluster).await;
            events.push(format!("{at:.1?} redis kill -9 + restart"));
        } else if !postgres_done && at > chaos / 2 {
            postgres_done = true;
            cluster.postgres().pause().expect("SIGSTOP postgres");
            tokio::time::sleep(POSTGRES_PAUSE).await;
            cluster.postgres().resume().expect("SIGCONT postgres");
            events.push(format!("{at:.1?} postgres SIGSTOP {POSTGRES_PAUSE:?}"));
        } else if rng.random_bool(0.6) {
            let i = rng.random_range(0..3);
            cluster.restart_gateway(i).await.expect("gateway restarts");
            if let Ok(mut urls) = gateways.write() {
                urls[i] = cluster.gateway(i).ws_url();
            }
            events.push(format!("{at:.1?} gateway {i} kill -9 + restart"));
        } else {
            let i = rng.random_range(0..2);
            cluster.restart_worker(i).await.expect("worker restarts");
            events.push(format!("{at:.1?} worker {i} kill -9 + restart"));
        }
    }
    assert!(
        redis_done && postgres_done,
        "chaos too short for every event: {events:?}"
    );
    let chaos_took = started.elapsed();
    let figures = verify(&cluster, &rooms, &control, clients).await;
    eprintln!(
        "chaos events ({chaos_took:.1?}):\n  {}",
        events.join("\n  ")
    );
    eprintln!("chaos figures: {figures}");
    figures.assert_nothing_lost();
    assert!(figures.acknowledged > CLIENTS, "traffic flowed: {figures}");
}

/// Every acknowledged write reaches the AOF before Redis answers, so a
/// `kill -9` of Redis loses nothing that was confirmed (with the default
/// `everysec`, up to a second of confirmed messages would be at risk).
async fn fsync_every_write(cluster: &Cluster) {
    cluster
        .redis()
        .cmd(&["CONFIG", "SET", "appendfsync", "always"])
        .await
        .expect("CONFIG SET appendfsync always");
}
