//! The files under `deploy/` agree with chatter and with themselves: no Docker,
//! Prometheus or Grafana needed (none runs on CI), so their structure is checked
//! here, in plain Rust, against chatter's own configuration.
//!
//! - `prometheus/alerts.yml`: every rule is complete (alert, expr, `for`, severity,
//!   summary, description), durations parse, names are unique, and every metric
//!   an expression reads is one chatter serves ([`METRICS`]).
//! - `grafana/chatter-dashboard.json`: every panel queries with `expr`, reads only
//!   [`METRICS`], and together they chart every one of them.
//! - `compose.yaml`: Redis with AOF and noeviction, Postgres with a health check,
//!   two gateways, one worker and nginx; chatter containers read-only, non-root,
//!   given a stop grace period beyond the drain window, and set only settings
//!   chatter has.
//! - `Dockerfile`: two targets, the build command CI and the local cluster run,
//!   the workspace's toolchain, UID 10001, tini, health checks.
//! - `nginx/chatter.conf`: WebSocket upgrades, timeouts above the heartbeat,
//!   retries on a draining gateway's 503.
//!
//! hadolint and `nginx -t` run in `scripts/check-deploy.sh`.
//!
//! YAML is read with `yaml_serde`: the YAML organization's maintained fork of the
//! deprecated `serde_yaml`, same API (`serde_norway`, the other fork, has had no
//! commit since December 2024).

use chatter_shared::config::Config;
use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;
use yaml_serde::Value;

/// Every series chatter's processes serve on `/metrics`, registered at start-up.
/// Histograms are listed by their series (`_bucket`, `_sum`, `_count`): a query on
/// the bare histogram name finds nothing.
const METRICS: &[&str] = &[
    // gateway
    "chatter_connections",
    "chatter_frames_in_total",
    "chatter_frames_out_total",
    "chatter_publish_seconds_bucket",
    "chatter_publish_seconds_sum",
    "chatter_publish_seconds_count",
    "chatter_delivery_seconds_bucket",
    "chatter_delivery_seconds_sum",
    "chatter_delivery_seconds_count",
    "chatter_bus_errors_total",
    "chatter_db_errors_total",
    "chatter_slow_consumer_closes_total",
    "chatter_send_queue_frames",
    "chatter_send_queue_max_frames",
    "chatter_draining",
    "chatter_upgrades_refused_total",
    // worker (also chatter_db_errors_total and chatter_draining)
    "chatter_worker_batch_size_bucket",
    "chatter_worker_batch_size_sum",
    "chatter_worker_batch_size_count",
    "chatter_worker_lag_seconds_bucket",
    "chatter_worker_lag_seconds_sum",
    "chatter_worker_lag_seconds_count",
    "chatter_worker_stored_total",
    "chatter_notifications_total",
    "chatter_ingest_backlog",
    "chatter_ingest_pending",
    "chatter_redis_errors_total",
];

/// What operators scale and alert on (issue 15): each needs an alert.
const ALERTED: &[&str] = &[
    "chatter_connections",
    "chatter_send_queue_max_frames",
    "chatter_slow_consumer_closes_total",
    "chatter_ingest_backlog",
    "chatter_worker_lag_seconds_bucket",
    "chatter_bus_errors_total",
    "chatter_db_errors_total",
    "chatter_redis_errors_total",
    "chatter_draining",
];

/// The build command of the images; CI and `deploy/local-cluster.sh` run the same.
const BUILD_COMMAND: &str = "cargo build --release --locked -p chatter-gateway -p chatter-worker";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the repository")
        .to_path_buf()
}

fn read(path: &str) -> String {
    let path = repo().join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

fn yaml(path: &str) -> Value {
    let mut value: Value =
        yaml_serde::from_str(&read(path)).unwrap_or_else(|error| panic!("{path}: {error}"));
    value
        .apply_merge()
        .unwrap_or_else(|error| panic!("{path}: `<<` merge: {error}"));
    value
}

fn str_at<'a>(value: &'a Value, key: &str, context: &str) -> &'a str {
    value
        .get(key)
        .and_then(Value::as_str)
        .filter(|text| !text.trim().is_empty())
        .unwrap_or_else(|| panic!("{context}: `{key}` must be a non-empty string"))
}

