-- Applied by chat_kit.db.migrate with search_path set to the "history" schema.

-- Edit and delete rows by message: the stream erasure of a deleted message
-- looks them up per change (one index probe, not a scan of the room).
CREATE INDEX messages_changes ON messages (room, msg_id) WHERE kind <> 'message';

-- Rooms whose messages predate the room model (0003) get a row now, public
-- and without an owner: otherwise the first user to join one after the
-- upgrade would become its owner (able to archive it and ban others).
INSERT INTO rooms (id, name, visibility, owner_id, created_at)
SELECT room, room, 'public', NULL, min(ts) FROM messages GROUP BY room
ON CONFLICT (id) DO NOTHING;
