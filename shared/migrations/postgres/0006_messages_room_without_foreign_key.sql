-- messages.room_id loses its foreign key, as sender_id never had one (0001).
--
-- Checked per row, the key cost the worker's COPY about a third of its time
-- (a `SELECT … FOR KEY SHARE` on `rooms` and a row lock written per stored
-- message; bench/README.md, "Persistence"), and it guarded nothing the rest of
-- chatter does not: rooms are only ever soft-deleted, and a gateway accepts a
-- message only from a member of a room it has read from this database. What
-- the key could still do was turn a confirmed message whose room row is
-- missing into a dead letter; without it, a confirmed message is stored.
ALTER TABLE messages DROP CONSTRAINT IF EXISTS messages_room_id_fkey;
