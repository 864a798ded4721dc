//! The one error type of the REST API.
//!
//! Every failure becomes `{"error": {"code": "...", "message": "..."}}` with the
//! right status. Internal causes (database, Redis) are logged and answered with a
//! generic body: clients never see internals, stack traces or other users' data.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use std::time::Duration;
use utoipa::ToSchema;

/// The body of every error answer.
// Also the `ErrorBody` schema of `/openapi.json`.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"error": {"code": "unauthenticated", "message": "a Bearer token is required"}}))]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable: `bad_json`, `unauthenticated`, `room_not_found`, …
    pub code: &'static str,
    /// For humans; may change.
    pub message: String,
    /// With `rate_limited` (429): milliseconds until a retry can succeed; the
    /// `Retry-After` header says the same in whole seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Set on 429s: becomes `Retry-After` and `retry_after_ms`.
    pub retry_after: Option<Duration>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// 429 `rate_limited`, with when to try again.
    pub fn rate_limited(retry_after: Duration) -> ApiError {
        ApiError {
            retry_after: Some(retry_after),
            ..ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "too many requests; retry after Retry-After seconds",
            )
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", message)
    }

    pub fn forbidden(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, code, message)
    }

    pub fn not_found(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, code, message)
    }

    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let retry_after_ms = self.retry_after.map(|wait| {
            u64::try_from(wait.as_micros().div_ceil(1000))
                .unwrap_or(u64::MAX)
                .max(1)
        });
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: self.message,
                retry_after_ms,
            },
        };
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(millis) = retry_after_ms {
            // Whole seconds, rounded up: a client that waits that long gets through.
            let secs = millis.div_ceil(1000);
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> ApiError {
        if chatter_shared::store::is_transient(&error) {
            tracing::warn!(%error, "database unavailable");
            metrics::counter!(chatter_shared::telemetry::metric::DB_ERRORS).increment(1);
            return ApiError::unavailable("the database is unavailable; try again shortly");
        }
        tracing::error!(%error, "database error");
        metrics::counter!(chatter_shared::telemetry::metric::DB_ERRORS).increment(1);
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error",
        )
    }
}

impl From<crate::bus::BusError> for ApiError {
    fn from(error: crate::bus::BusError) -> ApiError {
        tracing::warn!(%error, "redis unavailable");
        ApiError::unavailable("the message bus is unavailable; try again shortly")
    }
}

impl From<crate::authenticate::Refused> for ApiError {
    fn from(refused: crate::authenticate::Refused) -> ApiError {
        match refused {
            crate::authenticate::Refused::Invalid(why) => ApiError::unauthorized(why),
            crate::authenticate::Refused::Unavailable => {
                ApiError::unavailable("the identity service is unavailable; try again shortly")
            }
            crate::authenticate::Refused::RateLimited(wait) => ApiError::rate_limited(wait),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> ApiError {
        let status = rejection.status();
        let code = match status {
            StatusCode::PAYLOAD_TOO_LARGE => "too_large",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
            _ => "bad_json",
        };
        // 422 (valid JSON, wrong shape) is reported as 400, as SPEC §4 lists.
        let status = if status == StatusCode::UNPROCESSABLE_ENTITY {
            StatusCode::BAD_REQUEST
        } else {
            status
        };
        ApiError::new(status, code, rejection.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> ApiError {
        ApiError::bad_request("bad_path", rejection.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> ApiError {
        ApiError::bad_request("bad_query", rejection.body_text())
    }
}
