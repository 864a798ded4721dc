//! The few chatter protocol frames the load generator and the ceiling server use,
//! parsed without copying where possible (the load generator parses every
//! delivery, hundreds of thousands a second).

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::borrow::Cow;

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default, borrow)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct ReceivedData<'a> {
    seq: u64,
    #[serde(borrow)]
    room_id: Cow<'a, str>,
    #[serde(borrow)]
    message: Cow<'a, str>,
}

#[derive(Deserialize)]
struct ConfirmationData<'a> {
    confirmed: bool,
    #[serde(default, borrow)]
    reason: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    message_temp_id: Option<Cow<'a, str>>,
    #[serde(default)]
    seq: Option<u64>,
}

#[derive(Deserialize)]
struct RoomData<'a> {
    #[serde(borrow)]
    room_id: Cow<'a, str>,
}

/// A frame from the server, as far as the load generator cares.
#[derive(Debug, PartialEq)]
pub enum ServerFrame<'a> {
    MessageReceived {
        room_id: Cow<'a, str>,
        seq: u64,
        message: Cow<'a, str>,
    },
    Confirmation {
        confirmed: bool,
        reason: Option<Cow<'a, str>>,
        temp_id: Option<Cow<'a, str>>,
        seq: Option<u64>,
    },
    MemberAdded {
        room_id: Cow<'a, str>,
    },
    Error,
    /// Pong, Disconnection, anything else: counted nowhere.
    Other,
}

/// Parses a server text frame; `None` if it is not the JSON the protocol promises.
pub fn parse_server(text: &str) -> Option<ServerFrame<'_>> {
    let envelope: Envelope = serde_json::from_str(text).ok()?;
    let data = envelope.data.map_or("null", RawValue::get);
    Some(match envelope.kind.as_ref() {
        "MessageReceived" => {
            let d: ReceivedData = serde_json::from_str(data).ok()?;
            ServerFrame::MessageReceived {
                room_id: d.room_id,
                seq: d.seq,
                message: d.message,
            }
        }
        "MessageSentConfirmation" => {
            let d: ConfirmationData = serde_json::from_str(data).ok()?;
            ServerFrame::Confirmation {
                confirmed: d.confirmed,
                reason: d.reason,
                temp_id: d.message_temp_id,
                seq: d.seq,
            }
        }
        "MemberAdded" => {
            let d: RoomData = serde_json::from_str(data).ok()?;
            ServerFrame::MemberAdded { room_id: d.room_id }
        }
        "Error" => ServerFrame::Error,
        _ => ServerFrame::Other,
    })
}

#[derive(Serialize)]
struct SendData<'a> {
    room_id: &'a str,
    message: &'a str,
    message_temp_id: &'a str,
}

#[derive(Serialize)]
#[serde(tag = "type", content = "data")]
enum Outgoing<'a> {
    SendMessage(SendData<'a>),
}

/// `{"type":"SendMessage","data":{"room_id":..,"message":..,"message_temp_id":..}}`
pub fn send_message(room_id: &str, message: &str, temp_id: &str) -> String {
    serde_json::to_string(&Outgoing::SendMessage(SendData {
        room_id,
        message,
        message_temp_id: temp_id,
    }))
    .unwrap_or_default()
}

// ------------------------------------------------------------- the ceiling's side

/// A frame from a client, as far as the ceiling server cares.
#[derive(Debug, PartialEq)]
pub enum ClientFrame<'a> {
    SendMessage {
        room_id: Cow<'a, str>,
        message: Cow<'a, str>,
        temp_id: Option<Cow<'a, str>>,
    },
    Ping,
    Other,
}

#[derive(Deserialize)]
struct ClientSend<'a> {
    #[serde(borrow)]
    room_id: Cow<'a, str>,
    #[serde(borrow)]
    message: Cow<'a, str>,
    #[serde(default, borrow)]
    message_temp_id: Option<Cow<'a, str>>,
}

pub fn parse_client(text: &str) -> Option<ClientFrame<'_>> {
    let envelope: Envelope = serde_json::from_str(text).ok()?;
    Some(match envelope.kind.as_ref() {
        "SendMessage" => {
            let d: ClientSend = serde_json::from_str(envelope.data?.get()).ok()?;
            ClientFrame::SendMessage {
                room_id: d.room_id,
                message: d.message,
                temp_id: d.message_temp_id,
            }
        }
        "Ping" => ClientFrame::Ping,
        _ => ClientFrame::Other,
    })
}

#[derive(Serialize)]
struct ReceivedOut<'a> {
    seq: u64,
    id: &'a str,
    room_id: &'a str,
    sender_id: &'a str,
    message: &'a str,
    created_at: &'a str,
    message_temp_id: Option<&'a str>,
    parent_id: Option<&'a str>,
}

