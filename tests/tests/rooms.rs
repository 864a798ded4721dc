//! The rooms API of docs/API.md end to end, on both backends: membership changes
//! while sockets are open on two gateways, deleting a room, direct rooms, the
//! room list, threads, edits, deletes, read receipts, typing, and HTTP publish.
//! Who may call what, and every kind of bad input, are the tables in
//! `rooms_matrix.rs`.

use anyhow::{Context, Result, ensure};
use chatter_tests::chat::{
    FRAME_WAIT, change_members, connect_ready, create_room_with, ensure_users, frames_until,
    history_until, list_rooms, post_message, recv_in_room, recv_matching, send_and_confirm,
    send_message, stored_messages,
};
use chatter_tests::{Auth, Cluster, WsClient, eventually};
use reqwest::Method;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// How long a test listens to show that something does not arrive.
const SILENCE: Duration = Duration::from_millis(700);

chatter_tests::on_every_backend!(
    membership_changes_reach_open_sockets_on_both_gateways: |b| b,
    deleting_a_room_tells_every_member_and_refuses_what_follows: |b| b,
    direct_rooms_are_one_per_pair_and_read_as_a_conversation: |b| b,
    room_list_shows_activity_order_unread_counts_and_pages: |b| b,
    room_details_show_the_room_and_its_latest_messages: |b| b,
    threads_edits_and_deletes_reach_members_on_both_gateways: |b| b,
    read_receipts_follow_markers_that_only_move_forward: |b| b,
    typing_reaches_the_other_members_only_and_is_throttled: |b| b,
    http_publish_dedupes_and_orders_with_socket_sends: |b| b.env("FRAMES_PER_SEC", "1000"),
    sockets_opened_all_at_once_each_get_their_own_rooms: |b| b,
);

// ------------------------------------------------------------------------- helpers

fn id_of(value: &Value, field: &str) -> Result<String> {
    value[field]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("{field} in {value}"))
}

/// Creates a group room owned by `owner`; returns its id.
async fn group(cluster: &Cluster, owner: &str, members: &[&str]) -> Result<String> {
    let room = create_room_with(
        cluster,
        0,
        owner,
        &json!({"members": members, "name": "a group"}),
    )
    .await?;
    id_of(&room, "id")
}

/// Sends over `ws` and returns the message id, failing unless it is confirmed.
async fn say(ws: &mut WsClient, room: &str, text: &str, temp_id: &str) -> Result<String> {
    let confirmation = send_and_confirm(ws, room, text, temp_id).await?;
    ensure!(
        confirmation["confirmed"] == true,
        "{text:?} refused: {confirmation}"
    );
    id_of(&confirmation, "message_id")
}

/// The `MessageReceived` of message `id` (others are dropped).
async fn receive(ws: &mut WsClient, id: &str) -> Result<Value> {
    recv_matching(ws, "MessageReceived", &format!("of {id}"), |m| {
        m["id"] == id
    })
    .await
}

