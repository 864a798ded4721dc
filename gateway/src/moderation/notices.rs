//! Telling every gateway that a ban or a room's restrictions changed.
//!
//! The change is already in the database; the notice (`ban:<user>` or
//! `room:<room id>` on [`keyspace::MODERATION_CHANNEL`]) only says what to read
//! again, so notices can never disagree with the database, whatever order they
//! arrive in. The gateway that made the change applies it before answering, so
//! its own next request already sees it; the others within a pub/sub hop and one
//! small query (well under the 1 s the API promises).

use super::RELOAD_EVERY;
use crate::bus::Bus;
use crate::state::{App, AppState};
use chatter_shared::keyspace;
use fred::clients::SubscriberClient;
use fred::prelude::*;
use std::time::Duration;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// What changed.
#[derive(Debug, Clone, Copy)]
pub enum Change<'a> {
    /// A user's ban was set or lifted.
    Ban(&'a str),
    /// A room's mutes changed, or a block between a direct room's members.
    Room(Uuid),
}

impl Change<'_> {
    fn encode(self) -> String {
        match self {
            Change::Ban(user_id) => format!("ban:{user_id}"),
            Change::Room(room_id) => format!("room:{room_id}"),
        }
    }
}

fn decode(notice: &str) -> Option<Change<'_>> {
    if let Some(user_id) = notice.strip_prefix("ban:") {
        return Some(Change::Ban(user_id));
    }
    notice
        .strip_prefix("room:")
        .and_then(|room| Uuid::parse_str(room).ok())
        .map(Change::Room)
}

/// Applies `change` here, then tells the other gateways. A failed publish is
/// logged: the others catch up at their next full reload.
pub async fn announce(app: &App, change: Change<'_>) {
    apply(app, change).await;
    if let Bus::Redis(_) = &app.bus
        && let Err(error) = app
            .bus
            .publish(keyspace::MODERATION_CHANNEL, change.encode())
            .await
    {
        tracing::warn!(%error, "cannot announce a moderation change; other gateways see it at their next reload");
    }
}

async fn apply(app: &App, change: Change<'_>) {
    let done = match change {
        Change::Ban(user_id) => app.moderation.reload_ban(&app.store, user_id).await,
        Change::Room(room_id) => app.moderation.reload_room(&app.store, room_id).await,
    };
    if let Err(error) = done {
        tracing::warn!(%error, ?change, "cannot read a moderation change; retrying at the next reload");
    }
}

/// Hears other gateways' notices (cluster mode) and reads everything again
/// every [`RELOAD_EVERY`] and after the subscriber reconnects, until `stop`.
pub async fn listen(app: AppState, subscriber: Option<SubscriberClient>, stop: CancellationToken) {
    let (mut notices, mut reconnects) = match &subscriber {
        Some(subscriber) => {
            // fred subscribes again by itself after a reconnect; the reload
            // below covers what was published meanwhile.
            drop(subscriber.manage_subscriptions());
            // Receivers first: a broadcast receiver sees only later messages.
            let receivers = (
                Some(subscriber.message_rx()),
                Some(subscriber.reconnect_rx()),
            );
            // fred re-subscribes only to channels it once subscribed.
            while let Err(error) = subscriber.subscribe(keyspace::MODERATION_CHANNEL).await {
                tracing::warn!(%error, "cannot subscribe to moderation notices; retrying (reloads cover the gap)");
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
            receivers
        }
        None => (None, None),
    };
    let mut reload = tokio::time::interval(RELOAD_EVERY);
    reload.tick().await;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = reload.tick() => reload_all(&app).await,
            message = recv(&mut notices) => match message {
                Ok(message) => {
                    if let Some(text) = message.value.as_str()
                        && let Some(change) = decode(&text)
                    {
                        apply(&app, change).await;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => reload_all(&app).await,
                Err(broadcast::error::RecvError::Closed) => notices = None,
            },
            reconnected = recv(&mut reconnects) => match reconnected {
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {
                    // Give fred a moment to subscribe again first.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    reload_all(&app).await;
                }
                Err(broadcast::error::RecvError::Closed) => reconnects = None,
            },
        }
    }
}

async fn reload_all(app: &App) {
    if let Err(error) = app.moderation.reload(&app.store).await {
        tracing::warn!(%error, "cannot reload bans and restrictions; keeping what is known");
    }
}

/// The next item of an optional receiver; pending forever without one.
async fn recv<T: Clone>(
    receiver: &mut Option<broadcast::Receiver<T>>,
) -> Result<T, broadcast::error::RecvError> {
    match receiver {
        Some(receiver) => receiver.recv().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_round_trip() {
        let room = Uuid::now_v7();
        assert!(matches!(decode(&Change::Room(room).encode()), Some(Change::Room(r)) if r == room));
        assert!(matches!(
            decode(&Change::Ban("a:b").encode()),
            Some(Change::Ban("a:b"))
        ));
        assert!(decode("nonsense").is_none());
    }
}
