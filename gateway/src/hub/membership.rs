//! Keeping each local socket's rooms true to the database.
//!
//! A socket's room set (in the hub) decides what it receives and what it may
//! send, `Resume`, `Typing` and `MarkRead` included. Two things keep it right:
//!
//! - **Events, at once.** Membership events about a user arrive on their own
//!   channel and are applied here in publish order ([`apply_events`]): the
//!   socket joins the room's channel (and the task waits for `SUBSCRIBE`) before
//!   `MemberAdded` is forwarded, and leaves it before `MemberRemoved` or
//!   `RoomDeleted` is. Events are taken in batches, so a flood of them costs one
//!   `SUBSCRIBE` round trip per batch rather than one per event.
//! - **A re-check, for events that never came** ([`recheck`]). A publish made
//!   while the subscriber was reconnecting is lost, and the dispatcher drops an
//!   event rather than wait for a full queue. So every local user's rooms are
//!   read again from the database once per `MEMBERSHIP_RECHECK_SECS`, spread
//!   evenly over the interval, in an order random per gateway but the same in
//!   every round (so each user's turn comes once per interval), from a random
//!   start (20,000
//!   users at 30 s are about 670 a second, in one query per batch of
//!   [`RECHECK_BATCH`] users every [`RECHECK_TICK`]). A room the database no
//!   longer lists is left and the socket is told `MemberRemoved`; a room it
//!   lists that the socket lacks is joined and the socket is told
//!   `MemberAdded`. Users whose events were dropped are re-checked at the next
//!   tick (at most [`RECHECK_BATCH`] a tick, so thousands of drops still cost
//!   one query a tick), and every user within [`URGENT_SPREAD`] after the
//!   subscriber reconnects or falls behind.
//!
//! The re-check must not undo a newer event, nor report one that is merely on
//! its way: each connection counts the events queued for it, and its rooms
//! carry a version bumped by every event applied to them. The re-check skips a
//! connection with queued events, notes the version before its query, and
//! changes nothing on a connection whose version moved meanwhile; either way
//! the user is looked at again at the next tick.
//!
//! A change's one publish to the members who stayed, on the room's channel, is
//! delivered from here too ([`deliver_room_change`]).

use super::{Conn, Hub};
use axum::extract::ws::Utf8Bytes;
use chatter_shared::keyspace::{self, USER_CHANNEL_PREFIX};
use chatter_shared::protocol::ServerFrame;
use chatter_shared::store::Store;
use chatter_shared::telemetry::metric;
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Membership events applied together, behind one `SUBSCRIBE` round trip.
const EVENT_BATCH: usize = 256;
/// Users whose rooms are read in one database query.
pub const RECHECK_BATCH: usize = 256;
/// How often the re-check takes its next slice of users.
pub const RECHECK_TICK: Duration = Duration::from_millis(100);
/// After a subscriber reconnect, every local user is re-checked within this
/// (or within the interval, if that is shorter).
pub const URGENT_SPREAD: Duration = Duration::from_secs(2);

/// Requests for re-checks, from the dispatcher, the subscription manager and
/// connection set-up. A set of users (bounded by the local users), not a queue.
#[derive(Default)]
pub struct Rechecks {
    users: Mutex<HashSet<String>>,
    everyone: AtomicBool,
    wake: Notify,
}

impl Rechecks {
    /// Re-check `user_id` now (its event was dropped, or its connect-time
    /// rooms were overtaken).
    pub(crate) fn user(&self, user_id: &str) {
        self.user_later(user_id);
        self.wake.notify_one();
    }

    /// Re-check `user_id` at the next tick (it had events still queued): not at
    /// once, or the task would spin until they are applied.
    pub(crate) fn user_later(&self, user_id: &str) {
        if let Ok(mut users) = self.users.lock() {
            users.insert(user_id.to_owned());
        }
    }

