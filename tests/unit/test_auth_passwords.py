"""chat_kit.passwords: argon2id off the event loop, same work for unknown users."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import AsyncIterator

import pytest
from argon2 import PasswordHasher

from chat_kit.passwords import Passwords


@pytest.fixture
async def passwords() -> AsyncIterator[Passwords]:
    p = Passwords()
    yield p
    p.close()


async def test_hash_is_argon2id_with_documented_parameters(passwords: Passwords) -> None:
    stored = await passwords.hash("correct horse")
    assert stored.startswith("$argon2id$v=19$m=65536,t=3,p=4$")
    assert "correct horse" not in stored
    assert await passwords.hash("correct horse") != stored  # salted
    assert not passwords.needs_rehash(stored)


async def test_verify(passwords: Passwords) -> None:
    stored = await passwords.hash("correct horse")
    assert await passwords.verify(stored, "correct horse")
    assert not await passwords.verify(stored, "correct horsE")
    assert not await passwords.verify(None, "correct horse")
    assert not await passwords.verify("not a hash", "correct horse")


async def test_weaker_hash_needs_rehash(passwords: Passwords) -> None:
    weak = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1).hash("pw123456")
    assert passwords.needs_rehash(weak)
    assert await passwords.verify(weak, "pw123456")


async def test_hashing_does_not_block_the_event_loop(passwords: Passwords) -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.002)
            ticks += 1

    task = asyncio.create_task(ticker())
    try:
        await asyncio.gather(*(passwords.hash(f"password{i}") for i in range(4)))
    finally:
        task.cancel()
    assert ticks >= 5


async def test_unknown_user_costs_as_much_as_a_wrong_password(passwords: Passwords) -> None:
    stored = await passwords.hash("correct horse")
    await passwords.warm_up()

    async def timed(target: str | None) -> float:
        started = time.perf_counter()
        assert not await passwords.verify(target, "wrong password")
        return time.perf_counter() - started

    known = statistics.median([await timed(stored) for _ in range(5)])
    unknown = statistics.median([await timed(None) for _ in range(5)])
    # Generous bounds: the point is that both run one full argon2 verify.
    assert 0.5 < unknown / known < 2.0
