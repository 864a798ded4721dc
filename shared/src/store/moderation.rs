//! Moderation records: bans, room mutes, blocks, reports, flagged messages and
//! the audit log (migration 0005).
//!
//! Lists are newest first by UUIDv7 id, and a page's cursor is the last id it
//! holds, so every list shares one statement shape for both dialects.

use super::Store;
use serde::Serialize;
use time::OffsetDateTime;
use uuid::Uuid;

/// A ban as stored; `until: None` is permanent.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Ban {
    pub user_id: String,
    pub until: Option<OffsetDateTime>,
}

/// What keeps a user from sending to one room: a mute (until some time, or
/// until lifted) or a block by the other member of a direct room.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Restriction {
    pub room_id: Uuid,
    pub user_id: String,
    pub until: Option<OffsetDateTime>,
    /// `muted` or `blocked`: the refusal's reason.
    pub kind: String,
}

/// One line of the audit log.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct AuditEntry {
    pub id: Uuid,
    /// Who acted (an admin, or a room owner for mutes).
    pub actor_id: String,
    /// `kick`, `ban`, `unban`, `mute`, `unmute`, `strikes`.
    pub action: String,
    /// A user id, or `<room id>/<user id>` for mutes.
    pub target: String,
    #[schema(required)]
    pub reason: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// A member's report about a message.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Report {
    pub id: Uuid,
    pub room_id: Uuid,
    pub message_id: Uuid,
    /// Who wrote the reported message.
    pub sender_id: String,
    pub reporter_id: String,
    pub reason: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// A message the moderation service flagged: delivered, and listed for admins.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Flag {
    /// The message's id.
    pub id: Uuid,
    pub room_id: Uuid,
    pub sender_id: String,
    /// The text as sent.
    #[serde(rename = "message")]
    pub body: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// Someone the caller blocked.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Block {
    pub user_id: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// Mutes, and blocks between the two members of a direct room, as restrictions;
/// the filters are spliced in to read one room.
macro_rules! restrictions {
    ($mute_filter:literal, $room_filter:literal) => {
        concat!(
            "SELECT room_id, user_id, until, 'muted' AS kind FROM room_mutes",
            $mute_filter,
            " UNION ALL
             SELECT r.id AS room_id, b.blocked_id AS user_id, CAST(NULL AS TIMESTAMPTZ) AS until,
                    'blocked' AS kind
             FROM blocks b
             JOIN room_members a ON a.user_id = b.blocker_id
             JOIN rooms r ON r.id = a.room_id AND r.kind = 'direct' AND r.deleted_at IS NULL",
            $room_filter,
            " JOIN room_members c ON c.room_id = r.id AND c.user_id = b.blocked_id"
        )
    };
}

impl Store {
    /// Bans `user_id` (again: the newest ban replaces an older one).
    pub async fn ban(
        &self,
        user_id: &str,
        until: Option<OffsetDateTime>,
        reason: Option<&str>,
        banned_by: &str,
    ) -> Result<(), sqlx::Error> {
        on_pool!(self, pool => sqlx::query(
            "INSERT INTO bans (user_id, until, reason, banned_by, created_at)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (user_id) DO UPDATE SET until = excluded.until,
                 reason = excluded.reason, banned_by = excluded.banned_by,
                 created_at = excluded.created_at",
        )
        .bind(user_id)
        .bind(until)
        .bind(reason)
        .bind(banned_by)
        .bind(OffsetDateTime::now_utc())
        .execute(pool)
        .await
        .map(|_| ()))
    }

    /// Lifts a ban; false if there was none.
    pub async fn unban(&self, user_id: &str) -> Result<bool, sqlx::Error> {
        on_pool!(self, pool => sqlx::query("DELETE FROM bans WHERE user_id = $1")
            .bind(user_id)
            .execute(pool)
            .await
            .map(|done| done.rows_affected() > 0))
    }

    /// The user's ban, expired or not.
    pub async fn ban_of(&self, user_id: &str) -> Result<Option<Ban>, sqlx::Error> {
        on_pool!(self, pool => sqlx::query_as("SELECT user_id, until FROM bans WHERE user_id = $1")
            .bind(user_id)
            .fetch_optional(pool)
            .await)
    }

    /// Every ban, expired ones too (they are dropped as they are met).
    pub async fn bans(&self) -> Result<Vec<Ban>, sqlx::Error> {
        on_pool!(self, pool => sqlx::query_as("SELECT user_id, until FROM bans")
            .fetch_all(pool)
            .await)
    }

