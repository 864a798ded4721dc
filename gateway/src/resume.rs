//! `Resume`: replaying what a reconnecting client missed, in order, exactly once.
//!
//! A client that reconnects sends `Resume {rooms: {room_id: last_seq}}`. For each
//! room the gateway sends every `MessageReceived` after `last_seq`, then
//! `Resumed {room_id, seq}`; live delivery continues after `seq`.
//!
//! Sources, newest first: the room's recent log on the bus (the newest
//! `RECENT_LOG_SIZE` frames, written by the same call that accepts a message),
//! then Postgres for anything older. Only the missed part of the log is read
//! (by seq, after `last_seq`, at most `RESUME_MAX + 1` frames), and one frame
//! may list at most `RESUME_MAX_ROOMS` rooms, so the work one `Resume` causes
//! is bounded by what the client really missed. Postgres may trail the log by the worker's
//! lag, so a gap between the two is retried briefly before giving up with
//! `ResyncRequired` (also the answer when more than `RESUME_MAX` were missed).
//!
//! Exactly once, in order, against live delivery racing the replay: the socket is
//! subscribed before the client can send `Resume`. So a new connection *holds*
//! its live frames (in its bounded queue) until its first frame has been handled
//! — a reconnecting client sends `Resume` first — or `HOLD` has passed. After a
//! replay up to seq N, live frames at or below N (and below the client's own
//! `last_seq`) are dropped. If a `Resume` comes after live frames went out, the
//! replay stops just below the first live seq sent, so nothing is sent twice.

use crate::state::App;
use chatter_shared::protocol::{Resume, ServerFrame, peek_message_received};
use chatter_shared::store::HistoryPage;
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// How long after connecting a `Resume` is expected; first live seqs are only
/// tracked (a cheap peek at each outgoing frame) during this window.
const WATCH_WINDOW: Duration = Duration::from_secs(10);
/// How long a new connection holds live frames waiting for its first frame.
const HOLD: Duration = Duration::from_secs(1);
/// How long a replay waits for the worker to close a gap between Postgres and the log.
const GAP_RETRIES: u32 = 10;
const GAP_RETRY_EVERY: Duration = Duration::from_millis(200);
/// How long one `Resume` frame may wait for gaps in all, whatever its rooms.
pub const FRAME_GAP_BUDGET: Duration = Duration::from_secs(3);

/// Per-connection bookkeeping that keeps replay and live delivery disjoint.
pub struct Watch {
    opened: Instant,
    holding: bool,
    first_live: HashMap<Uuid, i64>,
    /// Live frames at or below these seqs were replayed: drop them.
    replayed_up_to: HashMap<Uuid, i64>,
}

impl Watch {
    /// The watch of a connection that has just been upgraded.
    pub fn at_connect() -> Watch {
        Watch {
            opened: Instant::now(),
            holding: true,
            first_live: HashMap::new(),
            replayed_up_to: HashMap::new(),
        }
    }

    /// While true, live frames wait in the connection's queue.
    pub fn holding(&self) -> bool {
        self.holding
    }

    /// When the hold ends by itself.
    pub fn hold_ends(&self) -> tokio::time::Instant {
        tokio::time::Instant::from_std(self.opened + HOLD)
    }

    /// Lets live frames flow: the client has spoken, or the hold ran out.
    pub fn release(&mut self) {
        self.holding = false;
    }

    fn watching(&self) -> bool {
        self.opened.elapsed() < WATCH_WINDOW
    }

    /// Whether a live frame should be sent. Costs nothing once the connection is
    /// past its first seconds and has no replay to guard.
    pub fn admit(&mut self, frame: &str) -> bool {
        let watching = self.watching();
        if !watching && self.replayed_up_to.is_empty() {
            return true;
        }
        let Some((room, seq)) = peek_message_received(frame) else {
            return true;
        };
        if watching {
            self.first_live.entry(room).or_insert(seq);
        }
        match self.replayed_up_to.get(&room) {
            Some(&up_to) if seq <= up_to => false,
            Some(_) => {
                // Live delivery has passed the replay: nothing more to drop here.
                self.replayed_up_to.remove(&room);
                true
            }
            None => true,
        }
    }
}

