-- Applied by chat_kit.db.migrate with search_path = auth.

CREATE TABLE users (
    id            text PRIMARY KEY,             -- 'u_' + random, never a row number
    name          text NOT NULL,                -- as registered (display form)
    name_lower    text NOT NULL UNIQUE,         -- uniqueness is case-insensitive
    password_hash text NOT NULL,                -- argon2id PHC string
    created_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE refresh_tokens (
    token_hash bytea PRIMARY KEY,               -- SHA-256 of the token; the token is never stored
    user_id    text NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    family     text NOT NULL,                   -- one per login; rotation keeps it
    expires_at timestamptz NOT NULL,
    used_at    timestamptz,                     -- set when rotated (single use)
    revoked_at timestamptz,                     -- set by logout or reuse detection
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX refresh_tokens_family ON refresh_tokens (family);
CREATE INDEX refresh_tokens_user ON refresh_tokens (user_id);
CREATE INDEX refresh_tokens_expires ON refresh_tokens (expires_at);
