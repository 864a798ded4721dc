//! Permissions from the token (`JWT_PERMISSIONS_CLAIM`), as SourceLoop's chat
//! service uses them: each REST route and WebSocket action needs one named
//! permission, and a token without it gets 403 `missing_permission` (over the
//! WebSocket, an `Error` frame or a refused send with that reason).
//!
//! This is the one table of who needs what (docs/API.md "Permissions" prints
//! it). Routes are matched by method and route pattern; frames by an exhaustive
//! `match`, so a new frame type cannot be added without deciding here. A route
//! missing from the table is refused to users while permissions are checked
//! (fail closed); a unit test keeps the table and the OpenAPI document in step.
//!
//! With `JWT_PERMISSIONS_CLAIM` unset nothing here runs: the REST layer is not
//! installed and every [`Identity::may`](chatter_shared::auth::Identity::may)
//! answers yes.

use axum::http::Method;
use chatter_shared::auth::Identity;
use chatter_shared::protocol::{ClientFrame, JoinSide};

/// The permissions chatter knows, by the names tokens carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    ViewRoom,
    CreateRoom,
    /// Changing a room's members.
    UpdateRoom,
    DeleteRoom,
    ViewMessage,
    /// Sending messages, and saying one is typing.
    CreateMessage,
    UpdateMessage,
    DeleteMessage,
    /// Moving one's own read marker.
    MarkRead,
    /// Who is online: `GET /connections`, `SubscribePresence`.
    ViewPresence,
    /// Support desk, the user's side: asking for help, re-joining one's chat.
    RequestSupport,
    /// Support desk, the agent's side: the queue, claims, the agent list.
    ProvideSupport,
}

impl Permission {
    pub fn name(self) -> &'static str {
        match self {
            Permission::ViewRoom => "ViewRoom",
            Permission::CreateRoom => "CreateRoom",
            Permission::UpdateRoom => "UpdateRoom",
            Permission::DeleteRoom => "DeleteRoom",
            Permission::ViewMessage => "ViewMessage",
            Permission::CreateMessage => "CreateMessage",
            Permission::UpdateMessage => "UpdateMessage",
            Permission::DeleteMessage => "DeleteMessage",
            Permission::MarkRead => "MarkRead",
            Permission::ViewPresence => "ViewPresence",
            Permission::RequestSupport => "RequestSupport",
            Permission::ProvideSupport => "ProvideSupport",
        }
    }
}

/// What a route asks of a user's token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Public, service-only (the service secret is checked, not permissions),
    /// or authentication itself (`/ws_token`, `/ws`: what the socket then
    /// does is checked frame by frame).
    Nothing,
    Permission(Permission),
    /// Either one (closing a support chat: its user or an agent).
    Either(Permission, Permission),
}

impl Need {
    /// The permission a token lacks for this, if it lacks one (for the message).
    pub fn missing(self, identity: &Identity) -> Option<Permission> {
        match self {
            Need::Nothing => None,
            Need::Permission(p) => (!identity.may(p.name())).then_some(p),
            Need::Either(a, b) => (!identity.may(a.name()) && !identity.may(b.name())).then_some(a),
        }
    }
}

/// The permission `method path` needs, `path` being the route pattern
/// (`/rooms/{id}`); `None` for a route the table does not know.
pub fn for_route(method: &Method, path: &str) -> Option<Need> {
    use Permission::*;
    let need = |permission| Some(Need::Permission(permission));
    match (method.as_str(), path) {
        (
            "GET",
            "/healthz" | "/readyz" | "/metrics" | "/openapi.json" | "/config" | "/api-key"
            | "/ws_token" | "/ws" | "/token/{user_id}"
            // The support desk's pages: static files, public like /openapi.json.
            | "/dashboard" | "/demo" | "/assets/{name}",
        )
        | ("POST", "/users" | "/user" | "/tokens" | "/webhook/verify") => Some(Need::Nothing),
        ("GET", "/rooms" | "/rooms/{id}") => need(ViewRoom),
        ("POST", "/rooms") => need(CreateRoom),
        ("PUT", "/rooms/{id}/members") => need(UpdateRoom),
        ("DELETE", "/rooms/{id}") => need(DeleteRoom),
        ("GET", "/rooms/{id}/messages" | "/messages" | "/rooms/{id}/receipts") => need(ViewMessage),
        ("POST", "/rooms/{id}/messages") => need(CreateMessage),
        ("PATCH", "/rooms/{id}/messages/{message_id}") => need(UpdateMessage),
        ("DELETE", "/rooms/{id}/messages/{message_id}") => need(DeleteMessage),
        ("POST", "/rooms/{id}/read") => need(MarkRead),
        ("GET", "/connections") => need(ViewPresence),
        ("POST", "/support/requests") => need(RequestSupport),
        ("GET", "/support/requests" | "/support/agents")
        | ("POST", "/support/requests/{room_id}/claim") => need(ProvideSupport),
        ("POST", "/support/requests/{room_id}/close") => {
            Some(Need::Either(RequestSupport, ProvideSupport))
        }
        // Moderation: the admin routes check the role `admin` instead; a
        // user's own block list needs nothing beyond being that user.
        ("GET", "/admin/audit" | "/admin/flags" | "/admin/reports")
        | ("POST", "/admin/users/{id}/kick" | "/admin/users/{id}/ban")
        | ("DELETE", "/admin/users/{id}/ban" | "/users/me/blocks/{user_id}")
        | ("GET" | "POST", "/users/me/blocks") => Some(Need::Nothing),
        ("POST", "/rooms/{id}/mutes") | ("DELETE", "/rooms/{id}/mutes/{user_id}") => {
            need(UpdateRoom)
        }
        ("POST", "/rooms/{id}/messages/{message_id}/report") => need(ViewMessage),
        _ => None,
    }
}

/// What a WebSocket frame needs (`ChatMessage` arrives as `SendMessage`).
pub fn for_frame(frame: &ClientFrame) -> Need {
    use Permission::*;
    match frame {
        ClientFrame::SendMessage(_) | ClientFrame::Typing(_) => Need::Permission(CreateMessage),
        ClientFrame::Resume(_) => Need::Permission(ViewMessage),
        ClientFrame::SubscribePresence => Need::Permission(ViewPresence),
        ClientFrame::MarkRead(_) => Need::Permission(MarkRead),
        ClientFrame::Join(join) => match join.from {
            JoinSide::User => Need::Permission(RequestSupport),
            JoinSide::Support => Need::Permission(ProvideSupport),
        },
        ClientFrame::Load | ClientFrame::JoinUser(_) => Need::Permission(ProvideSupport),
        ClientFrame::Ping => Need::Nothing,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use utoipa::OpenApi;

    /// Every route of the OpenAPI document (which tests/tests/openapi.rs keeps
    /// equal to the router's) has its line in the table.
    #[test]
    fn every_route_is_in_the_table() {
        let document = crate::http::openapi::ApiDoc::openapi();
        let mut missing = Vec::new();
        for (path, item) in &document.paths.paths {
            let methods = [
                (Method::GET, item.get.is_some()),
                (Method::POST, item.post.is_some()),
                (Method::PUT, item.put.is_some()),
                (Method::PATCH, item.patch.is_some()),
                (Method::DELETE, item.delete.is_some()),
            ];
            for (method, present) in methods {
                if present && for_route(&method, path).is_none() {
                    missing.push(format!("{method} {path}"));
                }
            }
        }
        assert!(
            missing.is_empty(),
            "not in the permission table: {missing:?}"
        );
    }
}
