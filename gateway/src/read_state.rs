//! Read markers: how far each member has read a room.
//!
//! `MarkRead` over WebSocket and `POST /rooms/{id}/read` both come here. The marker
//! only moves forward, and only up to the room's latest message: a marker past it
//! would silently mark future messages as read.

use crate::bus::BusError;
use crate::room_events;
use crate::state::App;
use chatter_shared::protocol::ServerFrame;
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("seq must be between 0 and the room's latest message ({latest})")]
    BadSeq { latest: i64 },
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Bus(#[from] BusError),
}

/// Moves `user_id`'s marker in `room_id` (of which they must be a member) to
/// `seq`. Returns `Some(seq)` if it moved, after telling the room's members with
/// `ReadReceipt`; `None` if the marker was already there or further.
pub async fn mark_read(
    app: &App,
    room_id: Uuid,
    user_id: &str,
    seq: i64,
) -> Result<Option<i64>, ReadError> {
    let latest = match app.bus.latest_seq(room_id).await? {
        Some(latest) => latest,
        None => app.store.max_seq(room_id).await?,
    };
    if !(0..=latest).contains(&seq) {
        return Err(ReadError::BadSeq { latest });
    }
    let moved = app.store.mark_read(room_id, user_id, seq).await?;
    if moved.is_some() {
        let frame = ServerFrame::ReadReceipt {
            room_id,
            user_id,
            seq,
        }
        .to_json();
        room_events::to_room(&app.bus, room_id, frame).await;
    }
    Ok(moved)
}
