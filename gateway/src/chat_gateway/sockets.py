"""The sockets open at this gateway, by user: where a user's blocked set is
applied (``BlocksNotice`` on ``users.<id>.blocks``, or fetched again after a
NATS reconnect), and what a drain closes."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable

import msgspec
from nats.aio.msg import Msg

from chat_contract.bus import BlocksNotice, BlocksReply
from chat_contract.errors import ChatError
from chat_contract.events import User
from chat_kit import metrics
from chat_kit.logs import event

from .connection import Connection

log = logging.getLogger("chat_gateway.sockets")

_blocks_decoder = msgspec.json.Decoder(BlocksNotice)

# The user's blocked set as history-service has it now (svc.rooms.blocks).
FetchBlocks = Callable[[User], Awaitable[BlocksReply]]


class Sockets:
    def __init__(self) -> None:
        self.all: set[Connection] = set()
        # user id → that user's sockets here: where a BlocksNotice applies.
        self.by_user: dict[str, set[Connection]] = {}

    def __len__(self) -> int:
        return len(self.all)

    def add(self, conn: Connection) -> None:
        self.all.add(conn)
        self.by_user.setdefault(conn.user.id, set()).add(conn)

    def remove(self, conn: Connection) -> None:
        self.all.discard(conn)
        mine = self.by_user.get(conn.user.id)
        if mine is not None:
            mine.discard(conn)
            if not mine:
                del self.by_user[conn.user.id]

    async def on_blocks(self, msg: Msg) -> None:
        """A user's blocked set changed: every local socket of theirs filters by it."""
        try:
            notice = _blocks_decoder.decode(msg.data)
        except msgspec.DecodeError:
            metrics.WS_DROPPED.labels("bad_blocks_event").inc()
            return
        for conn in self.by_user.get(notice.user, ()):
            conn.blocks_notice(notice.blocked)

    async def refresh_blocks(self, fetch: FetchBlocks) -> bool:
        """Local users' blocked sets, as BlocksNotices lost meanwhile left them.
        False if history-service could not answer (retry later)."""
        for conns in list(self.by_user.values()):
            if not conns:
                continue
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