#[derive(Serialize)]
struct ConfirmationOut<'a> {
    confirmed: bool,
    reason: Option<&'a str>,
    message_id: Option<&'a str>,
    message_temp_id: Option<&'a str>,
    seq: Option<u64>,
}

#[derive(Serialize)]
struct MemberAddedOut<'a> {
    room_id: &'a str,
    user_id: &'a str,
}

#[derive(Serialize)]
#[serde(tag = "type", content = "data")]
enum Server<'a> {
    MessageReceived(ReceivedOut<'a>),
    MessageSentConfirmation(ConfirmationOut<'a>),
    MemberAdded(MemberAddedOut<'a>),
    Pong {},
}

/// A `MessageReceived` frame shaped like chatter's.
#[allow(clippy::too_many_arguments)]
pub fn message_received(
    seq: u64,
    id: &str,
    room_id: &str,
    sender_id: &str,
    message: &str,
    created_at: &str,
    temp_id: Option<&str>,
) -> String {
    serde_json::to_string(&Server::MessageReceived(ReceivedOut {
        seq,
        id,
        room_id,
        sender_id,
        message,
        created_at,
        message_temp_id: temp_id,
        parent_id: None,
    }))
    .unwrap_or_default()
}

pub fn confirmation(
    seq: Option<u64>,
    id: Option<&str>,
    temp_id: Option<&str>,
    reason: Option<&str>,
) -> String {
    serde_json::to_string(&Server::MessageSentConfirmation(ConfirmationOut {
        confirmed: seq.is_some(),
        reason,
        message_id: id,
        message_temp_id: temp_id,
        seq,
    }))
    .unwrap_or_default()
}

pub fn member_added(room_id: &str, user_id: &str) -> String {
    serde_json::to_string(&Server::MemberAdded(MemberAddedOut { room_id, user_id }))
        .unwrap_or_default()
}

pub fn pong() -> String {
    serde_json::to_string(&Server::Pong {}).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chatter_frames_parse() {
        let frame = r#"{"type":"MessageReceived","data":{"seq":42,"id":"0190","room_id":"r1","sender_id":"u","message":"3:17:xx","created_at":"2024-01-01T00:00:00Z","message_temp_id":"t","parent_id":null}}"#;
        assert_eq!(
            parse_server(frame),
            Some(ServerFrame::MessageReceived {
                room_id: "r1".into(),
                seq: 42,
                message: "3:17:xx".into()
            })
        );
        let confirmation = r#"{"type":"MessageSentConfirmation","data":{"confirmed":false,"reason":"server_busy","message_id":null,"message_temp_id":"t","seq":null}}"#;
        assert_eq!(
            parse_server(confirmation),
            Some(ServerFrame::Confirmation {
                confirmed: false,
                reason: Some("server_busy".into()),
                temp_id: Some("t".into()),
                seq: None
            })
        );
        assert_eq!(
            parse_server(r#"{"type":"MemberAdded","data":{"room_id":"r","user_id":"u"}}"#),
            Some(ServerFrame::MemberAdded {
                room_id: "r".into()
            })
        );
        assert_eq!(
            parse_server(r#"{"type":"Pong","data":{}}"#),
            Some(ServerFrame::Other)
        );
        assert_eq!(parse_server("garbage"), None);
        assert_eq!(
            parse_server(r#"{"type":"MessageReceived","data":{"seq":"x"}}"#),
            None
        );
    }

    #[test]
    fn ceiling_frames_match_what_the_loadgen_parses() {
        let out = message_received(5, "id", "room", "alice", "1:2:x", "now", Some("t"));
        assert!(out.starts_with(r#"{"type":"MessageReceived","data":{"seq":5,"#));
        assert_eq!(
            parse_server(&out),
            Some(ServerFrame::MessageReceived {
                room_id: "room".into(),
                seq: 5,
                message: "1:2:x".into()
            })
        );
        let send = send_message("room", "hi", "t1");
        assert_eq!(
            parse_client(&send),
            Some(ClientFrame::SendMessage {
                room_id: "room".into(),
                message: "hi".into(),
                temp_id: Some("t1".into())
            })
        );
        assert!(matches!(
            parse_server(&confirmation(Some(3), Some("id"), Some("t"), None)),
            Some(ServerFrame::Confirmation {
                confirmed: true,
                seq: Some(3),
                ..
            })
        ));
        assert_eq!(parse_client(r#"{"type":"Ping"}"#), Some(ClientFrame::Ping));
        assert!(parse_server(&member_added("r", "u")).is_some());
        assert_eq!(parse_server(&pong()), Some(ServerFrame::Other));
    }
}
