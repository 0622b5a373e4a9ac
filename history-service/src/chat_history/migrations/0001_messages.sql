-- Applied by chat_kit.db.migrate with search_path set to the "history" schema.
-- One row per stored chat message. (room, seq) is the stream's order and the
-- idempotency key of the consumer; prev_seq is not stored: it is derived at
-- read time, because several instances may commit their batches out of order.
CREATE TABLE messages (
    room        text        NOT NULL,
    seq         bigint      NOT NULL,
    msg_id      text        NOT NULL,
    sender_id   text        NOT NULL,
    sender_name text        NOT NULL,
    text        text,
    reply_to    text,
    ts          timestamptz NOT NULL,
    PRIMARY KEY (room, seq)
);

-- msg_id is unique and stable (PROTOCOL §3.4): a record republished under a
-- new stream sequence (after the dedupe window) is stored once, first wins.
CREATE UNIQUE INDEX messages_msg_id ON messages (msg_id);
