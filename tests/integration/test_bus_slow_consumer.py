"""A subscription that overflows its pending limit on a real NATS server is
counted as chat_ws_dropped_total{reason="nats_slow_consumer"} (issue 5)."""

from __future__ import annotations

import asyncio

import pytest
from nats.aio.msg import Msg
from waiting import eventually

from chat_kit import bus, metrics

pytestmark = pytest.mark.integration


async def test_nats_slow_consumer_drops_are_counted(nats_url: str) -> None:
    counter = metrics.WS_DROPPED.labels("nats_slow_consumer")
    before = counter._value.get()
    nc = await bus.connect(nats_url, "slow-test")
    release = asyncio.Event()

    async def stuck(_: Msg) -> None:
        await release.wait()

    await nc.subscribe("chat.live.slow", cb=stuck, pending_msgs_limit=5)
    pub = await bus.connect(nats_url, "slow-pub")
    for i in range(100):
        await pub.publish("chat.live.slow", b"x%d" % i)
    await pub.flush()
    try:
        await eventually(lambda: counter._value.get() > before, 2.0, "a counted drop")
    finally:
        release.set()
    await pub.close()
    await nc.close()
