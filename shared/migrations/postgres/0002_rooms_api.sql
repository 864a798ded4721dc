-- Direct chats, threads and edits (issue 3).
--
-- A direct room's `direct_key` is its two members' ids, sorted and joined: unique
-- among live rooms, so two concurrent "find or create" calls for the same pair
-- cannot make two rooms. A deleted direct room frees the pair for a new one.
ALTER TABLE rooms ADD COLUMN direct_key TEXT;
CREATE UNIQUE INDEX rooms_direct_key ON rooms (direct_key) WHERE deleted_at IS NULL;

-- Replies of a thread.
CREATE INDEX messages_parent ON messages (parent_id) WHERE parent_id IS NOT NULL;
