"""``svc.attachments.*`` (uploads' metadata, README "Attachments") and the
:class:`AttachmentReaper`, which removes attachments' bytes when they must go.

Refusals (docs/protocol.md §5, §3.3, §11 "Attachments"):

- upload (``check``, ``register``): a room the caller may not see →
  ``not_found``; a room seen but not joined (a public room), an archived
  room → ``forbidden``; the caller's uploads over the per-user quota
  (``CHAT_ATTACHMENT_QUOTA_BYTES``) → ``too_large``;
- ``claim`` (a ``send`` with ``attachments``): an id that is not an upload
  of the caller (unknown, or someone else's: the same answer) →
  ``forbidden``; the caller's upload to another room → ``bad_request``;
  an upload another message already carries → ``conflict``;
- ``get`` (a download): an unknown id, a room the caller is not a member of,
  someone else's upload not yet sent, a deleted message's → ``not_found``.

What survives crashes: a deleted message's attachments go with its text
(the erasure queue, ``history.erasures``, in the transaction that stores
the delete: erasure.py calls :meth:`AttachmentReaper.drop_deleted` before
dequeuing, so a crash retries it). Uploads never attached (or claimed by a
send whose publish failed and was never retried) are collected after
``CHAT_ATTACHMENT_UNATTACHED_TTL`` by one instance at a time (a PostgreSQL
advisory lock), every ``CHAT_HISTORY_ATTACHMENT_SWEEP`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from nats.js import JetStreamContext
from nats.js.object_store import ObjectStore

from chat_contract import limits
from chat_contract.bus import (
    AttachmentRef,
    AttachmentView,
    ClaimReply,
    ClaimRequest,
    UploadAllowance,
    UploadCheck,
    UploadRecord,
)
from chat_contract.errors import ChatError, ErrorCode
from chat_contract.events import User
from chat_kit import objects
from chat_kit.logs import event

from . import metrics
from . import room_rules as rules
from .attachments_store import AttachmentsStore, ClaimRefused, QuotaExceeded, Row
from .records import format_ts
from .room_rules import bad_request, forbidden, not_found
from .rooms_context import RoomsContext
from .troubles import Troubles

log = logging.getLogger("chat_history.attachments")
_SWEEP_BATCH = 100


def _view(row: Row) -> AttachmentView:
    return AttachmentView(attachment=row.attachment, room=row.room, owner=row.owner,
                          created_at=format_ts(row.created_at), thumb=row.thumb,
                          msg_id=row.msg_id)


class AttachmentEndpoints:
    def __init__(self, ctx: RoomsContext, store: AttachmentsStore, quota: int) -> None:
        self._ctx = ctx
        self._store = store
        self._quota = quota

    async def _uploader(self, caller: User, room: str) -> None:
        rules.check_room_id(room)
        s = await self._ctx.visible(room, caller.id)
        if not rules.is_insider(s, caller.id):
            raise forbidden("not a member of this room")
        if s.room.archived:
            raise forbidden(f"room {room} is archived (read-only)")

    async def check(self, req: UploadCheck) -> UploadAllowance:
        await self._uploader(req.caller, req.room)
        used = await self._store.used(req.caller.id)
        return UploadAllowance(left=max(0, self._quota - used))

    async def register(self, req: UploadRecord) -> AttachmentView:
        a = req.attachment
        if not a.id or len(a.id) > limits.ATTACHMENT_ID_MAX or a.size < 0 or (
                len(a.name) > limits.ATTACHMENT_NAME_MAX):
            raise bad_request("invalid attachment")
        await self._uploader(req.caller, req.room)
        try:
            row = await self._store.register(req.caller.id, req.room, a, req.thumb,
                                             self._quota)
        except QuotaExceeded as exc:
            raise ChatError(ErrorCode.TOO_LARGE,
                            f"storage quota exceeded: {exc.used} of {self._quota} bytes"
                            " used") from None
        return _view(row)

    async def claim(self, req: ClaimRequest) -> ClaimReply:
        rules.check_room_id(req.room)
        if not req.ids or len(req.ids) > limits.ATTACHMENTS_PER_MESSAGE_MAX or len(
                set(req.ids)) != len(req.ids):
            raise bad_request("attachments: 1 to "
                              f"{limits.ATTACHMENTS_PER_MESSAGE_MAX} distinct ids")
        if req.release:
            await self._store.release(req.caller.id, req.ids, req.msg_id)
            return ClaimReply(msg_id=req.msg_id, attachments=[])
        s = await self._ctx.visible(req.room, req.caller.id)
        if not rules.is_insider(s, req.caller.id):
            raise forbidden("not a member of this room")
        try:
            msg_id, files = await self._store.claim(req.caller.id, req.room, req.ids,
                                                    req.msg_id, req.key)
        except ClaimRefused as exc:
            if exc.reason == "room":
                raise bad_request(f"attachment {exc.id} was uploaded to another room") from None
            if exc.reason == "attached":
                raise ChatError(ErrorCode.CONFLICT,
                                f"attachment {exc.id} is already attached") from None
            raise forbidden(f"attachment {exc.id} is not an upload of yours") from None
        return ClaimReply(msg_id=msg_id, attachments=files)

    async def get(self, req: AttachmentRef) -> AttachmentView:
        unknown = not_found("unknown attachment")
        if not req.id or len(req.id) > limits.ATTACHMENT_ID_MAX:
            raise unknown
        row = await self._store.get(req.id)
        if row is None or row.gone or (row.msg_id is None and row.owner != req.caller.id):
            raise unknown
        try:
            s = await self._ctx.visible(row.room, req.caller.id)
        except ChatError as exc:
            if exc.code == ErrorCode.NOT_FOUND:
                raise unknown from None
            raise
        if not rules.is_insider(s, req.caller.id):
            raise unknown
        return _view(row)


class AttachmentReaper:
    """Removes attachments' objects and rows: a deleted message's (called by
    the stream eraser), and the expired (a periodic sweep)."""

    def __init__(self, js: JetStreamContext, store: AttachmentsStore, *, ttl: float,
                 sweep: float, troubles: Troubles) -> None:
        self._js = js
        self._store = store
        self._ttl = ttl
        self._sweep = sweep
        self._troubles = troubles
        self._bucket: ObjectStore | None = None
        self._task: asyncio.Task[None] | None = None
        self.collected = 0  # uploads removed by the sweep (tests, operators)

    async def open(self, replicas: int) -> None:
        """Create the CHAT_ATTACHMENTS bucket when missing (this service owns it)."""
        self._bucket = await objects.open_bucket(self._js, replicas=replicas)

    async def _remove(self, found: list[tuple[str, str | None]]) -> None:
        assert self._bucket is not None
        for attachment_id, thumb in found:
            await objects.delete(self._js, self._bucket, attachment_id)
            if thumb is not None:
                await objects.delete(self._js, self._bucket, attachment_id + ".thumb")
        if found:
            await self._store.forget([i for i, _ in found])

    async def drop_deleted(self, room: str, msg_id: str) -> None:
        """The attachments of ``msg_id`` if it is deleted (raises to be retried)."""
        found = await self._store.of_deleted(room, msg_id)
        if found:
            await self._remove(found)
            metrics.ATTACHMENTS_REMOVED.labels("deleted").inc(len(found))
            event(log, "deleted message's attachments removed", room=room,
                  count=len(found))

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="attachments-sweep")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def sweep(self) -> int:
        """One sweep, if no other instance is sweeping: how many were removed."""
        removed = 0
        async with self._store.sweep_lock() as mine:
            if not mine:
                return 0
            while True:
                found = await self._store.expired(self._ttl, _SWEEP_BATCH)
                await self._remove(found)
                metrics.ATTACHMENTS_REMOVED.labels("expired").inc(len(found))
                removed += len(found)
                if len(found) < _SWEEP_BATCH:
                    break
        self.collected += removed
        return removed

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._sweep)
            try:
                removed = await self.sweep()
            except Exception as exc:  # database or NATS away: next time
                self._troubles.failing("sweep", "collecting expired uploads failed", exc)
                continue
            self._troubles.recovered("sweep")
            if removed:
                event(log, "expired uploads collected", count=removed)
