-- The live support desk; mirrors migrations/postgres/0004_support_desk.sql.
CREATE TABLE support_requests (
    room_id      BLOB PRIMARY KEY REFERENCES rooms (id),
    user_id      TEXT NOT NULL REFERENCES users (id),
    topic        TEXT,
    metadata     TEXT NOT NULL DEFAULT '{}',
    state        TEXT NOT NULL CHECK (state IN ('pending', 'active', 'expired', 'closed')),
    agent_id     TEXT REFERENCES users (id),
    created_at   TEXT NOT NULL,
    claimed_at   TEXT,
    ended_at     TEXT,
    deadline_ms  INTEGER NOT NULL
);
CREATE UNIQUE INDEX support_requests_open_per_user ON support_requests (user_id)
    WHERE state IN ('pending', 'active');
CREATE INDEX support_requests_deadline ON support_requests (deadline_ms)
    WHERE state IN ('pending', 'active');
CREATE INDEX support_requests_state ON support_requests (state, created_at);
CREATE INDEX support_requests_agent ON support_requests (agent_id) WHERE agent_id IS NOT NULL;
