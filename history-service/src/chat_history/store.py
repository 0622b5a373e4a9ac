"""``history.messages`` in PostgreSQL: idempotent batch inserts and pages by seq.

Inserts are one ``INSERT … SELECT FROM json_to_recordset($1) ON CONFLICT DO
NOTHING``: one statement (so one implicit transaction) and one round trip per
batch, with no temp table to manage per connection. The batch travels as one
JSON array (msgspec encodes the rows in C; PostgreSQL parses it in C), which
costs this process a fraction of what eight typed arrays cost asyncpg to
encode element by element. ``ON CONFLICT`` without a target covers both keys:
a redelivered (room, seq) and a msg_id already stored under another seq are
skipped rather than failing the batch forever.

Inserts keep their connections (up to :data:`KEPT_WRITERS`, the consumer's
writers) instead of handing them back to the pool after every batch: a
release runs asyncpg's reset (``RESET ALL``, ``UNLISTEN *``, … : one more
round trip and statement per batch), and the insert leaves no session state
to reset. A connection that saw any error goes back to the pool (reset, or
dropped if broken); :meth:`MessageStore.close` returns the kept ones.
asyncpg prepares ``_INSERT`` once per connection (its statement cache).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from datetime import datetime

import asyncpg
import msgspec

from chat_contract.events import RoomEvent

from .extras_store import DROP_REACTIONS, apply_reactions, page_row
from .records import MessageRow, assemble_page

# Connections inserts keep between batches (the consumer's WRITERS).
KEPT_WRITERS = 2

# Bounds for "no bound": every seq is > -1 and < 2**63 - 1 (bigint).
_NO_AFTER = -1
_NO_BEFORE = 2**63 - 1

_COLUMNS = ("room, seq, msg_id, sender_id, sender_name, text, reply_to, ts, kind, thread,"
            " mentions, attachments")

# ts arrives as RFC 3339 with its offset (MessageRow.ts is aware), so the
# session time zone plays no part.
_INSERT = f"""
INSERT INTO history.messages ({_COLUMNS})
SELECT {_COLUMNS} FROM json_to_recordset($1::json) AS r(
    room text, seq bigint, msg_id text, sender_id text, sender_name text,
    text text, reply_to text, ts timestamptz, kind text, thread text, mentions text[],
    attachments jsonb)
ON CONFLICT DO NOTHING
"""
_encode_rows = msgspec.json.Encoder().encode

# Applied in seq order after the batch's rows are in. rev_seq makes a replay
# (or an older change committed late by another instance) a no-op; a delete
# is final, so nothing edits a deleted message back to life.
_EDIT = """
UPDATE history.messages SET text = $3, edited = true, rev_seq = $4
WHERE kind = 'message' AND msg_id = $1 AND room = $2 AND NOT deleted AND rev_seq < $4
"""
_DELETE = """
UPDATE history.messages SET text = NULL, deleted = true, rev_seq = $3
WHERE kind = 'message' AND msg_id = $1 AND room = $2 AND NOT deleted
"""

# Every event row, shown with its message's latest state: a message row is
# its own state; a change row looks up its message's row (by the partial
# unique index on msg_id); a reaction row is its own (its emoji as text).
# The page is cut first (LIMIT inside), so the lookups cost one index probe
# per change row on the page, whatever the room's size. Senders in $5 are
# left out (the reader's blocked users: their messages and their reactions).
_ITEM = """
SELECT e.room, e.seq, e.msg_id, e.sender_id, e.sender_name,
       CASE WHEN e.kind IN ('edit', 'delete') THEN m.text ELSE e.text END AS text,
       coalesce(m.reply_to, e.reply_to) AS reply_to, e.ts,
       CASE WHEN e.kind = 'message' THEN e.edited ELSE coalesce(m.edited, false) END AS edited,
       CASE WHEN e.kind = 'message' THEN e.deleted
            ELSE coalesce(m.deleted, e.kind = 'delete') END AS deleted,
       e.kind, coalesce(m.thread, e.thread) AS thread,
       CASE WHEN e.kind = 'message' THEN e.mentions ELSE m.mentions END AS mentions,
       (CASE WHEN e.kind = 'message' THEN e.attachments
             ELSE m.attachments END)::text AS attachments
