"""JetStream deliveries by their reply subject: the stream sequence, and the acks.

A push consumer's delivery carries its metadata in its reply subject, the
subject its ack goes to::

    $JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<ts>.<pending>
    $JS.ACK.<domain>.<account hash>.<stream>.<consumer>.<delivered>.<stream seq>
           .<consumer seq>.<ts>.<pending>[.<token>]      (one subject, no line break)

:func:`stream_seq` reads the stream sequence from it with one compiled regex
(nats-py's ``msg.metadata`` builds two frozen dataclasses and a ``datetime``
per message: ~4 µs of this service's CPU per message, tests/load/RESULTS.md
"History consumer split"). The same match vouches that the subject holds no
whitespace, so :class:`Acks` may write it into a PUB command as it is.

:class:`Acks` settles a whole batch at once: one PUB per message (explicit
acks: see the README's "Consistency choices" for why not AckAll), built as
one bytes object and handed to the client's outgoing buffer in one go, then
one flush; nats-py's ``msg.ack()`` costs a coroutine, a subject check, an
f-string and a flush-queue check per message. The client's outgoing buffer
is private API (``_send_command``/``_flush_pending``, nats-py 2.x): where it
is missing (another client version, a test double) every ack is an ordinary
``publish``.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

ACK = b""  # what nats-py's msg.ack() sends: an empty payload acks
NAK = b"-NAK"
IN_PROGRESS = b"+WPI"
TERM = b"+TERM"

_TOKEN = r"[^.\s]+"
# Stream sequence: the 4th token after the stream and consumer names.
_V1 = re.compile(rf"\$JS\.ACK\.{_TOKEN}\.{_TOKEN}\.[0-9]+\.([0-9]+)\.[0-9]+\.[0-9]+\.[0-9]+")
_V2 = re.compile(rf"\$JS\.ACK\.{_TOKEN}\.{_TOKEN}\.{_TOKEN}\.{_TOKEN}"
                 rf"\.[0-9]+\.([0-9]+)\.[0-9]+\.[0-9]+\.[0-9]+(?:\.{_TOKEN})*")


def stream_seq(reply: str | None) -> int | None:
    """The stream sequence of a JetStream delivery, from its reply subject;
    None if ``reply`` is no JetStream ack subject (a control message, a stray
    publish to the deliver subject)."""
    if not reply:
        return None
    match = _V1.fullmatch(reply) or _V2.fullmatch(reply)
    return int(match[1]) if match is not None else None


def pub_commands(replies: Sequence[str], payload: bytes) -> bytes:
    """PUB commands sending ``payload`` to each of ``replies`` (subjects that
    :func:`stream_seq` accepted: no whitespace, nothing to escape)."""
    tail = b" %d\r\n%b\r\n" % (len(payload), payload)
    return b"".join([b"PUB " + reply.encode() + tail for reply in replies])


class Acks:
    """Sends acks (or naks, progress, terms) for many deliveries at once."""

    def __init__(self, nc: Any) -> None:
        self._nc = nc
        send: Callable[[bytes], Awaitable[None]] | None = getattr(nc, "_send_command", None)
        flush: Callable[[], Awaitable[Any]] | None = getattr(nc, "_flush_pending", None)
        self._raw = (send, flush) if send is not None and flush is not None else None

    async def send(self, replies: Sequence[str], payload: bytes = ACK) -> None:
        """``payload`` to every reply subject, written together."""
        if not replies:
            return
        if self._raw is None:
            for reply in replies:
                await self._nc.publish(reply, payload)
            return
        nc = self._nc
        if nc.is_closed:
            raise ConnectionError("NATS connection closed")
        send, flush = self._raw
        # Buffered like any publish (kept across a reconnect, up to the client's
        # pending limit), then one kick of the client's flusher task.
        await send(pub_commands(replies, payload))
        stats = getattr(nc, "stats", None)
        if isinstance(stats, dict) and "out_msgs" in stats:
            stats["out_msgs"] += len(replies)
        await flush()
