//! Rooms, their members and each member's read marker.
//!
//! Membership is what every authorization decision rests on: a user may read or
//! touch a room only while a `room_members` row says so and the room is not
//! deleted. Every query that answers "may this user see this room" joins both.

use super::Store;
use crate::protocol::MessageView;
use serde::Serialize;
use sqlx::types::Json;
use std::collections::HashMap;
use time::OffsetDateTime;
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RoomKind {
    Direct,
    Group,
    Support,
}

impl RoomKind {
    fn as_str(self) -> &'static str {
        match self {
            RoomKind::Direct => "direct",
            RoomKind::Group => "group",
            RoomKind::Support => "support",
        }
    }

    fn parse(kind: &str) -> RoomKind {
        match kind {
            "direct" => RoomKind::Direct,
            "support" => RoomKind::Support,
            _ => RoomKind::Group,
        }
    }
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Room {
    pub id: Uuid,
    pub kind: RoomKind,
    #[schema(required)]
    pub name: Option<String>,
    pub owner_id: String,
    /// The owner first, then in joining order.
    pub members: Vec<String>,
    #[schema(value_type = Object)]
    pub metadata: serde_json::Value,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
}

impl Room {
    pub fn has_member(&self, user_id: &str) -> bool {
        self.members.iter().any(|m| m == user_id)
    }
}

/// A room as one of its members sees it in their room list.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RoomSummary {
    #[serde(flatten)]
    pub room: Room,
    pub is_owner: bool,
    #[schema(required)]
    pub last_message: Option<MessageView>,
    pub last_read_seq: i64,
    /// Stored messages after `last_read_seq`, sent by others, not deleted.
    pub unread_count: i64,
}

pub struct NewRoom<'a> {
    pub kind: RoomKind,
    pub name: Option<&'a str>,
    pub owner_id: &'a str,
    /// Every member, the owner first, without duplicates.
    pub members: &'a [String],
    pub metadata: serde_json::Value,
}

/// Where a page of `GET /rooms` starts: just after this room in the order
/// "newest activity first, then highest id".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoomCursor {
    pub activity: OffsetDateTime,
    pub room_id: Uuid,
}

impl RoomCursor {
    /// The opaque text clients pass back: `<activity in unix µs>_<room id>`.
    pub fn encode(&self) -> String {
        let micros = self.activity.unix_timestamp_nanos() / 1000;
        format!("{micros}_{}", self.room_id)
    }

    pub fn parse(text: &str) -> Option<RoomCursor> {
        let (micros, room) = text.split_once('_')?;
        let micros: i128 = micros.parse().ok()?;
        let activity = OffsetDateTime::from_unix_timestamp_nanos(micros.checked_mul(1000)?).ok()?;
        Some(RoomCursor {
            activity,
            room_id: Uuid::parse_str(room).ok()?,
        })
    }
}

/// What a membership change did.
pub enum MembersChange {
    /// The members after the change.
    Changed(Vec<String>),
    /// It would have made the room larger than allowed; nothing changed.
    TooMany,
    /// The room is gone (deleted meanwhile).
    NoRoom,
}

/// One member's read marker.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Receipt {
    pub user_id: String,
    pub last_read_seq: i64,
}

#[derive(sqlx::FromRow)]
struct RoomRow {
    id: Uuid,
    kind: String,
    name: Option<String>,
    owner_id: Option<String>,
    metadata: Json<serde_json::Value>,
    created_at: OffsetDateTime,
}

impl RoomRow {
    fn into_room(self, members: Vec<String>) -> Room {
        Room {
            id: self.id,
            kind: RoomKind::parse(&self.kind),
            name: self.name,
            owner_id: self.owner_id.unwrap_or_default(),
            members,
            metadata: self.metadata.0,
            created_at: self.created_at,
        }
    }
}

/// A room in a member's list, before members and messages are attached.
#[derive(sqlx::FromRow)]
struct ListedRoom {
    #[sqlx(flatten)]
    room: RoomRow,
    last_read_seq: i64,
    activity: OffsetDateTime,
}

/// The key that makes a pair's direct room unique: both ids, sorted. User ids
/// cannot contain control characters, so the separator cannot be forged.
fn direct_key(a: &str, b: &str) -> String {
    let (low, high) = if a <= b { (a, b) } else { (b, a) };
    format!("{low}\n{high}")
}

/// Both dialects insert a room alike; its members differ (one `unnest` statement
/// in Postgres, one statement per member in SQLite).
pub(super) const INSERT_ROOM: &str =
    "INSERT INTO rooms (id, kind, name, owner_id, metadata, created_at, direct_key)
     VALUES ($1, $2, $3, $4, $5, $6, $7)";

