//! `/admin/…`: what admins do to users (kick, ban) and what they review (the
//! audit log, flagged messages, reports). Every route needs the role `admin`
//! ([`Admin`]); every action is written to the audit log.
//!
//! A kick or a ban closes the user's sockets on every gateway through a close
//! order on their user channel (`crate::moderation::orders`); a ban is stored
//! first and announced to every gateway (`crate::moderation::notices`), so it
//! holds on all of them, and across restarts.

use super::error::{ApiError, ErrorBody};
use super::extract::{Admin, Json, Path, Query};
use super::rooms::page_limit;
use crate::moderation::notices::{self, Change};
use crate::moderation::orders::{self, Closing};
use crate::state::AppState;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use chatter_shared::auth::validate_user_id;
use chatter_shared::store::{AuditEntry, Flag, Report};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

/// The longest reason (kick, ban, report) accepted, in characters.
pub const MAX_REASON_CHARS: usize = 1000;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/admin/audit", get(audit))
        .route("/admin/flags", get(flags))
        .route("/admin/reports", get(reports))
        .route("/admin/users/{id}/kick", post(kick))
        .route("/admin/users/{id}/ban", post(ban).delete(unban))
}

/// A reason as given: at most [`MAX_REASON_CHARS`], no NUL; blank is none.
pub fn reason(text: Option<&str>) -> Result<Option<&str>, ApiError> {
    let Some(text) = text.map(str::trim).filter(|text| !text.is_empty()) else {
        return Ok(None);
    };
    if text.chars().count() > MAX_REASON_CHARS || text.contains('\0') {
        return Err(ApiError::bad_request(
            "bad_reason",
            format!("a reason is at most {MAX_REASON_CHARS} characters, without NUL"),
        ));
    }
    Ok(Some(text))
}

/// An `until` that is still to come.
pub fn until(until: Option<OffsetDateTime>) -> Result<Option<OffsetDateTime>, ApiError> {
    match until {
        Some(until) if until <= OffsetDateTime::now_utc() => Err(ApiError::bad_request(
            "bad_until",
            "until must be in the future",
        )),
        until => Ok(until),
    }
}

/// A body that may be left out: none (or only white space) is the default.
fn optional_json<T: serde::de::DeserializeOwned + Default>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body)
        .map_err(|error| ApiError::bad_request("bad_json", error.to_string()))
}

fn user_id(id: &str) -> Result<(), ApiError> {
    validate_user_id(id).map_err(|problem| ApiError::bad_request("bad_user_id", problem))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct PageQuery {
    /// Page size, 1 to `PAGE_SIZE_MAX` (200); default `PAGE_SIZE_DEFAULT` (50).
    #[param(value_type = Option<i64>, minimum = 1)]
    limit: Option<String>,
    /// The `next_cursor` of the previous page; absent or empty for the first.
    cursor: Option<String>,
}

impl PageQuery {
    fn read(&self, state: &AppState) -> Result<(i64, Option<Uuid>), ApiError> {
        let limit = page_limit(state, self.limit.as_deref())?;
        let cursor = match self.cursor.as_deref().filter(|c| !c.is_empty()) {
            None => None,
            Some(cursor) => Some(Uuid::parse_str(cursor).map_err(|_| {
                ApiError::bad_request("bad_cursor", "cursor is not a next_cursor of this list")
            })?),
        };
        Ok((limit, cursor))
    }
}

/// The cursor after a full page: its last item's id.
fn next_cursor(
    ids: impl DoubleEndedIterator<Item = Uuid>,
    len: usize,
    limit: i64,
) -> Option<String> {
    (len as i64 == limit)
        .then(|| ids.last())
        .flatten()
        .map(|id| id.to_string())
}

/// A page of the audit log.
#[derive(Serialize, ToSchema)]
struct AuditPage {
    /// Newest first.
    entries: Vec<AuditEntry>,
    #[schema(required)]
    next_cursor: Option<String>,
}

/// The audit log: who did what to whom, and why, newest first.
#[utoipa::path(
    get,
    path = "/admin/audit",
    operation_id = "list_audit_log",
    tag = "moderation",
    security(("user" = [])),
    params(PageQuery),
    responses(
        (status = 200, description = "A page of the audit log", body = AuditPage),
        (status = 400, description = "`bad_limit`, `bad_cursor`, `bad_query`", body = ErrorBody),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
        (status = 403, description = "`not_admin`: the caller lacks the role admin; `banned`", body = ErrorBody),
        (status = 503, description = "`unavailable`: the database is unavailable", body = ErrorBody),
    ),
)]
async fn audit(
    State(state): State<AppState>,
    _admin: Admin,
    Query(query): Query<PageQuery>,
) -> Result<Json<AuditPage>, ApiError> {
    let (limit, cursor) = query.read(&state)?;
    let entries = state.store.audit_page(limit, cursor).await?;
    let next_cursor = next_cursor(entries.iter().map(|e| e.id), entries.len(), limit);
    Ok(Json(AuditPage {
        entries,
        next_cursor,
    }))
}

