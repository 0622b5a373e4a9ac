"""One chat stream → PostgreSQL: the ``history-push`` subscription, its buffer
and the writer task; start, stop and readiness.

The pieces it drives: :mod:`.consumer_setup` (stream and durable), the
linger policy :mod:`.batching` (when to take a batch), and :mod:`.commit`
(insert, then ack each message). history-service runs one
:class:`HistoryConsumer` per chat stream (partition).

Per message, the subscription callback only files the message in an
in-memory buffer keyed by stream sequence (read from the reply subject:
:func:`.acks.stream_seq`);
a redelivery replaces its earlier copy, so the buffer holds no more distinct
messages than the server lets be unacked (and it is capped at that, for
copies gone stale). Flow-control requests, and idle heartbeats naming a
stalled one, are answered by whichever member of the deliver group gets them.

The writer takes batches from the buffer, decodes each
(:meth:`.commit.Committer.prepare`) and commits it in a task of its own, up
to :data:`WRITERS` at once on the ingest pool: the next batch is decoded and
its insert started while the previous one is still in PostgreSQL. A batch
with edits or deletes first waits for every batch before it (an edit
applies to its message's row, which an earlier batch may still be inserting).

A periodic check re-creates the stream and consumer if they disappear (a
push consumer that is gone is silent); NATS reconnects, and re-subscribing
the deliver subject after one, are the client's job. Stop drains the
subscription, stores what was delivered within :data:`STOP_BUDGET` and hands
the rest back (``nak``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from itertools import islice

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext

from chat_kit import bus
from chat_kit.stream import StreamSettings

from . import metrics
from .acks import Acks, stream_seq
from .batching import BatchPolicy
from .commit import MAX_BACKOFF, Committer, Delivery, Prepared
from .consumer_setup import (
    DELIVER_GROUP,
    MAX_ACK_PENDING,
    consumer_exists,
    deliver_subject,
    ensure_consumer,
)
from .store import MessageStore
from .troubles import Troubles

log = logging.getLogger("chat_history.consumer")

# How often each instance checks that the consumer still exists.
CHECK_INTERVAL = 5.0
# On stop, time to keep storing what is buffered; the rest is handed back (nak).
STOP_BUDGET = 3.0
# Batches being inserted at once (each on its own ingest-pool connection).
WRITERS = 2
_STATUS = "Status"
_CONSUMER_STALLED = "Nats-Consumer-Stalled"


class HistoryConsumer:
    def __init__(self, nc: NATS, store: MessageStore, *, batch: int, linger: float,
                 stream: StreamSettings | None = None, name: str | None = None) -> None:
        """Stores the chat stream ``name`` (one of ``stream.names()``; the first
        by default)."""
        self._nc = nc
        self._js: JetStreamContext = nc.jetstream()
        self._batch = batch
        self._linger = linger
        self._stream = stream or StreamSettings()
        self._name = name or self._stream.names()[0]
        self._sub: Subscription | None = None
        # Delivered, not yet taken by the writer: stream seq → latest delivery.
        self._buf: dict[int, Msg] = {}
        self._wake = asyncio.Event()  # the buffer is not empty (or we stop)
        self._full = asyncio.Event()  # the buffer holds a whole batch (or we stop)
        self._stop = asyncio.Event()
        self._closing = False  # stop() began: no lingering, store what is there
        self._drained = False  # nothing more will be delivered: the writer may finish
        self._gave_up = False  # a commit gave up (stopping, database away): hand all back
        self._stop_deadline = 0.0
        self._writer: asyncio.Task[None] | None = None
        self._checker: asyncio.Task[None] | None = None
        self._troubles = Troubles(log)
        self._committer = Committer(store, Acks(nc), self._troubles, self._stop)
        # Batches this instance wrote (tests, operators).
        self.batches = 0

    @property
    def stored(self) -> int:
        """Rows this instance inserted."""
        return self._committer.stored

    @property
    def rejected(self) -> int:
        """Payloads this instance terminated."""
        return self._committer.rejected

    @property
    def on_stored(self) -> Callable[[], None] | None:
        """Called after a batch is acked (the read side polls the ack floor then)."""
        return self._committer.on_stored

    @on_stored.setter
    def on_stored(self, callback: Callable[[], None] | None) -> None:
        self._committer.on_stored = callback

    @property
    def on_changed(self) -> Callable[[], None] | None:
        """Called after a batch with edits or deletes committed (the stream eraser)."""
        return self._committer.on_changed

    @on_changed.setter
    def on_changed(self, callback: Callable[[], None] | None) -> None:
        self._committer.on_changed = callback

    async def start(self, stopping: asyncio.Event | None = None) -> None:
        """Set up stream and consumer (retrying until they exist), subscribe, start writing."""
        delay = 0.1
        while True:
            try:
                await self._ensure()
                await self._subscribe()
                break
            except Exception as exc:
                if stopping is not None and stopping.is_set():
                    raise
                metrics.CONSUMER_ERRORS.inc()
                self._troubles.failing("nats", "consumer setup failed", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF)
        self._troubles.recovered("nats")
        self._writer = asyncio.create_task(self._write_loop(), name="history-writer")
        self._checker = asyncio.create_task(self._check_loop(), name="history-consumer-check")

    async def stop(self) -> None:
        """Stop deliveries, store what was delivered (within STOP_BUDGET), hand back the rest."""
        if not self._closing:
            self._closing = True
            self._stop_deadline = asyncio.get_running_loop().time() + STOP_BUDGET
            self._stop.set()
            sub, self._sub = self._sub, None
            if sub is not None:
                # Drain: no new deliveries, and what the server already sent
                # reaches the buffer (unsubscribing would drop it until ACK_WAIT).
                await bus.drain_or_unsubscribe(sub)
            self._drained = True
            self._wake.set()
            self._full.set()
        tasks = [t for t in (self._writer, self._checker) if t is not None]
        if self._checker is not None:
            self._checker.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        # Acks are fire-and-forget publishes: make sure they left before NATS drains.
        with contextlib.suppress(Exception):
            await self._nc.flush(timeout=2)

    def is_ready(self) -> bool:
        # A failed erasure (best effort) does not make the service unready.
        failing = self._troubles.kinds() - {"erase"}
        return self._writer is not None and not self._writer.done() and not failing

    # --- setup ----------------------------------------------------------------------

    async def _ensure(self) -> None:
        await ensure_consumer(self._js, self._stream, self._name)

    async def _subscribe(self) -> None:
        if self._sub is None:
            self._sub = await self._nc.subscribe(
                deliver_subject(self._name), queue=DELIVER_GROUP, cb=self._on_msg,
                # Never reached: the server stops at MAX_ACK_PENDING unacked.
                pending_msgs_limit=4 * MAX_ACK_PENDING, pending_bytes_limit=512 * 1024 * 1024)

    async def _check_loop(self) -> None:
        """A push consumer that disappeared is silent: look for it now and then."""
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), CHECK_INTERVAL)
            if self._stop.is_set():
                return
            try:
                if not await consumer_exists(self._js, self._name):
                    metrics.CONSUMER_ERRORS.inc()
                    self._troubles.failing("nats", "consumer missing, re-creating it",
                                           LookupError(self._name))
                    await self._ensure()
            except Exception as exc:  # NATS away, JetStream unavailable…
                metrics.CONSUMER_ERRORS.inc()
                self._troubles.failing("nats", "consumer check failed", exc)
                continue
            self._troubles.recovered("nats")

    # --- delivery -------------------------------------------------------------------

    async def _on_msg(self, msg: Msg) -> None:
        """Subscription callback: file the message, nothing else (the writer does the work)."""
        seq = stream_seq(msg.reply)
        if seq is None:
            await self._control(msg)
            return
        buf = self._buf
        if len(buf) >= MAX_ACK_PENDING and seq not in buf:
            # The server stops at MAX_ACK_PENDING unacked, so only copies gone
            # stale get us here (redelivered to and acked by another instance
            # while our database was away). Dropped unacked: JetStream
            # redelivers it after ACK_WAIT.
            metrics.DROPPED.inc()
            return
        buf[seq] = msg  # a redelivery replaces the copy still waiting here
        if len(buf) >= self._batch:
            self._full.set()
        self._wake.set()

    async def _control(self, msg: Msg) -> None:
        headers = msg.headers or {}
        if msg.data or headers.get(_STATUS) != "100":
            # Not from JetStream (someone published to the deliver subject): nothing to ack.
            metrics.BAD_RECORDS.labels("not_jetstream").inc()
            return
        # Flow control: a request carries the reply to answer; a heartbeat names a
        # stalled one (its request went to a member that did not answer).
        reply = msg.reply or headers.get(_CONSUMER_STALLED)
        if reply:
            with contextlib.suppress(Exception):
                await self._nc.publish(reply)

    # --- the writer -----------------------------------------------------------------

    async def _write_loop(self) -> None:
        loop = asyncio.get_running_loop()
        policy = BatchPolicy(self._batch, self._linger, loop.time())
        inflight: set[asyncio.Task[bool]] = set()
        try:
            while True:
                inflight = self._settled(inflight)
                if self._giving_up():
                    # Stopping with the database away: hand everything back now.
                    await self._hand_back_all()
                    return
                if not self._buf:
                    if self._drained:
                        return
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                if self._closing and loop.time() > self._stop_deadline:
                    await self._hand_back_all()
                    return
                delay = policy.delay(loop.time(), len(self._buf), self._closing)
                if delay > 0:
                    self._full.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._full.wait(), delay)
                batch = self._take(policy.size)
                policy.taken(loop.time(), len(batch))
                metrics.BATCH_SIZE.observe(len(batch))
                self.batches += 1
                prepared = await self._committer.prepare(batch)
                # A free writer; a batch with changes waits for all before it.
                while inflight and (prepared.changes or len(inflight) >= WRITERS):
                    await asyncio.wait(inflight, return_when=asyncio.FIRST_COMPLETED)
                    inflight = self._settled(inflight)
                if self._giving_up():  # while we waited
                    await self._committer.hand_back(prepared.replies)
                    continue
                inflight.add(asyncio.create_task(self._commit(prepared),
                                                 name="history-commit"))
                policy.written(len(self._buf))
        finally:
            # Each batch settles itself (acked, or handed back when it gives up).
            if inflight:
                await asyncio.gather(*inflight, return_exceptions=True)

    async def _commit(self, prepared: Prepared) -> bool:
        ok = await self._committer.commit(prepared)
        if not ok:
            self._gave_up = True
            self._wake.set()
        return ok

    def _giving_up(self) -> bool:
        return self._gave_up

    @staticmethod
    def _settled(inflight: set[asyncio.Task[bool]]) -> set[asyncio.Task[bool]]:
        """The tasks still running; a failed one's exception ends the writer."""
        for task in [t for t in inflight if t.done()]:
            task.result()
        return {t for t in inflight if not t.done()}

    async def _hand_back_all(self) -> None:
        await self._committer.hand_back([msg.reply for _, msg in self._take(len(self._buf))])

    def _take(self, n: int) -> list[Delivery]:
        buf = self._buf
        if len(buf) <= n:
            self._buf = {}
            return list(buf.items())
        keys = list(islice(buf, n))
        return [(seq, buf.pop(seq)) for seq in keys]
