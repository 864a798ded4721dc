//! Telling members, on every gateway, what happened to their rooms.
//!
//! Membership events travel on each member's own channel, not the room's: a
//! member who is being added is not subscribed to the room yet, and one being
//! removed must not see anything sent to the room after their `MemberRemoved`.
//! The hub applies them in order (joining or leaving the room's channel first,
//! see `hub::apply_membership`). All the events of one change go to a member in
//! a single publish, as frames separated by newlines (JSON text never contains
//! a raw newline), so a big room costs one publish per member, not one per
//! member per event.
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

/// Members were added to and/or removed from `room` (as it is now). Each removed
/// user gets their own `MemberRemoved`; every member now in the room gets one
/// `MemberAdded`/`MemberRemoved` per change, then `RoomUpdated`.
pub async fn members_changed(bus: &Bus, room: &Room, added: &[String], removed: &[String]) {
    let mut frames: Vec<String> = Vec::with_capacity(added.len() + removed.len() + 1);
    for user_id in added {
        frames.push(
            ServerFrame::MemberAdded {
                room_id: room.id,
                user_id,
            }
            .to_json(),
        );
    }
    for user_id in removed {
        frames.push(removed_frame(room.id, user_id));
    }
    frames.push(
        ServerFrame::RoomUpdated(RoomUpdate {
            room_id: room.id,
            room,
        })
        .to_json(),
    );
    let batch = frames.join("\n");
    let mut publishes: Vec<(String, String)> = removed
        .iter()
        .map(|user_id| {
            (
                keyspace::user_channel(user_id),
                removed_frame(room.id, user_id),
            )
        })
        .collect();
    publishes.extend(
        room.members
            .iter()
            .map(|member| (keyspace::user_channel(member), batch.clone())),
    );
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

fn removed_frame(room_id: Uuid, user_id: &str) -> String {
    ServerFrame::MemberRemoved { room_id, user_id }.to_json()
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
