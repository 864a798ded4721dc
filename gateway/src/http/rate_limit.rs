//! The REST rate limits as one layer in front of every route (the limits
//! themselves: `crate::limits`).
//!
//! Who pays for a request:
//! - a valid user token (`AUTH_MODE`: a JWT, or one the identity service
//!   vouches for): that user (`REST_RATE_*`). The verdict rides along in the
//!   request, good or bad, so the route's `User` extractor does not verify the
//!   token (or ask the identity service) a second time;
//! - the service secret: nobody. Services are trusted; what a service does on
//!   a user's behalf may still be limited (HTTP publish spends the sender's
//!   message budget);
//! - anything else — no credentials, or credentials that are refused: the
//!   client IP (`REST_IP_RATE_*`), so guessing tokens costs the guesser.
//!
//! Never limited: `/healthz`, `/readyz` and `/metrics` (probes and scrapers
//! must see the truth about a busy gateway). `/ws` is limited per user by the
//! upgrade itself, after it authenticated the ticket or token.

use super::error::ApiError;
use super::extract::{NotVerified, Verified};
use crate::authenticate::{self, Refused};
use crate::state::AppState;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chatter_shared::auth::is_service_secret;
use chatter_shared::config::Config;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// Paths no rate limit applies to.
pub const UNLIMITED: &[&str] = &["/healthz", "/readyz", "/metrics"];

/// Charged by the upgrade handler itself, once it knows the user.
const UPGRADE: &str = "/ws";

/// Charges the request to its user or client IP; 429 `rate_limited` with
/// `Retry-After` when that budget is spent.
pub async fn limit(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let path = request.uri().path();
    if UNLIMITED.contains(&path) || path == UPGRADE {
        return next.run(request).await;
    }
    let header = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok());
    let service = state
        .config
        .service_secret()
        .is_some_and(|secret| header.is_some_and(|h| is_service_secret(h, secret)));
    // The older identity service calls `POST /user` with `NOTIFICATION_AUTH`
    // (the one route that accepts it): a service, not an anonymous client.
    let legacy_identity_service = path == "/user"
        && state
            .config
            .notification_auth
            .as_deref()
            .filter(|auth| !auth.is_empty())
            .is_some_and(|auth| header.is_some_and(|h| is_service_secret(h, auth)));
    if service || legacy_identity_service {
        return next.run(request).await;
    }
    let token = header
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|token| !token.is_empty());
    let ip = client_ip(&state.config, &request);
    // A call to the identity service is charged to the IP before it is made
    // (and only once, whatever it answers).
    let mut paid = false;
    let user = match token {
        Some(token) => Some(
            authenticate::user_paying(&state, token, || {
                paid = true;
                state.limits.ip(ip)
            })
            .await,
        ),
        None => None,
    };
    let charged = match &user {
        Some(Ok(identity)) => state.limits.user(&identity.user_id),
        Some(Err(Refused::RateLimited(wait))) => {
            return ApiError::rate_limited(*wait).into_response();
        }
        _ if paid => Ok(()),
        _ => state.limits.ip(ip),
    };
    if let Err(limited) = charged {
        return ApiError::rate_limited(limited.retry_after).into_response();
    }
    match user {
        Some(Ok(identity)) => {
            request.extensions_mut().insert(Verified(identity));
        }
        Some(Err(refused)) => {
            request.extensions_mut().insert(NotVerified(refused));
        }
        None => {}
    }
    next.run(request).await
}

/// The peer address, or with `TRUST_FORWARDED_FOR` the last `X-Forwarded-For`
/// entry: the one the proxy in front appended (entries before it are whatever
/// the client sent, so they are never trusted).
fn client_ip(config: &Config, request: &Request) -> IpAddr {
    client_ip_of(config, request.headers(), request.extensions())
}

/// [`client_ip`] from a request's parts (the WebSocket upgrade has no `Request`).
pub fn client_ip_of(
    config: &Config,
    headers: &HeaderMap,
    extensions: &axum::http::Extensions,
) -> IpAddr {
    if config.trust_forwarded_for
        && let Some(ip) = last_forwarded_for(headers)
    {
        return ip;
    }
    extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |info| info.0.ip())
}

fn last_forwarded_for(headers: &HeaderMap) -> Option<IpAddr> {
    let last = headers
        .get_all("x-forwarded-for")
        .iter()
        .next_back()?
        .to_str()
        .ok()?
        .rsplit(',')
        .next()?
        .trim();
    last.parse::<IpAddr>()
        .ok()
        .or_else(|| last.parse::<SocketAddr>().ok().map(|addr| addr.ip()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn request(forwarded: &[&str]) -> Request {
        let mut request = Request::new(axum::body::Body::empty());
        for value in forwarded {
            request.headers_mut().append(
                "x-forwarded-for",
                HeaderValue::from_str(value).expect("ascii"),
            );
        }
        let peer: SocketAddr = "192.0.2.1:5000".parse().expect("addr");
        request.extensions_mut().insert(ConnectInfo(peer));
        request
    }

    #[test]
    fn the_peer_is_the_client_unless_the_proxy_is_trusted() {
        let request = request(&["203.0.113.9, 198.51.100.7", "198.51.100.8:443"]);
        let mut config = Config::default();
        assert_eq!(
            client_ip(&config, &request),
            "192.0.2.1".parse::<IpAddr>().expect("ip")
        );
        config.trust_forwarded_for = true;
        assert_eq!(
            client_ip(&config, &request),
            "198.51.100.8".parse::<IpAddr>().expect("ip")
        );
        let garbage = self::request(&["not an address"]);
        assert_eq!(
            client_ip(&config, &garbage),
            "192.0.2.1".parse::<IpAddr>().expect("ip")
        );
    }
}
