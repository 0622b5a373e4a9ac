"""Failure modes on a real stack (issue 5): NATS going away and coming back, a
service down, and a gateway drained by SIGTERM behind a real Caddy while a
steady stream of messages flows."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from waiting import eventually, scaled
from websockets.exceptions import ConnectionClosed, WebSocketException

from chat_devstack.caddy import Caddy
from chat_devstack.nats import NatsServer
from chat_devstack.ports import free_port, http_ok

from .client import TIMEOUT, RequestFailed, Session, register_and_login
from .conftest import assert_no_violations, unique
from .hardening import make_stack, metric, scrape, wait_for
from .stack import Stack, authorized_nats

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def own_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    if os.environ.get("CHAT_TEST_NATS_URL"):
        pytest.skip("needs a NATS server the test can stop")
    with authorized_nats(tmp_path_factory.mktemp("own-nats")) as server:
        yield server
    assert_no_violations(server)


@pytest.fixture(scope="module")
def stack(own_nats: NatsServer, e2e_db: str,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    yield from make_stack(own_nats.url, e2e_db, tmp_path_factory.mktemp("resilience-logs"))


def _ready(stack: Stack, i: int) -> bool:
    return http_ok(f"{stack.gateway(i).url}/readyz")


async def _when_available(attempt: Callable[[], Awaitable[dict[str, Any]]],
                          what: str) -> dict[str, Any]:
    """The ack of the first ``attempt`` not refused ``unavailable`` (any other error fails)."""
    async def once() -> dict[str, Any] | None:
        try:
            return await attempt()
        except RequestFailed as exc:
            assert exc.code == "unavailable", exc
            return None

    return await eventually(once, 10.0, f"{what} available again", interval=0.2)


async def test_nats_down_keeps_sockets_answers_unavailable_and_recovers(
        stack: Stack, own_nats: NatsServer) -> None:
    u = await register_and_login(stack.gateway(1).url, unique("nd"))
    s = await Session.open(stack.ws_url(1), u["access_token"])
    room = unique("nd")
    await s.request("join", room=room)
    await s.request("send", room=room, text="before")
    await s.next_event("message")
    # A second member, on the other gateway, whose removal's notice will be lost.
    gone = await register_and_login(stack.gateway(2).url, unique("gone"))
    g = await Session.open(stack.ws_url(2), gone["access_token"])
    await g.request("join", room=room)
    # And one whom u blocks while NATS is away (the BlocksNotice is lost too).
    pest = await register_and_login(stack.gateway(2).url, unique("pest"))
    p = await Session.open(stack.ws_url(2), pest["access_token"])
    await p.request("join", room=room)

    await asyncio.to_thread(own_nats.stop)
    try:
        await asyncio.to_thread(wait_for, lambda: not _ready(stack, 1) and not _ready(stack, 2),
                                10.0, "readyz 503")
        assert metric(scrape(stack.gateway(1).url), "chat_nats_connected") == 0
        started = time.monotonic()
        with pytest.raises(RequestFailed) as exc:
            await s.request("send", room=room, text="while down")
        assert exc.value.code == "unavailable"
        assert time.monotonic() - started < 2.0 + scaled(1.5)  # the request timeout, not a hang
        started = time.monotonic()
        with pytest.raises(RequestFailed) as join_exc:
            await s.request("join", room=room + "x")
        assert join_exc.value.code == "unavailable"
        assert time.monotonic() - started < 2.0 + scaled(1.5)
        await s.ws.send(json.dumps({"type": "ping"}))
        assert (await s.next_event("pong"))["type"] == "pong"
        assert s.close_code is None  # the socket survives
        # Removed while NATS is away: the MemberNotice could not reach anyone.
        db = await asyncpg.connect(stack.db_url)
        try:
            await db.execute("DELETE FROM history.members WHERE room = $1 AND user_id = $2",
                             room, gone["user"]["id"])
            await db.execute("INSERT INTO history.removed (room, user_id) VALUES ($1, $2)",
                             room, gone["user"]["id"])
            await db.execute("INSERT INTO history.blocks (blocker, blocked) VALUES ($1, $2)",
                             u["user"]["id"], pest["user"]["id"])
        finally:
            await db.close()
    finally:
        await asyncio.to_thread(own_nats.restart)
    await asyncio.to_thread(wait_for, lambda: _ready(stack, 1) and _ready(stack, 2), 15.0,
                            "readyz 200 again")
    assert metric(scrape(stack.gateway(1).url), "chat_nats_connected") == 1
    # The service replicas reconnect at their own pace.
    ack = await _when_available(lambda: s.request("send", room=room, text="after"), "send")
    got = await s.next_event("message")
    assert got["text"] == "after" and got["seq"] == ack["seq"]
    # history's durable consumer catches up after the reconnect
    page = await _when_available(lambda: s.request("history", room=room), "history")
    # What was answered `unavailable` was not stored after all.
    assert [m["text"] for m in page["messages"]] == ["before", "after"]
    # The gateway re-checked its open rooms after the reconnect.
    notice = await g.next_event("system", timeout=10)
    assert notice["room"] == room and "no longer a member" in notice["text"]
    with pytest.raises(RequestFailed) as after_removal:
        await g.request("send", room=room, text="still here?")
    assert after_removal.value.code == "forbidden"
    # ... and u's sockets learned the block: pest's messages no longer reach u.
    for attempt in range(20):
        await p.request("send", room=room, text=f"pest {attempt}")
        mine = await s.request("send", room=room, text=f"u {attempt}")
        seen = []
        while not seen or seen[-1]["seq"] != mine["seq"]:
            seen.append(await s.next_event("message"))
        if all(m["sender"]["id"] != pest["user"]["id"] for m in seen):
            break
        await asyncio.sleep(0.2)
    else:
        raise AssertionError("the block made while NATS was down never took effect")
    await p.close()
    await g.close()
    await s.close()


async def test_auth_service_down_rest_503_then_back(stack: Stack) -> None:
    await asyncio.to_thread(stack.services["auth"].stop)
    try:
        async with httpx.AsyncClient(base_url=stack.gateway(2).url, timeout=TIMEOUT) as http:
            for path in ("/v1/auth/login", "/v1/auth/register"):
                started = time.monotonic()
                r = await http.post(path, json={"username": unique("x"), "password": "pw123456!"})
                assert r.status_code == 503, r.text
                assert r.json()["error"]["code"] == "unavailable"
                assert time.monotonic() - started < 2.0 + scaled(1.5)
    finally:
        await stack.astart("auth")
    assert (await register_and_login(stack.gateway(2).url, unique("back")))["access_token"]


# --- drain behind Caddy ------------------------------------------------------


async def _member(url: str, token: str, room: str, got: list[dict[str, Any]],
                  codes: list[int | None], done: asyncio.Event, joined: asyncio.Event) -> None:
    """Stay in ``room`` through Caddy, reconnecting with ``since`` when closed.

    The drain is the only way out of a session (docs/protocol.md §3.5.6): each
    one that ends before ``done`` must have been closed by the server with
    1012, and its reconnect's join must be acked; a refused join, a lost ack
    or any other close fails the test.
    """
    since: int | None = None
    while not done.is_set():
        try:
            s = await Session.open(url, token)
        except (OSError, WebSocketException):  # the node is down or closed us before welcome
            await asyncio.sleep(0.1)
            continue
        assert s._reader is not None
        try:
            ack = await s.request("join", room=room,
                                  **({"since": since} if since is not None else {}))
        except ConnectionError:  # closed (the drain) while the join was on its way
            pass
        else:
            assert ack["room"] == room and not ack.get("missed_truncated"), ack
            for m in ack["missed"]:
                got.append(m)
                since = m["seq"]
            if since is None:
                since = ack["last_seq"]
            joined.set()
            while not done.is_set():
                try:
                    event = await s.next_event("message", timeout=0.1)
                except TimeoutError:
                    if s._reader.done() and s.events.empty():
                        break
                    continue
                got.append(event)
                since = event["seq"]
        if not done.is_set():
            await s._reader  # the server closed the socket: read to its close code
            assert s.close_code == 1012, f"session ended with close code {s.close_code}"
        codes.append(s.close_code)
        with contextlib.suppress(ConnectionClosed):
            await s.close()


async def _sender(url: str, token: str, room: str, n: int, acked: dict[str, int]) -> None:
    s: Session | None = None
    i = 0
    while i < n:
        if s is None or (s._reader is not None and s._reader.done()):
            try:
                s = await Session.open(url, token)
                await s.request("join", room=room)
            except (OSError, WebSocketException):  # node down, or closed by the drain
                s = None
                await asyncio.sleep(0.1)
                continue
        try:
            ack = await s.request("send", room=room, text=f"m{i}", client_msg_id=f"c{i}")
        except RequestFailed as exc:
            assert exc.code in ("rate_limited", "unavailable"), exc  # both say "retry"
            await asyncio.sleep(0.5 if exc.code == "rate_limited" else 0.1)
            continue  # retried with the same client_msg_id: stored at most once
        except (ConnectionError, ConnectionClosed):  # closed by the drain: reconnect, resend
            s = None
            continue
        acked[ack["msg_id"]] = ack["seq"]
        i += 1
        await asyncio.sleep(0.12)
    if s is not None:
        await s.close()


async def test_drain_behind_caddy_loses_and_doubles_nothing(
        stack: Stack, tmp_path: Path) -> None:
    gw1 = stack.gateway(1)
    caddy = await asyncio.to_thread(Caddy.start, free_port(),
                                    [gw1.port, stack.gateway(2).port], tmp_path / "caddy")
    tasks: list[asyncio.Task[None]] = []
    try:
        await asyncio.to_thread(wait_for, lambda: http_ok(f"{caddy.url}/readyz"), 10.0, "caddy")
        lb_ws = f"ws://127.0.0.1:{caddy.lb_port}/ws"
        room = unique("drain")
        users = [await register_and_login(caddy.url, unique("dm")) for _ in range(5)]
        done = asyncio.Event()
        got: list[list[dict[str, Any]]] = [[] for _ in range(4)]
        codes: list[list[int | None]] = [[] for _ in range(4)]
        joins = [asyncio.Event() for _ in range(4)]
        members = [asyncio.create_task(_member(lb_ws, users[k]["access_token"], room, got[k],
                                               codes[k], done, joins[k])) for k in range(4)]
        tasks += members
        await asyncio.wait_for(asyncio.gather(*(j.wait() for j in joins)), scaled(15))
        acked: dict[str, int] = {}
        sender = asyncio.create_task(_sender(lb_ws, users[4]["access_token"], room, 40, acked))
        tasks.append(sender)
        await eventually(lambda: len(acked) >= 10, 15.0, "messages flowing before the drain")

        assert gw1.proc is not None
        started = time.monotonic()
        gw1.proc.send_signal(signal.SIGTERM)
        returncode = await asyncio.to_thread(gw1.proc.wait, 15)
        drain_seconds = time.monotonic() - started
        gw1.stop()
        assert returncode == 0 and drain_seconds < 10, (returncode, drain_seconds)
        log = gw1.log_path.read_text()
        assert '"msg":"sockets closed"' in log and '"code":1012' in log

        await stack.astart("gateway-1")
        await asyncio.wait_for(sender, scaled(60))

        def complete() -> bool:
            for task in members:  # a member's failed assertion fails the test at once
                if task.done():
                    task.result()
            return all({m["msg_id"] for m in g} >= set(acked) for g in got)

        await eventually(complete, 20.0, "every acked message everywhere")
        done.set()
        await asyncio.gather(*members)
        assert len(acked) == 40
        for g in got:
            ids = [m["msg_id"] for m in g]
            assert len(ids) == len(set(ids)), "a message was delivered twice"
            assert set(ids) == set(acked), "an acked message is missing"
            prev = 0
            for m in g:
                assert m["prev_seq"] == prev, "broken seq chain"
                prev = m["seq"]
        assert any(1012 in c for c in codes), codes  # someone was on the drained node
    finally:
        for task in tasks:  # still running only if the test failed
            task.cancel()
        await asyncio.to_thread(caddy.stop)
