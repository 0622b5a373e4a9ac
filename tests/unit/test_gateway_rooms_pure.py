"""The room model at the gateway without I/O: block filtering at delivery with
the blocker's ``prev_seq`` chain kept unbroken, room state notices (read,
removal, archive), and the REST query checks."""

from __future__ import annotations

from typing import Any, cast

import msgspec
import pytest
from starlette.requests import Request

from chat_contract.bus import (
    ArchiveNotice,
    ChatRecord,
    MemberNotice,
    MemberView,
    ReadNotice,
    RoomView,
)
from chat_contract.errors import ChatError, ErrorCode
from chat_contract.events import Message, ServerEvent, User, decode_event
from chat_gateway.chains import Chains
from chat_gateway.connection import Connection
from chat_gateway.rest import int_param
from chat_gateway.rest_rooms import _bounded, _flag, _user_ref
from chat_gateway.rooms import Room, RoomHub

ANN = User(id="u_ann", name="ann")
BOB = User(id="u_bob", name="bob")
EVE = User(id="u_eve", name="eve")


class Sock:
    """Stands in for a Connection where the hub only writes frames."""

    def __init__(self, user: User, blocked: set[str] | None = None) -> None:
        self.user = user
        self.blocked: set[str] = blocked or set()
        self.rooms: set[str] = {"r"}
        self.frames: list[bytes] = []

    def write_frame(self, frame: bytes) -> bool:
        self.frames.append(frame)
        return True

    def events(self) -> list[ServerEvent]:
        return [decode_event(_payload(f)) for f in self.frames]

    def chain(self) -> list[tuple[int, int]]:
        return [(e.seq, e.prev_seq) for e in self.events() if isinstance(e, Message)]


def _payload(frame: bytes) -> bytes:
    n = frame[1] & 0x7F
    return frame[2 if n < 126 else (4 if n == 126 else 10):]


def _conn(sock: Sock) -> Connection:
    return cast(Connection, sock)


def _hub() -> tuple[RoomHub, Room]:
    hub = RoomHub(cast(Any, None), cast(Any, None))
    room = Room("r")
    room.ready.set()
    hub.rooms["r"] = room
    return hub, room


def _record(sender: User, kind: str = "message", text: str | None = "hi") -> bytes:
    return msgspec.json.encode(ChatRecord(room="r", msg_id="m1", sender=sender,
                                          ts="2024-01-01T00:00:00.000Z", kind=cast(Any, kind),
                                          text=text))


# --- Chains -------------------------------------------------------------------


def test_chains_owe_the_first_skipped_prev_only() -> None:
    chains: Chains[str] = Chains()
    assert not chains and chains.prev_for("a", 5) is None
    chains.skip("a", 5)
    chains.skip("a", 6)  # a second skip in a row keeps the first link
    assert chains
    assert chains.prev_for("a", 7) == 5
    assert not chains and chains.prev_for("a", 8) is None


def test_chains_owed_equal_to_prev_needs_no_copy_and_forget_clears() -> None:
    chains: Chains[str] = Chains()
    chains.skip("a", 4)
    assert chains.prev_for("a", 4) is None
    chains.skip("b", 1)
    chains.forget("b")
    assert not chains


# --- delivery with blocks -----------------------------------------------------


def test_blocker_gets_no_event_of_the_blocked_and_an_unbroken_chain() -> None:
    hub, room = _hub()
    plain, blocker = Sock(ANN), Sock(BOB, {EVE.id})
    room.members = {_conn(plain): 0, _conn(blocker): 0}
    room.last_seq = 0
    hub._deliver(room, 1, 0, _record(ANN))
    hub._deliver(room, 2, 1, _record(EVE))
    hub._deliver(room, 3, 2, _record(EVE, "edit", "edited"))
    hub._deliver(room, 5, 3, _record(ANN))
    hub._deliver(room, 6, 5, _record(ANN))
    assert plain.chain() == [(1, 0), (2, 1), (3, 2), (5, 3), (6, 5)]
    assert blocker.chain() == [(1, 0), (5, 1), (6, 5)]
    # Everyone else shares one frame; only the blocker's re-linked one differs.
    assert plain.frames[3] != blocker.frames[1] and plain.frames[4] == blocker.frames[2]
    assert not room.chains


def test_blocked_sender_as_first_event_links_to_the_join_floor() -> None:
    hub, room = _hub()
    blocker = Sock(BOB, {EVE.id})
    room.members = {_conn(blocker): 10}
    room.last_seq = 10
    hub._deliver(room, 11, 10, _record(EVE))
    hub._deliver(room, 12, 11, _record(ANN))
    assert blocker.chain() == [(12, 10)]


