//! `GET /ws`: authenticate, register with the hub, then upgrade.
//!
//! Everything that can fail slowly — token check, user upsert, loading the user's
//! rooms, subscribing to their channels — happens *before* the 101 response, so a
//! client that sees the upgrade succeed is already receiving its rooms' messages.
//! Refusals that the protocol defines as close codes (no token 4001, bad token
//! 4002) are sent as a `Disconnection` frame and a close right after the upgrade,
//! because browsers cannot read the HTTP status of a failed WebSocket handshake.

mod connection;
mod throttle;

use crate::http::error::{ApiError, ErrorBody};
use crate::http::extract::bearer;
use crate::moderation::orders::{self, Closing};
use crate::state::AppState;
use crate::tickets;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::http::header::{HOST, ORIGIN};
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use chatter_shared::auth::{Identity, looks_like_jwt};
use chatter_shared::config::SessionPolicy;
use chatter_shared::protocol::{CloseCode, ServerFrame};
use chatter_shared::telemetry::metric;
use serde::Deserialize;
use std::net::IpAddr;
use std::time::Duration;

/// How long to keep reading after our close frame, waiting for the client's.
/// Dropping TCP early is worse than it looks: a client that writes anything (a
/// pong to an earlier ping) to a fully closed socket gets a reset, and a reset
/// makes its kernel discard the unread `Disconnection` and close frames.
const CLOSE_GRACE: Duration = Duration::from_secs(3);

/// Read buffer per socket (see `upgrade`), and the most one read takes. A
/// client's frames are mostly under it (a `SendMessage` of a 300-character
/// body is about 420 bytes); a bigger one takes a read per 512 bytes. Every
/// idle socket holds it: 1 KiB was a sixth of an idle socket's memory.
const READ_BUFFER_BYTES: usize = 512;

/// Written frames collected before tungstenite writes to the socket (see
/// `connection::write_queued`, which flushes after each batch).
const WRITE_BUFFER_BYTES: usize = 16 * 1024;

#[derive(Deserialize)]
pub struct WsParams {
    token: Option<String>,
}

