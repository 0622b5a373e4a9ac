"""Room passwords cost a 64 MiB argon2 hash each: creating password rooms is
paced per user (CHAT_HISTORY_ROOM_PASSWORD_RATE) and bounded by the hashing
pool (CHAT_PASSWORD_HASH_QUEUE), against real NATS, PostgreSQL, auth-service
and history-service (README "Security")."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client as NATS
from waiting import scaled

from chat_auth.config import AuthSettings
from chat_auth.service import AuthService
from chat_contract import subjects
from chat_contract.bus import Credentials, RegisterReply, RoomCreate, RoomReply
from chat_contract.errors import ChatError
from chat_contract.events import User
from chat_history.config import HistorySettings
from chat_history.service import HistoryComponent
from chat_kit.bus import call
from chat_kit.passwords import HashSettings
from chat_kit.runtime import Runtime
from chat_kit.settings import CommonSettings

pytestmark = pytest.mark.integration

TIMEOUT = scaled(10.0)

Start = Callable[..., Awaitable[tuple[NATS, User]]]


@pytest.fixture
async def start(nats_url: str, db_url: str, tmp_path: Path) -> AsyncIterator[Start]:
    """Auth and history Components with the given history settings; a client and a user."""
    stops: list[Callable[[], Awaitable[None]]] = []

    async def begin(**history: Any) -> tuple[NATS, User]:
        common = CommonSettings(nats_url=nats_url, log_level="INFO", log_format="text",
                                request_timeout=scaled(5.0), stream_replicas=1,
                                host="127.0.0.1")
        auth = AuthService(AuthSettings(
            port=0, database_url=db_url, signing_key_pem="", signing_key_file=tmp_path / "k.pem",
            dev_key=True, issuer="chat-auth", audience="chat", access_ttl=900,
            refresh_ttl=3600, reuse_grace=5.0, common=common))
        component = HistoryComponent(HistorySettings(
            common=common, port=0, database_url=db_url, batch=500, linger=0.05,
            catchup_timeout=scaled(3.0), **history))
        for service, role in ((auth, "auth"), (component, "history")):
            nc = await nats.connect(nats_url)
            rt = Runtime(f"{role}-test", common, nc)
            await service.start(rt)

            async def stop(service: Any = service, nc: NATS = nc, rt: Runtime = rt) -> None:
                rt.stopping.set()
                await service.stop()
                await nc.drain()
            stops.append(stop)
        client = await nats.connect(nats_url)

        async def close_client() -> None:
            await client.drain()
        stops.append(close_client)
        reply = await call(client, subjects.AUTH_REGISTER,
                           Credentials(username=f"ann_{uuid.uuid4().hex[:6]}",
                                       password="correct horse battery"),
                           RegisterReply, TIMEOUT)
        return client, reply.user

    yield begin
    for stop in reversed(stops):
        await stop()


async def create_password_rooms(client: NATS, caller: User, n: int) -> Counter[str]:
    """``n`` password rooms at once; the outcomes ("ok" or the error code)."""
    async def one() -> str:
        req = RoomCreate(caller=caller, id="r" + uuid.uuid4().hex[:10], name="Locked",
                         password="open sesame")
        try:
            await call(client, subjects.ROOMS_CREATE, req, RoomReply, TIMEOUT)
        except ChatError as exc:
            assert exc.retry_after is not None and exc.retry_after >= 1, exc
            return exc.code.value
        return "ok"

    return Counter(await asyncio.gather(*(one() for _ in range(n))))


async def test_password_rooms_are_paced_per_user(start: Start) -> None:
    client, ann = await start(room_password_rate=3)
    assert await create_password_rooms(client, ann, 8) == {"ok": 3, "rate_limited": 5}
    # Rooms without a password cost no hash and are not paced by it.
    reply = await call(client, subjects.ROOMS_CREATE,
                       RoomCreate(caller=ann, id="r" + uuid.uuid4().hex[:10], name="Open"),
                       RoomReply, TIMEOUT)
    assert reply.created


async def test_password_rooms_are_bounded_by_the_hashing_pool(start: Start) -> None:
    # No pacing: only the pool's bound (one worker, nothing queued) holds.
    client, ann = await start(room_password_rate=0, hashing=HashSettings(workers=1, queue=0))
    results = await create_password_rooms(client, ann, 8)
    assert results["unavailable"] > 0 and results["ok"] >= 1, results
    assert set(results) == {"ok", "unavailable"}, results
