"""The gateway repairs gaps in the live feed from the stream (real NATS).

Core NATS may drop a republished event; the next event's prev_seq then points
past the last one relayed, and the hub must fetch the missing ones from the
CHAT stream and relay them first, in order, exactly once.
"""

from __future__ import annotations

import asyncio
import json
from typing import cast

import msgspec
import nats
import pytest

from chat_contract import subjects
from chat_contract.bus import ChatRecord
from chat_contract.events import Message, User
from chat_gateway.rooms import RoomHub
from chat_kit import bus
from chat_kit.stream import ensure_chat_stream

pytestmark = pytest.mark.integration


class FakeConn:
    """Stands in for a socket: records the frames the hub writes to it."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.blocked: set[str] = set()  # blocks nobody: gets the shared frames

    def write_frame(self, frame: bytes) -> bool:
        self.frames.append(frame)
        return True

    def events(self) -> list[dict[str, object]]:
        # unmasked server frames here are < 64 KiB: a 2- or 4-byte header
        return [json.loads(f[4:] if f[1] == 126 else f[2:]) for f in self.frames]


async def _publish(nc: nats.NATS, room: str, n: int) -> list[int]:
    seqs = []
    for i in range(n):
        record = ChatRecord(room=room, msg_id=f"m{i}", sender=User(id="u_1", name="a"),
                            ts="2026-01-01T00:00:00.000Z", text=f"t{i}")
        ack = await bus.publish_durable(nc, subjects.room_subject(room),
                                        msgspec.json.encode(record), 2.0)
        seqs.append(ack.seq)
    return seqs


async def _until(cond, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_dropped_live_events_are_fetched_and_relayed_in_order(nats_url: str) -> None:
    nc = await bus.connect(nats_url, "test")
    js = nc.jetstream()
    await ensure_chat_stream(js)
    other = await _publish(nc, "other", 2)  # another room's seqs interleave in the stream
    hub = RoomHub(nc, js)
    room = await hub.open("r1")
    baseline = await hub.last_seq(room)
    conn = FakeConn()
    hub.attach(conn, room, baseline)  # type: ignore[arg-type]

    first = await _publish(nc, "r1", 1)
    await _until(lambda: len(conn.frames) == 1)
    # Lose the next two live events: no subscription while they are republished.
    assert room.sub is not None
    callback = room.sub._cb
    await room.sub.unsubscribe()
    lost = await _publish(nc, "r1", 2)
    await _publish(nc, "other", 1)
    room.sub = await nc.subscribe(subjects.live_subject("r1"), cb=callback)
    await bus.sync(nc)
    after = await _publish(nc, "r1", 1)
    await _until(lambda: len(conn.frames) == 4)
    await asyncio.sleep(0.2)  # and nothing more arrives

    events = conn.events()
    assert [e["seq"] for e in events] == first + lost + after
    assert [e["prev_seq"] for e in events] == [0, first[0], lost[0], lost[1]]
    assert all(e["type"] == "message" and e["room"] == "r1" for e in events)
    assert other[0] < first[0]
    await hub.close_all()
    await nc.drain()


async def test_events_lost_during_a_reconnect_are_relayed_without_a_next_event(
        nats_url: str) -> None:
    """A reconnect loses what was republished meanwhile; the room then goes
    quiet. ``catch_up`` (run after each reconnect) relays the lost events —
    without it they would wait for the room's next event."""
    nc = await bus.connect(nats_url, "test")
    js = nc.jetstream()
    await ensure_chat_stream(js)
    hub = RoomHub(nc, js)
    room = await hub.open("r2")
    hub.attach(conn := FakeConn(), room, await hub.last_seq(room))  # type: ignore[arg-type]
    first = await _publish(nc, "r2", 1)
    await _until(lambda: len(conn.frames) == 1)
    assert room.sub is not None
    callback = room.sub._cb
    await room.sub.unsubscribe()  # as during a reconnect
    lost = await _publish(nc, "r2", 2)
    room.sub = await nc.subscribe(subjects.live_subject("r2"), cb=callback)
    await bus.sync(nc)
    await asyncio.sleep(0.2)
    assert len(conn.frames) == 1  # nothing shows the gap yet

    assert await hub.catch_up()
    assert [e["seq"] for e in conn.events()] == first + lost
    assert [e["prev_seq"] for e in conn.events()] == [0, first[0], lost[0]]
    assert await hub.catch_up()  # nothing more: relays nothing twice
    after = await _publish(nc, "r2", 1)  # the live feed goes on from there
    await _until(lambda: len(conn.frames) == 4)
    assert [e["seq"] for e in conn.events()] == first + lost + after
    await hub.close_all()
    await nc.drain()


async def test_a_leave_elsewhere_never_unsubscribes_a_room_mid_join(nats_url: str) -> None:
    nc = await bus.connect(nats_url, "test")
    js = nc.jetstream()
    await ensure_chat_stream(js)
    hub = RoomHub(nc, js)
    a, b = FakeConn(), FakeConn()
    room = await hub.open("r2")
    hub.attach(a, room, await hub.last_seq(room))  # type: ignore[arg-type]
    joining = await hub.open("r2")  # b's join is in progress...
    assert joining is room
    await hub.detach(a, "r2")  # type: ignore[arg-type]  # ...when a leaves
    await hub.detach(FakeConn(), "r2")  # type: ignore[arg-type]  # and a stranger's stray leave
    assert hub.rooms.get("r2") is room and room.sub is not None
    hub.attach(b, room, await hub.last_seq(room))  # type: ignore[arg-type]
    await _publish(nc, "r2", 1)
    await _until(lambda: len(b.frames) == 1)
    await hub.detach(b, "r2")  # type: ignore[arg-type]
    assert "r2" not in hub.rooms  # the last member gone and no join pending: unsubscribed
    await nc.drain()


def test_a_join_whose_floor_left_the_replay_buffer_sees_a_hole() -> None:
    from chat_gateway.rooms import Room

    room = Room("r3")
    assert not RoomHub.has_hole(room, 0)
    event = cast(Message, None)  # not looked at by has_hole
    room.recent.extend([(10, 7, b"", event), (12, 10, b"", event)])
    assert not RoomHub.has_hole(room, 7)  # the buffer reaches back to the floor
    assert not RoomHub.has_hole(room, 9)
    assert RoomHub.has_hole(room, 5)  # events in (5, 7] are gone from the buffer
