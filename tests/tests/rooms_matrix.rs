//! The rooms API (docs/API.md) as two tables, each driven by one loop:
//!
//! * the authorization matrix: every room route and client frame against every
//!   kind of caller (owner, member, removed member, non-member, unauthenticated);
//! * the bad-input table: every documented kind of bad input with its status and
//!   error code (or refusal reason, or `Error` frame).
//!
//! Every cell runs even when an earlier one failed; the test then fails listing
//! all the cells that disagreed with the contract.

use anyhow::{Context, Result, bail, ensure};
use chatter_tests::chat::{
    FRAME_WAIT, change_members, connect_ready, create_room_with, ensure_users, recv_matching,
    send_and_confirm, send_message,
};
use chatter_tests::{Auth, Cluster, WsClient};
use reqwest::Method;
use serde_json::{Value, json};

chatter_tests::on_every_backend!(
    authorization_matrix: |b| b,
    bad_input_table: |b| b.env("MAX_ROOM_MEMBERS", "5"),
);

// ------------------------------------------------------------------ the table types

/// Who makes the request. Each has one user (and one open socket), except
/// `Unauthenticated`, who sends no credentials at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Owner,
    Member,
    /// Was a member; the owner removed them with `PUT /rooms/{id}/members`.
    Removed,
    NonMember,
    Unauthenticated,
}

const ROLES: [Role; 5] = [
    Role::Owner,
    Role::Member,
    Role::Removed,
    Role::NonMember,
    Role::Unauthenticated,
];

