//! Calls to the notification service for message recipients.
//!
//! In a cluster notifications are never lost: the persister writes them to the
//! durable outbox stream in the same script call that acknowledges the batch
//! (see `outbox.rs`), and [`NotifTarget`] delivers them from there through the
//! `notifiers` consumer group (`delivery.rs`: retries with backoff, reclaimed
//! from a dead worker, dead-lettered after the last retry). Each call carries
//! `Idempotency-Key: <message id>:<recipient>` so notif can drop a repeat.
//!
//! The embedded mode has no Redis: its notifications go through a bounded
//! in-process queue ([`Notifier::InProcess`]), sent with the same retries; what
//! still fails, or is queued when the process stops, is logged as a dead letter.
//! A crash of the embedded process loses what was queued (README, "Embedded mode").

use crate::dead_letter::DeadLetters;
use chatter_shared::config::Config;
use chatter_shared::ingest::IngestEntry;
use chatter_shared::telemetry::metric;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Mutex, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

/// How long in-flight deliveries may finish after shutdown.
pub const FINISH_GRACE: Duration = Duration::from_secs(5);

/// The body notif expects (see CONTRACTS.md in the project brief).
#[derive(Debug, Clone, Serialize)]
pub struct Notification {
    pub username: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub title: &'static str,
    pub message: String,
    pub link: String,
    pub username_to: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: time::OffsetDateTime,
    pub seen: bool,
}

/// What the outbox keeps of one message for one recipient: enough to build the
/// notification at delivery time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pending {
    pub message_id: Uuid,
    pub room_id: Uuid,
    pub recipient: String,
    pub sender: String,
    pub text: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: time::OffsetDateTime,
}

impl Pending {
    pub fn new(entry: &IngestEntry, recipient: &str) -> Pending {
        Pending {
            message_id: entry.id,
            room_id: entry.room_id,
            recipient: recipient.to_owned(),
            sender: entry.sender_id.clone(),
            text: entry.body.clone(),
            created_at: entry.created_at,
        }
    }

    /// `Idempotency-Key`: the same for every attempt at this message and recipient.
    pub fn idempotency_key(&self) -> String {
        format!("{}:{}", self.message_id, self.recipient)
    }

    /// The notification for this message, standing for `count` messages of the
    /// room (coalesced; this one the last of them).
    pub fn notification(&self, count: u64, app_url: &reqwest::Url) -> Notification {
        let message = if count > 1 {
            format!(
                "{count} new messages; {} messaged you: {}",
                self.sender, self.text
            )
        } else {
            format!("{} messaged you: {}", self.sender, self.text)
        };
        Notification {
            username: self.recipient.clone(),
            kind: "message",
            title: "New message!",
            message,
            link: link(app_url, &self.sender),
            username_to: self.recipient.clone(),
            created_at: self.created_at,
            seen: false,
        }
    }
}

/// Where notifications go: nowhere (no `NOTIFICATION_URL`), the durable outbox
/// (cluster), or the embedded mode's in-process queue.
#[derive(Clone)]
pub enum Notifier {
    Off,
    Outbox,
    InProcess(Arc<InProcess>),
}

/// The HTTP side: notif's URL and credentials, and how attempts are made.
pub struct NotifTarget {
    http: reqwest::Client,
    url: String,
    auth: Option<String>,
    app_url: reqwest::Url,
    pub retries: u32,
    pub backoff: Duration,
}

