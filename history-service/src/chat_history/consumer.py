"""The ``history-push`` durable push consumer: CHAT stream → PostgreSQL, ack after commit.

Delivery. JetStream pushes the stream to the deliver subject
:data:`DELIVER_SUBJECT`; every instance subscribes to it in the queue group
:data:`DELIVER_GROUP` (the consumer's deliver group), so the server hands
each message to one instance. ``max_ack_pending`` bounds the messages pushed
but not yet acked, across all instances: at that many the server stops
pushing until acks arrive. Flow control and idle heartbeats are on, as
JetStream recommends for push consumers; whichever member of the group a
flow-control request (or a heartbeat naming a stalled one) reaches answers it.

Per message, the subscription callback only files the message in an
in-memory buffer keyed by stream sequence; a redelivery replaces its earlier
copy, so the buffer holds no more distinct messages than the server lets be
unacked (and it is capped at that, for copies gone stale). One writer task
turns the buffer into batches. On a busy stream it lets a batch gather until
``CHAT_HISTORY_BATCH`` messages are there or ``linger`` has passed since the
previous batch began, so the stream costs one INSERT and one burst of acks
per ``linger`` rather than per handful of messages. Busy means: messages
arrive at ``LINGER_MIN`` or more per ``linger`` (a rate smoothed over the
last few batches), and they keep coming while the writer works (the last
batch held several, or more were waiting after it). Otherwise it stores
whatever is there at once: a lone message, or a sender that waits for each
message to be stored before it sends the next, is never kept waiting.

Acks are explicit and per message, sent only after the batch committed:
AckAll would be unsafe with several instances, since one instance's ack would
also cover lower sequences another instance holds uncommitted. Unacked
messages come back after ``ACK_WAIT`` (a crash) or at once (``nak`` on stop),
and the insert is idempotent, so nothing is lost and nothing doubles.

Failure handling, none of it per-message logging:

- a payload that can never become a row is logged once, counted and
  terminated (``term``), so it never blocks the stream or the ack floor;
- a batch the database rejects for its data is retried row by row, so only
  the offending row is terminated;
- any other database error keeps the batch unacked and retries it with
  backoff (``in_progress`` keeps JetStream from redelivering it meanwhile);
- a periodic check re-creates the stream and consumer if they disappear (a
  push consumer that is gone is silent); an existing stream is only verified
  (:func:`chat_kit.stream.ensure_chat_stream`), never updated; NATS reconnects, and re-subscribing
  the deliver subject after one, are the client's job.

Upgrade from the pull consumer. Older versions pulled from the durable
``history``; a pull consumer cannot become a push consumer in place, so this
one has a new name. When it does not exist yet it is created to start right
after the old durable's ack floor (everything at or below it is stored), and
the old durable is deleted once nothing pulls from it any more (an older
instance still running during a rolling upgrade keeps it alive meanwhile;
both store the same messages then, which the idempotent insert absorbs).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from itertools import islice

import asyncpg
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import APIError, NotFoundError

from chat_contract import subjects
from chat_kit.logs import event
from chat_kit.stream import StreamSettings, ensure_chat_stream

from . import metrics
from .records import BadRecord, MessageRow, row_from_payload
from .store import MessageStore

log = logging.getLogger("chat_history.consumer")

DURABLE = "history-push"
# The pull consumer of versions before the push consumer; retired on upgrade.
LEGACY_DURABLE = "history"
# Where JetStream pushes the stream; every instance subscribes in DELIVER_GROUP.
# Not under chat.room.* (the stream's own subjects: that would form a cycle).
DELIVER_SUBJECT = "chat.deliver.history"
DELIVER_GROUP = "history"
# Time a delivered message may stay unacked before JetStream hands it to another
# instance: longer than any healthy batch, short enough to recover from a crash.
ACK_WAIT = 30.0
# Bound on messages pushed and not yet acked, all instances together: room for
# every instance's batches in flight; beyond it JetStream stops pushing.
MAX_ACK_PENDING = 20_000
IDLE_HEARTBEAT = 5.0
# How often each instance checks that the consumer still exists.
CHECK_INTERVAL = 5.0
# The writer lingers once the stream is busy enough that a linger gathers at
# least this many messages (80/s at the default 50 ms); below that rate each
# message is stored at once.
LINGER_MIN = 4
_RATE_DECAY = 0.5  # per batch, for the arrival rate the writer estimates
# On stop, time to keep storing what is buffered; the rest is handed back (nak).
STOP_BUDGET = 3.0
# Errors that mean "this row can never be stored", not "the database is away".
_ROW_ERRORS = (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError,
               asyncpg.ProgramLimitExceededError)
_MAX_BACKOFF = 5.0
_ACK = b""  # an empty payload acks
_NAK = b"-NAK"
_PROGRESS = b"+WPI"
_TERM = b"+TERM"
_JS_ACK_PREFIX = "$JS.ACK."
_STATUS = "Status"
_CONSUMER_STALLED = "Nats-Consumer-Stalled"


def deliver_subject(stream: str = subjects.CHAT_STREAM) -> str:
    """Where a chat stream pushes to us: one subject per partition stream."""
    return DELIVER_SUBJECT if stream == subjects.CHAT_STREAM else f"{DELIVER_SUBJECT}.{stream}"


def consumer_config(start_seq: int = 0, stream: str = subjects.CHAT_STREAM) -> ConsumerConfig:
    """Our durable on ``stream``; ``start_seq`` > 0 starts it there instead of
    at the stream's start."""
    return ConsumerConfig(
        name=DURABLE,
        durable_name=DURABLE,
        description="history-service: stores every chat event in PostgreSQL",
        deliver_subject=deliver_subject(stream),
        deliver_group=DELIVER_GROUP,
        deliver_policy=DeliverPolicy.BY_START_SEQUENCE if start_seq > 0 else DeliverPolicy.ALL,
        opt_start_seq=start_seq if start_seq > 0 else None,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=ACK_WAIT,
        max_ack_pending=MAX_ACK_PENDING,
        flow_control=True,
        idle_heartbeat=IDLE_HEARTBEAT,
    )


