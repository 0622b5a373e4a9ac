"""history-service's rooms domain (svc.rooms.*) against real NATS, PostgreSQL and auth-service.

A real auth Component (user lookups for invites, DMs and blocks) and a real
history Component run in-process; every request goes over NATS the way a
gateway sends it (``chat_kit.bus.call``). Messages reach storage the real way:
``ChatRecord``s published to the CHAT stream, stored by the history consumer.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import msgspec
import nats
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from chat_auth.config import AuthSettings
from chat_auth.service import AuthService
from chat_contract import subjects
from chat_contract.bus import (
    AccessReply,
    AccessRequest,
    ArchiveNotice,
    BlockRequest,
    BlocksNotice,
    BlocksReply,
    BlocksRequest,
    ChangeGrant,
    ChangeRequest,
    ChatRecord,
    Credentials,
    DmRequest,
    HistoryReply,
    HistoryRequest,
    MemberChange,
    MemberNotice,
    ReadNotice,
    ReadReply,
    ReadRequest,
    RegisterReply,
    RoomCreate,
    RoomListRequest,
    RoomRef,
    RoomReply,
    RoomsReply,
    RoomState,
    RoomView,
    SearchReply,
    SearchRequest,
)
from chat_contract.errors import ChatError, ErrorCode
from chat_contract.events import User
from chat_history.config import HistorySettings
from chat_history.room_rules import dm_room_id
from chat_history.rooms_store import RoomsStore
from chat_history.service import HistoryComponent
from chat_kit.bus import call, publish_durable
from chat_kit.db import create_pool, migrate
from chat_kit.runtime import Runtime
from chat_kit.settings import CommonSettings

pytestmark = pytest.mark.integration

T = TypeVar("T", bound=msgspec.Struct)
UNIT = float(os.environ.get("CHAT_TEST_TIME_FACTOR", "1"))
TIMEOUT = 10.0 * UNIT
TS = "2025-06-01T12:00:00.123Z"


@dataclass
class Stack:
    nc: NATS
    db_url: str
    ann: User
    bob: User
    cat: User
    dan: User
    history: HistoryComponent


async def _register(nc: NATS, name: str) -> User:
    reply = await call(nc, subjects.AUTH_REGISTER,
                       Credentials(username=name, password="correct horse battery"),
                       RegisterReply, TIMEOUT)
    return reply.user


@pytest.fixture
async def stack(nats_url: str, db_url: str, tmp_path: Path) -> AsyncIterator[Stack]:
    async with running_stack(nats_url, db_url, tmp_path) as s:
        yield s


@contextlib.asynccontextmanager
async def running_stack(nats_url: str, db_url: str, tmp_path: Path,
                        **history: Any) -> AsyncIterator[Stack]:
    """auth and history Components on these servers; ``history`` overrides
    HistorySettings fields (limits)."""
    common = CommonSettings(nats_url=nats_url, log_level="INFO", log_format="text",
                            request_timeout=5.0 * UNIT, stream_replicas=1, host="127.0.0.1")
    auth_settings = AuthSettings(
        port=0, database_url=db_url, signing_key_pem="", signing_key_file=tmp_path / "key.pem",
        dev_key=True, issuer="chat-auth", audience="chat", access_ttl=900, refresh_ttl=3600,
        reuse_grace=5.0, common=common)
    history_settings = HistorySettings(common=common, port=0, database_url=db_url, batch=500,
                                       linger=0.05, catchup_timeout=3.0 * UNIT, **history)
    auth_nc, history_nc, nc = [await nats.connect(nats_url) for _ in range(3)]
    auth_rt = Runtime("auth-test", common, auth_nc)
    history_rt = Runtime("history-test", common, history_nc)
    auth = AuthService(auth_settings)
    history = HistoryComponent(history_settings)
    await auth.start(auth_rt)
    await history.start(history_rt)
    try:
        suffix = uuid.uuid4().hex[:6]
        users = await asyncio.gather(*(_register(nc, f"{n}_{suffix}")
                                       for n in ("ann", "bob", "cat", "dan")))
        ann, bob, cat, dan = users
        yield Stack(nc, db_url, ann, bob, cat, dan, history)
    finally:
        history_rt.stopping.set()
        auth_rt.stopping.set()
        await history.stop()
        await auth.stop()
        for conn in (nc, history_nc, auth_nc):
            await conn.drain()


# --- helpers ------------------------------------------------------------------


async def rpc(nc: NATS, subject: str, req: msgspec.Struct, reply: type[T]) -> T:
    return await call(nc, subject, req, reply, TIMEOUT)


async def fails(code: ErrorCode, request: Awaitable[object]) -> ChatError:
    with pytest.raises(ChatError) as info:
        await request
    assert info.value.code is code, info.value
    return info.value


def new_room() -> str:
    return "r" + uuid.uuid4().hex[:10]


async def create(s: Stack, caller: User, room: str | None = None, **kw: object) -> RoomReply:
    req = RoomCreate(caller=caller, id=room, name=kw.pop("name", "Room"), **kw)  # type: ignore[arg-type]
    return await rpc(s.nc, subjects.ROOMS_CREATE, req, RoomReply)


async def join(s: Stack, caller: User, room: str, password: str | None = None,
               create: bool = True) -> AccessReply:
    return await rpc(s.nc, subjects.ROOMS_ACCESS,
                     AccessRequest(caller=caller, room=room, password=password, create=create),
                     AccessReply)


async def member(s: Stack, caller: User, room: str, user: str, add: bool) -> RoomReply:
    return await rpc(s.nc, subjects.ROOMS_MEMBER,
                     MemberChange(caller=caller, room=room, user=user, add=add), RoomReply)


async def get(s: Stack, caller: User, room: str) -> RoomReply:
    return await rpc(s.nc, subjects.ROOMS_GET, RoomRef(caller=caller, room=room), RoomReply)


async def archive(s: Stack, caller: User, room: str) -> RoomReply:
    return await rpc(s.nc, subjects.ROOMS_ARCHIVE, RoomRef(caller=caller, room=room), RoomReply)


async def mine(s: Stack, caller: User) -> dict[str, RoomView]:
    reply = await rpc(s.nc, subjects.ROOMS_LIST, RoomListRequest(caller=caller), RoomsReply)
    return {r.id: r for r in reply.rooms}


async def dm(s: Stack, caller: User, user: str) -> RoomReply:
    return await rpc(s.nc, subjects.ROOMS_DM, DmRequest(caller=caller, user=user), RoomReply)


async def block(s: Stack, caller: User, user: str, on: bool = True) -> BlocksReply:
    return await rpc(s.nc, subjects.ROOMS_BLOCK, BlockRequest(caller=caller, user=user, block=on),
                     BlocksReply)


async def change(s: Stack, caller: User, room: str, msg_id: str, action: str) -> ChangeGrant:
    req = ChangeRequest(caller=caller, room=room, msg_id=msg_id, action=action)  # type: ignore[arg-type]
    return await rpc(s.nc, subjects.ROOMS_CHANGE, req, ChangeGrant)


async def read(s: Stack, caller: User, room: str, seq: int) -> ReadReply:
    return await rpc(s.nc, subjects.ROOMS_READ, ReadRequest(caller=caller, room=room, seq=seq),
                     ReadReply)


async def search(s: Stack, caller: User, q: str, **kw: object) -> SearchReply:
    return await rpc(s.nc, subjects.ROOMS_SEARCH, SearchRequest(caller=caller, q=q, **kw),  # type: ignore[arg-type]
                     SearchReply)


async def send(s: Stack, room: str, sender: User, text: str | None, *, kind: str = "message",
               msg_id: str | None = None, reply_to: str | None = None) -> tuple[str, int]:
    """Publish like a gateway does; wait until stored. Returns (msg_id, seq)."""
    msg_id = msg_id or "m_" + uuid.uuid4().hex
    record = ChatRecord(room=room, msg_id=msg_id, sender=sender, ts=TS, kind=kind,  # type: ignore[arg-type]
                        text=text, reply_to=reply_to)
    ack = await publish_durable(s.nc, subjects.room_subject(room), msgspec.json.encode(record),
                                TIMEOUT)
    await stored(s, room, ack.seq)
    return msg_id, ack.seq


async def until(check: Callable[[], Awaitable[int] | int], what: str, want: int = 1) -> None:
    """Wait until ``check()`` reaches ``want`` (a deadline, no fixed sleep)."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        got = check()
        value = await got if inspect.isawaitable(got) else got
        if value >= want:
            return
        assert time.monotonic() < deadline, f"timed out: {what} ({value} of {want})"
        await asyncio.sleep(0.01)


