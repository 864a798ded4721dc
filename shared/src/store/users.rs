//! Users are created on first sight: the identity provider is the source of truth,
//! chatter keeps a copy so rooms and messages can refer to them.

use super::Store;
use crate::auth::Identity;
use std::borrow::Cow;
use std::collections::HashMap;
use time::OffsetDateTime;
use uuid::Uuid;

/// `text` with U+0000 (which Postgres `text` cannot hold) replaced by U+FFFD.
fn storable(text: &str) -> Cow<'_, str> {
    if text.contains('\0') {
        Cow::Owned(text.replace('\0', "\u{FFFD}"))
    } else {
        Cow::Borrowed(text)
    }
}

impl Store {
    /// Inserts or refreshes a user. Fields the caller does not know (`None`, no
    /// roles) keep their stored values.
    ///
    /// Names, groups and roles come from the identity provider. Its callers keep
    /// U+0000 out already (token claims holding it are dropped, `POST /user`
    /// refuses it); should one slip through, it is replaced with U+FFFD here
    /// rather than making every request of that user fail in Postgres.
    pub async fn upsert_user(&self, identity: &Identity) -> Result<(), sqlx::Error> {
        let name = identity.name.as_deref().map(storable);
        let group = identity.group.as_deref().map(storable);
        let roles: Vec<String> = identity
            .roles
            .iter()
            .map(|role| storable(role).into_owned())
            .collect();
        match self {
            Store::Postgres(pool) => {
                sqlx::query(
                    "INSERT INTO users (id, name, user_group, roles, last_seen_at)
                     VALUES ($1, $2, $3, $4, now())
                     ON CONFLICT (id) DO UPDATE SET
                         name = COALESCE(EXCLUDED.name, users.name),
                         user_group = COALESCE(EXCLUDED.user_group, users.user_group),
                         roles = CASE WHEN cardinality(EXCLUDED.roles) > 0 THEN EXCLUDED.roles ELSE users.roles END,
                         last_seen_at = now()",
                )
                .bind(&identity.user_id)
                .bind(name.as_deref())
                .bind(group.as_deref())
                .bind(&roles)
                .execute(pool)
                .await?;
            }
            Store::Sqlite(pool) => {
                let roles = serde_json::to_string(&roles).unwrap_or_else(|_| "[]".into());
                let now = OffsetDateTime::now_utc();
                sqlx::query(
                    "INSERT INTO users (id, name, user_group, roles, created_at, last_seen_at)
                     VALUES ($1, $2, $3, $4, $5, $5)
                     ON CONFLICT (id) DO UPDATE SET
                         name = COALESCE(excluded.name, users.name),
                         user_group = COALESCE(excluded.user_group, users.user_group),
                         roles = CASE WHEN excluded.roles <> '[]' THEN excluded.roles ELSE users.roles END,
                         last_seen_at = excluded.last_seen_at",
                )
                .bind(&identity.user_id)
                .bind(name.as_deref())
                .bind(group.as_deref())
                .bind(roles)
                .bind(now)
                .execute(pool)
                .await?;
            }
        }
        Ok(())
    }

    /// The ids in `ids` that name no known user.
    pub async fn unknown_users(&self, ids: &[String]) -> Result<Vec<String>, sqlx::Error> {
        match self {
            Store::Postgres(pool) => {
                sqlx::query_scalar(
                    "SELECT wanted FROM unnest($1::text[]) AS wanted
                     WHERE NOT EXISTS (SELECT 1 FROM users WHERE users.id = wanted)",
                )
                .bind(ids)
                .fetch_all(pool)
                .await
            }
            Store::Sqlite(pool) => {
                let ids = serde_json::to_string(ids).unwrap_or_else(|_| "[]".into());
                sqlx::query_scalar(
                    "SELECT wanted.value FROM json_each($1) AS wanted
                     WHERE NOT EXISTS (SELECT 1 FROM users WHERE users.id = wanted.value)",
                )
                .bind(ids)
                .fetch_all(pool)
                .await
            }
        }
    }

    /// The users `user_id` shares a live room or a `user_group` with (not
    /// themself, nor anyone who blocked them): who they may see on
    /// `/connections` and in presence events.
    pub async fn contacts_of(&self, user_id: &str) -> Result<Vec<Contact>, sqlx::Error> {
        on_pool!(self, pool => {
            sqlx::query_as(
                "SELECT u.id, u.name FROM users u
                 WHERE u.id <> $1 AND (
                     u.id IN (SELECT other.user_id FROM room_members mine
                              JOIN room_members other ON other.room_id = mine.room_id
                              JOIN rooms r ON r.id = mine.room_id AND r.deleted_at IS NULL
                              WHERE mine.user_id = $1)
                     OR u.user_group = (SELECT user_group FROM users WHERE id = $1))
                 AND NOT EXISTS (SELECT 1 FROM blocks WHERE blocker_id = u.id AND blocked_id = $1)
                 ORDER BY u.id",
            )
            .bind(user_id)
            .fetch_all(pool)
            .await
        })
    }
}