/// A page of flagged messages.
#[derive(Serialize, ToSchema)]
struct FlagPage {
    /// Newest first.
    flags: Vec<Flag>,
    #[schema(required)]
    next_cursor: Option<String>,
}

/// Messages the moderation service flagged (they were delivered), newest first.
#[utoipa::path(
    get,
    path = "/admin/flags",
    operation_id = "list_flagged_messages",
    tag = "moderation",
    security(("user" = [])),
    params(PageQuery),
    responses(
        (status = 200, description = "A page of flagged messages", body = FlagPage),
        (status = 400, description = "`bad_limit`, `bad_cursor`, `bad_query`", body = ErrorBody),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
        (status = 403, description = "`not_admin`, `banned`", body = ErrorBody),
        (status = 503, description = "`unavailable`: the database is unavailable", body = ErrorBody),
    ),
)]
async fn flags(
    State(state): State<AppState>,
    _admin: Admin,
    Query(query): Query<PageQuery>,
) -> Result<Json<FlagPage>, ApiError> {
    let (limit, cursor) = query.read(&state)?;
    let flags = state.store.flags_page(limit, cursor).await?;
    let next_cursor = next_cursor(flags.iter().map(|f| f.id), flags.len(), limit);
    Ok(Json(FlagPage { flags, next_cursor }))
}

/// A page of reports.
#[derive(Serialize, ToSchema)]
struct ReportPage {
    /// Newest first.
    reports: Vec<Report>,
    #[schema(required)]
    next_cursor: Option<String>,
}

/// Members' reports about messages, newest first. An admin may then delete the
/// message (`DELETE /rooms/{id}/messages/{message_id}`) or act on its sender.
#[utoipa::path(
    get,
    path = "/admin/reports",
    operation_id = "list_reports",
    tag = "moderation",
    security(("user" = [])),
    params(PageQuery),
    responses(
        (status = 200, description = "A page of reports", body = ReportPage),
        (status = 400, description = "`bad_limit`, `bad_cursor`, `bad_query`", body = ErrorBody),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
        (status = 403, description = "`not_admin`, `banned`", body = ErrorBody),
        (status = 503, description = "`unavailable`: the database is unavailable", body = ErrorBody),
    ),
)]
async fn reports(
    State(state): State<AppState>,
    _admin: Admin,
    Query(query): Query<PageQuery>,
) -> Result<Json<ReportPage>, ApiError> {
    let (limit, cursor) = query.read(&state)?;
    let reports = state.store.reports_page(limit, cursor).await?;
    let next_cursor = next_cursor(reports.iter().map(|r| r.id), reports.len(), limit);
    Ok(Json(ReportPage {
        reports,
        next_cursor,
    }))
}

#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
struct KickBody {
    /// Shown to the user in `Disconnection {code: 4004, reason}` (cut to 120
    /// bytes there) and kept in the audit log.
    reason: Option<String>,
}

/// What a kick or a ban did.
#[derive(Serialize, ToSchema)]
struct Acted {
    user_id: String,
    /// `kick` or `ban`.
    action: &'static str,
    /// For a ban: when it ends; `null` is until lifted.
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(required)]
    until: Option<OffsetDateTime>,
    #[schema(required)]
    reason: Option<String>,
}

