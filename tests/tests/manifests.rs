//! The Kubernetes manifests under `k8s/` agree with the binaries they run.
//!
//! Every overlay in `k8s/overlays/` is rendered with `kubectl kustomize` (kubectl
//! 1.27 or newer must be on `PATH`; `scripts/check-k8s.sh` validates the same
//! output against the API schemas) and checked against what chatter really
//! reads and serves:
//! - every environment variable the chatter containers get is a configuration
//!   key, and the settings load (`Config::load`) in the cluster mode;
//! - probes, container ports, the Service, the NetworkPolicy and the scrape
//!   annotations name the ports chatter listens on (`PORT`, `WORKER_PORT`), and
//!   every probe path answers on a real gateway and worker;
//! - a stopping gateway has the time it needs: `terminationGracePeriodSeconds`
//!   covers the preStop sleep plus `DRAIN_WINDOW_SECS` plus the close grace;
//! - every container runs unprivileged with a read-only root filesystem;
//! - selectors and references point at the right pods and ports.
//!
//! Each test collects every disagreement before failing, so one run lists them
//! all, each naming the overlay and object to fix.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::sync::LazyLock;

use base64::Engine;
use chatter_shared::config::{Config, Mode, is_known_env_name};
use chatter_tests::{Cluster, binaries};
use serde_json::Value;

/// The gateway waits this long past `DRAIN_WINDOW_SECS` for the last close
/// handshakes before it exits (`SOCKET_CLOSE_GRACE` in `gateway/src/lib.rs`).
const SOCKET_CLOSE_GRACE_SECS: u64 = 5;
/// What the kubelet uses when a pod sets no `terminationGracePeriodSeconds`.
const DEFAULT_GRACE_SECS: u64 = 30;
/// The overlays the repository ships; any other folder there is checked too.
const REQUIRED_OVERLAYS: [&str; 2] = ["dev", "example"];

/// One rendered overlay: its name and every object `kubectl kustomize` printed.
struct Overlay {
    name: String,
    objects: Vec<Value>,
}

/// Rendered once for all tests; an error (no kubectl, a broken overlay) fails
/// every test with the same message.
static OVERLAYS: LazyLock<Result<Vec<Overlay>, String>> = LazyLock::new(render_overlays);

fn overlays() -> &'static [Overlay] {
    match &*OVERLAYS {
        Ok(overlays) => overlays,
        Err(error) => panic!("{error}"),
    }
}

fn render_overlays() -> Result<Vec<Overlay>, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../k8s/overlays");
    let mut names: Vec<String> = std::fs::read_dir(&root)
        .map_err(|error| format!("cannot list {}: {error}", root.display()))?
        .filter_map(Result::ok)
        .filter(|entry| entry.path().join("kustomization.yaml").is_file())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    for required in REQUIRED_OVERLAYS {
        if !names.iter().any(|name| name == required) {
            return Err(format!(
                "k8s/overlays/{required}/kustomization.yaml is missing (found: {names:?})"
            ));
        }
    }
    names
        .into_iter()
        .map(|name| {
            let objects = render(&root.join(&name))?;
            Ok(Overlay { name, objects })
        })
        .collect()
}

