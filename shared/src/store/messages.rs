//! Messages: batched idempotent inserts (worker) and keyset-paginated history (gateway).

use super::Store;
use super::rooms::members_in_order;
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

/// The columns of a message, in the order `MESSAGE_COLUMNS` selects them.
#[derive(sqlx::FromRow)]
struct MessageRow {
    id: Uuid,
    room_id: Uuid,
    seq: i64,
    sender_id: String,
    body: String,
    created_at: OffsetDateTime,
    client_msg_id: Option<String>,
    parent_id: Option<Uuid>,
    edited_at: Option<OffsetDateTime>,
    deleted_at: Option<OffsetDateTime>,
}

/// Every query that reads messages selects exactly these, in both dialects (a
/// macro so that `concat!` can build whole statements as static strings).
macro_rules! message_columns {
    () => {
        "id, room_id, seq, sender_id, body, created_at, client_msg_id, parent_id, edited_at, deleted_at"
    };
}

impl From<MessageRow> for MessageView {
    fn from(row: MessageRow) -> MessageView {
        MessageView {
            id: row.id,
            room_id: row.room_id,
            seq: row.seq,
            sender_id: row.sender_id,
            message: row.body,
            created_at: row.created_at,
            message_temp_id: row.client_msg_id,
            parent_id: row.parent_id,
            edited_at: row.edited_at,
            deleted_at: row.deleted_at,
        }
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
        let sql = if ascending {
            concat!(
                "SELECT ",
                message_columns!(),
                " FROM messages WHERE room_id = $1 AND seq > $2 ORDER BY seq ASC LIMIT $3"
            )
        } else {
            concat!(
                "SELECT ",
                message_columns!(),
                " FROM messages WHERE room_id = $1 AND seq < $2 ORDER BY seq DESC LIMIT $3"
            )
        };
        let rows: Vec<MessageRow> = on_pool!(self, pool => {
            sqlx::query_as(sql)
                .bind(room_id)
                .bind(seq)
                .bind(limit)
                .fetch_all(pool)
                .await?
        });
        let mut messages: Vec<MessageView> = rows.into_iter().map(MessageView::from).collect();
        if !ascending {
            messages.reverse();
        }
        Ok(messages)
    }

    /// The highest persisted seq of a room (0 for none): the floor for its counter.
    pub async fn max_seq(&self, room_id: Uuid) -> Result<i64, sqlx::Error> {
        on_pool!(self, pool => {
            sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM messages WHERE room_id = $1")
                .bind(room_id)
                .fetch_one(pool)
                .await
        })
    }

