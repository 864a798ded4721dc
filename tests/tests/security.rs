//! Attacks from outside, as an attacker would try them, against real processes:
//! forged, expired and misaddressed tokens (REST and WebSocket), the HS/RS
//! algorithm confusion, ticket replay, cross-origin upgrades, oversized and slow
//! headers, a flood of idle sockets, and hostile text (SQL metacharacters,
//! Unicode controls) in every text field of the REST API. Also the secrets and
//! defaults of issue 10 item 5: `NOTIFICATION_AUTH` is no service secret, the
//! embedded development secret listens on loopback, its files are owner-only.
//!
//! docs/SECURITY.md says what each of these is expected to do.

use anyhow::{Context, Result, bail, ensure};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chatter_tests::chat::{FRAME_WAIT, connect_ready, history_until, list_rooms};
use chatter_tests::{Auth, Cluster, binaries, eventually};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const ISSUER: &str = "https://id.chatter.test";
const AUDIENCE: &str = "chatter-e2e";

chatter_tests::on_every_backend!(
    forged_expired_and_misaddressed_tokens_are_refused:
        |b| b.env("JWT_ISSUER", super::ISSUER).env("JWT_AUDIENCE", super::AUDIENCE),
    a_ticket_works_once_on_any_gateway_and_not_after_it_expires:
        |b| b.env("TICKET_TTL_SECS", "1"),
    cross_origin_upgrades_and_preflights_are_refused: |b| b,
    hostile_text_in_every_rest_field_is_kept_verbatim_or_refused_never_a_500:
        |b| b.env("FRAMES_PER_SEC", "1000"),
);

// ------------------------------------------------------------------------ tokens

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// Claims the issuer/audience-checking cluster accepts.
fn good_claims(user: &str) -> Value {
    json!({"sub": user, "iss": ISSUER, "aud": AUDIENCE, "iat": now(), "exp": now() + 600})
}

fn with(mut claims: Value, key: &str, value: Value) -> Value {
    claims[key] = value;
    claims
}

fn without(mut claims: Value, key: &str) -> Value {
    if let Some(map) = claims.as_object_mut() {
        map.remove(key);
    }
    claims
}

fn sign(algorithm: Algorithm, claims: &Value, key: &EncodingKey) -> String {
    jsonwebtoken::encode(&Header::new(algorithm), claims, key).expect("signing JSON claims")
}

/// A JWT with any header, unsigned (`header.payload.`), as `alg: none` attacks send it.
fn unsigned(header: &Value, claims: &Value) -> String {
    let part = |value: &Value| URL_SAFE_NO_PAD.encode(value.to_string());
    format!("{}.{}.", part(header), part(claims))
}

/// `token` with one character of its signature changed (in the middle, so the
/// change is not lost in base64's padding bits).
fn tamper_signature(token: &str) -> String {
    let (head, signature) = token.rsplit_once('.').expect("a JWT has three parts");
    let mut bytes = signature.as_bytes().to_vec();
    let middle = bytes.len() / 2;
    bytes[middle] = if bytes[middle] == b'A' { b'B' } else { b'A' };
    format!("{head}.{}", String::from_utf8(bytes).expect("ASCII"))
}

/// `token` with its payload swapped for `claims`, keeping the original signature.
fn swap_payload(token: &str, claims: &Value) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    format!("{}.{payload}.{}", parts[0], parts[2])
}

/// The token works over REST and opens a served WebSocket.
async fn accepted(cluster: &Cluster, what: &str, token: &str) -> Result<()> {
    let (status, body) = cluster.api(0).get("/rooms", token).await?;
    ensure!(status == 200, "{what}: GET /rooms answered {status} {body}");
    let mut ws = cluster
        .connect_ws(0, token)
        .await
        .with_context(|| format!("{what}: upgrade"))?;
    ws.send_frame("Ping", json!({})).await?;
    ws.recv_type("Pong", FRAME_WAIT)
        .await
        .with_context(|| format!("{what}: served"))?;
    Ok(())
}

/// The token gets 401 `unauthenticated` over REST and close 4002 on a WebSocket.
async fn refused(cluster: &Cluster, what: &str, token: &str) -> Result<()> {
    let (status, body) = cluster.api(0).get("/rooms", token).await?;
    ensure!(
        status == 401 && body["error"]["code"] == "unauthenticated",
        "{what}: GET /rooms answered {status} {body}"
    );
    let mut ws = cluster
        .connect_ws(0, token)
        .await
        .with_context(|| format!("{what}: upgrade"))?;
    let close = ws.expect_close(FRAME_WAIT).await?;
    ensure!(close.code == 4002, "{what}: closed with {close:?}");
    Ok(())
}

