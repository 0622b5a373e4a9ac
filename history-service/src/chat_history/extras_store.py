"""Reactions, threads and mentions in PostgreSQL (migration 0006): the queries
beside the event log that :mod:`.store` keeps.

- **Reactions.** Each ``react``/``unreact`` event is a row of
  ``history.messages`` (the chain); :func:`apply_reactions` folds the batch's
  into ``history.reactions``, one row per (room, message, user, emoji), in
  the transaction that stores them. A row's ``seq`` is the event that set
  it, so an older event replayed late changes nothing (like ``rev_seq``).
  A deleted message's reactions are dropped with it (:data:`DROP_REACTIONS`).
- **History items** get ``reactions`` (``[{emoji,count,me}]`` as the reader
  sees them: blocked users' left out, in the order each emoji first came)
  and a root's ``thread_info`` (``{count,last_seq}`` of its replies) in one
  extra query per page (:meth:`ExtrasStore.decorate`).
- **Threads.** A thread page lists a root's replies (kind ``message`` rows
  whose ``thread`` is the root) by seq, ``prev_seq`` linking the replies.
- **Grants.** Whether a reaction changes anything and the distinct emoji
  count (``svc.rooms.react``); a thread root and the members named by
  ``@name`` (``svc.rooms.resolve``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg
import msgspec

from chat_contract.events import Message, ReactionCount, RoomEvent, ThreadInfo

from .records import MessageRow, PageRow, assemble_page, decode_attachments

_NO_BEFORE = 2**63 - 1

# One statement per batch with reactions: each (room, msg_id, user, emoji) at
# most once per batch (the newest event wins, the rows come sorted by seq),
# and only over a state set by an older event. A reaction to a deleted
# message is not kept.
APPLY_REACTIONS = """
INSERT INTO history.reactions AS r (room, msg_id, user_id, emoji, active, seq)
SELECT DISTINCT ON (b.room, b.msg_id, b.user_id, b.emoji)
       b.room, b.msg_id, b.user_id, b.emoji, b.active, b.seq
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bool[], $6::bigint[])
     AS b(room, msg_id, user_id, emoji, active, seq)
WHERE NOT EXISTS (SELECT 1 FROM history.messages m WHERE m.kind = 'message'
                  AND m.msg_id = b.msg_id AND m.room = b.room AND m.deleted)
ORDER BY b.room, b.msg_id, b.user_id, b.emoji, b.seq DESC
ON CONFLICT (room, msg_id, user_id, emoji) DO UPDATE
    SET active = excluded.active, seq = excluded.seq
    WHERE r.seq < excluded.seq
"""

# A delete takes the message's reactions with it ($1 msg_id, $2 room).
DROP_REACTIONS = "DELETE FROM history.reactions WHERE room = $2 AND msg_id = $1"

# The page's reactions and thread counts in one round trip: 'r' rows per
# (message, emoji), 't' rows per root. $3 the reader (for `me`, '' for none),
# $4 the reader's blocked users.
_EXTRAS = """
SELECT 'r' AS k, x.msg_id AS id, x.emoji, count(*)::bigint AS n,
       bool_or(x.user_id = $3) AS me, min(x.seq) AS s
FROM history.reactions x
WHERE x.room = $1 AND x.msg_id = ANY($2::text[]) AND x.active AND x.user_id <> ALL($4::text[])
GROUP BY x.msg_id, x.emoji
UNION ALL
SELECT 't', t.thread, NULL, count(*)::bigint, false, max(t.seq)
FROM history.messages t
WHERE t.room = $1 AND t.thread = ANY($2::text[]) AND t.kind = 'message' AND NOT t.deleted
  AND t.sender_id <> ALL($4::text[])
