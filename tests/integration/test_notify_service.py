"""notify-service on real NATS, PostgreSQL and HTTP: who gets a webhook, signed how, retried how.

auth, history, presence and notify Components run in-process on one NATS
server and one database for the module; messages reach the stream the way a
gateway publishes them (``ChatRecord`` on ``chat.room.<room>``); presence
entries are written into the PRESENCE bucket the way a gateway writes them.
The webhook receiver is a real HTTP server (starlette under uvicorn on a free
port) that checks nothing itself: it records every request and answers what
the test scripted, and the tests verify signatures and timestamps.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
import nats
import pytest
import uvicorn
from nats.aio.client import Client as NATS
from nats.js.errors import NotFoundError
from servers import nats_server
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from waiting import QUIET, eventually, scaled

from chat_auth.config import AuthSettings
from chat_auth.service import AuthService
from chat_contract import rpc, subjects
from chat_contract.bus import (
    AccessRequest,
    BlockRequest,
    ChatRecord,
    Credentials,
    DmRequest,
    NotifyLevel,
    NotifyLevelRequest,
    OnlineRequest,
    PresenceEntry,
)
from chat_contract.errors import ChatError, ErrorCode
from chat_contract.events import User
from chat_devstack.nats import NatsServer
from chat_devstack.ports import free_port
from chat_history.config import HistorySettings
from chat_history.service import HistoryComponent
from chat_kit import bus
from chat_kit.runtime import Runtime
from chat_kit.settings import CommonSettings
from chat_kit.stream import StreamSettings, partition_of, subject_mapping
from chat_notify.config import NotifySettings
from chat_notify.payload import DeadLetter
from chat_notify.service import NotifyComponent
from chat_notify.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify
from chat_presence.config import PresenceSettings
from chat_presence.service import PresenceService

pytestmark = pytest.mark.integration

SECRET = "integration-" + uuid.uuid4().hex
MAX_ATTEMPTS = 3
TIMEOUT = scaled(5.0)


# --- the receiver -------------------------------------------------------------------


@dataclass
class Hit:
    headers: dict[str, str]
    body: bytes
    status: int
    at: float

    def json(self) -> dict[str, Any]:
        data: dict[str, Any] = msgspec.json.decode(self.body)
        return data

    def signed(self) -> bool:
        return verify(SECRET, self.body, self.headers.get(TIMESTAMP_HEADER.lower()),
                      self.headers.get(SIGNATURE_HEADER.lower()), now=time.time())


@dataclass
class Receiver:
    """Answers the scripted statuses in order (then 200); records every request."""

    hits: list[Hit] = field(default_factory=list)
    script: list[int] = field(default_factory=list)
    url: str = ""

    async def hook(self, request: Request) -> Response:
        body = await request.body()
        status = self.script.pop(0) if self.script else 200
        self.hits.append(Hit({k.lower(): v for k, v in request.headers.items()}, body, status,
                             time.monotonic()))
        return Response(b"{}", status_code=status, media_type="application/json")

    def for_message(self, msg_id: str) -> list[Hit]:
        return [h for h in self.hits if h.json().get("msg_id") == msg_id]


@dataclass
class World:
    nc: NATS
    receiver: Receiver
    notify: NotifyComponent
    users: dict[str, User]

    async def register(self, name: str) -> User:
        reply = await bus.request(self.nc, rpc.AUTH_REGISTER, Credentials(
            username=f"{name}_{uuid.uuid4().hex[:6]}", password="correct horse battery"),
            TIMEOUT)
        return reply.user

    async def dm(self, a: User, b: User) -> str:
        reply = await bus.request(self.nc, rpc.ROOMS_DM, DmRequest(caller=a, user=b.id), TIMEOUT)
        return reply.room.id

    async def group(self, owner: User, *members: User) -> str:
        room = "g-" + uuid.uuid4().hex[:10]
        for user in (owner, *members):  # a join of an unknown public id creates it
            await bus.request(self.nc, rpc.ROOMS_ACCESS, AccessRequest(caller=user, room=room),
                              TIMEOUT)
        return room

    async def send(self, room: str, sender: User, text: str = "hello",
                   mentions: list[str] | None = None) -> str:
        msg_id = "m_" + uuid.uuid4().hex
        record = ChatRecord(room=room, msg_id=msg_id, sender=sender,
                            ts="2026-12-07T12:00:00.000Z", text=text, mentions=mentions or [])
        await bus.publish_durable(self.nc, subjects.room_subject(room),
                                  msgspec.json.encode(record), TIMEOUT)
        return msg_id

    async def level(self, caller: User, room: str, level: NotifyLevel | None = None
                    ) -> tuple[str, bool]:
        reply = await bus.request(self.nc, rpc.NOTIFY_LEVEL, NotifyLevelRequest(
            caller=caller, room=room, level=level), TIMEOUT)
        return reply.level, reply.default

    async def online(self, user: User, room: str = "lobby") -> str:
        """A live presence entry, as a gateway writes it; returns its key."""
        kv = await self.nc.jetstream().key_value(subjects.PRESENCE_BUCKET)
        key = subjects.presence_key(room, user.id, "s_" + uuid.uuid4().hex[:8])
        await kv.put(key, msgspec.json.encode(PresenceEntry(user=user, node="gw-test")))
        await eventually(lambda: self._is_online(user), what=f"{user.name} online")
        return key

    async def offline(self, key: str, user: User) -> None:
        kv = await self.nc.jetstream().key_value(subjects.PRESENCE_BUCKET)
        await kv.delete(key)
        await eventually(lambda: self._not_online(user), what=f"{user.name} offline")

    async def _is_online(self, user: User) -> bool:
        reply = await bus.request(self.nc, rpc.PRESENCE_ONLINE, OnlineRequest(users=[user.id]),
                                  TIMEOUT)
        return reply.online == [user.id]

    async def _not_online(self, user: User) -> bool:
        return not await self._is_online(user)

    async def dead_letter(self, user: User) -> DeadLetter:
        js = self.nc.jetstream()
        msg = await js.get_last_msg(subjects.NOTIFY_DEAD_STREAM,
                                    subjects.notify_dead_subject(user.id))
        assert msg.data is not None
        return msgspec.json.decode(msg.data, type=DeadLetter)

    async def quiet(self, msg_id: str) -> None:
        """Nothing for ``msg_id`` reaches the receiver (and the record was handled)."""
        await asyncio.sleep(QUIET)
        assert self.receiver.for_message(msg_id) == []


@contextlib.contextmanager
def nats_with_partitions(store: Path, partitions: int) -> Iterator[str]:
    """A NATS server with the partition mapping (chat_kit.stream.subject_mapping)."""
    server = NatsServer(free_port(), store.resolve(), mappings=subject_mapping(partitions))
    server.spawn()
    server.wait_ready()
    try:
        yield server.url
    finally:
        server.stop()


@contextlib.asynccontextmanager
async def running_world(tmp: Path, pg_url: str, partitions: int = 1) -> AsyncIterator[World]:
    """auth, history, presence and notify on one NATS server and a new database,
    notify's webhook pointed at a fresh receiver."""
    db_name = "notify_" + uuid.uuid4().hex[:10]
    conn = await asyncpg.connect(pg_url)
    await conn.execute(f'CREATE DATABASE "{db_name}"')
    await conn.close()
    db_url = pg_url.rpartition("/")[0] + "/" + db_name
    receiver = Receiver()
    port = free_port()
    receiver.url = f"http://127.0.0.1:{port}/hook"
    server = uvicorn.Server(uvicorn.Config(
        Starlette(routes=[Route("/hook", receiver.hook, methods=["POST"])]),
        host="127.0.0.1", port=port, log_config=None, access_log=False, lifespan="off"))
    server_task = asyncio.create_task(server.serve())
    await eventually(lambda: server.started, what="the receiver listening")
    layout = StreamSettings(partitions=partitions)
    servers = (nats_server(tmp / "nats") if partitions == 1
               else nats_with_partitions(tmp / "nats", partitions))
    with servers as url:
        common = CommonSettings(nats_url=url, log_level="INFO", log_format="text",
                                request_timeout=TIMEOUT, stream_replicas=1, host="127.0.0.1")
        components: list[tuple[Any, Runtime]] = []
        auth = AuthService(AuthSettings(
            port=0, database_url=db_url, signing_key_pem="", signing_key_file=tmp / "key.pem",
            dev_key=True, issuer="chat-auth", audience="chat", access_ttl=900,
            refresh_ttl=3600, reuse_grace=5.0, common=common, register_per_address=0,
            register_rate=0))
        history = HistoryComponent(HistorySettings(
            common=common, port=0, database_url=db_url, batch=500, linger=0.05,
            catchup_timeout=TIMEOUT), stream=layout)
        presence = PresenceService(PresenceSettings(common=common, port=0, ttl=30, lease=1,
                                                    members_wait=1.0))
        notify = NotifyComponent(NotifySettings(
            common=common, database_url=db_url, webhook_url=receiver.url,
            webhook_secret=SECRET, webhook_timeout=scaled(2.0), max_attempts=MAX_ATTEMPTS,
            backoff_base=0.05, backoff_cap=0.2, cache_ttl=0.0), stream=layout)
        nc = await nats.connect(url)
        try:
            for name, component in (("auth", auth), ("history", history),
                                    ("presence", presence), ("notify", notify)):
                rt = Runtime(f"{name}-test", common, await bus.connect(url, f"{name}-test"))
                await component.start(rt)
                components.append((component, rt))
            await eventually(notify.is_ready, what="notify consuming")
            yield World(nc, receiver, notify, {})
        finally:
            for component, rt in reversed(components):
                rt.stopping.set()
                await component.stop()
                await rt.nc.drain()
            await nc.drain()
    server.should_exit = True
    await server_task


