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

use fred::prelude::*;
use fred::types::scripts::Script;

pub const PRESENCE_CHANNEL: &str = "chatter:presence";
pub const GATEWAYS: &str = "chatter:gateways";
pub const LAST_SEEN: &str = "chatter:last_seen";

pub fn user_gateways(user_id: &str) -> String {
    format!("chatter:presence:{user_id}")
}

pub fn gateway_users(gateway_id: &str) -> String {
    format!("chatter:gateway:{gateway_id}:users")
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
-- KEYS: 1 gateways, 2 dead gateway's users, 3 last seen hash. ARGV: 1 dead gateway, 2 now (RFC 3339)
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return {} end
local offline = {}
for _, user in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  local key = 'chatter:presence:' .. user
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

/// The presence scripts, loaded once per process.
#[derive(Clone)]
pub struct PresenceScripts {
    up: Script,
    down: Script,
    reap: Script,
}

impl Default for PresenceScripts {
    fn default() -> Self {
        PresenceScripts {
            up: Script::from_lua(UP_LUA),
            down: Script::from_lua(DOWN_LUA),
            reap: Script::from_lua(REAP_LUA),
        }
    }
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

impl PresenceScripts {
    /// First local connection of each of `users` on `gateway_id`: which of
    /// them came online (in the cluster), in order.
    pub async fn up(
        &self,
        client: &Client,
        gateway_id: &str,
        users: &[String],
    ) -> Result<Vec<bool>, Error> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let mut keys = Vec::with_capacity(users.len() + 1);
        keys.push(gateway_users(gateway_id));
        keys.extend(users.iter().map(|user| user_gateways(user)));
        let now = time::OffsetDateTime::now_utc().unix_timestamp() * 1000;
        let mut args = Vec::with_capacity(2 * users.len() + 2);
        args.push(gateway_id.to_owned());
        args.push(now.to_string());
        for user in users {
            args.push(user.clone());
            args.push(changed_frame(user, true, None));
        }
        let came_online: Vec<i64> = self.up.evalsha_with_reload(client, keys, args).await?;
        Ok(came_online.into_iter().map(|n| n == 1).collect())
    }

    /// Last local connection of each of `users` gone: which of them went
    /// offline (in the cluster), in order.
    pub async fn down(
        &self,
        client: &Client,
        gateway_id: &str,
        users: &[String],
    ) -> Result<Vec<bool>, Error> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let mut keys = Vec::with_capacity(users.len() + 2);
        keys.push(gateway_users(gateway_id));
        keys.push(LAST_SEEN.to_owned());
        keys.extend(users.iter().map(|user| user_gateways(user)));
        let now = now_rfc3339();
        let mut args = Vec::with_capacity(2 * users.len() + 2);
        args.push(gateway_id.to_owned());
        args.push(now.clone());
        for user in users {
            args.push(user.clone());
            args.push(changed_frame(user, false, Some(&now)));
        }
        let went_offline: Vec<i64> = self.down.evalsha_with_reload(client, keys, args).await?;
        Ok(went_offline.into_iter().map(|n| n == 1).collect())
    }

    /// Takes a dead gateway's users offline (once, whoever calls first); the
    /// users who went offline.
    pub async fn reap(&self, client: &Client, dead_gateway: &str) -> Result<Vec<String>, Error> {
        let keys = vec![
            GATEWAYS.to_owned(),
            gateway_users(dead_gateway),
            LAST_SEEN.to_owned(),
        ];
        let args = vec![dead_gateway.to_owned(), now_rfc3339()];
        self.reap.evalsha_with_reload(client, keys, args).await
    }
}

/// Which of `users` are online anywhere in the cluster (one pipelined round trip).
pub async fn online(client: &Client, users: &[String]) -> Result<Vec<bool>, Error> {
    if users.is_empty() {
        return Ok(Vec::new());
    }
    let pipeline = client.pipeline();
    for user in users {
        let _: () = pipeline.exists(user_gateways(user)).await?;
    }
    let counts: Vec<i64> = pipeline.all().await?;
    Ok(counts.into_iter().map(|n| n > 0).collect())
}
