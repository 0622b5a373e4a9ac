"""The rooms domain in PostgreSQL (migration 0003): rooms, members, bans, blocks, reads.

Queries only; the rules (who may do what) live in :mod:`.room_rules`. Writes
that race with each other are single statements or short transactions:

- a room is created by ``INSERT … ON CONFLICT DO NOTHING RETURNING``, so of
  concurrent creators (first joins, DM requests from both sides) exactly one
  sees its row come back;
- a join (and an invite) locks the room row ``FOR SHARE`` in one statement
  and checks archive and ban in the next (a fresh snapshot, so it sees a
  removal that committed while it waited); a removal holds ``FOR NO KEY
  UPDATE`` of the row while it deletes the membership and writes the ban, so
  a join racing a removal cannot slip in after it;
- the read pointer moves with ``UPDATE … WHERE read_seq < $new``: forward
  only, whatever order concurrent reads (several devices) arrive in.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

from chat_contract.bus import MemberView, RoomView, SearchHit, Visibility
from chat_contract.events import Message, User

from .records import format_ts

_ROOM = ("r.id, r.name, r.visibility, r.owner_id, r.password_hash, r.archived, r.dm,"
         " r.created_at")
_COUNT = "(SELECT count(*) FROM history.members c WHERE c.room = r.id) AS member_count"
# The room's newest stored event of any kind (0 if none): its last_seq.
_LAST = ("LEFT JOIN LATERAL (SELECT seq FROM history.messages WHERE room = r.id"
         " ORDER BY seq DESC LIMIT 1) l ON true")
# The caller's blocked set as one array, computed once per query (an InitPlan),
# not a lookup per scanned message (unread counts and search scan many).
_NOT_BLOCKED = ("{alias}.sender_id <> ALL (ARRAY(SELECT b.blocked FROM history.blocks b"
                " WHERE b.blocker = $1))")
_LAST_SEQ = "coalesce((SELECT max(seq) FROM history.messages WHERE room = $1), 0)"

# Every authorization lookup (each history page, join, read, change, search)
# runs this: no member count here, only where a reply shows one.
_STATE = f"""
SELECT {_ROOM},
       EXISTS (SELECT 1 FROM history.members m WHERE m.room = r.id AND m.user_id = $2) AS member,
       EXISTS (SELECT 1 FROM history.removed x WHERE x.room = r.id AND x.user_id = $2) AS banned,
       EXISTS (SELECT 1 FROM history.blocks b
               WHERE b.blocked = $2 AND b.blocker = ANY (r.dm_users)) AS peer_blocks,
       coalesce($2 = ANY (r.dm_users), false) AS dm_party
FROM history.rooms r WHERE r.id = $1
"""

# Checked under the room's lock, in a statement of its own (see _lock_room).
_MAY_JOIN = """
SELECT NOT r.archived AND NOT EXISTS (SELECT 1 FROM history.removed x
                                      WHERE x.room = r.id AND x.user_id = $2)
FROM history.rooms r WHERE r.id = $1
"""

# New members start reading at the room's last stored seq.
_ADD_MEMBER = f"""
INSERT INTO history.members (room, user_id, user_name, read_seq)
VALUES ($1, $2, $3, {_LAST_SEQ})
ON CONFLICT (room, user_id) DO UPDATE SET user_name = excluded.user_name
"""
_ADD_MEMBERS = f"""
INSERT INTO history.members (room, user_id, user_name, read_seq)
SELECT $1, u.id, u.name, {_LAST_SEQ} FROM unnest($2::text[], $3::text[]) AS u(id, name)
ON CONFLICT (room, user_id) DO NOTHING
"""

_MINE = f"""
SELECT {_ROOM}, {_COUNT}, coalesce(l.seq, 0) AS last_seq,
       lm.seq AS lm_seq, lm.msg_id AS lm_msg_id, lm.sender_id AS lm_sender_id,
       lm.sender_name AS lm_sender_name, lm.text AS lm_text, lm.reply_to AS lm_reply_to,
       lm.ts AS lm_ts, lm.edited AS lm_edited, lm.deleted AS lm_deleted,
       coalesce(lp.seq, 0) AS lm_prev_seq,
       (SELECT count(*) FROM history.messages u
        WHERE u.room = r.id AND u.kind = 'message' AND u.seq > m.read_seq AND NOT u.deleted
          AND u.sender_id <> $1 AND {_NOT_BLOCKED.format(alias="u")}) AS unread,
       (SELECT count(*) FROM history.messages n
        WHERE n.room = r.id AND n.kind = 'message' AND n.mentions IS NOT NULL
          AND n.mentions @> ARRAY[$1::text] AND n.seq > m.read_seq AND NOT n.deleted
          AND n.sender_id <> $1 AND {_NOT_BLOCKED.format(alias="n")}) AS mentions
