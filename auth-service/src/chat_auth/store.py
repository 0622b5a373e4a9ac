"""PostgreSQL queries of chat-auth (schema ``auth``, see migrations/)."""

from __future__ import annotations

import re
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
    disabled: bool = False


@dataclass(frozen=True)
class Ended:
    """A user's sessions just ended: the session ids (refresh-token families)
    whose access tokens may still be alive, for the denylist."""

    user_id: str
    sessions: list[str]
    # When (Unix seconds, the database's clock): tokens issued before are void.
    at: float


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
            "SELECT id, name, password_hash, disabled_at IS NOT NULL AS disabled"
            " FROM auth.users WHERE name_lower = lower($1)", name)
        return None if row is None else UserRow(row["id"], row["name"], row["password_hash"],
                                                row["disabled"])

    async def user_by_id(self, user_id: str) -> UserRow | None:
        row = await self.pool.fetchrow(
            "SELECT id, name, password_hash, disabled_at IS NOT NULL AS disabled"
            " FROM auth.users WHERE id = $1", user_id)
        return None if row is None else UserRow(row["id"], row["name"], row["password_hash"],
                                                row["disabled"])

    async def users(self, ids: list[str], names: list[str]) -> list[tuple[str, str]]:
        """(id, name) of the users with these ids, then of those with these names."""
        rows = await self.pool.fetch(
            "SELECT id, name, 0 AS part FROM auth.users WHERE id = ANY($1::text[])"
            " UNION ALL SELECT id, name, 1 FROM auth.users"
            " WHERE name_lower = ANY(SELECT lower(n) FROM unnest($2::text[]) AS n)"
            " ORDER BY part", ids, names)
        return [(row["id"], row["name"]) for row in rows]

    async def users_by_prefix(self, prefix: str, limit: int) -> list[tuple[str, str]]:
        """(id, name) of the enabled users whose name starts with ``prefix``
        (case-insensitively), in name order."""
        pattern = re.sub(r"([\\%_])", r"\\\1", prefix.lower()) + "%"
        rows = await self.pool.fetch(
            "SELECT id, name FROM auth.users WHERE name_lower LIKE $1"
            " AND disabled_at IS NULL ORDER BY name_lower LIMIT $2", pattern, limit)
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
                             ) -> tuple[str, str, str] | None:
        """Spend ``old_hash`` and store ``new_hash`` in its family, atomically.

        Returns the user's (id, name) and the family (the session id), or None
        if the old token is unknown, spent, revoked or expired, or the user is
        disabled. The conditional UPDATE takes the row lock:
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
                " FROM spent JOIN auth.users u ON u.id = spent.user_id"
                " WHERE u.disabled_at IS NULL", old_hash)
            if row is None:
                return None
            await conn.execute(
                "INSERT INTO auth.refresh_tokens (token_hash, user_id, family, expires_at)"
                " VALUES ($1, $2, $3, now() + make_interval(secs => $4))",
                new_hash, row["id"], row["family"], float(ttl))
            return row["id"], row["name"], row["family"]

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

    async def revoke_family_of(self, token_hash: bytes) -> str | None:
        """Logout: end the session the token belongs to; its family (the session
        id), also when it had ended already, or None for an unknown token."""
        family: str | None = await self.pool.fetchval(
            "SELECT family FROM auth.refresh_tokens WHERE token_hash = $1", token_hash)
        if family is not None:
            await self.revoke_family(family)
        return family

    async def end_sessions(self, user_id: str, window: float,
                           conn: asyncpg.Connection | None = None) -> Ended:
        """Revoke every refresh token of the user and note the time; return the
        sessions with a token issued within ``window`` seconds (an access token
        is issued with each refresh token, so only those may have live ones)."""
        db = conn if conn is not None else self.pool
        await db.execute(
            "UPDATE auth.refresh_tokens SET revoked_at = now()"
            " WHERE user_id = $1 AND revoked_at IS NULL", user_id)
        at: float = await db.fetchval(
            "UPDATE auth.users SET sessions_revoked_at = now() WHERE id = $1"
            " RETURNING extract(epoch FROM now())::float8", user_id)
        rows = await db.fetch(
            "SELECT DISTINCT family FROM auth.refresh_tokens"
            " WHERE user_id = $1 AND created_at > now() - make_interval(secs => $2)",
            user_id, float(window))
        return Ended(user_id, [row["family"] for row in rows], at)

    async def change_password(self, user_id: str, password_hash: str, window: float) -> Ended:
        """The new hash and the end of every session, in one transaction."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "UPDATE auth.users SET password_hash = $2 WHERE id = $1", user_id, password_hash)
            return await self.end_sessions(user_id, window, conn)

    async def set_disabled(self, name: str, disabled: bool, window: float
                           ) -> tuple[UserRow, Ended | None] | None:
        """Disable (ending every session) or enable the account named ``name``;
        None if there is none."""
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "UPDATE auth.users SET disabled_at = CASE WHEN $2 THEN"
                "  coalesce(disabled_at, now()) END"
                " WHERE name_lower = lower($1) RETURNING id, name, password_hash", name, disabled)
            if row is None:
                return None
            user = UserRow(row["id"], row["name"], row["password_hash"], disabled)
            ended = await self.end_sessions(user.id, window, conn) if disabled else None
            return user, ended

    async def recent_revocations(self, window: float
                                 ) -> tuple[list[str], list[tuple[str, float]]]:
        """Sessions revoked and users whose sessions all ended within ``window``
        seconds (user id, Unix time): what the denylist must still hold."""
        families = await self.pool.fetch(
            "SELECT DISTINCT family FROM auth.refresh_tokens"
            " WHERE revoked_at > now() - make_interval(secs => $1)", float(window))
        users = await self.pool.fetch(
            "SELECT id, extract(epoch FROM sessions_revoked_at)::float8 AS at FROM auth.users"
            " WHERE sessions_revoked_at > now() - make_interval(secs => $1)", float(window))
        return [r["family"] for r in families], [(r["id"], r["at"]) for r in users]

    async def delete_expired(self, older_than: float) -> int:
        """Forget tokens expired for ``older_than`` seconds (kept a while for reuse audits)."""
        result: str = await self.pool.execute(
            "DELETE FROM auth.refresh_tokens"
            " WHERE expires_at < now() - make_interval(secs => $1)", float(older_than))
        return int(result.rsplit(" ", 1)[-1])