/// Members of a room, the owner first, then in joining order, then by id in byte
/// order: Postgres must be told `COLLATE "C"`, SQLite's default is byte order and
/// it knows no collation named "C".
macro_rules! members_in_order {
    ($columns:literal, postgres) => {
        concat!(
            "SELECT ",
            $columns,
            " FROM room_members WHERE room_id = $1
             ORDER BY role = 'owner' DESC, joined_at, user_id COLLATE \"C\""
        )
    };
    ($columns:literal, sqlite) => {
        concat!(
            "SELECT ",
            $columns,
            " FROM room_members WHERE room_id = $1
             ORDER BY role = 'owner' DESC, joined_at, user_id"
        )
    };
}
pub(super) use members_in_order;

impl Store {
    /// Creates a room and its memberships in one transaction. A direct room whose
    /// pair already has one fails with a unique violation (see
    /// [`super::is_unique_violation`]); the caller then returns the existing one.
    pub async fn create_room(&self, new: NewRoom<'_>) -> Result<Room, sqlx::Error> {
        let id = Uuid::now_v7();
        let created_at = crate::protocol::now_micros();
        let direct = match (new.kind, new.members) {
            (RoomKind::Direct, [a, b]) => Some(direct_key(a, b)),
            _ => None,
        };
        match self {
            Store::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                sqlx::query(INSERT_ROOM)
                    .bind(id)
                    .bind(new.kind.as_str())
                    .bind(new.name)
                    .bind(new.owner_id)
                    .bind(Json(&new.metadata))
                    .bind(created_at)
                    .bind(&direct)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(
                    "INSERT INTO room_members (room_id, user_id, role, joined_at)
                     SELECT $1, member, CASE WHEN member = $3 THEN 'owner' ELSE 'member' END, $4
                     FROM unnest($2::text[]) AS member",
                )
                .bind(id)
                .bind(new.members)
                .bind(new.owner_id)
                .bind(created_at)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
            }
            Store::Sqlite(pool) => {
                let mut tx = pool.begin().await?;
                sqlx::query(INSERT_ROOM)
                    .bind(id)
                    .bind(new.kind.as_str())
                    .bind(new.name)
                    .bind(new.owner_id)
                    .bind(Json(&new.metadata))
                    .bind(created_at)
                    .bind(&direct)
                    .execute(&mut *tx)
                    .await?;
                for member in new.members {
                    let role = if member == new.owner_id {
                        "owner"
                    } else {
                        "member"
                    };
                    sqlx::query("INSERT INTO room_members (room_id, user_id, role, joined_at) VALUES ($1, $2, $3, $4)")
                        .bind(id)
                        .bind(member)
                        .bind(role)
                        .bind(created_at)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
            }
        }
        // Members joined together are listed owner first, then by id.
        let mut members = new.members.to_vec();
        members.sort_by(|a, b| (a != new.owner_id, a).cmp(&(b != new.owner_id, b)));
        Ok(Room {
            id,
            kind: new.kind,
            name: new.name.map(str::to_owned),
            owner_id: new.owner_id.to_owned(),
            members,
            metadata: new.metadata,
            created_at,
        })
    }

    /// The live direct room of a pair, if they have one.
    pub async fn find_direct(&self, a: &str, b: &str) -> Result<Option<Room>, sqlx::Error> {
        let key = direct_key(a, b);
        let id: Option<Uuid> = on_pool!(self, pool => {
            sqlx::query_scalar("SELECT id FROM rooms WHERE direct_key = $1 AND deleted_at IS NULL")
                .bind(key)
                .fetch_optional(pool)
                .await?
        });
        match id {
            Some(id) => self.room(id).await,
            None => Ok(None),
        }
    }

    /// A live room with its members, or `None` if it is missing or deleted.
    pub async fn room(&self, room_id: Uuid) -> Result<Option<Room>, sqlx::Error> {
        let row: Option<RoomRow> = on_pool!(self, pool => {
            sqlx::query_as(
                "SELECT id, kind, name, owner_id, metadata, created_at FROM rooms
                 WHERE id = $1 AND deleted_at IS NULL",
            )
            .bind(room_id)
            .fetch_optional(pool)
            .await?
        });
        self.with_members(row).await
    }

    async fn with_members(&self, row: Option<RoomRow>) -> Result<Option<Room>, sqlx::Error> {
        let Some(row) = row else { return Ok(None) };
        let members = self
            .members_of(&[row.id])
            .await?
            .into_iter()
            .map(|m| m.user_id)
            .collect();
        Ok(Some(row.into_room(members)))
    }