/// Kick a user: every socket of theirs, on every gateway, closes with 4004.
///
/// They may reconnect at once (a ban keeps them out).
#[utoipa::path(
    post,
    path = "/admin/users/{id}/kick",
    operation_id = "kick_user",
    tag = "moderation",
    security(("user" = [])),
    params(("id" = String, Path, description = "The user to kick")),
    request_body(content = KickBody, description = "Optional; `{}` or no body at all is fine"),
    responses(
        (status = 200, description = "Their sockets are closing (within a second on every gateway)", body = Acted),
        (status = 400, description = "`bad_user_id`, `bad_reason`, `bad_json`", body = ErrorBody),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
        (status = 403, description = "`not_admin`, `banned`", body = ErrorBody),
        (status = 503, description = "`unavailable`: the database or Redis is unavailable", body = ErrorBody),
    ),
)]
async fn kick(
    State(state): State<AppState>,
    Admin(admin): Admin,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Acted>, ApiError> {
    user_id(&id)?;
    let body: KickBody = optional_json(&body)?;
    let reason = reason(body.reason.as_deref())?;
    state
        .store
        .audit(&admin.user_id, "kick", &id, reason)
        .await?;
    orders::close_user(
        &state.bus,
        &id,
        Closing::Kick,
        reason.unwrap_or("disconnected by an admin"),
        None,
    )
    .await?;
    Ok(Json(Acted {
        reason: reason.map(str::to_owned),
        user_id: id,
        action: "kick",
        until: None,
    }))
}

#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
struct BanBody {
    /// When the ban ends (RFC 3339, in the future); absent: until lifted.
    #[serde(default, with = "time::serde::rfc3339::option")]
    until: Option<OffsetDateTime>,
    /// Kept in the audit log; shown in the 4005 `Disconnection`.
    reason: Option<String>,
}

/// Ban a user: their sockets close with 4005 everywhere, and until the ban is
/// lifted or ends they are refused everywhere: upgrades close with 4005, REST
/// answers 403 `banned`, `/ws_token` and `POST /tokens` refuse them.
#[utoipa::path(
    post,
    path = "/admin/users/{id}/ban",
    operation_id = "ban_user",
    tag = "moderation",
    security(("user" = [])),
    params(("id" = String, Path, description = "The user to ban")),
    request_body(content = BanBody, description = "Optional; a new ban replaces an older one"),
    responses(
        (status = 200, description = "Banned (on every gateway within a second)", body = Acted),
        (status = 400, description = "`bad_user_id`, `bad_reason`, `bad_until`: not in the future, `bad_json`", body = ErrorBody),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
        (status = 403, description = "`not_admin`, `banned`", body = ErrorBody),
        (status = 503, description = "`unavailable`: the database or Redis is unavailable", body = ErrorBody),
    ),
)]
async fn ban(
    State(state): State<AppState>,
    Admin(admin): Admin,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Acted>, ApiError> {
    user_id(&id)?;
    let body: BanBody = optional_json(&body)?;
    let reason = reason(body.reason.as_deref())?;
    let until = until(body.until)?;
    state.store.ban(&id, until, reason, &admin.user_id).await?;
    state
        .store
        .audit(&admin.user_id, "ban", &id, reason)
        .await?;
    notices::announce(&state, Change::Ban(&id)).await;
    orders::close_user(
        &state.bus,
        &id,
        Closing::Ban,
        reason.unwrap_or("banned"),
        None,
    )
    .await?;
    Ok(Json(Acted {
        reason: reason.map(str::to_owned),
        user_id: id,
        action: "ban",
        until,
    }))
}

/// Lift a user's ban.
#[utoipa::path(
    delete,
    path = "/admin/users/{id}/ban",
    operation_id = "unban_user",
    tag = "moderation",
    security(("user" = [])),
    params(("id" = String, Path, description = "The banned user")),
    responses(
        (status = 204, description = "Lifted (on every gateway within a second)"),
        (status = 400, description = "`bad_user_id`", body = ErrorBody),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
        (status = 403, description = "`not_admin`, `banned`", body = ErrorBody),
        (status = 404, description = "`not_banned`: the user has no ban", body = ErrorBody),
        (status = 503, description = "`unavailable`: the database is unavailable", body = ErrorBody),
    ),
)]
async fn unban(
    State(state): State<AppState>,
    Admin(admin): Admin,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    user_id(&id)?;
    if !state.store.unban(&id).await? {
        return Err(ApiError::not_found("not_banned", "this user is not banned"));
    }
    state
        .store
        .audit(&admin.user_id, "unban", &id, None)
        .await?;
    notices::announce(&state, Change::Ban(&id)).await;
    Ok(StatusCode::NO_CONTENT)
}
