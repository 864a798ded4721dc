//! Delegated verification: asking the identity service at `VERIFICATION_URL`
//! who a token belongs to (SPEC §2, the older chatter's "uacl").
//!
//! The caller's token goes out as `Authorization: Bearer <token>` on a `GET`;
//! `200 {"result": {"username", "name", "user_group"}}` authenticates as
//! `username`, any other status refuses the token. A service that cannot be
//! reached, or answers later than `VERIFICATION_TIMEOUT_MS`, is *unavailable*:
//! the caller gets 503 and may retry, never a 500 and never a wait longer than
//! the timeout.
//!
//! Positive answers are remembered for `VERIFICATION_CACHE_SECS`, so a busy
//! client costs the identity service one call per token and interval, not one
//! per request. The cache is keyed by the SHA-256 of the token (no token sits in
//! memory longer than its request) and holds at most [`CACHE_MAX_ENTRIES`].
//! Refusals are never cached: a token refused a moment ago (the user had not
//! finished signing in) may be good now, and caching them would let anyone fill
//! the cache with garbage tokens.

use chatter_shared::auth::{self, Identity, validate_user_id};
use chatter_shared::config::Config;
use chatter_shared::telemetry::metric;
use dashmap::DashMap;
use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::time::{Duration, Instant};

/// Past this many remembered tokens, expired ones are dropped, and if that is
/// not enough the cache starts over: memory stays bounded whatever callers send.
pub const CACHE_MAX_ENTRIES: usize = 50_000;

/// Why the identity service did not vouch for a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// It answered, and not with a usable 200: the token is not good (401).
    Refused,
    /// It could not be asked, or did not answer in time (503).
    Unavailable,
}

pub struct IdentityService {
    http: reqwest::Client,
    url: reqwest::Url,
    cache_for: Duration,
    permissions_claim: Option<String>,
    cache: DashMap<CacheKey, (Identity, Instant)>,
}

/// The SHA-256 of a token: what the cache is keyed by.
type CacheKey = [u8; 32];

fn cache_key(token: &str) -> CacheKey {
    Sha256::digest(token.as_bytes()).into()
}

/// The identity service's answer: `{"result": {...}}`.
#[derive(Deserialize)]
struct Answer {
    result: Map<String, Value>,
}

impl IdentityService {
    /// `None` without a `VERIFICATION_URL`.
    pub fn from_config(config: &Config) -> anyhow::Result<Option<IdentityService>> {
        let Some(url) = &config.verification_url else {
            return Ok(None);
        };
        let url = reqwest::Url::parse(url)
            .map_err(|error| anyhow::anyhow!("VERIFICATION_URL is not a URL: {error}"))?;
        let timeout = Duration::from_millis(config.verification_timeout_ms);
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            // A redirect would carry the caller's token somewhere else; it
            // counts as "any other status" instead.
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Some(IdentityService {
            http,
            url,
            cache_for: Duration::from_secs(config.verification_cache_secs),
            permissions_claim: config.jwt_permissions_claim.clone(),
            cache: DashMap::new(),
        }))
    }

    /// Who `token` belongs to, if the cache knows (no call is made).
    pub fn cached(&self, token: &str) -> Option<Identity> {
        let entry = self.cache.get(&cache_key(token))?;
        let (identity, at) = entry.value();
        if at.elapsed() >= self.cache_for {
            return None;
        }
        metrics::counter!(metric::IDENTITY_CHECKS, "outcome" => "cached").increment(1);
        Some(identity.clone())
    }

    /// Asks the identity service who `token` belongs to (see [`cached`](Self::cached)
    /// first), remembering a positive answer.
    pub async fn verify(&self, token: &str) -> Result<Identity, Refusal> {
        let key = cache_key(token);
        let answer = self.ask(token).await;
        let outcome = match &answer {
            Ok(_) => "vouched",
            Err(Refusal::Refused) => "refused",
            Err(Refusal::Unavailable) => "unavailable",
        };
        metrics::counter!(metric::IDENTITY_CHECKS, "outcome" => outcome).increment(1);
        let identity = answer?;
        if !self.cache_for.is_zero() {
            self.remember(key, identity.clone());
        }
        Ok(identity)
    }

    async fn ask(&self, token: &str) -> Result<Identity, Refusal> {
        // A `?token=` may decode to bytes no header can carry: no token of anyone's.
        let mut authorization = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| Refusal::Refused)?;
        authorization.set_sensitive(true);
        let response = self
            .http
            .get(self.url.clone())
            .header(reqwest::header::AUTHORIZATION, authorization)
            .send()
            .await
            .map_err(|error| {
                tracing::warn!(error = %error.without_url(), "the identity service is unavailable");
                Refusal::Unavailable
            })?;
        if response.status() != reqwest::StatusCode::OK {
            return Err(Refusal::Refused);
        }
        // The body is read under the same timeout as the headers.
        let answer = response.json::<Answer>().await.map_err(|error| {
            tracing::warn!(error = %error.without_url(), "the identity service sent an unreadable answer");
            Refusal::Unavailable
        })?;
        self.identity(&answer.result)
    }

    /// `username` is the user id; `name` and `user_group` come along, and the
    /// permissions claim when permissions are checked.
    fn identity(&self, result: &Map<String, Value>) -> Result<Identity, Refusal> {
        let text = |key: &str| {
            result
                .get(key)
                .and_then(Value::as_str)
                .filter(|text| !text.contains('\0'))
                .map(str::to_owned)
        };
        let user_id = text("username").ok_or(Refusal::Refused)?;
        validate_user_id(&user_id).map_err(|_| Refusal::Refused)?;
        Ok(Identity {
            user_id,
            name: text("name"),
            group: text("user_group"),
            // Not in the older service's answer; honoured when a newer one sends them.
            roles: auth::name_list(result.get("roles")),
            permissions: self
                .permissions_claim
                .as_ref()
                .map(|claim| auth::name_list(result.get(claim))),
        })
    }

    fn remember(&self, key: CacheKey, identity: Identity) {
        if self.cache.len() >= CACHE_MAX_ENTRIES {
            let cache_for = self.cache_for;
            self.cache.retain(|_, (_, at)| at.elapsed() < cache_for);
            if self.cache.len() >= CACHE_MAX_ENTRIES {
                self.cache.clear();
            }
        }
        self.cache.insert(key, (identity, Instant::now()));
    }
}
