//! The hub: which local sockets want which Redis channels, and delivery to them.
//!
//! Every gateway subscribes only to the channels its own connections need: a room's
//! channel while at least one local member is connected, and each connected user's
//! personal channel. Published frames arrive already serialized (see
//! `chatter_shared::ingest`), so delivery is a map lookup and a cheap clone of the
//! same bytes into each local socket's queue — no parsing, no per-recipient
//! serialization, no lock held across an `.await`.
//!
//! In the embedded mode there is no Redis: the in-process bus calls [`Hub::deliver`]
//! and [`Hub::route`] directly and there is nothing to subscribe to.
//!
//! This file is the registry ([`Hub`], `channel → local connections`, and each
//! connection's rooms), shared by all tasks. The tasks around it:
//! - `subscriptions`: the only place that sends SUBSCRIBE and UNSUBSCRIBE,
//!   reconciling Redis with the registry (and everything again after a
//!   reconnect);
//! - `dispatch`: reads the subscriber's stream and routes each frame, never
//!   waiting;
//! - `sequence`: each room's messages in seq order and once, and the repair of
//!   what a pub/sub reconnect made the gateway miss;
//! - `membership`: applies membership events in order, and re-checks local
//!   users' rooms against the database for the events that never came.

mod dispatch;
pub(crate) mod membership;
mod outbox;
mod sequence;
mod subscriptions;

pub use outbox::{Delivery, Inbox};
pub use sequence::RecentReader;

use axum::extract::ws::Utf8Bytes;
use chatter_shared::keyspace::{self, Keyspace, SUPPORT_AGENTS_CHANNEL, USER_CHANNEL_PREFIX};
use chatter_shared::presence::PRESENCE_CHANNEL;
use chatter_shared::protocol::CloseCode;
use chatter_shared::store::Store;
use chatter_shared::telemetry::metric;
use dashmap::DashMap;
use fred::clients::SubscriberClient;
use fred::prelude::*;
use membership::Rechecks;
use outbox::Outbox;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;
use subscriptions::Request;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Membership events waiting for the membership task. Past it the dispatcher
/// drops the event and the user is re-checked against the database instead.
const MEMBERSHIP_QUEUE: usize = 4096;

/// One WebSocket connection as the hub sees it.
pub struct Conn {
    pub id: u64,
    pub user_id: String,
    outbox: Outbox,
    /// The rooms this connection may send to and receive from. A std mutex: held
    /// only for set operations and the matching registry update, never across an
    /// `.await`.
    rooms: Mutex<Rooms>,
    /// Set by [`Hub::replace_oldest`]: close with 4008, not as a slow consumer.
    /// Both this and `ordered_close` reach the socket's task through its queue
    /// (`Outbox::must_close`), as the drain and an overflow do.
    replaced: AtomicBool,
    /// Told by a close order (kick, ban, single session, strikes; see
    /// `crate::moderation::orders`): the close code and reason to send.
    ordered_close: OnceLock<(CloseCode, Box<str>)>,
    /// Unique, and ordered by opening time (UUIDv7): a single-session order
    /// closes the user's connections older than the one it names.
    pub session: Uuid,
    /// Whose presence changes this connection receives, once it subscribed.
    presence_scope: Mutex<Option<PresenceScope>>,
    /// Set for a support agent's socket: it is on the support desk's channel.
    agent: AtomicBool,
    /// Membership events about this connection's user that the dispatcher has
    /// queued and the membership task not yet applied. The re-check leaves the
    /// connection alone meanwhile: its database read would only race them.
    pending_events: AtomicU32,
}

/// A connection's rooms, with what the membership re-check needs to know.
#[derive(Default)]
struct Rooms {
    ids: HashSet<Uuid>,
    /// Bumped by every membership event applied to the connection, so that a
    /// re-check can tell that its database read is older than what it holds.
    version: u64,
    /// Set once the rooms read at connect time have been joined; before that
    /// the re-check leaves the connection alone.
    loaded: bool,
}

