//! `GET /openapi.json` against the running product: every route chatter serves is
//! in the document, every operation the document lists is a route the gateway
//! serves, and the document is self-consistent. Embedded only: the router is the
//! same in both modes.

use chatter_tests::{Cluster, binaries};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use std::collections::BTreeSet;

/// Every route of the product (SPEC §4, docs/API.md), with the path parameter names
/// the document must use. SPEC §4's `GET /config`, `POST /webhook/verify` and the
/// `/support/…` desk are not served yet: add them here when they are.
const CONTRACT: &[(&str, &str)] = &[
    // Operations
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
    // Identity and auth
    ("POST", "/users"),
    ("POST", "/user"),
    ("POST", "/tokens"),
    ("GET", "/ws_token"),
    // Real time
    ("GET", "/ws"),
    ("GET", "/connections"),
    // Rooms, messages, read state
    ("POST", "/rooms"),
    ("GET", "/rooms"),
    ("GET", "/rooms/{id}"),
    ("PUT", "/rooms/{id}/members"),
    ("DELETE", "/rooms/{id}"),
    ("GET", "/rooms/{id}/messages"),
    ("POST", "/rooms/{id}/messages"),
    ("PATCH", "/rooms/{id}/messages/{message_id}"),
    ("DELETE", "/rooms/{id}/messages/{message_id}"),
    ("POST", "/rooms/{id}/read"),
    ("GET", "/rooms/{id}/receipts"),
    ("GET", "/messages"),
    // Moderation
    ("GET", "/admin/audit"),
    ("GET", "/admin/flags"),
    ("GET", "/admin/reports"),
    ("POST", "/admin/users/{id}/kick"),
    ("POST", "/admin/users/{id}/ban"),
    ("DELETE", "/admin/users/{id}/ban"),
    ("POST", "/rooms/{id}/mutes"),
    ("DELETE", "/rooms/{id}/mutes/{user_id}"),
    ("POST", "/rooms/{id}/messages/{message_id}/report"),
    ("POST", "/users/me/blocks"),
    ("GET", "/users/me/blocks"),
    ("DELETE", "/users/me/blocks/{user_id}"),
];

/// The HTTP methods an OpenAPI path item can hold, as its keys spell them.
const METHODS: &[&str] = &[
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

async fn embedded() -> Cluster {
    Cluster::builder(binaries!())
        .embedded()
        .start()
        .await
        .expect("embedded chatter")
}

/// `/openapi.json`, fetched without credentials; it must be JSON.
async fn document(cluster: &Cluster) -> Value {
    let url = format!("{}/openapi.json", cluster.gateway(0).http_url());
    let response = cluster
        .http()
        .get(&url)
        .send()
        .await
        .expect("GET /openapi.json");
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    assert!(
        content_type.starts_with("application/json"),
        "content-type {content_type:?}"
    );
    let doc: Value = response.json().await.expect("the document is JSON");
    assert!(
        doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")),
        "not an OpenAPI 3 document: {}",
        doc["openapi"]
    );
    doc
}

/// Every (method, path template) the document lists.
fn operations(doc: &Value) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("`paths` is an object") {
        for method in METHODS {
            if item.get(*method).is_some() {
                found.push((method.to_uppercase(), path.clone()));
            }
        }
    }
    found
}

/// The `{names}` of a path template.
fn template_params(path: &str) -> BTreeSet<String> {
    path.split('/')
        .filter_map(|segment| segment.strip_prefix('{')?.strip_suffix('}'))
        .map(str::to_owned)
        .collect()
}

