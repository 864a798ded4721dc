//! Who a user token belongs to, as `AUTH_MODE` says to find out: a local JWT
//! check (`jwt`), the identity service (`delegated`), or the local check first
//! and the identity service for tokens it refuses (`both`). REST, `/ws_token`
//! and `/ws` all come here, so the three agree on every token.
//!
//! A call to the identity service is paid for before it is made (see
//! [`user_paying`]): otherwise anyone could make chatter call it as fast as they
//! can send garbage tokens, the client-IP limit only counting them afterwards.

use crate::identity_service::Refusal;
use crate::limits::RateLimited;
use crate::state::App;
use chatter_shared::auth::{AuthError, Identity};
use chatter_shared::config::AuthMode;
use std::time::Duration;

/// Why a token does not authenticate anyone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The token is not good: 401 (WebSocket: 4002).
    Invalid(&'static str),
    /// The identity service is down or slow: 503; the caller may retry.
    Unavailable,
    /// Asking the identity service would exceed the caller's budget: 429.
    RateLimited(Duration),
}

/// Verifies `token` under the configured `AUTH_MODE`, the identity service's
/// calls unpaid (for callers charged otherwise, e.g. by the rate-limit layer).
pub async fn user(app: &App, token: &str) -> Result<Identity, Refused> {
    user_paying(app, token, || Ok(())).await
}

/// As [`user`], running `pay` just before the identity service is asked (not
/// for a local JWT or a cached answer); an `Err` from it is returned instead.
pub async fn user_paying(
    app: &App,
    token: &str,
    pay: impl FnOnce() -> Result<(), RateLimited>,
) -> Result<Identity, Refused> {
    let mode = app.config.auth_mode();
    if mode != AuthMode::Delegated {
        match app.tokens.verify(token) {
            Ok(identity) => return Ok(identity),
            Err(error) if mode == AuthMode::Jwt => return Err(local_refusal(error)),
            Err(_) => {}
        }
    }
    let Some(service) = &app.identity_service else {
        // Config validation requires VERIFICATION_URL for these modes.
        return Err(Refused::Unavailable);
    };
    if let Some(identity) = service.cached(token) {
        return Ok(identity);
    }
    pay().map_err(|limited| Refused::RateLimited(limited.retry_after))?;
    service
        .verify(token)
        .await
        .map_err(|refusal| match refusal {
            Refusal::Refused => Refused::Invalid("the identity service refused the token"),
            Refusal::Unavailable => Refused::Unavailable,
        })
}

/// Whether opaque (non-JWT) tokens may be the identity service's: in `jwt`
/// mode they can only be WebSocket tickets.
pub fn delegates(app: &App) -> bool {
    app.config.auth_mode() != AuthMode::Jwt
}

fn local_refusal(error: AuthError) -> Refused {
    match error {
        AuthError::Missing | AuthError::Invalid => {
            Refused::Invalid("the token is invalid or expired")
        }
        AuthError::NoUserId => Refused::Invalid("the token carries no usable user id"),
    }
}