fn sorted(members: &Value) -> Vec<String> {
    let mut members: Vec<String> = members
        .as_array()
        .map(|list| {
            list.iter()
                .filter_map(|m| m.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    members.sort();
    members
}

/// Reads `ws` up to the `RoomUpdated` of `room` that reports `change` (`{added,
/// removed}`) and `member_count`, checks that `event {room_id: room, user_id:
/// user}` came before it and that the update describes the room without its
/// member list (docs/API.md: the list is `GET /rooms/{id}`); returns the update.
async fn event_then_update(
    ws: &mut WsClient,
    event: &str,
    room: &str,
    user: &str,
    change: Value,
    member_count: usize,
) -> Result<Value> {
    // The update that ends the wait is the first one after the event.
    let event_seen = std::cell::Cell::new(false);
    let what = format!("{event} of {user}, then RoomUpdated with {change}");
    let frames = frames_until(ws, &what, |f| {
        if f["type"] == event && f["data"]["room_id"] == room && f["data"]["user_id"] == user {
            event_seen.set(true);
        }
        event_seen.get()
            && f["type"] == "RoomUpdated"
            && f["data"]["room_id"] == room
            && f["data"]["added"] == change["added"]
            && f["data"]["removed"] == change["removed"]
    })
    .await?;
    let update = frames.last().map(|f| f["data"].clone()).unwrap_or_default();
    for field in ["kind", "owner_id", "metadata", "created_at"] {
        ensure!(
            !update[field].is_null(),
            "RoomUpdated has {field}: {update}"
        );
    }
    ensure!(
        update.get("name").is_some(),
        "RoomUpdated has name: {update}"
    );
    ensure!(
        update["member_count"] == member_count,
        "RoomUpdated counts {member_count} members: {update}"
    );
    ensure!(
        update.get("members").is_none(),
        "RoomUpdated carries the change, not the member list: {update}"
    );
    Ok(update)
}

/// Reads `ws` up to `MemberAdded {room_id: room, user_id: user}`: what an
/// added user's own sockets are told (the room's details are `GET /rooms/{id}`).
async fn told_added(ws: &mut WsClient, room: &str, user: &str) -> Result<Value> {
    recv_matching(ws, "MemberAdded", &format!("of {user} to {room}"), |m| {
        m["room_id"] == room && m["user_id"] == user
    })
    .await
}

/// Shows that `ws` gets no `MessageReceived` of `room` any more: every member
/// still in `room` has received `sent` (so both gateways have fanned them out),
/// then `marker` — a message in another room the socket's user is in — arrives
/// with nothing from `room` before it.
async fn nothing_from_room_before(
    ws: &mut WsClient,
    room: &str,
    marker_id: &str,
    who: &str,
) -> Result<()> {
    let frames = frames_until(ws, &format!("marker {marker_id}"), |f| {
        f["type"] == "MessageReceived" && f["data"]["id"] == marker_id
    })
    .await
    .with_context(|| format!("{who} gets the marker"))?;
    let leaked: Vec<&Value> = frames
        .iter()
        .filter(|f| f["type"] == "MessageReceived" && f["data"]["room_id"] == room)
        .collect();
    ensure!(
        leaked.is_empty(),
        "{who} is out of {room} but received: {leaked:?}"
    );
    Ok(())
}

async fn expect_refused(ws: &mut WsClient, room: &str, reason: &str, who: &str) -> Result<()> {
    let refused = send_and_confirm(ws, room, "may I?", &format!("refused-{who}")).await?;
    ensure!(
        refused["confirmed"] == false && refused["reason"] == reason,
        "{who}'s send to {room} must be refused with {reason}: {refused}"
    );
    ensure!(
        refused["message_id"].is_null(),
        "a refusal has no id: {refused}"
    );
    Ok(())
}

async fn expect_error(
    cluster: &Cluster,
    gateway: usize,
    method: Method,
    path: &str,
    auth: Auth,
    body: Option<&Value>,
    (status, code): (u16, &str),
) -> Result<()> {
    let (got, answer) = cluster
        .api(gateway)
        .request(method.clone(), path, auth, body)
        .await?;
    ensure!(
        got.as_u16() == status && answer["error"]["code"] == code,
        "{method} {path}: expected {status} {code}, got {got} {answer}"
    );
    Ok(())
}

async fn listed(cluster: &Cluster, user: &str, room: &str) -> Result<bool> {
    let rooms = list_rooms(cluster, 1, user).await?;
    Ok(rooms.iter().any(|r| r["id"] == room))
}

fn seqs(messages: &[Value]) -> Vec<i64> {
    messages.iter().filter_map(|m| m["seq"].as_i64()).collect()
}

// --------------------------------------------------------------- membership changes

/// Alice (owner) on gateway 0, bob on gateway 1, carol on both. Carol is added,
/// removed, bob leaves, both are added back; every change reaches every socket
/// concerned, in the documented order, and the room's traffic follows it.
async fn membership_changes_reach_open_sockets_on_both_gateways(cluster: &Cluster) -> Result<()> {
    ensure_users(cluster, &["alice", "bob", "carol"]).await?;
    let mut alice = connect_ready(cluster, 0, "alice").await?;
    let mut bob = connect_ready(cluster, 1, "bob").await?;
    let mut carol1 = connect_ready(cluster, 1, "carol").await?;
    let mut carol0 = connect_ready(cluster, 0, "carol").await?;
    let room = group(cluster, "alice", &["bob"]).await?;
    // Everyone shares the lobby: markers sent there show what arrived before them.
    let lobby = group(cluster, "alice", &["bob", "carol"]).await?;
    for ws in [&mut alice, &mut bob] {
        recv_in_room(ws, "MemberAdded", &room).await?;
    }
    for ws in [&mut alice, &mut bob, &mut carol0, &mut carol1] {
        recv_in_room(ws, "MemberAdded", &lobby).await?;
    }

    // Add carol: her sockets learn it first, then everyone gets the new room.
    let answer = change_members(cluster, 0, "alice", &room, &json!({"add": ["carol"]})).await?;
    ensure!(
        answer["members"] == json!(["alice", "bob", "carol"]),
        "members in joining order: {answer}"
    );
    for (who, ws) in [("carol on 0", &mut carol0), ("carol on 1", &mut carol1)] {
        told_added(ws, &room, "carol")
            .await
            .with_context(|| format!("{who} is told she was added"))?;
    }
    for (who, ws) in [("alice", &mut alice), ("bob", &mut bob)] {
        let update = event_then_update(
            ws,
            "MemberAdded",
            &room,
            "carol",
            json!({"added": ["carol"], "removed": []}),
            3,
        )
        .await
        .with_context(|| format!("{who} is told carol was added"))?;
        ensure!(update["owner_id"] == "alice", "{update}");
    }
    // …and she receives what alice (gateway 0) and bob (gateway 1) send next.
    let from_alice = say(&mut alice, &room, "welcome carol", "add-1").await?;
    let from_bob = say(&mut bob, &room, "hi carol", "add-2").await?;
    for (who, ws) in [
        ("carol on 0", &mut carol0),
        ("carol on 1", &mut carol1),
        ("bob", &mut bob),
    ] {
        receive(ws, &from_alice)
            .await
            .with_context(|| format!("{who} gets alice's message"))?;
    }
    for (who, ws) in [
        ("carol on 0", &mut carol0),
        ("carol on 1", &mut carol1),
        ("alice", &mut alice),
    ] {
        receive(ws, &from_bob)
            .await
            .with_context(|| format!("{who} gets bob's message"))?;
    }

    // Remove carol (the owner, through gateway 1).
    let answer = change_members(cluster, 1, "alice", &room, &json!({"remove": ["carol"]})).await?;
    ensure!(answer["members"] == json!(["alice", "bob"]), "{answer}");
    for (who, ws) in [("carol on 0", &mut carol0), ("carol on 1", &mut carol1)] {
        recv_matching(ws, "MemberRemoved", "of carol", |m| {
            m["room_id"] == room.as_str() && m["user_id"] == "carol"
        })
        .await
        .with_context(|| format!("{who} is told she was removed"))?;
    }
    for (who, ws) in [("alice", &mut alice), ("bob", &mut bob)] {
        event_then_update(
            ws,
            "MemberRemoved",
            &room,
            "carol",
            json!({"added": [], "removed": ["carol"]}),
            2,
        )
        .await
        .with_context(|| format!("{who} is told carol was removed"))?;
    }
    // The room goes on without her: alice and bob get every message, carol none.
    let mut sent = Vec::new();
    for i in 0..2 {
        sent.push(
            say(
                &mut alice,
                &room,
                &format!("after carol {i}"),
                &format!("rm-a{i}"),
            )
            .await?,
        );
    }
    sent.push(say(&mut bob, &room, "after carol, bob", "rm-b").await?);
    for id in &sent {
        receive(&mut alice, id).await.context("alice")?;
        receive(&mut bob, id).await.context("bob")?;
    }
    let marker = say(&mut alice, &lobby, "marker after removal", "rm-marker").await?;
    nothing_from_room_before(&mut carol0, &room, &marker, "carol on 0").await?;
    nothing_from_room_before(&mut carol1, &room, &marker, "carol on 1").await?;
    expect_refused(&mut carol1, &room, "not_a_member", "carol").await?;
    expect_error(
        cluster,
        1,
        Method::GET,
        &format!("/rooms/{room}/messages"),
        Auth::Bearer(cluster.token("carol")),
        None,
        (404, "room_not_found"),
    )
    .await?;
    ensure!(
        !listed(cluster, "carol", &room).await?,
        "a removed member's room list does not show the room"
    );

    // Bob leaves (removes himself, through gateway 1).
    let answer = change_members(cluster, 1, "bob", &room, &json!({"remove": ["bob"]})).await?;
    ensure!(answer["members"] == json!(["alice"]), "{answer}");
    recv_matching(&mut bob, "MemberRemoved", "of bob", |m| {
        m["room_id"] == room.as_str() && m["user_id"] == "bob"
    })
    .await
    .context("bob is told he left")?;
    event_then_update(
        &mut alice,
        "MemberRemoved",
        &room,
        "bob",
        json!({"added": [], "removed": ["bob"]}),
        1,
    )
    .await
    .context("alice is told bob left")?;
    let after = say(&mut alice, &room, "alone now", "leave-1").await?;
    receive(&mut alice, &after).await?;
    let marker = say(&mut alice, &lobby, "marker after leaving", "leave-marker").await?;
    nothing_from_room_before(&mut bob, &room, &marker, "bob").await?;
    expect_refused(&mut bob, &room, "not_a_member", "bob").await?;
    expect_error(
        cluster,
        0,
        Method::GET,
        &format!("/rooms/{room}/messages"),
        Auth::Bearer(cluster.token("bob")),
        None,
        (404, "room_not_found"),
    )
    .await?;
    ensure!(
        !listed(cluster, "bob", &room).await?,
        "bob left: not listed"
    );

    // Both come back: they are told, and receive the room again.
    change_members(
        cluster,
        0,
        "alice",
        &room,
        &json!({"add": ["bob", "carol"]}),
    )
    .await?;
    told_added(&mut bob, &room, "bob")
        .await
        .context("bob is told he is back")?;
    for ws in [&mut carol0, &mut carol1] {
        told_added(ws, &room, "carol")
            .await
            .context("carol is told she is back")?;
    }
    event_then_update(
        &mut alice,
        "MemberAdded",
        &room,
        "carol",
        json!({"added": ["bob", "carol"], "removed": []}),
        3,
    )
    .await
    .context("alice is told both are back")?;
    let back = say(&mut alice, &room, "welcome back", "back-1").await?;
    for (who, ws) in [
        ("bob", &mut bob),
        ("carol on 0", &mut carol0),
        ("carol on 1", &mut carol1),
    ] {
        receive(ws, &back)
            .await
            .with_context(|| format!("{who} receives the room again"))?;
    }
    Ok(())
}

/// Deleting a room reaches every member socket on both gateways; afterwards the
/// room is gone for everyone, owner included.
async fn deleting_a_room_tells_every_member_and_refuses_what_follows(
    cluster: &Cluster,
) -> Result<()> {
    ensure_users(cluster, &["alice", "bob", "carol"]).await?;
    let mut alice = connect_ready(cluster, 0, "alice").await?;
    let mut bob = connect_ready(cluster, 1, "bob").await?;
    let mut carol1 = connect_ready(cluster, 1, "carol").await?;
    let mut carol0 = connect_ready(cluster, 0, "carol").await?;
    let room = group(cluster, "alice", &["bob", "carol"]).await?;
    let keep = group(cluster, "alice", &["bob", "carol"]).await?;
    for ws in [&mut alice, &mut bob, &mut carol0, &mut carol1] {
        recv_in_room(ws, "MemberAdded", &room).await?;
        recv_in_room(ws, "MemberAdded", &keep).await?;
    }
    let said = say(&mut bob, &room, "before the end", "del-1").await?;
    receive(&mut alice, &said).await?;

    let (status, body) = cluster
        .api(1)
        .delete(&format!("/rooms/{room}"), cluster.token("alice"))
        .await?;
    ensure!(status == 204, "DELETE /rooms/{room}: {status} {body}");
    for (who, ws) in [
        ("alice", &mut alice),
        ("bob", &mut bob),
        ("carol on 0", &mut carol0),
        ("carol on 1", &mut carol1),
    ] {
        recv_in_room(ws, "RoomDeleted", &room)
            .await
            .with_context(|| format!("{who} is told the room was deleted"))?;
    }
    for (who, ws) in [
        ("alice", &mut alice),
        ("bob", &mut bob),
        ("carol on 0", &mut carol0),
    ] {
        expect_refused(ws, &room, "not_a_member", who).await?;
    }
    let alice_token = || Auth::Bearer(cluster.token("alice"));
    let paths = [
        (
            Method::POST,
            format!("/rooms/{room}/messages"),
            Some(json!({"message": "anyone?"})),
        ),
        (Method::GET, format!("/rooms/{room}/messages"), None),
        (Method::GET, format!("/rooms/{room}"), None),
        (
            Method::PUT,
            format!("/rooms/{room}/members"),
            Some(json!({"add": ["bob"]})),
        ),
        (Method::DELETE, format!("/rooms/{room}"), None),
    ];
    for (method, path, body) in paths {
        expect_error(
            cluster,
            0,
            method,
            &path,
            alice_token(),
            body.as_ref(),
            (404, "room_not_found"),
        )
        .await?;
    }
    for user in ["alice", "bob", "carol"] {
        ensure!(
            !listed(cluster, user, &room).await?,
            "a deleted room is not in {user}'s list"
        );
        ensure!(
            listed(cluster, user, &keep).await?,
            "the other room stays in {user}'s list"
        );
    }
    // The other room is untouched.
    let still = say(&mut alice, &keep, "still here", "keep-1").await?;
    receive(&mut carol1, &still).await?;
    Ok(())
}

// --------------------------------------------------------------------- direct rooms

async fn direct_rooms_are_one_per_pair_and_read_as_a_conversation(cluster: &Cluster) -> Result<()> {
    ensure_users(cluster, &["alice", "bob", "carol"]).await?;
    let conversation = async |caller: &str, query: &str| -> Result<Value> {
        let (status, body) = cluster
            .api(1)
            .get(&format!("/messages?{query}"), cluster.token(caller))
            .await?;
        ensure!(status == 200, "GET /messages?{query}: {status} {body}");
        Ok(body)
    };
    // No direct room yet: null and no messages, even when they share a group.
    group(cluster, "alice", &["carol"]).await?;
    let none = conversation("alice", "from=alice&to=carol").await?;
    ensure!(
        none["room_id"].is_null() && none["messages"] == json!([]),
        "{none}"
    );

    let direct = json!({"kind": "direct", "members": ["bob"]});
    let (status, first) = cluster
        .api(0)
        .post_json("/rooms", cluster.token("alice"), &direct)
        .await?;
    ensure!(status == 201, "first direct room: {status} {first}");
    ensure!(first["kind"] == "direct", "{first}");
    ensure!(sorted(&first["members"]) == ["alice", "bob"], "{first}");
    let room = id_of(&first, "id")?;
    let (status, again) = cluster
        .api(1)
        .post_json("/rooms", cluster.token("alice"), &direct)
        .await?;
    ensure!(
        status == 200 && again["id"] == room.as_str(),
        "the same pair again: {status} {again}"
    );
    let (status, other_side) = cluster
        .api(1)
        .post_json(
            "/rooms",
            cluster.token("bob"),
            &json!({"kind": "direct", "members": ["alice"]}),
        )
        .await?;
    ensure!(
        status == 200 && other_side["id"] == room.as_str(),
        "from bob's side: {status} {other_side}"
    );
    // A group of the same two is another room, and not their direct chat.
    let pair_group = group(cluster, "alice", &["bob"]).await?;
    ensure!(pair_group != room, "a group is not the direct room");

    let empty = conversation("alice", "from=alice&to=bob").await?;
    ensure!(
        empty["room_id"] == room.as_str() && empty["messages"] == json!([]),
        "{empty}"
    );

    let mut alice = connect_ready(cluster, 0, "alice").await?;
    let mut bob = connect_ready(cluster, 1, "bob").await?;
    for i in 1..=5 {
        let (ws, who) = if i % 2 == 1 {
            (&mut alice, "alice")
        } else {
            (&mut bob, "bob")
        };
        say(ws, &room, &format!("d{i} from {who}"), &format!("d{i}")).await?;
    }
    let all = eventually(FRAME_WAIT, || async {
        let body = conversation("alice", "from=alice&to=bob").await?;
        let messages = body["messages"].as_array().cloned().unwrap_or_default();
        ensure!(messages.len() == 5, "not all stored yet: {body}");
        Ok(body)
    })
    .await?;
    ensure!(all["room_id"] == room.as_str(), "{all}");
    let messages = all["messages"].as_array().cloned().unwrap_or_default();
    ensure!(seqs(&messages) == [1, 2, 3, 4, 5], "oldest first: {all}");
    let senders: Vec<&str> = messages
        .iter()
        .filter_map(|m| m["sender_id"].as_str())
        .collect();
    ensure!(
        senders == ["alice", "bob", "alice", "bob", "alice"],
        "{senders:?}"
    );
    ensure!(messages[0]["message"] == "d1 from alice", "{all}");

    let page = async |query: &str| -> Result<Vec<i64>> {
        let body = conversation("alice", &format!("from=alice&to=bob&{query}")).await?;
        Ok(seqs(body["messages"].as_array().map_or(&[][..], |m| m)))
    };
    ensure!(
        page("after_seq=2&limit=2").await? == [3, 4],
        "after_seq=2&limit=2"
    );
    ensure!(
        page("after_seq=4&limit=2").await? == [5],
        "after_seq=4&limit=2"
    );
    ensure!(page("before_seq=3").await? == [1, 2], "before_seq=3");
    ensure!(
        page("limit=2").await? == [4, 5],
        "the latest two, oldest first"
    );

    // Bob reads the same conversation from his side.
    let his = conversation("bob", "from=bob&to=alice").await?;
    ensure!(his["room_id"] == room.as_str(), "{his}");
    ensure!(
        seqs(his["messages"].as_array().map_or(&[][..], |m| m)) == [1, 2, 3, 4, 5],
        "{his}"
    );
    // And it is in both room lists as a direct room.
    for user in ["alice", "bob"] {
        let rooms = list_rooms(cluster, 0, user).await?;
        let entry = rooms
            .iter()
            .find(|r| r["id"] == room.as_str())
            .with_context(|| format!("the direct room is in {user}'s list"))?;
        ensure!(entry["kind"] == "direct", "{entry}");
    }
    Ok(())
}

// ----------------------------------------------------------------------- room list

/// `GET /rooms`: members, is_owner, last_message, unread_count following the
/// read marker, newest activity first, and keyset pages that cover every room once.
async fn room_list_shows_activity_order_unread_counts_and_pages(cluster: &Cluster) -> Result<()> {
    ensure_users(cluster, &["alice", "bob"]).await?;
    let mut rooms = Vec::new();
    for i in 1..=5 {
        let room = create_room_with(
            cluster,
            i % 2,
            "alice",
            &json!({"members": ["bob"], "name": format!("r{i}")}),
        )
        .await?;
        ensure!(
            room["is_owner"] == true,
            "POST /rooms answers the room: {room}"
        );
        rooms.push(id_of(&room, "id")?);
    }
    let list = |user: &'static str| async move {
        let (status, body) = cluster.api(1).get("/rooms", cluster.token(user)).await?;
        ensure!(status == 200, "GET /rooms as {user}: {status} {body}");
        ensure!(body["next_cursor"].is_null(), "one page: {body}");
        Ok::<_, anyhow::Error>(body["rooms"].as_array().cloned().unwrap_or_default())
    };
    let ids = |list: &[Value]| -> Vec<String> {
        list.iter()
            .filter_map(|r| r["id"].as_str().map(str::to_owned))
            .collect()
    };

    // Newest first; each entry is the room as its member sees it.
    let newest_first: Vec<String> = rooms.iter().rev().cloned().collect();
    let alices = list("alice").await?;
    ensure!(
        ids(&alices) == newest_first,
        "by creation, newest first: {alices:?}"
    );
    for (entry, name) in alices.iter().zip(["r5", "r4", "r3", "r2", "r1"]) {
        ensure!(entry["name"] == name, "{entry}");
        ensure!(entry["members"] == json!(["alice", "bob"]), "{entry}");
        ensure!(
            entry["kind"] == "group" && entry["owner_id"] == "alice",
            "{entry}"
        );
        ensure!(entry["is_owner"] == true, "{entry}");
        ensure!(entry["last_message"].is_null(), "{entry}");
        ensure!(
            entry["unread_count"] == 0 && entry["last_read_seq"] == 0,
            "{entry}"
        );
    }
    let bobs = list("bob").await?;
    ensure!(ids(&bobs) == newest_first, "{bobs:?}");
    ensure!(bobs.iter().all(|r| r["is_owner"] == false), "{bobs:?}");

    // A message moves its room to the top, for both; it is unread for alice only.
    let r2 = rooms[1].clone();
    let mut bob = connect_ready(cluster, 1, "bob").await?;
    say(&mut bob, &r2, "news in r2", "r2-1").await?;
    let top = |list: &[Value]| list.first().cloned().unwrap_or_default();
    let entry = eventually(FRAME_WAIT, || async {
        let alices = list("alice").await?;
        let first = top(&alices);
        ensure!(
            first["id"] == r2.as_str(),
            "r2 is not on top yet: {alices:?}"
        );
        ensure!(first["unread_count"] == 1, "{first}");
        Ok(first)
    })
    .await?;
    ensure!(entry["last_message"]["message"] == "news in r2", "{entry}");
    ensure!(entry["last_message"]["sender_id"] == "bob", "{entry}");
    ensure!(entry["last_message"]["seq"] == 1, "{entry}");
    let bobs = list("bob").await?;
    ensure!(top(&bobs)["id"] == r2.as_str(), "{bobs:?}");
    ensure!(
        top(&bobs)["unread_count"] == 0,
        "one's own messages are read: {bobs:?}"
    );

    say(&mut bob, &r2, "more news", "r2-2").await?;
    say(&mut bob, &r2, "even more", "r2-3").await?;
    let unread_of = async |room: &str| -> Result<Value> {
        let alices = list("alice").await?;
        alices
            .into_iter()
            .find(|r| r["id"] == room)
            .with_context(|| format!("{room} in alice's list"))
    };
    eventually(FRAME_WAIT, || async {
        let entry = unread_of(&r2).await?;
        ensure!(entry["unread_count"] == 3, "{entry}");
        Ok(())
    })
    .await?;

    // The read marker: MarkRead, then POST read; it never moves back.
    let mut alice = connect_ready(cluster, 0, "alice").await?;
    alice
        .send_frame("MarkRead", json!({"room_id": r2, "seq": 2}))
        .await?;
    recv_matching(&mut alice, "ReadReceipt", "alice at 2", |r| {
        r["room_id"] == r2.as_str() && r["user_id"] == "alice" && r["seq"] == 2
    })
    .await?;
    let entry = unread_of(&r2).await?;
    ensure!(
        entry["last_read_seq"] == 2 && entry["unread_count"] == 1,
        "{entry}"
    );
    let read = |seq: i64| {
        let r2 = r2.clone();
        async move {
            let (status, body) = cluster
                .api(0)
                .post_json(
                    &format!("/rooms/{r2}/read"),
                    cluster.token("alice"),
                    &json!({ "seq": seq }),
                )
                .await?;
            ensure!(status == 200, "POST read {seq}: {status} {body}");
            ensure!(body["room_id"] == r2.as_str(), "{body}");
            Ok::<_, anyhow::Error>(body["last_read_seq"].clone())
        }
    };
    ensure!(read(3).await? == 3, "the marker moves forward");
    let entry = unread_of(&r2).await?;
    ensure!(
        entry["last_read_seq"] == 3 && entry["unread_count"] == 0,
        "{entry}"
    );
    ensure!(read(1).await? == 3, "a lower seq leaves the marker");
    ensure!(
        unread_of(&r2).await?["last_read_seq"] == 3,
        "the marker stays"
    );

    // Keyset pages of two cover every room exactly once, in the same order.
    let unpaged = ids(&list("alice").await?);
    let mut paged = Vec::new();
    let mut pages = 0;
    let mut path = "/rooms?limit=2".to_owned();
    loop {
        pages += 1;
        ensure!(pages <= 5, "paging does not end: {paged:?}");
        let (status, body) = cluster
            .api(pages % 2)
            .get(&path, cluster.token("alice"))
            .await?;
        ensure!(status == 200, "GET {path}: {status} {body}");
        let page = body["rooms"].as_array().cloned().unwrap_or_default();
        ensure!(page.len() <= 2, "limit=2: {body}");
        paged.extend(ids(&page));
        match body["next_cursor"].as_str() {
            Some(cursor) => path = format!("/rooms?limit=2&cursor={cursor}"),
            None => break,
        }
    }
    ensure!(paged == unpaged, "pages {paged:?} vs one list {unpaged:?}");
    ensure!(pages == 3, "5 rooms in pages of 2: {pages} pages");

    // Deleted messages are not unread.
    let r4 = rooms[3].clone();
    say(&mut bob, &r4, "keep", "r4-1").await?;
    let gone = say(&mut bob, &r4, "oops", "r4-2").await?;
    let (status, body) = cluster
        .api(1)
        .delete(
            &format!("/rooms/{r4}/messages/{gone}"),
            cluster.token("bob"),
        )
        .await?;
    ensure!(status == 204, "{status} {body}");
    history_until(cluster, 0, "alice", &r4, "both stored", |m| m.len() == 2).await?;
    eventually(FRAME_WAIT, || async {
        let entry = unread_of(&r4).await?;
        ensure!(
            entry["unread_count"] == 1,
            "the deleted one does not count: {entry}"
        );
        Ok(())
    })
    .await?;
    Ok(())
}

async fn room_details_show_the_room_and_its_latest_messages(cluster: &Cluster) -> Result<()> {
    ensure_users(cluster, &["alice", "bob"]).await?;
    let created = create_room_with(
        cluster,
        0,
        "alice",
        &json!({"members": ["bob"], "name": "Flat 4B", "metadata": {"apartment": "4B"}}),
    )
    .await?;
    for (field, value) in [
        ("kind", json!("group")),
        ("name", json!("Flat 4B")),
        ("owner_id", json!("alice")),
        ("members", json!(["alice", "bob"])),
        ("metadata", json!({"apartment": "4B"})),
        ("is_owner", json!(true)),
        ("last_message", Value::Null),
        ("last_read_seq", json!(0)),
        ("unread_count", json!(0)),
    ] {
        ensure!(
            created[field] == value,
            "POST /rooms answers {field} = {value}: {created}"
        );
    }
    ensure!(created["created_at"].is_string(), "{created}");
    let room = id_of(&created, "id")?;

    let mut alice = connect_ready(cluster, 0, "alice").await?;
    for i in 1..=3 {
        say(&mut alice, &room, &format!("m{i}"), &format!("t{i}")).await?;
    }
    let details = eventually(FRAME_WAIT, || async {
        let (status, body) = cluster
            .api(1)
            .get(&format!("/rooms/{room}"), cluster.token("bob"))
            .await?;
        ensure!(status == 200, "{status} {body}");
        // The list and the summary are read separately: wait for both to
        // include the last message.
        ensure!(
            body["messages"].as_array().map(Vec::len) == Some(3)
                && body["last_message"]["message"] == "m3"
                && body["unread_count"] == 3,
            "not all stored: {body}"
        );
        Ok(body)
    })
    .await?;
    ensure!(details["id"] == room.as_str(), "{details}");
    ensure!(details["name"] == "Flat 4B", "{details}");
    ensure!(
        details["metadata"] == json!({"apartment": "4B"}),
        "{details}"
    );
    ensure!(details["members"] == json!(["alice", "bob"]), "{details}");
    ensure!(
        details["is_owner"] == false,
        "bob is not the owner: {details}"
    );
    ensure!(details["last_message"]["message"] == "m3", "{details}");
    ensure!(
        details["unread_count"] == 3,
        "three unread for bob: {details}"
    );
    let messages = details["messages"].as_array().cloned().unwrap_or_default();
    ensure!(seqs(&messages) == [1, 2, 3], "oldest first: {details}");
    ensure!(
        messages[2]["message"] == "m3" && messages[2]["sender_id"] == "alice",
        "{details}"
    );
    ensure!(
        messages[0].get("parent_id") == Some(&Value::Null),
        "a message carries parent_id: null: {details}"
    );
    for field in ["edited_at", "deleted_at"] {
        ensure!(
            messages[0].get(field).is_none(),
            "{field} appears only once set (as in the live frame): {details}"
        );
    }
    let (status, latest) = cluster
        .api(0)
        .get(&format!("/rooms/{room}?limit=2"), cluster.token("alice"))
        .await?;
    ensure!(status == 200, "{status} {latest}");
    ensure!(
        seqs(latest["messages"].as_array().map_or(&[][..], |m| m)) == [2, 3],
        "limit=2: the latest two, oldest first: {latest}"
    );
    Ok(())
}

// ------------------------------------------------------------ threads, edits, deletes

async fn threads_edits_and_deletes_reach_members_on_both_gateways(cluster: &Cluster) -> Result<()> {
    ensure_users(cluster, &["alice", "bob", "carol"]).await?;
    let mut alice = connect_ready(cluster, 0, "alice").await?;
    let mut bob = connect_ready(cluster, 1, "bob").await?;
    let mut carol = connect_ready(cluster, 1, "carol").await?;
    let room = group(cluster, "alice", &["bob", "carol"]).await?;
    for ws in [&mut alice, &mut bob, &mut carol] {
        recv_in_room(ws, "MemberAdded", &room).await?;
    }

    // Threads: a reply over the socket and one over HTTP carry parent_id.
    let root = say(&mut alice, &room, "who takes the bins out?", "root").await?;
    bob.send_frame(
        "SendMessage",
        json!({"room_id": room, "message": "me", "message_temp_id": "reply-1", "parent_id": root}),
    )
    .await?;
    let confirmation = recv_matching(&mut bob, "MessageSentConfirmation", "reply-1", |c| {
        c["message_temp_id"] == "reply-1"
    })
    .await?;
    ensure!(confirmation["confirmed"] == true, "{confirmation}");
    let bobs_reply = id_of(&confirmation, "message_id")?;
    let answer = post_message(
        cluster,
        1,
        "carol",
        &room,
        &json!({"message": "thanks bob", "message_temp_id": "reply-2", "parent_id": root}),
    )
    .await?;
    let carols_reply = id_of(&answer, "message_id")?;
    for (who, ws) in [
        ("alice", &mut alice),
        ("carol", &mut carol),
        ("bob", &mut bob),
    ] {
        for reply in [&bobs_reply, &carols_reply] {
            let received = receive(ws, reply).await.with_context(|| who.to_owned())?;
            ensure!(received["parent_id"] == root.as_str(), "{who}: {received}");
        }
    }
    let history = stored_messages(cluster, 0, "bob", &room, 3).await?;
    let parents: Vec<&Value> = history.iter().map(|m| &m["parent_id"]).collect();
    ensure!(
        parents == [&Value::Null, &json!(root), &json!(root)],
        "history keeps the thread: {history:?}"
    );

    // Edit: by the sender only; every member is told, history shows it.
    let edit = |who: &str, id: &str, text: &str| {
        let (who, path) = (who.to_owned(), format!("/rooms/{room}/messages/{id}"));
        let body = json!({ "message": text });
        async move {
            cluster
                .api(1)
                .request(
                    Method::PATCH,
                    &path,
                    Auth::Bearer(cluster.token(&who)),
                    Some(&body),
                )
                .await
        }
    };
    let (status, edited) = edit("alice", &root, "who takes the bins out on Monday?").await?;
    ensure!(status == 200, "PATCH by the sender: {status} {edited}");
    ensure!(
        edited["id"] == root.as_str() && edited["seq"] == 1,
        "{edited}"
    );
    ensure!(
        edited["message"] == "who takes the bins out on Monday?",
        "{edited}"
    );
    ensure!(
        edited["edited_at"].is_string() && edited["deleted_at"].is_null(),
        "{edited}"
    );
    for (who, ws) in [
        ("alice", &mut alice),
        ("bob", &mut bob),
        ("carol", &mut carol),
    ] {
        let event = recv_matching(ws, "MessageEdited", &root, |e| e["id"] == root.as_str())
            .await
            .with_context(|| format!("{who} is told of the edit"))?;
        ensure!(
            event["room_id"] == room.as_str() && event["seq"] == 1,
            "{event}"
        );
        ensure!(
            event["message"] == "who takes the bins out on Monday?",
            "{event}"
        );
        ensure!(
            event["edited_at"] == edited["edited_at"],
            "{event} vs {edited}"
        );
    }
    history_until(cluster, 1, "carol", &room, "showing the edit", |m| {
        m.first().is_some_and(|root| {
            root["message"] == "who takes the bins out on Monday?" && root["edited_at"].is_string()
        })
    })
    .await?;
    let (status, refused) = edit("bob", &root, "not mine").await?;
    ensure!(
        status == 403 && refused["error"]["code"] == "not_sender",
        "someone else's message: {status} {refused}"
    );
    // A message can be edited before the worker has stored it.
    let fresh = say(&mut bob, &room, "tpyo", "fresh").await?;
    let (status, fixed) = edit("bob", &fresh, "typo").await?;
    ensure!(
        status == 200 && fixed["message"] == "typo",
        "{status} {fixed}"
    );

    // Delete: the sender, or the owner; a tombstone stays in history.
    let delete = |who: &str, id: &str| {
        let (who, path) = (who.to_owned(), format!("/rooms/{room}/messages/{id}"));
        async move { cluster.api(0).delete(&path, cluster.token(&who)).await }
    };
    let (status, body) = delete("bob", &bobs_reply).await?;
    ensure!(status == 204, "the sender deletes: {status} {body}");
    let (status, body) = delete("alice", &carols_reply).await?;
    ensure!(
        status == 204,
        "the owner deletes someone's: {status} {body}"
    );
    for (who, ws) in [
        ("alice", &mut alice),
        ("bob", &mut bob),
        ("carol", &mut carol),
    ] {
        for (id, seq) in [(&bobs_reply, 2), (&carols_reply, 3)] {
            let event = recv_matching(ws, "MessageDeleted", id, |e| e["id"] == id.as_str())
                .await
                .with_context(|| format!("{who} is told of the delete"))?;
            ensure!(
                event["room_id"] == room.as_str() && event["seq"] == seq,
                "{event}"
            );
            ensure!(event["deleted_at"].is_string(), "{event}");
        }
    }
    let history = history_until(cluster, 1, "bob", &room, "with tombstones", |m| {
        m.len() >= 3 && m[1]["deleted_at"].is_string() && m[2]["deleted_at"].is_string()
    })
    .await?;
    for (tombstone, id) in history[1..3].iter().zip([&bobs_reply, &carols_reply]) {
        ensure!(tombstone["id"] == id.as_str(), "same id: {tombstone}");
        ensure!(tombstone["message"] == "", "no text left: {tombstone}");
    }
    ensure!(seqs(&history[..3]) == [1, 2, 3], "same seqs: {history:?}");
    let (status, body) = delete("bob", &bobs_reply).await?;
    ensure!(status == 204, "deleting twice is fine: {status} {body}");
    let (status, body) = edit("bob", &bobs_reply, "undelete?").await?;
    ensure!(
        status == 409 && body["error"]["code"] == "message_deleted",
        "editing a deleted message: {status} {body}"
    );
    let (status, body) = delete("carol", &root).await?;
    ensure!(
        status == 403 && body["error"]["code"] == "not_allowed",
        "a member deleting someone else's: {status} {body}"
    );
    Ok(())
}

// ------------------------------------------------------------------- read receipts

async fn read_receipts_follow_markers_that_only_move_forward(cluster: &Cluster) -> Result<()> {
    ensure_users(cluster, &["alice", "bob", "carol"]).await?;
    let mut alice = connect_ready(cluster, 0, "alice").await?;
    let mut bob = connect_ready(cluster, 1, "bob").await?;
    let mut bob_phone = connect_ready(cluster, 0, "bob").await?;
    let mut carol = connect_ready(cluster, 1, "carol").await?;
    let room = group(cluster, "alice", &["bob", "carol"]).await?;
    for ws in [&mut alice, &mut bob, &mut bob_phone, &mut carol] {
        recv_in_room(ws, "MemberAdded", &room).await?;
    }
    for i in 1..=3 {
        say(&mut alice, &room, &format!("m{i}"), &format!("t{i}")).await?;
    }
    let receipts = async |viewer: &str| -> Result<Vec<(String, i64)>> {
        let (status, body) = cluster
            .api(1)
            .get(&format!("/rooms/{room}/receipts"), cluster.token(viewer))
            .await?;
        ensure!(status == 200, "{status} {body}");
        let mut list: Vec<(String, i64)> = body["receipts"]
            .as_array()
            .with_context(|| format!("receipts: {body}"))?
            .iter()
            .map(|r| {
                (
                    r["user_id"].as_str().unwrap_or("?").to_owned(),
                    r["last_read_seq"].as_i64().unwrap_or(-1),
                )
            })
            .collect();
        list.sort();
        Ok(list)
    };
    let expect = |a: i64, b: i64, c: i64| {
        vec![
            ("alice".to_owned(), a),
            ("bob".to_owned(), b),
            ("carol".to_owned(), c),
        ]
    };
    ensure!(
        receipts("carol").await? == expect(0, 0, 0),
        "one per member, at 0"
    );

    // Bob reads up to 2: every member socket is told, his own devices included.
    bob.send_frame("MarkRead", json!({"room_id": room, "seq": 2}))
        .await?;
    let bob_at = |seq: i64| {
        let room = room.clone();
        move |r: &Value| r["room_id"] == room.as_str() && r["user_id"] == "bob" && r["seq"] == seq
    };
    for (who, ws) in [
        ("alice", &mut alice),
        ("carol", &mut carol),
        ("bob", &mut bob),
        ("bob's phone", &mut bob_phone),
    ] {
        recv_matching(ws, "ReadReceipt", "bob at 2", bob_at(2))
            .await
            .with_context(|| format!("{who} gets bob's receipt"))?;
    }
    ensure!(receipts("alice").await? == expect(0, 2, 0), "bob at 2");

    // Going back moves nothing, and tells nobody.
    bob.send_frame("MarkRead", json!({"room_id": room, "seq": 1}))
        .await?;
    let (status, body) = cluster
        .api(0)
        .post_json(
            &format!("/rooms/{room}/read"),
            cluster.token("bob"),
            &json!({"seq": 1}),
        )
        .await?;
    ensure!(status == 200, "{status} {body}");
    ensure!(
        body["room_id"] == room.as_str() && body["last_read_seq"] == 2,
        "a lower seq leaves the marker: {body}"
    );
    alice
        .expect_silence("ReadReceipt", SILENCE)
        .await
        .context("no receipt when the marker does not move")?;
    ensure!(receipts("bob").await? == expect(0, 2, 0), "still 2");

    // Forward again over HTTP: told like MarkRead.
    let (status, body) = cluster
        .api(0)
        .post_json(
            &format!("/rooms/{room}/read"),
            cluster.token("bob"),
            &json!({"seq": 3}),
        )
        .await?;
    ensure!(
        status == 200 && body["last_read_seq"] == 3,
        "{status} {body}"
    );
    for (who, ws) in [
        ("alice", &mut alice),
        ("carol", &mut carol),
        ("bob", &mut bob),
    ] {
        recv_matching(ws, "ReadReceipt", "bob at 3", bob_at(3))
            .await
            .with_context(|| format!("{who} gets bob's receipt"))?;
    }
    carol
        .send_frame("MarkRead", json!({"room_id": room, "seq": 3}))
        .await?;
    recv_matching(&mut alice, "ReadReceipt", "carol at 3", |r| {
        r["user_id"] == "carol" && r["seq"] == 3
    })
    .await?;
    ensure!(
        receipts("alice").await? == expect(0, 3, 3),
        "bob and carol at 3"
    );
    Ok(())
}

// -------------------------------------------------------------------------- typing

async fn typing_reaches_the_other_members_only_and_is_throttled(cluster: &Cluster) -> Result<()> {
    ensure_users(cluster, &["alice", "bob", "carol"]).await?;
    let mut alice = connect_ready(cluster, 0, "alice").await?;
    let mut alice_laptop = connect_ready(cluster, 1, "alice").await?;
    let mut bob = connect_ready(cluster, 1, "bob").await?;
    let mut carol = connect_ready(cluster, 0, "carol").await?;
    let room = group(cluster, "alice", &["bob", "carol"]).await?;
    for ws in [&mut alice, &mut alice_laptop, &mut bob, &mut carol] {
        recv_in_room(ws, "MemberAdded", &room).await?;
    }

    alice.send_frame("Typing", json!({"room_id": room})).await?;
    for (who, ws) in [("bob", &mut bob), ("carol", &mut carol)] {
        let typing = recv_in_room(ws, "Typing", &room)
            .await
            .with_context(|| format!("{who} sees alice typing"))?;
        ensure!(typing["user_id"] == "alice", "{who}: {typing}");
    }
    alice
        .expect_silence("Typing", SILENCE)
        .await
        .context("the typist is not told")?;
    alice_laptop
        .expect_silence("Typing", Duration::from_millis(100))
        .await
        .context("nor are the typist's other devices")?;

    // A burst of 20 over about a second: a couple are passed on, not 20.
    let started = Instant::now();
    for _ in 0..20 {
        bob.send_frame("Typing", json!({"room_id": room})).await?;
        tokio::time::sleep(Duration::from_millis(50)).await; // spreads the burst over ~1 s
    }
    let burst = started.elapsed();
    let mut seen = 0;
    let window_end = tokio::time::Instant::now() + Duration::from_millis(1200);
    loop {
        let left = window_end.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            break;
        }
        match carol.recv_type("Typing", left).await {
            Ok(typing) if typing["user_id"] == "bob" => seen += 1,
            Ok(_) => {}
            Err(_) => break,
        }
    }
    let allowed = (burst.as_secs_f64() * 2.0).ceil() as usize + 1;
    ensure!(
        (1..=allowed).contains(&seen),
        "20 Typing frames over {burst:?}: {seen} passed on, expected 1..={allowed}"
    );

    // Typing is never stored.
    let (status, history) = cluster
        .api(0)
        .get(&format!("/rooms/{room}/messages"), cluster.token("carol"))
        .await?;
    ensure!(
        status == 200 && history["messages"] == json!([]),
        "{status} {history}"
    );
    Ok(())
}

// ---------------------------------------------------------------------- HTTP publish

async fn http_publish_dedupes_and_orders_with_socket_sends(cluster: &Cluster) -> Result<()> {
    const EACH: usize = 20;
    ensure_users(cluster, &["alice", "bob"]).await?;
    let mut alice = connect_ready(cluster, 0, "alice").await?;
    let mut bob = connect_ready(cluster, 1, "bob").await?;
    let room = group(cluster, "alice", &["bob"]).await?;
    for ws in [&mut alice, &mut bob] {
        recv_in_room(ws, "MemberAdded", &room).await?;
    }
    let path = format!("/rooms/{room}/messages");

    // The same temp id twice (on two gateways): one message.
    let body = json!({"message": "over http", "message_temp_id": "h-1"});
    let first = post_message(cluster, 0, "alice", &room, &body).await?;
    ensure!(
        first["message_temp_id"] == "h-1" && first["seq"] == 1,
        "{first}"
    );
    let (status, again) = cluster
        .api(1)
        .post_json(&path, cluster.token("alice"), &body)
        .await?;
    ensure!(
        status.is_success(),
        "the repeat is answered: {status} {again}"
    );
    ensure!(
        again["message_id"] == first["message_id"] && again["seq"] == first["seq"],
        "the original id and seq: {first} vs {again}"
    );
    let id = id_of(&first, "message_id")?;
    let received = receive(&mut bob, &id).await?;
    ensure!(
        received["sender_id"] == "alice" && received["message"] == "over http",
        "{received}"
    );
    ensure!(
        received["message_temp_id"] == "h-1" && received["seq"] == 1,
        "{received}"
    );

    // The service secret sends as a member.
    let (status, service) = cluster
        .api(1)
        .post_json(
            &path,
            Auth::Bearer(cluster.service_secret().into()),
            &json!({"message": "from the desk", "sender_id": "bob", "message_temp_id": "svc-1"}),
        )
        .await?;
    ensure!(status == 201 && service["seq"] == 2, "{status} {service}");
    let received = receive(&mut alice, &id_of(&service, "message_id")?).await?;
    ensure!(received["sender_id"] == "bob", "{received}");

    // Socket sends and HTTP sends at once: one gap-free order, seen by everyone.
    let socket_sends = async {
        for i in 0..EACH {
            send_message(&mut alice, &room, &format!("ws {i}"), &format!("ws-{i}")).await?;
        }
        // Confirmations in any order: matched to the sends by temp id.
        let mut seqs = vec![0; EACH];
        for _ in 0..EACH {
            let c = alice
                .recv_type("MessageSentConfirmation", FRAME_WAIT)
                .await?;
            ensure!(c["confirmed"] == true, "{c}");
            let i: usize = c["message_temp_id"]
                .as_str()
                .and_then(|t| t.strip_prefix("ws-"))
                .and_then(|i| i.parse().ok())
                .with_context(|| format!("a temp id ws-<i>: {c}"))?;
            seqs[i] = c["seq"].as_i64().context("seq")?;
        }
        Ok::<_, anyhow::Error>(seqs)
    };
    let http_sends = async {
        let mut seqs = Vec::new();
        for i in 0..EACH {
            let answer = post_message(
                cluster,
                1,
                "bob",
                &room,
                &json!({"message": format!("http {i}"), "message_temp_id": format!("http-{i}")}),
            )
            .await?;
            seqs.push(answer["seq"].as_i64().context("seq")?);
        }
        Ok::<_, anyhow::Error>(seqs)
    };
    let (ws_seqs, http_seqs) = tokio::try_join!(socket_sends, http_sends)?;
    ensure!(ws_seqs.windows(2).all(|w| w[0] < w[1]), "{ws_seqs:?}");
    ensure!(http_seqs.windows(2).all(|w| w[0] < w[1]), "{http_seqs:?}");
    let mut all: Vec<i64> = ws_seqs.iter().chain(&http_seqs).copied().collect();
    all.sort();
    let expected: Vec<i64> = (3..3 + 2 * EACH as i64).collect();
    ensure!(all == expected, "gap-free, each once: {all:?}");

    let mut delivered = Vec::new();
    while delivered.len() < 2 * EACH {
        let message = recv_matching(&mut bob, "MessageReceived", "in the room", |m| {
            m["room_id"] == room.as_str() && m["seq"].as_i64() >= Some(3)
        })
        .await?;
        delivered.push(message["seq"].as_i64().context("seq")?);
    }
    ensure!(
        delivered == expected,
        "bob's socket sees them in order: {delivered:?}"
    );
    let stored = stored_messages(cluster, 0, "bob", &room, 2 + 2 * EACH).await?;
    ensure!(
        seqs(&stored) == (1..=2 + 2 * EACH as i64).collect::<Vec<_>>(),
        "stored once each: {:?}",
        seqs(&stored)
    );
    Ok(())
}

/// A connection storm: the gateways read the users and rooms of concurrent
/// upgrades in batches, and every socket must still get exactly its own
/// user's rooms — a pair room each, and one shared room for the first half —
/// also when one user opens two sockets in the same storm.
async fn sockets_opened_all_at_once_each_get_their_own_rooms(cluster: &Cluster) -> Result<()> {
    const PAIRS: usize = 12;
    let users: Vec<String> = (0..2 * PAIRS).map(|i| format!("storm{i}")).collect();
    let names: Vec<&str> = users.iter().map(String::as_str).collect();
    ensure_users(cluster, &names).await?;
    let mut pair_rooms = Vec::new();
    for pair in names.chunks(2) {
        pair_rooms.push(group(cluster, pair[0], &pair[1..]).await?);
    }
    let half: Vec<&str> = names[1..PAIRS].to_vec();
    let shared = group(cluster, names[0], &half).await?;

    // Every user at once, the first one twice, spread over the gateways:
    // (gateway, user).
    let mut opening: Vec<(usize, usize)> = (0..names.len()).map(|user| (user % 2, user)).collect();
    opening.push((1, 0));
    let sockets = futures::future::join_all(
        opening
            .iter()
            .map(|&(gateway, user)| connect_ready(cluster, gateway, names[user])),
    )
    .await;
    let mut sockets: Vec<(usize, WsClient)> = opening
        .iter()
        .zip(sockets)
        .map(|(&(_, user), ws)| ws.map(|ws| (user, ws)))
        .collect::<Result<_>>()?;

    // Each pair's first member speaks in the pair's room, the first user in
    // the shared room too. Every socket gets what its user's rooms carry,
    // and nothing of the others'.
    let (_, speaker) = sockets
        .iter_mut()
        .find(|(user, _)| *user == 0)
        .context("the first user's socket")?;
    say(speaker, &shared, "to the shared room", "storm-shared").await?;
    for (pair, room) in pair_rooms.iter().enumerate() {
        let (_, ws) = sockets
            .iter_mut()
            .find(|(user, _)| *user == 2 * pair)
            .context("a pair's first socket")?;
        say(
            ws,
            room,
            &format!("to pair {pair}"),
            &format!("storm-{pair}"),
        )
        .await?;
    }
    for (user, ws) in &mut sockets {
        let pair = *user / 2;
        let mut expected = vec![format!("to pair {pair}")];
        if *user < PAIRS {
            expected.push("to the shared room".to_owned());
        }
        let mut got = Vec::new();
        while got.len() < expected.len() {
            let frame = ws
                .recv_type("MessageReceived", FRAME_WAIT)
                .await
                .with_context(|| format!("storm{user} waits for {expected:?}, has {got:?}"))?;
            got.push(frame["message"].as_str().unwrap_or_default().to_owned());
        }
        got.sort();
        expected.sort();
        ensure!(
            got == expected,
            "storm{user}: {got:?}, expected {expected:?}"
        );
        ensure!(
            ws.recv_type("MessageReceived", SILENCE).await.is_err(),
            "storm{user} got a message of a room not theirs"
        );
    }
    Ok(())
}