/// Follows a local `$ref` (`#/components/...`), once.
fn resolve<'a>(doc: &'a Value, value: &'a Value) -> Option<&'a Value> {
    match value.get("$ref").and_then(Value::as_str) {
        Some(reference) => doc.pointer(reference.strip_prefix('#')?),
        None => Some(value),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_of_the_product_is_documented() {
    let cluster = embedded().await;
    let doc = document(&cluster).await;
    let documented: BTreeSet<(String, String)> = operations(&doc).into_iter().collect();
    let missing: Vec<String> = CONTRACT
        .iter()
        .filter(|(method, path)| !documented.contains(&(method.to_string(), path.to_string())))
        .map(|(method, path)| format!("{method} {path}"))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} routes are missing from /openapi.json (a path parameter named \
         differently counts as missing):\n  {}\ndocumented: {documented:?}",
        missing.len(),
        CONTRACT.len(),
        missing.join("\n  "),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_operation_is_served() {
    let cluster = embedded().await;
    let doc = document(&cluster).await;
    let base = cluster.gateway(0).http_url();
    let mut phantoms = Vec::new();
    for (method, template) in operations(&doc) {
        let mut path = template.clone();
        for name in template_params(&template) {
            path = path.replace(&format!("{{{name}}}"), &uuid::Uuid::new_v4().to_string());
        }
        let response = cluster
            .http()
            .request(
                Method::from_bytes(method.as_bytes()).expect("method"),
                format!("{base}{path}"),
            )
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        // The router's fallback: no route at this path, or none for this method.
        let unrouted = status == StatusCode::METHOD_NOT_ALLOWED
            || (status == StatusCode::NOT_FOUND
                && body["error"]["code"] == "not_found"
                && body["error"]["message"] == "no such route");
        if unrouted {
            phantoms.push(format!("{method} {template} ({method} {path} -> {status})"));
        }
    }
    assert!(
        phantoms.is_empty(),
        "/openapi.json lists operations the gateway does not route:\n  {}",
        phantoms.join("\n  ")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_is_self_consistent() {
    let cluster = embedded().await;
    let doc = document(&cluster).await;
    let mut problems = Vec::new();

    // Every `$ref` points at something in the document.
    fn refs<'a>(value: &'a Value, at: &mut String, out: &mut Vec<(String, &'a str)>) {
        match value {
            Value::Object(map) => {
                for (key, child) in map {
                    if key == "$ref"
                        && let Some(reference) = child.as_str()
                    {
                        out.push((at.clone(), reference));
                    }
                    let len = at.len();
                    at.push('/');
                    at.push_str(&key.replace('~', "~0").replace('/', "~1"));
                    refs(child, at, out);
                    at.truncate(len);
                }
            }
            Value::Array(items) => {
                for (i, child) in items.iter().enumerate() {
                    let len = at.len();
                    at.push_str(&format!("/{i}"));
                    refs(child, at, out);
                    at.truncate(len);
                }
            }
            _ => {}
        }
    }
    let mut found = Vec::new();
    refs(&doc, &mut String::new(), &mut found);
    for (at, reference) in &found {
        let target = reference
            .strip_prefix('#')
            .and_then(|pointer| doc.pointer(pointer));
        if target.is_none() {
            problems.push(format!("{at}: $ref {reference} resolves to nothing"));
        }
    }

    // Path parameters are declared under the template's names, and only those.
    // Operation ids are unique.
    let mut operation_ids = BTreeSet::new();
    for (method, path) in operations(&doc) {
        let item = &doc["paths"][&path];
        let operation = &item[method.to_lowercase()];
        let declared: BTreeSet<String> = [&item["parameters"], &operation["parameters"]]
            .into_iter()
            .filter_map(Value::as_array)
            .flatten()
            .filter_map(|parameter| resolve(&doc, parameter))
            .filter(|parameter| parameter["in"] == "path")
            .filter_map(|parameter| parameter["name"].as_str().map(str::to_owned))
            .collect();
        let expected = template_params(&path);
        if declared != expected {
            problems.push(format!(
                "{method} {path}: path parameters {declared:?}, the template has {expected:?}"
            ));
        }
        if let Some(id) = operation["operationId"].as_str()
            && !operation_ids.insert(id.to_owned())
        {
            problems.push(format!("{method} {path}: operationId {id} is used twice"));
        }
        if operation["responses"]
            .as_object()
            .is_none_or(|responses| responses.is_empty())
        {
            problems.push(format!("{method} {path}: no responses"));
        }
    }

    // The shared error body, and both ways to authenticate.
    let error = doc
        .pointer("/components/schemas/ErrorBody")
        .and_then(|schema| resolve(&doc, schema));
    match error.and_then(|schema| resolve(&doc, &schema["properties"]["error"])) {
        Some(detail) => {
            for field in ["code", "message"] {
                if detail["properties"][field].is_null() {
                    problems.push(format!("ErrorBody.error lacks `{field}`"));
                }
            }
        }
        None => {
            problems.push("components.schemas.ErrorBody {error: {code, message}} is missing".into())
        }
    }
    for scheme in ["user", "service"] {
        if doc["components"]["securitySchemes"][scheme]["scheme"] != "bearer" {
            problems.push(format!("security scheme `{scheme}` (bearer) is missing"));
        }
    }
    assert_eq!(doc["info"]["title"], "chatter");

    assert!(
        problems.is_empty(),
        "/openapi.json is inconsistent:\n  {}",
        problems.join("\n  ")
    );
}
