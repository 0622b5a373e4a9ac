"""``svc.notify.level``: a member's offline notification level in a room."""

from __future__ import annotations

from chat_contract import rooms
from chat_contract.bus import NotifyLevelReply, NotifyLevelRequest
from chat_contract.errors import ChatError, ErrorCode
from chat_kit.db import DB_UNAVAILABLE

from .directory import REFUSALS, Directory
from .levels import LevelStore
from .recipients import default_level


class LevelEndpoint:
    def __init__(self, directory: Directory, store: LevelStore) -> None:
        self._dir = directory
        self._store = store

    async def level(self, req: NotifyLevelRequest) -> NotifyLevelReply:
        """Set (or with ``level`` None, read) the caller's level. Members only:
        anyone else gets ``not_found``, as for a room they may not see."""
        if not rooms.is_valid_room_id(req.room):
            raise ChatError(ErrorCode.BAD_REQUEST, "invalid room id")
        try:
            view = await self._dir.room(req.caller, req.room)
        except ChatError as exc:
            if exc.code in REFUSALS:
                raise ChatError(ErrorCode.NOT_FOUND, "room not found") from None
            raise
        if req.caller.id not in {m.id for m in view.members or []}:
            raise ChatError(ErrorCode.NOT_FOUND, "room not found")
        try:
            if req.level is None:
                stored = await self._store.level(req.room, req.caller.id)
                if stored is None:
                    return NotifyLevelReply(room=req.room, level=default_level(req.room),
                                            default=True)
                return NotifyLevelReply(room=req.room, level=stored)
            await self._store.set_level(req.room, req.caller.id, req.level)
        except DB_UNAVAILABLE:
            raise ChatError(ErrorCode.UNAVAILABLE, "storage unavailable") from None
        return NotifyLevelReply(room=req.room, level=req.level)
