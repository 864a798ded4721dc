//! The HTTP listener: accepting TCP connections and serving HTTP/1.1 on them.
//!
//! `axum::serve` would serve the router, but it has no header-read timeout (a
//! client that sends half a request line holds its connection forever) and no cap
//! on connections, and its graceful shutdown stops accepting at once — during a
//! drain a pod must keep answering probes and REST calls until its last socket is
//! gone. So the accept loop is ours, in the shape of mini-redis's `server.rs`:
//! hyper serves each connection, with
//! - a **header-read timeout** (`HTTP_HEADER_TIMEOUT_SECS`): a request's headers
//!   must arrive within it, and an idle keep-alive connection is closed after it;
//! - a **cap on HTTP connections** (`MAX_HTTP_CONNECTIONS`, and per client address
//!   `MAX_HTTP_CONNECTIONS_PER_IP`): a connection counts until it is upgraded to a
//!   WebSocket (sockets have their own cap, `MAX_CONNECTIONS`) or closed, so
//!   unauthenticated connections cannot pile up, and one address cannot take the
//!   slots others (a kubelet probing `/healthz`) need;
//! - `Connection: close` on every response while draining, so kept-alive clients
//!   move to another pod through the load balancer.
//!
//! HTTP/1.1 only: WebSocket upgrades need it, and load balancers speak it to
//! their upstreams.

use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::{HeaderValue, Request, StatusCode, header};
use chatter_shared::telemetry::metric;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

/// How long requests still in flight get to finish once the listener closes.
const IN_FLIGHT_GRACE: Duration = Duration::from_secs(10);
/// A request head larger than this is refused with 431 (hyper's minimum is 8 KiB).
const MAX_REQUEST_HEAD_BYTES: usize = 64 * 1024;
/// What a connection over a cap is told before it is closed.
const REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
connection: close\r\ncontent-length: 82\r\n\r\n\
{\"error\":{\"code\":\"unavailable\",\"message\":\"too many connections; try again later\"}}";

/// The limits the accept loop enforces (see the module documentation).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_timeout: Duration,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
}

impl Limits {
    pub fn from_config(config: &chatter_shared::config::Config) -> Limits {
        Limits {
            header_timeout: Duration::from_secs(config.http_header_timeout_secs),
            max_connections: config.max_http_connections,
            max_connections_per_ip: config.max_http_connections_per_ip,
        }
    }
}

/// Serves `app` on `listener` until `stop`, then lets requests in flight finish
/// (up to [`IN_FLIGHT_GRACE`]). While `draining` is cancelled (and before `stop`)
/// it keeps serving, marking responses `Connection: close`.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    draining: CancellationToken,
    stop: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let per_ip = PerAddress::new(limits.max_connections_per_ip);
    let connections = TaskTracker::new();
    // Connection tasks start a graceful shutdown when this is cancelled.
    let closing = CancellationToken::new();
    loop {
        let (tcp, peer) = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(%error, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some(seat) = per_ip.take(peer.ip()) else {
            refuse(tcp, "per_ip");
            continue;
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            refuse(tcp, "total");
            continue;
        };
        connections.spawn(serve_connection(
            tcp,
            peer,
            app.clone(),
            limits.header_timeout,
            draining.clone(),
            closing.clone(),
            (slot, seat),
        ));
    }
    drop(listener);
    closing.cancel();
    connections.close();
    if tokio::time::timeout(IN_FLIGHT_GRACE, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            open = connections.len(),
            "HTTP requests still in flight at exit"
        );
    }
}

