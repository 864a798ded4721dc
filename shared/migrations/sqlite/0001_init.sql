-- chatter's schema for the embedded mode (SQLite). Mirrors migrations/postgres:
-- UUIDs are 16-byte blobs, timestamps RFC 3339 text, roles a JSON array, metadata JSON text.

CREATE TABLE users (
    id            TEXT PRIMARY KEY,
    name          TEXT,
    user_group    TEXT,
    roles         TEXT NOT NULL DEFAULT '[]',
    created_at    TEXT NOT NULL,
    last_seen_at  TEXT
);
CREATE INDEX users_group ON users (user_group) WHERE user_group IS NOT NULL;

CREATE TABLE rooms (
    id          BLOB PRIMARY KEY,
    kind        TEXT NOT NULL CHECK (kind IN ('direct', 'group', 'support')),
    name        TEXT,
    owner_id    TEXT REFERENCES users (id),
    metadata    TEXT NOT NULL DEFAULT '{}',
    created_at  TEXT NOT NULL,
    deleted_at  TEXT
);

CREATE TABLE room_members (
    room_id        BLOB NOT NULL REFERENCES rooms (id),
    user_id        TEXT NOT NULL REFERENCES users (id),
    role           TEXT NOT NULL DEFAULT 'member',
    joined_at      TEXT NOT NULL,
    last_read_seq  INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (room_id, user_id)
);
CREATE INDEX room_members_user ON room_members (user_id);

CREATE TABLE messages (
    id             BLOB PRIMARY KEY,
    room_id        BLOB NOT NULL REFERENCES rooms (id),
    seq            INTEGER NOT NULL,
    sender_id      TEXT NOT NULL,
    body           TEXT NOT NULL,
    client_msg_id  TEXT,
    parent_id      BLOB,
    created_at     TEXT NOT NULL,
    persisted_at   TEXT NOT NULL,
    edited_at      TEXT,
    deleted_at     TEXT,
    UNIQUE (room_id, seq),
    UNIQUE (room_id, sender_id, client_msg_id)
);