/// `kubectl kustomize DIR`, parsed. kustomize prints YAML only, hence the YAML
/// parser (serde-saphyr: maintained, pure Rust, panic-free, unlike the
/// deprecated serde_yaml); `kubectl ... -o json` would need a cluster.
fn render(dir: &Path) -> Result<Vec<Value>, String> {
    let output = match Command::new("kubectl").arg("kustomize").arg(dir).output() {
        Ok(output) => output,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Err(
                "kubectl is not installed: these tests render k8s/overlays with \
                        `kubectl kustomize` and need kubectl >= 1.27 on PATH (see \
                        scripts/check-k8s.sh for how to get one)"
                    .into(),
            );
        }
        Err(error) => return Err(format!("cannot run kubectl: {error}")),
    };
    if !output.status.success() {
        return Err(format!(
            "kubectl kustomize {} failed ({}); kubectl >= 1.27 is needed:\n{}",
            dir.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let text = String::from_utf8(output.stdout)
        .map_err(|_| format!("kubectl kustomize {}: output is not UTF-8", dir.display()))?;
    serde_saphyr::from_multiple::<Value>(&text)
        .map_err(|error| format!("kubectl kustomize {}: bad YAML: {error}", dir.display()))
}

impl Overlay {
    fn get(&self, kind: &str, name: &str) -> Option<&Value> {
        self.of_kind(kind)
            .find(|object| object_name(object) == name)
    }

    fn of_kind(&self, kind: &str) -> impl Iterator<Item = &Value> {
        self.objects
            .iter()
            .filter(move |object| object["kind"].as_str() == Some(kind))
    }

    /// `component`'s container, with the environment it gets and the
    /// configuration that environment loads into.
    fn chatter(&self, component: Component) -> Result<Chatter<'_>, String> {
        let place = format!(
            "overlay {}: Deployment {} container {}",
            self.name,
            component.deployment(),
            component.container()
        );
        let deployment = self
            .get("Deployment", component.deployment())
            .ok_or_else(|| {
                format!(
                    "overlay {}: no Deployment {}",
                    self.name,
                    component.deployment()
                )
            })?;
        let pod = &deployment["spec"]["template"];
        let container = pod["spec"]["containers"]
            .as_array()
            .and_then(|containers| {
                containers
                    .iter()
                    .find(|c| c["name"].as_str() == Some(component.container()))
            })
            .ok_or_else(|| format!("{place}: no such container"))?;
        let mut problems = Vec::new();
        let env = self.environment(container, &place, &mut problems);
        let config = Config::load(None, env.clone().into_iter().collect())
            .map_err(|error| format!("{place}: its environment does not load: {error}"))?;
        Ok(Chatter {
            component,
            place,
            deployment,
            pod,
            container,
            env,
            config,
            problems,
        })
    }

    /// Name → value of every variable a container gets (envFrom, then env),
    /// resolved against the ConfigMaps and Secrets the overlay renders.
    fn environment(
        &self,
        container: &Value,
        place: &str,
        problems: &mut Vec<String>,
    ) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        for source in array(&container["envFrom"]) {
            let prefix = source["prefix"].as_str().unwrap_or("");
            let (kind, reference) = if source["configMapRef"].is_object() {
                ("ConfigMap", &source["configMapRef"])
            } else {
                ("Secret", &source["secretRef"])
            };
            let name = reference["name"].as_str().unwrap_or("");
            match self.get(kind, name) {
                Some(object) => {
                    for (key, value) in string_data(object) {
                        env.insert(format!("{prefix}{key}"), value);
                    }
                }
                None if reference["optional"] == Value::Bool(true) => {}
                None => problems.push(format!(
                    "{place}: envFrom {kind} {name:?}, which the overlay does not render"
                )),
            }
        }
        for variable in array(&container["env"]) {
            let name = variable["name"].as_str().unwrap_or("").to_owned();
            let value = if let Some(value) = variable["value"].as_str() {
                Some(value.to_owned())
            } else {
                let from = &variable["valueFrom"];
                let (kind, reference) = if from["configMapKeyRef"].is_object() {
                    ("ConfigMap", &from["configMapKeyRef"])
                } else if from["secretKeyRef"].is_object() {
                    ("Secret", &from["secretKeyRef"])
                } else {
                    // fieldRef / resourceFieldRef: known only in the pod.
                    env.insert(name, String::new());
                    continue;
                };
                let (object, key) = (
                    reference["name"].as_str().unwrap_or(""),
                    reference["key"].as_str().unwrap_or(""),
                );
                let found = self.get(kind, object);
                let value = found.and_then(|found| string_data(found).remove(key));
                if value.is_none() && reference["optional"] != Value::Bool(true) {
                    let why = if found.is_some() {
                        format!("{kind} {object:?} has no key {key:?}")
                    } else {
                        format!("the overlay renders no {kind} {object:?}")
                    };
                    problems.push(format!("{place}: env {name}: {why}"));
                }
                value
            };
            match value {
                Some(value) => env.insert(name, value),
                None => env.remove(&name),
            };
        }
        env
    }
}

