//! Rate and connection limits (issue 10), end to end on both backends:
//!
//! - a socket over `FRAMES_PER_SEC` is slowed down, not dropped: a client that
//!   flushes 300 queued messages and resends each refused one after
//!   `retry_after_ms` ends with all of them confirmed and stored once, on the
//!   same socket; only a client that ignores the refusals is closed (4013);
//! - `MAX_CONNECTIONS_PER_USER`: a user's newest socket closes their oldest
//!   (4008), others are unaffected;
//! - REST: 429 `rate_limited` with `Retry-After` per user and per client IP,
//!   never for the probes; HTTP publish spends the sender's message rate.
//!
//! The rules are written down in docs/SECURITY.md ("Rate limits").

use anyhow::{Context, Result, bail, ensure};
use chatter_tests::chat::{FRAME_WAIT, connect_ready, create_room, ensure_users, send_message};
use chatter_tests::{Auth, Cluster, Incoming, WsClient, eventually};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet};
use std::time::Duration;
use tokio::time::Instant;

chatter_tests::on_every_backend!(
    a_flush_of_300_is_slowed_down_and_all_confirmed_on_one_socket: |b| b,
    a_client_that_ignores_retry_after_is_closed_with_4013: |b| b
        .env("FRAMES_PER_SEC", "5")
        .env("RATE_FLOOD_FRAMES", "40"),
    the_oldest_socket_over_max_connections_per_user_is_closed_with_4008: |b| b,
    rest_over_the_limit_gets_429_with_retry_after: |b| b
        .env("REST_RATE_PER_SEC", "1")
        .env("REST_RATE_BURST", "5")
        .env("REST_IP_RATE_PER_SEC", "1")
        .env("REST_IP_RATE_BURST", "5"),
    http_publish_spends_the_senders_message_rate: |b| b.env("FRAMES_PER_SEC", "2"),
);

// ------------------------------------------------------------------------- helpers

async fn ping_pong(ws: &mut WsClient, what: &str) -> Result<()> {
    ws.send_frame("Ping", json!({})).await?;
    ws.recv_type("Pong", FRAME_WAIT)
        .await
        .with_context(|| format!("{what} is still served"))?;
    Ok(())
}

/// `Ping` until `Pong`, waiting as told while the socket is over its rate.
async fn ping_as_told(ws: &mut WsClient, what: &str) -> Result<()> {
    for _ in 0..10 {
        ws.send_frame("Ping", json!({})).await?;
        let frames = chatter_tests::chat::frames_until(ws, what, |f| {
            f["type"] == "Pong" || (f["type"] == "Error" && f["data"]["code"] == "rate_limited")
        })
        .await?;
        match frames.last() {
            Some(f) if f["type"] == "Pong" => return Ok(()),
            Some(f) => {
                let wait = f["data"]["retry_after_ms"]
                    .as_u64()
                    .context("retry_after_ms")?;
                tokio::time::sleep(Duration::from_millis(wait)).await;
            }
            None => bail!("{what}: no answer"),
        }
    }
    bail!("{what}: still refused after 10 waits")
}

/// Every stored message of `room`, paging through history as `user`.
async fn all_messages(cluster: &Cluster, user: &str, room: &str) -> Result<Vec<Value>> {
    let mut messages: Vec<Value> = Vec::new();
    loop {
        let after = messages.last().and_then(|m| m["seq"].as_i64()).unwrap_or(0);
        let path = format!("/rooms/{room}/messages?after_seq={after}&limit=200");
        let (status, body) = cluster.api(0).get(&path, cluster.token(user)).await?;
        ensure!(status == 200, "GET {path}: {status} {body}");
        let page = body["messages"].as_array().cloned().unwrap_or_default();
        let full = page.len() == 200;
        messages.extend(page);
        if !full {
            return Ok(messages);
        }
    }
}

