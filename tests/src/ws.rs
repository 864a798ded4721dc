//! A WebSocket test client speaking chatter's JSON envelope
//! (`{"type": "...", "data": {...}}`).
//!
//! Reading only happens inside the `recv*`/`expect*` calls. That is on purpose:
//! tungstenite answers the server's pings while we read, so a test can play a
//! dead client simply by not reading (idle-timeout tests), and the order of
//! events stays deterministic.
//!
//! Frames that a `recv_type` call skips are kept, in order, and handed out by
//! later `recv`/`recv_type` calls, so a test need not know in which order two
//! independent frames (say the sender's confirmation and its own copy of the
//! message) arrive.

use std::collections::VecDeque;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long the TCP connect plus upgrade handshake may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Close code reported when the connection ends without a close frame (the
/// gateway was SIGKILLed, say): 1006, "abnormal closure", as browsers report it.
pub const ABNORMAL_CLOSURE: u16 = 1006;

/// Why a connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The server answered the upgrade request with an HTTP error (401, 403, 503…).
    #[error("upgrade refused with HTTP {status}: {body}")]
    Http { status: u16, body: String },
    #[error("websocket connect failed: {0}")]
    Ws(#[from] tungstenite::Error),
    #[error("websocket connect timed out after {CONNECT_TIMEOUT:?}")]
    Timeout,
}

impl ConnectError {
    /// The HTTP status if the upgrade was refused before switching protocols.
    pub fn status(&self) -> Option<u16> {
        match self {
            ConnectError::Http { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// What one read produced.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    /// A JSON text frame (the whole envelope, `type` and `data`).
    Frame(Value),
    /// The server closed the connection. `code` is [`ABNORMAL_CLOSURE`] if it
    /// simply went away.
    Closed { code: u16, reason: String },
}

/// How a connection ended, and what arrived before the close.
#[derive(Debug, Clone)]
pub struct CloseInfo {
    pub code: u16,
    pub reason: String,
    /// Whole envelopes received (or left unconsumed) before the close, e.g. the
    /// `Disconnection` frame the server sends just before closing.
    pub frames_before: Vec<Value>,
}

impl CloseInfo {
    /// The `data` of the first frame of type `type_name` before the close.
    pub fn frame(&self, type_name: &str) -> Option<&Value> {
        self.frames_before
            .iter()
            .find(|f| f["type"] == type_name)
            .map(|f| &f["data"])
    }
}

pub struct WsClient {
    stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// Frames read but not yet handed out (skipped by `recv_type`).
    buffered: VecDeque<Value>,
    /// Set once the connection is closed; later reads report it again.
    closed: Option<(u16, String)>,
}

impl WsClient {
    /// Connects to `url` (e.g. `ws://127.0.0.1:1234/ws?token=…`).
    pub async fn connect(url: &str) -> Result<WsClient, ConnectError> {
        Self::connect_with_headers(url, &[]).await
    }

    /// Connects sending extra request headers (`Authorization`, `Origin`, …).
    pub async fn connect_with_headers(
        url: &str,
        headers: &[(&str, &str)],
    ) -> Result<WsClient, ConnectError> {
        let mut request = url.into_client_request()?;
        for (name, value) in headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|e| tungstenite::Error::HttpFormat(e.into()))?;
            let value = HeaderValue::from_str(value)
                .map_err(|e| tungstenite::Error::HttpFormat(e.into()))?;
            request.headers_mut().insert(name, value);
        }
        // Nagle off: tests send many tiny frames and measure latency.
        let connect = tokio_tungstenite::connect_async_with_config(request, None, true);
        match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
            Err(_) => Err(ConnectError::Timeout),
            Ok(Err(tungstenite::Error::Http(response))) => Err(ConnectError::Http {
                status: response.status().as_u16(),
                body: String::from_utf8_lossy(response.body().as_deref().unwrap_or_default())
                    .into_owned(),
            }),
            Ok(Err(err)) => Err(err.into()),
            Ok(Ok((stream, _response))) => Ok(WsClient {
                stream,
                buffered: VecDeque::new(),
                closed: None,
            }),
        }
    }

    /// Sends `value` as a JSON text frame.
    pub async fn send_json(&mut self, value: &Value) -> Result<()> {
        self.send_text(&value.to_string()).await
    }

    /// Sends `{"type": type_name, "data": data}`.
    pub async fn send_frame(&mut self, type_name: &str, data: Value) -> Result<()> {
        self.send_json(&json!({ "type": type_name, "data": data }))
            .await
    }

    /// Sends an arbitrary text frame (for malformed-input tests).
    pub async fn send_text(&mut self, text: &str) -> Result<()> {
        self.send(Message::text(text)).await
    }

    /// Sends a binary frame (the protocol is text-only: for bad-input tests).
    pub async fn send_raw_binary(&mut self, bytes: Vec<u8>) -> Result<()> {
        self.send(Message::binary(bytes)).await
    }

    /// Starts a normal client-side close (1000).
    pub async fn close(&mut self) -> Result<()> {
        self.stream
            .close(None)
            .await
            .context("closing the websocket")
    }

    async fn send(&mut self, message: Message) -> Result<()> {
        self.stream
            .send(message)
            .await
            .context("sending a websocket frame")
    }

    /// The next frame (buffered ones first) or the close, waiting up to `timeout`.
    pub async fn recv(&mut self, timeout: Duration) -> Result<Incoming> {
        if let Some(frame) = self.buffered.pop_front() {
            return Ok(Incoming::Frame(frame));
        }
        self.read(Instant::now() + timeout)
            .await?
            .ok_or_else(|| anyhow!("no websocket frame within {timeout:?}"))
    }

    /// The next frame (buffered ones first) or the close, or `None` once
    /// `deadline` passes: for clients that also have timers of their own (a
    /// resend due at a given moment) and so must not treat a quiet moment as an
    /// error.
    pub async fn recv_until(&mut self, deadline: Instant) -> Result<Option<Incoming>> {
        if let Some(frame) = self.buffered.pop_front() {
            return Ok(Some(Incoming::Frame(frame)));
        }
        self.read(deadline).await
    }

    /// The `data` of the next frame whose `type` is `type_name`. Other frames are
    /// kept for later calls. Fails on timeout or close, listing what did arrive.
    pub async fn recv_type(&mut self, type_name: &str, timeout: Duration) -> Result<Value> {
        if let Some(pos) = self.buffered.iter().position(|f| f["type"] == type_name) {
            return Ok(data_of(self.buffered.remove(pos)));
        }
        let deadline = Instant::now() + timeout;
        loop {
            match self.read(deadline).await? {
                Some(Incoming::Frame(frame)) if frame["type"] == type_name => {
                    return Ok(data_of(Some(frame)));
                }
                Some(Incoming::Frame(frame)) => self.buffered.push_back(frame),
                Some(Incoming::Closed { code, reason }) => bail!(
                    "connection closed ({code} {reason:?}) while waiting for {type_name}; frames before: {:?}",
                    self.buffered
                ),
                None => bail!(
                    "no {type_name} within {timeout:?}; other frames received: {:?}",
                    self.buffered
                ),
            }
        }
    }

    /// Reads until the server closes the connection, up to `timeout`.
    pub async fn expect_close(&mut self, timeout: Duration) -> Result<CloseInfo> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.read(deadline).await? {
                Some(Incoming::Frame(frame)) => self.buffered.push_back(frame),
                Some(Incoming::Closed { code, reason }) => {
                    return Ok(CloseInfo {
                        code,
                        reason,
                        frames_before: self.buffered.drain(..).collect(),
                    });
                }
                None => bail!(
                    "connection still open after {timeout:?}; frames received: {:?}",
                    self.buffered
                ),
            }
        }
    }

    /// Succeeds if no frame of type `type_name` arrives (or is buffered) for
    /// `duration`, e.g. to show a non-member receives nothing. Other frames are
    /// kept. A close during the wait is an error too.
    pub async fn expect_silence(&mut self, type_name: &str, duration: Duration) -> Result<()> {
        if let Some(frame) = self.buffered.iter().find(|f| f["type"] == type_name) {
            bail!("expected no {type_name}, but one was already received: {frame}");
        }
        let deadline = Instant::now() + duration;
        loop {
            match self.read(deadline).await? {
                None => return Ok(()),
                Some(Incoming::Frame(frame)) if frame["type"] == type_name => {
                    bail!("expected no {type_name} within {duration:?}, got {frame}")
                }
                Some(Incoming::Frame(frame)) => self.buffered.push_back(frame),
                Some(Incoming::Closed { code, reason }) => {
                    bail!("connection closed ({code} {reason:?}) while expecting silence")
                }
            }
        }
    }

    /// Frames received but not handed out yet (skipped by `recv_type`/`expect_silence`).
    pub fn skipped(&self) -> Vec<Value> {
        self.buffered.iter().cloned().collect()
    }

    /// Whether the server closed the connection (as seen by the last read).
    pub fn is_closed(&self) -> bool {
        self.closed.is_some()
    }

    /// Reads the next JSON frame or the close, skipping WebSocket control frames.
    /// `Ok(None)` means the deadline passed.
    async fn read(&mut self, deadline: Instant) -> Result<Option<Incoming>> {
        loop {
            if let Some((code, reason)) = &self.closed {
                return Ok(Some(Incoming::Closed {
                    code: *code,
                    reason: reason.clone(),
                }));
            }
            let message = match tokio::time::timeout_at(deadline, self.stream.next()).await {
                Err(_) => return Ok(None),
                Ok(message) => message,
            };
            match message {
                Some(Ok(Message::Text(text))) => {
                    let value = serde_json::from_str(text.as_str()).with_context(|| {
                        format!("server sent a non-JSON text frame: {}", text.as_str())
                    })?;
                    return Ok(Some(Incoming::Frame(value)));
                }
                Some(Ok(Message::Binary(bytes))) => bail!(
                    "server sent an unexpected binary frame of {} bytes",
                    bytes.len()
                ),
                Some(Ok(Message::Close(frame))) => {
                    self.closed = Some(match frame {
                        Some(frame) => (u16::from(frame.code), frame.reason.as_str().to_owned()),
                        None => (1005, String::new()), // "no status received"
                    });
                }
                // Pings are answered by tungstenite as part of reading.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                // A reset or EOF without a close frame: the server went away.
                Some(Err(_)) | None => {
                    self.closed = Some((
                        ABNORMAL_CLOSURE,
                        "connection dropped without a close frame".into(),
                    ));
                }
            }
        }
    }
}

fn data_of(frame: Option<Value>) -> Value {
    frame.map(|mut f| f["data"].take()).unwrap_or(Value::Null)
}
