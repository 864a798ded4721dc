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
//!
//! ## On Redis Cluster: shards
//!
//! With `REDIS_URL=redis-cluster://…` ([`Keyspace::Sharded`]) a key's node is
//! chosen by its hash slot, and a script may only touch keys of one slot. So
//! rooms are spread over `REDIS_SHARDS` logical shards (a stable hash of the
//! room id, [`Keyspace::shard_of_room`]), and everything that one message
//! touches carries its shard's hash tag `{s<N>}`: the room's counter, dedupe
//! keys, recent log and ended marker, the shard's ingest stream, and — for the
//! worker's commit — the shard's notification outbox, due set, coalescing keys
//! and `message.created` events stream. The names are the table's with the tag
//! after `chatter:` (`chatter:{s7}:seq:<room>`, `chatter:{s7}:ingest`, …).
//!
//! Room and user channels use sharded pub/sub (`SPUBLISH`/`SSUBSCRIBE`), which
//! Redis routes to the one node owning the channel's slot instead of
//! broadcasting to every node: `chatter:{s<N>}:room:<room>` (published from
//! inside the ingest script, so in the room's slot) and
//! `chatter:{s<N>}:user:<user>` (a stable hash of the user id). Inside a
//! gateway, channels keep their single-node names ([`room_channel`],
//! [`user_channel`]); only the bus's wire names differ ([`Keyspace::wire`],
//! [`Keyspace::from_wire`]). Presence keys share the slot `{presence}`
//! ([`Keyspace::presence_prefix`]); tickets, dead letters, the gateway's own
//! events and the notice channels (`chatter:presence`, `chatter:moderation`,
//! `chatter:support:agents`, classic pub/sub) keep their names.

use std::borrow::Cow;
use uuid::Uuid;

pub const INGEST_STREAM: &str = "chatter:ingest";
pub const INGEST_GROUP: &str = "persisters";
pub const INGEST_DEAD_LETTER: &str = "chatter:ingest:dead";
pub const NOTIFY_DEAD_LETTER: &str = "chatter:notify:dead";
pub const NOTIFY_GROUP: &str = "notifiers";
/// The gateway's webhook events (`room.created`, …); on one Redis also the
/// worker's `message.created` (see [`Shard::events`]).
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

/// A Redis Cluster has 16,384 hash slots: more shards could not all differ.
pub const MAX_SHARDS: usize = 16_384;

/// Whether a `REDIS_URL` names a Redis Cluster (fred's `redis-cluster://` and
/// `rediss-cluster://` forms).
pub fn is_cluster_url(url: &str) -> bool {
    url.starts_with("redis-cluster://") || url.starts_with("rediss-cluster://")
}

/// How keys and channels are laid out in Redis: see the module doc.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keyspace {
    /// One Redis node: the names of the table above, one ingest stream.
    Single,
    /// Redis Cluster: rooms spread over `shards` hash-tagged shards.
    Sharded { shards: u16 },
}

impl Keyspace {
    /// The shard holding `room_id`'s keys and stream.
    pub fn shard_of_room(self, room_id: Uuid) -> Shard {
        self.shard_by(room_id.as_bytes())
    }

    /// The shard of `user_id`'s channel.
    pub fn shard_of_user(self, user_id: &str) -> Shard {
        self.shard_by(user_id.as_bytes())
    }

