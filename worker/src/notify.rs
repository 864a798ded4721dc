//! Calls to the notification service for message recipients.
//!
//! Notifications must never slow persistence down: the persister queues them
//! (bounded) and moves on; a fixed number of concurrent senders deliver them with
//! retries and exponential backoff. What still fails — after the last retry, with
//! the queue full, or at shutdown — is written to the `chatter:notify:dead` stream
//! for an operator to inspect or replay.

use crate::dead_letter::DeadLetters;
use chatter_shared::config::Config;
use chatter_shared::ingest::IngestEntry;
use chatter_shared::telemetry::metric;
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Mutex, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long in-flight deliveries may finish after shutdown.
const FINISH_GRACE: Duration = Duration::from_secs(5);

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

impl Notification {
    /// The notification telling `recipient` about `entry`.
    pub fn for_message(
        entry: &IngestEntry,
        recipient: &str,
        app_url: &reqwest::Url,
    ) -> Notification {
        Notification {
            username: recipient.to_owned(),
            kind: "message",
            title: "New message!",
            message: format!("{} messaged you: {}", entry.sender_id, entry.body),
            link: link(app_url, &entry.sender_id),
            username_to: recipient.to_owned(),
            created_at: entry.created_at,
            seen: false,
        }
    }
}

#[derive(Clone)]
pub struct Notifier {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    queue: mpsc::Sender<Notification>,
    pending: Mutex<Option<mpsc::Receiver<Notification>>>,
    dead_letters: DeadLetters,
    app_url: reqwest::Url,
    tracker: TaskTracker,
}

struct Target {
    http: reqwest::Client,
    url: String,
    auth: Option<String>,
    retries: u32,
    backoff: Duration,
}

impl Notifier {
    /// Starts the senders; a notifier without `NOTIFICATION_URL` does nothing.
    pub fn start(
        config: &Config,
        dead_letters: DeadLetters,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Notifier> {
        let Some(url) = config.notification_url.clone() else {
            tracing::info!("NOTIFICATION_URL is not set: notifications are off");
            return Ok(Notifier { inner: None });
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
        let target = Arc::new(Target {
            http,
            url,
            auth: config.notification_auth.clone(),
            retries: config.notification_retries,
            backoff: Duration::from_millis(config.notification_backoff_ms),
        });
        let (queue, receiver) = mpsc::channel(config.notification_queue);
        let inner = Arc::new(Inner {
            queue,
            pending: Mutex::new(None),
            dead_letters,
            app_url,
            tracker: TaskTracker::new(),
        });
        let slots = Arc::new(Semaphore::new(config.notification_concurrency));
        tokio::spawn(send_all(inner.clone(), target, receiver, slots, shutdown));
        Ok(Notifier { inner: Some(inner) })
    }

    pub fn enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// Queues the notification of `entry` for `recipient`; a full queue
    /// dead-letters it rather than waiting.
    pub async fn enqueue(&self, entry: &IngestEntry, recipient: &str) {
        let Some(inner) = &self.inner else { return };
        let notification = Notification::for_message(entry, recipient, &inner.app_url);
        if let Err(error) = inner.queue.try_send(notification) {
            let notification = match error {
                mpsc::error::TrySendError::Full(n) | mpsc::error::TrySendError::Closed(n) => n,
            };
            dead_letter(&inner.dead_letters, &notification, "queue full").await;
        }
    }

    /// Waits for in-flight deliveries (bounded), dead-lettering what never started.
    pub async fn finish(&self) {
        let Some(inner) = &self.inner else { return };
        inner.tracker.close();
        let _ = tokio::time::timeout(FINISH_GRACE, inner.tracker.wait()).await;
        if let Some(mut receiver) = inner.pending.lock().await.take() {
            while let Ok(notification) = receiver.try_recv() {
                dead_letter(&inner.dead_letters, &notification, "worker shut down").await;
            }
        }
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
    inner: Arc<Inner>,
    target: Arc<Target>,
    mut receiver: mpsc::Receiver<Notification>,
    slots: Arc<Semaphore>,
    shutdown: CancellationToken,
) {
    loop {
        let notification = tokio::select! {
            () = shutdown.cancelled() => break,
            next = receiver.recv() => match next { Some(n) => n, None => return },
        };
        let Ok(permit) = slots.clone().acquire_owned().await else {
            break;
        };
        let (inner_for_task, target) = (inner.clone(), target.clone());
        inner.tracker.spawn(async move {
            deliver(&inner_for_task.dead_letters, &target, notification).await;
            drop(permit);
        });
    }
    // Hand the undelivered rest to `finish`, which dead-letters it.
    *inner.pending.lock().await = Some(receiver);
}

async fn deliver(dead_letters: &DeadLetters, target: &Target, notification: Notification) {
    let mut wait = target.backoff;
    let mut last_error = String::new();
    for attempt in 0..=target.retries {
        if attempt > 0 {
            tokio::time::sleep(wait).await;
            wait *= 2;
        }
        let mut request = target.http.post(&target.url).json(&notification);
        if let Some(auth) = &target.auth {
            request = request.header(reqwest::header::AUTHORIZATION, auth);
        }
        match request.send().await {
            Ok(response) if response.status().is_success() => {
                metrics::counter!(metric::NOTIFICATIONS, "outcome" => "sent").increment(1);
                return;
            }
            Ok(response) => last_error = format!("notif answered {}", response.status()),
            Err(error) => last_error = format!("notif unreachable: {error}"),
        }
        tracing::debug!(attempt, error = %last_error, "notification attempt failed");
    }
    dead_letter(dead_letters, &notification, &last_error).await;
}

async fn dead_letter(dead_letters: &DeadLetters, notification: &Notification, problem: &str) {
    metrics::counter!(metric::NOTIFICATIONS, "outcome" => "dead_lettered").increment(1);
    let body = serde_json::to_string(notification).unwrap_or_default();
    dead_letters.notification(body, problem).await;
}

#[cfg(test)]
mod tests {
    use super::link;

    #[test]
    fn links_follow_the_web_app_contract() {
        let app = reqwest::Url::parse("https://emotives.example/").expect("url");
        assert_eq!(
            link(&app, "bob smith"),
            "https://emotives.example/messenger?talking-to=bob+smith"
        );
    }
}
