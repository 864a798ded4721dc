//! Storage: Postgres for a cluster, SQLite for the embedded mode.
//!
//! [`Store`] is an enum over the two pools. Queries are plain SQL with binds; they
//! live here rather than beside each handler because the gateway, the worker and
//! the embedded mode share them.
//!
//! **One statement for both dialects** wherever they agree: placeholders are
//! `$1`, `$2`… (sqlx binds SQLite's `$n` by number, as Postgres does) and
//! [`on_pool!`] compiles one chain of binds against either pool. A statement is
//! written twice, side by side, only where the SQL really differs:
//! - arrays: Postgres takes a whole list in one statement (`unnest($1::uuid[])`,
//!   `= ANY($1)`); SQLite runs one statement per item inside a transaction;
//! - byte-order sorting: Postgres needs `COLLATE "C"`, which SQLite does not
//!   know (its default `BINARY` is byte order already);
//! - `LATERAL`, `FOR UPDATE`, `now()`, `text[]` roles: Postgres only.
//!
//! SQLite stores UUIDs as 16-byte blobs, timestamps as RFC 3339 text, roles and
//! metadata as JSON text; sqlx's encoders take care of that for shared statements.

/// Runs `$body` with `$pool` bound to whichever pool `$store` holds. The body is
/// compiled once per backend, so a single SQL string and a single chain of
/// `.bind(…)` calls serve both.
macro_rules! on_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        match $store {
            Store::Postgres($pool) => $body,
            Store::Sqlite($pool) => $body,
        }
    };
}

mod messages;
mod moderation;
mod rooms;
mod support;
mod users;

pub use messages::{HistoryPage, MemberOfRoom};
pub use moderation::{AuditEntry, Ban, Block, Flag, Report, Restriction};
pub use rooms::{MembersChange, NewRoom, Receipt, Room, RoomCursor, RoomKind, RoomSummary};
pub use support::{Agent, Claim, NewRequest, OpenChat, SupportRequest, SupportState};
pub use users::{Arrival, Arrived, Contact};

use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

/// A cheap-to-clone handle on the database.
#[derive(Clone)]
pub enum Store {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

impl Store {
    /// Connects to Postgres and applies pending migrations.
    pub async fn connect_postgres(url: &str, max_connections: u32) -> Result<Store, sqlx::Error> {
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect(url)
            .await?;
        let mut migrations = sqlx::migrate!("./migrations/postgres");
        // A rolling upgrade runs two releases on one database: a pod of the
        // older one that restarts after the newer one has applied its
        // migrations must still come up (sqlx refuses by default). Migrations
        // are written so that the release before keeps working on them: they
        // add, or relax (0003, 0006), never take away what it uses.
        migrations.set_ignore_missing(true);
        migrations.run(&pool).await?;
        Ok(Store::Postgres(pool))
    }

    /// Opens (creating if needed) the SQLite file and applies pending migrations.
    ///
    /// WAL with `synchronous=NORMAL`: a committed batch survives a process crash;
    /// an OS crash may lose the last few commits, which is the embedded mode's
    /// documented trade-off.
    pub async fn open_sqlite(path: &Path) -> Result<Store, sqlx::Error> {
        let options = SqliteConnectOptions::from_str("sqlite://")?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await?;
        sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
        Ok(Store::Sqlite(pool))
    }

    /// `SELECT 1`, for readiness.
    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        on_pool!(self, pool => sqlx::query("SELECT 1").execute(pool).await.map(|_| ()))
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
        // Postgres class 08: connection exceptions; 57P0x: shutdown; 53: resources.
        // SQLite 5/6: SQLITE_BUSY/SQLITE_LOCKED.
        code.starts_with("08") || code.starts_with("57P") || code.starts_with("53") || code == "5" || code == "6"
    }))
}

/// True when a statement broke a unique constraint (Postgres 23505, SQLite 2067/1555).
pub fn is_unique_violation(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.is_unique_violation())
}
