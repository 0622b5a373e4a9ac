"""Who is in which room: the live entries and the announcements, without I/O.

Two KV buckets are folded here by their watchers:

* live (``PRESENCE``): one key ``<room>.<user>.<session>`` per connection in a
  room, put by gateways, expiring by TTL;
* announced (``PRESENCE_ANNOUNCED``): one key ``<room>.<user>`` per user whose
  ``join`` has been published and whose ``leave`` has not.

A user is present in a room while at least one live key exists. The leader
compares the two views per (room, user) — :meth:`PresenceState.diff` — and
publishes the difference (see :mod:`.service`).
"""

from __future__ import annotations

from typing import Literal

from chat_contract.events import User

Pair = tuple[str, str]  # (room, user id)
MAX_TOMBSTONES = 100_000


def split_live_key(key: str) -> tuple[str, str, str] | None:
    parts = key.split(".")
    if len(parts) != 3 or not all(parts):
        return None
    return parts[0], parts[1], parts[2]


def split_announced_key(key: str) -> Pair | None:
    parts = key.split(".")
    if len(parts) != 2 or not all(parts):
        return None
    return parts[0], parts[1]


def announced_key(pair: Pair) -> str:
    return f"{pair[0]}.{pair[1]}"


class PresenceState:
    __slots__ = ("sessions", "rooms", "users", "announced", "tombstones", "_live")

    def __init__(self) -> None:
        # (room, user) → its live sessions; room → present users.
        self.sessions: dict[Pair, set[str]] = {}
        self.rooms: dict[str, dict[str, User]] = {}
        # user → the number of rooms the user is present in (on any gateway):
        # "online anywhere" for notification-service, O(1) per asked user.
        self.users: dict[str, int] = {}
        # (room, user) → (KV revision of the announcement, the user announced).
        self.announced: dict[Pair, tuple[int, User]] = {}
        # (room, user) → revision of its announcement's delete marker: the
        # expected last revision of the next join's write (bounded; a pair
        # without one costs a retry, not an error).
        self.tombstones: dict[Pair, int] = {}
        # Count of live (room, user, session) entries, kept as they change: the
        # watcher reads it per KV entry, so a sum over every pair would cost
        # O(pairs) per heartbeat (490 µs at 20k keys, docs/scaling.md).
        self._live = 0

    # --- live -------------------------------------------------------------

    def put_live(self, room: str, user: User, session: str) -> Pair:
        pair = (room, user.id)
        sessions = self.sessions.get(pair)
        if sessions is None:
            sessions = self.sessions[pair] = set()
            self.users[user.id] = self.users.get(user.id, 0) + 1
        if session not in sessions:
            sessions.add(session)
            self._live += 1
        self.rooms.setdefault(room, {})[user.id] = user
        return pair

    def drop_live(self, room: str, user_id: str, session: str) -> Pair:
        pair = (room, user_id)
        sessions = self.sessions.get(pair)
        if sessions is not None and session in sessions:
            sessions.discard(session)
            self._live -= 1
            if not sessions:
                del self.sessions[pair]
                left = self.users.get(user_id, 0) - 1
                if left > 0:
                    self.users[user_id] = left
                else:
                    self.users.pop(user_id, None)
                users = self.rooms.get(room)
                if users is not None:
                    users.pop(user_id, None)
                    if not users:
                        del self.rooms[room]
        return pair

    def present(self, pair: Pair) -> User | None:
        users = self.rooms.get(pair[0])
        return users.get(pair[1]) if users is not None else None

    def members(self, room: str) -> list[User]:
        users = self.rooms.get(room)
        if not users:
            return []
        return sorted(users.values(), key=lambda u: (u.name.lower(), u.id))

    def online(self, user_id: str) -> bool:
        """Present in some room, through any connection on any gateway."""
        return user_id in self.users

    def live_entries(self) -> int:
        return self._live

    # --- announced ----------------------------------------------------------

    def set_announced(self, pair: Pair, revision: int, user: User) -> None:
        self.announced[pair] = (revision, user)
        self.tombstones.pop(pair, None)

    def drop_announced(self, pair: Pair, revision: int = 0) -> None:
        self.announced.pop(pair, None)
        if revision:
            if pair not in self.tombstones and len(self.tombstones) >= MAX_TOMBSTONES:
                del self.tombstones[next(iter(self.tombstones))]
            self.tombstones[pair] = max(revision, self.tombstones.get(pair, 0))

    # --- the difference -----------------------------------------------------

    def diff(self, pair: Pair) -> tuple[Literal["join", "leave"], User, int] | None:
        """What to publish for ``pair``: ``join`` (present, not announced),
        ``leave`` (announced, gone; with the announcement's revision), or None."""
        user = self.present(pair)
        announced = self.announced.get(pair)
        if user is not None and announced is None:
            return "join", user, 0
        if user is None and announced is not None:
            return "leave", announced[1], announced[0]
        return None

    def all_pairs(self) -> set[Pair]:
        return set(self.sessions) | set(self.announced)
