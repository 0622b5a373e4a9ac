"""Revocation on real servers (issue 12, item 5): a login is a session.

Every test holds sockets of two sessions of one user on both gateways.
Logout ends only its own session: its sockets close with 4401 on every
gateway within about a second and its access token is refused, while the
other session goes on. Refresh-token reuse, a password change and
``chat-admin user disable`` end every session of the user the same way.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from waiting import eventually, scaled
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from .client import TIMEOUT, Session, register_and_login, rest
from .conftest import unique
from .hardening import make_stack
from .stack import Stack

pytestmark = pytest.mark.e2e

PASSWORD = "correct horse battery"
CHAT_ADMIN = Path(sys.executable).parent / "chat-admin"
# "Within a second" on a normal machine; waiting.eventually scales it.
REVOKED_WITHIN = 1.0


@pytest.fixture(scope="module")
def stack(e2e_nats: str, e2e_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # A replayed refresh token counts as reuse at once (no two-tabs grace).
    yield from make_stack(e2e_nats, e2e_db, tmp_path_factory.mktemp("revocation-logs"),
                          CHAT_AUTH_REUSE_GRACE="0")


async def login(stack: Stack, name: str, password: str = PASSWORD) -> httpx.Response:
    async with rest(stack.gateway(1).url) as http:
        return await http.post("/v1/auth/login", json={"username": name, "password": password})


async def second_login(stack: Stack, name: str) -> dict[str, Any]:
    r = await login(stack, name)
    assert r.status_code == 200, r.text
    return dict(r.json())


async def me_status(stack: Stack, i: int, token: str) -> int:
    async with rest(stack.gateway(i).url, token) as http:
        return (await http.get("/v1/me")).status_code


class Sockets:
    """One socket per (session, gateway)."""

    def __init__(self) -> None:
        self.by_token: dict[str, list[Session]] = {}

    async def open(self, stack: Stack, *tokens: str) -> None:
        for token in tokens:
            self.by_token[token] = [await Session.open(stack.ws_url(i), token) for i in (1, 2)]

    def closed(self, token: str) -> bool:
        return all(s.close_code == 4401 for s in self.by_token[token])

    async def close(self) -> None:
        for sessions in self.by_token.values():
            for s in sessions:
                await s.close()


@pytest.fixture
async def sockets() -> Any:
    held = Sockets()
    yield held
    await held.close()


async def revoked_everywhere(stack: Stack, sockets: Sockets, *tokens: str) -> None:
    """Each token's sockets on both gateways closed with 4401 within about a
    second, and the token refused by REST on both gateways."""
    await eventually(lambda: all(sockets.closed(t) for t in tokens), REVOKED_WITHIN,
                     "the revoked sessions' sockets to close with 4401")
    for token in tokens:
        assert [await me_status(stack, i, token) for i in (1, 2)] == [401, 401]
        await refused_on_ws(stack, token)


async def refused_on_ws(stack: Stack, token: str) -> None:
    """A new socket with ``token`` is closed with 4401."""
    async with connect(f"{stack.ws_url(2)}?token={token}") as ws:
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), TIMEOUT)
        assert ws.close_code == 4401


async def still_working(stack: Stack, sockets: Sockets, token: str) -> None:
    for s in sockets.by_token[token]:
        assert s.close_code is None
        ack = await s.request("join", room=unique("alive"))
        assert ack["type"] == "ack"
    assert [await me_status(stack, i, token) for i in (1, 2)] == [200, 200]


async def chat_admin(stack: Stack, *args: str) -> tuple[int, Any, str]:
    assert stack.auth is not None
    env = {**os.environ, "CHAT_NATS_URL": stack.nats_url, **stack.auth.role_env("admin")}
    proc = await asyncio.create_subprocess_exec(
        str(CHAT_ADMIN), *args, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=env)
    out, err = await asyncio.wait_for(proc.communicate(), scaled(30.0))
    assert proc.returncode is not None
    return proc.returncode, json.loads(out) if out.strip() else None, err.decode()


async def test_logout_ends_that_session_on_every_gateway_and_only_it(
        stack: Stack, sockets: Sockets) -> None:
    name = unique("rv")
    s1 = await register_and_login(stack.gateway(1).url, name)
    s2 = await second_login(stack, name)
    await sockets.open(stack, s1["access_token"], s2["access_token"])

    async with rest(stack.gateway(1).url) as http:
        started = time.monotonic()
        r = await http.post("/v1/auth/logout", json={"refresh_token": s1["refresh_token"]})
    assert r.status_code == 204
    await revoked_everywhere(stack, sockets, s1["access_token"])
    assert time.monotonic() - started < scaled(REVOKED_WITHIN + 0.5)

    await still_working(stack, sockets, s2["access_token"])
    async with rest(stack.gateway(2).url) as http:
        r = await http.post("/v1/auth/refresh", json={"refresh_token": s2["refresh_token"]})
        assert r.status_code == 200, r.text
        r = await http.post("/v1/auth/refresh", json={"refresh_token": s1["refresh_token"]})
        assert r.status_code == 401


async def test_refresh_token_reuse_ends_every_session(stack: Stack, sockets: Sockets) -> None:
    name = unique("rv")
    s1 = await register_and_login(stack.gateway(1).url, name)
    s2 = await second_login(stack, name)
    async with rest(stack.gateway(1).url) as http:
        r = await http.post("/v1/auth/refresh", json={"refresh_token": s1["refresh_token"]})
        assert r.status_code == 200
        rotated = r.json()
        await sockets.open(stack, rotated["access_token"], s2["access_token"])
        # The spent token comes back (a thief's copy): every session ends.
        r = await http.post("/v1/auth/refresh", json={"refresh_token": s1["refresh_token"]})
        assert r.status_code == 401
    await revoked_everywhere(stack, sockets, rotated["access_token"], s2["access_token"])
    assert await me_status(stack, 1, s1["access_token"]) == 401
    async with rest(stack.gateway(2).url) as http:
        for refresh in (rotated["refresh_token"], s2["refresh_token"]):
            r = await http.post("/v1/auth/refresh", json={"refresh_token": refresh})
            assert r.status_code == 401
    # Logging in again starts a session that works.
    fresh = await second_login(stack, name)
    assert await me_status(stack, 2, fresh["access_token"]) == 200


async def test_password_change_ends_every_session(stack: Stack, sockets: Sockets) -> None:
    name = unique("rv")
    s1 = await register_and_login(stack.gateway(1).url, name)
    s2 = await second_login(stack, name)
    await sockets.open(stack, s1["access_token"], s2["access_token"])
    new_password = "a new horse battery"
    async with rest(stack.gateway(1).url, s1["access_token"]) as http:
        r = await http.post("/v1/auth/password",
                            json={"password": "not my password", "new_password": new_password})
        assert r.status_code == 401
        assert not sockets.closed(s1["access_token"])
        r = await http.post("/v1/auth/password",
                            json={"password": PASSWORD, "new_password": new_password})
        assert r.status_code == 204, r.text
    await revoked_everywhere(stack, sockets, s1["access_token"], s2["access_token"])
    assert (await login(stack, name)).status_code == 401
    # The new password logs in at once, and its token is not caught by the revocation.
    fresh = (await login(stack, name, new_password)).json()
    assert await me_status(stack, 2, fresh["access_token"]) == 200
    socket = await Session.open(stack.ws_url(1), fresh["access_token"])
    try:
        assert (await socket.request("join", room=unique("after")))["type"] == "ack"
    finally:
        await socket.close()


async def test_chat_admin_disables_and_enables_a_user(stack: Stack, sockets: Sockets) -> None:
    name = unique("rv")
    s1 = await register_and_login(stack.gateway(1).url, name)
    s2 = await second_login(stack, name)
    await sockets.open(stack, s1["access_token"], s2["access_token"])
    code, out, err = await chat_admin(stack, "user", "disable", name.upper())
    assert code == 0, err
    assert out["user"]["name"] == name and out["disabled"] is True
    assert out["sessions_ended"] == 2
    await revoked_everywhere(stack, sockets, s1["access_token"], s2["access_token"])
    r = await login(stack, name)
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    assert (await login(stack, name, "a wrong password")).status_code == 401
    async with rest(stack.gateway(2).url) as http:
        r = await http.post("/v1/auth/refresh", json={"refresh_token": s2["refresh_token"]})
        assert r.status_code == 401

    code, out, _ = await chat_admin(stack, "user", "enable", name)
    assert code == 0 and out["disabled"] is False
    fresh = await second_login(stack, name)
    assert await me_status(stack, 1, fresh["access_token"]) == 200
    code, _, err = await chat_admin(stack, "user", "disable", unique("nobody"))
    assert code == 1 and "no such user" in err