/// Open the WebSocket (protocol: README "WebSocket protocol").
///
/// Authenticate with `?token=` (a `GET /ws_token` ticket or a JWT) or with
/// `Authorization: Bearer <JWT>`. A missing or bad token still upgrades, then
/// closes with 4001 (no token), 4002 (invalid, expired or used), 4005 (banned) or
/// 4006 (server error), after a `Disconnection {code, reason}` frame. Open
/// sockets may later close with 4004 (kicked), 4005 (banned), 4008 (a newer
/// connection under `SESSION_POLICY=single`) or 4011 (content strikes).
#[utoipa::path(
    get,
    path = "/ws",
    operation_id = "open_websocket",
    tag = "websocket",
    security((), ("user" = [])),
    params(
        ("token" = Option<String>, Query, description = "A single-use ticket from `GET /ws_token`, or a JWT"),
    ),
    responses(
        (status = 101, description = "Switching Protocols: the WebSocket is open"),
        (status = 400, description = "Not a WebSocket handshake (plain-text body)"),
        (status = 403, description = "`origin_not_allowed`: the `Origin` header is not in `ALLOWED_ORIGINS`", body = ErrorBody),
        (status = 429, description = "`rate_limited`: the user's request budget (upgrades count) is spent, or (delegated verification) the client IP's budget for asking the identity service; `Retry-After` says when to try again", body = ErrorBody),
        (status = 503, description = "`draining`: the gateway is shutting down, connect to another (a load balancer retries); `unavailable`: at its connection limit, or the identity service (`VERIFICATION_URL`) is down or slow", body = ErrorBody),
    ),
)]
pub async fn upgrade(
    State(state): State<AppState>,
    Query(params): Query<WsParams>,
    parts: Parts,
    ws: WebSocketUpgrade,
) -> Response {
    if let Some(origin) = parts.headers.get(ORIGIN) {
        let allowed = &state.config.allowed_origins.0;
        let origin = origin.to_str().unwrap_or("").trim_end_matches('/');
        if !allowed.iter().any(|a| a == "*" || a == origin) && !same_origin(origin, &parts) {
            metrics::counter!(metric::UPGRADES_REFUSED, "reason" => "origin").increment(1);
            return ApiError::forbidden("origin_not_allowed", "this origin may not connect")
                .into_response();
        }
    }
    if state.shutdown.is_cancelled() {
        // 503 lets a load balancer retry the upgrade on another gateway.
        metrics::counter!(metric::UPGRADES_REFUSED, "reason" => "draining").increment(1);
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining",
            "the gateway is draining; connect to another",
        )
        .into_response();
    }
    let Ok(permit) = state.connection_slots.clone().try_acquire_owned() else {
        metrics::counter!(metric::UPGRADES_REFUSED, "reason" => "full").increment(1);
        return ApiError::unavailable("the gateway is at its connection limit").into_response();
    };
    // tungstenite's own cap sits above ours so that frames just over the limit get
    // a clean 4014 from us rather than a torn connection.
    let hard_cap = (state.config.max_frame_bytes * 2).max(64 * 1024);
    let ws = ws
        .max_message_size(hard_cap)
        .max_frame_size(hard_cap)
        // tungstenite allocates a 128 KiB read buffer per socket by default and
        // batches writes up to 128 KiB: most of a connection's memory. Chat frames
        // are small; a small read buffer grows when a big frame needs it. Writes
        // are buffered only between a batch's frames (the socket loop flushes
        // after each batch), so a frame never waits for the next one.
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(WRITE_BUFFER_BYTES);

    let token = params
        .token
        .as_deref()
        .filter(|t| !t.is_empty())
        .or_else(|| bearer(&parts));
    let Some(token) = token else {
        return refuse(ws, CloseCode::NoAuthToken, "no token");
    };
    let ip =
        crate::http::rate_limit::client_ip_of(&state.config, &parts.headers, &parts.extensions);
    let identity = match authenticate(&state, token, ip).await {
        Ok(identity) => identity,
        Err(Refusal(code, reason)) => return refuse(ws, code, reason),
        // Before the upgrade, like `draining`: the client (or a load balancer)
        // retries, and no socket is held open for a user nobody could vouch for.
        Err(IdentityUnavailable) => {
            metrics::counter!(metric::UPGRADES_REFUSED, "reason" => "identity").increment(1);
            return ApiError::from(crate::authenticate::Refused::Unavailable).into_response();
        }
        Err(Limited(wait)) => return ApiError::rate_limited(wait).into_response(),
    };
    if state.moderation.is_banned(&identity.user_id) {
        metrics::counter!(metric::UPGRADES_REFUSED, "reason" => "banned").increment(1);
        return refuse(ws, CloseCode::Banned, BANNED);
    }
    // Connection churn costs database work and subscriptions: upgrades spend
    // the user's REST budget.
    if let Err(limited) = state.limits.user(&identity.user_id) {
        return ApiError::rate_limited(limited.retry_after).into_response();
    }
    let user_id = identity.user_id.clone();
    let prepared = async {
        let (registration, inbox) = state
            .hub
            .register(&identity.user_id, state.config.send_queue_frames)
            .await
            .map_err(|e| e.to_string())?;
        state
            .hub
            .replace_oldest(&identity.user_id, state.config.max_connections_per_user);
        // One batched statement, after the user channel is live: the record
        // written, the stored roles, the rooms.
        let upsert = state.needs_upsert(&identity.user_id);
        let arrived = state
            .arrivals
            .arrive(&identity, upsert)
            .await
            .map_err(|e| e.to_string())?;
        if upsert {
            state.upserted(&identity.user_id);
        }
        let mut identity = identity;
        // For the whole socket: agents' queue, presence of everyone, desk
        // frames. A user is an agent or an admin by their token or their
        // stored record (see `App::with_stored_roles`).
        if identity.roles.is_empty() {
            identity.roles = arrived.roles;
        }
        state
            .hub
            .join_rooms(&registration.conn, arrived.rooms)
            .await
            .map_err(|e| e.to_string())?;
        // Agents hear the support desk's queue from every gateway.
        if crate::support::is_agent(&identity) {
            state
                .hub
                .join_agents(&registration.conn)
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok::<_, String>((registration, inbox, identity))
    };
    match prepared.await {
        // Banned while this connection was being prepared: the ban's close
        // order may have gone out before it registered.
        Ok(_) if state.moderation.is_banned(&user_id) => refuse(ws, CloseCode::Banned, BANNED),
        Ok((registration, inbox, identity)) => {
            if state.config.session_policy == SessionPolicy::Single
                && let Err(error) = orders::close_user(
                    &state.bus,
                    &identity.user_id,
                    Closing::NewSession,
                    "replaced by a newer connection of the same user",
                    Some(registration.conn.session),
                )
                .await
            {
                tracing::warn!(%error, "cannot close the user's older connections (SESSION_POLICY=single)");
            }
            let sockets = state.sockets.clone();
            ws.on_upgrade(move |socket| {
                sockets.track_future(connection::run(
                    socket,
                    state,
                    identity,
                    registration,
                    inbox,
                    permit,
                ))
            })
        }
        Err(error) => {
            tracing::warn!(%error, "cannot prepare a connection");
            refuse(ws, CloseCode::ServerError, "server error; try again")
        }
    }
}