/// `data` (and a Secret's `stringData`) as strings; Secret `data` is base64.
fn string_data(object: &Value) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let secret = object["kind"].as_str() == Some("Secret");
    for (key, value) in object["data"].as_object().into_iter().flatten() {
        let text = value.as_str().unwrap_or("");
        let text = if secret {
            // kustomize wraps long values over lines; Kubernetes skips the newlines.
            let compact: String = text.split_ascii_whitespace().collect();
            base64::engine::general_purpose::STANDARD
                .decode(compact)
                .ok()
                .and_then(|bytes| String::from_utf8(bytes).ok())
                .unwrap_or_else(|| {
                    panic!(
                        "Secret {} key {key}: data is not base64 of UTF-8 text",
                        object_name(object)
                    )
                })
        } else {
            text.to_owned()
        };
        out.insert(key.clone(), text);
    }
    for (key, value) in object["stringData"].as_object().into_iter().flatten() {
        out.insert(key.clone(), value.as_str().unwrap_or("").to_owned());
    }
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Component {
    Gateway,
    Worker,
}

impl Component {
    const ALL: [Component; 2] = [Component::Gateway, Component::Worker];

    fn deployment(self) -> &'static str {
        match self {
            Component::Gateway => "chatter-gateway",
            Component::Worker => "chatter-worker",
        }
    }

    fn container(self) -> &'static str {
        match self {
            Component::Gateway => "gateway",
            Component::Worker => "worker",
        }
    }

    /// The port the binary serves HTTP on, as its configuration says.
    fn port(self, config: &Config) -> u16 {
        match self {
            Component::Gateway => config.port,
            Component::Worker => config.worker_port,
        }
    }

    fn port_setting(self) -> &'static str {
        match self {
            Component::Gateway => "PORT",
            Component::Worker => "WORKER_PORT",
        }
    }
}

/// A chatter container as one overlay renders it.
struct Chatter<'a> {
    component: Component,
    place: String,
    deployment: &'a Value,
    /// The pod template (`metadata` and `spec`).
    pod: &'a Value,
    container: &'a Value,
    env: BTreeMap<String, String>,
    config: Config,
    /// Unresolvable references found while building `env`.
    problems: Vec<String>,
}

impl Chatter<'_> {
    fn port(&self) -> u16 {
        self.component.port(&self.config)
    }

    /// A port given by number or by the name of one of the container's ports.
    fn resolve_port(&self, port: &Value) -> Option<u16> {
        match port {
            Value::Number(number) => number.as_u64().and_then(|n| u16::try_from(n).ok()),
            Value::String(name) => array(&self.container["ports"])
                .find(|p| p["name"].as_str() == Some(name))
                .and_then(|p| p["containerPort"].as_u64())
                .and_then(|n| u16::try_from(n).ok()),
            _ => None,
        }
    }

    fn labels(&self) -> &Value {
        &self.pod["metadata"]["labels"]
    }
}

/// Every chatter container of every overlay, or a failure naming what is missing.
fn chatters() -> Vec<Chatter<'static>> {
    let mut chatters = Vec::new();
    let mut problems = Vec::new();
    for overlay in overlays() {
        for component in Component::ALL {
            match overlay.chatter(component) {
                Ok(chatter) => chatters.push(chatter),
                Err(problem) => problems.push(problem),
            }
        }
    }
    report("the chatter Deployments", problems);
    chatters
}

fn array(value: &Value) -> impl Iterator<Item = &Value> {
    value.as_array().into_iter().flatten()
}

