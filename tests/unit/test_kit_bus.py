"""chat_kit.bus.publish_durable counts its failures by reason
(chat_jetstream_publish_failures_total, docs/protocol.md §7)."""

from __future__ import annotations

from typing import Any, cast

import pytest
from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from prometheus_client import REGISTRY

from chat_contract.errors import ChatError, ErrorCode
from chat_kit.bus import publish_durable


class Reply:
    def __init__(self, data: bytes) -> None:
        self.data = data


class FakeNats:
    """Answers each request with the next outcome: bytes, or an exception to raise."""

    def __init__(self, *outcomes: Any, connected: bool = True) -> None:
        self.outcomes = list(outcomes)
        self.is_connected = connected

    async def request(self, subject: str, payload: bytes, timeout: float,
                      headers: dict[str, str] | None = None) -> Reply:
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return Reply(outcome)


def failures(reason: str) -> float:
    return REGISTRY.get_sample_value("chat_jetstream_publish_failures_total",
                                     {"reason": reason}) or 0.0


async def test_each_failure_is_counted_by_reason_and_a_stored_publish_is_not() -> None:
    reasons = ("timeout", "no_responders", "refused", "disconnected")
    before = {r: failures(r) for r in reasons}
    nc = FakeNats(NatsTimeoutError(), TimeoutError(), NoRespondersError(),
                  b'{"error":{"code":503,"description":"no space"}}',
                  b'{"stream":"CHAT","seq":7}')
    for _ in range(4):
        with pytest.raises(ChatError) as info:
            await publish_durable(cast(NATS, nc), "chat.room.r", b"{}", 1.0)
        assert info.value.code == ErrorCode.UNAVAILABLE
    ack = await publish_durable(cast(NATS, nc), "chat.room.r", b"{}", 1.0)
    assert ack.seq == 7
    with pytest.raises(ChatError):
        await publish_durable(cast(NATS, FakeNats(connected=False)), "chat.room.r", b"{}", 1.0)
    assert {r: failures(r) - before[r] for r in reasons} == {
        "timeout": 2, "no_responders": 1, "refused": 1, "disconnected": 1}
