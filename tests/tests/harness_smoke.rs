//! Checks the harness itself: real Redis and Postgres start and survive a crash
//! and a restart, the fake notification service records calls, the WebSocket
//! client and child-process wrapper behave, and a whole cluster comes up.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use axum::extract::Query;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chatter_tests::{
    Auth, Cluster, ConnectError, Gateway, Incoming, NotifFake, PostgresServer, RedisServer, Resp,
    WsClient, eventually,
};
use serde_json::{Value, json};

#[tokio::test]
async fn redis_survives_kill_and_restart() {
    let mut redis = RedisServer::start().await.expect("redis starts");
    assert_eq!(
        redis.cmd(&["PING"]).await.expect("ping"),
        Resp::Simple("PONG".into())
    );
    redis.cmd(&["SET", "k", "v"]).await.expect("set");

    redis.kill();
    assert!(!redis.is_running());
    redis.restart().await.expect("redis restarts");
    // The AOF was written (not yet fsynced) before SET replied; a process crash
    // leaves it in the page cache, so the key is back.
    let value = redis.cmd(&["GET", "k"]).await.expect("get");
    assert_eq!(value.as_str(), Some("v"));

    redis.flushall().await.expect("flushall");
    assert_eq!(
        redis.cmd(&["GET", "k"]).await.expect("get"),
        Resp::Bulk(None)
    );
}

