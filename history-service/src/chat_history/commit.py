"""A batch of deliveries into PostgreSQL, then its acks: never the other way round.

Acks are explicit, one per message, sent only after the batch committed:
AckAll would be unsafe with several instances, since one instance's ack
would also cover lower sequences another instance holds uncommitted (README
"Consistency choices"). A batch's acks (or naks, progress, terms) leave
together: :class:`.acks.Acks` writes one PUB per message into the client's
buffer in one go and flushes once. Unacked messages come back after
``ACK_WAIT`` (a crash) or at once (``nak``), and the insert is idempotent,
so nothing is lost and nothing doubles.

A batch is first prepared (:meth:`Committer.prepare`: decoded, bad payloads
terminated), then committed (:meth:`Committer.commit`); the consumer
prepares the next batch while the previous one is being inserted, and may
have two inserts in flight (consumer.py: a batch with edits or deletes waits
for the ones before it).

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
from collections.abc import Callable
from dataclasses import dataclass, field

import asyncpg
from nats.aio.msg import Msg

from chat_contract import subjects
from chat_kit.logs import event

from . import metrics
from .acks import ACK, IN_PROGRESS, NAK, TERM, Acks
from .records import BadRecord, MessageRow, row_from_payload
from .store import MessageStore
from .troubles import Troubles

log = logging.getLogger("chat_history.consumer")

# Errors that mean "this row can never be stored", not "the database is away".
_ROW_ERRORS = (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError,
               asyncpg.ProgramLimitExceededError)
MAX_BACKOFF = 5.0

Delivery = tuple[int, Msg]  # (stream sequence, the delivered message)


@dataclass
class Prepared:
    """A batch decoded: its rows and their messages' reply subjects, in order."""

    rows: list[MessageRow] = field(default_factory=list)
    replies: list[str] = field(default_factory=list)
    changes: bool = False  # edits or deletes among the rows


class Committer:
    def __init__(self, store: MessageStore, acks: Acks, troubles: Troubles,
                 stopping: asyncio.Event) -> None:
        self._store = store
        self._acks = acks
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
        """Prepare and commit ``batch``; see :meth:`commit`."""
        return await self.commit(await self.prepare(batch))

    async def prepare(self, batch: list[Delivery]) -> Prepared:
        """Decode the batch; terminate what can never be stored."""
        prepared = Prepared()
        rows, replies = prepared.rows, prepared.replies
        room_of = subjects.room_of_subject
        for seq, msg in batch:
            try:
                row = row_from_payload(room_of(msg.subject), seq, msg.data)
            except BadRecord as exc:
                await self._reject(msg.reply, seq, exc, subject=msg.subject[:120])
                continue
            rows.append(row)
            replies.append(msg.reply)
        prepared.changes = any(row.kind != "message" for row in rows)
        return prepared

    async def commit(self, prepared: Prepared) -> bool:
        """Insert, ack, wake the eraser. False if it gave up (stopping with the
        database away): then every message of the batch was handed back."""
        if not await self._commit(prepared.rows, prepared.replies):
            return False
        if prepared.changes and self.on_changed is not None:
            self.on_changed()
        return True

    async def hand_back(self, replies: list[str]) -> None:
        """Redeliver these (by reply subject) at once, to us or another instance,
        rather than after ACK_WAIT."""
        await self._settle(replies, NAK)

    async def _commit(self, rows: list[MessageRow], replies: list[str]) -> bool:
        """Insert, then ack. Returns once all are settled."""
        one_by_one = False  # after a data error: find the row the database refuses
        delay = 0.1
        while rows:
            n = 1 if one_by_one else len(rows)
            chunk = rows[:n] if one_by_one else rows
            started = time.perf_counter()
            try:
                inserted = await self._store.insert(chunk)
            except _ROW_ERRORS as exc:
                if n == 1:
                    await self._reject(replies[0], rows[0].seq,
                                       BadRecord("rejected", repr(exc)[:200]), room=rows[0].room)
                    rows, replies = rows[1:], replies[1:]
                else:
                    one_by_one = True
                continue
            except Exception as exc:  # connection lost, server restarting, timeout…
                metrics.DB_ERRORS.inc()
                self._troubles.failing("db", "batch insert failed", exc)
                if self._stopping.is_set():
                    await self._settle(replies, NAK)
                    return False
                await self._pause(delay)
                delay = min(delay * 2, MAX_BACKOFF)
                await self._settle(replies, IN_PROGRESS)
                continue
            metrics.BATCH_SECONDS.observe(time.perf_counter() - started)
            metrics.STORED.inc(inserted)
            self.stored += inserted
            await self._settle(replies[:n], ACK)
            rows, replies = rows[n:], replies[n:]
            self._troubles.recovered("db")
            if self.on_stored is not None:
                self.on_stored()
        return True

    async def _reject(self, reply: str, seq: int, exc: BadRecord, **where: str) -> None:
        metrics.BAD_RECORDS.labels(exc.reason).inc()
        self.rejected += 1
        # Terminated messages are never redelivered, so this logs once per message.
        event(log, "unstorable stream message terminated", logging.WARNING,
              seq=seq, reason=exc.reason, error=str(exc), **where)
        await self._settle([reply], TERM)

    async def _settle(self, replies: list[str], payload: bytes) -> None:
        # Publishes only (buffered by the client, written in one go by its flusher);
        # on a dead connection JetStream redelivers after ACK_WAIT and the idempotent
        # insert absorbs the repeat.
        try:
            await self._acks.send(replies, payload)
        except Exception as exc:
            self._troubles.failing("nats", "ack failed", exc)

    async def _pause(self, delay: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), delay)
