"""chat_gateway.relay without NATS: a stored record becomes an event of the
room whose subject it came on, whatever its payload says."""

from __future__ import annotations

from typing import Any, cast

import msgspec
from gateway_fakes import ANN, EVE, Sock, conn

from chat_contract.bus import ChatRecord
from chat_contract.events import Message, User
from chat_gateway.localroom import LocalRoom
from chat_gateway.relay import Relay, live_event

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