def test_a_real_gap_stays_visible_to_a_blocker() -> None:
    hub, room = _hub()
    blocker = Sock(BOB, {EVE.id})
    room.members = {_conn(blocker): 0}
    room.last_seq = 3
    hub._deliver(room, 4, 3, _record(EVE))  # what the member holds ends before 3
    hub._deliver(room, 5, 4, _record(ANN))
    assert blocker.chain() == [(5, 3)]


def test_attach_replay_filters_and_relinks_for_a_blocker() -> None:
    hub, room = _hub()
    room.last_seq = 0
    for seq, sender in ((1, ANN), (2, EVE), (3, ANN)):
        hub._deliver(room, seq, seq - 1, _record(sender))
    blocker, plain = Sock(BOB, {EVE.id}), Sock(ANN)
    room.pending = 2
    hub.attach(_conn(blocker), room, 0)
    hub.attach(_conn(plain), room, 1)
    assert blocker.chain() == [(1, 0), (3, 1)]
    assert plain.chain() == [(2, 1), (3, 2)]
    assert room.members[_conn(blocker)] == 3 and room.pending == 0


def test_attach_links_to_what_a_blockers_missed_ended_with() -> None:
    # join since=2: missed (blocked senders left out) ended at 3, the room at 5
    hub, room = _hub()
    room.last_seq = 5
    blocker = Sock(BOB, {EVE.id})
    room.pending = 1
    hub.attach(_conn(blocker), room, 5, held=3)
    hub._deliver(room, 6, 5, _record(ANN))
    assert blocker.chain() == [(6, 3)]


def test_a_member_who_unblocked_gets_its_owed_link_once_then_shared_frames() -> None:
    hub, room = _hub()
    blocker, plain = Sock(BOB, {EVE.id}), Sock(ANN)
    room.members = {_conn(blocker): 0, _conn(plain): 0}
    room.last_seq = 0
    hub._deliver(room, 1, 0, _record(EVE))
    blocker.blocked = set()  # a BlocksNotice emptied the set
    hub._deliver(room, 2, 1, _record(ANN))
    hub._deliver(room, 3, 2, _record(ANN))
    assert blocker.chain() == [(2, 0), (3, 2)]
    assert blocker.frames[1] == plain.frames[2] and not room.chains


def test_unblocked_members_never_touch_the_chains() -> None:
    hub, room = _hub()
    a, b = Sock(ANN), Sock(BOB)
    room.members = {_conn(a): 0, _conn(b): 0}
    room.last_seq = 0
    hub._deliver(room, 1, 0, _record(EVE))
    assert a.frames == b.frames and len(a.frames) == 1 and not room.chains


# --- room state notices -------------------------------------------------------


class _Msg:
    def __init__(self, payload: msgspec.Struct) -> None:
        self.data = msgspec.json.encode(payload)


async def test_read_notice_is_relayed_except_to_blockers_of_the_reader() -> None:
    hub, room = _hub()
    a, blocker = Sock(ANN), Sock(BOB, {EVE.id})
    room.members = {_conn(a): 0, _conn(blocker): 0}
    await hub._state_callback(room)(_Msg(ReadNotice(room="r", user=EVE, seq=9)))
    assert [msgspec.to_builtins(e) for e in a.events()] == [
        {"type": "read", "room": "r", "user": {"id": "u_eve", "name": "eve"}, "seq": 9}]
    assert blocker.frames == []


async def test_member_notice_takes_the_users_sockets_out_at_once() -> None:
    evicted: list[tuple[str, str]] = []

    async def on_evicted(conn: Connection, name: str) -> None:
        evicted.append((conn.user.id, name))

    hub, room = _hub()
    hub.on_evicted = on_evicted
    eve1, eve2, ann = Sock(EVE), Sock(EVE), Sock(ANN)
    room.members = {_conn(eve1): 0, _conn(eve2): 0, _conn(ann): 0}
    before = hub.removals("r", EVE.id)
    await hub._state_callback(room)(_Msg(MemberNotice(room="r", user=EVE.id, event="removed")))
    assert hub.removals("r", EVE.id) == before + 1
    assert list(room.members) == [_conn(ann)]
    assert eve1.rooms == set() and ann.rooms == {"r"}
    for sock in (eve1, eve2):
        (ev,) = [msgspec.to_builtins(e) for e in sock.events()]
        assert ev["type"] == "system" and ev["text"] == "you were removed from the room"
    assert ann.frames == []
    hub._deliver(room, 1, 0, _record(ANN))  # nothing more reaches the removed
    assert len(eve1.frames) == 1 and len(ann.frames) == 1
    for task in list(hub._tasks):
        await task
    assert sorted(evicted) == [(EVE.id, "r"), (EVE.id, "r")]
    await hub._state_callback(room)(_Msg(MemberNotice(room="r", user=ANN.id, event="left")))
    for task in list(hub._tasks):
        await task
    assert msgspec.to_builtins(ann.events()[-1])["text"] == "you left the room"
    assert "r" not in hub.rooms  # the last local member gone: unsubscribed


