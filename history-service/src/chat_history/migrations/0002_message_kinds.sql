-- Applied by chat_kit.db.migrate with search_path set to the "history" schema.
-- Edits and deletes (issue 3). Every CHAT stream event is a row, so history
-- pages follow the same seq/prev_seq chain as live delivery:
--   kind 'message': a message, holding its LATEST state (text after the last
--                   edit; NULL once deleted), edited/deleted flags, and rev_seq,
--                   the seq of the last edit/delete applied (replays below it
--                   are no-ops);
--   kind 'edit' / 'delete': the change event at its own seq; carries the
--                   original's msg_id, sender and ts, never text (text lives once).
ALTER TABLE messages
    ADD COLUMN kind    text    NOT NULL DEFAULT 'message'
        CHECK (kind IN ('message', 'edit', 'delete')),
    ADD COLUMN edited  boolean NOT NULL DEFAULT false,
    ADD COLUMN deleted boolean NOT NULL DEFAULT false,
    ADD COLUMN rev_seq bigint  NOT NULL DEFAULT 0,
    -- 'simple': no stemming or stop words, the same for every language.
    ADD COLUMN tsv tsvector GENERATED ALWAYS AS (to_tsvector('simple', coalesce(text, ''))) STORED;

-- msg_id is unique among messages; change events repeat it.
DROP INDEX messages_msg_id;
CREATE UNIQUE INDEX messages_msg_id ON messages (msg_id) WHERE kind = 'message';
CREATE INDEX messages_search ON messages USING gin (tsv) WHERE kind = 'message';
