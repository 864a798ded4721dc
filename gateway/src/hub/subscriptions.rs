//! The subscription manager: the one task that sends SUBSCRIBE and UNSUBSCRIBE.
//!
//! Connections join and leave channels in the registry ([`Hub`]), then ask for
//! a reconcile; the manager batches those requests and compares the registry
//! with what Redis has, so a leave racing a join can never leave a wanted
//! channel unsubscribed. It also reconciles everything every few seconds, and
//! after the subscriber reconnects it subscribes everything again, has the
//! rooms' missed messages replayed (`sequence`) and asks for a membership
//! re-check of every local user.

use super::Hub;
use chatter_shared::keyspace::Keyspace;
use fred::clients::SubscriberClient;
use fred::prelude::*;
use std::collections::{BTreeMap, HashSet};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// How often the subscription manager re-checks every channel, healing anything a
/// failed SUBSCRIBE or a missed request left behind.
const RECONCILE_EVERY: Duration = Duration::from_secs(5);
pub(super) enum Request {
    /// Make Redis match the registry for these channels; reply when done.
    Sync(Vec<String>, Option<oneshot::Sender<Result<(), Error>>>),
}

/// The one task that talks SUBSCRIBE/UNSUBSCRIBE to Redis.
///
/// We re-subscribe after a reconnect ourselves (fred's `manage_subscriptions`
/// is not used) because only here is it known when the new connection carries
/// every channel again: that is the moment to re-check memberships, since any
/// change committed after that re-check's database read is sure to arrive as
/// an event.
pub(super) async fn manage_subscriptions(
    hub: Hub,
    subscriber: SubscriberClient,
    keyspace: Keyspace,
    mut requests: mpsc::Receiver<Request>,
    mut reconnects: broadcast::Receiver<Server>,
    shutdown: CancellationToken,
) {
    let mut subscribed: HashSet<String> = HashSet::new();
    let mut batch = Vec::with_capacity(256);
    let mut reconcile = tokio::time::interval(RECONCILE_EVERY);
    let mut listening = true;
    // Set by a reconnect, cleared once everything wanted is subscribed again.
    let mut resubscribing = false;
    loop {
        let mut candidates: HashSet<String> = HashSet::new();
        let mut replies = Vec::new();
        tokio::select! {
            () = shutdown.cancelled() => return,
            received = requests.recv_many(&mut batch, 256) => {
                if received == 0 { return; }
                for Request::Sync(channels, reply) in batch.drain(..) {
                    candidates.extend(channels);
                    replies.extend(reply);
                }
            }
            _ = reconcile.tick() => {
                candidates.extend(subscribed.iter().cloned());
                candidates.extend(hub.channels.iter().map(|entry| entry.key().to_string()));
            }
            reconnected = reconnects.recv(), if listening => match reconnected {
                Ok(server) => {
                    tracing::info!(%server, "pub/sub connection re-established; subscribing again");
                    subscribed.clear();
                    resubscribing = true;
                    hub.begin_repair();
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    subscribed.clear();
                    resubscribing = true;
                    hub.begin_repair();
                }
                Err(broadcast::error::RecvError::Closed) => listening = false,
            },
        }
        if resubscribing {
            candidates.extend(hub.channels.iter().map(|entry| entry.key().to_string()));
        }
        let (mut add, mut remove) = (Vec::new(), Vec::new());
        for channel in candidates {
            let wanted = hub.channels.contains_key(channel.as_str());
            match (wanted, subscribed.contains(&channel)) {
                (true, false) => add.push(channel),
                (false, true) => remove.push(channel),
                _ => {}
            }
        }
        let mut result = Ok(());
        if !add.is_empty() {
            match change(&subscriber, keyspace, &add, Change::Subscribe).await {
                Ok(()) => subscribed.extend(add),
                Err(error) => {
                    tracing::warn!(%error, "SUBSCRIBE failed; will retry");
                    result = Err(error);
                }
            }
        }
        if !remove.is_empty() {
            match change(&subscriber, keyspace, &remove, Change::Unsubscribe).await {
                Ok(()) => remove.iter().for_each(|channel| {
                    subscribed.remove(channel);
                }),
                Err(error) => tracing::warn!(%error, "UNSUBSCRIBE failed; will retry"),
            }
        }
        if resubscribing && result.is_ok() {
            resubscribing = false;
            // Every channel carries live frames again: replay what each room
            // missed meanwhile, and re-check memberships.
            hub.repair_later();
            hub.recheck_everyone();
        }
        for reply in replies {
            let _ = reply.send(result.clone());
        }
    }
}

#[derive(Clone, Copy)]
enum Change {
    Subscribe,
    Unsubscribe,
}

/// (Un)subscribes the gateway's `channels` by their wire names: notice
/// channels with one `SUBSCRIBE`; on Redis Cluster room and user channels with
/// one `SSUBSCRIBE` per hash slot (a shard), since Redis refuses one that spans
/// slots, all sent at once. An error if any call failed (the caller retries
/// them all; subscribing twice is harmless).
async fn change(
    subscriber: &SubscriberClient,
    keyspace: Keyspace,
    channels: &[String],
    change: Change,
) -> Result<(), Error> {
    let mut classic = Vec::new();
    let mut by_slot: BTreeMap<u16, Vec<String>> = BTreeMap::new();
    for channel in channels {
        let wire = keyspace.wire(channel);
        if wire.sharded {
            let slot = fred::util::redis_keyslot(wire.name.as_bytes());
            by_slot
                .entry(slot)
                .or_default()
                .push(wire.name.into_owned());
        } else {
            classic.push(wire.name.into_owned());
        }
    }
    let classic = async {
        match (classic.is_empty(), change) {
            (true, _) => Ok(()),
            (false, Change::Subscribe) => subscriber.subscribe(classic).await,
            (false, Change::Unsubscribe) => subscriber.unsubscribe(classic).await,
        }
    };
    let sharded = by_slot.into_values().map(|group| async move {
        match change {
            Change::Subscribe => subscriber.ssubscribe(group).await,
            Change::Unsubscribe => subscriber.sunsubscribe(group).await,
        }
    });
    let (classic, sharded) = tokio::join!(classic, futures::future::join_all(sharded));
    sharded
        .into_iter()
        .fold(classic, |result, each| result.and(each))
}