def _updated_config(current: ConsumerConfig, stream: str) -> ConsumerConfig:
    """Our config for an existing durable: what JetStream cannot change stays as it is."""
    if not current.deliver_subject:
        raise RuntimeError(f"consumer {DURABLE!r} exists as a pull consumer; delete it")
    config = consumer_config(stream=stream)
    config.deliver_policy = current.deliver_policy
    config.opt_start_seq = current.opt_start_seq
    config.opt_start_time = current.opt_start_time
    config.flow_control = current.flow_control
    config.idle_heartbeat = current.idle_heartbeat
    return config


def stream_seq(reply: str) -> int | None:
    """The stream sequence in a JetStream ack subject, None if ``reply`` is not one.

    ``$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<dseq>.<ts>.<pending>``, or
    with ``<domain>.<account hash>`` after ``ACK`` (and a trailing token) in the
    newer form.
    """
    if not reply.startswith(_JS_ACK_PREFIX):
        return None
    tokens = reply.split(".")
    n = len(tokens)
    try:
        if n == 9:
            return int(tokens[5])
        if n >= 11:
            return int(tokens[7])
    except ValueError:
        pass
    return None


# JetStream's "no message found" (JSNoMessageFoundErr): not in the stream.
_NO_MESSAGE = 10057


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