/// A Prometheus duration (`30s`, `5m`, `1h30m`, `250ms`): units from largest to
/// smallest, each at most once. Compose's `stop_grace_period` uses the same form.
fn parse_duration(text: &str) -> Option<Duration> {
    // In the order they must appear, with their length in milliseconds.
    const UNITS: &[(&str, u64)] = &[
        ("y", 365 * 24 * 3_600_000),
        ("w", 7 * 24 * 3_600_000),
        ("d", 24 * 3_600_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
        ("ms", 1),
    ];
    let mut rest = text;
    let mut total = 0u64;
    let mut last_rank = None;
    while !rest.is_empty() {
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if digits == 0 {
            return None;
        }
        let number: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        // The longest unit that matches: `5ms` is milliseconds, not minutes.
        let (rank, (unit, millis)) = UNITS
            .iter()
            .enumerate()
            .filter(|(_, (unit, _))| rest.starts_with(unit))
            .max_by_key(|(_, (unit, _))| unit.len())?;
        if last_rank.is_some_and(|last| rank <= last) {
            return None;
        }
        last_rank = Some(rank);
        total = total.checked_add(number.checked_mul(*millis)?)?;
        rest = &rest[unit.len()..];
    }
    (!text.is_empty()).then(|| Duration::from_millis(total))
}

/// The metric names a PromQL expression reads: identifiers that are not
/// functions, aggregations, keywords or labels. Label matchers (`{...}`), ranges
/// (`[5m]`), strings and grouping label lists (`by (instance)`) are skipped.
fn metric_names(expr: &str) -> BTreeSet<String> {
    const KEYWORDS: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
        "limitk",
        "limit_ratio",
        "inf",
        "nan",
    ];
    const GROUPING: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    let chars: Vec<char> = expr.chars().collect();
    let skip_string = |mut i: usize| {
        let quote = chars[i];
        i += 1;
        while i < chars.len() && chars[i] != quote {
            i += if chars[i] == '\\' { 2 } else { 1 };
        }
        i + 1
    };
    // Index after the bracket closing the one opened at `i`.
    let skip_group = |mut i: usize| {
        let (open, close) = (
            chars[i],
            match chars[i] {
                '{' => '}',
                '[' => ']',
                _ => ')',
            },
        );
        let mut depth = 0;
        while i < chars.len() {
            match chars[i] {
                '"' | '\'' | '`' => {
                    i = skip_string(i);
                    continue;
                }
                c if c == open => depth += 1,
                c if c == close => {
                    depth -= 1;
                    if depth == 0 {
                        return i + 1;
                    }
                }
                _ => {}
            }
            i += 1;
        }
        panic!("unbalanced `{open}` in {expr}");
    };
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            i = skip_string(i);
        } else if c == '{' || c == '[' {
            i = skip_group(i);
        } else if c.is_ascii_digit() || c == '.' {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || "_:".contains(chars[i])) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut next = i;
            while next < chars.len() && chars[next].is_whitespace() {
                next += 1;
            }
            let lower = word.to_ascii_lowercase();
            if GROUPING.contains(&lower.as_str()) && chars.get(next) == Some(&'(') {
                i = skip_group(next);
            } else if chars.get(next) != Some(&'(') && !KEYWORDS.contains(&lower.as_str()) {
                names.insert(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

fn assert_known_metrics(expr: &str, context: &str) -> BTreeSet<String> {
    let names = metric_names(expr);
    assert!(!names.is_empty(), "{context}: `{expr}` reads no metric");
    for name in &names {
        assert!(
            METRICS.contains(&name.as_str()),
            "{context}: `{name}` (in `{expr}`) is not a metric chatter serves"
        );
    }
    names
}

#[test]
fn metric_names_are_found_in_promql() {
    let names = metric_names(
        r#"histogram_quantile(0.99, sum by (le, instance) (rate(chatter_publish_seconds_bucket{job="a b"}[5m])))
           / on (instance) group_left() max without (pod) (chatter_connections offset 5m) > 1e3
           and absent(chatter_draining) or vector(0)"#,
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        [
            "chatter_connections",
            "chatter_draining",
            "chatter_publish_seconds_bucket"
        ]
    );
}

#[test]
fn durations_parse_like_prometheus() {
    assert_eq!(parse_duration("30s"), Some(Duration::from_secs(30)));
    assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
    assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
    assert_eq!(
        parse_duration("1m30s5ms"),
        Some(Duration::from_millis(90_005))
    );
    for bad in ["", "5", "m", "5x", "30s5m", "1.5m", "5m5m", "-5m"] {
        assert_eq!(parse_duration(bad), None, "{bad:?}");
    }
}

#[test]
fn alert_rules_are_complete_and_read_served_metrics() {
    let file = yaml("deploy/prometheus/alerts.yml");
    let groups = file
        .get("groups")
        .and_then(Value::as_sequence)
        .filter(|groups| !groups.is_empty())
        .expect("alerts.yml: `groups` must be a non-empty list");
    let mut alerts = HashSet::new();
    let mut read = BTreeSet::new();
    let mut group_names = HashSet::new();
    for group in groups {
        let group_name = str_at(group, "name", "a rule group");
        assert!(group_names.insert(group_name), "group `{group_name}` twice");
        let rules = group
            .get("rules")
            .and_then(Value::as_sequence)
            .filter(|rules| !rules.is_empty())
            .unwrap_or_else(|| panic!("group {group_name}: `rules` must be a non-empty list"));
        for rule in rules {
            let alert = str_at(rule, "alert", &format!("a rule of group {group_name}"));
            let context = format!("alert {alert}");
            assert!(
                alerts.insert(alert.to_owned()),
                "{context}: the name is used twice"
            );
            assert!(
                alert.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                "{context}: alert names are identifiers"
            );
            let expr = str_at(rule, "expr", &context);
            read.extend(assert_known_metrics(expr, &context));
            let hold = str_at(rule, "for", &context);
            assert!(
                parse_duration(hold).is_some(),
                "{context}: `for: {hold}` is not a Prometheus duration"
            );
            let severity = rule
                .get("labels")
                .and_then(|labels| labels.get("severity"))
                .and_then(Value::as_str)
                .unwrap_or_else(|| panic!("{context}: labels.severity is missing"));
            assert!(
                ["critical", "warning", "info"].contains(&severity),
                "{context}: severity `{severity}` is not critical, warning or info"
            );
            let annotations = rule
                .get("annotations")
                .unwrap_or_else(|| panic!("{context}: annotations are missing"));
            str_at(annotations, "summary", &context);
            str_at(annotations, "description", &context);
        }
    }
    for name in ALERTED {
        assert!(read.contains(*name), "no alert reads {name}");
    }
}

#[test]
fn dashboard_charts_every_metric_and_only_those() {
    let text = read("deploy/grafana/chatter-dashboard.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&text).expect("chatter-dashboard.json is JSON");
    for key in ["title", "uid"] {
        assert!(
            dashboard[key].as_str().is_some_and(|v| !v.is_empty()),
            "dashboard `{key}`"
        );
    }
    assert!(
        dashboard["schemaVersion"].is_u64(),
        "dashboard schemaVersion"
    );
    let panels = dashboard["panels"]
        .as_array()
        .filter(|panels| !panels.is_empty())
        .expect("dashboard `panels` is a non-empty list");
    let mut ids = HashSet::new();
    let mut charted = BTreeSet::new();
    // Rows may nest their panels (collapsed rows); both levels are checked.
    let nested = panels
        .iter()
        .flat_map(|panel| panel["panels"].as_array().into_iter().flatten());
    for panel in panels.iter().chain(nested) {
        let title = panel["title"].as_str().unwrap_or("(untitled)");
        let id = panel["id"]
            .as_u64()
            .unwrap_or_else(|| panic!("panel {title}: numeric `id`"));
        assert!(ids.insert(id), "panel id {id} twice");
        for key in ["x", "y", "w", "h"] {
            assert!(
                panel["gridPos"][key].is_u64(),
                "panel {title}: gridPos.{key}"
            );
        }
        if panel["type"] == "row" {
            continue;
        }
        let targets = panel["targets"]
            .as_array()
            .filter(|targets| !targets.is_empty())
            .unwrap_or_else(|| panic!("panel {title}: no targets"));
        let mut ref_ids = HashSet::new();
        for target in targets {
            let expr = target["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("panel {title}: a target without `expr`"));
            assert!(
                ref_ids.insert(target["refId"].as_str().unwrap_or("")),
                "panel {title}: refIds must be present and distinct"
            );
            charted.extend(assert_known_metrics(expr, &format!("panel {title}")));
        }
    }
    // Every series family appears (a histogram's `_bucket` or `_sum` will do).
    let family = |name: &str| {
        ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .unwrap_or(name)
            .to_owned()
    };
    let charted: BTreeSet<String> = charted.iter().map(|name| family(name)).collect();
    let missing: Vec<String> = METRICS
        .iter()
        .map(|name| family(name))
        .filter(|name| !charted.contains(name))
        .collect();
    assert!(
        missing.is_empty(),
        "the dashboard does not chart {missing:?}"
    );
}

/// Whether chatter's configuration has a setting of this (environment) name: a
/// known key set to a map fails to deserialize, an unknown one is ignored.
fn is_chatter_setting(name: &str) -> bool {
    let value = serde_json::json!({ name.to_ascii_lowercase(): {"not": "a setting value"} });
    serde_json::from_value::<Config>(value).is_err()
}

fn services(compose: &Value) -> &yaml_serde::Mapping {
    compose
        .get("services")
        .and_then(Value::as_mapping)
        .expect("compose.yaml: `services`")
}

/// The Dockerfile target a compose service builds, if it builds one.
fn build_target(service: &Value) -> Option<&str> {
    service.get("build")?.get("target")?.as_str()
}

fn flat_command(service: &Value) -> String {
    match service.get("command") {
        Some(Value::Sequence(words)) => words
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(" "),
        Some(Value::String(line)) => line.clone(),
        _ => String::new(),
    }
}

#[test]
fn compose_runs_the_cluster_as_documented() {
    let compose = yaml("deploy/compose.yaml");
    let services = services(&compose);
    let named = |name: &str| {
        services
            .get(name)
            .unwrap_or_else(|| panic!("compose.yaml: no service `{name}`"))
    };

    let redis = named("redis");
    let command = flat_command(redis);
    for flag in ["--appendonly yes", "--maxmemory-policy noeviction"] {
        assert!(
            command.contains(flag),
            "redis command lacks `{flag}`: {command}"
        );
    }
    assert!(
        redis.get("volumes").is_some(),
        "redis keeps its AOF on a volume"
    );
    let postgres = named("postgres");
    assert!(
        postgres.get("volumes").is_some(),
        "postgres keeps its data on a volume"
    );
    assert!(
        postgres.get("healthcheck").is_some(),
        "postgres has a health check"
    );

    let drain_default = Config::default().drain_window_secs;
    let mut gateways = Vec::new();
    let mut workers = 0;
    for (name, service) in services {
        let name = name.as_str().expect("service names are strings");
        let Some(target) = build_target(service) else {
            continue;
        };
        match target {
            "gateway" => gateways.push(name),
            "worker" => workers += 1,
            other => panic!("{name}: unknown Dockerfile target {other}"),
        }
        assert_eq!(
            service["build"].get("dockerfile").and_then(Value::as_str),
            Some("deploy/Dockerfile"),
            "{name}: built from deploy/Dockerfile"
        );
        assert_eq!(
            service.get("read_only").and_then(Value::as_bool),
            Some(true),
            "{name}: read_only"
        );
        assert_eq!(
            str_at(service, "user", name),
            "10001:10001",
            "{name}: the images' user"
        );
        let env = service
            .get("environment")
            .and_then(Value::as_mapping)
            .unwrap_or_else(|| panic!("{name}: `environment` as a map"));
        let mut set = HashSet::new();
        for (key, value) in env {
            let key = key.as_str().expect("env names are strings");
            assert!(
                is_chatter_setting(key),
                "{name}: {key} is not a chatter setting"
            );
            assert!(
                value.as_str().is_some(),
                "{name}: {key} must be a string (compose passes strings; quote numbers)"
            );
            set.insert(key);
        }
        for required in ["REDIS_URL", "DATABASE_URL", "JWT_SECRET", "SERVICE_SECRET"] {
            assert!(set.contains(required), "{name}: sets no {required}");
        }
        let drain = env
            .get("DRAIN_WINDOW_SECS")
            .and_then(Value::as_str)
            .map(|secs| secs.parse::<u64>().expect("DRAIN_WINDOW_SECS is a number"))
            .unwrap_or(drain_default);
        let grace = str_at(service, "stop_grace_period", name);
        let grace =
            parse_duration(grace).unwrap_or_else(|| panic!("{name}: stop_grace_period {grace}"));
        assert!(
            grace >= Duration::from_secs(drain + 5),
            "{name}: stop_grace_period {grace:?} must cover DRAIN_WINDOW_SECS ({drain} s) plus a margin"
        );
        for backend in ["redis", "postgres"] {
            assert!(
                service
                    .get("depends_on")
                    .and_then(|d| d.get(backend))
                    .is_some(),
                "{name}: depends on {backend}"
            );
        }
    }
    assert!(gateways.len() >= 2, "two gateways, found {gateways:?}");
    assert_eq!(workers, 1, "one worker");

    let nginx = named("nginx");
    let ports = nginx
        .get("ports")
        .and_then(Value::as_sequence)
        .expect("nginx publishes ports");
    assert_eq!(ports.len(), 1, "nginx publishes one port");
    let published: Vec<&str> = services
        .iter()
        .filter(|(_, service)| service.get("ports").is_some())
        .filter_map(|(name, _)| name.as_str())
        .collect();
    assert_eq!(published, ["nginx"], "only nginx publishes a port");
    let mounts: Vec<&str> = nginx
        .get("volumes")
        .and_then(Value::as_sequence)
        .map(|mounts| mounts.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    assert!(
        mounts
            .iter()
            .any(|m| m.starts_with("./nginx/chatter.conf:/etc/nginx/templates/")),
        "nginx renders deploy/nginx/chatter.conf as a template: {mounts:?}"
    );
    let upstreams = str_at(&nginx["environment"], "CHATTER_UPSTREAM_SERVERS", "nginx");
    for gateway in &gateways {
        assert!(
            upstreams.contains(&format!("server {gateway}:{};", Config::default().port)),
            "nginx's upstreams lack {gateway}: {upstreams}"
        );
    }
    str_at(&nginx["environment"], "CHATTER_LISTEN", "nginx");
}

/// The Dockerfile's stages as (name, lines), instructions joined over `\`.
fn dockerfile_stages(text: &str) -> Vec<(String, Vec<String>)> {
    let mut stages: Vec<(String, Vec<String>)> = Vec::new();
    let mut instruction = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && instruction.is_empty()) {
            continue;
        }
        instruction.push_str(trimmed.trim_end_matches('\\').trim());
        instruction.push(' ');
        if trimmed.ends_with('\\') {
            continue;
        }
        let done = std::mem::take(&mut instruction).trim().to_owned();
        if done.starts_with("FROM ") {
            let name = done.split(" AS ").nth(1).unwrap_or("").trim().to_owned();
            stages.push((name, Vec::new()));
        }
        match stages.last_mut() {
            Some((_, lines)) => lines.push(done),
            None => stages.push((String::new(), vec![done])), // ARGs before the first FROM
        }
    }
    stages
}

#[test]
fn dockerfile_builds_what_ci_builds_and_runs_locked_down() {
    let text = read("deploy/Dockerfile");
    let stages = dockerfile_stages(&text);
    let stage = |name: &str| {
        stages
            .iter()
            .find(|(stage, _)| stage == name)
            .map(|(_, lines)| lines)
            .unwrap_or_else(|| panic!("Dockerfile: no stage `{name}`"))
    };
    let has = |lines: &[String], wanted: &str| lines.iter().any(|line| line.contains(wanted));

    // The toolchain: at least the workspace's rust-version.
    let manifest = read("Cargo.toml");
    let minimum = manifest
        .lines()
        .find_map(|line| line.strip_prefix("rust-version = "))
        .map(|v| v.trim_matches('"').to_owned())
        .expect("Cargo.toml: workspace rust-version");
    let image = text
        .lines()
        .find_map(|line| line.strip_prefix("ARG RUST_VERSION="))
        .expect("Dockerfile: ARG RUST_VERSION=");
    let version = |v: &str| -> Vec<u32> {
        v.split('.')
            .map(|p| p.parse().expect("a version"))
            .collect()
    };
    assert!(
        version(image) >= version(&minimum),
        "the build image's Rust {image} is older than rust-version {minimum}"
    );

    let build = stage("build");
    assert!(
        has(build, "FROM rust:${RUST_VERSION}"),
        "build stage on the official rust image"
    );
    assert!(
        has(build, BUILD_COMMAND),
        "the build stage runs `{BUILD_COMMAND}`"
    );
    let local = read("deploy/local-cluster.sh");
    assert!(
        local.contains(
            r#"cargo build "${profile[@]}" --locked -p chatter-gateway -p chatter-worker"#
        ) && local.contains("profile=(--release)"),
        "deploy/local-cluster.sh builds with the images' command"
    );

    let runtime = stage("runtime");
    assert!(
        has(runtime, "USER 10001:10001"),
        "runtime runs as 10001:10001"
    );
    assert!(
        has(runtime, r#"ENTRYPOINT ["tini", "--"]"#),
        "tini is PID 1"
    );
    assert!(has(runtime, "tini"), "tini is installed");
    for (target, binary, port) in [
        ("gateway", "chatter-gateway", "8080"),
        ("worker", "chatter-worker", "9091"),
    ] {
        let lines = stage(target);
        assert!(
            lines[0].contains("FROM runtime AS"),
            "{target} builds on the runtime stage"
        );
        assert!(
            has(lines, &format!("/usr/local/bin/{binary}")),
            "{target}: /usr/local/bin/{binary}"
        );
        assert!(
            has(lines, &format!("EXPOSE {port}")),
            "{target}: EXPOSE {port}"
        );
        assert!(has(lines, "HEALTHCHECK"), "{target}: HEALTHCHECK");
        assert!(
            has(lines, &format!(r#"CMD ["{binary}"]"#)),
            "{target}: CMD {binary}"
        );
        assert!(!has(lines, "USER root"), "{target}: stays non-root");
    }
    let config = Config::default();
    assert_eq!(config.port, 8080, "EXPOSE 8080 is the default PORT");
    assert_eq!(
        config.worker_port, 9091,
        "EXPOSE 9091 is the default WORKER_PORT"
    );
}

/// The value of an nginx directive in the template (first occurrence).
fn directive<'a>(conf: &'a str, name: &str) -> Option<&'a str> {
    conf.lines()
        .map(str::trim)
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .map(|rest| rest.trim_end_matches(';').trim())
}

#[test]
fn nginx_passes_websockets_and_retries_a_draining_gateway() {
    let conf = read("deploy/nginx/chatter.conf");
    assert_eq!(directive(&conf, "proxy_http_version"), Some("1.1"));
    assert!(
        conf.contains("map $http_upgrade $connection_upgrade"),
        "Upgrade/Connection map"
    );
    assert!(conf.contains("proxy_set_header Upgrade $http_upgrade;"));
    assert!(conf.contains("proxy_set_header Connection $connection_upgrade;"));
    assert!(conf.contains("proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;"));

    let config = Config::default();
    for timeout in ["proxy_read_timeout", "proxy_send_timeout"] {
        let value = directive(&conf, timeout).unwrap_or_else(|| panic!("{timeout} is set"));
        let value = parse_duration(value).unwrap_or_else(|| panic!("{timeout} {value}"));
        assert!(
            value > Duration::from_secs(config.idle_timeout_secs)
                && value > Duration::from_secs(config.ping_interval_secs),
            "{timeout} {value:?} must exceed IDLE_TIMEOUT_SECS and PING_INTERVAL_SECS"
        );
    }
    let retry = directive(&conf, "proxy_next_upstream").expect("proxy_next_upstream");
    for condition in ["error", "timeout", "http_503"] {
        assert!(
            retry.split(' ').any(|word| word == condition),
            "proxy_next_upstream lacks {condition}"
        );
    }
    // A timed-out POST may have been handled: retrying it would create a second room.
    assert!(
        !retry.split(' ').any(|word| word == "non_idempotent"),
        "proxy_next_upstream must not retry non-idempotent requests"
    );
    let tries: u32 = directive(&conf, "proxy_next_upstream_tries")
        .and_then(|tries| tries.parse().ok())
        .expect("proxy_next_upstream_tries");
    assert!(tries >= 2, "a retry needs at least two tries");
    let ws = conf
        .split("location /ws")
        .nth(1)
        .and_then(|rest| rest.split('}').next())
        .expect("a location /ws");
    assert!(ws.contains("proxy_buffering off;"), "no buffering on /ws");

    // The template's variables: exactly the two compose and local-cluster.sh fill.
    let variables: BTreeSet<&str> = conf
        .split("${")
        .skip(1)
        .filter_map(|rest| rest.split('}').next())
        .collect();
    assert_eq!(
        variables.into_iter().collect::<Vec<_>>(),
        ["CHATTER_LISTEN", "CHATTER_UPSTREAM_SERVERS"]
    );
}

/// The series a fresh process serves on `/metrics`: names before `{` or ` `.
async fn served_series(url: &str) -> BTreeSet<String> {
    let text = reqwest::get(url)
        .await
        .and_then(|r| r.error_for_status())
        .unwrap_or_else(|error| panic!("{url}: {error}"))
        .text()
        .await
        .unwrap_or_else(|error| panic!("{url}: {error}"));
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .filter_map(|line| line.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

/// `METRICS` (which every alert and panel is checked against) is what the real
/// binaries serve from their first second: a rule on a name nothing serves
/// would never fire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_alerts_and_dashboard_read_is_served_by_a_fresh_gateway_or_worker() {
    let cluster = chatter_tests::Cluster::builder(chatter_tests::binaries!())
        .gateways(1)
        .workers(1)
        .start()
        .await
        .expect("cluster");
    let mut served = served_series(&format!("{}/metrics", cluster.gateway(0).http_url())).await;
    served.extend(served_series(&format!("{}/metrics", cluster.worker(0).http_url())).await);
    let missing: Vec<&&str> = METRICS
        .iter()
        .filter(|name| !served.contains(**name))
        .collect();
    assert!(
        missing.is_empty(),
        "alerts or dashboard read series no fresh process serves: {missing:?}\nserved: {served:?}"
    );
}
