//! Issue 14 points 1, 2, 3 and 7 from outside: delegated verification through a
//! real (fake) identity service — valid, refused, down, slow, cached, over REST,
//! `/ws_token` and `/ws`, in `delegated` and `both` modes —, the older token
//! provider (`GET /token/{user_id}`, `GET /api-key`), client config
//! (`GET /config`), and permissions from the token (`JWT_PERMISSIONS_CLAIM`)
//! over REST and the WebSocket.
//!
//! The identity service is a small axum server in the test process behind a
//! TCP relay: "down" is the relay closing every connection (what a crashed
//! service looks like to a client), "slow" the service sleeping far past
//! `VERIFICATION_TIMEOUT_MS`.

use anyhow::{Context, Result, bail, ensure};
use axum::Router;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chatter_tests::backend::Backend;
use chatter_tests::chat::FRAME_WAIT;
use chatter_tests::{Auth, Cluster, binaries};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

chatter_tests::for_each_backend!(
    delegated_tokens_work_over_rest_ws_token_and_ws,
    identity_service_down_or_slow_is_503_never_a_hang,
    both_mode_checks_the_local_jwt_first,
    the_token_provider_speaks_the_older_shape,
    client_config_comes_from_a_json_file,
    client_config_comes_from_the_config_files_tables,
    permissions_gate_every_rest_route_and_websocket_action,
    the_identity_service_can_carry_permissions,
    garbage_tokens_cannot_flood_the_identity_service,
);

/// The identity service's timeout in these tests: short, so "slow" is quick to show.
const TIMEOUT_MS: &str = "500";

// ------------------------------------------------------------ the identity fake

/// Accepts `Authorization: Bearer uacl-<user>-<anything>` as `<user>`; refuses
/// everything else with 401.
struct IdentityFake {
    addr: SocketAddr,
    calls: Arc<AtomicUsize>,
    slow: Arc<AtomicBool>,
    down: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
}