    /// A page of `user_id`'s live rooms, newest activity (last message, else
    /// creation) first, starting after `after`.
    pub async fn rooms_page(
        &self,
        user_id: &str,
        after: Option<RoomCursor>,
        limit: i64,
    ) -> Result<(Vec<RoomSummary>, Option<RoomCursor>), sqlx::Error> {
        let listed: Vec<ListedRoom> = match self {
            Store::Postgres(pool) => {
                sqlx::query_as(
                    "SELECT r.id, r.kind, r.name, r.owner_id, r.metadata, r.created_at, m.last_read_seq,
                            COALESCE(last.created_at, r.created_at) AS activity
                     FROM room_members m
                     JOIN rooms r ON r.id = m.room_id AND r.deleted_at IS NULL
                     LEFT JOIN LATERAL (SELECT x.created_at FROM messages x WHERE x.room_id = r.id
                                        ORDER BY x.seq DESC LIMIT 1) AS last ON true
                     WHERE m.user_id = $1
                       AND ($2::timestamptz IS NULL
                            OR (COALESCE(last.created_at, r.created_at), r.id) < ($2::timestamptz, $3::uuid))
                     ORDER BY activity DESC, r.id DESC
                     LIMIT $4",
                )
                .bind(user_id)
                .bind(after.map(|c| c.activity))
                .bind(after.map(|c| c.room_id))
                .bind(limit)
                .fetch_all(pool)
                .await?
            }
            Store::Sqlite(pool) => {
                // The embedded mode serves small installations: order in memory
                // rather than compare timestamps stored as text.
                let mut all: Vec<ListedRoom> = sqlx::query_as(
                    "SELECT r.id, r.kind, r.name, r.owner_id, r.metadata, r.created_at, m.last_read_seq,
                            COALESCE((SELECT x.created_at FROM messages x WHERE x.room_id = r.id
                                      ORDER BY x.seq DESC LIMIT 1), r.created_at) AS activity
                     FROM room_members m
                     JOIN rooms r ON r.id = m.room_id AND r.deleted_at IS NULL
                     WHERE m.user_id = $1",
                )
                .bind(user_id)
                .fetch_all(pool)
                .await?;
                all.sort_by_key(|r| std::cmp::Reverse((r.activity, r.room.id)));
                all.retain(|r| after.is_none_or(|c| (r.activity, r.room.id) < (c.activity, c.room_id)));
                all.truncate(usize::try_from(limit).unwrap_or(0));
                all
            }
        };
        let next = match listed.last() {
            Some(last) if listed.len() as i64 == limit => Some(RoomCursor {
                activity: last.activity,
                room_id: last.room.id,
            }),
            _ => None,
        };
        let ids: Vec<Uuid> = listed.iter().map(|r| r.room.id).collect();
        // Members, last messages and unread counts come in one query each for
        // the whole page; group them by room once.
        let mut members: HashMap<Uuid, Vec<String>> = HashMap::new();
        for member in self.members_of(&ids).await? {
            members
                .entry(member.room_id)
                .or_default()
                .push(member.user_id);
        }
        let mut last_messages: HashMap<Uuid, MessageView> = self
            .last_messages(&ids)
            .await?
            .into_iter()
            .map(|m| (m.room_id, m))
            .collect();
        let unread: HashMap<Uuid, i64> = self
            .unread_counts(user_id, &ids)
            .await?
            .into_iter()
            .collect();
        let rooms = listed
            .into_iter()
            .map(|listed| {
                let id = listed.room.id;
                let room = listed
                    .room
                    .into_room(members.remove(&id).unwrap_or_default());
                RoomSummary {
                    is_owner: room.owner_id == user_id,
                    last_message: last_messages.remove(&id),
                    last_read_seq: listed.last_read_seq,
                    unread_count: unread.get(&id).copied().unwrap_or(0),
                    room,
                }
            })
            .collect();
        Ok((rooms, next))
    }

    /// `room_id` as member `user_id` sees it; `None` unless they are a member of
    /// the live room.
    pub async fn room_summary(
        &self,
        room_id: Uuid,
        user_id: &str,
    ) -> Result<Option<RoomSummary>, sqlx::Error> {
        let Some(last_read_seq) = self.read_marker(room_id, user_id).await? else {
            return Ok(None);
        };
        let Some(room) = self.room(room_id).await? else {
            return Ok(None);
        };
        let last_message = self.last_messages(&[room_id]).await?.pop();
        let unread = self.unread_counts(user_id, &[room_id]).await?;
        Ok(Some(RoomSummary {
            is_owner: room.owner_id == user_id,
            last_message,
            last_read_seq,
            unread_count: unread.first().map_or(0, |(_, n)| *n),
            room,
        }))
    }

