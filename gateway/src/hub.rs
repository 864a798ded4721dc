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
//! Three parts:
//! - [`Hub`]: the registry, `channel → local connections`, shared by all tasks.
//! - the subscription manager task: the only place that sends SUBSCRIBE and
//!   UNSUBSCRIBE. It reconciles Redis with the registry, batching requests, so a
//!   leave racing a join can never leave a wanted channel unsubscribed.
//! - the dispatcher task: reads the subscriber's message stream and delivers.
//!   Membership events on user channels go to a small sequential task that joins or
//!   leaves room channels, because that needs a SUBSCRIBE round trip the dispatcher
//!   must not wait for.

use axum::extract::ws::Utf8Bytes;
use chatter_shared::keyspace::{self, ROOM_CHANNEL_PREFIX, USER_CHANNEL_PREFIX};
use chatter_shared::presence::PRESENCE_CHANNEL;
use chatter_shared::telemetry::metric;
use dashmap::DashMap;
use fred::clients::SubscriberClient;
use fred::prelude::*;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// How often the subscription manager re-checks every channel, healing anything a
/// failed SUBSCRIBE or a missed request left behind.
const RECONCILE_EVERY: Duration = Duration::from_secs(5);

/// One WebSocket connection as the hub sees it.
pub struct Conn {
    pub id: u64,
    pub user_id: String,
    outbox: mpsc::Sender<Utf8Bytes>,
    /// The rooms this connection may send to and receive from. A std mutex: held
    /// only for set operations, never across an `.await`.
    rooms: Mutex<HashSet<Uuid>>,
    /// Cancelled when the socket must close: its outbox overflowed, or (with
    /// `replaced` set) a newer connection of its user took its place.
    pub overflowed: CancellationToken,
    /// Set by [`Hub::replace_oldest`]: close with 4008, not as a slow consumer.
    replaced: AtomicBool,
    /// Whose presence changes this connection receives, once it subscribed.
    presence_scope: Mutex<Option<PresenceScope>>,
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
        match self.outbox.try_send(frame) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => self.overflowed.cancel(),
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    /// Whether a newer connection of the same user replaced this one (4008).
    pub fn is_replaced(&self) -> bool {
        self.replaced.load(Ordering::Relaxed)
    }

    pub fn is_member(&self, room_id: Uuid) -> bool {
        self.rooms
            .lock()
            .is_ok_and(|rooms| rooms.contains(&room_id))
    }

    fn add_room(&self, room_id: Uuid) -> bool {
        self.rooms
            .lock()
            .is_ok_and(|mut rooms| rooms.insert(room_id))
    }