/// The value of gauge `name` on gateway `gateway`'s `/metrics`.
async fn gauge(cluster: &Cluster, gateway: usize, name: &str) -> Result<f64> {
    let (status, body) = cluster.api(gateway).get("/metrics", Auth::None).await?;
    ensure!(status == 200, "GET /metrics: {status}");
    let text = body.as_str().context("metrics are text")?;
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .context(format!("{name} in /metrics"))?
        .trim()
        .parse()
        .context("a number")
}

/// A raw GET, to read headers (`Retry-After`) as well as the JSON body.
async fn get_raw(
    cluster: &Cluster,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(StatusCode, Option<String>, Value)> {
    let mut request = cluster
        .http()
        .get(format!("{}{path}", cluster.gateway(0).http_url()));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request
        .send()
        .await
        .with_context(|| format!("GET {path}"))?;
    let status = response.status();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let text = response.text().await?;
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Ok((status, retry_after, body))
}

/// Checks a 429 answer: `Retry-After` in whole seconds, the JSON error body
/// with `retry_after_ms`; returns the wait.
fn expect_429(
    what: &str,
    (status, retry_after, body): &(StatusCode, Option<String>, Value),
) -> Result<Duration> {
    ensure!(
        *status == StatusCode::TOO_MANY_REQUESTS,
        "{what}: {status} {body}"
    );
    ensure!(body["error"]["code"] == "rate_limited", "{what}: {body}");
    let millis = body["error"]["retry_after_ms"]
        .as_u64()
        .with_context(|| format!("{what}: retry_after_ms in {body}"))?;
    let secs: u64 = retry_after
        .as_deref()
        .with_context(|| format!("{what}: a Retry-After header"))?
        .parse()
        .context("Retry-After is whole seconds")?;
    ensure!(
        secs >= 1 && secs * 1000 >= millis,
        "{what}: Retry-After {secs} s covers {millis} ms"
    );
    Ok(Duration::from_secs(secs))
}

// --------------------------------------------------------------------------- tests

/// A client comes back from an outage with 300 queued messages and sends them
/// all at once, far over `FRAMES_PER_SEC` (50, bursts of 100). Each one over
/// the rate is refused with `rate_limited` and a `retry_after_ms`; the client
/// resends it then. The socket stays open, and every message ends up confirmed
/// once and stored once, in the order the server accepted them. Before this
/// rule the 101st frame closed the socket with 4013.
async fn a_flush_of_300_is_slowed_down_and_all_confirmed_on_one_socket(
    cluster: &Cluster,
) -> Result<()> {
    const QUEUED: usize = 300;
    ensure_users(cluster, &["alice", "bob"]).await?;
    let room = create_room(cluster, 0, "alice", &["bob"]).await?;
    let mut ws = connect_ready(cluster, 0, "alice").await?;
    let temp_id = |n: usize| format!("queued-{n}");

    let started = Instant::now();
    for n in 0..QUEUED {
        send_message(&mut ws, &room, &format!("message {n}"), &temp_id(n)).await?;
    }
    // Resends due, earliest first: (when, message).
    let mut due: BinaryHeap<Reverse<(Instant, usize)>> = BinaryHeap::new();
    let mut accepted: Vec<(usize, i64)> = Vec::new();
    let mut seen: HashSet<usize> = HashSet::new();
    let (mut refusals, mut longest_wait) = (0usize, 0u64);
    let give_up = started + Duration::from_secs(60);
    while accepted.len() < QUEUED {
        ensure!(
            Instant::now() < give_up,
            "after 60 s: {} confirmed, {refusals} refusals",
            accepted.len()
        );
        while let Some(Reverse((at, n))) = due.peek().copied() {
            if at > Instant::now() {
                break;
            }
            due.pop();
            send_message(&mut ws, &room, &format!("message {n}"), &temp_id(n)).await?;
        }
        let until = due
            .peek()
            .map_or(give_up, |Reverse((at, _))| *at)
            .min(give_up);
        let frame = match ws.recv_until(until).await? {
            None => continue,
            Some(Incoming::Closed { code, reason }) => bail!(
                "the socket was closed ({code} {reason:?}) after {} confirmations and {refusals} refusals",
                accepted.len()
            ),
            Some(Incoming::Frame(frame)) => frame,
        };
        if frame["type"] != "MessageSentConfirmation" {
            continue;
        }
        let data = &frame["data"];
        let n: usize = data["message_temp_id"]
            .as_str()
            .and_then(|t| t.strip_prefix("queued-"))
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("the temp id is echoed: {data}"))?;
        if data["confirmed"] == true {
            ensure!(seen.insert(n), "message {n} confirmed twice: {data}");
            accepted.push((n, data["seq"].as_i64().context("seq")?));
        } else {
            ensure!(
                data["reason"] == "rate_limited",
                "refused otherwise: {data}"
            );
            let wait = data["retry_after_ms"]
                .as_u64()
                .with_context(|| format!("retry_after_ms: {data}"))?;
            refusals += 1;
            longest_wait = longest_wait.max(wait);
            due.push(Reverse((Instant::now() + Duration::from_millis(wait), n)));
        }
    }
    let elapsed = started.elapsed();
    println!(
        "flush of {QUEUED}: all confirmed in {elapsed:?}, {refusals} refusals, longest retry_after_ms {longest_wait}"
    );
    ensure!(refusals > 0, "the flush went over the rate");
    // Refused frames are given successive slots, so nearly every one gets
    // through on its first retry; were they all told "the next token", each
    // round would admit one and refuse the rest (hundreds of rounds).
    ensure!(
        refusals < QUEUED,
        "{refusals} refusals for {QUEUED} messages"
    );
    let seqs: Vec<i64> = accepted.iter().map(|(_, seq)| *seq).collect();
    ensure!(
        seqs == (1..=QUEUED as i64).collect::<Vec<_>>(),
        "confirmed seqs in acceptance order are 1..=300: {seqs:?}"
    );
    ping_as_told(&mut ws, "the flushing socket").await?;

    // Polled gently: bob's REST budget (20/s) is spent by polling too.
    let wait_for_store = Instant::now() + Duration::from_secs(30);
    let stored = loop {
        let messages = all_messages(cluster, "bob", &room).await?;
        if messages.len() >= QUEUED {
            break messages;
        }
        ensure!(
            Instant::now() < wait_for_store,
            "{} of {QUEUED} stored after 30 s",
            messages.len()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let stored_ids: Vec<&str> = stored
        .iter()
        .filter_map(|m| m["message_temp_id"].as_str())
        .collect();
    let accepted_ids: Vec<String> = accepted.iter().map(|(n, _)| temp_id(*n)).collect();
    ensure!(
        stored.len() == QUEUED && stored_ids == accepted_ids,
        "stored once each, in acceptance order: {stored_ids:?}"
    );
    Ok(())
}

/// Over the rate, a `Ping` gets `Error {code: "rate_limited", retry_after_ms}`
/// and a `SendMessage` a refusal echoing its temp id; waiting as told lets the
/// client through. A client that keeps sending anyway has more than
/// `RATE_FLOOD_FRAMES` refusals outstanding at some point and is closed with
/// 4013 — after being told, not at the first frame over the rate.
async fn a_client_that_ignores_retry_after_is_closed_with_4013(cluster: &Cluster) -> Result<()> {
    // FRAMES_PER_SEC 5: bursts of 10, then a token every 200 ms.
    ensure_users(cluster, &["alice", "bob"]).await?;
    let room = create_room(cluster, 0, "alice", &["bob"]).await?;
    let mut ws = connect_ready(cluster, 0, "alice").await?; // 1 frame
    for _ in 0..9 {
        ping_pong(&mut ws, "a socket within its burst").await?;
    }
    ws.send_frame("Ping", json!({})).await?;
    let error = ws.recv_type("Error", FRAME_WAIT).await?;
    ensure!(error["code"] == "rate_limited", "{error}");
    let first_wait = error["retry_after_ms"].as_u64().context("retry_after_ms")?;
    ensure!((1..=200).contains(&first_wait), "{error}");
    send_message(&mut ws, &room, "over the rate", "t-over").await?;
    let refused = ws.recv_type("MessageSentConfirmation", FRAME_WAIT).await?;
    ensure!(
        refused["confirmed"] == false
            && refused["reason"] == "rate_limited"
            && refused["message_temp_id"] == "t-over",
        "{refused}"
    );
    let second_wait = refused["retry_after_ms"]
        .as_u64()
        .context("retry_after_ms")?;
    ensure!(
        second_wait >= first_wait + 150,
        "the second refusal gets the next slot: {first_wait} then {second_wait} ms"
    );
    tokio::time::sleep(Duration::from_millis(second_wait)).await;
    ping_pong(&mut ws, "a socket that waited as told").await?;
    send_message(&mut ws, &room, "over the rate", "t-over").await?;
    let confirmed = ws.recv_type("MessageSentConfirmation", FRAME_WAIT).await?;
    ensure!(
        confirmed["confirmed"] == true && confirmed["seq"] == 1,
        "{confirmed}"
    );

    // Now flat out, never reading.
    for _ in 0..300 {
        if ws.send_frame("Ping", json!({})).await.is_err() {
            break;
        }
    }
    let close = ws.expect_close(FRAME_WAIT).await?;
    ensure!(close.code == 4013, "{close:?}");
    ensure!(
        close.frame("Disconnection").map(|d| d["code"].clone()) == Some(json!(4013)),
        "told why: {close:?}"
    );
    let told = close
        .frames_before
        .iter()
        .filter(|f| f["type"] == "Error" && f["data"]["code"] == "rate_limited")
        .count();
    println!("flood: closed with 4013 after {told} rate_limited answers");
    ensure!(
        (30..=60).contains(&told),
        "about RATE_FLOOD_FRAMES (40) refusals before the close, got {told}"
    );
    Ok(())
}

/// `MAX_CONNECTIONS_PER_USER` (32): the 33rd socket of a user on a gateway
/// closes their oldest with 4008 (a device that stayed away is the likeliest
/// to be stale); the others and other users' sockets stay open, closing
/// sockets frees places, and the cap is per gateway.
async fn the_oldest_socket_over_max_connections_per_user_is_closed_with_4008(
    cluster: &Cluster,
) -> Result<()> {
    const MAX: usize = 32;
    let mut alice = Vec::new();
    for _ in 0..MAX {
        alice.push(connect_ready(cluster, 0, "alice").await?);
    }
    let mut bob = connect_ready(cluster, 0, "bob").await?;
    let open = gauge(cluster, 0, "chatter_connections").await?;

    alice.push(connect_ready(cluster, 0, "alice").await?);
    let close = alice[0].expect_close(FRAME_WAIT).await?;
    ensure!(close.code == 4008, "{close:?}");
    ensure!(
        close.frame("Disconnection").map(|d| d["code"].clone()) == Some(json!(4008)),
        "told why: {close:?}"
    );
    alice.remove(0);
    for (i, ws) in alice.iter_mut().enumerate() {
        ping_pong(ws, &format!("alice's socket {i}")).await?;
    }
    ping_pong(&mut bob, "bob's socket").await?;
    ensure!(
        alice[0]
            .skipped()
            .iter()
            .all(|f| f["type"] != "Disconnection"),
        "only the oldest was closed"
    );

    // Two closed by the client free two places: two new ones close nobody.
    for mut ws in alice.drain(..2) {
        ws.close().await?;
        let _ = ws.expect_close(FRAME_WAIT).await;
    }
    eventually(FRAME_WAIT, || async {
        let now = gauge(cluster, 0, "chatter_connections").await?;
        ensure!(now <= open - 2.0, "{now} open, waiting for {}", open - 2.0);
        Ok(())
    })
    .await?;
    for _ in 0..2 {
        alice.push(connect_ready(cluster, 0, "alice").await?);
    }
    for (i, ws) in alice.iter_mut().enumerate() {
        ping_pong(ws, &format!("alice's socket {i} after two left")).await?;
        ensure!(
            ws.skipped().iter().all(|f| f["type"] != "Disconnection"),
            "socket {i} was not told to go"
        );
    }

    // Per gateway: another gateway holds alice's sockets of its own.
    if !cluster.is_embedded() {
        let mut elsewhere = connect_ready(cluster, 1, "alice").await?;
        ping_pong(&mut elsewhere, "alice on gateway 1").await?;
        ensure!(
            alice[0]
                .expect_silence("Disconnection", Duration::from_millis(300))
                .await
                .is_ok(),
            "a socket on another gateway replaces nobody here"
        );
    }
    Ok(())
}

/// REST limits: per user (`REST_RATE_BURST` 5 at 1/s here) and per client IP
/// for requests without valid credentials (5 at 1/s). Over them: 429
/// `rate_limited` with `Retry-After`; others are unaffected, waiting lets the
/// client through, and the probes are never limited.
async fn rest_over_the_limit_gets_429_with_retry_after(cluster: &Cluster) -> Result<()> {
    let carol = format!("Bearer {}", cluster.token("carol"));
    let dave = format!("Bearer {}", cluster.token("dave"));
    for n in 0..5 {
        let (status, _, body) = get_raw(cluster, "/rooms", &[("authorization", &carol)]).await?;
        ensure!(status == 200, "carol's request {n}: {status} {body}");
    }
    let over = get_raw(cluster, "/rooms", &[("authorization", &carol)]).await?;
    let wait = expect_429("carol's 6th request", &over)?;
    let (status, _, body) = get_raw(cluster, "/rooms", &[("authorization", &dave)]).await?;
    ensure!(
        status == 200,
        "dave is not limited by carol: {status} {body}"
    );
    tokio::time::sleep(wait).await;
    let (status, _, body) = get_raw(cluster, "/rooms", &[("authorization", &carol)]).await?;
    ensure!(status == 200, "carol after Retry-After: {status} {body}");

    // Probes and metrics: never limited, whatever the IP's budget.
    for _ in 0..10 {
        for probe in ["/healthz", "/readyz", "/metrics"] {
            let (status, _, _) = get_raw(cluster, probe, &[]).await?;
            ensure!(status == 200, "{probe}: {status}");
        }
    }

    // Without valid credentials the client IP pays, refused tokens included.
    for n in 0..5 {
        let (status, _, _) = get_raw(cluster, "/openapi.json", &[]).await?;
        ensure!(status == 200, "anonymous request {n}: {status}");
    }
    let over = get_raw(cluster, "/openapi.json", &[]).await?;
    expect_429("the 6th anonymous request", &over)?;
    let bad_token = get_raw(
        cluster,
        "/rooms",
        &[("authorization", "Bearer not-a-token")],
    )
    .await?;
    expect_429("a refused token", &bad_token)?;
    // TRUST_FORWARDED_FOR is off: a made-up X-Forwarded-For buys nothing.
    let spoofed = get_raw(
        cluster,
        "/openapi.json",
        &[("x-forwarded-for", "203.0.113.7")],
    )
    .await?;
    expect_429("a spoofed X-Forwarded-For", &spoofed)?;
    // Valid users and services do not share the IP's budget.
    let (status, _, body) = get_raw(cluster, "/rooms", &[("authorization", &dave)]).await?;
    ensure!(status == 200, "dave from the same IP: {status} {body}");
    for n in 0..10 {
        let (status, body) = cluster
            .api(0)
            .post_json(
                "/users",
                Auth::Bearer(cluster.service_secret().into()),
                &json!({"id": format!("user-{n}")}),
            )
            .await?;
        ensure!(status.is_success(), "service call {n}: {status} {body}");
    }
    Ok(())
}

/// `POST /rooms/{id}/messages` spends the sender's message budget (the rate of
/// one socket: `FRAMES_PER_SEC` 2 here, bursts of 4), also when a service
/// publishes on the sender's behalf; other senders are unaffected.
///
/// The budget refills while the test runs (one message per 500 ms), and a
/// loaded CI machine can take that long between two requests, so the test
/// counts what the budget allows in the time it took instead of assuming
/// that the fifth request is the first one refused.
async fn http_publish_spends_the_senders_message_rate(cluster: &Cluster) -> Result<()> {
    ensure_users(cluster, &["alice", "bob"]).await?;
    let room = create_room(cluster, 0, "alice", &["bob"]).await?;
    let path = format!("/rooms/{room}/messages");
    let publish = |auth: Auth, body: Value| {
        let path = path.clone();
        async move {
            let mut request = cluster
                .http()
                .post(format!("{}{path}", cluster.gateway(0).http_url()))
                .json(&body);
            request = match auth {
                Auth::Bearer(token) => request.bearer_auth(token),
                Auth::Raw(value) => request.header(reqwest::header::AUTHORIZATION, value),
                Auth::None => request,
            };
            let response = request.send().await?;
            let status = response.status();
            let retry_after = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let text = response.text().await?;
            let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
            anyhow::Ok((status, retry_after, body))
        }
    };
    let alice = || Auth::Bearer(cluster.token("alice"));
    let service = || Auth::Bearer(cluster.service_secret().into());
    let mut sent = 0;
    let mut wait = None;
    for round in 0..5 {
        // Spend alice's budget until she is refused: the burst of 4, plus
        // what refilled meanwhile.
        let started = Instant::now();
        let mut accepted = 0u128;
        let over = loop {
            let answer = publish(
                alice(),
                json!({"message": format!("http {sent}"), "message_temp_id": format!("h-{sent}")}),
            )
            .await?;
            sent += 1;
            if answer.0 != StatusCode::CREATED {
                break answer;
            }
            accepted += 1;
            let allowed = 4 + 1 + started.elapsed().as_millis() / 500;
            ensure!(
                accepted <= allowed,
                "alice had {accepted} messages accepted over HTTP in {:?}; her budget allows {allowed}",
                started.elapsed()
            );
        };
        ensure!(
            round > 0 || accepted >= 4,
            "alice's first {accepted} messages over HTTP were accepted, not her burst of 4"
        );
        let refused_at = Instant::now();
        let retry = expect_429("alice's message over her budget over HTTP", &over)?;
        let refill = Duration::from_millis(over.2["error"]["retry_after_ms"].as_u64().unwrap_or(0));
        let on_behalf = publish(
            service(),
            json!({"message": "for alice", "sender_id": "alice"}),
        )
        .await?;
        if on_behalf.0 == StatusCode::CREATED && refused_at.elapsed() >= refill {
            // Her budget refilled before the service's call arrived, which
            // is fair: spend it again and retry.
            continue;
        }
        expect_429("a service publishing as alice", &on_behalf)?;
        wait = Some(retry);
        break;
    }
    let wait =
        wait.context("in five rounds the service's call never came within alice's refill")?;
    let (status, _, body) =
        publish(service(), json!({"message": "for bob", "sender_id": "bob"})).await?;
    ensure!(status == 201, "bob's budget is his own: {status} {body}");
    tokio::time::sleep(wait).await;
    let (status, _, body) = publish(
        alice(),
        json!({"message": "after the wait", "message_temp_id": "h-after"}),
    )
    .await?;
    ensure!(status == 201, "alice after Retry-After: {status} {body}");
    Ok(())
}