async fn forged_expired_and_misaddressed_tokens_are_refused(cluster: &Cluster) -> Result<()> {
    let secret = EncodingKey::from_secret(cluster.jwt_secret().as_bytes());
    let hs256 = |claims: &Value| sign(Algorithm::HS256, claims, &secret);
    let good = hs256(&good_claims("alice"));
    accepted(cluster, "a well-formed token", &good).await?;
    // Not-before in the past and an `aud` list naming us are fine.
    accepted(
        cluster,
        "nbf passed, aud list",
        &hs256(&with(
            with(good_claims("alice"), "nbf", json!(now() - 60)),
            "aud",
            json!(["another-service", AUDIENCE]),
        )),
    )
    .await?;

    let claims = good_claims("alice");
    let cases: Vec<(&str, String)> = vec![
        (
            "alg none",
            unsigned(&json!({"alg": "none", "typ": "JWT"}), &claims),
        ),
        (
            "alg None",
            unsigned(&json!({"alg": "None", "typ": "JWT"}), &claims),
        ),
        (
            "alg none, signature kept",
            format!(
                "{}{}",
                unsigned(&json!({"alg": "none", "typ": "JWT"}), &claims),
                good.rsplit_once('.').expect("three parts").1
            ),
        ),
        (
            "HS512 with the right secret",
            sign(Algorithm::HS512, &claims, &secret),
        ),
        (
            "another secret",
            sign(
                Algorithm::HS256,
                &claims,
                &EncodingKey::from_secret(b"not-the-cluster-secret-but-32-bytes-long"),
            ),
        ),
        ("tampered signature", tamper_signature(&good)),
        (
            "payload swapped to another user",
            swap_payload(&good, &good_claims("mallory")),
        ),
        (
            "expired",
            hs256(&with(claims.clone(), "exp", json!(now() - 3600))),
        ),
        ("no exp", hs256(&without(claims.clone(), "exp"))),
        (
            "not yet valid (nbf in an hour)",
            hs256(&with(claims.clone(), "nbf", json!(now() + 3600))),
        ),
        ("no iss", hs256(&without(claims.clone(), "iss"))),
        (
            "wrong iss",
            hs256(&with(claims.clone(), "iss", json!("https://evil.test"))),
        ),
        (
            "iss not a string",
            hs256(&with(claims.clone(), "iss", json!(42))),
        ),
        ("no aud", hs256(&without(claims.clone(), "aud"))),
        (
            "wrong aud",
            hs256(&with(claims.clone(), "aud", json!("another-service"))),
        ),
        (
            "aud list without us",
            hs256(&with(claims.clone(), "aud", json!(["a", "b"]))),
        ),
        ("no user id", hs256(&without(claims.clone(), "sub"))),
        (
            "user id with a control character",
            hs256(&with(claims.clone(), "sub", json!("ali\u{0085}ce"))),
        ),
        ("not a JWT at all", "a.b.c".into()),
    ];
    for (what, token) in &cases {
        refused(cluster, what, token).await?;
    }
    Ok(())
}

/// An RSA key pair made with the `openssl` command: `(private PEM, public PEM)`.
fn rsa_key_pair(dir: &std::path::Path) -> Result<(String, String)> {
    let private = dir.join("private.pem");
    let public = dir.join("public.pem");
    let run = |args: &[&str]| -> Result<()> {
        let output = std::process::Command::new("openssl")
            .args(args)
            .output()
            .context("running openssl (install it: apt-get install openssl)")?;
        ensure!(
            output.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(())
    };
    let private_path = private.to_str().context("UTF-8 path")?;
    let public_path = public.to_str().context("UTF-8 path")?;
    run(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        private_path,
    ])?;
    run(&["pkey", "-in", private_path, "-pubout", "-out", public_path])?;
    Ok((
        std::fs::read_to_string(private)?,
        std::fs::read_to_string(public)?,
    ))
}

/// The token-checking code is the same on both backends: one embedded process.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_rs256_gateway_refuses_hs256_tokens_signed_with_its_public_key() {
    let keys = tempfile::tempdir().expect("temp dir");
    let (private, public) = rsa_key_pair(keys.path()).expect("RSA keys");
    let builder = Cluster::builder(binaries!())
        .embedded()
        .env("JWT_ALGORITHM", "RS256")
        .env("JWT_PUBLIC_KEY", &public);
    chatter_tests::chat::run_with_cluster(builder, async |cluster| {
        let claims = Cluster::claims("alice");
        let rsa = EncodingKey::from_rsa_pem(private.as_bytes())?;
        accepted(cluster, "RS256", &sign(Algorithm::RS256, &claims, &rsa)).await?;
        // The classic confusion: the public key is public, so if the server let the
        // token pick HS256, anyone could sign with the PEM text as the HMAC secret.
        for pem in [public.as_str(), public.trim_end()] {
            let forged = sign(
                Algorithm::HS256,
                &claims,
                &EncodingKey::from_secret(pem.as_bytes()),
            );
            refused(cluster, "HS256 signed with the RS256 public key", &forged).await?;
        }
        refused(
            cluster,
            "HS256 with the cluster's (unused) JWT_SECRET",
            &cluster.token("alice"),
        )
        .await?;
        refused(
            cluster,
            "alg none",
            &unsigned(&json!({"alg": "none"}), &claims),
        )
        .await?;
        let other_dir = keys.path().join("other");
        std::fs::create_dir_all(&other_dir)?;
        let (other_private, _) = rsa_key_pair(&other_dir)?;
        let other = EncodingKey::from_rsa_pem(other_private.as_bytes())?;
        refused(
            cluster,
            "RS256 with another key",
            &sign(Algorithm::RS256, &claims, &other),
        )
        .await?;
        Ok(())
    })
    .await;
}

// ----------------------------------------------------------------------- tickets

