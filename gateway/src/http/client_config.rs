//! `GET /config?client_type=web`: per-client-type settings (stylesheets, public
//! parameters), as the older Mia-Platform chat backend served them.
//!
//! Each client type is a JSON object, from `[client_config.<type>]` tables of
//! the config file or, when `CLIENT_CONFIG_FILE` names one, a JSON file holding
//! one object keyed by client type; both are read once at start-up. The object
//! may keep error messages (`{title, message}`) under `ERROR_OBJ_KEY`: a caller
//! chatter cannot identify gets them, to show instead of a chat; an identified
//! caller gets the object without them, plus what it needs to connect
//! (`authentication {api_url, ws_url, user_id, user_token}`).
//!
//! The caller is identified by their bearer token, or by the `USERID_HEADER_KEY`
//! header, believed only with `TRUST_USERID_HEADER` (a proxy in front that
//! authenticates users and always sets or strips it): otherwise anyone could
//! send `userid: alice` and be handed a token for alice.

use super::error::{ApiError, ErrorBody};
use super::extract::{Json, NotVerified, Query, Verified, bearer};
use super::provider::provider_token;
use crate::authenticate::Refused;
use crate::state::AppState;
use anyhow::Context;
use axum::Router;
use axum::extract::{Extension, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use axum::routing::get;
use chatter_shared::auth::validate_user_id;
use chatter_shared::config::Config;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use utoipa::IntoParams;

pub fn router() -> Router<AppState> {
    Router::new().route("/config", get(client_config))
}

/// The configured object of every client type.
#[derive(Default)]
pub struct ClientConfigs(Map<String, Value>);

impl ClientConfigs {
    /// Reads `CLIENT_CONFIG_FILE` when set, else the config file's tables;
    /// every client type must be an object.
    pub fn from_config(config: &Config) -> anyhow::Result<ClientConfigs> {
        let all = match &config.client_config_file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("CLIENT_CONFIG_FILE: cannot read {path}"))?;
                match serde_json::from_str::<Value>(&text)
                    .with_context(|| format!("CLIENT_CONFIG_FILE: {path} is not JSON"))?
                {
                    Value::Object(all) => all,
                    _ => anyhow::bail!(
                        "CLIENT_CONFIG_FILE: {path} must hold one object keyed by client type"
                    ),
                }
            }
            None => config.client_config.clone(),
        };
        if let Some((client_type, _)) = all.iter().find(|(_, value)| !value.is_object()) {
            anyhow::bail!("client config {client_type:?} must be an object (a table)");
        }
        Ok(ClientConfigs(all))
    }
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ConfigQuery {
    /// The client type, e.g. `web` or `mobile`.
    client_type: Option<String>,
    /// The older name of `client_type`.
    #[serde(rename = "clientType")]
    #[param(rename = "clientType")]
    client_type_camel: Option<String>,
}

/// A client type's configuration.
///
/// An identified caller (bearer token, or the `USERID_HEADER_KEY` header with
/// `TRUST_USERID_HEADER`) gets the object without its error messages, plus
/// `authentication {api_url, ws_url, user_id, user_token}`; anyone else gets
/// the object with its error messages (`ERROR_OBJ_KEY`, default `errors`).
#[utoipa::path(
    get,
    path = "/config",
    operation_id = "client_config",
    tag = "auth",
    security((), ("user" = [])),
    params(ConfigQuery),
    responses(
        (status = 200, description = "The client type's object, with `authentication` or its error messages", body = Object),
        (status = 400, description = "`bad_query`: no `client_type`", body = ErrorBody),
        (status = 404, description = "`unknown_client_type`", body = ErrorBody),
        (status = 503, description = "`unavailable`: the identity service is unavailable", body = ErrorBody),
    ),
)]
async fn client_config(
    State(state): State<AppState>,
    Query(query): Query<ConfigQuery>,
    verified: Option<Extension<Verified>>,
    not_verified: Option<Extension<NotVerified>>,
    parts: Parts,
) -> Result<Json<Value>, ApiError> {
    let client_type = query
        .client_type
        .or(query.client_type_camel)
        .ok_or_else(|| ApiError::bad_request("bad_query", "client_type is required"))?;
    let Some(Value::Object(configured)) = state.client_configs.0.get(&client_type) else {
        return Err(ApiError::not_found(
            "unknown_client_type",
            format!("no client config for {client_type:?}"),
        ));
    };
    if let Some(Extension(NotVerified(Refused::Unavailable))) = not_verified {
        return Err(Refused::Unavailable.into());
    }
    let caller = match verified {
        Some(Extension(Verified(identity))) => {
            state.ensure_user(&identity).await?;
            let token = bearer(&parts).map(str::to_owned);
            Some((identity.user_id, token))
        }
        None => match trusted_user_id(&state.config, &parts.headers) {
            Some(user_id) => {
                let token = provider_token(&state, &user_id).ok();
                Some((user_id, token))
            }
            None => None,
        },
    };
    let mut answer = configured.clone();
    if let Some((user_id, user_token)) = caller {
        answer.remove(&state.config.error_obj_key);
        let (api_url, ws_url) = urls(&state.config, &parts.headers);
        answer.insert(
            "authentication".into(),
            json!({"api_url": api_url, "ws_url": ws_url, "user_id": user_id, "user_token": user_token}),
        );
    }
    Ok(Json(Value::Object(answer)))
}

