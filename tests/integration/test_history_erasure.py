"""Erasing a deleted message's text from the CHAT stream is retried until it
succeeds (issue 12, item 6), on a real NATS server and PostgreSQL.

The NATS server refuses history-service's message deletes at first (its
user lacks ``$JS.API.STREAM.MSG.DELETE.>``), as a stream that cannot be
reached or refuses the delete would; the delete is stored, the erasure
fails. Then the server's configuration is reloaded with the right granted,
and the text leaves the stream without any new delete. A second test stops
the service while the erasure is still failing and starts a new one: it
finds the pending erasure in the database and finishes it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import msgspec
import nats
import pytest
from nats.aio.client import Client as NATS
from nats.js.errors import NotFoundError
from prometheus_client import REGISTRY
from waiting import eventually, scaled

from chat_contract import subjects
from chat_contract.bus import ChatRecord, RecordKind
from chat_contract.events import User
from chat_devstack.nats import NatsServer, write_config
from chat_devstack.ports import free_port
from chat_history.config import HistorySettings
from chat_history.service import HistoryComponent
from chat_kit.bus import publish_durable
from chat_kit.runtime import Runtime
from chat_kit.settings import CommonSettings

pytestmark = pytest.mark.integration

ANN = User(id="u_ann", name="ann")
TS = "2025-06-01T12:00:00.000Z"
_DENY = '"$JS.API.STREAM.MSG.DELETE.>"'


def _authorization(deny_delete: bool) -> str:
    """Two users: ``history`` (message deletes refused while ``deny_delete``)
    and ``tester`` (everything)."""
    deny = f", deny: [{_DENY}]" if deny_delete else ""
    return f"""
authorization {{
  users = [
    {{user: history, password: hpw, permissions: {{publish: {{allow: [">"]{deny}}},
                                                   subscribe: {{allow: [">"]}}}}}},
    {{user: tester, password: tpw}}
  ]
}}
"""


@pytest.fixture
def server(tmp_path: Path) -> Iterator[NatsServer]:
    nats_server = NatsServer.start(free_port(), tmp_path / "nats",
                                   extra_config=_authorization(deny_delete=True))
    try:
        yield nats_server
    finally:
        nats_server.stop()


def _allow_deletes(server: NatsServer) -> None:
    """Grant history its deletes: rewrite the config and reload it (SIGHUP)."""
    server.extra_config = _authorization(deny_delete=False)
    write_config(server.store_dir, server.config_text())
    proc = server._proc  # the child process this fixture started
    assert proc is not None
    os.kill(proc.pid, signal.SIGHUP)


@contextlib.asynccontextmanager
async def history(url: str, db_url: str) -> AsyncIterator[HistoryComponent]:
    common = CommonSettings(nats_url=url, log_level="WARNING", log_format="text",
                            request_timeout=scaled(5.0), stream_replicas=1, host="127.0.0.1")
    settings = HistorySettings(common=common, port=0, database_url=db_url, batch=500,
                               linger=0.01, catchup_timeout=1.0)
    nc = await nats.connect(url, user="history", password="hpw")
    rt = Runtime("history-erasure-test", common, nc)
    component = HistoryComponent(settings)
    await component.start(rt)
    try:
        yield component
    finally:
        rt.stopping.set()
        await component.stop()
        await nc.drain()


async def _publish(nc: NATS, room: str, msg_id: str, kind: RecordKind,
                   text: str | None) -> int:
    record = ChatRecord(room=room, msg_id=msg_id, sender=ANN, ts=TS, kind=kind, text=text)
    ack = await publish_durable(nc, subjects.room_subject(room), msgspec.json.encode(record),
                                scaled(5.0))
    return ack.seq


async def _deleted_in_db(db_url: str, msg_id: str) -> bool:
    conn = await asyncpg.connect(db_url)
    try:
        deleted: bool | None = await conn.fetchval(
            "SELECT deleted FROM history.messages WHERE msg_id = $1 AND kind = 'message'",
            msg_id)
    finally:
        await conn.close()
    return bool(deleted)


async def _in_stream(nc: NATS, seq: int) -> bool:
    try:
        await nc.jetstream().get_msg(subjects.CHAT_STREAM, seq, direct=True)
    except NotFoundError:
        return False
    return True


async def _erased(nc: NATS, seq: int) -> bool:
    return not await _in_stream(nc, seq)


def _erase_errors() -> float:
    return REGISTRY.get_sample_value("chat_history_stream_erase_errors_total") or 0.0


async def _delete_and_fail(nc: NATS, db_url: str) -> tuple[int, int]:
    """Send a message, edit it, delete it; wait until the delete is stored and
    an erasure failed. The stream seqs still holding its text."""
    room, msg_id = "r" + uuid.uuid4().hex[:8], "m_" + uuid.uuid4().hex
    errors = _erase_errors()
    original = await _publish(nc, room, msg_id, "message", "a secret")
    edit = await _publish(nc, room, msg_id, "edit", "a bigger secret")
    await _publish(nc, room, msg_id, "delete", None)
    await eventually(lambda: _deleted_in_db(db_url, msg_id), timeout=10.0,
                     what="the delete stored")
    await eventually(lambda: _erase_errors() > errors, timeout=10.0,
                     what="an erasure attempt refused")
    assert await _in_stream(nc, original) and await _in_stream(nc, edit)
    return original, edit


async def test_a_refused_erasure_is_retried_until_the_text_leaves_the_stream(
        server: NatsServer, db_url: str) -> None:
    nc = await nats.connect(server.url, user="tester", password="tpw")
    try:
        async with history(server.url, db_url):
            original, edit = await _delete_and_fail(nc, db_url)
            _allow_deletes(server)
            # No new delete: the queued erasure is retried until it succeeds.
            for seq in (original, edit):
                await eventually(lambda s=seq: _erased(nc, s), timeout=45.0,
                                 what=f"stream seq {seq} erased")
    finally:
        await nc.drain()


async def test_a_pending_erasure_survives_a_restart(server: NatsServer, db_url: str) -> None:
    nc = await nats.connect(server.url, user="tester", password="tpw")
    try:
        async with history(server.url, db_url):
            original, edit = await _delete_and_fail(nc, db_url)
        _allow_deletes(server)
        # A new process finds the erasure pending in the database and does it.
        async with history(server.url, db_url):
            for seq in (original, edit):
                await eventually(lambda s=seq: _erased(nc, s), timeout=20.0,
                                 what=f"stream seq {seq} erased after the restart")
    finally:
        await nc.drain()
