//! The bus in the embedded mode: one process, no Redis.
//!
//! The same semantics as the Redis bus (per-room counters, dedupe, the
//! recent log, ended chats, tickets, presence) with a mutex and maps, the
//! worker fed through a bounded queue and fan-out straight into the hub. The
//! frame and the stream entry come from `chatter_shared::ingest`, as the Redis
//! bus's do.

use super::BusError;
use crate::hub::Hub;
use axum::extract::ws::Utf8Bytes;
use chatter_shared::ingest::{
    AppendLimits, AppendOutcome, Ending, IngestEntry, NewMessage, RecentLog, received_frame,
};
use chatter_shared::keyspace;
use chatter_shared::presence::{PRESENCE_CHANNEL, changed_frame};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use uuid::Uuid;

/// How often the in-process bus forgets expired tickets and dedupe entries.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// The embedded mode's bus: per-room counters, dedupe and tickets in memory, the
/// worker fed through a bounded queue, fan-out straight into the hub.
pub struct LocalBus {
    state: Mutex<LocalState>,
    hub: Hub,
    limits: AppendLimits,
}

struct LocalState {
    seqs: HashMap<Uuid, i64>,
    /// `(room, sender, temp id)` → the original message and when it was seen.
    dedupe: HashMap<(Uuid, String, String), (Uuid, i64, Instant)>,
    tickets: HashMap<String, (String, Instant)>,
    /// Users with a connection, and when the others were last seen.
    online: HashSet<String>,
    last_seen: HashMap<String, String>,
    /// Each room's newest frames and when it last had one, for `Resume`.
    recent: HashMap<Uuid, (VecDeque<(i64, Utf8Bytes)>, Instant)>,
    /// Support chats that ended (Redis: their marker keys).
    ended: HashMap<Uuid, Ending>,
    /// `None` once the bus is closed for shutdown.
    ingest: Option<mpsc::Sender<IngestEntry>>,
}

