//! The ingest path: how an accepted message enters Redis, and how the worker reads it back.
//!
//! One script call per message does everything atomically, in a single round trip:
//! 1. a repeated `(room, sender, message_temp_id)` returns the original id and seq;
//! 2. the room's counter assigns the next sequence number;
//! 3. the message is appended to the durable ingest stream (the worker persists it);
//! 4. the finished `MessageReceived` frame is published on the room's channel and
//!    kept in the room's recent log (a capped sorted set) for `Resume`.
//!
//! A support chat that has ended (expired or closed) has a marker key the script
//! checks after the dedupe (a resend of a message accepted before the end still
//! gets its original answer), so ending a chat costs the hot path no round trip.
//!
//! Because the frame is spliced together inside Redis (`HEAD .. seq .. tail`),
//! receiving gateways forward the published bytes to their sockets untouched.
//!
//! **Sequence floor.** If the room's counter is missing (a new room, or Redis lost
//! its data) the script answers `cold` instead of starting at 1; the caller reads the
//! highest persisted seq from Postgres and calls again with it as the floor, so seqs
//! never go backwards. This costs a second round trip once per room per Redis life.

use crate::keyspace;
use crate::protocol::{MESSAGE_RECEIVED_HEAD, MessageReceivedTail};
use fred::prelude::*;
use fred::types::scripts::Script;
use std::borrow::Cow;
use time::OffsetDateTime;
use uuid::Uuid;

const APPEND_LUA: &str = r#"
-- KEYS: 1 seq counter, 2 dedupe key, 3 ingest stream, 4 recent log, 5 ended marker
-- ARGV: 1 room channel, 2 message id, 3 room id, 4 sender, 5 body, 6 temp id ('' = none),
--       7 parent id ('' = none), 8 created_at (unix micros), 9 frame head, 10 frame tail,
--       11 dedupe ttl secs, 12 max backlog (0 = unbounded), 13 seq floor ('' = unknown),
--       14 recent log size, 15 recent log ttl secs
if ARGV[6] ~= '' then
  local seen = redis.call('GET', KEYS[2])
  if seen then return {'dup', seen} end
end
local ended = redis.call('GET', KEYS[5])
if ended then return {'ended', ended} end
if redis.call('EXISTS', KEYS[1]) == 0 then
  if ARGV[13] == '' then return {'cold'} end
  redis.call('SET', KEYS[1], ARGV[13], 'NX')
end
local max_backlog = tonumber(ARGV[12])
if max_backlog > 0 and redis.call('XLEN', KEYS[3]) >= max_backlog then return {'full'} end
local seq = redis.call('INCR', KEYS[1])
redis.call('XADD', KEYS[3], '*', 'id', ARGV[2], 'room', ARGV[3], 'seq', seq, 'sender', ARGV[4],
  'body', ARGV[5], 'temp', ARGV[6], 'parent', ARGV[7], 'at', ARGV[8])
if ARGV[6] ~= '' then
  redis.call('SET', KEYS[2], ARGV[2] .. ':' .. seq, 'EX', ARGV[11])
end
local frame = ARGV[9] .. seq .. ARGV[10]
redis.call('PUBLISH', ARGV[1], frame)
redis.call('ZADD', KEYS[4], seq, frame)
redis.call('ZREMRANGEBYRANK', KEYS[4], 0, -(tonumber(ARGV[14]) + 1))
redis.call('EXPIRE', KEYS[4], ARGV[15])
return {'new', tostring(seq)}
"#;

/// The loaded ingest script; cheap to clone.
#[derive(Clone)]
pub struct AppendScript(Script);

impl Default for AppendScript {
    fn default() -> Self {
        AppendScript(Script::from_lua(APPEND_LUA))
    }
}

