"""The gateway's relay path on real NATS: gaps in the live feed repaired
from the stream, rooms held while a join is under way, and the room of an
event taken from its subject, never from its payload.

Core NATS may drop a republished event; the next event's prev_seq then points
past the last one relayed, and the hub must fetch the missing ones from the
CHAT stream and relay them first, in order, exactly once.
"""

from __future__ import annotations

import asyncio
import functools
import json

import msgspec
import nats
import pytest

from chat_contract import subjects
from chat_contract.bus import ChatRecord
from chat_contract.errors import ChatError, ErrorCode
from chat_contract.events import User
from chat_gateway.relay import Relay
from chat_gateway.rooms import Admission, RoomHub
from chat_kit import bus
from chat_kit.stream import ensure_chat_stream

pytestmark = pytest.mark.integration


class FakeConn:
    """Stands in for a socket: records the frames the hub writes to it."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.user = User(id="u_x", name="x")
        self.rooms: set[str] = set()
        self.blocked: set[str] = set()  # blocks nobody: gets the shared frames

    def write_frame(self, frame: bytes) -> bool:
        self.frames.append(frame)
        return True

    def events(self) -> list[dict[str, object]]:
        # unmasked server frames here are < 64 KiB: a 2- or 4-byte header
        return [json.loads(f[4:] if f[1] == 126 else f[2:]) for f in self.frames]


async def _publish(nc: nats.NATS, room: str, n: int, payload_room: str | None = None,
                   ) -> list[int]:
    seqs = []
    for i in range(n):
        record = ChatRecord(room=payload_room or room, msg_id=f"m{i}",
                            sender=User(id="u_1", name="a"), ts="2026-01-01T00:00:00.000Z",
                            text=f"t{i}")
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
    hub = RoomHub(nc, Relay(js))
    conn = FakeConn()
    room = await hub.join(conn, "r1")  # type: ignore[arg-type]

    first = await _publish(nc, "r1", 1)
    await _until(lambda: len(conn.frames) == 1)
    # Lose the next two live events: no subscription while they are republished.
    assert room.live_sub is not None
    await room.live_sub.unsubscribe()
    lost = await _publish(nc, "r1", 2)
    await _publish(nc, "other", 1)
    room.live_sub = await nc.subscribe_direct(
        subjects.live_subject("r1"), functools.partial(hub.relay.on_live, room))
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
    hub = RoomHub(nc, Relay(js))
    room = await hub.join(conn := FakeConn(), "r2")  # type: ignore[arg-type]
    first = await _publish(nc, "r2", 1)
    await _until(lambda: len(conn.frames) == 1)
    assert room.live_sub is not None
    await room.live_sub.unsubscribe()  # as during a reconnect
    lost = await _publish(nc, "r2", 2)
    room.live_sub = await nc.subscribe_direct(
        subjects.live_subject("r2"), functools.partial(hub.relay.on_live, room))
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
    hub = RoomHub(nc, Relay(js))
    a, b = FakeConn(), FakeConn()
    room = await hub.join(a, "r3")  # type: ignore[arg-type]
    admitting = asyncio.Event()
    proceed = asyncio.Event()

    async def slow_admit(joined: object) -> Admission:
        admitting.set()
        await proceed.wait()  # b's join is under way (asking history-service...)
        last = await hub.last_seq(room)
        return Admission(last_seq=last, floor=last)

    join_b = asyncio.create_task(hub.join(b, "r3", slow_admit))  # type: ignore[arg-type]
    await admitting.wait()
    await hub.leave(a, "r3")  # type: ignore[arg-type]  # ...when a leaves
    await hub.leave(FakeConn(), "r3")  # type: ignore[arg-type]  # and a stranger's stray leave
    assert hub.rooms.get("r3") is room and room.live_sub is not None
    proceed.set()
    assert await join_b is room and b.rooms == {"r3"} and a.rooms == set()
    await _publish(nc, "r3", 1)
    await _until(lambda: len(b.frames) == 1)
    assert a.frames == []
    await hub.leave(b, "r3")  # type: ignore[arg-type]
    assert "r3" not in hub.rooms  # the last member gone and no join pending: unsubscribed
    await nc.drain()


async def test_a_refused_join_leaves_nothing_held(nats_url: str) -> None:
    nc = await bus.connect(nats_url, "test")
    hub = RoomHub(nc, Relay(nc.jetstream()))
    conn = FakeConn()

    async def refuse(room: object) -> Admission:
        raise ChatError(ErrorCode.FORBIDDEN, "private room")

    with pytest.raises(ChatError):
        await hub.join(conn, "r4", refuse)  # type: ignore[arg-type]
    assert "r4" not in hub.rooms and conn.rooms == set()
    await nc.drain()


async def test_the_room_of_a_relayed_event_is_its_subjects_not_its_payloads(
        nats_url: str) -> None:
    """A record stored under chat.room.r5 whose payload names r6 is relayed as
    an event of r5 (where history stores it too), and r6's members get nothing."""
    nc = await bus.connect(nats_url, "test")
    js = nc.jetstream()
    await ensure_chat_stream(js)
    hub = RoomHub(nc, Relay(js))
    in_r5, in_r6 = FakeConn(), FakeConn()
    await hub.join(in_r5, "r5")  # type: ignore[arg-type]
    await hub.join(in_r6, "r6")  # type: ignore[arg-type]
    forged = await _publish(nc, "r5", 1, payload_room="r6")  # live: chat.live.r5
    honest = await _publish(nc, "r6", 1)
    await _until(lambda: len(in_r5.frames) == 1 and len(in_r6.frames) == 1)
    await asyncio.sleep(0.2)  # and nothing more arrives
    [event] = in_r5.events()
    assert event["room"] == "r5" and event["seq"] == forged[0]
    [other] = in_r6.events()
    assert other["room"] == "r6" and other["seq"] == honest[0]
    # The repair path reads the stream by subject: the same rule there.
    r5 = hub.rooms["r5"]
    assert r5.live_sub is not None
    await r5.live_sub.unsubscribe()
    lost = await _publish(nc, "r5", 1, payload_room="r6")
    r5.live_sub = await nc.subscribe_direct(
        subjects.live_subject("r5"), functools.partial(hub.relay.on_live, r5))
    await bus.sync(nc)
    after = await _publish(nc, "r5", 1)
    await _until(lambda: len(in_r5.frames) == 3)
    assert [(e["room"], e["seq"]) for e in in_r5.events()] == [
        ("r5", forged[0]), ("r5", lost[0]), ("r5", after[0])]
    assert len(in_r6.frames) == 1
    await hub.close_all()
    await nc.drain()
