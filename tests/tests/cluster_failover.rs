//! chatter on a real six-node Redis Cluster (3 masters, 3 replicas,
//! `appendonly yes`): rooms spread over every master, each message stored once,
//! and a master `kill -9`ed under traffic — its replica takes over, sends in the
//! window are refused with `unavailable`, delivery and persistence resume by
//! themselves, and no confirmed message is lost or stored twice (with
//! `REDIS_WAIT_REPLICAS` at its cluster default of 1, a batch is confirmed once
//! its master's replica holds it; the promoted master, alone, confirms on its
//! own). The killed node is then started again, as an orchestrator would, and
//! rejoins as a replica. A dead consumer's pending entries on every shard are
//! reclaimed by a worker added later, and a worker added to a running one takes
//! load without a restart. Run with `--nocapture` for the failover figures.

use anyhow::{Context, Result, ensure};
use chatter_tests::chat::{FRAME_WAIT, connect_ready, create_room, ensure_users, send_and_confirm};
use chatter_tests::{Cluster, Incoming, RedisServer, Resp, WsClient, binaries, eventually};
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// Rooms per test: random ids, so enough that every master surely holds some
/// (with 12, one of three masters got none about once in 40 runs).
const ROOMS: usize = 24;
/// How long persistence may take to catch up.
const STORED_WAIT: Duration = Duration::from_secs(30);

async fn start() -> Result<Cluster> {
    Cluster::builder(binaries!())
        .gateways(2)
        .workers(2)
        .on_redis_cluster()
        // The test's one sender goes as fast as confirmations come.
        .env("FRAMES_PER_SEC", "1000")
        .start()
        .await
}

/// `ROOMS` rooms of alice (gateway 0) and bob (gateway 1), and the master port
/// holding each room's keys (read off the masters, not computed).
async fn rooms_on_masters(cluster: &Cluster) -> Result<Vec<(String, u16)>> {
    ensure_users(cluster, &["alice", "bob"]).await?;
    let mut rooms = Vec::new();
    for _ in 0..ROOMS {
        rooms.push(create_room(cluster, 0, "alice", &["bob"]).await?);
    }
    let masters = cluster.redis_cluster().masters().await?;
    let mut placed = Vec::new();
    for room in rooms {
        let mut owner = None;
        for master in &masters {
            let node = cluster
                .redis_cluster()
                .node(master.port)
                .context("master node")?;
            let keys = node
                .cmd(&["KEYS", &format!("chatter:*:seq:{room}")])
                .await?;
            if matches!(keys, Resp::Array(Some(ref keys)) if !keys.is_empty()) {
                owner = Some(master.port);
            }
        }
        placed.push((
            room.clone(),
            owner.with_context(|| format!("no master holds {room}"))?,
        ));
    }
    Ok(placed)
}

/// Collects every `MessageReceived` on `ws` as `(room, seq, id)` until dropped.
fn collect_received(mut ws: WsClient) -> Arc<Mutex<Vec<(String, i64, String)>>> {
    let received = Arc::new(Mutex::new(Vec::new()));
    let sink = received.clone();
    tokio::spawn(async move {
        while let Ok(incoming) = ws.recv(Duration::from_secs(120)).await {
            match incoming {
                Incoming::Frame(frame) if frame["type"] == "MessageReceived" => {
                    let data = &frame["data"];
                    let entry = (
                        data["room_id"].as_str().unwrap_or_default().to_owned(),
                        data["seq"].as_i64().unwrap_or(-1),
                        data["id"].as_str().unwrap_or_default().to_owned(),
                    );
                    sink.lock().expect("lock").push(entry);
                }
                Incoming::Frame(_) => {}
                Incoming::Closed { .. } => return,
            }
        }
    });
    received
}

/// `(id, room, seq)` of every stored message.
async fn stored(cluster: &Cluster) -> Result<Vec<(String, String, i64)>> {
    Ok(
        sqlx::query_as("SELECT id::text, room_id::text, seq FROM messages ORDER BY room_id, seq")
            .fetch_all(&cluster.db())
            .await?,
    )
}

