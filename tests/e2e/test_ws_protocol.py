"""The WebSocket contract at the edges: the three ways to authenticate, bad
tokens, bad frames, limits that keep the socket open, idempotent sends."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from waiting import eventually
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from .client import TIMEOUT, RequestFailed, Session, register_and_login
from .conftest import unique
from .stack import Stack

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
async def user(stack: Stack) -> dict[str, Any]:
    return await register_and_login(stack.gateway(1).url, unique("edge"))


async def _close_code(url: str, **kwargs: Any) -> tuple[int | None, str | None]:
    async with connect(url, **kwargs) as ws:
        with pytest.raises(ConnectionClosed):
            while True:
                await asyncio.wait_for(ws.recv(), TIMEOUT)
        assert ws.close_code is not None
        return ws.close_code, ws.close_reason


async def test_three_ways_to_authenticate(stack: Stack, user: dict[str, Any]) -> None:
    token = user["access_token"]
    by_query = await Session.open(stack.ws_url(1), token)
    assert by_query.welcome["user"]["id"] == user["user"]["id"]
    assert by_query.welcome["heartbeat"] == 25 and by_query.welcome["session"].startswith("s_")
    await by_query.close()

    async with connect(stack.ws_url(2),
                       additional_headers={"Authorization": f"Bearer {token}"}) as ws:
        assert json.loads(await ws.recv())["type"] == "welcome"

    async with connect(stack.ws_url(1)) as ws:
        await ws.send(json.dumps({"type": "join", "id": "early", "room": "x"}))
        early = json.loads(await ws.recv())
        assert early == {"type": "error", "id": "early", "code": "unauthorized",
                         "message": "authenticate first"}
        await ws.send(json.dumps({"type": "auth", "id": "a1", "token": token}))
        assert json.loads(await ws.recv())["type"] == "welcome"
        assert json.loads(await ws.recv()) == {"type": "ack", "id": "a1"}


async def test_bad_tokens_close_4401(stack: Stack, user: dict[str, Any]) -> None:
    token = user["access_token"]
    tampered = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    for url in (f"{stack.ws_url(1)}?token=garbage", f"{stack.ws_url(1)}?token={tampered}",
                stack.ws_url(2)):
        code, reason = await _close_code(url) if "token" in url else (None, None)
        if code is None:  # no token at all: the first-frame wait times out... or a bad frame
            async with connect(url) as ws:
                await ws.send(json.dumps({"type": "auth", "token": "nope"}))
                with pytest.raises(ConnectionClosed):
                    while True:
                        await asyncio.wait_for(ws.recv(), TIMEOUT)
                code, reason = ws.close_code, ws.close_reason
        assert code == 4401, (url, code, reason)
        assert reason


async def test_bad_frames_get_bad_request_and_socket_stays_open(
        stack: Stack, user: dict[str, Any]) -> None:
    s = await Session.open(stack.ws_url(1), user["access_token"])
    room = unique("bad")
    await s.request("join", room=room)
    raw_cases = ["not json", "[1,2]", '{"no_type":1}', '{"type":"fly","id":"u1"}',
                 '{"type":"send","id":"t1","room":"' + room + '","text":5}',
                 '{"type":"join","id":"r1","room":"a.b"}', '{"type":"join","room":"a*"}',
                 '{"type":"join","room":"a b"}', '{"type":"join","room":">"}',
                 '{"type":"join","room":""}', '{"type":"history","room":"' + room + '","limit":0}',
                 '{"type":"ping","id":' + json.dumps("x" * 65) + "}",
                 '{"type":"ping","id":7}']
    for raw in raw_cases:
        await s.ws.send(raw)
        err = await s.next_event("error")
        assert err["code"] == "bad_request", raw
        if '"id":"' in raw and len(raw) < 200 and '"x' not in raw:
            assert err.get("id") is not None, raw
    with pytest.raises(RequestFailed) as too_long:
        await s.request("send", room=room, text="é" * 4001)
    assert too_long.value.code == "too_large"
    with pytest.raises(RequestFailed) as empty:
        await s.request("send", room=room, text="   ")
    assert empty.value.code == "bad_request"
    ok = await s.request("send", room=room, text="é" * 4000)  # code points, not bytes
    assert ok["seq"] > 0
    with pytest.raises(RequestFailed) as not_joined:
        await s.request("send", room=unique("other"), text="hi")
    assert not_joined.value.code == "forbidden"
    await s.ws.send(json.dumps({"type": "ping"}))
    assert (await s.next_event("pong"))["type"] == "pong"
    history = await s.request("history", room=room)
    assert len(history["messages"]) == 1  # nothing of the bad input was stored
    await s.close()


async def test_oversized_frame_closes_1009(stack: Stack, user: dict[str, Any]) -> None:
    s = await Session.open(stack.ws_url(2), user["access_token"])
    await s.ws.send(json.dumps({"type": "send", "room": "r", "text": "x" * 17000}))
    await asyncio.wait_for(s._reader, 10)  # type: ignore[arg-type]
    assert s.close_code == 1009


async def test_client_msg_id_makes_send_idempotent(stack: Stack, user: dict[str, Any]) -> None:
    a = await Session.open(stack.ws_url(1), user["access_token"])
    b = await Session.open(stack.ws_url(2), user["access_token"])  # same user, other gateway
    room = unique("idem")
    await a.request("join", room=room)
    await b.request("join", room=room)
    first = await a.request("send", room=room, text="once", client_msg_id="c-1")
    again = await b.request("send", room=room, text="once", client_msg_id="c-1")
    assert (again["msg_id"], again["seq"], again["ts"]) == (first["msg_id"], first["seq"],
                                                            first["ts"])
    other = await a.request("send", room=room, text="twice", client_msg_id="c-2")
    assert other["seq"] > first["seq"]
    page = await a.request("history", room=room)
    assert [m["text"] for m in page["messages"]] == ["once", "twice"]
    second_join = await a.request("join", room=room)  # acked again, never doubles delivery
    assert second_join["last_seq"] == other["seq"]
    events = await a.messages(2)
    assert [e["seq"] for e in events] == [first["seq"], other["seq"]]
    await a.request("send", room=room, text="three")
    assert (await a.next_event("message"))["text"] == "three"
    leftover = [a.events.get_nowait() for _ in range(a.events.qsize())]
    assert [e for e in leftover if e["type"] == "message"] == []  # presence events may remain
    await a.close()
    await b.close()


async def test_client_msg_id_reused_for_another_message_is_a_conflict(
        stack: Stack, user: dict[str, Any]) -> None:
    """§3.3: the same id with another room or text → conflict, never the
    original's ack (which would drop the new message silently)."""
    s = await Session.open(stack.ws_url(1), user["access_token"])
    room, other = unique("cid"), unique("cid")
    await s.request("join", room=room)
    await s.request("join", room=other)
    cid = unique("c")
    first = await s.request("send", room=room, text="first", client_msg_id=cid)
    with pytest.raises(RequestFailed) as text_changed:
        await s.request("send", room=room, text="second", client_msg_id=cid)
    assert text_changed.value.code == "conflict"
    with pytest.raises(RequestFailed) as room_changed:
        await s.request("send", room=other, text="first", client_msg_id=cid)
    assert room_changed.value.code == "conflict"
    again = await s.request("send", room=room, text="first", client_msg_id=cid)
    assert again["msg_id"] == first["msg_id"]
    assert [m["text"] for m in (await s.request("history", room=other))["messages"]] == []
    await s.close()