async fn ticket(cluster: &Cluster, gateway: usize, user: &str) -> Result<String> {
    let (status, body) = cluster
        .api(gateway)
        .get("/ws_token", cluster.token(user))
        .await?;
    ensure!(status == 200, "GET /ws_token: {status} {body}");
    body["token"]
        .as_str()
        .map(str::to_owned)
        .context("ticket in the answer")
}

async fn closed_with(cluster: &Cluster, gateway: usize, token: &str) -> Result<u16> {
    let mut ws = cluster.connect_ws(gateway, token).await?;
    Ok(ws.expect_close(FRAME_WAIT).await?.code)
}

async fn a_ticket_works_once_on_any_gateway_and_not_after_it_expires(
    cluster: &Cluster,
) -> Result<()> {
    // Once, then never again: not on the same gateway, not on another.
    let once = ticket(cluster, 0, "alice").await?;
    let mut ws = cluster.connect_ws(1, &once).await?;
    ws.send_frame("Ping", json!({})).await?;
    ws.recv_type("Pong", FRAME_WAIT).await.context("served")?;
    for gateway in [0, 1] {
        let code = closed_with(cluster, gateway, &once).await?;
        ensure!(code == 4002, "a used ticket on gateway {gateway}: {code}");
    }

    // Ten clients racing with one ticket: exactly one gets in.
    let raced = ticket(cluster, 0, "alice").await?;
    let attempts = (0..10).map(|i| {
        let raced = raced.clone();
        async move {
            let mut ws = cluster.connect_ws(i % 2, &raced).await?;
            ws.send_frame("Ping", json!({})).await?;
            Ok::<bool, anyhow::Error>(ws.recv_type("Pong", FRAME_WAIT).await.is_ok())
        }
    });
    let served = futures::future::try_join_all(attempts)
        .await?
        .into_iter()
        .filter(|served| *served)
        .count();
    ensure!(served == 1, "{served} sockets got in with one ticket");

    // TICKET_TTL_SECS is 1 here: a ticket two seconds old is refused.
    let stale = ticket(cluster, 0, "alice").await?;
    tokio::time::sleep(Duration::from_millis(2_200)).await;
    let code = closed_with(cluster, 1, &stale).await?;
    ensure!(code == 4002, "an expired ticket: {code}");

    // A ticket is for the WebSocket only: it is no REST credential.
    let rest = ticket(cluster, 0, "alice").await?;
    let (status, body) = cluster.api(0).get("/rooms", &rest).await?;
    ensure!(status == 401, "a ticket as a REST Bearer: {status} {body}");
    Ok(())
}

// ----------------------------------------------------------------------- origins

async fn cross_origin_upgrades_and_preflights_are_refused(cluster: &Cluster) -> Result<()> {
    // The harness sets ALLOWED_ORIGINS=http://allowed.test.
    let url = format!(
        "{}?token={}",
        cluster.gateway(0).ws_url(),
        cluster.token("alice")
    );
    for origin in [
        "http://evil.test",
        "null",
        "http://allowed.test.evil.test",
        "https://allowed.test",
        "http://allowed.test:8080",
    ] {
        match chatter_tests::WsClient::connect_with_headers(&url, &[("origin", origin)]).await {
            Err(error) if error.status() == Some(403) => {
                ensure!(
                    error.to_string().contains("origin_not_allowed"),
                    "{origin}: {error}"
                );
            }
            Err(error) => bail!("{origin}: refused, but not with 403: {error}"),
            Ok(_) => bail!("{origin}: a cross-origin upgrade was accepted"),
        }
    }
    for origin in ["http://allowed.test", "http://allowed.test/"] {
        let mut ws = chatter_tests::WsClient::connect_with_headers(&url, &[("origin", origin)])
            .await
            .with_context(|| format!("{origin} is allowed"))?;
        ws.send_frame("Ping", json!({})).await?;
        ws.recv_type("Pong", FRAME_WAIT).await?;
    }
    // No Origin at all: not a browser (mobile apps, servers) and not affected.
    let mut ws = chatter_tests::WsClient::connect(&url).await?;
    ws.send_frame("Ping", json!({})).await?;
    ws.recv_type("Pong", FRAME_WAIT).await?;

    // CORS: a preflight from another origin gets no allow header, so browsers
    // keep the answer from that page.
    let preflight = |origin: &'static str| {
        cluster
            .http()
            .request(
                reqwest::Method::OPTIONS,
                format!("{}/rooms", cluster.gateway(0).http_url()),
            )
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "authorization")
            .send()
    };
    let evil = preflight("http://evil.test").await?;
    ensure!(
        evil.headers().get("access-control-allow-origin").is_none(),
        "a preflight from another origin was allowed: {:?}",
        evil.headers()
    );
    let allowed = preflight("http://allowed.test").await?;
    ensure!(
        allowed
            .headers()
            .get("access-control-allow-origin")
            .is_some_and(|v| v == "http://allowed.test"),
        "the allowed origin's preflight: {:?}",
        allowed.headers()
    );
    Ok(())
}

// -------------------------------------------------------------- headers, sockets

/// How a raw HTTP exchange ended.
#[derive(Debug)]
enum Raw {
    /// The server answered; the status line.
    Answered(String),
    /// The server closed (or reset) the connection without answering.
    Closed,
    /// Nothing within the limit: the server is still waiting.
    Hung,
}