async def lock_waiters(db_url: str) -> int:
    """Backends of this database waiting for a lock (asked on a connection of its
    own: pg_stat_activity is a snapshot per transaction)."""
    conn = await asyncpg.connect(db_url)
    try:
        n: int = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event_type = 'Lock'")
    finally:
        await conn.close()
    return n


async def stored(s: Stack, room: str, seq: int) -> None:
    await rpc(s.nc, subjects.HISTORY_MESSAGES, HistoryRequest(room=room, min_seq=seq, limit=1),
              HistoryReply)


class Notices:
    """Collects what arrives on a subject."""

    def __init__(self) -> None:
        self.items: list[bytes] = []
        self.arrived = asyncio.Event()

    async def cb(self, msg: Msg) -> None:
        self.items.append(msg.data)
        self.arrived.set()

    async def next(self) -> bytes:
        while not self.items:
            self.arrived.clear()
            await asyncio.wait_for(self.arrived.wait(), TIMEOUT)
        return self.items.pop(0)

    async def none_before_marker(self, nc: NATS, subject: str) -> None:
        """Nothing arrived before a marker published now. A notice the service
        sent before its reply reaches the server before our marker, and one
        server delivers both to us in that order: no sleep needed."""
        marker = b"marker-" + uuid.uuid4().hex.encode()
        await nc.publish(subject, marker)
        assert await self.next() == marker


async def listen(nc: NATS, subject: str) -> Notices:
    notices = Notices()
    await nc.subscribe(subject, cb=notices.cb)
    await nc.flush()
    return notices


_states: msgspec.json.Decoder[RoomState] = msgspec.json.Decoder(RoomState)


def state(data: bytes) -> RoomState:
    return _states.decode(data)


# --- rooms: create, get, list ----------------------------------------------------


async def test_create_get_and_public_list(stack: Stack) -> None:
    s = stack
    pub = await create(s, s.ann, new_room(), name="  Lobby  ", members=[s.bob.id, s.bob.id])
    view = pub.room
    assert pub.created and view.name == "Lobby" and view.owner == s.ann.id
    assert view.visibility == "public" and not view.password and not view.dm
    assert view.member_count == 2
    assert {(m.id, m.role) for m in view.members or []} == {(s.ann.id, "owner"),
                                                           (s.bob.id, "member")}
    auto = await create(s, s.ann, name="auto id")
    assert auto.room.id.startswith("r-") and len(auto.room.id) == 14
    secret = await create(s, s.ann, new_room(), visibility="private", password="pw")
    assert secret.room.password and secret.room.visibility == "private"
    # The hash never leaves the service, and what is stored is argon2.
    assert b"argon2" not in msgspec.json.encode(secret)
    conn = await asyncpg.connect(s.db_url)
    try:
        stored_hash = await conn.fetchval(
            "SELECT password_hash FROM history.rooms WHERE id = $1", secret.room.id)
    finally:
        await conn.close()
    assert stored_hash.startswith("$argon2id$")

    # Refusals of create.
    await fails(ErrorCode.CONFLICT, create(s, s.bob, pub.room.id))
    await fails(ErrorCode.BAD_REQUEST, create(s, s.ann, "bad id"))
    await fails(ErrorCode.BAD_REQUEST, create(s, s.ann, "x" * 65))
    await fails(ErrorCode.BAD_REQUEST, create(s, s.ann, subjects.DM_PREFIX + "mine"))
    await fails(ErrorCode.BAD_REQUEST, create(s, s.ann, new_room(), name="   "))
    await fails(ErrorCode.BAD_REQUEST, create(s, s.ann, new_room(), name="n" * 101))
    await fails(ErrorCode.BAD_REQUEST, create(s, s.ann, new_room(), password=""))
    await fails(ErrorCode.BAD_REQUEST, create(s, s.ann, new_room(), password="p" * 257))
    await fails(ErrorCode.NOT_FOUND, create(s, s.ann, new_room(), members=["u_nobody"]))
    await fails(ErrorCode.BAD_REQUEST, create(s, s.ann, new_room(), members=["u.bad"]))
    await fails(ErrorCode.BAD_REQUEST,
                create(s, s.ann, new_room(), members=[f"u_{i}" for i in range(101)]))
    await fails(ErrorCode.BAD_REQUEST, create(s, s.ann, new_room(), visibility="secret"))

    # Get: public to anyone, private to members and the owner only.
    assert (await get(s, s.cat, pub.room.id)).room.member_count == 2
    assert (await get(s, s.ann, secret.room.id)).room.members is not None
    # A private room is not there for outsiders: not_found, as for an unknown id.
    await fails(ErrorCode.NOT_FOUND, get(s, s.cat, secret.room.id))
    await fails(ErrorCode.NOT_FOUND, get(s, s.ann, new_room()))
    await fails(ErrorCode.BAD_REQUEST, get(s, s.ann, "bad/id"))

    # The public directory: public, live, non-DM rooms only.
    await dm(s, s.ann, s.bob.id)
    gone = await create(s, s.ann, new_room())
    await archive(s, s.ann, gone.room.id)
    listed = await rpc(s.nc, subjects.ROOMS_LIST,
                       RoomListRequest(caller=s.cat, public=True), RoomsReply)
    # Newest first, each with its member count.
    assert [(r.id, r.member_count) for r in listed.rooms] == [(auto.room.id, 1),
                                                              (pub.room.id, 2)]
    assert all(r.unread is None and r.last_seq is None for r in listed.rooms)
    first = await rpc(s.nc, subjects.ROOMS_LIST,
                      RoomListRequest(caller=s.cat, public=True, limit=1), RoomsReply)
    assert [r.id for r in first.rooms] == [auto.room.id] and first.next_cursor
    # Cursor paging: the next page starts below the previous one's last room.
    rest = await rpc(s.nc, subjects.ROOMS_LIST, RoomListRequest(
        caller=s.cat, public=True, limit=1, cursor=first.next_cursor), RoomsReply)
    assert [r.id for r in rest.rooms] == [pub.room.id] and rest.next_cursor is None
    assert listed.next_cursor is None
    for cursor in ("nonsense", "bm9ucw", "MjAyNS0wMS0wMXxhIGI"):  # "nons", "2025-01-01|a b"
        await fails(ErrorCode.BAD_REQUEST, rpc(s.nc, subjects.ROOMS_LIST, RoomListRequest(
            caller=s.cat, public=True, cursor=cursor), RoomsReply))
    for bad in (0, 201, -1):
        await fails(ErrorCode.BAD_REQUEST, rpc(s.nc, subjects.ROOMS_LIST,
                                               RoomListRequest(caller=s.cat, public=True,
                                                               limit=bad), RoomsReply))


