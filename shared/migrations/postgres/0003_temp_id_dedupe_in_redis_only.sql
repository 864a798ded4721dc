-- A message_temp_id is deduplicated by Redis, for DEDUPE_TTL_SECS, and nowhere
-- else (docs/ARCHITECTURE.md, "Deduplication"). The database used to enforce
-- unique(room_id, sender_id, client_msg_id) as well: a temp id reused after the
-- window was confirmed with a new seq by Redis, then silently dropped here by
-- ON CONFLICT DO NOTHING. Messages are now unique by id (a replayed stream entry
-- is skipped by its id) and by (room_id, seq); a reused temp id is a new message.
ALTER TABLE messages DROP CONSTRAINT IF EXISTS messages_room_id_sender_id_client_msg_id_key;