/// Writes `request` on a fresh connection (the server may hang up midway) and
/// reads until the server closes, for at most `limit`.
async fn raw_exchange(addr: SocketAddr, request: &[u8], limit: Duration) -> Result<Raw> {
    let mut stream = TcpStream::connect(addr).await?;
    let (mut read, mut write) = stream.split();
    let writing = async {
        // A refusal may come before the whole request is written; that is fine.
        let _ = write.write_all(request).await;
        std::future::pending::<()>().await
    };
    let reading = async {
        let mut answer = Vec::new();
        let mut buffer = [0u8; 4096];
        loop {
            match read.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buffer[..n]),
            }
        }
        answer
    };
    let outcome = tokio::time::timeout(limit, async {
        tokio::select! {
            answer = reading => answer,
            () = writing => unreachable!("writing never finishes"),
        }
    })
    .await;
    Ok(match outcome {
        Err(_) => Raw::Hung,
        Ok(answer) if answer.is_empty() => Raw::Closed,
        Ok(answer) => Raw::Answered(
            String::from_utf8_lossy(&answer)
                .lines()
                .next()
                .unwrap_or_default()
                .to_owned(),
        ),
    })
}

/// `GET /healthz` over a new connection; the time it took.
async fn healthz_once(addr: SocketAddr) -> Result<Duration> {
    let started = Instant::now();
    let request = b"GET /healthz HTTP/1.1\r\nHost: chatter\r\nConnection: close\r\n\r\n";
    match raw_exchange(addr, request, Duration::from_secs(5)).await? {
        Raw::Answered(status) if status.starts_with("HTTP/1.1 200") => Ok(started.elapsed()),
        other => bail!("GET /healthz: {other:?}"),
    }
}

/// The HTTP layer is the same on both backends: one embedded process.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn oversized_headers_are_refused_cleanly_and_the_server_keeps_serving() {
    let builder = Cluster::builder(binaries!()).embedded();
    chatter_tests::chat::run_with_cluster(builder, async |cluster| {
        let addr = cluster.gateway(0).addr();
        let big_value = "a".repeat(1024 * 1024);
        let many: String = (0..2_000)
            .map(|i| format!("X-Header-{i}: {}\r\n", "v".repeat(40)))
            .collect();
        let long_path = format!("/{}", "p".repeat(1024 * 1024));
        let cases = [
            (
                "one 1 MiB header",
                format!("GET /healthz HTTP/1.1\r\nHost: chatter\r\nX-Big: {big_value}\r\n\r\n"),
            ),
            (
                "2,000 headers",
                format!("GET /healthz HTTP/1.1\r\nHost: chatter\r\n{many}\r\n"),
            ),
            (
                "a 1 MiB request line",
                format!("GET {long_path} HTTP/1.1\r\nHost: chatter\r\n\r\n"),
            ),
        ];
        for (what, request) in cases {
            let outcome = raw_exchange(addr, request.as_bytes(), Duration::from_secs(10)).await?;
            println!("{what}: {outcome:?}");
            match outcome {
                Raw::Answered(status) => ensure!(
                    status.starts_with("HTTP/1.1 4"),
                    "{what}: answered {status:?}, expected 431 or another 4xx"
                ),
                Raw::Closed => {}
                Raw::Hung => bail!("{what}: no answer and no close within 10 s"),
            }
            healthz_once(addr)
                .await
                .with_context(|| format!("serving after {what}"))?;
        }
        Ok(())
    })
    .await;
}

/// The header-read timeout (`HTTP_HEADER_TIMEOUT_SECS`) closes connections that
/// never finish their request: a partial request line, or headers without the
/// blank line that ends them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_headers_are_closed_after_the_header_timeout() {
    let builder = Cluster::builder(binaries!())
        .embedded()
        .env("HTTP_HEADER_TIMEOUT_SECS", "2");
    chatter_tests::chat::run_with_cluster(builder, async |cluster| {
        let addr = cluster.gateway(0).addr();
        let limit = Duration::from_secs(2 + 2);
        let partials: [&[u8]; 3] = [
            b"GET /healthz HT",
            b"GET / HTTP/1.1\r\nHost: x\r\n",
            b"POST /rooms HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n",
        ];
        let slow = partials.iter().cycle().take(300).map(|partial| async move {
            let started = Instant::now();
            let outcome = raw_exchange(addr, partial, limit).await?;
            Ok::<_, anyhow::Error>((outcome, started.elapsed()))
        });
        let outcomes = futures::future::try_join_all(slow).await?;
        let hung = outcomes
            .iter()
            .filter(|(outcome, _)| matches!(outcome, Raw::Hung))
            .count();
        let slowest = outcomes.iter().map(|(_, took)| *took).max();
        ensure!(
            hung == 0,
            "{hung} of {} half-sent requests still open after {limit:?}",
            outcomes.len()
        );
        println!("300 half-sent requests closed; the last after {slowest:?}");
        healthz_once(addr).await?;
        Ok(())
    })
    .await;
}

/// The number of files (sockets included) process `pid` has open.
fn open_files(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| dir.count())
        .unwrap_or(0)
}

