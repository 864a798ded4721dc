//! Cluster-wide presence in Redis.
//!
//! | key | type | what |
//! |---|---|---|
//! | `chatter:gateways` | sorted set, score = expiry (unix ms) | live gateways; each refreshes its entry every `PRESENCE_TTL_SECS`/3 |
//! | `chatter:gateway:<id>:users` | set | users with a connection on that gateway |
//! | `chatter:presence:<user>` | sorted set of gateway ids | where the user is connected; online ⇔ non-empty |
//! | `chatter:last_seen` | hash user → RFC 3339 | when each user last went offline |
//! | channel `chatter:presence` | pub/sub | `PresenceChanged` on online/offline transitions, once each |
//!
//! A gateway registers a user on their first local connection and unregisters on
//! the last, so devices are counted once per gateway and transitions are
//! published only when the user's set becomes non-empty or empty. A killed
//! gateway stops refreshing its entry; any live gateway then *reaps* it — one
//! script, run once (the `ZREM` of the gateway decides who) — taking its users
//! offline within the TTL, with no cleanup by the dead pod.
//!
//! On Redis Cluster every presence key starts `chatter:{presence}:` instead
//! (one slot, so each script stays in it; see [`PresenceKeys`]). Presence
//! changes with connects and disconnects, not with messages: one master
//! carries it.

use crate::keyspace::Keyspace;
use fred::prelude::*;
use fred::types::scripts::Script;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

pub const PRESENCE_CHANNEL: &str = "chatter:presence";

/// The presence keys of the table above, in the keyspace's layout.
#[derive(Debug, Clone, Copy)]
pub struct PresenceKeys {
    prefix: &'static str,
}

impl PresenceKeys {
    pub fn new(keyspace: Keyspace) -> PresenceKeys {
        PresenceKeys {
            prefix: keyspace.presence_prefix(),
        }
    }

    pub fn gateways(self) -> String {
        format!("{}gateways", self.prefix)
    }

    pub fn last_seen(self) -> String {
        format!("{}last_seen", self.prefix)
    }

    /// Where `user_id` is connected.
    pub fn user_gateways(self, user_id: &str) -> String {
        format!("{}presence:{user_id}", self.prefix)
    }

    /// Who is connected on `gateway_id`.
    pub fn gateway_users(self, gateway_id: &str) -> String {
        format!("{}gateway:{gateway_id}:users", self.prefix)
    }
}

/// The `PresenceChanged` frame (built here so Lua and Rust agree on the bytes).
pub fn changed_frame(user_id: &str, online: bool, last_seen_at: Option<&str>) -> String {
    serde_json::json!({
        "type": "PresenceChanged",
        "data": {"user_id": user_id, "online": online, "last_seen_at": last_seen_at},
    })
    .to_string()
}

