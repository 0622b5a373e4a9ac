"""``history.attachments`` (migration 0007): uploads' metadata in PostgreSQL.

Who uploaded what into which room, and which message carries it; the bytes
are objects of the CHAT_ATTACHMENTS object store (``<id>``, ``<id>.thumb``).
Quota checks and claims are single transactions: a per-owner advisory lock
serialises one user's concurrent registrations, and a claim locks its rows.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from chat_contract.events import Attachment

_COLUMNS = "id, owner, room, name, size, type, width, height, thumb, created_at, msg_id, claim"

# The sweep's lock: one instance at a time (pg_try_advisory_lock's key).
SWEEP_LOCK = 0x63686174_61747463  # "chatattc"
_USED = "SELECT coalesce(sum(size), 0)::bigint FROM history.attachments WHERE owner = $1"
_LOCK_OWNER = "SELECT pg_advisory_xact_lock(hashtext('chat.attachments.' || $1))"
_INSERT = """
INSERT INTO history.attachments (id, owner, room, name, size, type, width, height, thumb)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
RETURNING created_at
"""
# A row, with whether the message carrying it is deleted (its bytes are
# about to go: the eraser drops them).
_GET = f"""
SELECT {_COLUMNS}, EXISTS (
    SELECT 1 FROM history.messages m WHERE m.kind = 'message' AND m.room = a.room
      AND m.msg_id = a.msg_id AND m.deleted) AS gone
FROM history.attachments a WHERE id = $1
"""
_LOCK_ROWS = f"SELECT {_COLUMNS} FROM history.attachments WHERE id = ANY($1::text[]) FOR UPDATE"
_CLAIM = """
UPDATE history.attachments SET msg_id = $2, claim = $3, claimed_at = clock_timestamp()
WHERE id = ANY($1::text[]) AND msg_id IS NULL
"""
# A deleted message's attachments (nothing while the message is not deleted:
# edits queue erasures too).
_OF_DELETED = """
SELECT a.id, a.thumb FROM history.attachments a
WHERE a.room = $1 AND a.msg_id = $2 AND EXISTS (
    SELECT 1 FROM history.messages m WHERE m.kind = 'message' AND m.room = a.room
      AND m.msg_id = a.msg_id AND m.deleted)
"""
# Uploads never attached, older than the TTL ($1 seconds).
_UNATTACHED = """
SELECT id, thumb FROM history.attachments
WHERE msg_id IS NULL AND created_at < clock_timestamp() - make_interval(secs => $1)
ORDER BY created_at LIMIT $2
"""
# Claims older than the TTL not yet seen stored: (id, thumb, stored?).
_UNCHECKED = """
SELECT a.id, a.thumb, EXISTS (
    SELECT 1 FROM history.messages m WHERE m.kind = 'message' AND m.room = a.room
      AND m.msg_id = a.msg_id) AS stored
FROM history.attachments a
WHERE a.msg_id IS NOT NULL AND NOT a.checked
  AND a.claimed_at < clock_timestamp() - make_interval(secs => $1)