/// 10,000 TCP connections that never send a byte, from ten source addresses
/// (127.0.0.2 to 127.0.0.11, so a per-address cap does not refuse them all):
/// `/healthz` over new connections keeps answering fast meanwhile, and the
/// server does not keep them: every one is closed within the header timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_idle_sockets_neither_slow_the_server_nor_stay_open() {
    const SOCKETS: usize = 10_000;
    const HEADER_TIMEOUT_SECS: u64 = 5;
    let builder = Cluster::builder(binaries!())
        .embedded()
        .env("HTTP_HEADER_TIMEOUT_SECS", HEADER_TIMEOUT_SECS.to_string());
    chatter_tests::chat::run_with_cluster(builder, async |cluster| {
        let addr = cluster.gateway(0).addr();
        let pid = cluster.gateway(0).pid();
        let baseline_files = open_files(pid);

        // Open them in the background while /healthz is timed in the foreground.
        let opener = tokio::spawn(async move {
            let mut sockets = Vec::with_capacity(SOCKETS);
            let mut refused = 0usize;
            for i in 0..SOCKETS {
                let source = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (i % 10) as u8));
                let socket = TcpSocket::new_v4()?;
                socket.bind(SocketAddr::new(source, 0))?;
                match tokio::time::timeout(Duration::from_secs(5), socket.connect(addr)).await {
                    Ok(Ok(stream)) => sockets.push(stream),
                    // A cap may refuse some: bounded is what is asked.
                    Ok(Err(_)) | Err(_) => refused += 1,
                }
                if i % 500 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            Ok::<_, anyhow::Error>((sockets, refused, Instant::now()))
        });
        let mut latencies = Vec::new();
        let mut peak_files = 0;
        while !opener.is_finished() || latencies.len() < 200 {
            latencies.push(healthz_once(addr).await?);
            peak_files = peak_files.max(open_files(pid));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let (mut sockets, refused, opened_at) = opener.await??;
        latencies.sort();
        let p99 = latencies[(latencies.len() * 99).div_ceil(100) - 1];
        println!(
            "{} idle sockets held ({refused} refused), {} /healthz samples: p50 {:?}, p99 {p99:?}, \
             max {:?}; gateway open files: {baseline_files} before, peak {peak_files}",
            sockets.len(),
            latencies.len(),
            latencies[latencies.len() / 2],
            latencies[latencies.len() - 1],
        );
        ensure!(
            p99 < Duration::from_millis(50),
            "/healthz p99 {p99:?} with idle sockets open"
        );

        // Every idle socket is closed by the server within the header timeout.
        let deadline = opened_at + Duration::from_secs(HEADER_TIMEOUT_SECS + 2);
        let mut still_open = 0;
        for stream in &mut sockets {
            let mut byte = [0u8; 1];
            let left = deadline.saturating_duration_since(Instant::now());
            if let Err(_elapsed) = tokio::time::timeout(left, stream.read(&mut byte)).await {
                still_open += 1;
            }
        }
        ensure!(
            still_open == 0,
            "{still_open} of {} idle sockets still open {HEADER_TIMEOUT_SECS} + 2 s after the last was opened",
            sockets.len()
        );
        drop(sockets);
        eventually(Duration::from_secs(10), || async {
            let files = open_files(pid);
            ensure!(
                files <= baseline_files + 50,
                "gateway still has {files} files open ({baseline_files} before)"
            );
            Ok(())
        })
        .await?;
        healthz_once(addr).await?;
        Ok(())
    })
    .await;
}

// ------------------------------------------------------------------ hostile text

/// SQL metacharacters and Unicode that fools eyes or terminals: each must come
/// back exactly as sent, or be refused with a 400 naming the problem. Never a
/// 5xx. (NUL is left to the message-storage work of issue 10.)
const HOSTILE: &[&str] = &[
    "'; DROP TABLE messages; --",
    "\" OR \"1\"=\"1",
    "' OR '1'='1' --",
    "Robert'); DELETE FROM rooms WHERE ('1'='1",
    "%_\\%\\_ LIKE '%'",
    "$1 $$ $tag$ ::text E'\\x41'",
    "\\'; SELECT pg_sleep(5); --",
    "/* comment */ UNION SELECT id, name FROM users --",
    "\u{202E}txt.exe RTL override\u{202C}",
    "zero\u{200B}width\u{200C}non\u{200D}joiner\u{2060}\u{FEFF}bom",
    "C1 controls \u{0080}\u{0085}\u{009B}31m\u{009F}",
    "bidi isolates \u{2066}a\u{2067}b\u{2068}c\u{2069} \u{061C}",
    "e\u{0301}\u{0308}\u{20DD} combining, 👩\u{200D}👩\u{200D}👧 🏳\u{FE0F}\u{200D}🌈",
    "C0 tab\tnewline\ncr\r bell\u{0007} escape\u{001B}[2J",
    "surrogate-like \u{FFFD}\u{FFFF}\u{10FFFF}",
];

fn error_code(body: &Value) -> Option<&str> {
    body["error"]["code"]
        .as_str()
        .filter(|code| !code.is_empty())
}

/// 2xx, or a 400 with an error code; anything else (5xx above all) is a failure.
fn kept_or_refused(what: &str, status: StatusCode, body: &Value) -> Result<bool> {
    if status.is_success() {
        return Ok(true);
    }
    ensure!(
        status == 400 && error_code(body).is_some(),
        "{what}: {status} {body}"
    );
    Ok(false)
}

