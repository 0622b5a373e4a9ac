"""chat_kit.natsclient on a real NATS server: direct subscriptions and lean
requests behave like nats-py's own (replies, no responders, timeouts,
unsubscribe, reconnect-safe resubscription is nats-py's)."""

from __future__ import annotations

import asyncio

import pytest
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from waiting import eventually

from chat_kit import bus

pytestmark = pytest.mark.integration


async def test_direct_subscription_gets_data_and_raw_headers_until_unsubscribed(
        nats_url: str) -> None:
    nc = await bus.connect(nats_url, "test")
    got: list[tuple[bytes, bytes]] = []
    sub = await nc.subscribe_direct("direct.x", lambda data, headers: got.append((data, headers)))
    await nc.publish("direct.x", b"one", headers={"Chat-Test": "7"})
    await nc.publish("direct.x", b"two")
    await eventually(lambda: len(got) == 2)
    assert got[0][0] == b"one" and b"Chat-Test: 7" in got[0][1]
    assert got[1] == (b"two", b"")
    await sub.unsubscribe()
    await nc.publish("direct.x", b"three")
    await nc.flush()
    await asyncio.sleep(0.1)
    assert len(got) == 2
    await nc.close()


async def test_request_raw_answers_refuses_and_times_out(nats_url: str) -> None:
    nc = await bus.connect(nats_url, "test")

    async def echo(msg) -> None:  # type: ignore[no-untyped-def]
        await msg.respond(b"re:" + msg.data)

    await nc.subscribe("echo", cb=echo)
    await nc.subscribe("silent")
    replies = await asyncio.gather(*(nc.request_raw("echo", b"%d" % i, 2.0) for i in range(50)))
    assert replies == [b"re:%d" % i for i in range(50)]  # each reply to its own request
    with pytest.raises(NoRespondersError):
        await nc.request_raw("nobody.listens", b"x", 2.0)
    with pytest.raises(NatsTimeoutError):
        await nc.request_raw("silent", b"x", 0.2)
    assert not nc._replies  # nothing left waiting
    await nc.close()


async def test_a_failing_direct_handler_drops_its_message_not_the_connection(
        nats_url: str) -> None:
    nc = await bus.connect(nats_url, "test")
    got: list[bytes] = []

    def handler(data: bytes, headers: bytes) -> None:
        if data == b"bad":
            raise ValueError("a bug in a handler")
        got.append(data)

    await nc.subscribe_direct("direct.y", handler)
    for data in (b"bad", b"good", b"bad", b"also good"):
        await nc.publish("direct.y", data)
    await eventually(lambda: got == [b"good", b"also good"])
    assert nc.is_connected
    await nc.close()
