-- Applied by chat_kit.db.migrate with search_path set to the "history" schema.
-- Attachments (issue 14 item 1).
--
-- The bytes are objects of the JetStream object store CHAT_ATTACHMENTS
-- (`<id>`, and `<id>.thumb` for images); this table is their metadata: who
-- uploaded what into which room, and which message carries it. An upload is
-- registered before its bytes are stored (so the per-user quota is checked
-- in one transaction); a row whose object never arrived is collected like
-- any upload never attached (attachments.py).
CREATE TABLE attachments (
    id         text        PRIMARY KEY,
    owner      text        NOT NULL,
    room       text        NOT NULL,
    name       text        NOT NULL,
    size       bigint      NOT NULL,
    type       text        NOT NULL,
    width      integer,
    height     integer,
    -- The thumbnail's type (images only).
    thumb      text,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    -- The message carrying it (NULL while unattached), the send that claimed
    -- it (`<user>:<client_msg_id>` or the msg_id: a retry is granted again),
    -- and when.
    msg_id     text,
    claim      text,
    claimed_at timestamptz,
    -- The sweep found the claiming message stored (else, a send whose
    -- publish failed and was never retried: collected after the TTL).
    checked    boolean     NOT NULL DEFAULT false
);
-- A user's quota: the sum of their uploads' sizes.
CREATE INDEX attachments_owner ON attachments (owner);
-- A deleted message's attachments.
CREATE INDEX attachments_message ON attachments (room, msg_id) WHERE msg_id IS NOT NULL;
-- The sweep: uploads never attached, and claims not yet seen stored.
CREATE INDEX attachments_unattached ON attachments (created_at) WHERE msg_id IS NULL;
CREATE INDEX attachments_unchecked ON attachments (claimed_at)
    WHERE msg_id IS NOT NULL AND NOT checked;

-- A message's attachments as its record carried them ([{id,name,size,type,
-- width?,height?}], NULL when none: most messages), for history items.
ALTER TABLE messages ADD COLUMN attachments jsonb;
