"""Read-side benchmark of the room model: room list with unread counts, search, history.

Run from the repo root: ``.venv/bin/python tests/load/rooms_queries.py
[--rooms 20] [--messages 5000] [--calls 200]``.

On a real NATS and PostgreSQL (started here) one history-service Component
runs in-process. One reader joins ``--rooms`` rooms (``svc.rooms.access``,
which creates them) and reads half of each; another user's ``--messages``
messages per room are stored straight through ``MessageStore.insert`` (the
consumer's own insert, without the stream: this measures reads, not
ingest). Then, one request after the other over NATS as a gateway makes them:

- ``list``: ``svc.rooms.list``, the reader's rooms, each with its unread
  count (half the room), last_seq and last message;
- ``search-rare`` / ``search-common``: ``svc.rooms.search`` over all the
  reader's rooms for a word in ~1 % / in every message;
- ``history``: ``svc.history.messages``, the newest page of 50.

Latency percentiles (ms) of each, and rows in PostgreSQL.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import nats

from chat_contract import subjects
from chat_contract.bus import (
    AccessReply,
    AccessRequest,
    HistoryReply,
    HistoryRequest,
    ReadReply,
    ReadRequest,
    RoomListRequest,
    RoomsReply,
    SearchReply,
    SearchRequest,
)
from chat_contract.events import User
from chat_devstack.nats import NatsServer
from chat_devstack.ports import free_port
from chat_devstack.postgres import PostgresServer
from chat_history.config import HistorySettings
from chat_history.records import MessageRow
from chat_history.service import HistoryComponent
from chat_kit.bus import call
from chat_kit.runtime import Runtime
from chat_kit.stream import ensure_chat_stream

READER = User(id="u_reader", name="reader")
WRITER = User(id="u_writer", name="writer")
WORDS = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel")


def text(i: int) -> str:
    rare = " zeppelin" if i % 100 == 0 else ""
    return f"message {i} " + " ".join(WORDS[(i + k) % len(WORDS)] for k in range(8)) + rare


async def timed(n: int, request: Callable[[], Awaitable[object]]) -> str:
    latencies = []
    for _ in range(n):
        t0 = time.perf_counter()
        await request()
        latencies.append((time.perf_counter() - t0) * 1000)
    q = statistics.quantiles(latencies, n=100)
    return f"p50 {q[49]:.1f} ms, p99 {q[98]:.1f} ms, max {max(latencies):.1f} ms"


async def bench(args: argparse.Namespace, workdir: Path) -> None:
    nats_server = NatsServer.start(free_port(), workdir / "nats")
    pg = PostgresServer.start(free_port(), workdir / "pg")
    os.environ.update({"CHAT_NATS_URL": nats_server.url, "CHAT_DATABASE_URL": pg.url,
                       "CHAT_LOG_LEVEL": "warning", "CHAT_LOG_FORMAT": "text",
                       "CHAT_HISTORY_PORT": "0"})
    try:
        settings = HistorySettings.from_env()
        client = await nats.connect(nats_server.url)
        await ensure_chat_stream(client.jetstream())
        nc = await nats.connect(nats_server.url)
        rt = Runtime("bench", settings.common, nc)
        component = HistoryComponent(settings)
        await component.start(rt)
        timeout = 10.0
        rooms = [f"bench-{r}" for r in range(args.rooms)]
        for room in rooms:
            await call(client, subjects.ROOMS_ACCESS, AccessRequest(caller=READER, room=room),
                       AccessReply, timeout)
        started = time.perf_counter()
        ts = datetime(2025, 6, 1, tzinfo=UTC)
        seq = 0
        for room in rooms:
            rows = []
            for _ in range(args.messages):
                seq += 1
                rows.append(MessageRow(room, seq, f"m{seq}", WRITER.id, WRITER.name, text(seq),
                                       None, ts + timedelta(milliseconds=seq)))
            for i in range(0, len(rows), 1000):
                await component.store.insert(rows[i:i + 1000])
            half = rows[len(rows) // 2].seq
            await call(client, subjects.ROOMS_READ, ReadRequest(caller=READER, room=room,
                                                                seq=half), ReadReply, timeout)
        # As autovacuum would after a bulk load: the planner needs the statistics.
        conn = await asyncpg.connect(pg.url)
        await conn.execute("ANALYZE history.messages")
        await conn.close()
        total = args.rooms * args.messages
        print(f"stored {total} messages in {args.rooms} rooms in "
              f"{time.perf_counter() - started:.1f}s")

        listing = await call(client, subjects.ROOMS_LIST, RoomListRequest(caller=READER),
                             RoomsReply, timeout)
        unread = sorted({room.unread for room in listing.rooms})
        print(f"list: {len(listing.rooms)} rooms, unread per room {unread}")
        print("list:", await timed(args.calls, lambda: call(
            client, subjects.ROOMS_LIST, RoomListRequest(caller=READER), RoomsReply, timeout)))
        for label, word in (("search-rare", "zeppelin"), ("search-common", "alpha bravo")):
            found = await call(client, subjects.ROOMS_SEARCH,
                               SearchRequest(caller=READER, q=word, limit=20), SearchReply,
                               timeout)
            print(f"{label}: {len(found.results)} results, has_more {found.has_more}; ",
                  await timed(args.calls, lambda w=word: call(  # type: ignore[misc]
                      client, subjects.ROOMS_SEARCH, SearchRequest(caller=READER, q=w, limit=20),
                      SearchReply, timeout)))
        print("history:", await timed(args.calls, lambda: call(
            client, subjects.HISTORY_MESSAGES, HistoryRequest(room=rooms[0], user=READER.id),
            HistoryReply, timeout)))
        print("history-store (the page query alone):", await timed(args.calls, lambda: (
            component.store.page(rooms[0], before=None, after=None, limit=50))))
        rt.stopping.set()
        await component.stop()
        await nc.drain()
        await client.drain()
    finally:
        pg.stop()
        nats_server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rooms", type=int, default=20)
    parser.add_argument("--messages", type=int, default=5000, help="per room")
    parser.add_argument("--calls", type=int, default=200, help="requests timed per query")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="chat-rooms-bench-") as tmp:
        asyncio.run(bench(args, Path(tmp)))


if __name__ == "__main__":
    main()