async def test_join_ack_comes_before_any_event_of_the_room(
        stack: Stack, user: dict[str, Any]) -> None:
    """Reconnecting with `since` while the room is busy: the ack (with `missed`)
    is the first frame about the room, and missed + live form one chain."""
    writer = await Session.open(stack.ws_url(1), user["access_token"])
    room = unique("order")
    await writer.request("join", room=room)
    first = await writer.request("send", room=room, text="m0")

    pumped: list[dict[str, Any]] = []

    async def pump() -> None:
        for i in range(1, 19):  # within the default burst of 20
            pumped.append(await writer.request("send", room=room, text=f"m{i}"))
            await asyncio.sleep(0.03)  # pacing: still sending while the other joins

    pumping = asyncio.create_task(pump())
    await eventually(lambda: pumped, 5.0, "the first pumped message")  # a busy room
    async with connect(f"{stack.ws_url(2)}?token={user['access_token']}") as ws:
        assert json.loads(await ws.recv())["type"] == "welcome"
        await ws.send(json.dumps({"type": "join", "id": "j", "room": room,
                                  "since": first["seq"]}))
        frames = []
        while True:
            frame = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
            if frame["type"] in ("ack", "message"):
                frames.append(frame)
            if frame["type"] == "ack":
                break
        assert frames[-1]["type"] == "ack" and len(frames) == 1, "an event overtook the ack"
        chain = frames[0]["missed"]
        await pumping
        while not chain or chain[-1]["text"] != "m18":
            frame = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
            if frame["type"] == "message":
                chain.append(frame)
    assert [m["text"] for m in chain] == [f"m{i}" for i in range(1, 19)]
    assert [m["prev_seq"] for m in chain[1:]] == [m["seq"] for m in chain[:-1]]
    assert chain[0]["prev_seq"] == first["seq"]
    await writer.close()


async def test_rest_bodies_and_bounds_are_capped(stack: Stack, user: dict[str, Any]) -> None:
    import httpx

    base = stack.gateway(1).url
    async with httpx.AsyncClient(base_url=base, timeout=TIMEOUT) as http:
        big = b'{"username":"' + b"x" * 70_000 + b'","password":"p"}'
        r = await http.post("/v1/auth/login", content=big,
                            headers={"content-type": "application/json"})
        assert r.status_code == 413 and r.json()["error"]["code"] == "too_large"

        async def chunked():  # type: ignore[no-untyped-def]  # no Content-Length
            for _ in range(20):
                yield b"x" * 8192

        r = await http.post("/v1/auth/register", content=chunked())
        assert r.status_code == 413
        headers = {"Authorization": f"Bearer {user['access_token']}"}
        r = await http.get("/v1/rooms/r1/messages", params={"before": str(2**63)},
                           headers=headers)
        assert r.status_code == 400 and r.json()["error"]["code"] == "bad_request"
