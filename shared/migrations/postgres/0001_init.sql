-- chatter's Postgres schema. Applied at start-up by both binaries (sqlx migrate,
-- under an advisory lock, so several pods starting at once is fine).

CREATE TABLE users (
    id            TEXT PRIMARY KEY,
    name          TEXT,
    user_group    TEXT,
    roles         TEXT[] NOT NULL DEFAULT '{}',
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_seen_at  TIMESTAMPTZ
);
CREATE INDEX users_group ON users (user_group) WHERE user_group IS NOT NULL;

CREATE TABLE rooms (
    id          UUID PRIMARY KEY,
    kind        TEXT NOT NULL CHECK (kind IN ('direct', 'group', 'support')),
    name        TEXT,
    owner_id    TEXT REFERENCES users (id),
    metadata    JSONB NOT NULL DEFAULT '{}',
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    deleted_at  TIMESTAMPTZ
);

CREATE TABLE room_members (
    room_id        UUID NOT NULL REFERENCES rooms (id),
    user_id        TEXT NOT NULL REFERENCES users (id),
    role           TEXT NOT NULL DEFAULT 'member',
    joined_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_read_seq  BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (room_id, user_id)
);
CREATE INDEX room_members_user ON room_members (user_id);

-- Messages are written only by the worker, from the ingest stream. The unique
-- constraints make a replayed stream entry a no-op (ON CONFLICT DO NOTHING).
-- sender_id has no foreign key on purpose: a row that cannot be inserted would
-- block its whole batch, and the gateway has already upserted every sender.
CREATE TABLE messages (
    id             UUID PRIMARY KEY,
    room_id        UUID NOT NULL REFERENCES rooms (id),
    seq            BIGINT NOT NULL,
    sender_id      TEXT NOT NULL,
    body           TEXT NOT NULL,
    client_msg_id  TEXT,
    parent_id      UUID,
    created_at     TIMESTAMPTZ NOT NULL,
    persisted_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    edited_at      TIMESTAMPTZ,
    deleted_at     TIMESTAMPTZ,
    UNIQUE (room_id, seq),
    UNIQUE (room_id, sender_id, client_msg_id)
);
