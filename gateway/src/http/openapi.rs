//! `GET /openapi.json`: the OpenAPI 3.1 document of the whole REST API, built at
//! compile time by `utoipa` from the handlers themselves.
//!
//! **Documenting a route** takes two steps, both next to code that already exists:
//! 1. Annotate the handler with `#[utoipa::path(...)]`: the method, the path exactly
//!    as the router spells it (same `{param}` names), `params(...)` for every path and
//!    query parameter, `security(("user" = []))` or `security(("service" = []))`,
//!    `request_body = T` and every response, errors included (`body = ErrorBody`,
//!    the description naming the error codes). The handler may stay private: the
//!    macro generates a public `__path_<handler>` item that [`ApiDoc`] refers to,
//!    so only the modules on the way must be visible from here (`pub(super) mod
//!    messages;` in `rooms/mod.rs` for `super::rooms::messages::publish`).
//! 2. Add the handler to the `paths(...)` list of [`ApiDoc`] below.
//!
//! Request and response types derive `utoipa::ToSchema` where they are defined:
//! the handler's own structs in its module, the wire types (`Room`, `MessageView`,
//! …) in `chatter-shared`. Schemas a path refers to are collected into
//! `components` automatically; only schemas nothing refers to need listing.
//!
//! `tests/tests/openapi.rs` keeps the document honest: every route of the product
//! must be in it, and nothing in it may be a route the router does not serve.

use super::error::ErrorBody;
use crate::state::AppState;
use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use std::sync::LazyLock;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

pub fn router() -> Router<AppState> {
    Router::new().route("/openapi.json", get(openapi_json))
}

/// The document. Title `chatter`; the version is the gateway's `CARGO_PKG_VERSION`.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "chatter",
        description = "Real-time chat: REST API of the chatter gateway. Errors are \
            `{\"error\": {\"code\", \"message\"}}` with the matching status.",
    ),
    modifiers(&SecuritySchemes, &UserAlias, &RateLimitResponses),
    paths(
        // Operations
        super::health::healthz,
        super::health::readyz,
        super::health::metrics_text,
        openapi_json,
        // Identity and auth
        super::users::upsert_user,
        super::tokens::mint,
        crate::tickets::issue,
        // Integrations: the older token provider and client config
        super::provider::provide_token,
        super::provider::api_key,
        super::client_config::client_config,
        // Real time
        crate::ws::upgrade,
        super::connections::connections,
        // Rooms, messages, read state (docs/API.md)
        super::rooms::create_room,
        super::rooms::list_rooms,
        super::rooms::room,
        super::rooms::change_members,
        super::rooms::delete_room,
        super::rooms::messages::history,
        super::rooms::messages::publish,
        super::rooms::messages::edit_message,
        super::rooms::messages::delete_message,
        super::rooms::messages::direct_history,
        super::rooms::read::mark_read,
        super::rooms::read::receipts,
        // Moderation (README "Moderation")
        super::admin::audit,
        super::admin::flags,
        super::admin::reports,
        super::admin::kick,
        super::admin::ban,
        super::admin::unban,
        super::rooms::moderation::mute,
        super::rooms::moderation::unmute,
        super::rooms::moderation::report,
        super::blocks::block,
        super::blocks::unblock,
        super::blocks::list,
        // Integrations
        super::webhooks::verify,
        // Support desk (README "Support desk")
        super::support::ask,
        super::support::list,
        super::support::claim,
        super::support::close,
        super::support::agents,
    ),
    components(schemas(ErrorBody)),
    tags(
        (name = "operations", description = "Probes, metrics and this document"),
        (name = "users", description = "Users, as the identity service declares them"),
        (name = "auth", description = "Tokens and WebSocket tickets"),
        (name = "websocket", description = "The real-time connection"),
        (name = "presence", description = "Who is online"),
        (name = "rooms", description = "Rooms, messages and read state"),
        (name = "moderation", description = "Admins, bans, kicks, mutes, reports, blocks"),
        (name = "webhooks", description = "Signatures of outbound webhooks"),
        (name = "support", description = "The live support desk: requests, claims, agents"),
    ),
)]
pub struct ApiDoc;

/// The document, serialized once.
static DOCUMENT: LazyLock<String> = LazyLock::new(|| {
    ApiDoc::openapi()
        .to_json()
        .expect("the OpenAPI document serializes")
});

