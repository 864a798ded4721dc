//! What an operator sees: a drain that keeps answering HTTP on new connections,
//! a worker that finishes its batch before it exits, Redis durability warnings,
//! metrics that exist from the first second, and old pods that still start
//! on a database a newer release has migrated.
//! Cluster only (the drain and the worker are about separate processes; the
//! embedded mode's drain is in `embedded.rs`).

use chatter_tests::chat::{create_room, ensure_users, send_and_confirm, stored_messages};
use chatter_tests::redis::Resp;
use chatter_tests::{Cluster, Incoming, binaries, eventually};
use std::time::{Duration, Instant};

/// A client that opens a new TCP connection for every request, as a kubelet
/// probe or a load balancer health check does: a kept-alive connection would
/// hide a listener that stopped accepting.
fn fresh_connections() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(5))
        .build()
        .expect("HTTP client")
}

/// One probe of the drain: what each kind of request got, on new connections.
#[derive(Debug, Default)]
struct DrainSample {
    healthz: Option<u16>,
    readyz: Option<(u16, String)>,
    rest: Option<u16>,
    upgrade: Option<(u16, String)>,
}

async fn sample(http: &reqwest::Client, base: &str, token: &str) -> DrainSample {
    let status = |r: reqwest::Response| r.status().as_u16();
    let healthz = http
        .get(format!("{base}/healthz"))
        .send()
        .await
        .ok()
        .map(status);
    let readyz = match http.get(format!("{base}/readyz")).send().await {
        Ok(response) => {
            let code = response.status().as_u16();
            Some((code, response.text().await.unwrap_or_default()))
        }
        Err(_) => None,
    };
    let rest = http
        .get(format!("{base}/rooms"))
        .bearer_auth(token)
        .send()
        .await
        .ok()
        .map(status);
    // A WebSocket handshake by hand: the status of the answer is what matters.
    let upgrade = match http
        .get(format!("{base}/ws?token={token}"))
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await
    {
        Ok(response) => {
            let code = response.status().as_u16();
            let body = if code == 101 {
                String::new()
            } else {
                response.text().await.unwrap_or_default()
            };
            Some((code, body))
        }
        Err(_) => None,
    };
    DrainSample {
        healthz,
        readyz,
        rest,
        upgrade,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_draining_gateway_keeps_answering_http_on_new_connections_until_its_last_socket_is_gone()
{
    const WINDOW: Duration = Duration::from_secs(4);
    const SOCKETS: usize = 20;
    let mut cluster = Cluster::builder(binaries!())
        .gateways(1)
        .env("DRAIN_WINDOW_SECS", "4")
        .start()
        .await
        .expect("cluster");
    ensure_users(&cluster, &["alice", "bob"])
        .await
        .expect("users");
    let base = cluster.gateway(0).http_url();
    let token = cluster.token("bob");
    let mut sockets = Vec::new();
    for _ in 0..SOCKETS {
        sockets.push(
            cluster
                .connect_ws(0, &cluster.token("alice"))
                .await
                .expect("connect"),
        );
    }
    let http = fresh_connections();
    let before = sample(&http, &base, &token).await;
    assert_eq!(before.healthz, Some(200), "{before:?}");
    assert_eq!(before.readyz.as_ref().map(|r| r.0), Some(200), "{before:?}");
    assert_eq!(before.rest, Some(200), "{before:?}");
    assert_eq!(
        before.upgrade.as_ref().map(|u| u.0),
        Some(101),
        "{before:?}"
    );

    let closes = tokio::spawn(async move {
        let mut codes = Vec::new();
        for mut socket in sockets {
            loop {
                match socket.recv(Duration::from_secs(20)).await {
                    Ok(Incoming::Closed { code, .. }) => {
                        codes.push(code);
                        break;
                    }
                    Ok(Incoming::Frame(_)) => {}
                    Err(error) => panic!("no close frame: {error:#}"),
                }
            }
        }
        codes
    });

    let started = Instant::now();
    cluster.gateway(0).sigterm().expect("SIGTERM");
    let mut samples = Vec::new();
    let mut first_not_ready = None;
    while cluster.gateway_mut(0).is_running() && started.elapsed() < WINDOW * 3 {
        let probe = sample(&http, &base, &token).await;
        if first_not_ready.is_none() && probe.readyz.as_ref().is_some_and(|r| r.0 == 503) {
            first_not_ready = Some(started.elapsed());
        }
        samples.push((started.elapsed(), probe));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = cluster
        .gateway_mut(0)
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("the gateway exits after its drain");
    let exited = started.elapsed();
    assert!(status.success(), "a drained gateway exits 0: {status:?}");
    let codes = closes.await.expect("socket readers");
    assert!(codes.iter().all(|c| *c == 4007), "{codes:?}");

    // Every probe taken while the drain ran (all sockets not yet closed: within
    // the window, and before the gateway exited — each socket closes at a random
    // moment of the window, so the last one may close well before its end) was
    // answered, on a new connection.
    let drained = WINDOW.min(exited);
    let during: Vec<_> = samples
        .iter()
        .filter(|(at, _)| *at + Duration::from_millis(500) < drained)
        .collect();
    assert!(
        during.len() >= 10,
        "probed the drain often enough: {}",
        during.len()
    );
    for (at, probe) in &during {
        assert_eq!(probe.healthz, Some(200), "healthz at {at:?}: {probe:?}");
        let (code, body) = probe.readyz.clone().unwrap_or_default();
        if *at > Duration::from_millis(300) {
            assert_eq!(code, 503, "readyz at {at:?}: {probe:?}");
            assert!(body.contains("draining"), "readyz says why: {body}");
        }
        assert_eq!(probe.rest, Some(200), "REST at {at:?}: {probe:?}");
        let (code, body) = probe.upgrade.clone().unwrap_or_default();
        if *at > Duration::from_millis(300) {
            assert_eq!(code, 503, "upgrade at {at:?}: {probe:?}");
            assert!(
                body.contains("\"draining\""),
                "upgrade refusal code: {body}"
            );
        }
    }
    let last_answer = samples
        .iter()
        .filter(|(_, p)| p.healthz == Some(200))
        .map(|(at, _)| *at)
        .max()
        .unwrap_or_default();
    eprintln!(
        "drain with new connections: readyz 503 after {:?}; {} probes answered, last healthz 200 at {last_answer:?}; \
         exit 0 after {exited:?} (window {WINDOW:?})",
        first_not_ready.unwrap_or_default(),
        samples
            .iter()
            .filter(|(_, p)| p.healthz == Some(200))
            .count(),
    );
    assert!(
        first_not_ready.is_some_and(|at| at < Duration::from_secs(1)),
        "readyz turns 503 at once: {first_not_ready:?}"
    );
    assert!(
        last_answer >= WINDOW - Duration::from_secs(1),
        "HTTP answered through the window: last at {last_answer:?}"
    );
    // Afterwards nothing listens.
    assert!(
        http.get(format!("{base}/healthz")).send().await.is_err(),
        "the listener is closed after exit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_draining_worker_stores_and_acknowledges_what_it_read_answers_probes_and_exits_zero() {
    const MESSAGES: usize = 300;
    let mut cluster = Cluster::builder(binaries!())
        .gateways(1)
        .workers(1)
        .env("FRAMES_PER_SEC", "100000")
        .env("WORKER_BATCH_SIZE", "20")
        .start()
        .await
        .expect("cluster");
    ensure_users(&cluster, &["alice", "bob"])
        .await
        .expect("users");
    let room = create_room(&cluster, 0, "alice", &["bob"])
        .await
        .expect("room");
    let probes = cluster.worker(0).http_url();
    let http = fresh_connections();
    assert_eq!(
        http.get(format!("{probes}/readyz"))
            .send()
            .await
            .expect("readyz")
            .status(),
        200
    );
    let mut alice = cluster
        .connect_ws(0, &cluster.token("alice"))
        .await
        .expect("alice");
    let mut send = async |from: usize, to: usize| {
        for i in from..to {
            let confirmation =
                send_and_confirm(&mut alice, &room, &format!("m{i}"), &format!("t{i}"))
                    .await
                    .expect("sent");
            assert_eq!(confirmation["confirmed"], true);
        }
    };
    send(0, MESSAGES / 2).await;
    // Postgres hangs: the worker's next batch is stuck in its insert, in hand.
    cluster.postgres().pause().expect("SIGSTOP postgres");
    send(MESSAGES / 2, MESSAGES).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sigterm_at = Instant::now();
    cluster.worker(0).sigterm().expect("SIGTERM");
    let mut drain_probes = Vec::new();
    while sigterm_at.elapsed() < Duration::from_secs(2) {
        let healthz = http.get(format!("{probes}/healthz")).send().await;
        let readyz = http.get(format!("{probes}/readyz")).send().await;
        drain_probes.push((
            healthz.map(|r| r.status().as_u16()).ok(),
            readyz.map(|r| r.status().as_u16()).ok(),
        ));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        cluster.worker_mut(0).is_running(),
        "the worker waits for the batch in hand"
    );
    cluster.postgres().resume().expect("SIGCONT postgres");
    let status = cluster
        .worker_mut(0)
        .wait_exit(Duration::from_secs(15))
        .await
        .expect("the worker exits");
    let took = sigterm_at.elapsed();
    assert!(status.success(), "a drained worker exits 0: {status:?}");
    eprintln!(
        "worker drain (Postgres paused 2 s): exit 0 after {took:?}; {} probes on new connections during the drain",
        drain_probes.len()
    );
    for probe in &drain_probes {
        assert_eq!(
            *probe,
            (Some(200), Some(503)),
            "healthz, readyz while draining"
        );
    }
    // Nothing read was left pending for another worker's reclaim.
    let pending = cluster
        .redis()
        .cmd(&["XPENDING", "chatter:ingest", "persisters"])
        .await
        .expect("XPENDING");
    match pending {
        Resp::Array(Some(items)) => {
            assert_eq!(
                items.first(),
                Some(&Resp::Int(0)),
                "no pending entry: {items:?}"
            )
        }
        other => panic!("unexpected XPENDING reply {other:?}"),
    }
    // A new worker stores the rest; every confirmed message exactly once.
    cluster.add_worker().await.expect("a new worker");
    let db = cluster.db();
    eventually(Duration::from_secs(20), || async {
        let stored: i64 =
            sqlx::query_scalar("SELECT count(*) FROM messages WHERE room_id = $1::uuid")
                .bind(&room)
                .fetch_one(&db)
                .await?;
        anyhow::ensure!(stored == MESSAGES as i64, "stored {stored} of {MESSAGES}");
        Ok(())
    })
    .await
    .expect("all stored once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_without_persistence_is_named_in_logs_and_readiness_and_refused_when_required() {
    let mut cluster = Cluster::builder(binaries!())
        .gateways(1)
        .workers(1)
        .start()
        .await
        .expect("cluster");
    // The harness's Redis keeps an AOF: both processes start without a warning.
    let (status, body) = cluster.api(0).get("/readyz", "").await.expect("readyz");
    assert_eq!(status, 200);
    assert_eq!(body, "ready");
    assert!(!cluster.gateway(0).logs().contains("Redis is not durable"));

    cluster
        .redis()
        .cmd(&["CONFIG", "SET", "appendonly", "no"])
        .await
        .expect("CONFIG SET");
    cluster
        .redis()
        .cmd(&["CONFIG", "SET", "maxmemory-policy", "allkeys-lru"])
        .await
        .expect("CONFIG SET");
    let i = cluster
        .add_gateway()
        .await
        .expect("a gateway starts, warning");
    let logs = cluster.gateway(i).logs();
    assert!(logs.contains("Redis is not durable"), "{logs}");
    assert!(
        logs.contains("appendonly") && logs.contains("allkeys-lru"),
        "{logs}"
    );
    let (status, body) = cluster.api(i).get("/readyz", "").await.expect("readyz");
    assert_eq!(status, 200, "{body}");
    let body = body.as_str().unwrap_or_default().to_owned();
    assert!(
        body.contains("not durable") && body.contains("appendonly"),
        "{body}"
    );
    let w = cluster
        .add_worker()
        .await
        .expect("a worker starts, warning");
    assert!(cluster.worker(w).logs().contains("Redis is not durable"));

    let refused = cluster
        .add_gateway_with(&[("REDIS_REQUIRE_DURABLE", "true")])
        .await;
    let error = format!("{:#}", refused.expect_err("a gateway refuses to start"));
    assert!(error.contains("REDIS_REQUIRE_DURABLE"), "{error}");
    let refused = cluster
        .add_worker_with(&[("REDIS_REQUIRE_DURABLE", "true")])
        .await;
    let error = format!("{:#}", refused.expect_err("a worker refuses to start"));
    assert!(error.contains("REDIS_REQUIRE_DURABLE"), "{error}");
}

/// Every series an operator's dashboards and alerts use, present with value 0
/// before anything happened.
const GATEWAY_SERIES: &[&str] = &[
    "chatter_connections",
    "chatter_frames_in_total",
    "chatter_frames_out_total",
    "chatter_publish_seconds_count",
    "chatter_delivery_seconds_count",
    "chatter_bus_errors_total",
    "chatter_db_errors_total",
    "chatter_slow_consumer_closes_total",
    "chatter_send_queue_frames",
    "chatter_send_queue_max_frames",
    "chatter_draining",
    "chatter_upgrades_refused_total{reason=\"draining\"}",
    "chatter_http_connections_refused_total{cap=\"per_ip\"}",
];
const WORKER_SERIES: &[&str] = &[
    "chatter_worker_batch_size_count",
    "chatter_worker_lag_seconds_count",
    "chatter_worker_stored_total",
    "chatter_notifications_total{outcome=\"sent\"}",
    "chatter_notifications_total{outcome=\"dead_lettered\"}",
    "chatter_ingest_backlog",
    "chatter_ingest_pending",
    "chatter_redis_errors_total",
    "chatter_db_errors_total",
    "chatter_draining",
];

fn assert_series_at_zero(text: &str, series: &[&str]) {
    for name in series {
        let line = text
            .lines()
            .find(|line| line.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("{name} is missing from a fresh /metrics:\n{text}"));
        assert!(line.ends_with(" 0"), "{line}");
        let family = name.split(['{']).next().unwrap_or(name);
        let family = family.strip_suffix("_count").unwrap_or(family);
        assert!(
            text.contains(&format!("# HELP {family} ")),
            "{family} has no HELP text"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_gateway_and_worker_serve_every_metric_at_zero_with_help() {
    let cluster = Cluster::builder(binaries!())
        .gateways(1)
        .workers(1)
        .start()
        .await
        .expect("cluster");
    let http = fresh_connections();
    for (base, series) in [
        (cluster.gateway(0).http_url(), GATEWAY_SERIES),
        (cluster.worker(0).http_url(), WORKER_SERIES),
    ] {
        let text = http
            .get(format!("{base}/metrics"))
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .expect("metrics");
        assert_series_at_zero(&text.text().await.expect("text"), series);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_gateway_marks_kept_alive_responses_connection_close() {
    let cluster = Cluster::builder(binaries!())
        .gateways(1)
        .env("DRAIN_WINDOW_SECS", "3")
        .start()
        .await
        .expect("cluster");
    let _socket = cluster
        .connect_ws(0, &cluster.token("alice"))
        .await
        .expect("a socket holds the drain open");
    let base = cluster.gateway(0).http_url();
    let kept_alive = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let before = kept_alive
        .get(format!("{base}/healthz"))
        .send()
        .await
        .expect("healthz");
    assert!(before.headers().get("connection").is_none());
    cluster.gateway(0).sigterm().expect("SIGTERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let during = kept_alive
        .get(format!("{base}/healthz"))
        .send()
        .await
        .expect("healthz");
    assert_eq!(during.status(), 200);
    assert_eq!(
        during
            .headers()
            .get("connection")
            .and_then(|v| v.to_str().ok()),
        Some("close"),
        "clients are moved off a draining pod"
    );
}

/// A rolling upgrade: pods of the release before restart while the database
/// already holds a migration of the release after (sqlx's default is to refuse
/// to start then, which would crash-loop every old pod until the rollout ends).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_and_worker_start_on_a_database_a_newer_release_has_migrated() {
    let mut cluster = Cluster::builder(binaries!())
        .gateways(1)
        .workers(1)
        .start()
        .await
        .expect("cluster");
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
         VALUES (999999, 'a migration of a newer release', true, '\\x00'::bytea, 0)",
    )
    .execute(&cluster.db())
    .await
    .expect("a newer release's migration");
    cluster
        .restart_gateway(0)
        .await
        .expect("the gateway starts");
    cluster.restart_worker(0).await.expect("the worker starts");
    let token = cluster.token("alice");
    ensure_users(&cluster, &["alice", "bob"])
        .await
        .expect("users");
    let room = create_room(&cluster, 0, "alice", &["bob"])
        .await
        .expect("room");
    let mut alice = cluster.connect_ws(0, &token).await.expect("socket");
    send_and_confirm(&mut alice, &room, "after the restart", "t-1")
        .await
        .expect("confirmed");
    let stored = stored_messages(&cluster, 0, "bob", &room, 1)
        .await
        .expect("stored by the restarted worker");
    assert_eq!(stored[0]["message"], "after the restart", "{stored:?}");
}
