//! The content policy: a block list and/or an external moderation service.
//!
//! - **Block list** (`CONTENT_BLOCKLIST_FILE`): one entry a line; `/pattern/` is
//!   a regular expression, anything else a word or phrase matched as a whole
//!   word; both ignore case. Blank lines and lines starting with `#` are
//!   skipped; a pattern that does not compile is logged and skipped. The file
//!   is checked for changes every [`BLOCKLIST_POLL`] and compiled again when
//!   its modification time or size changed: polling one `stat` a second is
//!   cheaper and more portable than a file-system watcher, and survives the
//!   file being replaced (a Kubernetes ConfigMap update swaps a symlink). All
//!   entries compile into one regular expression (the `regex` crate: linear
//!   time whatever the input, so a message cannot make matching slow).
//! - **Moderation service** (`MODERATION_URL`): chatter POSTs
//!   `{room_id, sender_id, message}` and expects `{"action": "allow" | "reject"
//!   | "flag"}` within `MODERATION_TIMEOUT_MS`. A timeout, a connection error, a
//!   non-2xx answer or an unreadable body counts as "down", and
//!   `MODERATION_FAIL` decides: `open` lets the message through, `closed`
//!   refuses it (`content_rejected`, not counted as a strike: it is not the
//!   sender's fault).
//!
//! The block list is asked first; a message it rejects never reaches the service.

use crate::state::App;
use chatter_shared::config::{Config, ModerationFail};
use dashmap::DashMap;
use regex::{Regex, RegexBuilder};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// How often the block list file is checked for changes.
pub const BLOCKLIST_POLL: Duration = Duration::from_secs(1);
/// Past this many senders with recent strikes, the oldest memory is dropped
/// (bounded memory under a flood of distinct senders).
const MAX_STRIKE_SENDERS: usize = 100_000;
/// A compiled block list is refused above this size (regex's own default).
const MAX_BLOCKLIST_REGEX_BYTES: usize = 10 * 1024 * 1024;

/// What the policy says about one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    Reject,
    Flag,
    /// The service could not answer and `MODERATION_FAIL=closed`.
    Unavailable,
}

pub struct ContentPolicy {
    blocklist: Option<Blocklist>,
    service: Option<Service>,
    strikes: Strikes,
}

impl ContentPolicy {
    /// `None` when no policy is configured: the send path then skips it entirely.
    pub fn from_config(config: &Config) -> Option<ContentPolicy> {
        let blocklist = config
            .content_blocklist_file
            .as_deref()
            .filter(|path| !path.is_empty())
            .map(|path| Blocklist::new(PathBuf::from(path)));
        let service = config
            .moderation_url
            .as_deref()
            .filter(|url| !url.is_empty())
            .and_then(|url| Service::new(url, config));
        if blocklist.is_none() && service.is_none() {
            return None;
        }
        Some(ContentPolicy {
            blocklist,
            service,
            strikes: Strikes {
                limit: config.content_strikes,
                window: Duration::from_secs(config.content_strike_window_secs),
                senders: DashMap::new(),
            },
        })
    }

    pub async fn judge(&self, room_id: Uuid, sender_id: &str, message: &str) -> Verdict {
        if let Some(blocklist) = &self.blocklist
            && blocklist.matches(message)
        {
            return Verdict::Reject;
        }
        let Some(service) = &self.service else {
            return Verdict::Allow;
        };
        // Boxed: an HTTP call's future would make every send's future large.
        Box::pin(service.ask(room_id, sender_id, message)).await
    }

    /// Counts a rejection against `sender_id`; true when it reaches
    /// `CONTENT_STRIKES` within the window (the strikes then start over).
    pub fn strike(&self, sender_id: &str) -> bool {
        self.strikes.strike(sender_id)
    }

