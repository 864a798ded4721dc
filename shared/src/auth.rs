//! Who is calling: user JWTs, the service secret, and the identity they yield.
//!
//! The accepted algorithm is fixed by configuration and never read from the token
//! (the classic `alg: none` / HS-with-a-public-key confusions). `exp` is required,
//! `nbf` enforced, and `iss`/`aud`, when configured, required and checked, with a
//! small leeway for clock skew. HS256 secrets shorter than
//! [`MIN_JWT_SECRET_BYTES`](crate::config::MIN_JWT_SECRET_BYTES) are refused: a short HMAC key can be brute-forced
//! offline from any one token.

use crate::config::{Config, JwtAlgorithm, MIN_JWT_SECRET_BYTES};
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
    /// The token's permissions when `JWT_PERMISSIONS_CLAIM` is set (empty when
    /// the token has none); `None` when permissions are not checked.
    pub permissions: Option<Vec<String>>,
}

impl Identity {
    /// Whether this caller holds `permission`; always true when permissions are
    /// not checked.
    pub fn may(&self, permission: &str) -> bool {
        self.permissions
            .as_ref()
            .is_none_or(|held| held.iter().any(|p| p == permission))
    }
}

/// The claim that lets a token without `exp` through, while
/// `EXPIRATION_TOKEN_DURATION` is unset: only `GET /token/{user_id}` sets it.
/// It is no defence against a key holder (who could pick any `exp`); it keeps
/// non-expiring tokens a deliberate choice, never an identity provider's slip,
/// and setting `EXPIRATION_TOKEN_DURATION` revokes every one of them.
pub const NEVER_EXPIRES_CLAIM: &str = "never_expires";

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
    permissions_claim: Option<String>,
    /// For tokens without `exp`, set while `EXPIRATION_TOKEN_DURATION` is unset
    /// (see [`NEVER_EXPIRES_CLAIM`]).
    never_expiring: Option<Validation>,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("JWT_SECRET must be set for HS256")]
    MissingSecret,
    #[error("JWT_SECRET must be at least {MIN_JWT_SECRET_BYTES} bytes long for HS256")]
    ShortSecret,
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
                if secret.len() < MIN_JWT_SECRET_BYTES {
                    return Err(KeyError::ShortSecret);
                }
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
        // A configured issuer or audience is *required*, not only compared when
        // present: jsonwebtoken skips the comparison for a token without the claim,
        // so a token minted for another service (no `aud`) would otherwise pass.
        let mut required = vec!["exp"];
        match &config.jwt_issuer {
            Some(issuer) => {
                validation.set_issuer(&[issuer]);
                required.push("iss");
            }
            None => validation.iss = None,
        }
        match &config.jwt_audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        let never_expiring = config.expiration_token_duration.is_none().then(|| {
            let mut lenient = validation.clone();
            let required: Vec<&str> = required.iter().copied().filter(|c| *c != "exp").collect();
            lenient.set_required_spec_claims(&required);
            lenient
        });
        validation.set_required_spec_claims(&required);
        Ok(Tokens {
            permissions_claim: config.jwt_permissions_claim.clone(),
            never_expiring,
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
        let claims = match jsonwebtoken::decode::<Map<String, Value>>(
            token,
            &self.decoding,
            &self.validation,
        ) {
            Ok(data) => data.claims,
            Err(error) => self.never_expiring_claims(token, &error)?,
        };
        let user_id = match claims.get(&self.user_claim) {
            Some(Value::String(id)) => id.clone(),
            Some(Value::Number(id)) => id.to_string(),
            _ => return Err(AuthError::NoUserId),
        };
        validate_user_id(&user_id).map_err(|_| AuthError::NoUserId)?;
        // An optional claim the database cannot store (NUL) is left out: keeping it
        // would fail every request made with the token.
        let storable = |text: &&str| !text.contains('\0');
        let text = |key: &str| {
            claims
                .get(key)
                .and_then(Value::as_str)
                .filter(storable)
                .map(str::to_owned)
        };
        let roles = match claims.get("roles") {
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(Value::as_str)
                .filter(storable)
                .map(str::to_owned)
                .collect(),
            Some(Value::String(csv)) => csv
                .split(',')
                .map(str::trim)
                .filter(storable)
                .map(str::to_owned)
                .collect(),
            _ => Vec::new(),
        };
        let permissions = self
            .permissions_claim
            .as_ref()
            .map(|claim| name_list(claims.get(claim)));
        Ok(Identity {
            user_id,
            name: text("name"),
            group: text("group").or_else(|| text("user_group")),
            roles,
            permissions,
        })
    }

    /// The claims of a token refused only for lacking `exp`, when it is one of
    /// the non-expiring tokens `GET /token/{user_id}` mints (and such tokens are
    /// still accepted).
    fn never_expiring_claims(
        &self,
        token: &str,
        error: &jsonwebtoken::errors::Error,
    ) -> Result<Map<String, Value>, AuthError> {
        use jsonwebtoken::errors::ErrorKind;
        let lenient = self.never_expiring.as_ref().ok_or(AuthError::Invalid)?;
        if !matches!(error.kind(), ErrorKind::MissingRequiredClaim(claim) if claim == "exp") {
            return Err(AuthError::Invalid);
        }
        let claims = jsonwebtoken::decode::<Map<String, Value>>(token, &self.decoding, lenient)
            .map_err(|_| AuthError::Invalid)?
            .claims;
        if claims.get(NEVER_EXPIRES_CLAIM) == Some(&Value::Bool(true)) {
            Ok(claims)
        } else {
            Err(AuthError::Invalid)
        }
    }

    /// Mints a token this gateway accepts, valid for `ttl`. `None` when only a
    /// public key is configured (chatter cannot sign for an outside issuer).
    pub fn mint(
        &self,
        identity: &Identity,
        ttl: time::Duration,
    ) -> Option<(String, OffsetDateTime)> {
        let expires_at = OffsetDateTime::now_utc() + ttl;
        let token = self.mint_claims(identity, Some(expires_at), Map::new())?;
        Some((token, expires_at))
    }

    /// Mints the older token provider's token (`GET /token/{user_id}`): claims
    /// `user_id` (and chatter's user claim), expiring at `expires_at`, or never,
    /// marked with [`NEVER_EXPIRES_CLAIM`], when `None`.
    pub fn mint_provider_token(
        &self,
        identity: &Identity,
        expires_at: Option<OffsetDateTime>,
    ) -> Option<String> {
        let mut extra = Map::new();
        extra.insert("user_id".into(), Value::String(identity.user_id.clone()));
        if expires_at.is_none() {
            extra.insert(NEVER_EXPIRES_CLAIM.into(), Value::Bool(true));
        }
        self.mint_claims(identity, expires_at, extra)
    }

    fn mint_claims(
        &self,
        identity: &Identity,
        expires_at: Option<OffsetDateTime>,
        mut claims: Map<String, Value>,
    ) -> Option<String> {
        let encoding = self.encoding.as_ref()?;
        let now = OffsetDateTime::now_utc();
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
        if let (Some(claim), Some(held)) = (&self.permissions_claim, &identity.permissions) {
            claims.insert(
                claim.clone(),
                held.iter().cloned().map(Value::String).collect(),
            );
        }
        claims.insert("iat".into(), now.unix_timestamp().into());
        if let Some(expires_at) = expires_at {
            claims.insert("exp".into(), expires_at.unix_timestamp().into());
        }
        if let Some(issuer) = &self.issuer {
            claims.insert("iss".into(), Value::String(issuer.clone()));
        }
        if let Some(audience) = &self.audience {
            claims.insert("aud".into(), Value::String(audience.clone()));
        }
        jsonwebtoken::encode(&Header::new(self.algorithm), &claims, encoding).ok()
    }
}

