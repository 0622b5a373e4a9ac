"""The server API (README "Server API", docs/protocol.md §5.1) on real
processes: HTTP on each gateway's internal listener and NATS request–reply
as the ``server`` role, with the keys of a secret file; chat-admin on top."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest
from waiting import eventually, scaled

from chat_contract import subjects
from chat_kit.bus import ERROR_CODE_HEADER

from .client import Session, expect_error, register_and_login, rest, user_id
from .conftest import unique
from .stack import Stack

pytestmark = pytest.mark.e2e
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def stack(e2e_nats: str, e2e_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(e2e_nats, e2e_db, tmp_path_factory.mktemp("stack-logs"), server_api=True)
    try:
        s.start()
        yield s
    finally:
        s.stop()


def _api(stack: Stack, gw: int = 1, key: str | None = "full") -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {stack.server_api_keys[key]}"} if key else {}
    return httpx.AsyncClient(base_url=stack.server_api_url(gw), headers=headers,
                             timeout=scaled(5))


async def _post(stack: Stack, method: str, body: Any, gw: int = 1,
                key: str | None = "full") -> httpx.Response:
    async with _api(stack, gw, key) as http:
        return await http.post(f"/v1/server/{method}", json=body)


async def _nats(stack: Stack, role: str = "server") -> nats.NATS:
    return await nats.connect(stack.nats_url, **stack.nats_login(role))


async def _ask(nc: nats.NATS, method: str, body: Any, key: str | None) -> tuple[str | None, Any]:
    """(error code or None, reply body) of one NATS request."""
    headers = {"Chat-Api-Key": key} if key is not None else None
    msg = await nc.request(f"{subjects.SERVER_PREFIX}.{method}", json.dumps(body).encode(),
                           timeout=scaled(5), headers=headers)
    code = (msg.headers or {}).get(ERROR_CODE_HEADER)
    return code, (json.loads(msg.data) if msg.data else None)


async def _room_with(stack: Stack, *users: dict[str, Any]) -> tuple[str, list[Session]]:
    """A public room, each user joined with one socket (user i on gateway i)."""
    room = unique("srv")
    sessions = []
    for i, user in enumerate(users, start=1):
        s = await Session.open(stack.ws_url(1 + (i - 1) % stack.gateways), user["access_token"])
        await s.request("join", room=room)
        sessions.append(s)
    return room, sessions


async def test_a_bot_publish_is_live_on_both_gateways_and_in_history(stack: Stack) -> None:
    alice = await register_and_login(stack.gateway(1).url, unique("alice"))
    bob = await register_and_login(stack.gateway(2).url, unique("bob"))
    room, (sa, sb) = await _room_with(stack, alice, bob)
    first = await sa.request("send", room=room, text="before the bot")
    r = await _post(stack, "publish", {"room": room, "text": "deploy finished", "as": "ci"})
    assert r.status_code == 200, r.text
    published = r.json()
    assert published["sender"] == {"id": "bot_ci", "name": "ci"}
    assert published["seq"] > first["seq"]
    # The same over NATS, answered by whichever gateway, on the same chain.
    nc = await _nats(stack)
    try:
        code, again = await _ask(nc, "publish", {"room": room, "text": "second", "as": "ci"},
                                 stack.server_api_keys["full"])
    finally:
        await nc.close()
    assert code is None, again
    for session in (sa, sb):
        events = [e for e in [await session.next_event() for _ in range(3)]]
        assert [e["text"] for e in events] == ["before the bot", "deploy finished", "second"]
        assert events[1]["sender"] == {"id": "bot_ci", "name": "ci"}
        assert [e["seq"] for e in events[1:]] == [published["seq"], again["seq"]]
        assert events[1]["prev_seq"] == first["seq"]
        assert events[2]["prev_seq"] == published["seq"]
    async with rest(stack.gateway(2).url, bob["access_token"]) as http:
        page = (await http.get(f"/v1/rooms/{room}/messages")).json()["messages"]
    assert [(m["text"], m["sender"]["id"]) for m in page][-2:] == [
        ("deploy finished", "bot_ci"), ("second", "bot_ci")]
    for s in (sa, sb):
        await s.close()


async def test_disconnect_closes_the_users_sockets_on_both_gateways(stack: Stack) -> None:
    carol = await register_and_login(stack.gateway(1).url, unique("carol"))
    dave = await register_and_login(stack.gateway(1).url, unique("dave"))
    mine = [await Session.open(stack.ws_url(i), carol["access_token"]) for i in (1, 2)]
    other = await Session.open(stack.ws_url(2), dave["access_token"])
    r = await _post(stack, "disconnect", {"user": carol["user"]["name"]}, gw=2)
    assert r.status_code == 200, r.text
    assert r.json()["user"]["id"] == user_id(carol)
    await eventually(lambda: all(s.close_code == 4403 for s in mine),
                     what="carol's sockets closed with 4403 on both gateways")
    assert other.close_code is None
    # The token still works: disconnect is not a ban (disable is).
    again = await Session.open(stack.ws_url(1), carol["access_token"])
    await again.close()
    await other.close()


async def test_presence_rooms_and_members(stack: Stack) -> None:
    erin = await register_and_login(stack.gateway(1).url, unique("erin"))
    finn = await register_and_login(stack.gateway(2).url, unique("finn"))
    room, sessions = await _room_with(stack, erin, finn)
    async with rest(stack.gateway(1).url, erin["access_token"]) as http:
        private = unique("hidden")
        r = await http.post("/v1/rooms", json={"id": private, "name": "hidden",
                                               "visibility": "private"})
        assert r.status_code == 201, r.text

    async def both_present() -> bool:
        r = await _post(stack, "presence", {"room": room}, key="reader")
        return r.status_code == 200 and {u["id"] for u in r.json()["users"]} == {
            user_id(erin), user_id(finn)}

    await eventually(both_present, what="both users present in the room")
    r = await _post(stack, "members", {"room": room}, gw=2, key="reader")
    assert r.status_code == 200, r.text
    members = {m["id"]: m for m in r.json()["members"]}
    assert set(members) == {user_id(erin), user_id(finn)}
    assert all(m["online"] for m in members.values())
    # A private room is listed too, with its members, to a backend.
    r = await _post(stack, "members", {"room": private}, key="reader")
    assert [m["id"] for m in r.json()["members"]] == [user_id(erin)]
    seen: set[str] = set()
    cursor = None
    while True:
        r = await _post(stack, "rooms", {"limit": 100, "cursor": cursor}, key="reader")
        assert r.status_code == 200, r.text
        seen |= {x["id"] for x in r.json()["rooms"]}
        cursor = r.json()["next_cursor"]
        if cursor is None:
            break
    assert {room, private} <= seen
    # Pages: newest first, each page after the last one's cursor.
    one = (await _post(stack, "rooms", {"limit": 1}, key="reader")).json()
    two = (await _post(stack, "rooms", {"limit": 1, "cursor": one["next_cursor"]},
                       key="reader")).json()
    assert one["next_cursor"] and one["rooms"][0]["id"] != two["rooms"][0]["id"]
    assert one["rooms"][0]["created_at"] >= two["rooms"][0]["created_at"]
    for s in sessions:
        await s.close()


async def test_disable_ends_sessions_and_refuses_logins(stack: Stack) -> None:
    name = unique("gus")
    gus = await register_and_login(stack.gateway(1).url, name)
    sockets = [await Session.open(stack.ws_url(i), gus["access_token"]) for i in (1, 2)]
    nc = await _nats(stack)
    try:
        code, reply = await _ask(nc, "disable", {"user": user_id(gus)},
                                 stack.server_api_keys["full"])
    finally:
        await nc.close()
    assert code is None, reply
    assert reply["disabled"] is True and reply["sessions"] >= 1
    await eventually(lambda: all(s.close_code == 4401 for s in sockets),
                     what="the disabled user's sockets closed with 4401")
    async with httpx.AsyncClient(base_url=stack.gateway(2).url) as http:
        r = await http.post("/v1/auth/login", json={"username": name,
                                                    "password": "correct horse battery"})
    expect_error(r, 403, "forbidden")


async def test_every_refusal_over_http(stack: Stack) -> None:
    ok = {"room": "lobby-x", "text": "hi", "as": "ci"}
    expect_error(await _post(stack, "rooms", {}, key=None), 401, "unauthorized")
    async with httpx.AsyncClient(base_url=stack.server_api_url(1)) as http:
        for presented in ("full:wrong-secret-of-the-same-size", "nobody:x", "full",
                          stack.server_api_keys["full"] + "x"):
            r = await http.post("/v1/server/rooms", json={},
                                headers={"Authorization": f"Bearer {presented}"})
            expect_error(r, 401, "unauthorized")
        # Unknown method; a body too large.
        r = await http.post("/v1/server/nope", json={},
                            headers={"Authorization": f"Bearer {stack.server_api_keys['full']}"})
        expect_error(r, 404, "not_found")
    # The reader key has no publish, disconnect or users scope.
    expect_error(await _post(stack, "publish", ok, key="reader"), 403, "forbidden")
    expect_error(await _post(stack, "disconnect", {"user": "x"}, key="reader"), 403, "forbidden")
    expect_error(await _post(stack, "disable", {"user": "x"}, key="reader"), 403, "forbidden")
    # Unknown room, unknown user.
    expect_error(await _post(stack, "publish", {**ok, "room": unique("none")}), 404, "not_found")
    expect_error(await _post(stack, "presence", {"room": unique("none")}), 404, "not_found")
    expect_error(await _post(stack, "members", {"room": unique("none")}), 404, "not_found")
    expect_error(await _post(stack, "disconnect", {"user": unique("ghost")}), 404, "not_found")
    # Bad bodies.
    for body in ({"room": "r"}, {**ok, "as": "no spaces"}, {**ok, "text": ""},
                 {**ok, "room": "bad room"}, [1]):
        expect_error(await _post(stack, "publish", body), 400, "bad_request")
    expect_error(await _post(stack, "publish", {**ok, "text": "x" * 4001}), 413, "too_large")
    async with _api(stack) as http:
        r = await http.post("/v1/server/publish", content=b"{not json")
        expect_error(r, 400, "bad_request")
        r = await http.post("/v1/server/rooms", json={"cursor": "garbage!"})
        expect_error(r, 400, "bad_request")
        r = await http.get("/v1/server/rooms")
        assert r.status_code == 405
        # The client routes are not on the internal listener, nor the server
        # API on the client port (what Caddy and the Ingress route to).
        assert (await http.get("/v1/rooms")).status_code == 404
    async with httpx.AsyncClient(base_url=stack.gateway(1).url) as http:
        r = await http.post("/v1/server/rooms", json={},
                            headers={"Authorization": f"Bearer {stack.server_api_keys['full']}"})
        assert r.status_code == 404


async def test_every_refusal_over_nats(stack: Stack) -> None:
    full, reader = stack.server_api_keys["full"], stack.server_api_keys["reader"]
    nc = await _nats(stack)
    try:
        assert (await _ask(nc, "rooms", {}, None))[0] == "unauthorized"
        assert (await _ask(nc, "rooms", {}, "full:wrong"))[0] == "unauthorized"
        assert (await _ask(nc, "publish", {"room": "r", "text": "t", "as": "b"},
                           reader))[0] == "forbidden"
        assert (await _ask(nc, "presence", {"room": unique("none")}, full))[0] == "not_found"
        assert (await _ask(nc, "publish", {"room": "r"}, full))[0] == "bad_request"
        assert (await _ask(nc, "nope", {}, full))[0] == "not_found"
        code, rooms = await _ask(nc, "rooms", {"limit": 1}, reader)
        assert code is None and len(rooms["rooms"]) <= 1
    finally:
        await nc.close()


def _admin(stack: Stack, *args: str, key: str = "full") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHAT_")}
    env.update(CHAT_SERVER_API_URL=stack.server_api_url(2),
               CHAT_SERVER_API_KEY=stack.server_api_keys[key])
    return subprocess.run([str(BIN / "chat-admin"), "server", *args], env=env,
                          capture_output=True, text=True, timeout=scaled(30))


async def test_chat_admin_server_commands(stack: Stack) -> None:
    hana = await register_and_login(stack.gateway(1).url, unique("hana"))
    room, (s,) = await _room_with(stack, hana)
    done = await asyncio.to_thread(_admin, stack, "publish", room, "from the shell",
                                   "--as", "ops")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["sender"]["id"] == "bot_ops"
    event = await s.next_event()
    assert (event["text"], event["sender"]["name"]) == ("from the shell", "ops")
    done = await asyncio.to_thread(_admin, stack, "members", room)
    assert [m["id"] for m in json.loads(done.stdout)["members"]] == [user_id(hana)]
    done = await asyncio.to_thread(_admin, stack, "presence", room)
    assert done.returncode == 0, done.stderr
    done = await asyncio.to_thread(_admin, stack, "rooms", "--limit", "5")
    assert done.returncode == 0 and len(json.loads(done.stdout)["rooms"]) <= 5
    # Refused: a missing scope (1), an unknown room (1); the message says why.
    done = await asyncio.to_thread(_admin, stack, "disable", "hana", key="reader")
    assert done.returncode == 1 and "403 forbidden" in done.stderr
    done = await asyncio.to_thread(_admin, stack, "members", unique("none"))
    assert done.returncode == 1 and "404 not_found" in done.stderr
    done = await asyncio.to_thread(_admin, stack, "disconnect", hana["user"]["name"])
    assert done.returncode == 0, done.stderr
    await eventually(lambda: s.close_code == 4403, what="hana's socket closed with 4403")
