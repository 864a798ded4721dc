-- Direct chats, threads and edits: mirrors migrations/postgres/0002_rooms_api.sql.
ALTER TABLE rooms ADD COLUMN direct_key TEXT;
CREATE UNIQUE INDEX rooms_direct_key ON rooms (direct_key) WHERE deleted_at IS NULL;

CREATE INDEX messages_parent ON messages (parent_id) WHERE parent_id IS NOT NULL;
