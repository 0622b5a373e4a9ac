"""history-service capacity under a search flood (issue 12, item 3), on real
NATS and PostgreSQL: heavy searches must not starve storage or joins.

A history Component runs in-process with its default capacity settings
(README "Capacity": a pool each for ingest, interactive requests and search;
a short statement timeout for search; per-user search concurrency and
rate). The database holds many messages; a search for a negated word
(``-word``) matches nearly all of them, so no index narrows it. Fifty such
searches from five users run at once while messages are published and
users join rooms: every message is stored, every join answers within a
generous bound, and the searches beyond a user's limit get ``rate_limited``
with a ``retry_after``.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
import msgspec
import nats
import pytest
from nats.aio.client import Client as NATS
from waiting import eventually, scaled

from chat_contract import subjects
from chat_contract.bus import (
    AccessReply,
    AccessRequest,
    ChatRecord,
    SearchReply,
    SearchRequest,
)
from chat_contract.errors import ChatError, ErrorCode
from chat_contract.events import User
from chat_history.config import HistorySettings
from chat_history.service import HistoryComponent
from chat_kit.bus import call, publish_durable
from chat_kit.runtime import Runtime
from chat_kit.settings import CommonSettings

pytestmark = pytest.mark.integration

ROWS = 400_000  # messages the heavy searches wade through
HEAVY_ROOMS = 5
SEARCHERS = [User(id=f"u_searcher{i}", name=f"searcher{i}") for i in range(5)]
SEARCHES = 50
SENDS = 200
JOINS = 20
JOIN_BOUND = 2.0  # seconds: generous; a starved pool makes joins wait for many searches
TS = "2025-06-01T12:00:00.000Z"


@dataclass
class Stack:
    nc: NATS
    db_url: str
    history: HistoryComponent


@pytest.fixture
async def stack(nats_url: str, db_url: str) -> AsyncIterator[Stack]:
    common = CommonSettings(nats_url=nats_url, log_level="WARNING", log_format="text",
                            request_timeout=scaled(5.0), stream_replicas=1, host="127.0.0.1")
    settings = HistorySettings(common=common, port=0, database_url=db_url, batch=500,
                               linger=0.05, catchup_timeout=1.5)
    history_nc, nc = await nats.connect(nats_url), await nats.connect(nats_url)
    rt = Runtime("history-capacity-test", common, history_nc)
    history = HistoryComponent(settings)
    await history.start(rt)
    try:
        yield Stack(nc, db_url, history)
    finally:
        rt.stopping.set()
        await history.stop()
        for conn in (nc, history_nc):
            await conn.drain()


async def _fill(db_url: str) -> None:
    """ROWS messages over HEAVY_ROOMS rooms every searcher is a member of."""
    conn = await asyncpg.connect(db_url)
    try:
        await conn.execute(
            "INSERT INTO history.rooms (id, name, visibility, owner_id)"
            " SELECT 'heavy' || i, 'heavy', 'public', 'u_owner'"
            " FROM generate_series(0, $1 - 1) i", HEAVY_ROOMS)
        await conn.execute(
            "INSERT INTO history.members (room, user_id, user_name)"
            " SELECT 'heavy' || r, u.id, u.id FROM generate_series(0, $1 - 1) r,"
            " unnest($2::text[]) AS u(id)", HEAVY_ROOMS, [u.id for u in SEARCHERS])
        # Seqs far above what the test publishes (the stream is another room's anyway).
        await conn.execute(
            "INSERT INTO history.messages (room, seq, msg_id, sender_id, sender_name, text,"
            " ts, kind)"
            " SELECT 'heavy' || (i % $2), 10000000 + i, 'h' || i, 'u_owner', 'owner',"
            " 'word' || (i % 997) || ' lorem ipsum dolor sit amet ' || md5(i::text),"
            " now(), 'message' FROM generate_series(1, $1) i", ROWS, HEAVY_ROOMS)
        await conn.execute("ANALYZE history.messages")
    finally:
        await conn.close()


async def _search(nc: NATS, user: User) -> str:
    """One heavy search; its outcome: ``ok`` or the error code (rate_limited
    must come with a retry_after)."""
    try:
        await call(nc, subjects.ROOMS_SEARCH,
                   SearchRequest(caller=user, q="-word1", limit=50), SearchReply, scaled(15.0))
    except ChatError as exc:
        if exc.code is ErrorCode.RATE_LIMITED:
            assert exc.retry_after is not None and exc.retry_after >= 1
        return exc.code.value
    return "ok"


async def _send_all(nc: NATS, room: str) -> None:
    sender = User(id="u_talker", name="talker")
    for i in range(SENDS):
        record = ChatRecord(room=room, msg_id=f"m_{uuid.uuid4().hex}", sender=sender, ts=TS,
                            kind="message", text=f"message {i}")
        await publish_durable(nc, subjects.room_subject(room), msgspec.json.encode(record),
                              scaled(10.0))


async def _join_all(nc: NATS) -> list[float]:
    """Joins one after another (new rooms and an existing one); each one's latency."""
    latencies: list[float] = []
    lobby = "lobby-" + uuid.uuid4().hex[:6]
    for i in range(JOINS):
        user = User(id=f"u_joiner{i}", name=f"joiner{i}")
        room = lobby if i % 2 else f"r{uuid.uuid4().hex[:10]}"
        started = time.monotonic()
        reply = await call(nc, subjects.ROOMS_ACCESS,
                           AccessRequest(caller=user, room=room, create=True), AccessReply,
                           scaled(10.0))
        latencies.append(time.monotonic() - started)
        assert reply.room.id == room
    return latencies


async def _stored(db_url: str, room: str) -> int:
    conn = await asyncpg.connect(db_url)
    try:
        n: int = await conn.fetchval("SELECT count(*) FROM history.messages WHERE room = $1",
                                     room)
    finally:
        await conn.close()
    return n


async def test_a_search_flood_does_not_starve_storage_or_joins(stack: Stack) -> None:
    s = stack
    await _fill(s.db_url)
    started = time.monotonic()
    alone = await _search(s.nc, SEARCHERS[0])
    print("one search alone:", alone, round(time.monotonic() - started, 3), "s")
    chatty = "chatty-" + uuid.uuid4().hex[:6]

    searches = asyncio.gather(*(_search(s.nc, SEARCHERS[i % len(SEARCHERS)])
                                for i in range(SEARCHES)))
    sends = asyncio.create_task(_send_all(s.nc, chatty))
    joins = asyncio.create_task(_join_all(s.nc))
    latencies = await joins
    await sends
    outcomes = await searches

    # Every join answered, none waited long behind the searches.
    assert len(latencies) == JOINS
    assert max(latencies) < scaled(JOIN_BOUND), latencies
    # Every message published during the flood is stored.
    assert await eventually(lambda: _count_is(s.db_url, chatty, SENDS), timeout=10.0,
                            what=f"{SENDS} messages stored")
    # Beyond a user's concurrent searches: rate_limited, not a queue.
    assert outcomes.count("rate_limited") >= SEARCHES // 2, outcomes
    assert set(outcomes) <= {"ok", "rate_limited", "unavailable"}, outcomes


async def _count_is(db_url: str, room: str, want: int) -> bool:
    return await _stored(db_url, room) == want
