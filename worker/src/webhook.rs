//! Outbound webhooks: events (`chatter_shared::events`) POSTed to `WEBHOOK_URL`.
//!
//! Each call carries the event's JSON as recorded, `X-Signature` (hex
//! HMAC-SHA256 of exactly those bytes with `WEBHOOK_SECRET`), `X-Webhook-Id`
//! (the event id, the same on every retry and after a worker crash, for the
//! receiver's dedupe) and `X-Webhook-Attempt` (1, 2, …). A non-2xx answer or a
//! transport error is retried with exponential backoff (`WEBHOOK_RETRIES`,
//! `WEBHOOK_BACKOFF_MS`); then the call goes to `chatter:webhooks:dead`
//! (`MAXLEN ~ DEAD_LETTER_MAX_LEN`). In a cluster, delivery is `delivery.rs`
//! over the `chatter:events` stream; in the embedded mode, [`run_in_process`].
//! Events are delivered concurrently, so their order at the receiver is not
//! guaranteed: each body has its `created_at`.

use chatter_shared::config::Config;
use chatter_shared::events::Event;
use chatter_shared::telemetry::metric;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Deliveries in flight at once per worker.
pub const CONCURRENCY: usize = 16;

pub struct WebhookTarget {
    http: reqwest::Client,
    url: String,
    secret: Vec<u8>,
    pub retries: u32,
    pub backoff: Duration,
    timeout: Duration,
}

impl WebhookTarget {
    /// `None` without `WEBHOOK_URL`.
    pub fn from_config(config: &Config) -> anyhow::Result<Option<WebhookTarget>> {
        let Some(url) = config.webhook_url.clone() else {
            return Ok(None);
        };
        let timeout = Duration::from_millis(config.webhook_timeout_ms);
        Ok(Some(WebhookTarget {
            http: reqwest::Client::builder().timeout(timeout).build()?,
            url,
            secret: config
                .webhook_secret
                .clone()
                .unwrap_or_default()
                .into_bytes(),
            retries: config.webhook_retries,
            backoff: Duration::from_millis(config.webhook_backoff_ms),
            timeout,
        }))
    }

    /// The longest one event's attempts can take.
    pub fn budget(&self) -> Duration {
        crate::notify::retry_budget(self.retries, self.backoff, self.timeout)
    }

    async fn send(&self, id: &str, body: &str, attempt: u32) -> Result<(), String> {
        let response = self
            .http
            .post(&self.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(
                "X-Signature",
                chatter_shared::signature::sign(&self.secret, body.as_bytes()),
            )
            .header("X-Webhook-Id", id)
            .header("X-Webhook-Attempt", attempt.to_string())
            .body(body.to_owned())
            .send()
            .await;
        match response {
            Ok(response) if response.status().is_success() => Ok(()),
            Ok(response) => Err(format!("the webhook answered {}", response.status())),
            Err(error) => Err(format!("the webhook is unreachable: {error}")),
        }
    }
}

/// Delivers `chatter:events` entries (`id`, `event` fields).
impl crate::delivery::Attempt for WebhookTarget {
    async fn attempt(&self, fields: &HashMap<String, String>, attempt: u32) -> Result<(), String> {
        let (Some(id), Some(body)) = (fields.get("id"), fields.get("event")) else {
            return Err("an event entry without id or event".into());
        };
        self.send(id, body, attempt).await
    }

    fn dead_letter(&self, fields: &HashMap<String, String>) -> Vec<(String, String)> {
        fields.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

/// The embedded mode: delivers queued events with the same retries until the
/// queue closes or `shutdown`; what fails is logged as a dead letter.
pub async fn run_in_process(
    target: WebhookTarget,
    mut events: mpsc::Receiver<Event>,
    shutdown: CancellationToken,
) {
    let target = Arc::new(target);
    let slots = Arc::new(Semaphore::new(CONCURRENCY));
    let tracker = TaskTracker::new();
    loop {
        let event = tokio::select! {
            () = shutdown.cancelled() => break,
            next = events.recv() => match next { Some(e) => e, None => break },
        };
        let Ok(permit) = slots.clone().acquire_owned().await else {
            break;
        };
        let target = target.clone();
        tracker.spawn(async move {
            deliver_in_process(&target, &event).await;
            drop(permit);
        });
    }
    tracker.close();
    let _ = tokio::time::timeout(crate::notify::FINISH_GRACE, tracker.wait()).await;
}

async fn deliver_in_process(target: &WebhookTarget, event: &Event) {
    let mut wait = target.backoff;
    let mut problem = String::new();
    for attempt in 1..=target.retries.saturating_add(1) {
        if attempt > 1 {
            tokio::time::sleep(wait).await;
            wait = wait.saturating_mul(2);
        }
        match target.send(&event.id, &event.body, attempt).await {
            Ok(()) => {
                metrics::counter!(metric::WEBHOOKS, "outcome" => "sent").increment(1);
                return;
            }
            Err(error) => problem = error,
        }
    }
    metrics::counter!(metric::WEBHOOKS, "outcome" => "dead_lettered").increment(1);
    tracing::error!(id = %event.id, %problem, "webhook dead letter");
}