impl IdentityFake {
    async fn start() -> Result<IdentityFake> {
        let calls = Arc::new(AtomicUsize::new(0));
        let slow = Arc::new(AtomicBool::new(false));
        let down = Arc::new(AtomicBool::new(false));
        let (counted, sleepy) = (calls.clone(), slow.clone());
        let app = Router::new().route(
            "/verify",
            axum::routing::get(move |headers: HeaderMap| {
                let (calls, slow) = (counted.clone(), sleepy.clone());
                async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    if slow.load(Ordering::SeqCst) {
                        tokio::time::sleep(Duration::from_secs(30)).await;
                    }
                    verify(&headers)
                }
            }),
        );
        let service = TcpListener::bind("127.0.0.1:0").await?;
        let service_addr = service.local_addr()?;
        let relay = TcpListener::bind("127.0.0.1:0").await?;
        let addr = relay.local_addr()?;
        let serve = tokio::spawn(async move {
            let _ = axum::serve(service, app).await;
        });
        let closed = down.clone();
        let relay = tokio::spawn(async move {
            while let Ok((mut client, _)) = relay.accept().await {
                if closed.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                tokio::spawn(async move {
                    if let Ok(mut upstream) = TcpStream::connect(service_addr).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                    }
                });
            }
        });
        Ok(IdentityFake {
            addr,
            calls,
            slow,
            down,
            tasks: vec![serve, relay],
        })
    }

    fn url(&self) -> String {
        format!("http://{}/verify", self.addr)
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl Drop for IdentityFake {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// The older identity service's answer. `Connection: close`, so the gateway
/// opens a new connection per call and "down" takes effect at once.
fn verify(headers: &HeaderMap) -> Response {
    let user = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer uacl-"))
        .and_then(|rest| rest.split('-').next())
        .filter(|user| !user.is_empty());
    let close = [(header::CONNECTION, "close")];
    match user {
        Some(user) => (
            StatusCode::OK,
            close,
            axum::Json(json!({"result": {
                "username": user,
                "name": format!("{user} (uacl)"),
                "user_group": "testers",
                // Read only where JWT_PERMISSIONS_CLAIM=permissions.
                "permissions": ["ViewRoom"],
            }})),
        )
            .into_response(),
        None => (StatusCode::UNAUTHORIZED, close, "no").into_response(),
    }
}

/// A token only the identity service knows (opaque, not a JWT).
fn uacl_token(user: &str) -> String {
    format!("uacl-{user}-{}", uuid::Uuid::new_v4().simple())
}

async fn start(backend: Backend, env: &[(&str, &str)]) -> Cluster {
    let mut builder = backend.builder(binaries!());
    for (key, value) in env {
        builder = builder.env(*key, *value);
    }
    builder.start().await.expect("cluster starts")
}

/// Runs `test` while `cluster` lives (so its logs are kept when it fails).
async fn check(cluster: &Cluster, test: impl AsyncFnOnce(&Cluster) -> Result<()>) {
    if let Err(error) = test(cluster).await {
        panic!("{error:?}");
    }
}

/// `GET /rooms`, then `GET /ws_token`, then a served socket with that ticket.
async fn works_everywhere(cluster: &Cluster, what: &str, token: &str) -> Result<()> {
    let (status, body) = cluster.api(0).get("/rooms", token).await?;
    ensure!(status == 200, "{what}: GET /rooms answered {status} {body}");
    let (status, ticket) = cluster.api(0).get("/ws_token", token).await?;
    ensure!(
        status == 200,
        "{what}: GET /ws_token answered {status} {ticket}"
    );
    let ticket = ticket["token"].as_str().context("ticket")?;
    let mut ws = cluster
        .connect_ws(0, ticket)
        .await
        .context("ticket upgrade")?;
    ws.send_frame("Ping", json!({})).await?;
    ws.recv_type("Pong", FRAME_WAIT)
        .await
        .with_context(|| format!("{what}: socket served"))?;
    Ok(())
}

/// 401 over REST and `/ws_token`, close 4002 on `/ws`.
async fn refused_everywhere(cluster: &Cluster, what: &str, token: &str) -> Result<()> {
    for path in ["/rooms", "/ws_token"] {
        let (status, body) = cluster.api(0).get(path, token).await?;
        ensure!(
            status == 401 && body["error"]["code"] == "unauthenticated",
            "{what}: GET {path} answered {status} {body}"
        );
    }
    let mut ws = cluster.connect_ws(0, token).await.context("upgrade")?;
    let close = ws.expect_close(FRAME_WAIT).await?;
    ensure!(close.code == 4002, "{what}: closed with {close:?}");
    Ok(())
}

// ------------------------------------------------------ delegated verification

async fn delegated_tokens_work_over_rest_ws_token_and_ws(backend: Backend) {
    let fake = IdentityFake::start().await.expect("identity fake");
    let url = fake.url();
    let cluster = start(
        backend,
        &[
            ("VERIFICATION_URL", &url),
            ("AUTH_MODE", "delegated"),
            ("VERIFICATION_CACHE_SECS", "300"),
        ],
    )
    .await;
    check(&cluster, async |cluster| {
        let alice = uacl_token("alice");
        works_everywhere(cluster, "a token the identity service vouches for", &alice).await?;
        // One call: every later request with the token was answered from the cache.
        ensure!(
            fake.calls() == 1,
            "identity service calls: {}",
            fake.calls()
        );
        // A token straight on /ws (no ticket) works too, from the cache.
        let mut ws = cluster
            .connect_ws(0, &alice)
            .await
            .context("direct upgrade")?;
        ws.send_frame("Ping", json!({})).await?;
        ws.recv_type("Pong", FRAME_WAIT)
            .await
            .context("direct socket served")?;
        ensure!(
            fake.calls() == 1,
            "identity service calls: {}",
            fake.calls()
        );

        // Users are created on first sight, with the identity service's name
        // and group: bob, seen once, can be put in a room and is listed by name.
        let bob = uacl_token("bob");
        let (status, body) = cluster.api(0).get("/ws_token", &bob).await?;
        ensure!(status == 200, "bob's first request: {status} {body}");
        let (status, room) = cluster
            .api(0)
            .post_json(
                "/rooms",
                &alice,
                &json!({"members": ["bob"], "name": "delegated"}),
            )
            .await?;
        ensure!(
            status == 201,
            "POST /rooms as alice with bob: {status} {room}"
        );
        let (status, contacts) = cluster.api(0).get("/connections", &alice).await?;
        ensure!(status == 200, "GET /connections: {status} {contacts}");
        let listed = contacts
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["user_id"] == "bob" && c["name"] == "bob (uacl)");
        ensure!(listed, "bob as the identity service named him: {contacts}");

        // Refusals are not cached: each try asks again, exactly once per request.
        let bad = format!("forged-{}", uuid::Uuid::new_v4().simple());
        let before = fake.calls();
        for _ in 0..2 {
            let (status, body) = cluster.api(0).get("/rooms", &bad).await?;
            ensure!(status == 401, "a refused token: {status} {body}");
        }
        ensure!(
            fake.calls() == before + 2,
            "refusals were cached: {} calls",
            fake.calls() - before
        );
        refused_everywhere(cluster, "a refused token", &bad).await?;
        // In delegated mode chatter's own JWTs are the identity service's to judge.
        refused_everywhere(
            cluster,
            "a local JWT in delegated mode",
            &cluster.token("alice"),
        )
        .await?;

        // Operators see the cache working.
        let (status, metrics) = cluster.api(0).get("/metrics", Auth::None).await?;
        ensure!(status == 200, "GET /metrics: {status}");
        let count = |outcome: &str| {
            let series = format!("chatter_identity_checks_total{{outcome=\"{outcome}\"}} ");
            metrics
                .as_str()
                .and_then(|text| {
                    text.lines()
                        .find_map(|line| line.strip_prefix(series.as_str()))
                })
                .and_then(|value| value.trim().parse::<f64>().ok())
        };
        ensure!(
            count("vouched") == Some(2.0),
            "vouched (alice, bob): {:?}",
            count("vouched")
        );
        ensure!(
            count("cached").is_some_and(|n| n >= 3.0),
            "cached: {:?}",
            count("cached")
        );
        ensure!(
            count("refused").is_some_and(|n| n >= 4.0),
            "refused: {:?}",
            count("refused")
        );
        Ok(())
    })
    .await;
}

async fn identity_service_down_or_slow_is_503_never_a_hang(backend: Backend) {
    let fake = IdentityFake::start().await.expect("identity fake");
    let url = fake.url();
    let cluster = start(
        backend,
        &[
            ("VERIFICATION_URL", &url),
            ("AUTH_MODE", "delegated"),
            ("VERIFICATION_TIMEOUT_MS", TIMEOUT_MS),
            ("VERIFICATION_CACHE_SECS", "300"),
        ],
    )
    .await;
    check(&cluster, async |cluster| {
        let known = uacl_token("kim");
        works_everywhere(cluster, "before the outage", &known).await?;

        for (outage, flag) in [("down", &fake.down), ("slow", &fake.slow)] {
            flag.store(true, Ordering::SeqCst);
            let fresh = uacl_token("lee");
            for path in ["/rooms", "/ws_token"] {
                let started = Instant::now();
                let (status, body) = cluster.api(0).get(path, &fresh).await?;
                let took = started.elapsed();
                ensure!(
                    status == 503 && body["error"]["code"] == "unavailable",
                    "{outage}: GET {path} answered {status} {body}"
                );
                // The fake sleeps 30 s; the answer comes at the 0.5 s timeout
                // (10 s is slack for a loaded machine, far from a hang).
                ensure!(
                    took < Duration::from_secs(10),
                    "{outage}: GET {path} took {took:?}"
                );
            }
            let started = Instant::now();
            match cluster.connect_ws(0, &fresh).await {
                Err(error) if error.status() == Some(503) => {}
                Err(error) => bail!("{outage}: upgrade failed otherwise: {error}"),
                Ok(mut ws) => bail!("{outage}: upgraded: {:?}", ws.recv(FRAME_WAIT).await),
            }
            ensure!(
                started.elapsed() < Duration::from_secs(10),
                "{outage}: /ws took {:?}",
                started.elapsed()
            );
            // A user vouched for before the outage keeps working from the cache.
            let (status, body) = cluster.api(0).get("/rooms", &known).await?;
            ensure!(status == 200, "{outage}: a cached token: {status} {body}");
            flag.store(false, Ordering::SeqCst);
        }
        // Back up: the same fresh user gets in.
        works_everywhere(cluster, "after the outage", &uacl_token("lee")).await?;
        Ok(())
    })
    .await;
}

async fn both_mode_checks_the_local_jwt_first(backend: Backend) {
    let fake = IdentityFake::start().await.expect("identity fake");
    let url = fake.url();
    // AUTH_MODE unset with a VERIFICATION_URL means `both`.
    let cluster = start(
        backend,
        &[("VERIFICATION_URL", &url), ("VERIFICATION_CACHE_SECS", "0")],
    )
    .await;
    check(&cluster, async |cluster| {
        works_everywhere(cluster, "a local JWT", &cluster.token("mona")).await?;
        ensure!(
            fake.calls() == 0,
            "a local JWT asked the identity service: {}",
            fake.calls()
        );
        // JWT-shaped but not ours (uacl signs its own): the identity service decides.
        let foreign = Cluster::token_with(
            &Cluster::claims("uacl-nils-x"),
            "a-key-chatter-does-not-know-0123456789",
        );
        let (status, body) = cluster.api(0).get("/rooms", &foreign).await?;
        ensure!(
            status == 401,
            "a foreign JWT the service refuses: {status} {body}"
        );
        ensure!(fake.calls() == 1, "calls: {}", fake.calls());
        let opaque = uacl_token("nils");
        works_everywhere(cluster, "an identity-service token", &opaque).await?;
        // VERIFICATION_CACHE_SECS=0: no cache, one call per request.
        ensure!(fake.calls() == 3, "calls: {}", fake.calls());
        refused_everywhere(cluster, "garbage", "garbage-token").await?;
        // A token no header could carry is refused, not blamed on the service.
        let mut ws = cluster
            .connect_ws(0, "bad%0Atoken")
            .await
            .context("upgrade")?;
        let close = ws.expect_close(FRAME_WAIT).await?;
        ensure!(close.code == 4002, "a token with a line feed: {close:?}");
        Ok(())
    })
    .await;
}

async fn garbage_tokens_cannot_flood_the_identity_service(backend: Backend) {
    let fake = IdentityFake::start().await.expect("identity fake");
    let url = fake.url();
    let cluster = start(
        backend,
        &[
            ("VERIFICATION_URL", &url),
            ("AUTH_MODE", "delegated"),
            ("REST_IP_RATE_PER_SEC", "1"),
            ("REST_IP_RATE_BURST", "5"),
        ],
    )
    .await;
    check(&cluster, async |cluster| {
        let started = Instant::now();
        let mut limited = 0;
        for i in 0..20 {
            let (status, body) = cluster.api(0).get("/rooms", format!("guess-{i}")).await?;
            match status.as_u16() {
                401 => {}
                429 => limited += 1,
                other => bail!("guess {i}: {other} {body}"),
            }
        }
        for i in 0..5 {
            match cluster.connect_ws(0, &format!("guess-ws-{i}")).await {
                Err(error) if error.status() == Some(429) => limited += 1,
                Err(error) => bail!("guess-ws-{i}: {error}"),
                Ok(mut ws) => {
                    let close = ws.expect_close(FRAME_WAIT).await?;
                    ensure!(close.code == 4002, "guess-ws-{i}: {close:?}");
                }
            }
        }
        // The IP's budget (a burst of 5, then 1 a second) bounds the calls the
        // guesses cost the identity service; the rest were refused before asking.
        let calls = fake.calls();
        let budget = 5 + started.elapsed().as_secs() as usize + 1;
        ensure!(
            calls <= budget,
            "25 guesses cost {calls} identity service calls (budget {budget})"
        );
        ensure!(
            limited + calls >= 25,
            "{limited} limited, {calls} asked, of 25"
        );
        Ok(())
    })
    .await;
}

async fn the_identity_service_can_carry_permissions(backend: Backend) {
    let fake = IdentityFake::start().await.expect("identity fake");
    let url = fake.url();
    let cluster = start(
        backend,
        &[
            ("VERIFICATION_URL", &url),
            ("AUTH_MODE", "delegated"),
            ("JWT_PERMISSIONS_CLAIM", "permissions"),
        ],
    )
    .await;
    check(&cluster, async |cluster| {
        // The fake grants ViewRoom only.
        let token = uacl_token("vera");
        let (status, body) = cluster.api(0).get("/rooms", &token).await?;
        ensure!(status == 200, "ViewRoom: {status} {body}");
        let (status, body) = cluster
            .api(0)
            .post_json("/rooms", &token, &json!({"members": [], "name": "no"}))
            .await?;
        ensure!(
            status == 403 && body["error"]["code"] == "missing_permission",
            "CreateRoom: {status} {body}"
        );
        let mut ws = cluster.connect_ws(0, &token).await.context("upgrade")?;
        ws.send_frame("SubscribePresence", json!({})).await?;
        let error = ws.recv_type("Error", FRAME_WAIT).await?;
        ensure!(error["code"] == "missing_permission", "{error}");
        Ok(())
    })
    .await;
}

// ------------------------------------------------------------ token provider

/// A JWT's claims, read without verifying it.
fn claims(token: &str) -> Result<Value> {
    let payload = token.split('.').nth(1).context("a JWT has three parts")?;
    Ok(serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload)?)?)
}

