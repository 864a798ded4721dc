//! Expiring support chats, from the database, on every gateway.
//!
//! Each gateway sweeps once a second for open requests whose deadline has
//! passed. A deadline is only a lower bound: before ending a chat the sweep
//! looks at its newest stored message and, if that is recent, moves the
//! deadline instead. Ending is a conditional update, so when several gateways
//! find the same chat due, one ends it and tells both sides; the others find
//! nothing to do. No gateway owns a timer, so a chat whose gateway died still
//! expires on time.

use super::{end, unix_ms};
use crate::state::AppState;
use chatter_shared::ingest::Ending;
use chatter_shared::store::SupportState;
use std::time::Duration;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// Due requests handled per sweep; the rest wait for the next one.
const SWEEP_BATCH: i64 = 200;

pub async fn run(app: AppState, stop: CancellationToken) {
    let mut every = tokio::time::interval(SWEEP_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = every.tick() => {}
        }
        if let Err(error) = sweep(&app).await {
            tracing::warn!(%error, "support expiry sweep failed; retrying next second");
        }
    }
}

async fn sweep(app: &AppState) -> Result<(), sqlx::Error> {
    let now = OffsetDateTime::now_utc();
    let expiry = time::Duration::seconds(
        i64::try_from(app.config.support_expiry_secs).unwrap_or(i64::MAX / 1000),
    );
    for request in app.store.due_support_requests(now, SWEEP_BATCH).await? {
        let last_message = app.store.last_message_at(request.room_id).await?;
        // A message after the request (or the claim) keeps the chat alive.
        let active_since = [Some(request.created_at), request.claimed_at, last_message]
            .into_iter()
            .flatten()
            .max()
            .unwrap_or(request.created_at);
        let deadline = unix_ms(active_since + expiry);
        if deadline > unix_ms(now) {
            app.store
                .extend_support_deadline(request.room_id, deadline)
                .await?;
            continue;
        }
        if let Some(before) = app
            .store
            .end_support_request(request.room_id, SupportState::Expired, Some(unix_ms(now)))
            .await?
        {
            tracing::info!(room_id = %before.room_id, "support chat expired");
            metrics::counter!(chatter_shared::telemetry::metric::SUPPORT_EXPIRED).increment(1);
            app.events
                .record(
                    chatter_shared::events::EventType::SupportExpired,
                    || serde_json::json!({ "request": super::view(&before) }),
                )
                .await;
            end(app, &before, Ending::Expired).await;
        }
    }
    Ok(())
}