@pytest.fixture(scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory, pg_url: str) -> AsyncIterator[World]:
    async with running_world(tmp_path_factory.mktemp("notify"), pg_url) as w:
        yield w


@pytest.fixture(autouse=True)
def _fresh_script(world: World) -> None:
    world.receiver.script.clear()


async def people(world: World, *names: str) -> list[User]:
    return [await world.register(n) for n in names]


# --- delivery ------------------------------------------------------------------------


async def test_offline_dm_recipient_gets_one_signed_webhook(world: World) -> None:
    ann, bob = await people(world, "ann", "bob")
    room = await world.dm(ann, bob)
    msg_id = await world.send(room, ann, "x" * 300)
    hits = await eventually(lambda: world.receiver.for_message(msg_id), what="the webhook")
    await asyncio.sleep(QUIET)
    (hit,) = world.receiver.for_message(msg_id)  # one, and never to the sender
    assert hit.signed(), hit.headers
    assert abs(int(hit.headers["x-chat-timestamp"]) - time.time()) < scaled(30)
    assert hit.headers["content-type"] == "application/json"
    assert hit.headers["x-chat-delivery"] == f"{msg_id}:{bob.id}"
    body = hits[0].json()
    assert list(body) == ["v", "type", "user", "room", "msg_id", "seq", "sender", "text", "ts"]
    assert body["v"] == 1 and body["type"] == "dm" and body["room"] == room
    assert body["user"] == {"id": bob.id, "name": bob.name}
    assert body["sender"] == {"id": ann.id, "name": ann.name}
    assert body["seq"] > 0 and body["ts"] == "2026-12-07T12:00:00.000Z"
    assert len(body["text"]) == 200 and body["text"].endswith("…")
    # A tampered body or another key would not verify (the receiver's check is real).
    assert not verify("wrong", hit.body, hit.headers["x-chat-timestamp"],
                      hit.headers["x-chat-signature"], now=time.time())