    /// Mutes `user_id` in `room_id` (again: the newest mute replaces an older one).
    pub async fn mute(
        &self,
        room_id: Uuid,
        user_id: &str,
        until: Option<OffsetDateTime>,
        muted_by: &str,
    ) -> Result<(), sqlx::Error> {
        on_pool!(self, pool => sqlx::query(
            "INSERT INTO room_mutes (room_id, user_id, until, muted_by, created_at)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (room_id, user_id) DO UPDATE SET until = excluded.until,
                 muted_by = excluded.muted_by, created_at = excluded.created_at",
        )
        .bind(room_id)
        .bind(user_id)
        .bind(until)
        .bind(muted_by)
        .bind(OffsetDateTime::now_utc())
        .execute(pool)
        .await
        .map(|_| ()))
    }

    /// Lifts a mute; false if there was none.
    pub async fn unmute(&self, room_id: Uuid, user_id: &str) -> Result<bool, sqlx::Error> {
        on_pool!(self, pool => sqlx::query("DELETE FROM room_mutes WHERE room_id = $1 AND user_id = $2")
            .bind(room_id)
            .bind(user_id)
            .execute(pool)
            .await
            .map(|done| done.rows_affected() > 0))
    }

    /// Who may not send to `room_id`, and why.
    pub async fn restrictions_of_room(
        &self,
        room_id: Uuid,
    ) -> Result<Vec<Restriction>, sqlx::Error> {
        on_pool!(self, pool => sqlx::query_as(restrictions!(
            " WHERE room_id = $1",
            " AND r.id = $1"
        ))
        .bind(room_id)
        .fetch_all(pool)
        .await)
    }

    /// Every room's restrictions, for a gateway's start-up and periodic reload.
    pub async fn restrictions(&self) -> Result<Vec<Restriction>, sqlx::Error> {
        on_pool!(self, pool => sqlx::query_as(restrictions!("", ""))
            .fetch_all(pool)
            .await)
    }

    /// `blocker` blocks `blocked`; true if it is new.
    pub async fn block(&self, blocker: &str, blocked: &str) -> Result<bool, sqlx::Error> {
        on_pool!(self, pool => sqlx::query(
            "INSERT INTO blocks (blocker_id, blocked_id, created_at) VALUES ($1, $2, $3)
             ON CONFLICT (blocker_id, blocked_id) DO NOTHING",
        )
        .bind(blocker)
        .bind(blocked)
        .bind(OffsetDateTime::now_utc())
        .execute(pool)
        .await
        .map(|done| done.rows_affected() > 0))
    }

    /// Lifts a block; false if there was none.
    pub async fn unblock(&self, blocker: &str, blocked: &str) -> Result<bool, sqlx::Error> {
        on_pool!(self, pool => sqlx::query("DELETE FROM blocks WHERE blocker_id = $1 AND blocked_id = $2")
            .bind(blocker)
            .bind(blocked)
            .execute(pool)
            .await
            .map(|done| done.rows_affected() > 0))
    }

    /// Whether `blocker` blocks `blocked`.
    pub async fn blocks(&self, blocker: &str, blocked: &str) -> Result<bool, sqlx::Error> {
        on_pool!(self, pool => sqlx::query_scalar::<_, i64>(
            "SELECT COUNT(*) FROM blocks WHERE blocker_id = $1 AND blocked_id = $2",
        )
        .bind(blocker)
        .bind(blocked)
        .fetch_one(pool)
        .await
        .map(|count| count > 0))
    }

    /// The users `blocker` blocks, newest first.
    pub async fn blocked_by(&self, blocker: &str) -> Result<Vec<Block>, sqlx::Error> {
        on_pool!(self, pool => sqlx::query_as(
            "SELECT blocked_id AS user_id, created_at FROM blocks WHERE blocker_id = $1
             ORDER BY created_at DESC, blocked_id",
        )
        .bind(blocker)
        .fetch_all(pool)
        .await)
    }

