//! What the coordinator and its agent processes say to each other.
//!
//! The coordinator writes [`Command`]s to an agent's stdin and reads [`Event`]s from
//! its stdout, one JSON object per line. An agent is a separate process because one
//! process can hold at most ~19,900 sockets (the hard open-file limit is 20,000), so a
//! load of more connections than that needs several.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::IpAddr;

/// Coordinator → agent.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Command {
    /// Open these connections (answered by [`Event::Connected`]).
    Setup(Setup),
    /// Wait until every connection that expects a room has been told about it with
    /// `MemberAdded` (answered by [`Event::Rooms`]).
    AwaitRooms { timeout_ms: u64 },
    /// Send on a schedule, drain, and report (answered by [`Event::Step`]).
    Step(StepCmd),
    /// Report open sockets and reconnects now (answered by [`Event::Status`]).
    Status,
    /// Close every connection and exit.
    Quit,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Setup {
    pub agent: usize,
    /// How many agents share the load (each starts its send rotation at a
    /// different point, so agents do not hit the same room at the same moment).
    pub agents: usize,
    pub conns: Vec<ConnSpec>,
    /// Handshakes in flight at once.
    pub connect_concurrency: usize,
    pub connect_timeout_ms: u64,
    /// Length of each message body (the body carries the send instant, padded).
    pub message_bytes: usize,
    /// Reconnect mode (idle connections with a `fallback_url` only): a socket the
    /// server closes is reopened at once on its fallback, with at most this many
    /// attempts per close. 0 = off.
    #[serde(default)]
    pub reconnect_attempts: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConnSpec {
    /// Full `ws://` URL including `?token=`.
    pub url: String,
    /// Local address to bind before connecting (a 127.0.0.x, so the number of
    /// sockets is not capped by one address's ephemeral ports).
    pub source: IpAddr,
    /// Whether this connection expects to be added to a room and sends into it.
    pub in_room: bool,
    /// Position in the send rotation: the schedule walks senders in this order, so
    /// consecutive messages go to different rooms.
    pub order: u64,
    /// Where to reconnect when the server closes the socket (reconnect mode); the
    /// next close goes back to `url`.
    #[serde(default)]
    pub fallback_url: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepCmd {
    pub id: u32,
    /// Wall-clock start (µs since the Unix epoch), the same for every agent.
    pub start_unix_us: u64,
    /// Messages per second this agent sends (its share of the total).
    pub rate: f64,
    pub duration_ms: u64,
    /// The drain waits at least this long after the last scheduled send…
    pub drain_min_ms: u64,
    /// …then until nothing is outstanding and deliveries stopped, at most this long.
    pub drain_max_ms: u64,
}

/// Agent → coordinator.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    Connected {
        ok: u64,
        failed: u64,
        /// Failure kinds and how often each happened.
        errors: BTreeMap<String, u64>,
        elapsed_ms: u64,
    },
    Rooms {
        ready: u64,
        missing: u64,
        elapsed_ms: u64,
    },
    Step(Box<StepStats>),
    Status(StatusStats),
    /// The agent cannot go on; it exits after saying so.
    Fatal {
        message: String,
    },
}

/// One agent's numbers for one step.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StepStats {
    pub id: u32,
    /// Sends the schedule asked for.
    pub scheduled: u64,
    /// Sends written to a socket.
    pub sent: u64,
    /// Sends that could not be written (socket gone, no room yet).
    pub send_failed: u64,
    pub confirmed: u64,
    /// Negative confirmations by reason.
    pub refused: BTreeMap<String, u64>,
    /// `MessageReceived` frames for this step's messages.
    pub deliveries: u64,
    /// …of which arrived before the end of the send window.
    pub deliveries_in_window: u64,
    /// `MessageReceived` frames for messages of earlier steps that arrived now.
    pub late_deliveries: u64,
    /// Send→receive latency in µs of this step's deliveries, as (value, count).
    pub latency_us: Vec<(u64, u64)>,
    /// …of those delivered to the sending connection itself (its own echo).
    pub own_latency_us: Vec<(u64, u64)>,
    /// Send→`MessageSentConfirmation` latency in µs of this step's sends.
    pub ack_latency_us: Vec<(u64, u64)>,
    /// Scheduled→written delay in µs: how far the sender fell behind its schedule.
    pub send_lag_us: Vec<(u64, u64)>,
    /// Per room, cumulative since the start: frames received by this agent's
    /// members that are still open, how many those are, and the highest seq seen
    /// (in a delivery or a confirmation, by any member).
    pub rooms: Vec<RoomCount>,
    /// Connections that ended, by close code (or `eof`/`error`), cumulative.
    pub closes: BTreeMap<String, u64>,
    /// `Error` frames and frames the agent could not parse.
    pub error_frames: u64,
    pub parse_errors: u64,
    /// Deliveries whose seq was not above the previous one on that connection.
    pub out_of_order: u64,
    /// Deliveries for a room the connection was not told it is in.
    pub foreign_deliveries: u64,
    pub open_conns: u64,
    pub drain_ms: u64,
}

