"""``history.messages`` in PostgreSQL: idempotent batch inserts and pages by seq.

Inserts are one ``INSERT … SELECT FROM json_to_recordset($1) ON CONFLICT DO
NOTHING``: one statement (so one implicit transaction) and one round trip per
batch, with no temp table to manage per connection. The batch travels as one
JSON array (msgspec encodes the rows in C; PostgreSQL parses it in C), which
costs this process a fraction of what eight typed arrays cost asyncpg to
encode element by element. ``ON CONFLICT`` without a target covers both keys:
a redelivered (room, seq) and a msg_id already stored under another seq are
skipped rather than failing the batch forever.
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg
import msgspec

from chat_contract.events import Message

from .records import MessageRow, assemble_page

# Bounds for "no bound": every seq is > -1 and < 2**63 - 1 (bigint).
_NO_AFTER = -1
_NO_BEFORE = 2**63 - 1

_COLUMNS = "room, seq, msg_id, sender_id, sender_name, text, reply_to, ts"

# ts arrives as RFC 3339 with its offset (MessageRow.ts is aware), so the
# session time zone plays no part.
_INSERT = f"""
INSERT INTO history.messages ({_COLUMNS})
SELECT {_COLUMNS} FROM json_to_recordset($1::json) AS r(
    room text, seq bigint, msg_id text, sender_id text, sender_name text,
    text text, reply_to text, ts timestamptz)
ON CONFLICT DO NOTHING
"""
_encode_rows = msgspec.json.Encoder().encode

# Newest page or `before` alone: the limit+1 highest seqs below the bound.
_PAGE_DESC = f"""
SELECT {_COLUMNS} FROM history.messages
WHERE room = $1 AND seq < $2
ORDER BY seq DESC
LIMIT $3
"""

# `after` (with or without `before`): the predecessor row (highest seq <= after,
# for the first item's prev_seq) followed by the limit+1 lowest seqs in the window.
# Both halves are backward/forward scans of the primary key.
_PAGE_ASC = f"""
(SELECT {_COLUMNS} FROM history.messages
 WHERE room = $1 AND seq <= $2 ORDER BY seq DESC LIMIT 1)
UNION ALL
(SELECT {_COLUMNS} FROM history.messages
 WHERE room = $1 AND seq > $2 AND seq < $3 ORDER BY seq LIMIT $4)
"""


def _row(record: asyncpg.Record) -> MessageRow:
    return MessageRow(
        room=record["room"],
        seq=record["seq"],
        msg_id=record["msg_id"],
        sender_id=record["sender_id"],
        sender_name=record["sender_name"],
        text=record["text"],
        reply_to=record["reply_to"],
        ts=record["ts"],
    )


class MessageStore:
    def __init__(self, pool: asyncpg.Pool, timeout: float = 10.0) -> None:
        self._pool = pool
        # Bounds a hung server (network partition) so the caller can retry.
        self._timeout = timeout

    async def insert(self, rows: Sequence[MessageRow]) -> int:
        """Store ``rows`` atomically; return how many were new (duplicates are skipped)."""
        if not rows:
            return 0
        batch = _encode_rows(rows).decode()
        async with self._pool.acquire(timeout=self._timeout) as conn:
            status: str = await conn.execute(_INSERT, batch, timeout=self._timeout)
        # Status is "INSERT 0 <rows inserted>".
        return int(status.rsplit(" ", 1)[-1])

    async def page(
        self, room: str, *, before: int | None, after: int | None, limit: int
    ) -> tuple[list[Message], bool]:
        """One history page, ascending by seq, and whether more lie beyond it.

        - neither bound: the newest ``limit``; ``has_more`` = older ones exist;
        - ``before`` only: the ``limit`` highest seqs < before; ``has_more`` = older exist;
        - ``after`` (± ``before``): the ``limit`` lowest seqs > after (and < before);
          ``has_more`` = more exist in that window above the page.
        """
        upper = _NO_BEFORE if before is None else before
        async with self._pool.acquire(timeout=self._timeout) as conn:
            if after is None:
                records = await conn.fetch(_PAGE_DESC, room, upper, limit + 1,
                                           timeout=self._timeout)
                return assemble_page([_row(r) for r in records], limit=limit,
                                     descending=True, floor_seq=0)
            records = await conn.fetch(_PAGE_ASC, room, after, upper, limit + 1,
                                       timeout=self._timeout)
        # UNION ALL keeps no order by contract; at most limit + 2 rows to sort.
        rows = sorted((_row(r) for r in records), key=lambda r: r.seq)
        floor_seq = 0
        if rows and rows[0].seq <= after:
            floor_seq = rows.pop(0).seq
        return assemble_page(rows, limit=limit, descending=False, floor_seq=floor_seq)

    async def count(self, room: str | None = None) -> int:
        """Rows stored (in ``room``): for tests and operators."""
        async with self._pool.acquire(timeout=self._timeout) as conn:
            if room is None:
                value = await conn.fetchval("SELECT count(*) FROM history.messages")
            else:
                value = await conn.fetchval(
                    "SELECT count(*) FROM history.messages WHERE room = $1", room)
        return int(value)
