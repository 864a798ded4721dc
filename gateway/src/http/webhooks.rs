//! `POST /webhook/verify`: tells a service whether a webhook body carries a
//! valid signature, as the older token provider did (CONTRACTS.md), so services
//! that relied on it need not hold `WEBHOOK_SECRET` themselves.

use super::error::{ApiError, ErrorBody};
use super::extract::{Json, Service};
use crate::state::AppState;
use axum::Router;
use axum::extract::State;
use axum::routing::post;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

pub fn router() -> Router<AppState> {
    Router::new().route("/webhook/verify", post(verify))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct VerifyBody {
    /// The webhook's body exactly as received (`rawBody` is accepted too).
    #[serde(alias = "rawBody")]
    raw_body: String,
    /// The `X-Signature` header that came with it: hex HMAC-SHA256.
    signature: String,
}

#[derive(Serialize, ToSchema)]
struct Verdict {
    /// True when `signature` is `hex(HMAC-SHA256(WEBHOOK_SECRET, raw_body))`.
    is_valid: bool,
    /// The same, under the older service's name.
    #[serde(rename = "isValid")]
    is_valid_older: bool,
}

/// Check a webhook signature (for trusted services).
///
/// Compares in constant time; a signature that is not hex is simply invalid.
#[utoipa::path(
    post,
    path = "/webhook/verify",
    operation_id = "verify_webhook",
    tag = "webhooks",
    security(("service" = [])),
    request_body = VerifyBody,
    responses(
        (status = 200, description = "Whether the signature is valid", body = Verdict),
        (status = 400, description = "`bad_json`: not `{raw_body, signature}` (unknown fields too)", body = ErrorBody),
        (status = 401, description = "`unauthenticated`: no or wrong service secret", body = ErrorBody),
        (status = 413, description = "`too_large`: body over 256 KiB", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`: not `application/json`", body = ErrorBody),
        (status = 503, description = "`unavailable`: `WEBHOOK_SECRET` is not set", body = ErrorBody),
    ),
)]
async fn verify(
    State(state): State<AppState>,
    _service: Service,
    Json(body): Json<VerifyBody>,
) -> Result<Json<Verdict>, ApiError> {
    let secret = state
        .config
        .webhook_secret
        .as_deref()
        .filter(|secret| !secret.is_empty())
        .ok_or_else(|| {
            ApiError::unavailable("webhook signatures are off: WEBHOOK_SECRET is not set")
        })?;
    let valid = chatter_shared::signature::verify(
        secret.as_bytes(),
        body.raw_body.as_bytes(),
        &body.signature,
    );
    Ok(Json(Verdict {
        is_valid: valid,
        is_valid_older: valid,
    }))
}
