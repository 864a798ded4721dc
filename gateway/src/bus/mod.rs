//! The message bus: Redis in a cluster, an in-process stand-in in the embedded mode.
//!
//! Everything the gateway asks of Redis goes through [`Bus`]: accepting a message
//! (sequence, dedupe, durable hand-off to the worker, fan-out), single-use
//! tickets, publishing events, and the readiness ping. The in-process bus keeps the
//! same semantics with a mutex and maps, so clients cannot tell the two apart.

use crate::hub::Hub;
use axum::extract::ws::Utf8Bytes;
use chatter_shared::ingest::{
    AppendLimits, AppendOutcome, Appender, Ending, IngestEntry, NewMessage, RecentLog, RecentScript,
};
use chatter_shared::keyspace;
use chatter_shared::presence::{PRESENCE_CHANNEL, PresenceScripts, changed_frame};
use chatter_shared::protocol::{MESSAGE_RECEIVED_HEAD, MessageReceivedTail};
use fred::prelude::*;
use std::borrow::Cow;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// How often the in-process bus forgets expired tickets and dedupe entries.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
#[error("the message bus is unavailable: {0}")]
pub struct BusError(String);

impl From<Error> for BusError {
    fn from(error: Error) -> BusError {
        BusError(error.to_string())
    }
}

// One `Bus` per process, cloned a handful of times: the variants' size
// difference costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Clone)]
pub enum Bus {
    Redis {
        client: Client,
        appender: Appender,
        recent: RecentScript,
        presence: PresenceScripts,
        /// This gateway's id in the presence keys.
        gateway_id: Arc<str>,
    },
    Local(Arc<LocalBus>),
}

impl Bus {
    /// The Redis bus; its appender's batching task stops with `stop`.
    pub fn redis(client: Client, limits: AppendLimits, stop: CancellationToken) -> Bus {
        Bus::Redis {
            appender: Appender::start(client.clone(), limits, stop),
            client,
            recent: RecentScript::default(),
            presence: PresenceScripts::default(),
            gateway_id: Uuid::new_v4().to_string().into(),
        }
    }

    /// Accepts a message; see `chatter_shared::ingest` for the Redis script.
    pub async fn append(
        &self,
        message: &NewMessage<'_>,
        floor: Option<i64>,
    ) -> Result<AppendOutcome, BusError> {
        match self {
            Bus::Redis { appender, .. } => Ok(appender.append(message, floor).await?),
            Bus::Local(local) => local.append(message, floor),
        }
    }

    /// Starts a new room's counter at 0, so its first message needs no floor read.
    pub async fn seed_room(&self, room_id: Uuid) -> Result<(), BusError> {
        match self {
            Bus::Redis { client, .. } => Ok(client
                .set(
                    keyspace::room_seq(room_id),
                    0,
                    None,
                    Some(SetOptions::NX),
                    false,
                )
                .await?),
            Bus::Local(local) => {
                local.lock().seqs.entry(room_id).or_insert(0);
                Ok(())
            }
        }
    }

    /// Marks a support chat as ended: from now on the bus refuses its messages
    /// ([`AppendOutcome::Ended`]). The database holds the same fact; a bus that
    /// lost the marker learns it again on the room's next cold start.
    pub async fn end_room(&self, room_id: Uuid, ending: Ending) -> Result<(), BusError> {
        match self {
            Bus::Redis { client, .. } => Ok(client
                .set(
                    keyspace::room_ended(room_id),
                    ending.as_str(),
                    None,
                    None,
                    false,
                )
                .await?),
            Bus::Local(local) => {
                local.lock().ended.insert(room_id, ending);
                Ok(())
            }
        }
    }

    /// Sends `frame` to every gateway's subscribers of `channel`.
    pub async fn publish(&self, channel: &str, frame: String) -> Result<(), BusError> {
        match self {
            Bus::Redis { client, .. } => Ok(client.publish(channel, frame).await?),
            Bus::Local(local) => {
                local.hub.route(channel, Utf8Bytes::from(frame));
                Ok(())
            }
        }
    }

    /// Stores a ticket for `ttl_secs` (first writer wins).
    pub async fn put_ticket(
        &self,
        token: &str,
        identity: String,
        ttl_secs: u64,
    ) -> Result<(), BusError> {
        match self {
            Bus::Redis { client, .. } => Ok(client
                .set(
                    keyspace::ticket(token),
                    identity,
                    Some(Expiration::EX(ttl_secs as i64)),
                    Some(SetOptions::NX),
                    false,
                )
                .await?),
            Bus::Local(local) => {
                let expires = Instant::now() + Duration::from_secs(ttl_secs);
                local
                    .lock()
                    .tickets
                    .entry(token.to_owned())
                    .or_insert((identity, expires));
                Ok(())
            }
        }
    }

