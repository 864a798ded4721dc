//! Close orders: closing a user's sockets on every gateway at once.
//!
//! A kick, a ban, a content-policy close and a single-session replacement all
//! come down to "close this user's sockets with this code". The order is
//! published on the user's own channel (`chatter:user:<id>`), which exactly the
//! gateways holding one of their sockets subscribe to, so it reaches every such
//! socket in one publish and costs the other gateways nothing. The dispatcher
//! recognises it by its head and hands it to `Hub::close_user`; it never
//! reaches a client as it is: the socket sends `Disconnection {code, reason}`
//! and closes. In the embedded mode the in-process bus routes it the same way.

use crate::bus::{Bus, BusError};
use chatter_shared::keyspace;
use chatter_shared::protocol::CloseCode;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use uuid::Uuid;

/// Every close order starts with this (the `type` field is serialized first).
pub const CLOSE_ORDER_HEAD: &str = r#"{"type":"CloseOrder","#;

/// A WebSocket close reason is at most 123 bytes.
const MAX_REASON_BYTES: usize = 120;

#[derive(Serialize, Deserialize)]
pub struct CloseOrder<'a> {
    #[serde(rename = "type")]
    kind: Cow<'a, str>,
    code: u16,
    pub reason: Cow<'a, str>,
    /// Single session: the connection to keep (it and newer ones stay open).
    pub keep: Option<Uuid>,
}

impl CloseOrder<'_> {
    pub fn parse(frame: &str) -> Option<CloseOrder<'_>> {
        let order: CloseOrder = serde_json::from_str(frame).ok()?;
        Closing::from_code(order.code).map(|_| order)
    }

    pub fn code(&self) -> CloseCode {
        Closing::from_code(self.code).map_or(CloseCode::AdminAction, Closing::code)
    }
}

/// The closes an order may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closing {
    /// 4004: an admin's kick.
    Kick,
    /// 4005: an admin's ban.
    Ban,
    /// 4008: a newer connection under `SESSION_POLICY=single`.
    NewSession,
    /// 4011: too many messages rejected by the content policy.
    Strikes,
}

impl Closing {
    pub fn code(self) -> CloseCode {
        match self {
            Closing::Kick => CloseCode::AdminAction,
            Closing::Ban => CloseCode::Banned,
            Closing::NewSession => CloseCode::NewDevice,
            Closing::Strikes => CloseCode::ContentRejected,
        }
    }

    fn from_code(code: u16) -> Option<Closing> {
        [
            Closing::Kick,
            Closing::Ban,
            Closing::NewSession,
            Closing::Strikes,
        ]
        .into_iter()
        .find(|closing| closing.code().code() == code)
    }
}

/// Closes `user_id`'s sockets on every gateway (but `keep` and newer ones).
pub async fn close_user(
    bus: &Bus,
    user_id: &str,
    closing: Closing,
    reason: &str,
    keep: Option<Uuid>,
) -> Result<(), BusError> {
    let order = CloseOrder {
        kind: Cow::Borrowed("CloseOrder"),
        code: closing.code().code(),
        reason: Cow::Borrowed(truncate(reason, MAX_REASON_BYTES)),
        keep,
    };
    let frame = serde_json::to_string(&order).unwrap_or_default();
    bus.publish(&keyspace::user_channel(user_id), frame).await
}

fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_order_round_trips_and_starts_with_its_head() {
        let keep = Uuid::now_v7();
        let order = CloseOrder {
            kind: Cow::Borrowed("CloseOrder"),
            code: 4008,
            reason: Cow::Borrowed("replaced"),
            keep: Some(keep),
        };
        let frame = serde_json::to_string(&order).expect("json");
        assert!(frame.starts_with(CLOSE_ORDER_HEAD), "{frame}");
        let parsed = CloseOrder::parse(&frame).expect("parsed");
        assert_eq!(parsed.code(), CloseCode::NewDevice);
        assert_eq!(parsed.keep, Some(keep));
    }

    #[test]
    fn unknown_codes_are_not_orders_and_reasons_are_cut_at_a_char_boundary() {
        let frame = r#"{"type":"CloseOrder","code":4009,"reason":"x","keep":null}"#;
        assert!(CloseOrder::parse(frame).is_none());
        let long = "é".repeat(100);
        let cut = truncate(&long, MAX_REASON_BYTES);
        assert!(cut.len() <= MAX_REASON_BYTES && long.starts_with(cut));
    }
}