    pub(crate) fn everyone(&self) {
        self.everyone.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    /// At most `max` of the users asked for; the rest wait for the next tick,
    /// so even thousands of dropped events cost one query per tick.
    pub(crate) fn take_users(&self, max: usize) -> Vec<String> {
        let Ok(mut users) = self.users.lock() else {
            return Vec::new();
        };
        let taken: Vec<String> = users.iter().take(max).cloned().collect();
        for user in &taken {
            users.remove(user);
        }
        taken
    }
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

/// Applies membership events from users' channels, in order. When an event is
/// about the channel's own user, their local connections join the room's
/// channel (the subscription confirmed) or leave it *before* the event is
/// forwarded: once a client sees `MemberAdded` the room's messages reach it,
/// and after `MemberRemoved` or `RoomDeleted` nothing of the room does and its
/// sends are refused.
pub(crate) async fn apply_events(
    hub: Hub,
    mut events: mpsc::Receiver<(Box<str>, Utf8Bytes)>,
    shutdown: CancellationToken,
) {
    let mut batch = Vec::with_capacity(EVENT_BATCH);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            received = events.recv_many(&mut batch, EVENT_BATCH) => if received == 0 { return },
        }
        let mut subscribe = Vec::new();
        let mut forward: Vec<(Vec<Arc<Conn>>, Utf8Bytes)> = Vec::with_capacity(batch.len());
        for (channel, payload) in batch.drain(..) {
            // One publish may carry several events, one per line (see `room_events`).
            if payload.as_str().contains('\n') {
                for line in payload.as_str().split('\n') {
                    let frame = Utf8Bytes::from(line.to_owned());
                    forward.extend(apply_event(&hub, &channel, frame, &mut subscribe));
                }
            } else {
                forward.extend(apply_event(&hub, &channel, payload, &mut subscribe));
            }
            // Applied to the registry (forwarding follows): the re-check may
            // look at these connections again.
            for conn in hub.conns_on(&channel) {
                conn.event_applied();
            }
        }
        if !subscribe.is_empty()
            && let Err(error) = hub.sync(subscribe).await
        {
            tracing::warn!(%error, "could not subscribe to rooms local users joined");
        }
        for (conns, frame) in forward {
            for conn in &conns {
                conn.push(frame.clone());
            }
        }
    }
}

/// Applies one event to the registry; returns who should see it. Room channels
/// that now need a subscription are added to `subscribe`.
fn apply_event(
    hub: &Hub,
    channel: &str,
    frame: Utf8Bytes,
    subscribe: &mut Vec<String>,
) -> Option<(Vec<Arc<Conn>>, Utf8Bytes)> {
    let Ok(event) = serde_json::from_str::<MembershipEvent>(frame.as_str()) else {
        tracing::warn!(%channel, "ignoring a malformed membership event");
        return None;
    };
    let conns = hub.conns_on(channel);
    if conns.is_empty() {
        return None;
    }
    let own_user = channel.strip_prefix(USER_CHANNEL_PREFIX);
    let about_own_user = event.data.user_id.is_some() && event.data.user_id.as_deref() == own_user;
    let room_id = event.data.room_id;
    let mut emptied = false;
    match event.kind.as_str() {
        "MemberAdded" if about_own_user => {
            let mut joined = false;
            for conn in &conns {
                joined |= hub.add_room(conn, room_id);
            }
            if joined {
                subscribe.push(keyspace::room_channel(room_id));
            }
        }
        "MemberRemoved" if about_own_user => {
            for conn in &conns {
                emptied |= hub.remove_room(conn, room_id);
            }
        }
        "RoomDeleted" => {
            for conn in &conns {
                emptied |= hub.remove_room(conn, room_id);
            }
        }
        _ => {}
    }
    if emptied {
        hub.sync_later(vec![keyspace::room_channel(room_id)]);
    }
    Some((conns, frame))
}

/// A membership change's publish on the room's channel, for the members who
/// stayed: `MemberAdded`/`MemberRemoved` per changed user, then `RoomUpdated`,
/// one per line. The users the change is about are left out (their own channel
/// tells them), even if their sockets are still, or already, on the channel.
pub(crate) fn deliver_room_change(hub: &Hub, channel: &str, payload: &Utf8Bytes) {
    #[derive(serde::Deserialize)]
    struct Update<'a> {
        #[serde(borrow)]
        data: Change<'a>,
    }
    #[derive(serde::Deserialize)]
    struct Change<'a> {
        #[serde(borrow, default)]
        added: Vec<Cow<'a, str>>,
        #[serde(borrow, default)]
        removed: Vec<Cow<'a, str>>,
    }
    let text = payload.as_str();
    let last = text.rsplit('\n').next().unwrap_or(text);
    let change = serde_json::from_str::<Update>(last).ok();
    let about: HashSet<&str> = change
        .iter()
        .flat_map(|update| update.data.added.iter().chain(&update.data.removed))
        .map(|user| user.as_ref())
        .collect();
    let frames: Vec<Utf8Bytes> = if text.contains('\n') {
        text.split('\n')
            .map(|line| Utf8Bytes::from(line.to_owned()))
            .collect()
    } else {
        vec![payload.clone()]
    };
    for conn in hub.conns_on(channel) {
        if about.contains(conn.user_id.as_str()) {
            continue;
        }
        for frame in &frames {
            conn.push(frame.clone());
        }
    }
}

