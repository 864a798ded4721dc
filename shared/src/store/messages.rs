//! Messages: batched idempotent inserts (worker) and keyset-paginated history (gateway).

use super::Store;
use crate::ingest::IngestEntry;
use crate::protocol::MessageView;
use time::OffsetDateTime;
use uuid::Uuid;

/// Which slice of a room's history to read. `limit` is already clamped.
#[derive(Debug, Clone, Copy)]
pub enum HistoryPage {
    /// The newest `limit` messages.
    Latest { limit: i64 },
    /// Up to `limit` messages with seq > `seq`, oldest first.
    After { seq: i64, limit: i64 },
    /// Up to `limit` messages with seq < `seq`, the newest of them.
    Before { seq: i64, limit: i64 },
}

/// A member of a room, for notifications.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct MemberOfRoom {
    pub room_id: Uuid,
    pub user_id: String,
}

type Row = (
    Uuid,
    Uuid,
    i64,
    String,
    String,
    OffsetDateTime,
    Option<String>,
    Option<Uuid>,
);

fn view(row: Row) -> MessageView {
    let (id, room_id, seq, sender_id, message, created_at, message_temp_id, parent_id) = row;
    MessageView {
        id,
        room_id,
        seq,
        sender_id,
        message,
        created_at,
        message_temp_id,
        parent_id,
    }
}

impl Store {
    /// A page of a room's history, always returned in ascending seq order.
    pub async fn history(
        &self,
        room_id: Uuid,
        page: HistoryPage,
    ) -> Result<Vec<MessageView>, sqlx::Error> {
        let (seq, limit) = match page {
            HistoryPage::Latest { limit } => (i64::MAX, limit),
            HistoryPage::After { seq, limit } | HistoryPage::Before { seq, limit } => (seq, limit),
        };
        let ascending = matches!(page, HistoryPage::After { .. });
        // Latest is "before +infinity"; the two directions are two statements.
        let rows: Vec<Row> =
            match (self, ascending) {
                (Store::Postgres(pool), true) => sqlx::query_as(
                    "SELECT id, room_id, seq, sender_id, body, created_at, client_msg_id, parent_id
                     FROM messages WHERE room_id = $1 AND seq > $2 ORDER BY seq ASC LIMIT $3",
                )
                .bind(room_id)
                .bind(seq)
                .bind(limit)
                .fetch_all(pool)
                .await?,
                (Store::Postgres(pool), false) => sqlx::query_as(
                    "SELECT id, room_id, seq, sender_id, body, created_at, client_msg_id, parent_id
                     FROM messages WHERE room_id = $1 AND seq < $2 ORDER BY seq DESC LIMIT $3",
                )
                .bind(room_id)
                .bind(seq)
                .bind(limit)
                .fetch_all(pool)
                .await?,
                (Store::Sqlite(pool), true) => sqlx::query_as(
                    "SELECT id, room_id, seq, sender_id, body, created_at, client_msg_id, parent_id
                     FROM messages WHERE room_id = ?1 AND seq > ?2 ORDER BY seq ASC LIMIT ?3",
                )
                .bind(room_id)
                .bind(seq)
                .bind(limit)
                .fetch_all(pool)
                .await?,
                (Store::Sqlite(pool), false) => sqlx::query_as(
                    "SELECT id, room_id, seq, sender_id, body, created_at, client_msg_id, parent_id
                     FROM messages WHERE room_id = ?1 AND seq < ?2 ORDER BY seq DESC LIMIT ?3",
                )
                .bind(room_id)
                .bind(seq)
                .bind(limit)
                .fetch_all(pool)
                .await?,
            };
        let mut messages: Vec<MessageView> = rows.into_iter().map(view).collect();
        if !ascending {
            messages.reverse();
        }
        Ok(messages)
    }

