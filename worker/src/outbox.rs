//! The notification outbox: notifications (and `message.created` webhook
//! events) are written to durable Redis streams by the same script call that
//! acknowledges the stored batch, so a worker killed at any moment loses none.
//!
//! - Killed before the call: the batch is still pending in the ingest stream;
//!   whoever reclaims it stores nothing twice but writes the batch's
//!   notifications, since they may never have been written (see
//!   `Persister::handle`).
//! - Killed after it: the notifications are in `chatter:notify:outbox`, and the
//!   `notifiers` consumer group delivers them (`delivery.rs`), reclaiming what a
//!   dead worker held.
//!
//! The call is atomic, so a notification is never written without the batch
//! being acknowledged, nor the reverse. Persistence does not wait for notif:
//! writing to the outbox is part of the acknowledgement round trip.
//!
//! **Coalescing** (`NOTIFICATION_COALESCE_SECS`, 0 = off): the first message for
//! a recipient in a room opens a window and is notified at once; the window's
//! further messages are only counted (a hash per recipient and room), and when
//! the window ends one notification says how many there were, with the last of
//! them, and opens the next window. So a recipient gets at most one notification
//! per room per window, and a busy 1,000-member room costs one outbox entry per
//! member per window, not per message. Windows end in `chatter:notify:due`,
//! which every worker polls ([`flush_due`]); the flush is one atomic script too.

use crate::notify::Pending;
use chatter_shared::events::Event;
use chatter_shared::keyspace::{INGEST_GROUP, Keyspace, Shard};
use chatter_shared::telemetry::metric;
use fred::prelude::*;
use fred::types::scripts::Script;
use std::collections::HashMap;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const COMMIT_LUA: &str = r#"
-- KEYS: 1 ingest stream, 2 outbox, 3 due set, 4 events stream, then per
--       notification when coalescing: its window key and its held hash.
-- ARGV: 1 ingest group, 2 number of ids, 3 coalesce ms (0 = off), 4 events MAXLEN,
--       5 number of events, then the ids, then (event id, event body) pairs, then
--       (count, first notification, last notification) triples.
local group, n_ids, coalesce = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local n_events = tonumber(ARGV[5])
local a = 6
local ids = {}
for i = 1, n_ids do ids[i] = ARGV[a]; a = a + 1 end
for i = 1, n_events do
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[4], '*', 'id', ARGV[a], 'event', ARGV[a + 1])
  a = a + 2
end
local k, now = 5, nil
while a <= #ARGV do
  local count, first, last = tonumber(ARGV[a]), ARGV[a + 1], ARGV[a + 2]
  a = a + 3
  if coalesce == 0 then
    redis.call('XADD', KEYS[2], '*', 'count', 1, 'notification', first)
  else
    local window, held = KEYS[k], KEYS[k + 1]
    k = k + 2
    if redis.call('SET', window, '1', 'PX', coalesce, 'NX') then
      redis.call('XADD', KEYS[2], '*', 'count', 1, 'notification', first)
      count = count - 1
    end
    if count > 0 then
      redis.call('HINCRBY', held, 'count', count)
      redis.call('HSET', held, 'last', last, 'window', window)
      if not now then
        local t = redis.call('TIME')
        now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
      end
      local ttl = redis.call('PTTL', window)
      if ttl < 0 then ttl = 0 end
      redis.call('ZADD', KEYS[3], 'NX', now + ttl, held)
    end
  end
end
-- In chunks, to stay within Lua's stack.
for i = 1, n_ids, 1000 do
  local chunk = {unpack(ids, i, math.min(i + 999, n_ids))}
  redis.call('XACK', KEYS[1], group, unpack(chunk))
