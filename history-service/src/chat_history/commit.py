"""A batch of deliveries into PostgreSQL, then its acks: never the other way round.

Acks are explicit and per message, with nats-py's message API (``msg.ack()``,
``nak()``, ``in_progress()``, ``term()``), sent only after the batch
committed: AckAll would be unsafe with several instances, since one
instance's ack would also cover lower sequences another instance holds
uncommitted. Acks are publishes the client buffers and writes together, not
waited for one by one. Unacked messages come back after ``ACK_WAIT`` (a
crash) or at once (``nak``), and the insert is idempotent, so nothing is lost
and nothing doubles.

Failures, none of them logged per message:

- a payload that can never become a row is logged once, counted and
  terminated (``term``), so it never blocks the stream or the ack floor;
- a batch the database rejects for its data is retried row by row, so only
  the offending row is terminated;
- any other database error keeps the batch unacked and retries it with
  backoff (``in_progress`` keeps JetStream from redelivering it meanwhile),
  or hands it back (``nak``) when the service is stopping.

A commit with edits or deletes wakes the stream eraser (:mod:`.erasure`),
which erases deleted text from the stream in a task of its own (the store
queued the erasure in the same transaction).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable

import asyncpg
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from chat_contract import subjects
from chat_kit.logs import event
from chat_kit.stream import StreamSettings

from . import metrics
from .records import BadRecord, MessageRow, row_from_payload
from .store import MessageStore
from .troubles import Troubles

log = logging.getLogger("chat_history.consumer")

# Errors that mean "this row can never be stored", not "the database is away".
_ROW_ERRORS = (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError,
               asyncpg.ProgramLimitExceededError)
MAX_BACKOFF = 5.0

Delivery = tuple[int, Msg]  # (stream sequence, the delivered message)
Settle = Callable[[Msg], Awaitable[None]]


class Committer:
    def __init__(self, store: MessageStore, js: JetStreamContext, layout: StreamSettings,
                 troubles: Troubles, stopping: asyncio.Event) -> None:
        self._store = store
        self._js = js
        self._layout = layout
        self._troubles = troubles
        self._stopping = stopping  # set: give up retrying, hand batches back
        # Rows this instance inserted, payloads it terminated (tests, operators).
        self.stored = 0
        self.rejected = 0
        # Called after a batch is acked (the read side polls the ack floor then).
        self.on_stored: Callable[[], None] | None = None
        # Called after a batch with edits or deletes committed (the eraser's wake).
        self.on_changed: Callable[[], None] | None = None

    async def write(self, batch: list[Delivery]) -> bool:
        """Decode, insert, ack, wake the eraser. False if it gave up (stopping with the
        database away): then every message of the batch was handed back."""
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
        if self.on_changed is not None and any(row.kind != "message" for row in rows):
            self.on_changed()
        return True

    async def hand_back(self, msgs: Iterable[Msg]) -> None:
        """Redeliver these at once (to us or another instance) rather than after ACK_WAIT."""
        await self._settle(msgs, Msg.nak)

    async def _commit(self, rows: list[MessageRow], msgs: list[Msg]) -> bool:
        """Insert, then ack. Returns once all are settled."""
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
                self._troubles.failing("db", "batch insert failed", exc)
                if self._stopping.is_set():
                    await self.hand_back(msg for _, msg in pending)
                    return False
                await self._pause(delay)
                delay = min(delay * 2, MAX_BACKOFF)
                await self._settle((msg for _, msg in pending), Msg.in_progress)
                continue
            metrics.BATCH_SECONDS.observe(time.perf_counter() - started)
            metrics.STORED.inc(inserted)
            self.stored += inserted
            await self._settle((msg for _, msg in chunk), Msg.ack)
            pending = pending[len(chunk):]
            self._troubles.recovered("db")
            if self.on_stored is not None:
                self.on_stored()
        return True

    async def _reject(self, msg: Msg, seq: int, exc: BadRecord) -> None:
        metrics.BAD_RECORDS.labels(exc.reason).inc()
        self.rejected += 1
        # Terminated messages are never redelivered, so this logs once per message.
        event(log, "unstorable stream message terminated", logging.WARNING,
              subject=msg.subject[:120], seq=seq, reason=exc.reason, error=str(exc))
        await self._settle((msg,), Msg.term)

    async def _settle(self, msgs: Iterable[Msg], how: Settle) -> None:
        # Publishes only (buffered by the client, written in one go by its flusher);
        # on a dead connection JetStream redelivers after ACK_WAIT and the idempotent
        # insert absorbs the repeat.
        try:
            for msg in msgs:
                await how(msg)
        except Exception as exc:
            self._troubles.failing("nats", "ack failed", exc)

    async def _pause(self, delay: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), delay)
