"""What the other services know, asked over NATS and cached briefly.

* a DM room's members: history-service ``svc.rooms.get`` asked as the sender
  (a member, so the room is visible to it), cached ``CHAT_NOTIFY_CACHE_TTL``;
* users' names: auth-service ``svc.auth.users``, cached likewise;
* a user's blocked set: history-service ``svc.rooms.blocks``, cached likewise
  (a block takes effect here within the TTL);
* who is online anywhere: presence-service ``svc.presence.online``, never
  cached (asked per record, right before sending).

A service that does not answer raises :class:`~chat_contract.errors.ChatError`
``unavailable``: the record is handed back and retried later.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Generic, TypeVar

from nats.aio.client import Client as NATS

from chat_contract import limits, rpc
from chat_contract.bus import BlocksRequest, OnlineRequest, RoomRef, RoomView, UsersRequest
from chat_contract.errors import ChatError, ErrorCode
from chat_contract.events import User
from chat_kit import bus

K = TypeVar("K")
V = TypeVar("V")
CACHE_MAX = 10_000
# Refusals that mean "this caller may not see it", not "try again".
REFUSALS = (ErrorCode.NOT_FOUND, ErrorCode.FORBIDDEN)


class TtlCache(Generic[K, V]):
    """A small time-bounded cache (at most ``size`` entries; full → emptied)."""

    def __init__(self, ttl: float, size: int = CACHE_MAX) -> None:
        self.ttl = ttl
        self.size = size
        self._items: dict[K, tuple[float, V]] = {}

    def get(self, key: K) -> V | None:
        item = self._items.get(key)
        if item is None:
            return None
        if item[0] < time.monotonic():
            del self._items[key]
            return None
        return item[1]

    def put(self, key: K, value: V) -> None:
        if self.ttl <= 0:
            return
        if len(self._items) >= self.size and key not in self._items:
            self._items.clear()  # simple and bounded; the next lookups refill it
        self._items[key] = (time.monotonic() + self.ttl, value)

    def drop(self, key: K) -> None:
        self._items.pop(key, None)


def chunks(items: Sequence[str], size: int = limits.USERS_LOOKUP_MAX) -> Iterable[list[str]]:
    for start in range(0, len(items), size):
        yield list(items[start:start + size])


class Directory:
    def __init__(self, nc: NATS, timeout: float, ttl: float) -> None:
        self._nc = nc
        self._timeout = timeout
        self._members: TtlCache[str, list[User]] = TtlCache(ttl)
        self._names: TtlCache[str, User] = TtlCache(ttl)
        self._blocks: TtlCache[str, frozenset[str]] = TtlCache(ttl)

    async def room(self, caller: User, room: str) -> RoomView:
        """The room with its members, as ``caller`` may see it (not cached:
        the level endpoint's membership check)."""
        reply = await bus.request(self._nc, rpc.ROOMS_GET, RoomRef(caller=caller, room=room),
                                  self._timeout)
        return reply.room

    async def dm_members(self, room: str, sender: User) -> list[User]:
        """The members of DM ``room`` (empty if the sender may not see it)."""
        cached = self._members.get(room)
        if cached is not None:
            return cached
        try:
            view = await self.room(sender, room)
        except ChatError as exc:
            if exc.code not in REFUSALS:
                raise
            return []
        members = [User(id=m.id, name=m.name) for m in view.members or []]
        self._members.put(room, members)
        return members

    async def names(self, ids: Iterable[str]) -> dict[str, User]:
        """The users of ``ids`` that exist, by id."""
        found: dict[str, User] = {}
        missing: list[str] = []
        for user_id in dict.fromkeys(ids):
            user = self._names.get(user_id)
            if user is None:
                missing.append(user_id)
            else:
                found[user_id] = user
        for part in chunks(missing):
            reply = await bus.request(self._nc, rpc.AUTH_USERS, UsersRequest(ids=part),
                                      self._timeout)
            for user in reply.users:
                self._names.put(user.id, user)
                found[user.id] = user
        return found

    def learn(self, users: Iterable[User]) -> None:
        """Names seen elsewhere (a DM's members): no lookup needed for them."""
        for user in users:
            self._names.put(user.id, user)

    async def blocked(self, user: User) -> frozenset[str]:
        """The ids ``user`` blocked."""
        cached = self._blocks.get(user.id)
        if cached is not None:
            return cached
        reply = await bus.request(self._nc, rpc.ROOMS_BLOCKS, BlocksRequest(caller=user),
                                  self._timeout)
        blocked = frozenset(reply.blocked)
        self._blocks.put(user.id, blocked)
        return blocked

    async def online(self, ids: Sequence[str]) -> set[str]:
        """Which of ``ids`` have a live presence entry anywhere."""
        online: set[str] = set()
        for part in chunks(list(dict.fromkeys(ids))):
            reply = await bus.request(self._nc, rpc.PRESENCE_ONLINE, OnlineRequest(users=part),
                                      self._timeout)
            online.update(reply.online)
        return online