async def test_no_webhook_for_a_user_online_anywhere(world: World) -> None:
    ann, bob = await people(world, "ann", "bob")
    room = await world.dm(ann, bob)
    # bob is in another room on some gateway: not in the DM, but online.
    key = await world.online(bob, room="elsewhere")
    online_msg = await world.send(room, ann, "are you there?")
    await world.quiet(online_msg)
    await world.offline(key, bob)
    later = await world.send(room, ann, "now?")
    await eventually(lambda: world.receiver.for_message(later), what="the webhook once offline")
    assert world.receiver.for_message(online_msg) == []


async def test_retried_after_500s_then_delivered_once(world: World) -> None:
    ann, bob = await people(world, "ann", "bob")
    room = await world.dm(ann, bob)
    world.receiver.script[:] = [500, 502]
    msg_id = await world.send(room, ann, "retry me")
    await eventually(lambda: len(world.receiver.for_message(msg_id)) == 3, what="3 attempts")
    await asyncio.sleep(QUIET)
    hits = world.receiver.for_message(msg_id)
    assert [h.status for h in hits] == [500, 502, 200]
    assert all(h.signed() for h in hits)
    # The same notification each time: same body, same idempotency key.
    assert len({h.body for h in hits}) == 1
    assert {h.headers["x-chat-delivery"] for h in hits} == {f"{msg_id}:{bob.id}"}
    # Waited between attempts (full jitter can be ~0, so only the order is checked).
    assert hits[0].at <= hits[1].at <= hits[2].at