    fn shard_by(self, bytes: &[u8]) -> Shard {
        match self {
            Keyspace::Single => Shard(None),
            // FNV-1a: stable across releases and platforms (a room must never
            // move), and cheap. Never change it on a running deployment.
            Keyspace::Sharded { shards } => {
                let hash = bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
                    (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
                });
                Shard(Some((hash % u64::from(shards.max(1))) as u16))
            }
        }
    }

    /// Every shard, each once: what the worker reads.
    pub fn shards(self) -> Vec<Shard> {
        match self {
            Keyspace::Single => vec![Shard(None)],
            Keyspace::Sharded { shards } => (0..shards.max(1)).map(|n| Shard(Some(n))).collect(),
        }
    }

    /// Whether channels go over sharded pub/sub (`SPUBLISH`, `SSUBSCRIBE`).
    pub fn sharded(self) -> bool {
        matches!(self, Keyspace::Sharded { .. })
    }

    /// The name a gateway's channel has on the wire, and whether it is a shard
    /// channel: room and user channels are, on Redis Cluster.
    pub fn wire(self, channel: &str) -> Wire<'_> {
        if let Keyspace::Sharded { .. } = self {
            let shard = if let Some(room) = channel.strip_prefix(ROOM_CHANNEL_PREFIX) {
                room.parse().ok().map(|room_id| self.shard_of_room(room_id))
            } else {
                channel
                    .strip_prefix(USER_CHANNEL_PREFIX)
                    .map(|user_id| self.shard_of_user(user_id))
            };
            if let Some(Shard(Some(n))) = shard {
                let rest = &channel["chatter:".len()..];
                return Wire {
                    name: Cow::Owned(format!("chatter:{{s{n}}}:{rest}")),
                    sharded: true,
                };
            }
        }
        Wire {
            name: Cow::Borrowed(channel),
            sharded: false,
        }
    }

    /// The gateway's name of a channel a message arrived on ([`Keyspace::wire`]
    /// undone): the shard tag taken out.
    pub fn from_wire(self, wire: &str) -> Cow<'_, str> {
        if let Keyspace::Sharded { .. } = self
            && let Some(rest) = wire.strip_prefix("chatter:{s")
            && let Some((_, rest)) = rest.split_once("}:")
        {
            return Cow::Owned(format!("chatter:{rest}"));
        }
        Cow::Borrowed(wire)
    }

    /// What every presence key starts with: on Redis Cluster all of them share
    /// the slot `{presence}`, so each presence script stays in one slot.
    pub fn presence_prefix(self) -> &'static str {
        match self {
            Keyspace::Single => "chatter:",
            Keyspace::Sharded { .. } => "chatter:{presence}:",
        }
    }

    pub fn room_seq(self, room_id: Uuid) -> String {
        self.shard_of_room(room_id).room_seq(room_id)
    }

    pub fn room_ended(self, room_id: Uuid) -> String {
        self.shard_of_room(room_id).room_ended(room_id)
    }
}

/// A gateway channel's name on the wire (see [`Keyspace::wire`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wire<'a> {
    pub name: Cow<'a, str>,
    /// `SPUBLISH`/`SSUBSCRIBE` rather than `PUBLISH`/`SUBSCRIBE`.
    pub sharded: bool,
}

/// One shard of the keyspace: the keys that share a hash slot (see the module
/// doc). On one Redis there is one, with the table's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Shard(Option<u16>);

impl Shard {
    fn key(self, rest: std::fmt::Arguments<'_>) -> String {
        match self.0 {
            None => format!("chatter:{rest}"),
            Some(n) => format!("chatter:{{s{n}}}:{rest}"),
        }
    }

    /// The shard's ingest stream (consumer group [`INGEST_GROUP`]).
    pub fn ingest(self) -> String {
        self.key(format_args!("ingest"))
    }

    /// The shard's notification outbox (consumer group [`NOTIFY_GROUP`]).
    pub fn notify_outbox(self) -> String {
        self.key(format_args!("notify:outbox"))
    }

    /// The shard's coalescing windows by their end.
    pub fn notify_due(self) -> String {
        self.key(format_args!("notify:due"))
    }

    /// Where the worker writes `message.created` for the shard's rooms; on one
    /// Redis that is [`EVENTS_STREAM`] itself.
    pub fn events(self) -> String {
        self.key(format_args!("events"))
    }

    pub fn room_seq(self, room_id: Uuid) -> String {
        self.key(format_args!("seq:{room_id}"))
    }

    pub fn recent_log(self, room_id: Uuid) -> String {
        self.key(format_args!("log:{room_id}"))
    }

    pub fn room_ended(self, room_id: Uuid) -> String {
        self.key(format_args!("ended:{room_id}"))
    }

    /// The room's channel as the ingest script publishes on it (its wire name).
    pub fn room_channel(self, room_id: Uuid) -> String {
        self.key(format_args!("room:{room_id}"))
    }