/// What a re-check changed on one connection.
pub(crate) struct RoomsFixed {
    pub joined: Vec<Uuid>,
    pub left: Vec<Uuid>,
    /// Room channels no local connection wants any more.
    pub emptied: Vec<String>,
}

/// Whose `PresenceChanged` events a dashboard connection may receive.
pub enum PresenceScope {
    /// Support agents and admins see everyone.
    Everyone,
    /// Others see the users they share a room or a group with.
    Users(HashSet<String>),
}

impl Conn {
    /// Queues a frame for the socket. A full queue marks the connection as a slow
    /// consumer instead of letting memory grow.
    pub fn push(&self, frame: Utf8Bytes) {
        self.outbox.push(frame);
    }

    /// Whether a newer connection of the same user replaced this one (4008).
    pub fn is_replaced(&self) -> bool {
        self.replaced.load(Ordering::Relaxed)
    }

    /// The close a close order asked for, if one did.
    pub fn ordered_close(&self) -> Option<(CloseCode, &str)> {
        self.ordered_close
            .get()
            .map(|(code, reason)| (*code, reason.as_ref()))
    }

    pub fn is_member(&self, room_id: Uuid) -> bool {
        self.rooms().ids.contains(&room_id)
    }

    fn rooms(&self) -> MutexGuard<'_, Rooms> {
        // Each update is a single set operation, so the state stays consistent
        // even if a holder panicked: carry on with it.
        self.rooms
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The version to compare after a database read, or `None` while the
    /// connection's own rooms are still being loaded or events about them wait
    /// to be applied.
    pub(crate) fn settled_version(&self) -> Option<u64> {
        if self.pending_events.load(Ordering::Acquire) > 0 {
            return None;
        }
        let rooms = self.rooms();
        rooms.loaded.then_some(rooms.version)
    }

    /// One queued membership event about this connection's user was applied.
    pub(crate) fn event_applied(&self) {
        let _ = self
            .pending_events
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }

    fn may_see(&self, user_id: &str) -> bool {
        match self.presence_scope.lock().as_deref() {
            Ok(Some(PresenceScope::Everyone)) => true,
            Ok(Some(PresenceScope::Users(users))) => users.contains(user_id),
            _ => false,
        }
    }

    fn watches_presence(&self) -> bool {
        self.presence_scope
            .lock()
            .is_ok_and(|scope| scope.is_some())
    }
}

/// The registry of local connections by channel. Cheap to clone.
#[derive(Clone)]
pub struct Hub {
    channels: Arc<DashMap<Box<str>, Vec<Arc<Conn>>>>,
    /// The subscription manager; `None` without Redis.
    requests: Option<mpsc::Sender<Request>>,
    membership: mpsc::Sender<(Box<str>, Utf8Bytes)>,
    /// Users whose rooms must be read again from the database.
    rechecks: Arc<Rechecks>,
    /// Membership events dropped because the membership task was behind.
    dropped_events: Arc<AtomicU64>,
    next_id: Arc<AtomicU64>,
    /// Users whose first local connection opened or last one closed, for the
    /// presence task; a set (bounded by the number of users), not a queue.
    presence_dirty: Arc<Mutex<HashSet<String>>>,
    presence_wake: Arc<Notify>,
    /// The last seq delivered per room (see `sequence`).
    cursors: Arc<DashMap<Uuid, sequence::Cursor>>,
    /// Reads missed frames after a reconnect; `None` without Redis.
    reader: Option<RecentReader>,
}