/// A message the gateway has validated and wants to append.
#[derive(Debug, Clone)]
pub struct NewMessage<'a> {
    pub id: Uuid,
    pub room_id: Uuid,
    pub sender_id: &'a str,
    pub body: &'a str,
    pub temp_id: Option<&'a str>,
    pub parent_id: Option<Uuid>,
    pub created_at: OffsetDateTime,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendOutcome {
    /// Stored in the stream and published with this seq.
    Accepted { seq: i64 },
    /// The temp id was seen before: this is the original message.
    Duplicate { id: Uuid, seq: i64 },
    /// The room's counter is missing: call again with the persisted floor.
    Cold,
    /// The ingest stream is at `INGEST_MAX_BACKLOG`.
    BacklogFull,
    /// The room is a support chat that has ended.
    Ended(Ending),
}

/// How a support chat ended; the value of its marker key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    Expired,
    Closed,
}

impl Ending {
    pub fn as_str(self) -> &'static str {
        match self {
            Ending::Expired => "expired",
            Ending::Closed => "closed",
        }
    }
}

pub struct AppendLimits {
    pub dedupe_ttl_secs: u64,
    pub max_backlog: u64,
    pub recent_log_size: u64,
    pub recent_log_ttl_secs: u64,
}

impl AppendScript {
    pub async fn append(
        &self,
        client: &Client,
        message: &NewMessage<'_>,
        limits: &AppendLimits,
        floor: Option<i64>,
    ) -> Result<AppendOutcome, Error> {
        let temp_id = message.temp_id.unwrap_or("");
        let tail = MessageReceivedTail {
            id: message.id,
            room_id: message.room_id,
            sender_id: Cow::Borrowed(message.sender_id),
            message: Cow::Borrowed(message.body),
            created_at: message.created_at,
            message_temp_id: message.temp_id.map(Cow::Borrowed),
            parent_id: message.parent_id,
            edited_at: None,
            deleted_at: None,
        }
        .encode();
        let keys = vec![
            keyspace::room_seq(message.room_id),
            keyspace::dedupe(message.room_id, message.sender_id, temp_id),
            keyspace::INGEST_STREAM.to_owned(),
            keyspace::recent_log(message.room_id),
            keyspace::room_ended(message.room_id),
        ];
        let args: Vec<Value> = vec![
            keyspace::room_channel(message.room_id).into(),
            message.id.to_string().into(),
            message.room_id.to_string().into(),
            message.sender_id.into(),
            message.body.into(),
            temp_id.into(),
            message
                .parent_id
                .map(|p| p.to_string())
                .unwrap_or_default()
                .into(),
            micros(message.created_at).to_string().into(),
            MESSAGE_RECEIVED_HEAD.into(),
            tail.into(),
            limits.dedupe_ttl_secs.to_string().into(),
            limits.max_backlog.to_string().into(),
            floor.map(|f| f.to_string()).unwrap_or_default().into(),
            limits.recent_log_size.max(1).to_string().into(),
            limits.recent_log_ttl_secs.max(1).to_string().into(),
        ];
        let reply: Vec<String> = self.0.evalsha_with_reload(client, keys, args).await?;
        parse_reply(&reply)
    }
}

/// What a room's recent log holds after some seq, for `Resume`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RecentLog {
    /// The room's last assigned seq (0 when the counter is gone).
    pub last_seq: i64,
    /// `(seq, frame)`, ascending: the logged frames after the seq asked for,
    /// at most as many as asked for.
    pub frames: Vec<(i64, String)>,
}

const RECENT_LUA: &str = r#"
-- KEYS: 1 seq counter, 2 recent log. ARGV: 1 after seq, 2 at most this many.
-- One call, so the two agree. Only the frames after ARGV[1] are read: a client
-- that missed three messages costs three frames, not the whole log.
return {redis.call('GET', KEYS[1]) or '0',
  redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. ARGV[1], '+inf', 'LIMIT', 0, ARGV[2])}
"#;

const REWRITE_LUA: &str = r#"
-- KEYS: 1 recent log. ARGV: 1 seq, 2 frame. Replaces the frame at seq, if it is
-- still in the log, so that Resume replays an edit or a deletion, not the original.
if redis.call('ZCOUNT', KEYS[1], ARGV[1], ARGV[1]) > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], ARGV[1], ARGV[1])
  redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
