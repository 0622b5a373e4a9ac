"""MessageStore's insert connections (chat_history.store), without a server:
kept between batches (no pool reset per batch), given back on any error and
on close. The SQL itself runs against PostgreSQL in tests/integration."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest

from chat_history import store as store_module
from chat_history.records import MessageRow
from chat_history.store import MessageStore


class FakeConn:
    def __init__(self, n: int) -> None:
        self.n = n
        self.fail = False
        self.closed = False

    async def execute(self, *_: Any, **__: Any) -> str:
        await asyncio.sleep(0.01)
        if self.fail:
            raise ConnectionResetError("gone")
        return "INSERT 0 1"

    def is_closed(self) -> bool:
        return self.closed


class FakePool:
    def __init__(self) -> None:
        self.made = 0
        self.out: set[FakeConn] = set()
        self.released: list[int] = []

    async def acquire(self, timeout: float | None = None) -> FakeConn:
        self.made += 1
        conn = FakeConn(self.made)
        self.out.add(conn)
        return conn

    async def release(self, conn: FakeConn) -> None:
        self.out.discard(conn)
        self.released.append(conn.n)


def rows(seq: int) -> list[MessageRow]:
    return [MessageRow("lobby", seq, f"m{seq}", "u", "n", "hi", None,
                       datetime(2025, 6, 1, tzinfo=UTC))]


async def test_inserts_keep_their_connections_between_batches() -> None:
    pool = FakePool()
    store = MessageStore(pool)
    for seq in range(5):
        assert await store.insert(rows(seq)) == 1
    assert pool.made == 1 and pool.released == []  # one connection, never reset
    # Two at once: two kept; a third concurrent one goes back to the pool.
    await asyncio.gather(*(store.insert(rows(s)) for s in range(3)))
    assert pool.made == 3 and pool.released == [3]
    await store.close()
    assert pool.out == set() and sorted(pool.released) == [1, 2, 3]
    await store.insert(rows(9))  # after close: nothing kept any more
    assert pool.out == set()


async def test_a_connection_that_failed_goes_back_to_the_pool() -> None:
    pool = FakePool()
    store = MessageStore(pool)
    await store.insert(rows(1))
    (conn,) = pool.out
    conn.fail = True
    with pytest.raises(ConnectionResetError):
        await store.insert(rows(2))
    assert pool.released == [1] and pool.out == set()
    await store.insert(rows(3))  # a fresh one
    assert pool.made == 2
    assert store_module.KEPT_WRITERS == 2
