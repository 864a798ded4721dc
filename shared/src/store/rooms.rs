//! Rooms and their members.

use super::Store;
use serde::Serialize;
use time::OffsetDateTime;
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
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
}

#[derive(Debug, Clone, Serialize)]
pub struct Room {
    pub id: Uuid,
    pub kind: RoomKind,
    pub name: Option<String>,
    pub owner_id: String,
    pub members: Vec<String>,
    pub metadata: serde_json::Value,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

pub struct NewRoom<'a> {
    pub kind: RoomKind,
    pub name: Option<&'a str>,
    pub owner_id: &'a str,
    /// Every member, the owner included, without duplicates.
    pub members: &'a [String],
    pub metadata: serde_json::Value,
}

impl Store {
    /// Creates a room and its memberships in one transaction.
    pub async fn create_room(&self, new: NewRoom<'_>) -> Result<Room, sqlx::Error> {
        let id = Uuid::now_v7();
        let created_at = crate::protocol::now_micros();
        match self {
            Store::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                sqlx::query(
                    "INSERT INTO rooms (id, kind, name, owner_id, metadata, created_at)
                     VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(id)
                .bind(new.kind.as_str())
                .bind(new.name)
                .bind(new.owner_id)
                .bind(&new.metadata)
                .bind(created_at)
                .execute(&mut *tx)
                .await?;
                sqlx::query(
                    "INSERT INTO room_members (room_id, user_id, role)
                     SELECT $1, member, CASE WHEN member = $3 THEN 'owner' ELSE 'member' END
                     FROM unnest($2::text[]) AS member",
                )
                .bind(id)
                .bind(new.members)
                .bind(new.owner_id)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
            }
            Store::Sqlite(pool) => {
                let mut tx = pool.begin().await?;
                sqlx::query(
                    "INSERT INTO rooms (id, kind, name, owner_id, metadata, created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )
                .bind(id)
                .bind(new.kind.as_str())
                .bind(new.name)
                .bind(new.owner_id)
                .bind(new.metadata.to_string())
                .bind(created_at)
                .execute(&mut *tx)
                .await?;
                for member in new.members {
                    let role = if member == new.owner_id {
                        "owner"
                    } else {
                        "member"
                    };
                    sqlx::query("INSERT INTO room_members (room_id, user_id, role, joined_at) VALUES (?1, ?2, ?3, ?4)")
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
        Ok(Room {
            id,
            kind: new.kind,
            name: new.name.map(str::to_owned),
            owner_id: new.owner_id.to_owned(),
            members: new.members.to_vec(),
            metadata: new.metadata,
            created_at,
        })
    }

    /// The live (not deleted) rooms `user_id` belongs to.
    pub async fn room_ids_of(&self, user_id: &str) -> Result<Vec<Uuid>, sqlx::Error> {
        match self {
            Store::Postgres(pool) => {
                sqlx::query_scalar(
                    "SELECT m.room_id FROM room_members m JOIN rooms r ON r.id = m.room_id
                     WHERE m.user_id = $1 AND r.deleted_at IS NULL",
                )
                .bind(user_id)
                .fetch_all(pool)
                .await
            }
            Store::Sqlite(pool) => {
                sqlx::query_scalar(
                    "SELECT m.room_id FROM room_members m JOIN rooms r ON r.id = m.room_id
                     WHERE m.user_id = ?1 AND r.deleted_at IS NULL",
                )
                .bind(user_id)
                .fetch_all(pool)
                .await
            }
        }
    }

    /// Whether `user_id` is a member of the live room `room_id`.
    pub async fn is_member(&self, room_id: Uuid, user_id: &str) -> Result<bool, sqlx::Error> {
        match self {
            Store::Postgres(pool) => {
                sqlx::query_scalar(
                    "SELECT EXISTS (SELECT 1 FROM room_members m JOIN rooms r ON r.id = m.room_id
                                    WHERE m.room_id = $1 AND m.user_id = $2 AND r.deleted_at IS NULL)",
                )
                .bind(room_id)
                .bind(user_id)
                .fetch_one(pool)
                .await
            }
            Store::Sqlite(pool) => {
                sqlx::query_scalar(
                    "SELECT EXISTS (SELECT 1 FROM room_members m JOIN rooms r ON r.id = m.room_id
                                    WHERE m.room_id = ?1 AND m.user_id = ?2 AND r.deleted_at IS NULL)",
                )
                .bind(room_id)
                .bind(user_id)
                .fetch_one(pool)
                .await
            }
        }
    }
}
