"""Ingest benchmark of the history service on real NATS and PostgreSQL.

Run from the repo root: ``.venv/bin/python tests/load/history_ingest.py [N]``.
(A benchmark; it belongs beside the others under tests/load/ if the lead wants it there.)

1. ``store``: MessageStore.insert of N rows in batches of CHAT_HISTORY_BATCH (no NATS).
2. ``catch-up``: N ChatRecords wait in the CHAT stream, then one Component
   starts; the time until the durable's ack floor reaches the last sequence
   (fetch → decode → insert → ack) gives stored messages per second.
3. ``read-after-send``: publish one message, then request the newest page;
   latency percentiles of that pair while the stream is otherwise idle.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import nats

from chat_contract import subjects
from chat_contract.bus import ChatRecord, HistoryReply, HistoryRequest
from chat_contract.events import User
from chat_devstack.nats import NatsServer
from chat_devstack.ports import free_port
from chat_devstack.postgres import PostgresServer
from chat_history.config import HistorySettings
from chat_history.consumer import DURABLE
from chat_history.records import MessageRow
from chat_history.service import HistoryComponent
from chat_kit.bus import call, ensure_chat_stream
from chat_kit.runtime import Runtime
from chat_kit.settings import CommonSettings

ANN = User(id="u_bench", name="bench")
ROOMS = 50


async def bench(n: int, workdir: Path) -> None:
    nats_server = NatsServer.start(free_port(), workdir / "nats")
    pg = PostgresServer.start(free_port(), workdir / "pg")
    try:
        common = CommonSettings(nats_url=nats_server.url, log_level="WARNING",
                                log_format="text", request_timeout=2.0, stream_replicas=1,
                                host="127.0.0.1")
        settings = HistorySettings(common=common, port=0, database_url=pg.url, batch=500,
                                   fetch_wait=0.05, catchup_timeout=5.0)
        client = await nats.connect(nats_server.url)
        js = client.jetstream()
        await ensure_chat_stream(js)

        started = time.perf_counter()
        last = 0
        for chunk in range(0, n, 1000):
            acks = await asyncio.gather(*(
                js.publish(subjects.room_subject(f"room{i % ROOMS}"), msgspec.json.encode(
                    ChatRecord(room=f"room{i % ROOMS}", msg_id=f"m{i}", sender=ANN,
                               text="x" * 80, ts="2025-06-01T12:00:00.000Z")))
                for i in range(chunk, min(n, chunk + 1000))))
            last = max(last, *(a.seq for a in acks))
        print(f"published {n} in {time.perf_counter() - started:.2f}s")

        nc = await nats.connect(nats_server.url)
        rt = Runtime("bench", common, nc)
        component = HistoryComponent(settings)
        started = time.perf_counter()
        await component.start(rt)
        while True:
            info = await js.consumer_info(subjects.CHAT_STREAM, DURABLE)
            if info.ack_floor is not None and info.ack_floor.stream_seq >= last:
                break
            await asyncio.sleep(0.01)
        elapsed = time.perf_counter() - started
        print(f"catch-up: {n} stored in {elapsed:.2f}s = {n / elapsed:,.0f} msg/s "
              f"(incl. component start)")

        ts = datetime(2025, 6, 1, tzinfo=UTC)
        rows = [MessageRow("direct", seq, f"d{seq}", "u", "n", "x" * 80, None, ts)
                for seq in range(1, n + 1)]
        started = time.perf_counter()
        for i in range(0, n, settings.batch):
            await component.store.insert(rows[i:i + settings.batch])
        elapsed = time.perf_counter() - started
        print(f"store: {n} rows in batches of {settings.batch}: {elapsed:.2f}s "
              f"= {n / elapsed:,.0f} rows/s")

        latencies = []
        for i in range(200):
            t0 = time.perf_counter()
            ack = await js.publish(subjects.room_subject("fresh"), msgspec.json.encode(
                ChatRecord(room="fresh", msg_id=f"f{i}", sender=ANN, text="x",
                           ts="2025-06-01T12:00:00.000Z")))
            reply = await call(client, subjects.HISTORY_MESSAGES,
                               HistoryRequest(room="fresh", limit=1), HistoryReply, 5.0)
            assert reply.messages[-1].seq == ack.seq
            latencies.append((time.perf_counter() - t0) * 1000)
        q = statistics.quantiles(latencies, n=100)
        print(f"read-after-send (publish + request): p50 {q[49]:.1f} ms, "
              f"p99 {q[98]:.1f} ms, max {max(latencies):.1f} ms")

        rt.stopping.set()
        await component.stop()
        await nc.drain()
        await client.drain()
    finally:
        pg.stop()
        nats_server.stop()


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 50_000
    with tempfile.TemporaryDirectory(prefix="history-bench-") as tmp:
        asyncio.run(bench(n, Path(tmp)))


if __name__ == "__main__":
    main()
