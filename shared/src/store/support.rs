//! The support desk's requests: one row per request for help, beside its
//! `support` room (migrations `0004_support_desk.sql`).
//!
//! Every change of state is one conditional statement (`… WHERE state =
//! 'pending'`), so the database decides races: of twenty agents claiming one
//! request on any number of gateways exactly one update matches, and of several
//! gateways sweeping the same expired request exactly one ends it.

use super::rooms::INSERT_ROOM;
use super::{Store, is_unique_violation};
use serde::Serialize;
use sqlx::types::Json;
use time::OffsetDateTime;
use uuid::Uuid;

/// Where a request is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SupportState {
    /// Waiting for an agent.
    Pending,
    /// Claimed: the agent is a member of the room.
    Active,
    /// No message within `SUPPORT_EXPIRY_SECS`.
    Expired,
    /// Ended on purpose (`POST /support/requests/{room_id}/close`).
    Closed,
}

impl SupportState {
    pub fn as_str(self) -> &'static str {
        match self {
            SupportState::Pending => "pending",
            SupportState::Active => "active",
            SupportState::Expired => "expired",
            SupportState::Closed => "closed",
        }
    }

    pub fn parse(state: &str) -> Option<SupportState> {
        match state {
            "pending" => Some(SupportState::Pending),
            "active" => Some(SupportState::Active),
            "expired" => Some(SupportState::Expired),
            "closed" => Some(SupportState::Closed),
            _ => None,
        }
    }

    /// Pending or active: the chat still takes messages.
    pub fn is_open(self) -> bool {
        matches!(self, SupportState::Pending | SupportState::Active)
    }
}

/// A request for help as the desk shows it.
#[derive(Debug, Clone)]
pub struct SupportRequest {
    pub room_id: Uuid,
    pub user_id: String,
    /// The user's display name, else their id.
    pub username: String,
    pub topic: Option<String>,
    pub metadata: serde_json::Value,
    pub state: SupportState,
    pub agent_id: Option<String>,
    pub agent_name: Option<String>,
    pub created_at: OffsetDateTime,
    pub claimed_at: Option<OffsetDateTime>,
    pub ended_at: Option<OffsetDateTime>,
    pub deadline_ms: i64,
}

/// What a claim came to.
#[derive(Debug, Clone)]
pub enum Claim {
    /// This agent won; the request as it is now (active).
    Won(SupportRequest),
    /// Another agent was first, or the request is no longer pending.
    Lost(SupportRequest),
    NotFound,
}

/// A known agent (a user whose record carries the role `support`).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Agent {
    pub user_id: String,
    pub name: Option<String>,
    pub active_chats: i64,
}

/// An open request a user takes part in, and on which side.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OpenChat {
    pub room_id: Uuid,
    /// True for the agent, false for the user who asked.
    pub is_agent: bool,
    pub pending: bool,
}

#[derive(sqlx::FromRow)]
struct RequestRow {
    room_id: Uuid,
    user_id: String,
    username: Option<String>,
    topic: Option<String>,
    metadata: Json<serde_json::Value>,
    state: String,
    agent_id: Option<String>,
    agent_name: Option<String>,
    created_at: OffsetDateTime,
    claimed_at: Option<OffsetDateTime>,
    ended_at: Option<OffsetDateTime>,
    deadline_ms: i64,
}

impl From<RequestRow> for SupportRequest {
    fn from(row: RequestRow) -> SupportRequest {
        SupportRequest {
            room_id: row.room_id,
            username: row.username.unwrap_or_else(|| row.user_id.clone()),
            user_id: row.user_id,
            topic: row.topic,
            metadata: row.metadata.0,
            // The column's CHECK allows nothing else.
            state: SupportState::parse(&row.state).unwrap_or(SupportState::Closed),
            agent_id: row.agent_id,
            agent_name: row.agent_name,
            created_at: row.created_at,
            claimed_at: row.claimed_at,
            ended_at: row.ended_at,
            deadline_ms: row.deadline_ms,
        }
    }
}

/// A request with its user's and agent's names; `$where` filters `r`.
macro_rules! select_requests {
    ($where:literal) => {
        concat!(
            "SELECT r.room_id, r.user_id, u.name AS username, r.topic, r.metadata, r.state,
                    r.agent_id, a.name AS agent_name, r.created_at, r.claimed_at, r.ended_at,
                    r.deadline_ms
             FROM support_requests r
             JOIN users u ON u.id = r.user_id
             LEFT JOIN users a ON a.id = r.agent_id
             WHERE ",
            $where
        )
    };
}

const OPEN_OF_USER: &str = select_requests!("r.user_id = $1 AND r.state IN ('pending', 'active')");

const INSERT_REQUEST: &str = "INSERT INTO support_requests
     (room_id, user_id, topic, metadata, state, created_at, deadline_ms)
     VALUES ($1, $2, $3, $4, 'pending', $5, $6)";

