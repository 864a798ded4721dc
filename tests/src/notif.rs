//! A stand-in for the notification service: a real HTTP server in the test
//! process that records every request the worker makes.
//!
//! It is real (a socket, HTTP, JSON) so the worker's client, headers, timeouts
//! and retries are exercised exactly as in production; tests then assert on
//! what was received, and can make it fail to test retries and dead-lettering.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::task::JoinHandle;

/// One request received by the fake.
#[derive(Debug, Clone)]
pub struct NotifCall {
    pub method: String,
    /// Path and query, e.g. `/notify`.
    pub path: String,
    /// The `Authorization` header as sent (the product sends `NOTIFICATION_AUTH` verbatim).
    pub authorization: Option<String>,
    /// The `Idempotency-Key` header (`<message id>:<recipient>`).
    pub idempotency_key: Option<String>,
    /// The body parsed as JSON, or `Value::String` holding the raw text if it isn't JSON.
    pub body: Value,
    pub at: Instant,
    /// The status the fake answered with (200, or 503 while failing).
    pub status: u16,
}

#[derive(Default)]
struct Inner {
    requests: Mutex<Vec<NotifCall>>,
    failing: AtomicBool,
}

impl Inner {
    /// The request log. A std mutex: it is never held across an await, and a
    /// panic while holding it can't leave the Vec half-updated, so poisoning is
    /// ignored.
    fn requests(&self) -> MutexGuard<'_, Vec<NotifCall>> {
        self.requests
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The fake notification service, serving on `127.0.0.1:<random port>` until dropped.
pub struct NotifFake {
    addr: SocketAddr,
    inner: Arc<Inner>,
    task: JoinHandle<()>,
}

impl NotifFake {
    /// Binds a free port and serves on the current tokio runtime.
    pub async fn start() -> Result<Self> {
        let inner = Arc::new(Inner::default());
        let app = Router::new().fallback(record).with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the fake notification service")?;
        let addr = listener
            .local_addr()
            .context("reading the fake's address")?;
        let task = tokio::spawn(async move {
            if let Err(err) = axum::serve(listener, app).await {
                eprintln!("fake notification service stopped: {err}");
            }
        });
        Ok(NotifFake { addr, inner, task })
    }

    /// `http://127.0.0.1:PORT/notify`: what `NOTIFICATION_URL` is set to. Any
    /// path is accepted and recorded.
    pub fn url(&self) -> String {
        format!("http://{}/notify", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Requests answered with 200, oldest first.
    pub fn calls(&self) -> Vec<NotifCall> {
        self.inner
            .requests()
            .iter()
            .filter(|c| c.status == 200)
            .cloned()
            .collect()
    }

    /// Every request received, including those answered 503 while failing.
    pub fn requests(&self) -> Vec<NotifCall> {
        self.inner.requests().clone()
    }

    /// How many requests were received, successful or not.
    pub fn attempts(&self) -> usize {
        self.inner.requests().len()
    }

    /// While `true`, every request is answered `503` (and still recorded).
    pub fn set_failing(&self, failing: bool) {
        self.inner.failing.store(failing, Ordering::SeqCst);
    }

    /// Forgets all recorded requests.
    pub fn clear(&self) {
        self.inner.requests().clear();
    }

    /// Waits until at least `n` successful calls were recorded and returns them all.
    pub async fn wait_for_calls(&self, n: usize, timeout: Duration) -> Result<Vec<NotifCall>> {
        crate::wait::eventually(timeout, || async {
            let calls = self.calls();
            if calls.len() < n {
                bail!(
                    "{} of {n} notification calls so far: {:?}",
                    calls.len(),
                    bodies(&calls)
                );
            }
            Ok(calls)
        })
        .await
    }
}

impl Drop for NotifFake {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn bodies(calls: &[NotifCall]) -> Vec<&Value> {
    calls.iter().map(|c| &c.body).collect()
}

async fn record(
    State(inner): State<Arc<Inner>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let failing = inner.failing.load(Ordering::SeqCst);
    let status = if failing {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    let body = serde_json::from_slice(&body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
    inner.requests().push(NotifCall {
        method: method.to_string(),
        path: uri
            .path_and_query()
            .map_or_else(|| uri.path().to_owned(), ToString::to_string),
        authorization: headers
            .get(header::AUTHORIZATION)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()),
        idempotency_key: headers
            .get("idempotency-key")
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()),
        body,
        at: Instant::now(),
        status: status.as_u16(),
    });
    if failing {
        (status, axum::Json(json!({"error": "failing on purpose"}))).into_response()
    } else {
        (status, axum::Json(json!({}))).into_response()
    }
}
