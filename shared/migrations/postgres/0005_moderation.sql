-- Moderation (issue 16): bans, room mutes, blocks, reports, flagged messages and
-- the audit log of what admins and room owners did.
--
-- Bans, mutes and blocks are also held in every gateway's memory (see the
-- gateway's `moderation` module); these tables are what survives restarts.
-- No foreign keys to `users`: an admin may ban an id chatter has not seen yet.

CREATE TABLE bans (
    user_id     TEXT PRIMARY KEY,
    until       TIMESTAMPTZ,
    reason      TEXT,
    banned_by   TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL
);

CREATE TABLE room_mutes (
    room_id     UUID NOT NULL REFERENCES rooms (id),
    user_id     TEXT NOT NULL,
    until       TIMESTAMPTZ,
    muted_by    TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (room_id, user_id)
);

CREATE TABLE blocks (
    blocker_id  TEXT NOT NULL,
    blocked_id  TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (blocker_id, blocked_id)
);
CREATE INDEX blocks_blocked ON blocks (blocked_id);

-- Ids are UUIDv7: newest first is `ORDER BY id DESC`, and the id is the cursor.
CREATE TABLE moderation_audit (
    id          UUID PRIMARY KEY,
    actor_id    TEXT NOT NULL,
    action      TEXT NOT NULL,
    target      TEXT NOT NULL,
    reason      TEXT,
    created_at  TIMESTAMPTZ NOT NULL
);

CREATE TABLE message_reports (
    id           UUID PRIMARY KEY,
    room_id      UUID NOT NULL,
    message_id   UUID NOT NULL,
    sender_id    TEXT NOT NULL,
    reporter_id  TEXT NOT NULL,
    reason       TEXT NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL
);

-- A flagged message keeps its own id (UUIDv7 too).
CREATE TABLE flagged_messages (
    id          UUID PRIMARY KEY,
    room_id     UUID NOT NULL,
    sender_id   TEXT NOT NULL,
    body        TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL
);