    /// Starts the block list's watcher, if there is a block list.
    pub fn start(self: &Arc<Self>, stop: CancellationToken) {
        if self.blocklist.is_some() {
            let policy = self.clone();
            tokio::spawn(async move {
                if let Some(blocklist) = &policy.blocklist {
                    blocklist.watch(stop).await;
                }
            });
        }
    }
}

/// Closes a sender's sockets everywhere after too many rejections, and says so
/// in the audit log.
pub async fn close_for_strikes(app: &App, sender_id: &str) {
    let reason = "too many messages rejected by the content policy";
    if let Err(error) = super::orders::close_user(
        &app.bus,
        sender_id,
        super::orders::Closing::Strikes,
        reason,
        None,
    )
    .await
    {
        tracing::warn!(%error, "cannot close a sender's sockets after content strikes");
    }
    if let Err(error) = app
        .store
        .audit("chatter", "strikes", sender_id, Some(reason))
        .await
    {
        tracing::warn!(%error, "cannot record content strikes in the audit log");
    }
}

/// Recent rejections per sender, on this gateway.
struct Strikes {
    limit: u32,
    window: Duration,
    senders: DashMap<String, VecDeque<Instant>>,
}

impl Strikes {
    fn strike(&self, sender_id: &str) -> bool {
        if self.limit == 0 {
            return false;
        }
        if self.senders.len() >= MAX_STRIKE_SENDERS {
            let window = self.window;
            self.senders
                .retain(|_, times| times.back().is_some_and(|t| t.elapsed() < window));
        }
        let mut times = self.senders.entry(sender_id.to_owned()).or_default();
        let now = Instant::now();
        while times
            .front()
            .is_some_and(|t| now.duration_since(*t) >= self.window)
        {
            times.pop_front();
        }
        times.push_back(now);
        if times.len() >= self.limit as usize {
            times.clear();
            return true;
        }
        false
    }
}

/// The block list, compiled, and what the file looked like when it was read.
struct Blocklist {
    path: PathBuf,
    compiled: RwLock<Option<Arc<Regex>>>,
    /// The file's (modification time, size) when last read; `None` before the
    /// first look.
    seen: std::sync::Mutex<Option<Option<(SystemTime, u64)>>>,
}

impl Blocklist {
    fn new(path: PathBuf) -> Blocklist {
        let blocklist = Blocklist {
            path,
            compiled: RwLock::new(None),
            seen: std::sync::Mutex::new(None),
        };
        blocklist.refresh();
        blocklist
    }

    fn matches(&self, message: &str) -> bool {
        let compiled = self.compiled.read().ok().and_then(|held| held.clone());
        compiled.is_some_and(|regex| regex.is_match(message))
    }

    async fn watch(&self, stop: CancellationToken) {
        let mut every = tokio::time::interval(BLOCKLIST_POLL);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = every.tick() => self.refresh(),
            }
        }
    }

    /// Reads and compiles the file again if it changed since last time.
    fn refresh(&self) {
        let stamp = std::fs::metadata(&self.path).ok().map(|meta| {
            (
                meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                meta.len(),
            )
        });
        let Ok(mut seen) = self.seen.lock() else {
            return;
        };
        if *seen == Some(stamp) {
            return;
        }
        *seen = Some(stamp);
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(error) => {
                tracing::warn!(file = %self.path.display(), %error, "cannot read CONTENT_BLOCKLIST_FILE; keeping the previous list");
                return;
            }
        };
        let compiled = compile(&text);
        tracing::info!(file = %self.path.display(), entries = compiled.1, "content block list loaded");
        if let Ok(mut held) = self.compiled.write() {
            *held = compiled.0.map(Arc::new);
        }
    }
}

