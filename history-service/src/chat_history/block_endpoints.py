"""The block endpoints: ``svc.rooms.block`` (block or unblock a user) and
``svc.rooms.blocks`` (the caller's blocked set).

A block hides the blocked user's events from the blocker and keeps the
blocked user from putting the blocker in a room (rules in :mod:`.room_rules`
and the room endpoints). Every change publishes the whole set as a
``BlocksNotice`` on ``users.<blocker>.blocks`` so gateways apply it at once.
"""

from __future__ import annotations

from chat_contract import limits, subjects
from chat_contract.bus import BlockRequest, BlocksNotice, BlocksReply, BlocksRequest

from . import room_rules as rules
from .rooms_context import RoomsContext


class BlockEndpoints:
    def __init__(self, ctx: RoomsContext) -> None:
        self._ctx = ctx
        self._store = ctx.store

    async def blocks(self, req: BlocksRequest) -> BlocksReply:
        return BlocksReply(blocked=await self._store.blocked(req.caller.id))

    async def block(self, req: BlockRequest) -> BlocksReply:
        caller = req.caller
        rules.check_user_id(req.user)
        if req.user == caller.id:
            raise rules.bad_request("you cannot block yourself")
        found = await self._ctx.lookup(ids=[req.user])
        if not found or found[0].id != req.user:
            raise rules.not_found("unknown user")
        blocked = await self._store.set_block(caller.id, req.user, req.block, limits.BLOCKS_MAX)
        if blocked is None:
            raise rules.bad_request(f"too many blocks (at most {limits.BLOCKS_MAX})")
        await self._ctx.notify(subjects.blocks_subject(caller.id),
                               BlocksNotice(user=caller.id, blocked=blocked))
        return BlocksReply(blocked=blocked)