FROM history.members m
JOIN history.rooms r ON r.id = m.room
{_LAST}
LEFT JOIN LATERAL (
    SELECT x.seq, x.msg_id, x.sender_id, x.sender_name, x.text, x.reply_to, x.ts,
           x.edited, x.deleted
    FROM history.messages x
    WHERE x.room = r.id AND x.kind = 'message' AND {_NOT_BLOCKED.format(alias="x")}
    ORDER BY x.seq DESC LIMIT 1) lm ON true
LEFT JOIN LATERAL (
    SELECT p.seq FROM history.messages p WHERE p.room = r.id AND p.seq < lm.seq
    ORDER BY p.seq DESC LIMIT 1) lp ON true
WHERE m.user_id = $1
ORDER BY last_seq DESC, r.created_at DESC, r.id
LIMIT $2
"""

# Newest first straight off the rooms_public index (its predicate is this
# WHERE), from below the cursor ($2, $3: the last room of the previous page)
# if any; member counts for the page only, not for every public room.
_PUBLIC = f"""
SELECT {_ROOM}, {_COUNT}
FROM (SELECT * FROM history.rooms
      WHERE visibility = 'public' AND NOT archived AND NOT dm
        AND ($2::timestamptz IS NULL OR (created_at, id) < ($2, $3::text))
      ORDER BY created_at DESC, id DESC
      LIMIT $1) r
ORDER BY r.created_at DESC, r.id DESC
"""

# Every room (the server API's directory): private rooms and DMs, archived too.
_ALL = f"""
SELECT {_ROOM}, {_COUNT}
FROM (SELECT * FROM history.rooms
      WHERE ($2::timestamptz IS NULL OR (created_at, id) < ($2, $3::text))
      ORDER BY created_at DESC, id DESC
      LIMIT $1) r
ORDER BY r.created_at DESC, r.id DESC
"""

# Rooms owned, counted under a per-owner advisory lock (so concurrent
# creations cannot pass the quota together).
_OWNER_LOCK = "SELECT pg_advisory_xact_lock(hashtext('history.rooms.owner'), hashtext($1))"
_OWNED = "SELECT count(*) FROM history.rooms WHERE owner_id = $1"


class QuotaExceeded(Exception):
    """The owner already owns the most rooms allowed (nothing written)."""

# websearch_to_tsquery parses any text (quotes, operators) without errors;
# the query string is a bind parameter, never SQL. ts_rank reads each row's
# tsvector, so only the newest $6 matches (seq desc) are ranked, not every
# match of a common word.
_SEARCH = f"""
SELECT c.room, c.msg_id, c.seq, c.text, c.ts, c.sender_id, c.sender_name
FROM (SELECT m.room, m.msg_id, m.seq, m.text, m.ts, m.sender_id, m.sender_name, m.tsv
      FROM history.messages m, websearch_to_tsquery('simple', $2) q
      WHERE m.kind = 'message' AND NOT m.deleted AND m.tsv @@ q
        AND m.room = ANY (ARRAY(SELECT room FROM history.members
                                WHERE user_id = $1 AND ($3::text IS NULL OR room = $3)))
        AND {_NOT_BLOCKED.format(alias="m")}
      ORDER BY m.seq DESC
      LIMIT $6) c, websearch_to_tsquery('simple', $2) q
