-- Per-user, per-room offline notification levels (notify-service/README.md).
-- A missing row is the room's default: 'all' in direct messages, 'mentions'
-- elsewhere. Read per chat record by (room, the candidate users).
CREATE TABLE notify_levels (
    room       text        NOT NULL,
    user_id    text        NOT NULL,
    level      text        NOT NULL CHECK (level IN ('all', 'mentions', 'none')),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (room, user_id)
);