impl Hub {
    /// Creates the hub and starts its tasks; they stop when `shutdown` is cancelled.
    /// With a Redis subscriber it also runs the subscription manager and the
    /// dispatcher; without one (embedded mode) frames come in through
    /// [`Hub::deliver`] and [`Hub::route`]. Either way the membership task and
    /// the re-check (every `recheck_every`, against `store`) run.
    pub fn start(
        subscriber: Option<(SubscriberClient, RecentReader)>,
        store: Store,
        recheck_every: Duration,
        shutdown: CancellationToken,
    ) -> Hub {
        let (membership, membership_rx) = mpsc::channel(MEMBERSHIP_QUEUE);
        let (requests, request_rx) = match subscriber {
            Some(_) => {
                let (tx, rx) = mpsc::channel(4096);
                (Some(tx), Some(rx))
            }
            None => (None, None),
        };
        let (subscriber, reader) = subscriber.unzip();
        let keyspace = reader
            .as_ref()
            .map_or(Keyspace::Single, |reader| reader.script.keyspace());
        let mut hub = Hub::registry(requests, membership);
        hub.reader = reader;
        if let (Some(subscriber), Some(request_rx)) = (subscriber, request_rx) {
            // Taken now, after `init`: the first connection's event is not a reconnect.
            let reconnects = subscriber.reconnect_rx();
            tokio::spawn(subscriptions::manage_subscriptions(
                hub.clone(),
                subscriber.clone(),
                keyspace,
                request_rx,
                reconnects,
                shutdown.clone(),
            ));
            // Unconstrained: the dispatcher is every room's fan-out. Under
            // tokio's cooperative budget it yields every 128 frames and queues
            // behind every socket task; during a burst of 15,000 membership
            // events that let its backlog grow to ~400 ms for every room. It
            // waits on nothing but its stream, so running it unconstrained costs
            // other tasks at most the time to drain what has arrived.
            tokio::spawn(tokio::task::unconstrained(dispatch::dispatch(
                hub.clone(),
                subscriber,
                keyspace,
                shutdown.clone(),
            )));
        }
        tokio::spawn(membership::apply_events(
            hub.clone(),
            membership_rx,
            shutdown.clone(),
        ));
        tokio::spawn(membership::recheck(
            hub.clone(),
            store,
            recheck_every,
            shutdown,
        ));
        hub
    }

    /// The registry alone, its tasks not started.
    fn registry(
        requests: Option<mpsc::Sender<Request>>,
        membership: mpsc::Sender<(Box<str>, Utf8Bytes)>,
    ) -> Hub {
        Hub {
            channels: Arc::new(DashMap::new()),
            requests,
            membership,
            rechecks: Arc::new(Rechecks::default()),
            dropped_events: Arc::new(AtomicU64::new(0)),
            next_id: Arc::new(AtomicU64::new(1)),
            presence_dirty: Arc::new(Mutex::new(HashSet::new())),
            presence_wake: Arc::new(Notify::new()),
            cursors: Arc::new(DashMap::new()),
            reader: None,
        }
    }

    /// A registry whose membership queue holds `queue` events and is never
    /// drained: for tests of what the dispatcher does without any task.
    #[cfg(test)]
    pub(crate) fn for_tests(queue: usize) -> (Hub, mpsc::Receiver<(Box<str>, Utf8Bytes)>) {
        let (membership, events) = mpsc::channel(queue);
        (Hub::registry(None, membership), events)
    }

    /// Registers a new connection for `user_id` on the user's own channel and
    /// waits until Redis delivers it. Rooms come next ([`Hub::join_rooms`]): the
    /// user channel is live *before* the caller reads the user's rooms, so a room
    /// they are added to meanwhile reaches them by the list or by `MemberAdded`.
    /// The returned [`Registration`] unregisters the connection when dropped.
    pub async fn register(
        &self,
        user_id: &str,
        queue: usize,
    ) -> Result<(Registration, Inbox), Error> {
        let conn = Arc::new(Conn {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            user_id: user_id.to_owned(),
            outbox: Outbox::new(queue),
            rooms: Mutex::new(Rooms::default()),
            replaced: AtomicBool::new(false),
            ordered_close: OnceLock::new(),
            session: Uuid::now_v7(),
            presence_scope: Mutex::new(None),
            agent: AtomicBool::new(false),
            pending_events: AtomicU32::new(0),
        });
        let channel = keyspace::user_channel(user_id);
        if self.join(&conn, &channel) {
            self.mark_presence(user_id);
        }
        let inbox = Inbox::new(conn.clone());
        let registration = Registration {
            hub: self.clone(),
            conn,
        };
        metrics::gauge!(metric::CONNECTIONS).increment(1.0);
        self.sync(vec![channel]).await?;
        Ok((registration, inbox))
    }

