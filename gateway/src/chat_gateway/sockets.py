"""The sockets open at this gateway, by user and by login session: where a
user's blocked set is applied (``BlocksNotice`` on ``users.<id>.blocks``, or
fetched again after a NATS reconnect), what a revocation closes with 4401
(:mod:`.revocation` tells it), and what a drain closes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Collection, Iterable

import msgspec
from nats.aio.msg import Msg

from chat_contract.bus import BlocksNotice, BlocksReply
from chat_contract.errors import ChatError, CloseCode
from chat_contract.events import User
from chat_kit import metrics
from chat_kit.logs import event

from .connection import Connection

log = logging.getLogger("chat_gateway.sockets")

_blocks_decoder = msgspec.json.Decoder(BlocksNotice)

# The user's blocked set as history-service has it now (svc.rooms.blocks).
FetchBlocks = Callable[[User], Awaitable[BlocksReply]]
# Whether a socket of (login session, user) is revoked (revocation.Revocations).
IsRevoked = Callable[[str | None, str], bool]


# An index entry: one socket (most users and login sessions have one here:
# no set per socket, issue 13), or a set of them.
Held = Connection | set[Connection]


class Sockets:
    def __init__(self) -> None:
        self.all: set[Connection] = set()
        # user id → that user's sockets here: where a BlocksNotice applies.
        self.by_user: dict[str, Held] = {}
        # login session (the token's sid) → its sockets here: what a logout closes.
        self.by_sid: dict[str, Held] = {}
        self.is_revoked: IsRevoked | None = None
        self._closing: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self.all)

    def add(self, conn: Connection) -> None:
        self.all.add(conn)
        _add(self.by_user, conn.user.id, conn)
        if conn.sid is not None:
            _add(self.by_sid, conn.sid, conn)
        # Revoked between its token's check and now: closed all the same.
        if self.is_revoked is not None and self.is_revoked(conn.sid, conn.user.id):
            self._revoke([conn])

    def remove(self, conn: Connection) -> None:
        self.all.discard(conn)
        _discard(self.by_user, conn.user.id, conn)
        if conn.sid is not None:
            _discard(self.by_sid, conn.sid, conn)

    # --- revocation (revocation.Listener) ---------------------------------------------

    def session_revoked(self, sid: str) -> None:
        self._revoke(held(self.by_sid, sid))

    def user_revoked(self, user_id: str) -> None:
        # The user's sessions are revoked one by one too; this is for sockets
        # whose token carried no session.
        self._revoke([c for c in held(self.by_user, user_id) if c.sid is None])

    def reloaded(self) -> None:
        """The whole list was read again (start, NATS reconnect): check every socket."""
        if self.is_revoked is not None:
            check = self.is_revoked
            self._revoke([c for c in self.all if check(c.sid, c.user.id)])

    def _revoke(self, conns: Iterable[Connection]) -> None:
        conns = [c for c in conns if not c.closed]
        if not conns:
            return
        metrics.WS_DROPPED.labels("revoked").inc(len(conns))
        event(log, "revoked sockets closed", count=len(conns), user=conns[0].user.id,
              session=conns[0].sid)
        task = asyncio.get_running_loop().create_task(self._close(conns))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    @staticmethod
    async def _close(conns: list[Connection]) -> None:
        for conn in conns:
            with contextlib.suppress(Exception):
                await conn.close(CloseCode.UNAUTHORIZED, "session revoked")

    async def on_blocks(self, msg: Msg) -> None:
        """A user's blocked set changed: every local socket of theirs filters by it."""
        try:
            notice = _blocks_decoder.decode(msg.data)
        except msgspec.DecodeError:
            metrics.WS_DROPPED.labels("bad_blocks_event").inc()
            return
        for conn in held(self.by_user, notice.user):
            conn.blocks_notice(notice.blocked)

    async def refresh_blocks(self, fetch: FetchBlocks) -> bool:
        """Local users' blocked sets, as BlocksNotices lost meanwhile left them.
        False if history-service could not answer (retry later)."""
        for entry in list(self.by_user.values()):
            conns = held_in(entry)
            first = next(iter(conns))
            seen = {conn: conn.blocks_seen for conn in conns}
            try:
                reply = await fetch(first.user)
            except ChatError:
                return False
            for conn, before in seen.items():
                conn.blocks_fetched(reply.blocked, before)
        return True

    async def close_all(self, code: int, reason: str) -> None:
        conns = list(self.all)
        for conn in conns:
            with contextlib.suppress(Exception):
                await conn.close(code, reason)
        event(log, "sockets closed", count=len(conns), code=code)


def held_in(entry: Held) -> Collection[Connection]:
    return (entry,) if isinstance(entry, Connection) else entry


def held(index: dict[str, Held], key: str) -> Collection[Connection]:
    """The sockets under ``key`` (none: empty)."""
    entry = index.get(key)
    return () if entry is None else held_in(entry)


def _add(index: dict[str, Held], key: str, conn: Connection) -> None:
    entry = index.get(key)
    if entry is None:
        index[key] = conn
    elif isinstance(entry, Connection):
        if entry is not conn:
            index[key] = {entry, conn}
    else:
        entry.add(conn)


def _discard(index: dict[str, Held], key: str, conn: Connection) -> None:
    entry = index.get(key)
    if entry is None:
        return
    if isinstance(entry, Connection):
        if entry is conn:
            del index[key]
        return
    entry.discard(conn)
    if len(entry) == 1:
        index[key] = next(iter(entry))
    elif not entry:
        del index[key]
