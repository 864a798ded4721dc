//! Moderation (issue 16) on a real cluster (two gateways, Redis, Postgres, a
//! worker) and in the embedded mode: admins and the audit log, kicks and bans
//! acting on every gateway, mutes, blocks, reports, single sessions, and the
//! content policy against a real HTTP fake of a moderation service.
//!
//! "Within 1 s" is the API's promise for kicks and bans reaching another
//! gateway; the tests measure from the admin's request to the close.

use anyhow::{Context, Result, bail, ensure};
use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use chatter_tests::chat::{
    FRAME_WAIT, connect_ready, create_room, create_room_with, ensure_users, next_message,
    run_with_cluster, send_and_confirm,
};
use chatter_tests::{Auth, Cluster, ClusterBuilder, binaries, eventually};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How long a change may take to reach every gateway, as the API promises.
const WITHIN: Duration = Duration::from_secs(1);
/// How long a test waits for something that should happen.
const WAIT: Duration = Duration::from_secs(10);

fn admin(cluster: &Cluster) -> String {
    cluster.token_with_roles("root", &["admin"])
}

/// The audit log's newest entries, as `(action, target)`.
async fn audit(cluster: &Cluster) -> Result<Vec<(String, String)>> {
    let (status, body) = cluster
        .api(0)
        .get("/admin/audit?limit=200", admin(cluster))
        .await?;
    ensure!(status == 200, "GET /admin/audit: {status} {body}");
    Ok(body["entries"]
        .as_array()
        .context("entries")?
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap_or_default().to_owned(),
                e["target"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect())
}

async fn expect_close_code(ws: &mut chatter_tests::WsClient, code: u16) -> Result<Value> {
    let closed = ws.expect_close(WAIT).await?;
    ensure!(closed.code == code, "closed with {closed:?}, not {code}");
    let notice = closed
        .frame("Disconnection")
        .cloned()
        .context("a Disconnection frame before the close")?;
    ensure!(notice["code"] == code, "Disconnection {notice}");
    Ok(notice)
}

/// Opens a socket expecting the server to refuse it with `code` at once.
async fn expect_refused(cluster: &Cluster, gateway: usize, user: &str, code: u16) -> Result<()> {
    let mut ws = cluster
        .connect_ws(gateway, &cluster.token(user))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    expect_close_code(&mut ws, code).await.map(|_| ())
}

/// Sends `text` (with fresh temp ids) until the answer's reason is `reason`
/// (`None`: until confirmed): a change made through another gateway reaches
/// this one within a second, not at once.
async fn send_until(
    ws: &mut chatter_tests::WsClient,
    room: &str,
    text: &str,
    reason: Option<&str>,
) -> Result<Value> {
    let deadline = Instant::now() + WAIT;
    let mut n = 0;
    loop {
        n += 1;
        let answer = send_and_confirm(ws, room, text, &format!("{text}-{n}")).await?;
        let done = match reason {
            None => answer["confirmed"] == true,
            Some(reason) => answer["reason"] == reason,
        };
        if done {
            return Ok(answer);
        }
        ensure!(
            Instant::now() < deadline,
            "still answered {answer} after {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ------------------------------------------------------------------ admins

async fn admin_routes_need_the_admin_role(cluster: &Cluster) -> Result<()> {
    ensure_users(cluster, &["mallory"]).await?;
    for path in ["/admin/audit", "/admin/flags", "/admin/reports"] {
        let (status, body) = cluster.api(1).get(path, cluster.token("mallory")).await?;
        ensure!(
            status == 403 && body["error"]["code"] == "not_admin",
            "{path}: {status} {body}"
        );
        let (status, body) = cluster.api(1).get(path, admin(cluster)).await?;
        ensure!(status == 200, "{path} as admin: {status} {body}");
    }
    let (status, body) = cluster
        .api(0)
        .post_json(
            "/admin/users/bob/kick",
            cluster.token("mallory"),
            &json!({}),
        )
        .await?;
    ensure!(
        status == 403 && body["error"]["code"] == "not_admin",
        "{status} {body}"
    );
    let (status, _) = cluster.api(0).get("/admin/audit", Auth::None).await?;
    ensure!(status == 401, "anonymous: {status}");
    // The role may come from the stored user record instead of the token.
    let (status, body) = cluster
        .api(0)
        .post_json(
            "/users",
            Auth::Bearer(cluster.service_secret().to_owned()),
            &json!({"id": "keeper", "roles": ["admin"]}),
        )
        .await?;
    ensure!(status == 200, "POST /users: {status} {body}");
    let (status, body) = cluster
        .api(1)
        .get("/admin/audit", cluster.token("keeper"))
        .await?;
    ensure!(status == 200, "stored admin: {status} {body}");
    let (status, body) = cluster
        .api(0)
        .get("/admin/audit?limit=0", admin(cluster))
        .await?;
    ensure!(
        status == 400 && body["error"]["code"] == "bad_limit",
        "{status} {body}"
    );
    let (status, body) = cluster
        .api(0)
        .get("/admin/audit?cursor=nope", admin(cluster))
        .await?;
    ensure!(
        status == 400 && body["error"]["code"] == "bad_cursor",
        "{status} {body}"
    );
    Ok(())
}

async fn the_audit_log_pages_newest_first(cluster: &Cluster) -> Result<()> {
    for user in ["u1", "u2", "u3"] {
        let (status, body) = cluster
            .api(0)
            .post_json(
                &format!("/admin/users/{user}/kick"),
                admin(cluster),
                &json!({"reason": "test"}),
            )
            .await?;
        ensure!(status == 200, "kick {user}: {status} {body}");
    }
    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let (status, body) = cluster
            .api(1)
            .get(
                &format!("/admin/audit?limit=2&cursor={cursor}"),
                admin(cluster),
            )
            .await?;
        ensure!(status == 200, "{status} {body}");
        for entry in body["entries"].as_array().context("entries")? {
            ensure!(
                entry["actor_id"] == "root" && entry["reason"] == "test",
                "{entry}"
            );
            seen.push(entry["target"].as_str().unwrap_or_default().to_owned());
        }
        match body["next_cursor"].as_str() {
            Some(next) => cursor = next.to_owned(),
            None => break,
        }
    }
    ensure!(
        seen == ["u3", "u2", "u1"],
        "newest first over pages: {seen:?}"
    );
    Ok(())
}

// ------------------------------------------------------------------ kick and ban

async fn a_kick_on_one_gateway_closes_sockets_on_the_other_within_a_second(
    cluster: &Cluster,
) -> Result<()> {
    let mut near = connect_ready(cluster, 0, "alice").await?;
    let mut far = connect_ready(cluster, 1, "alice").await?;
    let mut bystander = connect_ready(cluster, 1, "bob").await?;
    let started = Instant::now();
    let (status, body) = cluster
        .api(0)
        .post_json(
            "/admin/users/alice/kick",
            admin(cluster),
            &json!({"reason": "cool off"}),
        )
        .await?;
    ensure!(status == 200 && body["action"] == "kick", "{status} {body}");
    let notice = expect_close_code(&mut far, 4004).await?;
    let elapsed = started.elapsed();
    ensure!(elapsed < WITHIN, "the far socket closed after {elapsed:?}");
    ensure!(notice["reason"] == "cool off", "{notice}");
    expect_close_code(&mut near, 4004).await?;
    bystander.send_frame("Ping", json!({})).await?;
    bystander.recv_type("Pong", FRAME_WAIT).await?;
    // A kick is not a ban: alice comes straight back.
    connect_ready(cluster, 1, "alice").await?;
    ensure!(
        audit(cluster)
            .await?
            .contains(&("kick".into(), "alice".into()))
    );
    Ok(())
}

async fn a_ban_closes_and_refuses_everywhere_until_lifted(cluster: &Cluster) -> Result<()> {
    ensure_users(cluster, &["alice", "bob"]).await?;
    let mut far = connect_ready(cluster, 1, "alice").await?;
    let started = Instant::now();
    let (status, body) = cluster
        .api(0)
        .post_json(
            "/admin/users/alice/ban",
            admin(cluster),
            &json!({"reason": "spam"}),
        )
        .await?;
    ensure!(status == 200 && body["until"].is_null(), "{status} {body}");
    expect_close_code(&mut far, 4005).await?;
    let elapsed = started.elapsed();
    ensure!(elapsed < WITHIN, "the far socket closed after {elapsed:?}");
    // Known on the other gateway within a second.
    eventually(WAIT, || async {
        let (status, _) = cluster.api(1).get("/rooms", cluster.token("alice")).await?;
        ensure!(status == 403, "not refused yet: {status}");
        Ok(())
    })
    .await?;
    ensure!(
        started.elapsed() < WITHIN,
        "refused after {:?}",
        started.elapsed()
    );
    // Refused everywhere, by every door.
    let refused = async |gateway: usize| -> Result<()> {
        expect_refused(cluster, gateway, "alice", 4005).await?;
        for path in ["/rooms", "/ws_token", "/connections"] {
            let (status, body) = cluster
                .api(gateway)
                .get(path, cluster.token("alice"))
                .await?;
            ensure!(
                status == 403 && body["error"]["code"] == "banned",
                "{path} on {gateway}: {status} {body}"
            );
        }
        let (status, body) = cluster
            .api(gateway)
            .post_json(
                "/tokens",
                Auth::Bearer(cluster.service_secret().to_owned()),
                &json!({"user_id": "alice"}),
            )
            .await?;
        ensure!(
            status == 403 && body["error"]["code"] == "banned",
            "POST /tokens: {status} {body}"
        );
        let (status, body) = cluster
            .api(gateway)
            .get(
                "/token/alice",
                Auth::Bearer(cluster.service_secret().to_owned()),
            )
            .await?;
        ensure!(
            status == 403 && body["error"]["code"] == "banned",
            "GET /token: {status} {body}"
        );
        Ok(())
    };
    refused(1).await?;
    refused(0).await?;
    let (status, _) = cluster.api(1).get("/rooms", cluster.token("bob")).await?;
    ensure!(status == 200, "others are unaffected: {status}");
    // Lifted: back in on every gateway within a second.
    let (status, body) = cluster
        .api(0)
        .delete("/admin/users/alice/ban", admin(cluster))
        .await?;
    ensure!(status == 204, "{status} {body}");
    let lifted = Instant::now();
    eventually(WAIT, || async {
        let (status, _) = cluster.api(1).get("/rooms", cluster.token("alice")).await?;
        ensure!(status == 200, "still refused: {status}");
        Ok(())
    })
    .await?;
    ensure!(
        lifted.elapsed() < WITHIN,
        "lifted after {:?}",
        lifted.elapsed()
    );
    connect_ready(cluster, 1, "alice").await?;
    let (status, body) = cluster
        .api(0)
        .delete("/admin/users/alice/ban", admin(cluster))
        .await?;
    ensure!(
        status == 404 && body["error"]["code"] == "not_banned",
        "{status} {body}"
    );
    let log = audit(cluster).await?;
    for action in ["ban", "unban"] {
        ensure!(
            log.contains(&(action.into(), "alice".into())),
            "{action} in {log:?}"
        );
    }
    Ok(())
}

async fn a_ban_with_until_ends_by_itself(cluster: &Cluster) -> Result<()> {
    ensure_users(cluster, &["carol"]).await?;
    let (status, body) = cluster
        .api(0)
        .post_json(
            "/admin/users/carol/ban",
            admin(cluster),
            &json!({"until": "2001-01-01T00:00:00Z"}),
        )
        .await?;
    ensure!(
        status == 400 && body["error"]["code"] == "bad_until",
        "{status} {body}"
    );
    let until = time::OffsetDateTime::now_utc() + time::Duration::seconds(3);
    let until = until
        .format(&time::format_description::well_known::Rfc3339)
        .context("format")?;
    let (status, body) = cluster
        .api(0)
        .post_json(
            "/admin/users/carol/ban",
            admin(cluster),
            &json!({"until": until}),
        )
        .await?;
    ensure!(status == 200, "{status} {body}");
    // The gateway that took the ban knows it before it answers; the other soon.
    let (status, _) = cluster.api(0).get("/rooms", cluster.token("carol")).await?;
    ensure!(status == 403, "banned for now: {status}");
    eventually(WAIT, || async {
        let (status, _) = cluster.api(1).get("/rooms", cluster.token("carol")).await?;
        ensure!(status == 403, "not banned yet: {status}");
        Ok(())
    })
    .await?;
    eventually(WAIT, || async {
        let (status, _) = cluster.api(1).get("/rooms", cluster.token("carol")).await?;
        ensure!(status == 200, "still banned: {status}");
        Ok(())
    })
    .await?;
    connect_ready(cluster, 1, "carol").await.map(|_| ())
}

/// Bans live in the database: after every process restarts, still banned.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_ban_survives_a_restart_of_every_process() {
    survives_restart(false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn embedded_a_ban_survives_a_restart() {
    survives_restart(true).await
}

async fn survives_restart(embedded: bool) {
    let builder = Cluster::builder(binaries!()).gateways(2);
    let builder = if embedded {
        builder.embedded()
    } else {
        builder
    };
    let mut cluster = builder.start().await.expect("cluster");
    let run = async {
        ensure_users(&cluster, &["dave"]).await?;
        let (status, body) = cluster
            .api(0)
            .post_json("/admin/users/dave/ban", admin(&cluster), &json!({}))
            .await?;
        ensure!(status == 200, "{status} {body}");
        if embedded {
            cluster.restart_gateway(0).await?;
        } else {
            cluster.postgres_mut().restart().await?;
            cluster.redis_mut().restart().await?;
            cluster.restart_worker(0).await?;
            cluster.restart_gateway(0).await?;
            cluster.restart_gateway(1).await?;
        }
        for gateway in [0, 1] {
            expect_refused(&cluster, gateway, "dave", 4005).await?;
            let (status, body) = cluster
                .api(gateway)
                .get("/rooms", cluster.token("dave"))
                .await?;
            ensure!(
                status == 403 && body["error"]["code"] == "banned",
                "{status} {body}"
            );
        }
        Ok::<_, anyhow::Error>(())
    };
    if let Err(error) = run.await {
        panic!("{error:?}");
    }
}

// ------------------------------------------------------------------ single session

async fn a_new_connection_closes_older_ones_on_every_gateway(cluster: &Cluster) -> Result<()> {
    let mut first = connect_ready(cluster, 0, "erin").await?;
    let mut other_user = connect_ready(cluster, 0, "frank").await?;
    let mut second = connect_ready(cluster, 1, "erin").await?;
    let notice = expect_close_code(&mut first, 4008).await?;
    ensure!(
        notice["reason"].as_str().is_some_and(|r| !r.is_empty()),
        "{notice}"
    );
    second.send_frame("Ping", json!({})).await?;
    second.recv_type("Pong", FRAME_WAIT).await?;
    other_user.send_frame("Ping", json!({})).await?;
    other_user.recv_type("Pong", FRAME_WAIT).await?;
    // The newest always wins, on the same gateway too.
    let mut third = connect_ready(cluster, 1, "erin").await?;
    expect_close_code(&mut second, 4008).await?;
    third
        .expect_silence("Disconnection", Duration::from_millis(500))
        .await?;
    Ok(())
}

async fn multi_session_is_the_default(cluster: &Cluster) -> Result<()> {
    let mut first = connect_ready(cluster, 0, "erin").await?;
    let _second = connect_ready(cluster, 1, "erin").await?;
    first
        .expect_silence("Disconnection", Duration::from_millis(500))
        .await?;
    first.send_frame("Ping", json!({})).await?;
    first.recv_type("Pong", FRAME_WAIT).await.map(|_| ())
}

// ------------------------------------------------------------------ mutes

async fn a_muted_member_reads_but_cannot_send(cluster: &Cluster) -> Result<()> {
    ensure_users(cluster, &["owner", "bob", "carl"]).await?;
    let room = create_room(cluster, 0, "owner", &["bob", "carl"]).await?;
    let mut owner = connect_ready(cluster, 0, "owner").await?;
    let mut bob = connect_ready(cluster, 1, "bob").await?;
    let mute = |user: &str, by: &str| {
        let body = json!({"user_id": user});
        let token = cluster.token(by);
        let path = format!("/rooms/{room}/mutes");
        async move { cluster.api(0).post_json(&path, token, &body).await }
    };
    let (status, body) = mute("bob", "carl").await?;
    ensure!(
        status == 403 && body["error"]["code"] == "not_owner",
        "{status} {body}"
    );
    let (status, body) = mute("bob", "stranger").await?;
    ensure!(status == 404, "a stranger: {status} {body}");
    let (status, body) = mute("bob", "owner").await?;
    ensure!(status == 200 && body["user_id"] == "bob", "{status} {body}");
    // Refused on the other gateway once it heard the notice.
    let started = Instant::now();
    send_until(&mut bob, &room, "hello?", Some("muted")).await?;
    ensure!(
        started.elapsed() < WITHIN,
        "muted after {:?}",
        started.elapsed()
    );
    chatter_tests::chat::post_refused(cluster, 1, "bob", &room, 403, "muted").await?;
    // Still reads.
    let sent = send_and_confirm(&mut owner, &room, "quiet please", "o1").await?;
    ensure!(sent["confirmed"] == true, "{sent}");
    chatter_tests::chat::recv_matching(&mut bob, "MessageReceived", "from the owner", |m| {
        m["message"] == "quiet please"
    })
    .await?;
    // An admin may unmute too.
    let (status, body) = cluster
        .api(1)
        .delete(&format!("/rooms/{room}/mutes/bob"), admin(cluster))
        .await?;
    ensure!(status == 204, "{status} {body}");
    send_until(&mut bob, &room, "thanks", None).await?;
    let (status, _) = cluster
        .api(1)
        .delete(&format!("/rooms/{room}/mutes/bob"), cluster.token("owner"))
        .await?;
    ensure!(status == 404, "not muted any more: {status}");
    let target = format!("{room}/bob");
    let log = audit(cluster).await?;
    ensure!(log.contains(&("mute".into(), target.clone())), "{log:?}");
    ensure!(log.contains(&("unmute".into(), target)), "{log:?}");
    Ok(())
}

// ------------------------------------------------------------------ blocks

async fn blocking_closes_the_direct_room_to_the_blocked_user(cluster: &Cluster) -> Result<()> {
    ensure_users(cluster, &["alice", "bob", "carl"]).await?;
    let direct = create_room_with(
        cluster,
        0,
        "alice",
        &json!({"kind": "direct", "members": ["bob"]}),
    )
    .await?;
    let direct = direct["id"].as_str().context("room id")?.to_owned();
    let group = create_room(cluster, 0, "alice", &["bob", "carl"]).await?;
    let mut alice = connect_ready(cluster, 0, "alice").await?;
    let mut bob = connect_ready(cluster, 1, "bob").await?;
    let (status, body) = cluster
        .api(0)
        .post_json(
            "/users/me/blocks",
            cluster.token("alice"),
            &json!({"user_id": "bob"}),
        )
        .await?;
    ensure!(status == 201, "{status} {body}");
    let (status, _) = cluster
        .api(0)
        .post_json(
            "/users/me/blocks",
            cluster.token("alice"),
            &json!({"user_id": "bob"}),
        )
        .await?;
    ensure!(status == 200, "blocking again: {status}");
    let (status, body) = cluster
        .api(0)
        .post_json(
            "/users/me/blocks",
            cluster.token("alice"),
            &json!({"user_id": "alice"}),
        )
        .await?;
    ensure!(status == 400, "blocking oneself: {status} {body}");
    let (status, body) = cluster
        .api(1)
        .get("/users/me/blocks", cluster.token("alice"))
        .await?;
    ensure!(
        status == 200 && body["blocks"][0]["user_id"] == "bob",
        "{status} {body}"
    );
    // Bob can neither open nor write to the direct room...
    let (status, body) = cluster
        .api(1)
        .post_json(
            "/rooms",
            cluster.token("bob"),
            &json!({"kind": "direct", "members": ["alice"]}),
        )
        .await?;
    ensure!(
        status == 403 && body["error"]["code"] == "blocked",
        "{status} {body}"
    );
    send_until(&mut bob, &direct, "hey", Some("blocked")).await?;
    chatter_tests::chat::post_refused(cluster, 1, "bob", &direct, 403, "blocked").await?;
    // ...but group rooms are unaffected, and alice may still write.
    let sent = send_and_confirm(&mut bob, &group, "hi all", "b2").await?;
    ensure!(sent["confirmed"] == true, "group: {sent}");
    let sent = send_and_confirm(&mut alice, &direct, "bye", "a1").await?;
    ensure!(sent["confirmed"] == true, "the blocker writes: {sent}");
    // No presence of alice for bob.
    let (status, body) = cluster
        .api(1)
        .get("/connections", cluster.token("bob"))
        .await?;
    ensure!(status == 200, "{status} {body}");
    let listed: Vec<&str> = body
        .as_array()
        .context("a list")?
        .iter()
        .filter_map(|c| c["user_id"].as_str())
        .collect();
    ensure!(
        !listed.contains(&"alice") && listed.contains(&"carl"),
        "bob sees {listed:?}"
    );
    // Unblocked: bob writes again.
    let (status, _) = cluster
        .api(0)
        .delete("/users/me/blocks/bob", cluster.token("alice"))
        .await?;
    ensure!(status == 204, "unblock: {status}");
    send_until(&mut bob, &direct, "friends?", None).await?;
    let (status, _) = cluster
        .api(0)
        .delete("/users/me/blocks/bob", cluster.token("alice"))
        .await?;
    ensure!(status == 404, "not blocked any more: {status}");
    let (status, body) = cluster
        .api(1)
        .post_json(
            "/rooms",
            cluster.token("bob"),
            &json!({"kind": "direct", "members": ["alice"]}),
        )
        .await?;
    ensure!(
        status == 200,
        "bob opens the direct room again: {status} {body}"
    );
    Ok(())
}

async fn a_room_the_blocker_opens_is_closed_to_the_blocked_user(cluster: &Cluster) -> Result<()> {
    ensure_users(cluster, &["alice", "bob"]).await?;
    let (status, _) = cluster
        .api(0)
        .post_json(
            "/users/me/blocks",
            cluster.token("alice"),
            &json!({"user_id": "bob"}),
        )
        .await?;
    ensure!(status == 201);
    let mut bob = connect_ready(cluster, 1, "bob").await?;
    let direct = create_room_with(
        cluster,
        0,
        "alice",
        &json!({"kind": "direct", "members": ["bob"]}),
    )
    .await?;
    let direct = direct["id"].as_str().context("room id")?.to_owned();
    chatter_tests::chat::await_membership(&mut bob, &direct).await?;
    send_until(&mut bob, &direct, "hey", Some("blocked")).await?;
    Ok(())
}

async fn a_blocked_user_gets_no_presence_of_the_blocker(cluster: &Cluster) -> Result<()> {
    ensure_users(cluster, &["alice", "bob", "carl"]).await?;
    create_room(cluster, 0, "alice", &["bob", "carl"]).await?;
    let (status, _) = cluster
        .api(0)
        .post_json(
            "/users/me/blocks",
            cluster.token("alice"),
            &json!({"user_id": "bob"}),
        )
        .await?;
    ensure!(status == 201);
    let mut bob = connect_ready(cluster, 1, "bob").await?;
    bob.send_frame("SubscribePresence", json!({})).await?;
    bob.send_frame("Ping", json!({})).await?;
    bob.recv_type("Pong", FRAME_WAIT).await?;
    let _alice = connect_ready(cluster, 0, "alice").await?;
    let _carl = connect_ready(cluster, 0, "carl").await?;
    // Carl's event shows presence flows; alice's, published first, never comes.
    chatter_tests::chat::recv_matching(&mut bob, "PresenceChanged", "about carl", |p| {
        p["user_id"] == "carl"
    })
    .await?;
    let deadline = Instant::now() + Duration::from_millis(500);
    while let Some(frame) = bob.recv_until(deadline.into()).await? {
        if let chatter_tests::Incoming::Frame(frame) = frame {
            ensure!(
                !(frame["type"] == "PresenceChanged" && frame["data"]["user_id"] == "alice"),
                "bob saw alice: {frame}"
            );
        }
    }
    ensure!(
        !bob.skipped()
            .iter()
            .any(|f| f["type"] == "PresenceChanged" && f["data"]["user_id"] == "alice"),
        "bob saw alice: {:?}",
        bob.skipped()
    );
    Ok(())
}

// ------------------------------------------------------------------ reports

async fn members_report_messages_and_admins_list_them(cluster: &Cluster) -> Result<()> {
    ensure_users(cluster, &["alice", "bob", "stranger"]).await?;
    let room = create_room(cluster, 0, "alice", &["bob"]).await?;
    let mut alice = connect_ready(cluster, 0, "alice").await?;
    let sent = send_and_confirm(&mut alice, &room, "you are all wrong", "a1").await?;
    let message = sent["message_id"]
        .as_str()
        .context("message id")?
        .to_owned();
    let path = format!("/rooms/{room}/messages/{message}/report");
    let (status, body) = cluster
        .api(1)
        .post_json(&path, cluster.token("bob"), &json!({"reason": "rude"}))
        .await?;
    ensure!(
        status == 201 && body["sender_id"] == "alice",
        "{status} {body}"
    );
    let (status, body) = cluster
        .api(1)
        .post_json(&path, cluster.token("bob"), &json!({"reason": ""}))
        .await?;
    ensure!(
        status == 400 && body["error"]["code"] == "bad_reason",
        "{status} {body}"
    );
    let (status, _) = cluster
        .api(1)
        .post_json(&path, cluster.token("stranger"), &json!({"reason": "rude"}))
        .await?;
    ensure!(status == 404, "a non-member: {status}");
    let unknown = format!("/rooms/{room}/messages/{}/report", uuid::Uuid::now_v7());
    let (status, body) = cluster
        .api(1)
        .post_json(&unknown, cluster.token("bob"), &json!({"reason": "rude"}))
        .await?;
    ensure!(
        status == 404 && body["error"]["code"] == "message_not_found",
        "{status} {body}"
    );
    let (status, body) = cluster.api(0).get("/admin/reports", admin(cluster)).await?;
    ensure!(status == 200, "{status} {body}");
    let report = &body["reports"][0];
    ensure!(
        report["message_id"] == message.as_str()
            && report["reporter_id"] == "bob"
            && report["reason"] == "rude"
            && report["room_id"] == room.as_str(),
        "{body}"
    );
    // The admin acts through the existing deletion path, though not a member.
    let (status, body) = cluster
        .api(0)
        .delete(&format!("/rooms/{room}/messages/{message}"), admin(cluster))
        .await?;
    ensure!(status == 204, "{status} {body}");
    alice.recv_type("MessageDeleted", FRAME_WAIT).await?;
    Ok(())
}

// ------------------------------------------------------------------ content policy

/// The fake moderation service: the message decides (`reject…`, `flag…`,
/// `slow…` answers allow after 2 s); `down` makes it answer 503.
#[derive(Clone, Default)]
struct Fake {
    down: Arc<AtomicBool>,
    asked: Arc<std::sync::Mutex<Vec<Value>>>,
}

impl Fake {
    async fn start() -> Result<(Fake, SocketAddr)> {
        let fake = Fake::default();
        let app = Router::new()
            .route("/moderate", post(judge))
            .with_state(fake.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok((fake, addr))
    }

    fn asked(&self) -> Vec<Value> {
        self.asked.lock().map(|a| a.clone()).unwrap_or_default()
    }
}

async fn judge(State(fake): State<Fake>, Json(body): Json<Value>) -> (StatusCode, Json<Value>) {
    if let Ok(mut asked) = fake.asked.lock() {
        asked.push(body.clone());
    }
    if fake.down.load(Ordering::Relaxed) {
        return (StatusCode::SERVICE_UNAVAILABLE, Json(json!({})));
    }
    let message = body["message"].as_str().unwrap_or_default();
    let action = if message.starts_with("reject") {
        "reject"
    } else if message.starts_with("flag") {
        "flag"
    } else {
        if message.starts_with("slow") {
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        "allow"
    };
    (StatusCode::OK, Json(json!({ "action": action })))
}

async fn with_fake(
    backend: chatter_tests::backend::Backend,
    fail: &str,
    test: impl AsyncFnOnce(&Cluster, &Fake) -> Result<()>,
) {
    let (fake, addr) = Fake::start().await.expect("fake moderation service");
    let builder: ClusterBuilder = backend
        .builder(binaries!())
        .gateways(2)
        .env("MODERATION_URL", format!("http://{addr}/moderate"))
        .env("MODERATION_TIMEOUT_MS", "300")
        .env("MODERATION_FAIL", fail)
        .env("CONTENT_STRIKES", "0");
    run_with_cluster(builder, async |cluster| test(cluster, &fake).await).await
}

async fn the_moderation_service_rejects_and_flags(backend: chatter_tests::backend::Backend) {
    with_fake(backend, "open", async |cluster, fake| {
        ensure_users(cluster, &["alice", "bob"]).await?;
        let room = create_room(cluster, 0, "alice", &["bob"]).await?;
        let mut alice = connect_ready(cluster, 0, "alice").await?;
        let mut bob = connect_ready(cluster, 1, "bob").await?;
        let refused = send_and_confirm(&mut alice, &room, "reject this", "r1").await?;
        ensure!(
            refused["confirmed"] == false && refused["reason"] == "content_rejected",
            "{refused}"
        );
        let (status, body) = cluster
            .api(1)
            .post_json(
                &format!("/rooms/{room}/messages"),
                cluster.token("alice"),
                &json!({"message": "reject that"}),
            )
            .await?;
        ensure!(
            status == 400 && body["error"]["code"] == "content_rejected",
            "{status} {body}"
        );
        let flagged = send_and_confirm(&mut alice, &room, "flag me", "f1").await?;
        ensure!(flagged["confirmed"] == true, "{flagged}");
        let got = next_message(&mut bob).await?;
        ensure!(
            got["message"] == "flag me",
            "only the flagged one is delivered: {got}"
        );
        let fine = send_and_confirm(&mut alice, &room, "hello", "h1").await?;
        ensure!(fine["confirmed"] == true, "{fine}");
        let got = next_message(&mut bob).await?;
        ensure!(got["message"] == "hello", "{got}");
        // Nothing rejected was stored.
        let stored = chatter_tests::chat::stored_messages(cluster, 0, "alice", &room, 2).await?;
        let mut texts: Vec<&str> = stored
            .iter()
            .filter_map(|m| m["message"].as_str())
            .collect();
        texts.sort_unstable();
        ensure!(texts == ["flag me", "hello"], "stored: {texts:?}");
        let (status, body) = cluster.api(0).get("/admin/flags", admin(cluster)).await?;
        ensure!(status == 200, "{status} {body}");
        let flag = &body["flags"][0];
        ensure!(
            flag["message"] == "flag me"
                && flag["sender_id"] == "alice"
                && flag["id"] == flagged["message_id"],
            "{body}"
        );
        let asked = fake.asked();
        ensure!(
            asked.iter().any(|q| q["sender_id"] == "alice"
                && q["room_id"] == room.as_str()
                && q["message"] == "hello"),
            "the service is asked {{room_id, sender_id, message}}: {asked:?}"
        );
        Ok(())
    })
    .await
}

async fn a_moderation_service_down_or_slow_fails_open(backend: chatter_tests::backend::Backend) {
    with_fake(backend, "open", async |cluster, fake| {
        ensure_users(cluster, &["alice", "bob"]).await?;
        let room = create_room(cluster, 0, "alice", &["bob"]).await?;
        let mut alice = connect_ready(cluster, 1, "alice").await?;
        let slow = send_and_confirm(&mut alice, &room, "slow but fine", "s1").await?;
        ensure!(slow["confirmed"] == true, "slow, fail open: {slow}");
        fake.down.store(true, Ordering::Relaxed);
        let down = send_and_confirm(&mut alice, &room, "reject while down", "d1").await?;
        ensure!(down["confirmed"] == true, "down, fail open: {down}");
        Ok(())
    })
    .await
}

async fn a_moderation_service_down_or_slow_fails_closed(backend: chatter_tests::backend::Backend) {
    with_fake(backend, "closed", async |cluster, fake| {
        ensure_users(cluster, &["alice", "bob"]).await?;
        let room = create_room(cluster, 0, "alice", &["bob"]).await?;
        let mut alice = connect_ready(cluster, 1, "alice").await?;
        let slow = send_and_confirm(&mut alice, &room, "slow and refused", "s1").await?;
        ensure!(
            slow["confirmed"] == false && slow["reason"] == "content_rejected",
            "slow: {slow}"
        );
        fake.down.store(true, Ordering::Relaxed);
        let down = send_and_confirm(&mut alice, &room, "hello", "d1").await?;
        ensure!(
            down["confirmed"] == false && down["reason"] == "content_rejected",
            "down: {down}"
        );
        fake.down.store(false, Ordering::Relaxed);
        let back = send_and_confirm(&mut alice, &room, "hello again", "d2").await?;
        ensure!(back["confirmed"] == true, "back up: {back}");
        Ok(())
    })
    .await
}

/// A block-list file, and a cluster reading it.
async fn with_blocklist(
    backend: chatter_tests::backend::Backend,
    strikes: &str,
    test: impl AsyncFnOnce(&Cluster, &std::path::Path) -> Result<()>,
) {
    let dir = tempfile::tempdir().expect("a folder");
    let file = dir.path().join("blocklist.txt");
    std::fs::write(&file, "# words and /regexes/\ndarn\n/fr[e3]{2} money/\n").expect("written");
    let builder = backend
        .builder(binaries!())
        .gateways(2)
        .env("CONTENT_BLOCKLIST_FILE", file.display().to_string())
        .env("CONTENT_STRIKES", strikes)
        .env("CONTENT_STRIKE_WINDOW_SECS", "60");
    run_with_cluster(builder, async |cluster| test(cluster, &file).await).await
}

async fn the_block_list_rejects_and_is_reloaded_on_change(
    backend: chatter_tests::backend::Backend,
) {
    with_blocklist(backend, "0", async |cluster, file| {
        ensure_users(cluster, &["alice", "bob"]).await?;
        let room = create_room(cluster, 0, "alice", &["bob"]).await?;
        let mut alice = connect_ready(cluster, 1, "alice").await?;
        for (text, reason) in [
            ("oh DARN it", "content_rejected"),
            ("get FR33 money", "content_rejected"),
        ] {
            let refused = send_and_confirm(&mut alice, &room, text, text).await?;
            ensure!(refused["reason"] == reason, "{text}: {refused}");
        }
        let fine = send_and_confirm(&mut alice, &room, "darning socks", "ok1").await?;
        ensure!(fine["confirmed"] == true, "whole words only: {fine}");
        std::fs::write(file, "heck\n")?;
        let deadline = Instant::now() + WAIT;
        for n in 0.. {
            let sent = send_and_confirm(&mut alice, &room, "oh heck", &format!("h{n}")).await?;
            if sent["reason"] == "content_rejected" {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "the new list is not applied: {sent}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let old = send_and_confirm(&mut alice, &room, "oh darn", "d9").await?;
        ensure!(old["confirmed"] == true, "the old list is gone: {old}");
        Ok(())
    })
    .await
}

async fn repeated_rejections_close_the_sender_with_4011(backend: chatter_tests::backend::Backend) {
    with_blocklist(backend, "3", async |cluster, _| {
        ensure_users(cluster, &["alice", "bob"]).await?;
        let room = create_room(cluster, 0, "alice", &["bob"]).await?;
        let mut alice = connect_ready(cluster, 1, "alice").await?;
        let mut other_device = connect_ready(cluster, 0, "alice").await?;
        for n in 0..2 {
            let refused = send_and_confirm(&mut alice, &room, "darn", &format!("d{n}")).await?;
            ensure!(refused["reason"] == "content_rejected", "{refused}");
        }
        chatter_tests::chat::send_message(&mut alice, &room, "darn", "d2").await?;
        expect_close_code(&mut alice, 4011).await?;
        expect_close_code(&mut other_device, 4011).await?;
        ensure!(
            audit(cluster)
                .await?
                .contains(&("strikes".into(), "alice".into()))
        );
        Ok(())
    })
    .await
}

// ------------------------------------------------------------------ kick latency

/// The time from an admin's kick request on gateway 0 to the close of the
/// user's socket on gateway 1, over 100 kicks (printed; the README quotes it).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kick_latency_across_gateways() {
    let builder = Cluster::builder(binaries!())
        .gateways(2)
        .env("REST_RATE_PER_SEC", "1000")
        .env("REST_RATE_BURST", "1000");
    run_with_cluster(builder, async |cluster| {
        let mut times = Vec::with_capacity(100);
        let token = admin(cluster);
        for n in 0..100 {
            let user = format!("kicked{n}");
            let mut ws = connect_ready(cluster, 1, &user).await?;
            let started = Instant::now();
            let (status, body) = cluster
                .api(0)
                .post_json(&format!("/admin/users/{user}/kick"), token.clone(), &json!({}))
                .await?;
            ensure!(status == 200, "{status} {body}");
            let closed = ws.expect_close(WAIT).await?;
            times.push(started.elapsed());
            if closed.code != 4004 {
                bail!("kick {n} closed with {closed:?}");
            }
        }
        times.sort();
        let p50 = times[times.len() / 2];
        let p99 = times[times.len() * 99 / 100];
        eprintln!("kick request on gateway 0 → close on gateway 1, 100 kicks: p50 {p50:?}, p99 {p99:?}, max {:?}", times[times.len() - 1]);
        Ok(())
    })
    .await
}

chatter_tests::on_every_backend! {
    admin_routes_need_the_admin_role: |b| b,
    the_audit_log_pages_newest_first: |b| b,
    a_kick_on_one_gateway_closes_sockets_on_the_other_within_a_second: |b| b,
    a_ban_closes_and_refuses_everywhere_until_lifted: |b| b,
    a_ban_with_until_ends_by_itself: |b| b,
    a_new_connection_closes_older_ones_on_every_gateway: |b| b.env("SESSION_POLICY", "single"),
    multi_session_is_the_default: |b| b,
    a_muted_member_reads_but_cannot_send: |b| b,
    blocking_closes_the_direct_room_to_the_blocked_user: |b| b,
    a_room_the_blocker_opens_is_closed_to_the_blocked_user: |b| b,
    a_blocked_user_gets_no_presence_of_the_blocker: |b| b,
    members_report_messages_and_admins_list_them: |b| b,
}

mod content {
    chatter_tests::for_each_backend! {
        the_moderation_service_rejects_and_flags,
        a_moderation_service_down_or_slow_fails_open,
        a_moderation_service_down_or_slow_fails_closed,
        the_block_list_rejects_and_is_reloaded_on_change,
        repeated_rejections_close_the_sender_with_4011,
    }
    use super::*;
}
