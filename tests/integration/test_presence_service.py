"""presence-service alone on a real NATS server: aggregation, expiry, restart, two instances.

The service runs in-process (its component, as ``chat-presence`` runs it);
the test plays the gateways by writing live entries into the PRESENCE bucket
and listens on ``presence.<room>`` like a gateway does.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import msgspec
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.kv import KeyValue
from waiting import QUIET, eventually, scaled

from chat_contract import rpc, subjects
from chat_contract.bus import MembersReply, MembersRequest, PresenceEntry, PresenceNotice
from chat_contract.errors import ChatError, ErrorCode
from chat_contract.events import User
from chat_kit import bus
from chat_kit.runtime import Runtime
from chat_kit.settings import CommonSettings
from chat_presence.config import PresenceSettings
from chat_presence.service import PresenceService

pytestmark = pytest.mark.integration

ANN = User(id="u_ann", name="ann")
BOB = User(id="u_bob", name="bob")


def settings(nats_url: str, ttl: int = 2, lease: int = 1) -> PresenceSettings:
    common = CommonSettings(nats_url=nats_url, log_level="INFO", log_format="text",
                            request_timeout=2.0, stream_replicas=1, host="127.0.0.1")
    return PresenceSettings(common=common, port=0, ttl=ttl, lease=lease, members_wait=1.0)


@asynccontextmanager
async def running(nats_url: str, **kw: int) -> AsyncIterator[PresenceService]:
    nc = await bus.connect(nats_url, "presence-test")
    rt = Runtime("presence-test", settings(nats_url).common, nc)
    service = PresenceService(settings(nats_url, **kw))
    await service.start(rt)
    try:
        yield service
    finally:
        rt.stopping.set()
        await service.stop()
        await nc.drain()


class Gateway:
    """Plays a gateway: live entries in, notices out."""

    def __init__(self, nc: NATS, kv: KeyValue) -> None:
        self.nc = nc
        self.kv = kv
        self.notices: list[PresenceNotice] = []

    async def listen(self, room: str) -> None:
        async def on(msg: Msg) -> None:
            self.notices.append(msgspec.json.decode(msg.data, type=PresenceNotice))

        await self.nc.subscribe(subjects.presence_subject(room), cb=on)
        await bus.sync(self.nc)

    async def put(self, room: str, user: User, session: str) -> int:
        value = msgspec.json.encode(PresenceEntry(user=user, node="gw-test"))
        return await self.kv.put(subjects.presence_key(room, user.id, session), value)

    async def delete(self, room: str, user: User, session: str) -> None:
        await self.kv.delete(subjects.presence_key(room, user.id, session))

    async def members(self, room: str, min_rev: int = 0) -> list[User]:
        reply = await bus.request(self.nc, rpc.PRESENCE_MEMBERS,
                                  MembersRequest(room=room, min_rev=min_rev), scaled(5))
        return reply.members

    def seen(self) -> list[tuple[str, str]]:
        return [(n.event, n.user.id) for n in self.notices]


@asynccontextmanager
async def gateway(nats_url: str) -> AsyncIterator[Gateway]:
    nc = await bus.connect(nats_url, "fake-gateway")
    try:
        kv = await nc.jetstream().key_value(subjects.PRESENCE_BUCKET)
        yield Gateway(nc, kv)
    finally:
        await nc.drain()


def room_id() -> str:
    return "p-" + uuid.uuid4().hex[:8]


async def test_one_join_and_one_leave_per_user_across_sessions(nats_url: str) -> None:
    room = room_id()
    async with running(nats_url), gateway(nats_url) as gw:
        await gw.listen(room)
        rev = await gw.put(room, ANN, "s_1")
        # The joiner's own write is reflected, whatever the watcher's lag.
        assert await gw.members(room, min_rev=rev) == [ANN]
        await eventually(lambda: gw.seen() == [("join", ANN.id)])
        rev = await gw.put(room, ANN, "s_2")  # a second tab, maybe on another node
        rev = await gw.put(room, BOB, "s_3")
        assert await gw.members(room, min_rev=rev) == [ANN, BOB]
        await eventually(lambda: len(gw.notices) == 2)
        await gw.delete(room, ANN, "s_1")
        await asyncio.sleep(QUIET)  # a negative check: no leave, ann still has s_2
        assert gw.seen() == [("join", ANN.id), ("join", BOB.id)]
        await gw.delete(room, ANN, "s_2")
        started = time.monotonic()
        await eventually(lambda: len(gw.notices) == 3, what="ann's leave")
        assert time.monotonic() - started < scaled(2.0) and gw.seen()[-1] == ("leave", ANN.id)
        assert await gw.members(room) == [BOB]
        assert gw.notices[0].room == room and gw.notices[0].ts.endswith("Z")
        assert await gw.members(room_id()) == []


async def test_unrefreshed_entries_expire_into_leave(nats_url: str) -> None:
    room = room_id()
    async with running(nats_url, ttl=2), gateway(nats_url) as gw:
        await gw.listen(room)
        await gw.put(room, ANN, "s_dead")  # a gateway that then dies: no refresh
        for _ in range(4):  # bob's gateway keeps refreshing, well within the TTL of 2 s
            await gw.put(room, BOB, "s_live")
            await asyncio.sleep(0.6)  # the refresh period: the timing under test
        await eventually(lambda: ("leave", ANN.id) in gw.seen(), 2 + 5, "ann's expiry")
        assert ("leave", BOB.id) not in gw.seen()
        assert await gw.members(room) == [BOB]


async def test_restart_keeps_state_and_announces_what_changed_meanwhile(nats_url: str) -> None:
    room = room_id()
    async with running(nats_url, ttl=30), gateway(nats_url) as gw:
        await gw.listen(room)
        await gw.put(room, ANN, "s_a")
        await gw.put(room, BOB, "s_b")
        await eventually(lambda: len(gw.notices) == 2)
    async with gateway(nats_url) as outside:
        # Down: nobody leads. Bob leaves, carol comes; ann stays.
        await outside.listen(room)
        carol = User(id="u_carol", name="carol")
        await outside.delete(room, BOB, "s_b")
        await outside.put(room, carol, "s_c")
        async with running(nats_url, ttl=30) as service:
            await eventually(lambda: len(outside.notices) == 2)
            await asyncio.sleep(QUIET)  # a negative check: nothing more is announced
            assert sorted(outside.seen()) == [("join", carol.id), ("leave", BOB.id)]
            assert await outside.members(room) == [ANN, carol]
            assert service.leading


async def test_two_instances_publish_each_event_once_and_fail_over(nats_url: str) -> None:
    room = room_id()
    async with running(nats_url, lease=1) as first, gateway(nats_url) as gw:
        await gw.listen(room)
        async with running(nats_url, lease=1) as second:
            assert first.leading and not second.leading
            for i in range(5):
                await gw.put(room, ANN, f"s_{i}")
                await gw.put(room, BOB, f"s_{i}")
                await gw.delete(room, ANN, f"s_{i}")
            await eventually(lambda: len(gw.notices) >= 4)
            await asyncio.sleep(QUIET)  # a negative check: no event published twice
            events = gw.seen()
            # Each transition once: ann joins and leaves up to 5 times, bob joins once.
            assert events.count(("join", BOB.id)) == 1
            assert events.count(("join", ANN.id)) == events.count(("leave", ANN.id))
            # Both instances answer queries, consistently.
            assert [u.id for u in second.state.members(room)] == [BOB.id]
            await first.stop()  # hands over the lease
            await eventually(lambda: second.leading, 3.0, "the second instance leading")
            before = len(gw.notices)
            await gw.put(room, ANN, "s_late")
            await eventually(lambda: len(gw.notices) == before + 1)
            assert gw.seen()[-1] == ("join", ANN.id)


async def test_members_request_errors(nats_url: str) -> None:
    async with running(nats_url), gateway(nats_url) as gw:
        with pytest.raises(ChatError) as bad:
            # the wrong payload type on purpose: what a confused client sends
            await bus.call(gw.nc, rpc.PRESENCE_MEMBERS.subject, MembersReply(members=[]),
                           MembersReply, scaled(5))
        assert bad.value.code == ErrorCode.BAD_REQUEST
        with pytest.raises(ChatError) as late:  # a revision the bucket never reaches
            await gw.members(room_id(), min_rev=10**9)
        assert late.value.code == ErrorCode.UNAVAILABLE