fn object_name(object: &Value) -> &str {
    object["metadata"]["name"].as_str().unwrap_or("")
}

fn report(what: &str, problems: Vec<String>) {
    assert!(
        problems.is_empty(),
        "{what} disagree with chatter ({} problems):\n  - {}",
        problems.len(),
        problems.join("\n  - ")
    );
}

#[test]
fn every_variable_is_a_chatter_setting_and_the_settings_load() {
    let mut problems = Vec::new();
    for chatter in chatters() {
        let place = &chatter.place;
        problems.extend(chatter.problems.iter().cloned());
        for name in chatter.env.keys() {
            if !is_known_env_name(name) {
                problems.push(format!(
                    "{place}: sets {name}, which is not a chatter setting (chatter ignores it; \
                     see the README's configuration table)"
                ));
            }
        }
        match chatter.config.mode() {
            Ok(Mode::Cluster { .. }) => {}
            Ok(Mode::Embedded { .. }) => problems.push(format!(
                "{place}: neither REDIS_URL nor DATABASE_URL is set, so chatter would run \
                 embedded (SQLite on a read-only filesystem, no shared bus)"
            )),
            Err(error) => problems.push(format!("{place}: {error}")),
        }
        let host: Result<std::net::IpAddr, _> = chatter.config.host.parse();
        if !host.is_ok_and(|ip| ip.is_unspecified()) {
            problems.push(format!(
                "{place}: HOST is {:?}; the kubelet probes the pod IP, so it must be 0.0.0.0 or ::",
                chatter.config.host
            ));
        }
    }
    report("the manifests' environment variables", problems);
}

/// Which probe answers at which path, per chatter container.
fn probes<'a>(chatter: &Chatter<'a>) -> Vec<(&'static str, &'a Value)> {
    ["startupProbe", "livenessProbe", "readinessProbe"]
        .into_iter()
        .filter(|kind| chatter.container[*kind].is_object())
        .map(|kind| (kind, &chatter.container[kind]))
        .collect()
}

