//! Each room's messages reach this gateway's sockets in seq order and once,
//! also across a pub/sub reconnect.
//!
//! Redis publishes a room's `MessageReceived` frames in seq order (the ingest
//! script assigns the seq and publishes in one step), but a subscriber that
//! reconnects misses whatever was published meanwhile — and in a quiet room
//! nothing would ever tell a socket. So the hub keeps a *cursor* per room it
//! delivers: the last seq it handed to its sockets.
//!
//! - Live: a frame is delivered and moves the cursor. No seq is ever dropped
//!   as "old" on the live path: after Redis lost its data a room's seqs start
//!   again lower, and those messages must still be delivered.
//! - On a reconnect (or when the dispatcher fell behind its stream) every
//!   cursor starts *parking* live frames. Once every channel is subscribed
//!   again, the repair reads what each room missed from its recent log (one
//!   script call per room), then delivers the missed frames and the parked ones
//!   in seq order, without duplicates, under the cursor's lock so no live frame
//!   can overtake them. A frame the repair replayed may still arrive live
//!   afterwards (published before the log was read, delivered by pub/sub
//!   after): until a live frame passes the replayed seqs, those are dropped.
//! - What the log no longer holds (trimmed, expired, or Redis lost its data)
//!   cannot be replayed: the room's sockets get `ResyncRequired {room_id}` and
//!   reload history over REST.
//!
//! A room has a cursor from the first frame this gateway delivers for it until
//! its channel has no local socket left. Only the cluster's dispatcher goes
//! through here: the embedded bus delivers under its own lock, in order.

use super::Hub;
use axum::extract::ws::Utf8Bytes;
use chatter_shared::ingest::{RecentLog, RecentScript};
use chatter_shared::keyspace;
use chatter_shared::protocol::ServerFrame;
use fred::prelude::*;
use uuid::Uuid;

/// Live frames one room parks while its repair runs; past it the repair is
/// given up for that room (its sockets are told to resync).
const MAX_PARKED: usize = 4096;

#[derive(Default)]
pub(super) struct Cursor {
    last: i64,
    /// `Some` while a repair is due or running.
    parked: Option<Vec<(i64, Utf8Bytes)>>,
    /// The highest seq the last repair replayed from the log, until live
    /// delivery passes it.
    replayed_up_to: Option<i64>,
}

/// Reads a room's missed frames from Redis for the repair.
#[derive(Clone)]
pub struct RecentReader {
    pub client: Client,
    pub script: RecentScript,
    /// `RECENT_LOG_SIZE`: no more can be in the log.
    pub limit: u64,
}

impl Hub {
    /// Delivers a live `MessageReceived` of `room_id` at `seq` (see the module
    /// doc). Never waits: the cursor's lock is held only to compare, park or
    /// push into socket queues.
    pub(super) fn deliver_in_order(
        &self,
        channel: &str,
        room_id: Uuid,
        seq: i64,
        frame: Utf8Bytes,
    ) {
        let mut cursor = self.cursors.entry(room_id).or_default();
        if let Some(up_to) = cursor.replayed_up_to {
            if seq <= up_to {
                return;
            }
            cursor.replayed_up_to = None;
        }
        if let Some(parked) = cursor.parked.as_mut() {
            if parked.len() < MAX_PARKED {
                parked.push((seq, frame));
                return;
            }
            tracing::warn!(%room_id, "too many frames parked while repairing; the room's sockets resync");
            let parked = cursor.parked.take().unwrap_or_default();
            self.deliver(channel, &resync(room_id));
            cursor.last = self.deliver_after(channel, cursor.last, parked);
        }
        cursor.last = seq;
        self.deliver(channel, &frame);
    }

    /// A reconnect: every room parks its live frames until it is repaired.
    pub(super) fn park_all(&self) {
        for mut cursor in self.cursors.iter_mut() {
            cursor.parked.get_or_insert_with(Vec::new);
        }
    }

    /// Replays what each parked room missed, then its parked frames.
    pub(super) async fn repair(&self, reader: &RecentReader) {
        let due: Vec<(Uuid, i64)> = self
            .cursors
            .iter()
            .filter(|cursor| cursor.parked.is_some())
            .map(|cursor| (*cursor.key(), cursor.last))
            .collect();
        let mut replayed = 0usize;
        for (room_id, last) in due {
            let log = reader
                .script
                .read(&reader.client, room_id, last, reader.limit)
                .await;
            if let Err(error) = &log {
                tracing::warn!(%error, %room_id, "cannot read a room's recent log to repair it");
            }
            replayed += self.finish_repair(room_id, log.ok());
        }
        if replayed > 0 {
            tracing::info!(replayed, "delivered messages published while reconnecting");
        }
    }

    /// Delivers `log`'s frames after the cursor, then the parked ones, and
    /// stops parking. Returns how many missed frames came from the log.
    fn finish_repair(&self, room_id: Uuid, log: Option<RecentLog>) -> usize {
        let channel = keyspace::room_channel(room_id);
        let Some(mut cursor) = self.cursors.get_mut(&room_id) else {
            return 0;
        };
        let parked = cursor.parked.take().unwrap_or_default();
        let mut replayed = 0;
        match log {
            Some(log) if log.last_seq >= cursor.last => {
                let missed: Vec<(i64, Utf8Bytes)> = log
                    .frames
                    .into_iter()
                    .filter(|(seq, _)| *seq > cursor.last)
                    .map(|(seq, frame)| (seq, Utf8Bytes::from(frame)))
                    .collect();
                // The log starts after the first missed seq: the rest is gone.
                let first_missed = missed.first().map_or(log.last_seq, |(seq, _)| *seq - 1);
                if first_missed > cursor.last {
                    self.deliver(&channel, &resync(room_id));
                }
                replayed = missed.len();
                cursor.last = self.deliver_after(&channel, cursor.last, missed);
                if replayed > 0 {
                    cursor.replayed_up_to = Some(cursor.last);
                }
            }
            // The counter went backwards (Redis lost its data) or the log could
            // not be read: nothing to replay from.
            _ => {
                self.deliver(&channel, &resync(room_id));
                let lowest = parked.iter().map(|(seq, _)| *seq).min();
                cursor.last = lowest.map_or(cursor.last, |seq| seq - 1);
            }
        }
        cursor.last = self.deliver_after(&channel, cursor.last, parked);
        replayed
    }

    /// Delivers `frames` above `last` in seq order; the new last seq.
    fn deliver_after(
        &self,
        channel: &str,
        mut last: i64,
        mut frames: Vec<(i64, Utf8Bytes)>,
    ) -> i64 {
        frames.sort_by_key(|(seq, _)| *seq);
        for (seq, frame) in frames {
            if seq > last {
                self.deliver(channel, &frame);
                last = seq;
            }
        }
        last
    }

    /// The room's channel has no local socket left: forget its cursor.
    pub(super) fn forget_cursor(&self, channel: &str) {
        if let Some(room_id) = channel
            .strip_prefix(keyspace::ROOM_CHANNEL_PREFIX)
            .and_then(|id| Uuid::parse_str(id).ok())
        {
            self.cursors.remove(&room_id);
        }
    }
}

fn resync(room_id: Uuid) -> Utf8Bytes {
    Utf8Bytes::from(ServerFrame::ResyncRequired { room_id }.to_json())
}