    /// `MAX_CONNECTIONS_PER_USER`: asks the oldest of `user_id`'s connections on
    /// this gateway to close (4008) until at most `max` are left. The user
    /// channel's list is in registration order and holds exactly the user's
    /// connections, so it is the per-user count: no second map to keep bounded,
    /// and it is gone with the user's last connection. Connections already asked
    /// to close are not counted, so concurrent registrations converge.
    pub fn replace_oldest(&self, user_id: &str, max: usize) {
        let channel = keyspace::user_channel(user_id);
        let Some(members) = self.channels.get(channel.as_str()) else {
            return;
        };
        let live = members.iter().filter(|c| !c.is_replaced()).count();
        let excess = live.saturating_sub(max);
        for conn in members.iter().filter(|c| !c.is_replaced()).take(excess) {
            conn.replaced.store(true, Ordering::Relaxed);
            conn.outbox.must_close();
            metrics::counter!(metric::REPLACED_CONNECTIONS).increment(1);
        }
    }

    /// Closes `user_id`'s connections on this gateway with `code`, except, when
    /// `keep` names a connection (single session), that one and any newer.
    pub fn close_user(&self, user_id: &str, code: CloseCode, reason: &str, keep: Option<Uuid>) {
        for conn in self.conns_on(&keyspace::user_channel(user_id)) {
            if keep.is_some_and(|keep| conn.session >= keep) {
                continue;
            }
            let _ = conn.ordered_close.set((code, reason.into()));
            conn.outbox.must_close();
        }
    }

    /// Makes `conn` a member of `rooms` (read from the database after
    /// [`Hub::register`]) and waits until Redis delivers them. If a membership
    /// event reached the connection meanwhile, the list may already be stale:
    /// the user is re-checked at once.
    pub async fn join_rooms(&self, conn: &Arc<Conn>, rooms: Vec<Uuid>) -> Result<(), Error> {
        let mut wanted = Vec::with_capacity(rooms.len());
        let raced = {
            let mut held = conn.rooms();
            for room_id in rooms {
                if held.ids.insert(room_id) {
                    let channel = keyspace::room_channel(room_id);
                    self.join(conn, &channel);
                    wanted.push(channel);
                }
            }
            held.loaded = true;
            held.version != 0
        };
        if raced {
            self.recheck_user(&conn.user_id);
        }
        self.sync(wanted).await
    }

    /// Puts `conn` in a room it was just made a member of, without waiting for
    /// the `MemberAdded` event (the support desk: the asker's and the claiming
    /// agent's socket write at once), and waits until Redis delivers the room.
    pub async fn enter_room(&self, conn: &Arc<Conn>, room_id: Uuid) -> Result<(), Error> {
        if self.add_room(conn, room_id) {
            self.sync(vec![keyspace::room_channel(room_id)]).await?;
        }
        Ok(())
    }

    /// A membership event put `conn` in `room_id`; true if it was not there yet
    /// (the room's channel then needs a subscription).
    pub(crate) fn add_room(&self, conn: &Arc<Conn>, room_id: Uuid) -> bool {
        let mut held = conn.rooms();
        held.version += 1;
        let added = held.ids.insert(room_id);
        if added {
            self.join(conn, &keyspace::room_channel(room_id));
        }
        added
    }

