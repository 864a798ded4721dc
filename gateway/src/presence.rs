//! Keeping this gateway's part of cluster-wide presence true.
//!
//! The hub marks a user when their first local connection opens or their last
//! closes; this task reconciles those users with the bus (Redis: the presence
//! scripts in `chatter_shared::presence`; embedded: in memory), so a quick
//! disconnect/reconnect can never leave a connected user marked offline. In a
//! cluster it also beats this gateway's liveness entry and reaps gateways that
//! stopped beating, so a killed pod's users go offline within `PRESENCE_TTL_SECS`.

use crate::bus::Bus;
use crate::hub::Hub;
use crate::support::departures::Departures;
use std::collections::HashSet;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often users whose Redis call failed are tried again.
const RETRY_EVERY: Duration = Duration::from_secs(1);

/// `departures` hears of every user this gateway saw go offline in the whole
/// cluster (for the support desk's `UserLeft` / `SupportLeft`).
pub async fn run(
    hub: Hub,
    bus: Bus,
    ttl: Duration,
    departures: Departures,
    stop: CancellationToken,
) {
    let mut registered: HashSet<String> = HashSet::new();
    let mut heartbeat = tokio::time::interval(ttl / 3);
    let mut reap = tokio::time::interval((ttl / 6).max(Duration::from_millis(100)));
    let mut retry = tokio::time::interval(RETRY_EVERY);
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            () = hub.presence_changed() => {}
            _ = heartbeat.tick() => match bus.presence_heartbeat(ttl).await {
                Ok(true) if !registered.is_empty() => {
                    // Our entry was gone: register everyone again.
                    tracing::warn!(users = registered.len(), "presence entry was missing; registering users again");
                    for user in registered.drain() {
                        hub.mark_presence_again(&user);
                    }
                }
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "presence heartbeat failed"),
            },
            _ = reap.tick() => match bus.reap_dead_gateways().await {
                Ok(offline) => offline.iter().for_each(|user| departures.went_offline(user)),
                Err(error) => tracing::warn!(%error, "cannot reap dead gateways"),
            },
            _ = retry.tick() => {}
        }
        for user in hub.take_presence_changes() {
            let local = hub.has_local_user(&user);
            let result = match (local, registered.contains(&user)) {
                (true, false) => bus
                    .presence_up(&user)
                    .await
                    .map(|()| registered.insert(user.clone())),
                (false, true) => bus.presence_down(&user).await.map(|offline| {
                    if offline {
                        departures.went_offline(&user);
                    }
                    registered.remove(&user)
                }),
                _ => Ok(false),
            };
            if let Err(error) = result {
                tracing::warn!(%error, "presence update failed; will retry");
                hub.mark_presence_again(&user);
            }
        }
    }
    // A clean stop: everyone still here goes offline now, not after the TTL.
    for user in &registered {
        let _ = bus.presence_down(user).await;
    }
    let _ = bus.presence_leave().await;
}