end
return 0
"#;

/// Reads a room's counter and the missed part of its recent log in one atomic
/// call, and rewrites entries of the log after an edit or a deletion.
#[derive(Clone)]
pub struct RecentScript {
    read: Script,
    rewrite: Script,
}

impl Default for RecentScript {
    fn default() -> Self {
        RecentScript {
            read: Script::from_lua(RECENT_LUA),
            rewrite: Script::from_lua(REWRITE_LUA),
        }
    }
}

impl RecentScript {
    /// The room's counter and at most `limit` logged frames with a seq above
    /// `after_seq`, ascending.
    pub async fn read(
        &self,
        client: &Client,
        room_id: Uuid,
        after_seq: i64,
        limit: u64,
    ) -> Result<RecentLog, Error> {
        let keys = vec![keyspace::room_seq(room_id), keyspace::recent_log(room_id)];
        let args: Vec<Value> = vec![after_seq.into(), limit.max(1).to_string().into()];
        let (last_seq, frames): (String, Vec<String>) =
            self.read.evalsha_with_reload(client, keys, args).await?;
        let last_seq = last_seq
            .parse()
            .map_err(|_| Error::new(ErrorKind::Parse, "room counter is not a number"))?;
        let frames = frames
            .into_iter()
            .filter_map(|frame| {
                crate::protocol::peek_message_received(&frame).map(|(_, seq)| (seq, frame))
            })
            .collect();
        Ok(RecentLog { last_seq, frames })
    }

    /// Replaces the frame of `seq` in the room's log, if the log still holds it.
    pub async fn rewrite(
        &self,
        client: &Client,
        room_id: Uuid,
        seq: i64,
        frame: String,
    ) -> Result<(), Error> {
        let keys = vec![keyspace::recent_log(room_id)];
        let args: Vec<Value> = vec![seq.into(), frame.into()];
        let _: i64 = self.rewrite.evalsha_with_reload(client, keys, args).await?;
        Ok(())
    }
}

fn parse_reply(reply: &[String]) -> Result<AppendOutcome, Error> {
    let bad = || {
        Error::new(
            ErrorKind::Parse,
            format!("unexpected ingest script reply {reply:?}"),
        )
    };
    match reply.first().map(String::as_str) {
        Some("new") => {
            let seq = reply.get(1).and_then(|s| s.parse().ok()).ok_or_else(bad)?;
            Ok(AppendOutcome::Accepted { seq })
        }
        Some("dup") => {
            let (id, seq) = reply
                .get(1)
                .and_then(|s| s.split_once(':'))
                .ok_or_else(bad)?;
            Ok(AppendOutcome::Duplicate {
                id: id.parse().map_err(|_| bad())?,
                seq: seq.parse().map_err(|_| bad())?,
            })
        }
        Some("cold") => Ok(AppendOutcome::Cold),
        Some("full") => Ok(AppendOutcome::BacklogFull),
        Some("ended") => match reply.get(1).map(String::as_str) {
            Some("closed") => Ok(AppendOutcome::Ended(Ending::Closed)),
            _ => Ok(AppendOutcome::Ended(Ending::Expired)),
        },
        _ => Err(bad()),
    }
}

fn micros(at: OffsetDateTime) -> i128 {
    at.unix_timestamp_nanos() / 1000
}

/// One message as read back from the ingest stream by the worker.
#[derive(Debug, Clone, PartialEq)]
pub struct IngestEntry {
    pub id: Uuid,
    pub room_id: Uuid,
    pub seq: i64,
    pub sender_id: String,
    pub body: String,
    pub temp_id: Option<String>,
    pub parent_id: Option<Uuid>,
    pub created_at: OffsetDateTime,
}

