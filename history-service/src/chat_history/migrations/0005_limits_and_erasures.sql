-- Applied by chat_kit.db.migrate with search_path set to the "history" schema.

-- The per-user quota of rooms owned counts them by owner.
CREATE INDEX rooms_owner ON rooms (owner_id) WHERE owner_id IS NOT NULL;

-- The public directory is paged by a cursor on (created_at, id), newest first.
DROP INDEX rooms_public;
CREATE INDEX rooms_public ON rooms (created_at DESC, id DESC)
    WHERE visibility = 'public' AND NOT archived AND NOT dm;

-- Deleted messages whose text may still be in the CHAT stream: written in the
-- transaction that stores the delete (or an edit), removed once the stream
-- copies are erased. The erasure queue (erasure.py) retries from here with
-- backoff, across restarts and replicas.
CREATE TABLE erasures (
    room      text        NOT NULL,
    msg_id    text        NOT NULL,
    queued_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (room, msg_id)
);

-- Deletes from before this table may have failed their one erasure attempt:
-- queue those still inside the stream's default window (an aged-out copy is
-- already gone, which the queue treats as done).
INSERT INTO erasures (room, msg_id)
SELECT room, msg_id FROM messages
WHERE kind = 'message' AND deleted AND ts > now() - interval '7 days'
ON CONFLICT DO NOTHING;