async def test_dead_lettered_after_the_last_attempt(world: World) -> None:
    ann, bob = await people(world, "ann", "bob")
    room = await world.dm(ann, bob)
    world.receiver.script[:] = [503] * MAX_ATTEMPTS
    msg_id = await world.send(room, ann, "nobody home")

    async def dead() -> DeadLetter | None:
        try:
            return await world.dead_letter(bob)
        except NotFoundError:
            return None

    letter = await eventually(dead, what="the dead letter")
    assert len(world.receiver.for_message(msg_id)) == MAX_ATTEMPTS
    assert letter.notification.msg_id == msg_id and letter.notification.user.id == bob.id
    assert letter.notification.type == "dm" and letter.notification.text == "nobody home"
    assert (letter.reason, letter.status, letter.attempts) == ("http_5xx", 503, MAX_ATTEMPTS)
    await asyncio.sleep(QUIET)
    assert len(world.receiver.for_message(msg_id)) == MAX_ATTEMPTS  # and no more


async def test_4xx_is_not_retried(world: World) -> None:
    ann, bob = await people(world, "ann", "bob")
    room = await world.dm(ann, bob)
    world.receiver.script[:] = [400, 500, 500]
    msg_id = await world.send(room, ann, "refused")
    await eventually(lambda: world.receiver.for_message(msg_id), what="the attempt")

    async def dead() -> DeadLetter | None:
        try:
            letter = await world.dead_letter(bob)
        except NotFoundError:
            return None
        return letter if letter.notification.msg_id == msg_id else None

    letter = await eventually(dead, what="the dead letter")
    assert (letter.reason, letter.status, letter.attempts) == ("http_4xx", 400, 1)
    await asyncio.sleep(QUIET)
    assert [h.status for h in world.receiver.for_message(msg_id)] == [400]
    world.receiver.script.clear()


# --- who is notified ------------------------------------------------------------------


async def test_mentions_from_the_record_and_never_the_sender(world: World) -> None:
    ann, bob, cat, dan = await people(world, "ann", "bob", "cat", "dan")
    room = await world.group(ann, bob, cat, dan)
    plain = await world.send(room, ann, "no mention")
    msg_id = await world.send(room, ann, "@bob @ann", mentions=[bob.id, ann.id])
    await eventually(lambda: world.receiver.for_message(msg_id), what="the mention")
    await world.quiet(plain)  # a group message without a mention notifies nobody
    hits = world.receiver.for_message(msg_id)
    assert [(h.json()["type"], h.json()["user"]["id"]) for h in hits] == [("mention", bob.id)]
    # Mentioned in a DM: one notification, a mention.
    dm = await world.dm(cat, dan)
    both = await world.send(dm, cat, "@dan look", mentions=[dan.id])
    await eventually(lambda: world.receiver.for_message(both), what="the DM mention")
    await asyncio.sleep(QUIET)
    assert [h.json()["type"] for h in world.receiver.for_message(both)] == ["mention"]


