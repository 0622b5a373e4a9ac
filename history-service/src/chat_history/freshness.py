"""Read-your-writes for history reads (docs/protocol.md §3.5.1).

A read must include every message already in the CHAT stream for its room.
Two questions, both answered by JetStream rather than by this process, so
that any number of instances agree:

- *How far must storage be?* The room's last stream sequence: a direct get of
  the last message on ``chat.room.<room>`` (0 for a room without messages).
- *How far is storage?* The ``history-push`` durable consumer's ack floor. With
  explicit acks, and acks sent only after commit, every stream message at or
  below the floor is committed to PostgreSQL, whichever instance stored it.

The floor is polled from consumer info by one poller per process, only while
some read waits, every ``interval``, and also right after this process acked
a batch (:meth:`CommitTracker.nudge`: the floor has likely moved); between
polls it is cached (the floor never goes back, committed rows stay committed).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from chat_contract import subjects
from chat_kit.stream import StreamSettings

from . import metrics
from .consumer_setup import DURABLE


async def last_room_seq(js: JetStreamContext, room: str,
                        layout: StreamSettings | None = None) -> int:
    """The stream sequence of the room's newest message, 0 if it has none.

    A direct get may be answered by any replica of an R3 stream, which can
    trail the leader by a moment; callers that just published pass the
    sequence they got back as ``min_seq`` and do not depend on this.

    A room whose events all aged out of the stream (chat_kit.stream: the
    stream is a window) also answers 0: what aged out was stored long ago,
    so a read waits for nothing but its own ``min_seq``.
    """
    layout = layout or StreamSettings()
    try:
        msg = await js.get_last_msg(layout.stream_for_room(room), layout.stored_subject(room),
                                    direct=True)
    except NotFoundError:
        return 0
    return int(msg.seq or 0)


@dataclass
class _Waiter:
    target: int
    since: float  # loop time the waiter arrived: only polls started later may release it
    done: asyncio.Future[None] = field(repr=False)


class CommitTracker:
    """How far the durable consumer has committed; lets reads wait for a sequence."""

    def __init__(self, js: JetStreamContext, *, interval: float = 0.02,
                 poll_timeout: float = 1.0, stream: str = subjects.CHAT_STREAM) -> None:
        self._js = js
        self._stream = stream
        self._interval = interval
        self._poll_timeout = poll_timeout
        self._waiters: list[_Waiter] = []
        self._poller: asyncio.Task[None] | None = None
        self._nudged = asyncio.Event()
        self.floor = 0

    @property
    def waiting(self) -> int:
        """Reads waiting for storage to catch up now."""
        return len(self._waiters)

    def nudge(self) -> None:
        """This process just acked stored messages: poll now if a read waits."""
        if self._waiters:
            self._nudged.set()

    async def wait_for(self, target: int, timeout: float) -> bool:
        """Wait until every stream message up to ``target`` is stored; False on timeout."""
        if target <= self.floor:
            return True
        loop = asyncio.get_running_loop()
        waiter = _Waiter(target, loop.time(), loop.create_future())
        self._waiters.append(waiter)
        if self._poller is None or self._poller.done():
            self._poller = asyncio.create_task(self._poll(), name="history-ack-floor")
        try:
            await asyncio.wait_for(asyncio.shield(waiter.done), timeout)
            return True
        except TimeoutError:
            return False
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    async def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            await asyncio.gather(self._poller, return_exceptions=True)

    async def _poll(self) -> None:
        loop = asyncio.get_running_loop()
        while self._waiters:
            self._nudged.clear()  # a nudge from here on means a poll after this one
            started = loop.time()
            try:
                info = await self._js.consumer_info(
                    self._stream, DURABLE, timeout=self._poll_timeout)
            except Exception:  # NATS down or consumer missing: the waiters time out
                pass
            else:
                if info.ack_floor is not None:
                    self.floor = max(self.floor, info.ack_floor.stream_seq)
                    metrics.ACK_FLOOR.labels(self._stream).set(self.floor)
                # Nothing undelivered and nothing unacked: everything the
                # stream held when this poll began is stored. Covers targets
                # the floor cannot reach (a min_seq beyond the stream's end).
                drained = info.num_pending == 0 and info.num_ack_pending == 0
                for waiter in list(self._waiters):
                    if waiter.target <= self.floor or (drained and started >= waiter.since):
                        self._waiters.remove(waiter)
                        if not waiter.done.done():
                            waiter.done.set_result(None)
            if self._waiters:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._nudged.wait(),
                                           max(0.0, self._interval - (loop.time() - started)))


class CommitTrackers:
    """One :class:`CommitTracker` per chat stream: a room's reads wait on its
    partition's consumer (the floors of different streams are unrelated)."""

    def __init__(self, js: JetStreamContext, layout: StreamSettings) -> None:
        self.layout = layout
        self._by_stream = {name: CommitTracker(js, stream=name) for name in layout.names()}

    def for_room(self, room: str) -> CommitTracker:
        return self._by_stream[self.layout.stream_for_room(room)]

    def for_stream(self, name: str) -> CommitTracker:
        return self._by_stream[name]

    async def close(self) -> None:
        for tracker in self._by_stream.values():
            await tracker.close()
