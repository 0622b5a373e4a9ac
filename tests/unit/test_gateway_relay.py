"""chat_gateway.relay without NATS: a stored record becomes an event of the
room whose subject it came on, whatever its payload says."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any, cast

import msgspec
from gateway_fakes import ANN, EVE, Sock, conn
from nats.js.errors import NotFoundError
from waiting import eventually

from chat_contract.bus import ChatRecord
from chat_contract.events import Message, User
from chat_gateway.localroom import LocalRoom
from chat_gateway.relay import Relay, live_event
from chat_kit.natsclient import header_value

relay = Relay(cast(Any, None))


def record(room: str, sender: User = ANN, kind: str = "message", text: str | None = "hi",
           ) -> bytes:
    return msgspec.json.encode(ChatRecord(room=room, msg_id="m1", sender=sender,
                                          ts="2024-01-01T00:00:00.000Z", kind=cast(Any, kind),
                                          text=text))


def test_the_event_names_the_subjects_room_not_the_payloads() -> None:
    a = Sock(EVE)
    room = LocalRoom("r")
    room.members = {conn(a): 0}
    room.last_seq = 0
    relay.deliver(room, 1, 0, record("elsewhere"))
    [event] = a.events()
    assert isinstance(event, Message) and event.room == "r" and event.seq == 1


def test_live_event_kinds() -> None:
    edit = msgspec.json.decode(record("x", kind="edit", text="new"), type=ChatRecord)
    gone = msgspec.json.decode(record("x", kind="delete", text="old"), type=ChatRecord)
    e = live_event("r", edit, 5, 4)
    d = live_event("r", gone, 6, 5)
    assert (e.room, e.edited, e.deleted, e.text) == ("r", True, False, "new")
    assert (d.room, d.edited, d.deleted, d.text) == ("r", False, True, None)


def test_a_garbled_record_is_skipped_but_counted_as_relayed() -> None:
    a = Sock(EVE)
    room = LocalRoom("r")
    room.members = {conn(a): 0}
    room.last_seq = 0
    relay.deliver(room, 1, 0, b"{not json")
    relay.deliver(room, 2, 1, record("r"))
    assert a.chain() == [(2, 1)] and room.last_seq == 2


def live_headers(seq: int, prev: int) -> bytes:
    return (b"NATS/1.0\r\nNats-Stream: CHAT\r\nNats-Subject: chat.room.r\r\n"
            b"Nats-Sequence: %d\r\nNats-Time-Stamp: 2024-01-01T00:00:00Z\r\n"
            b"Nats-Last-Sequence: %d\r\n\r\n" % (seq, prev))


def test_header_value_reads_the_named_header_only() -> None:
    raw = live_headers(7, 5)
    assert header_value(raw, b"Nats-Sequence") == b"7"
    assert header_value(raw, b"Nats-Last-Sequence") == b"5"
    assert header_value(raw, b"Nats-Msg-Id") is None
    assert header_value(b"", b"Nats-Sequence") is None


def test_live_events_relay_inline_once_and_in_order() -> None:
    a = Sock(EVE)
    room = LocalRoom("r")
    room.members = {conn(a): 0}
    room.last_seq = 0
    relay.on_live(room, record("r"), live_headers(1, 0))
    relay.on_live(room, record("r"), live_headers(1, 0))  # a redelivery
    relay.on_live(room, record("r"), live_headers(2, 1))
    relay.on_live(room, record("r"), b"NATS/1.0\r\n\r\n")  # no sequence: dropped
    assert a.chain() == [(1, 0), (2, 1)] and room.backlog is None


class _Stream:
    """The stream as a gap repair reads it; reads wait until ``open`` is set."""

    def __init__(self, stored: dict[int, bytes]) -> None:
        self.stored = stored
        self.open = asyncio.Event()

    async def get_msg(self, stream: str, *, seq: int, subject: str, next: bool,
                      direct: bool) -> Any:
        await self.open.wait()
        found = [s for s in sorted(self.stored) if s >= seq]
        if not found:
            raise NotFoundError
        return SimpleNamespace(seq=found[0], data=self.stored[found[0]])


async def test_events_arriving_during_a_repair_wait_behind_it_in_order() -> None:
    stream = _Stream({2: record("r"), 3: record("r")})
    repairing = Relay(cast(Any, stream))
    a = Sock(EVE)
    room = LocalRoom("r")
    room.members = {conn(a): 0}
    room.last_seq = 1
    repairing.on_live(room, record("r"), live_headers(4, 3))  # 2 and 3 missing: repair
    repairing.on_live(room, record("r"), live_headers(5, 4))  # waits behind the repair
    repairing.on_live(room, record("r"), live_headers(4, 3))  # a duplicate of the first
    await asyncio.sleep(0)
    assert a.chain() == [] and room.backlog is not None
    stream.open.set()
    await eventually(lambda: room.backlog is None)
    assert a.chain() == [(2, 1), (3, 2), (4, 3), (5, 4)] and room.last_seq == 5
