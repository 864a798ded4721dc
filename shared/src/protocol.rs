//! The WebSocket wire protocol: JSON text frames `{"type": "...", "data": {...}}`.
//!
//! Client frames are parsed in two steps — first the envelope, then `data` for the
//! named type — so a client learns whether it sent garbage, an unknown type, or a
//! known type with bad fields (SPEC §5). Server frames are serialized once and the
//! same bytes are written to every socket that should see them.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::borrow::Cow;
use time::OffsetDateTime;
use uuid::Uuid;

/// Application close codes (SPEC §5). The numbers are a contract with client apps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum CloseCode {
    NoAuthToken = 4001,
    InvalidToken = 4002,
    Idle = 4003,
    AdminAction = 4004,
    Banned = 4005,
    ServerError = 4006,
    ServerShutdown = 4007,
    NewDevice = 4008,
    ConnectionClosed = 4009,
    BadMessageStructure = 4010,
    ContentRejected = 4011,
    UnauthorizedAction = 4012,
    RateLimited = 4013,
    MessageTooLarge = 4014,
}

impl CloseCode {
    pub fn code(self) -> u16 {
        self as u16
    }
}

// ---------------------------------------------------------------- client → server

/// A frame a client may send.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientFrame {
    SendMessage(SendMessage),
    Resume(Resume),
    SubscribePresence,
    Ping,
    Typing(Typing),
    MarkRead(MarkRead),
    /// Support desk: a user asks for help (or re-joins their chat); an agent
    /// re-joins a chat they claimed.
    Join(Join),
    /// Support desk: a dashboard asks for the queue (`PendingUsers`).
    Load,
    /// Support desk: an agent claims a pending request.
    JoinUser(JoinUser),
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendMessage {
    pub room_id: Uuid,
    pub message: String,
    #[serde(default)]
    pub message_temp_id: Option<String>,
    #[serde(default)]
    pub parent_id: Option<Uuid>,
}

/// `Resume {rooms: {room_id: last_seq}}`: the last seq the client has per room.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resume {
    pub rooms: std::collections::HashMap<Uuid, i64>,
}

/// `Typing {room_id}`: passed on to the room's other members, never stored.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Typing {
    pub room_id: Uuid,
}

/// `MarkRead {room_id, seq}`: the caller has read the room up to `seq`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MarkRead {
    pub room_id: Uuid,
    pub seq: i64,
}

/// Which side of the support desk a `Join` comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum JoinSide {
    #[default]
    User,
    Support,
}

/// `Join`. Unknown fields are ignored (not refused) because dashboards written
/// against the older support protocol send `userId`, `username` and the like.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Join {
    #[serde(default)]
    pub from: JoinSide,
    /// Re-join this chat; without it a user asks for help (or re-joins their
    /// open chat) and an agent gets an `Error`.
    #[serde(default, alias = "chatId")]
    pub room_id: Option<Uuid>,
    #[serde(default)]
    pub topic: Option<String>,
    #[serde(default)]
    pub metadata: Option<serde_json::Value>,
}

/// `JoinUser`: claim the request whose room is `room_id`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct JoinUser {
    #[serde(alias = "chatId")]
    pub room_id: Uuid,
}

/// `ChatMessage`, the older support protocol's name for `SendMessage`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
struct ChatMessage {
    room_id: Uuid,
    content: String,
    #[serde(default)]
    message_temp_id: Option<String>,
}

impl From<ChatMessage> for SendMessage {
    fn from(chat: ChatMessage) -> SendMessage {
        SendMessage {
            room_id: chat.room_id,
            message: chat.content,
            message_temp_id: chat.message_temp_id,
            parent_id: None,
        }
    }
}

/// Why a client frame was not understood; becomes an `Error` frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameError {
    pub code: &'static str,
    pub message: String,
    pub reference: Option<String>,
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default, borrow)]
    data: Option<&'a RawValue>,
    #[serde(default, rename = "ref")]
    reference: Option<String>,
}

