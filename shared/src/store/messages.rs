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
        let rows: Vec<Row> =
            match page {
                HistoryPage::Latest { limit } => sqlx::query_as(
                    "SELECT id, room_id, seq, sender_id, body, created_at, client_msg_id, parent_id
                     FROM messages WHERE room_id = $1 ORDER BY seq DESC LIMIT $2",
                )
                .bind(room_id)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?,
                HistoryPage::After { seq, limit } => sqlx::query_as(
                    "SELECT id, room_id, seq, sender_id, body, created_at, client_msg_id, parent_id
                     FROM messages WHERE room_id = $1 AND seq > $2 ORDER BY seq ASC LIMIT $3",
                )
                .bind(room_id)
                .bind(seq)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?,
                HistoryPage::Before { seq, limit } => sqlx::query_as(
                    "SELECT id, room_id, seq, sender_id, body, created_at, client_msg_id, parent_id
                     FROM messages WHERE room_id = $1 AND seq < $2 ORDER BY seq DESC LIMIT $3",
                )
                .bind(room_id)
                .bind(seq)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?,
            };
        let mut messages: Vec<MessageView> = rows.into_iter().map(view).collect();
        if !matches!(page, HistoryPage::After { .. }) {
            messages.reverse();
        }
        Ok(messages)
    }

    /// The highest persisted seq of a room (0 for none): the floor for its counter.
    pub async fn max_seq(&self, room_id: Uuid) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0)::int8 FROM messages WHERE room_id = $1")
            .bind(room_id)
            .fetch_one(&self.pool)
            .await
    }

    /// Inserts a batch in one statement; entries already stored (a replay after a
    /// crash, a reclaimed entry) are skipped. Returns the ids actually inserted.
    pub async fn insert_messages(&self, batch: &[IngestEntry]) -> Result<Vec<Uuid>, sqlx::Error> {
        let ids: Vec<Uuid> = batch.iter().map(|e| e.id).collect();
        let rooms: Vec<Uuid> = batch.iter().map(|e| e.room_id).collect();
        let seqs: Vec<i64> = batch.iter().map(|e| e.seq).collect();
        let senders: Vec<&str> = batch.iter().map(|e| e.sender_id.as_str()).collect();
        let bodies: Vec<&str> = batch.iter().map(|e| e.body.as_str()).collect();
        let temp_ids: Vec<Option<&str>> = batch.iter().map(|e| e.temp_id.as_deref()).collect();
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
        .fetch_all(&self.pool)
        .await
    }

    /// Every member of the given rooms.
    pub async fn members_of(&self, rooms: &[Uuid]) -> Result<Vec<MemberOfRoom>, sqlx::Error> {
        sqlx::query_as("SELECT room_id, user_id FROM room_members WHERE room_id = ANY($1)")
            .bind(rooms)
            .fetch_all(&self.pool)
            .await
    }
}