    pub fn dedupe(self, room_id: Uuid, sender_id: &str, temp_id: &str) -> String {
        self.key(format_args!(
            "dedupe:{room_id}:{}:{sender_id}:{temp_id}",
            sender_id.len()
        ))
    }

    /// The coalescing window of `user`'s notifications for `room_id`.
    pub fn notify_window(self, room_id: Uuid, user_id: &str) -> String {
        self.key(format_args!(
            "notify:window:{room_id}:{}:{user_id}",
            user_id.len()
        ))
    }

    /// The messages of an open window that are not notified yet.
    pub fn notify_held(self, room_id: Uuid, user_id: &str) -> String {
        self.key(format_args!(
            "notify:held:{room_id}:{}:{user_id}",
            user_id.len()
        ))
    }
}

pub fn room_channel(room_id: Uuid) -> String {
    format!("{ROOM_CHANNEL_PREFIX}{room_id}")
}

pub fn user_channel(user_id: &str) -> String {
    format!("{USER_CHANNEL_PREFIX}{user_id}")
}

pub fn ticket(token: &str) -> String {
    format!("chatter:ticket:{token}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_redis_keeps_the_names_of_earlier_releases() {
        let room = Uuid::now_v7();
        let shard = Keyspace::Single.shard_of_room(room);
        assert_eq!(Keyspace::Single.shards(), vec![shard]);
        assert_eq!(shard.ingest(), INGEST_STREAM);
        assert_eq!(shard.events(), EVENTS_STREAM);
        assert_eq!(shard.room_seq(room), format!("chatter:seq:{room}"));
        assert_eq!(shard.room_channel(room), room_channel(room));
        assert_eq!(
            shard.dedupe(room, "a:b", "c"),
            format!("chatter:dedupe:{room}:3:a:b:c")
        );
        let wire = Keyspace::Single.wire("chatter:user:alice");
        assert_eq!(
            (wire.name.as_ref(), wire.sharded),
            ("chatter:user:alice", false)
        );
        assert_eq!(
            Keyspace::Single.from_wire("chatter:user:alice"),
            "chatter:user:alice"
        );
    }

    #[test]
    fn a_shard_keeps_a_rooms_keys_and_stream_in_one_slot() {
        let keyspace = Keyspace::Sharded { shards: 64 };
        let room = Uuid::now_v7();
        let shard = keyspace.shard_of_room(room);
        assert_eq!(keyspace.shard_of_room(room), shard, "stable");
        let keys = [
            shard.ingest(),
            shard.room_seq(room),
            shard.recent_log(room),
            shard.room_ended(room),
            shard.dedupe(room, "alice", "t-1"),
            shard.room_channel(room),
            shard.notify_outbox(),
            shard.notify_window(room, "bob"),
        ];
        let slot = fred::util::redis_keyslot(keys[0].as_bytes());
        for key in &keys {
            assert!(key.starts_with("chatter:{s"), "{key}");
            assert_eq!(fred::util::redis_keyslot(key.as_bytes()), slot, "{key}");
        }
        // The wire name of the room's channel is the script's, and goes back.
        let channel = room_channel(room);
        let wire = keyspace.wire(&channel);
        assert!(wire.sharded);
        assert_eq!(wire.name, shard.room_channel(room));
        assert_eq!(keyspace.from_wire(&wire.name), room_channel(room));
        let user = keyspace.wire("chatter:user:x:y");
        assert!(user.sharded);
        assert_eq!(keyspace.from_wire(&user.name), "chatter:user:x:y");
        // Notice channels stay classic.
        let notice = keyspace.wire(MODERATION_CHANNEL);
        assert!(!notice.sharded);
        assert_eq!(notice.name, MODERATION_CHANNEL);
    }

    #[test]
    fn rooms_spread_over_every_shard() {
        let keyspace = Keyspace::Sharded { shards: 64 };
        let mut counts = [0u32; 64];
        for _ in 0..64_000 {
            if let Shard(Some(n)) = keyspace.shard_of_room(Uuid::now_v7()) {
                counts[usize::from(n)] += 1;
            }
        }
        let (low, high) = (counts.iter().min(), counts.iter().max());
        assert!(low > Some(&800) && high < Some(&1200), "{counts:?}");
        assert_eq!(keyspace.shards().len(), 64);
    }
}
