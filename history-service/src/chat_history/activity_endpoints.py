"""The activity endpoints, about messages in a room: ``svc.rooms.change``
(may the caller edit or delete a message: the grant), ``svc.rooms.read``
(move the caller's read pointer) and ``svc.rooms.search``.

Grants and read pointers wait for storage to catch up on the room first
(:meth:`.RoomsContext.ensure_fresh`): a message sent a moment ago may still
be on its way from the stream to PostgreSQL.
"""

from __future__ import annotations

import contextlib
import logging

import asyncpg

from chat_contract import subjects
from chat_contract.bus import (
    ChangeGrant,
    ChangeRequest,
    ReadNotice,
    ReadReply,
    ReadRequest,
    SearchReply,
    SearchRequest,
)
from chat_contract.errors import ChatError, ErrorCode

from . import room_rules as rules
from .capacity import UserLimiter
from .refusals import RefusalLog
from .room_rules import forbidden, not_found
from .rooms_context import RoomsContext

log = logging.getLogger("chat_history.rooms")


class ActivityEndpoints:
    def __init__(self, ctx: RoomsContext, searches: UserLimiter | None = None) -> None:
        self._ctx = ctx
        self._store = ctx.store
        # Per-user search admission (README "Capacity"): rate and concurrency.
        self._searches = searches or UserLimiter(0, 0, 1.0, "searches")
        self._refusals = RefusalLog(log)

    async def change(self, req: ChangeRequest) -> ChangeGrant:
        """Grant an edit or delete: the original's sender, ts, reply_to and thread."""
        caller = req.caller
        rules.check_room_id(req.room)
        if not rules.is_possible_msg_id(req.msg_id):
            raise not_found("unknown message")
        s = await self._ctx.visible(req.room, caller.id)
        # The gateway admits only joined sockets; this is the second line (a
        # removal or leave that the gateway has not applied yet).
        if not rules.is_insider(s, caller.id):
            raise forbidden("not a member of this room")
        await self._ctx.ensure_fresh(req.room)
        original = await self._store.original(req.room, req.msg_id)
        if original is None or original.deleted:
            raise not_found("unknown message")
        rules.check_may_change(s, caller.id, req.action, original.sender.id)
        return ChangeGrant(sender=original.sender, ts=original.ts, reply_to=original.reply_to,
                           thread=original.thread)

    async def read(self, req: ReadRequest) -> ReadReply:
        """Move the caller's read pointer forward to ``seq``, clamped to the
        room's real last seq (the stream's: storage may lag behind it)."""
        caller = req.caller
        rules.check_room_id(req.room)
        rules.check_read_seq(req.seq)
        s = await self._ctx.visible(req.room, caller.id)
        if not s.member:
            raise forbidden("not a member of this room")
        target = min(req.seq, await self._ctx.last_seq(req.room))
        # Unread counts are computed from storage: give it the chance to hold
        # what the pointer now covers. Best effort: a lagging store delays the
        # answer by at most the catch-up timeout, it does not refuse the read.
        with contextlib.suppress(ChatError):
            await self._ctx.ensure_fresh(req.room, target)
        result = await self._store.mark_read(req.room, caller.id, target)
        if result is None:  # left in the meantime
            raise forbidden("not a member of this room")
        seq, moved = result
        if moved:
            await self._ctx.notify(subjects.state_subject(req.room),
                                   ReadNotice(room=req.room, user=caller, seq=seq))
        return ReadReply(seq=seq, moved=moved)

    async def search(self, req: SearchRequest) -> SearchReply:
        """Full-text search over the caller's rooms (or one of them), newest matches ranked."""
        q = rules.search_query(req)
        user = req.caller.id
        if req.room is not None:
            s = await self._ctx.visible(req.room, user)
            if not s.member:
                raise forbidden("not a member of this room")
        try:
            self._searches.enter(user)
        except ChatError:
            self._refusals.refused("search_rate", "search rate-limited", user)
            raise
        try:
            hits = await self._store.search(user, q, req.room, req.limit + 1, req.offset,
                                            rules.SEARCH_CANDIDATES)
        except asyncpg.QueryCanceledError:
            self._refusals.refused("search_timeout", "search timed out", user)
            raise ChatError(ErrorCode.UNAVAILABLE,
                            "search took too long: use more specific words, or one room"
                            ) from None
        except TimeoutError:
            self._refusals.refused("search_busy", "search capacity full", user)
            raise ChatError(ErrorCode.UNAVAILABLE, "too many searches now, retry") from None
        finally:
            self._searches.leave(user)
        return SearchReply(results=hits[:req.limit], has_more=len(hits) > req.limit)