    /// Appends to the audit log.
    pub async fn audit(
        &self,
        actor_id: &str,
        action: &str,
        target: &str,
        reason: Option<&str>,
    ) -> Result<(), sqlx::Error> {
        on_pool!(self, pool => sqlx::query(
            "INSERT INTO moderation_audit (id, actor_id, action, target, reason, created_at)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(Uuid::now_v7())
        .bind(actor_id)
        .bind(action)
        .bind(target)
        .bind(reason)
        .bind(OffsetDateTime::now_utc())
        .execute(pool)
        .await
        .map(|_| ()))
    }

    /// A page of the audit log, newest first, older than `before`.
    pub async fn audit_page(
        &self,
        limit: i64,
        before: Option<Uuid>,
    ) -> Result<Vec<AuditEntry>, sqlx::Error> {
        on_pool!(self, pool => sqlx::query_as(
            "SELECT id, actor_id, action, target, reason, created_at FROM moderation_audit
             WHERE $1 IS NULL OR id < $1 ORDER BY id DESC LIMIT $2",
        )
        .bind(before)
        .bind(limit)
        .fetch_all(pool)
        .await)
    }

    /// Records a member's report.
    pub async fn report(
        &self,
        room_id: Uuid,
        message_id: Uuid,
        sender_id: &str,
        reporter_id: &str,
        reason: &str,
    ) -> Result<Report, sqlx::Error> {
        let report = Report {
            id: Uuid::now_v7(),
            room_id,
            message_id,
            sender_id: sender_id.to_owned(),
            reporter_id: reporter_id.to_owned(),
            reason: reason.to_owned(),
            created_at: OffsetDateTime::now_utc(),
        };
        on_pool!(self, pool => sqlx::query(
            "INSERT INTO message_reports (id, room_id, message_id, sender_id, reporter_id, reason, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(report.id)
        .bind(report.room_id)
        .bind(report.message_id)
        .bind(&report.sender_id)
        .bind(&report.reporter_id)
        .bind(&report.reason)
        .bind(report.created_at)
        .execute(pool)
        .await
        .map(|_| ()))?;
        Ok(report)
    }

    /// A page of reports, newest first, older than `before`.
    pub async fn reports_page(
        &self,
        limit: i64,
        before: Option<Uuid>,
    ) -> Result<Vec<Report>, sqlx::Error> {
        on_pool!(self, pool => sqlx::query_as(
            "SELECT id, room_id, message_id, sender_id, reporter_id, reason, created_at
             FROM message_reports WHERE $1 IS NULL OR id < $1 ORDER BY id DESC LIMIT $2",
        )
        .bind(before)
        .bind(limit)
        .fetch_all(pool)
        .await)
    }

    /// Records a flagged message.
    pub async fn flag(
        &self,
        message_id: Uuid,
        room_id: Uuid,
        sender_id: &str,
        body: &str,
    ) -> Result<(), sqlx::Error> {
        on_pool!(self, pool => sqlx::query(
            "INSERT INTO flagged_messages (id, room_id, sender_id, body, created_at)
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (id) DO NOTHING",
        )
        .bind(message_id)
        .bind(room_id)
        .bind(sender_id)
        .bind(body)
        .bind(OffsetDateTime::now_utc())
        .execute(pool)
        .await
        .map(|_| ()))
    }

    /// A page of flagged messages, newest first, older than `before`.
    pub async fn flags_page(
        &self,
        limit: i64,
        before: Option<Uuid>,
    ) -> Result<Vec<Flag>, sqlx::Error> {
        on_pool!(self, pool => sqlx::query_as(
            "SELECT id, room_id, sender_id, body, created_at FROM flagged_messages
             WHERE $1 IS NULL OR id < $1 ORDER BY id DESC LIMIT $2",
        )
        .bind(before)
        .bind(limit)
        .fetch_all(pool)
        .await)
    }

    /// The roles stored for a user (the identity service's word), for admin
    /// checks of callers whose token carries none.
    pub async fn roles_of(&self, user_id: &str) -> Result<Vec<String>, sqlx::Error> {
        match self {
            Store::Postgres(pool) => Ok(sqlx::query_scalar::<_, Vec<String>>(
                "SELECT roles FROM users WHERE id = $1",
            )
            .bind(user_id)
            .fetch_optional(pool)
            .await?
            .unwrap_or_default()),
            Store::Sqlite(pool) => {
                let roles: Option<String> =
                    sqlx::query_scalar("SELECT roles FROM users WHERE id = $1")
                        .bind(user_id)
                        .fetch_optional(pool)
                        .await?;
                Ok(roles
                    .and_then(|json| serde_json::from_str(&json).ok())
                    .unwrap_or_default())
            }
        }
    }
}
