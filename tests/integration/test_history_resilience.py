"""history-service across server restarts: PostgreSQL and NATS go away and come back.

These tests own their servers (chat_devstack launchers on free ports) because
they stop and restart them; nothing is mocked.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import msgspec
import pytest
from nats.aio.client import Client as NATS
from waiting import TIME_FACTOR

from chat_contract import subjects
from chat_contract.bus import ChatRecord, HistoryReply, HistoryRequest
from chat_contract.errors import ChatError, ErrorCode
from chat_contract.events import User
from chat_devstack.nats import NatsServer
from chat_devstack.ports import free_port
from chat_devstack.postgres import PostgresServer
from chat_history.config import HistorySettings
from chat_history.service import HistoryComponent
from chat_kit import bus
from chat_kit.runtime import Runtime
from chat_kit.settings import CommonSettings

pytestmark = pytest.mark.integration

UNIT = TIME_FACTOR  # CHAT_TEST_TIME_FACTOR, read in tests/waiting.py
ANN = User(id="u_ann", name="ann")


@asynccontextmanager
async def running(nats_url: str, db_url: str) -> AsyncIterator[tuple[HistoryComponent, Runtime]]:
    common = CommonSettings(nats_url=nats_url, log_level="INFO", log_format="text",
                            request_timeout=2.0, stream_replicas=1, host="127.0.0.1")
    settings = HistorySettings(common=common, port=0, database_url=db_url, batch=500,
                               linger=0.05, catchup_timeout=1.0)
    nc = await bus.connect(nats_url, "history-test")  # reconnects forever, like the service
    rt = Runtime("history-test", common, nc)
    component = HistoryComponent(settings)
    await component.start(rt)
    try:
        yield component, rt
    finally:
        rt.stopping.set()
        await component.stop()
        await nc.drain()


async def eventually(check: Callable[[], object], timeout: float = 20 * UNIT) -> None:
    deadline = time.monotonic() + timeout
    while not await _holds(check):
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def _holds(check: Callable[[], object]) -> bool:
    result = check()
    if asyncio.iscoroutine(result):
        result = await result
    return bool(result)


async def send(nc: NATS, room: str, text: str, timeout: float = 5 * UNIT,
               msg_id: str | None = None) -> int:
    record = ChatRecord(room=room, msg_id=msg_id or "m_" + uuid.uuid4().hex, sender=ANN,
                        text=text, ts="2025-06-01T12:00:00.000Z")
    ack = await nc.jetstream().publish(subjects.room_subject(room), msgspec.json.encode(record),
                                       headers={subjects.HDR_MSG_ID: record.msg_id},
                                       timeout=timeout)
    return int(ack.seq)


async def history(nc: NATS, room: str) -> HistoryReply:
    return await bus.call(nc, subjects.HISTORY_MESSAGES,
                          HistoryRequest(room=room, after=0, limit=500), HistoryReply,
                          timeout=5 * UNIT)


async def test_survives_a_postgres_restart(tmp_path: Path) -> None:
    room = "pg-" + uuid.uuid4().hex[:8]
    nats_server = NatsServer.start(free_port(), tmp_path / "nats")
    pg = PostgresServer.start(free_port(), tmp_path / "pg")
    try:
        async with running(nats_server.url, pg.url) as (component, rt):
            client = await bus.connect(nats_server.url, "client")
            try:
                first = [await send(client, room, f"a{i}") for i in range(10)]
                assert [m.seq for m in (await history(client, room)).messages] == first

                pg.stop()
                during = [await send(client, room, f"b{i}") for i in range(10)]
                # Unacked while the database is away; reads say "retry later".
                with pytest.raises(ChatError) as info:
                    await history(client, room)
                assert info.value.code is ErrorCode.UNAVAILABLE
                await eventually(lambda: not rt.is_ready())

                pg.restart()
                await eventually(rt.is_ready)
                reply = await history(client, room)
                assert [m.seq for m in reply.messages] == first + during
                assert component.consumer.stored == 20
            finally:
                await client.drain()
    finally:
        pg.stop()
        nats_server.stop()


async def test_survives_a_nats_restart(tmp_path: Path) -> None:
    room = "nats-" + uuid.uuid4().hex[:8]
    nats_server = NatsServer.start(free_port(), tmp_path / "nats")
    pg = PostgresServer.start(free_port(), tmp_path / "pg")
    try:
        async with running(nats_server.url, pg.url) as (component, rt):
            client = await bus.connect(nats_server.url, "client")
            try:
                first = [await send(client, room, f"a{i}") for i in range(10)]
                assert [m.seq for m in (await history(client, room)).messages] == first

                nats_server.restart()  # JetStream state (stream, durable) is on disk
                await eventually(lambda: client.is_connected and rt.nc.is_connected)
                after: list[int] = []
                for i in range(10):
                    after.append(await _send_retrying(client, room, f"b{i}"))

                async def all_there() -> bool:
                    try:
                        reply = await history(client, room)
                    except ChatError:
                        return False
                    return [m.seq for m in reply.messages] == first + after

                await eventually(all_there)
                await eventually(rt.is_ready)
                assert component.consumer.stored == 20
            finally:
                await client.drain()
    finally:
        pg.stop()
        nats_server.stop()


async def _send_retrying(client: NATS, room: str, text: str) -> int:
    # Right after a restart JetStream may need a moment to elect itself.
    deadline = time.monotonic() + 10 * UNIT
    msg_id = "m_" + uuid.uuid4().hex  # the same Nats-Msg-Id each try: a lost ack cannot double
    while True:
        try:
            # A publish sent while the client was still reconnecting loses its ack.
            return await send(client, room, text, timeout=0.5 * UNIT, msg_id=msg_id)
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)
