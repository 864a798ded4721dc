//! The dispatcher: reads the subscriber's message stream and hands each frame
//! to the local sockets that should see it.
//!
//! It never waits. Room frames are delivered straight into the sockets' queues;
//! membership events on users' channels are handed to the membership task with
//! `try_send`, and one that does not fit is dropped, counted, and replaced by a
//! re-check of that user against the database.

use super::{Hub, membership};
use crate::moderation::orders;
use axum::extract::ws::Utf8Bytes;
use chatter_shared::keyspace::{
    Keyspace, ROOM_CHANNEL_PREFIX, SUPPORT_AGENTS_CHANNEL, USER_CHANNEL_PREFIX,
};
use chatter_shared::presence::PRESENCE_CHANNEL;
use chatter_shared::protocol::{
    MESSAGE_RECEIVED_HEAD, TYPING_HEAD, is_membership_event, peek_message_received,
};
use chatter_shared::telemetry::metric;
use fred::clients::SubscriberClient;
use fred::prelude::*;
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

impl Hub {
    /// Hands a published frame to the sockets that should see it. Never waits:
    /// this is the dispatcher's whole loop body, and every room's fan-out goes
    /// through it.
    ///
    /// Membership events on a user's channel go to the membership task, which
    /// applies them (joining the room's channel first) before the user sees
    /// them, in order. If its queue is full the event is dropped and the user is
    /// re-checked against the database instead, which restores their rooms and
    /// tells them with `MemberAdded`/`MemberRemoved`.
    pub fn route(&self, channel: &str, frame: Utf8Bytes) {
        if channel.starts_with(ROOM_CHANNEL_PREFIX) {
            let text = frame.as_str();
            if text.starts_with(MESSAGE_RECEIVED_HEAD) {
                match peek_message_received(text) {
                    Some((room_id, seq)) => self.deliver_in_order(channel, room_id, seq, frame),
                    None => self.deliver(channel, &frame),
                }
            } else if text.starts_with(TYPING_HEAD) {
                self.deliver_typing(channel, &frame);
            } else if is_membership_event(frame.as_str()) {
                membership::deliver_room_change(self, channel, &frame);
            } else {
                self.deliver(channel, &frame);
            }
        } else if channel == PRESENCE_CHANNEL {
            self.deliver_presence(&frame);
        } else if channel == SUPPORT_AGENTS_CHANNEL {
            self.deliver(channel, &frame);
        } else if let Some(user_id) = channel.strip_prefix(USER_CHANNEL_PREFIX) {
            if frame.as_str().starts_with(orders::CLOSE_ORDER_HEAD) {
                if let Some(order) = orders::CloseOrder::parse(frame.as_str()) {
                    self.close_user(user_id, order.code(), &order.reason, order.keep);
                }
                return;
            }
            if !is_membership_event(frame.as_str()) {
                self.deliver(channel, &frame);
                return;
            }
            // Counted before it is queued, so the membership task never
            // applies an event that was not counted yet.
            let conns = self.conns_on(channel);
            for conn in &conns {
                conn.pending_events.fetch_add(1, Ordering::AcqRel);
            }
            match self.membership.try_send((channel.into(), frame)) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    conns.iter().for_each(|conn| conn.event_applied());
                    metrics::counter!(metric::MEMBERSHIP_EVENTS_DROPPED).increment(1);
                    let dropped = self.dropped_events.fetch_add(1, Ordering::Relaxed);
                    // Logged once per thousand: a flood would otherwise flood the log.
                    if dropped.is_multiple_of(1000) {
                        tracing::warn!(
                            dropped = dropped + 1,
                            "membership events arrive faster than they are applied; \
                             dropping them and re-checking those users against the database"
                        );
                    }
                    self.recheck_user_later(user_id);
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
    }
}

/// How many published frames the dispatcher may hold that it has taken off
/// the subscriber's stream but not routed yet. A burst (300 rooms of 50 made
/// at once: 15,000 membership events into one gateway) arrives faster than it
/// is routed; it waits here, in a queue that takes memory only while it
/// holds frames, instead of in fred's ring, which is allocated whole at start
/// (`StreamDepth::FAN_OUT`). Past this, frames stay in the ring, and once that
/// overflows too they are lost and repaired (`Arrival::Missed`).
const BACKLOG: usize = 64 * 1024;

/// What the dispatcher takes off the subscriber's stream, in arrival order.
enum Arrival {
    Published(fred::types::Message),
    /// The stream overflowed: this many frames were lost here.
    Missed(u64),
}

/// Reads published frames and hands them to local sockets.
/// On Redis Cluster a channel's wire name carries its shard tag; the hub
/// knows it by its gateway name (`keyspace.rs`).
///
/// Between two frames it routes, it moves everything that has arrived from
/// fred's ring into its own backlog, so the ring only has to hold what
/// arrives while one frame is routed.
pub(super) async fn dispatch(
    hub: Hub,
    subscriber: SubscriberClient,
    keyspace: Keyspace,
    shutdown: CancellationToken,
) {
    route_stream(hub, subscriber.message_rx(), keyspace, shutdown).await;
}

/// [`dispatch`]'s loop, over the subscriber's message stream.
async fn route_stream(
    hub: Hub,
    mut messages: broadcast::Receiver<fred::types::Message>,
    keyspace: Keyspace,
    shutdown: CancellationToken,
) {
    let mut backlog = VecDeque::new();
    loop {
        let arrival = match backlog.pop_front() {
            Some(arrival) => arrival,
            None => {
                // Empty again after a burst: give its memory back.
                backlog.shrink_to(64);
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    message = messages.recv() => match message {
                        Ok(message) => Arrival::Published(message),
                        Err(broadcast::error::RecvError::Lagged(missed)) => Arrival::Missed(missed),
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                }
            }
        };
        match arrival {
            Arrival::Published(message) => match frame_bytes(message.value) {
                Some(frame) => hub.route(&keyspace.from_wire(&message.channel), frame),
                None => {
                    tracing::warn!(channel = %message.channel, "dropping a non-text pub/sub payload");
                }
            },
            Arrival::Missed(missed) => {
                tracing::error!(
                    missed,
                    "gateway fell behind the pub/sub stream; frames were dropped"
                );
                // Messages are replayed from the recent logs; membership
                // events may be among the missed, so every user is re-checked.
                hub.begin_repair();
                hub.repair_later();
                hub.recheck_everyone();
            }
        }
        while backlog.len() < BACKLOG {
            match messages.try_recv() {
                Ok(message) => backlog.push_back(Arrival::Published(message)),
                Err(broadcast::error::TryRecvError::Lagged(missed)) => {
                    backlog.push_back(Arrival::Missed(missed));
                }
                // Closed: `recv` says so once the backlog is routed.
                Err(
                    broadcast::error::TryRecvError::Empty | broadcast::error::TryRecvError::Closed,
                ) => break,
            }
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

#[cfg(test)]
mod tests {
    use crate::hub::Hub;
    use axum::extract::ws::Utf8Bytes;
    use chatter_shared::keyspace;
    use chatter_shared::protocol::ServerFrame;
    use uuid::Uuid;

    fn published(channel: &str, text: String) -> fred::types::Message {
        fred::types::Message {
            channel: channel.into(),
            value: fred::types::Value::String(text.into()),
            kind: fred::types::MessageKind::Message,
            server: fred::types::config::Server::new("127.0.0.1", 6379),
        }
    }

    async fn texts(inbox: &mut crate::hub::outbox::Inbox, n: usize) -> Vec<String> {
        let mut texts = Vec::new();
        while texts.len() < n {
            match inbox.recv(false, false).await {
                crate::hub::outbox::Delivery::Frame(frame) => texts.push(frame.as_str().to_owned()),
                _ => panic!("expected a frame"),
            }
        }
        texts
    }

    /// The dispatcher takes frames off a ring far smaller than the burst, in
    /// order, and routes what it took before it stops; a ring that overflowed
    /// before it could read (lost frames: repaired elsewhere) does not stop it.
    #[tokio::test]
    async fn frames_are_routed_in_order_across_refills_and_after_a_loss() {
        let (hub, _events) = Hub::for_tests(1);
        let (_registration, mut inbox) = hub.register("carol", 256).await.expect("registered");
        let channel = keyspace::user_channel("carol");
        let (ring, messages) = tokio::sync::broadcast::channel(4);
        // Six into a ring of four before the dispatcher runs: two are lost.
        for n in 0..6 {
            ring.send(published(&channel, format!("f{n}")))
                .expect("sent");
        }
        let stop = tokio_util::sync::CancellationToken::new();
        let dispatcher = tokio::spawn(super::route_stream(
            hub.clone(),
            messages,
            keyspace::Keyspace::Single,
            stop.clone(),
        ));
        assert_eq!(texts(&mut inbox, 4).await, ["f2", "f3", "f4", "f5"]);
        // Then bursts of the ring's size, each taken whole.
        for burst in 0..10 {
            for n in 0..4 {
                ring.send(published(&channel, format!("b{burst}-{n}")))
                    .expect("sent");
            }
            let expected: Vec<String> = (0..4).map(|n| format!("b{burst}-{n}")).collect();
            assert_eq!(texts(&mut inbox, 4).await, expected);
        }
        // Closed with frames still in the ring: they are routed, then it ends.
        ring.send(published(&channel, "last".into())).expect("sent");
        drop(ring);
        dispatcher
            .await
            .expect("the dispatcher ends once its stream does");
        assert_eq!(texts(&mut inbox, 1).await, ["last"]);
    }

    fn added(room_id: Uuid, user_id: &str) -> Utf8Bytes {
        Utf8Bytes::from(ServerFrame::MemberAdded { room_id, user_id }.to_json())
    }

    /// The dispatcher's routing never waits: with the membership queue full, an
    /// event is dropped, counted, and its user put down for a re-check.
    #[tokio::test]
    async fn a_full_membership_queue_drops_the_event_and_asks_for_a_recheck() {
        let (hub, _events) = Hub::for_tests(1);
        let (registration, _inbox) = hub.register("carol", 8).await.expect("registered");
        let channel = keyspace::user_channel("carol");
        hub.route(&channel, added(Uuid::now_v7(), "carol"));
        assert!(
            hub.rechecks().take_users(10).is_empty(),
            "the first event fits"
        );
        hub.route(&channel, added(Uuid::now_v7(), "carol"));
        assert_eq!(hub.rechecks().take_users(10), vec!["carol".to_owned()]);
        assert_eq!(
            hub.dropped_events
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
        // Only the queued event counts as pending: the re-check waits for it alone.
        assert_eq!(
            registration
                .conn
                .pending_events
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
    }
}