end
-- The stream keeps only what is not stored yet: everything below its oldest
-- entry still pending (any consumer's), or, with none pending, everything the
-- group has been handed, is stored and goes. One XTRIM drops whole nodes of
-- the stream, where an XDEL per entry cost Redis more than reading it
-- (bench/README.md, "Persistence"). A failed trim only leaves stored entries
-- in the stream for the next commit: it never fails the acknowledgement.
local pending, keep = redis.pcall('XPENDING', KEYS[1], group), nil
local groups = {}
if pending.err then
  pending = {0}
elseif pending[1] == 0 then
  groups = redis.pcall('XINFO', 'GROUPS', KEYS[1])
  if groups.err then groups = {} end
end
if pending[1] > 0 then
  keep = pending[2]
else
  for _, info in ipairs(groups) do
    local fields = {}
    for j = 1, #info, 2 do fields[info[j]] = info[j + 1] end
    if fields['name'] == group then
      local last = fields['last-delivered-id']
      local ms, seq = string.match(last, '^(%d+)-(%d+)$')
      -- The id after the last one handed out (a number Lua holds exactly).
      if seq and #seq < 15 then keep = ms .. '-' .. (tonumber(seq) + 1) else keep = last end
    end
  end
end
if keep then redis.pcall('XTRIM', KEYS[1], 'MINID', keep) end
return 0
"#;

const FLUSH_LUA: &str = r#"
-- KEYS: 1 due set, 2 outbox. ARGV: 1 coalesce ms, 2 at most this many windows.
-- Each window that ended gets one notification for its held messages, and the
-- next window opens with it.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
for _, held in ipairs(due) do
  local h = redis.call('HMGET', held, 'count', 'last', 'window')
  redis.call('ZREM', KEYS[1], held)
  redis.call('DEL', held)
  if h[1] and h[2] then
    redis.call('XADD', KEYS[2], '*', 'count', h[1], 'notification', h[2])
    if h[3] then redis.call('SET', h[3], '1', 'PX', ARGV[1]) end
  end
end
return #due
"#;

/// Windows flushed per call: a bound on the script's run time.
const FLUSH_LIMIT: u64 = 1000;

/// Notifications and events that follow from a stored batch.
#[derive(Debug, Default)]
pub struct Followups {
    pub notifications: Vec<Pending>,
    pub events: Vec<Event>,
}

#[derive(Clone)]
pub struct Outbox {
    commit: Script,
    coalesce_ms: u64,
    events_max_len: i64,
}

impl Outbox {
    pub fn new(coalesce_secs: u64, events_max_len: i64) -> Outbox {
        Outbox {
            commit: Script::from_lua(COMMIT_LUA),
            coalesce_ms: coalesce_secs.saturating_mul(1000),
            events_max_len: events_max_len.max(1),
        }
    }

    /// Writes `followups` and acknowledges (`XACK`, then `XTRIM` of what is
    /// stored) the ingest entries `ids` of `shard`, atomically, in one round
    /// trip. The batch's rooms are all of `shard`, so its outbox, events and
    /// coalescing keys are the shard's: one slot on Redis Cluster.
    pub async fn commit(
        &self,
        redis: &Client,
        shard: Shard,
        ids: &[String],
        followups: &Followups,
    ) -> Result<(), Error> {
        let mut keys = vec![
            shard.ingest(),
            shard.notify_outbox(),
            shard.notify_due(),
            shard.events(),
        ];
        let mut args: Vec<Value> = vec![
            INGEST_GROUP.into(),
            (ids.len() as i64).into(),
            (self.coalesce_ms as i64).into(),
            self.events_max_len.into(),
            (followups.events.len() as i64).into(),
        ];
        args.extend(ids.iter().map(|id| Value::from(id.as_str())));
        for event in &followups.events {
            args.push(event.id.as_str().into());
            args.push(event.body.as_str().into());
        }
        let json = |p: &Pending| serde_json::to_string(p).unwrap_or_default();
        if self.coalesce_ms == 0 {
            for pending in &followups.notifications {
                args.extend([1i64.into(), json(pending).into(), "".into()]);
            }
        } else {
            for (count, first, last) in by_recipient(&followups.notifications) {
                keys.push(shard.notify_window(first.room_id, &first.recipient));
                keys.push(shard.notify_held(first.room_id, &first.recipient));
                args.extend([(count as i64).into(), json(first).into(), json(last).into()]);
            }
        }
        let _: i64 = self.commit.evalsha_with_reload(redis, keys, args).await?;
        Ok(())
    }
}

/// `(count, first, last)` per recipient and room, in order of first appearance.
fn by_recipient(notifications: &[Pending]) -> Vec<(usize, &Pending, &Pending)> {
    let mut index: HashMap<(Uuid, &str), usize> = HashMap::new();
    let mut groups: Vec<(usize, &Pending, &Pending)> = Vec::new();
    for pending in notifications {
        match index.entry((pending.room_id, pending.recipient.as_str())) {
            std::collections::hash_map::Entry::Occupied(slot) => {
                let group = &mut groups[*slot.get()];
                group.0 += 1;
                group.2 = pending;
            }
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(groups.len());
                groups.push((1, pending, pending));
            }
        }
    }
    groups
}

/// Turns ended coalescing windows into notifications, until `shutdown`. Every
/// worker runs it, over every shard; the script makes each window's flush
/// happen once.
pub async fn flush_due(
    redis: Client,
    keyspace: Keyspace,
    coalesce_secs: u64,
    shutdown: CancellationToken,
) {
    let coalesce_ms = coalesce_secs.saturating_mul(1000);
    // A quarter of the window, at most a second: a summary is late by that much.
    let every = Duration::from_millis((coalesce_ms / 4).clamp(50, 1000));
    let script = Script::from_lua(FLUSH_LUA);
    let shards = keyspace.shards();
    loop {
        let flushes = shards.iter().map(|shard| {
            script.evalsha_with_reload::<i64, _, _>(
                &redis,
                vec![shard.notify_due(), shard.notify_outbox()],
                vec![coalesce_ms as i64, FLUSH_LIMIT as i64],
            )
        });
        let mut again_at_once = false;
        for flushed in futures::future::join_all(flushes).await {
            match flushed {
                Ok(n) => again_at_once |= n as u64 >= FLUSH_LIMIT,
                Err(error) => {
                    metrics::counter!(metric::REDIS_ERRORS).increment(1);
                    tracing::warn!(%error, "cannot flush coalesced notifications");
                }
            }
        }
        if again_at_once {
            continue;
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(room: Uuid, recipient: &str, text: &str) -> Pending {
        Pending {
            message_id: Uuid::now_v7(),
            room_id: room,
            recipient: recipient.into(),
            sender: "alice".into(),
            text: text.into(),
            created_at: time::OffsetDateTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn notifications_group_per_recipient_and_room() {
        let (r1, r2) = (Uuid::now_v7(), Uuid::now_v7());
        let list = vec![
            pending(r1, "bob", "1"),
            pending(r1, "carol", "2"),
            pending(r1, "bob", "3"),
            pending(r2, "bob", "4"),
            pending(r1, "bob", "5"),
        ];
        let groups: Vec<(usize, &str, &str, &str)> = by_recipient(&list)
            .into_iter()
            .map(|(n, first, last)| {
                (
                    n,
                    first.recipient.as_str(),
                    first.text.as_str(),
                    last.text.as_str(),
                )
            })
            .collect();
        assert_eq!(
            groups,
            vec![
                (3, "bob", "1", "5"),
                (1, "carol", "2", "2"),
                (1, "bob", "4", "4")
            ]
        );
    }
}