async fn hostile_text_in_every_rest_field_is_kept_verbatim_or_refused_never_a_500(
    cluster: &Cluster,
) -> Result<()> {
    let api = cluster.api(0);
    chatter_tests::chat::ensure_users(cluster, &["alice", "bob"]).await?;
    // alice's private room with bob: no hostile user may ever see it.
    let (status, private) = api
        .post_json(
            "/rooms",
            cluster.token("alice"),
            &json!({"members": ["bob"], "name": "private", "metadata": {"secret": "alice-only"}}),
        )
        .await?;
    ensure!(status == 201, "{status} {private}");
    let private_id = private["id"].as_str().context("id")?.to_owned();
    let mut bob = connect_ready(cluster, 1, "bob").await?;

    // Room names and metadata (keys and values), and message text and temp ids.
    let mut refusals = Vec::new();
    for (i, text) in HOSTILE.iter().enumerate() {
        let what = format!("room named {text:?}");
        let (status, room) = api
            .post_json(
                "/rooms",
                cluster.token("alice"),
                &json!({"members": ["bob"], "name": text, "metadata": {*text: text, "k": [text]}}),
            )
            .await?;
        if !kept_or_refused(&what, status, &room)? {
            refusals.push(format!("{what}: {}", room["error"]["code"]));
            continue;
        }
        let room_id = room["id"].as_str().context("id")?.to_owned();
        let (status, read) = api
            .get(&format!("/rooms/{room_id}"), cluster.token("bob"))
            .await?;
        ensure!(status == 200, "{what}: GET: {status} {read}");
        for view in [&room, &read] {
            ensure!(
                view["name"] == *text,
                "{what}: name came back as {}",
                view["name"]
            );
            ensure!(
                view["metadata"] == json!({*text: text, "k": [text]}),
                "{what}: metadata came back as {}",
                view["metadata"]
            );
        }

        let what = format!("message {text:?}");
        let temp_id = format!("{i}-{text}");
        let (status, published) = api
            .post_json(
                &format!("/rooms/{room_id}/messages"),
                cluster.token("alice"),
                &json!({"message": text, "message_temp_id": temp_id}),
            )
            .await?;
        if !kept_or_refused(&what, status, &published)? {
            refusals.push(format!("{what}: {}", published["error"]["code"]));
            continue;
        }
        ensure!(
            published["message_temp_id"] == temp_id,
            "{what}: temp id echoed as {}",
            published["message_temp_id"]
        );
        // The same temp id again is the same message (its dedupe key holds it exactly).
        let (status, again) = api
            .post_json(
                &format!("/rooms/{room_id}/messages"),
                cluster.token("alice"),
                &json!({"message": text, "message_temp_id": temp_id}),
            )
            .await?;
        ensure!(
            status == 201 && again["message_id"] == published["message_id"],
            "{what}: repeated temp id: {status} {again} vs {published}"
        );
        let live = chatter_tests::chat::recv_in_room(&mut bob, "MessageReceived", &room_id)
            .await
            .with_context(|| format!("{what}: live"))?;
        ensure!(
            live["message"] == *text && live["message_temp_id"] == temp_id,
            "{what}: delivered as {live}"
        );
        let stored =
            history_until(cluster, 0, "bob", &room_id, "stored", |m| !m.is_empty()).await?;
        ensure!(
            stored.len() == 1
                && stored[0]["message"] == *text
                && stored[0]["message_temp_id"] == temp_id,
            "{what}: stored as {stored:?}"
        );
    }
    println!("refused with a reason: {refusals:?}");

    // NUL, which Postgres cannot store, in the room and user fields: refused with
    // a reason. (In message text and temp ids it is the message path's to refuse.)
    let nul = "a\u{0000}b";
    for (body, code) in [
        (json!({"members": ["bob"], "name": nul}), "bad_name"),
        (
            json!({"members": ["bob"], "metadata": {"k": nul}}),
            "bad_metadata",
        ),
        (
            json!({"members": ["bob"], "metadata": {"k": [{"deep": nul}]}}),
            "bad_metadata",
        ),
        (
            json!({"members": ["bob"], "metadata": {nul: 1}}),
            "bad_metadata",
        ),
    ] {
        let (status, answer) = api
            .post_json("/rooms", cluster.token("alice"), &body)
            .await?;
        ensure!(
            status == 400 && error_code(&answer) == Some(code),
            "POST /rooms {body}: {status} {answer}"
        );
    }
    for (body, code) in [
        (json!({"id": "nul-user", "name": nul}), "bad_name"),
        (
            json!({"id": "nul-user", "user_group": nul}),
            "bad_user_group",
        ),
        (
            json!({"id": "nul-user", "roles": ["support", nul]}),
            "bad_roles",
        ),
        (json!({"id": nul}), "bad_user_id"),
    ] {
        let (status, answer) = api
            .post_json(
                "/users",
                Auth::Bearer(cluster.service_secret().into()),
                &body,
            )
            .await?;
        ensure!(
            status == 400 && error_code(&answer) == Some(code),
            "POST /users {body}: {status} {answer}"
        );
    }
    // A token's optional claims holding NUL are left out, not a failure of
    // every request the token makes.
    let mut claims = Cluster::claims("nul-claims");
    claims["name"] = json!(nul);
    claims["group"] = json!(nul);
    claims["roles"] = json!([nul]);
    let token = Cluster::token_with(&claims, cluster.jwt_secret());
    let (status, body) = api.get("/rooms", &token).await?;
    ensure!(
        status == 200,
        "a token with NUL in its name: {status} {body}"
    );

    // Temp ids and sender ids that would collide if dedupe keys were naive
    // concatenations: two users' messages, never one answered with the other's.
    let colliders = ["alice", "alice:x"];
    chatter_tests::chat::ensure_users(cluster, &colliders).await?;
    let (status, shared) = api
        .post_json(
            "/rooms",
            cluster.token("alice"),
            &json!({"members": ["alice:x"]}),
        )
        .await?;
    ensure!(status == 201, "{status} {shared}");
    let shared_id = shared["id"].as_str().context("id")?;
    let mut ids = Vec::new();
    for (sender, temp) in [("alice", "x:y"), ("alice:x", "y")] {
        let (status, published) = api
            .post_json(
                &format!("/rooms/{shared_id}/messages"),
                cluster.token(sender),
                &json!({"message": format!("from {sender}"), "message_temp_id": temp}),
            )
            .await?;
        ensure!(status == 201, "{sender}: {status} {published}");
        ids.push(published["message_id"].clone());
    }
    ensure!(
        ids[0] != ids[1],
        "two senders' messages deduplicated into one: {ids:?}"
    );

    // User ids: as token subjects and in the service upsert. Kept verbatim (and
    // seeing only their own rooms) or refused; never anyone else's data.
    for text in HOSTILE
        .iter()
        .chain(&["%", "_", "*", "alice%", "alice' OR '1'='1"])
    {
        let what = format!("user id {text:?}");
        let (status, upsert) = api
            .post_json(
                "/users",
                Auth::Bearer(cluster.service_secret().into()),
                &json!({"id": text, "name": text, "user_group": text}),
            )
            .await?;
        let upserted = kept_or_refused(&what, status, &upsert)?;
        ensure!(
            !upserted || upsert["id"] == *text,
            "{what}: stored as {}",
            upsert["id"]
        );
        let token = cluster.token(text);
        let (status, rooms) = api.get("/rooms", &token).await?;
        if !upserted {
            // The same rule refuses it as a token subject.
            ensure!(
                status == 401,
                "{what}: refused as an id, but its token got {status}"
            );
            continue;
        }
        ensure!(status == 200, "{what}: GET /rooms: {status} {rooms}");
        ensure!(
            rooms["rooms"].as_array().is_some_and(Vec::is_empty),
            "{what} sees rooms: {rooms}"
        );
        let (status, body) = api.get(&format!("/rooms/{private_id}"), &token).await?;
        ensure!(status == 404, "{what}: alice's room: {status} {body}");
        let mut query = reqwest::Url::parse("http://x/messages")?;
        query
            .query_pairs_mut()
            .append_pair("from", text)
            .append_pair("to", "alice");
        let path = format!("/messages?{}", query.query().unwrap_or_default());
        let (status, direct) = api.get(&path, &token).await?;
        ensure!(
            status == 200 && direct["room_id"].is_null(),
            "{what}: direct history with alice: {status} {direct}"
        );
        // And it can be a member, listed exactly as it is.
        let (status, room) = api
            .post_json(
                "/rooms",
                cluster.token("alice"),
                &json!({"members": [text]}),
            )
            .await?;
        ensure!(
            status == 201 && room["members"] == json!(["alice", text]),
            "{what}: as a member: {status} {room}"
        );
        let listed = list_rooms(cluster, 0, text).await?;
        ensure!(
            listed.len() == 1 && listed[0]["id"] == room["id"],
            "{what}: lists {listed:?}"
        );
    }

    // Hostile path and query parameters are 400s, not 500s.
    for path in [
        "/rooms/1'%20OR%20'1'='1".to_owned(),
        format!("/rooms/{private_id}'--"),
        format!("/rooms/{private_id}/messages?before_seq=1;DROP%20TABLE%20messages"),
        format!("/rooms/{private_id}/messages?limit=%E2%80%AE9"),
        "/rooms?cursor=%27%20OR%201%3D1%20--".to_owned(),
    ] {
        let (status, body) = api.get(&path, cluster.token("alice")).await?;
        ensure!(
            status == 400 && error_code(&body).is_some(),
            "GET {path}: {status} {body}"
        );
    }
    // A lone surrogate is not JSON text: refused as bad JSON.
    let response = cluster
        .http()
        .post(format!("{}/rooms", cluster.gateway(0).http_url()))
        .bearer_auth(cluster.token("alice"))
        .header("content-type", "application/json")
        .body(r#"{"members": ["bob"], "name": "\ud800"}"#)
        .send()
        .await?;
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    ensure!(status == 400, "a lone surrogate: {status} {body}");
    Ok(())
}

// ------------------------------------------------------ secrets and defaults (item 5)

/// `NOTIFICATION_AUTH` is sent to the notification service with every call:
/// it opens `POST /user` (the older identity service) and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn notification_auth_opens_only_the_legacy_user_upsert() {
    for with_service_secret in [false, true] {
        let mut builder = Cluster::builder(binaries!()).embedded();
        if !with_service_secret {
            builder = builder.without_env("SERVICE_SECRET");
        }
        chatter_tests::chat::run_with_cluster(builder, async |cluster| {
            let api = cluster.api(0);
            let notif = cluster.notif_auth().to_owned();
            let upsert = json!({"username": "dora", "user_group": "g1"});
            for auth in [Auth::Raw(notif.clone()), Auth::Bearer(notif.clone())] {
                let (status, body) = api.post_json("/user", auth, &upsert).await?;
                ensure!(
                    status == 200,
                    "POST /user with NOTIFICATION_AUTH: {status} {body}"
                );
            }
            // A burst of sign-ups from the identity service is a service's
            // traffic, not an anonymous client's: more than the per-IP burst
            // (REST_IP_RATE_BURST, 50), none refused 429.
            for n in 0..80 {
                let user = json!({"username": format!("signup{n}")});
                let (status, body) = api
                    .post_json("/user", Auth::Raw(notif.clone()), &user)
                    .await?;
                ensure!(
                    status == 200,
                    "sign-up {n} from the identity service: {status} {body}"
                );
            }
            let (status, room) = api
                .post_json("/rooms", cluster.token("dora"), &json!({"members": []}))
                .await?;
            ensure!(status == 201, "{status} {room}");
            let room_id = room["id"].as_str().context("id")?;
            let refused = [
                ("/users", json!({"id": "eve"})),
                ("/tokens", json!({"user_id": "dora"})),
                (
                    &format!("/rooms/{room_id}/messages") as &str,
                    json!({"message": "as dora", "sender_id": "dora"}),
                ),
            ];
            for (path, body) in &refused {
                for auth in [Auth::Raw(notif.clone()), Auth::Bearer(notif.clone())] {
                    let (status, answer) = api.post_json(path, auth, body).await?;
                    ensure!(
                        status == 401,
                        "POST {path} with NOTIFICATION_AUTH: {status} {answer}"
                    );
                }
            }
            let warning = "NOTIFICATION_AUTH is set but SERVICE_SECRET is not";
            if with_service_secret {
                ensure!(!cluster.gateway(0).logs().contains(warning));
                // SERVICE_SECRET itself still opens every service route.
                let (status, minted) = api
                    .post_json(
                        "/tokens",
                        Auth::Raw(cluster.service_secret().into()),
                        &json!({"user_id": "dora"}),
                    )
                    .await?;
                ensure!(status == 200, "{status} {minted}");
            } else {
                cluster
                    .gateway(0)
                    .wait_for_log(warning, Duration::from_secs(5))
                    .await?;
            }
            Ok(())
        })
        .await;
    }
}