GROUP BY t.thread
"""

_THREAD_COLUMNS = ("room, seq, msg_id, sender_id, sender_name, text, reply_to, ts, edited,"
                   " deleted, kind, thread, mentions, attachments::text")
_IN_THREAD = ("room = $1 AND thread = $2 AND kind = 'message' AND thread IS NOT NULL"
              " AND sender_id <> ALL(${hidden}::text[])")
# Newest replies first below `before` ($3), limit+1 ($4); $5 the hidden senders.
_THREAD_DESC = f"""
SELECT {_THREAD_COLUMNS} FROM history.messages
WHERE {_IN_THREAD.format(hidden=5)} AND seq < $3
ORDER BY seq DESC LIMIT $4
"""
# From `after` ($5) up: the predecessor reply (highest <= after) and limit+1
# above it; $6 the hidden senders.
_THREAD_ASC = f"""
(SELECT {_THREAD_COLUMNS} FROM history.messages
 WHERE {_IN_THREAD.format(hidden=6)} AND seq <= $5 ORDER BY seq DESC LIMIT 1)
UNION ALL
(SELECT {_THREAD_COLUMNS} FROM history.messages
 WHERE {_IN_THREAD.format(hidden=6)} AND seq > $5 AND seq < $3 ORDER BY seq LIMIT $4)
"""

_REACTION_STATE = """
SELECT (SELECT active FROM history.reactions WHERE room = $1 AND msg_id = $2
        AND user_id = $3 AND emoji = $4) AS active,
       (SELECT seq FROM history.reactions WHERE room = $1 AND msg_id = $2
        AND user_id = $3 AND emoji = $4) AS seq,
       (SELECT count(DISTINCT emoji) FROM history.reactions WHERE room = $1 AND msg_id = $2
        AND active) AS distinct_emoji,
       (SELECT $4 = ANY (array_agg(DISTINCT emoji)) FROM history.reactions
        WHERE room = $1 AND msg_id = $2 AND active) AS emoji_present
