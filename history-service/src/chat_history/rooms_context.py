"""What every ``svc.rooms.*`` endpoint needs besides its rules: the store, user
lookups, the wait for storage to catch up, and the notices.

Notices (ReadNotice, MemberNotice, ArchiveNotice on ``chat.room.<room>.state``,
BlocksNotice on ``users.<id>.blocks``) go out on core NATS after the database
committed: a gateway that is disconnected at that instant misses one (it
catches up at the next join, whose AccessReply carries the current state).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

import asyncpg
import msgspec
from nats.aio.client import Client as NATS

from chat_contract.bus import RoomView
from chat_contract.errors import ChatError, ErrorCode
from chat_contract.events import User
from chat_kit.db import DB_UNAVAILABLE
from chat_kit.logs import event

from . import users
from .room_rules import is_hidden, may_see, not_found
from .rooms_store import RoomsStore, Standing

log = logging.getLogger("chat_history.rooms")

# HistoryApi.ensure_fresh: storage holds every stream event of the room (and
# up to a sequence).
Fresh = Callable[[str, int], Awaitable[None]]
# HistoryApi.stream_last: the room's last sequence in the stream (its leader's).
StreamLast = Callable[[str], Awaitable[int]]
Req = TypeVar("Req")
Rep = TypeVar("Rep")


class RoomsContext:
    def __init__(self, nc: NATS, store: RoomsStore, *, lookup_timeout: float,
                 fresh: Fresh | None = None, stream_last: StreamLast | None = None) -> None:
        self._nc = nc
        self.store = store
        self._lookup_timeout = lookup_timeout
        # Set once the history API exists (service.py wires the two together).
        self.fresh = fresh
        self.stream_last = stream_last

    async def standing(self, room: str, user: str) -> Standing:
        """``user``'s standing in ``room``; an unknown room is ``not_found``."""
        s = await self.store.standing(room, user)
        if s is None:
            raise not_found()
        return s

    async def visible(self, room: str, user: str) -> Standing:
        """``user``'s standing in a room they may know of: an unknown room and
        a hidden one (:func:`.room_rules.is_hidden`) are both ``not_found``."""
        s = await self.standing(room, user)
        if is_hidden(s, user):
            raise not_found()
        return s

    async def full_view(self, room: str, user: str) -> RoomView:
        """The room with its member count, and its members for whoever may see them."""
        s = await self.standing(room, user)
        if may_see(s, user):
            members = await self.store.members(room)
            return s.room.view(member_count=len(members), members=members)
        return s.room.view(member_count=await self.store.member_count(room))

    async def lookup(self, ids: Iterable[str] = (), names: Iterable[str] = ()) -> list[User]:
        return await users.lookup(self._nc, ids, names, timeout=self._lookup_timeout)

    async def ensure_fresh(self, room: str, min_seq: int = 0) -> None:
        """Wait until storage holds the room's last stream event (and every
        stream message up to ``min_seq``); ChatError ``unavailable`` if it
        cannot catch up in time."""
        if self.fresh is not None:
            await self.fresh(room, min_seq)

    async def last_seq(self, room: str) -> int:
        """The room's real last seq: the stream's (storage may lag behind it),
        or storage's when the stream holds nothing newer (aged out)."""
        stored = await self.store.last_seq(room)
        if self.stream_last is None:
            return stored
        try:
            streamed = await self.stream_last(room)
        except Exception:
            raise ChatError(ErrorCode.UNAVAILABLE, "chat stream unavailable") from None
        return max(stored, streamed)

    async def notify(self, subject: str, notice: msgspec.Struct) -> None:
        try:
            await self._nc.publish(subject, msgspec.json.encode(notice))
        except Exception as exc:  # core NATS: a lost notice is a documented limit
            event(log, "notice not published", logging.WARNING, subject=subject,
                  error=repr(exc))


def db_guard(handler: Callable[[Req], Awaitable[Rep]]) -> Callable[[Req], Awaitable[Rep]]:
    """Database outages, and statements cancelled by the pool's
    ``statement_timeout`` (capacity.py), answer ``unavailable`` (worth a
    retry), not ``internal``."""

    async def guarded(req: Req) -> Rep:
        try:
            return await handler(req)
        except (*DB_UNAVAILABLE, asyncpg.QueryCanceledError):
            raise ChatError(ErrorCode.UNAVAILABLE, "rooms store unavailable") from None

    return guarded