impl LocalBus {
    /// A bus handing accepted messages to `ingest`; the receiver is the in-process worker.
    pub fn new(hub: Hub, ingest: mpsc::Sender<IngestEntry>, limits: AppendLimits) -> Arc<LocalBus> {
        let bus = Arc::new(LocalBus {
            state: Mutex::new(LocalState {
                seqs: HashMap::new(),
                dedupe: HashMap::new(),
                tickets: HashMap::new(),
                online: HashSet::new(),
                last_seen: HashMap::new(),
                recent: HashMap::new(),
                ended: HashMap::new(),
                ingest: Some(ingest),
            }),
            hub,
            limits,
        });
        let weak = Arc::downgrade(&bus);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(SWEEP_EVERY);
            loop {
                every.tick().await;
                let Some(bus) = weak.upgrade() else { return };
                bus.sweep();
            }
        });
        bus
    }

    /// Remembers the temp ids of messages stored before a restart (see
    /// `Store::recent_temp_ids`), each as seen when it was created, so the
    /// dedupe window runs from the original send.
    pub fn remember_sent(&self, messages: &[chatter_shared::protocol::MessageView]) {
        let now_utc = time::OffsetDateTime::now_utc();
        let now = Instant::now();
        let mut state = self.lock();
        for message in messages {
            let Some(temp_id) = &message.message_temp_id else {
                continue;
            };
            let age = (now_utc - message.created_at).max(time::Duration::ZERO);
            let seen = now
                .checked_sub(Duration::try_from(age).unwrap_or_default())
                .unwrap_or(now);
            state.dedupe.insert(
                (message.room_id, message.sender_id.clone(), temp_id.clone()),
                (message.id, message.seq, seen),
            );
        }
    }

    /// Whether `user_id` has a connection (the embedded mode has one gateway).
    pub fn is_online(&self, user_id: &str) -> bool {
        self.lock().online.contains(user_id)
    }

    /// Stops accepting messages; the worker drains what was accepted and stops.
    pub fn close(&self) {
        self.lock().ingest = None;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LocalState> {
        // A panic while holding this lock would be a bug; the state itself stays
        // consistent (each update is a single insert), so carry on with it.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn sweep(&self) {
        let now = Instant::now();
        let mut state = self.lock();
        state.tickets.retain(|_, (_, expires)| *expires > now);
        // Dedupe entries older than a day are dropped whatever the configured TTL:
        // the sweep only bounds memory; `append` checks the real TTL.
        let horizon = Duration::from_secs(24 * 3600);
        state
            .dedupe
            .retain(|_, (_, _, seen)| now.duration_since(*seen) < horizon);
        state
            .recent
            .retain(|_, (_, touched)| now.duration_since(*touched) < horizon);
    }

    // The rest is [`super::Bus`]'s methods of the same names, for the embedded mode.

    pub(super) fn append(
        &self,
        message: &NewMessage<'_>,
        floor: Option<i64>,
    ) -> Result<AppendOutcome, BusError> {
        let limits = &self.limits;
        let mut state = self.lock();
        let temp_id = message.temp_id.unwrap_or("");
        let dedupe_key = (
            message.room_id,
            message.sender_id.to_owned(),
            temp_id.to_owned(),
        );
        if !temp_id.is_empty()
            && let Some((id, seq, seen)) = state.dedupe.get(&dedupe_key)
            && seen.elapsed() < Duration::from_secs(limits.dedupe_ttl_secs)
        {
            return Ok(AppendOutcome::Duplicate { id: *id, seq: *seq });
        }
        if let Some(ending) = state.ended.get(&message.room_id) {
            return Ok(AppendOutcome::Ended(*ending));
        }
        let Some(ingest) = state.ingest.as_ref() else {
            return Err(BusError("the gateway is shutting down".into()));
        };
        let last = match (state.seqs.get(&message.room_id), floor) {
            (Some(last), _) => *last,
            (None, Some(floor)) => floor,
            (None, None) => return Ok(AppendOutcome::Cold),
        };
        let seq = last + 1;
        // The queue is the durable stream's stand-in, bounded like it.
        if ingest.try_send(message.entry(seq)).is_err() {
            return Ok(AppendOutcome::BacklogFull);
        }
        state.seqs.insert(message.room_id, seq);
        if !temp_id.is_empty() {
            state
                .dedupe
                .insert(dedupe_key, (message.id, seq, Instant::now()));
        }
        let frame = Utf8Bytes::from(received_frame(seq, &message.frame_tail()));
        let (log, touched) = state
            .recent
            .entry(message.room_id)
            .or_insert_with(|| (VecDeque::new(), Instant::now()));
        log.push_back((seq, frame.clone()));
        let keep = usize::try_from(limits.recent_log_size.max(1)).unwrap_or(usize::MAX);
        while log.len() > keep {
            log.pop_front();
        }
        *touched = Instant::now();
        // Delivered under the lock, so every socket sees a room's seqs in order.
        self.hub
            .deliver(&keyspace::room_channel(message.room_id), &frame);
        Ok(AppendOutcome::Accepted { seq })
    }

    pub(super) fn seed_room(&self, room_id: Uuid) {
        self.lock().seqs.entry(room_id).or_insert(0);
    }

    pub(super) fn end_room(&self, room_id: Uuid, ending: Ending) {
        self.lock().ended.insert(room_id, ending);
    }

    pub(super) fn publish(&self, channel: &str, frame: String) {
        self.hub.route(channel, Utf8Bytes::from(frame));
    }

    pub(super) fn put_ticket(&self, token: &str, identity: String, ttl_secs: u64) {
        let expires = Instant::now() + Duration::from_secs(ttl_secs);
        self.lock()
            .tickets
            .entry(token.to_owned())
            .or_insert((identity, expires));
    }

    pub(super) fn take_ticket(&self, token: &str) -> Option<String> {
        self.lock()
            .tickets
            .remove(token)
            .filter(|(_, expires)| Instant::now() < *expires)
            .map(|(identity, _)| identity)
    }

    pub(super) fn recent(&self, room_id: Uuid, after_seq: i64, limit: u64) -> RecentLog {
        let state = self.lock();
        let take = usize::try_from(limit.max(1)).unwrap_or(usize::MAX);
        let frames = state.recent.get(&room_id).map(|(log, _)| {
            log.iter()
                .filter(|(seq, _)| *seq > after_seq)
                .take(take)
                .map(|(seq, frame)| (*seq, frame.as_str().to_owned()))
                .collect()
        });
        RecentLog {
            last_seq: state.seqs.get(&room_id).copied().unwrap_or(0),
            frames: frames.unwrap_or_default(),
        }
    }

    pub(super) fn latest_seq(&self, room_id: Uuid) -> Option<i64> {
        self.lock().seqs.get(&room_id).copied()
    }

    pub(super) fn rewrite_recent(&self, room_id: Uuid, seq: i64, frame: String) {
        let mut state = self.lock();
        if let Some((log, _)) = state.recent.get_mut(&room_id)
            && let Some(entry) = log.iter_mut().find(|(s, _)| *s == seq)
        {
            entry.1 = Utf8Bytes::from(frame);
        }
    }

    pub(super) fn presence_up(&self, users: &[String]) {
        for user_id in users {
            self.lock().online.insert(user_id.to_owned());
            self.hub.route(
                PRESENCE_CHANNEL,
                Utf8Bytes::from(changed_frame(user_id, true, None)),
            );
        }
    }

    pub(super) fn presence_down(&self, users: &[String]) -> Vec<bool> {
        let now = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        for user_id in users {
            {
                let mut state = self.lock();
                state.online.remove(user_id);
                state.last_seen.insert(user_id.to_owned(), now.clone());
            }
            let frame = changed_frame(user_id, false, Some(&now));
            self.hub.route(PRESENCE_CHANNEL, Utf8Bytes::from(frame));
        }
        vec![true; users.len()]
    }

    pub(super) fn presence_of(&self, users: &[String]) -> Vec<(bool, Option<String>)> {
        let state = self.lock();
        users
            .iter()
            .map(|u| (state.online.contains(u), state.last_seen.get(u).cloned()))
            .collect()
    }
}