async fn the_token_provider_speaks_the_older_shape(backend: Backend) {
    let cluster = start(backend, &[("CLIENT_API_KEY", "pk-chatter-test")]).await;
    check(&cluster, async |cluster| {
        let service = Auth::Raw(cluster.service_secret().to_owned());
        let (status, body) = cluster.api(0).get("/token/olga", service.clone()).await?;
        ensure!(
            status == 201 && body["userId"] == "olga",
            "GET /token/olga: {status} {body}"
        );
        let token = body["token"].as_str().context("token")?.to_owned();
        let payload = claims(&token)?;
        ensure!(payload["user_id"] == "olga", "{payload}");
        // EXPIRATION_TOKEN_DURATION unset: no expiry, as the older provider did.
        ensure!(payload.get("exp").is_none(), "{payload}");
        works_everywhere(cluster, "a provider token", &token).await?;

        let (status, body) = cluster.api(0).get("/token/olga", Auth::None).await?;
        ensure!(status == 401, "without the service secret: {status} {body}");
        let (status, body) = cluster
            .api(0)
            .get("/token/olga", cluster.token("olga"))
            .await?;
        ensure!(status == 401, "with a user token: {status} {body}");
        let long = "x".repeat(129);
        let (status, body) = cluster
            .api(0)
            .get(&format!("/token/{long}"), service.clone())
            .await?;
        ensure!(
            status == 400 && body["error"]["code"] == "bad_user_id",
            "{status} {body}"
        );

        let (status, body) = cluster.api(0).get("/api-key", Auth::None).await?;
        ensure!(
            status == 200 && body == json!({"api_key": "pk-chatter-test"}),
            "{status} {body}"
        );
        // POST /tokens is still there.
        let (status, body) = cluster
            .api(0)
            .post_json(
                "/tokens",
                service,
                &json!({"user_id": "olga", "ttl_seconds": 60}),
            )
            .await?;
        ensure!(
            status == 200 && body["user_id"] == "olga",
            "POST /tokens: {status} {body}"
        );
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn provider_tokens_expire_when_a_duration_is_set() {
    let cluster = start(Backend::Embedded, &[("EXPIRATION_TOKEN_DURATION", "120")]).await;
    check(&cluster, async |cluster| {
        let service = Auth::Raw(cluster.service_secret().to_owned());
        let (status, body) = cluster.api(0).get("/token/pia", service).await?;
        ensure!(status == 201, "GET /token/pia: {status} {body}");
        let token = body["token"].as_str().context("token")?;
        let exp = claims(token)?["exp"].as_i64().context("exp")?;
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        ensure!(
            (now + 60..=now + 180).contains(&exp),
            "exp {exp}, now {now}"
        );
        works_everywhere(cluster, "an expiring provider token", token).await?;
        // A non-expiring token (as minted while the duration was unset) is refused now.
        let mut never = Cluster::claims("pia");
        if let Some(map) = never.as_object_mut() {
            map.remove("exp");
        }
        never["never_expires"] = json!(true);
        let never = Cluster::token_with(&never, cluster.jwt_secret());
        let (status, body) = cluster.api(0).get("/rooms", &never).await?;
        ensure!(status == 401, "a non-expiring token: {status} {body}");
        let (status, body) = cluster.api(0).get("/api-key", Auth::None).await?;
        ensure!(
            status == 404 && body["error"]["code"] == "api_key_not_configured",
            "{status} {body}"
        );
        Ok(())
    })
    .await;
}

// -------------------------------------------------------------- client config

fn client_config_file(dir: &std::path::Path) -> String {
    let path = dir.join("clients.json");
    let configs = json!({
        "web": {
            "theme": {"color": "teal"},
            "errors": {"title": "Not signed in", "message": "Sign in to chat"},
        },
        "mobile": {"compact": true},
    });
    std::fs::write(&path, configs.to_string()).expect("write the client config");
    path.to_str().expect("UTF-8 path").to_owned()
}

/// The other source: `[client_config.<type>]` tables of the configuration file
/// (`--config`, here `CHATTER_CONFIG`).
async fn client_config_comes_from_the_config_files_tables(backend: Backend) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("chatter.toml");
    std::fs::write(
        &path,
        "[client_config.web]\ntheme = { color = \"teal\" }\n\
         errors = { title = \"Not signed in\", message = \"Sign in to chat\" }\n",
    )
    .expect("write the config file");
    let cluster = start(
        backend,
        &[("CHATTER_CONFIG", path.to_str().expect("UTF-8 path"))],
    )
    .await;
    check(&cluster, async |cluster| {
        let (status, body) = cluster
            .api(0)
            .get("/config?client_type=web", Auth::None)
            .await?;
        ensure!(
            status == 200
                && body["theme"]["color"] == "teal"
                && body["errors"]["title"] == "Not signed in",
            "anonymous: {status} {body}"
        );
        let rosa = cluster.token("rosa");
        let (status, body) = cluster.api(0).get("/config?client_type=web", &rosa).await?;
        ensure!(
            status == 200
                && body.get("errors").is_none()
                && body["authentication"]["user_id"] == "rosa",
            "bearer: {status} {body}"
        );
        let (status, _) = cluster
            .api(0)
            .get("/config?client_type=mobile", Auth::None)
            .await?;
        ensure!(status == 404, "a type the file does not have: {status}");
        Ok(())
    })
    .await;
}

/// `GET path` with extra headers.
async fn get_with(
    cluster: &Cluster,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(StatusCode, Value)> {
    let mut request = cluster
        .http()
        .get(format!("{}{path}", cluster.gateway(0).http_url()));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await?;
    let status = response.status();
    let text = response.text().await?;
    Ok((
        StatusCode::from_u16(status.as_u16())?,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    ))
}

async fn client_config_comes_from_a_json_file(backend: Backend) {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = client_config_file(dir.path());
    let cluster = start(
        backend,
        &[
            ("CLIENT_CONFIG_FILE", &file),
            ("TRUST_USERID_HEADER", "true"),
        ],
    )
    .await;
    check(&cluster, async |cluster| {
        // Not identified: the object with its error messages.
        let (status, body) = cluster
            .api(0)
            .get("/config?client_type=web", Auth::None)
            .await?;
        ensure!(status == 200, "anonymous: {status} {body}");
        ensure!(
            body["theme"]["color"] == "teal" && body["errors"]["title"] == "Not signed in",
            "{body}"
        );
        ensure!(body.get("authentication").is_none(), "{body}");
        // A refused token identifies nobody either.
        let (status, body) = cluster
            .api(0)
            .get("/config?client_type=web", "not-a-token")
            .await?;
        ensure!(
            status == 200 && body["errors"]["message"] == "Sign in to chat",
            "{status} {body}"
        );

        // A bearer token: no errors, the authentication block (the older `clientType=` too).
        let rosa = cluster.token("rosa");
        let (status, body) = cluster.api(0).get("/config?clientType=web", &rosa).await?;
        ensure!(
            status == 200 && body.get("errors").is_none(),
            "bearer: {status} {body}"
        );
        let auth = &body["authentication"];
        let base = cluster.gateway(0).http_url();
        ensure!(
            auth["user_id"] == "rosa" && auth["user_token"] == rosa.as_str(),
            "{body}"
        );
        ensure!(auth["api_url"] == base.as_str(), "{body} (expected {base})");
        ensure!(
            auth["ws_url"] == cluster.gateway(0).ws_url().as_str(),
            "{body}"
        );
        ensure!(body["theme"]["color"] == "teal", "{body}");

        // The trusted user-id header: a minted token for that user, which works.
        let (status, body) =
            get_with(cluster, "/config?client_type=mobile", &[("userid", "sven")]).await?;
        ensure!(
            status == 200 && body["compact"] == true,
            "header: {status} {body}"
        );
        ensure!(body["authentication"]["user_id"] == "sven", "{body}");
        let token = body["authentication"]["user_token"]
            .as_str()
            .context("user_token")?;
        works_everywhere(cluster, "the token /config minted", token).await?;

        let (status, body) = cluster
            .api(0)
            .get("/config?client_type=fridge", Auth::None)
            .await?;
        ensure!(
            status == 404 && body["error"]["code"] == "unknown_client_type",
            "{status} {body}"
        );
        let (status, body) = cluster.api(0).get("/config", Auth::None).await?;
        ensure!(
            status == 400 && body["error"]["code"] == "bad_query",
            "{status} {body}"
        );
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_userid_header_identifies_nobody_unless_trusted() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = client_config_file(dir.path());
    let cluster = start(Backend::Embedded, &[("CLIENT_CONFIG_FILE", &file)]).await;
    check(&cluster, async |cluster| {
        let (status, body) =
            get_with(cluster, "/config?client_type=web", &[("userid", "mallory")]).await?;
        ensure!(
            status == 200 && body.get("authentication").is_none(),
            "{status} {body}"
        );
        ensure!(body["errors"]["title"] == "Not signed in", "{body}");
        Ok(())
    })
    .await;
}

// --------------------------------------------------------------- permissions

/// A token for `user` whose `permissions` claim holds `permissions`.
fn token_with_permissions(cluster: &Cluster, user: &str, permissions: &[&str]) -> String {
    let mut claims = Cluster::claims(user);
    claims["permissions"] = json!(permissions);
    Cluster::token_with(&claims, cluster.jwt_secret())
}

const EVERY_PERMISSION: &[&str] = &[
    "ViewRoom",
    "CreateRoom",
    "UpdateRoom",
    "DeleteRoom",
    "ViewMessage",
    "CreateMessage",
    "UpdateMessage",
    "DeleteMessage",
    "MarkRead",
    "ViewPresence",
    "RequestSupport",
    "ProvideSupport",
];

async fn permissions_gate_every_rest_route_and_websocket_action(backend: Backend) {
    let cluster = start(backend, &[("JWT_PERMISSIONS_CLAIM", "permissions")]).await;
    check(&cluster, async |cluster| {
        let reader =
            token_with_permissions(cluster, "rita", &["ViewRoom", "CreateRoom", "ViewMessage"]);
        let writer = token_with_permissions(cluster, "walt", EVERY_PERMISSION);
        let (status, body) = cluster.api(0).get("/ws_token", &writer).await?;
        ensure!(status == 200, "walt exists: {status} {body}");
        let (status, room) = cluster
            .api(0)
            .post_json(
                "/rooms",
                &reader,
                &json!({"members": ["walt"], "name": "gated"}),
            )
            .await?;
        ensure!(status == 201, "CreateRoom: {status} {room}");
        let room_id = room["id"].as_str().context("room id")?.to_owned();

        // REST: what the token holds is allowed, the rest 403 missing_permission.
        for path in [
            "/rooms".to_owned(),
            format!("/rooms/{room_id}"),
            format!("/rooms/{room_id}/messages"),
        ] {
            let (status, body) = cluster.api(0).get(&path, &reader).await?;
            ensure!(status == 200, "GET {path}: {status} {body}");
        }
        let denied = [
            cluster
                .api(0)
                .post_json(
                    &format!("/rooms/{room_id}/messages"),
                    &reader,
                    &json!({"message": "hi"}),
                )
                .await?,
            cluster
                .api(0)
                .delete(&format!("/rooms/{room_id}"), &reader)
                .await?,
            cluster
                .api(0)
                .put_json(
                    &format!("/rooms/{room_id}/members"),
                    &reader,
                    &json!({"add": ["walt"]}),
                )
                .await?,
            cluster
                .api(0)
                .post_json(
                    &format!("/rooms/{room_id}/read"),
                    &reader,
                    &json!({"seq": 0}),
                )
                .await?,
            cluster.api(0).get("/connections", &reader).await?,
            cluster
                .api(0)
                .post_json("/support/requests", &reader, &json!({}))
                .await?,
            cluster.api(0).get("/support/requests", &reader).await?,
        ];
        for (status, body) in denied {
            ensure!(
                status == 403 && body["error"]["code"] == "missing_permission",
                "expected missing_permission: {status} {body}"
            );
        }
        // A token without the claim holds nothing; no token at all is still 401.
        let (status, body) = cluster.api(0).get("/rooms", cluster.token("nemo")).await?;
        ensure!(
            status == 403 && body["error"]["code"] == "missing_permission",
            "{status} {body}"
        );
        let (status, body) = cluster.api(0).get("/rooms", Auth::None).await?;
        ensure!(status == 401, "no token: {status} {body}");

        // WebSocket, through a ticket (which keeps the token's permissions).
        let (status, ticket) = cluster.api(0).get("/ws_token", &reader).await?;
        ensure!(status == 200, "GET /ws_token: {status} {ticket}");
        let mut ws = cluster
            .connect_ws(0, ticket["token"].as_str().context("ticket")?)
            .await
            .context("reader's socket")?;
        ws.send_frame("Ping", json!({})).await?;
        ws.recv_type("Pong", FRAME_WAIT)
            .await
            .context("Ping needs nothing")?;
        ws.send_frame(
            "SendMessage",
            json!({"room_id": room_id, "message": "hello", "message_temp_id": "t-1"}),
        )
        .await?;
        let refused = ws.recv_type("MessageSentConfirmation", FRAME_WAIT).await?;
        ensure!(
            refused["confirmed"] == false
                && refused["reason"] == "missing_permission"
                && refused["message_temp_id"] == "t-1",
            "{refused}"
        );
        for (kind, data) in [
            ("SubscribePresence", json!({})),
            ("Typing", json!({"room_id": room_id})),
            ("MarkRead", json!({"room_id": room_id, "seq": 0})),
            ("Load", json!({})),
            ("Join", json!({"from": "User"})),
        ] {
            ws.send_frame(kind, data).await?;
            let error = ws.recv_type("Error", FRAME_WAIT).await?;
            ensure!(error["code"] == "missing_permission", "{kind}: {error}");
        }

        // Everything allowed: the same actions go through.
        let mut ws = cluster
            .connect_ws(0, &writer)
            .await
            .context("writer's socket")?;
        ws.send_frame(
            "SendMessage",
            json!({"room_id": room_id, "message": "hello", "message_temp_id": "t-2"}),
        )
        .await?;
        let confirmed = ws.recv_type("MessageSentConfirmation", FRAME_WAIT).await?;
        ensure!(confirmed["confirmed"] == true, "{confirmed}");
        let (status, body) = cluster
            .api(0)
            .post_json(
                &format!("/rooms/{room_id}/messages"),
                &writer,
                &json!({"message": "via REST"}),
            )
            .await?;
        ensure!(
            status.is_success(),
            "CreateMessage over REST: {status} {body}"
        );
        let (status, body) = cluster.api(0).get("/connections", &writer).await?;
        ensure!(status == 200, "ViewPresence: {status} {body}");
        let (status, body) = cluster
            .api(0)
            .post_json("/support/requests", &writer, &json!({}))
            .await?;
        ensure!(status.is_success(), "RequestSupport: {status} {body}");
        Ok(())
    })
    .await;
}