/// The `USERID_HEADER_KEY` header's user, when it is trusted and valid.
fn trusted_user_id(config: &Config, headers: &HeaderMap) -> Option<String> {
    if !config.trust_userid_header {
        return None;
    }
    let user_id = headers
        .get(config.userid_header_key.as_str())?
        .to_str()
        .ok()?;
    validate_user_id(user_id).ok()?;
    Some(user_id.to_owned())
}

/// `CLIENT_API_URL` and `CLIENT_WS_URL`, or both built from the request's
/// `Host` (`https`/`wss` when a trusted proxy says `X-Forwarded-Proto: https`).
fn urls(config: &Config, headers: &HeaderMap) -> (Option<String>, Option<String>) {
    let host = headers
        .get(header::HOST)
        .and_then(|host| host.to_str().ok())
        .filter(|host| !host.is_empty() && !host.contains(['/', ' ']));
    let secure = config.trust_forwarded_for
        && headers
            .get("x-forwarded-proto")
            .and_then(|proto| proto.to_str().ok())
            .is_some_and(|proto| proto.eq_ignore_ascii_case("https"));
    let (http, ws) = if secure {
        ("https", "wss")
    } else {
        ("http", "ws")
    };
    let api_url = config
        .client_api_url
        .clone()
        .or_else(|| host.map(|host| format!("{http}://{host}")));
    let ws_url = config
        .client_ws_url
        .clone()
        .or_else(|| host.map(|host| format!("{ws}://{host}/ws")));
    (api_url, ws_url)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn both_sources_load_and_a_type_that_is_no_object_is_refused() {
        let dir = std::env::temp_dir().join(format!("chatter-clients-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let toml = dir.join("chatter.toml");
        std::fs::write(&toml, "[client_config.web]\ntheme = \"dark\"\n").expect("write");
        let config = Config::load(Some(&toml), HashMap::new()).expect("valid");
        let from_tables = ClientConfigs::from_config(&config).expect("tables");
        assert_eq!(from_tables.0["web"]["theme"], "dark");

        let json = dir.join("clients.json");
        std::fs::write(&json, r#"{"mobile": {"compact": true}}"#).expect("write");
        let with_file = Config {
            client_config_file: Some(json.to_string_lossy().into_owned()),
            ..config.clone()
        };
        let from_file = ClientConfigs::from_config(&with_file).expect("file");
        assert_eq!(from_file.0["mobile"]["compact"], true);
        assert!(
            from_file.0.get("web").is_none(),
            "the file replaces the tables"
        );

        std::fs::write(&json, r#"{"mobile": 3}"#).expect("write");
        assert!(ClientConfigs::from_config(&with_file).is_err());
        std::fs::write(&json, "not json").expect("write");
        assert!(ClientConfigs::from_config(&with_file).is_err());
        let _ = std::fs::remove_dir_all(dir);
    }
}
