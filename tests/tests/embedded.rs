//! What only the embedded mode has: one process, SQLite on disk, a generated
//! development secret. The protocol itself is covered for both modes in `chat.rs`.

use chatter_tests::chat::{FRAME_WAIT, create_room, ensure_users, next_message, send_and_confirm};
use chatter_tests::{Cluster, binaries, eventually};
use serde_json::Value;
use std::time::Duration;

async fn history(cluster: &Cluster, room: &str, user: &str) -> anyhow::Result<Vec<Value>> {
    let (status, body) = cluster
        .api(0)
        .get(&format!("/rooms/{room}/messages"), cluster.token(user))
        .await?;
    anyhow::ensure!(status == 200, "{status} {body}");
    Ok(body["messages"].as_array().cloned().unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn messages_survive_restarts_and_seqs_continue() {
    let mut cluster = Cluster::builder(binaries!())
        .embedded()
        .start()
        .await
        .expect("embedded chatter");
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
    for i in 1..=3 {
        let confirmation =
            send_and_confirm(&mut alice, &room, &format!("before {i}"), &format!("b{i}"))
                .await
                .expect("sent");
        assert_eq!(confirmation["seq"], i);
    }
    // The in-process worker notifies like the real one.
    cluster
        .notif()
        .wait_for_calls(3, FRAME_WAIT)
        .await
        .expect("bob is notified");

    // A graceful stop (SIGTERM) stores everything accepted before exiting.
    let mut more = cluster
        .connect_ws(0, &cluster.token("alice"))
        .await
        .expect("alice again");
    let last = send_and_confirm(&mut more, &room, "just before the stop", "b4")
        .await
        .expect("sent");
    assert_eq!(last["seq"], 4);
    cluster.gateway(0).sigterm().expect("SIGTERM");
    let status = cluster
        .gateway_mut(0)
        .wait_exit(Duration::from_secs(15))
        .await
        .expect("exits");
    assert!(status.success(), "exit status {status:?}");

    cluster.restart_gateway(0).await.expect("starts again");
    let stored = eventually(FRAME_WAIT, || history(&cluster, &room, "bob"))
        .await
        .expect("history");
    let texts: Vec<&str> = stored
        .iter()
        .filter_map(|m| m["message"].as_str())
        .collect();
    assert_eq!(
        texts,
        ["before 1", "before 2", "before 3", "just before the stop"]
    );

    // The room's counter resumes above what is stored; dedupe of a new temp id is fresh.
    let mut alice = cluster
        .connect_ws(0, &cluster.token("alice"))
        .await
        .expect("alice after restart");
    let mut bob = cluster
        .connect_ws(0, &cluster.token("bob"))
        .await
        .expect("bob after restart");
    let after = send_and_confirm(&mut alice, &room, "after", "a1")
        .await
        .expect("sent");
    assert_eq!(after["seq"], 5);
    assert_eq!(next_message(&mut bob).await.expect("delivered")["seq"], 5);

    // Even a crash (SIGKILL) keeps what the worker had stored.
    eventually(FRAME_WAIT, || async {
        let stored = history(&cluster, &room, "bob").await?;
        anyhow::ensure!(stored.len() == 5, "{} stored", stored.len());
        Ok(())
    })
    .await
    .expect("stored");
    cluster
        .restart_gateway(0)
        .await
        .expect("killed and started again");
    let stored = history(&cluster, &room, "bob").await.expect("history");
    assert_eq!(stored.len(), 5);
    let mut alice = cluster
        .connect_ws(0, &cluster.token("alice"))
        .await
        .expect("alice after crash");
    assert_eq!(
        send_and_confirm(&mut alice, &room, "after crash", "c1")
            .await
            .expect("sent")["seq"],
        6
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_a_jwt_secret_a_development_secret_is_generated_and_used_by_the_token_command() {
    let cluster = Cluster::builder(binaries!())
        .embedded()
        .without_env("JWT_SECRET")
        .start()
        .await
        .expect("embedded chatter");
    cluster
        .gateway(0)
        .wait_for_log("development secret", FRAME_WAIT)
        .await
        .expect("the log says so plainly");
    let secret_file = cluster.dir().join("data").join("jwt_secret");
    assert!(secret_file.exists(), "kept in the data directory");

    // `chatter-gateway token` run from the same folder signs with the same secret.
    let output = std::process::Command::new(&binaries!().gateway)
        .args(["token", "--user", "alice"])
        .current_dir(cluster.dir())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .output()
        .expect("runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let token = String::from_utf8(output.stdout)
        .expect("text")
        .trim()
        .to_owned();
    let (status, body) = cluster
        .api(0)
        .get("/ws_token", token.as_str())
        .await
        .expect("request");
    assert_eq!(status, 200, "{body}");

    // A token from any other key is still refused.
    let (status, _) = cluster
        .api(0)
        .get("/ws_token", cluster.token("alice"))
        .await
        .expect("request");
    assert_eq!(status, 401);
}