impl ClientFrame {
    /// Parses one text frame.
    pub fn parse(text: &str) -> Result<ClientFrame, FrameError> {
        let envelope: Envelope = serde_json::from_str(text).map_err(|error| FrameError {
            code: "bad_frame",
            message: format!(
                "frames are JSON objects {{\"type\": ..., \"data\": {{...}}}}: {error}"
            ),
            reference: None,
        })?;
        let reference = envelope.reference;
        let bad_data = |error: serde_json::Error, reference: Option<String>| FrameError {
            code: "bad_data",
            message: format!("invalid data for {}: {error}", envelope.kind),
            reference,
        };
        // `data` of a known type, parsed into that type's fields. Not from an
        // array: serde would fill the fields by position, and `["<room>", "hi"]`
        // would be a `SendMessage` that names none of its fields.
        fn data<T: serde::de::DeserializeOwned>(raw: Option<&RawValue>) -> serde_json::Result<T> {
            let text = raw.map(RawValue::get).unwrap_or("null");
            if text.trim_start().starts_with('[') {
                return Err(serde::de::Error::custom(
                    "data is a JSON object, not an array",
                ));
            }
            serde_json::from_str(text)
        }
        let parsed = match envelope.kind.as_ref() {
            "SendMessage" => data(envelope.data).map(ClientFrame::SendMessage),
            "Resume" => data(envelope.data).map(ClientFrame::Resume),
            "Typing" => data(envelope.data).map(ClientFrame::Typing),
            "MarkRead" => data(envelope.data).map(ClientFrame::MarkRead),
            "SubscribePresence" => Ok(ClientFrame::SubscribePresence),
            "ChatMessage" => {
                data::<ChatMessage>(envelope.data).map(|chat| ClientFrame::SendMessage(chat.into()))
            }
            "Join" => data::<Option<Join>>(envelope.data).map(|join| {
                ClientFrame::Join(join.unwrap_or(Join {
                    from: JoinSide::User,
                    room_id: None,
                    topic: None,
                    metadata: None,
                }))
            }),
            "Load" => Ok(ClientFrame::Load),
            "JoinUser" => data(envelope.data).map(ClientFrame::JoinUser),
            "Ping" => Ok(ClientFrame::Ping),
            other => {
                return Err(FrameError {
                    code: "unknown_type",
                    message: format!("unknown frame type {other:?}"),
                    reference,
                });
            }
        };
        parsed.map_err(|error| bad_data(error, reference))
    }
}

// ---------------------------------------------------------------- server → client

/// A frame the server sends. `MessageReceived` is not here: it is assembled by the
/// ingest script in Redis (see [`MessageReceivedTail`]) so that the sequence number
/// assigned there lands in bytes that no gateway has to re-serialize.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", content = "data")]
pub enum ServerFrame<'a> {
    MessageSentConfirmation(Confirmation<'a>),
    Error {
        code: &'a str,
        message: &'a str,
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a str>,
    },
    /// The `Error` answer to a frame over the socket's rate: the same `type` as
    /// [`ServerFrame::Error`], plus when to try again.
    #[serde(rename = "Error")]
    RateLimited {
        code: &'a str,
        message: &'a str,
        /// Milliseconds until the socket may send a frame again.
        retry_after_ms: u64,
    },
    Pong {},
    Disconnection {
        code: u16,
        reason: &'a str,
    },
    MemberAdded {
        room_id: Uuid,
        user_id: &'a str,
    },
    MemberRemoved {
        room_id: Uuid,
        user_id: &'a str,
    },
    /// What a membership change did to the room (not its member list).
    RoomUpdated(RoomUpdate<'a>),
    RoomDeleted {
        room_id: Uuid,
    },
    MessageEdited {
        id: Uuid,
        room_id: Uuid,
        seq: i64,
        message: &'a str,
        #[serde(with = "time::serde::rfc3339")]
        edited_at: OffsetDateTime,
    },
    MessageDeleted {
        id: Uuid,
        room_id: Uuid,
        seq: i64,
        #[serde(with = "time::serde::rfc3339")]
        deleted_at: OffsetDateTime,
    },
    ReadReceipt {
        room_id: Uuid,
        user_id: &'a str,
        seq: i64,
    },
    /// `user_id` comes first: the hub reads it to skip the typist's own sockets.
    Typing {
        user_id: &'a str,
        room_id: Uuid,
    },
    /// Every missed message of the room up to `seq` has been sent.
    Resumed {
        room_id: Uuid,
        seq: i64,
    },
    /// The gap is too large to replay: reload the room's history over REST.
    ResyncRequired {
        room_id: Uuid,
    },
    /// Support desk, to agents: a user asked for help. Also the answer to the
    /// user's own `Join` that created the request.
    UserJoined(&'a SupportRequestView),
    /// Support desk: the queue, oldest first (the answer to `Load`).
    PendingUsers {
        requests: &'a [SupportRequestView],
    },
    /// Support desk, to agents: the request left the queue (claimed, expired,
    /// closed).
    RemoveUser {
        user_id: &'a str,
        room_id: Uuid,
    },
    /// Support desk, to the user: an agent took the chat.
    SupportJoinedUser {
        support_id: &'a str,
        support_name: &'a str,
        room_id: Uuid,
    },
    /// Support desk: the answer to a re-`Join` of an open chat.
    ChatHistory {
        room_id: Uuid,
        messages: &'a [MessageView],
    },
    /// Support desk: the chat went `SUPPORT_EXPIRY_SECS` without a message.
    ChatExpired {
        room_id: Uuid,
    },
    /// Support desk: the chat was closed on purpose.
    ChatClosed {
        room_id: Uuid,
    },
    /// Support desk: the user who asked has no connection left anywhere.
    UserLeft {
        room_id: Uuid,
        user_id: &'a str,
    },
    /// Support desk: the agent has no connection left anywhere.
    SupportLeft {
        room_id: Uuid,
        user_id: &'a str,
    },
}

/// A support request as dashboards see it (`UserJoined`, `PendingUsers`,
/// `GET /support/requests`).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SupportRequestView {
    pub user_id: String,
    pub username: String,
    pub room_id: Uuid,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    /// Seconds since the request was made.
    pub waiting_secs: i64,
    pub state: crate::store::SupportState,
    #[schema(required)]
    pub topic: Option<String>,
    #[schema(value_type = Object)]
    pub metadata: serde_json::Value,
    /// The agent who claimed it.
    #[schema(required)]
    pub agent_id: Option<String>,
    /// When the chat expires unless someone writes (pending and active only).
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime, required)]
    pub expires_at: Option<OffsetDateTime>,
}