/// True when `origin` is the host the request was sent to: a page this gateway
/// served (`/dashboard`, `/demo`), directly or through a proxy that keeps the
/// `Host` header. A cross-site page cannot forge its `Origin`, so this admits
/// the gateway's own pages and nothing else without an `ALLOWED_ORIGINS` entry.
fn same_origin(origin: &str, parts: &Parts) -> bool {
    let Some(host) = parts.headers.get(HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .is_some_and(|authority| !host.is_empty() && authority.eq_ignore_ascii_case(host))
}

enum Refused {
    /// Said with a close code after the upgrade.
    Refusal(CloseCode, &'static str),
    /// The identity service is down or slow: 503 instead of the upgrade.
    IdentityUnavailable,
    /// Asking the identity service would exceed the client IP's budget: 429.
    Limited(Duration),
}
use Refused::{IdentityUnavailable, Limited, Refusal};

/// The reason of a banned user's 4005.
const BANNED: &str = "banned";

/// A `?token=` is a JWT (three dot-separated parts) or else a ticket; with
/// delegated verification, an opaque token that is no ticket may still be the
/// identity service's.
async fn authenticate(state: &AppState, token: &str, ip: IpAddr) -> Result<Identity, Refused> {
    let user_token = |token| async move {
        // A call to the identity service is charged to the client IP first.
        crate::authenticate::user_paying(state, token, || state.limits.ip(ip))
            .await
            .map_err(|refused| match refused {
                crate::authenticate::Refused::Invalid(why) => Refusal(CloseCode::InvalidToken, why),
                crate::authenticate::Refused::Unavailable => IdentityUnavailable,
                crate::authenticate::Refused::RateLimited(wait) => Limited(wait),
            })
    };
    if looks_like_jwt(token) {
        return user_token(token).await;
    }
    match tickets::redeem(&state.bus, token).await {
        Ok(Some(identity)) => Ok(identity),
        Ok(None) if crate::authenticate::delegates(state) => user_token(token).await,
        Ok(None) => Err(Refusal(
            CloseCode::InvalidToken,
            "unknown, expired or used ticket",
        )),
        Err(error) => {
            tracing::warn!(%error, "cannot redeem a ticket");
            Err(Refusal(CloseCode::ServerError, "server error; try again"))
        }
    }
}

/// Upgrades only to say why the connection cannot stay.
fn refuse(ws: WebSocketUpgrade, code: CloseCode, reason: &'static str) -> Response {
    ws.on_upgrade(move |mut socket| async move { close(&mut socket, code, reason).await })
}

/// Sends `Disconnection {code, reason}`, then the close frame, then waits briefly
/// for the client's close so the TCP teardown is clean.
pub async fn close(socket: &mut WebSocket, code: CloseCode, reason: &str) {
    let notice = ServerFrame::Disconnection {
        code: code.code(),
        reason,
    }
    .to_json();
    let _ = socket.send(Message::Text(notice.into())).await;
    let frame = CloseFrame {
        code: code.code(),
        reason: reason.into(),
    };
    if socket.send(Message::Close(Some(frame))).await.is_err() {
        return;
    }
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        while let Some(Ok(message)) = socket.recv().await {
            if matches!(message, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}