    fn remove_room(&self, room_id: Uuid) -> bool {
        self.rooms
            .lock()
            .is_ok_and(|mut rooms| rooms.remove(&room_id))
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

    fn room_ids(&self) -> Vec<Uuid> {
        self.rooms
            .lock()
            .map(|rooms| rooms.iter().copied().collect())
            .unwrap_or_default()
    }
}

enum Request {
    /// Make Redis match the registry for these channels; reply when done.
    Sync(Vec<String>, Option<oneshot::Sender<Result<(), Error>>>),
}

/// The registry of local connections by channel. Cheap to clone.
#[derive(Clone)]
pub struct Hub {
    channels: Arc<DashMap<Box<str>, Vec<Arc<Conn>>>>,
    /// The subscription manager; `None` without Redis.
    requests: Option<mpsc::Sender<Request>>,
    membership: mpsc::Sender<(Box<str>, Utf8Bytes)>,
    next_id: Arc<AtomicU64>,
    /// Users whose first local connection opened or last one closed, for the
    /// presence task; a set (bounded by the number of users), not a queue.
    presence_dirty: Arc<Mutex<HashSet<String>>>,
    presence_wake: Arc<Notify>,
}

impl Hub {
    /// Creates the hub and starts its tasks; they stop when `shutdown` is cancelled.
    /// With a Redis subscriber it also runs the subscription manager and the
    /// dispatcher; without one (embedded mode) frames come in through
    /// [`Hub::deliver`] and [`Hub::route`].
    pub fn start(subscriber: Option<SubscriberClient>, shutdown: CancellationToken) -> Hub {
        let (membership, membership_rx) = mpsc::channel(4096);
        let (requests, request_rx) = match subscriber {
            Some(_) => {
                let (tx, rx) = mpsc::channel(4096);
                (Some(tx), Some(rx))
            }
            None => (None, None),
        };
        let hub = Hub {
            channels: Arc::new(DashMap::new()),
            requests,
            membership,
            next_id: Arc::new(AtomicU64::new(1)),
            presence_dirty: Arc::new(Mutex::new(HashSet::new())),
            presence_wake: Arc::new(Notify::new()),
        };
        if let (Some(subscriber), Some(request_rx)) = (subscriber, request_rx) {
            tokio::spawn(manage_subscriptions(
                hub.clone(),
                subscriber.clone(),
                request_rx,
                shutdown.clone(),
            ));
            tokio::spawn(dispatch(hub.clone(), subscriber, shutdown.clone()));
        }
        tokio::spawn(apply_membership(hub.clone(), membership_rx, shutdown));
        hub
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
    ) -> Result<(Registration, mpsc::Receiver<Utf8Bytes>), Error> {
        let (outbox, inbox) = mpsc::channel(queue);
        let conn = Arc::new(Conn {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            user_id: user_id.to_owned(),
            outbox,
            rooms: Mutex::new(HashSet::new()),
            overflowed: CancellationToken::new(),
            replaced: AtomicBool::new(false),
            presence_scope: Mutex::new(None),
        });
        let channel = keyspace::user_channel(user_id);
        if self.join(&conn, &channel) {
            self.mark_presence(user_id);
        }
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
            conn.overflowed.cancel();
            metrics::counter!(metric::REPLACED_CONNECTIONS).increment(1);
        }
    }