    /// A membership event took `conn` out of `room_id`; true if that left the
    /// room's channel without local connections.
    pub(crate) fn remove_room(&self, conn: &Conn, room_id: Uuid) -> bool {
        let mut held = conn.rooms();
        held.version += 1;
        held.ids.remove(&room_id) && self.leave(conn.id, &keyspace::room_channel(room_id))
    }

    /// Makes `conn`'s rooms equal to `wanted`, read from the database, unless a
    /// membership event was applied since `version` was taken (the read may
    /// then be older than what the connection holds: `None`, nothing changed).
    pub(crate) fn fix_rooms(
        &self,
        conn: &Arc<Conn>,
        wanted: &HashSet<Uuid>,
        version: u64,
    ) -> Option<RoomsFixed> {
        let mut held = conn.rooms();
        if held.version != version {
            return None;
        }
        let left: Vec<Uuid> = held.ids.difference(wanted).copied().collect();
        let joined: Vec<Uuid> = wanted.difference(&held.ids).copied().collect();
        let mut emptied = Vec::new();
        for room_id in &left {
            held.ids.remove(room_id);
            let channel = keyspace::room_channel(*room_id);
            if self.leave(conn.id, &channel) {
                emptied.push(channel);
            }
        }
        for room_id in &joined {
            held.ids.insert(*room_id);
            self.join(conn, &keyspace::room_channel(*room_id));
        }
        if !left.is_empty() || !joined.is_empty() {
            held.version += 1;
        }
        Some(RoomsFixed {
            joined,
            left,
            emptied,
        })
    }

    /// The local connections on `channel`, as they are now.
    pub(crate) fn conns_on(&self, channel: &str) -> Vec<Arc<Conn>> {
        self.channels
            .get(channel)
            .map(|members| members.clone())
            .unwrap_or_default()
    }

    /// Every user with a connection on this gateway.
    pub(crate) fn local_users(&self) -> Vec<String> {
        self.channels
            .iter()
            .filter_map(|entry| {
                entry
                    .key()
                    .strip_prefix(USER_CHANNEL_PREFIX)
                    .map(str::to_owned)
            })
            .collect()
    }

    /// Asks for `user_id`'s rooms to be read again from the database soon.
    pub(crate) fn recheck_user(&self, user_id: &str) {
        self.rechecks.user(user_id);
    }

    /// The same at the next re-check tick: for a flood of dropped events, so the
    /// re-check stays one query a tick instead of one after another.
    pub(crate) fn recheck_user_later(&self, user_id: &str) {
        self.rechecks.user_later(user_id);
    }

    /// Asks for every local user's rooms to be read again (events were lost).
    pub(crate) fn recheck_everyone(&self) {
        self.rechecks.everyone();
    }

    pub(crate) fn rechecks(&self) -> &Rechecks {
        &self.rechecks
    }

    /// Adds `conn` to `channel`; true if it is the channel's first local connection.
    fn join(&self, conn: &Arc<Conn>, channel: &str) -> bool {
        let mut members = self.channels.entry(channel.into()).or_default();
        if !members.iter().any(|c| c.id == conn.id) {
            members.push(conn.clone());
        }
        members.len() == 1
    }

    /// Removes a connection from `channel`; true if it was the last local one.
    fn leave(&self, conn_id: u64, channel: &str) -> bool {
        if let Some(mut members) = self.channels.get_mut(channel) {
            members.retain(|c| c.id != conn_id);
        }
        let emptied = self
            .channels
            .remove_if(channel, |_, members| members.is_empty())
            .is_some();
        if emptied {
            self.forget_cursor(channel);
        }
        emptied
    }

    /// After a reconnect: every room parks live frames until repaired.
    pub(crate) fn begin_repair(&self) {
        if self.reader.is_some() {
            self.park_all();
        }
    }

