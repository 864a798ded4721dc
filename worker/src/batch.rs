//! Storing a batch of accepted messages and notifying their recipients: the part
//! of the worker that does not care where the batch came from (the Redis ingest
//! stream in a cluster, an in-process queue in the embedded mode).

use crate::dead_letter::DeadLetters;
use crate::notify::{Notifier, Pending};
use crate::outbox::Followups;
use chatter_shared::events::{Event, EventType, Events};
use chatter_shared::ingest::IngestEntry;
use chatter_shared::store::{Store, is_transient};
use chatter_shared::telemetry::metric;
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Backoff bounds while a backend is unavailable.
pub const RETRY_MIN: Duration = Duration::from_millis(100);
pub const RETRY_MAX: Duration = Duration::from_secs(2);

#[derive(Clone)]
pub struct Batches {
    pub store: Store,
    pub notifier: Notifier,
    pub dead_letters: DeadLetters,
    pub presence: Presence,
    /// Where `message.created` goes (off without `WEBHOOK_URL`).
    pub events: Events,
}

/// What storing a batch did: the messages stored now, and every message of the
/// batch that is in the database (stored now or before).
#[derive(Debug, Default)]
pub struct Stored {
    pub inserted: HashSet<Uuid>,
    pub persisted: HashSet<Uuid>,
}

/// Who is online, for skipping notifications to people who saw the message live.
#[derive(Clone)]
pub enum Presence {
    /// Cluster-wide presence in Redis.
    Redis(
        fred::clients::Client,
        chatter_shared::presence::PresenceKeys,
    ),
    /// The embedded mode's in-process view.
    Local(std::sync::Arc<dyn Fn(&str) -> bool + Send + Sync>),
}

impl Presence {
    /// Which of `users` are online. If Redis cannot say, everyone counts as
    /// offline: a notification too many beats one missed.
    async fn online(&self, users: &[String]) -> Vec<bool> {
        match self {
            Presence::Redis(client, keys) => chatter_shared::presence::online(client, *keys, users)
                .await
                .unwrap_or_else(|error| {
                    tracing::warn!(%error, "cannot read presence; notifying everyone");
                    vec![false; users.len()]
                }),
            Presence::Local(is_online) => users.iter().map(|u| is_online(u)).collect(),
        }
    }
}

impl Batches {
    /// Inserts the batch, retrying while the database is unavailable. A batch that
    /// fails for another reason is stored entry by entry, and entries that still
    /// fail are dead-lettered with all their fields, so one bad row never blocks
    /// the rest. `None` when `shutdown` interrupts the retries, or when the
    /// database or the dead-letter stream fails midway through the entries: the
    /// caller then leaves the batch unacknowledged, to be retried (entries
    /// already stored are skipped by their id then).
    pub async fn store(
        &self,
        batch: &[IngestEntry],
        shutdown: &CancellationToken,
    ) -> Option<Stored> {
        let mut backoff = RETRY_MIN;
        loop {
            match self.store.insert_messages(batch).await {
                Ok(inserted) => {
                    record_stored(batch, inserted.len());
                    return Some(Stored {
                        inserted: inserted.into_iter().collect(),
                        persisted: batch.iter().map(|e| e.id).collect(),
                    });
                }
                Err(error) if is_transient(&error) => {
                    tracing::warn!(%error, "database unavailable; retrying the batch");
                    if !sleep_or_cancel(&mut backoff, shutdown).await {
                        return None;
                    }
                }
                Err(error) => {
                    tracing::error!(%error, "batch insert failed; storing entries one by one");
                    let mut stored = Stored::default();
                    for entry in batch {
                        match self
                            .store
                            .insert_messages(std::slice::from_ref(entry))
                            .await
                        {
                            Ok(ids) => {
                                stored.inserted.extend(ids);
                                stored.persisted.insert(entry.id);
                            }
                            Err(error) if is_transient(&error) => return None,
                            Err(error) => {
                                let problem = error.to_string();
                                if !self.dead_letters.ingest(entry.to_fields(), &problem).await {
                                    return None;
                                }
                            }
                        }
                    }
                    return Some(stored);
                }
            }
        }
    }