/// Serves one connection. `_held` (its slot in the caps) is released when this
/// returns: at close, or as soon as the connection is upgraded to a WebSocket.
async fn serve_connection(
    tcp: TcpStream,
    peer: SocketAddr,
    app: Router,
    header_timeout: Duration,
    draining: CancellationToken,
    closing: CancellationToken,
    _held: (OwnedSemaphorePermit, Seat),
) {
    // A WebSocket frame is a small write; with Nagle's algorithm on, one written
    // while the previous is unacknowledged waits for the client's delayed ACK
    // (40 ms or more on Linux).
    if let Err(error) = tcp.set_nodelay(true) {
        tracing::debug!(%error, "cannot set TCP_NODELAY on an accepted socket");
    }
    let service = app
        .map_request(move |mut request: Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            request
        })
        .map_response(move |mut response: axum::response::Response| {
            if draining.is_cancelled() && response.status() != StatusCode::SWITCHING_PROTOCOLS {
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            response
        });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_buf_size(MAX_REQUEST_HEAD_BYTES);
    let connection = builder
        .serve_connection(TokioIo::new(tcp), TowerToHyperService::new(service))
        .with_upgrades();
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => log_end(result),
        () = closing.cancelled() => {
            connection.as_mut().graceful_shutdown();
            log_end(connection.await);
        }
    }
}

fn log_end(result: Result<(), hyper::Error>) {
    if let Err(error) = result {
        // Timeouts, resets and garbage from clients: theirs, not ours.
        tracing::debug!(%error, "HTTP connection ended with an error");
    }
}

/// Tells a connection over a cap why, without waiting on it, and closes it.
fn refuse(tcp: TcpStream, cap: &'static str) {
    metrics::counter!(metric::HTTP_CONNECTIONS_REFUSED, "cap" => cap).increment(1);
    let _ = tcp.try_write(REFUSAL);
}

/// Open HTTP connections per client address, bounded by `limit` each.
#[derive(Clone)]
struct PerAddress {
    limit: usize,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// One connection's place in [`PerAddress`]; gives it back when dropped.
struct Seat {
    owner: Option<(PerAddress, IpAddr)>,
}

impl PerAddress {
    fn new(limit: usize) -> PerAddress {
        PerAddress {
            limit,
            open: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    fn take(&self, ip: IpAddr) -> Option<Seat> {
        if self.limit == 0 {
            return Some(Seat { owner: None });
        }
        let mut open = self.open.lock().ok()?;
        let count = open.entry(ip).or_insert(0);
        if *count >= self.limit {
            return None;
        }
        *count += 1;
        Some(Seat {
            owner: Some((self.clone(), ip)),
        })
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        let Some((addresses, ip)) = self.owner.take() else {
            return;
        };
        if let Ok(mut open) = addresses.open.lock()
            && let Some(count) = open.get_mut(&ip)
        {
            *count -= 1;
            // The map holds only addresses with open connections: bounded by
            // MAX_HTTP_CONNECTIONS.
            if *count == 0 {
                open.remove(&ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_declares_its_body_length() {
        let text = std::str::from_utf8(REFUSAL).expect("ascii");
        let (head, body) = text.split_once("\r\n\r\n").expect("a head and a body");
        assert!(head.contains(&format!("content-length: {}", body.len())));
        serde_json::from_str::<serde_json::Value>(body).expect("a JSON body");
    }

    #[test]
    fn per_address_seats_are_bounded_and_given_back() {
        let addresses = PerAddress::new(2);
        let ip: IpAddr = [127, 0, 0, 2].into();
        let a = addresses.take(ip).expect("first");
        let _b = addresses.take(ip).expect("second");
        assert!(addresses.take(ip).is_none(), "third over the limit");
        assert!(addresses.take([127, 0, 0, 3].into()).is_some());
        drop(a);
        assert!(addresses.take(ip).is_some(), "a seat came back");
    }

    #[test]
    fn no_per_address_limit_when_zero() {
        let addresses = PerAddress::new(0);
        let ip: IpAddr = [127, 0, 0, 2].into();
        let seats: Vec<_> = (0..1000).filter_map(|_| addresses.take(ip)).collect();
        assert_eq!(seats.len(), 1000);
        assert!(addresses.open.lock().expect("lock").is_empty());
    }
}