impl SupportRequestView {
    pub fn new(request: &crate::store::SupportRequest, now: OffsetDateTime) -> SupportRequestView {
        let expires_at = request
            .state
            .is_open()
            .then(|| {
                OffsetDateTime::from_unix_timestamp_nanos(
                    i128::from(request.deadline_ms) * 1_000_000,
                )
                .ok()
            })
            .flatten();
        SupportRequestView {
            user_id: request.user_id.clone(),
            username: request.username.clone(),
            room_id: request.room_id,
            created_at: request.created_at,
            waiting_secs: (now - request.created_at).whole_seconds().max(0),
            state: request.state,
            topic: request.topic.clone(),
            metadata: request.metadata.clone(),
            agent_id: request.agent_id.clone(),
            expires_at,
        }
    }
}

/// `RoomUpdated`'s data: the room's own fields, its member count and the change
/// (`added`, `removed`). Not the member list: every member gets this event, so a
/// list in it would cost O(members²) bytes per change; clients that show the
/// list read it with `GET /rooms/{id}`.
#[derive(Debug, Clone, Serialize)]
pub struct RoomUpdate<'a> {
    pub room_id: Uuid,
    pub kind: crate::store::RoomKind,
    pub name: Option<&'a str>,
    pub owner_id: &'a str,
    pub metadata: &'a serde_json::Value,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    pub member_count: usize,
    pub added: &'a [String],
    pub removed: &'a [String],
}

impl<'a> RoomUpdate<'a> {
    /// The update for `room` (as it is after the change).
    pub fn new(
        room: &'a crate::store::Room,
        added: &'a [String],
        removed: &'a [String],
    ) -> RoomUpdate<'a> {
        RoomUpdate {
            room_id: room.id,
            kind: room.kind,
            name: room.name.as_deref(),
            owner_id: &room.owner_id,
            metadata: &room.metadata,
            created_at: room.created_at,
            member_count: room.members.len(),
            added,
            removed,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Confirmation<'a> {
    pub confirmed: bool,
    pub reason: Option<&'a str>,
    pub message_id: Option<Uuid>,
    pub message_temp_id: Option<&'a str>,
    pub seq: Option<i64>,
    /// With `reason: "rate_limited"`: milliseconds until the socket may send
    /// again; resend the message (same `message_temp_id`) then.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

impl ServerFrame<'_> {
    pub fn to_json(&self) -> String {
        // Serializing these plain structs cannot fail: no maps with non-string keys,
        // no custom serializers that error.
        serde_json::to_string(self).unwrap_or_else(|_| String::from("{}"))
    }
}

/// The start of every `Typing` frame: `user_id` is serialized first, so the hub
/// can leave out the typist's own sockets without parsing further.
pub const TYPING_HEAD: &str = r#"{"type":"Typing","#;

/// Whether a frame is an event that changes or describes rooms' membership
/// (`MemberAdded`, `MemberRemoved`, `RoomUpdated`, `RoomDeleted`), read from its
/// first bytes: on a user's channel these go through the hub's membership task,
/// in order; on a room's channel they are a change's one publish to the members
/// who stayed.
pub fn is_membership_event(frame: &str) -> bool {
    const KINDS: [&str; 4] = ["MemberAdded", "MemberRemoved", "RoomUpdated", "RoomDeleted"];
    frame.strip_prefix(r#"{"type":""#).is_some_and(|rest| {
        KINDS
            .iter()
            .any(|kind| rest.starts_with(kind) && rest[kind.len()..].starts_with('"'))
    })
}

