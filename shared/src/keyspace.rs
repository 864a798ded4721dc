//! Every Redis key and channel chatter uses, in one place.
//!
//! | key / channel | type | what |
//! |---|---|---|
//! | `chatter:seq:<room>` | string (counter) | last sequence number assigned in the room; no TTL |
//! | `chatter:dedupe:<room>:<len>:<sender>:<temp_id>` | string `id:seq` | a sent `message_temp_id`, for `DEDUPE_TTL_SECS` |
//! | `chatter:ingest` | stream | accepted messages waiting to be persisted (consumer group `persisters`) |
//! | `chatter:ingest:dead` | stream | entries the worker could not store (bad data), kept for inspection |
//! | `chatter:notify:dead` | stream | notifications that failed after every retry |
//! | `chatter:notify:outbox` | stream | notifications to send, written with the batch's acknowledgement (consumer group `notifiers`) |
//! | `chatter:notify:window:<room>:<len>:<user>` | string | a notification went to the user for the room: the coalescing window, `NOTIFICATION_COALESCE_SECS` |
//! | `chatter:notify:held:<room>:<len>:<user>` | hash `count`, `last`, `window` | messages of the open window not notified yet |
//! | `chatter:notify:due` | sorted set, score = unix ms | held notifications by the end of their window |
//! | `chatter:events` | stream | events for the outbound webhook (consumer group `webhooks`) |
//! | `chatter:webhooks:dead` | stream | webhook calls that failed after every retry (`MAXLEN ~ DEAD_LETTER_MAX_LEN`) |
//! | `chatter:log:<room>` | list, oldest first | the newest `RECENT_LOG_SIZE` frames of the room in seq order, for `Resume`; expires after `RECENT_LOG_TTL_SECS` of quiet (the sorted set `chatter:recent:<room>` of earlier releases: a new name, so old and new gateways in a rolling upgrade never write one key as two types) |
//! | `chatter:ticket:<token>` | string (JSON identity) | single-use WebSocket ticket, `TICKET_TTL_SECS` |
//! | `chatter:ended:<room>` | string `expired` / `closed` | a support chat that ended: the ingest script refuses its messages; no TTL |
//! | channel `chatter:room:<room>` | pub/sub | ready-to-send frames for a room's members |
//! | channel `chatter:support:agents` | pub/sub | the support desk's queue events, for agents' sockets only |
//! | channel `chatter:user:<user>` | pub/sub | frames, membership events and close orders (kick, ban, single session) for one user |
//! | channel `chatter:moderation` | pub/sub | `ban:<user>` / `room:<room>`: re-read that ban or room's mutes and blocks (every gateway subscribes) |
//!
//! The sender id in dedupe keys is length-prefixed so that two different
//! `(sender, temp_id)` pairs can never spell the same key (`a:b`+`c` vs `a`+`b:c`).
//! Redis Cluster is not supported yet: the ingest script touches a room's keys and
//! the single ingest stream in one call.

use uuid::Uuid;

pub const INGEST_STREAM: &str = "chatter:ingest";
pub const INGEST_GROUP: &str = "persisters";
pub const INGEST_DEAD_LETTER: &str = "chatter:ingest:dead";
pub const NOTIFY_DEAD_LETTER: &str = "chatter:notify:dead";
pub const NOTIFY_OUTBOX: &str = "chatter:notify:outbox";
pub const NOTIFY_GROUP: &str = "notifiers";
pub const NOTIFY_DUE: &str = "chatter:notify:due";
pub const EVENTS_STREAM: &str = "chatter:events";
pub const EVENTS_GROUP: &str = "webhooks";
pub const WEBHOOK_DEAD_LETTER: &str = "chatter:webhooks:dead";

/// Prefix of room channels; the dispatcher tells rooms from users by it.
pub const ROOM_CHANNEL_PREFIX: &str = "chatter:room:";
pub const USER_CHANNEL_PREFIX: &str = "chatter:user:";
/// Moderation notices every gateway hears (see the gateway's `moderation::notices`).
pub const MODERATION_CHANNEL: &str = "chatter:moderation";

/// The support desk's queue events (`UserJoined`, `RemoveUser`, …): only agents'
/// sockets subscribe, so no other user ever receives them.
pub const SUPPORT_AGENTS_CHANNEL: &str = "chatter:support:agents";

pub fn room_ended(room_id: Uuid) -> String {
    format!("chatter:ended:{room_id}")
}

pub fn room_channel(room_id: Uuid) -> String {
    format!("{ROOM_CHANNEL_PREFIX}{room_id}")
}

pub fn user_channel(user_id: &str) -> String {
    format!("{USER_CHANNEL_PREFIX}{user_id}")
}

pub fn room_seq(room_id: Uuid) -> String {
    format!("chatter:seq:{room_id}")
}

pub fn recent_log(room_id: Uuid) -> String {
    format!("chatter:log:{room_id}")
}

pub fn dedupe(room_id: Uuid, sender_id: &str, temp_id: &str) -> String {
    format!(
        "chatter:dedupe:{room_id}:{}:{sender_id}:{temp_id}",
        sender_id.len()
    )
}

pub fn ticket(token: &str) -> String {
    format!("chatter:ticket:{token}")
}

/// The coalescing window of `user`'s notifications for `room_id`.
pub fn notify_window(room_id: Uuid, user_id: &str) -> String {
    format!(
        "chatter:notify:window:{room_id}:{}:{user_id}",
        user_id.len()
    )
}

/// The messages of an open window that are not notified yet.
pub fn notify_held(room_id: Uuid, user_id: &str) -> String {
    format!("chatter:notify:held:{room_id}:{}:{user_id}", user_id.len())
}