fn probe_path(probe: &Value) -> Option<&str> {
    probe["httpGet"]["path"].as_str()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_and_ports_match_what_the_binaries_serve() {
    let mut problems = Vec::new();
    // (component, path) of every probe, to request on real processes below.
    let mut paths = BTreeSet::new();
    for chatter in chatters() {
        let (place, port) = (&chatter.place, chatter.port());
        let setting = chatter.component.port_setting();
        let declared: Vec<u64> = array(&chatter.container["ports"])
            .filter_map(|p| p["containerPort"].as_u64())
            .collect();
        if !declared.contains(&u64::from(port)) {
            problems.push(format!(
                "{place}: {setting} is {port} but the container declares ports {declared:?}"
            ));
        }
        let probes = probes(&chatter);
        for kind in ["startupProbe", "livenessProbe", "readinessProbe"] {
            if !probes.iter().any(|(k, _)| *k == kind) {
                problems.push(format!("{place}: no {kind}"));
            }
        }
        for (kind, probe) in probes {
            let Some(path) = probe_path(probe) else {
                problems.push(format!("{place}: {kind} is not an httpGet probe"));
                continue;
            };
            let probe_port = chatter.resolve_port(&probe["httpGet"]["port"]);
            if probe_port != Some(port) {
                problems.push(format!(
                    "{place}: {kind} probes port {} (= {probe_port:?}) but {setting} is {port}",
                    probe["httpGet"]["port"]
                ));
            }
            if probe["httpGet"]["scheme"]
                .as_str()
                .is_some_and(|s| s != "HTTP")
            {
                problems.push(format!(
                    "{place}: {kind} uses HTTPS; chatter serves plain HTTP"
                ));
            }
            paths.insert((chatter.component.deployment(), kind, path.to_owned()));
        }
        let liveness = probe_path(&chatter.container["livenessProbe"]);
        if liveness != Some("/healthz") {
            problems.push(format!(
                "{place}: livenessProbe is {liveness:?}; it must be /healthz, which keeps \
                 answering while the pod drains or Redis is down (a failing liveness probe \
                 kills the pod)"
            ));
        }
        if chatter.component == Component::Gateway {
            let readiness = probe_path(&chatter.container["readinessProbe"]);
            if readiness != Some("/readyz") {
                problems.push(format!(
                    "{place}: readinessProbe is {readiness:?}; it must be /readyz, which \
                     answers 503 while the gateway drains or its backends are down"
                ));
            }
        }
        let annotations = &chatter.pod["metadata"]["annotations"];
        if let Some(scrape_port) = annotations["prometheus.io/port"].as_str()
            && scrape_port != port.to_string()
        {
            problems.push(format!(
                "{place}: annotation prometheus.io/port is {scrape_port} but {setting} is {port}"
            ));
        }
        if let Some(scrape_path) = annotations["prometheus.io/path"].as_str()
            && scrape_path != "/metrics"
        {
            problems.push(format!(
                "{place}: annotation prometheus.io/path is {scrape_path}; chatter serves /metrics"
            ));
        }
    }
    report("the probes and ports", problems);

    // Every probe path must answer 2xx on the real binaries (the kubelet
    // counts 200-399 as success; chatter's probes never redirect).
    let cluster = Cluster::builder(binaries!())
        .start()
        .await
        .expect("cluster");
    let gateway = cluster.gateway(0).http_url();
    let worker = cluster.worker(0).http_url();
    let mut failures = Vec::new();
    for (deployment, kind, path) in &paths {
        let base = if *deployment == Component::Gateway.deployment() {
            &gateway
        } else {
            &worker
        };
        let answer = cluster.http().get(format!("{base}{path}")).send().await;
        match answer {
            Ok(response) if response.status().is_success() => {}
            Ok(response) => failures.push(format!(
                "{deployment} {kind}: GET {path} answers {} on a healthy process",
                response.status()
            )),
            Err(error) => failures.push(format!("{deployment} {kind}: GET {path}: {error}")),
        }
    }
    report("the probe paths", failures);
}

#[test]
fn a_stopping_gateway_has_time_to_drain() {
    let mut problems = Vec::new();
    for chatter in chatters() {
        let place = &chatter.place;
        let spec = &chatter.pod["spec"];
        let grace = spec["terminationGracePeriodSeconds"]
            .as_u64()
            .unwrap_or(DEFAULT_GRACE_SECS);
        let pre_stop = &chatter.container["lifecycle"]["preStop"];
        let pre_stop_secs = if pre_stop.is_null() {
            0
        } else if let Some(seconds) = pre_stop["sleep"]["seconds"].as_u64() {
            seconds
        } else {
            problems.push(format!(
                "{place}: preStop is not a `sleep` action, so its length is unknown (and the \
                 image has no shell for an exec hook)"
            ));
            continue;
        };
        if chatter.component == Component::Worker {
            continue;
        }
        if pre_stop_secs == 0 {
            problems.push(format!(
                "{place}: no preStop sleep: the pod gets SIGTERM while load balancers still \
                 send it new connections"
            ));
        }
        let drain = chatter.config.drain_window_secs;
        let needed = pre_stop_secs + drain + SOCKET_CLOSE_GRACE_SECS;
        if grace < needed {
            problems.push(format!(
                "{place}: terminationGracePeriodSeconds is {grace} but the preStop sleep \
                 ({pre_stop_secs}) + DRAIN_WINDOW_SECS ({drain}) + the close grace \
                 ({SOCKET_CLOSE_GRACE_SECS}) is {needed}: the kubelet would SIGKILL the \
                 gateway mid-drain"
            ));
        }
    }
    // Scale-down removes a pod only after the previous one had time to drain.
    for overlay in overlays() {
        let Ok(gateway) = overlay.chatter(Component::Gateway) else {
            continue;
        };
        let pre_stop = gateway.container["lifecycle"]["preStop"]["sleep"]["seconds"]
            .as_u64()
            .unwrap_or(0);
        let drain = pre_stop + gateway.config.drain_window_secs;
        for hpa in overlay.of_kind("HorizontalPodAutoscaler") {
            for policy in array(&hpa["spec"]["behavior"]["scaleDown"]["policies"]) {
                let period = policy["periodSeconds"].as_u64().unwrap_or(0);
                if period < drain {
                    problems.push(format!(
                        "overlay {}: HorizontalPodAutoscaler {} scales down every {period} s, \
                         faster than a gateway drains ({drain} s): more pods would drain at \
                         once than the policy says",
                        overlay.name,
                        object_name(hpa)
                    ));
                }
            }
        }
    }
    report("the grace periods", problems);
}

/// Every container of every workload in every overlay (Redis and Postgres of
/// the dev overlay too: the namespaces enforce the `restricted` Pod Security
/// profile).
#[test]
fn every_container_runs_unprivileged_on_a_read_only_root() {
    let mut problems = Vec::new();
    for overlay in overlays() {
        for workload in overlay.objects.iter().filter(|object| {
            matches!(
                object["kind"].as_str(),
                Some("Deployment" | "StatefulSet" | "DaemonSet" | "Job")
            )
        }) {
            let kind = workload["kind"].as_str().unwrap_or("");
            let pod = &workload["spec"]["template"]["spec"];
            let chatter = workload["metadata"]["name"]
                .as_str()
                .is_some_and(|name| name.starts_with("chatter-"));
            if chatter {
                for (field, wanted) in [
                    ("automountServiceAccountToken", false),
                    ("enableServiceLinks", false),
                ] {
                    if pod[field] != Value::Bool(wanted) {
                        problems.push(format!(
                            "overlay {}: {kind} {}: {field} should be {wanted}",
                            overlay.name,
                            object_name(workload)
                        ));
                    }
                }
            }
            let containers = array(&pod["initContainers"]).chain(array(&pod["containers"]));
            for container in containers {
                let place = format!(
                    "overlay {}: {kind} {} container {}",
                    overlay.name,
                    object_name(workload),
                    container["name"].as_str().unwrap_or("?")
                );
                let own = &container["securityContext"];
                let inherited = &pod["securityContext"];
                let either = |field: &str| {
                    if own[field].is_null() {
                        &inherited[field]
                    } else {
                        &own[field]
                    }
                };
                if either("runAsNonRoot") != &Value::Bool(true) {
                    problems.push(format!("{place}: runAsNonRoot is not true"));
                }
                match either("runAsUser").as_u64() {
                    Some(0) => problems.push(format!("{place}: runAsUser is 0 (root)")),
                    // A numeric user, so the kubelet can check non-root before start.
                    None => problems.push(format!("{place}: no numeric runAsUser")),
                    Some(_) => {}
                }
                if own["allowPrivilegeEscalation"] != Value::Bool(false) {
                    problems.push(format!("{place}: allowPrivilegeEscalation is not false"));
                }
                if own["readOnlyRootFilesystem"] != Value::Bool(true) {
                    problems.push(format!("{place}: readOnlyRootFilesystem is not true"));
                }
                if !array(&own["capabilities"]["drop"]).any(|c| c.as_str() == Some("ALL")) {
                    problems.push(format!("{place}: capabilities do not drop ALL"));
                }
                if !matches!(
                    either("seccompProfile")["type"].as_str(),
                    Some("RuntimeDefault" | "Localhost")
                ) {
                    problems.push(format!("{place}: no RuntimeDefault seccompProfile"));
                }
                let resources = &container["resources"];
                for (section, resource) in [
                    ("requests", "cpu"),
                    ("requests", "memory"),
                    ("limits", "memory"),
                ] {
                    if resources[section][resource].is_null() {
                        problems.push(format!("{place}: no resources.{section}.{resource}"));
                    }
                }
            }
        }
    }
    report("the security contexts", problems);
}

/// Whether a `LabelSelector` (matchLabels + matchExpressions) selects `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    let label = |key: &str| labels[key].as_str();
    let match_labels = selector["matchLabels"]
        .as_object()
        .into_iter()
        .flatten()
        .all(|(key, value)| label(key) == value.as_str());
    let match_expressions = array(&selector["matchExpressions"]).all(|expression| {
        let key = expression["key"].as_str().unwrap_or("");
        let values: Vec<&str> = array(&expression["values"])
            .filter_map(Value::as_str)
            .collect();
        match expression["operator"].as_str() {
            Some("In") => label(key).is_some_and(|v| values.contains(&v)),
            Some("NotIn") => !label(key).is_some_and(|v| values.contains(&v)),
            Some("Exists") => label(key).is_some(),
            Some("DoesNotExist") => label(key).is_none(),
            _ => false,
        }
    });
    match_labels && match_expressions
}

