"""PostgreSQL queries of chat-auth (schema ``auth``, see migrations/)."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

SCHEMA = "auth"


class NameTakenError(Exception):
    """The username exists already in some letter case."""


@dataclass(frozen=True)
class UserRow:
    id: str
    name: str
    password_hash: str


@dataclass(frozen=True)
class SpentToken:
    """What a refresh token that could not be rotated looks like now."""

    user_id: str
    family: str
    revoked: bool
    expired: bool
    # Seconds since it was rotated; None if it never was.
    used_ago: float | None


class AuthStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def ping(self) -> None:
        await self.pool.fetchval("SELECT 1")

    async def create_user(self, user_id: str, name: str, password_hash: str) -> None:
        try:
            await self.pool.execute(
                "INSERT INTO auth.users (id, name, name_lower, password_hash)"
                " VALUES ($1, $2, lower($2), $3)", user_id, name, password_hash)
        except asyncpg.UniqueViolationError as exc:
            if exc.constraint_name == "users_name_lower_key":
                raise NameTakenError(name) from None
            raise

    async def user_by_name(self, name: str) -> UserRow | None:
        row = await self.pool.fetchrow(
            "SELECT id, name, password_hash FROM auth.users WHERE name_lower = lower($1)", name)
        return None if row is None else UserRow(row["id"], row["name"], row["password_hash"])

    async def users(self, ids: list[str], names: list[str]) -> list[tuple[str, str]]:
        """(id, name) of the users with these ids, then of those with these names."""
        rows = await self.pool.fetch(
            "SELECT id, name, 0 AS part FROM auth.users WHERE id = ANY($1::text[])"
            " UNION ALL SELECT id, name, 1 FROM auth.users"
            " WHERE name_lower = ANY(SELECT lower(n) FROM unnest($2::text[]) AS n)"
            " ORDER BY part", ids, names)
        return [(row["id"], row["name"]) for row in rows]

    async def set_password_hash(self, user_id: str, password_hash: str) -> None:
        await self.pool.execute(
            "UPDATE auth.users SET password_hash = $2 WHERE id = $1", user_id, password_hash)

    async def add_refresh(self, token_hash: bytes, user_id: str, family: str, ttl: int) -> None:
        await self.pool.execute(
            "INSERT INTO auth.refresh_tokens (token_hash, user_id, family, expires_at)"
            " VALUES ($1, $2, $3, now() + make_interval(secs => $4))",
            token_hash, user_id, family, float(ttl))

    async def rotate_refresh(self, old_hash: bytes, new_hash: bytes, ttl: int
                             ) -> tuple[str, str] | None:
        """Spend ``old_hash`` and store ``new_hash`` in its family, atomically.

        Returns the user's (id, name), or None if the old token is unknown,
        spent, revoked or expired. The conditional UPDATE takes the row lock:
        of two concurrent rotations the second waits, re-checks
        ``used_at IS NULL`` after the first commits and matches nothing, so
        exactly one wins.
        """
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "WITH spent AS ("
                "  UPDATE auth.refresh_tokens SET used_at = now()"
                "  WHERE token_hash = $1 AND used_at IS NULL AND revoked_at IS NULL"
                "    AND expires_at > now()"
                "  RETURNING user_id, family)"
                " SELECT u.id, u.name, spent.family"
                " FROM spent JOIN auth.users u ON u.id = spent.user_id", old_hash)
            if row is None:
                return None
            await conn.execute(
                "INSERT INTO auth.refresh_tokens (token_hash, user_id, family, expires_at)"
                " VALUES ($1, $2, $3, now() + make_interval(secs => $4))",
                new_hash, row["id"], row["family"], float(ttl))
            return row["id"], row["name"]

    async def spent_token(self, token_hash: bytes) -> SpentToken | None:
        row = await self.pool.fetchrow(
            "SELECT user_id, family, revoked_at IS NOT NULL AS revoked,"
            " expires_at <= now() AS expired,"
            " extract(epoch FROM now() - used_at)::float8 AS used_ago"
            " FROM auth.refresh_tokens WHERE token_hash = $1", token_hash)
        if row is None:
            return None
        return SpentToken(row["user_id"], row["family"], row["revoked"], row["expired"],
                          row["used_ago"])

    async def revoke_family(self, family: str) -> int:
        result: str = await self.pool.execute(
            "UPDATE auth.refresh_tokens SET revoked_at = now()"
            " WHERE family = $1 AND revoked_at IS NULL", family)
        return int(result.rsplit(" ", 1)[-1])

    async def revoke_family_of(self, token_hash: bytes) -> int:
        """Logout: end the session the token belongs to (a no-op for unknown tokens)."""
        result: str = await self.pool.execute(
            "UPDATE auth.refresh_tokens SET revoked_at = now()"
            " WHERE revoked_at IS NULL AND family ="
            "  (SELECT family FROM auth.refresh_tokens WHERE token_hash = $1)", token_hash)
        return int(result.rsplit(" ", 1)[-1])

    async def delete_expired(self, older_than: float) -> int:
        """Forget tokens expired for ``older_than`` seconds (kept a while for reuse audits)."""
        result: str = await self.pool.execute(
            "DELETE FROM auth.refresh_tokens"
            " WHERE expires_at < now() - make_interval(secs => $1)", float(older_than))
        return int(result.rsplit(" ", 1)[-1])