/// One agent's sockets right now (reconnect mode's progress).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StatusStats {
    pub open: u64,
    /// Sockets reopened after the server closed them…
    pub reconnects: u64,
    /// …and attempts that failed (each is retried, boundedly).
    pub reconnect_failed: u64,
    /// Failure kinds of those attempts.
    pub reconnect_errors: BTreeMap<String, u64>,
    /// Wall clock (µs since the epoch) of the first close by the server, 0 if none…
    pub first_close_us: u64,
    /// …and of the last successful reconnect, 0 if none.
    pub last_reconnect_us: u64,
    /// Connections that ended, by close code, cumulative.
    pub closes: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoomCount {
    pub room: String,
    pub received: u64,
    pub open_members: u64,
    pub max_seq: u64,
}

/// Adds `other`'s counts into `into`.
pub fn merge_counts(into: &mut BTreeMap<String, u64>, other: &BTreeMap<String, u64>) {
    for (key, value) in other {
        *into.entry(key.clone()).or_default() += value;
    }
}

/// Builds the SendMessage body: `"<step>:<scheduled unix µs>:<origin>:"` padded
/// with `x` to `len` bytes. The receiver reads the step, the scheduled instant and
/// the sending connection (`origin`, see [`origin`]) back.
pub fn message_body(step: u32, scheduled_us: u64, origin: u64, len: usize) -> String {
    let mut body = format!("{step}:{scheduled_us}:{origin}:");
    while body.len() < len {
        body.push('x');
    }
    body
}

/// Reads `(step, scheduled unix µs, origin)` from a body made by [`message_body`].
pub fn parse_body(body: &str) -> Option<(u32, u64, u64)> {
    let mut parts = body.splitn(4, ':');
    let step = parts.next()?.parse().ok()?;
    let scheduled = parts.next()?.parse().ok()?;
    let origin = parts.next()?.parse().ok()?;
    Some((step, scheduled, origin))
}

/// The `message_temp_id` of a send: `"<step>.<scheduled unix µs>.<origin>.<n>"`,
/// unique per sender, and carrying the due instant so that the confirmation's
/// latency can be measured too.
pub fn temp_id(step: u32, scheduled_us: u64, origin: u64, n: u64) -> String {
    format!("{step}.{scheduled_us}.{origin}.{n}")
}

/// `(step, scheduled unix µs)` from a [`temp_id`].
pub fn parse_temp_id(temp_id: &str) -> Option<(u32, u64)> {
    let mut parts = temp_id.splitn(3, '.');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// Identifies a connection across agents: agent in the high 32 bits.
pub fn origin(agent: usize, conn: usize) -> u64 {
    ((agent as u64) << 32) | (conn as u64 & 0xffff_ffff)
}

/// Microseconds since the Unix epoch. Wall clock on purpose: the sender and the
/// receiver of a message are often different processes, and on one machine
/// `CLOCK_REALTIME` is the clock they share.
pub fn unix_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_round_trips() {
        let body = message_body(7, 1_700_000_000_123_456, origin(1, 2), 64);
        assert_eq!(body.len(), 64);
        assert_eq!(
            parse_body(&body),
            Some((7, 1_700_000_000_123_456, (1 << 32) | 2))
        );
        assert_eq!(parse_body("hello"), None);
        assert_eq!(
            parse_temp_id(&temp_id(3, 99, origin(0, 5), 7)),
            Some((3, 99))
        );
        assert_eq!(parse_body("1:x:"), None);
    }

    #[test]
    fn commands_are_one_json_line() {
        let line = serde_json::to_string(&Command::AwaitRooms { timeout_ms: 5 }).expect("json");
        assert!(!line.contains('\n'));
        assert!(matches!(
            serde_json::from_str::<Command>(&line),
            Ok(Command::AwaitRooms { timeout_ms: 5 })
        ));
    }
}
