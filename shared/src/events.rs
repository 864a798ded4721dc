//! Events for the outbound webhook (`WEBHOOK_URL`): what happened, recorded
//! where the worker will find it, never sent from the request path.
//!
//! In a cluster an event is one `XADD` to the `chatter:events` stream (capped
//! at `MAXLEN ~ INGEST_MAX_BACKLOG`, so a worker fleet that is down cannot
//! exhaust Redis memory); workers read it through their own consumer group
//! (`webhooks`) and deliver it with retries (see the worker's `webhook` module).
//! In the embedded mode the event goes to a bounded in-process queue that the
//! embedded worker drains; a full queue drops the event with a warning.
//!
//! With `WEBHOOK_URL` unset, or a type left out of `WEBHOOK_EVENTS`, recording
//! costs nothing: no JSON is built and nothing is sent.
//!
//! # Recording an event
//!
//! ```ignore
//! state.events.record(EventType::SupportClaimed, || json!({ "chat_id": id, "agent": agent })).await;
//! ```
//!
//! The body POSTed is `{"id", "type", "created_at", "data"}`; `id` is what the
//! receiver sees in `X-Webhook-Id`, the same on every retry.

use crate::config::Config;
use crate::keyspace::EVENTS_STREAM;
use fred::prelude::*;
use serde::Serialize;
use serde_json::Value;
use std::sync::Arc;
use tokio::sync::mpsc;
use uuid::Uuid;

/// Every event type, as named in `WEBHOOK_EVENTS` and the body's `type`.
pub const EVENT_TYPES: &[&str] = &[
    "message.created",
    "message.edited",
    "message.deleted",
    "room.created",
    "room.deleted",
    "member.added",
    "member.removed",
    "support.requested",
    "support.claimed",
    "support.expired",
];

/// How many events the embedded mode's in-process queue holds.
pub const LOCAL_QUEUE: usize = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    MessageCreated,
    MessageEdited,
    MessageDeleted,
    RoomCreated,
    RoomDeleted,
    MemberAdded,
    MemberRemoved,
    /// A user asked the live support desk for help.
    SupportRequested,
    /// An agent took a waiting user.
    SupportClaimed,
    /// A support chat expired without messages.
    SupportExpired,
}

impl EventType {
    /// The wire name (`message.created`, …).
    pub fn name(self) -> &'static str {
        EVENT_TYPES[self as usize]
    }
}

/// One event as sent: `id` goes in `X-Webhook-Id`, `body` is the exact bytes
/// POSTed and signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub id: String,
    pub body: String,
}

impl Event {
    /// An event with a fresh id.
    pub fn new(kind: EventType, data: &Value) -> Event {
        Event::with_id(Uuid::now_v7().to_string(), kind, data)
    }

    /// An event with a given id: `message.created` uses the message's id, so a
    /// replayed message (a worker killed after storing it) repeats the same id
    /// and the receiver can drop the repeat.
    pub fn with_id(id: String, kind: EventType, data: &Value) -> Event {
        #[derive(Serialize)]
        struct Envelope<'a> {
            id: &'a str,
            #[serde(rename = "type")]
            kind: &'static str,
            #[serde(with = "time::serde::rfc3339")]
            created_at: time::OffsetDateTime,
            data: &'a Value,
        }
        let body = serde_json::to_string(&Envelope {
            id: &id,
            kind: kind.name(),
            created_at: crate::protocol::now_micros(),
            data,
        })
        .unwrap_or_default();
        Event { id, body }
    }

    /// The stream entry's fields, as the worker reads them back.
    pub fn to_fields(&self) -> Vec<(&'static str, String)> {
        vec![("id", self.id.clone()), ("event", self.body.clone())]
    }
}

/// Where events are recorded; cheap to clone. [`Events::off`] when webhooks are off.
#[derive(Clone, Default)]
pub struct Events {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    /// Indexed by `EventType as usize`.
    wanted: [bool; EVENT_TYPES.len()],
    sink: Sink,
    max_len: i64,
}

enum Sink {
    Redis(Client),
    Local(mpsc::Sender<Event>),
}

impl Events {
    /// Records nothing.
    pub fn off() -> Events {
        Events { inner: None }
    }

