"""The activity endpoints, about messages in a room: ``svc.rooms.change``
(may the caller edit or delete a message: the grant), ``svc.rooms.read``
(move the caller's read pointer) and ``svc.rooms.search``.

Grants and read pointers wait for storage to catch up on the room first
(:meth:`.RoomsContext.ensure_fresh`): a message sent a moment ago may still
be on its way from the stream to PostgreSQL.
"""

from __future__ import annotations

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

from . import room_rules as rules
from .room_rules import forbidden, not_found
from .rooms_context import RoomsContext


class ActivityEndpoints:
    def __init__(self, ctx: RoomsContext) -> None:
        self._ctx = ctx
        self._store = ctx.store

    async def change(self, req: ChangeRequest) -> ChangeGrant:
        """Grant an edit or delete: the original's sender, ts and reply_to."""
        caller = req.caller
        rules.check_room_id(req.room)
        if not rules.is_possible_msg_id(req.msg_id):
            raise not_found("unknown message")
        s = await self._ctx.standing(req.room, caller.id)
        # The gateway admits only joined sockets; this is the second line (a
        # removal or leave that the gateway has not applied yet).
        if not rules.is_insider(s, caller.id):
            raise forbidden("not a member of this room")
        await self._ctx.ensure_fresh(req.room)
        original = await self._store.original(req.room, req.msg_id)
        if original is None or original.deleted:
            raise not_found("unknown message")
        rules.check_may_change(s, caller.id, req.action, original.sender.id)
        return ChangeGrant(sender=original.sender, ts=original.ts, reply_to=original.reply_to)

    async def read(self, req: ReadRequest) -> ReadReply:
        """Move the caller's read pointer forward, clamped to the room's last stored seq."""
        caller = req.caller
        rules.check_room_id(req.room)
        rules.check_read_seq(req.seq)
        s = await self._ctx.standing(req.room, caller.id)
        if not s.member:
            raise forbidden("not a member of this room")
        # Clamp to the stored last seq; a seq beyond it may be an event still on
        # its way to storage (delivered before stored), so wait for that first.
        last = await self._store.last_seq(req.room)
        if req.seq > last:
            await self._ctx.ensure_fresh(req.room)
            last = await self._store.last_seq(req.room)
        result = await self._store.mark_read(req.room, caller.id, min(req.seq, last))
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
        if req.room is not None:
            s = await self._ctx.standing(req.room, req.caller.id)
            if not s.member:
                raise forbidden("not a member of this room")
        hits = await self._store.search(req.caller.id, q, req.room, req.limit + 1, req.offset,
                                        rules.SEARCH_CANDIDATES)
        return SearchReply(results=hits[:req.limit], has_more=len(hits) > req.limit)
