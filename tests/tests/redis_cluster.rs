//! Checks the Redis Cluster harness and what chatter will rely on in cluster
//! mode, with fred clients built exactly as the binaries build them
//! (`chatter_shared::redis`: `Config::from_url` of the `redis-cluster://` URL,
//! command timeout, reconnect policy): keys and scripts are routed by hash
//! slot, a script must stay within one slot, sharded pub/sub reaches the
//! subscribers of the slot's node (also from inside a script), and after
//! `kill -9` of a master its replica takes over while the clients recover by
//! themselves. Run with `--nocapture` to see the failover timings.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chatter_shared::redis::{StreamDepth, connect, connect_subscriber};
use chatter_tests::RedisCluster;
use chatter_tests::redis_cluster::Master;
use fred::clients::SubscriberClient;
use fred::prelude::*;
use fred::types::scripts::Script;
use fred::types::{ClusterHash, CustomCommand};
use fred::util::redis_keyslot;
use tokio::sync::broadcast;
use tokio::time::Instant;

/// Far more than any step takes; a failover takes about 3 s.
const WAIT: Duration = Duration::from_secs(20);

/// Sets `KEYS[1]` to `ARGV[1]` and counts in `KEYS[2]`: two keys, one script.
const TWO_KEYS: &str = "redis.call('SET', KEYS[1], ARGV[1]) return redis.call('INCR', KEYS[2])";
/// The ingest script's shape: counts in `KEYS[1]`, then announces on channel
/// `ARGV[1]` with `SPUBLISH`.
const COUNT_AND_ANNOUNCE: &str =
    "local seq = redis.call('INCR', KEYS[1]) redis.call('SPUBLISH', ARGV[1], ARGV[2]) return seq";

/// The first `{prefix}-N` key (N = 0, 1, …) whose slot `accept` takes.
fn key_where(prefix: &str, accept: impl Fn(u16) -> bool) -> String {
    (0..)
        .map(|n| format!("{prefix}-{n}"))
        .find(|key| accept(redis_keyslot(key.as_bytes())))
        .unwrap_or_default()
}

/// The first hash tag `{room:N}` whose slot `accept` takes: every key and
/// channel named `{room:N}:…` lives in that slot.
fn tag_where(accept: impl Fn(u16) -> bool) -> String {
    (0..)
        .map(|n| format!("{{room:{n}}}"))
        .find(|tag| accept(redis_keyslot(tag.as_bytes())))
        .unwrap_or_default()
}

fn server(master: &Master) -> Server {
    Server::new("127.0.0.1", master.port)
}

/// Waits for the next message on `channel`, skipping others.
async fn next_on(
    messages: &mut broadcast::Receiver<fred::types::Message>,
    channel: &str,
    timeout: Duration,
) -> Result<String, String> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, messages.recv()).await {
            Err(_) => return Err(format!("nothing on {channel} within {timeout:?}")),
            Ok(Err(error)) => return Err(format!("message stream: {error}")),
            Ok(Ok(message)) if message.channel == channel => {
                return message
                    .value
                    .convert::<String>()
                    .map_err(|error| error.to_string());
            }
            Ok(Ok(_)) => {}
        }
    }
}

