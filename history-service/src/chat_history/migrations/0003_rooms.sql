-- Rooms domain (issue 3): rooms, memberships with their read pointers, bans,
-- blocks. Applied by chat_kit.db.migrate with search_path = history.
-- Messages reference rooms by id only (no foreign key): rows stored before
-- this migration belong to rooms that a later `join` creates on demand.
CREATE TABLE rooms (
    id            text        PRIMARY KEY,
    name          text        NOT NULL,
    visibility    text        NOT NULL CHECK (visibility IN ('public', 'private')),
    -- The creator; NULL for direct-message rooms (nobody owns a DM).
    owner_id      text,
    -- argon2id PHC string; NULL = no password. Never leaves the service.
    password_hash text,
    archived      boolean     NOT NULL DEFAULT false,
    dm            boolean     NOT NULL DEFAULT false,
    -- A DM's two user ids, sorted (the id is their hash): who may hold it,
    -- and whose block refuses the other's join even after one of them left.
    dm_users      text[],
    created_at    timestamptz NOT NULL DEFAULT now()
);
-- The public directory: public, live, non-DM rooms only.
CREATE INDEX rooms_public ON rooms (created_at) WHERE visibility = 'public' AND NOT archived AND NOT dm;

-- One row per (room, member). user_name is the name at the last join or
-- invite (auth-service owns names; this copy only labels member lists).
-- read_seq is the member's read pointer: it starts at the room's last seq
-- when the membership starts and only moves forward; leaving drops it.
CREATE TABLE members (
    room      text        NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
    user_id   text        NOT NULL,
    user_name text        NOT NULL,
    joined_at timestamptz NOT NULL DEFAULT now(),
    read_seq  bigint      NOT NULL DEFAULT 0,
    PRIMARY KEY (room, user_id)
);
CREATE INDEX members_user ON members (user_id);

-- Users the owner removed: refused at join until the owner invites them again.
CREATE TABLE removed (
    room       text        NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
    user_id    text        NOT NULL,
    removed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (room, user_id)
);

-- blocker does not want to see blocked's events (and blocked may not DM blocker).
CREATE TABLE blocks (
    blocker    text        NOT NULL,
    blocked    text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (blocker, blocked),
    CHECK (blocker <> blocked)
);

-- Unread counts and last_message scan a room's messages above a seq.
CREATE INDEX messages_room_messages ON messages (room, seq) WHERE kind = 'message';
