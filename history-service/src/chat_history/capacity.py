"""Capacity per class of work (README "Capacity"): storing the stream, answering
interactive requests and searching never wait for each other's connections.

- :class:`Pools` opens one PostgreSQL pool per class: ``ingest`` (the
  consumer's inserts and the erasure queue), ``interactive`` (joins, room
  requests, history pages, reads) and ``search``. Each has its own size and
  its own server-side ``statement_timeout`` (search short), so ~50 heavy
  searches hold at most the search pool's few connections for at most the
  search timeout, and storage and joins keep theirs.
- :class:`UserLimiter` is a per-user admission gate: at most ``concurrent``
  requests of a user at once and ``per_window`` within ``window`` seconds;
  beyond → ``rate_limited`` with ``retry_after``. Search uses one, room
  creation another (rate only).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import asyncpg

from chat_contract.errors import ChatError, ErrorCode
from chat_kit.db import create_pool
from chat_kit.throttle import FailureWindow

from .config import HistorySettings


def _ms(seconds: float) -> str:
    return str(max(1, int(seconds * 1000)))


@dataclass
class Pools:
    ingest: asyncpg.Pool
    interactive: asyncpg.Pool
    search: asyncpg.Pool

    @classmethod
    async def open(cls, s: HistorySettings, stop: asyncio.Event | None = None) -> Pools:
        ingest = await create_pool(s.database_url, max_size=s.ingest_pool, stop=stop)
        interactive = await create_pool(
            s.database_url, max_size=s.interactive_pool, stop=stop,
            server_settings={"statement_timeout": _ms(s.interactive_timeout)})
        search = await create_pool(
            s.database_url, min_size=0, max_size=s.search_pool, stop=stop,
            server_settings={"statement_timeout": _ms(s.search_timeout)})
        return cls(ingest, interactive, search)

    def all(self) -> list[asyncpg.Pool]:
        return [self.ingest, self.interactive, self.search]


class UserLimiter:
    """At most ``concurrent`` at once (0: no bound) and ``per_window`` per
    ``window`` seconds (0: no bound) per user."""

    def __init__(self, concurrent: int, per_window: int, window: float, what: str) -> None:
        self.concurrent = concurrent
        self._window = FailureWindow(per_window, window)
        self._active: dict[str, int] = {}
        self._what = what

    def check(self, user: str) -> None:
        """Raise ``rate_limited`` if ``user`` may not start one more now."""
        if self.concurrent > 0 and self._active.get(user, 0) >= self.concurrent:
            raise ChatError(ErrorCode.RATE_LIMITED,
                            f"too many {self._what} at once, try again later", retry_after=1.0)
        wait = self._window.retry_after(user, time.monotonic())
        if wait is not None:
            raise ChatError(ErrorCode.RATE_LIMITED, f"too many {self._what}, try again later",
                            retry_after=max(1.0, wait))

    def count(self, user: str) -> None:
        """Count one under ``user``'s window (after :meth:`check` let it through)."""
        self._window.fail(user, time.monotonic())

    def enter(self, user: str) -> None:
        """Check, count, and take one of ``user``'s concurrent slots (give it
        back with :meth:`leave`)."""
        self.check(user)
        self.count(user)
        self._active[user] = self._active.get(user, 0) + 1

    def leave(self, user: str) -> None:
        left = self._active.get(user, 1) - 1
        if left > 0:
            self._active[user] = left
        else:
            self._active.pop(user, None)