# --- join (svc.rooms.access) ---------------------------------------------------------


async def test_join_rules(stack: Stack) -> None:
    s = stack
    # A room that does not exist: created public with the joiner as owner …
    fresh = new_room()
    reply = await join(s, s.ann, fresh)
    assert reply.room.owner == s.ann.id and reply.room.visibility == "public"
    # Joins carry no member count (not computed on this frequent path).
    assert reply.room.member_count is None and reply.blocked == []
    await join(s, s.bob, fresh)
    assert (await get(s, s.bob, fresh)).room.member_count == 2
    # … unless the gateway says not to, and never with the DM prefix.
    await fails(ErrorCode.NOT_FOUND, join(s, s.ann, new_room(), create=False))
    await fails(ErrorCode.NOT_FOUND, join(s, s.ann, subjects.DM_PREFIX + "x"))
    await fails(ErrorCode.BAD_REQUEST, join(s, s.ann, "no spaces"))
    await fails(ErrorCode.BAD_REQUEST, join(s, s.ann, "a.b"))

    # Private: members and the owner only; to anyone else it is not there.
    private = (await create(s, s.ann, new_room(), visibility="private",
                            members=[s.bob.id])).room.id
    await fails(ErrorCode.NOT_FOUND, join(s, s.cat, private))
    await fails(ErrorCode.NOT_FOUND, join(s, s.cat, private, password="guess"))
    await join(s, s.bob, private)
    await join(s, s.ann, private)

    # Password: non-members need the right one; members do not.
    locked = (await create(s, s.ann, new_room(), password="sesame")).room.id
    await fails(ErrorCode.FORBIDDEN, join(s, s.bob, locked))
    await fails(ErrorCode.FORBIDDEN, join(s, s.bob, locked, password="wrong"))
    await fails(ErrorCode.FORBIDDEN, join(s, s.bob, locked, password=""))
    assert (await join(s, s.bob, locked, password="sesame")).room.password
    await join(s, s.bob, locked)
    await join(s, s.ann, locked)
    # A private room with a password admits whoever knows it; to anyone
    # else (no password, a wrong one) it is not there.
    both = (await create(s, s.ann, new_room(), visibility="private", password="pw")).room.id
    await fails(ErrorCode.NOT_FOUND, join(s, s.cat, both, password="nope"))
    await fails(ErrorCode.NOT_FOUND, join(s, s.cat, both))
    await join(s, s.cat, both, password="pw")

    # Removed → refused until the owner invites them back.
    await member(s, s.ann, fresh, s.bob.id, add=False)
    await fails(ErrorCode.FORBIDDEN, join(s, s.bob, fresh))
    await member(s, s.ann, fresh, s.bob.id, add=True)
    await join(s, s.bob, fresh)

    # Archived → refused for everybody, members and owner included.
    await archive(s, s.ann, fresh)
    await fails(ErrorCode.FORBIDDEN, join(s, s.bob, fresh))
    await fails(ErrorCode.FORBIDDEN, join(s, s.ann, fresh))
    await fails(ErrorCode.FORBIDDEN, join(s, s.cat, fresh))

    # The reply carries the caller's blocked set.
    await block(s, s.cat, s.dan.id)
    assert (await join(s, s.cat, new_room())).blocked == [s.dan.id]


async def test_concurrent_first_joins_make_one_room_one_owner(stack: Stack) -> None:
    s = stack
    room = new_room()
    joiners = [User(id=f"u_j{i}", name=f"j{i}") for i in range(10)]
    replies = await asyncio.gather(*(join(s, u, room) for u in joiners))
    owners = {r.room.owner for r in replies}
    assert len(owners) == 1 and owners <= {u.id for u in joiners}
    view = (await get(s, joiners[0], room)).room
    assert view.member_count == 10
    assert sum(1 for m in view.members or [] if m.role == "owner") == 1


# --- members: invite, leave, remove, archive -----------------------------------------


async def test_invite_leave_remove_archive_and_notices(stack: Stack) -> None:
    s = stack
    room = (await create(s, s.ann, new_room(), visibility="private")).room.id
    notices = await listen(s.nc, subjects.state_subject(room))

    # Invite: members (and the owner) only, existing users only; to others
    # the private room is not there.
    await fails(ErrorCode.NOT_FOUND, member(s, s.bob, room, s.cat.id, add=True))
    await fails(ErrorCode.NOT_FOUND, member(s, s.ann, room, "u_nobody", add=True))
    await fails(ErrorCode.BAD_REQUEST, member(s, s.ann, room, "u bad", add=True))
    await fails(ErrorCode.NOT_FOUND, member(s, s.ann, new_room(), s.bob.id, add=True))
    invited = await member(s, s.ann, room, s.bob.id, add=True)
    assert {m.id for m in invited.room.members or []} == {s.ann.id, s.bob.id}
    again = await member(s, s.ann, room, s.bob.id, add=True)  # idempotent
    assert again.room.member_count == 2
    await member(s, s.bob, room, s.cat.id, add=True)  # members may invite
    assert (await get(s, s.cat, room)).room.member_count == 3

    # Leave: self only; MemberNotice "left"; private → needs a new invite.
    await member(s, s.cat, room, s.cat.id, add=False)
    left = state(await notices.next())
    assert left == MemberNotice(room=room, user=s.cat.id, event="left")
    await fails(ErrorCode.NOT_FOUND, member(s, s.cat, room, s.cat.id, add=False))
    await fails(ErrorCode.NOT_FOUND, join(s, s.cat, room))
    await fails(ErrorCode.NOT_FOUND, get(s, s.cat, room))

    # Remove: owner only; MemberNotice "removed"; a ban only the owner lifts.
    await member(s, s.ann, room, s.dan.id, add=True)
    await fails(ErrorCode.FORBIDDEN, member(s, s.bob, room, s.dan.id, add=False))
    await member(s, s.ann, room, s.dan.id, add=False)
    removed = state(await notices.next())
    assert removed == MemberNotice(room=room, user=s.dan.id, event="removed")
    await fails(ErrorCode.NOT_FOUND, member(s, s.ann, room, s.dan.id, add=False))
    await fails(ErrorCode.NOT_FOUND, join(s, s.dan, room))
    await fails(ErrorCode.FORBIDDEN, member(s, s.bob, room, s.dan.id, add=True))
    await member(s, s.ann, room, s.dan.id, add=True)
    await join(s, s.dan, room)

    # The owner may leave and come back; ownership stays.
    await member(s, s.ann, room, s.ann.id, add=False)
    assert state(await notices.next()) == MemberNotice(room=room, user=s.ann.id, event="left")
    assert (await join(s, s.ann, room)).room.owner == s.ann.id

    # Archive: owner only, idempotent, ArchiveNotice each time; then no invites.
    await fails(ErrorCode.FORBIDDEN, archive(s, s.bob, room))
    await fails(ErrorCode.NOT_FOUND, archive(s, s.ann, new_room()))
    await fails(ErrorCode.BAD_REQUEST, archive(s, s.ann, "bad id"))
    assert (await archive(s, s.ann, room)).room.archived
    assert state(await notices.next()) == ArchiveNotice(room=room)
    assert (await archive(s, s.ann, room)).room.archived
    assert state(await notices.next()) == ArchiveNotice(room=room)
    await fails(ErrorCode.FORBIDDEN, member(s, s.ann, room, s.cat.id, add=True))
    assert (await archive(s, s.ann, room)).room.member_count == 3  # ann, bob, dan
    await notices.next()
    # Members still see it (read-only), and may still leave.
    assert (await get(s, s.bob, room)).room.archived
    left = await member(s, s.bob, room, s.bob.id, add=False)
    assert left.room.member_count == 2
    assert state(await notices.next()) == MemberNotice(room=room, user=s.bob.id, event="left")


