"""chat_kit.passwords' bound: a full queue answers unavailable at once, half of
it is kept for verifies, and work whose deadline passed is dropped unhashed."""

from __future__ import annotations

import asyncio
import threading

import pytest
from argon2 import PasswordHasher

from chat_contract.errors import ChatError, ErrorCode
from chat_kit.passwords import Passwords

# Cheap parameters: these tests are about the queue, not argon2.
FAST = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)


class GatedHasher(PasswordHasher):
    """A hasher whose ``hash`` waits for ``gate``: a queue that stays full."""

    def __init__(self) -> None:
        super().__init__(time_cost=1, memory_cost=8, parallelism=1)
        self.gate = threading.Event()
        self.hashed = 0

    def hash(self, password: str | bytes, *, salt: bytes | None = None) -> str:
        assert self.gate.wait(10)
        self.hashed += 1
        return super().hash(password, salt=salt)


async def test_a_full_queue_refuses_at_once_with_retry_after() -> None:
    hasher = GatedHasher()
    p = Passwords(hasher, workers=1, queue=2)
    stored = FAST.hash("pw")
    try:
        running = asyncio.create_task(p.hash("a"))  # the worker
        queued = asyncio.create_task(p.hash("b"))  # new hashes may fill half the queue
        await asyncio.sleep(0)
        assert p.in_flight == 2
        with pytest.raises(ChatError) as exc:
            await p.hash("c")
        assert exc.value.code is ErrorCode.UNAVAILABLE
        assert exc.value.retry_after is not None and exc.value.retry_after >= 1
        # The other half is kept for verifies (logins), then they are refused too.
        verify = asyncio.create_task(p.verify(stored, "pw"))
        await asyncio.sleep(0)
        with pytest.raises(ChatError):
            await p.verify(stored, "pw")
        hasher.gate.set()
        await asyncio.gather(running, queued)
        assert await verify
        assert p.in_flight == 0
    finally:
        hasher.gate.set()
        p.close()


async def test_work_past_its_deadline_is_dropped_before_hashing() -> None:
    hasher = GatedHasher()
    p = Passwords(hasher, workers=1, queue=8, deadline=0.2)
    try:
        first = asyncio.create_task(p.hash("a"))
        late = asyncio.create_task(p.hash("b"))  # waits behind the gated one
        await asyncio.sleep(0.3)  # the caller has given up on "b" by now
        hasher.gate.set()
        await first
        with pytest.raises(ChatError) as exc:
            await late
        assert exc.value.code is ErrorCode.UNAVAILABLE
        assert hasher.hashed == 1  # "b" was never hashed
        assert p.in_flight == 0
    finally:
        hasher.gate.set()
        p.close()


async def test_an_expected_wait_past_the_deadline_is_refused_up_front() -> None:
    hasher = GatedHasher()
    p = Passwords(hasher, workers=1, queue=100, deadline=1.0)  # 0.75 s for the hash
    p._per_hash = 0.2  # as measured: 0.2 s per hash
    try:
        tasks = [asyncio.create_task(p.hash(str(i))) for i in range(3)]
        await asyncio.sleep(0)
        assert p.in_flight == 3
        with pytest.raises(ChatError):  # 3 rounds of 0.2 s ahead, then its own
            await p.hash("x")
        hasher.gate.set()
        await asyncio.gather(*tasks)
    finally:
        hasher.gate.set()
        p.close()


async def test_a_cancelled_caller_frees_its_slot() -> None:
    hasher = GatedHasher()
    p = Passwords(hasher, workers=1, queue=4)
    try:
        running = asyncio.create_task(p.hash("a"))
        queued = asyncio.create_task(p.hash("b"))
        await asyncio.sleep(0)
        queued.cancel()
        with pytest.raises(asyncio.CancelledError):
            await queued
        assert p.in_flight == 1
        hasher.gate.set()
        await running
        assert p.in_flight == 0 and hasher.hashed == 1
    finally:
        hasher.gate.set()
        p.close()
