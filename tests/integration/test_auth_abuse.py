"""Abuse of auth-service against a real nats-server and PostgreSQL (README "Security").

- A flood of registrations (each a 64 MiB argon2 hash) is refused early
  (429 by the registration throttle, or 503 by the hashing pool's bound):
  a concurrent login still answers within the caller's deadline, and no
  request of the flood times out.
- Wrong passwords from one address lock only that (user, address) pair: the
  owner logs in from elsewhere; many known users log in from one host while
  an address spraying names is refused.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import nats
import pytest
from argon2 import PasswordHasher
from nats.aio.client import Client as NATS
from waiting import scaled

from chat_auth.config import AuthSettings
from chat_auth.service import AuthService
from chat_contract import rpc
from chat_contract.bus import Credentials, RegisterReply, TokenPair
from chat_contract.errors import ChatError, ErrorCode
from chat_kit.bus import request
from chat_kit.passwords import Passwords
from chat_kit.runtime import Runtime
from chat_kit.settings import CommonSettings

pytestmark = pytest.mark.integration

# The gateway's CHAT_REQUEST_TIMEOUT default: a login must answer within it.
DEADLINE = scaled(2.0)
PASSWORD = "correct horse battery"

Start = Callable[..., Awaitable[AuthService]]


@pytest.fixture
async def start_auth(nats_url: str, db_url: str, tmp_path: Path) -> AsyncIterator[Start]:
    started: list[tuple[AuthService, NATS]] = []

    async def start(passwords: Passwords | None = None, **overrides: Any) -> AuthService:
        common = CommonSettings(nats_url=nats_url, log_level="INFO", log_format="json",
                                request_timeout=DEADLINE, stream_replicas=1, host="127.0.0.1")
        settings = AuthSettings(port=0, database_url=db_url, signing_key_pem="",
                                signing_key_file=tmp_path / "key.pem", dev_key=True,
                                issuer="chat-auth", audience="chat", access_ttl=900,
                                refresh_ttl=3600, reuse_grace=5.0, common=common, **overrides)
        nc = await nats.connect(nats_url)
        service = AuthService(settings, passwords)
        await service.start(Runtime("auth-test", common, nc))
        started.append((service, nc))
        return service

    yield start
    for service, nc in reversed(started):
        await service.stop()
        await nc.drain()


@pytest.fixture
async def client(nats_url: str) -> AsyncIterator[NATS]:
    nc = await nats.connect(nats_url)
    yield nc
    await nc.drain()


def name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


async def register(nc: NATS, username: str, remote: str = "10.0.0.1",
                   password: str = PASSWORD) -> RegisterReply:
    return await request(nc, rpc.AUTH_REGISTER,
                         Credentials(username=username, password=password, remote=remote),
                         DEADLINE)


async def login(nc: NATS, username: str, remote: str,
                password: str = PASSWORD) -> TokenPair:
    return await request(nc, rpc.AUTH_LOGIN,
                         Credentials(username=username, password=password, remote=remote),
                         DEADLINE)


async def outcome(call: Awaitable[object]) -> str:
    """"ok", the error code, or "timeout" when the caller gave up waiting."""
    try:
        await call
    except ChatError as exc:
        if exc.code is ErrorCode.UNAVAILABLE and "timed out" in exc.message:
            return "timeout"
        if exc.code in (ErrorCode.UNAVAILABLE, ErrorCode.RATE_LIMITED):
            assert exc.retry_after is not None and exc.retry_after >= 1, exc
        return exc.code.value
    return "ok"


@pytest.mark.parametrize("throttled", [True, False], ids=["throttled", "pool-bound-only"])
async def test_a_registration_flood_does_not_time_out_a_login(
        start_auth: Start, client: NATS, throttled: bool) -> None:
    limits: dict[str, Any] = {} if throttled else {"register_per_address": 0,
                                                   "register_rate": 0.0}
    await start_auth(**limits)
    victim = name("victim")
    await register(client, victim)

    # 200 registrations at once, from 200 addresses (the per-address bucket
    # alone would not stop them).
    flood = [asyncio.create_task(outcome(register(client, name("flood"), f"10.7.0.{i}")))
             for i in range(200)]
    logins: list[tuple[str, float]] = []
    while not all(task.done() for task in flood) or len(logins) < 3:
        started = time.monotonic()
        logins.append((await outcome(login(client, victim, "10.0.0.1")),
                       time.monotonic() - started))
    results = Counter(await asyncio.gather(*flood))

    assert "timeout" not in results, results
    assert set(results) <= {"ok", "rate_limited", "unavailable"}, results
    assert results["rate_limited" if throttled else "unavailable"] > 0, results
    assert all(result in ("ok", "unavailable") for result, _ in logins), logins
    assert all(took < DEADLINE for _, took in logins), logins
    assert any(result == "ok" for result, _ in logins), logins


async def test_wrong_passwords_from_one_address_do_not_lock_out_the_owner(
        start_auth: Start, client: NATS) -> None:
    await start_auth()  # CHAT_AUTH_LOGIN_MAX_FAILURES: 5
    owner = name("owner")
    await register(client, owner)
    attacker, home = "203.0.113.66", "192.0.2.10"
    for _ in range(5):
        assert await outcome(login(client, owner, attacker, "wrong guess")) == "unauthorized"
    # The guessing pair gets no more answers, not even for the right password ...
    assert await outcome(login(client, owner.upper(), attacker)) == "rate_limited"
    # ... while the owner, from their own address, logs in.
    pair = await login(client, owner, home)
    assert pair.access_token


async def test_known_users_log_in_from_one_host_while_a_sprayer_is_refused(
        start_auth: Start, client: NATS) -> None:
    # Cheap hashes: 500 users must not cost 500 × 64 MiB here; the throttle is under test.
    cheap = Passwords(PasswordHasher(time_cost=1, memory_cost=8, parallelism=1),
                      queue=64, deadline=DEADLINE)
    await start_auth(cheap, register_per_address=0, register_rate=0.0)
    users = [name("bench") for _ in range(500)]
    slots = asyncio.Semaphore(20)

    async def limited(call: Awaitable[object]) -> str:
        async with slots:
            return await outcome(call)

    assert Counter(await asyncio.gather(*(limited(register(client, u)) for u in users))) == {
        "ok": 500}
    sprayer = "198.51.100.7"
    spray = [await outcome(login(client, name("ghost"), sprayer, "whatever1"))
             for _ in range(55)]  # CHAT_AUTH_LOGIN_MAX_FAILURES_PER_ADDRESS: 50
    assert spray[:50] == ["unauthorized"] * 50
    assert set(spray[50:]) == {"rate_limited"}
    # A user who really has an account fares no better from the spraying address.
    assert await outcome(login(client, users[0], sprayer)) == "rate_limited"
    # The host that only logs in with right passwords: every one of the 500 works.
    host = "10.0.0.1"
    results = Counter(await asyncio.gather(*(limited(login(client, u, host)) for u in users)))
    assert results == {"ok": 500}