# --- direct messages and blocks ------------------------------------------------------


async def test_dm_concurrent_creation_gives_one_room(stack: Stack) -> None:
    s = stack
    requests = [dm(s, s.ann, s.bob.id) if i % 2 else dm(s, s.bob, s.ann.id) for i in range(10)]
    replies = await asyncio.gather(*requests)
    assert len({r.room.id for r in replies}) == 1
    assert sum(r.created for r in replies) == 1
    view = replies[0].room
    assert view.id == dm_room_id(s.ann.id, s.bob.id)
    assert view.dm and view.visibility == "private" and view.owner is None
    assert view.name == ", ".join(sorted((s.ann.name, s.bob.name)))
    assert view.member_count == 2
    # By username (any case) too; same room, not created again.
    by_name = await dm(s, s.ann, s.bob.name.upper())
    assert by_name.room.id == view.id and not by_name.created

    await fails(ErrorCode.NOT_FOUND, dm(s, s.ann, "nobody_here"))
    await fails(ErrorCode.BAD_REQUEST, dm(s, s.ann, s.ann.id))
    await fails(ErrorCode.BAD_REQUEST, dm(s, s.ann, s.ann.name))
    await fails(ErrorCode.BAD_REQUEST, dm(s, s.ann, "a b"))
    await fails(ErrorCode.BAD_REQUEST, dm(s, s.ann, ""))

    # A DM is the pair's: no invites, no third party, no removal.
    await fails(ErrorCode.FORBIDDEN, member(s, s.ann, view.id, s.cat.id, add=True))
    # Other people's DM: not there for cat.
    await fails(ErrorCode.NOT_FOUND, join(s, s.cat, view.id))
    await fails(ErrorCode.NOT_FOUND, get(s, s.cat, view.id))
    await fails(ErrorCode.NOT_FOUND, archive(s, s.cat, view.id))
    await fails(ErrorCode.NOT_FOUND, member(s, s.cat, view.id, s.cat.id, add=True))
    await fails(ErrorCode.FORBIDDEN, member(s, s.ann, view.id, s.bob.id, add=False))
    await fails(ErrorCode.FORBIDDEN, archive(s, s.ann, view.id))
    await join(s, s.ann, view.id)

    # Leaving, then asking again, re-adds the one who asks.
    await member(s, s.ann, view.id, s.ann.id, add=False)
    await fails(ErrorCode.FORBIDDEN, join(s, s.ann, view.id))
    back = await dm(s, s.ann, s.bob.id)
    assert not back.created and back.room.member_count == 2
    await join(s, s.ann, view.id)

    # Blocked by the other: no DM request, no DM join; the blocker still may.
    await block(s, s.bob, s.ann.id)
    await fails(ErrorCode.FORBIDDEN, dm(s, s.ann, s.bob.id))
    await fails(ErrorCode.FORBIDDEN, join(s, s.ann, view.id))
    await join(s, s.bob, view.id)
    await fails(ErrorCode.FORBIDDEN, dm(s, s.ann, s.bob.name))
    fresh = await dm(s, s.bob, s.cat.id)  # bob blocked ann, not cat
    assert fresh.created
    await block(s, s.bob, s.ann.id, on=False)
    assert not (await dm(s, s.ann, s.bob.id)).created


async def test_blocks_and_their_notices(stack: Stack) -> None:
    s = stack
    notices = await listen(s.nc, subjects.blocks_subject(s.ann.id))
    assert (await block(s, s.ann, s.bob.id)).blocked == [s.bob.id]
    assert msgspec.json.decode(await notices.next(), type=BlocksNotice) == BlocksNotice(
        user=s.ann.id, blocked=[s.bob.id])
    assert (await block(s, s.ann, s.bob.id)).blocked == [s.bob.id]  # idempotent
    await notices.next()
    both = await block(s, s.ann, s.cat.id)
    assert both.blocked == sorted([s.bob.id, s.cat.id])
    await notices.next()
    assert (await block(s, s.ann, s.bob.id, on=False)).blocked == [s.cat.id]
    assert msgspec.json.decode(await notices.next(), type=BlocksNotice).blocked == [s.cat.id]
    assert (await block(s, s.ann, s.bob.id, on=False)).blocked == [s.cat.id]
    # The whole set on request (gateways catching up after a NATS reconnect).
    mine = await rpc(s.nc, subjects.ROOMS_BLOCKS, BlocksRequest(caller=s.ann), BlocksReply)
    assert mine.blocked == [s.cat.id]
    none = await rpc(s.nc, subjects.ROOMS_BLOCKS, BlocksRequest(caller=s.dan), BlocksReply)
    assert none.blocked == []

    await fails(ErrorCode.NOT_FOUND, block(s, s.ann, "u_nobody"))
    await fails(ErrorCode.BAD_REQUEST, block(s, s.ann, s.ann.id))
    await fails(ErrorCode.BAD_REQUEST, block(s, s.ann, "u.x"))
    await fails(ErrorCode.BAD_REQUEST, block(s, s.ann, "x" * 65))


# --- edit and delete grants --------------------------------------------------------