    /// Inserts a batch atomically; entries already stored (a replay after a crash,
    /// a reclaimed entry) are skipped by their id. Returns the ids actually inserted.
    ///
    /// Only the id may conflict quietly: any other clash (a seq already taken)
    /// fails the batch, so the worker stores it entry by entry and dead-letters
    /// the clashing one rather than dropping a confirmed message in silence.
    ///
    /// On Postgres the batch is first written with a binary `COPY`, which costs
    /// the server about 30 % less CPU than an `INSERT … ON CONFLICT … RETURNING`
    /// of the same rows (bench/README.md, "Persistence"). `COPY` cannot skip a row, so a
    /// batch that holds an id already stored fails as a whole (a unique
    /// violation, nothing written) and is then inserted again with
    /// `ON CONFLICT (id) DO NOTHING`: the rare replay pays two statements, the
    /// common fresh batch one cheap one.
    pub async fn insert_messages(&self, batch: &[IngestEntry]) -> Result<Vec<Uuid>, sqlx::Error> {
        match self {
            Store::Postgres(_) if batch.is_empty() => Ok(Vec::new()),
            Store::Postgres(pool) => match copy_messages(pool, batch).await {
                Ok(()) => Ok(batch.iter().map(|e| e.id).collect()),
                Err(error) if super::is_unique_violation(&error) => {
                    insert_skipping_stored(pool, batch).await
                }
                Err(error) => Err(error),
            },
            Store::Sqlite(pool) => {
                let now = OffsetDateTime::now_utc();
                let mut tx = pool.begin().await?;
                let mut inserted = Vec::with_capacity(batch.len());
                for entry in batch {
                    let id: Option<Uuid> = sqlx::query_scalar(
                        "INSERT INTO messages
                             (id, room_id, seq, sender_id, body, client_msg_id, parent_id, created_at, persisted_at)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                         ON CONFLICT (id) DO NOTHING
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

    /// One message of a room, tombstones included; `None` if the room has no
    /// stored message with that id (yet: the worker may still be writing it).
    pub async fn message(
        &self,
        room_id: Uuid,
        message_id: Uuid,
    ) -> Result<Option<MessageView>, sqlx::Error> {
        let sql = concat!(
            "SELECT ",
            message_columns!(),
            " FROM messages WHERE id = $1 AND room_id = $2"
        );
        let row: Option<MessageRow> = on_pool!(self, pool => {
            sqlx::query_as(sql)
                .bind(message_id)
                .bind(room_id)
                .fetch_optional(pool)
                .await?
        });
        Ok(row.map(MessageView::from))
    }

    /// Replaces a live message's text; `None` if it is missing or deleted.
    pub async fn edit_message(
        &self,
        room_id: Uuid,
        message_id: Uuid,
        body: &str,
    ) -> Result<Option<MessageView>, sqlx::Error> {
        let now = crate::protocol::now_micros();
        let sql = concat!(
            "UPDATE messages SET body = $3, edited_at = $4
             WHERE id = $1 AND room_id = $2 AND deleted_at IS NULL RETURNING ",
            message_columns!()
        );
        let row: Option<MessageRow> = on_pool!(self, pool => {
            sqlx::query_as(sql)
                .bind(message_id)
                .bind(room_id)
                .bind(body)
                .bind(now)
                .fetch_optional(pool)
                .await?
        });
        Ok(row.map(MessageView::from))
    }

    /// Soft-deletes a message: the row stays (history shows a tombstone) but its
    /// text is erased. Deleting twice keeps the first deletion's time. `None` if
    /// the room has no such message.
    pub async fn delete_message(
        &self,
        room_id: Uuid,
        message_id: Uuid,
    ) -> Result<Option<MessageView>, sqlx::Error> {
        let now = crate::protocol::now_micros();
        let sql = concat!(
            "UPDATE messages SET body = '', deleted_at = COALESCE(deleted_at, $3)
             WHERE id = $1 AND room_id = $2 RETURNING ",
            message_columns!()
        );
        let row: Option<MessageRow> = on_pool!(self, pool => {
            sqlx::query_as(sql)
                .bind(message_id)
                .bind(room_id)
                .bind(now)
                .fetch_optional(pool)
                .await?
        });
        Ok(row.map(MessageView::from))
    }

    /// Every stored message with a temp id created at or after `since`, for the
    /// embedded mode's in-memory dedupe after a restart (a client resending a
    /// message whose confirmation it never saw must get the original back).
    pub async fn recent_temp_ids(
        &self,
        since: OffsetDateTime,
    ) -> Result<Vec<MessageView>, sqlx::Error> {
        let rows: Vec<MessageRow> = on_pool!(self, pool => {
            sqlx::query_as(concat!(
                "SELECT ",
                message_columns!(),
                " FROM messages WHERE client_msg_id IS NOT NULL AND created_at >= $1"
            ))
            .bind(since)
            .fetch_all(pool)
            .await?
        });
        Ok(rows.into_iter().map(MessageView::from).collect())
    }

    /// The newest message of each room in `rooms` that has one.
    pub async fn last_messages(&self, rooms: &[Uuid]) -> Result<Vec<MessageView>, sqlx::Error> {
        let rows: Vec<MessageRow> = match self {
            Store::Postgres(pool) => {
                sqlx::query_as(concat!(
                    "SELECT last.* FROM unnest($1::uuid[]) AS wanted (room_id)
                     CROSS JOIN LATERAL (SELECT ",
                    message_columns!(),
                    " FROM messages m WHERE m.room_id = wanted.room_id ORDER BY seq DESC LIMIT 1) AS last"
                ))
                .bind(rooms)
                .fetch_all(pool)
                .await?
            }
            Store::Sqlite(pool) => {
                let mut rows = Vec::with_capacity(rooms.len());
                for room in rooms {
                    let row: Option<MessageRow> = sqlx::query_as(concat!(
                        "SELECT ",
                        message_columns!(),
                        " FROM messages WHERE room_id = $1 ORDER BY seq DESC LIMIT 1"
                    ))
                    .bind(room)
                    .fetch_optional(pool)
                    .await?;
                    rows.extend(row);
                }
                rows
            }
        };
        Ok(rows.into_iter().map(MessageView::from).collect())
    }

    /// Every member of the given rooms: per room the owner first, then in joining order.
    pub async fn members_of(&self, rooms: &[Uuid]) -> Result<Vec<MemberOfRoom>, sqlx::Error> {
        match self {
            Store::Postgres(pool) => {
                sqlx::query_as(
                    "SELECT room_id, user_id FROM room_members WHERE room_id = ANY($1)
                     ORDER BY room_id, role = 'owner' DESC, joined_at, user_id COLLATE \"C\"",
                )
                .bind(rooms)
                .fetch_all(pool)
                .await
            }
            Store::Sqlite(pool) => {
                let mut members = Vec::new();
                for room in rooms {
                    let mut of_room: Vec<MemberOfRoom> =
                        sqlx::query_as(members_in_order!("room_id, user_id", sqlite))
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

/// The columns a stored message gets from its ingest entry, in the order of
/// [`copy_rows`] (`persisted_at` takes its default).
const COPY_MESSAGES: &str = "COPY messages (id, room_id, seq, sender_id, body, client_msg_id, parent_id, created_at) FROM STDIN (FORMAT binary)";

/// Writes the batch in one `COPY` (one statement, so all rows or none).
async fn copy_messages(pool: &sqlx::PgPool, batch: &[IngestEntry]) -> Result<(), sqlx::Error> {
    use sqlx::postgres::PgPoolCopyExt;
    let rows = copy_rows(batch)?;
    let mut copy = pool.copy_in_raw(COPY_MESSAGES).await?;
    // On an error the server drops the rest of the data and `finish` reports
    // it; the connection is usable again afterwards.
    if let Err(error) = copy.send(rows).await {
        let _ = copy.abort("the batch could not be sent").await;
        return Err(error);
    }
    copy.finish().await?;
    Ok(())
}

/// The batch in `COPY`'s binary format: a signature, flags and header
/// extension (both empty), then per row its field count and each field as a
/// big-endian length (-1 = NULL) and the value in the type's binary form, then -1.
fn copy_rows(batch: &[IngestEntry]) -> Result<Vec<u8>, sqlx::Error> {
    /// 2000-01-01T00:00:00Z, Postgres' epoch for timestamps, in Unix microseconds.
    const PG_EPOCH_MICROS: i128 = 946_684_800_000_000;
    fn field(buf: &mut Vec<u8>, value: Option<&[u8]>) -> Result<(), sqlx::Error> {
        match value {
            None => buf.extend_from_slice(&(-1i32).to_be_bytes()),
            Some(bytes) => {
                let len = i32::try_from(bytes.len())
                    .map_err(|_| sqlx::Error::Encode("a message field is over 2 GiB".into()))?;
                buf.extend_from_slice(&len.to_be_bytes());
                buf.extend_from_slice(bytes);
            }
        }
        Ok(())
    }
    let text: usize = batch
        .iter()
        .map(|e| e.sender_id.len() + e.body.len() + e.temp_id.as_ref().map_or(0, String::len))
        .sum();
    // Per row: field count, 8 lengths, 3 UUIDs, seq and created_at.
    let mut buf = Vec::with_capacity(21 + batch.len() * (2 + 8 * 4 + 3 * 16 + 2 * 8) + text + 2);
    buf.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
    buf.extend_from_slice(&0i32.to_be_bytes());
    buf.extend_from_slice(&0i32.to_be_bytes());
    for entry in batch {
        let created = entry.created_at.unix_timestamp_nanos() / 1000 - PG_EPOCH_MICROS;
        let created = i64::try_from(created)
            .map_err(|_| sqlx::Error::Encode("created_at is out of range".into()))?;
        buf.extend_from_slice(&8i16.to_be_bytes());
        field(&mut buf, Some(entry.id.as_bytes()))?;
        field(&mut buf, Some(entry.room_id.as_bytes()))?;
        field(&mut buf, Some(&entry.seq.to_be_bytes()))?;
        field(&mut buf, Some(entry.sender_id.as_bytes()))?;
        field(&mut buf, Some(entry.body.as_bytes()))?;
        field(&mut buf, entry.temp_id.as_deref().map(str::as_bytes))?;
        field(
            &mut buf,
            entry.parent_id.as_ref().map(|p| &p.as_bytes()[..]),
        )?;
        field(&mut buf, Some(&created.to_be_bytes()))?;
    }
    buf.extend_from_slice(&(-1i16).to_be_bytes());
    Ok(buf)
}

/// The batch as one `INSERT … ON CONFLICT (id) DO NOTHING`; the ids inserted.
async fn insert_skipping_stored(
    pool: &sqlx::PgPool,
    batch: &[IngestEntry],
) -> Result<Vec<Uuid>, sqlx::Error> {
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
         ON CONFLICT (id) DO NOTHING
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
