//! Cluster-wide presence: transitions published once, `/connections` agreeing
//! across gateways, a killed gateway's users going offline within the TTL, and
//! notifications only for recipients who are offline. The multi-device test runs
//! on both backends; the others need a second gateway or a separate worker.

use chatter_tests::chat::{FRAME_WAIT, create_room, ensure_users, send_and_confirm};
use chatter_tests::{Cluster, Incoming, WsClient, binaries, eventually};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// Subscribes `ws` to presence and waits until the gateway has done it.
async fn subscribe(ws: &mut WsClient) {
    ws.send_frame("SubscribePresence", json!({}))
        .await
        .expect("subscribe");
    ws.send_frame("Ping", json!({})).await.expect("ping");
    ws.recv_type("Pong", FRAME_WAIT).await.expect("subscribed");
}

/// The `PresenceChanged` events for `user` seen within `window`.
async fn changes_of(ws: &mut WsClient, user: &str, window: Duration) -> Vec<Value> {
    let deadline = Instant::now() + window;
    let mut seen = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match ws.recv(left).await {
            Ok(Incoming::Frame(frame))
                if frame["type"] == "PresenceChanged" && frame["data"]["user_id"] == user =>
            {
                seen.push(frame["data"].clone())
            }
            Ok(Incoming::Frame(_)) => {}
            _ => break,
        }
    }
    seen
}

async fn connections(cluster: &Cluster, gateway: usize, caller: &str) -> Vec<Value> {
    let (status, body) = cluster
        .api(gateway)
        .get("/connections", cluster.token(caller))
        .await
        .expect("request");
    assert_eq!(status, 200, "{body}");
    body.as_array().cloned().expect("a list")
}

fn entry<'a>(list: &'a [Value], user: &str) -> Option<&'a Value> {
    list.iter().find(|c| c["user_id"] == user)
}