/// A user opening a WebSocket, for [`Store::arrive`].
pub struct Arrival<'a> {
    pub identity: &'a Identity,
    /// Insert or refresh the user's record (false: it was written moments ago).
    pub upsert: bool,
}

/// What a connect needs from the database about one user.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Arrived {
    /// The roles of the stored record (after the upsert).
    pub roles: Vec<String>,
    /// The user's live rooms.
    pub rooms: Vec<Uuid>,
}

impl Store {
    /// For each arriving user, at once: [`Store::upsert_user`] where asked,
    /// then the stored roles and the live rooms, by user id. On Postgres this
    /// is one statement for the whole batch, so a storm of connects costs one
    /// round trip per batch rather than three per socket. A user with no
    /// record (not upserted, and gone) has no roles and no rooms.
    pub async fn arrive(
        &self,
        arrivals: &[Arrival<'_>],
    ) -> Result<HashMap<String, Arrived>, sqlx::Error> {
        if arrivals.is_empty() {
            return Ok(HashMap::new());
        }
        match self {
            Store::Postgres(pool) => {
                let input: Vec<serde_json::Value> = arrivals
                    .iter()
                    .map(|arrival| {
                        let identity = arrival.identity;
                        serde_json::json!({
                            "id": identity.user_id,
                            "name": identity.name.as_deref().map(storable),
                            "user_group": identity.group.as_deref().map(storable),
                            "roles": identity.roles.iter().map(|role| storable(role)).collect::<Vec<_>>(),
                            "upsert": arrival.upsert,
                        })
                    })
                    .collect();
                // The upsert is `upsert_user`'s, in id order (concurrent
                // batches lock rows in the same order: no deadlock), one row
                // per user even if a batch names one twice. The outer SELECT
                // sees the table as it was before the INSERT, hence the
                // upsert's RETURNING first. Per-user subqueries, not joins:
                // the planner cannot size the JSON input and would scan
                // `users` whole for a join (measured: 15 → 6 ms for 100
                // users among 19,000).
                let rows: Vec<(String, Vec<String>, Vec<Uuid>)> = sqlx::query_as(
                    "WITH input AS (
                         SELECT DISTINCT ON (id) id, name, user_group, roles, upsert
                         FROM jsonb_to_recordset($1::jsonb)
                              AS t(id text, name text, user_group text, roles text[], upsert boolean)
                         ORDER BY id, upsert DESC
                     ), upserted AS (
                         INSERT INTO users (id, name, user_group, roles, last_seen_at)
                         SELECT id, name, user_group, COALESCE(roles, '{}'), now()
                         FROM input WHERE upsert ORDER BY id
                         ON CONFLICT (id) DO UPDATE SET
                             name = COALESCE(EXCLUDED.name, users.name),
                             user_group = COALESCE(EXCLUDED.user_group, users.user_group),
                             roles = CASE WHEN cardinality(EXCLUDED.roles) > 0 THEN EXCLUDED.roles ELSE users.roles END,
                             last_seen_at = now()
                         RETURNING id, roles
                     )
                     SELECT i.id,
                            COALESCE(up.roles, (SELECT u.roles FROM users u WHERE u.id = i.id), '{}'),
                            ARRAY(SELECT m.room_id FROM room_members m JOIN rooms r ON r.id = m.room_id
                                  WHERE m.user_id = i.id AND r.deleted_at IS NULL)
                     FROM input i LEFT JOIN upserted up ON up.id = i.id",
                )
                .bind(serde_json::Value::Array(input))
                .fetch_all(pool)
                .await?;
                Ok(rows
                    .into_iter()
                    .map(|(id, roles, rooms)| (id, Arrived { roles, rooms }))
                    .collect())
            }
            // One writer at a time anyway: the same three statements per user.
            Store::Sqlite(_) => {
                let mut arrived = HashMap::new();
                for arrival in arrivals {
                    let user_id = &arrival.identity.user_id;
                    if arrival.upsert {
                        self.upsert_user(arrival.identity).await?;
                    }
                    let roles = self.roles_of(user_id).await?;
                    let rooms = self.room_ids_of(user_id).await?;
                    arrived.insert(user_id.clone(), Arrived { roles, rooms });
                }
                Ok(arrived)
            }
        }
    }
}

/// Someone a user may see.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Contact {
    pub id: String,
    pub name: Option<String>,
}
