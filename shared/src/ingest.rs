//! The ingest path: how an accepted message enters Redis, and how the worker reads it back.
//!
//! One script call does everything atomically, in a single round trip:
//! 1. a repeated `(room, sender, message_temp_id)` returns the original id and seq;
//! 2. the room's counter assigns the next sequence number;
//! 3. the message is appended to the durable ingest stream (the worker persists it);
//! 4. the finished `MessageReceived` frame is published on the room's channel and
//!    kept in the room's recent log (a capped list) for `Resume`.
//!
//! A support chat that has ended (expired or closed) has a marker key the script
//! checks after the dedupe (a resend of a message accepted before the end still
//! gets its original answer), so ending a chat costs the hot path no round trip.
//!
//! Because the frame is spliced together inside Redis (`HEAD .. seq .. tail`),
//! receiving gateways forward the published bytes to their sockets untouched.
//!
//! **Batches.** A gateway with many senders has many appends in flight at once.
//! They are handed to one task, the [`Appender`], which sends whatever has queued
//! up as one call of the script (each message still handled on its own, in
//! order): one command, one write and one script start per batch instead of per
//! message, and the sender's task waits on a reply channel rather than holding a
//! Redis client's (large) future. A quiet gateway sends batches of one.
//!
//! **Replicas.** Redis replicates asynchronously: a master that dies before a
//! write reached its replica loses it on failover. With `REDIS_WAIT_REPLICAS`
//! (1 by default on Redis Cluster) each batch's call is followed by `WAIT` on
//! the same connection, and its senders are told `confirmed` only once that
//! many replicas hold it: one more round trip per batch (not per message).
//! The appender has a connection of its own, since `WAIT` holds it. A master
//! with fewer replicas than that (promoted by a failover, its replica not back
//! yet) confirms on those it has rather than refusing every send: a confirmed
//! message then survives any one node's loss, the case failover covers.
//!
//! **Sequence floor.** If the room's counter is missing (a new room, or Redis lost
//! its data) the script answers `cold` instead of starting at 1; the caller reads the
//! highest persisted seq from Postgres and calls again with it as the floor, so seqs
//! never go backwards. This costs a second round trip once per room per Redis life.

use crate::keyspace::{Keyspace, Shard};
use crate::protocol::{MESSAGE_RECEIVED_HEAD, MessageReceivedTail};
use fred::prelude::*;
use fred::types::scripts::Script;
use fred::types::{ClusterHash, CustomCommand};
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const APPEND_LUA: &str = r#"
-- A batch of messages, each appended on its own, in order.
-- KEYS, 5 per message: seq counter, dedupe key, ingest stream, recent log, ended marker
--   (on Redis Cluster every key of a call in one shard, so one slot).
-- ARGV: 1 frame head, 2 dedupe ttl secs, 3 max backlog (0 = unbounded), 4 recent log
--   size, 5 recent log ttl secs, 6 PUBLISH or SPUBLISH (sharded pub/sub on Redis
--   Cluster), then 10 per message: room channel, message id, room id,
--   sender, body, temp id ('' = none), parent id ('' = none), created_at (unix micros),
--   frame tail, seq floor ('' = unknown).
-- Returns one reply per message: {'new', seq}, {'dup', 'id:seq'}, {'ended', how},
-- {'cold'}, {'full'} or {'error', why}.
local head, dedupe_ttl, max_backlog = ARGV[1], ARGV[2], tonumber(ARGV[3])
local log_size, log_ttl, publish = tonumber(ARGV[4]), ARGV[5], ARGV[6]
-- Each stream's length, read once per call (every message of a call goes to
-- one shard's stream) and counted on from there.
local lengths = {}
local function append(k, a)
  local counter, dedupe, stream, log, ended = KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], KEYS[k + 4], KEYS[k + 5]
  local temp, floor = ARGV[a + 6], ARGV[a + 10]
  -- One read for what decides the message's fate: a resend of the same temp
  -- id, an ended chat, a room whose counter Redis does not hold (yet).
  local known = redis.call('MGET', dedupe, ended, counter)
  if temp ~= '' and known[1] then return {'dup', known[1]} end
  if known[2] then return {'ended', known[2]} end
  if not known[3] then
    if floor == '' then return {'cold'} end
    redis.call('SET', counter, floor, 'NX')
  end
  if max_backlog > 0 then
    lengths[stream] = lengths[stream] or redis.call('XLEN', stream)
    if lengths[stream] >= max_backlog then return {'full'} end
  end
  local seq = redis.call('INCR', counter)
  redis.call('XADD', stream, '*', 'id', ARGV[a + 2], 'room', ARGV[a + 3], 'seq', seq,
    'sender', ARGV[a + 4], 'body', ARGV[a + 5], 'temp', temp, 'parent', ARGV[a + 7], 'at', ARGV[a + 8])
  -- Counted once the entry is in: a message that fails before takes no room.
  if lengths[stream] then lengths[stream] = lengths[stream] + 1 end
  if temp ~= '' then
    redis.call('SET', dedupe, ARGV[a + 2] .. ':' .. seq, 'EX', dedupe_ttl)
  end
  local frame = head .. seq .. ARGV[a + 9]
  redis.call(publish, ARGV[a + 1], frame)
  -- A list, not a sorted set: appends come in seq order, so the log is the
  -- room's newest seqs in order, and RPUSH + LTRIM cost a fraction of ZADD +
  -- ZREMRANGEBYRANK on frame-sized members.
  if redis.call('RPUSH', log, frame) > log_size then
    redis.call('LTRIM', log, -log_size, -1)
  end
  redis.call('EXPIRE', log, log_ttl)
  return {'new', tostring(seq)}
