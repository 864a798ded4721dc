//! Telling members, on every gateway, what happened to their rooms.
//!
//! Events about a user's own membership travel on that user's channel, not the
//! room's: a member who is being added is not subscribed to the room yet, and
//! one being removed must not see anything sent to the room after their
//! `MemberRemoved`. The hub applies them in order (joining or leaving the room's
//! channel first, see `hub/membership.rs`). What the other members learn of a
//! change goes once on the room's channel, one frame per line (JSON text never
//! contains a raw newline), and the hub leaves out the sockets of the users the
//! change is about.
//!
//! Events about a room's messages and readers (`MessageEdited`, `MessageDeleted`,
//! `ReadReceipt`, `Typing`) go on the room's channel, like messages.

use crate::bus::Bus;
use chatter_shared::keyspace;
use chatter_shared::protocol::{RoomUpdate, ServerFrame};
use chatter_shared::store::Room;
use uuid::Uuid;

/// A new room: each member is told they were added.
pub async fn room_created(bus: &Bus, room: &Room) {
    let publishes = room.members.iter().map(|member| {
        let frame = ServerFrame::MemberAdded {
            room_id: room.id,
            user_id: member,
        }
        .to_json();
        (keyspace::user_channel(member), frame)
    });
    publish_all(bus, publishes.collect()).await;
}

/// Members were added to and/or removed from `room` (as it is now). Each
/// removed user gets `MemberRemoved` and each added user `MemberAdded` about
/// themself, on their own channel (for an added user, like a new room: the
/// details are `GET /rooms/{id}`). The members who stayed get one publish on
/// the room's channel: a `MemberAdded`/`MemberRemoved` per changed user, then
/// `RoomUpdated` with the change and the member count. So a change of `k` users
/// costs `k + 1` publishes and O(`k`) bytes whatever the room's size, where a
/// batch with the member list on every member's channel cost O(members²).
pub async fn members_changed(bus: &Bus, room: &Room, added: &[String], removed: &[String]) {
    let mut lines: Vec<String> = Vec::with_capacity(added.len() + removed.len() + 1);
    let mut publishes: Vec<(String, String)> = Vec::with_capacity(added.len() + removed.len() + 1);
    for user_id in added {
        let frame = ServerFrame::MemberAdded {
            room_id: room.id,
            user_id,
        }
        .to_json();
        publishes.push((keyspace::user_channel(user_id), frame.clone()));
        lines.push(frame);
    }
    for user_id in removed {
        let frame = ServerFrame::MemberRemoved {
            room_id: room.id,
            user_id,
        }
        .to_json();
        publishes.push((keyspace::user_channel(user_id), frame.clone()));
        lines.push(frame);
    }
    lines.push(ServerFrame::RoomUpdated(RoomUpdate::new(room, added, removed)).to_json());
    publishes.push((keyspace::room_channel(room.id), lines.join("\n")));
    publish_all(bus, publishes).await;
}

/// The room is gone: every member who was in it is told.
pub async fn room_deleted(bus: &Bus, room_id: Uuid, members: &[String]) {
    let frame = ServerFrame::RoomDeleted { room_id }.to_json();
    let publishes = members
        .iter()
        .map(|member| (keyspace::user_channel(member), frame.clone()));
    publish_all(bus, publishes.collect()).await;
}

/// A frame for every member socket of the room (the hub leaves the typist out
/// of `Typing`).
pub async fn to_room(bus: &Bus, room_id: Uuid, frame: String) {
    publish_all(bus, vec![(keyspace::room_channel(room_id), frame)]).await;
}

/// Publishes concurrently (the Redis client pipelines them). A failed publish is
/// logged, not retried: the change itself is committed, and a client that
/// missed the event sees it in `GET /rooms` on its next load.
async fn publish_all(bus: &Bus, publishes: Vec<(String, String)>) {
    let sends = publishes.into_iter().map(|(channel, frame)| async move {
        if let Err(error) = bus.publish(&channel, frame).await {
            tracing::warn!(%error, "could not publish a room event");
        }
    });
    futures::future::join_all(sends).await;
}