/// The start of every `MessageReceived` frame, up to where the sequence number goes.
pub const MESSAGE_RECEIVED_HEAD: &str = r#"{"type":"MessageReceived","data":{"seq":"#;

/// The room and seq of a `MessageReceived` frame, read from its fixed layout
/// (`HEAD`, seq, then `,"id":"<uuid>","room_id":"<uuid>"`) without parsing the
/// whole frame. `None` for any other frame.
pub fn peek_message_received(frame: &str) -> Option<(Uuid, i64)> {
    let rest = frame.strip_prefix(MESSAGE_RECEIVED_HEAD)?;
    let digits = rest.find(|c: char| !c.is_ascii_digit())?;
    let seq = rest[..digits].parse().ok()?;
    let rest = rest[digits..].strip_prefix(r#","id":""#)?;
    let rest = rest.get(36..)?.strip_prefix(r#"","room_id":""#)?;
    let room = Uuid::parse_str(rest.get(..36)?).ok()?;
    Some((room, seq))
}

/// The `created_at` of a `MessageReceived` frame, for the delivery-latency metric.
pub fn peek_created_at(frame: &str) -> Option<OffsetDateTime> {
    let start = frame.find(r#""created_at":""#)? + r#""created_at":""#.len();
    let end = start + frame[start..].find('"')?;
    OffsetDateTime::parse(
        &frame[start..end],
        &time::format_description::well_known::Rfc3339,
    )
    .ok()
}

/// The fields of `MessageReceived` other than `seq`, known before Redis assigns it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MessageReceivedTail<'a> {
    pub id: Uuid,
    pub room_id: Uuid,
    pub sender_id: Cow<'a, str>,
    pub message: Cow<'a, str>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    pub message_temp_id: Option<Cow<'a, str>>,
    pub parent_id: Option<Uuid>,
    /// Only in frames replayed from storage: live frames are never edited yet.
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub edited_at: Option<OffsetDateTime>,
    /// A deleted message replays as a tombstone: empty `message`, this set.
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub deleted_at: Option<OffsetDateTime>,
}

impl MessageReceivedTail<'_> {
    /// The frame's bytes after the sequence number: `,"id":...}}`.
    /// `HEAD + seq + tail` is the complete frame.
    pub fn encode(&self) -> String {
        let object = serde_json::to_string(self).unwrap_or_else(|_| String::from("{}"));
        // `object` is `{...}`; replace its opening brace with the separating comma
        // and close the outer envelope.
        format!(",{}}}", &object[1..])
    }
}

/// A message as clients see it in history and frames.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct MessageView {
    pub id: Uuid,
    pub room_id: Uuid,
    pub seq: i64,
    pub sender_id: String,
    pub message: String,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    #[schema(required)]
    pub message_temp_id: Option<String>,
    #[schema(required)]
    pub parent_id: Option<Uuid>,
    /// Only present once the message was edited: a message reads the same in
    /// history as in its live `MessageReceived` frame.
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub edited_at: Option<OffsetDateTime>,
    /// Only present on a tombstone: the message was deleted and `message` is empty.
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub deleted_at: Option<OffsetDateTime>,
}

impl MessageView {
    /// This message as a `MessageReceived` frame, byte for byte what live
    /// delivery sends.
    pub fn to_frame(&self) -> String {
        let tail = MessageReceivedTail {
            id: self.id,
            room_id: self.room_id,
            sender_id: Cow::Borrowed(&self.sender_id),
            message: Cow::Borrowed(&self.message),
            created_at: self.created_at,
            message_temp_id: self.message_temp_id.as_deref().map(Cow::Borrowed),
            parent_id: self.parent_id,
            edited_at: self.edited_at,
            deleted_at: self.deleted_at,
        };
        format!("{MESSAGE_RECEIVED_HEAD}{}{}", self.seq, tail.encode())
    }
}