    /// Makes `conn` a member of `rooms` and waits until Redis delivers them.
    pub async fn join_rooms(&self, conn: &Arc<Conn>, rooms: Vec<Uuid>) -> Result<(), Error> {
        let mut wanted = Vec::with_capacity(rooms.len());
        for room_id in rooms {
            if conn.add_room(room_id) {
                let channel = keyspace::room_channel(room_id);
                self.join(conn, &channel);
                wanted.push(channel);
            }
        }
        self.sync(wanted).await
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
        self.channels
            .remove_if(channel, |_, members| members.is_empty())
            .is_some()
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
                let queued = conn.outbox.max_capacity() - conn.outbox.capacity();
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

    /// Asks the manager to reconcile `channels` and waits for it.
    async fn sync(&self, channels: Vec<String>) -> Result<(), Error> {
        let Some(requests) = &self.requests else {
            return Ok(());
        };
        let (reply, done) = oneshot::channel();
        requests
            .send(Request::Sync(channels, Some(reply)))
            .await
            .map_err(|_| Error::new(ErrorKind::Canceled, "gateway is shutting down"))?;
        done.await
            .map_err(|_| Error::new(ErrorKind::Canceled, "gateway is shutting down"))?
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

    /// Hands a published frame to the sockets that should see it. Membership
    /// events on a user's channel are applied (joining the room's channel) before
    /// the user sees them, by the membership task, in order.
    pub async fn route(&self, channel: &str, frame: Utf8Bytes) {
        if channel.starts_with(ROOM_CHANNEL_PREFIX) {
            if frame.as_str().starts_with(TYPING_HEAD) {
                self.deliver_typing(channel, &frame);
            } else {
                self.deliver(channel, &frame);
            }
        } else if channel == PRESENCE_CHANNEL {
            self.deliver_presence(&frame);
        } else if channel.starts_with(USER_CHANNEL_PREFIX) {
            if is_membership_event(&frame) {
                let _ = self.membership.send((channel.into(), frame)).await;
            } else {
                self.deliver(channel, &frame);
            }
        }
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
        channels.extend(self.conn.room_ids().into_iter().map(keyspace::room_channel));
        if self.conn.watches_presence() {
            channels.push(PRESENCE_CHANNEL.to_owned());
        }
        for channel in &channels[1..] {
            self.hub.leave(self.conn.id, channel);
        }
        // Fire and forget: if the queue is full, the periodic reconcile unsubscribes.
        if let Some(requests) = &self.hub.requests {
            let _ = requests.try_send(Request::Sync(channels, None));
        }
    }
}

/// The one task that talks SUBSCRIBE/UNSUBSCRIBE to Redis.
async fn manage_subscriptions(
    hub: Hub,
    subscriber: SubscriberClient,
    mut requests: mpsc::Receiver<Request>,
    shutdown: CancellationToken,
) {
    let mut subscribed: HashSet<String> = HashSet::new();
    let mut batch = Vec::with_capacity(256);
    let mut reconcile = tokio::time::interval(RECONCILE_EVERY);
    loop {
        let mut candidates: HashSet<String> = HashSet::new();
        let mut replies = Vec::new();
        tokio::select! {
            () = shutdown.cancelled() => return,
            received = requests.recv_many(&mut batch, 256) => {
                if received == 0 { return; }
                for Request::Sync(channels, reply) in batch.drain(..) {
                    candidates.extend(channels);
                    replies.extend(reply);
                }
            }
            _ = reconcile.tick() => {
                candidates.extend(subscribed.iter().cloned());
                candidates.extend(hub.channels.iter().map(|entry| entry.key().to_string()));
            }
        }
        let (mut add, mut remove) = (Vec::new(), Vec::new());
        for channel in candidates {
            let wanted = hub.channels.contains_key(channel.as_str());
            match (wanted, subscribed.contains(&channel)) {
                (true, false) => add.push(channel),
                (false, true) => remove.push(channel),
                _ => {}
            }
        }
        let mut result = Ok(());
        if !add.is_empty() {
            match subscriber.subscribe(add.clone()).await {
                Ok(()) => subscribed.extend(add),
                Err(error) => {
                    tracing::warn!(%error, "SUBSCRIBE failed; will retry");
                    result = Err(error);
                }
            }
        }
        if !remove.is_empty() {
            match subscriber.unsubscribe(remove.clone()).await {
                Ok(()) => remove.iter().for_each(|channel| {
                    subscribed.remove(channel);
                }),
                Err(error) => tracing::warn!(%error, "UNSUBSCRIBE failed; will retry"),
            }
        }
        for reply in replies {
            let _ = reply.send(result.clone());
        }
    }
}

/// Reads published frames and hands them to local sockets.
async fn dispatch(hub: Hub, subscriber: SubscriberClient, shutdown: CancellationToken) {
    let mut messages = subscriber.message_rx();
    loop {
        let message = tokio::select! {
            () = shutdown.cancelled() => return,
            message = messages.recv() => message,
        };
        match message {
            Ok(message) => {
                let Some(frame) = frame_bytes(message.value) else {
                    tracing::warn!(channel = %message.channel, "dropping a non-text pub/sub payload");
                    continue;
                };
                hub.route(&message.channel, frame).await;
            }
            Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                // Clients recover with Resume; this must never happen silently.
                tracing::error!(
                    missed,
                    "gateway fell behind the pub/sub stream; frames were dropped"
                );
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
    }
}

fn frame_bytes(value: Value) -> Option<Utf8Bytes> {
    match value {
        Value::String(text) => Utf8Bytes::try_from(text.into_inner()).ok(),
        Value::Bytes(bytes) => Utf8Bytes::try_from(bytes).ok(),
        _ => None,
    }
}

/// The start of every `Typing` frame (`user_id` is serialized first).
const TYPING_HEAD: &str = r#"{"type":"Typing","#;

/// Events on a user's channel that change or describe their rooms. They go
/// through one task, in order, so a client sees `MemberAdded` before the
/// `RoomUpdated` that follows it, and nothing of a room after `MemberRemoved`.
fn is_membership_event(frame: &Utf8Bytes) -> bool {
    const KINDS: [&str; 4] = ["MemberAdded", "MemberRemoved", "RoomUpdated", "RoomDeleted"];
    frame
        .as_str()
        .strip_prefix(r#"{"type":""#)
        .is_some_and(|rest| {
            KINDS
                .iter()
                .any(|kind| rest.starts_with(kind) && rest[kind.len()..].starts_with('"'))
        })
}

#[derive(serde::Deserialize)]
struct MembershipEvent {
    #[serde(rename = "type")]
    kind: String,
    data: MembershipData,
}

#[derive(serde::Deserialize)]
struct MembershipData {
    room_id: Uuid,
    #[serde(default)]
    user_id: Option<String>,
}

/// Applies membership events in order. When the event is about the channel's own
/// user, their local connections join the room's channel (waiting for the
/// subscription) or leave it *before* the event is forwarded: once a client sees
/// `MemberAdded` the room's messages reach it, and after `MemberRemoved` or
/// `RoomDeleted` nothing of the room does and its sends are refused.
async fn apply_membership(
    hub: Hub,
    mut events: mpsc::Receiver<(Box<str>, Utf8Bytes)>,
    shutdown: CancellationToken,
) {
    loop {
        let (channel, payload) = tokio::select! {
            () = shutdown.cancelled() => return,
            item = events.recv() => match item { Some(item) => item, None => return },
        };
        // One publish may carry several events, one per line (see `room_events`).
        if payload.as_str().contains('\n') {
            for line in payload.as_str().split('\n') {
                apply_event(&hub, &channel, Utf8Bytes::from(line.to_owned())).await;
            }
        } else {
            apply_event(&hub, &channel, payload).await;
        }
    }
}

async fn apply_event(hub: &Hub, channel: &str, frame: Utf8Bytes) {
    let Ok(event) = serde_json::from_str::<MembershipEvent>(frame.as_str()) else {
        tracing::warn!(%channel, "ignoring a malformed membership event");
        return;
    };
    let conns: Vec<Arc<Conn>> = hub
        .channels
        .get(channel)
        .map(|c| c.clone())
        .unwrap_or_default();
    let own_user = channel.strip_prefix(USER_CHANNEL_PREFIX);
    let about_own_user = event.data.user_id.is_some() && event.data.user_id.as_deref() == own_user;
    let room_id = event.data.room_id;
    let room_channel = keyspace::room_channel(room_id);
    match event.kind.as_str() {
        "MemberAdded" if about_own_user && !conns.is_empty() => {
            for conn in &conns {
                if conn.add_room(room_id) {
                    hub.join(conn, &room_channel);
                }
            }
            if let Err(error) = hub.sync(vec![room_channel]).await {
                tracing::warn!(%error, "could not subscribe to a room a local user joined");
            }
        }
        "MemberRemoved" if about_own_user => hub.leave_room(&conns, room_id),
        "RoomDeleted" => hub.leave_room(&conns, room_id),
        _ => {}
    }
    for conn in &conns {
        conn.push(frame.clone());
    }
}

impl Hub {
    /// Takes `conns` out of a room; the room's channel is unsubscribed once no
    /// local connection wants it.
    fn leave_room(&self, conns: &[Arc<Conn>], room_id: Uuid) {
        let channel = keyspace::room_channel(room_id);
        let mut emptied = false;
        for conn in conns {
            if conn.remove_room(room_id) {
                emptied |= self.leave(conn.id, &channel);
            }
        }
        if emptied && let Some(requests) = &self.requests {
            // Fire and forget: the periodic reconcile catches a full queue.
            let _ = requests.try_send(Request::Sync(vec![channel], None));
        }
    }
}