// Both take many users at once: a storm of connects (or a drain's
// disconnects) costs one round trip per batch, not one per user.
const UP_LUA: &str = r#"
-- KEYS: 1 gateway's users, then each user's gateways.
-- ARGV: 1 gateway, 2 now ms, then per user: id, online frame.
local came = {}
for i = 2, #KEYS do
  local before = redis.call('ZCARD', KEYS[i])
  redis.call('ZADD', KEYS[i], ARGV[2], ARGV[1])
  redis.call('SADD', KEYS[1], ARGV[2 * i - 1])
  if before == 0 then
    redis.call('PUBLISH', 'chatter:presence', ARGV[2 * i])
    came[#came + 1] = 1
  else
    came[#came + 1] = 0
  end
end
return came
"#;

const DOWN_LUA: &str = r#"
-- KEYS: 1 gateway's users, 2 last seen hash, then each user's gateways.
-- ARGV: 1 gateway, 2 now (RFC 3339), then per user: id, offline frame.
local gone = {}
for i = 3, #KEYS do
  local user = ARGV[2 * i - 3]
  local removed = redis.call('ZREM', KEYS[i], ARGV[1])
  redis.call('SREM', KEYS[1], user)
  if removed == 1 and redis.call('ZCARD', KEYS[i]) == 0 then
    redis.call('HSET', KEYS[2], user, ARGV[2])
    redis.call('PUBLISH', 'chatter:presence', ARGV[2 * i - 2])
    gone[#gone + 1] = 1
  else
    gone[#gone + 1] = 0
  end
end
return gone
"#;

const REAP_LUA: &str = r#"
-- KEYS: 1 gateways, 2 dead gateway's users, 3 last seen hash. ARGV: 1 dead gateway,
-- 2 now (RFC 3339), 3 what a user's gateways key starts with (in KEYS[1]'s slot).
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return {} end
local offline = {}
for _, user in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  local key = ARGV[3] .. user
  redis.call('ZREM', key, ARGV[1])
  if redis.call('ZCARD', key) == 0 then
    redis.call('HSET', KEYS[3], user, ARGV[2])
    redis.call('PUBLISH', 'chatter:presence', '{"type":"PresenceChanged","data":{"user_id":' ..
      cjson.encode(user) .. ',"online":false,"last_seen_at":"' .. ARGV[2] .. '"}}')
    table.insert(offline, user)
  end
end
redis.call('DEL', KEYS[2])
return offline
"#;

/// One gateway's part of cluster-wide presence: its users' registrations, its
/// liveness entry, and the reaping of gateways that stopped beating. The Redis
/// bus only forwards to it, so presence's keys and scripts live in this module
/// alone. One per gateway process; cheap to clone.
#[derive(Clone)]
pub struct GatewayPresence {
    client: Client,
    keys: PresenceKeys,
    /// This gateway's id in the presence keys.
    gateway_id: Arc<str>,
    up: Script,
    down: Script,
    reap: Script,
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn now_ms() -> i128 {
    time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000
}

impl GatewayPresence {
    /// A gateway with a fresh id: a restarted pod is a new gateway, and the
    /// old one's users are reaped with it.
    pub fn new(client: Client, keyspace: Keyspace) -> GatewayPresence {
        GatewayPresence {
            client,
            keys: PresenceKeys::new(keyspace),
            gateway_id: Uuid::new_v4().to_string().into(),
            up: Script::from_lua(UP_LUA),
            down: Script::from_lua(DOWN_LUA),
            reap: Script::from_lua(REAP_LUA),
        }
    }

    /// First local connection of each of `users` on this gateway: which of
    /// them came online (in the cluster), in order.
    pub async fn up(&self, users: &[String]) -> Result<Vec<bool>, Error> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let gateway_id = self.gateway_id.as_ref();
        let mut keys = Vec::with_capacity(users.len() + 1);
        keys.push(self.keys.gateway_users(gateway_id));
        keys.extend(users.iter().map(|user| self.keys.user_gateways(user)));
        let now = time::OffsetDateTime::now_utc().unix_timestamp() * 1000;
        let mut args = Vec::with_capacity(2 * users.len() + 2);
        args.push(gateway_id.to_owned());
        args.push(now.to_string());
        for user in users {
            args.push(user.clone());
            args.push(changed_frame(user, true, None));
        }
        let came_online: Vec<i64> = self
            .up
            .evalsha_with_reload(&self.client, keys, args)
            .await?;
        Ok(came_online.into_iter().map(|n| n == 1).collect())
    }

    /// Last local connection of each of `users` on this gateway gone: which
    /// of them went offline (in the cluster), in order.
    pub async fn down(&self, users: &[String]) -> Result<Vec<bool>, Error> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let gateway_id = self.gateway_id.as_ref();
        let mut keys = Vec::with_capacity(users.len() + 2);
        keys.push(self.keys.gateway_users(gateway_id));
        keys.push(self.keys.last_seen());
        keys.extend(users.iter().map(|user| self.keys.user_gateways(user)));
        let now = now_rfc3339();
        let mut args = Vec::with_capacity(2 * users.len() + 2);
        args.push(gateway_id.to_owned());
        args.push(now.clone());
        for user in users {
            args.push(user.clone());
            args.push(changed_frame(user, false, Some(&now)));
        }
        let went_offline: Vec<i64> = self
            .down
            .evalsha_with_reload(&self.client, keys, args)
            .await?;
        Ok(went_offline.into_iter().map(|n| n == 1).collect())
    }

    /// Whether each of `users` is online anywhere, and when each was last seen.
    pub async fn of(&self, users: &[String]) -> Result<Vec<(bool, Option<String>)>, Error> {
        let online = online(&self.client, self.keys, users).await?;
        let last_seen: Vec<Option<String>> = if users.is_empty() {
            Vec::new()
        } else {
            self.client
                .hmget(self.keys.last_seen(), users.to_vec())
                .await?
        };
        Ok(online.into_iter().zip(last_seen).collect())
    }

    /// Refreshes this gateway's liveness entry (valid for 2/3 of `ttl`); true
    /// if it was missing (first beat, Redis lost its data, or the gateway was
    /// reaped after a stall), in which case its users must be registered again.
    pub async fn heartbeat(&self, ttl: Duration) -> Result<bool, Error> {
        let expires = now_ms() + i128::try_from(ttl.as_millis() * 2 / 3).unwrap_or(0);
        let added: i64 = self
            .client
            .zadd(
                self.keys.gateways(),
                None,
                None,
                false,
                false,
                (expires as f64, self.gateway_id.as_ref()),
            )
            .await?;
        Ok(added == 1)
    }

    /// Takes the users of gateways that stopped beating offline; the users who
    /// went offline (each reaped by exactly one gateway).
    pub async fn reap_dead_gateways(&self) -> Result<Vec<String>, Error> {
        let dead: Vec<String> = self
            .client
            .zrangebyscore(self.keys.gateways(), "-inf", now_ms() as f64, false, None)
            .await?;
        let mut offline = Vec::new();
        for gateway in dead
            .iter()
            .filter(|g| g.as_str() != self.gateway_id.as_ref())
        {
            let users = self.reap(gateway).await?;
            tracing::info!(
                gateway,
                offline = users.len(),
                "reaped a gateway that stopped beating"
            );
            offline.extend(users);
        }
        Ok(offline)
    }

    /// Takes a dead gateway's users offline (once, whoever calls first); the
    /// users who went offline.
    async fn reap(&self, dead_gateway: &str) -> Result<Vec<String>, Error> {
        let keys = vec![
            self.keys.gateways(),
            self.keys.gateway_users(dead_gateway),
            self.keys.last_seen(),
        ];
        let args = vec![
            dead_gateway.to_owned(),
            now_rfc3339(),
            self.keys.user_gateways(""),
        ];
        self.reap
            .evalsha_with_reload(&self.client, keys, args)
            .await
    }

    /// Leaves the cluster's presence on a clean stop.
    pub async fn leave(&self) -> Result<(), Error> {
        let _: i64 = self
            .client
            .zrem(self.keys.gateways(), self.gateway_id.as_ref())
            .await?;
        Ok(())
    }
}

/// Which of `users` are online anywhere in the cluster (one pipelined round trip).
pub async fn online(
    client: &Client,
    keys: PresenceKeys,
    users: &[String],
) -> Result<Vec<bool>, Error> {
    if users.is_empty() {
        return Ok(Vec::new());
    }
    let pipeline = client.pipeline();
    for user in users {
        let _: () = pipeline.exists(keys.user_gateways(user)).await?;
    }
    let counts: Vec<i64> = pipeline.all().await?;
    Ok(counts.into_iter().map(|n| n > 0).collect())
}
