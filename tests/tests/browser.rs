//! The support desk's pages in a real browser: Debian's Chromium, driven by
//! `playwright-core` (tests/browser/support.mjs), against two gateways behind
//! nginx with Redis and Postgres, exactly as a support team and their customers
//! would use them. This test starts the deployment, hands the script its URLs,
//! tokens, PIDs and log paths in the environment, and checks its exit code; the
//! script writes screenshots of every page when a scenario fails.
//!
//! Needs `node` with the repository's npm packages (`npm ci`) and `chromium`;
//! scripts/test.sh installs both.

use std::path::{Path, PathBuf};
use std::time::Duration;

use chatter_tests::backend::Backend;
use chatter_tests::nginx::Nginx;
use chatter_tests::{Cluster, binaries};
use serde_json::json;
use tokio::sync::Mutex;

/// One Chromium at a time: two at once on a 2-core CI box only make both slow.
static ONE_BROWSER: Mutex<()> = Mutex::const_new(());

/// Per scenario run, including Chromium's start; the script's own waits are 30 s each.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(240);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs the script with `scenarios` against `cluster`, the pages loaded from `base`.
async fn run_script(cluster: &Cluster, base: &str, scenarios: &str) {
    let gateways: Vec<_> = cluster
        .gateways()
        .iter()
        .map(|g| json!({"url": g.http_url(), "pid": g.pid(), "log": g.log_path()}))
        .collect();
    // Display names as an identity provider would put them in (`name`).
    let token = |user: &str, name: &str, roles: &[&str]| {
        let mut claims = Cluster::claims(user);
        claims["name"] = json!(name);
        claims["roles"] = json!(roles);
        Cluster::token_with(&claims, cluster.jwt_secret())
    };
    let tokens = json!({
        "user": token("user", "Dana Whitfield", &[]),
        "user2": token("user2", "Sam Ortega", &[]),
        "agent1": token("agent1", "Alex Kim", &["support"]),
        "agent2": token("agent2", "Priya Nair", &["support"]),
    });
    let screenshots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("browser-screenshots");
    let mut command = tokio::process::Command::new("node");
    command
        .arg("tests/browser/support.mjs")
        .current_dir(repo())
        .env("CHATTER_URL", base)
        .env("GATEWAYS", serde_json::to_string(&gateways).expect("json"))
        .env("TOKENS", tokens.to_string())
        .env("SCENARIOS", scenarios)
        .env("SCREENSHOT_DIR", &screenshots)
        .kill_on_drop(true);
    let status = tokio::time::timeout(SCRIPT_TIMEOUT, command.status())
        .await
        .unwrap_or_else(|_| panic!("the browser script ran past {SCRIPT_TIMEOUT:?}"))
        .expect("running node (is Node.js installed? scripts/test.sh installs it)");
    assert!(
        status.success(),
        "browser scenarios {scenarios} failed ({status}); screenshots in {}",
        screenshots.display()
    );
}

/// A deployment with a short or long `SUPPORT_EXPIRY_SECS`, and nginx in front of
/// its gateways (the pages load through it, so the socket may land on any).
async fn desk(expiry_secs: &str, gateways: usize) -> (Cluster, Nginx) {
    let cluster = Cluster::builder(binaries!())
        .gateways(gateways)
        .env("SUPPORT_EXPIRY_SECS", expiry_secs)
        // A stopped gateway's sockets close (4007) within a second.
        .env("DRAIN_WINDOW_SECS", "1")
        .start()
        .await
        .expect("cluster");
    let addrs: Vec<_> = cluster.gateways().iter().map(|g| g.addr()).collect();
    let nginx = Nginx::start(&addrs).await.expect("nginx");
    (cluster, nginx)
}

/// (a) a user asks for help, two agents see it, one claims, the other sees it
/// go, messages both ways; (b) the user's gateway gets SIGTERM mid-conversation
/// and the page carries on through the other one, every message once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claim_and_failover_in_chromium() {
    let _one = ONE_BROWSER.lock().await;
    let (cluster, nginx) = desk("300", 2).await;
    run_script(&cluster, &nginx.http_url(), "claim,failover").await;
}

/// (c) a chat without messages for `SUPPORT_EXPIRY_SECS` expires on both pages,
/// and a request nobody answers leaves the queue and tells its user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_in_chromium() {
    let _one = ONE_BROWSER.lock().await;
    let (cluster, nginx) = desk("8", 1).await;
    run_script(&cluster, &nginx.http_url(), "expiry").await;
}

/// (c), with its claim and messages, in the embedded mode, the pages straight from the
/// gateway (no proxy: their `Origin` is the gateway's own).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_in_chromium_embedded() {
    let _one = ONE_BROWSER.lock().await;
    let cluster = Backend::Embedded
        .builder(binaries!())
        .env("SUPPORT_EXPIRY_SECS", "8")
        .start()
        .await
        .expect("embedded gateway");
    run_script(&cluster, &cluster.gateway(0).http_url(), "expiry").await;
}

/// The pages and their assets come with the right types and a strict CSP, and
/// a socket opened from them passes the `Origin` check while another site's
/// does not (no browser needed for this one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_are_served_and_their_origin_may_connect() {
    let cluster = Cluster::builder(binaries!())
        .embedded()
        .start()
        .await
        .expect("cluster");
    let base = cluster.gateway(0).http_url();
    for (path, content_type) in [
        ("/dashboard", "text/html; charset=utf-8"),
        ("/demo", "text/html; charset=utf-8"),
        ("/assets/chatter.js", "text/javascript; charset=utf-8"),
        ("/assets/dashboard.js", "text/javascript; charset=utf-8"),
        ("/assets/demo.js", "text/javascript; charset=utf-8"),
        ("/assets/ui.js", "text/javascript; charset=utf-8"),
        ("/assets/app.css", "text/css; charset=utf-8"),
    ] {
        let answer = cluster
            .http()
            .get(format!("{base}{path}"))
            .send()
            .await
            .expect("GET");
        assert_eq!(answer.status(), 200, "{path}");
        let header = |name: &str| {
            answer
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        assert_eq!(header("content-type"), content_type, "{path}");
        let csp = header("content-security-policy");
        assert!(
            csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
            "{path}: {csp}"
        );
        assert_eq!(header("x-content-type-options"), "nosniff", "{path}");
    }
    let missing = cluster
        .http()
        .get(format!("{base}/assets/nope.js"))
        .send()
        .await
        .expect("GET");
    assert_eq!(missing.status(), 404);

    // The harness allows only http://allowed.test; the gateway's own origin too.
    let url = format!(
        "{}?token={}",
        cluster.gateway(0).ws_url(),
        cluster.token("alice")
    );
    let own = base.clone();
    let mut ws = chatter_tests::WsClient::connect_with_headers(&url, &[("origin", own.as_str())])
        .await
        .expect("the gateway's own pages may connect");
    ws.send_frame("Ping", json!({})).await.expect("ping");
    ws.recv_type("Pong", Duration::from_secs(10))
        .await
        .expect("pong");
    for origin in [
        "http://evil.test".to_owned(),
        base.replace("127.0.0.1", "127.0.0.1.evil.test"),
        format!("{base}.evil.test"),
    ] {
        let refused =
            chatter_tests::WsClient::connect_with_headers(&url, &[("origin", origin.as_str())])
                .await;
        assert!(
            matches!(&refused, Err(e) if e.status() == Some(403)),
            "{origin} must be refused"
        );
    }
}
