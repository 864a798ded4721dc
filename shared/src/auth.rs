//! Who is calling: user JWTs, the service secret, and the identity they yield.
//!
//! The accepted algorithm is fixed by configuration and never read from the token
//! (the classic `alg: none` / HS-with-a-public-key confusions). `exp` is required,
//! `nbf` enforced, `iss`/`aud` checked when configured, with a small leeway for
//! clock skew.

use crate::config::{Config, JwtAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Map, Value};
use subtle::ConstantTimeEq;
use time::OffsetDateTime;

/// The longest user id chatter accepts; ids end up in Redis keys and URLs.
pub const MAX_USER_ID_CHARS: usize = 128;

/// An authenticated user, as the token (or the identity service) describes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user_id: String,
    pub name: Option<String>,
    pub group: Option<String>,
    pub roles: Vec<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("no credentials were given")]
    Missing,
    #[error("the token is invalid or expired")]
    Invalid,
    #[error("the token carries no usable user id")]
    NoUserId,
}

/// Verifies (and, with a signing key, mints) user JWTs.
#[derive(Clone)]
pub struct Tokens {
    decoding: DecodingKey,
    encoding: Option<EncodingKey>,
    algorithm: Algorithm,
    validation: Validation,
    user_claim: String,
    issuer: Option<String>,
    audience: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("JWT_SECRET must be set for HS256")]
    MissingSecret,
    #[error("JWT_PUBLIC_KEY must be set for RS256")]
    MissingPublicKey,
    #[error("JWT_PUBLIC_KEY is not a valid RSA PEM key: {0}")]
    BadPublicKey(String),
    #[error("JWT_PRIVATE_KEY is not a valid RSA PEM key: {0}")]
    BadPrivateKey(String),
}

impl Tokens {
    pub fn from_config(config: &Config) -> Result<Tokens, KeyError> {
        let (algorithm, decoding, encoding) = match config.jwt_algorithm {
            JwtAlgorithm::HS256 => {
                let secret = config
                    .jwt_secret
                    .as_deref()
                    .filter(|s| !s.is_empty())
                    .ok_or(KeyError::MissingSecret)?;
                (
                    Algorithm::HS256,
                    DecodingKey::from_secret(secret.as_bytes()),
                    Some(EncodingKey::from_secret(secret.as_bytes())),
                )
            }
            JwtAlgorithm::RS256 => {
                let public = config
                    .jwt_public_key
                    .as_deref()
                    .ok_or(KeyError::MissingPublicKey)?;
                let decoding = DecodingKey::from_rsa_pem(public.as_bytes())
                    .map_err(|e| KeyError::BadPublicKey(e.to_string()))?;
                let encoding = match config.jwt_private_key.as_deref() {
                    Some(pem) => Some(
                        EncodingKey::from_rsa_pem(pem.as_bytes())
                            .map_err(|e| KeyError::BadPrivateKey(e.to_string()))?,
                    ),
                    None => None,
                };
                (Algorithm::RS256, decoding, encoding)
            }
        };
        let mut validation = Validation::new(algorithm);
        validation.leeway = config.jwt_leeway_secs;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp"]);
        match &config.jwt_issuer {
            Some(issuer) => validation.set_issuer(&[issuer]),
            None => validation.iss = None,
        }
        match &config.jwt_audience {
            Some(audience) => validation.set_audience(&[audience]),
            None => validation.validate_aud = false,
        }
        Ok(Tokens {
            decoding,
            encoding,
            algorithm,
            validation,
            user_claim: config.jwt_user_claim.clone(),
            issuer: config.jwt_issuer.clone(),
            audience: config.jwt_audience.clone(),
        })
    }