impl NotifTarget {
    /// `None` without `NOTIFICATION_URL`.
    pub fn from_config(config: &Config) -> anyhow::Result<Option<NotifTarget>> {
        let Some(url) = config.notification_url.clone() else {
            return Ok(None);
        };
        let mut app_url = config.app_url.clone();
        if !app_url.ends_with('/') {
            app_url.push('/');
        }
        let app_url = reqwest::Url::parse(&app_url)
            .map_err(|e| anyhow::anyhow!("APP_URL is not a URL: {e}"))?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(config.notification_timeout_ms))
            .build()?;
        Ok(Some(NotifTarget {
            http,
            url,
            auth: config.notification_auth.clone(),
            app_url,
            retries: config.notification_retries,
            backoff: Duration::from_millis(config.notification_backoff_ms),
        }))
    }

    /// The longest one notification's attempts can take: a worker holding an
    /// outbox entry for less than this is still working on it.
    pub fn budget(&self, config: &Config) -> Duration {
        retry_budget(
            self.retries,
            self.backoff,
            Duration::from_millis(config.notification_timeout_ms),
        )
    }

    /// The JSON body notif gets, as a dead letter keeps it.
    pub fn body(&self, pending: &Pending, count: u64) -> String {
        serde_json::to_string(&pending.notification(count, &self.app_url)).unwrap_or_default()
    }

    /// One call to notif.
    pub async fn send(&self, pending: &Pending, count: u64) -> Result<(), String> {
        let mut request = self
            .http
            .post(&self.url)
            .header("Idempotency-Key", pending.idempotency_key())
            .json(&pending.notification(count, &self.app_url));
        if let Some(auth) = &self.auth {
            request = request.header(reqwest::header::AUTHORIZATION, auth);
        }
        match request.send().await {
            Ok(response) if response.status().is_success() => Ok(()),
            Ok(response) => Err(format!("notif answered {}", response.status())),
            Err(error) => Err(format!("notif unreachable: {error}")),
        }
    }
}

/// Delivers outbox entries (`count`, `notification` fields; see `outbox.rs`).
impl crate::delivery::Attempt for NotifTarget {
    async fn attempt(&self, fields: &HashMap<String, String>, _attempt: u32) -> Result<(), String> {
        let count = fields
            .get("count")
            .and_then(|c| c.parse().ok())
            .unwrap_or(1);
        let pending: Pending = fields
            .get("notification")
            .and_then(|n| serde_json::from_str(n).ok())
            .ok_or_else(|| "an outbox entry without a readable notification".to_owned())?;
        self.send(&pending, count).await
    }

    /// A dead letter keeps the body notif would have got and the idempotency key.
    fn dead_letter(&self, fields: &HashMap<String, String>) -> Vec<(String, String)> {
        let count = fields
            .get("count")
            .and_then(|c| c.parse().ok())
            .unwrap_or(1);
        match fields
            .get("notification")
            .and_then(|n| serde_json::from_str::<Pending>(n).ok())
        {
            Some(pending) => vec![
                ("body".into(), self.body(&pending, count)),
                ("idempotency_key".into(), pending.idempotency_key()),
            ],
            None => fields.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        }
    }
}

/// The sum of every attempt's timeout and every backoff between them.
pub fn retry_budget(retries: u32, backoff: Duration, timeout: Duration) -> Duration {
    let mut total = timeout;
    let mut wait = backoff;
    for _ in 0..retries {
        total += wait + timeout;
        wait = wait.saturating_mul(2);
    }
    total
}

impl Notifier {
    /// Which notifier the configuration asks for. A cluster worker uses the
    /// outbox; `in_process` is the embedded mode's, whose senders start here.
    pub fn start(
        config: &Config,
        in_process: bool,
        dead_letters: DeadLetters,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Notifier> {
        let Some(target) = NotifTarget::from_config(config)? else {
            tracing::info!("NOTIFICATION_URL is not set: notifications are off");
            return Ok(Notifier::Off);
        };
        if !in_process {
            return Ok(Notifier::Outbox);
        }
        let (queue, receiver) = mpsc::channel(config.notification_queue);
        let inner = Arc::new(InProcess {
            queue,
            pending: Mutex::new(None),
            dead_letters,
            tracker: TaskTracker::new(),
            target: Arc::new(target),
        });
        let slots = Arc::new(Semaphore::new(config.notification_concurrency));
        tokio::spawn(send_all(inner.clone(), receiver, slots, shutdown));
        Ok(Notifier::InProcess(inner))
    }

    pub fn enabled(&self) -> bool {
        !matches!(self, Notifier::Off)
    }

    /// Waits for in-flight in-process deliveries (bounded), dead-lettering what
    /// never started. The outbox needs nothing: what is not sent stays there.
    pub async fn finish(&self) {
        let Notifier::InProcess(inner) = self else {
            return;
        };
        inner.tracker.close();
        let _ = tokio::time::timeout(FINISH_GRACE, inner.tracker.wait()).await;
        if let Some(mut receiver) = inner.pending.lock().await.take() {
            while let Ok(pending) = receiver.try_recv() {
                inner.dead_letter(&pending, "worker shut down").await;
            }
        }
    }
}

/// The embedded mode's queue and senders.
pub struct InProcess {
    queue: mpsc::Sender<Pending>,
    pending: Mutex<Option<mpsc::Receiver<Pending>>>,
    dead_letters: DeadLetters,
    tracker: TaskTracker,
    target: Arc<NotifTarget>,
}

impl InProcess {
    /// Queues a notification; a full queue dead-letters it rather than waiting.
    pub async fn enqueue(&self, pending: Pending) {
        if let Err(error) = self.queue.try_send(pending) {
            let pending = match error {
                mpsc::error::TrySendError::Full(p) | mpsc::error::TrySendError::Closed(p) => p,
            };
            self.dead_letter(&pending, "queue full").await;
        }
    }