impl IngestEntry {
    /// The entry's fields as the ingest script writes them (`APPEND_LUA`'s
    /// `XADD`), in the same order: what a dead letter keeps, so an operator can
    /// fix it and `XADD` it back. [`IngestEntry::from_fields`] reads them back.
    pub fn to_fields(&self) -> Vec<(String, String)> {
        [
            ("id", self.id.to_string()),
            ("room", self.room_id.to_string()),
            ("seq", self.seq.to_string()),
            ("sender", self.sender_id.clone()),
            ("body", self.body.clone()),
            ("temp", self.temp_id.clone().unwrap_or_default()),
            (
                "parent",
                self.parent_id.map(|p| p.to_string()).unwrap_or_default(),
            ),
            ("at", micros(self.created_at).to_string()),
        ]
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value))
        .collect()
    }

    /// Parses a stream entry, given how to look up its fields by name (`None`:
    /// the entry has no such field; `Err`: it has one, unreadable). A lookup
    /// rather than a map, so the worker reads the fields where the Redis reply
    /// put them, copying only the text it keeps. `Err` names the field that is
    /// wrong.
    pub fn from_fields<'a>(
        field: impl Fn(&'static str) -> Result<Option<&'a str>, String>,
    ) -> Result<IngestEntry, String> {
        let get = |name: &'static str| field(name)?.ok_or_else(|| format!("missing field {name}"));
        let optional = |name: &'static str| -> Result<Option<&'a str>, String> {
            Ok(field(name)?.filter(|v| !v.is_empty()))
        };
        let uuid = |name: &'static str| -> Result<Uuid, String> {
            get(name)?
                .parse()
                .map_err(|_| format!("field {name} is not a UUID"))
        };
        let at: i128 = get("at")?
            .parse()
            .map_err(|_| "field at is not a number".to_string())?;
        Ok(IngestEntry {
            id: uuid("id")?,
            room_id: uuid("room")?,
            seq: get("seq")?
                .parse()
                .map_err(|_| "field seq is not a number".to_string())?,
            sender_id: get("sender")?.to_owned(),
            body: get("body")?.to_owned(),
            temp_id: optional("temp")?.map(str::to_owned),
            parent_id: match optional("parent")? {
                Some(parent) => Some(
                    parent
                        .parse()
                        .map_err(|_| "field parent is not a UUID".to_string())?,
                ),
                None => None,
            },
            created_at: OffsetDateTime::from_unix_timestamp_nanos(at * 1000)
                .map_err(|_| "field at is out of range".to_string())?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn replies_parse() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            parse_reply(&s(&["new", "7"])).ok(),
            Some(AppendOutcome::Accepted { seq: 7 })
        );
        let id = Uuid::now_v7();
        assert_eq!(
            parse_reply(&s(&["dup", &format!("{id}:3")])).ok(),
            Some(AppendOutcome::Duplicate { id, seq: 3 })
        );
        assert_eq!(parse_reply(&s(&["cold"])).ok(), Some(AppendOutcome::Cold));
        assert!(parse_reply(&s(&["what"])).is_err());
    }

    #[test]
    fn fields_read_back_as_the_same_entry() {
        let entry = IngestEntry {
            id: Uuid::now_v7(),
            room_id: Uuid::now_v7(),
            seq: 42,
            sender_id: "alice".into(),
            body: "a\u{0}b".into(),
            temp_id: Some("t-1".into()),
            parent_id: Some(Uuid::now_v7()),
            created_at: crate::protocol::now_micros(),
        };
        let fields: HashMap<String, String> = entry.to_fields().into_iter().collect();
        let lookup = |fields: &HashMap<String, String>| {
            IngestEntry::from_fields(|name| Ok(fields.get(name).map(String::as_str)))
        };
        assert_eq!(lookup(&fields), Ok(entry.clone()));
        let plain = IngestEntry {
            temp_id: None,
            parent_id: None,
            ..entry
        };
        let fields: HashMap<String, String> = plain.to_fields().into_iter().collect();
        assert_eq!(lookup(&fields), Ok(plain));
        let mut broken = fields.clone();
        broken.remove("seq");
        assert_eq!(lookup(&broken), Err("missing field seq".to_string()));
    }
}