async def test_change_grants_and_refusals(stack: Stack) -> None:
    s = stack
    room = (await create(s, s.ann, new_room(), members=[s.bob.id, s.cat.id])).room.id
    first, _ = await send(s, room, s.bob, "hello")
    # Published, not waited for: the service catches up before it decides.
    msg_id = "m_" + uuid.uuid4().hex
    record = ChatRecord(room=room, msg_id=msg_id, sender=s.bob, ts=TS, text="reply",
                        reply_to=first)
    await publish_durable(s.nc, subjects.room_subject(room), msgspec.json.encode(record),
                          TIMEOUT)
    grant = await change(s, s.bob, room, msg_id, "edit")
    assert grant == ChangeGrant(sender=s.bob, ts=TS, reply_to=first)

    await fails(ErrorCode.FORBIDDEN, change(s, s.cat, room, msg_id, "edit"))
    await fails(ErrorCode.FORBIDDEN, change(s, s.ann, room, msg_id, "edit"))  # owner: no edit
    await fails(ErrorCode.FORBIDDEN, change(s, s.cat, room, msg_id, "delete"))
    assert (await change(s, s.ann, room, msg_id, "delete")).sender == s.bob  # owner may
    assert (await change(s, s.bob, room, msg_id, "delete")).sender == s.bob
    await fails(ErrorCode.NOT_FOUND, change(s, s.bob, room, "m_unknown", "edit"))
    await fails(ErrorCode.NOT_FOUND, change(s, s.bob, room, "", "edit"))
    await fails(ErrorCode.NOT_FOUND, change(s, s.bob, new_room(), msg_id, "edit"))
    other = (await create(s, s.bob, new_room())).room.id
    await fails(ErrorCode.NOT_FOUND, change(s, s.bob, other, msg_id, "edit"))  # wrong room
    await fails(ErrorCode.BAD_REQUEST, change(s, s.bob, "bad id", msg_id, "edit"))
    await fails(ErrorCode.BAD_REQUEST, change(s, s.bob, room, msg_id, "burn"))

    # Deleted → gone for both actions.
    await send(s, room, s.bob, None, kind="delete", msg_id=msg_id, reply_to=first)
    await fails(ErrorCode.NOT_FOUND, change(s, s.bob, room, msg_id, "edit"))
    await fails(ErrorCode.NOT_FOUND, change(s, s.bob, room, msg_id, "delete"))

    # Archived: no edits; deleting one's own message stays possible.
    await archive(s, s.ann, room)
    await fails(ErrorCode.FORBIDDEN, change(s, s.bob, room, first, "edit"))
    assert (await change(s, s.bob, room, first, "delete")).sender == s.bob


# --- read pointers and unread counts -------------------------------------------------


async def test_read_pointer_and_unread(stack: Stack) -> None:
    s = stack
    room = (await create(s, s.ann, new_room(), members=[s.bob.id, s.cat.id])).room.id
    notices = await listen(s.nc, subjects.state_subject(room))
    assert (await mine(s, s.ann))[room].unread == 0
    sent = [await send(s, room, s.bob, f"b{i}") for i in range(3)]
    _, own_seq = await send(s, room, s.ann, "mine")
    _, cat_seq = await send(s, room, s.cat, "from cat")

    view = (await mine(s, s.ann))[room]
    assert view.unread == 4 and view.last_seq == cat_seq
    last = view.last_message
    assert last is not None and last.text == "from cat"
    assert last.seq == cat_seq and last.prev_seq == own_seq
    assert (await mine(s, s.bob))[room].unread == 2

    # Forward only, clamped to the last seq; a notice when it moved.
    reply = await read(s, s.ann, room, sent[1][1])
    assert reply == ReadReply(seq=sent[1][1], moved=True)
    assert state(await notices.next()) == ReadNotice(room=room, user=s.ann, seq=sent[1][1])
    assert (await mine(s, s.ann))[room].unread == 2
    assert await read(s, s.ann, room, sent[0][1]) == ReadReply(seq=sent[1][1], moved=False)
    assert await read(s, s.ann, room, 2**63 - 1) == ReadReply(seq=cat_seq, moved=True)
    assert state(await notices.next()) == ReadNotice(room=room, user=s.ann, seq=cat_seq)
    assert (await mine(s, s.ann))[room].unread == 0
    assert not (await read(s, s.ann, room, cat_seq)).moved
    await notices.none_before_marker(s.nc, subjects.state_subject(room))  # nothing moved

    # Blocked senders and deleted messages do not count; edits are not messages.
    _, d1 = await send(s, room, s.dan, "x")  # not a member, yet stored: counts as others'
    b_id, _ = await send(s, room, s.bob, "will go")
    await send(s, room, s.cat, "cat again")
    await send(s, room, s.cat, "edited", kind="edit", msg_id=sent[0][0])
    assert (await mine(s, s.ann))[room].unread == 3
    await send(s, room, s.bob, None, kind="delete", msg_id=b_id)
    assert (await mine(s, s.ann))[room].unread == 2
    await block(s, s.ann, s.cat.id)
    view = (await mine(s, s.ann))[room]
    assert view.unread == 1
    # last_message: the newest message not from a blocked sender, in its latest state.
    last = view.last_message
    assert last is not None and last.msg_id == b_id and last.seq > d1
    assert last.deleted and last.text is None

    # A new member starts at the room's last seq.
    await join(s, s.dan, room)
    assert (await mine(s, s.dan))[room].unread == 0

    # Refusals.
    await fails(ErrorCode.FORBIDDEN, read(s, User(id="u_stranger", name="x"), room, 1))
    await fails(ErrorCode.NOT_FOUND, read(s, s.ann, new_room(), 1))
    await fails(ErrorCode.BAD_REQUEST, read(s, s.ann, "bad id", 1))
    await fails(ErrorCode.BAD_REQUEST, read(s, s.ann, room, -1))
    raw = await s.nc.request(subjects.ROOMS_READ, msgspec.json.encode(
        {"caller": {"id": s.ann.id, "name": "a"}, "room": room, "seq": "1"}), timeout=TIMEOUT)
    assert (raw.headers or {}).get("Nats-Service-Error-Code") == "bad_request"


async def test_room_list_order_and_membership(stack: Stack) -> None:
    s = stack
    quiet = (await create(s, s.ann, new_room())).room.id
    busy = (await create(s, s.ann, new_room())).room.id
    empty = (await create(s, s.ann, new_room())).room.id
    await send(s, quiet, s.ann, "q")
    await send(s, busy, s.ann, "b")
    reply = await rpc(s.nc, subjects.ROOMS_LIST, RoomListRequest(caller=s.ann), RoomsReply)
    assert [r.id for r in reply.rooms] == [busy, quiet, empty]
    assert reply.rooms[2].last_seq == 0 and reply.rooms[2].last_message is None
    assert await mine(s, s.bob) == {}
    await member(s, s.ann, quiet, s.ann.id, add=False)
    assert list(await mine(s, s.ann)) == [busy, empty]
    limited = await rpc(s.nc, subjects.ROOMS_LIST, RoomListRequest(caller=s.ann, limit=1),
                        RoomsReply)
    assert [r.id for r in limited.rooms] == [busy]
    await fails(ErrorCode.BAD_REQUEST, rpc(s.nc, subjects.ROOMS_LIST,
                                           RoomListRequest(caller=s.ann, limit=0), RoomsReply))


# --- search ----------------------------------------------------------------------


