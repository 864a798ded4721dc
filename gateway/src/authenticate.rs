//! Who a user token belongs to, as `AUTH_MODE` says to find out: a local JWT
//! check (`jwt`), the identity service (`delegated`), or the local check first
//! and the identity service for tokens it refuses (`both`). REST, `/ws_token`
//! and `/ws` all come here, so the three agree on every token.

use crate::identity_service::Refusal;
use crate::state::App;
use chatter_shared::auth::{AuthError, Identity};
use chatter_shared::config::AuthMode;

/// Why a token does not authenticate anyone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The token is not good: 401 (WebSocket: 4002).
    Invalid(&'static str),
    /// The identity service is down or slow: 503; the caller may retry.
    Unavailable,
}

/// Verifies `token` under the configured `AUTH_MODE`.
pub async fn user(app: &App, token: &str) -> Result<Identity, Refused> {
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