/// One pass over every local user, spread evenly over `spread`.
struct Round {
    users: Vec<String>,
    done: usize,
    started: Instant,
    spread: Duration,
}

impl Round {
    /// Users are taken in the order of `order`'s hash of their id: random per
    /// gateway (so gateways do not query the same users together), but the
    /// same in every round, so each user's turn comes once per interval rather
    /// than anywhere between two rounds.
    fn new(mut users: Vec<String>, spread: Duration, order: &RandomState) -> Round {
        users.sort_by_cached_key(|user| order.hash_one(user));
        Round {
            users,
            done: 0,
            started: Instant::now(),
            spread,
        }
    }

    fn finished(&self) -> bool {
        self.done >= self.users.len()
    }

    /// The users whose turn has come by `now`.
    fn due(&mut self, now: Instant) -> Vec<String> {
        let total = self.users.len();
        let elapsed = now.saturating_duration_since(self.started);
        let until = if elapsed >= self.spread || self.spread.is_zero() {
            total
        } else {
            let share = (total as u128 * elapsed.as_nanos()).div_ceil(self.spread.as_nanos());
            usize::try_from(share).unwrap_or(total).min(total)
        };
        let due = self.users[self.done.min(until)..until].to_vec();
        self.done = self.done.max(until);
        due
    }
}

/// Re-reads every local user's rooms once per `every`, and sooner for users
/// (or everyone) asked for through [`Rechecks`].
pub(crate) async fn recheck(hub: Hub, store: Store, every: Duration, shutdown: CancellationToken) {
    let every = every.max(RECHECK_TICK);
    let order = RandomState::new();
    let mut round = Round::new(Vec::new(), every, &order);
    // A random first start, so gateways started together do not query together.
    let mut next_round = Instant::now() + every.mul_f64(rand::random_range(0.0..1.0));
    let mut tick = tokio::time::interval(RECHECK_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
            () = hub.rechecks().wake.notified() => {}
        }
        let now = Instant::now();
        if hub.rechecks().everyone.swap(false, Ordering::AcqRel) {
            round = Round::new(hub.local_users(), every.min(URGENT_SPREAD), &order);
            next_round = now + every;
        } else if round.finished() && now >= next_round {
            round = Round::new(hub.local_users(), every, &order);
            next_round = now + every;
        }
        let mut due = hub.rechecks().take_users(RECHECK_BATCH);
        due.extend(round.due(now));
        for users in due.chunks(RECHECK_BATCH) {
            if shutdown.is_cancelled() {
                return;
            }
            recheck_users(&hub, &store, users).await;
        }
    }
}

