-- Applied by chat_kit.db.migrate with search_path set to the "history" schema.
-- Reactions, threads and mentions (issue 14).
--
-- A reaction is a stream event like an edit: a row of `messages` at its own
-- seq (kind 'react' or 'unreact'; msg_id the message's, sender the reacting
-- user, text the emoji), so history pages keep the live seq/prev_seq chain.
-- The current state lives in `reactions`, one row per (room, message, user,
-- emoji); `active` false is a reaction taken back, kept with the seq of the
-- event that took it back so that a replayed older event changes nothing.
ALTER TABLE messages DROP CONSTRAINT IF EXISTS messages_kind_check;
ALTER TABLE messages
    ADD CONSTRAINT messages_kind_check
        CHECK (kind IN ('message', 'edit', 'delete', 'react', 'unreact')) NOT VALID,
    -- A thread's replies: the root's msg_id (NULL for every other row).
    ADD COLUMN thread   text,
    -- The user ids a message mentions (NULL when none: most messages).
    ADD COLUMN mentions text[];

CREATE TABLE reactions (
    room    text    NOT NULL,
    msg_id  text    NOT NULL,
    user_id text    NOT NULL,
    emoji   text    NOT NULL,
    active  boolean NOT NULL,
    -- The stream seq of the event that set this state.
    seq     bigint  NOT NULL,
    PRIMARY KEY (room, msg_id, user_id, emoji)
);

-- A thread page and a root's thread_info: the replies of one root, by seq.
CREATE INDEX messages_thread ON messages (room, thread, seq)
    WHERE thread IS NOT NULL AND kind = 'message';

-- Unread mentions of a user (GET /v1/rooms): the messages naming them.
CREATE INDEX messages_mentions ON messages USING gin (mentions)
    WHERE mentions IS NOT NULL AND kind = 'message';