async def test_levels_none_mentions_all(world: World) -> None:
    ann, bob, cat = await people(world, "ann", "bob", "cat")
    dm = await world.dm(ann, bob)
    room = await world.group(ann, bob, cat)
    # Defaults: DMs all, other rooms mentions; reading one says it is the default.
    assert await world.level(bob, dm) == ("all", True)
    assert await world.level(bob, room) == ("mentions", True)

    assert await world.level(bob, dm, "mentions") == ("mentions", False)
    assert await world.level(bob, dm) == ("mentions", False)
    quiet_dm = await world.send(dm, ann, "plain DM")
    mention = await world.send(dm, ann, "@bob", mentions=[bob.id])
    await eventually(lambda: world.receiver.for_message(mention), what="the mention")
    await world.quiet(quiet_dm)

    await world.level(bob, dm, "none")
    silenced = await world.send(dm, ann, "@bob hello?", mentions=[bob.id])
    await world.level(bob, room, "none")
    silenced_room = await world.send(room, ann, "@bob", mentions=[bob.id])
    heard = await world.send(room, ann, "@cat", mentions=[cat.id])  # cat's level: default
    await eventually(lambda: world.receiver.for_message(heard), what="cat's mention")
    await world.quiet(silenced)
    assert world.receiver.for_message(silenced_room) == []

    await world.level(bob, dm, "all")
    again = await world.send(dm, ann, "plain again")
    hits = await eventually(lambda: world.receiver.for_message(again), what="the DM")
    assert hits[0].json()["type"] == "dm"


async def test_level_refusals(world: World) -> None:
    ann, bob, eve = await people(world, "ann", "bob", "eve")
    dm = await world.dm(ann, bob)
    room = await world.group(ann, bob)
    for target in (dm, room, "g-" + uuid.uuid4().hex[:10]):  # someone's DM, not joined, unknown
        with pytest.raises(ChatError) as refused:
            await world.level(eve, target, "none")
        assert refused.value.code == ErrorCode.NOT_FOUND, target
    with pytest.raises(ChatError) as bad:
        await world.level(eve, "Bad Room!", "none")
    assert bad.value.code == ErrorCode.BAD_REQUEST
    assert await world.level(ann, room) == ("mentions", True)  # nothing stored by the refusals


async def test_blockers_are_not_notified(world: World) -> None:
    ann, bob = await people(world, "ann", "bob")
    room = await world.group(ann, bob)
    await bus.request(world.nc, rpc.ROOMS_BLOCK, BlockRequest(caller=bob, user=ann.id,
                                                              block=True), TIMEOUT)
    blocked = await world.send(room, ann, "@bob", mentions=[bob.id])
    await world.quiet(blocked)



async def test_every_partition_is_consumed(tmp_path: Path, pg_url: str) -> None:
    """CHAT_STREAM_PARTITIONS=2: one durable per partition stream, rooms on both notify."""
    async with running_world(tmp_path, pg_url, partitions=2) as w:
        assert [c.name for c in w.notify.consumers] == ["CHAT_0", "CHAT_1"]
        ann, bob = await people(w, "ann", "bob")
        rooms: dict[int, str] = {}
        while len(rooms) < 2:
            room = "g-" + uuid.uuid4().hex[:10]
            rooms.setdefault(partition_of(room, 2), room)
        sent = []
        for room in rooms.values():
            for user in (ann, bob):
                await bus.request(w.nc, rpc.ROOMS_ACCESS, AccessRequest(caller=user, room=room),
                                  TIMEOUT)
            sent.append(await w.send(room, ann, "@bob", mentions=[bob.id]))
        for msg_id in sent:
            hits = await eventually(lambda m=msg_id: w.receiver.for_message(m),
                                    what=f"the webhook of {msg_id}")
            assert hits[0].signed() and hits[0].json()["user"]["id"] == bob.id
        assert sorted(c.handled > 0 for c in w.notify.consumers) == [True, True]


async def test_online_query_is_bounded(world: World) -> None:
    with pytest.raises(ChatError) as refused:
        await bus.request(world.nc, rpc.PRESENCE_ONLINE,
                          OnlineRequest(users=[f"u_{i}" for i in range(101)]), TIMEOUT)
    assert refused.value.code == ErrorCode.BAD_REQUEST
    reply = await bus.request(world.nc, rpc.PRESENCE_ONLINE,
                              OnlineRequest(users=["u_nobody", "u_nobody"]), TIMEOUT)
    assert reply.online == []
