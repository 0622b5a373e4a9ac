"""The ``history`` durable pull consumer: CHAT stream → PostgreSQL, ack after commit.

Every instance pulls from the same durable, so JetStream spreads batches over
them. Acks are explicit and per message, sent only after the batch committed:
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
- fetch failures (consumer deleted, JetStream unavailable) re-create the
  stream and consumer, then continue; NATS reconnects are the client's job.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import asyncpg
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import ConnectionClosedError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from chat_contract import subjects
from chat_kit.bus import ensure_chat_stream
from chat_kit.logs import event

from . import metrics
from .records import BadRecord, MessageRow, row_from_payload
from .store import MessageStore

log = logging.getLogger("chat_history.consumer")

DURABLE = "history"
# Time a fetched message may stay unacked before JetStream hands it to another
# instance: longer than any healthy batch, short enough to recover from a crash.
ACK_WAIT = 30.0
# Room for every instance's batch in flight at once; beyond it JetStream
# stops delivering until acks arrive.
MAX_ACK_PENDING = 20_000
# Errors that mean "this row can never be stored", not "the database is away".
_ROW_ERRORS = (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError,
               asyncpg.ProgramLimitExceededError)
_MAX_BACKOFF = 5.0


def consumer_config() -> ConsumerConfig:
    return ConsumerConfig(
        name=DURABLE,
        durable_name=DURABLE,
        description="history-service: stores every chat event in PostgreSQL",
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=ACK_WAIT,
        max_ack_pending=MAX_ACK_PENDING,
    )


class HistoryConsumer:
    def __init__(self, nc: NATS, store: MessageStore, *, batch: int, fetch_wait: float,
                 replicas: int = 1) -> None:
        self._nc = nc
        self._js: JetStreamContext = nc.jetstream()
        self._store = store
        self._batch = batch
        self._fetch_wait = fetch_wait
        self._replicas = replicas
        self._sub: JetStreamContext.PullSubscription | None = None
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._healthy = False
        self._failing: str | None = None  # what is failing now: logged once per outage
        # Rows this instance inserted and payloads it terminated (tests, operators).
        self.stored = 0
        self.rejected = 0

    async def start(self, stopping: asyncio.Event | None = None) -> None:
        """Set up stream and consumer (retrying until they exist), then pull in a task."""
        delay = 0.1
        while True:
            try:
                await self._ensure()
                await self._bind()
                break
            except Exception as exc:
                if stopping is not None and stopping.is_set():
                    raise
                self._trouble("consumer setup failed", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, _MAX_BACKOFF)
        self._task = asyncio.create_task(self._run(), name="history-consumer")

    async def stop(self) -> None:
        """Finish the batch in hand (commit and ack it), then stop pulling."""
        self._stop.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None
        # Acks are fire-and-forget publishes: make sure they left before NATS drains.
        with contextlib.suppress(Exception):
            await self._nc.flush(timeout=2)

    def is_ready(self) -> bool:
        return self._task is not None and not self._task.done() and self._healthy

    # --- the loop -------------------------------------------------------------------

    async def _ensure(self) -> None:
        await ensure_chat_stream(self._js, self._replicas)
        # Create or update: a changed config (e.g. max_ack_pending) applies on restart.
        await self._js.add_consumer(subjects.CHAT_STREAM, consumer_config())

    async def _bind(self) -> JetStreamContext.PullSubscription:
        if self._sub is None:
            self._sub = await self._js.pull_subscribe_bind(durable=DURABLE,
                                                           stream=subjects.CHAT_STREAM)
        return self._sub

    async def _run(self) -> None:
        delay = 0.1
        ensure = False
        while not self._stop.is_set():
            try:
                if ensure:
                    await self._ensure()
                    ensure = False
                sub = await self._bind()
                msgs = await sub.fetch(self._batch, timeout=self._fetch_wait)
            except TimeoutError:
                # Idle stream, or NATS reconnecting. nats-py raises its own
                # TimeoutError or asyncio's depending on where the pull expired;
                # both are the builtin's subclasses.
                if self._nc.is_connected and not ensure:
                    self._recovered()
                continue
            except ConnectionClosedError:
                break  # the connection was closed under us: the process is stopping
            except Exception as exc:  # consumer deleted, JetStream unavailable…
                metrics.CONSUMER_ERRORS.inc()
                self._trouble("consumer fetch failed", exc)
                # Re-create stream and consumer but keep the subscription: a message
                # already in its inbox is taken by the next fetch, whereas a new inbox
                # would strand it (and the ack floor, so fresh reads) until ACK_WAIT.
                # The client itself re-subscribes the inbox after a reconnect.
                ensure = True
                await self._pause(delay)
                delay = min(delay * 2, _MAX_BACKOFF)
                continue
            delay = 0.1
            self._recovered()
            metrics.BATCH_SIZE.observe(len(msgs))
            await self._handle(msgs)

    async def _handle(self, msgs: list[Msg]) -> None:
        rows: list[MessageRow] = []
        kept: list[Msg] = []
        for msg in msgs:
            try:
                seq = msg.metadata.sequence.stream
            except Exception as exc:  # not a JetStream reply subject: cannot happen on a pull
                await self._reject(msg, BadRecord("metadata", repr(exc)[:200]))
                continue
            try:
                rows.append(row_from_payload(subjects.room_of_subject(msg.subject), seq, msg.data))
            except BadRecord as exc:
                await self._reject(msg, exc)
                continue
            kept.append(msg)
        await self._commit(rows, kept)

    async def _commit(self, rows: list[MessageRow], msgs: list[Msg]) -> None:
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
                    await self._reject(chunk[0][1], BadRecord("rejected", repr(exc)[:200]))
                    pending = pending[1:]
                else:
                    one_by_one = True
                continue
            except Exception as exc:  # connection lost, server restarting, timeout…
                metrics.DB_ERRORS.inc()
                self._trouble("batch insert failed", exc)
                if self._stop.is_set():
                    # Hand them back now rather than after ACK_WAIT.
                    await self._settle([msg for _, msg in pending], "nak")
                    return
                await self._pause(delay)
                delay = min(delay * 2, _MAX_BACKOFF)
                await self._settle([msg for _, msg in pending], "in_progress")
                continue
            metrics.BATCH_SECONDS.observe(time.perf_counter() - started)
            metrics.STORED.inc(inserted)
            self.stored += inserted
            await self._settle([msg for _, msg in chunk], "ack")
            pending = pending[len(chunk):]
            self._recovered()

    async def _reject(self, msg: Msg, exc: BadRecord) -> None:
        metrics.BAD_RECORDS.labels(exc.reason).inc()
        self.rejected += 1
        seq = None
        with contextlib.suppress(Exception):
            seq = msg.metadata.sequence.stream
        # Terminated messages are never redelivered, so this logs once per message.
        event(log, "unstorable stream message terminated", logging.WARNING,
              subject=msg.subject[:120], seq=seq, reason=exc.reason, error=str(exc))
        with contextlib.suppress(Exception):
            await msg.term()

    async def _settle(self, msgs: list[Msg], how: str) -> None:
        # Publishes only (buffered by the client); on a dead connection JetStream
        # redelivers after ACK_WAIT and the idempotent insert absorbs the repeat.
        for msg in msgs:
            try:
                await getattr(msg, how)()
            except Exception as exc:
                self._trouble(f"{how} failed", exc)
                return

    async def _pause(self, delay: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), delay)

    def _trouble(self, what: str, exc: BaseException) -> None:
        self._healthy = False
        if self._failing != what:
            self._failing = what
            event(log, what, logging.WARNING, error=repr(exc)[:300])

    def _recovered(self) -> None:
        self._healthy = True
        if self._failing is not None:
            event(log, "recovered", previous=self._failing)
            self._failing = None
