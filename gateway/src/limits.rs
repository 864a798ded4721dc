//! Per-user and per-IP rate limits (REST, WebSocket upgrades, HTTP publish).
//!
//! Three keyed token buckets, each governor's GCRA over a `DashMap` (one atomic
//! word of state per key):
//! - **users**: every request authenticated as a user, `REST_RATE_PER_SEC` a
//!   second with bursts of `REST_RATE_BURST`; WebSocket upgrades count too;
//! - **ips**: requests without valid credentials (none, or refused), keyed by
//!   client address (`REST_IP_RATE_*`; IPv6 by its /64, which one subscriber
//!   usually holds whole);
//! - **senders**: `POST /rooms/{id}/messages` per sender, at the rate one
//!   socket may send (`FRAMES_PER_SEC`, bursts of twice that), so publishing
//!   over HTTP is no way around the socket's limit. A service publishing on a
//!   user's behalf spends that user's budget.
//!
//! Why governor and not `tower_governor`: the key is only known after the JWT is
//! verified, two of the three limits have different quotas for different
//! callers, and refusals must be chatter's JSON error; a small middleware
//! (`http::rate_limit`) over governor's keyed limiters says that directly.
//!
//! The maps hold a key only while its bucket is not full again: [`sweep`]
//! drops the others every [`SWEEP_EVERY`], so memory is bounded by the keys
//! seen in the last few seconds, never by every user or address ever seen.

use chatter_shared::config::Config;
use chatter_shared::telemetry::metric;
use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota};
use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often full buckets are dropped from the maps.
pub const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// A request or message over its limit; try again after `retry_after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimited {
    pub retry_after: Duration,
}

pub struct Limits {
    users: DefaultKeyedRateLimiter<String>,
    ips: DefaultKeyedRateLimiter<IpAddr>,
    senders: DefaultKeyedRateLimiter<String>,
}

impl Limits {
    pub fn new(config: &Config) -> Limits {
        Limits {
            users: DefaultKeyedRateLimiter::keyed(quota(
                config.rest_rate_per_sec,
                config.rest_rate_burst,
            )),
            ips: DefaultKeyedRateLimiter::keyed(quota(
                config.rest_ip_rate_per_sec,
                config.rest_ip_rate_burst,
            )),
            senders: DefaultKeyedRateLimiter::keyed(quota(
                config.frames_per_sec,
                config.frames_per_sec.saturating_mul(2),
            )),
        }
    }

    /// One request by an authenticated user.
    pub fn user(&self, user_id: &String) -> Result<(), RateLimited> {
        check(&self.users, user_id, "user")
    }

    /// One request without valid credentials from `ip`.
    pub fn ip(&self, ip: IpAddr) -> Result<(), RateLimited> {
        check(&self.ips, &ip_key(ip), "ip")
    }

    /// One message published over HTTP by `sender_id`.
    pub fn message(&self, sender_id: &String) -> Result<(), RateLimited> {
        check(&self.senders, sender_id, "sender")
    }

    /// Keys held now, all maps together (for tests and the sweep's log).
    pub fn keys(&self) -> usize {
        self.users.len() + self.ips.len() + self.senders.len()
    }

    fn sweep_once(&self) {
        forget_full(&self.users);
        forget_full(&self.ips);
        forget_full(&self.senders);
    }
}

fn forget_full<K: Hash + Eq + Clone>(limiter: &DefaultKeyedRateLimiter<K>) {
    limiter.retain_recent();
    limiter.shrink_to_fit();
}

/// Drops full buckets every [`SWEEP_EVERY`] until `shutdown`.
pub async fn sweep(limits: Arc<Limits>, shutdown: CancellationToken) {
    let mut every = tokio::time::interval(SWEEP_EVERY);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = every.tick() => limits.sweep_once(),
        }
    }
}

fn quota(per_sec: u32, burst: u32) -> Quota {
    let rate = NonZeroU32::new(per_sec).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
    Quota::per_second(rate).allow_burst(burst)
}

fn check<K: Hash + Eq + Clone>(
    limiter: &DefaultKeyedRateLimiter<K>,
    key: &K,
    limit: &'static str,
) -> Result<(), RateLimited> {
    limiter.check_key(key).map_err(|not_until| {
        metrics::counter!(metric::RATE_LIMITED, "limit" => limit).increment(1);
        RateLimited {
            retry_after: not_until.wait_time_from(limiter.clock().now()),
        }
    })
}

/// IPv4 addresses as they are; IPv6 by /64, the block one subscriber gets.
fn ip_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(bits.into())
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(per_sec: u32, burst: u32) -> Limits {
        let config = Config {
            rest_rate_per_sec: per_sec,
            rest_rate_burst: burst,
            rest_ip_rate_per_sec: per_sec,
            rest_ip_rate_burst: burst,
            ..Config::default()
        };
        Limits::new(&config)
    }

    #[test]
    fn a_user_over_the_burst_is_told_when_to_retry_and_others_are_not() {
        let limits = limits(1, 3);
        let alice = "alice".to_owned();
        for _ in 0..3 {
            assert_eq!(limits.user(&alice), Ok(()));
        }
        let refused = limits.user(&alice).expect_err("over the burst");
        assert!(refused.retry_after > Duration::from_millis(900));
        assert!(refused.retry_after <= Duration::from_secs(1));
        assert_eq!(limits.user(&"bob".to_owned()), Ok(()));
    }

    #[test]
    fn ipv6_addresses_share_their_64_block() {
        let limits = limits(1, 1);
        let a: IpAddr = "2001:db8:1:2::1".parse().expect("ip");
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().expect("ip");
        let other: IpAddr = "2001:db8:1:3::1".parse().expect("ip");
        assert_eq!(limits.ip(a), Ok(()));
        assert!(limits.ip(b).is_err());
        assert_eq!(limits.ip(other), Ok(()));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().expect("ip");
        assert_eq!(ip_key(mapped), "10.0.0.1".parse::<IpAddr>().expect("ip"));
    }

    #[test]
    fn the_sweep_forgets_full_buckets() {
        let limits = limits(1000, 1);
        for n in 0..100 {
            let _ = limits.user(&format!("user-{n}"));
        }
        assert_eq!(limits.keys(), 100);
        std::thread::sleep(Duration::from_millis(20));
        limits.sweep_once();
        assert_eq!(limits.keys(), 0);
    }
}