    /// Replays what the rooms missed while parked, in a task of its own.
    pub(crate) fn repair_later(&self) {
        if let Some(reader) = self.reader.clone() {
            let hub = self.clone();
            tokio::spawn(async move { hub.repair(&reader).await });
        }
    }

    fn mark_presence(&self, user_id: &str) {
        if let Ok(mut dirty) = self.presence_dirty.lock() {
            dirty.insert(user_id.to_owned());
        }
        self.presence_wake.notify_one();
    }

    /// Waits until some user's local presence may have changed.
    pub async fn presence_changed(&self) {
        self.presence_wake.notified().await
    }

    /// The users to reconcile; they are forgotten until marked again.
    pub fn take_presence_changes(&self) -> Vec<String> {
        self.presence_dirty
            .lock()
            .map(|mut dirty| dirty.drain().collect())
            .unwrap_or_default()
    }

    /// Puts a user back to be reconciled later (a Redis call failed).
    pub fn mark_presence_again(&self, user_id: &str) {
        if let Ok(mut dirty) = self.presence_dirty.lock() {
            dirty.insert(user_id.to_owned());
        }
    }

    /// Whether this gateway holds a connection of `user_id`.
    pub fn has_local_user(&self, user_id: &str) -> bool {
        self.channels
            .contains_key(keyspace::user_channel(user_id).as_str())
    }

    /// Tells every local socket that the pod drains: each closes at a moment
    /// of its own within the drain window. One sweep at the start of the
    /// drain, instead of every socket's task polling the shared shutdown token
    /// at each of its wake-ups (each poll of a waiting future takes that token's
    /// lock). A socket that starts after the sweep sees the token at its start.
    pub fn drain(&self) {
        for entry in self.channels.iter() {
            if entry.key().starts_with(USER_CHANNEL_PREFIX) {
                entry.value().iter().for_each(|conn| conn.outbox.drain());
            }
        }
    }

    /// Frames waiting in local socket queues, over all sockets and in the
    /// fullest one, for the metrics sampler.
    pub fn queued_frames(&self) -> (usize, usize) {
        let (mut total, mut fullest) = (0, 0);
        // Every connection is on exactly one user channel.
        for entry in self.channels.iter() {
            if !entry.key().starts_with(USER_CHANNEL_PREFIX) {
                continue;
            }
            for conn in entry.value() {
                let queued = conn.outbox.len();
                total += queued;
                fullest = fullest.max(queued);
            }
        }
        (total, fullest)
    }

    /// Starts sending `conn` the presence changes `scope` allows.
    pub async fn subscribe_presence(
        &self,
        conn: &Arc<Conn>,
        scope: PresenceScope,
    ) -> Result<(), Error> {
        if let Ok(mut current) = conn.presence_scope.lock() {
            *current = Some(scope);
        }
        self.join(conn, PRESENCE_CHANNEL);
        self.sync(vec![PRESENCE_CHANNEL.to_owned()]).await
    }

    /// Puts an agent's socket on the support desk's channel, so it hears the
    /// queue (`UserJoined`, `RemoveUser`, …) from every gateway.
    pub async fn join_agents(&self, conn: &Arc<Conn>) -> Result<(), Error> {
        conn.agent.store(true, Ordering::Relaxed);
        self.join(conn, SUPPORT_AGENTS_CHANNEL);
        self.sync(vec![SUPPORT_AGENTS_CHANNEL.to_owned()]).await
    }

    /// Presence events go only to subscribers allowed to see that user.
    fn deliver_presence(&self, frame: &Utf8Bytes) {
        self.deliver_where(PRESENCE_CHANNEL, frame, |conn, user_id| {
            conn.may_see(user_id)
        });
    }