#[tokio::test]
async fn postgres_survives_kill_and_restart() {
    let t = Instant::now();
    let mut pg = PostgresServer::start().await.expect("postgres starts");
    eprintln!("postgres started in {:?}", t.elapsed());
    let pool = pg.pool();
    let one: i32 = sqlx::query_scalar("SELECT 1")
        .fetch_one(&pool)
        .await
        .expect("select 1");
    assert_eq!(one, 1);
    sqlx::query("CREATE TABLE t (x int)")
        .execute(&pool)
        .await
        .expect("create");
    sqlx::query("INSERT INTO t VALUES (42)")
        .execute(&pool)
        .await
        .expect("insert");

    pg.kill();
    let t = Instant::now();
    pg.restart().await.expect("postgres restarts");
    eprintln!("postgres restarted in {:?}", t.elapsed());
    let x: i32 = sqlx::query_scalar("SELECT x FROM t")
        .fetch_one(&pool)
        .await
        .expect("row survives");
    assert_eq!(x, 42);

    pg.stop().await.expect("clean stop");
    pg.restart().await.expect("restart after stop");
    let x: i32 = sqlx::query_scalar("SELECT x FROM t")
        .fetch_one(&pg.pool())
        .await
        .expect("row survives");
    assert_eq!(x, 42);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_postgres_servers_start_in_parallel() {
    let t = Instant::now();
    let (a, b) = tokio::join!(PostgresServer::start(), PostgresServer::start());
    let (a, b) = (a.expect("first starts"), b.expect("second starts"));
    eprintln!("two postgres started in {:?}", t.elapsed());
    assert_ne!(a.port(), b.port());
    for pg in [&a, &b] {
        let one: i32 = sqlx::query_scalar("SELECT 1")
            .fetch_one(&pg.pool())
            .await
            .expect("select 1");
        assert_eq!(one, 1);
    }
}

#[tokio::test]
async fn notif_fake_records_calls_and_can_fail() {
    let notif = NotifFake::start().await.expect("fake starts");
    let http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let post = |body: Value| {
        http.post(notif.url())
            .header("Authorization", "secret")
            .json(&body)
            .send()
    };

    let response = post(json!({"username": "bob"})).await.expect("post");
    assert_eq!(response.status(), 200);
    let calls = notif
        .wait_for_calls(1, Duration::from_secs(1))
        .await
        .expect("call recorded");
    assert_eq!(calls[0].path, "/notify");
    assert_eq!(calls[0].authorization.as_deref(), Some("secret"));
    assert_eq!(calls[0].body, json!({"username": "bob"}));

    notif.set_failing(true);
    assert_eq!(post(json!({})).await.expect("post").status(), 503);
    assert_eq!((notif.attempts(), notif.calls().len()), (2, 1));
}

#[tokio::test]
async fn eventually_returns_the_first_success_or_the_last_error() {
    let start = Instant::now();
    let n = eventually(Duration::from_secs(2), || async {
        let waited = start.elapsed();
        if waited < Duration::from_millis(100) {
            anyhow::bail!("only {waited:?}")
        } else {
            Ok(7)
        }
    })
    .await
    .expect("succeeds after ~100 ms");
    assert_eq!(n, 7);

    let err = eventually(Duration::from_millis(100), || async {
        anyhow::bail!("never") as anyhow::Result<()>
    })
    .await
    .expect_err("times out");
    assert!(format!("{err:#}").contains("never"), "{err:#}");
}

/// A tiny WebSocket server standing in for a gateway, to check the client:
/// `?token=bad` is refused with 401; `Ping` gets an unrelated frame then a
/// `Pong`; `Bye` gets a `Disconnection` frame and a 4007 close.
async fn fake_ws_server() -> String {
    async fn ws(Query(query): Query<Vec<(String, String)>>, upgrade: WebSocketUpgrade) -> Response {
        if query.iter().any(|(k, v)| k == "token" && v == "bad") {
            return (StatusCode::UNAUTHORIZED, "bad token").into_response();
        }
        upgrade.on_upgrade(serve).into_response()
    }
    async fn serve(mut socket: WebSocket) {
        while let Some(Ok(Message::Text(text))) = socket.recv().await {
            let frame: Value = serde_json::from_str(text.as_str()).unwrap_or_default();
            let replies = match frame["type"].as_str() {
                Some("Ping") => vec![
                    json!({"type": "Typing", "data": {}}),
                    json!({"type": "Pong", "data": {"n": 1}}),
                ],
                Some("Bye") => vec![json!({"type": "Disconnection", "data": {"code": 4007}})],
                _ => vec![],
            };
            for reply in replies {
                let _ = socket.send(Message::text(reply.to_string())).await;
            }
            if frame["type"] == "Bye" {
                let close = CloseFrame {
                    code: 4007,
                    reason: "ServerShutdown".into(),
                };
                let _ = socket.send(Message::Close(Some(close))).await;
            }
        }
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        axum::serve(
            listener,
            axum::Router::new().route("/ws", axum::routing::get(ws)),
        )
        .await
    });
    format!("ws://{addr}/ws")
}

#[tokio::test]
async fn ws_client_buffers_skipped_frames_and_reports_closes() {
    let url = fake_ws_server().await;
    let t = Duration::from_secs(2);

    let refused = WsClient::connect(&format!("{url}?token=bad"))
        .await
        .err()
        .expect("refused");
    assert!(
        matches!(refused, ConnectError::Http { status: 401, .. }),
        "{refused}"
    );

    let mut ws = WsClient::connect(&format!("{url}?token=good"))
        .await
        .expect("connects");
    ws.send_frame("Ping", json!({})).await.expect("send");
    assert_eq!(
        ws.recv_type("Pong", t).await.expect("pong"),
        json!({"n": 1})
    );
    assert_eq!(ws.skipped().len(), 1, "Typing was kept");
    ws.expect_silence("Pong", Duration::from_millis(100))
        .await
        .expect("no second pong");
    assert_eq!(
        ws.recv(t).await.expect("typing"),
        Incoming::Frame(json!({"type": "Typing", "data": {}}))
    );

    ws.send_frame("Bye", json!({})).await.expect("send");
    let close = ws.expect_close(t).await.expect("closed");
    assert_eq!(
        (close.code, close.reason.as_str()),
        (4007, "ServerShutdown")
    );
    assert_eq!(close.frame("Disconnection"), Some(&json!({"code": 4007})));
    assert!(
        ws.recv_type("Pong", t).await.is_err(),
        "reads after a close fail"
    );
}