    /// `user_id`'s read marker in the live room `room_id`; `None` if they are
    /// not a member of it.
    pub async fn read_marker(
        &self,
        room_id: Uuid,
        user_id: &str,
    ) -> Result<Option<i64>, sqlx::Error> {
        on_pool!(self, pool => {
            sqlx::query_scalar(
                "SELECT m.last_read_seq FROM room_members m JOIN rooms r ON r.id = m.room_id
                 WHERE m.room_id = $1 AND m.user_id = $2 AND r.deleted_at IS NULL",
            )
            .bind(room_id)
            .bind(user_id)
            .fetch_optional(pool)
            .await
        })
    }

    /// Per room, how many stored messages after `user_id`'s read marker others sent.
    async fn unread_counts(
        &self,
        user_id: &str,
        rooms: &[Uuid],
    ) -> Result<Vec<(Uuid, i64)>, sqlx::Error> {
        match self {
            Store::Postgres(pool) => {
                sqlx::query_as(
                    "SELECT m.room_id,
                            (SELECT COUNT(*) FROM messages x
                             WHERE x.room_id = m.room_id AND x.seq > m.last_read_seq
                               AND x.sender_id <> m.user_id AND x.deleted_at IS NULL)
                     FROM room_members m WHERE m.user_id = $1 AND m.room_id = ANY($2)",
                )
                .bind(user_id)
                .bind(rooms)
                .fetch_all(pool)
                .await
            }
            Store::Sqlite(pool) => {
                let mut counts = Vec::with_capacity(rooms.len());
                for room in rooms {
                    let count: i64 = sqlx::query_scalar(
                        "SELECT COUNT(*) FROM messages x JOIN room_members m
                           ON m.room_id = x.room_id AND m.user_id = $2
                         WHERE x.room_id = $1 AND x.seq > m.last_read_seq
                           AND x.sender_id <> m.user_id AND x.deleted_at IS NULL",
                    )
                    .bind(room)
                    .bind(user_id)
                    .fetch_one(pool)
                    .await?;
                    counts.push((*room, count));
                }
                Ok(counts)
            }
        }
    }