end
local replies = {}
for i = 0, #KEYS / 5 - 1 do
  -- One message's error (say, a key of the wrong type) is that message's
  -- answer, not the batch's: the messages before it were accepted.
  local ok, reply = pcall(append, 5 * i, 6 + 10 * i)
  if ok then
    replies[i + 1] = reply
  else
    replies[i + 1] = {'error', type(reply) == 'table' and reply.err or tostring(reply)}
  end
end
return replies
"#;

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

// What an accepted message becomes, built here for both buses: the Redis one
// hands these to `APPEND_LUA`, the embedded mode's in-process one uses them
// itself, so a socket and the worker cannot tell which bus accepted it.
impl NewMessage<'_> {
    /// The `MessageReceived` frame's bytes after its seq, serialized once per
    /// message (the seq is not known yet); [`received_frame`] completes it.
    pub fn frame_tail(&self) -> String {
        MessageReceivedTail {
            id: self.id,
            room_id: self.room_id,
            sender_id: Cow::Borrowed(self.sender_id),
            message: Cow::Borrowed(self.body),
            created_at: self.created_at,
            message_temp_id: self.temp_id.map(Cow::Borrowed),
            parent_id: self.parent_id,
            edited_at: None,
            deleted_at: None,
        }
        .encode()
    }

    /// The ingest stream entry this message becomes with `seq`: what the
    /// script's `XADD` writes from `args_of` (the worker reads it back), and
    /// what the in-process bus queues for the embedded worker.
    pub fn entry(&self, seq: i64) -> IngestEntry {
        IngestEntry {
            id: self.id,
            room_id: self.room_id,
            seq,
            sender_id: self.sender_id.to_owned(),
            body: self.body.to_owned(),
            temp_id: self.temp_id.map(str::to_owned),
            parent_id: self.parent_id,
            created_at: self.created_at,
        }
    }
}