    /// Records to the `chatter:events` stream, if `WEBHOOK_URL` is set.
    pub fn redis(config: &Config, client: Client) -> Events {
        Events::with_sink(config, || Sink::Redis(client))
    }

    /// The embedded mode: records to a bounded queue whose receiving end the
    /// embedded worker drains (`None` when webhooks are off).
    pub fn in_process(config: &Config) -> (Events, Option<mpsc::Receiver<Event>>) {
        let mut receiver = None;
        let events = Events::with_sink(config, || {
            let (sender, rx) = mpsc::channel(LOCAL_QUEUE);
            receiver = Some(rx);
            Sink::Local(sender)
        });
        (events, receiver)
    }

    fn with_sink(config: &Config, sink: impl FnOnce() -> Sink) -> Events {
        if config.webhook_url.is_none() {
            return Events::off();
        }
        let mut wanted = [config.webhook_events.0.is_empty(); EVENT_TYPES.len()];
        for name in &config.webhook_events.0 {
            if let Some(i) = EVENT_TYPES.iter().position(|t| t == name) {
                wanted[i] = true;
            }
        }
        Events {
            inner: Some(Arc::new(Inner {
                wanted,
                sink: sink(),
                max_len: config.ingest_max_backlog.min(i64::MAX as u64) as i64,
            })),
        }
    }

    /// Whether an event of `kind` would be sent at all.
    pub fn wants(&self, kind: EventType) -> bool {
        self.inner
            .as_ref()
            .is_some_and(|inner| inner.wanted[kind as usize])
    }

    /// The cap of the events stream (`MAXLEN ~`), for the worker's own writes.
    pub fn max_len(&self) -> i64 {
        self.inner.as_ref().map_or(0, |inner| inner.max_len)
    }

    /// Records an event of `kind` with the body's `data` from `data()` (only
    /// called when the event is wanted). Never fails the caller: an event that
    /// cannot be recorded is logged at warn level and dropped — the change it
    /// describes is already committed.
    pub async fn record(&self, kind: EventType, data: impl FnOnce() -> Value) {
        if !self.wants(kind) {
            return;
        }
        self.record_event(kind, Event::new(kind, &data())).await;
    }

    /// Records a ready event (of type `kind`), e.g. one whose id is given.
    pub async fn record_event(&self, kind: EventType, event: Event) {
        let Some(inner) = self.inner.as_ref().filter(|i| i.wanted[kind as usize]) else {
            return;
        };
        match &inner.sink {
            Sink::Redis(client) => {
                let added: Result<String, Error> = client
                    .xadd(
                        EVENTS_STREAM,
                        false,
                        ("MAXLEN", "~", inner.max_len),
                        "*",
                        event.to_fields(),
                    )
                    .await;
                if let Err(error) = added {
                    tracing::warn!(%error, event = kind.name(), "cannot record a webhook event");
                }
            }
            Sink::Local(queue) => {
                if queue.try_send(event).is_err() {
                    tracing::warn!(
                        event = kind.name(),
                        "the webhook queue is full; event dropped"
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_declaration_order() {
        assert_eq!(EventType::MessageCreated.name(), "message.created");
        assert_eq!(EventType::MemberRemoved.name(), "member.removed");
        assert_eq!(EventType::SupportExpired.name(), "support.expired");
    }

    #[test]
    fn the_filter_and_the_switch_apply() {
        let off = Config::default();
        assert!(!Events::in_process(&off).0.wants(EventType::RoomCreated));
        let config = Config {
            webhook_url: Some("http://hooks.test/".into()),
            webhook_events: crate::config::StringList(vec!["room.created".into()]),
            ..Config::default()
        };
        let (events, receiver) = Events::in_process(&config);
        assert!(receiver.is_some());
        assert!(events.wants(EventType::RoomCreated));
        assert!(!events.wants(EventType::MessageCreated));
    }

    #[test]
    fn the_body_carries_id_type_and_data() {
        let event = Event::with_id(
            "e-1".into(),
            EventType::RoomDeleted,
            &serde_json::json!({"room_id": "r"}),
        );
        let body: Value = serde_json::from_str(&event.body).expect("json");
        assert_eq!(body["id"], "e-1");
        assert_eq!(body["type"], "room.deleted");
        assert_eq!(body["data"]["room_id"], "r");
        assert!(body["created_at"].is_string());
    }
}