/// One query for `users`' rooms, then every local connection of theirs made to
/// match it (unless an event overtook the query).
async fn recheck_users(hub: &Hub, store: &Store, users: &[String]) {
    // Versions first: an event applied after this point is newer than the read.
    // A connection with events still queued is looked at again next tick.
    let mut targets: Vec<(Arc<Conn>, u64)> = Vec::new();
    for user in users {
        for conn in hub.conns_on(&keyspace::user_channel(user)) {
            match conn.settled_version() {
                Some(version) => targets.push((conn, version)),
                None => hub.rechecks().user_later(user),
            }
        }
    }
    if targets.is_empty() {
        return;
    }
    let rows = match store.room_ids_of_users(users).await {
        Ok(rows) => rows,
        Err(error) => {
            tracing::warn!(%error, users = users.len(), "membership re-check: cannot read rooms; retrying next round");
            return;
        }
    };
    let mut rooms_of: HashMap<String, HashSet<Uuid>> = HashMap::new();
    for (user, room) in rows {
        rooms_of.entry(user).or_default().insert(room);
    }
    let none = HashSet::new();
    let mut subscribe = Vec::new();
    let mut unsubscribe = Vec::new();
    let mut joined_by: Vec<(Arc<Conn>, Vec<Uuid>)> = Vec::new();
    for (conn, version) in targets {
        let wanted = rooms_of.get(&conn.user_id).unwrap_or(&none);
        let Some(fixed) = hub.fix_rooms(&conn, wanted, version) else {
            // An event overtook the read: look again once it is applied.
            hub.rechecks().user_later(&conn.user_id);
            continue;
        };
        if fixed.joined.is_empty() && fixed.left.is_empty() {
            continue;
        }
        tracing::warn!(
            user = %conn.user_id,
            conn = conn.id,
            joined = fixed.joined.len(),
            left = fixed.left.len(),
            "membership re-check corrected a socket's rooms (an event was lost or dropped)"
        );
        metrics::counter!(metric::MEMBERSHIP_RECHECK_FIXES, "change" => "left")
            .increment(fixed.left.len() as u64);
        metrics::counter!(metric::MEMBERSHIP_RECHECK_FIXES, "change" => "joined")
            .increment(fixed.joined.len() as u64);
        // Already out of the room's channel: nothing of it follows this frame.
        for room_id in &fixed.left {
            let frame = ServerFrame::MemberRemoved {
                room_id: *room_id,
                user_id: &conn.user_id,
            };
            conn.push(Utf8Bytes::from(frame.to_json()));
        }
        unsubscribe.extend(fixed.emptied);
        subscribe.extend(
            fixed
                .joined
                .iter()
                .map(|room| keyspace::room_channel(*room)),
        );
        if !fixed.joined.is_empty() {
            joined_by.push((conn, fixed.joined));
        }
    }
    hub.sync_later(unsubscribe);
    if !subscribe.is_empty()
        && let Err(error) = hub.sync(subscribe).await
    {
        tracing::warn!(%error, "membership re-check: could not subscribe to joined rooms");
    }
    // After the subscription: once told, the socket receives the room.
    for (conn, rooms) in joined_by {
        for room_id in rooms {
            let frame = ServerFrame::MemberAdded {
                room_id,
                user_id: &conn.user_id,
            };
            conn.push(Utf8Bytes::from(frame.to_json()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Round, deliver_room_change};
    use crate::hub::Hub;
    use axum::extract::ws::Utf8Bytes;
    use chatter_shared::keyspace;
    use chatter_shared::protocol::{RoomUpdate, ServerFrame};
    use chatter_shared::store::{Room, RoomKind};
    use std::time::Duration;

    /// A change's one publish on the room's channel reaches the members who
    /// stayed, frame by frame, and not the user it is about.
    #[tokio::test]
    async fn a_room_change_skips_the_users_it_is_about() {
        let (hub, _events) = Hub::for_tests(8);
        let room = Room {
            id: uuid::Uuid::now_v7(),
            kind: RoomKind::Group,
            name: None,
            owner_id: "alice".into(),
            members: vec!["alice".into(), "bob".into()],
            metadata: serde_json::json!({}),
            created_at: time::OffsetDateTime::now_utc(),
        };
        let mut inboxes = Vec::new();
        for user in ["alice", "bob", "carol"] {
            let (registration, inbox) = hub.register(user, 8).await.expect("registered");
            hub.join_rooms(&registration.conn, vec![room.id])
                .await
                .expect("joined");
            inboxes.push((user, registration, inbox));
        }
        let removed = ["carol".to_owned()];
        let change = [
            ServerFrame::MemberRemoved {
                room_id: room.id,
                user_id: "carol",
            }
            .to_json(),
            ServerFrame::RoomUpdated(RoomUpdate::new(&room, &[], &removed)).to_json(),
        ]
        .join("\n");
        deliver_room_change(
            &hub,
            &keyspace::room_channel(room.id),
            &Utf8Bytes::from(change),
        );
        for (user, _registration, inbox) in &mut inboxes {
            let mut frames = Vec::new();
            while let Some(frame) = inbox.try_recv() {
                frames.push(frame.as_str().to_owned());
            }
            if *user == "carol" {
                assert!(frames.is_empty(), "carol is told on her own channel");
            } else {
                assert_eq!(frames.len(), 2, "{user}: {frames:?}");
                assert!(frames[0].starts_with(r#"{"type":"MemberRemoved""#));
                assert!(frames[1].contains(r#""member_count":2"#), "{}", frames[1]);
            }
        }
    }

    #[test]
    fn a_round_spreads_its_users_over_the_interval() {
        let users: Vec<String> = (0..100).map(|i| format!("u{i}")).collect();
        let mut round = Round::new(users, Duration::from_secs(10), &Default::default());
        let start = round.started;
        assert!(round.due(start).is_empty());
        assert_eq!(round.due(start + Duration::from_secs(1)).len(), 10);
        assert_eq!(round.due(start + Duration::from_secs(1)).len(), 0);
        assert_eq!(round.due(start + Duration::from_millis(5500)).len(), 45);
        assert!(!round.finished());
        assert_eq!(round.due(start + Duration::from_secs(11)).len(), 45);
        assert!(round.finished());
    }
}