/// Waits until exactly the messages `confirmed` (id → room) are stored, each
/// once, with gap-free seqs per room from 1.
async fn stored_exactly(cluster: &Cluster, confirmed: &HashMap<String, String>) -> Result<()> {
    eventually(STORED_WAIT, || async {
        let rows = stored(cluster).await?;
        let ids: HashSet<&str> = rows.iter().map(|(id, _, _)| id.as_str()).collect();
        ensure!(ids.len() == rows.len(), "a message is stored twice");
        let missing: Vec<_> = confirmed
            .keys()
            .filter(|id| !ids.contains(id.as_str()))
            .collect();
        ensure!(
            missing.is_empty(),
            "{} confirmed messages not stored yet",
            missing.len()
        );
        ensure!(
            rows.len() == confirmed.len(),
            "{} stored, {} confirmed",
            rows.len(),
            confirmed.len()
        );
        let mut next: HashMap<&str, i64> = HashMap::new();
        for (_, room, seq) in &rows {
            let expected = next.entry(room.as_str()).or_insert(1);
            ensure!(
                *seq == *expected,
                "room {room}: seq {seq}, expected {expected}"
            );
            *expected += 1;
        }
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rooms_spread_over_every_master_and_each_message_is_stored_once() {
    let cluster = start().await.expect("cluster");
    let run = async {
        let rooms = rooms_on_masters(&cluster).await?;
        let masters: HashSet<u16> = rooms.iter().map(|(_, port)| *port).collect();
        ensure!(
            masters.len() == 3,
            "{ROOMS} rooms on {} masters: {rooms:?}",
            masters.len()
        );
        let bob = collect_received(connect_ready(&cluster, 1, "bob").await?);
        let mut alice = connect_ready(&cluster, 0, "alice").await?;
        let mut confirmed = HashMap::new();
        for round in 0..5 {
            for (n, (room, _)) in rooms.iter().enumerate() {
                let temp = format!("m-{round}-{n}");
                let answer = send_and_confirm(&mut alice, room, "hello", &temp).await?;
                ensure!(answer["confirmed"] == true, "{answer}");
                ensure!(answer["seq"] == round + 1, "{answer}");
                // A resend is answered with the original, and is not stored again.
                if round == 2 {
                    let again = send_and_confirm(&mut alice, room, "hello", &temp).await?;
                    ensure!(
                        again["message_id"] == answer["message_id"],
                        "{again} vs {answer}"
                    );
                }
                confirmed.insert(
                    answer["message_id"].as_str().unwrap_or_default().to_owned(),
                    room.clone(),
                );
            }
        }
        eventually(FRAME_WAIT, || async {
            let received = bob.lock().expect("lock").clone();
            ensure!(
                received.len() == 5 * ROOMS,
                "bob has {} of {}",
                received.len(),
                5 * ROOMS
            );
            for (room, _) in &rooms {
                let seqs: Vec<i64> = received
                    .iter()
                    .filter(|(r, _, _)| r == room)
                    .map(|(_, seq, _)| *seq)
                    .collect();
                ensure!(seqs == vec![1, 2, 3, 4, 5], "room {room}: {seqs:?}");
            }
            Ok(())
        })
        .await?;
        stored_exactly(&cluster, &confirmed).await?;
        // Every shard's stream is emptied by the workers.
        for (node, streams) in ingest_streams(&cluster).await? {
            for stream in &streams {
                let length = node.cmd(&["XLEN", stream]).await?;
                ensure!(length.as_int() == Some(0), "{stream} holds {length:?}");
            }
        }
        Ok(())
    };
    if let Err(error) = run.await {
        panic!("{error:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_master_killed_under_traffic_fails_over_and_no_confirmed_message_is_lost() {
    let mut cluster = start().await.expect("cluster");
    let run = async {
        let rooms = rooms_on_masters(&cluster).await?;
        let bob = collect_received(connect_ready(&cluster, 1, "bob").await?);
        let mut alice = connect_ready(&cluster, 0, "alice").await?;
        let victim = cluster.redis_cluster().masters().await?[0].clone();
        let on_victim: HashSet<&str> = rooms
            .iter()
            .filter(|(_, port)| *port == victim.port)
            .map(|(room, _)| room.as_str())
            .collect();
        ensure!(!on_victim.is_empty(), "no room on {victim:?}");

        // One sender, round robin over the rooms, before, during and after the kill.
        let mut confirmed: HashMap<String, String> = HashMap::new();
        let mut refused: Vec<(String, String, Duration)> = Vec::new();
        let mut killed_at = None;
        let mut recovered_after = None;
        let started = Instant::now();
        let mut n = 0usize;
        loop {
            let (room, _) = &rooms[n % ROOMS];
            let temp = format!("t-{n}");
            n += 1;
            if killed_at.is_none() && started.elapsed() > Duration::from_secs(1) {
                cluster.redis_cluster_mut().kill_master(0).await?;
                killed_at = Some(Instant::now());
            }
            let answer: Value = send_and_confirm(&mut alice, room, "payload", &temp).await?;
            let since_kill = killed_at.map(|at| at.elapsed()).unwrap_or_default();
            if answer["confirmed"] == true {
                confirmed.insert(
                    answer["message_id"].as_str().unwrap_or_default().to_owned(),
                    room.clone(),
                );
                if killed_at.is_some()
                    && recovered_after.is_none()
                    && on_victim.contains(room.as_str())
                {
                    recovered_after = Some(since_kill);
                }
            } else {
                ensure!(
                    answer["reason"] == "unavailable",
                    "refused for another reason: {answer}"
                );
                refused.push((room.clone(), temp, since_kill));
            }
            if recovered_after.is_some_and(|after| since_kill > after + Duration::from_secs(2)) {
                break;
            }
            ensure!(
                since_kill < Duration::from_secs(30),
                "no send to the killed master's rooms succeeded within 30 s"
            );
        }
        cluster.redis_cluster().wait_for_failover(&victim).await?;
        cluster.redis_cluster_mut().restart(victim.port).await?;
        let restarted_after = killed_at.map(|at| at.elapsed());
        let refused_count = refused.len();
        let window = refused
            .iter()
            .map(|(_, _, at)| *at)
            .max()
            .unwrap_or_default();
        // A refused message may have been accepted before the answer was lost:
        // resending its temp id is answered with the original or accepts it.
        for (room, temp, _) in &refused {
            let answer = send_and_confirm(&mut alice, room, "payload", temp).await?;
            ensure!(
                answer["confirmed"] == true,
                "resend after the failover: {answer}"
            );
            confirmed.insert(
                answer["message_id"].as_str().unwrap_or_default().to_owned(),
                room.clone(),
            );
        }
        // Live delivery to bob resumed in the rooms of the killed master.
        let room = on_victim.iter().next().context("room")?.to_string();
        let last = send_and_confirm(&mut alice, &room, "after", "last").await?;
        ensure!(last["confirmed"] == true, "{last}");
        confirmed.insert(
            last["message_id"].as_str().unwrap_or_default().to_owned(),
            room,
        );
        let last_id = last["message_id"].as_str().unwrap_or_default().to_owned();
        eventually(FRAME_WAIT, || async {
            let received = bob.lock().expect("lock");
            ensure!(
                received.iter().any(|(_, _, id)| *id == last_id),
                "bob has not received the last message"
            );
            Ok(())
        })
        .await?;
        stored_exactly(&cluster, &confirmed).await?;
        println!(
            "failover: {} sends, {} confirmed, {refused_count} refused (last {window:?} after the kill), \
             the killed master's rooms took sends again {recovered_after:?} after the kill \
             (the node was back as a replica {restarted_after:?} after it, started once sends had resumed); {} stored, each once",
            n,
            n - refused_count,
            confirmed.len()
        );
        Ok(())
    };
    if let Err(error) = run.await {
        panic!("{error:?}");
    }
}

/// Each master, with the shards' ingest streams it holds.
async fn ingest_streams(cluster: &Cluster) -> Result<Vec<(&RedisServer, Vec<String>)>> {
    let mut found = Vec::new();
    for master in cluster.redis_cluster().masters().await? {
        let node = cluster
            .redis_cluster()
            .node(master.port)
            .context("master node")?;
        let streams = match node.cmd(&["KEYS", "chatter:*:ingest"]).await? {
            Resp::Array(Some(keys)) => keys
                .iter()
                .filter_map(|key| key.as_str().map(str::to_owned))
                .collect(),
            other => anyhow::bail!("KEYS answered {other:?}"),
        };
        found.push((node, streams));
    }
    Ok(found)
}

/// `XPENDING <stream> persisters` on every master, summed: entries read and
/// not acknowledged, and how many masters hold some.
async fn pending_on_masters(cluster: &Cluster) -> Result<(i64, usize)> {
    let (mut total, mut masters_holding) = (0, 0);
    for (node, streams) in ingest_streams(cluster).await? {
        let mut here = 0;
        for stream in &streams {
            if let Resp::Array(Some(summary)) =
                node.cmd(&["XPENDING", stream, "persisters"]).await?
            {
                here += summary.first().and_then(Resp::as_int).unwrap_or(0);
            }
        }
        total += here;
        masters_holding += usize::from(here > 0);
    }
    Ok((total, masters_holding))
}

/// One confirmed message to each of `rooms`, recorded in `confirmed`.
async fn send_round(
    alice: &mut WsClient,
    rooms: &[String],
    round: usize,
    confirmed: &mut HashMap<String, String>,
) -> Result<()> {
    for (n, room) in rooms.iter().enumerate() {
        let answer = send_and_confirm(alice, room, "kept", &format!("r{round}-{n}")).await?;
        ensure!(answer["confirmed"] == true, "{answer}");
        confirmed.insert(
            answer["message_id"].as_str().unwrap_or_default().to_owned(),
            room.clone(),
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_consumers_entries_are_reclaimed_on_every_shard_and_a_new_worker_takes_load() {
    let mut cluster = Cluster::builder(binaries!())
        .on_redis_cluster()
        .env("WORKER_CLAIM_IDLE_MS", "1000")
        .env("WORKER_CLAIM_INTERVAL_MS", "300")
        .start()
        .await
        .expect("cluster");
    let run = async {
        ensure_users(&cluster, &["alice", "bob"]).await?;
        let mut rooms = Vec::new();
        for _ in 0..ROOMS {
            rooms.push(create_room(&cluster, 0, "alice", &["bob"]).await?);
        }
        // The first worker made the group on every shard; with it gone,
        // messages wait in their shards' streams.
        cluster.worker_mut(0).kill9();
        let mut alice = connect_ready(&cluster, 0, "alice").await?;
        let mut confirmed = HashMap::new();
        send_round(&mut alice, &rooms, 0, &mut confirmed).await?;
        // A consumer that reads every shard's entries and dies holding them:
        // the test reads them as `w-dead` and never acknowledges.
        for (node, streams) in ingest_streams(&cluster).await? {
            for stream in &streams {
                node.cmd(&[
                    "XREADGROUP",
                    "GROUP",
                    "persisters",
                    "w-dead",
                    "COUNT",
                    "1000",
                    "STREAMS",
                    stream,
                    ">",
                ])
                .await?;
            }
        }
        let (pending, masters) = pending_on_masters(&cluster).await?;
        ensure!(
            pending == ROOMS as i64 && masters == 3,
            "w-dead holds {pending} entries on {masters} masters"
        );
        // A new worker, and nothing else restarted: it takes them over once
        // they have been idle WORKER_CLAIM_IDLE_MS, and stores each once.
        let b = cluster.add_worker_with(&[("WORKER_NAME", "w-b")]).await?;
        stored_exactly(&cluster, &confirmed).await?;
        eventually(STORED_WAIT, || async {
            let (pending, _) = pending_on_masters(&cluster).await?;
            ensure!(pending == 0, "{pending} entries still pending");
            Ok(())
        })
        .await?;
        // Another worker joins; with w-b frozen, the new one alone stores
        // what follows: it read every shard from its start.
        cluster.add_worker_with(&[("WORKER_NAME", "w-c")]).await?;
        let frozen =
            rustix::process::Pid::from_raw(cluster.worker(b).pid() as i32).context("pid")?;
        rustix::process::kill_process(frozen, rustix::process::Signal::STOP)?;
        send_round(&mut alice, &rooms, 1, &mut confirmed).await?;
        let stored_by_c = stored_exactly(&cluster, &confirmed).await;
        rustix::process::kill_process(frozen, rustix::process::Signal::CONT)?;
        stored_by_c
    };
    if let Err(error) = run.await {
        panic!("{error:?}");
    }
}
