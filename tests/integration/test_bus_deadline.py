"""A service endpoint drops requests that waited past their caller's deadline
(chat_kit.bus, docs/protocol.md §9): a burst of abandoned requests costs the
service nothing beyond reading them."""

from __future__ import annotations

import asyncio

import msgspec
import pytest
from waiting import eventually

from chat_contract.errors import ChatError
from chat_kit import bus, metrics

pytestmark = pytest.mark.integration


class Ping(msgspec.Struct):
    n: int = 0


async def test_requests_queued_past_their_deadline_are_dropped_unanswered(
        nats_url: str) -> None:
    served: list[int] = []

    async def slow(req: Ping) -> Ping:
        served.append(req.n)
        await asyncio.sleep(0.3)
        return req

    expired = metrics.SERVICE_REQUESTS.labels("deadline-test", "slow", "expired")
    before = expired._value.get()
    nc = await bus.connect(nats_url, "test")
    handler = bus.endpoint("deadline-test", "slow", Ping, slow, concurrency=1)
    await bus.start_service(nc, "deadline-test", "0.0.1", {"slow": ("test.slow", handler)})
    caller = await bus.connect(nats_url, "caller")
    # One slot, 0.3 s each, callers wait 0.2 s: all but the first few time out
    # while queued, and once past deadline + grace (2 s) they are never served.
    results = await asyncio.gather(
        *(bus.call(caller, "test.slow", Ping(n=i), Ping, 0.2) for i in range(20)),
        return_exceptions=True)
    assert all(isinstance(r, ChatError) and r.code.value == "unavailable" for r in results)
    await eventually(lambda: expired._value.get() - before >= 10, timeout=15)
    await asyncio.sleep(0.5)
    assert len(served) + expired._value.get() - before == 20
    assert len(served) <= 10  # without deadlines all 20 would be served, 6 s of work
    # A request within its deadline is served as before.
    assert (await bus.call(caller, "test.slow", Ping(n=99), Ping, 2.0)).n == 99
    await caller.close()
    await nc.close()
