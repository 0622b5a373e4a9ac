"""Offline notifications through real gateways (issue 14 item 5).

The stack runs notify-service (``Stack.notify_env``) with its webhook pointed
at a real HTTP receiver on a free port (starlette under uvicorn, in a thread)
and its HMAC key in a file. A DM to a user with no live session produces one
webhook whose signature and timestamp verify, as does an ``@name`` mention of an
offline member in a public room; ``PUT /v1/rooms/{id}/notify``
``none`` stops them; a user online anywhere gets none; the route refuses
non-members (404) and bad levels (400). The module's NATS server fails the
run if the notify role was refused anything (tests/e2e/conftest.py).
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from waiting import QUIET, eventually, wait_until

from chat_devstack.ports import free_port
from chat_notify.signing import verify

from .client import Session, logged_errors, register_and_login, rest
from .client import expect_error as _err
from .client import user_id as _uid
from .conftest import unique
from .stack import Stack

pytestmark = pytest.mark.e2e

SECRET = "e2e-" + uuid.uuid4().hex


@dataclass
class Receiver:
    url: str = ""
    hits: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def hook(self, request: Request) -> Response:
        body = await request.body()
        with self.lock:
            self.hits.append(({k.lower(): v for k, v in request.headers.items()}, body))
        return Response(status_code=204)

    def bodies(self, msg_id: str) -> list[tuple[dict[str, str], dict[str, Any]]]:
        with self.lock:
            hits = list(self.hits)
        out = []
        for headers, body in hits:
            data: dict[str, Any] = msgspec.json.decode(body)
            if data.get("msg_id") == msg_id:
                assert verify(SECRET, body, headers.get("x-chat-timestamp"),
                              headers.get("x-chat-signature"), now=time.time()), headers
                out.append((headers, data))
        return out


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    rec = Receiver()
    port = free_port()
    rec.url = f"http://127.0.0.1:{port}/hook"
    server = uvicorn.Server(uvicorn.Config(
        Starlette(routes=[Route("/hook", rec.hook, methods=["POST"])]), host="127.0.0.1",
        port=port, log_config=None, access_log=False, lifespan="off", loop="asyncio"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, what="the receiver listening")
    yield rec
    server.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def stack(e2e_nats: str, e2e_db: str, tmp_path_factory: pytest.TempPathFactory,
          receiver: Receiver) -> Iterator[Stack]:
    logs: Path = tmp_path_factory.mktemp("stack-logs")
    secret = logs / "webhook-secret"
    secret.write_text(SECRET + "\n")
    secret.chmod(0o600)
    s = Stack(e2e_nats, e2e_db, logs, notify_env={
        "CHAT_NOTIFY_WEBHOOK_URL": receiver.url,
        "CHAT_NOTIFY_WEBHOOK_SECRET_FILE": str(secret),
        "CHAT_NOTIFY_BACKOFF_BASE": "0.05", "CHAT_NOTIFY_BACKOFF_CAP": "0.2",
        "CHAT_NOTIFY_CACHE_TTL": "0",
    })
    try:
        s.start()
        yield s
    finally:
        s.stop()


async def _user(stack: Stack, gw: int = 1) -> dict[str, Any]:
    return await register_and_login(stack.gateway(gw).url, unique("user"))


async def _send(session: Session, room: str, text: str) -> str:
    ack = await session.request("send", room=room, text=text)
    return str(ack["msg_id"])


async def test_dm_to_an_offline_user_is_one_verified_webhook_until_muted(
        stack: Stack, receiver: Receiver) -> None:
    alice, bob, carol = await _user(stack, 1), await _user(stack, 2), await _user(stack, 2)
    async with rest(stack.gateway(1).url, alice["access_token"]) as ha, \
            rest(stack.gateway(2).url, bob["access_token"]) as hb:
        dm = (await ha.post("/v1/dm", json={"user": _uid(bob)})).json()["id"]
        other = (await ha.post("/v1/dm", json={"user": _uid(carol)})).json()["id"]
        assert (await hb.get(f"/v1/rooms/{dm}/notify")).json() == {
            "room": dm, "level": "all", "default": True}
        session = await Session.open(stack.ws_url(1), alice["access_token"])
        try:
            await session.request("join", room=dm)
            await session.request("join", room=other)
            first = await _send(session, dm, "are you there, bob?")
            hits = await eventually(lambda: receiver.bodies(first), what="bob's webhook")
            await asyncio.sleep(QUIET)
            assert len(receiver.bodies(first)) == 1  # one, and none to alice
            headers, body = hits[0]
            assert body["type"] == "dm" and body["room"] == dm and body["v"] == 1
            assert body["user"] == bob["user"] and body["sender"] == alice["user"]
            assert body["text"] == "are you there, bob?" and body["seq"] >= 1
            assert abs(int(headers["x-chat-timestamp"]) - time.time()) < 300

            r = await hb.put(f"/v1/rooms/{dm}/notify", json={"level": "none"})
            assert r.status_code == 200, r.text
            assert r.json() == {"room": dm, "level": "none", "default": False}
            muted = await _send(session, dm, "hello?")
            marker = await _send(session, other, "carol, a marker")  # carol: default all
            await eventually(lambda: receiver.bodies(marker), what="carol's webhook")
            await asyncio.sleep(QUIET)
            assert receiver.bodies(muted) == []

            # Back to all, but bob online (a socket in some room on gateway 2): nothing.
            assert (await hb.put(f"/v1/rooms/{dm}/notify", json={"level": "all"})).json()[
                "level"] == "all"
            bob_ws = await Session.open(stack.ws_url(2), bob["access_token"])
            try:
                await bob_ws.request("join", room=unique("lobby"))
                online = await _send(session, dm, "you are online")
                marker = await _send(session, other, "carol, again")
                await eventually(lambda: receiver.bodies(marker), what="carol's second")
                await asyncio.sleep(QUIET)
                assert receiver.bodies(online) == []
            finally:
                await bob_ws.close()
        finally:
            await session.close()


async def test_an_offline_mention_is_one_verified_webhook(
        stack: Stack, receiver: Receiver) -> None:
    """``@name`` in a public room, resolved by the gateway at send time (issue
    14 item 4), reaches the mentioned member who is offline as a ``mention``
    webhook; a message without the mention notifies nobody (level default
    ``mentions``)."""
    alice, bob = await _user(stack, 1), await _user(stack, 2)
    room = unique("mentions")
    bob_ws = await Session.open(stack.ws_url(2), bob["access_token"])
    await bob_ws.request("join", room=room)  # a member, then offline
    await bob_ws.close()
    session = await Session.open(stack.ws_url(1), alice["access_token"])
    try:
        await session.request("join", room=room)
        plain = await _send(session, room, "nobody named here")
        ack = await session.request("send", room=room,
                                    text=f"@{bob['user']['name']} please look")
        hits = await eventually(lambda: receiver.bodies(str(ack["msg_id"])),
                                what="bob's mention webhook")
        await asyncio.sleep(QUIET)
        assert len(receiver.bodies(str(ack["msg_id"]))) == 1
        _, body = hits[0]
        assert body["type"] == "mention" and body["room"] == room
        assert body["user"] == bob["user"] and body["sender"] == alice["user"]
        assert receiver.bodies(plain) == []
    finally:
        await session.close()


async def test_notify_route_refusals(stack: Stack) -> None:
    alice, bob, eve = await _user(stack, 1), await _user(stack, 2), await _user(stack, 1)
    async with rest(stack.gateway(1).url, alice["access_token"]) as ha, \
            rest(stack.gateway(2).url, bob["access_token"]) as hb, \
            rest(stack.gateway(1).url, eve["access_token"]) as he:
        dm = (await ha.post("/v1/dm", json={"user": _uid(bob)})).json()["id"]
        public = (await ha.post("/v1/rooms", json={"name": "Notify", "visibility": "public"}
                                )).json()["id"]
        # Not a member: someone else's DM, a public room not joined, an unknown room.
        for room in (dm, public, unique("nosuch")):
            _err(await he.put(f"/v1/rooms/{room}/notify", json={"level": "none"}), 404,
                 "not_found")
            _err(await he.get(f"/v1/rooms/{room}/notify"), 404, "not_found")
        for body in ({"level": "loud"}, {"level": None}, {}, {"lvl": "all"}):
            _err(await hb.put(f"/v1/rooms/{dm}/notify", json=body), 400, "bad_request")
        _err(await hb.put("/v1/rooms/Not%20A%20Room/notify", json={"level": "all"}), 400,
             "bad_request")
        r = await hb.put(f"/v1/rooms/{dm}/notify", json={"level": "mentions"})
        assert r.status_code == 200 and r.json()["level"] == "mentions", r.text
        r = await ha.put(f"/v1/rooms/{public}/notify", json={"level": "all"})
        assert r.json() == {"room": public, "level": "all", "default": False}
        async with rest(stack.gateway(1).url) as anonymous:
            assert (await anonymous.put(f"/v1/rooms/{dm}/notify",
                                        json={"level": "all"})).status_code == 401


def test_notify_logged_no_errors(stack: Stack) -> None:
    assert not [line for line in logged_errors(stack) if line.startswith("notify:")]