    /// Adds and removes members in one transaction, keeping the room at most
    /// `max_members` large. Adding a member or removing a non-member is a no-op.
    pub async fn change_members(
        &self,
        room_id: Uuid,
        add: &[String],
        remove: &[String],
        max_members: usize,
    ) -> Result<MembersChange, sqlx::Error> {
        let now = crate::protocol::now_micros();
        let members: Vec<String> = match self {
            Store::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                // Lock the room: concurrent changes and a delete go one at a time.
                let live: Option<Uuid> = sqlx::query_scalar(
                    "SELECT id FROM rooms WHERE id = $1 AND deleted_at IS NULL FOR UPDATE",
                )
                .bind(room_id)
                .fetch_optional(&mut *tx)
                .await?;
                if live.is_none() {
                    return Ok(MembersChange::NoRoom);
                }
                sqlx::query("DELETE FROM room_members WHERE room_id = $1 AND user_id = ANY($2)")
                    .bind(room_id)
                    .bind(remove)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(
                    "INSERT INTO room_members (room_id, user_id, role, joined_at)
                     SELECT $1, member, 'member', $3 FROM unnest($2::text[]) AS member
                     ON CONFLICT DO NOTHING",
                )
                .bind(room_id)
                .bind(add)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                let members: Vec<String> =
                    sqlx::query_scalar(members_in_order!("user_id", postgres))
                        .bind(room_id)
                        .fetch_all(&mut *tx)
                        .await?;
                if members.len() > max_members {
                    return Ok(MembersChange::TooMany);
                }
                tx.commit().await?;
                members
            }
            Store::Sqlite(pool) => {
                // IMMEDIATE: take the write lock up front. A deferred transaction
                // that reads first fails at once ("database is locked") if the
                // embedded worker commits between its read and its first write.
                let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
                let live: Option<Uuid> =
                    sqlx::query_scalar("SELECT id FROM rooms WHERE id = $1 AND deleted_at IS NULL")
                        .bind(room_id)
                        .fetch_optional(&mut *tx)
                        .await?;
                if live.is_none() {
                    return Ok(MembersChange::NoRoom);
                }
                for member in remove {
                    sqlx::query("DELETE FROM room_members WHERE room_id = $1 AND user_id = $2")
                        .bind(room_id)
                        .bind(member)
                        .execute(&mut *tx)
                        .await?;
                }
                for member in add {
                    sqlx::query(
                        "INSERT INTO room_members (room_id, user_id, role, joined_at)
                         VALUES ($1, $2, 'member', $3) ON CONFLICT DO NOTHING",
                    )
                    .bind(room_id)
                    .bind(member)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                }
                let members: Vec<String> = sqlx::query_scalar(members_in_order!("user_id", sqlite))
                    .bind(room_id)
                    .fetch_all(&mut *tx)
                    .await?;
                if members.len() > max_members {
                    return Ok(MembersChange::TooMany);
                }
                tx.commit().await?;
                members
            }
        };
        Ok(MembersChange::Changed(members))
    }

    /// Soft-deletes a room; true if it was live.
    pub async fn delete_room(&self, room_id: Uuid) -> Result<bool, sqlx::Error> {
        let now = crate::protocol::now_micros();
        let result = on_pool!(self, pool => {
            sqlx::query("UPDATE rooms SET deleted_at = $2 WHERE id = $1 AND deleted_at IS NULL")
                .bind(room_id)
                .bind(now)
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(result > 0)
    }

    /// Moves `user_id`'s read marker forward to `seq`. `Some(seq)` if it moved;
    /// `None` if it was already there or further (markers never go back).
    pub async fn mark_read(
        &self,
        room_id: Uuid,
        user_id: &str,
        seq: i64,
    ) -> Result<Option<i64>, sqlx::Error> {
        on_pool!(self, pool => {
            sqlx::query_scalar(
                "UPDATE room_members SET last_read_seq = $3
                 WHERE room_id = $1 AND user_id = $2 AND last_read_seq < $3
                 RETURNING last_read_seq",
            )
            .bind(room_id)
            .bind(user_id)
            .bind(seq)
            .fetch_optional(pool)
            .await
        })
    }

    /// Every member's read marker, the owner first, then in joining order.
    pub async fn receipts(&self, room_id: Uuid) -> Result<Vec<Receipt>, sqlx::Error> {
        match self {
            Store::Postgres(pool) => {
                sqlx::query_as(members_in_order!("user_id, last_read_seq", postgres))
                    .bind(room_id)
                    .fetch_all(pool)
                    .await
            }
            Store::Sqlite(pool) => {
                sqlx::query_as(members_in_order!("user_id, last_read_seq", sqlite))
                    .bind(room_id)
                    .fetch_all(pool)
                    .await
            }
        }
    }

    /// The live (not deleted) rooms `user_id` belongs to.
    pub async fn room_ids_of(&self, user_id: &str) -> Result<Vec<Uuid>, sqlx::Error> {
        on_pool!(self, pool => {
            sqlx::query_scalar(
                "SELECT m.room_id FROM room_members m JOIN rooms r ON r.id = m.room_id
                 WHERE m.user_id = $1 AND r.deleted_at IS NULL",
            )
            .bind(user_id)
            .fetch_all(pool)
            .await
        })
    }

    /// Whether `user_id` is a member of the live room `room_id`.
    pub async fn is_member(&self, room_id: Uuid, user_id: &str) -> Result<bool, sqlx::Error> {
        on_pool!(self, pool => {
            sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM room_members m JOIN rooms r ON r.id = m.room_id
                                WHERE m.room_id = $1 AND m.user_id = $2 AND r.deleted_at IS NULL)",
            )
            .bind(room_id)
            .bind(user_id)
            .fetch_one(pool)
            .await
        })
    }

    /// `(user, room)` for every live room of each of `users`: one query for a
    /// whole batch, so the gateway's membership re-check costs one round trip
    /// per batch of users rather than one per user or per room.
    pub async fn room_ids_of_users(
        &self,
        users: &[String],
    ) -> Result<Vec<(String, Uuid)>, sqlx::Error> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        match self {
            Store::Postgres(pool) => sqlx::query_as(
                "SELECT m.user_id, m.room_id FROM room_members m JOIN rooms r ON r.id = m.room_id
                     WHERE m.user_id = ANY($1) AND r.deleted_at IS NULL",
            )
            .bind(users)
            .fetch_all(pool)
            .await,
            Store::Sqlite(pool) => {
                // SQLite has no array binds; the ids travel as one JSON array.
                let users = serde_json::to_string(users).unwrap_or_else(|_| "[]".into());
                sqlx::query_as(
                    "SELECT m.user_id, m.room_id FROM room_members m JOIN rooms r ON r.id = m.room_id
                     WHERE m.user_id IN (SELECT value FROM json_each(?1)) AND r.deleted_at IS NULL",
                )
                .bind(users)
                .fetch_all(pool)
                .await
            }
        }
    }
}
