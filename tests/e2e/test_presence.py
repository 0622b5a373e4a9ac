"""Presence and typing on the whole stack (issue 4): tabs on two gateways, a
SIGKILLed gateway, presence-service restarts, two presence instances, a
gateway restart, typing coalescing and expiry, bad input.

The stack runs with a short presence TTL (3 s) and leader lease (1 s) so
crash detection fits in a test."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any
from unittest.mock import ANY

import pytest
from waiting import QUIET, scaled

from .client import TIMEOUT, RequestFailed, Session, collect, register_and_login
from .conftest import unique
from .hardening import make_stack
from .stack import Stack

pytestmark = pytest.mark.e2e

TTL = 3
ENV = {"CHAT_PRESENCE_TTL": str(TTL), "CHAT_PRESENCE_LEASE": "1"}


@pytest.fixture(scope="module")
def stack(e2e_nats: str, e2e_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    yield from make_stack(e2e_nats, e2e_db, tmp_path_factory.mktemp("presence-logs"), **ENV)


async def _user(stack: Stack, gw: int = 1) -> dict[str, Any]:
    return await register_and_login(stack.gateway(gw).url, unique("pres"))


async def _open(stack: Stack, user: dict[str, Any], gw: int) -> Session:
    return await Session.open(stack.ws_url(gw), user["access_token"])


async def _watch(stack: Stack, user: dict[str, Any], gw: int, room: str) -> Session:
    """A member that has joined ``room`` and seen its own ``join`` event."""
    s = await _open(stack, user, gw)
    await s.request("join", room=room)
    own = await s.next_event("presence", timeout=scaled(3))
    assert own["event"] == "join" and own["user"] == user["user"], own
    return s


async def _events(s: Session, type_: str, wait: float) -> list[dict[str, Any]]:
    """Every ``type_`` event arriving within ``wait`` seconds, or already queued."""
    return [frame for frame in await collect(s, wait) if frame["type"] == type_]


async def _presence_of(s: Session, user: dict[str, Any], n: int,
                       quiet: float = QUIET) -> list[str]:
    """``user``'s presence events on ``s`` (their ``event``): wait for ``n`` of
    them, then listen ``quiet`` seconds more for any that should not come."""
    seen: list[str] = []
    while len(seen) < n:
        seen += _seen([await s.next_event("presence")], user)
    return seen + _seen(await _events(s, "presence", quiet), user)


def _ids(members: list[dict[str, Any]]) -> set[str]:
    return {m["id"] for m in members}


def _seen(events: list[dict[str, Any]], user: dict[str, Any]) -> list[str]:
    return [e["event"] for e in events if e["user"]["id"] == user["user"]["id"]]


async def test_two_tabs_on_two_gateways_join_once_and_leave_once(stack: Stack) -> None:
    room = unique("tabs")
    bob, alice = await _user(stack), await _user(stack)
    watcher = await _watch(stack, bob, 1, room)
    tab1 = await _open(stack, alice, 1)
    ack = await tab1.request("join", room=room)
    assert _ids(ack["members"]) == {bob["user"]["id"], alice["user"]["id"]}
    assert {"id": alice["user"]["id"], "name": alice["user"]["name"]} in ack["members"]
    got = await watcher.next_event("presence", timeout=scaled(2))
    assert got["event"] == "join" and got["user"] == alice["user"] and got["room"] == room
    assert got["ts"].endswith("Z")

    tab2 = await _open(stack, alice, 2)
    await tab2.request("join", room=room)
    listed = await tab2.request("presence", room=room)
    assert _ids(listed["members"]) == _ids(ack["members"])
    await tab1.close()
    assert await _presence_of(watcher, alice, 0) == []  # still on gw-2
    started = time.monotonic()
    await tab2.close()
    left = await watcher.next_event("presence", timeout=scaled(2))
    assert left["event"] == "leave" and left["user"] == alice["user"]
    assert time.monotonic() - started < scaled(2.0)
    assert await _presence_of(watcher, alice, 0) == []
    assert _ids((await watcher.request("presence", room=room))["members"]) == {bob["user"]["id"]}

    # A leave frame (not a close) is a leave too, and a rejoin a join.
    tab3 = await _open(stack, alice, 2)
    await tab3.request("join", room=room)
    await tab3.request("leave", room=room)
    assert await _presence_of(watcher, alice, 2) == ["join", "leave"]
    await tab3.close()
    await watcher.close()


async def test_sigkilled_gateway_users_leave_within_ttl_unless_connected_elsewhere(
        stack: Stack) -> None:
    room = unique("crash")
    bob, alice, carol = await _user(stack), await _user(stack), await _user(stack)
    watcher = await _watch(stack, bob, 1, room)
    doomed = await _open(stack, alice, 2)
    carol_doomed = await _open(stack, carol, 2)
    carol_safe = await _open(stack, carol, 1)
    for s in (doomed, carol_doomed, carol_safe):
        await s.request("join", room=room)
    joins: list[dict[str, Any]] = []
    while len(_seen(joins, alice) + _seen(joins, carol)) < 2:
        joins.append(await watcher.next_event("presence"))
    joins += await _events(watcher, "presence", QUIET)
    assert (_seen(joins, alice), _seen(joins, carol)) == (["join"], ["join"])

    killed = time.monotonic()
    stack.gateway(2).kill()  # SIGKILL: no goodbye
    try:
        left = await watcher.next_event("presence", timeout=TTL + scaled(5))
        took = time.monotonic() - killed
        assert left["event"] == "leave" and left["user"] == alice["user"], left
        assert took < TTL + scaled(5)  # the TTL is what is under test
        assert await _presence_of(watcher, carol, 0) == []
        members = (await watcher.request("presence", room=room))["members"]
        assert _ids(members) == {bob["user"]["id"], carol["user"]["id"]}
    finally:
        await stack.astart("gateway-2")
    for s in (watcher, carol_safe, doomed, carol_doomed):
        await s.close()


async def test_gateway_restart_does_not_flap_users_who_reconnect(stack: Stack) -> None:
    room = unique("drain")
    bob, alice = await _user(stack), await _user(stack)
    watcher = await _watch(stack, bob, 2, room)
    first = await _open(stack, alice, 1)
    await first.request("join", room=room)
    assert await _presence_of(watcher, alice, 1) == ["join"]
    stop = asyncio.create_task(stack.astop("gateway-1"))  # SIGTERM: drain, close 1012
    assert first._reader is not None
    await asyncio.wait_for(first._reader, TIMEOUT)
    assert first.close_code == 1012
    again = await _open(stack, alice, 2)  # what the load balancer does
    await again.request("join", room=room)
    await stop
    try:
        # Well past the TTL of the drained node's entries: no leave, no second
        # join (a negative check whose window is the TTL under test).
        assert await _presence_of(watcher, alice, 0, quiet=TTL + scaled(2.5)) == []
    finally:
        await stack.astart("gateway-1")
    await again.close()
    assert await _presence_of(watcher, alice, 1) == ["leave"]
    await watcher.close()


async def test_presence_service_restart_and_crash_emit_no_false_events(stack: Stack) -> None:
    room = unique("psvc")
    bob, alice = await _user(stack), await _user(stack)
    watcher = await _watch(stack, bob, 1, room)
    s = await _open(stack, alice, 2)
    await s.request("join", room=room)
    assert await _presence_of(watcher, alice, 1) == ["join"]

    await stack.astop("presence")  # SIGTERM
    await stack.astart("presence")
    stack.services["presence"].kill()  # and a crash: the lease must lapse first
    await stack.astart("presence")
    # Entries kept alive, no leave: a negative check over the TTL under test.
    assert await _events(watcher, "presence", TTL + scaled(1)) == []
    assert _ids((await s.request("presence", room=room))["members"]) == {
        bob["user"]["id"], alice["user"]["id"]}
    await s.close()
    left = await watcher.next_event("presence", timeout=scaled(3))
    assert left["event"] == "leave" and left["user"] == alice["user"]
    await watcher.close()


async def test_two_presence_instances_publish_each_event_once(stack: Stack) -> None:
    room = unique("twins")
    stack._add("presence-2", "chat-presence", "CHAT_PRESENCE_PORT")
    await stack.astart("presence-2")
    try:
        bob, alice = await _user(stack), await _user(stack)
        watcher = await _watch(stack, bob, 1, room)
        for i in range(3):
            s = await _open(stack, alice, 1 + i % 2)
            await s.request("join", room=room)
            await s.close()
        assert await _presence_of(watcher, alice, 6) == ["join", "leave"] * 3
        stack.services["presence"].kill()  # the leader (it started first) dies
        s = await _open(stack, alice, 2)
        await s.request("join", room=room)  # the survivor answers the members query
        got = await watcher.next_event("presence", timeout=scaled(5))  # after the lease lapses
        assert got["event"] == "join" and got["user"] == alice["user"]
        await s.close()
        assert await _presence_of(watcher, alice, 1) == ["leave"]
        await watcher.close()
    finally:
        await stack.astop("presence-2")
        del stack.services["presence-2"]
        await stack.astart("presence")


async def test_typing_relayed_coalesced_and_expired(stack: Stack) -> None:
    room = unique("typing")
    alice, bob = await _user(stack), await _user(stack)
    typist = await _open(stack, alice, 1)
    other_tab = await _open(stack, alice, 2)
    reader = await _open(stack, bob, 2)
    for s in (typist, other_tab, reader):
        await s.request("join", room=room)
    started = time.monotonic()
    for _ in range(20):  # a fast typist: one start per keystroke
        await typist.ws.send(f'{{"type":"typing","room":"{room}","state":"start"}}')
        await asyncio.sleep(0.05)
    first = await reader.next_event("typing", timeout=scaled(2))
    assert first == {"type": "typing", "room": room, "user": alice["user"], "state": "start"}
    # it lapses: 6 s after the last start (the expiry is what is under test)
    stop = await reader.next_event("typing", timeout=6 + scaled(3))
    lapsed = time.monotonic() - started
    assert stop["state"] == "stop" and stop["user"] == alice["user"]
    assert 5.5 < lapsed < 6 + scaled(2.5), lapsed
    # The typist's own connections are not told about their own typing.
    assert await _events(typist, "typing", QUIET) == []
    assert await _events(other_tab, "typing", 0) == []  # the same window: already over

    await typist.ws.send(f'{{"type":"typing","room":"{room}","state":"start"}}')
    await typist.ws.send(f'{{"type":"typing","room":"{room}","state":"stop"}}')
    got = [(await reader.next_event("typing", timeout=scaled(5)))["state"] for _ in range(2)]
    assert got == ["start", "stop"]
    assert await _events(reader, "typing", QUIET) == []
    for s in (typist, other_tab, reader):
        await s.close()


async def test_bad_presence_and_typing_input(stack: Stack) -> None:
    alice = await _user(stack)
    s = await _open(stack, alice, 1)
    with pytest.raises(RequestFailed) as not_joined:
        await s.request("presence", room=unique("elsewhere"))
    assert not_joined.value.code == "forbidden"
    with pytest.raises(RequestFailed) as typing_not_joined:
        await s.request("typing", room=unique("elsewhere"), state="start")
    assert typing_not_joined.value.code == "forbidden"
    for bad in ("has space", "a.b", "x" * 65, "", "star*"):
        with pytest.raises(RequestFailed) as invalid:
            await s.request("presence", room=bad)
        assert invalid.value.code == "bad_request"
    with pytest.raises(RequestFailed) as bad_state:
        await s.request("typing", room="ok", state="maybe")
    assert bad_state.value.code == "bad_request"
    room = unique("typed")
    await s.request("join", room=room)
    assert await s.request("typing", room=room, state="start") == {"type": "ack", "id": ANY}
    await s.close()