async def test_reconcile_after_a_reconnect_applies_lost_notices() -> None:
    """Removals and an archive published while NATS was away are caught up."""
    hub, room = _hub()
    eve, ann, bob = Sock(EVE), Sock(ANN), Sock(BOB)
    room.members = {_conn(eve): 0, _conn(ann): 0, _conn(bob): 0}
    asked: list[str] = []

    async def fetch(name: str, caller: User) -> RoomView:
        asked.append(caller.id)
        if caller.id == EVE.id:  # removed from a private room: may not even look
            raise ChatError(ErrorCode.FORBIDDEN, "private room")
        return RoomView(id=name, name=name, visibility="private", owner=ANN.id,
                        created_at="2024-01-01T00:00:00.000Z", password=False, archived=True,
                        dm=False, members=[MemberView(id=ANN.id, name="ann")])

    assert await hub.reconcile(fetch)
    assert asked == [EVE.id, ANN.id]  # one good answer per room is enough
    assert list(room.members) == [_conn(ann)] and room.archived
    texts = [msgspec.to_builtins(e)["text"] for e in bob.events()]
    assert texts == ["you are no longer a member of the room"]
    assert [msgspec.to_builtins(e)["text"] for e in ann.events()] == ["room archived"]
    for task in list(hub._tasks):
        await task


async def test_reconcile_reports_an_unavailable_history_service() -> None:
    hub, room = _hub()
    ann = Sock(ANN)
    room.members = {_conn(ann): 0}

    async def fetch(name: str, caller: User) -> RoomView:
        raise ChatError(ErrorCode.UNAVAILABLE, "no responders")

    assert not await hub.reconcile(fetch)
    assert list(room.members) == [_conn(ann)] and ann.frames == []


async def test_archive_notice_makes_the_room_read_only() -> None:
    hub, room = _hub()
    a = Sock(ANN)
    room.members = {_conn(a): 0}
    await hub._state_callback(room)(_Msg(ArchiveNotice(room="r")))
    assert room.archived
    assert msgspec.to_builtins(a.events()[0])["text"] == "room archived"


async def test_garbled_state_notice_is_dropped() -> None:
    hub, room = _hub()
    a = Sock(ANN)
    room.members = {_conn(a): 0}

    class Bad:
        data = b'{"op":"nope","v":1}'

    await hub._state_callback(room)(Bad())
    assert a.frames == [] and not room.archived


# --- REST query checks --------------------------------------------------------


def _request(query: str) -> Request:
    return Request({"type": "http", "query_string": query.encode(), "headers": []})


@pytest.mark.parametrize("raw", ["x", "1.5", " 7", "+7", "1_0", "-1", "99999999999999999999"])
def test_int_param_refuses_non_plain_integers(raw: str) -> None:
    with pytest.raises(ChatError) as exc:
        int_param(_request(f"limit={raw}"), "limit", 5)
    assert exc.value.code == ErrorCode.BAD_REQUEST


def test_bounded_and_flag() -> None:
    assert _bounded(_request(""), "limit", 20, 1, 50) == 20
    assert _bounded(_request("limit=50"), "limit", 20, 1, 50) == 50
    for bad in ("limit=0", "limit=51"):
        with pytest.raises(ChatError):
            _bounded(_request(bad), "limit", 20, 1, 50)
    assert _flag(_request("public=1"), "public") and not _flag(_request(""), "public")
    with pytest.raises(ChatError):
        _flag(_request("public=maybe"), "public")


@pytest.mark.parametrize("bad", ["", "a b", "x" * 65, "u_1;drop", "ü", "a/b"])
def test_user_refs_are_one_plain_token(bad: str) -> None:
    with pytest.raises(ChatError):
        _user_ref(bad)
    assert _user_ref("u_Abc-1.x") == "u_Abc-1.x"
