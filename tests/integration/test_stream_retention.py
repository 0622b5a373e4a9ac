"""A bounded CHAT stream (chat_kit.stream) on real NATS and PostgreSQL.

The stream here holds 16 KiB (about 60 messages): a flood of another room
pushes a room's events out of it, as ``CHAT_STREAM_MAX_BYTES`` does in
production. Everything that read those events from the stream now reads
them from history-service: gap repair, a join's last sequence and ``since``
page, a duplicate send's original, the erasure of a deleted message.
Start-up verifies an existing stream and leaves it as an operator set it;
only ``chat-admin stream apply`` changes it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgspec
import nats
import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from prometheus_client import REGISTRY

from chat_contract import subjects
from chat_contract.bus import ChatRecord, HistoryReply, HistoryRequest
from chat_contract.events import User
from chat_devstack.nats import NatsCluster
from chat_gateway.handlers import stored_original
from chat_gateway.localroom import LocalRoom
from chat_gateway.relay import Relay
from chat_gateway.rooms import RoomHub
from chat_gateway.services import Services
from chat_history.config import HistorySettings
from chat_history.service import HistoryComponent
from chat_history.stream_monitor import StreamMonitor, export_stream
from chat_kit import bus
from chat_kit.runtime import Runtime
from chat_kit.settings import CommonSettings
from chat_kit.stream import StreamSettings, ensure_chat_stream

pytestmark = pytest.mark.integration

UNIT = float(os.environ.get("CHAT_TEST_TIME_FACTOR", "1"))
ANN = User(id="u_ann", name="ann")
# Bytes-bound only, so what ages out is decided by what is published, not by a clock.
TINY = StreamSettings(replicas=1, max_age=0, max_bytes=16 * 1024)
CHAT_ADMIN = Path(sys.executable).parent / "chat-admin"


class FakeConn:
    """Stands in for a socket: records the frames the hub writes to it."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.blocked: set[str] = set()
        self.user = User(id="u_x", name="x")
        self.rooms: set[str] = set()

    def write_frame(self, frame: bytes) -> bool:
        self.frames.append(frame)
        return True

    def events(self) -> list[dict[str, Any]]:
        # unmasked server frames here are < 64 KiB: a 2- or 4-byte header
        return [json.loads(f[4:] if f[1] == 126 else f[2:]) for f in self.frames]


async def _until(cond: Callable[[], object], timeout: float = 10 * UNIT) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def _publish(nc: NATS, room: str, n: int, *, kind: str = "message",
                   msg_id: str | None = None, dedupe: str | None = None) -> list[int]:
    seqs = []
    for i in range(n):
        record = ChatRecord(room=room, msg_id=msg_id or f"{room}-{os.urandom(4).hex()}",
                            sender=ANN, ts="2026-01-01T00:00:00.000Z",
                            text=None if kind == "delete" else f"t{i}", kind=kind)  # type: ignore[arg-type]
        ack = await bus.publish_durable(nc, subjects.room_subject(room),
                                        msgspec.json.encode(record), 5 * UNIT,
                                        {subjects.HDR_MSG_ID: dedupe} if dedupe else None)
        seqs.append(ack.seq)
    return seqs


async def _age_out(nc: NATS, js: JetStreamContext, seq: int) -> None:
    """Flood another room until the stream no longer holds ``seq``."""
    while (await js.stream_info(subjects.CHAT_STREAM)).state.first_seq <= seq:
        await _publish(nc, "flood", 20)


@asynccontextmanager
async def history(nats_url: str, db_url: str,
                  stream: StreamSettings = TINY) -> AsyncIterator[HistoryComponent]:
    """history-service as one process runs it, with ``stream`` as its settings."""
    common = CommonSettings(nats_url=nats_url, log_level="INFO", log_format="text",
                            request_timeout=2.0, stream_replicas=stream.replicas,
                            host="127.0.0.1")
    settings = HistorySettings(common=common, port=0, database_url=db_url, batch=500,
                               linger=0.01, catchup_timeout=2.0 * UNIT)
    nc = await nats.connect(nats_url)
    rt = Runtime("history-test", common, nc)
    component = HistoryComponent(settings, stream=stream)
    await component.start(rt)
    try:
        await _until(rt.is_ready)
        yield component
    finally:
        rt.stopping.set()
        await component.stop()
        await nc.drain()


