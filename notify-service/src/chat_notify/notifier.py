"""One chat record → its notifications, each delivered or dead-lettered.

The pipeline, cheapest and least time-sensitive first: the candidates
(:func:`.recipients.candidates`: a DM's other member, the mentioned users),
their levels (one query), their names, whether they blocked the sender,
and last, right before sending, whether they are online anywhere
(presence-service). Then every remaining notification is sent at once
(:class:`.webhook.Webhook` bounds the requests in flight).

Returns when every notification of the record is settled; raises when a
service or the database is away (the consumer hands the record back and it
comes again later: nothing was sent for it yet, unless a dead-letter
publish failed after other notifications of it went out — at least once).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable

import msgspec

from chat_contract.bus import ChatRecord
from chat_contract.events import User

from . import metrics, recipients
from .directory import Directory
from .levels import LevelStore
from .payload import notification
from .webhook import Outcome, Webhook

log = logging.getLogger("chat_notify.notifier")

_decoder = msgspec.json.Decoder(ChatRecord)


class BadRecord(ValueError):
    """A payload that is no ChatRecord of its subject's room: never retried."""


def skip(skipped: Iterable[tuple[str, str]]) -> None:
    for _, reason in skipped:
        metrics.SKIPPED.labels(reason).inc()


class Notifier:
    def __init__(self, directory: Directory, levels: LevelStore, webhook: Webhook | None,
                 *, text_max: int, max_age: float) -> None:
        self._dir = directory
        self._levels = levels
        self._webhook = webhook  # None: disabled
        self._text_max = text_max
        self._max_age = max_age

    @staticmethod
    def decode(data: bytes, room: str) -> ChatRecord:
        try:
            record = _decoder.decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise BadRecord(str(exc)) from None
        if record.room != room:
            raise BadRecord(f"record of room {record.room!r} on {room!r}'s subject")
        return record

    async def handle(self, data: bytes, room: str, seq: int,
                     stored_at: float | None = None) -> list[Outcome]:
        """Notify for the record ``data`` stored as ``seq`` in ``room``."""
        record = self.decode(data, room)
        if record.kind != "message":
            return []
        if self._webhook is None:
            metrics.SKIPPED.labels("disabled").inc()
            return []
        if self._max_age and stored_at is not None and time.time() - stored_at > self._max_age:
            metrics.SKIPPED.labels("stale").inc()
            return []
        sender = record.sender
        members: list[User] = []
        if recipients.is_dm(room):
            members = await self._dir.dm_members(room, sender)
            self._dir.learn(members)
        found = recipients.candidates(record, room, members)
        if not found:
            return []
        found, skipped = recipients.by_level(
            found, room, await self._levels.levels(room, list(found)))
        skip(skipped)
        if not found:
            return []
        users = await self._dir.names(found)
        found, skipped = recipients.drop(found, set(found) - set(users), "unknown_user")
        skip(skipped)
        blocks = await asyncio.gather(*(self._dir.blocked(users[u]) for u in found))
        blockers = [u for u, blocked in zip(found, blocks, strict=True) if sender.id in blocked]
        found, skipped = recipients.drop(found, blockers, "blocked")
        skip(skipped)
        if not found:
            return []
        found, skipped = recipients.drop(found, await self._dir.online(list(found)), "online")
        skip(skipped)
        webhook = self._webhook
        results = await asyncio.gather(*(
            webhook.deliver(notification(record, room, seq, users[u], kind, self._text_max),
                            stored_at)
            for u, kind in found.items()), return_exceptions=True)
        outcomes: list[Outcome] = []
        for result in results:  # every one settled; then the first failure, if any
            if isinstance(result, BaseException):
                raise result
            outcomes.append(result)
        return outcomes
