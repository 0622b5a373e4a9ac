"""chat_gateway.rooms without NATS: room state notices (read, removal,
archive), removals taking sockets out at once, the reconcile after a
reconnect, and leave as a whole operation."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import msgspec
from gateway_fakes import ANN, BOB, EVE, Sock, conn

from chat_contract.bus import ArchiveNotice, MemberNotice, MemberView, ReadNotice, RoomView
from chat_contract.errors import ChatError, ErrorCode
from chat_contract.events import User
from chat_gateway.connection import Connection
from chat_gateway.localroom import JOINING, LocalRoom
from chat_gateway.relay import Relay
from chat_gateway.rooms import Admission, RoomHub


class FakePresence:
    """Records the presence entries the hub removes."""

    def __init__(self) -> None:
        self.exits: list[tuple[str, str, bool]] = []

    async def exit(self, c: Connection, name: str, user_still_here: bool) -> None:
        self.exits.append((c.user.id, name, user_still_here))


class FakeSub:
    def __init__(self) -> None:
        self.unsubscribed = False

    async def unsubscribe(self) -> None:
        self.unsubscribed = True


def hub_with_room(presence: FakePresence | None = None) -> tuple[RoomHub, LocalRoom]:
    hub = RoomHub(cast(Any, None), Relay(cast(Any, None)), cast(Any, presence))
    room = LocalRoom("r")
    room.ready.set()
    room.live_sub = cast(Any, FakeSub())
    hub.rooms["r"] = room
    return hub, room


def state(payload: msgspec.Struct) -> bytes:
    return msgspec.json.encode(payload)


async def settle(hub: RoomHub) -> None:
    for task in list(hub._tasks):
        await task


def texts(sock: Sock) -> list[str]:
    return [msgspec.to_builtins(e)["text"] for e in sock.events()]


def test_read_notice_is_relayed_except_to_blockers_of_the_reader_and_joiners() -> None:
    hub, room = hub_with_room()
    a, blocker, joining = Sock(ANN), Sock(BOB, {EVE.id}), Sock(ANN)
    room.members = {conn(a): 0, conn(blocker): 0, conn(joining): JOINING}
    hub.on_state(room, state(ReadNotice(room="r", user=EVE, seq=9)))
    assert [msgspec.to_builtins(e) for e in a.events()] == [
        {"type": "read", "room": "r", "user": {"id": "u_eve", "name": "eve"}, "seq": 9}]
    assert blocker.frames == [] and joining.frames == []


async def test_member_notice_takes_the_users_sockets_out_at_once() -> None:
    presence = FakePresence()
    hub, room = hub_with_room(presence)
    eve1, eve2, ann = Sock(EVE), Sock(EVE), Sock(ANN)
    room.members = {conn(eve1): 0, conn(eve2): 0, conn(ann): 0}
    hub.on_state(room, state(MemberNotice(room="r", user=EVE.id, event="removed")))
    assert room.removals[EVE.id] == 1
    assert list(room.members) == [conn(ann)]
    assert eve1.rooms == set() and eve2.rooms == set() and ann.rooms == {"r"}
    assert texts(eve1) == texts(eve2) == ["you were removed from the room"]
    assert ann.frames == []
    Relay(cast(Any, None)).deliver(room, 1, 0, msgspec.json.encode({
        "room": "r", "msg_id": "m", "sender": {"id": "u_ann", "name": "ann"},
        "ts": "2024-01-01T00:00:00.000Z", "text": "hi"}))
    assert len(eve1.frames) == 1 and len(ann.frames) == 1  # nothing more reaches the removed
    await settle(hub)
    assert presence.exits == [(EVE.id, "r", False), (EVE.id, "r", False)]
    hub.on_state(room, state(MemberNotice(room="r", user=ANN.id, event="left")))
    await settle(hub)
    assert texts(ann)[-1] == "you left the room"
    assert "r" not in hub.rooms and room.closed  # the last member gone: unsubscribed
    assert cast(Any, room.live_sub) is None


def test_a_removal_during_a_join_only_counts_for_the_joiner() -> None:
    hub, room = hub_with_room()
    joining = Sock(EVE)
    room.members = {conn(joining): JOINING}
    hub.on_state(room, state(MemberNotice(room="r", user=EVE.id, event="removed")))
    # The join under way sees the count change and fails itself (RoomHub.join).
    assert room.removals[EVE.id] == 1 and joining.frames == []
    assert conn(joining) in room.members


async def test_reconcile_after_a_reconnect_applies_lost_notices() -> None:
    """Removals and an archive published while NATS was away are caught up."""
    hub, room = hub_with_room(FakePresence())
    eve, ann, bob = Sock(EVE), Sock(ANN), Sock(BOB)
    room.members = {conn(eve): 0, conn(ann): 0, conn(bob): 0}
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
    assert list(room.members) == [conn(ann)] and room.archived
    assert texts(bob) == ["you are no longer a member of the room"]
    assert texts(ann) == ["room archived"]
    await settle(hub)


async def test_reconcile_reports_an_unavailable_history_service() -> None:
    hub, room = hub_with_room()
    ann = Sock(ANN)
    room.members = {conn(ann): 0}

    async def fetch(name: str, caller: User) -> RoomView:
        raise ChatError(ErrorCode.UNAVAILABLE, "no responders")

    assert not await hub.reconcile(fetch)
    assert list(room.members) == [conn(ann)] and ann.frames == []


def test_archive_notice_makes_the_room_read_only() -> None:
    hub, room = hub_with_room()
    a = Sock(ANN)
    room.members = {conn(a): 0}
    assert not hub.archived("r")
    hub.on_state(room, state(ArchiveNotice(room="r")))
    assert room.archived and hub.archived("r") and not hub.archived("elsewhere")
    assert texts(a) == ["room archived"]


def test_garbled_state_notice_is_dropped() -> None:
    hub, room = hub_with_room()
    a = Sock(ANN)
    room.members = {conn(a): 0}
    hub.on_state(room, b'{"op":"nope","v":1}')
    assert a.frames == [] and not room.archived


async def test_leave_is_whole_and_keeps_a_room_with_a_join_under_way() -> None:
    presence = FakePresence()
    hub, room = hub_with_room(presence)
    a, b = Sock(ANN), Sock(ANN)
    room.members = {conn(a): 0, conn(b): 0}
    room.pending = 1  # a third socket's join is under way
    await hub.leave(conn(a), "r")
    assert a.rooms == set() and list(room.members) == [conn(b)]
    assert presence.exits == [(ANN.id, "r", True)]  # ann is still here: typing goes on
    await hub.leave_all(conn(b))
    assert b.rooms == set() and not room.members
    assert "r" in hub.rooms and not room.closed  # held for the join under way
    room.pending = 0
    await hub.leave(conn(Sock(BOB)), "r")  # a stray leave of a stranger
    assert "r" not in hub.rooms and room.closed


def test_admission_held_is_only_for_blockers_whose_missed_ended_early() -> None:
    base = Admission(last_seq=9, floor=9, since=2)
    assert base.held(False) is None
    assert base.held(True) == 2  # nothing missed was shown: the chain ends at since
    missed = Admission(last_seq=9, floor=9, since=2, missed=[cast(Any, type("M", (), {
        "seq": 7})())])
    assert missed.held(True) == 7
    assert Admission(last_seq=9, floor=5, since=2, truncated=True).held(True) is None
    assert Admission(last_seq=9, floor=9, since=9).held(True) is None
    assert Admission(last_seq=9, floor=9).held(True) is None


async def test_a_room_lingers_after_its_last_member_then_closes() -> None:
    hub, room = hub_with_room(FakePresence())
    hub.linger = 0.05
    ann = Sock(ANN)
    room.members = {conn(ann): 0}
    conn(ann).rooms.add("r")
    await hub.leave(conn(ann), "r")
    assert hub.rooms.get("r") is room and not room.closed  # still held, still subscribed
    await asyncio.sleep(0.08)
    await settle(hub)
    assert "r" not in hub.rooms and room.closed
    assert cast(Any, room.live_sub) is None


async def test_a_member_back_within_the_linger_keeps_the_room() -> None:
    hub, room = hub_with_room(FakePresence())
    hub.linger = 0.05
    ann = Sock(ANN)
    room.members = {conn(ann): 0}
    await hub.leave(conn(ann), "r")
    room.members[conn(ann)] = 0  # rejoined meanwhile
    await asyncio.sleep(0.08)
    await settle(hub)
    assert hub.rooms.get("r") is room and not room.closed


async def test_a_linger_that_ends_takes_the_room_out_at_once() -> None:
    """No join can find the room between the linger's end and its unsubscribe."""
    hub, room = hub_with_room(FakePresence())
    hub.linger = 5.0
    room.idle_since = 0.0  # idle for ages
    hub._linger_over(room)
    assert "r" not in hub.rooms and room.closed  # before any task ran
    await settle(hub)
    assert cast(Any, room.live_sub) is None