async def test_search_scope_ranking_paging_and_injection(stack: Stack) -> None:
    s = stack
    mine_room = (await create(s, s.ann, new_room(), members=[s.bob.id])).room.id
    other = (await create(s, s.cat, new_room())).room.id  # ann is no member
    _, best = await send(s, mine_room, s.bob, "zebra zebra zebra crossing")
    _, good = await send(s, mine_room, s.ann, "a zebra in the grass and more words here")
    gone_id, _ = await send(s, mine_room, s.ann, "zebra to delete")
    await send(s, mine_room, s.ann, None, kind="delete", msg_id=gone_id)
    await send(s, other, s.cat, "zebra secret in another room")
    edited_id, _ = await send(s, mine_room, s.bob, "old words")
    await send(s, mine_room, s.bob, "fresh giraffe", kind="edit", msg_id=edited_id)

    found = await search(s, s.ann, "zebra")
    assert [h.seq for h in found.results] == [best, good] and not found.has_more
    hit = found.results[0]
    assert hit.room == mine_room and hit.sender == s.bob and hit.ts == TS
    assert hit.text == "zebra zebra zebra crossing"
    # Never another room's messages, with or without the room filter.
    assert (await search(s, s.cat, "zebra")).results[0].room == other
    assert len((await search(s, s.cat, "zebra")).results) == 1
    await fails(ErrorCode.FORBIDDEN, search(s, s.ann, "zebra", room=other))
    await fails(ErrorCode.NOT_FOUND, search(s, s.ann, "zebra", room=new_room()))
    await fails(ErrorCode.BAD_REQUEST, search(s, s.ann, "zebra", room="a b"))
    assert len((await search(s, s.ann, "zebra", room=mine_room)).results) == 2
    # Edits are searched by their latest text only.
    assert (await search(s, s.ann, "giraffe")).results[0].text == "fresh giraffe"
    assert (await search(s, s.ann, "old")).results == []

    # Paging.
    page = await search(s, s.ann, "zebra", limit=1)
    assert [h.seq for h in page.results] == [best] and page.has_more
    page = await search(s, s.ann, "zebra", limit=1, offset=1)
    assert [h.seq for h in page.results] == [good] and not page.has_more
    assert (await search(s, s.ann, "zebra", offset=1000)).results == []
    for kw in ({"limit": 0}, {"limit": 51}, {"offset": -1}, {"offset": 1001}):
        await fails(ErrorCode.BAD_REQUEST, search(s, s.ann, "zebra", **kw))
    for q in ("", "   ", "z" * 201, "zebra\x00"):
        await fails(ErrorCode.BAD_REQUEST, search(s, s.ann, q))

    # Blocked senders are left out.
    await block(s, s.ann, s.bob.id)
    assert [h.seq for h in (await search(s, s.ann, "zebra")).results] == [good]

    # Whatever the text, it is a query, never SQL; the table survives.
    for q in ("'; DROP TABLE history.messages; --", 'zebra" OR 1=1 --', "a & | ! ( :*",
              "\\", "\\'", "'' \"\" ''", "zebra -grass", '"zebra in"', "or", "!!!", "%_*",
              "$1 $2", "зебра ü 🦓"):
        await search(s, s.ann, q)
    assert [h.seq for h in (await search(s, s.ann, '"zebra in"')).results] == [good]
    assert (await search(s, s.ann, "zebra -grass")).results == []
    assert len((await search(s, s.cat, "zebra")).results) == 1


# --- history reads ask the rooms domain --------------------------------------------


async def test_history_read_access(stack: Stack) -> None:
    s = stack

    async def page(user: User, room: str) -> HistoryReply:
        return await rpc(s.nc, subjects.HISTORY_MESSAGES,
                         HistoryRequest(room=room, user=user.id), HistoryReply)

    private = (await create(s, s.ann, new_room(), visibility="private",
                            members=[s.bob.id])).room.id
    public = (await create(s, s.ann, new_room())).room.id
    await send(s, private, s.ann, "p")
    await send(s, private, s.bob, "from bob")
    await send(s, public, s.ann, "hello all")
    assert len((await page(s.bob, private)).messages) == 2
    await fails(ErrorCode.NOT_FOUND, page(s.cat, private))  # not there for outsiders
    assert len((await page(s.cat, public)).messages) == 1  # public: anyone
    assert (await page(s.cat, new_room())).messages == []  # unknown: empty
    # A removed member may no longer read the private room.
    await member(s, s.ann, private, s.bob.id, add=False)
    await fails(ErrorCode.NOT_FOUND, page(s.bob, private))
    # Blocked senders are left out of the reader's pages.
    await block(s, s.ann, s.bob.id)
    assert [m.text for m in (await page(s.ann, private)).messages] == ["p"]


# --- review fixes: read access, blocks, password throttling, caps ----------------------


async def history_page(s: Stack, user: User, room: str) -> HistoryReply:
    return await rpc(s.nc, subjects.HISTORY_MESSAGES, HistoryRequest(room=room, user=user.id),
                     HistoryReply)


async def test_password_and_banned_readers_are_refused(stack: Stack) -> None:
    s = stack
    # A public room with a password: its history and member list are what the
    # password guards, not open to any reader.
    locked = (await create(s, s.ann, new_room(), password="sesame",
                           members=[s.bob.id])).room.id
    await send(s, locked, s.bob, "secret plans")
    await fails(ErrorCode.FORBIDDEN, history_page(s, s.cat, locked))
    await fails(ErrorCode.FORBIDDEN, get(s, s.cat, locked))
    assert len((await history_page(s, s.bob, locked)).messages) == 1  # member
    assert len((await history_page(s, s.ann, locked)).messages) == 1  # owner
    await join(s, s.cat, locked, password="sesame")
    assert len((await history_page(s, s.cat, locked)).messages) == 1
    assert (await get(s, s.cat, locked)).room.member_count == 3

    # A public room without a password: anyone, except whom the owner removed.
    open_room = (await create(s, s.ann, new_room(), members=[s.bob.id])).room.id
    await send(s, open_room, s.ann, "hello all")
    assert len((await history_page(s, s.dan, open_room)).messages) == 1
    assert (await get(s, s.dan, open_room)).room.members is not None
    await member(s, s.ann, open_room, s.bob.id, add=False)  # removed = banned
    await fails(ErrorCode.FORBIDDEN, history_page(s, s.bob, open_room))
    await fails(ErrorCode.FORBIDDEN, get(s, s.bob, open_room))
    await fails(ErrorCode.FORBIDDEN, join(s, s.bob, open_room))
    # Leaving is no ban: whoever left a public room still reads it.
    await join(s, s.cat, open_room)
    await member(s, s.cat, open_room, s.cat.id, add=False)
    assert len((await history_page(s, s.cat, open_room)).messages) == 1
    # The owner's invite lifts the ban.
    await member(s, s.ann, open_room, s.bob.id, add=True)
    assert len((await history_page(s, s.bob, open_room)).messages) == 1
    # Archived public rooms stay readable by anyone not banned.
    await archive(s, s.ann, open_room)
    assert len((await history_page(s, s.dan, open_room)).messages) == 1