    /// Removes and returns a live ticket: each works exactly once.
    pub async fn take_ticket(&self, token: &str) -> Result<Option<String>, BusError> {
        match self {
            Bus::Redis { client, .. } => Ok(client.getdel(keyspace::ticket(token)).await?),
            Bus::Local(local) => Ok(local
                .lock()
                .tickets
                .remove(token)
                .filter(|(_, expires)| Instant::now() < *expires)
                .map(|(identity, _)| identity)),
        }
    }

    /// The room's last seq and at most `limit` of its logged frames after
    /// `after_seq`, for `Resume`.
    pub async fn recent(
        &self,
        room_id: Uuid,
        after_seq: i64,
        limit: u64,
    ) -> Result<RecentLog, BusError> {
        match self {
            Bus::Redis { client, recent, .. } => {
                Ok(recent.read(client, room_id, after_seq, limit).await?)
            }
            Bus::Local(local) => {
                let state = local.lock();
                let take = usize::try_from(limit.max(1)).unwrap_or(usize::MAX);
                let frames = state.recent.get(&room_id).map(|(log, _)| {
                    log.iter()
                        .filter(|(seq, _)| *seq > after_seq)
                        .take(take)
                        .map(|(seq, frame)| (*seq, frame.as_str().to_owned()))
                        .collect()
                });
                Ok(RecentLog {
                    last_seq: state.seqs.get(&room_id).copied().unwrap_or(0),
                    frames: frames.unwrap_or_default(),
                })
            }
        }
    }

    /// The room's last assigned seq; `None` when the counter is gone (then the
    /// database's highest stored seq is the answer).
    pub async fn latest_seq(&self, room_id: Uuid) -> Result<Option<i64>, BusError> {
        match self {
            Bus::Redis { client, .. } => Ok(client.get(keyspace::room_seq(room_id)).await?),
            Bus::Local(local) => Ok(local.lock().seqs.get(&room_id).copied()),
        }
    }

    /// Replaces message `seq`'s frame in the room's recent log (after an edit or
    /// a deletion), so `Resume` replays the message as it now is.
    pub async fn rewrite_recent(
        &self,
        room_id: Uuid,
        seq: i64,
        frame: String,
    ) -> Result<(), BusError> {
        match self {
            Bus::Redis { client, recent, .. } => {
                Ok(recent.rewrite(client, room_id, seq, frame).await?)
            }
            Bus::Local(local) => {
                let mut state = local.lock();
                if let Some((log, _)) = state.recent.get_mut(&room_id)
                    && let Some(entry) = log.iter_mut().find(|(s, _)| *s == seq)
                {
                    entry.1 = Utf8Bytes::from(frame);
                }
                Ok(())
            }
        }
    }

    /// The first connection of each of `users` on this gateway: register
    /// them (and tell presence subscribers of those who just came online).
    pub async fn presence_up(&self, users: &[String]) -> Result<(), BusError> {
        match self {
            Bus::Redis {
                client,
                presence,
                gateway_id,
                ..
            } => {
                presence.up(client, gateway_id, users).await?;
                Ok(())
            }
            Bus::Local(local) => {
                for user_id in users {
                    local.lock().online.insert(user_id.to_owned());
                    local.hub.route(
                        PRESENCE_CHANNEL,
                        Utf8Bytes::from(changed_frame(user_id, true, None)),
                    );
                }
                Ok(())
            }
        }
    }

    /// The last connection of each of `users` on this gateway is gone; for
    /// each, in order, true if that took them offline in the whole cluster
    /// (decided once, by the script).
    pub async fn presence_down(&self, users: &[String]) -> Result<Vec<bool>, BusError> {
        match self {
            Bus::Redis {
                client,
                presence,
                gateway_id,
                ..
            } => Ok(presence.down(client, gateway_id, users).await?),
            Bus::Local(local) => {
                let now = time::OffsetDateTime::now_utc()
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_default();
                for user_id in users {
                    {
                        let mut state = local.lock();
                        state.online.remove(user_id);
                        state.last_seen.insert(user_id.to_owned(), now.clone());
                    }
                    let frame = changed_frame(user_id, false, Some(&now));
                    local.hub.route(PRESENCE_CHANNEL, Utf8Bytes::from(frame));
                }
                Ok(vec![true; users.len()])
            }
        }
    }