    /// Verifies `token` and extracts the caller's identity.
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let data =
            jsonwebtoken::decode::<Map<String, Value>>(token, &self.decoding, &self.validation)
                .map_err(|_| AuthError::Invalid)?;
        let claims = data.claims;
        let user_id = match claims.get(&self.user_claim) {
            Some(Value::String(id)) => id.clone(),
            Some(Value::Number(id)) => id.to_string(),
            _ => return Err(AuthError::NoUserId),
        };
        validate_user_id(&user_id).map_err(|_| AuthError::NoUserId)?;
        let text = |key: &str| claims.get(key).and_then(Value::as_str).map(str::to_owned);
        let roles = match claims.get("roles") {
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect(),
            Some(Value::String(csv)) => csv.split(',').map(|r| r.trim().to_owned()).collect(),
            _ => Vec::new(),
        };
        Ok(Identity {
            user_id,
            name: text("name"),
            group: text("group").or_else(|| text("user_group")),
            roles,
        })
    }

    /// Mints a token this gateway accepts, valid for `ttl`. `None` when only a
    /// public key is configured (chatter cannot sign for an outside issuer).
    pub fn mint(
        &self,
        identity: &Identity,
        ttl: time::Duration,
    ) -> Option<(String, OffsetDateTime)> {
        let encoding = self.encoding.as_ref()?;
        let now = OffsetDateTime::now_utc();
        let expires_at = now + ttl;
        let mut claims = Map::new();
        claims.insert(
            self.user_claim.clone(),
            Value::String(identity.user_id.clone()),
        );
        if self.user_claim != "sub" {
            claims.insert("sub".into(), Value::String(identity.user_id.clone()));
        }
        if let Some(name) = &identity.name {
            claims.insert("name".into(), Value::String(name.clone()));
        }
        if let Some(group) = &identity.group {
            claims.insert("group".into(), Value::String(group.clone()));
        }
        if !identity.roles.is_empty() {
            claims.insert(
                "roles".into(),
                identity.roles.iter().cloned().map(Value::String).collect(),
            );
        }
        claims.insert("iat".into(), now.unix_timestamp().into());
        claims.insert("exp".into(), expires_at.unix_timestamp().into());
        if let Some(issuer) = &self.issuer {
            claims.insert("iss".into(), Value::String(issuer.clone()));
        }
        if let Some(audience) = &self.audience {
            claims.insert("aud".into(), Value::String(audience.clone()));
        }
        let token = jsonwebtoken::encode(&Header::new(self.algorithm), &claims, encoding).ok()?;
        Some((token, expires_at))
    }
}

/// A user id is 1–128 characters with no control characters or whitespace at the ends.
pub fn validate_user_id(id: &str) -> Result<(), &'static str> {
    if id.is_empty() {
        return Err("user id must not be empty");
    }
    if id.chars().count() > MAX_USER_ID_CHARS {
        return Err("user id is longer than 128 characters");
    }
    if id.chars().any(char::is_control) || id.trim() != id {
        return Err("user id contains control characters or surrounding spaces");
    }
    Ok(())
}

/// Checks an `Authorization` header against the service secret.
///
/// Accepts `Bearer <secret>` and the raw secret, which is how the older identity
/// and notification services send it. Compared in constant time.
pub fn is_service_secret(header: &str, secret: &str) -> bool {
    let presented = header.strip_prefix("Bearer ").unwrap_or(header).trim();
    !secret.is_empty() && presented.as_bytes().ct_eq(secret.as_bytes()).into()
}

/// True when a `?token=` value is shaped like a JWT rather than a ticket.
pub fn looks_like_jwt(token: &str) -> bool {
    token.split('.').count() == 3
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(secret: &str) -> Tokens {
        let config = Config {
            jwt_secret: Some(secret.into()),
            ..Config::default()
        };
        Tokens::from_config(&config).expect("valid")
    }

    fn alice() -> Identity {
        Identity {
            user_id: "alice".into(),
            name: Some("Alice".into()),
            group: None,
            roles: vec![],
        }
    }

    #[test]
    fn minted_tokens_verify_and_foreign_or_expired_ones_do_not() {
        let ours = tokens("one");
        let (token, _) = ours
            .mint(&alice(), time::Duration::minutes(5))
            .expect("mint");
        assert_eq!(ours.verify(&token), Ok(alice()));
        assert_eq!(tokens("two").verify(&token), Err(AuthError::Invalid));
        let (expired, _) = ours
            .mint(&alice(), time::Duration::minutes(-5))
            .expect("mint");
        assert_eq!(ours.verify(&expired), Err(AuthError::Invalid));
        assert_eq!(ours.verify("garbage"), Err(AuthError::Invalid));
    }

    #[test]
    fn service_secret_accepts_bearer_and_raw_forms() {
        assert!(is_service_secret("Bearer s3", "s3"));
        assert!(is_service_secret("s3", "s3"));
        assert!(!is_service_secret("Bearer s4", "s3"));
        assert!(!is_service_secret("", ""));
    }
}
