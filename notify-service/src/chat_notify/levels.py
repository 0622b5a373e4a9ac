"""Per-user, per-room levels in PostgreSQL (schema ``notify``, table ``notify_levels``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import asyncpg

from chat_contract.bus import NotifyLevel

SCHEMA = "notify"


class LevelStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def levels(self, room: str, users: Sequence[str]) -> dict[str, NotifyLevel]:
        """The stored levels of ``users`` in ``room`` (users without one are absent)."""
        if not users:
            return {}
        rows = await self._pool.fetch(
            f"SELECT user_id, level FROM {SCHEMA}.notify_levels"
            " WHERE room = $1 AND user_id = ANY($2::text[])", room, list(users))
        return {r["user_id"]: cast(NotifyLevel, r["level"]) for r in rows}

    async def level(self, room: str, user: str) -> NotifyLevel | None:
        return (await self.levels(room, [user])).get(user)

    async def set_level(self, room: str, user: str, level: NotifyLevel) -> None:
        await self._pool.execute(
            f"INSERT INTO {SCHEMA}.notify_levels (room, user_id, level) VALUES ($1, $2, $3)"
            " ON CONFLICT (room, user_id)"
            " DO UPDATE SET level = EXCLUDED.level, updated_at = now()", room, user, level)
