"""A reconnect with ``since`` (docs/protocol.md §3.5.3) gets the same ``missed``
whether the gateway answers it from the room's replay buffer (the room is held
there by another member, the events are plain new messages) or asks
history-service (the room is not held there, or an edit is among the events)."""

from __future__ import annotations

from typing import Any

import pytest

from .client import Session, register_and_login
from .conftest import unique
from .hardening import metric, scrape
from .stack import Stack

pytestmark = pytest.mark.e2e


def _history_reads(stack: Stack) -> float:
    return metric(scrape(stack.services["history"].url), "chat_service_requests_total",
                  endpoint="messages")


def _strip(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in m.items() if k != "type"} for m in items]


async def test_missed_from_the_replay_buffer_equals_history(stack: Stack) -> None:
    ann = await register_and_login(stack.gateway(1).url, unique("ann"))
    bob = await register_and_login(stack.gateway(1).url, unique("bob"))
    room = unique("room")
    keeper = await Session.open(stack.ws_url(1), ann["access_token"])  # holds the room on gw-1
    await keeper.request("join", room=room)
    b = await Session.open(stack.ws_url(1), bob["access_token"])
    await b.request("join", room=room)
    first = await keeper.request("send", room=room, text="before")
    await b.next_event("message")
    await b.close()
    sent = [await keeper.request("send", room=room, text=f"missed {i} @nobody")
            for i in range(5)]

    # Back on gw-1, where the room is held: answered from the buffer.
    reads = _history_reads(stack)
    again = await Session.open(stack.ws_url(1), bob["access_token"])
    held = await again.request("join", room=room, since=first["seq"])
    assert _history_reads(stack) == reads
    # On gw-2, where nobody holds it: answered by history-service.
    other = await Session.open(stack.ws_url(2), bob["access_token"])
    stored = await other.request("join", room=room, since=first["seq"])
    assert _history_reads(stack) == reads + 1

    assert [m["seq"] for m in held["missed"]] == [a["seq"] for a in sent]
    assert _strip(held["missed"]) == _strip(stored["missed"])
    assert held["last_seq"] == stored["last_seq"] == sent[-1]["seq"]
    assert held["missed"][0]["prev_seq"] == first["seq"]

    # An edit among the missed events: history's view (the message in its
    # latest state) on both gateways.
    await again.close()
    edit = await keeper.request("edit", room=room, msg_id=sent[0]["msg_id"], text="changed")
    back = await Session.open(stack.ws_url(1), bob["access_token"])
    after_edit = await back.request("join", room=room, since=first["seq"])
    from_history = await other.request("history", room=room, after=first["seq"])
    assert _strip(after_edit["missed"]) == _strip(from_history["messages"])
    assert after_edit["last_seq"] == edit["seq"]
    for s in (keeper, back, other):
        await s.close()