/// A Service's `selector` is a plain label map (`matchLabels`); a Service
/// without one selects no pods.
fn service_selects(service: &Value, labels: &Value) -> bool {
    let selector = &service["spec"]["selector"];
    selector.as_object().is_some_and(|map| !map.is_empty())
        && selects(&serde_json::json!({ "matchLabels": selector }), labels)
}

/// The TCP ports a backend URL connects to: its own and, for
/// `redis-cluster://…?node=host:port`, every node's.
fn url_ports(url: &str) -> Result<Vec<u16>, String> {
    let parsed = reqwest::Url::parse(url).map_err(|error| format!("{error}"))?;
    let default = match parsed.scheme() {
        "redis" | "rediss" | "redis-cluster" | "rediss-cluster" | "redis-sentinel" => 6379,
        "postgres" | "postgresql" => 5432,
        other => parsed
            .port_or_known_default()
            .ok_or_else(|| format!("no known default port for {other}://"))?,
    };
    let mut ports = vec![parsed.port().unwrap_or(default)];
    for (key, value) in parsed.query_pairs() {
        if key == "node"
            && let Some((_, port)) = value.rsplit_once(':')
        {
            ports.push(
                port.parse()
                    .map_err(|_| format!("bad node port in {value}"))?,
            );
        }
    }
    Ok(ports)
}

