"""``svc.rooms.react`` (may the caller react, and does it change anything: the
grant) and ``svc.rooms.resolve`` (a send's thread root and ``@names``).

Both wait for storage to catch up on the room before looking at a message
(:meth:`.RoomsContext.ensure_fresh`), as edits do: the message may have been
sent a moment ago. Refusals (docs/protocol.md §3.3): not a member →
``forbidden``; an unknown or deleted message → ``not_found`` (a reaction) or
``bad_request`` (a thread root, as the contract says); not one emoji →
``bad_request``; a new emoji beyond the distinct-emoji cap → ``too_large``.
"""

from __future__ import annotations

from chat_contract import limits
from chat_contract.bus import ReactGrant, ReactRequest, ResolveReply, ResolveRequest
from chat_contract.emoji import check_emoji
from chat_contract.errors import ChatError, ErrorCode

from . import room_rules as rules
from .extras_store import ExtrasStore
from .room_rules import bad_request, forbidden, not_found
from .rooms_context import RoomsContext

# CHAT_HISTORY_REACTIONS_PER_MESSAGE's default.
REACTIONS_PER_MESSAGE = 20


class ExtrasEndpoints:
    def __init__(self, ctx: RoomsContext, store: ExtrasStore,
                 reactions_per_message: int = REACTIONS_PER_MESSAGE) -> None:
        self._ctx = ctx
        self._store = store
        self._cap = reactions_per_message

    async def react(self, req: ReactRequest) -> ReactGrant:
        """Grant a reaction: ``publish`` when it changes the message's state."""
        caller = req.caller
        rules.check_room_id(req.room)
        check_emoji(req.emoji)
        if not rules.is_possible_msg_id(req.msg_id):
            raise not_found("unknown message")
        s = await self._ctx.visible(req.room, caller.id)
        if not rules.is_insider(s, caller.id):
            raise forbidden("not a member of this room")
        if s.room.archived:
            raise forbidden(f"room {req.room} is archived (read-only)")
        await self._ctx.ensure_fresh(req.room)
        message = await self._store.message(req.room, req.msg_id)
        if message is None or message.deleted:
            raise not_found("unknown message")
        state = await self._store.reaction_state(req.room, req.msg_id, caller.id, req.emoji)
        if bool(state.active) == req.on:  # a repeat, or taking back what is not there
            return ReactGrant(publish=False, seq=state.seq)
        if req.on and not state.present and state.distinct >= self._cap:
            raise ChatError(ErrorCode.TOO_LARGE,
                            f"a message holds at most {self._cap} different reactions")
        return ReactGrant(publish=True)

    async def resolve(self, req: ResolveRequest) -> ResolveReply:
        """The thread root to store (checked) and the ids of the members named."""
        caller = req.caller
        rules.check_room_id(req.room)
        if len(req.names) > limits.MENTIONS_MAX:
            raise bad_request(f"at most {limits.MENTIONS_MAX} names")
        s = await self._ctx.visible(req.room, caller.id)
        if not rules.is_insider(s, caller.id):
            raise forbidden("not a member of this room")
        thread = None
        if req.thread is not None:
            if not rules.is_possible_msg_id(req.thread):
                raise bad_request("thread: no such message in this room")
            await self._ctx.ensure_fresh(req.room)
            root = await self._store.message(req.room, req.thread)
            if root is None or root.deleted:
                raise bad_request("thread: no such message in this room")
            thread = root.thread or req.thread  # a reply's thread is its root's
        mentions = await self._store.members_named(req.room, req.names)
        return ResolveReply(thread=thread, mentions=mentions)
