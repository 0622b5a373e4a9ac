"""Ingest benchmark of the history service on real NATS and PostgreSQL.

Run from the repo root: ``.venv/bin/python tests/load/history_ingest.py [N]``
(``--rate R --seconds S`` shape the steady phase, ``--no-steady`` skips it;
``--text words`` (default) sends ~80 characters of words from a 3000-word
vocabulary, ``--text x`` the 80 x's of earlier runs, one lexeme, which costs
the search index next to nothing; ``--batch B`` sets CHAT_HISTORY_BATCH,
else the service's default).
(A benchmark; it belongs beside the others under tests/load/ if the lead wants it there.)

1. ``catch-up``: the Component starts once on the empty stream (migrations,
   the durable) and stops; then N ChatRecords wait in the CHAT stream and it
   starts again; the time from that start until the durable's ack floor
   reaches the last sequence (deliver → decode → insert → ack) gives stored
   messages per second, and the CPU time over that span gives CPU per message:
   of this process (the service; this process only polls consumer info
   meanwhile), of PostgreSQL (postmaster and every backend) and of
   nats-server. Then a search check: the rows matching one word through the
   search index (``tsv @@``) are exactly the messages holding it.
2. ``store``: MessageStore.insert of N rows in batches of CHAT_HISTORY_BATCH (no NATS).
3. ``read-after-send``: publish one message, then request the newest page;
   latency percentiles of that pair while the stream is otherwise idle.
4. ``steady``: the service as its own process (``python -m chat_history.main``,
   as deployed), fed R messages/s over 50 rooms for S seconds by this process;
   its CPU (user + system, psutil) per message over the window, as the fan-out
   benchmark counts it, and the batches it made (its /metrics).

Settings come from the environment (``HistorySettings.from_env``), so the
script also runs against an older checkout put first on ``PYTHONPATH``: an A/B
of two versions runs this same script with each version's ``history-service/src``
(and ``shared/src``, ``services/src``) first on the path, interleaved
(tests/load/RESULTS.md "History consumer" has the commands).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import httpx
import msgspec
import nats
import psutil
from nats.js import JetStreamContext
from nats.js.api import PubAck

from chat_contract import subjects
from chat_contract.bus import ChatRecord, HistoryReply, HistoryRequest
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

ANN = User(id="u_bench", name="bench")
# The durable's name (chat_history.consumer_setup.DURABLE), spelled out so the
# script runs unchanged against a checkout from before the module split.
DURABLE = "history-push"
ROOMS = 50
TEXTS: list[str] = ["x" * 80]


def make_texts(kind: str) -> list[str]:
    """1000 message texts: ~80 characters of words from a 3000-word vocabulary
    (Zipf-like: a few words common, most rare), or 80 x's."""
    if kind == "x":
        return ["x" * 80]
    rng = random.Random(13)
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = ["".join(rng.choice(letters) for _ in range(rng.randint(2, 9)))
             for _ in range(3000)]
    weights = [1 / (rank + 1) for rank in range(len(vocab))]
    texts = []
    for _ in range(1000):
        words: list[str] = []
        while sum(len(w) + 1 for w in words) < 80:
            words.extend(rng.choices(vocab, weights))
        texts.append(" ".join(words))
    return texts


def record(i: int, prefix: str = "m") -> bytes:
    room = f"room{i % ROOMS}"
    return msgspec.json.encode(ChatRecord(room=room, msg_id=f"{prefix}{i}", sender=ANN,
                                          text=TEXTS[i % len(TEXTS)],
                                          ts="2025-06-01T12:00:00.000Z"))


def cpu_of(proc: psutil.Process | None, tree: bool = False) -> float:
    """User + system seconds of a server process (and its children)."""
    if proc is None:
        return float("nan")
    total = 0.0
    for p in [proc, *(proc.children(recursive=True) if tree else [])]:
        try:
            t = p.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system + t.children_user + t.children_system
    return total


