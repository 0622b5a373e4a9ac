"""``svc.history.messages``: a page of a room's history, fresh as of the request.

Request ``HistoryRequest`` → reply ``HistoryReply`` (chat_contract.bus). Before
reading PostgreSQL the handler waits until storage covers every stream message
the answer must include (see :mod:`.freshness`), so a read right after a send
sees the send; if storage does not catch up within the configured timeout the
answer is ``unavailable`` rather than a page with a hole in it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

import asyncpg
from nats.js import JetStreamContext

from chat_contract.bus import HistoryReply, HistoryRequest
from chat_contract.errors import ChatError, ErrorCode
from chat_contract.limits import MSG_ID_MAX, SEQ_MAX
from chat_contract.rooms import is_valid_room_id
from chat_kit.db import DB_UNAVAILABLE

from . import metrics
from .config import MAX_LIMIT
from .extras_store import ExtrasStore
from .freshness import CommitTrackers, last_room_seq
from .store import MessageStore


def validate(req: HistoryRequest) -> None:
    """Reject what no page can answer (docs/protocol.md §8: bad bounds → bad_request)."""
    if not is_valid_room_id(req.room):
        raise ChatError(ErrorCode.BAD_REQUEST, "invalid room id")
    if not 1 <= req.limit <= MAX_LIMIT:
        raise ChatError(ErrorCode.BAD_REQUEST, f"limit must be 1-{MAX_LIMIT}")
    for name, value in (("before", req.before), ("after", req.after), ("min_seq", req.min_seq)):
        if value is not None and not 0 <= value <= SEQ_MAX:
            raise ChatError(ErrorCode.BAD_REQUEST, f"{name} must be between 0 and {SEQ_MAX}")


def required_seq(req: HistoryRequest, room_last: int) -> int:
    """The stream sequence storage must have reached for this answer to be complete.

    With ``before`` only messages below it matter, so the wait stops there.
    """
    target = max(req.min_seq, room_last)
    if req.before is not None:
        target = min(target, req.before - 1)
    return target


# Who may read a room: raises ChatError (forbidden) or returns the reader's
# blocked user ids, whose events the page leaves out (history-service rooms).
ReadAccess = Callable[[str, str], Awaitable[list[str]]]


class HistoryApi:
    def __init__(self, js: JetStreamContext, store: MessageStore, trackers: CommitTrackers,
                 catchup_timeout: float, access: ReadAccess | None = None,
                 extras: ExtrasStore | None = None) -> None:
        self._js = js
        self._access = access
        self._store = store
        # Reactions and thread info on a reader's items, thread pages (None: neither).
        self._extras = extras
        self._trackers = trackers
        self._catchup_timeout = catchup_timeout
        # chat_kit runs each request in its own task; counted so stop can wait for them.
        self._active = 0
        self._idle = asyncio.Event()
        self._idle.set()

    async def messages(self, req: HistoryRequest) -> HistoryReply:
        self._active += 1
        self._idle.clear()
        try:
            return await self._messages(req)
        finally:
            self._active -= 1
            if self._active == 0:
                self._idle.set()

    async def wait_idle(self, timeout: float) -> None:
        """Let requests in flight finish (once the endpoint stopped taking new ones)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout)

    async def _messages(self, req: HistoryRequest) -> HistoryReply:
        validate(req)
        hidden: list[str] = []
        if req.user is not None and self._access is not None:
            hidden = await self._access(req.room, req.user)
        await self._catch_up(req)
        extras = self._extras
        try:
            if req.thread is not None:
                if extras is None or not 1 <= len(req.thread) <= MSG_ID_MAX or (
                        "\x00" in req.thread) or (
                        await extras.message(req.room, req.thread)) is None:
                    raise ChatError(ErrorCode.NOT_FOUND, "unknown message")
                messages, has_more = await extras.thread_page(
                    req.room, req.thread, before=req.before, after=req.after,
                    limit=req.limit, hidden=hidden)
            else:
                messages, has_more = await self._store.page(
                    req.room, before=req.before, after=req.after, limit=req.limit,
                    exclude=hidden)
            # A reader's items show reactions and thread info as that reader
            # sees them; a trusted read (gap repair: live events) shows neither.
            if req.user is not None and extras is not None:
                messages = await extras.decorate(req.room, messages, req.user, hidden)
        except (*DB_UNAVAILABLE, asyncpg.QueryCanceledError):
            # The consumer logs the outage once; each request only counts it
            # (a statement over CHAT_HISTORY_DB_TIMEOUT is cancelled: the same).
            raise ChatError(ErrorCode.UNAVAILABLE, "history store unavailable") from None
        return HistoryReply(messages=messages, has_more=has_more)

    async def ensure_fresh(self, room: str, min_seq: int = 0) -> None:
        """Return once storage holds every stream event of ``room`` (and up to
        ``min_seq``); ChatError ``unavailable`` if it cannot catch up in time.
        For decisions that must see a message sent a moment ago (edit, delete)."""
        await self._catch_up(HistoryRequest(room=room, min_seq=min_seq))

    async def stream_last(self, room: str) -> int:
        """The room's last sequence in the stream (0 if the stream holds none of it)."""
        return await last_room_seq(self._js, room, self._trackers.layout)

    async def _catch_up(self, req: HistoryRequest) -> None:
        started = time.perf_counter()
        # A page entirely below the known floor needs no stream lookup at all.
        tracker = self._trackers.for_room(req.room)
        if req.before is not None and req.before - 1 <= tracker.floor:
            return
        try:
            room_last = await last_room_seq(self._js, req.room, self._trackers.layout)
        except Exception:
            raise ChatError(ErrorCode.UNAVAILABLE, "chat stream unavailable") from None
        target = required_seq(req, room_last)
        if target <= 0:
            return
        caught_up = await tracker.wait_for(target, self._catchup_timeout)
        metrics.CATCHUP_SECONDS.observe(time.perf_counter() - started)
        if not caught_up:
            metrics.CATCHUP_TIMEOUTS.inc()
            raise ChatError(ErrorCode.UNAVAILABLE, "history is catching up, retry")
