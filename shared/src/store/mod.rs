//! Postgres storage: the pool, migrations, and the queries both binaries run.
//!
//! Queries are plain SQL with binds, grouped by resource (`users`, `rooms`,
//! `messages`). They live here rather than beside each handler because the worker
//! and the gateway share some, and because a second backend (SQLite, for the
//! embedded mode) will implement the same functions.

mod messages;
mod rooms;
mod users;

pub use messages::{HistoryPage, MemberOfRoom};
pub use rooms::{NewRoom, Room, RoomKind};

use sqlx::postgres::{PgPool, PgPoolOptions};
use std::time::Duration;

/// A cheap-to-clone handle on the database.
#[derive(Clone)]
pub struct Store {
    pool: PgPool,
}

impl Store {
    /// Connects and applies pending migrations.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Store, sqlx::Error> {
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(3))
            .connect(url)
            .await?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        Ok(Store { pool })
    }

    /// `SELECT 1`, for readiness.
    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(|_| ())
    }
}

/// True for errors that mean "the database is unreachable or overloaded" (retry
/// later) rather than "this statement is wrong" (retrying will not help).
pub fn is_transient(error: &sqlx::Error) -> bool {
    matches!(
        error,
        sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Tls(_)
    ) || matches!(error, sqlx::Error::Database(db) if db.code().is_some_and(|code| {
        // class 08: connection exceptions; 57P0x: admin/crash shutdown; 53: resources.
        code.starts_with("08") || code.starts_with("57P") || code.starts_with("53")
    }))
}