ORDER BY a.claimed_at LIMIT $2
"""


@dataclass(frozen=True)
class Row:
    attachment: Attachment
    owner: str
    room: str
    thumb: str | None
    created_at: datetime
    msg_id: str | None
    claim: str | None
    gone: bool = False


def _row(r: asyncpg.Record, gone: bool = False) -> Row:
    return Row(attachment=Attachment(id=r["id"], name=r["name"], size=int(r["size"]),
                                     type=r["type"], width=r["width"], height=r["height"]),
               owner=r["owner"], room=r["room"], thumb=r["thumb"],
               created_at=r["created_at"], msg_id=r["msg_id"], claim=r["claim"], gone=gone)


class QuotaExceeded(Exception):
    def __init__(self, used: int) -> None:
        super().__init__(f"{used} bytes used")
        self.used = used


class ClaimRefused(Exception):
    """``reason``: ``foreign`` (unknown or someone else's), ``room`` (another
    room's), ``attached`` (claimed by another send)."""

    def __init__(self, reason: str, attachment_id: str) -> None:
        super().__init__(f"{reason}: {attachment_id}")
        self.reason = reason
        self.id = attachment_id


class AttachmentsStore:
    def __init__(self, pool: asyncpg.Pool, timeout: float = 5.0) -> None:
        self._pool = pool
        self._timeout = timeout

    async def used(self, owner: str) -> int:
        async with self._pool.acquire(timeout=self._timeout) as conn:
            return int(await conn.fetchval(_USED, owner, timeout=self._timeout))

    async def register(self, owner: str, room: str, a: Attachment, thumb: str | None,
                       quota: int) -> Row:
        """Insert a new upload unless the owner's uploads would then exceed ``quota``."""
        async with self._pool.acquire(timeout=self._timeout) as conn, conn.transaction():
            await conn.execute(_LOCK_OWNER, owner, timeout=self._timeout)
            used = int(await conn.fetchval(_USED, owner, timeout=self._timeout))
            if used + a.size > quota:
                raise QuotaExceeded(used)
            created = await conn.fetchval(_INSERT, a.id, owner, room, a.name, a.size, a.type,
                                          a.width, a.height, thumb, timeout=self._timeout)
        return Row(attachment=a, owner=owner, room=room, thumb=thumb, created_at=created,
                   msg_id=None, claim=None)

    async def get(self, attachment_id: str) -> Row | None:
        async with self._pool.acquire(timeout=self._timeout) as conn:
            r = await conn.fetchrow(_GET, attachment_id, timeout=self._timeout)
        return None if r is None else _row(r, gone=bool(r["gone"]))

    async def claim(self, owner: str, room: str, ids: Sequence[str], msg_id: str,
                    key: str) -> tuple[str, list[Attachment]]:
        """Attach uploads ``ids`` to ``msg_id``, all or none (ClaimRefused).
        Rows already claimed with ``key`` are granted again with their msg_id."""
        async with self._pool.acquire(timeout=self._timeout) as conn, conn.transaction():
            rows = {r["id"]: _row(r) for r in await conn.fetch(
                _LOCK_ROWS, list(ids), timeout=self._timeout)}
            granted = msg_id
            for i in ids:
                row = rows.get(i)
                if row is None or row.owner != owner:
                    raise ClaimRefused("foreign", i)
                if row.room != room:
                    raise ClaimRefused("room", i)
                if row.msg_id is not None:
                    if row.claim != key:
                        raise ClaimRefused("attached", i)
                    granted = row.msg_id  # a retry of the same send
            if granted != msg_id:  # a retry: exactly what the first attempt claimed
                for i in ids:
                    if rows[i].msg_id != granted:
                        raise ClaimRefused("attached", i)
            await conn.execute(_CLAIM, list(ids), granted, key, timeout=self._timeout)
        return granted, [rows[i].attachment for i in ids]

    async def release(self, owner: str, ids: Sequence[str], msg_id: str) -> None:
        """Undo a claim of ``msg_id`` (a send refused after it)."""
        async with self._pool.acquire(timeout=self._timeout) as conn:
            await conn.execute(
                "UPDATE history.attachments SET msg_id = NULL, claim = NULL, claimed_at = NULL"
                " WHERE id = ANY($1::text[]) AND owner = $2 AND msg_id = $3",
                list(ids), owner, msg_id, timeout=self._timeout)

    async def of_deleted(self, room: str, msg_id: str) -> list[tuple[str, str | None]]:
        """(id, thumb) of the attachments of a deleted message."""
        async with self._pool.acquire(timeout=self._timeout) as conn:
            records = await conn.fetch(_OF_DELETED, room, msg_id, timeout=self._timeout)
        return [(r["id"], r["thumb"]) for r in records]

    async def expired(self, ttl: float, limit: int) -> list[tuple[str, str | None]]:
        """(id, thumb) of uploads unattached for ``ttl`` seconds, and of claims
        as old whose message was never stored; marks the stored ones checked."""
        async with self._pool.acquire(timeout=self._timeout) as conn:
            found = [(r["id"], r["thumb"]) for r in await conn.fetch(
                _UNATTACHED, ttl, limit, timeout=self._timeout)]
            claims = await conn.fetch(_UNCHECKED, ttl, limit, timeout=self._timeout)
            stored = [r["id"] for r in claims if r["stored"]]
            if stored:
                await conn.execute("UPDATE history.attachments SET checked = true"
                                   " WHERE id = ANY($1::text[])", stored, timeout=self._timeout)
        return found + [(r["id"], r["thumb"]) for r in claims if not r["stored"]]

    async def forget(self, ids: Sequence[str]) -> None:
        """Drop the rows (their objects are gone)."""
        async with self._pool.acquire(timeout=self._timeout) as conn:
            await conn.execute("DELETE FROM history.attachments WHERE id = ANY($1::text[])",
                               list(ids), timeout=self._timeout)

    @contextlib.asynccontextmanager
    async def sweep_lock(self) -> AsyncIterator[bool]:
        """Whether this instance may sweep now (held until the block ends)."""
        async with self._pool.acquire(timeout=self._timeout) as conn:
            got = bool(await conn.fetchval("SELECT pg_try_advisory_lock($1)", SWEEP_LOCK,
                                           timeout=self._timeout))
            try:
                yield got
            finally:
                if got:
                    await conn.execute("SELECT pg_advisory_unlock($1)", SWEEP_LOCK,
                                       timeout=self._timeout)