"""

_MESSAGE = ("SELECT thread, deleted FROM history.messages"
            " WHERE msg_id = $2 AND kind = 'message' AND room = $1")

# Members of the room whose name is one of $2 (lowercased).
_MEMBERS_NAMED = ("SELECT user_id FROM history.members"
                  " WHERE room = $1 AND lower(user_name) = ANY($2::text[]) ORDER BY user_id")


@dataclass(frozen=True)
class ReactionState:
    """One user's emoji on one message: whether it is on and the event that set
    it (None: never), and how many distinct emoji the message holds now
    (``present``: this emoji among them, by anyone)."""

    active: bool | None
    seq: int
    distinct: int
    present: bool


@dataclass(frozen=True)
class StoredMessage:
    thread: str | None
    deleted: bool


def reaction_arrays(rows: Sequence[MessageRow]) -> list[list[object]] | None:
    """The batch's reaction events as :data:`APPLY_REACTIONS`' six arrays (None: none)."""
    reacts = [r for r in rows if r.kind == "react" or r.kind == "unreact"]
    if not reacts:
        return None
    return [[r.room for r in reacts], [r.msg_id for r in reacts],
            [r.sender_id for r in reacts], [r.text or "" for r in reacts],
            [r.kind == "react" for r in reacts], [r.seq for r in reacts]]


async def apply_reactions(conn: asyncpg.Connection, rows: Sequence[MessageRow],
                          timeout: float) -> None:
    """Fold the batch's reaction events into ``history.reactions`` (inside the
    caller's transaction, after the batch's rows are in)."""
    arrays = reaction_arrays(rows)
    if arrays is not None:
        await conn.execute(APPLY_REACTIONS, *arrays, timeout=timeout)


def page_row(record: asyncpg.Record) -> PageRow:
    return PageRow(room=record["room"], seq=record["seq"], msg_id=record["msg_id"],
                   sender_id=record["sender_id"], sender_name=record["sender_name"],
                   text=record["text"], reply_to=record["reply_to"], ts=record["ts"],
                   edited=record["edited"], deleted=record["deleted"], kind=record["kind"],
                   thread=record["thread"], mentions=record["mentions"],
                   attachments=decode_attachments(record["attachments"]))


def attach_extras(items: list[RoomEvent], records: Sequence[asyncpg.Record]) -> list[RoomEvent]:
    """Put each message's ``reactions`` and ``thread_info`` on the page's items
    (a deleted message shows neither)."""
    reactions: dict[str, list[tuple[int, ReactionCount]]] = {}
    threads: dict[str, ThreadInfo] = {}
    for r in records:
        if r["k"] == "r":
            reactions.setdefault(r["id"], []).append(
                (int(r["s"]), ReactionCount(emoji=r["emoji"], count=int(r["n"]), me=r["me"])))
        else:
            threads[r["id"]] = ThreadInfo(count=int(r["n"]), last_seq=int(r["s"]))
    if not reactions and not threads:
        return items
    out: list[RoomEvent] = []
    for item in items:
        if isinstance(item, Message) and not item.deleted and (
                item.msg_id in reactions or item.msg_id in threads):
            counts = reactions.get(item.msg_id)
            item = msgspec.structs.replace(
                item, reactions=[c for _, c in sorted(counts, key=lambda x: x[0])]
                if counts else None, thread_info=threads.get(item.msg_id))
        out.append(item)
    return out


class ExtrasStore:
    def __init__(self, pool: asyncpg.Pool, timeout: float = 10.0) -> None:
        self._pool = pool
        self._timeout = timeout

    async def decorate(self, room: str, items: list[RoomEvent], reader: str | None,
                       hidden: Sequence[str] = ()) -> list[RoomEvent]:
        """``items`` with each message's reactions and thread info as ``reader`` sees them."""
        ids = list({i.msg_id for i in items if isinstance(i, Message) and not i.deleted})
        if not ids:
            return items
        async with self._pool.acquire(timeout=self._timeout) as conn:
            records = await conn.fetch(_EXTRAS, room, ids, reader or "", list(hidden),
                                       timeout=self._timeout)
        return attach_extras(items, records)

    async def thread_page(self, room: str, root: str, *, before: int | None,
                          after: int | None, limit: int, hidden: Sequence[str] = (),
                          ) -> tuple[list[RoomEvent], bool]:
        """A page of ``root``'s replies, paged like history (store.MessageStore.page)."""
        upper = _NO_BEFORE if before is None else before
        async with self._pool.acquire(timeout=self._timeout) as conn:
            if after is None:
                records = await conn.fetch(_THREAD_DESC, room, root, upper, limit + 1,
                                           list(hidden), timeout=self._timeout)
                return assemble_page([page_row(r) for r in records], limit=limit,
                                     descending=True, floor_seq=0)
            records = await conn.fetch(_THREAD_ASC, room, root, upper, limit + 1, after,
                                       list(hidden), timeout=self._timeout)
        rows = sorted((page_row(r) for r in records), key=lambda r: r.seq)
        floor_seq = 0
        if rows and rows[0].seq <= after:
            floor_seq = rows.pop(0).seq
        return assemble_page(rows, limit=limit, descending=False, floor_seq=floor_seq)

    async def message(self, room: str, msg_id: str) -> StoredMessage | None:
        """A stored message of ``room`` (kind ``message``), or None."""
        async with self._pool.acquire(timeout=self._timeout) as conn:
            r = await conn.fetchrow(_MESSAGE, room, msg_id, timeout=self._timeout)
        return None if r is None else StoredMessage(thread=r["thread"], deleted=r["deleted"])

    async def reaction_state(self, room: str, msg_id: str, user: str,
                             emoji: str) -> ReactionState:
        async with self._pool.acquire(timeout=self._timeout) as conn:
            r = await conn.fetchrow(_REACTION_STATE, room, msg_id, user, emoji,
                                    timeout=self._timeout)
        assert r is not None
        return ReactionState(active=r["active"], seq=int(r["seq"] or 0),
                             distinct=int(r["distinct_emoji"] or 0),
                             present=bool(r["emoji_present"]))

    async def members_named(self, room: str, names: Sequence[str]) -> list[str]:
        """Ids of the room's members named (case-insensitively) in ``names``."""
        if not names:
            return []
        async with self._pool.acquire(timeout=self._timeout) as conn:
            rows = await conn.fetch(_MEMBERS_NAMED, room, [n.lower() for n in names],
                                    timeout=self._timeout)
        return [r["user_id"] for r in rows]