/// Sum over every node of one `CLUSTER INFO` counter (absent means 0).
async fn cluster_counter(cluster: &RedisCluster, ports: &[u16], field: &str) -> i64 {
    let mut total = 0;
    for &port in ports {
        let info = cluster
            .node(port)
            .expect("node")
            .cmd(&["CLUSTER", "INFO"])
            .await
            .expect("CLUSTER INFO");
        total += info
            .as_str()
            .unwrap_or_default()
            .lines()
            .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|value| value.trim().parse::<i64>().ok())
            .unwrap_or(0);
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_scripts_and_streams_are_routed_by_hash_slot() {
    let cluster = RedisCluster::start().await.expect("cluster");
    let masters = cluster.masters().await.expect("masters");
    assert_eq!(masters.len(), 3, "{masters:?}");
    let client = connect(&cluster.url()).await.expect("client");

    // One key per master: each lands on its slot's master, the others redirect.
    for (n, master) in masters.iter().enumerate() {
        let key = key_where("key", |slot| master.owns(slot));
        let () = client
            .set(&key, format!("value {n}"), None, None, false)
            .await
            .expect("SET");
        let value: String = client.get(&key).await.expect("GET");
        assert_eq!(value, format!("value {n}"));
        let on_master = cluster
            .node(master.port)
            .expect("node")
            .cmd(&["GET", &key])
            .await
            .expect("GET on the master");
        assert_eq!(on_master.as_str(), Some(value.as_str()));
        let other = &masters[(n + 1) % masters.len()];
        let moved = cluster
            .node(other.port)
            .expect("node")
            .cmd(&["GET", &key])
            .await
            .expect_err("another master redirects");
        assert!(moved.to_string().contains("MOVED"), "{moved:#}");
        // Per-node commands: exactly this master holds this key.
        let size: i64 = client
            .with_cluster_node(server(master))
            .custom(
                CustomCommand::new_static("DBSIZE", ClusterHash::Random, false),
                Vec::<Value>::new(),
            )
            .await
            .expect("DBSIZE");
        assert_eq!(size, 1, "master {master:?}");
    }

    // A pipeline spanning the masters: fred routes each command to its slot's node.
    let pipeline = client.pipeline();
    for master in &masters {
        let () = pipeline
            .incr(key_where("piped", |slot| master.owns(slot)))
            .await
            .expect("queue INCR");
    }
    let counts: Vec<i64> = pipeline.all().await.expect("pipeline");
    assert_eq!(counts, [1, 1, 1]);

    // A script over two keys of one hash tag runs; EVALSHA with reload loads
    // it on every master.
    let script = Script::from_lua(TWO_KEYS);
    let keys = vec!["{room:1}:last".to_owned(), "{room:1}:seq".to_owned()];
    for expected in 1..=2 {
        let seq: i64 = script
            .evalsha_with_reload(&client, keys.clone(), vec!["hello"])
            .await
            .expect("EVALSHA, one slot");
        assert_eq!(seq, expected);
    }
    for master in &masters {
        let exists = cluster
            .node(master.port)
            .expect("node")
            .cmd(&["SCRIPT", "EXISTS", script.sha1()])
            .await
            .expect("SCRIPT EXISTS");
        assert_eq!(
            exists,
            chatter_tests::Resp::Array(Some(vec![chatter_tests::Resp::Int(1)])),
            "the script is loaded on {master:?}"
        );
    }

    // Two slots of one master: Redis refuses with CROSSSLOT.
    let first = &masters[0];
    let a = key_where("a", |slot| first.owns(slot));
    let a_slot = redis_keyslot(a.as_bytes());
    let b = key_where("b", |slot| first.owns(slot) && slot != a_slot);
    let error = script
        .evalsha_with_reload::<i64, _, _>(&client, vec![a.clone(), b], vec!["x"])
        .await
        .expect_err("keys of two slots");
    assert!(error.details().contains("CROSSSLOT"), "{error:?}");
    // Two masters: fred refuses before sending (it cannot pick a node).
    let elsewhere = key_where("c", |slot| masters[1].owns(slot));
    let error = script
        .evalsha_with_reload::<i64, _, _>(&client, vec![a.clone(), elsewhere.clone()], vec!["x"])
        .await
        .expect_err("keys of two masters");
    assert_eq!(*error.kind(), ErrorKind::Cluster, "{error:?}");

    // XREADGROUP: streams of one hash tag in one call; of two slots, CROSSSLOT
    // (fred routes by the first stream, Redis checks the rest).
    let streams = ["{s1}:ingest-a".to_owned(), "{s1}:ingest-b".to_owned()];
    let split = [a, elsewhere];
    for stream in streams.iter().chain(&split) {
        let () = client
            .xgroup_create(stream, "workers", "$", true)
            .await
            .expect("XGROUP CREATE");
    }
    let read: Value = client
        .xreadgroup(
            "workers",
            "w1",
            Some(10),
            None,
            false,
            streams.to_vec(),
            vec![">", ">"],
        )
        .await
        .expect("XREADGROUP, one slot");
    assert!(read.is_null(), "nothing added yet: {read:?}");
    let error = client
        .xreadgroup::<Value, _, _, _, _>(
            "workers",
            "w1",
            Some(10),
            None,
            false,
            split.to_vec(),
            vec![">", ">"],
        )
        .await
        .expect_err("XREADGROUP over two slots");
    assert!(error.details().contains("CROSSSLOT"), "{error:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharded_pub_sub_reaches_subscribers_also_from_scripts() {
    let cluster = RedisCluster::start().await.expect("cluster");
    let masters = cluster.masters().await.expect("masters");
    let all_ports = all_ports(&cluster, &masters).await;
    let client = connect(&cluster.url()).await.expect("client");
    let subscriber = connect_subscriber(&cluster.url(), StreamDepth::NOTICES)
        .await
        .expect("subscriber");
    let mut messages = subscriber.message_rx();

    // SPUBLISH reaches an SSUBSCRIBE of the channel (on the slot's master).
    let channel = "{room:7}:events";
    subscriber.ssubscribe(channel).await.expect("SSUBSCRIBE");
    let receivers: i64 = client.spublish(channel, "one").await.expect("SPUBLISH");
    assert_eq!(receivers, 1);
    assert_eq!(
        next_on(&mut messages, channel, WAIT).await,
        Ok("one".into())
    );

    // From inside a script whose key shares the channel's slot.
    let script = Script::from_lua(COUNT_AND_ANNOUNCE);
    let seq: i64 = script
        .evalsha_with_reload(&client, "{room:7}:seq", vec![channel, "from the script"])
        .await
        .expect("script with SPUBLISH");
    assert_eq!(seq, 1);
    assert_eq!(
        next_on(&mut messages, channel, WAIT).await,
        Ok("from the script".into())
    );
    // A channel of another slot: Redis 7.0 only refuses it inside a script
    // when that slot lives on another node; on the same node it is accepted,
    // and would break once the slot moves. Scripts must keep their channels
    // in their keys' slot.
    let channel_slot = redis_keyslot(channel.as_bytes());
    let channel_master = cluster
        .master_of(channel_slot)
        .await
        .expect("channel's master");
    let same_node = tag_where(|slot| channel_master.owns(slot) && slot != channel_slot);
    let seq: i64 = script
        .evalsha_with_reload(
            &client,
            "{room:7}:seq",
            vec![format!("{same_node}:events"), "x".to_owned()],
        )
        .await
        .expect("SPUBLISH to another slot of the same node");
    assert_eq!(seq, 2);
    let other_node = tag_where(|slot| !channel_master.owns(slot));
    let error = script
        .evalsha_with_reload::<i64, _, _>(
            &client,
            "{room:7}:seq",
            vec![format!("{other_node}:events"), "x".to_owned()],
        )
        .await
        .expect_err("SPUBLISH to another node's slot inside a script");
    assert!(error.details().contains("non local key"), "{error:?}");

    // One SSUBSCRIBE is one command for one slot: channels of two slots are
    // refused; one call per slot subscribes each on its own node.
    let other = format!("{}:events", tag_where(|slot| !channel_master.owns(slot)));
    let error = subscriber
        .ssubscribe(vec![channel.to_owned(), other.clone()])
        .await
        .expect_err("SSUBSCRIBE of two slots");
    assert!(error.details().contains("CROSSSLOT"), "{error:?}");
    subscriber
        .ssubscribe(other.as_str())
        .await
        .expect("SSUBSCRIBE");
    let _: i64 = client.spublish(&other, "two").await.expect("SPUBLISH");
    assert_eq!(next_on(&mut messages, &other, WAIT).await, Ok("two".into()));

    // Classic PUBLISH is copied to every node over the cluster bus; SPUBLISH
    // only to the slot's replica.
    subscriber.subscribe("lobby").await.expect("SUBSCRIBE");
    let publish_before =
        cluster_counter(&cluster, &all_ports, "cluster_stats_messages_publish_sent").await;
    let shard_before = cluster_counter(
        &cluster,
        &all_ports,
        "cluster_stats_messages_publishshard_sent",
    )
    .await;
    let _: i64 = client.publish("lobby", "hi").await.expect("PUBLISH");
    assert_eq!(next_on(&mut messages, "lobby", WAIT).await, Ok("hi".into()));
    let _: i64 = client.spublish(channel, "three").await.expect("SPUBLISH");
    assert_eq!(
        next_on(&mut messages, channel, WAIT).await,
        Ok("three".into())
    );
    let publish_sent = cluster_counter(&cluster, &all_ports, "cluster_stats_messages_publish_sent")
        .await
        - publish_before;
    let shard_sent = cluster_counter(
        &cluster,
        &all_ports,
        "cluster_stats_messages_publishshard_sent",
    )
    .await
        - shard_before;
    println!("cluster bus messages: one PUBLISH {publish_sent}, one SPUBLISH {shard_sent}");
    assert_eq!(publish_sent, 5, "PUBLISH goes to the 5 other nodes");
    assert_eq!(shard_sent, 1, "SPUBLISH goes to the slot's replica only");
}

/// The ports of all six nodes (masters and their replicas), from the masters'
/// `INFO replication`.
async fn all_ports(cluster: &RedisCluster, masters: &[Master]) -> Vec<u16> {
    let mut ports = Vec::new();
    for master in masters {
        ports.push(master.port);
        let info = cluster
            .node(master.port)
            .expect("node")
            .cmd(&["INFO", "replication"])
            .await
            .expect("INFO");
        for line in info.as_str().unwrap_or_default().lines() {
            if line.starts_with("slave")
                && let Some(port) = line
                    .split(',')
                    .find_map(|field| field.strip_prefix("port="))
                    .and_then(|port| port.parse().ok())
            {
                ports.push(port);
            }
        }
    }
    ports
}

/// Re-subscribes everything on every reconnect, as the gateway's hub does,
/// and records which node each reconnect was to.
fn resubscribe_on_reconnect(subscriber: &SubscriberClient) -> Arc<Mutex<Vec<(Instant, Server)>>> {
    let reconnects = Arc::new(Mutex::new(Vec::new()));
    let mut events = subscriber.reconnect_rx();
    let subscriber = subscriber.clone();
    let seen = reconnects.clone();
    tokio::spawn(async move {
        while let Ok(server) = events.recv().await {
            if let Ok(mut seen) = seen.lock() {
                seen.push((Instant::now(), server));
            }
            if let Err(error) = subscriber.resubscribe_all().await {
                eprintln!("resubscribe failed: {error:?}");
            }
        }
    });
    reconnects
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_master_is_replaced_and_clients_recover_by_themselves() {
    let mut cluster = RedisCluster::start().await.expect("cluster");
    let masters = cluster.masters().await.expect("masters");
    let doomed = masters[0].clone();
    let survivor = masters[1].clone();
    let client = connect(&cluster.url()).await.expect("client");
    let subscriber = connect_subscriber(&cluster.url(), StreamDepth::NOTICES)
        .await
        .expect("subscriber");
    let reconnects = resubscribe_on_reconnect(&subscriber);
    let mut messages = subscriber.message_rx();

    // A key, a channel and a script on the master about to die.
    let tag = tag_where(|slot| doomed.owns(slot));
    let key = format!("{tag}:last");
    let channel = format!("{tag}:events");
    let () = client
        .set(&key, "before", None, None, false)
        .await
        .expect("SET");
    subscriber
        .ssubscribe(channel.as_str())
        .await
        .expect("SSUBSCRIBE");
    let _: i64 = client.spublish(&channel, "before").await.expect("SPUBLISH");
    assert_eq!(
        next_on(&mut messages, &channel, WAIT).await,
        Ok("before".into())
    );
    let script = Script::from_lua(COUNT_AND_ANNOUNCE);
    let seq: i64 = script
        .evalsha_with_reload(
            &client,
            format!("{tag}:seq"),
            vec![channel.as_str(), "scripted"],
        )
        .await
        .expect("script");
    assert_eq!(seq, 1);
    assert_eq!(
        next_on(&mut messages, &channel, WAIT).await,
        Ok("scripted".into())
    );
    let survivor_key = key_where("other", |slot| survivor.owns(slot));
    // Replication is asynchronous: a write acknowledged just before the kill
    // may never reach the replica (it happened in 1 of 4 runs). WAIT until
    // the replica has everything, so the counter below is known.
    let synced: i64 = client
        .custom(
            CustomCommand::new_static(
                "WAIT",
                ClusterHash::Custom(redis_keyslot(key.as_bytes())),
                false,
            ),
            vec![1, 1000],
        )
        .await
        .expect("WAIT");
    assert_eq!(synced, 1, "the replica acknowledged");

    let killed_at = Instant::now();
    let killed = cluster.kill_master(0).await.expect("kill -9");
    assert_eq!(killed, doomed);

    // Writes to the dead master's slots until one succeeds (each attempt ends
    // within the product's 3 s command timeout).
    let writes = async {
        let mut failed = 0;
        loop {
            match client
                .set::<(), _, _>(&key, "after", None, None, false)
                .await
            {
                Ok(()) => return (killed_at.elapsed(), failed),
                Err(_) if killed_at.elapsed() < WAIT => failed += 1,
                Err(error) => panic!("no write succeeded within {WAIT:?}: {error:?}"),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    // Meanwhile, the slowest write to a master that stayed up.
    let other_writes = async {
        let mut slowest = Duration::ZERO;
        let mut failed = 0;
        while killed_at.elapsed() < Duration::from_secs(6) {
            let started = Instant::now();
            if client.incr::<i64, _>(&survivor_key).await.is_err() {
                failed += 1;
            }
            slowest = slowest.max(started.elapsed());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        (slowest, failed)
    };
    // SPUBLISHes every 50 ms until the subscription, restored, receives one.
    let deliveries = async {
        let mut n = 0;
        loop {
            n += 1;
            let _ = client
                .spublish::<i64, _, _>(&channel, format!("after {n}"))
                .await;
            match tokio::time::timeout(
                Duration::from_millis(50),
                next_on(&mut messages, &channel, WAIT),
            )
            .await
            {
                Ok(Ok(text)) if text.starts_with("after") => return killed_at.elapsed(),
                _ if killed_at.elapsed() > WAIT => panic!("no SPUBLISH arrived within {WAIT:?}"),
                _ => {}
            }
        }
    };
    let ((first_write, failed_writes), (slowest_other, failed_other), first_delivery) =
        tokio::join!(writes, other_writes, deliveries);
    let masters_after = cluster.wait_for_failover(&killed).await.expect("failover");
    let promoted = masters_after
        .iter()
        .find(|master| master.owns(redis_keyslot(key.as_bytes())))
        .expect("a master serves the key")
        .clone();
    let reconnected: Vec<String> = reconnects
        .lock()
        .map(|seen| {
            seen.iter()
                .map(|(at, server)| format!("{server} at {:?}", at.duration_since(killed_at)))
                .collect()
        })
        .unwrap_or_default();
    println!(
        "kill -9 of master {}: first successful write after {first_write:?} ({failed_writes} failed before), \
         first SPUBLISH received after {first_delivery:?}; writes to a surviving master: slowest {slowest_other:?}, \
         {failed_other} failed; subscriber reconnected to {reconnected:?}; {} took over",
        doomed.addr(),
        promoted.addr()
    );
    assert_ne!(promoted.port, doomed.port);
    assert!(
        reconnected
            .iter()
            .any(|event| event.starts_with(&promoted.addr())),
        "the subscriber reconnected to the promoted replica: {reconnected:?}"
    );
    let value: String = client.get(&key).await.expect("GET");
    assert_eq!(value, "after");

    // The promoted replica has the data but not the script cache (Redis does
    // not replicate SCRIPT LOAD): EVALSHA alone fails, with reload it works.
    let error = script
        .evalsha::<i64, _, _, _>(&client, format!("{tag}:seq"), vec![channel.as_str(), "x"])
        .await
        .expect_err("NOSCRIPT on the promoted replica");
    assert!(error.details().starts_with("NOSCRIPT"), "{error:?}");
    let seq: i64 = script
        .evalsha_with_reload(
            &client,
            format!("{tag}:seq"),
            vec![channel.as_str(), "scripted again"],
        )
        .await
        .expect("script after failover");
    assert_eq!(seq, 2, "the counter survived the failover");
    assert_eq!(
        next_on(&mut messages, &channel, WAIT).await,
        Ok("scripted again".into())
    );

    // The killed node comes back as a replica of the one that took over.
    cluster.restart(doomed.port).await.expect("restart");
    let masters_now = cluster.masters().await.expect("masters");
    assert!(
        masters_now.iter().all(|master| master.port != doomed.port),
        "{masters_now:?}"
    );
    let role = cluster
        .node(doomed.port)
        .expect("node")
        .cmd(&["ROLE"])
        .await
        .expect("ROLE");
    let chatter_tests::Resp::Array(Some(fields)) = role else {
        panic!("ROLE: {role:?}")
    };
    assert_eq!(fields.first().and_then(|f| f.as_str()), Some("slave"));
    assert_eq!(
        fields.get(2).and_then(|f| f.as_int()),
        Some(i64::from(promoted.port))
    );
}