ORDER BY ts_rank(c.tsv, q) DESC, c.seq DESC
LIMIT $4 OFFSET $5
"""


@dataclass(frozen=True)
class RoomRow:
    id: str
    name: str
    visibility: Visibility
    owner: str | None
    password_hash: str | None
    archived: bool
    dm: bool
    created_at: datetime

    def view(self, *, member_count: int | None = None,
             members: list[MemberView] | None = None, unread: int | None = None,
             last_seq: int | None = None, last_message: Message | None = None,
             mentions: int | None = None) -> RoomView:
        return RoomView(id=self.id, name=self.name, visibility=self.visibility,
                        owner=self.owner, created_at=format_ts(self.created_at),
                        password=self.password_hash is not None, archived=self.archived,
                        dm=self.dm, member_count=member_count, members=members, unread=unread,
                        mentions=mentions, last_seq=last_seq, last_message=last_message)


@dataclass(frozen=True)
class Standing:
    """A room as one user stands towards it."""

    room: RoomRow
    member: bool
    banned: bool
    # A DM whose other user blocked this one.
    peer_blocks: bool
    # One of a DM's two users (even after leaving it).
    dm_party: bool = False


@dataclass(frozen=True)
class Original:
    """The stored ``message`` row an edit or delete refers to."""

    sender: User
    ts: str
    reply_to: str | None
    deleted: bool
    thread: str | None = None


def _room(r: asyncpg.Record) -> RoomRow:
    return RoomRow(id=r["id"], name=r["name"], visibility=r["visibility"], owner=r["owner_id"],
                   password_hash=r["password_hash"], archived=r["archived"], dm=r["dm"],
                   created_at=r["created_at"])


def _last_message(r: asyncpg.Record) -> Message | None:
    if r["lm_seq"] is None:
        return None
    return Message(room=r["id"], msg_id=r["lm_msg_id"], seq=r["lm_seq"],
                   prev_seq=r["lm_prev_seq"],
                   sender=User(id=r["lm_sender_id"], name=r["lm_sender_name"]),
                   ts=format_ts(r["lm_ts"]), text=None if r["lm_deleted"] else r["lm_text"],
                   reply_to=r["lm_reply_to"], edited=r["lm_edited"], deleted=r["lm_deleted"])


class RoomsStore:
    def __init__(self, pool: asyncpg.Pool, timeout: float = 10.0, *,
                 search_pool: asyncpg.Pool | None = None, search_timeout: float = 10.0) -> None:
        self._pool = pool
        # Bounds a hung server (network partition) so the caller can retry.
        self._timeout = timeout
        # Searches have a pool of their own (capacity.py): a flood of heavy
        # searches waits for its few connections, never for the joins' ones.
        self._search_pool = search_pool or pool
        self._search_timeout = search_timeout

    # --- rooms --------------------------------------------------------------

    async def standing(self, room: str, user: str) -> Standing | None:
        """The room and the user's membership/ban in it; None if the room does not exist."""
        async with self._pool.acquire(timeout=self._timeout) as conn:
            r = await conn.fetchrow(_STATE, room, user, timeout=self._timeout)
        if r is None:
            return None
        return Standing(room=_room(r), member=r["member"], banned=r["banned"],
                        peer_blocks=r["peer_blocks"], dm_party=r["dm_party"])

    async def create(self, room: str, name: str, *, visibility: str, owner: str | None,
                     password_hash: str | None, members: list[User],
                     dm_users: list[str] | None = None, quota: int = 0) -> bool:
        """Create the room with ``members``; False (nothing written) if the id exists.

        ``dm_users`` makes it a direct-message room of those two users.
        ``quota`` > 0: :class:`QuotaExceeded` if ``owner`` owns that many already.
        """
        async with self._pool.acquire(timeout=self._timeout) as conn, conn.transaction():
            await self._check_quota(conn, owner, quota)
            created = await conn.fetchval(
                "INSERT INTO history.rooms"
                " (id, name, visibility, owner_id, password_hash, dm, dm_users)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (id) DO NOTHING RETURNING true",
                room, name, visibility, owner, password_hash, dm_users is not None, dm_users,
                timeout=self._timeout)
            if not created:
                return False
            await conn.execute(_ADD_MEMBERS, room, [u.id for u in members],
                               [u.name for u in members], timeout=self._timeout)
        return True

    async def _check_quota(self, conn: asyncpg.Connection, owner: str | None,
                           quota: int) -> None:
        if owner is None or quota <= 0:
            return
        await conn.execute(_OWNER_LOCK, owner, timeout=self._timeout)
        if await conn.fetchval(_OWNED, owner, timeout=self._timeout) >= quota:
            raise QuotaExceeded(owner)

    async def ensure_public(self, room: str, owner: str, quota: int = 0) -> bool:
        """Create ``room`` as a public room owned by ``owner`` unless it exists; True if
        created. ``quota`` as in :meth:`create` (checked only when it would be created)."""
        async with self._pool.acquire(timeout=self._timeout) as conn, conn.transaction():
            if quota > 0 and await conn.fetchval(
                    "SELECT true FROM history.rooms WHERE id = $1", room,
                    timeout=self._timeout):
                return False
            await self._check_quota(conn, owner, quota)
            created = await conn.fetchval(
                "INSERT INTO history.rooms (id, name, visibility, owner_id)"
                " VALUES ($1, $1, 'public', $2) ON CONFLICT (id) DO NOTHING RETURNING true",
                room, owner, timeout=self._timeout)
        return bool(created)

    async def archive(self, room: str) -> None:
        async with self._pool.acquire(timeout=self._timeout) as conn:
            await conn.execute("UPDATE history.rooms SET archived = true WHERE id = $1", room,
                               timeout=self._timeout)

    async def list_mine(self, user: str, limit: int) -> list[RoomView]:
        """The user's rooms, most recently active first, with unread, mentions,
        last_seq and last_message."""
        async with self._pool.acquire(timeout=self._timeout) as conn:
            rows = await conn.fetch(_MINE, user, limit, timeout=self._timeout)
        return [_room(r).view(member_count=r["member_count"], unread=r["unread"],
                              mentions=r["mentions"], last_seq=r["last_seq"],
                              last_message=_last_message(r))
                for r in rows]

    async def list_public(self, limit: int, after: tuple[datetime, str] | None = None
                          ) -> tuple[list[RoomView], tuple[datetime, str] | None]:
        """A page of the public directory, newest first, below ``after`` (the
        previous page's last (created_at, id)); and this page's last key when
        more rooms follow (None at the end)."""
        since, since_id = after if after is not None else (None, None)
        async with self._pool.acquire(timeout=self._timeout) as conn:
            rows = await conn.fetch(_PUBLIC, limit + 1, since, since_id, timeout=self._timeout)
        more = len(rows) > limit
        rows = rows[:limit]
        last = (rows[-1]["created_at"], rows[-1]["id"]) if more else None
        return [_room(r).view(member_count=r["member_count"]) for r in rows], last

    async def list_all(self, limit: int, after: tuple[datetime, str] | None = None
                       ) -> tuple[list[RoomView], tuple[datetime, str] | None]:
        """A page of every room (the server API), paged like :meth:`list_public`."""
        since, since_id = after if after is not None else (None, None)
        async with self._pool.acquire(timeout=self._timeout) as conn:
            rows = await conn.fetch(_ALL, limit + 1, since, since_id, timeout=self._timeout)
        more = len(rows) > limit
        rows = rows[:limit]
        last = (rows[-1]["created_at"], rows[-1]["id"]) if more else None
        return [_room(r).view(member_count=r["member_count"]) for r in rows], last

    # --- membership ---------------------------------------------------------

    async def join(self, room: str, user: User) -> bool:
        """Make ``user`` a member unless, by now, the room is archived or bans them."""
        async with self._pool.acquire(timeout=self._timeout) as conn, conn.transaction():
            await self._lock_room(conn, room)
            # A new statement, so a new snapshot: it sees a removal that
            # committed while we waited for the lock (READ COMMITTED).
            ok = await conn.fetchval(_MAY_JOIN, room, user.id, timeout=self._timeout)
            if not ok:
                return False
            await conn.execute(_ADD_MEMBER, room, user.id, user.name, timeout=self._timeout)
        return True

    async def invite(self, room: str, user: User, *, lift_ban: bool) -> bool:
        """Add ``user``; False if a ban (not lifted) or an archive got there first."""
        async with self._pool.acquire(timeout=self._timeout) as conn, conn.transaction():
            await self._lock_room(conn, room)
            if lift_ban:
                await conn.execute(
                    "DELETE FROM history.removed WHERE room = $1 AND user_id = $2",
                    room, user.id, timeout=self._timeout)
            elif not await conn.fetchval(_MAY_JOIN, room, user.id, timeout=self._timeout):
                return False
            await conn.execute(_ADD_MEMBER, room, user.id, user.name, timeout=self._timeout)
        return True

    async def _lock_room(self, conn: asyncpg.Connection, room: str) -> None:
        """Serialise with remove() (FOR NO KEY UPDATE) and archive (UPDATE) of the room.

        Taken in its own statement: a check in the locking statement itself
        would use the snapshot from before the wait and miss the ban.
        """
        await conn.execute("SELECT 1 FROM history.rooms WHERE id = $1 FOR SHARE", room,
                           timeout=self._timeout)

    async def remove(self, room: str, user: str, *, ban: bool) -> bool:
        """End ``user``'s membership (and ban them); False if they were not a member."""
        async with self._pool.acquire(timeout=self._timeout) as conn, conn.transaction():
            await conn.execute("SELECT 1 FROM history.rooms WHERE id = $1 FOR NO KEY UPDATE",
                               room, timeout=self._timeout)
            gone = await conn.fetchval(
                "DELETE FROM history.members WHERE room = $1 AND user_id = $2 RETURNING true",
                room, user, timeout=self._timeout)
            if gone and ban:
                await conn.execute(
                    "INSERT INTO history.removed (room, user_id) VALUES ($1, $2)"
                    " ON CONFLICT DO NOTHING", room, user, timeout=self._timeout)
        return bool(gone)

    async def member_count(self, room: str) -> int:
        async with self._pool.acquire(timeout=self._timeout) as conn:
            value = await conn.fetchval("SELECT count(*) FROM history.members WHERE room = $1",
                                        room, timeout=self._timeout)
        return int(value)

    async def members(self, room: str) -> list[MemberView]:
        async with self._pool.acquire(timeout=self._timeout) as conn:
            rows = await conn.fetch(
                "SELECT m.user_id, m.user_name, m.user_id = r.owner_id AS is_owner"
                " FROM history.members m JOIN history.rooms r ON r.id = m.room"
                " WHERE m.room = $1 ORDER BY m.joined_at, m.user_id", room,
                timeout=self._timeout)
        return [MemberView(id=r["user_id"], name=r["user_name"],
                           role="owner" if r["is_owner"] else "member") for r in rows]

    # --- blocks -------------------------------------------------------------

    async def blocked(self, user: str) -> list[str]:
        async with self._pool.acquire(timeout=self._timeout) as conn:
            rows = await conn.fetch(
                "SELECT blocked FROM history.blocks WHERE blocker = $1 ORDER BY blocked", user,
                timeout=self._timeout)
        return [r["blocked"] for r in rows]

    async def is_blocked(self, blocker: str, blocked: str) -> bool:
        async with self._pool.acquire(timeout=self._timeout) as conn:
            found = await conn.fetchval(
                "SELECT true FROM history.blocks WHERE blocker = $1 AND blocked = $2",
                blocker, blocked, timeout=self._timeout)
        return bool(found)

    async def blocked_by_any(self, blockers: list[str], blocked: str) -> bool:
        """Has any of ``blockers`` blocked ``blocked``?"""
        if not blockers:
            return False
        async with self._pool.acquire(timeout=self._timeout) as conn:
            found = await conn.fetchval(
                "SELECT EXISTS (SELECT 1 FROM history.blocks"
                " WHERE blocked = $2 AND blocker = ANY ($1::text[]))",
                blockers, blocked, timeout=self._timeout)
        return bool(found)

    async def set_block(self, blocker: str, blocked: str, on: bool,
                        cap: int) -> list[str] | None:
        """Block or unblock; the blocker's whole blocked set afterwards, or None
        (nothing written) when a new block would exceed ``cap`` blocks."""
        async with self._pool.acquire(timeout=self._timeout) as conn, conn.transaction():
            if on:
                # One blocker's changes in turn, so concurrent blocks cannot pass the cap.
                await conn.execute(
                    "SELECT pg_advisory_xact_lock(hashtext('history.blocks'), hashtext($1))",
                    blocker, timeout=self._timeout)
                r = await conn.fetchrow(
                    "SELECT count(*) AS n, coalesce(bool_or(blocked = $2), false) AS present"
                    " FROM history.blocks WHERE blocker = $1", blocker, blocked,
                    timeout=self._timeout)
                if r is not None and not r["present"] and r["n"] >= cap:
                    return None
                await conn.execute(
                    "INSERT INTO history.blocks (blocker, blocked) VALUES ($1, $2)"
                    " ON CONFLICT DO NOTHING", blocker, blocked, timeout=self._timeout)
            else:
                await conn.execute(
                    "DELETE FROM history.blocks WHERE blocker = $1 AND blocked = $2",
                    blocker, blocked, timeout=self._timeout)
            rows = await conn.fetch(
                "SELECT blocked FROM history.blocks WHERE blocker = $1 ORDER BY blocked",
                blocker, timeout=self._timeout)
        return [r["blocked"] for r in rows]

    # --- messages: edits, reads, search --------------------------------------

    async def original(self, room: str, msg_id: str) -> Original | None:
        async with self._pool.acquire(timeout=self._timeout) as conn:
            r = await conn.fetchrow(
                "SELECT sender_id, sender_name, ts, reply_to, deleted, thread FROM history.messages"
                " WHERE msg_id = $2 AND kind = 'message' AND room = $1", room, msg_id,
                timeout=self._timeout)
        if r is None:
            return None
        return Original(sender=User(id=r["sender_id"], name=r["sender_name"]),
                        ts=format_ts(r["ts"]), reply_to=r["reply_to"], deleted=r["deleted"],
                        thread=r["thread"])

    async def last_seq(self, room: str) -> int:
        """The room's newest stored seq (0 if none)."""
        async with self._pool.acquire(timeout=self._timeout) as conn:
            value = await conn.fetchval(f"SELECT {_LAST_SEQ}", room, timeout=self._timeout)
        return int(value)

    async def mark_read(self, room: str, user: str, seq: int) -> tuple[int, bool] | None:
        """Move the pointer forward to ``seq``: (pointer now, moved); None if not a member."""
        async with self._pool.acquire(timeout=self._timeout) as conn:
            moved = await conn.fetchval(
                "UPDATE history.members SET read_seq = $3"
                " WHERE room = $1 AND user_id = $2 AND read_seq < $3 RETURNING read_seq",
                room, user, seq, timeout=self._timeout)
            if moved is not None:
                return int(moved), True
            current = await conn.fetchval(
                "SELECT read_seq FROM history.members WHERE room = $1 AND user_id = $2",
                room, user, timeout=self._timeout)
        return None if current is None else (int(current), False)

    async def search(self, user: str, query: str, room: str | None, limit: int,
                     offset: int, candidates: int) -> list[SearchHit]:
        """Ranked hits among the newest ``candidates`` matches. Waits for a search
        connection at most the search timeout (TimeoutError); the server cancels
        a longer statement (its pool's ``statement_timeout``: QueryCanceledError)."""
        async with self._search_pool.acquire(timeout=self._search_timeout) as conn:
            rows = await conn.fetch(_SEARCH, user, query, room, limit, offset, candidates,
                                    timeout=self._search_timeout + self._timeout)
        return [SearchHit(room=r["room"], msg_id=r["msg_id"], seq=r["seq"], text=r["text"],
                          ts=format_ts(r["ts"]),
                          sender=User(id=r["sender_id"], name=r["sender_name"]))
                for r in rows]