    async fn dead_letter(&self, pending: &Pending, problem: &str) {
        metrics::counter!(metric::NOTIFICATIONS, "outcome" => "dead_lettered").increment(1);
        let body = self.target.body(pending, 1);
        self.dead_letters.notification(body, problem).await;
    }
}

/// `<APP_URL>messenger?talking-to=<sender>`, the link the web app understands.
fn link(app_url: &reqwest::Url, sender: &str) -> String {
    let mut url = app_url
        .join("messenger")
        .unwrap_or_else(|_| app_url.clone());
    url.query_pairs_mut().append_pair("talking-to", sender);
    url.to_string()
}

async fn send_all(
    inner: Arc<InProcess>,
    mut receiver: mpsc::Receiver<Pending>,
    slots: Arc<Semaphore>,
    shutdown: CancellationToken,
) {
    loop {
        let pending = tokio::select! {
            () = shutdown.cancelled() => break,
            next = receiver.recv() => match next { Some(n) => n, None => return },
        };
        let Ok(permit) = slots.clone().acquire_owned().await else {
            break;
        };
        let inner_for_task = inner.clone();
        inner.tracker.spawn(async move {
            deliver(&inner_for_task, pending).await;
            drop(permit);
        });
    }
    // Hand the undelivered rest to `finish`, which dead-letters it.
    *inner.pending.lock().await = Some(receiver);
}

async fn deliver(inner: &InProcess, pending: Pending) {
    let target = &inner.target;
    let mut wait = target.backoff;
    let mut last_error = String::new();
    for attempt in 0..=target.retries {
        if attempt > 0 {
            tokio::time::sleep(wait).await;
            wait *= 2;
        }
        match target.send(&pending, 1).await {
            Ok(()) => {
                metrics::counter!(metric::NOTIFICATIONS, "outcome" => "sent").increment(1);
                return;
            }
            Err(error) => last_error = error,
        }
        tracing::debug!(attempt, error = %last_error, "notification attempt failed");
    }
    inner.dead_letter(&pending, &last_error).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_follow_the_web_app_contract() {
        let app = reqwest::Url::parse("https://emotives.example/").expect("url");
        assert_eq!(
            link(&app, "bob smith"),
            "https://emotives.example/messenger?talking-to=bob+smith"
        );
    }

    #[test]
    fn a_coalesced_notification_says_how_many_messages() {
        let app = reqwest::Url::parse("https://emotives.example/").expect("url");
        let pending = Pending {
            message_id: Uuid::nil(),
            room_id: Uuid::nil(),
            recipient: "bob".into(),
            sender: "alice".into(),
            text: "hi".into(),
            created_at: time::OffsetDateTime::UNIX_EPOCH,
        };
        assert_eq!(
            pending.notification(1, &app).message,
            "alice messaged you: hi"
        );
        assert_eq!(
            pending.notification(7, &app).message,
            "7 new messages; alice messaged you: hi"
        );
        assert_eq!(
            pending.idempotency_key(),
            "00000000-0000-0000-0000-000000000000:bob"
        );
    }

    #[test]
    fn the_retry_budget_adds_timeouts_and_backoffs() {
        let ms = Duration::from_millis;
        assert_eq!(retry_budget(0, ms(100), ms(1000)), ms(1000));
        assert_eq!(retry_budget(2, ms(100), ms(1000)), ms(3000 + 100 + 200));
    }
}
