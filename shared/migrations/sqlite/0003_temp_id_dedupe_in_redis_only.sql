-- Mirrors migrations/postgres/0003: messages are unique by id and (room_id, seq),
-- no longer by (room_id, sender_id, client_msg_id). SQLite cannot drop a table
-- constraint, so the table is rebuilt (nothing references it by foreign key).
CREATE TABLE messages_new (
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
    UNIQUE (room_id, seq)
);
INSERT INTO messages_new
       (id, room_id, seq, sender_id, body, client_msg_id, parent_id, created_at, persisted_at, edited_at, deleted_at)
SELECT id, room_id, seq, sender_id, body, client_msg_id, parent_id, created_at, persisted_at, edited_at, deleted_at
FROM messages;
DROP TABLE messages;
ALTER TABLE messages_new RENAME TO messages;
CREATE INDEX messages_parent ON messages (parent_id) WHERE parent_id IS NOT NULL;
