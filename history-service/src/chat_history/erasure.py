"""Deleted text leaves the CHAT stream too, retried until it has: after a delete
is committed, the stream messages of the message's original and its edits
are deleted (history keeps the event rows, without text).

Durable queue: the transaction that stores a change (delete or edit) also
queues its message in ``history.erasures`` (store.py). The
:class:`StreamEraser` works that queue in a task of its own, never in the
writer's way: woken after each batch with changes, at start (what a
previous process left, or another replica that died), and every
``sweep`` seconds. An erasure that fails (stream unreachable, delete
refused) stays queued and is retried with backoff (``retry_min`` doubling
to ``retry_max``); once done (or nothing left to erase: aged out, or the
message was only edited) it leaves the queue. Failures are counted and
logged once per outage (``troubles``, kind ``erase``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from nats.js import JetStreamContext
from nats.js.errors import APIError, NotFoundError

from chat_kit.stream import StreamSettings

from . import metrics
from .store import MessageStore
from .troubles import Troubles

# JetStream's "no message found" (JSNoMessageFoundErr): not in the stream.
_NO_MESSAGE = 10057
_BATCH = 100


async def erase_msg(js: JetStreamContext, stream: str, seq: int) -> bool:
    """Delete one stream message; False if it is not there any more: erased
    before (a replay) or aged out of the window (the stream's limits), which
    is the same outcome, not an error."""
    try:
        await js.delete_msg(stream, seq)
    except NotFoundError:
        return False
    except APIError as exc:
        if exc.err_code == _NO_MESSAGE:
            return False
        raise
    return True


class StreamEraser:
    def __init__(self, js: JetStreamContext, store: MessageStore, layout: StreamSettings,
                 troubles: Troubles, *, retry_min: float = 0.2, retry_max: float = 30.0,
                 sweep: float = 60.0) -> None:
        self._js = js
        self._store = store
        self._layout = layout
        self._troubles = troubles
        self._retry_min = retry_min
        self._retry_max = retry_max
        self._sweep = sweep
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # Erasures that failed and are waiting for their retry (tests, operators).
        self.failures = 0
        # Also done for each queued message before it leaves the queue: its
        # attachments' removal if it is deleted (attachment_endpoints.py).
        self.also: Callable[[str, str], Awaitable[None]] | None = None

    def wake(self) -> None:
        """Changes were committed: work the queue soon."""
        self._wake.set()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="history-eraser")

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _loop(self) -> None:
        delay = self._retry_min
        while not self._stop.is_set():
            self._wake.clear()
            done, more = await self._work()
            if not done:
                await self._pause(delay, wakeable=False)
                delay = min(delay * 2, self._retry_max)
                continue
            delay = self._retry_min
            if not more:
                await self._pause(self._sweep, wakeable=True)

    async def _work(self) -> tuple[bool, bool]:
        """One pass over the oldest queued erasures: (all succeeded, more queued)."""
        try:
            pending = await self._store.pending_erasures(_BATCH)
            for room, msg_id, queued_at in pending:
                for seq in await self._store.erasable(room, msg_id):
                    if await erase_msg(self._js, self._layout.stream_for_room(room), seq):
                        metrics.ERASED.inc()
                if self.also is not None:
                    await self.also(room, msg_id)
                await self._store.erasure_done(room, msg_id, queued_at)
            metrics.ERASE_PENDING.set(await self._store.erasures_pending())
        except Exception as exc:  # stream or database away, delete refused
            metrics.ERASE_ERRORS.inc()
            self.failures += 1
            self._troubles.failing("erase", "erasing a deleted message from the stream failed",
                                   exc)
            return False, True
        self._troubles.recovered("erase")
        return True, len(pending) == _BATCH

    async def _pause(self, seconds: float, *, wakeable: bool) -> None:
        waits = [asyncio.ensure_future(self._stop.wait())]
        if wakeable:
            waits.append(asyncio.ensure_future(self._wake.wait()))
        try:
            await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*waits, return_exceptions=True)