async def _stored(component: HistoryComponent, room: str, n: int) -> None:
    for _ in range(int(500 * UNIT)):
        if await component.store.count(room) >= n:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{room}: {n} rows not stored in time")


def _fetcher(nc: NATS) -> Callable[[HistoryRequest], Any]:
    async def fetch(req: HistoryRequest) -> HistoryReply:
        return await bus.call(nc, subjects.HISTORY_MESSAGES, req, HistoryReply, 5 * UNIT)

    return fetch


@pytest.fixture
async def client(nats_url: str) -> AsyncIterator[NATS]:
    """The gateway's side: the stream exists (tiny) before history-service starts."""
    nc = await bus.connect(nats_url, "test")
    await ensure_chat_stream(nc.jetstream(), TINY)
    yield nc
    await nc.drain()


# --- reads fall back to history ------------------------------------------------------


async def test_gap_repair_reads_what_aged_out_from_history_then_the_stream(
        client: NATS, nats_url: str, db_url: str) -> None:
    js = client.jetstream()
    async with history(nats_url, db_url) as component:
        hub = RoomHub(client, Relay(js, history=_fetcher(client)))
        conn = FakeConn()
        room = await hub.join(conn, "r1")  # type: ignore[arg-type]
        first = await _publish(client, "r1", 1)
        await _until(lambda: len(conn.frames) == 1)

        # Lose the live feed while five events are published; the first three
        # then age out of the stream (stored in history), the last two do not.
        assert room.live_sub is not None
        await room.live_sub.unsubscribe()
        old = await _publish(client, "r1", 3)
        await _stored(component, "r1", 4)
        await _age_out(client, js, old[-1])
        new = await _publish(client, "r1", 2)
        room.live_sub = await client.subscribe_direct(
            subjects.live_subject("r1"), functools.partial(hub.relay.on_live, room))
        await bus.sync(client)
        after = await _publish(client, "r1", 1)

        await _until(lambda: len(conn.frames) == 7)
        events = conn.events()
        assert [e["seq"] for e in events] == first + old + new + after
        assert [e["prev_seq"] for e in events] == [0, *(first + old + new)]
        assert [e["text"] for e in events] == ["t0", "t0", "t1", "t2", "t0", "t1", "t0"]
        await hub.close_all()


async def test_a_room_that_aged_out_keeps_its_last_seq_and_since_recovers_it(
        client: NATS, nats_url: str, db_url: str) -> None:
    js = client.jetstream()
    async with history(nats_url, db_url) as component:
        seqs = await _publish(client, "r2", 5)
        await _stored(component, "r2", 5)
        await _age_out(client, js, seqs[-1])

        stream_only = Relay(js)
        assert await stream_only.last_seq(LocalRoom("r2")) == 0  # the bug
        hub = RoomHub(client, Relay(js, history=_fetcher(client)))
        last = await hub.last_seq(await hub.join(FakeConn(), "r2"))  # type: ignore[arg-type]
        assert last == seqs[-1]

        # The join's `since` page (handlers.join): after since, fresh up to last_seq.
        reply = await _fetcher(client)(HistoryRequest(room="r2", user=ANN.id, after=seqs[1],
                                                      limit=500, min_seq=last))
        assert [m.seq for m in reply.messages] == seqs[2:]
        assert [m.prev_seq for m in reply.messages] == seqs[1:4]
        assert not reply.has_more
        await hub.close_all()


async def test_a_duplicate_send_of_an_aged_out_message_answers_the_original(
        client: NATS, nats_url: str, db_url: str) -> None:
    js = client.jetstream()
    async with history(nats_url, db_url) as component:
        [seq] = await _publish(client, "r3", 1, msg_id="m_orig", dedupe="u_ann:c1")
        await _stored(component, "r3", 1)
        await _age_out(client, js, seq)
        [again] = await _publish(client, "r3", 1, msg_id="m_retry", dedupe="u_ann:c1")
        assert again == seq  # JetStream's duplicate window still knows the id
        with pytest.raises(NotFoundError):
            await js.get_msg(subjects.CHAT_STREAM, seq=seq, direct=True)
        result = await stored_original(Services(client, js, 5 * UNIT), "r3", seq)
        assert result == {"msg_id": "m_orig", "seq": seq, "ts": "2026-01-01T00:00:00.000Z"}