    /// The embedded mode: queues the notifications and events of the newly
    /// stored messages in process.
    pub async fn notify(&self, batch: &[IngestEntry], inserted: &HashSet<Uuid>) {
        let followups = self.followups(batch, inserted).await;
        if let Notifier::InProcess(queue) = &self.notifier {
            for pending in followups.notifications {
                queue.enqueue(pending).await;
            }
        }
        for event in followups.events {
            self.events
                .record_event(EventType::MessageCreated, event)
                .await;
        }
    }

    /// A notification for every offline member but the sender, and a
    /// `message.created` event, for each message of `batch` in `which`.
    pub async fn followups(&self, batch: &[IngestEntry], which: &HashSet<Uuid>) -> Followups {
        let fresh: Vec<&IngestEntry> = batch.iter().filter(|e| which.contains(&e.id)).collect();
        let events = if self.events.wants(EventType::MessageCreated) {
            fresh.iter().map(|entry| created_event(entry)).collect()
        } else {
            Vec::new()
        };
        Followups {
            notifications: self.recipients(&fresh).await,
            events,
        }
    }

    async fn recipients(&self, fresh: &[&IngestEntry]) -> Vec<Pending> {
        if !self.notifier.enabled() || fresh.is_empty() {
            return Vec::new();
        }
        let mut rooms: Vec<Uuid> = fresh.iter().map(|e| e.room_id).collect();
        rooms.sort_unstable();
        rooms.dedup();
        let members = match self.store.members_of(&rooms).await {
            Ok(members) => members,
            Err(error) => {
                tracing::warn!(%error, count = fresh.len(), "cannot load recipients; notifications skipped");
                return Vec::new();
            }
        };
        let mut by_room: HashMap<Uuid, Vec<&str>> = HashMap::new();
        for member in &members {
            by_room
                .entry(member.room_id)
                .or_default()
                .push(&member.user_id);
        }
        // Only recipients who are offline when the message is stored.
        let mut recipients: Vec<String> =
            by_room.values().flatten().map(|u| u.to_string()).collect();
        recipients.sort_unstable();
        recipients.dedup();
        let online: HashSet<String> = recipients
            .iter()
            .zip(self.presence.online(&recipients).await)
            .filter(|(_, online)| *online)
            .map(|(user, _)| user.clone())
            .collect();
        let mut pending = Vec::new();
        for entry in fresh {
            for recipient in by_room.get(&entry.room_id).into_iter().flatten() {
                if *recipient != entry.sender_id && !online.contains(*recipient) {
                    pending.push(Pending::new(entry, recipient));
                }
            }
        }
        pending
    }
}

/// `message.created`, with the message's id as the event id: a replay repeats it.
fn created_event(entry: &IngestEntry) -> Event {
    let data = serde_json::json!({
        "id": entry.id,
        "room_id": entry.room_id,
        "seq": entry.seq,
        "sender_id": entry.sender_id,
        "message": entry.body,
        "message_temp_id": entry.temp_id,
        "parent_id": entry.parent_id,
        "created_at": entry
            .created_at
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
    });
    Event::with_id(entry.id.to_string(), EventType::MessageCreated, &data)
}

/// Batch size, and how long after sending each message was committed.
fn record_stored(batch: &[IngestEntry], stored: usize) {
    metrics::histogram!(metric::WORKER_BATCH_SIZE).record(batch.len() as f64);
    metrics::counter!(metric::WORKER_STORED).increment(stored as u64);
    let now = time::OffsetDateTime::now_utc();
    if let Some(oldest) = batch.iter().map(|e| e.created_at).min() {
        metrics::histogram!(metric::WORKER_LAG_SECONDS)
            .record((now - oldest).as_seconds_f64().max(0.0));
    }
}

/// Sleeps for `backoff` (then doubles it, up to `RETRY_MAX`); false if cancelled.
pub async fn sleep_or_cancel(backoff: &mut Duration, shutdown: &CancellationToken) -> bool {
    let wait = *backoff;
    *backoff = (*backoff * 2).min(RETRY_MAX);
    tokio::select! {
        () = shutdown.cancelled() => false,
        () = tokio::time::sleep(wait) => true,
    }
}