def server_process(server: object) -> psutil.Process | None:
    popen = getattr(server, "_proc", None)  # chat_devstack keeps its Popen there
    return psutil.Process(popen.pid) if popen is not None else None


async def wait_for_floor(js: JetStreamContext, last: int, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        info = await js.consumer_info(subjects.CHAT_STREAM, DURABLE)
        if info.ack_floor is not None and info.ack_floor.stream_seq >= last:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"ack floor stuck below {last}: {info.ack_floor}")
        await asyncio.sleep(0.01)


async def bench(args: argparse.Namespace, workdir: Path) -> None:
    n: int = args.n
    nats_server = NatsServer.start(free_port(), workdir / "nats")
    pg = PostgresServer.start(free_port(), workdir / "pg")
    env = {"CHAT_NATS_URL": nats_server.url, "CHAT_DATABASE_URL": pg.url,
           "CHAT_LOG_LEVEL": "warning", "CHAT_LOG_FORMAT": "text",
           "CHAT_HISTORY_FETCH_WAIT": "0.05", "CHAT_HISTORY_CATCHUP_TIMEOUT": "5.0"}
    if args.batch:
        env["CHAT_HISTORY_BATCH"] = str(args.batch)
    os.environ.update(env)
    os.environ["CHAT_HISTORY_PORT"] = "0"
    try:
        settings = HistorySettings.from_env()
        client = await nats.connect(nats_server.url)
        js = client.jetstream()
        await ensure_chat_stream(js)
        pg_proc, nats_proc = server_process(pg), server_process(nats_server)

        # Migrations and the durable first, so the catch-up below times storing only.
        nc = await nats.connect(nats_server.url)
        rt = Runtime("bench", settings.common, nc)
        component = HistoryComponent(settings)
        await component.start(rt)
        rt.stopping.set()
        await component.stop()
        await nc.drain()

        started = time.perf_counter()
        last = 0
        for chunk in range(0, n, 1000):
            acks = await asyncio.gather(*(
                js.publish(subjects.room_subject(f"room{i % ROOMS}"), record(i))
                for i in range(chunk, min(n, chunk + 1000))))
            last = max(last, *(a.seq for a in acks))
        print(f"published {n} in {time.perf_counter() - started:.2f}s")

        nc = await nats.connect(nats_server.url)
        rt = Runtime("bench", settings.common, nc)
        component = HistoryComponent(settings)
        started = time.perf_counter()
        cpu0, pg0, nats0 = time.process_time(), cpu_of(pg_proc, True), cpu_of(nats_proc)
        await component.start(rt)
        start_s = time.perf_counter() - started
        await wait_for_floor(js, last)
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu0
        pg_cpu, nats_cpu = cpu_of(pg_proc, True) - pg0, cpu_of(nats_proc) - nats0
        print(f"catch-up: {n} stored in {elapsed:.2f}s = {n / elapsed:,.0f} msg/s "
              f"(start {start_s:.2f}s incl.); CPU per msg: history {cpu / n * 1e6:.1f} us, "
              f"postgres {pg_cpu / n * 1e6:.1f} us, nats {nats_cpu / n * 1e6:.1f} us")
        await search_check(pg.url, n)

        ts = datetime(2025, 6, 1, tzinfo=UTC)
        rows = [MessageRow("direct", seq, f"d{seq}", "u", "n", TEXTS[seq % len(TEXTS)], None, ts)
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

        if args.steady:
            await steady(args, js, env, pg_proc, nats_proc)
        await client.drain()
    finally:
        pg.stop()
        nats_server.stop()


async def search_check(url: str, n: int) -> None:
    """The search index holds every stored message: a word's matches are exact."""
    words = [w for w in TEXTS[0].split() if w.isalpha()][:1] or ["x" * 80]
    word = words[0]
    expected = sum(1 for i in range(n) if word in TEXTS[i % len(TEXTS)].split())
    conn = await asyncpg.connect(url)
    try:
        found = await conn.fetchval(
            "SELECT count(*) FROM history.messages WHERE kind = 'message'"
            " AND msg_id LIKE 'm%' AND tsv @@ to_tsquery('simple', $1)", word)
    finally:
        await conn.close()
    assert found == expected, f"search for {word!r}: {found} rows, expected {expected}"
    print(f"search: {word!r} matches {found} of {n} stored messages, as sent")


async def steady(args: argparse.Namespace, js: JetStreamContext, env: dict[str, str],
                 pg_proc: psutil.Process | None = None,
                 nats_proc: psutil.Process | None = None) -> None:
    """The service as its own process at a fixed publish rate: CPU per message."""
    port = free_port()
    proc = subprocess.Popen(  # noqa: ASYNC220 - started once, waited for below
        [sys.executable, "-m", "chat_history.main"],
        env={**os.environ, **env, "CHAT_HISTORY_PORT": str(port)})
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=2) as http:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if (await http.get("/readyz")).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, "history process not ready"
                await asyncio.sleep(0.1)
            ps = psutil.Process(proc.pid)
            loop = asyncio.get_running_loop()
            tick = 0.01
            sent = 0
            pending: set[asyncio.Future[PubAck]] = set()
            window: tuple[float, float, int] | None = None  # (t0, cpu0, sent0)
            servers0 = (0.0, 0.0)
            start = loop.time()
            warmup = 2.0
            while (now := loop.time()) - start < warmup + args.seconds:
                if window is None and now - start >= warmup:
                    t = ps.cpu_times()
                    window = (time.monotonic(), t.user + t.system, sent)
                    servers0 = (cpu_of(pg_proc, True), cpu_of(nats_proc))
                due = int((now - start) * args.rate)
                for i in range(sent, due):
                    fut = asyncio.ensure_future(
                        js.publish(subjects.room_subject(f"room{i % ROOMS}"), record(i, "s")))
                    pending.add(fut)
                    fut.add_done_callback(pending.discard)
                sent = max(sent, due)
                await asyncio.sleep(tick)
            t = ps.cpu_times()
            pg_cpu, nats_cpu = cpu_of(pg_proc, True) - servers0[0], cpu_of(nats_proc) - servers0[1]
            assert window is not None
            t0, cpu0, sent0 = window
            cpu, secs, msgs = t.user + t.system - cpu0, time.monotonic() - t0, sent - sent0
            await asyncio.gather(*pending)
            info = await js.stream_info(subjects.CHAT_STREAM)
            await wait_for_floor(js, info.state.last_seq)
            metrics = (await http.get("/metrics")).text
        batches = _metric(metrics, "chat_history_batch_size_count")
        stored = _metric(metrics, "chat_history_batch_size_sum")
        print(f"steady: {msgs} msgs in {secs:.1f}s ({msgs / secs:,.0f}/s): history process "
              f"CPU {cpu:.2f}s = {cpu / msgs * 1e6:.1f} us/msg; "
              f"{batches:.0f} batches, {stored / max(batches, 1):.0f} msgs/batch on average; "
              f"postgres {pg_cpu / msgs * 1e6:.1f} us/msg, nats {nats_cpu / msgs * 1e6:.1f} us/msg"
              " (nats includes this process's publishes)")
    finally:
        proc.terminate()
        await asyncio.to_thread(proc.wait, 10)


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("n", nargs="?", type=int, default=50_000, help="messages to catch up on")
    ap.add_argument("--rate", type=float, default=3000, help="steady phase: messages/s")
    ap.add_argument("--seconds", type=float, default=10, help="steady phase: measured seconds")
    ap.add_argument("--no-steady", dest="steady", action="store_false")
    ap.add_argument("--text", choices=("words", "x"), default="words")
    ap.add_argument("--batch", type=int, default=0,
                    help="CHAT_HISTORY_BATCH (default: the service's own)")
    args = ap.parse_args()
    TEXTS[:] = make_texts(args.text)
    with tempfile.TemporaryDirectory(prefix="history-bench-") as tmp:
        asyncio.run(bench(args, Path(tmp)))


if __name__ == "__main__":
    main()
