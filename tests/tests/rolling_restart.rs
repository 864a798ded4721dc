//! A rolling restart through the load balancer, as Kubernetes does one: 200
//! clients connected through nginx (configured from `deploy/nginx/chatter.conf`)
//! keep sending while the gateways are restarted one by one (SIGTERM, wait for
//! the drain and the exit, start again, point nginx at the new one). Then every
//! acknowledged message is in Postgres exactly once and every client holds every
//! message of its room once, in order. The figures are printed.
//! Cluster only: a rolling restart needs several gateways.

use chatter_tests::chat::{create_room, ensure_users};
use chatter_tests::nginx::Nginx;
use chatter_tests::traffic::{Addresses, Control, run_client, verify};
use chatter_tests::{Cluster, binaries};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

const CLIENTS: usize = 200;
const ROOM_SIZE: usize = 10;
const GATEWAYS: usize = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gateways_restarted_one_by_one_behind_nginx_lose_and_duplicate_nothing() {
    let mut cluster = Cluster::builder(binaries!())
        .gateways(GATEWAYS)
        .workers(1)
        .env("DRAIN_WINDOW_SECS", "4")
        // Every connection comes from nginx's address.
        .env("MAX_HTTP_CONNECTIONS_PER_IP", "0")
        .start()
        .await
        .expect("cluster");
    let upstreams =
        |cluster: &Cluster| -> Vec<_> { cluster.gateways().iter().map(|g| g.addr()).collect() };
    let nginx = Nginx::start(&upstreams(&cluster)).await.expect("nginx");
    let users: Vec<String> = (0..CLIENTS).map(|i| format!("r{i}")).collect();
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
    // One address for everyone: the load balancer.
    let addresses: Addresses = Arc::new(RwLock::new(vec![nginx.ws_url()]));
    let control = Control::new();
    let clients: Vec<_> = users
        .iter()
        .enumerate()
        .map(|(i, user)| {
            tokio::spawn(run_client(
                user.clone(),
                cluster.token(user),
                rooms[i / ROOM_SIZE].clone(),
                addresses.clone(),
                control.clone(),
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(5)).await;

    let roll = Instant::now();
    let mut drains = Vec::new();
    for i in 0..GATEWAYS {
        let started = Instant::now();
        cluster.gateway(i).sigterm().expect("SIGTERM");
        let status = cluster
            .gateway_mut(i)
            .wait_exit(Duration::from_secs(20))
            .await
            .expect("the gateway drains and exits");
        assert!(status.success(), "gateway {i} exits 0: {status:?}");
        let drained = started.elapsed();
        cluster.restart_gateway(i).await.expect("a new gateway");
        nginx
            .set_upstreams(&upstreams(&cluster))
            .await
            .expect("nginx reload");
        drains.push(format!("gateway {i}: drained and exited in {drained:.1?}"));
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    let roll_took = roll.elapsed();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let figures = verify(&cluster, &rooms, &control, clients).await;
    eprintln!(
        "rolling restart of {GATEWAYS} gateways in {roll_took:.1?}: {}",
        drains.join("; ")
    );
    eprintln!("rolling restart figures: {figures}");
    figures.assert_nothing_lost();
    assert!(figures.acknowledged > CLIENTS, "traffic flowed: {figures}");
    assert!(
        figures.reconnects >= (CLIENTS * 2 / 3) as u64,
        "clients were moved: {figures}"
    );
}
