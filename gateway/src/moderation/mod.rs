//! Moderation: who may connect and send, and what may be said.
//!
//! Bans and send restrictions (room mutes, and blocks inside direct rooms) live
//! in the database and, for speed, in every gateway's memory: an upgrade, a
//! REST call or a send checks a map, never the database. A change is written
//! to the database first, then announced on the `chatter:moderation` channel
//! that every gateway subscribes to; a gateway hearing `ban:<user>` or
//! `room:<room>` reads that one row set again (see [`notices`]). Pub/sub may
//! drop a notice while a gateway is disconnected, so each gateway also reads
//! everything again after its subscriber reconnects and every
//! [`RELOAD_EVERY`]. Sockets are closed by close orders ([`orders`]).
//!
//! The send path asks [`check_send`] once per message: two map lookups when no
//! content policy is configured.

pub mod content;
pub mod notices;
pub mod orders;

use crate::messages::{Draft, Refusal};
use crate::state::App;
use chatter_shared::config::Config;
use chatter_shared::store::{Restriction, Store};
use content::{ContentPolicy, Verdict};
use dashmap::DashMap;
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;
use uuid::Uuid;

/// How often a gateway reads every ban and restriction again, in case a
/// notice was lost.
pub const RELOAD_EVERY: Duration = Duration::from_secs(30);

/// One gateway's view of bans and send restrictions, and its content policy.
pub struct Moderation {
    /// Banned users and until when (`None`: until lifted).
    bans: DashMap<String, Option<OffsetDateTime>>,
    /// Per room, who may not send there and why.
    rooms: DashMap<Uuid, Vec<Restriction>>,
    /// `None` when neither a block list nor a moderation service is configured.
    pub content: Option<Arc<ContentPolicy>>,
}

/// What the send check found about an acceptable message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendVerdict {
    Allowed,
    /// Deliver it, and list it for admins (`GET /admin/flags`).
    Flagged,
}

impl Moderation {
    pub fn new(config: &Config) -> Moderation {
        Moderation {
            bans: DashMap::new(),
            rooms: DashMap::new(),
            content: ContentPolicy::from_config(config).map(Arc::new),
        }
    }

    /// Whether `user_id` is banned now.
    pub fn is_banned(&self, user_id: &str) -> bool {
        self.bans
            .get(user_id)
            .is_some_and(|until| until.is_none_or(|until| OffsetDateTime::now_utc() < until))
    }

    /// Why `user_id` may not send to `room_id` now, if they may not.
    pub fn restriction(&self, room_id: Uuid, user_id: &str) -> Option<Refusal> {
        let restrictions = self.rooms.get(&room_id)?;
        let now = OffsetDateTime::now_utc();
        restrictions
            .iter()
            .filter(|r| r.user_id == user_id && r.until.is_none_or(|until| now < until))
            .map(|r| match r.kind.as_str() {
                "blocked" => Refusal::Blocked,
                _ => Refusal::Muted,
            })
            // A block outlives any mute: report it first.
            .max_by_key(|refusal| *refusal == Refusal::Blocked)
    }

    /// Reads every ban and restriction again.
    pub async fn reload(&self, store: &Store) -> Result<(), sqlx::Error> {
        let bans = store.bans().await?;
        let restrictions = store.restrictions().await?;
        self.bans
            .retain(|user, _| bans.iter().any(|ban| &ban.user_id == user));
        for ban in bans {
            self.bans.insert(ban.user_id, ban.until);
        }
        let mut rooms: std::collections::HashMap<Uuid, Vec<Restriction>> = Default::default();
        for restriction in restrictions {
            rooms
                .entry(restriction.room_id)
                .or_default()
                .push(restriction);
        }
        self.rooms.retain(|room, _| rooms.contains_key(room));
        for (room, restrictions) in rooms {
            self.rooms.insert(room, restrictions);
        }
        Ok(())
    }

    /// Reads one user's ban again.
    pub async fn reload_ban(&self, store: &Store, user_id: &str) -> Result<(), sqlx::Error> {
        match store.ban_of(user_id).await? {
            Some(ban) => {
                self.bans.insert(ban.user_id, ban.until);
            }
            None => {
                self.bans.remove(user_id);
            }
        }
        Ok(())
    }

    /// Reads one room's restrictions again.
    pub async fn reload_room(&self, store: &Store, room_id: Uuid) -> Result<(), sqlx::Error> {
        let restrictions = store.restrictions_of_room(room_id).await?;
        if restrictions.is_empty() {
            self.rooms.remove(&room_id);
        } else {
            self.rooms.insert(room_id, restrictions);
        }
        Ok(())
    }
}

/// The moderation check of one message about to be accepted: a mute or a
/// block refuses it, then the content policy (if any) judges the text. A
/// rejection counts a strike against the sender; enough of them close the
/// sender's sockets with 4011.
pub async fn check_send(app: &App, draft: &Draft<'_>) -> Result<SendVerdict, Refusal> {
    let moderation = &app.moderation;
    if let Some(refusal) = moderation.restriction(draft.room_id, draft.sender_id) {
        return Err(refusal);
    }
    if moderation.is_banned(draft.sender_id) {
        return Err(Refusal::Banned);
    }
    let Some(policy) = &moderation.content else {
        return Ok(SendVerdict::Allowed);
    };
    match policy
        .judge(draft.room_id, draft.sender_id, draft.body)
        .await
    {
        Verdict::Allow => Ok(SendVerdict::Allowed),
        Verdict::Flag => Ok(SendVerdict::Flagged),
        Verdict::Unavailable => Err(Refusal::ContentRejected),
        Verdict::Reject => {
            if policy.strike(draft.sender_id) {
                Box::pin(content::close_for_strikes(app, draft.sender_id)).await;
            }
            Err(Refusal::ContentRejected)
        }
    }
}