async def test_blocked_users_cannot_be_put_in_rooms(stack: Stack) -> None:
    s = stack
    await block(s, s.bob, s.ann.id)  # bob wants nothing from ann
    # Create with members: refused as a whole, naming nobody, writing nothing.
    for members in ([s.bob.id], [s.cat.id, s.bob.id]):
        room = new_room()
        err = await fails(ErrorCode.FORBIDDEN,
                          create(s, s.ann, room, visibility="private", members=members))
        assert s.bob.id not in err.message and s.bob.name not in err.message
        await fails(ErrorCode.NOT_FOUND, get(s, s.ann, room))
    # Unknown users are still reported first (not_found), as before.
    await fails(ErrorCode.NOT_FOUND, create(s, s.ann, new_room(), members=["u_nobody"]))
    # Others may still put bob in, and bob may put ann in (his block, his choice).
    assert (await create(s, s.cat, new_room(), members=[s.bob.id])).created
    assert (await create(s, s.bob, new_room(), members=[s.ann.id])).created

    # Invite: the blocked user may not invite the blocker, owner or not.
    room = (await create(s, s.ann, new_room(), visibility="private",
                         members=[s.cat.id])).room.id
    await fails(ErrorCode.FORBIDDEN, member(s, s.ann, room, s.bob.id, add=True))
    assert s.bob.id not in {m.id for m in (await get(s, s.ann, room)).room.members or []}
    await fails(ErrorCode.NOT_FOUND, join(s, s.bob, room))
    # A member bob did not block may invite him.
    await member(s, s.cat, room, s.bob.id, add=True)
    await join(s, s.bob, room)
    # Unblocked: the invite works again.
    other = (await create(s, s.ann, new_room(), visibility="private")).room.id
    await block(s, s.bob, s.ann.id, on=False)
    await member(s, s.ann, other, s.bob.id, add=True)
    assert (await create(s, s.ann, new_room(), members=[s.bob.id])).created


async def test_room_password_failures_are_throttled(stack: Stack) -> None:
    s = stack
    rooms = [(await create(s, s.ann, new_room(), password="sesame")).room.id
             for _ in range(4)]
    # 10 wrong passwords per (user, room) within 5 minutes …
    for _ in range(10):
        await fails(ErrorCode.FORBIDDEN, join(s, s.bob, rooms[0], password="guess"))
    err = await fails(ErrorCode.RATE_LIMITED, join(s, s.bob, rooms[0], password="guess"))
    assert err.retry_after is not None and 1.0 <= err.retry_after <= 300.0
    # … then even the right one is refused unchecked (no argon2 verify).
    await fails(ErrorCode.RATE_LIMITED, join(s, s.bob, rooms[0], password="sesame"))
    # A missing password costs no hash and counts for nothing: still forbidden.
    await fails(ErrorCode.FORBIDDEN, join(s, s.bob, rooms[0]))
    # Other users of that room, and bob in other rooms, are not held back.
    await join(s, s.cat, rooms[0], password="sesame")
    await join(s, s.bob, rooms[1], password="sesame")
    # 30 per user across rooms: 10 + 10 + 10 more failures → every room refused.
    for room in rooms[2:]:
        for _ in range(10):
            await fails(ErrorCode.FORBIDDEN, join(s, s.bob, room, password="guess"))
    fresh = (await create(s, s.ann, new_room(), password="pw")).room.id
    await fails(ErrorCode.RATE_LIMITED, join(s, s.bob, fresh, password="pw"))
    # A member needs no password, so is never throttled; nor are rooms without one.
    await join(s, s.bob, rooms[1])
    await join(s, s.bob, new_room())


async def test_change_needs_membership_and_a_plausible_msg_id(stack: Stack) -> None:
    s = stack
    room = (await create(s, s.ann, new_room(), members=[s.bob.id, s.cat.id])).room.id
    bob_msg, _ = await send(s, room, s.bob, "from bob")
    # Stored while dan was no member (published straight to the stream).
    dan_msg, _ = await send(s, room, s.dan, "from outside")
    await fails(ErrorCode.FORBIDDEN, change(s, s.dan, room, dan_msg, "edit"))
    await fails(ErrorCode.FORBIDDEN, change(s, s.dan, room, dan_msg, "delete"))
    # Removed (banned) members lose their grants, own messages included.
    await member(s, s.ann, room, s.bob.id, add=False)
    await fails(ErrorCode.FORBIDDEN, change(s, s.bob, room, bob_msg, "edit"))
    await fails(ErrorCode.FORBIDDEN, change(s, s.bob, room, bob_msg, "delete"))
    # The owner keeps owner rights after leaving.
    await member(s, s.ann, room, s.ann.id, add=False)
    assert (await change(s, s.ann, room, bob_msg, "delete")).sender == s.bob
    # Ids no message can have → not_found (docs/protocol.md §8), for members too.
    for msg_id in ("", "m" * 65, "m" * 1000):
        await fails(ErrorCode.NOT_FOUND, change(s, s.cat, room, msg_id, "edit"))
        await fails(ErrorCode.NOT_FOUND, change(s, s.cat, room, msg_id, "delete"))
    await fails(ErrorCode.NOT_FOUND, change(s, s.cat, room, "m" * 64, "edit"))


async def test_blocked_set_is_capped(stack: Stack) -> None:
    s = stack
    conn = await asyncpg.connect(s.db_url)
    try:
        await conn.execute(
            "INSERT INTO history.blocks (blocker, blocked)"
            " SELECT $1, 'u_fake' || g FROM generate_series(1, 999) g", s.ann.id)
    finally:
        await conn.close()
    assert len((await block(s, s.ann, s.bob.id)).blocked) == 1000  # the 1000th
    err = await fails(ErrorCode.BAD_REQUEST, block(s, s.ann, s.cat.id))
    assert "too many blocks" in err.message
    assert len((await block(s, s.ann, s.bob.id)).blocked) == 1000  # idempotent at the cap
    assert len((await block(s, s.ann, s.bob.id, on=False)).blocked) == 999  # unblock works
    assert s.cat.id in (await block(s, s.ann, s.cat.id)).blocked
    # Others' caps are their own.
    assert (await block(s, s.bob, s.cat.id)).blocked == [s.cat.id]


async def test_search_ranks_only_the_newest_matches(stack: Stack) -> None:
    s = stack
    room = (await create(s, s.ann, new_room())).room.id
    conn = await asyncpg.connect(s.db_url)
    try:
        # The best-ranked match is the oldest; 1051 newer, weaker matches follow.
        await conn.execute(
            "INSERT INTO history.messages (room, seq, msg_id, sender_id, sender_name, text, ts)"
            " SELECT $1, g, $1 || '-' || g, 'u_x', 'x',"
            " CASE WHEN g = 1 THEN 'okapi okapi okapi okapi'"
            " ELSE 'an okapi among many other plain words here' END, now()"
            " FROM generate_series(1, 1052) g", room)
    finally:
        await conn.close()
    first = await search(s, s.ann, "okapi", limit=50)
    assert len(first.results) == 50 and first.has_more
    assert all(h.seq != 1 for h in first.results)  # outside the newest 1051
    assert [h.seq for h in first.results] == list(range(1052, 1002, -1))
    deepest = await search(s, s.ann, "okapi", limit=50, offset=1000)
    assert [h.seq for h in deepest.results] == list(range(52, 2, -1)) and deepest.has_more
    # Among the candidates rank still decides: the best one is found once it is new enough.
    conn = await asyncpg.connect(s.db_url)
    try:
        await conn.execute("DELETE FROM history.messages WHERE room = $1 AND seq > 1051", room)
    finally:
        await conn.close()
    assert (await search(s, s.ann, "okapi", limit=1)).results[0].seq == 1