/// A shell script posing as a gateway binary.
fn fake_binary(dir: &Path, body: &str) -> PathBuf {
    let path = dir.join("fake-gateway.sh");
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write script");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

/// Spawns a just-written script. Another test thread forking at the moment
/// the script was written can briefly hold it open for writing (ETXTBSY), so
/// that one error is retried.
async fn spawn_script(
    path: &Path,
    env: &[(String, String)],
    log: &Path,
) -> anyhow::Result<Gateway> {
    for _ in 0..20 {
        match Gateway::spawn(path, env, log).await {
            Err(err) if format!("{err:#}").contains("Text file busy") => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => return other,
        }
    }
    anyhow::bail!("{} stayed busy", path.display())
}

#[tokio::test]
async fn child_process_waits_for_the_ready_line_and_handles_signals() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ready = r#"{"level":"INFO","fields":{"message":"listening","addr":"127.0.0.1:4567"}}"#;
    let script =
        format!("echo starting >&2\necho '{ready}'\necho \"greeting=$GREETING\"\nexec sleep 30");
    let path = fake_binary(dir.path(), &script);
    let env = [("GREETING".to_string(), "hi".to_string())];

    let mut gw = spawn_script(&path, &env, &dir.path().join("gw.log"))
        .await
        .expect("ready");
    assert_eq!(gw.ws_url(), "ws://127.0.0.1:4567/ws");
    gw.wait_for_log("greeting=hi", Duration::from_secs(2))
        .await
        .expect("env passed");
    // stdout and stderr are read by separate threads: no ordering between them.
    gw.wait_for_log("stderr: starting", Duration::from_secs(2))
        .await
        .expect("stderr captured");
    assert!(gw.is_running());
    gw.sigterm().expect("sigterm");
    let status = gw
        .wait_exit(Duration::from_secs(5))
        .await
        .expect("exits on SIGTERM");
    assert!(!status.success());

    let path = fake_binary(dir.path(), "echo 'JWT_SECRET is missing' >&2\nexit 2");
    let err = spawn_script(&path, &[], &dir.path().join("bad.log"))
        .await
        .err()
        .expect("fails");
    assert!(
        format!("{err:#}").contains("JWT_SECRET is missing"),
        "{err:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_starts_gateways_and_workers_against_real_services() {
    let t = Instant::now();
    let cluster = Cluster::builder(chatter_tests::binaries!())
        .gateways(2)
        .workers(1)
        .start()
        .await
        .expect("cluster starts");
    eprintln!("cluster (2 gateways, 1 worker) up in {:?}", t.elapsed());

    for i in 0..2 {
        let (status, body) = cluster
            .api(i)
            .get("/healthz", Auth::None)
            .await
            .expect("healthz");
        assert_eq!(status, 200, "gateway {i}: {body}");
    }
    assert!(cluster.worker(0).logs().contains("worker ready"));
    let one: i32 = sqlx::query_scalar("SELECT 1")
        .fetch_one(&cluster.db())
        .await
        .expect("db");
    assert_eq!(one, 1);

    let mut ws = cluster
        .connect_ws(1, &cluster.token("alice"))
        .await
        .expect("ws connects");
    ws.send_frame("Ping", json!({})).await.expect("send");
    ws.recv_type("Pong", Duration::from_secs(5))
        .await
        .expect("pong");

    let foreign = Cluster::token_with(&Cluster::claims("mallory"), "not-the-secret");
    match cluster.connect_ws(0, &foreign).await {
        Ok(mut ws) => {
            let close = ws
                .expect_close(Duration::from_secs(5))
                .await
                .expect("closed");
            assert_eq!(close.code, 4002, "{close:?}");
        }
        Err(err) => assert_eq!(err.status(), Some(401), "{err}"),
    }
}
