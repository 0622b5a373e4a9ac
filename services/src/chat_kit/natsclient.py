"""nats-py's client with lean paths for the messages every chat event pays for.

nats-py turns each incoming message into a ``Msg`` (a dataclass with a
decoded subject, reply and a header dict), puts it on the subscription's
``asyncio.Queue`` and lets a task per subscription await the callback; a
request adds a random token (an ``os.urandom`` call), a future, a done
callback and ``asyncio.wait_for``. Under load these showed as ~10 % of a
gateway's CPU (tests/load/RESULTS.md). Three additions, used where the
traffic is:

- :meth:`Client.subscribe_direct`: messages go straight from the reader to a
  plain function ``handler(data, raw_headers)`` — no ``Msg``, no queue, no
  task. The handler runs inside nats-py's read loop, so it must not block
  and must not raise; ordering is the subject's order on the connection.
- :meth:`Client.request_raw`: request-reply on one shared inbox subscription
  (a direct one) with counter tokens and one timer per request; returns the
  reply's bytes. No responders → ``NoRespondersError``; no answer in time →
  ``TimeoutError`` (nats-py's), like ``request``.
- A header parser cheaper than the stock one (same rules), for the
  subscriptions that still take ``Msg`` objects.

Everything else (reconnects, resubscribing after one, JetStream) is
nats-py's own: direct subscriptions are ordinary subscriptions without a
callback, so nats-py re-sends them after a reconnect like any other.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable

from nats.aio.client import Client as NATS
from nats.aio.subscription import Subscription
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

# ``handler(data, raw_headers)``; raw_headers is b"" without headers.
DirectHandler = Callable[[bytes, bytes], None]
# ``handler(subject, data, raw_headers)`` for wildcard subscriptions.
_SubjectHandler = Callable[[bytes, bytes, bytes], None]

_NO_RESPONDERS = b"NATS/1.0 503"

log = logging.getLogger("chat_kit.natsclient")


def header_value(raw: bytes, name: bytes) -> bytes | None:
    """One header's value from a raw ``NATS/1.0`` header block (None if absent).

    ``name`` must be given as sent (NATS servers write their own headers in a
    fixed case); the first occurrence wins.
    """
    key = b"\r\n" + name + b":"
    start = raw.find(key)
    if start < 0:
        return None
    start += len(key)
    end = raw.find(b"\r\n", start)
    return raw[start:end if end >= 0 else len(raw)].strip()


class Client(NATS):
    def __init__(self) -> None:
        super().__init__()
        self._direct: dict[int, _SubjectHandler] = {}
        self._replies: dict[bytes, asyncio.Future[bytes]] = {}
        self._reply_prefix = b""
        self._reply_tokens = itertools.count()
        self._reply_setup = asyncio.Lock()

    # --- direct subscriptions -----------------------------------------------

    async def subscribe_direct(self, subject: str, handler: DirectHandler) -> Subscription:
        """Subscribe ``subject`` with ``handler`` called inline per message."""
        return await self._subscribe_direct(subject, lambda _s, d, h: handler(d, h))

    async def _subscribe_direct(self, subject: str, handler: _SubjectHandler) -> Subscription:
        sub = await self.subscribe(subject)  # no callback: nats-py's queue stays unused
        self._direct[sub._id] = handler
        return sub

    def _remove_sub(self, sid: int, max_msgs: int = 0) -> None:
        self._direct.pop(sid, None)
        super()._remove_sub(sid, max_msgs)

    async def _process_msg(self, sid: int, subject: bytes, reply: bytes, data: bytes,
                           headers: bytes) -> None:
        handler = self._direct.get(sid)
        if handler is None:
            await super()._process_msg(sid, subject, reply, data, headers)
            return
        try:
            handler(subject, data, headers or b"")
        except Exception:
            # An exception here would end nats-py's read loop for good (the
            # connection would look alive and deliver nothing): drop the message.
            log.exception("direct subscription handler failed",
                          extra={"fields": {"subject": subject.decode(errors="replace")}})

    # --- lean requests ------------------------------------------------------

    async def request_raw(self, subject: str, payload: bytes, timeout: float,
                          headers: dict[str, str] | None = None) -> bytes:
        """Publish ``payload`` with a reply subject and return the reply's data."""
        if not self._reply_prefix:
            async with self._reply_setup:  # two first requests at once: one inbox
                if not self._reply_prefix:
                    prefix = (self.new_inbox() + ".").encode()
                    await self._subscribe_direct(prefix.decode() + "*", self._on_reply)
                    self._reply_prefix = prefix
        token = b"%x" % next(self._reply_tokens)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bytes] = loop.create_future()
        self._replies[token] = future
        timer = loop.call_later(timeout, _expire, future)
        try:
            await self.publish(subject, payload, reply=(self._reply_prefix + token).decode(),
                               headers=headers)
            return await future
        finally:
            timer.cancel()
            self._replies.pop(token, None)

    def _on_reply(self, subject: bytes, data: bytes, headers: bytes) -> None:
        future = self._replies.get(subject[len(self._reply_prefix):])
        if future is None or future.done():
            return  # timed out meanwhile
        if not data and headers.startswith(_NO_RESPONDERS):
            future.set_exception(NoRespondersError())
        else:
            future.set_result(data)

    # --- the stock header parser, cheaper ------------------------------------

    @staticmethod
    def _parse_header_lines(raw: bytes) -> dict[str, str]:
        # The stock parser checks each name with a per-character generator.
        out: dict[str, str] = {}
        for line in raw.split(b"\r\n"):
            name, sep, value = line.partition(b":")
            if not sep:
                continue
            try:
                key = name.strip().decode("ascii")
            except UnicodeDecodeError:
                continue
            if len(key.split()) != 1:  # empty, or white space inside the name
                continue
            out[key] = value.strip().decode("utf-8", "replace")
        return out


def _expire(future: asyncio.Future[bytes]) -> None:
    if not future.done():
        future.set_exception(NatsTimeoutError())