async fn presence_agrees_across_gateways(cluster: Cluster) {
    ensure_users(&cluster, &["alice", "carol", "bob"])
        .await
        .expect("users");
    create_room(&cluster, 0, "carol", &["alice"])
        .await
        .expect("carol and alice share a room");
    let mut desk = cluster
        .connect_ws(1, &cluster.token_with_roles("desk", &["support"]))
        .await
        .expect("desk");
    let mut carol = cluster
        .connect_ws(0, &cluster.token("carol"))
        .await
        .expect("carol");
    let mut bob = cluster
        .connect_ws(1, &cluster.token("bob"))
        .await
        .expect("bob");
    subscribe(&mut desk).await;
    subscribe(&mut carol).await;
    subscribe(&mut bob).await;

    // Two devices on two gateways: one online transition.
    let phone = cluster
        .connect_ws(0, &cluster.token("alice"))
        .await
        .expect("phone");
    let laptop = cluster
        .connect_ws(1, &cluster.token("alice"))
        .await
        .expect("laptop");
    let seen = changes_of(&mut desk, "alice", Duration::from_secs(2)).await;
    assert_eq!(seen.len(), 1, "one transition for two devices: {seen:?}");
    assert_eq!(seen[0]["online"], true);
    assert_eq!(
        changes_of(&mut carol, "alice", Duration::from_millis(500))
            .await
            .len(),
        1,
        "carol shares a room"
    );
    assert!(
        changes_of(&mut bob, "alice", Duration::from_millis(500))
            .await
            .is_empty(),
        "bob shares nothing with alice"
    );

    for gateway in [0, 1] {
        let list = connections(&cluster, gateway, "carol").await;
        let alice = entry(&list, "alice").expect("alice is carol's contact");
        assert_eq!(alice["online"], true, "gateway {gateway}: {list:?}");
        assert!(entry(&list, "bob").is_none(), "bob is not carol's contact");
    }

    // One device leaves: still online. The other leaves: offline, once.
    drop(phone);
    assert!(
        changes_of(&mut desk, "alice", Duration::from_secs(1))
            .await
            .is_empty()
    );
    drop(laptop);
    let seen = changes_of(&mut desk, "alice", Duration::from_secs(2)).await;
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0]["online"], false);
    assert!(seen[0]["last_seen_at"].is_string());
    for gateway in [0, 1] {
        let list = connections(&cluster, gateway, "carol").await;
        let alice = entry(&list, "alice").expect("contact");
        assert_eq!(alice["online"], false, "{list:?}");
        assert!(alice["last_seen_at"].is_string(), "{list:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn presence_agrees_across_gateways_counting_devices_once() {
    presence_agrees_across_gateways(
        Cluster::builder(binaries!())
            .gateways(2)
            .start()
            .await
            .expect("cluster"),
    )
    .await;
}

/// Same assertions on the embedded mode (its "two gateways" are the one process).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn embedded_presence_counts_devices_once() {
    presence_agrees_across_gateways(
        Cluster::builder(binaries!())
            .embedded()
            .start()
            .await
            .expect("embedded"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_gateways_users_go_offline_within_the_ttl() {
    let mut cluster = Cluster::builder(binaries!())
        .gateways(2)
        .env("PRESENCE_TTL_SECS", "3")
        .start()
        .await
        .expect("cluster");
    let mut desk = cluster
        .connect_ws(1, &cluster.token_with_roles("desk", &["admin"]))
        .await
        .expect("desk");
    subscribe(&mut desk).await;
    let _alice = cluster
        .connect_ws(0, &cluster.token("alice"))
        .await
        .expect("alice");
    assert_eq!(
        changes_of(&mut desk, "alice", Duration::from_secs(2)).await[0]["online"],
        true
    );

    cluster.gateway_mut(0).kill9();
    let killed = Instant::now();
    let offline = loop {
        let frame = desk
            .recv_type("PresenceChanged", Duration::from_secs(10))
            .await
            .expect("offline event");
        if frame["user_id"] == "alice" {
            break frame;
        }
    };
    let took = killed.elapsed();
    eprintln!("a kill -9'd gateway's user went offline after {took:?} (PRESENCE_TTL_SECS=3)");
    assert_eq!(offline["online"], false);
    assert!(
        took <= Duration::from_secs(3),
        "offline within the TTL: {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_offline_recipients_are_notified() {
    let cluster = Cluster::builder(binaries!())
        .start()
        .await
        .expect("cluster");
    ensure_users(&cluster, &["alice", "bob", "carol"])
        .await
        .expect("users");
    let room = create_room(&cluster, 0, "alice", &["bob", "carol"])
        .await
        .expect("room");
    let mut alice = cluster
        .connect_ws(0, &cluster.token("alice"))
        .await
        .expect("alice");
    let _bob = cluster
        .connect_ws(0, &cluster.token("bob"))
        .await
        .expect("bob is online");
    // Presence is registered shortly after the upgrade; wait until bob counts as online.
    eventually(FRAME_WAIT, || async {
        let (_, body) = cluster
            .api(0)
            .get("/connections", cluster.token("alice"))
            .await?;
        let bob = body
            .as_array()
            .and_then(|l| l.iter().find(|c| c["user_id"] == "bob").cloned());
        anyhow::ensure!(bob.is_some_and(|b| b["online"] == true), "{body}");
        Ok(())
    })
    .await
    .expect("bob online");
    send_and_confirm(&mut alice, &room, "hello", "n1")
        .await
        .expect("sent");
    let calls = cluster
        .notif()
        .wait_for_calls(1, FRAME_WAIT)
        .await
        .expect("carol is notified");
    tokio::time::sleep(Duration::from_millis(800)).await; // room for a wrong extra call to show up
    let recipients: Vec<Value> = cluster
        .notif()
        .calls()
        .iter()
        .map(|c| c.body["username_to"].clone())
        .collect();
    assert_eq!(
        recipients,
        vec![json!("carol")],
        "first call {:?}",
        calls[0].body
    );
}
