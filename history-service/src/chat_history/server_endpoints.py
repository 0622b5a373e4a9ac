"""The server API's trusted reads (README "Server API"): every room, and one
room with its members, whoever asks.

No caller: the gateways ask on behalf of an integrator's backend that
presented an API key with the ``rooms`` scope (chat_gateway.server_api).
Only the gateway's NATS role may publish ``svc.rooms.directory`` and
``svc.rooms.roster``; clients never reach them. Registered in :mod:`.service`.
"""

from __future__ import annotations

from chat_contract.bus import DirectoryRequest, RoomReply, RoomsReply, RosterRequest

from . import room_rules as rules
from .room_rules import not_found
from .rooms_store import RoomsStore


class ServerEndpoints:
    def __init__(self, store: RoomsStore) -> None:
        self._store = store

    async def directory(self, req: DirectoryRequest) -> RoomsReply:
        """Every room (private, DMs and archived too), newest first, cursor-paged."""
        rules.check_list_limit(req.limit)
        after = rules.decode_cursor(req.cursor) if req.cursor else None
        page, last = await self._store.list_all(req.limit, after)
        return RoomsReply(rooms=page, next_cursor=rules.encode_cursor(last) if last else None)

    async def roster(self, req: RosterRequest) -> RoomReply:
        """The room with its members; an unknown room is ``not_found``."""
        rules.check_room_id(req.room)
        standing = await self._store.standing(req.room, "")
        if standing is None:
            raise not_found()
        members = await self._store.members(req.room)
        return RoomReply(room=standing.room.view(member_count=len(members), members=members))