/// Whether one of a NetworkPolicy's egress rules lets TCP out to `port`.
/// (`to:` is not evaluated: the backends' addresses are not in the manifests.)
fn egress_allows(policy: &Value, port: u16, protocol: &str) -> bool {
    array(&policy["spec"]["egress"]).any(|rule| {
        let ports: Vec<&Value> = array(&rule["ports"]).collect();
        ports.is_empty()
            || ports.iter().any(|p| {
                let proto = p["protocol"].as_str().unwrap_or("TCP");
                let from = p["port"].as_u64();
                let to = p["endPort"].as_u64().or(from);
                proto == protocol
                    && from.is_some_and(|from| from <= u64::from(port))
                    && to.is_some_and(|to| u64::from(port) <= to)
            })
    })
}

#[test]
fn services_autoscaler_budgets_and_policies_point_at_the_right_pods() {
    let mut problems = Vec::new();
    for overlay in overlays() {
        let name = &overlay.name;
        let (gateway, worker) = match (
            overlay.chatter(Component::Gateway),
            overlay.chatter(Component::Worker),
        ) {
            (Ok(gateway), Ok(worker)) => (gateway, worker),
            (gateway, worker) => {
                problems.extend(gateway.err());
                problems.extend(worker.err());
                continue;
            }
        };

        let services: Vec<&Value> = overlay
            .of_kind("Service")
            .filter(|service| service_selects(service, gateway.labels()))
            .collect();
        if services.is_empty() {
            problems.push(format!(
                "overlay {name}: no Service selects the gateway pods"
            ));
        }
        for service in services {
            let place = format!("overlay {name}: Service {}", object_name(service));
            if service_selects(service, worker.labels()) {
                problems.push(format!("{place} selects the worker pods too"));
            }
            let affinity = service["spec"]["sessionAffinity"]
                .as_str()
                .unwrap_or("None");
            if affinity != "None" {
                problems.push(format!(
                    "{place}: sessionAffinity {affinity}; any gateway serves any client, and \
                     affinity piles reconnecting clients onto the same pods"
                ));
            }
            for port in array(&service["spec"]["ports"]) {
                let target = if port["targetPort"].is_null() {
                    &port["port"]
                } else {
                    &port["targetPort"]
                };
                if gateway.resolve_port(target) != Some(gateway.port()) {
                    problems.push(format!(
                        "{place}: targetPort {target} is not the gateway's PORT ({})",
                        gateway.port()
                    ));
                }
            }
        }

        let hpas: Vec<&Value> = overlay.of_kind("HorizontalPodAutoscaler").collect();
        if hpas.is_empty() {
            problems.push(format!("overlay {name}: no HorizontalPodAutoscaler"));
        }
        for hpa in hpas {
            let target = &hpa["spec"]["scaleTargetRef"];
            if target["kind"].as_str() != Some("Deployment")
                || target["name"].as_str() != Some(Component::Gateway.deployment())
            {
                problems.push(format!(
                    "overlay {name}: HorizontalPodAutoscaler {} scales {target}, not the gateway \
                     Deployment",
                    object_name(hpa)
                ));
            }
            if !gateway.deployment["spec"]["replicas"].is_null() {
                problems.push(format!(
                    "{}: sets spec.replicas although the HorizontalPodAutoscaler owns it \
                     (every apply would reset the count)",
                    gateway.place
                ));
            }
        }

        for chatter in [&gateway, &worker] {
            let budgets = overlay
                .of_kind("PodDisruptionBudget")
                .filter(|pdb| selects(&pdb["spec"]["selector"], chatter.labels()))
                .count();
            if budgets != 1 {
                problems.push(format!(
                    "{}: {budgets} PodDisruptionBudgets select its pods (want 1)",
                    chatter.place
                ));
            }

            let policies: Vec<&Value> = overlay
                .of_kind("NetworkPolicy")
                .filter(|policy| selects(&policy["spec"]["podSelector"], chatter.labels()))
                .collect();
            if policies.is_empty() {
                problems.push(format!(
                    "{}: no NetworkPolicy selects its pods",
                    chatter.place
                ));
            }
            for policy in policies {
                let place = format!("overlay {name}: NetworkPolicy {}", object_name(policy));
                for rule in array(&policy["spec"]["ingress"]) {
                    for port in array(&rule["ports"]) {
                        if chatter.resolve_port(&port["port"]) != Some(chatter.port()) {
                            problems.push(format!(
                                "{place}: ingress port {} is not {}'s {} ({})",
                                port["port"],
                                chatter.component.deployment(),
                                chatter.component.port_setting(),
                                chatter.port()
                            ));
                        }
                    }
                }
                let mut backends = vec!["REDIS_URL", "DATABASE_URL"];
                if chatter.component == Component::Worker {
                    backends.push("NOTIFICATION_URL");
                }
                for setting in backends {
                    let Some(url) = chatter.env.get(setting) else {
                        continue;
                    };
                    match url_ports(url) {
                        Ok(ports) => {
                            for port in ports {
                                if !egress_allows(policy, port, "TCP") {
                                    problems.push(format!(
                                        "{place}: no egress to TCP port {port} ({setting})"
                                    ));
                                }
                            }
                        }
                        Err(error) => problems.push(format!(
                            "{}: {setting} is not a URL: {error}",
                            chatter.place
                        )),
                    }
                }
                if !egress_allows(policy, 53, "UDP") {
                    problems.push(format!("{place}: no egress to DNS (UDP 53)"));
                }
            }
        }
    }
    report("the Services, autoscaler, budgets and policies", problems);
}