FROM ({events}) e
LEFT JOIN LATERAL (
    SELECT text, reply_to, edited, deleted, thread, mentions, attachments FROM history.messages
    WHERE kind = 'message' AND msg_id = e.msg_id AND room = e.room
) m ON e.kind IN ('edit', 'delete')
"""
_EVENT_COLUMNS = ("room, seq, msg_id, sender_id, sender_name, text, reply_to, ts, kind,"
                  " edited, deleted, thread, mentions, attachments")

# Newest page or `before` alone: the limit+1 highest seqs below the bound.
_PAGE_DESC = _ITEM.format(events=f"""
    SELECT {_EVENT_COLUMNS} FROM history.messages
    WHERE room = $1 AND seq < $2 AND sender_id <> ALL($4::text[])
    ORDER BY seq DESC LIMIT $3""") + "ORDER BY e.seq DESC"

# `after` (with or without `before`): the predecessor's seq (highest <= after,
# for the first item's prev_seq) and the limit+1 lowest seqs in the window.
# Both are backward/forward scans of the primary key.
_PAGE_ASC = _ITEM.format(events=f"""
    (SELECT {_EVENT_COLUMNS} FROM history.messages
     WHERE room = $1 AND seq <= $2 AND sender_id <> ALL($5::text[])
     ORDER BY seq DESC LIMIT 1)
    UNION ALL
    (SELECT {_EVENT_COLUMNS} FROM history.messages
     WHERE room = $1 AND seq > $2 AND seq < $3 AND sender_id <> ALL($5::text[])
     ORDER BY seq LIMIT $4)""")


# Stream sequences still holding a deleted message's words: its original and
# its edits (an edit may even arrive after the delete). Empty unless deleted.
_ERASABLE = """
WITH gone AS (
    SELECT EXISTS (SELECT 1 FROM history.messages WHERE kind = 'message' AND msg_id = $2
                   AND room = $1 AND deleted)
        OR EXISTS (SELECT 1 FROM history.messages WHERE kind <> 'message' AND kind = 'delete'
                   AND room = $1 AND msg_id = $2) AS yes
)
SELECT seq FROM history.messages
WHERE kind = 'message' AND msg_id = $2 AND room = $1 AND (SELECT yes FROM gone)
UNION ALL
SELECT seq FROM history.messages
WHERE kind <> 'message' AND kind = 'edit' AND room = $1 AND msg_id = $2
  AND (SELECT yes FROM gone)
