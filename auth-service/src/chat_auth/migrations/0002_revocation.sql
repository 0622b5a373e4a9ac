-- Revocation (README "Security"): disabled accounts, and when all of a
-- user's sessions were last ended (republished to the CHAT_REVOKED bucket
-- at start, so a lost denylist write is repaired by a restart).

ALTER TABLE users ADD COLUMN disabled_at timestamptz;          -- set: no login, no refresh
ALTER TABLE users ADD COLUMN sessions_revoked_at timestamptz;  -- password change, disable, reuse

-- Families revoked lately are republished to the denylist at start.
CREATE INDEX refresh_tokens_revoked ON refresh_tokens (revoked_at)
    WHERE revoked_at IS NOT NULL;