async def test_erasing_a_deleted_message_that_aged_out_is_not_an_error(
        client: NATS, nats_url: str, db_url: str) -> None:
    js = client.jetstream()
    errors = _gauge("chat_history_stream_erase_errors_total") or 0
    async with history(nats_url, db_url) as component:
        await _publish(client, "r4", 1, msg_id="m_gone")
        await _stored(component, "r4", 1)
        await _age_out(client, js, (await js.stream_info(subjects.CHAT_STREAM)).state.last_seq)
        await _publish(client, "r4", 1, kind="delete", msg_id="m_gone")
        reply = await _fetcher(client)(HistoryRequest(room="r4", limit=10))
        assert reply.messages[0].deleted and reply.messages[0].text is None
        # One more batch: the writer erased after the delete's batch before it.
        await _publish(client, "r4", 1)
        await _stored(component, "r4", 3)
        assert (_gauge("chat_history_stream_erase_errors_total") or 0) == errors
        assert component.consumer.is_ready()


# --- who changes the stream ------------------------------------------------------------


def _gauge(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


async def _chat_admin(url: str, *args: str, env: dict[str, str] | None = None,
                      ) -> tuple[int, Any, str]:
    proc = await asyncio.create_subprocess_exec(
        str(CHAT_ADMIN), *args, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "CHAT_NATS_URL": url, **(env or {})})
    out, err = await asyncio.wait_for(proc.communicate(), 30 * UNIT)
    assert proc.returncode is not None
    return proc.returncode, json.loads(out) if out.strip() else None, err.decode()


async def test_start_up_keeps_an_operators_retention_and_chat_admin_applies_ours(
        client: NATS, nats_url: str, db_url: str) -> None:
    js = client.jetstream()
    live = (await js.stream_info(subjects.CHAT_STREAM)).config
    edited = dataclasses.replace(live, max_age=3600.0, max_bytes=64 * 1024)
    await js.update_stream(edited)  # an operator's edit

    async with history(nats_url, db_url):  # start-up verifies: logs, flags, leaves it
        config = (await js.stream_info(subjects.CHAT_STREAM)).config
        assert (config.max_age, config.max_bytes) == (3600.0, 64 * 1024)
        assert _gauge("chat_stream_config_drift", field="max_bytes") == 1
        assert _gauge("chat_stream_config_drift", field="max_age") == 1
        assert _gauge("chat_stream_config_drift", field="num_replicas") == 0

    ours = {"CHAT_STREAM_MAX_BYTES": str(TINY.max_bytes), "CHAT_STREAM_MAX_AGE": "0"}
    code, shown, _ = await _chat_admin(nats_url, "stream", "show", env=ours)
    assert code == 0 and set(shown[0]["differences"]) == {"max_age", "max_bytes"}
    assert shown[0]["state"]["messages"] == 0 and shown[0]["cluster"]["leader"]
    code, done, _ = await _chat_admin(nats_url, "stream", "apply", env=ours)
    assert code == 0
    assert done[0]["changed"]["max_bytes"] == {"live": 64 * 1024,
                                               "configured": TINY.max_bytes}
    config = (await js.stream_info(subjects.CHAT_STREAM)).config
    assert (config.max_age or 0, config.max_bytes) == (0, TINY.max_bytes)
    assert config.republish is not None and config.subjects == [subjects.CHAT_SUBJECTS]
    code, done, _ = await _chat_admin(nats_url, "stream", "apply", env=ours)
    assert code == 0 and done[0]["changed"] == {}  # idempotent


