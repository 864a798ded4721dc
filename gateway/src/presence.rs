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
/// Users registered or unregistered by one script call.
const BATCH: usize = 256;

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
        // Everyone whose first connection opened or last one closed since
        // the last pass, in batches: a storm costs one script call per batch.
        let (mut ups, mut downs) = (Vec::new(), Vec::new());
        for user in hub.take_presence_changes() {
            match (hub.has_local_user(&user), registered.contains(&user)) {
                (true, false) => ups.push(user),
                (false, true) => downs.push(user),
                _ => {}
            }
        }
        for users in ups.chunks(BATCH) {
            match bus.presence_up(users).await {
                Ok(()) => registered.extend(users.iter().cloned()),
                Err(error) => retry_later(&hub, users, &error),
            }
        }
        for users in downs.chunks(BATCH) {
            match bus.presence_down(users).await {
                Ok(offline) => {
                    for (user, offline) in users.iter().zip(offline) {
                        if offline {
                            departures.went_offline(user);
                        }
                        registered.remove(user);
                    }
                }
                Err(error) => retry_later(&hub, users, &error),
            }
        }
    }
    // A clean stop: everyone still here goes offline now, not after the TTL.
    let registered: Vec<String> = registered.into_iter().collect();
    for users in registered.chunks(BATCH) {
        let _ = bus.presence_down(users).await;
    }
    let _ = bus.presence_leave().await;
}

fn retry_later(hub: &Hub, users: &[String], error: &crate::bus::BusError) {
    tracing::warn!(%error, users = users.len(), "presence update failed; will retry");
    for user in users {
        hub.mark_presence_again(user);
    }
}