async def test_a_join_racing_a_removal_is_refused_not_let_in(stack: Stack) -> None:
    """The owner's removal holds the room row while it deletes and bans; a join
    (or invite) waiting on that lock must see the ban once it gets through."""
    s = stack
    room = new_room()
    await create(s, s.ann, room, name="r", visibility="public")
    await join(s, s.bob, room)
    pool = await asyncpg.create_pool(s.db_url, min_size=1, max_size=2)
    remover = await asyncpg.connect(s.db_url)
    try:
        store = RoomsStore(pool)
        tx = remover.transaction()
        await tx.start()
        # remove(..., ban=True), held open before its commit
        await remover.execute("SELECT 1 FROM history.rooms WHERE id = $1 FOR NO KEY UPDATE",
                              room)
        await remover.execute("DELETE FROM history.members WHERE room = $1 AND user_id = $2",
                              room, s.bob.id)
        await remover.execute("INSERT INTO history.removed (room, user_id) VALUES ($1, $2)",
                              room, s.bob.id)
        joining = asyncio.ensure_future(store.join(room, s.bob))
        inviting = asyncio.ensure_future(store.invite(room, s.bob, lift_ban=False))
        await until(lambda: lock_waiters(s.db_url), "join and invite waiting for the row lock",
                    want=2)
        assert not joining.done() and not inviting.done()
        await tx.commit()
        assert await joining is False
        assert await inviting is False
        still = await remover.fetchval(
            "SELECT count(*) FROM history.members WHERE room = $1 AND user_id = $2",
            room, s.bob.id)
        assert still == 0
    finally:
        await remover.close()
        await pool.close()
    await fails(ErrorCode.FORBIDDEN, join(s, s.bob, room))


async def test_upgrade_gives_rooms_with_older_messages_no_owner(db_url: str) -> None:
    """Migration 0004 on a database at 0003: a room known only from its messages
    gets a public, ownerless row, so its first joiner after the upgrade does
    not own it."""
    pool = await create_pool(db_url)
    try:
        await migrate(pool, "history", "chat_history")
        async with pool.acquire() as conn:  # back to what 0003 left
            await conn.execute("DROP INDEX history.messages_changes")
            await conn.execute("DELETE FROM history.schema_migrations WHERE version LIKE '0004%'")
            await conn.execute(
                "INSERT INTO history.messages (room, seq, msg_id, sender_id, sender_name, text,"
                " ts) VALUES ('old-room', 7, 'm_old', 'u_x', 'x', 'hi', now())")
        assert [name for name in await migrate(pool, "history", "chat_history")
                if name.startswith("0004")]
        async with pool.acquire() as conn:
            row = await conn.fetchrow(
                "SELECT visibility, owner_id FROM history.rooms WHERE id = 'old-room'")
        assert row is not None and (row["visibility"], row["owner_id"]) == ("public", None)
        assert await RoomsStore(pool).ensure_public("old-room", "u_first") is False
    finally:
        await pool.close()


async def test_a_new_member_starts_after_messages_still_on_their_way_to_storage(
        stack: Stack) -> None:
    s = stack
    room = new_room()
    await join(s, s.ann, room)
    js = s.nc.jetstream()
    blocker = await asyncpg.connect(s.db_url)
    try:
        # Storage stalls (its inserts wait for this lock) while messages are
        # acked by the stream, and dan joins meanwhile.
        tx = blocker.transaction()
        await tx.start()
        await blocker.execute("LOCK TABLE history.messages IN EXCLUSIVE MODE")
        await asyncio.gather(*(
            js.publish(subjects.room_subject(room), msgspec.json.encode(ChatRecord(
                room=room, msg_id=f"m_{uuid.uuid4().hex}", sender=s.ann, ts=TS,
                text=f"t{i}")))
            for i in range(50)))
        joining = asyncio.ensure_future(join(s, s.dan, room))
        # The join waits for storage to catch up on the room (a read waiting on
        # the room's commit tracker) while the inserts wait for the lock.
        tracker = s.history.trackers.for_room(room)
        await until(lambda: tracker.waiting, "the join waiting for storage")
        assert not joining.done()
        await tx.commit()  # storage catches up; the join waited for it
        await joining
    finally:
        await blocker.close()
    assert (await mine(s, s.dan))[room].unread == 0
    assert (await mine(s, s.ann))[room].last_seq > 0


# --- issue 12: read to the seq asked, room creation limits ------------------------------


async def _publish(s: Stack, room: str, sender: User, text: str) -> int:
    """Publish like a gateway does, without waiting for storage; the stream seq."""
    record = ChatRecord(room=room, msg_id="m_" + uuid.uuid4().hex, sender=sender, ts=TS,
                        kind="message", text=text)
    ack = await publish_durable(s.nc, subjects.room_subject(room), msgspec.json.encode(record),
                                TIMEOUT)
    return ack.seq


async def test_read_moves_the_pointer_to_the_seq_asked_even_when_storage_lags(
        stack: Stack) -> None:
    s = stack
    room = (await create(s, s.ann, new_room(), members=[s.bob.id])).room.id
    notices = await listen(s.nc, subjects.state_subject(room))
    # Sent, then read at once: the pointer and the notice are at the last seq.
    seqs = [await _publish(s, room, s.bob, f"b{i}") for i in range(5)]
    assert await read(s, s.ann, room, seqs[-1]) == ReadReply(seq=seqs[-1], moved=True)
    assert state(await notices.next()) == ReadNotice(room=room, user=s.ann, seq=seqs[-1])

    # Storage stops (its consumer stopped): the stream's last seq still bounds
    # the read, not what storage holds.
    await s.history.consumer.stop()
    later = [await _publish(s, room, s.bob, f"late{i}") for i in range(3)]
    assert await read(s, s.ann, room, later[-1]) == ReadReply(seq=later[-1], moved=True)
    assert state(await notices.next()) == ReadNotice(room=room, user=s.ann, seq=later[-1])
    # Beyond the room's last seq: clamped to it.
    assert await read(s, s.bob, room, later[-1] + 1000) == ReadReply(seq=later[-1], moved=True)


async def test_room_creation_is_rate_limited_and_owned_rooms_capped(
        nats_url: str, db_url: str, tmp_path: Path) -> None:
    async with running_stack(nats_url, db_url, tmp_path, rooms_owned_max=3,
                             room_creates_per_window=6, room_create_window=60.0) as s:
        # The quota counts rooms owned, however they were made (a join of an
        # unknown id included), and answers forbidden: waiting does not help.
        await create(s, s.ann, new_room())
        await create(s, s.ann, new_room(), visibility="private")
        await join(s, s.ann, new_room())  # auto-created: owned too
        await fails(ErrorCode.FORBIDDEN, create(s, s.ann, new_room()))
        await fails(ErrorCode.FORBIDDEN, join(s, s.ann, new_room()))
        # Joining rooms that exist, and DMs (nobody owns one), stay open.
        other = (await create(s, s.bob, new_room())).room.id
        await join(s, s.ann, other)
        assert (await dm(s, s.ann, s.cat.id)).created

        # The rate counts attempts (conflicts too), per user: beyond it
        # rate_limited with retry_after, for create and join alike.
        for _ in range(5):
            await fails(ErrorCode.CONFLICT, create(s, s.bob, other))
        err = await fails(ErrorCode.RATE_LIMITED, create(s, s.bob, new_room()))
        assert err.retry_after is not None and 1 <= err.retry_after <= 60
        await fails(ErrorCode.RATE_LIMITED, join(s, s.bob, new_room()))
        await join(s, s.bob, other)  # an existing room: no creation, no limit
        assert (await create(s, s.cat, new_room())).created  # another user's own budget