/// A list claim (permissions, roles) as a JSON array of strings, or one string
/// of names separated by commas or spaces (both are seen in the wild);
/// anything else holds none.
pub fn name_list(claim: Option<&Value>) -> Vec<String> {
    match claim {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .filter(|name| !name.contains('\0'))
            .map(str::to_owned)
            .collect(),
        Some(Value::String(list)) => list
            .split([',', ' '])
            .map(str::trim)
            .filter(|name| !name.is_empty() && !name.contains('\0'))
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
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
    use serde_json::json;

    const SECRET: &str = "a-test-secret-of-at-least-32-bytes";

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
            permissions: None,
        }
    }

    fn sign(claims: &Value) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .expect("sign")
    }

    #[test]
    fn minted_tokens_verify_and_foreign_or_expired_ones_do_not() {
        let ours = tokens(SECRET);
        let (token, _) = ours
            .mint(&alice(), time::Duration::minutes(5))
            .expect("mint");
        assert_eq!(ours.verify(&token), Ok(alice()));
        assert_eq!(
            tokens("another-secret-also-32-bytes-long").verify(&token),
            Err(AuthError::Invalid)
        );
        let (expired, _) = ours
            .mint(&alice(), time::Duration::minutes(-5))
            .expect("mint");
        assert_eq!(ours.verify(&expired), Err(AuthError::Invalid));
        assert_eq!(ours.verify("garbage"), Err(AuthError::Invalid));
    }

    #[test]
    fn a_configured_issuer_and_audience_are_required_not_only_compared() {
        let config = Config {
            jwt_secret: Some(SECRET.into()),
            jwt_issuer: Some("https://id.example".into()),
            jwt_audience: Some("chatter".into()),
            ..Config::default()
        };
        let tokens = Tokens::from_config(&config).expect("valid");
        let exp = OffsetDateTime::now_utc().unix_timestamp() + 600;
        let full =
            json!({"sub": "alice", "exp": exp, "iss": "https://id.example", "aud": "chatter"});
        assert!(tokens.verify(&sign(&full)).is_ok());
        for (what, drop, wrong) in [
            ("iss", "iss", None),
            ("aud", "aud", None),
            ("wrong iss", "", Some(("iss", "https://evil.example"))),
            ("wrong aud", "", Some(("aud", "other-service"))),
        ] {
            let mut claims = full.clone();
            if let Some(map) = claims.as_object_mut() {
                map.remove(drop);
                if let Some((key, value)) = wrong {
                    map.insert(key.into(), value.into());
                }
            }
            assert_eq!(
                tokens.verify(&sign(&claims)),
                Err(AuthError::Invalid),
                "{what}: {claims}"
            );
        }
        // Minted tokens carry both, so they still verify.
        let (minted, _) = tokens
            .mint(&alice(), time::Duration::minutes(5))
            .expect("mint");
        assert_eq!(tokens.verify(&minted), Ok(alice()));
    }

    #[test]
    fn without_a_configured_issuer_or_audience_tokens_need_neither() {
        let exp = OffsetDateTime::now_utc().unix_timestamp() + 600;
        let token = sign(&json!({"sub": "alice", "exp": exp}));
        assert!(tokens(SECRET).verify(&token).is_ok());
    }

    #[test]
    fn optional_claims_a_database_cannot_store_are_left_out() {
        let exp = OffsetDateTime::now_utc().unix_timestamp() + 600;
        let token = sign(&json!({
            "sub": "alice", "exp": exp, "name": "a\u{0000}b", "group": "g\u{0000}",
            "roles": ["support", "ad\u{0000}min"],
        }));
        let identity = tokens(SECRET).verify(&token).expect("valid");
        assert_eq!(identity.name, None);
        assert_eq!(identity.group, None);
        assert_eq!(identity.roles, vec!["support".to_owned()]);
    }

    #[test]
    fn tokens_without_exp_pass_only_when_marked_and_while_the_provider_mints_them() {
        let legacy = tokens(SECRET);
        let never = legacy.mint_provider_token(&alice(), None).expect("mint");
        assert_eq!(
            legacy.verify(&never).map(|i| i.user_id),
            Ok("alice".to_owned())
        );
        // An unmarked token without exp is still refused.
        let unmarked = sign(&json!({"sub": "alice"}));
        assert_eq!(legacy.verify(&unmarked), Err(AuthError::Invalid));
        // Once EXPIRATION_TOKEN_DURATION is set, the marked ones stop working.
        let expiring = Tokens::from_config(&Config {
            jwt_secret: Some(SECRET.into()),
            expiration_token_duration: Some(60),
            ..Config::default()
        })
        .expect("valid");
        assert_eq!(expiring.verify(&never), Err(AuthError::Invalid));
        let exp = OffsetDateTime::now_utc() + time::Duration::seconds(60);
        let bounded = expiring
            .mint_provider_token(&alice(), Some(exp))
            .expect("mint");
        assert!(expiring.verify(&bounded).is_ok());
    }

    #[test]
    fn permissions_are_read_from_the_configured_claim_only() {
        let exp = OffsetDateTime::now_utc().unix_timestamp() + 600;
        let token = sign(&json!({"sub": "alice", "exp": exp, "perms": ["ViewRoom", "CreateRoom"]}));
        assert_eq!(
            tokens(SECRET).verify(&token).expect("valid").permissions,
            None
        );
        let checked = Tokens::from_config(&Config {
            jwt_secret: Some(SECRET.into()),
            jwt_permissions_claim: Some("perms".into()),
            ..Config::default()
        })
        .expect("valid");
        let identity = checked.verify(&token).expect("valid");
        assert!(identity.may("ViewRoom") && !identity.may("DeleteRoom"));
        let none = sign(&json!({"sub": "alice", "exp": exp}));
        assert_eq!(
            checked.verify(&none).expect("valid").permissions,
            Some(vec![])
        );
        assert_eq!(name_list(Some(&json!("A, B C"))), vec!["A", "B", "C"]);
    }

    #[test]
    fn a_short_hs256_secret_is_refused() {
        let config = Config {
            jwt_secret: Some("x".repeat(MIN_JWT_SECRET_BYTES - 1)),
            ..Config::default()
        };
        assert!(matches!(
            Tokens::from_config(&config),
            Err(KeyError::ShortSecret)
        ));
        let config = Config {
            jwt_secret: Some("x".repeat(MIN_JWT_SECRET_BYTES)),
            ..Config::default()
        };
        assert!(Tokens::from_config(&config).is_ok());
    }

    #[test]
    fn service_secret_accepts_bearer_and_raw_forms() {
        assert!(is_service_secret("Bearer s3", "s3"));
        assert!(is_service_secret("s3", "s3"));
        assert!(!is_service_secret("Bearer s4", "s3"));
        assert!(!is_service_secret("", ""));
    }
}