/// The complete `MessageReceived` frame, `HEAD .. seq .. tail`: spliced as
/// `APPEND_LUA` splices it inside Redis.
pub fn received_frame(seq: i64, tail: &str) -> String {
    format!("{MESSAGE_RECEIVED_HEAD}{seq}{tail}")
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

/// The limits the ingest script enforces, from the configuration.
#[derive(Debug, Clone)]
pub struct AppendLimits {
    pub dedupe_ttl_secs: u64,
    /// `INGEST_MAX_BACKLOG`, for all shards together: each shard's stream is
    /// held to its part of it.
    pub max_backlog: u64,
    pub recent_log_size: u64,
    pub recent_log_ttl_secs: u64,
    /// Replicas that must hold a batch before it is confirmed (0: none).
    pub wait_replicas: u32,
    pub wait_timeout_ms: u64,
}

impl AppendLimits {
    pub fn from_config(config: &crate::config::Config) -> AppendLimits {
        AppendLimits {
            dedupe_ttl_secs: config.dedupe_ttl_secs,
            max_backlog: config.ingest_max_backlog,
            recent_log_size: config.recent_log_size.max(1),
            recent_log_ttl_secs: config.recent_log_ttl_secs.max(1),
            wait_replicas: config.redis_wait_replicas(),
            wait_timeout_ms: config.redis_wait_timeout_ms.max(1),
        }
    }
}

/// Appends queued for the next batch, at most; past it senders wait.
const QUEUED_APPENDS: usize = 4096;
/// Messages in one script call, at most: Redis runs nothing else meanwhile.
const BATCH: usize = 32;
/// Batches sent and not yet answered, at most.
const BATCHES_IN_FLIGHT: usize = 4;

/// Keys and arguments of one message, and where its reply goes.
struct Append {
    /// A script call covers one shard: its keys must share a slot.
    shard: Shard,
    keys: Vec<String>,
    args: Vec<Value>,
    reply: oneshot::Sender<Result<Value, Error>>,
}

/// Hands messages to the batching task (see the module doc); cheap to clone.
#[derive(Clone)]
pub struct Appender {
    appends: mpsc::Sender<Append>,
    keyspace: Keyspace,
}

impl Appender {
    /// Starts the batching task; it stops with `stop`, answering what it holds
    /// by dropping it (the senders see the bus as unavailable).
    pub fn start(
        client: Client,
        keyspace: Keyspace,
        limits: AppendLimits,
        stop: CancellationToken,
    ) -> Appender {
        let (appends, queued) = mpsc::channel(QUEUED_APPENDS);
        tokio::spawn(send_batches(client, keyspace, limits, queued, stop));
        Appender { appends, keyspace }
    }

    /// Appends one message: the script's outcome for it. `floor` is the
    /// persisted seq to resume above after a [`AppendOutcome::Cold`].
    pub async fn append(
        &self,
        message: &NewMessage<'_>,
        floor: Option<i64>,
    ) -> Result<AppendOutcome, Error> {
        let tail = message.frame_tail();
        // A second try only after Redis forgot the script (restart, flush): the
        // batch that met `NOSCRIPT` loaded it again.
        let mut tries = 2;
        loop {
            tries -= 1;
            let (reply, answer) = oneshot::channel();
            let shard = self.keyspace.shard_of_room(message.room_id);
            let append = Append {
                shard,
                keys: keys_of(shard, message),
                args: args_of(shard, message, &tail, floor),
                reply,
            };
            let gone = || Error::new(ErrorKind::Canceled, "the gateway is shutting down");
            self.appends.send(append).await.map_err(|_| gone())?;
            match answer.await.map_err(|_| gone())? {
                Err(error) if is_noscript(&error) && tries > 0 => continue,
                Err(error) => return Err(error),
                Ok(reply) => return parse_reply(&reply.convert::<Vec<String>>()?),
            }
        }
    }
}

fn keys_of(shard: Shard, message: &NewMessage<'_>) -> Vec<String> {
    vec![
        shard.room_seq(message.room_id),
        shard.dedupe(
            message.room_id,
            message.sender_id,
            message.temp_id.unwrap_or(""),
        ),
        shard.ingest(),
        shard.recent_log(message.room_id),
        shard.room_ended(message.room_id),
    ]
}

fn args_of(shard: Shard, message: &NewMessage<'_>, tail: &str, floor: Option<i64>) -> Vec<Value> {
    vec![
        shard.room_channel(message.room_id).into(),
        message.id.to_string().into(),
        message.room_id.to_string().into(),
        message.sender_id.into(),
        message.body.into(),
        message.temp_id.unwrap_or("").into(),
        message
            .parent_id
            .map(|p| p.to_string())
            .unwrap_or_default()
            .into(),
        micros(message.created_at).to_string().into(),
        tail.into(),
        floor.map(|f| f.to_string()).unwrap_or_default().into(),
    ]
}

fn is_noscript(error: &Error) -> bool {
    error.details().starts_with("NOSCRIPT")
}

/// The batching task: whatever has queued up (at most [`BATCH`]) goes out as
/// one script call per shard it spans, with up to [`BATCHES_IN_FLIGHT`]
/// batches unanswered at once.
async fn send_batches(
    client: Client,
    keyspace: Keyspace,
    limits: AppendLimits,
    queued: mpsc::Receiver<Append>,
    stop: CancellationToken,
) {
    let script = Script::from_lua(APPEND_LUA);
    let shards = keyspace.shards().len() as u64;
    // Each shard's stream holds its part of the backlog (0 stays unbounded).
    let per_shard_backlog = limits.max_backlog.div_ceil(shards);
    let wait = Wait {
        replicas: limits.wait_replicas,
        timeout_ms: limits.wait_timeout_ms,
        short_handed: Arc::default(),
    };
    let constants: Vec<Value> = vec![
        MESSAGE_RECEIVED_HEAD.into(),
        limits.dedupe_ttl_secs.to_string().into(),
        per_shard_backlog.to_string().into(),
        limits.recent_log_size.to_string().into(),
        limits.recent_log_ttl_secs.to_string().into(),
        if keyspace.sharded() {
            "SPUBLISH"
        } else {
            "PUBLISH"
        }
        .into(),
    ];
    crate::batches::answer_in_batches(queued, BATCH, BATCHES_IN_FLIGHT, stop, |appends| {
        let (client, script, constants) = (client.clone(), script.clone(), constants.clone());
        let wait = wait.clone();
        async move {
            let calls = by_shard(appends)
                .into_iter()
                .map(|appends| send_batch(&client, &script, &wait, constants.clone(), appends));
            futures::future::join_all(calls).await;
        }
    })
    .await;
}

/// `appends` split by shard, each part in the order it came: a room's messages
/// stay in order, since a room has one shard. One part on a single Redis.
fn by_shard(appends: Vec<Append>) -> Vec<Vec<Append>> {
    let mut parts: Vec<Vec<Append>> = Vec::new();
    for append in appends {
        match parts.iter_mut().find(|part| part[0].shard == append.shard) {
            Some(part) => part.push(append),
            None => parts.push(vec![append]),
        }
    }
    parts
}

/// One script call for `appends` (one shard); each sender gets its own
/// message's reply.
async fn send_batch(
    client: &Client,
    script: &Script,
    wait: &Wait,
    mut args: Vec<Value>,
    appends: Vec<Append>,
) {
    let mut keys = Vec::with_capacity(appends.len() * 5);
    let mut replies = Vec::with_capacity(appends.len());
    args.reserve(appends.len() * 10);
    for append in appends {
        keys.extend(append.keys);
        args.extend(append.args);
        replies.push(append.reply);
    }
    // The node to `WAIT` on is the one that ran the call: its keys' slot.
    let slot = fred::util::redis_keyslot(keys.first().map_or(&b""[..], |key| key.as_bytes()));
    let called = client
        .evalsha::<Vec<Value>, _, _, _>(script.sha1().clone(), keys, args)
        .await;
    let replicated = match &called {
        Ok(_) => wait.on(client, slot).await,
        Err(_) => Ok(()),
    };
    let called = match (called, replicated) {
        (Ok(answers), Ok(())) => Ok(answers),
        (Ok(_), Err(error)) | (Err(error), _) => Err(error),
    };
    match called {
        Ok(answers) if answers.len() == replies.len() => {
            for (reply, answer) in replies.into_iter().zip(answers) {
                let _ = reply.send(Ok(answer));
            }
        }
        Ok(answers) => {
            let error = Error::new(
                ErrorKind::Parse,
                format!(
                    "the ingest script answered {} of {} messages",
                    answers.len(),
                    replies.len()
                ),
            );
            replies
                .into_iter()
                .for_each(|reply| drop(reply.send(Err(error.clone()))));
        }
        Err(error) => {
            // Redis forgot the script: load it, and the senders call again.
            if is_noscript(&error)
                && let Err(load) = script.load(client).await
            {
                tracing::warn!(error = %load, "cannot load the ingest script");
            }
            replies
                .into_iter()
                .for_each(|reply| drop(reply.send(Err(error.clone()))));
        }
    }
}

/// `WAIT` after a batch's call (see the module doc).
#[derive(Debug, Clone)]
struct Wait {
    replicas: u32,
    timeout_ms: u64,
    /// Slots whose master had fewer replicas than asked for, and until when
    /// they are not waited on (a master promoted by a failover has none until
    /// its old master rejoins): `WAIT` would time out on every batch.
    short_handed: Arc<Mutex<HashMap<u16, Instant>>>,
}

/// How long a master found with too few replicas is not waited on.
const SHORT_HANDED_FOR: Duration = Duration::from_secs(1);

impl Wait {
    /// Waits until the node owning `slot` has `replicas` replicas holding
    /// this connection's writes, or all the replicas it has if it has fewer
    /// (a promoted master, until its replica is back: refusing every send then
    /// would make a failover an outage); an error if they do not within the
    /// timeout.
    async fn on(&self, client: &Client, slot: u16) -> Result<(), Error> {
        if self.replicas == 0 || self.is_short_handed(slot) {
            return Ok(());
        }
        // A custom command, to route it by slot to the connection that ran the
        // script (fred's `wait` goes to any node); blocking: it holds the
        // connection until it answers.
        let command = CustomCommand::new_static("WAIT", ClusterHash::Custom(slot), true);
        let timeout = i64::try_from(self.timeout_ms).unwrap_or(i64::MAX);
        let args: Vec<Value> = vec![self.replicas.into(), timeout.into()];
        let acknowledged: i64 = client.custom(command, args).await?;
        if acknowledged >= i64::from(self.replicas) {
            return Ok(());
        }
        // Too few answered: does the master have too few? `ROLE` lists the
        // replicas connected to it.
        let role = CustomCommand::new_static("ROLE", ClusterHash::Custom(slot), false);
        let role: Vec<Value> = client.custom(role, Vec::<Value>::new()).await?;
        let connected = match role.get(2) {
            Some(Value::Array(replicas)) => replicas.len() as i64,
            _ => 0,
        };
        if connected < i64::from(self.replicas) && acknowledged >= connected {
            tracing::warn!(
                slot,
                connected,
                "a Redis master has fewer replicas than REDIS_WAIT_REPLICAS; confirming on those it has"
            );
            if let Ok(mut short) = self.short_handed.lock() {
                short.insert(slot, Instant::now() + SHORT_HANDED_FOR);
            }
            return Ok(());
        }
        Err(Error::new(
            ErrorKind::Timeout,
            format!(
                "{acknowledged} of {} replicas hold the batch after {} ms",
                self.replicas, self.timeout_ms
            ),
        ))
    }

    fn is_short_handed(&self, slot: u16) -> bool {
        let Ok(mut short) = self.short_handed.lock() else {
            return false;
        };
        match short.get(&slot) {
            Some(until) if *until > Instant::now() => true,
            Some(_) => {
                short.remove(&slot);
                false
            }
            None => false,
        }
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
-- One call, so the two agree. The log holds the room's newest seqs in order,
-- ending at the counter, so the frames after ARGV[1] are its last (counter -
-- ARGV[1]) entries: a client that missed three messages costs three frames,
-- not the whole log. (The reader keeps only frames above ARGV[1], so a log
-- that is not what this assumes can cost a resync, never a wrong frame.)
local last = tonumber(redis.call('GET', KEYS[1]) or '0')
local missed = last - tonumber(ARGV[1])
if missed <= 0 then return {tostring(last), {}} end
local stop = -missed + tonumber(ARGV[2]) - 1
if stop > -1 then stop = -1 end
return {tostring(last), redis.call('LRANGE', KEYS[2], -missed, stop)}
"#;

const REWRITE_LUA: &str = r#"
-- KEYS: 1 seq counter, 2 recent log. ARGV: 1 seq, 2 frame, 3 how the frame at
-- that seq begins (HEAD .. seq .. ','). Replaces the frame at seq, if the log
-- still holds it, so that Resume replays an edit or a deletion, not the
-- original. Its place is known from the counter; checked, and searched for if
-- the log is not what that assumes.
local len = redis.call('LLEN', KEYS[2])
if len == 0 then return 0 end
local prefix = ARGV[3]
local function holds(frame) return frame and string.sub(frame, 1, #prefix) == prefix end
local last = tonumber(redis.call('GET', KEYS[1]) or '0')
local index = len - 1 - (last - tonumber(ARGV[1]))
if index >= 0 and index < len and holds(redis.call('LINDEX', KEYS[2], index)) then
  redis.call('LSET', KEYS[2], index, ARGV[2])
  return 1
end
for i, frame in ipairs(redis.call('LRANGE', KEYS[2], 0, -1)) do
  if holds(frame) then
    redis.call('LSET', KEYS[2], i - 1, ARGV[2])
    return 1
  end
end
return 0
"#;

/// Reads a room's counter and the missed part of its recent log in one atomic
/// call, and rewrites entries of the log after an edit or a deletion.
#[derive(Clone)]
pub struct RecentScript {
    read: Script,
    rewrite: Script,
    keyspace: Keyspace,
}

impl RecentScript {
    pub fn new(keyspace: Keyspace) -> RecentScript {
        RecentScript {
            read: Script::from_lua(RECENT_LUA),
            rewrite: Script::from_lua(REWRITE_LUA),
            keyspace,
        }
    }

    /// Both scripts' keys: the room's counter and its log.
    fn keys(&self, room_id: Uuid) -> Vec<String> {
        let shard = self.keyspace.shard_of_room(room_id);
        vec![shard.room_seq(room_id), shard.recent_log(room_id)]
    }

    /// The layout the scripts' keys follow (the hub's channels follow it too).
    pub fn keyspace(&self) -> Keyspace {
        self.keyspace
    }

    /// The room's counter and at most `limit` logged frames with a seq above
    /// `after_seq`, ascending.
    pub async fn read(
        &self,
        client: &Client,
        room_id: Uuid,
        after_seq: i64,
        limit: u64,
    ) -> Result<RecentLog, Error> {
        let keys = self.keys(room_id);
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
            .filter(|(seq, _)| *seq > after_seq)
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
        let keys = self.keys(room_id);
        let prefix = format!("{MESSAGE_RECEIVED_HEAD}{seq},");
        let args: Vec<Value> = vec![seq.into(), frame.into(), prefix.into()];
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
        Some("error") => Err(Error::new(
            ErrorKind::Unknown,
            format!(
                "the ingest script failed for this message: {}",
                reply.get(1).map(String::as_str).unwrap_or("")
            ),
        )),
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
        assert!(parse_reply(&s(&["error", "WRONGTYPE"])).is_err());
        assert!(parse_reply(&s(&["what"])).is_err());
    }

    #[test]
    fn both_buses_build_the_same_frame_and_entry() {
        let message = NewMessage {
            id: Uuid::now_v7(),
            room_id: Uuid::now_v7(),
            sender_id: "alice",
            body: "hi",
            temp_id: Some("t-1"),
            parent_id: Some(Uuid::now_v7()),
            created_at: crate::protocol::now_micros(),
        };
        let entry = message.entry(7);
        // The script's stream fields (its `XADD`, from these arguments) are
        // the entry's, which the in-process bus queues as it is.
        let args = args_of(
            Keyspace::Single.shard_of_room(message.room_id),
            &message,
            &message.frame_tail(),
            None,
        );
        let text = |i: usize| args[i].as_str().map(|v| v.into_owned());
        let fields: HashMap<String, String> = entry.to_fields().into_iter().collect();
        let named = ["id", "room", "sender", "body", "temp", "parent", "at"];
        for (i, name) in (1..).zip(named) {
            assert_eq!(text(i).as_ref(), fields.get(name), "field {name}");
        }
        // Spliced here as the script splices it: what history replays too.
        let view = crate::protocol::MessageView {
            id: entry.id,
            room_id: entry.room_id,
            seq: entry.seq,
            sender_id: entry.sender_id.clone(),
            message: entry.body.clone(),
            created_at: entry.created_at,
            message_temp_id: entry.temp_id.clone(),
            parent_id: entry.parent_id,
            edited_at: None,
            deleted_at: None,
        };
        assert_eq!(received_frame(7, &message.frame_tail()), view.to_frame());
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