#[cfg(unix)]
fn mode_of(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o777)
        .unwrap_or(0)
}

/// The development secret signs anyone's token, the SQLite file holds every
/// message: both are owner-only after every start, however they were left.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_embedded_secret_and_database_are_made_owner_only_on_every_start() {
    use std::os::unix::fs::PermissionsExt;
    let data = tempfile::tempdir().expect("temp dir");
    let secret = "0123456789abcdef".repeat(4);
    let secret_file = data.path().join("jwt_secret");
    let database = data.path().join("chatter.db");
    std::fs::write(&secret_file, &secret).expect("write");
    std::fs::write(&database, "").expect("write");
    for file in [&secret_file, &database] {
        std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    }
    let data_dir = data.path().to_str().expect("UTF-8").to_owned();
    let builder = Cluster::builder(binaries!())
        .embedded()
        .without_env("JWT_SECRET")
        .env("DATA_DIR", &data_dir);
    chatter_tests::chat::run_with_cluster(builder, async |cluster| {
        // The existing secret is the one in use...
        let token = Cluster::token_with(&Cluster::claims("alice"), &secret);
        let (status, body) = cluster.api(0).get("/rooms", &token).await?;
        ensure!(status == 200, "{status} {body}");
        // ...and it, the database and SQLite's side files are owner-only.
        for file in [
            "jwt_secret",
            "chatter.db",
            "chatter.db-wal",
            "chatter.db-shm",
        ] {
            let path = data.path().join(file);
            if file == "jwt_secret" || file == "chatter.db" || path.exists() {
                ensure!(mode_of(&path) == 0o600, "{file}: {:o}", mode_of(&path));
            }
        }
        Ok(())
    })
    .await;
}

/// With its generated development secret, the embedded mode listens on
/// 127.0.0.1 unless `HOST` says otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_development_secret_listens_on_loopback_unless_host_is_set() {
    for (host, reachable_from_elsewhere) in [(None, false), (Some("0.0.0.0"), true)] {
        let builder = Cluster::builder(binaries!())
            .embedded()
            .without_env("JWT_SECRET");
        // (`without_env` wins over `env`, so only one of them.)
        let builder = match host {
            Some(host) => builder.env("HOST", host),
            None => builder.without_env("HOST"),
        };
        chatter_tests::chat::run_with_cluster(builder, async |cluster| {
            let addr = cluster.gateway(0).addr();
            let port = addr.port();
            // 127.0.0.2 is loopback too, but not the address 127.0.0.1 binds.
            let other = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)), port);
            let reached = TcpStream::connect(other).await.is_ok();
            ensure!(
                reached == reachable_from_elsewhere,
                "HOST={host:?}: listening on {addr}, reachable on {other}: {reached}"
            );
            let local = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
            healthz_once(local).await?;
            Ok(())
        })
        .await;
    }
}
