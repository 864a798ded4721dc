//! The load generator against the ceiling server, small: every message reaches
//! every member, nothing is lost, latency is measured.

use chatter_bench::coordinator::{LoadOptions, LoadRun, Placement, Target};
use chatter_tests::Gateway;
use std::path::PathBuf;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadgen_against_the_ceiling_loses_nothing() {
    let dir = std::env::temp_dir().join(format!("chatter-bench-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let servers = start_ceilings(&dir).await;
    let target = Target::Ceiling {
        servers: servers.iter().map(Gateway::addr).collect(),
    };
    let mut options =
        LoadOptions::new(60, 10, PathBuf::from(env!("CARGO_BIN_EXE_chatter-loadgen")));
    options.agents = 2;
    options.placement = Placement::RoomTogether;
    options.log_dir = Some(dir.clone());
    let mut run = LoadRun::start(&target, &options)
        .await
        .expect("load starts");
    assert_eq!(run.connect.ok, 60);
    assert_eq!(run.rooms_report.members_ready, 60);

    let step = run
        .step(
            200.0,
            Duration::from_secs(1),
            Duration::from_millis(200),
            Duration::from_secs(10),
        )
        .await
        .expect("step");
    assert_eq!(step.scheduled, 200);
    assert_eq!(step.sent, 200);
    assert_eq!(step.confirmed, 200);
    // Every message reaches its room's 10 members.
    assert_eq!(step.deliveries, 2_000);
    assert_eq!(step.latency.count, 2_000);
    assert_eq!(step.missing_total, 0);
    assert_eq!(step.errors(), 0);
    assert!(step.latency.p99_ms > 0.0);
    assert!(step.passes(1_000.0));
    run.quit().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Reconnect mode: when one server goes away, every socket it held is reopened
/// on the other one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sockets_reconnect_to_the_other_server() {
    let dir = std::env::temp_dir().join(format!(
        "chatter-bench-test-reconnect-{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let mut servers = start_ceilings(&dir).await;
    let target = Target::Ceiling {
        servers: servers.iter().map(Gateway::addr).collect(),
    };
    let mut options = LoadOptions::new(40, 0, PathBuf::from(env!("CARGO_BIN_EXE_chatter-loadgen")));
    options.agents = 2;
    options.reconnect_attempts = 5;
    options.log_dir = Some(dir.clone());
    let mut run = LoadRun::start(&target, &options)
        .await
        .expect("load starts");
    assert_eq!(run.connect.ok, 40);

    servers[1].kill9();
    let mut status = run.status().await.expect("status");
    for _ in 0..100 {
        if status.reconnects == 20 && status.open == 40 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        status = run.status().await.expect("status");
    }
    assert_eq!(status.reconnects, 20, "{status:?}");
    assert_eq!(status.open, 40, "{status:?}");
    assert_eq!(status.closes.values().sum::<u64>(), 20, "{status:?}");
    assert!(status.first_close_us > 0 && status.last_reconnect_us >= status.first_close_us);
    run.quit().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Two ceiling servers on free ports, logging into `dir`.
async fn start_ceilings(dir: &std::path::Path) -> Vec<Gateway> {
    let env = vec![
        ("HOST".to_owned(), "127.0.0.1".to_owned()),
        ("PORT".to_owned(), "0".to_owned()),
    ];
    let mut servers = Vec::new();
    for i in 0..2 {
        let server = Gateway::spawn(
            &PathBuf::from(env!("CARGO_BIN_EXE_chatter-ceiling")),
            &env,
            &dir.join(format!("ceiling-{i}.log")),
        )
        .await
        .expect("ceiling starts");
        servers.push(server);
    }
    servers
}