/// One case-insensitive expression for the whole list, and how many entries it
/// holds. Bad entries are logged and left out. Public for the benchmark
/// (`bench/`, content-policy scenario), which times exactly this matcher.
pub fn compile(text: &str) -> (Option<Regex>, usize) {
    let mut parts = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let pattern = match line
            .strip_prefix('/')
            .and_then(|rest| rest.strip_suffix('/'))
        {
            Some(pattern) if !pattern.is_empty() => pattern.to_owned(),
            _ => format!(r"\b{}\b", regex::escape(line)),
        };
        match RegexBuilder::new(&pattern).case_insensitive(true).build() {
            Ok(_) => parts.push(format!("(?:{pattern})")),
            Err(error) => tracing::warn!(
                line = number + 1,
                %error,
                "CONTENT_BLOCKLIST_FILE: skipping an entry that is not a valid regular expression"
            ),
        }
    }
    if parts.is_empty() {
        return (None, 0);
    }
    let count = parts.len();
    let regex = RegexBuilder::new(&parts.join("|"))
        .case_insensitive(true)
        .size_limit(MAX_BLOCKLIST_REGEX_BYTES)
        .build();
    match regex {
        Ok(regex) => (Some(regex), count),
        Err(error) => {
            tracing::warn!(%error, "CONTENT_BLOCKLIST_FILE: the list is too large to compile; not applied");
            (None, 0)
        }
    }
}

/// The external moderation service.
struct Service {
    client: reqwest::Client,
    url: reqwest::Url,
    fail: ModerationFail,
}

#[derive(Serialize)]
struct Question<'a> {
    room_id: Uuid,
    sender_id: &'a str,
    message: &'a str,
}

#[derive(Deserialize)]
struct Answer {
    action: String,
}

impl Service {
    fn new(url: &str, config: &Config) -> Option<Service> {
        let url = match reqwest::Url::parse(url) {
            Ok(url) => url,
            Err(error) => {
                tracing::error!(%error, "MODERATION_URL is not a URL; the moderation service is not used");
                return None;
            }
        };
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(config.moderation_timeout_ms))
            .build()
            .ok()?;
        Some(Service {
            client,
            url,
            fail: config.moderation_fail,
        })
    }

    async fn ask(&self, room_id: Uuid, sender_id: &str, message: &str) -> Verdict {
        let question = Question {
            room_id,
            sender_id,
            message,
        };
        let answer = async {
            let response = self
                .client
                .post(self.url.clone())
                .json(&question)
                .send()
                .await?
                .error_for_status()?;
            response.json::<Answer>().await
        }
        .await;
        match answer.as_ref().map(|a| a.action.as_str()) {
            Ok("allow") => Verdict::Allow,
            Ok("reject") => Verdict::Reject,
            Ok("flag") => Verdict::Flag,
            other => {
                match other {
                    Ok(action) => {
                        tracing::warn!(action, "the moderation service answered an unknown action")
                    }
                    Err(error) => tracing::warn!(%error, "the moderation service did not answer"),
                }
                match self.fail {
                    ModerationFail::Open => Verdict::Allow,
                    ModerationFail::Closed => Verdict::Unavailable,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_match_whole_and_regexes_as_written_ignoring_case() {
        let (regex, count) = compile("# comment\n\nbadword\n/fr[e3]e money/\n/(/\n");
        let regex = regex.expect("compiled");
        assert_eq!(count, 2, "the broken pattern is skipped");
        assert!(regex.is_match("you BADWORD you"));
        assert!(!regex.is_match("badwords are fine"));
        assert!(regex.is_match("get Fr3e money now"));
        assert!(!regex.is_match("hello"));
    }

    #[test]
    fn strikes_count_within_the_window_and_start_over() {
        let strikes = Strikes {
            limit: 2,
            window: Duration::from_secs(60),
            senders: DashMap::new(),
        };
        assert!(!strikes.strike("a"));
        assert!(!strikes.strike("b"));
        assert!(strikes.strike("a"));
        assert!(!strikes.strike("a"), "counting starts over after a close");
        let off = Strikes {
            limit: 0,
            window: Duration::from_secs(60),
            senders: DashMap::new(),
        };
        assert!(!off.strike("a") && !off.strike("a"));
    }
}