"""

# The erasure queue (history.erasures, erasure.py): every change queues its
# message in the transaction that stores it; a re-queue of a pending one
# renews its stamp, so an erasure finished meanwhile does not drop it.
_QUEUE_ERASURES = """
INSERT INTO history.erasures (room, msg_id)
SELECT * FROM unnest($1::text[], $2::text[])
ON CONFLICT (room, msg_id) DO UPDATE SET queued_at = clock_timestamp()
"""


_row = page_row


def _stored_form(row: MessageRow) -> MessageRow:
    """The row as inserted: an edit keeps no text (it lives in the message's row)."""
    return row if row.kind != "edit" or row.text is None else msgspec.structs.replace(
        row, text=None)


class MessageStore:
    def __init__(self, pool: asyncpg.Pool, timeout: float = 10.0) -> None:
        self._pool = pool
        # Bounds a hung server (network partition) so the caller can retry.
        self._timeout = timeout
        self._kept: list[asyncpg.Connection] = []  # idle insert connections
        self._closed = False

    @contextlib.asynccontextmanager
    async def _writer(self) -> AsyncIterator[asyncpg.Connection]:
        """A connection for one insert: a kept one, else one from the pool."""
        conn = self._kept.pop() if self._kept else await self._pool.acquire(
            timeout=self._timeout)
        try:
            yield conn
        except BaseException:
            await self._pool.release(conn)
            raise
        if self._closed or len(self._kept) >= KEPT_WRITERS or conn.is_closed():
            await self._pool.release(conn)
        else:
            self._kept.append(conn)

    async def close(self) -> None:
        """Hand the kept insert connections back to the pool (before it closes)."""
        self._closed = True
        kept, self._kept = self._kept, []
        for conn in kept:
            with contextlib.suppress(Exception):
                await self._pool.release(conn)

    async def insert(self, rows: Sequence[MessageRow]) -> int:
        """Store ``rows`` atomically and apply their edits and deletes; return how
        many rows were new (duplicates are skipped)."""
        if not rows:
            return 0
        changes = sorted((r for r in rows if r.kind == "edit" or r.kind == "delete"),
                         key=lambda r: r.seq)
        reacts = not changes and any(r.kind != "message" for r in rows)
        batch = _encode_rows([_stored_form(r) for r in rows] if changes else rows).decode()
        async with self._writer() as conn:
            if not changes and not reacts:  # the common case: one statement, its own transaction
                status: str = await conn.execute(_INSERT, batch, timeout=self._timeout)
            elif not changes:  # reactions, no edit or delete: no erasure to queue
                async with conn.transaction():
                    status = await conn.execute(_INSERT, batch, timeout=self._timeout)
                    await apply_reactions(conn, rows, self._timeout)
            else:
                async with conn.transaction():
                    status = await conn.execute(_INSERT, batch, timeout=self._timeout)
                    # Once per message (an edit and its delete may share a batch).
                    queued = list(dict.fromkeys((c.room, c.msg_id) for c in changes))
                    await conn.execute(_QUEUE_ERASURES, [room for room, _ in queued],
                                       [msg_id for _, msg_id in queued], timeout=self._timeout)
                    for change in changes:
                        if change.kind == "edit":
                            await conn.execute(_EDIT, change.msg_id, change.room, change.text,
                                               change.seq, timeout=self._timeout)
                        else:
                            await conn.execute(_DELETE, change.msg_id, change.room, change.seq,
                                               timeout=self._timeout)
                            await conn.execute(DROP_REACTIONS, change.msg_id, change.room,
                                               timeout=self._timeout)
                    # After the deletes: a reaction to a message deleted is not kept.
                    await apply_reactions(conn, rows, self._timeout)
        # Status is "INSERT 0 <rows inserted>".
        return int(status.rsplit(" ", 1)[-1])

    async def page(
        self, room: str, *, before: int | None, after: int | None, limit: int,
        exclude: Sequence[str] = (),
    ) -> tuple[list[RoomEvent], bool]:
        """One history page, ascending by seq, and whether more lie beyond it.

        - neither bound: the newest ``limit``; ``has_more`` = older ones exist;
        - ``before`` only: the ``limit`` highest seqs < before; ``has_more`` = older exist;
        - ``after`` (± ``before``): the ``limit`` lowest seqs > after (and < before);
          ``has_more`` = more exist in that window above the page.

        Senders in ``exclude`` (the reader's blocked users) are left out, and
        ``prev_seq`` links what remains, so the reader's chain stays unbroken.
        """
        upper = _NO_BEFORE if before is None else before
        hidden = list(exclude)
        async with self._pool.acquire(timeout=self._timeout) as conn:
            if after is None:
                records = await conn.fetch(_PAGE_DESC, room, upper, limit + 1, hidden,
                                           timeout=self._timeout)
                return assemble_page([_row(r) for r in records], limit=limit,
                                     descending=True, floor_seq=0)
            records = await conn.fetch(_PAGE_ASC, room, after, upper, limit + 1, hidden,
                                       timeout=self._timeout)
        # UNION ALL keeps no order by contract; at most limit + 2 rows to sort.
        rows = sorted((_row(r) for r in records), key=lambda r: r.seq)
        floor_seq = 0
        if rows and rows[0].seq <= after:
            floor_seq = rows.pop(0).seq
        return assemble_page(rows, limit=limit, descending=False, floor_seq=floor_seq)

    async def erasable(self, room: str, msg_id: str) -> list[int]:
        """Stream seqs of a deleted message's original and edits (see :data:`_ERASABLE`)."""
        async with self._pool.acquire(timeout=self._timeout) as conn:
            records = await conn.fetch(_ERASABLE, room, msg_id, timeout=self._timeout)
        return [int(r["seq"]) for r in records]

    async def pending_erasures(self, limit: int) -> list[tuple[str, str, datetime]]:
        """The oldest queued erasures: (room, msg_id, queued_at)."""
        async with self._pool.acquire(timeout=self._timeout) as conn:
            records = await conn.fetch(
                "SELECT room, msg_id, queued_at FROM history.erasures"
                " ORDER BY queued_at LIMIT $1", limit, timeout=self._timeout)
        return [(r["room"], r["msg_id"], r["queued_at"]) for r in records]

    async def erasure_done(self, room: str, msg_id: str, queued_at: datetime) -> None:
        """Dequeue, unless re-queued since ``queued_at`` (a later change)."""
        async with self._pool.acquire(timeout=self._timeout) as conn:
            await conn.execute(
                "DELETE FROM history.erasures WHERE room = $1 AND msg_id = $2"
                " AND queued_at <= $3", room, msg_id, queued_at, timeout=self._timeout)

    async def erasures_pending(self) -> int:
        async with self._pool.acquire(timeout=self._timeout) as conn:
            value = await conn.fetchval("SELECT count(*) FROM history.erasures",
                                        timeout=self._timeout)
        return int(value)

    async def count(self, room: str | None = None) -> int:
        """Rows stored (in ``room``): for tests and operators."""
        async with self._pool.acquire(timeout=self._timeout) as conn:
            if room is None:
                value = await conn.fetchval("SELECT count(*) FROM history.messages")
            else:
                value = await conn.fetchval(
                    "SELECT count(*) FROM history.messages WHERE room = $1", room)
        return int(value)