class HistoryConsumer:
    def __init__(self, nc: NATS, store: MessageStore, *, batch: int, linger: float,
                 stream: StreamSettings | None = None, name: str | None = None) -> None:
        """Stores the chat stream ``name`` (one of ``stream.names()``; the first
        by default): history-service runs one consumer per partition."""
        self._nc = nc
        self._js: JetStreamContext = nc.jetstream()
        self._store = store
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
        self._stop_deadline = 0.0
        self._writer: asyncio.Task[None] | None = None
        self._checker: asyncio.Task[None] | None = None
        # What is failing now, by kind ("db", "nats"): logged once per outage.
        self._failing: dict[str, str] = {}
        # Retiring the legacy pull durable: its delivered seq when last seen idle.
        self._legacy_gone = False
        self._legacy_mark: int | None = None
        # Rows this instance inserted, payloads it terminated, batches it wrote
        # (tests, operators).
        self.stored = 0
        self.rejected = 0
        self.batches = 0
        # Called after a batch is acked (the read side polls the ack floor then).
        self.on_stored: Callable[[], None] | None = None

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
                self._trouble("nats", "consumer setup failed", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, _MAX_BACKOFF)
        self._recovered("nats")
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
                try:
                    await asyncio.wait_for(sub.drain(), 2.0)  # type: ignore[no-untyped-call]
                except Exception:
                    with contextlib.suppress(Exception):
                        await sub.unsubscribe()
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
        failing = self._failing.keys() - {"erase"}
        return self._writer is not None and not self._writer.done() and not failing

    # --- setup ----------------------------------------------------------------------

    async def _ensure(self) -> None:
        """Create the stream if missing (else verify it: never changed here), create or
        update our durable; retire the legacy one when unused."""
        await ensure_chat_stream(self._js, self._stream)
        try:
            info = await self._js.consumer_info(self._name, DURABLE)
        except NotFoundError:
            config = await self._new_config()
        else:
            # Update: a changed config (e.g. max_ack_pending) applies on restart.
            config = _updated_config(info.config, self._name)
        await self._js.add_consumer(self._name, config)
        await self._retire_legacy()

    async def _new_config(self) -> ConsumerConfig:
        try:
            legacy = await self._js.consumer_info(self._name, LEGACY_DURABLE)
        except NotFoundError:
            return consumer_config(stream=self._name)
        floor = legacy.ack_floor.stream_seq if legacy.ack_floor is not None else 0
        # Everything at or below the old durable's ack floor is in PostgreSQL.
        event(log, "creating the push consumer after the legacy pull consumer's ack floor",
              durable=DURABLE, legacy=LEGACY_DURABLE, start_seq=floor + 1)
        return consumer_config(start_seq=floor + 1, stream=self._name)

    async def _retire_legacy(self) -> None:
        """Delete the legacy pull durable once nothing pulls from it (seen idle twice)."""
        if self._legacy_gone:
            return
        try:
            info = await self._js.consumer_info(self._name, LEGACY_DURABLE)
        except NotFoundError:
            self._legacy_gone = True
            return
        delivered = info.delivered.consumer_seq if info.delivered is not None else 0
        # An older instance always has a pull request waiting, or gets deliveries.
        idle = not info.num_waiting
        if idle and self._legacy_mark == delivered:
            with contextlib.suppress(NotFoundError):
                await self._js.delete_consumer(self._name, LEGACY_DURABLE)
            event(log, "legacy pull consumer deleted", legacy=LEGACY_DURABLE)
            self._legacy_gone = True
        else:
            self._legacy_mark = delivered if idle else None

    async def _subscribe(self) -> None:
        if self._sub is None:
            self._sub = await self._nc.subscribe(
                deliver_subject(self._name), queue=DELIVER_GROUP, cb=self._on_msg,
                # Never reached: the server stops at MAX_ACK_PENDING unacked.
                pending_msgs_limit=4 * MAX_ACK_PENDING, pending_bytes_limit=512 * 1024 * 1024)

    async def _check_loop(self) -> None:
        """A push consumer that disappeared is silent: look for it now and then."""
        while not self._stop.is_set():
            await self._pause(CHECK_INTERVAL)
            if self._stop.is_set():
                return
            try:
                try:
                    await self._js.consumer_info(self._name, DURABLE)
                except NotFoundError as exc:
                    metrics.CONSUMER_ERRORS.inc()
                    self._trouble("nats", "consumer missing, re-creating it", exc)
                    await self._ensure()
                else:
                    await self._retire_legacy()
            except Exception as exc:  # NATS away, JetStream unavailable…
                metrics.CONSUMER_ERRORS.inc()
                self._trouble("nats", "consumer check failed", exc)
                continue
            self._recovered("nats")

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
        started = loop.time()  # when the previous batch was taken
        # The arrival rate, as decaying sums of messages taken and time between
        # batches: one short gap between two lone messages does not make a
        # quiet stream look busy, a steady rate soon does.
        taken = 0.0
        elapsed = 1.0
        busy = False  # messages arrive fast enough to linger for
        while True:
            if not self._buf:
                if self._drained:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            if self._closing and loop.time() > self._stop_deadline:
                await self._settle([msg for _, msg in self._take(len(self._buf))], _NAK)
                return
            if busy and not self._closing and len(self._buf) < self._batch:
                delay = started + self._linger - loop.time()
                if delay > 0:
                    self._full.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._full.wait(), delay)
            now = loop.time()
            batch = self._take(self._batch)
            taken = taken * _RATE_DECAY + len(batch)
            elapsed = elapsed * _RATE_DECAY + min(now - started, 1.0)
            started = now
            metrics.BATCH_SIZE.observe(len(batch))
            self.batches += 1
            if not await self._write(batch):
                # Stopping with the database away: hand everything back now.
                await self._settle([msg for _, msg in self._take(len(self._buf))], _NAK)
                return
            # Linger next time if a linger would gather several messages, and
            # messages do come while we work: not a lone sender waiting for
            # each message to be stored before it sends the next, whom a linger
            # would only slow down.
            busy = (taken * self._linger >= LINGER_MIN * elapsed
                    and (len(batch) > 1 or bool(self._buf)))

    def _take(self, n: int) -> list[tuple[int, Msg]]:
        buf = self._buf
        if len(buf) <= n:
            self._buf = {}
            return list(buf.items())
        keys = list(islice(buf, n))
        return [(seq, buf.pop(seq)) for seq in keys]

    async def _write(self, batch: list[tuple[int, Msg]]) -> bool:
        """Decode, insert, ack. False if it gave up (stopping, database away): all nak'ed."""
        rows: list[MessageRow] = []
        kept: list[Msg] = []
        for seq, msg in batch:
            try:
                rows.append(row_from_payload(subjects.room_of_subject(msg.subject), seq,
                                             msg.data))
            except BadRecord as exc:
                await self._reject(msg, seq, exc)
                continue
            kept.append(msg)
        if not await self._commit(rows, kept):
            return False
        changed = {(row.room, row.msg_id) for row in rows if row.kind != "message"}
        if changed:
            await self._erase(changed)
        return True

    async def _erase(self, changed: set[tuple[str, str]]) -> None:
        """Deleted text must be gone from storage, the stream included: erase the
        stream messages of a deleted message's original and edits (after the
        delete is committed; history keeps the event rows, without text).
        Best effort: a failure is counted and logged once, the text stays."""
        for room, msg_id in changed:
            try:
                for seq in await self._store.erasable(room, msg_id):
                    if await erase_msg(self._js, self._stream.stream_for_room(room), seq):
                        metrics.ERASED.inc()
            except Exception as exc:
                metrics.ERASE_ERRORS.inc()
                self._trouble("erase", "erasing a deleted message from the stream failed", exc)
                continue
            self._recovered("erase")

    async def _commit(self, rows: list[MessageRow], msgs: list[Msg]) -> bool:
        """Insert, then ack; never the other way round. Returns once all are settled."""
        pending = list(zip(rows, msgs, strict=True))
        one_by_one = False  # after a data error: find the row the database refuses
        delay = 0.1
        while pending:
            chunk = pending[:1] if one_by_one else pending
            started = time.perf_counter()
            try:
                inserted = await self._store.insert([row for row, _ in chunk])
            except _ROW_ERRORS as exc:
                if len(chunk) == 1:
                    row, msg = chunk[0]
                    await self._reject(msg, row.seq, BadRecord("rejected", repr(exc)[:200]))
                    pending = pending[1:]
                else:
                    one_by_one = True
                continue
            except Exception as exc:  # connection lost, server restarting, timeout…
                metrics.DB_ERRORS.inc()
                self._trouble("db", "batch insert failed", exc)
                if self._stop.is_set():
                    # Hand them back now rather than after ACK_WAIT.
                    await self._settle([msg for _, msg in pending], _NAK)
                    return False
                await self._pause(delay)
                delay = min(delay * 2, _MAX_BACKOFF)
                await self._settle([msg for _, msg in pending], _PROGRESS)
                continue
            metrics.BATCH_SECONDS.observe(time.perf_counter() - started)
            metrics.STORED.inc(inserted)
            self.stored += inserted
            await self._settle([msg for _, msg in chunk], _ACK)
            pending = pending[len(chunk):]
            self._recovered("db")
            if self.on_stored is not None:
                self.on_stored()
        return True

    async def _reject(self, msg: Msg, seq: int, exc: BadRecord) -> None:
        metrics.BAD_RECORDS.labels(exc.reason).inc()
        self.rejected += 1
        # Terminated messages are never redelivered, so this logs once per message.
        event(log, "unstorable stream message terminated", logging.WARNING,
              subject=msg.subject[:120], seq=seq, reason=exc.reason, error=str(exc))
        await self._settle([msg], _TERM)

    async def _settle(self, msgs: list[Msg], payload: bytes) -> None:
        # Publishes only (buffered by the client, written in one go by its flusher);
        # on a dead connection JetStream redelivers after ACK_WAIT and the idempotent
        # insert absorbs the repeat.
        publish = self._nc.publish
        try:
            for msg in msgs:
                await publish(msg.reply, payload)
        except Exception as exc:
            self._trouble("nats", "ack failed", exc)

    async def _pause(self, delay: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), delay)

    def _trouble(self, kind: str, what: str, exc: BaseException) -> None:
        if self._failing.get(kind) != what:
            self._failing[kind] = what
            event(log, what, logging.WARNING, error=repr(exc)[:300])

    def _recovered(self, kind: str) -> None:
        what = self._failing.pop(kind, None)
        if what is not None:
            event(log, "recovered", previous=what)