const INSERT_MEMBER: &str =
    "INSERT INTO room_members (room_id, user_id, role, joined_at) VALUES ($1, $2, $3, $4)
     ON CONFLICT (room_id, user_id) DO NOTHING";

/// A new request for help.
pub struct NewRequest<'a> {
    pub user_id: &'a str,
    pub topic: Option<&'a str>,
    pub metadata: serde_json::Value,
    /// When it expires if nobody writes: unix milliseconds.
    pub deadline_ms: i64,
}

fn unix_ms(at: OffsetDateTime) -> i64 {
    i64::try_from(at.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

impl Store {
    /// The user's open request, or a new one with its `support` room (the user
    /// its owner and only member). `true` when it was created now. Two
    /// concurrent asks of one user make one request: the partial unique index
    /// refuses the second, which then returns the first.
    pub async fn open_support_request(
        &self,
        new: NewRequest<'_>,
    ) -> Result<(SupportRequest, bool), sqlx::Error> {
        if let Some(open) = self.open_support_request_of(new.user_id).await? {
            return Ok((open, false));
        }
        let room_id = Uuid::now_v7();
        let created_at = crate::protocol::now_micros();
        let inserted: Result<(), sqlx::Error> = on_pool!(self, pool => {
            async {
                let mut tx = pool.begin().await?;
                sqlx::query(INSERT_ROOM)
                    .bind(room_id)
                    .bind("support")
                    .bind(new.topic)
                    .bind(new.user_id)
                    .bind(Json(&new.metadata))
                    .bind(created_at)
                    .bind(None::<String>)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(INSERT_MEMBER)
                    .bind(room_id)
                    .bind(new.user_id)
                    .bind("owner")
                    .bind(created_at)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(INSERT_REQUEST)
                    .bind(room_id)
                    .bind(new.user_id)
                    .bind(new.topic)
                    .bind(Json(&new.metadata))
                    .bind(created_at)
                    .bind(new.deadline_ms)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await
            }
            .await
        });
        match inserted {
            Ok(()) => {}
            Err(error) if is_unique_violation(&error) => {
                if let Some(open) = self.open_support_request_of(new.user_id).await? {
                    return Ok((open, false));
                }
                return Err(error);
            }
            Err(error) => return Err(error),
        }
        let request = self
            .support_request(room_id)
            .await?
            .ok_or(sqlx::Error::RowNotFound)?;
        Ok((request, true))
    }

    /// The user's pending or active request, if any.
    pub async fn open_support_request_of(
        &self,
        user_id: &str,
    ) -> Result<Option<SupportRequest>, sqlx::Error> {
        let row: Option<RequestRow> = on_pool!(self, pool => {
            sqlx::query_as(OPEN_OF_USER)
                .bind(user_id)
                .fetch_optional(pool)
                .await?
        });
        Ok(row.map(SupportRequest::from))
    }

    pub async fn support_request(
        &self,
        room_id: Uuid,
    ) -> Result<Option<SupportRequest>, sqlx::Error> {
        let row: Option<RequestRow> = on_pool!(self, pool => {
            sqlx::query_as(select_requests!("r.room_id = $1"))
                .bind(room_id)
                .fetch_optional(pool)
                .await?
        });
        Ok(row.map(SupportRequest::from))
    }

    /// Requests in `state`, oldest first, at most `limit`.
    pub async fn support_requests(
        &self,
        state: SupportState,
        limit: i64,
    ) -> Result<Vec<SupportRequest>, sqlx::Error> {
        let rows: Vec<RequestRow> = on_pool!(self, pool => {
            sqlx::query_as(select_requests!(
                "r.state = $1 ORDER BY r.created_at, r.room_id LIMIT $2"
            ))
            .bind(state.as_str())
            .bind(limit)
            .fetch_all(pool)
            .await?
        });
        Ok(rows.into_iter().map(SupportRequest::from).collect())
    }

    /// Claims a pending request for `agent_id`, who becomes a member (role
    /// `agent`) in the same transaction. The chat's clock restarts: an agent who
    /// just took it has not had the chance to write yet.
    pub async fn claim_support_request(
        &self,
        room_id: Uuid,
        agent_id: &str,
        deadline_ms: i64,
    ) -> Result<Claim, sqlx::Error> {
        let now = crate::protocol::now_micros();
        let won: bool = on_pool!(self, pool => {
            async {
                let mut tx = pool.begin().await?;
                let claimed = sqlx::query(
                    "UPDATE support_requests
                     SET state = 'active', agent_id = $2, claimed_at = $3,
                         deadline_ms = CASE WHEN deadline_ms < $4 THEN $4 ELSE deadline_ms END
                     WHERE room_id = $1 AND state = 'pending'",
                )
                .bind(room_id)
                .bind(agent_id)
                .bind(now)
                .bind(deadline_ms)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                    == 1;
                if claimed {
                    sqlx::query(INSERT_MEMBER)
                        .bind(room_id)
                        .bind(agent_id)
                        .bind("agent")
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                Ok::<bool, sqlx::Error>(claimed)
            }
            .await?
        });
        Ok(match self.support_request(room_id).await? {
            None => Claim::NotFound,
            Some(request) if won => Claim::Won(request),
            Some(request) => Claim::Lost(request),
        })
    }

    /// Open requests whose deadline has passed, for the expiry sweep.
    pub async fn due_support_requests(
        &self,
        now: OffsetDateTime,
        limit: i64,
    ) -> Result<Vec<SupportRequest>, sqlx::Error> {
        let rows: Vec<RequestRow> = on_pool!(self, pool => {
            sqlx::query_as(select_requests!(
                "r.state IN ('pending', 'active') AND r.deadline_ms <= $1
                 ORDER BY r.deadline_ms LIMIT $2"
            ))
            .bind(unix_ms(now))
            .bind(limit)
            .fetch_all(pool)
            .await?
        });
        Ok(rows.into_iter().map(SupportRequest::from).collect())
    }

    /// When the room's newest stored message was sent.
    pub async fn last_message_at(
        &self,
        room_id: Uuid,
    ) -> Result<Option<OffsetDateTime>, sqlx::Error> {
        on_pool!(self, pool => {
            sqlx::query_scalar(
                "SELECT created_at FROM messages WHERE room_id = $1 ORDER BY seq DESC LIMIT 1",
            )
            .bind(room_id)
            .fetch_optional(pool)
            .await
        })
    }

    /// Moves an open request's deadline later (never earlier).
    pub async fn extend_support_deadline(
        &self,
        room_id: Uuid,
        deadline_ms: i64,
    ) -> Result<(), sqlx::Error> {
        on_pool!(self, pool => {
            sqlx::query(
                "UPDATE support_requests SET deadline_ms = $2
                 WHERE room_id = $1 AND state IN ('pending', 'active') AND deadline_ms < $2",
            )
            .bind(room_id)
            .bind(deadline_ms)
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(())
    }

    /// Ends an open request (`Expired` or `Closed`). With `due_by`, only if its
    /// deadline is at or before it (the sweep: a message may have moved it).
    /// Returns the request as it was just before, or `None` if it was not open
    /// (already ended, or ended by another gateway a moment ago).
    pub async fn end_support_request(
        &self,
        room_id: Uuid,
        state: SupportState,
        due_by: Option<i64>,
    ) -> Result<Option<SupportRequest>, sqlx::Error> {
        let Some(before) = self.support_request(room_id).await? else {
            return Ok(None);
        };
        let ended = on_pool!(self, pool => {
            sqlx::query(
                "UPDATE support_requests SET state = $2, ended_at = $3
                 WHERE room_id = $1 AND state = $4 AND deadline_ms <= $5",
            )
            .bind(room_id)
            .bind(state.as_str())
            .bind(crate::protocol::now_micros())
            .bind(before.state.as_str())
            .bind(due_by.unwrap_or(i64::MAX))
            .execute(pool)
            .await?
            .rows_affected()
        });
        // Matching the state read just before makes the read and the update one
        // step: if another gateway changed it in between, nothing matches.
        Ok((ended == 1 && before.state.is_open()).then_some(before))
    }

    /// Agents known to chatter, with the number of chats each has active.
    pub async fn support_agents(&self) -> Result<Vec<Agent>, sqlx::Error> {
        // Roles are a `text[]` in Postgres and a JSON array in SQLite.
        let agents = match self {
            Store::Postgres(pool) => {
                sqlx::query_as(
                    "SELECT u.id AS user_id, u.name,
                            (SELECT COUNT(*) FROM support_requests r
                             WHERE r.agent_id = u.id AND r.state = 'active') AS active_chats
                     FROM users u WHERE 'support' = ANY(u.roles) ORDER BY u.id COLLATE \"C\"",
                )
                .fetch_all(pool)
                .await?
            }
            Store::Sqlite(pool) => {
                sqlx::query_as(
                    "SELECT u.id AS user_id, u.name,
                            (SELECT COUNT(*) FROM support_requests r
                             WHERE r.agent_id = u.id AND r.state = 'active') AS active_chats
                     FROM users u
                     WHERE EXISTS (SELECT 1 FROM json_each(u.roles) WHERE json_each.value = 'support')
                     ORDER BY u.id",
                )
                .fetch_all(pool)
                .await?
            }
        };
        Ok(agents)
    }

    /// The open chats `user_id` takes part in, as the user who asked or as the
    /// agent: who must hear `UserLeft` / `SupportLeft` when they go offline.
    pub async fn open_chats_of(&self, user_id: &str) -> Result<Vec<OpenChat>, sqlx::Error> {
        on_pool!(self, pool => {
            sqlx::query_as(
                "SELECT room_id, COALESCE(agent_id = $1, FALSE) AS is_agent, state = 'pending' AS pending
                 FROM support_requests
                 WHERE (user_id = $1 OR agent_id = $1) AND state IN ('pending', 'active')",
            )
            .bind(user_id)
            .fetch_all(pool)
            .await
        })
    }
}
