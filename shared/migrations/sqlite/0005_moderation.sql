-- Mirrors migrations/postgres/0005 (UUIDs as blobs, timestamps as RFC 3339 text).
-- Moderation (issue 16): bans, room mutes, blocks, reports, flagged messages and
-- the audit log of what admins and room owners did.
--
-- Bans, mutes and blocks are also held in every gateway's memory (see the
-- gateway's `moderation` module); these tables are what survives restarts.
-- No foreign keys to `users`: an admin may ban an id chatter has not seen yet.

CREATE TABLE bans (
    user_id     TEXT PRIMARY KEY,
    until       TEXT,
    reason      TEXT,
    banned_by   TEXT NOT NULL,
    created_at  TEXT NOT NULL
);

CREATE TABLE room_mutes (
    room_id     BLOB NOT NULL REFERENCES rooms (id),
    user_id     TEXT NOT NULL,
    until       TEXT,
    muted_by    TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    PRIMARY KEY (room_id, user_id)
);

CREATE TABLE blocks (
    blocker_id  TEXT NOT NULL,
    blocked_id  TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    PRIMARY KEY (blocker_id, blocked_id)
);
CREATE INDEX blocks_blocked ON blocks (blocked_id);

-- Ids are UUIDv7: newest first is `ORDER BY id DESC`, and the id is the cursor.
CREATE TABLE moderation_audit (
    id          BLOB PRIMARY KEY,
    actor_id    TEXT NOT NULL,
    action      TEXT NOT NULL,
    target      TEXT NOT NULL,
    reason      TEXT,
    created_at  TEXT NOT NULL
);

CREATE TABLE message_reports (
    id           BLOB PRIMARY KEY,
    room_id      BLOB NOT NULL,
    message_id   BLOB NOT NULL,
    sender_id    TEXT NOT NULL,
    reporter_id  TEXT NOT NULL,
    reason       TEXT NOT NULL,
    created_at   TEXT NOT NULL
);

-- A flagged message keeps its own id (UUIDv7 too).
CREATE TABLE flagged_messages (
    id          BLOB PRIMARY KEY,
    room_id     BLOB NOT NULL,
    sender_id   TEXT NOT NULL,
    body        TEXT NOT NULL,
    created_at  TEXT NOT NULL
);