impl Role {
    fn user(self) -> Option<&'static str> {
        match self {
            Role::Owner => Some("alice"),
            Role::Member => Some("bob"),
            Role::Removed => Some("carol"),
            Role::NonMember => Some("dave"),
            Role::Unauthenticated => None,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// How an HTTP request authenticates for a role (no credentials for `Unauthenticated`).
#[derive(Clone, Copy, Debug)]
enum Credential {
    /// The role's own user JWT.
    User,
    /// The service secret (the role's user goes in the body as `sender_id`).
    Service,
}

/// What a cell does. Paths and bodies are templates: see [`Fixture::resolve`].
#[derive(Clone, Debug)]
enum Action {
    Http {
        method: Method,
        path: &'static str,
        body: Option<Value>,
        credential: Credential,
    },
    /// A body sent verbatim as `application/json` (malformed JSON, oversize bodies).
    Raw {
        method: Method,
        path: &'static str,
        body: String,
    },
    /// Opening a WebSocket.
    Connect,
    /// A client frame on the role's socket.
    Frame {
        type_name: &'static str,
        data: Value,
    },
}

fn http(method: Method, path: &'static str, body: Option<Value>) -> Action {
    Action::Http {
        method,
        path,
        body,
        credential: Credential::User,
    }
}

fn frame(type_name: &'static str, data: Value) -> Action {
    Action::Frame { type_name, data }
}

/// What a cell must answer.
#[derive(Clone, Debug)]
enum Expect {
    /// This success status.
    Status(u16),
    /// 200, and the room `{room}` is (or is not) in the caller's `GET /rooms`.
    Listed(bool),
    /// This error status and `error.code`.
    Error(u16, &'static str),
    /// `MessageSentConfirmation` with `confirmed: true`.
    Confirmed,
    /// `MessageSentConfirmation` with `confirmed: false` and this `reason`.
    Refused(&'static str),
    /// The documented event: `Typing` at another member's socket, `ReadReceipt`
    /// on the caller's own socket, `Resumed` for the room.
    Event(&'static str),
    /// An `Error` frame with this code.
    FrameError(&'static str),
    /// The socket opens and is served (`Ping` → `Pong`).
    Served,
    /// The socket is closed with this code.
    Closed(u16),
}

const NOT_FOUND: Expect = Expect::Error(404, "room_not_found");
const UNAUTHENTICATED: Expect = Expect::Error(401, "unauthenticated");

/// One row of the authorization matrix: one answer per role, in [`ROLES`] order.
struct Row {
    what: &'static str,
    action: Action,
    expect: [Expect; 5],
}

/// One row of the bad-input table: an action by one role and its answer.
struct BadRow {
    what: &'static str,
    role: Role,
    action: Action,
    expect: Expect,
}

// --------------------------------------------------------------------- the fixture

/// The cluster, the role sockets and the ids the templates refer to.
struct Fixture<'c> {
    cluster: &'c Cluster,
    /// `{name}` → value, substituted into paths and bodies.
    vars: Vec<(&'static str, String)>,
    /// One socket per role (none for `Unauthenticated`), indexed by [`Role::index`].
    sockets: Vec<Option<WsClient>>,
    /// The highest seq known to exist in `{room}`.
    latest: i64,
    /// Cells run so far: numbers temp ids and spreads requests over both gateways.
    cells: usize,
}

impl Fixture<'_> {
    fn var(&self, name: &str) -> Result<&str> {
        self.vars
            .iter()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| value.as_str())
            .with_context(|| format!("fixture variable {name} is not set"))
    }

    fn room(&self) -> Result<String> {
        self.var("{room}").map(str::to_owned)
    }

    /// The gateway the current cell talks to: cells alternate between the two.
    fn gateway(&self) -> usize {
        self.cells % 2
    }

    fn socket(&mut self, role: Role) -> Result<&mut WsClient> {
        self.sockets
            .get_mut(role.index())
            .and_then(Option::as_mut)
            .with_context(|| format!("no socket for {role:?}"))
    }

    /// A new room for one cell: alice owns it, bob and frank are members, carol
    /// was a member and has been removed. For cells that change or delete a room.
    async fn fresh_room(&self) -> Result<String> {
        let room = create_room_with(
            self.cluster,
            0,
            "alice",
            &json!({"members": ["bob", "carol", "frank"], "name": "fresh"}),
        )
        .await?;
        let id = room["id"].as_str().context("room id")?.to_owned();
        change_members(self.cluster, 0, "alice", &id, &json!({"remove": ["carol"]})).await?;
        Ok(id)
    }

    /// A new message by `sender` in `{room}` (over the sender's socket); its id.
    async fn fresh_message(&mut self, sender: Role) -> Result<String> {
        let room = self.room()?;
        let temp = format!("fresh-{}", self.cells);
        let ws = self.socket(sender)?;
        send_message(ws, &room, "a message to act on", &temp).await?;
        let confirmation = recv_matching(ws, "MessageSentConfirmation", &temp, |c| {
            c["message_temp_id"] == temp.as_str()
        })
        .await?;
        ensure!(
            confirmation["confirmed"] == true,
            "setting up a message by {sender:?}: {confirmation}"
        );
        self.note_seq(&confirmation);
        confirmation["message_id"]
            .as_str()
            .map(str::to_owned)
            .context("message id")
    }

    fn note_seq(&mut self, answer: &Value) {
        if let Some(seq) = answer["seq"].as_i64() {
            self.latest = self.latest.max(seq);
        }
    }

    /// Fills a template in for `role`: `{fresh_room}` (a new room, see
    /// [`fresh_room`](Self::fresh_room)), `{alice_msg}`/`{bob_msg}` (a new message
    /// by them in `{room}`), `{latest}` (the highest seq in `{room}`; quoted in a
    /// JSON template, it becomes a number), `{me}` (the role's user), `{temp}` (a
    /// temp id unique to the cell), and the fixture's variables.
    async fn resolve(&mut self, template: &str, role: Role) -> Result<String> {
        let mut text = template.to_owned();
        if text.contains("{fresh_room}") {
            let room = self.fresh_room().await?;
            text = text.replace("{fresh_room}", &room);
        }
        for (key, sender) in [("{alice_msg}", Role::Owner), ("{bob_msg}", Role::Member)] {
            if text.contains(key) {
                let id = self.fresh_message(sender).await?;
                text = text.replace(key, &id);
            }
        }
        let latest = self.latest.to_string();
        text = text
            .replace("\"{latest}\"", &latest)
            .replace("{latest}", &latest)
            .replace("{me}", role.user().unwrap_or("nobody"))
            .replace("{temp}", &format!("cell-{}", self.cells));
        for (key, value) in &self.vars {
            text = text.replace(key, value);
        }
        Ok(text)
    }

    async fn resolve_json(&mut self, template: &Value, role: Role) -> Result<Value> {
        let text = self.resolve(&template.to_string(), role).await?;
        serde_json::from_str(&text).with_context(|| format!("template {template} gave {text}"))
    }

    /// Runs one cell and checks its answer.
    async fn cell(&mut self, action: &Action, role: Role, expect: &Expect) -> Result<()> {
        self.cells += 1;
        match action {
            Action::Http {
                method,
                path,
                body,
                credential,
            } => {
                let path = self.resolve(path, role).await?;
                let body = match body {
                    Some(body) => Some(self.resolve_json(body, role).await?),
                    None => None,
                };
                let auth = match (role.user(), credential) {
                    (None, _) => Auth::None,
                    (Some(user), Credential::User) => Auth::Bearer(self.cluster.token(user)),
                    (Some(_), Credential::Service) => {
                        Auth::Bearer(self.cluster.service_secret().to_owned())
                    }
                };
                let (status, answer) = self
                    .cluster
                    .api(self.gateway())
                    .request(method.clone(), &path, auth, body.as_ref())
                    .await?;
                if path == format!("/rooms/{}/messages", self.room()?) && status == 201 {
                    self.note_seq(&answer);
                }
                let said = match &body {
                    Some(body) => format!("{method} {path} {body}"),
                    None => format!("{method} {path}"),
                };
                self.check_http(role, status.as_u16(), &answer, expect)
                    .await
                    .with_context(|| format!("{said} answered {status} {answer}"))
            }
            Action::Raw { method, path, body } => {
                let path = self.resolve(path, role).await?;
                let mut request = self
                    .cluster
                    .http()
                    .request(
                        method.clone(),
                        format!("{}{path}", self.cluster.gateway(self.gateway()).http_url()),
                    )
                    .header("content-type", "application/json")
                    .body(body.clone());
                if let Some(user) = role.user() {
                    request = request.bearer_auth(self.cluster.token(user));
                }
                let response = request.send().await.with_context(|| path.clone())?;
                let status = response.status().as_u16();
                let text = response.text().await?;
                let answer = serde_json::from_str(&text).unwrap_or(Value::String(text));
                let shown: String = body.chars().take(40).collect();
                self.check_http(role, status, &answer, expect)
                    .await
                    .with_context(|| {
                        format!("{method} {path} {shown:?}… answered {status} {answer}")
                    })
            }
            Action::Connect => self.check_connect(role, expect).await,
            Action::Frame { type_name, data } => {
                let data = self.resolve_json(data, role).await?;
                self.check_frame(type_name, data, role, expect).await
            }
        }
    }

    async fn check_http(
        &self,
        role: Role,
        status: u16,
        answer: &Value,
        expect: &Expect,
    ) -> Result<()> {
        match expect {
            Expect::Status(want) => ensure!(status == *want, "expected {want}"),
            Expect::Error(want, code) => {
                ensure!(
                    status == *want && answer["error"]["code"] == *code,
                    "expected {want} {code}"
                );
                ensure!(
                    answer["error"]["message"].is_string(),
                    "errors carry a message"
                );
            }
            Expect::Listed(listed) => {
                ensure!(status == 200, "expected 200");
                let user = role.user().context("GET /rooms needs a user")?;
                let rooms =
                    chatter_tests::chat::list_rooms(self.cluster, self.gateway(), user).await?;
                let room = self.room()?;
                let found = rooms.iter().any(|r| r["id"] == room.as_str());
                ensure!(
                    found == *listed,
                    "{user}'s rooms should {}list {room}: {rooms:?}",
                    if *listed { "" } else { "not " }
                );
            }
            other => bail!("{other:?} is not an HTTP answer (bug in the table)"),
        }
        Ok(())
    }

    async fn check_connect(&mut self, role: Role, expect: &Expect) -> Result<()> {
        let gateway = self.gateway();
        match (role.user(), expect) {
            (Some(user), Expect::Served) => {
                connect_ready(self.cluster, gateway, user).await?;
                Ok(())
            }
            (None, Expect::Closed(code)) => self.check_closed_without_token(None, *code).await,
            (_, other) => bail!("{other:?} for {role:?} connecting (bug in the table)"),
        }
    }

    /// Opens a socket without a token, sends `frame` if given, and expects the
    /// server to close it with `code` without serving the frame.
    async fn check_closed_without_token(
        &self,
        frame: Option<(&str, Value)>,
        code: u16,
    ) -> Result<()> {
        let url = self.cluster.gateway(self.gateway()).ws_url();
        let mut ws = WsClient::connect(&url)
            .await
            .context("upgrade without a token")?;
        if let Some((type_name, data)) = frame {
            // The server may already have closed: a failed send is fine.
            let _ = ws.send_frame(type_name, data).await;
        }
        let close = ws.expect_close(FRAME_WAIT).await?;
        ensure!(close.code == code, "expected close {code}, got {close:?}");
        let served: Vec<&Value> = close
            .frames_before
            .iter()
            .filter(|f| f["type"] != "Disconnection")
            .collect();
        ensure!(
            served.is_empty(),
            "nothing is served without a token: {served:?}"
        );
        Ok(())
    }

    async fn check_frame(
        &mut self,
        type_name: &'static str,
        data: Value,
        role: Role,
        expect: &Expect,
    ) -> Result<()> {
        let Some(me) = role.user() else {
            let Expect::Closed(code) = expect else {
                bail!("{expect:?} for a frame without a token (bug in the table)");
            };
            return self
                .check_closed_without_token(Some((type_name, data)), *code)
                .await;
        };
        let said = format!("{type_name} {data}");
        self.socket(role)?
            .send_frame(type_name, data.clone())
            .await?;
        self.frame_answer(&data, role, me, expect)
            .await
            .with_context(|| said)
    }

    /// Checks what answered a frame `role` (user `me`) sent with `data`.
    async fn frame_answer(
        &mut self,
        data: &Value,
        role: Role,
        me: &str,
        expect: &Expect,
    ) -> Result<()> {
        let room = self.room()?;
        match expect {
            Expect::Confirmed | Expect::Refused(_) => {
                let temp = data["message_temp_id"].clone();
                let confirmation = recv_matching(
                    self.socket(role)?,
                    "MessageSentConfirmation",
                    &format!("for {temp}"),
                    |c| c["message_temp_id"] == temp,
                )
                .await?;
                if let Expect::Refused(reason) = expect {
                    ensure!(
                        confirmation["confirmed"] == false && confirmation["reason"] == *reason,
                        "expected a refusal {reason}: {confirmation}"
                    );
                } else {
                    ensure!(
                        confirmation["confirmed"] == true,
                        "expected confirmed: {confirmation}"
                    );
                    self.note_seq(&confirmation);
                }
            }
            Expect::FrameError(code) => {
                let error = self.socket(role)?.recv_type("Error", FRAME_WAIT).await?;
                ensure!(error["code"] == *code, "expected Error {code}: {error}");
            }
            Expect::Event("Typing") => {
                // Another member sees it: bob for the owner, alice for anyone else.
                let observer = if role == Role::Owner {
                    Role::Member
                } else {
                    Role::Owner
                };
                recv_matching(
                    self.socket(observer)?,
                    "Typing",
                    &format!("by {me} in {room}"),
                    |t| t["room_id"] == room.as_str() && t["user_id"] == me,
                )
                .await
                .with_context(|| format!("{observer:?} is told {me} is typing"))?;
            }
            Expect::Event("ReadReceipt") => {
                let seq = data["seq"].clone();
                recv_matching(
                    self.socket(role)?,
                    "ReadReceipt",
                    &format!("for {me} at {seq} in {room}"),
                    |r| r["room_id"] == room.as_str() && r["user_id"] == me && r["seq"] == seq,
                )
                .await?;
            }
            Expect::Event("Resumed") => {
                recv_matching(self.socket(role)?, "Resumed", &format!("for {room}"), |r| {
                    r["room_id"] == room.as_str()
                })
                .await?;
            }
            other => bail!("{other:?} is not a frame answer (bug in the table)"),
        }
        Ok(())
    }
}

// --------------------------------------------------------------- the authorization matrix

/// Every route and frame of docs/API.md × owner, member, removed member,
/// non-member and unauthenticated caller.
async fn authorization_matrix(cluster: &Cluster) -> Result<()> {
    use Expect::{Closed, Confirmed, Error, Event, FrameError, Listed, Refused, Served, Status};
    ensure_users(cluster, &["alice", "bob", "carol", "dave", "erin", "frank"]).await?;
    let room = create_room_with(
        cluster,
        0,
        "alice",
        &json!({"members": ["bob", "carol"], "name": "matrix"}),
    )
    .await?["id"]
        .as_str()
        .context("room id")?
        .to_owned();

    // Owner and removed member on gateway 0, member and non-member on gateway 1.
    let mut sockets = Vec::new();
    for role in ROLES {
        sockets.push(match role.user() {
            Some(user) => Some(connect_ready(cluster, role.index() % 2, user).await?),
            None => None,
        });
    }
    let mut fx = Fixture {
        cluster,
        vars: vec![("{room}", room.clone())],
        sockets,
        latest: 0,
        cells: 0,
    };
    // Carol writes while she is a member, then the owner removes her; her open
    // socket is told, and from then on she is "removed".
    let carol = fx.socket(Role::Removed)?;
    let carols = send_and_confirm(carol, &room, "carol was here", "carol-1").await?;
    ensure!(carols["confirmed"] == true, "carol, a member: {carols}");
    let carol_msg = carols["message_id"].as_str().context("id")?.to_owned();
    fx.note_seq(&carols);
    fx.fresh_message(Role::Owner).await?;
    fx.vars.push(("{carol_msg}", carol_msg));
    change_members(cluster, 1, "alice", &room, &json!({"remove": ["carol"]})).await?;
    recv_matching(
        fx.socket(Role::Removed)?,
        "MemberRemoved",
        "of carol",
        |m| m["room_id"] == room.as_str() && m["user_id"] == "carol",
    )
    .await
    .context("carol's socket is told she was removed")?;

    let message = |text: &str| Some(json!({ "message": text }));
    let rows = vec![
        Row {
            what: "POST /rooms",
            action: http(
                Method::POST,
                "/rooms",
                Some(json!({"members": ["erin"], "name": "any user may"})),
            ),
            expect: [
                Status(201),
                Status(201),
                Status(201),
                Status(201),
                UNAUTHENTICATED,
            ],
        },
        Row {
            what: "GET /rooms",
            action: http(Method::GET, "/rooms", None),
            expect: [
                Listed(true),
                Listed(true),
                Listed(false),
                Listed(false),
                UNAUTHENTICATED,
            ],
        },
        Row {
            what: "GET /rooms/{id}",
            action: http(Method::GET, "/rooms/{room}", None),
            expect: [
                Status(200),
                Status(200),
                NOT_FOUND,
                NOT_FOUND,
                UNAUTHENTICATED,
            ],
        },
        Row {
            what: "PUT /rooms/{id}/members: add",
            action: http(
                Method::PUT,
                "/rooms/{fresh_room}/members",
                Some(json!({"add": ["erin"]})),
            ),
            expect: [
                Status(200),
                Error(403, "not_owner"),
                NOT_FOUND,
                NOT_FOUND,
                UNAUTHENTICATED,
            ],
        },
        Row {
            what: "PUT /rooms/{id}/members: remove another member",
            action: http(
                Method::PUT,
                "/rooms/{fresh_room}/members",
                Some(json!({"remove": ["frank"]})),
            ),
            expect: [
                Status(200),
                Error(403, "not_owner"),
                NOT_FOUND,
                NOT_FOUND,
                UNAUTHENTICATED,
            ],
        },
        Row {
            what: "PUT /rooms/{id}/members: remove oneself (leave)",
            action: http(
                Method::PUT,
                "/rooms/{fresh_room}/members",
                Some(json!({"remove": ["{me}"]})),
            ),
            expect: [
                Error(400, "owner_cannot_leave"),
                Status(200),
                NOT_FOUND,
                NOT_FOUND,
                UNAUTHENTICATED,
            ],
        },
        Row {
            what: "DELETE /rooms/{id}",
            action: http(Method::DELETE, "/rooms/{fresh_room}", None),
            expect: [
                Status(204),
                Error(403, "not_owner"),
                NOT_FOUND,
                NOT_FOUND,
                UNAUTHENTICATED,
            ],
        },
        Row {
            what: "GET /rooms/{id}/messages",
            action: http(Method::GET, "/rooms/{room}/messages", None),
            expect: [
                Status(200),
                Status(200),
                NOT_FOUND,
                NOT_FOUND,
                UNAUTHENTICATED,
            ],
        },
        Row {
            what: "POST /rooms/{id}/messages",
            action: http(
                Method::POST,
                "/rooms/{room}/messages",
                message("from the matrix"),
            ),
            expect: [
                Status(201),
                Status(201),
                NOT_FOUND,
                NOT_FOUND,
                UNAUTHENTICATED,
            ],
        },
        Row {
            // Sending as someone else is refused before the room is looked at,
            // the same for every room id: nothing about the room leaks.
            what: "POST /rooms/{id}/messages with sender_id bob",
            action: http(
                Method::POST,
                "/rooms/{room}/messages",
                Some(json!({"message": "as bob", "sender_id": "bob"})),
            ),
            expect: [
                Error(403, "not_allowed"),
                Status(201),
                Error(403, "not_allowed"),
                Error(403, "not_allowed"),
                UNAUTHENTICATED,
            ],
        },
        Row {
            what: "POST /rooms/{id}/messages with the service secret, sender_id = the role",
            action: Action::Http {
                method: Method::POST,
                path: "/rooms/{room}/messages",
                body: Some(json!({"message": "from a service", "sender_id": "{me}"})),
                credential: Credential::Service,
            },
            expect: [
                Status(201),
                Status(201),
                Error(403, "sender_not_member"),
                Error(403, "sender_not_member"),
                UNAUTHENTICATED,
            ],
        },
        Row {
            what: "PATCH bob's message",
            action: http(
                Method::PATCH,
                "/rooms/{room}/messages/{bob_msg}",
                message("edited"),
            ),
            expect: [
                Error(403, "not_sender"),
                Status(200),
                NOT_FOUND,
                NOT_FOUND,
                UNAUTHENTICATED,
            ],
        },
        Row {
            what: "PATCH alice's message",
            action: http(
                Method::PATCH,
                "/rooms/{room}/messages/{alice_msg}",
                message("edited"),
            ),
            expect: [
                Status(200),
                Error(403, "not_sender"),
                NOT_FOUND,
                NOT_FOUND,
                UNAUTHENTICATED,
            ],
        },
        Row {
            what: "PATCH carol's message, sent before her removal",
            action: http(
                Method::PATCH,
                "/rooms/{room}/messages/{carol_msg}",
                message("edited"),
            ),
            expect: [
                Error(403, "not_sender"),
                Error(403, "not_sender"),
                NOT_FOUND,
                NOT_FOUND,
                UNAUTHENTICATED,
            ],
        },
        Row {
            what: "DELETE bob's message",
            action: http(Method::DELETE, "/rooms/{room}/messages/{bob_msg}", None),
            expect: [
                Status(204),
                Status(204),
                NOT_FOUND,
                NOT_FOUND,
                UNAUTHENTICATED,
            ],
        },
        Row {
            what: "DELETE alice's message",
            action: http(Method::DELETE, "/rooms/{room}/messages/{alice_msg}", None),
            expect: [
                Status(204),
                Error(403, "not_allowed"),
                NOT_FOUND,
                NOT_FOUND,
                UNAUTHENTICATED,
            ],
        },
        Row {
            what: "POST /rooms/{id}/read",
            action: http(Method::POST, "/rooms/{room}/read", Some(json!({"seq": 1}))),
            expect: [
                Status(200),
                Status(200),
                NOT_FOUND,
                NOT_FOUND,
                UNAUTHENTICATED,
            ],
        },
        Row {
            what: "GET /rooms/{id}/receipts",
            action: http(Method::GET, "/rooms/{room}/receipts", None),
            expect: [
                Status(200),
                Status(200),
                NOT_FOUND,
                NOT_FOUND,
                UNAUTHENTICATED,
            ],
        },
        Row {
            what: "GET /messages?from=<caller>&to=erin",
            action: http(Method::GET, "/messages?from={me}&to=erin", None),
            expect: [
                Status(200),
                Status(200),
                Status(200),
                Status(200),
                UNAUTHENTICATED,
            ],
        },
        Row {
            what: "GET /messages?from=alice&to=bob",
            action: http(Method::GET, "/messages?from=alice&to=bob", None),
            expect: [
                Status(200),
                Error(403, "forbidden"),
                Error(403, "forbidden"),
                Error(403, "forbidden"),
                UNAUTHENTICATED,
            ],
        },
        Row {
            what: "WebSocket connect",
            action: Action::Connect,
            expect: [Served, Served, Served, Served, Closed(4001)],
        },
        Row {
            what: "SendMessage",
            action: frame(
                "SendMessage",
                json!({"room_id": "{room}", "message": "over the socket", "message_temp_id": "{temp}"}),
            ),
            expect: [
                Confirmed,
                Confirmed,
                Refused("not_a_member"),
                Refused("not_a_member"),
                Closed(4001),
            ],
        },
        Row {
            what: "Typing",
            action: frame("Typing", json!({"room_id": "{room}"})),
            expect: [
                Event("Typing"),
                Event("Typing"),
                FrameError("not_a_member"),
                FrameError("not_a_member"),
                Closed(4001),
            ],
        },
        Row {
            // After the POST /read row (seq 1): the markers move, so receipts are sent.
            what: "MarkRead",
            action: frame("MarkRead", json!({"room_id": "{room}", "seq": "{latest}"})),
            expect: [
                Event("ReadReceipt"),
                Event("ReadReceipt"),
                FrameError("not_a_member"),
                FrameError("not_a_member"),
                Closed(4001),
            ],
        },
        Row {
            what: "Resume",
            action: frame("Resume", json!({"rooms": {"{room}": "{latest}"}})),
            expect: [
                Event("Resumed"),
                Event("Resumed"),
                FrameError("not_a_member"),
                FrameError("not_a_member"),
                Closed(4001),
            ],
        },
    ];

    eprintln!(
        "authorization matrix: {} routes/frames x {} roles = {} cells",
        rows.len(),
        ROLES.len(),
        rows.len() * ROLES.len()
    );
    let mut failures = Vec::new();
    for row in &rows {
        for (role, expect) in ROLES.iter().zip(&row.expect) {
            if let Err(error) = fx.cell(&row.action, *role, expect).await {
                failures.push(format!(
                    "{} as {role:?}: expected {expect:?}: {error:#}",
                    row.what
                ));
            }
        }
    }
    let cells = rows.len() * ROLES.len();
    eprintln!(
        "authorization matrix: {} of {cells} cells as documented",
        cells - failures.len()
    );
    if !failures.is_empty() {
        bail!(
            "{} of {cells} authorization cells disagree with docs/API.md:\n  {}",
            failures.len(),
            failures.join("\n  ")
        );
    }
    Ok(())
}

// ------------------------------------------------------------------ the bad-input table

/// Every kind of bad input docs/API.md lists, each with its status and code.
/// Runs with `MAX_ROOM_MEMBERS=5`.
async fn bad_input_table(cluster: &Cluster) -> Result<()> {
    use Expect::{Error, FrameError, Refused, Status};
    ensure_users(
        cluster,
        &["alice", "bob", "erin", "u1", "u2", "u3", "u4", "u5"],
    )
    .await?;
    let id = |room: Value| -> Result<String> {
        room["id"].as_str().map(str::to_owned).context("room id")
    };
    let room = id(create_room_with(cluster, 0, "alice", &json!({"members": ["bob"]})).await?)?;
    let other = id(create_room_with(cluster, 0, "alice", &json!({"members": ["bob"]})).await?)?;
    let direct = id(create_room_with(
        cluster,
        0,
        "alice",
        &json!({"kind": "direct", "members": ["bob"]}),
    )
    .await?)?;
    let alice = connect_ready(cluster, 0, "alice").await?;
    let mut fx = Fixture {
        cluster,
        vars: vec![
            ("{room}", room.clone()),
            ("{other}", other.clone()),
            ("{direct}", direct),
            ("{random}", uuid::Uuid::new_v4().to_string()),
        ],
        sockets: vec![Some(alice), None, None, None, None],
        latest: 0,
        cells: 0,
    };
    let room_msg = fx.fresh_message(Role::Owner).await?;
    let ws = fx.socket(Role::Owner)?;
    let elsewhere = send_and_confirm(ws, &other, "in another room", "other-1").await?;
    ensure!(elsewhere["confirmed"] == true, "{elsewhere}");
    let other_msg = elsewhere["message_id"].as_str().context("id")?.to_owned();
    fx.vars.push(("{room_msg}", room_msg));
    fx.vars.push(("{other_msg}", other_msg));

    let alice_does = |what: &'static str, action: Action, expect: Expect| BadRow {
        what,
        role: Role::Owner,
        action,
        expect,
    };
    let limit = |what, path| alice_does(what, http(Method::GET, path, None), bad_limit());
    let post_room = |what, body: Value, expect| {
        alice_does(what, http(Method::POST, "/rooms", Some(body)), expect)
    };
    let put_members = |what, body: Value, expect| {
        alice_does(
            what,
            http(Method::PUT, "/rooms/{room}/members", Some(body)),
            expect,
        )
    };
    let publish = |what, body: Value, expect| {
        alice_does(
            what,
            http(Method::POST, "/rooms/{room}/messages", Some(body)),
            expect,
        )
    };
    let raw = |what, method, path, body: &str| {
        alice_does(
            what,
            Action::Raw {
                method,
                path,
                body: body.to_owned(),
            },
            Error(400, "bad_json"),
        )
    };
    let bad_path = |what, method, path, body: Option<Value>| {
        alice_does(what, http(method, path, body), Error(400, "bad_path"))
    };
    let query = |what, path| alice_does(what, http(Method::GET, path, None), bad_query());
    let others = |n: usize| -> Value {
        let mut members = vec![json!("bob")];
        members.extend((1..n).map(|i| json!(format!("u{i}"))));
        json!({ "members": members })
    };

    let rows = vec![
        // A malformed UUID in every path position.
        bad_path(
            "room id: GET /rooms/{id}",
            Method::GET,
            "/rooms/not-a-uuid",
            None,
        ),
        bad_path(
            "room id: PUT members",
            Method::PUT,
            "/rooms/not-a-uuid/members",
            Some(json!({"add": ["bob"]})),
        ),
        bad_path("room id: DELETE", Method::DELETE, "/rooms/12345", None),
        bad_path(
            "room id: GET messages",
            Method::GET,
            "/rooms/not-a-uuid/messages",
            None,
        ),
        bad_path(
            "room id: POST messages",
            Method::POST,
            "/rooms/not-a-uuid/messages",
            Some(json!({"message": "hi"})),
        ),
        bad_path(
            "room id: PATCH a message",
            Method::PATCH,
            "/rooms/not-a-uuid/messages/{room_msg}",
            Some(json!({"message": "hi"})),
        ),
        bad_path(
            "room id: DELETE a message",
            Method::DELETE,
            "/rooms/not-a-uuid/messages/{room_msg}",
            None,
        ),
        bad_path(
            "room id: POST read",
            Method::POST,
            "/rooms/not-a-uuid/read",
            Some(json!({"seq": 1})),
        ),
        bad_path(
            "room id: GET receipts",
            Method::GET,
            "/rooms/{room}x/receipts",
            None,
        ),
        bad_path(
            "message id: PATCH",
            Method::PATCH,
            "/rooms/{room}/messages/not-a-uuid",
            Some(json!({"message": "hi"})),
        ),
        bad_path(
            "message id: DELETE",
            Method::DELETE,
            "/rooms/{room}/messages/42",
            None,
        ),
        // Message ids that are not in this room.
        alice_does(
            "PATCH another room's message",
            http(
                Method::PATCH,
                "/rooms/{room}/messages/{other_msg}",
                Some(json!({"message": "hi"})),
            ),
            Error(404, "message_not_found"),
        ),
        alice_does(
            "DELETE a message that does not exist",
            http(Method::DELETE, "/rooms/{room}/messages/{random}", None),
            Error(404, "message_not_found"),
        ),
        // Users.
        post_room(
            "unknown user in members",
            json!({"members": ["bob", "ghost"]}),
            Error(400, "unknown_user"),
        ),
        put_members(
            "unknown user in add",
            json!({"add": ["ghost"]}),
            Error(400, "unknown_user"),
        ),
        post_room(
            "empty user id in members",
            json!({"members": [""]}),
            Error(400, "bad_user_id"),
        ),
        put_members(
            "user id over 128 bytes in add",
            json!({"add": ["u".repeat(129)]}),
            Error(400, "bad_user_id"),
        ),
        post_room(
            "user id with a control character",
            json!({"members": ["bo\u{7}b"]}),
            Error(400, "bad_user_id"),
        ),
        // Names, metadata, sizes (MAX_ROOM_MEMBERS=5 here).
        post_room(
            "name of MAX_ROOM_NAME_CHARS (200) characters",
            json!({"members": ["bob"], "name": "é".repeat(200)}),
            Status(201),
        ),
        post_room(
            "name over MAX_ROOM_NAME_CHARS",
            json!({"members": ["bob"], "name": "n".repeat(201)}),
            Error(400, "name_too_long"),
        ),
        post_room(
            "metadata of about 4000 bytes",
            json!({"members": ["bob"], "metadata": {"k": "x".repeat(4000)}}),
            Status(201),
        ),
        post_room(
            "metadata over 4096 bytes serialized",
            json!({"members": ["bob"], "metadata": {"k": "x".repeat(4200)}}),
            Error(400, "metadata_too_large"),
        ),
        post_room(
            "metadata an array",
            json!({"members": ["bob"], "metadata": [1, 2]}),
            Error(400, "bad_metadata"),
        ),
        post_room(
            "metadata a string",
            json!({"members": ["bob"], "metadata": "4B"}),
            Error(400, "bad_metadata"),
        ),
        post_room(
            "MAX_ROOM_MEMBERS members, the owner included",
            others(4),
            Status(201),
        ),
        post_room(
            "more than MAX_ROOM_MEMBERS members",
            others(5),
            Error(400, "too_many_members"),
        ),
        put_members(
            "adding past MAX_ROOM_MEMBERS",
            json!({"add": ["u1", "u2", "u3", "u4"]}),
            Error(400, "too_many_members"),
        ),
        // Paging.
        limit("limit=0", "/rooms/{room}/messages?limit=0"),
        limit("limit=-1", "/rooms/{room}/messages?limit=-1"),
        limit("limit=201", "/rooms/{room}/messages?limit=201"),
        limit(
            "limit=999999999999999999999",
            "/rooms/{room}/messages?limit=999999999999999999999",
        ),
        limit("GET /rooms limit=0", "/rooms?limit=0"),
        limit("GET /rooms limit=201", "/rooms?limit=201"),
        limit("GET /rooms/{id} limit=0", "/rooms/{room}?limit=0"),
        limit(
            "GET /messages limit=201",
            "/messages?from=alice&to=bob&limit=201",
        ),
        alice_does(
            "limit=200 (PAGE_SIZE_MAX)",
            http(Method::GET, "/rooms/{room}/messages?limit=200", None),
            Status(200),
        ),
        query(
            "before_seq and after_seq together",
            "/rooms/{room}/messages?before_seq=5&after_seq=1",
        ),
        query("negative after_seq", "/rooms/{room}/messages?after_seq=-1"),
        query(
            "negative before_seq",
            "/rooms/{room}/messages?before_seq=-3",
        ),
        query(
            "GET /messages with before_seq and after_seq",
            "/messages?from=alice&to=bob&before_seq=5&after_seq=1",
        ),
        alice_does(
            "a cursor GET /rooms did not give",
            http(Method::GET, "/rooms?cursor=not-a-cursor", None),
            Error(400, "bad_cursor"),
        ),
        // Kinds and direct rooms.
        post_room(
            "direct room with no other member",
            json!({"kind": "direct", "members": []}),
            Error(400, "bad_direct_members"),
        ),
        post_room(
            "direct room with only oneself",
            json!({"kind": "direct", "members": ["alice"]}),
            Error(400, "bad_direct_members"),
        ),
        post_room(
            "direct room with two other members",
            json!({"kind": "direct", "members": ["bob", "erin"]}),
            Error(400, "bad_direct_members"),
        ),
        post_room(
            "kind support",
            json!({"kind": "support", "members": ["bob"]}),
            Error(400, "unsupported_kind"),
        ),
        alice_does(
            "changing a direct room's members",
            http(
                Method::PUT,
                "/rooms/{direct}/members",
                Some(json!({"add": ["erin"]})),
            ),
            Error(400, "direct_room"),
        ),
        // Membership changes.
        put_members(
            "the same user in add and remove",
            json!({"add": ["erin"], "remove": ["erin"]}),
            Error(400, "bad_members"),
        ),
        put_members(
            "the owner removing themself",
            json!({"remove": ["alice"]}),
            Error(400, "owner_cannot_leave"),
        ),
        // Messages.
        publish(
            "empty message",
            json!({"message": ""}),
            Error(400, "empty_message"),
        ),
        publish(
            "message over MAX_MESSAGE_CHARS (4000)",
            json!({"message": "x".repeat(4001)}),
            Error(400, "message_too_long"),
        ),
        publish(
            "temp id over MAX_TEMP_ID_CHARS (128)",
            json!({"message": "hi", "message_temp_id": "t".repeat(129)}),
            Error(400, "temp_id_too_long"),
        ),
        alice_does(
            "editing to an empty message",
            http(
                Method::PATCH,
                "/rooms/{room}/messages/{room_msg}",
                Some(json!({"message": ""})),
            ),
            Error(400, "empty_message"),
        ),
        publish(
            "parent_id from another room",
            json!({"message": "reply", "parent_id": "{other_msg}"}),
            Error(400, "bad_parent"),
        ),
        publish(
            "parent_id that is no message",
            json!({"message": "reply", "parent_id": "{random}"}),
            Error(400, "bad_parent"),
        ),
        alice_does(
            "SendMessage with a parent_id from another room",
            frame(
                "SendMessage",
                json!({"room_id": "{room}", "message": "reply", "message_temp_id": "{temp}", "parent_id": "{other_msg}"}),
            ),
            Refused("bad_parent"),
        ),
        alice_does(
            "SendMessage with a parent_id that is no message",
            frame(
                "SendMessage",
                json!({"room_id": "{room}", "message": "reply", "message_temp_id": "{temp}", "parent_id": "{random}"}),
            ),
            Refused("bad_parent"),
        ),
        // Read markers.
        alice_does(
            "POST read with a negative seq",
            http(Method::POST, "/rooms/{room}/read", Some(json!({"seq": -1}))),
            Error(400, "bad_seq"),
        ),
        alice_does(
            "POST read past the latest message",
            http(
                Method::POST,
                "/rooms/{room}/read",
                Some(json!({"seq": 1_000_000})),
            ),
            Error(400, "bad_seq"),
        ),
        alice_does(
            "MarkRead with a negative seq",
            frame("MarkRead", json!({"room_id": "{room}", "seq": -1})),
            FrameError("bad_seq"),
        ),
        alice_does(
            "MarkRead past the latest message",
            frame("MarkRead", json!({"room_id": "{room}", "seq": 1_000_000})),
            FrameError("bad_seq"),
        ),
        // Malformed JSON and wrong field types.
        raw("POST /rooms malformed", Method::POST, "/rooms", "{not json"),
        raw(
            "PUT members malformed",
            Method::PUT,
            "/rooms/{room}/members",
            "{\"add\": [",
        ),
        raw(
            "POST messages malformed",
            Method::POST,
            "/rooms/{room}/messages",
            "message=hi",
        ),
        raw(
            "PATCH a message malformed",
            Method::PATCH,
            "/rooms/{room}/messages/{room_msg}",
            "{",
        ),
        raw(
            "POST read malformed",
            Method::POST,
            "/rooms/{room}/read",
            "[1,",
        ),
        post_room(
            "members not a list",
            json!({"members": "bob"}),
            Error(400, "bad_json"),
        ),
        put_members(
            "add not a list",
            json!({"add": "bob"}),
            Error(400, "bad_json"),
        ),
        publish(
            "message not a string",
            json!({"message": 5}),
            Error(400, "bad_json"),
        ),
        alice_does(
            "seq not a number",
            http(
                Method::POST,
                "/rooms/{room}/read",
                Some(json!({"seq": "one"})),
            ),
            Error(400, "bad_json"),
        ),
        alice_does(
            "a body over 256 KiB",
            Action::Raw {
                method: Method::POST,
                path: "/rooms/{room}/messages",
                body: json!({"message": "x".repeat(300 * 1024)}).to_string(),
            },
            Error(413, "too_large"),
        ),
    ];

    eprintln!("bad-input table: {} rows", rows.len());
    let mut failures = Vec::new();
    for row in &rows {
        if let Err(error) = fx.cell(&row.action, row.role, &row.expect).await {
            failures.push(format!(
                "{}: expected {:?}: {error:#}",
                row.what, row.expect
            ));
        }
    }
    eprintln!(
        "bad-input table: {} of {} rows as documented",
        rows.len() - failures.len(),
        rows.len()
    );
    if !failures.is_empty() {
        bail!(
            "{} of {} bad-input rows disagree with docs/API.md:\n  {}",
            failures.len(),
            rows.len(),
            failures.join("\n  ")
        );
    }
    // Nothing above changed the room: its members and its one message are intact.
    let (status, after) = cluster
        .api(0)
        .get(&format!("/rooms/{room}"), cluster.token("alice"))
        .await?;
    ensure!(status == 200, "{status} {after}");
    ensure!(after["members"] == json!(["alice", "bob"]), "{after}");
    Ok(())
}

fn bad_limit() -> Expect {
    Expect::Error(400, "bad_limit")
}

fn bad_query() -> Expect {
    Expect::Error(400, "bad_query")
}
