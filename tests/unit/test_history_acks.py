"""Deliveries by reply subject (chat_history.acks): the stream sequence parser
and the batched acks, without servers (the real client and server are in
tests/integration/test_history_*.py)."""

from __future__ import annotations

from typing import Any

import pytest
from nats.aio.msg import Msg

from chat_history.acks import ACK, NAK, TERM, Acks, pub_commands, stream_seq


@pytest.mark.parametrize(("reply", "seq"), [
    ("$JS.ACK.CHAT.history-push.1.42.7.1700000000000000000.3", 42),
    ("$JS.ACK.CHAT-p3.history-push.12.9007199254740993.1.1.0", 9007199254740993),
    # Domain and account hash after ACK, with and without the random token.
    ("$JS.ACK._.ACCHASH.CHAT.history-push.2.43.8.1700000000000000000.0.x", 43),
    ("$JS.ACK.hub.ACCHASH.CHAT.history-push.2.44.8.1700000000000000000.0", 44),
])
def test_the_stream_sequence_is_read_from_the_reply_subject(reply: str, seq: int) -> None:
    assert stream_seq(reply) == seq
    # The same as nats-py's metadata, which it replaces.
    assert Msg(_client=None, reply=reply).metadata.sequence.stream == seq  # type: ignore[arg-type]


@pytest.mark.parametrize("reply", [
    None, "", "_INBOX.abc", "$JS.FC.CHAT.history-push.abc",
    "$JS.ACK.CHAT.c.1.x.2.3.4",  # not a number
    "$JS.ACK.CHAT.history-push.1.2.3.4",  # a token short
    "$JS.ACK.CHAT.history-push.1.2.3.4.5.6",  # ten tokens: neither form
    "$JS.ACK.CHAT.history-push.1.-2.3.4.5",
    "$JS.ACK.CHAT.history-push.1.²2.3.4.5",  # a digit, but not 0-9
    "$JS.ACK..history-push.1.2.3.4.5",  # an empty token
    # Whitespace would break (or inject into) the PUB command the ack is written as.
    "$JS.ACK.CHAT.his tory.1.2.3.4.5",
    "$JS.ACK.CHAT.history-push.1.2.3.4.5\r\nPUB evil 0",
    "$JS.ACK.CHAT.history-push.1.2.3.4.5\n",
    " $JS.ACK.CHAT.history-push.1.2.3.4.5",
])
def test_anything_else_is_no_delivery(reply: str | None) -> None:
    assert stream_seq(reply) is None


def test_pub_commands_are_nats_protocol() -> None:
    replies = ["$JS.ACK.CHAT.h.1.5.5.1.0", "$JS.ACK.CHAT.h.1.6.6.1.0"]
    assert pub_commands(replies, ACK) == (b"PUB $JS.ACK.CHAT.h.1.5.5.1.0 0\r\n\r\n"
                                          b"PUB $JS.ACK.CHAT.h.1.6.6.1.0 0\r\n\r\n")
    assert pub_commands(replies[:1], TERM) == b"PUB $JS.ACK.CHAT.h.1.5.5.1.0 5\r\n+TERM\r\n"
    assert pub_commands([], NAK) == b""


class RawClient:
    """Has the nats-py client's outgoing buffer."""

    def __init__(self) -> None:
        self.commands: list[bytes] = []
        self.flushes = 0
        self.is_closed = False
        self.stats = {"out_msgs": 0}

    async def _send_command(self, cmd: bytes) -> None:
        self.commands.append(cmd)

    async def _flush_pending(self) -> None:
        self.flushes += 1

    async def publish(self, subject: str, payload: bytes = b"") -> None:
        raise AssertionError("the raw path does not publish one by one")


class PlainClient:
    def __init__(self) -> None:
        self.published: list[tuple[str, bytes]] = []

    async def publish(self, subject: str, payload: bytes = b"", **_: Any) -> None:
        self.published.append((subject, payload))


async def test_a_batch_of_acks_is_one_write_and_one_flush() -> None:
    nc = RawClient()
    replies = [f"$JS.ACK.CHAT.h.1.{s}.{s}.1.0" for s in range(1, 301)]
    await Acks(nc).send(replies)
    assert nc.commands == [pub_commands(replies, ACK)] and nc.flushes == 1
    assert nc.stats["out_msgs"] == 300
    await Acks(nc).send([])  # nothing to settle: nothing written
    assert len(nc.commands) == 1 and nc.flushes == 1


async def test_a_closed_connection_raises() -> None:
    nc = RawClient()
    nc.is_closed = True
    with pytest.raises(ConnectionError):
        await Acks(nc).send(["$JS.ACK.CHAT.h.1.5.5.1.0"])
    assert nc.commands == []


async def test_a_client_without_the_buffer_gets_one_publish_per_ack() -> None:
    nc = PlainClient()
    await Acks(nc).send(["a.1", "a.2"], NAK)
    assert nc.published == [("a.1", NAK), ("a.2", NAK)]


def test_the_nats_client_still_has_the_buffer_used() -> None:
    # nats-py 2.x; should a release rename them, acks fall back to publish (slower, correct).
    from nats.aio.client import Client

    assert callable(getattr(Client, "_send_command", None))
    assert callable(getattr(Client, "_flush_pending", None))