/// Truncates a timestamp to microseconds, the precision Postgres keeps, so a
/// message's `created_at` reads the same live and from history.
pub fn now_micros() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    now.replace_nanosecond(now.nanosecond() / 1000 * 1000)
        .unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_errors_are_told_apart() {
        assert_eq!(
            ClientFrame::parse("not json").expect_err("bad").code,
            "bad_frame"
        );
        assert_eq!(
            ClientFrame::parse(r#"{"type":"Dance"}"#)
                .expect_err("bad")
                .code,
            "unknown_type"
        );
        let error =
            ClientFrame::parse(r#"{"type":"SendMessage","data":{"room_id":"x"},"ref":"7"}"#)
                .expect_err("bad");
        assert_eq!(
            (error.code, error.reference.as_deref()),
            ("bad_data", Some("7"))
        );
        assert_eq!(
            ClientFrame::parse(r#"{"type":"Ping"}"#),
            Ok(ClientFrame::Ping)
        );
        // Found by the fuzz test: fields by position are not fields.
        let array = r#"{"type":"SendMessage","data":["01a23151-22f5-7769-98c2-695ab3fc40e5",""]}"#;
        assert_eq!(ClientFrame::parse(array).expect_err("bad").code, "bad_data");
    }

    #[test]
    fn spliced_message_received_is_valid_json() {
        let tail = MessageReceivedTail {
            id: Uuid::now_v7(),
            room_id: Uuid::now_v7(),
            sender_id: "alice".into(),
            message: "hi \"there\"".into(),
            created_at: now_micros(),
            message_temp_id: Some("t1".into()),
            parent_id: None,
            edited_at: None,
            deleted_at: None,
        };
        let frame = format!("{MESSAGE_RECEIVED_HEAD}42{}", tail.encode());
        let value: serde_json::Value = serde_json::from_str(&frame).expect("valid JSON");
        assert_eq!(value["type"], "MessageReceived");
        assert_eq!(value["data"]["seq"], 42);
        assert_eq!(peek_message_received(&frame), Some((tail.room_id, 42)));
        assert_eq!(peek_message_received(r#"{"type":"Pong","data":{}}"#), None);
        let view: MessageView = serde_json::from_value(value["data"].clone()).expect("a message");
        assert_eq!(view.message, "hi \"there\"");
        assert_eq!(view.id, tail.id);
    }

    #[test]
    fn rate_limited_answers_carry_retry_after() {
        let error = ServerFrame::RateLimited {
            code: "rate_limited",
            message: "slow down",
            retry_after_ms: 20,
        }
        .to_json();
        assert_eq!(
            error,
            r#"{"type":"Error","data":{"code":"rate_limited","message":"slow down","retry_after_ms":20}}"#
        );
        let refused = ServerFrame::MessageSentConfirmation(Confirmation {
            confirmed: false,
            reason: Some("rate_limited"),
            message_id: None,
            message_temp_id: Some("t1"),
            seq: None,
            retry_after_ms: Some(40),
        });
        let value: serde_json::Value = serde_json::from_str(&refused.to_json()).expect("JSON");
        assert_eq!(value["data"]["retry_after_ms"], 40);
        assert_eq!(value["data"]["message_temp_id"], "t1");
        let confirmed = ServerFrame::MessageSentConfirmation(Confirmation {
            confirmed: true,
            reason: None,
            message_id: None,
            message_temp_id: None,
            seq: Some(1),
            retry_after_ms: None,
        });
        assert!(!confirmed.to_json().contains("retry_after_ms"));
    }

    #[test]
    fn frame_sniffing_matches_what_is_serialized() {
        let room_id = Uuid::now_v7();
        let typing = ServerFrame::Typing {
            user_id: "ann",
            room_id,
        }
        .to_json();
        assert!(typing.starts_with(TYPING_HEAD), "{typing}");
        for frame in [
            ServerFrame::MemberAdded {
                room_id,
                user_id: "ann",
            },
            ServerFrame::MemberRemoved {
                room_id,
                user_id: "ann",
            },
            ServerFrame::RoomDeleted { room_id },
        ] {
            let text = frame.to_json();
            assert!(is_membership_event(&text), "{text}");
        }
        for text in [
            typing.as_str(),
            r#"{"type":"MemberAddedLater","data":{}}"#,
            r#"{"type":"Member"#,
            r#" {"type":"MemberAdded","data":{}}"#,
            "",
        ] {
            assert!(!is_membership_event(text), "{text}");
        }
        let chat = ServerFrame::ChatExpired { room_id }.to_json();
        assert!(!is_membership_event(&chat) && !chat.starts_with(TYPING_HEAD));
    }
}