    /// The highest persisted seq of a room (0 for none): the floor for its counter.
    pub async fn max_seq(&self, room_id: Uuid) -> Result<i64, sqlx::Error> {
        match self {
            Store::Postgres(pool) => {
                sqlx::query_scalar(
                    "SELECT COALESCE(MAX(seq), 0)::int8 FROM messages WHERE room_id = $1",
                )
                .bind(room_id)
                .fetch_one(pool)
                .await
            }
            Store::Sqlite(pool) => {
                sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM messages WHERE room_id = ?1")
                    .bind(room_id)
                    .fetch_one(pool)
                    .await
            }
        }
    }

    /// Inserts a batch atomically; entries already stored (a replay after a crash,
    /// a reclaimed entry) are skipped. Returns the ids actually inserted.
    pub async fn insert_messages(&self, batch: &[IngestEntry]) -> Result<Vec<Uuid>, sqlx::Error> {
        match self {
            Store::Postgres(pool) => {
                let ids: Vec<Uuid> = batch.iter().map(|e| e.id).collect();
                let rooms: Vec<Uuid> = batch.iter().map(|e| e.room_id).collect();
                let seqs: Vec<i64> = batch.iter().map(|e| e.seq).collect();
                let senders: Vec<&str> = batch.iter().map(|e| e.sender_id.as_str()).collect();
                let bodies: Vec<&str> = batch.iter().map(|e| e.body.as_str()).collect();
                let temp_ids: Vec<Option<&str>> =
                    batch.iter().map(|e| e.temp_id.as_deref()).collect();
                let parents: Vec<Option<Uuid>> = batch.iter().map(|e| e.parent_id).collect();
                let created: Vec<OffsetDateTime> = batch.iter().map(|e| e.created_at).collect();
                sqlx::query_scalar(
                    "INSERT INTO messages (id, room_id, seq, sender_id, body, client_msg_id, parent_id, created_at)
                     SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::int8[], $4::text[], $5::text[],
                                          $6::text[], $7::uuid[], $8::timestamptz[])
                     ON CONFLICT DO NOTHING
                     RETURNING id",
                )
                .bind(&ids)
                .bind(&rooms)
                .bind(&seqs)
                .bind(&senders)
                .bind(&bodies)
                .bind(&temp_ids)
                .bind(&parents)
                .bind(&created)
                .fetch_all(pool)
                .await
            }
            Store::Sqlite(pool) => {
                let now = OffsetDateTime::now_utc();
                let mut tx = pool.begin().await?;
                let mut inserted = Vec::with_capacity(batch.len());
                for entry in batch {
                    let id: Option<Uuid> = sqlx::query_scalar(
                        "INSERT OR IGNORE INTO messages
                             (id, room_id, seq, sender_id, body, client_msg_id, parent_id, created_at, persisted_at)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                         RETURNING id",
                    )
                    .bind(entry.id)
                    .bind(entry.room_id)
                    .bind(entry.seq)
                    .bind(&entry.sender_id)
                    .bind(&entry.body)
                    .bind(&entry.temp_id)
                    .bind(entry.parent_id)
                    .bind(entry.created_at)
                    .bind(now)
                    .fetch_optional(&mut *tx)
                    .await?;
                    inserted.extend(id);
                }
                tx.commit().await?;
                Ok(inserted)
            }
        }
    }

    /// Every member of the given rooms.
    pub async fn members_of(&self, rooms: &[Uuid]) -> Result<Vec<MemberOfRoom>, sqlx::Error> {
        match self {
            Store::Postgres(pool) => {
                sqlx::query_as("SELECT room_id, user_id FROM room_members WHERE room_id = ANY($1)")
                    .bind(rooms)
                    .fetch_all(pool)
                    .await
            }
            Store::Sqlite(pool) => {
                let mut members = Vec::new();
                for room in rooms {
                    let mut of_room: Vec<MemberOfRoom> = sqlx::query_as(
                        "SELECT room_id, user_id FROM room_members WHERE room_id = ?1",
                    )
                    .bind(room)
                    .fetch_all(pool)
                    .await?;
                    members.append(&mut of_room);
                }
                Ok(members)
            }
        }
    }
}