    /// Whether each of `users` is online anywhere, and when each was last seen.
    pub async fn presence_of(
        &self,
        users: &[String],
    ) -> Result<Vec<(bool, Option<String>)>, BusError> {
        match self {
            Bus::Redis { client, .. } => {
                let online = chatter_shared::presence::online(client, users).await?;
                let last_seen: Vec<Option<String>> = if users.is_empty() {
                    Vec::new()
                } else {
                    client
                        .hmget(chatter_shared::presence::LAST_SEEN, users.to_vec())
                        .await?
                };
                Ok(online.into_iter().zip(last_seen).collect())
            }
            Bus::Local(local) => {
                let state = local.lock();
                Ok(users
                    .iter()
                    .map(|u| (state.online.contains(u), state.last_seen.get(u).cloned()))
                    .collect())
            }
        }
    }

    /// Refreshes this gateway's liveness entry; true if it was missing (first
    /// beat, Redis lost its data, or the gateway was reaped after a stall), in
    /// which case its users must be registered again.
    pub async fn presence_heartbeat(&self, ttl: Duration) -> Result<bool, BusError> {
        match self {
            Bus::Redis {
                client, gateway_id, ..
            } => {
                let expires = time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000
                    + i128::try_from(ttl.as_millis() * 2 / 3).unwrap_or(0);
                let added: i64 = client
                    .zadd(
                        chatter_shared::presence::GATEWAYS,
                        None,
                        None,
                        false,
                        false,
                        (expires as f64, gateway_id.as_ref()),
                    )
                    .await?;
                Ok(added == 1)
            }
            Bus::Local(_) => Ok(false),
        }
    }

    /// Takes the users of gateways that stopped beating offline; the users who
    /// went offline (each reaped by exactly one gateway).
    pub async fn reap_dead_gateways(&self) -> Result<Vec<String>, BusError> {
        match self {
            Bus::Redis {
                client,
                presence,
                gateway_id,
                ..
            } => {
                let now =
                    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as f64;
                let dead: Vec<String> = client
                    .zrangebyscore(chatter_shared::presence::GATEWAYS, "-inf", now, false, None)
                    .await?;
                let mut offline = Vec::new();
                for gateway in dead.iter().filter(|g| g.as_str() != gateway_id.as_ref()) {
                    let users = presence.reap(client, gateway).await?;
                    tracing::info!(
                        gateway,
                        offline = users.len(),
                        "reaped a gateway that stopped beating"
                    );
                    offline.extend(users);
                }
                Ok(offline)
            }
            Bus::Local(_) => Ok(Vec::new()),
        }
    }

    /// Leaves the cluster's presence on a clean stop.
    pub async fn presence_leave(&self) -> Result<(), BusError> {
        match self {
            Bus::Redis {
                client, gateway_id, ..
            } => {
                let _: i64 = client
                    .zrem(chatter_shared::presence::GATEWAYS, gateway_id.as_ref())
                    .await?;
                Ok(())
            }
            Bus::Local(_) => Ok(()),
        }
    }

    /// Readiness: does the bus answer?
    pub async fn ping(&self) -> Result<(), BusError> {
        match self {
            Bus::Redis { client, .. } => Ok(client.ping::<String>(None).await.map(|_| ())?),
            Bus::Local(_) => Ok(()),
        }
    }
}

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

    fn append(
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
        let entry = IngestEntry {
            id: message.id,
            room_id: message.room_id,
            seq,
            sender_id: message.sender_id.to_owned(),
            body: message.body.to_owned(),
            temp_id: message.temp_id.map(str::to_owned),
            parent_id: message.parent_id,
            created_at: message.created_at,
        };
        // The queue is the durable stream's stand-in, bounded like it.
        if ingest.try_send(entry).is_err() {
            return Ok(AppendOutcome::BacklogFull);
        }
        state.seqs.insert(message.room_id, seq);
        if !temp_id.is_empty() {
            state
                .dedupe
                .insert(dedupe_key, (message.id, seq, Instant::now()));
        }
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
        };
        let frame = Utf8Bytes::from(format!("{MESSAGE_RECEIVED_HEAD}{seq}{}", tail.encode()));
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
}