/// This document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    responses(
        (status = 200, description = "The OpenAPI 3.1 document of this API", body = Object, content_type = "application/json"),
    ),
)]
async fn openapi_json() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        DOCUMENT.as_str(),
    )
}

/// The two ways to authenticate: `user` (a JWT) and `service` (the shared secret).
struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "user",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "`Authorization: Bearer <JWT>`; the user id is the `sub` claim \
                         (`JWT_USER_CLAIM`). Users are created on first sight.",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "service",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "`Authorization: Bearer <SERVICE_SECRET>`, or the raw secret as \
                         the whole header value (as the older identity service sends it).",
                    ))
                    .build(),
            ),
        );
    }
}

/// `POST /user` is the same handler as `POST /users`; one handler carries one
/// annotation, so the alias is copied here.
struct UserAlias;

impl Modify for UserAlias {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let Some(mut alias) = doc.paths.paths.get("/users").cloned() else {
            return;
        };
        if let Some(operation) = alias.post.as_mut() {
            operation.operation_id = Some("upsert_user_alias".into());
            operation.summary = Some(
                "Alias of `POST /users`, for the older identity service: also accepts \
                 `NOTIFICATION_AUTH` as the service secret (no other route does)"
                    .into(),
            );
        }
        doc.paths.paths.insert("/user".into(), alias);
    }
}

/// Every rate-limited operation (all but the probes and `/metrics`, see
/// `http::rate_limit`) may answer 429; one place adds that answer to all of
/// them rather than every handler repeating it.
struct RateLimitResponses;

impl Modify for RateLimitResponses {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::header::HeaderBuilder;
        use utoipa::openapi::{ContentBuilder, ObjectBuilder, Ref, ResponseBuilder, Type};
        let retry_after = HeaderBuilder::new()
            .schema(
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .minimum(Some(1)),
            )
            .description(Some("Seconds until a retry can succeed"))
            .build();
        let response = ResponseBuilder::new()
            .description(
                "`rate_limited`: the caller's budget is spent — per user (`REST_RATE_PER_SEC`, \
                 `REST_RATE_BURST`), or per client IP for requests without valid credentials \
                 (`REST_IP_RATE_*`); `POST /rooms/{id}/messages` also spends the sender's \
                 message rate (`FRAMES_PER_SEC`). Retry after `Retry-After` seconds \
                 (`retry_after_ms` in the body).",
            )
            .header("Retry-After", retry_after)
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ErrorBody")))
                    .build(),
            )
            .build();
        for (path, item) in doc.paths.paths.iter_mut() {
            if super::rate_limit::UNLIMITED.contains(&path.as_str()) {
                continue;
            }
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ];
            for operation in operations.into_iter().flatten() {
                operation
                    .responses
                    .responses
                    .entry("429".into())
                    .or_insert_with(|| response.clone().into());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn the_document_names_chatter_its_version_and_both_schemes() {
        let doc: Value = serde_json::from_str(&DOCUMENT).expect("JSON");
        assert_eq!(doc["info"]["title"], "chatter");
        assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
        let schemes = &doc["components"]["securitySchemes"];
        assert_eq!(schemes["user"]["scheme"], "bearer");
        assert_eq!(schemes["user"]["bearerFormat"], "JWT");
        assert_eq!(schemes["service"]["scheme"], "bearer");
        assert_eq!(
            doc["paths"]["/user"]["post"]["operationId"],
            "upsert_user_alias"
        );
        assert!(doc["components"]["schemas"]["ErrorBody"].is_object());
    }

    #[test]
    fn rate_limited_operations_document_429_and_probes_do_not() {
        let doc: Value = serde_json::from_str(&DOCUMENT).expect("JSON");
        let limited = &doc["paths"]["/rooms/{id}/messages"]["post"]["responses"]["429"];
        assert!(limited["headers"]["Retry-After"].is_object(), "{limited}");
        assert!(doc["paths"]["/ws"]["get"]["responses"]["429"].is_object());
        assert!(doc["paths"]["/user"]["post"]["responses"]["429"].is_object());
        for probe in ["/healthz", "/readyz", "/metrics"] {
            assert!(
                doc["paths"][probe]["get"]["responses"]["429"].is_null(),
                "{probe}"
            );
        }
    }
}
