//! `/metrics` on the gateway and the worker: Prometheus text that shows where
//! time goes (connections, frames, publish and delivery latency, worker batches).
//! Cluster only: it checks the separate worker's own endpoint as well; the
//! embedded gateway serves the same recorder on its `/metrics`.

use chatter_tests::chat::{create_room, ensure_users, next_message, send_and_confirm};
use chatter_tests::{Auth, Cluster, binaries, eventually};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gateway_and_worker_expose_prometheus_metrics() {
    let cluster = Cluster::builder(binaries!())
        .start()
        .await
        .expect("cluster");
    ensure_users(&cluster, &["alice", "bob"])
        .await
        .expect("users");
    let room = create_room(&cluster, 0, "alice", &["bob"])
        .await
        .expect("room");
    let mut alice = cluster
        .connect_ws(0, &cluster.token("alice"))
        .await
        .expect("alice");
    let mut bob = cluster
        .connect_ws(0, &cluster.token("bob"))
        .await
        .expect("bob");
    send_and_confirm(&mut alice, &room, "hello", "m1")
        .await
        .expect("sent");
    next_message(&mut bob).await.expect("delivered");

    let (status, body) = cluster
        .api(0)
        .get("/metrics", Auth::None)
        .await
        .expect("gateway metrics");
    assert_eq!(status, 200);
    let text = body.as_str().expect("text format").to_owned();
    for name in [
        "chatter_connections 2",
        "chatter_frames_in_total",
        "chatter_frames_out_total",
        "chatter_publish_seconds_bucket",
        "chatter_delivery_seconds_bucket",
    ] {
        assert!(
            text.contains(name),
            "gateway /metrics lacks {name}:\n{text}"
        );
    }

    let url = format!("{}/metrics", cluster.worker(0).http_url());
    let text = eventually(Duration::from_secs(10), || async {
        let text = cluster.http().get(&url).send().await?.text().await?;
        anyhow::ensure!(text.contains("chatter_worker_stored_total 1"), "{text}");
        Ok(text)
    })
    .await
    .expect("worker metrics");
    for name in [
        "chatter_worker_batch_size_bucket",
        "chatter_worker_lag_seconds_bucket",
    ] {
        assert!(text.contains(name), "worker /metrics lacks {name}:\n{text}");
    }
}