async def test_start_up_and_apply_never_lower_replicas_without_being_told(
        nats_cluster: NatsCluster, nats_cluster_admin: dict[str, Any],
        nats_cluster_env: dict[str, str]) -> None:
    nc = await nats.connect(servers=nats_cluster.urls, **nats_cluster_admin)
    js = nc.jetstream(timeout=10)
    try:
        try:
            await js.delete_stream(subjects.CHAT_STREAM)
        except NotFoundError:
            pass
        r3 = dataclasses.replace(TINY, replicas=3)
        assert await ensure_chat_stream(js, r3) == {}  # created R3
        # A process configured with R1 (the default) starts: it only reports.
        diff = await ensure_chat_stream(js, TINY)
        assert diff == {"num_replicas": {"live": 3, "configured": 1}}
        assert (await js.stream_info(subjects.CHAT_STREAM)).config.num_replicas == 3

        # The cluster shows in the gauges: a leader and two current followers.
        async def peers_current() -> bool:
            export_stream(await js.stream_info(subjects.CHAT_STREAM))
            return _gauge("chat_stream_cluster_replicas", stream="CHAT", state="current") == 2

        for _ in range(int(250 * UNIT)):
            if await peers_current():
                break
            await asyncio.sleep(0.02)
        assert _gauge("chat_stream_leader", stream="CHAT") == 1
        assert _gauge("chat_stream_cluster_replicas", stream="CHAT", state="current") == 2
        assert _gauge("chat_stream_cluster_replicas", stream="CHAT", state="offline") == 0

        env = {**nats_cluster_env, "CHAT_STREAM_REPLICAS": "1",
               "CHAT_STREAM_MAX_BYTES": str(TINY.max_bytes), "CHAT_STREAM_MAX_AGE": "0"}
        code, _, err = await _chat_admin(nats_cluster.url, "stream", "apply", env=env)
        assert code == 1 and "--allow-lower-replicas" in err
        assert (await js.stream_info(subjects.CHAT_STREAM)).config.num_replicas == 3
        code, done, _ = await _chat_admin(nats_cluster.url, "stream", "apply",
                                          "--allow-lower-replicas", env=env)
        assert code == 0
        assert done[0]["changed"]["num_replicas"] == {"live": 3, "configured": 1}
        assert (await js.stream_info(subjects.CHAT_STREAM)).config.num_replicas == 1
    finally:
        try:
            await js.delete_stream(subjects.CHAT_STREAM)  # the cluster is shared
        except NotFoundError:
            pass
        await nc.close()


async def test_a_gateway_waits_for_the_stream_and_never_creates_it(nats_url: str) -> None:
    from chat_gateway.app import App
    from chat_gateway.config import GatewaySettings

    nc = await bus.connect(nats_url, "test")
    js = nc.jetstream()
    gateway = App(GatewaySettings.from_env())
    waiter = asyncio.create_task(gateway._wait_for_stream(js))
    try:
        # Looked up a few times (backoff from 0.1 s), neither created nor ready.
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.shield(waiter), 0.5)
        assert not gateway._stream_ok
        with pytest.raises(NotFoundError):
            await js.stream_info(subjects.CHAT_STREAM)
        await ensure_chat_stream(js, TINY)  # history-service starts
        await asyncio.wait_for(waiter, 10 * UNIT)
        assert gateway._stream_ok
    finally:
        waiter.cancel()
        await nc.drain()


# --- the gauges history-service exports ---------------------------------------------


async def test_stream_monitor_exports_size_limits_pending_and_lag(
        client: NATS, nats_url: str, db_url: str) -> None:
    js = client.jetstream()
    async with history(nats_url, db_url) as component:
        seqs = await _publish(client, "r5", 3)
        await _stored(component, "r5", 3)
    # history-service is down: what is published now waits, and ages.
    before = time.time()
    waiting = await _publish(client, "r5", 4)
    await StreamMonitor(js).poll()
    waited = time.time() - before
    assert _gauge("chat_stream_max_bytes", stream="CHAT") == TINY.max_bytes
    assert _gauge("chat_stream_max_age_seconds", stream="CHAT") == 0
    assert _gauge("chat_stream_messages", stream="CHAT") == 7
    assert 0 < (_gauge("chat_stream_bytes", stream="CHAT") or 0) <= TINY.max_bytes
    assert _gauge("chat_stream_first_seq", stream="CHAT") == seqs[0]
    assert _gauge("chat_stream_last_seq", stream="CHAT") == waiting[-1]
    assert _gauge("chat_history_consumer_pending", stream="CHAT") == 4
    # The age of the oldest unstored message: since its publish, no longer.
    assert 0 < (_gauge("chat_history_consumer_lag_seconds", stream="CHAT") or 0) <= waited + 0.01
    # The window reaches back to the first message, stored before the lagging ones.
    lag = _gauge("chat_history_consumer_lag_seconds", stream="CHAT") or 0
    assert (_gauge("chat_stream_window_seconds", stream="CHAT") or 0) > lag
    async with history(nats_url, db_url) as component:
        await _stored(component, "r5", 7)
        for _ in range(int(250 * UNIT)):
            await StreamMonitor(js).poll()
            if _gauge("chat_history_consumer_lag_seconds", stream="CHAT") == 0:
                break
            await asyncio.sleep(0.02)
        assert _gauge("chat_history_consumer_lag_seconds", stream="CHAT") == 0
        assert _gauge("chat_history_consumer_pending", stream="CHAT") == 0
