"""Issue 12 at the gateway, on a real stack with small settings: the join/leave
rate per socket, no silent misses (the periodic reconcile applies a removal
and an archive whose notices were never published), the outbound budget
(the largest buffer is cut first, 1013) and the connection caps per client
address and per gateway (1013). Distinct client addresses are distinct
loopback addresses (127.0.0.x)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest
from waiting import QUIET, eventually, scaled
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from .client import RequestFailed, Session, register_and_login
from .conftest import unique
from .hardening import RawWs, audit_lines, close_code_of, make_stack, metric, scrape, wait_for
from .stack import Stack

pytestmark = pytest.mark.e2e

GUARDS = {
    "CHAT_GATEWAY_JOIN_RATE": "1",
    "CHAT_GATEWAY_JOIN_BURST": "4",
    "CHAT_GATEWAY_RECONCILE_INTERVAL": "1",
    "CHAT_GATEWAY_OUTBOUND_BUFFER": str(8 << 20),  # only the budget cuts here
    "CHAT_GATEWAY_OUTBOUND_BUDGET": str(1 << 20),
    "CHAT_GATEWAY_MAX_CONNECTIONS_PER_ADDRESS": "3",
    "CHAT_GATEWAY_MAX_CONNECTIONS": "5",
}


@pytest.fixture(scope="module")
def stack(e2e_nats: str, e2e_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    yield from make_stack(e2e_nats, e2e_db, tmp_path_factory.mktemp("guards-logs"), **GUARDS)


async def _user(stack: Stack, gw: int = 1) -> dict[str, Any]:
    return await register_and_login(stack.gateway(gw).url, unique("grd"))


async def test_join_and_leave_are_rate_limited_per_socket(stack: Stack) -> None:
    u = await _user(stack)
    s = await Session.open(stack.ws_url(1), u["access_token"])
    rooms = [unique("jr") for _ in range(3)]
    codes = []
    for frame in (("join", rooms[0]), ("leave", rooms[0]), ("join", rooms[1]),
                  ("join", rooms[2]), ("leave", rooms[1]), ("join", rooms[0])):
        try:
            await s.request(frame[0], room=frame[1])
            codes.append("ok")
        except RequestFailed as exc:
            codes.append(exc.code)
    assert codes[:4] == ["ok"] * 4 and codes[4:] == ["rate_limited"] * 2, codes
    await s.ws.send(json.dumps({"type": "send", "room": rooms[2], "text": "sends are apart"}))
    assert (await s.next_event("message"))["text"] == "sends are apart"
    wait_for(lambda: any(a["msg"] == "rate limited" and a["user"] == u["user"]["id"]
                         for a in audit_lines(stack.gateway(1).log_path)), what="audit line")
    await asyncio.sleep(1.1)  # the bucket refills one token per second (the setting under test)
    await s.request("leave", room=rooms[1])
    await s.close()


async def test_a_removal_and_an_archive_without_notices_apply_within_the_interval(
        stack: Stack) -> None:
    owner, member = await _user(stack, 1), await _user(stack, 2)
    room = unique("rec")
    a = await Session.open(stack.ws_url(1), owner["access_token"])
    b = await Session.open(stack.ws_url(2), member["access_token"])
    await a.request("join", room=room)
    await b.request("join", room=room)
    await a.request("send", room=room, text="hello")
    assert (await b.next_event("message"))["text"] == "hello"
    # Changed in the database only: no MemberNotice or ArchiveNotice is ever published.
    db = await asyncpg.connect(stack.db_url)
    try:
        await db.execute("DELETE FROM history.members WHERE room = $1 AND user_id = $2",
                         room, member["user"]["id"])
        await db.execute("INSERT INTO history.removed (room, user_id) VALUES ($1, $2)",
                         room, member["user"]["id"])
        notice = await b.next_event("system", timeout=scaled(4.0))  # interval 1 s + a check
        assert notice["room"] == room and "no longer a member" in notice["text"]
        with pytest.raises(RequestFailed) as exc:
            await b.request("send", room=room, text="still here?")
        assert exc.value.code == "forbidden"

        await db.execute("UPDATE history.rooms SET archived = true WHERE id = $1", room)
        archived = await a.next_event("system", timeout=scaled(4.0))
        assert archived["room"] == room and archived["text"] == "room archived"
        with pytest.raises(RequestFailed) as ro:
            await a.request("send", room=room, text="read-only now")
        assert ro.value.code == "forbidden"
    finally:
        await db.close()
    await a.close()
    await b.close()


async def test_past_the_outbound_budget_the_largest_buffer_is_cut_first(stack: Stack) -> None:
    gw = stack.gateway(2)
    su, big_u, small_u = await _user(stack, 2), await _user(stack, 2), await _user(stack, 2)
    room = unique("bud")
    sender = await Session.open(stack.ws_url(2), su["access_token"])
    await sender.request("join", room=room)
    for i in range(12):  # each history page ~42 KB
        await sender.request("send", room=room, text=f"{i}" + "z" * 3500)
    before = scrape(gw.url)
    small = RawWs(gw.port, small_u["access_token"], source="127.0.0.5")
    big = RawWs(gw.port, big_u["access_token"], source="127.0.0.6")
    try:
        small.send_text(json.dumps({"type": "join", "id": "j", "room": room}))
        for i in range(8):  # ~340 KB: within the 1 MiB budget alone
            small.send_text(json.dumps({"type": "history", "id": f"h{i}", "room": room}))
        big.send_text(json.dumps({"type": "join", "id": "j", "room": room}))
        for i in range(100):  # ~4 MB: past the budget, under its own 8 MiB limit
            big.send_text(json.dumps({"type": "history", "id": f"h{i}", "room": room}))
        wait_for(lambda: metric(scrape(gw.url), "chat_ws_dropped_total", reason="outbound_budget")
                 > metric(before, "chat_ws_dropped_total", reason="outbound_budget"),
                 what="a budget cut")
        big_frames, big_eof = await asyncio.to_thread(big.read_all, scaled(8.0))
        small_frames, small_eof = await asyncio.to_thread(small.read_all, QUIET)
    finally:
        big.close()
        small.close()
    assert big_eof and close_code_of(big_frames) == 1013
    assert big_frames[-1] == (0x8, b"\x03\xf5outbound budget")
    assert not small_eof and close_code_of(small_frames) is None
    ids = {json.loads(p).get("id") for op, p in small_frames if op == 0x1}
    assert {f"h{i}" for i in range(8)} <= ids, "the smaller reader got all it asked for"
    after = scrape(gw.url)
    assert metric(after, "chat_ws_dropped_total", reason="outbound_budget") == metric(
        before, "chat_ws_dropped_total", reason="outbound_budget") + 1
    await sender.close()


async def _refused(url: str, source: str) -> tuple[int | None, str | None]:
    async with connect(url, local_addr=(source, 0)) as ws:
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), scaled(5.0))
        return ws.close_code, ws.close_reason


async def test_connection_caps_per_address_and_per_gateway(stack: Stack) -> None:
    u = await _user(stack)
    tok = u["access_token"]
    url = stack.ws_url(1)
    mine = [await Session.open(url, tok, local_addr=("127.0.0.2", 0)) for _ in range(3)]
    # A 4th socket from that address: closed with 1013 before it can authenticate.
    assert await _refused(f"{url}?token={tok}", "127.0.0.2") == (1013, "address connection cap")
    other = await Session.open(stack.ws_url(2), tok, local_addr=("127.0.0.2", 0))  # per gateway
    more = [await Session.open(url, tok, local_addr=("127.0.0.3", 0)) for _ in range(2)]
    assert await _refused(url, "127.0.0.4") == (1013, "gateway connection cap")
    await mine[0].close()  # a freed place is taken again

    async def admitted() -> Session | None:
        try:
            return await Session.open(url, tok, local_addr=("127.0.0.4", 0))
        except (AssertionError, ConnectionClosed):
            return None

    again = await eventually(admitted, 5.0, "a place freed by the close", interval=0.1)
    for s in (*mine[1:], *more, other):
        assert s.close_code is None
    lines = audit_lines(stack.gateway(1).log_path)
    assert any(a["msg"] == "connection refused" and a["remote"] == "127.0.0.2" for a in lines)
    assert metric(scrape(stack.gateway(1).url), "chat_ws_dropped_total",
                  reason="connection_cap") >= 2
    for s in (*mine[1:], *more, other, again):
        await s.close()