    /// Delivers a frame about one user (`data.user_id`) to the connections on
    /// `channel` that `wants` it.
    fn deliver_where(&self, channel: &str, frame: &Utf8Bytes, wants: impl Fn(&Conn, &str) -> bool) {
        #[derive(serde::Deserialize)]
        struct Event<'a> {
            #[serde(borrow)]
            data: Data<'a>,
        }
        #[derive(serde::Deserialize)]
        struct Data<'a> {
            #[serde(borrow)]
            user_id: std::borrow::Cow<'a, str>,
        }
        let Ok(event) = serde_json::from_str::<Event>(frame.as_str()) else {
            return;
        };
        if let Some(members) = self.channels.get(channel) {
            for conn in members
                .iter()
                .filter(|conn| wants(conn, &event.data.user_id))
            {
                conn.push(frame.clone());
            }
        }
    }

    /// Asks the manager to reconcile `channels` and waits for it. Nothing to
    /// reconcile (a user with no rooms) costs no wait behind a SUBSCRIBE.
    pub(crate) async fn sync(&self, channels: Vec<String>) -> Result<(), Error> {
        let Some(requests) = &self.requests else {
            return Ok(());
        };
        if channels.is_empty() {
            return Ok(());
        }
        let (reply, done) = oneshot::channel();
        requests
            .send(Request::Sync(channels, Some(reply)))
            .await
            .map_err(|_| Error::new(ErrorKind::Canceled, "gateway is shutting down"))?;
        done.await
            .map_err(|_| Error::new(ErrorKind::Canceled, "gateway is shutting down"))?
    }

    /// Asks the manager to reconcile `channels` without waiting. If its queue is
    /// full, the periodic reconcile does it.
    pub(crate) fn sync_later(&self, channels: Vec<String>) {
        if let Some(requests) = &self.requests
            && !channels.is_empty()
        {
            let _ = requests.try_send(Request::Sync(channels, None));
        }
    }

    /// Delivers `frame` to every local connection on `channel`.
    pub fn deliver(&self, channel: &str, frame: &Utf8Bytes) {
        let Some(members) = self.channels.get(channel) else {
            return;
        };
        for conn in members.iter() {
            conn.push(frame.clone());
        }
        metrics::counter!(metric::FRAMES_OUT).increment(members.len() as u64);
        // Once per message per gateway, not per recipient.
        if let Some(created_at) = chatter_shared::protocol::peek_created_at(frame.as_str()) {
            let latency = (time::OffsetDateTime::now_utc() - created_at).as_seconds_f64();
            metrics::histogram!(metric::DELIVERY_SECONDS).record(latency.max(0.0));
        }
    }

    /// `Typing` goes to the room's sockets except the typist's own.
    fn deliver_typing(&self, channel: &str, frame: &Utf8Bytes) {
        self.deliver_where(channel, frame, |conn, typist| conn.user_id != typist);
    }
}

/// A registered connection; dropping it removes the connection from every channel.
pub struct Registration {
    hub: Hub,
    pub conn: Arc<Conn>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        metrics::gauge!(metric::CONNECTIONS).decrement(1.0);
        let user_channel = keyspace::user_channel(&self.conn.user_id);
        if self.hub.leave(self.conn.id, &user_channel) {
            self.hub.mark_presence(&self.conn.user_id);
        }
        let mut channels = vec![user_channel];
        {
            let mut held = self.conn.rooms();
            for room_id in held.ids.drain() {
                let channel = keyspace::room_channel(room_id);
                self.hub.leave(self.conn.id, &channel);
                channels.push(channel);
            }
        }
        if self.conn.watches_presence() {
            self.hub.leave(self.conn.id, PRESENCE_CHANNEL);
            channels.push(PRESENCE_CHANNEL.to_owned());
        }
        if self.conn.agent.load(Ordering::Relaxed) {
            self.hub.leave(self.conn.id, SUPPORT_AGENTS_CHANNEL);
            channels.push(SUPPORT_AGENTS_CHANNEL.to_owned());
        }
        // Fire and forget: if the queue is full, the periodic reconcile unsubscribes.
        self.hub.sync_later(channels);
    }
}