/// Why a `Resume` is refused as a whole: it lists more than `RESUME_MAX_ROOMS`
/// rooms. Each room costs a bus read and perhaps database reads, so one frame's
/// work stays bounded; a client with more rooms sends several frames.
pub fn too_many_rooms(app: &App, request: &Resume) -> Option<String> {
    let max = app.config.resume_max_rooms;
    (request.rooms.len() > max).then(|| {
        format!(
            "a Resume lists at most {max} rooms ({} given); send several",
            request.rooms.len()
        )
    })
}

/// The frames answering `Resume` for one room the caller belongs to.
/// Waiting for the worker to close a gap stops at `deadline`, shared by every
/// room of one `Resume` frame, so one frame cannot stall its socket for long.
pub async fn replay(
    app: &App,
    room_id: Uuid,
    last_seq: i64,
    watch: &mut Watch,
    deadline: Instant,
) -> Vec<String> {
    let resync = || vec![ServerFrame::ResyncRequired { room_id }.to_json()];
    let last_seq = last_seq.max(0);
    // Only what was missed, and one more than a replay may hold: past that
    // the answer is `ResyncRequired` whatever the rest says.
    let limit = app.config.resume_max.saturating_add(1);
    let log = match app.bus.recent(room_id, last_seq, limit).await {
        Ok(log) => log,
        Err(error) => {
            tracing::warn!(%error, "cannot read a room's recent log");
            return resync();
        }
    };
    let newest = log
        .last_seq
        .max(log.frames.last().map_or(0, |(seq, _)| *seq));
    // The connect race: live delivery started at `first` before this Resume was
    // handled, so the replay stops just below it. A client already past `first`
    // (a later Resume on the same socket, asking for a hole it found) gets all
    // it asks for, and live frames up to `newest` are then dropped.
    let live_from = watch
        .first_live
        .get(&room_id)
        .copied()
        .filter(|first| last_seq < first - 1);
    let up_to = live_from.map_or(newest, |first| first - 1);
    if up_to <= last_seq {
        // Nothing missed; live frames the client already has are not sent again.
        if live_from.is_none() {
            watch.replayed_up_to.insert(room_id, last_seq);
        }
        return vec![
            ServerFrame::Resumed {
                room_id,
                seq: last_seq.max(up_to),
            }
            .to_json(),
        ];
    }
    let missed = up_to - last_seq;
    if missed > i64::try_from(app.config.resume_max).unwrap_or(i64::MAX) {
        return resync();
    }
    let mut frames: BTreeMap<i64, String> = log
        .frames
        .into_iter()
        .filter(|(seq, _)| *seq > last_seq && *seq <= up_to)
        .collect();
    let mut tries = 0;
    while (frames.len() as i64) < missed {
        // Older than the log holds: read Postgres, waiting briefly for the worker.
        match app
            .store
            .history(
                room_id,
                HistoryPage::After {
                    seq: last_seq,
                    limit: missed,
                },
            )
            .await
        {
            Ok(stored) => {
                for message in stored.into_iter().filter(|m| m.seq <= up_to) {
                    frames
                        .entry(message.seq)
                        .or_insert_with(|| message.to_frame());
                }
            }
            Err(error) => tracing::warn!(%error, "cannot read history for a replay"),
        }
        tries += 1;
        if (frames.len() as i64) >= missed || tries >= GAP_RETRIES || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(GAP_RETRY_EVERY).await;
    }
    if (frames.len() as i64) < missed {
        return resync();
    }
    if live_from.is_none() {
        watch.replayed_up_to.insert(room_id, up_to);
    }
    let mut out: Vec<String> = frames.into_values().collect();
    out.push(
        ServerFrame::Resumed {
            room_id,
            seq: up_to,
        }
        .to_json(),
    );
    out
}
