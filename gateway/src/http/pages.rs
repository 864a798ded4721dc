//! The gateway's own web pages: the support dashboard (`/dashboard`), the demo
//! chat (`/demo`), and the files they load under `/assets/` — among them the
//! JavaScript client library (`clients/js/chatter.js`), so a page and the
//! library it runs on always come from the same build.
//!
//! The files are compiled into the binary (`include_str!`): a gateway image
//! needs no folder of static files to serve them, and a page can never be out of
//! step with the protocol of the gateway that serves it. They are plain
//! HTML/CSS/JS without inline script or style, so the Content-Security-Policy can
//! allow scripts, styles and connections from this origin only.

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::error::ApiError;
use crate::state::AppState;

/// Only this origin's scripts, styles and connections (`'self'` covers the
/// same-origin `ws:`/`wss:` socket); no framing, no plugins, no `<base>`.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

const HTML: &str = "text/html; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";

/// `(name under /assets/, content type, body)`.
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "chatter.js",
        JS,
        include_str!("../../../clients/js/chatter.js"),
    ),
    ("app.css", CSS, include_str!("../../static/app.css")),
    ("ui.js", JS, include_str!("../../static/ui.js")),
    (
        "dashboard.js",
        JS,
        include_str!("../../static/dashboard.js"),
    ),
    ("demo.js", JS, include_str!("../../static/demo.js")),
];

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/dashboard",
            get(|| async { file(HTML, include_str!("../../static/dashboard.html")) }),
        )
        .route(
            "/demo",
            get(|| async { file(HTML, include_str!("../../static/demo.html")) }),
        )
        .route("/assets/{name}", get(asset))
}

async fn asset(Path(name): Path<String>) -> Response {
    match ASSETS.iter().find(|(asset, _, _)| *asset == name) {
        Some((_, content_type, body)) => file(content_type, body),
        None => ApiError::not_found("not_found", "no such asset").into_response(),
    }
}

fn file(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CSP),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            ),
            // Small files, and a new build must reach browsers at once.
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response()
}
