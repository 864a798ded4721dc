-- The live support desk (issue 11): one row per request for help, beside its
-- `support` room.
--
-- `state`: pending (waiting for an agent) → active (claimed) → expired | closed.
-- `deadline_ms` (unix milliseconds, an integer so both dialects compare it the
-- same way): when the chat expires unless a message comes first; every gateway's
-- expiry sweep reads it, so a request outlives the gateway that created it.
CREATE TABLE support_requests (
    room_id      UUID PRIMARY KEY REFERENCES rooms (id),
    user_id      TEXT NOT NULL REFERENCES users (id),
    topic        TEXT,
    metadata     JSONB NOT NULL DEFAULT '{}',
    state        TEXT NOT NULL CHECK (state IN ('pending', 'active', 'expired', 'closed')),
    agent_id     TEXT REFERENCES users (id),
    created_at   TIMESTAMPTZ NOT NULL,
    claimed_at   TIMESTAMPTZ,
    ended_at     TIMESTAMPTZ,
    deadline_ms  BIGINT NOT NULL
);
-- At most one open request per user: two concurrent asks make one request.
CREATE UNIQUE INDEX support_requests_open_per_user ON support_requests (user_id)
    WHERE state IN ('pending', 'active');
CREATE INDEX support_requests_deadline ON support_requests (deadline_ms)
    WHERE state IN ('pending', 'active');
CREATE INDEX support_requests_state ON support_requests (state, created_at);
CREATE INDEX support_requests_agent ON support_requests (agent_id) WHERE agent_id IS NOT NULL;
