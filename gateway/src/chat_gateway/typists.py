"""Typing indicators as pure logic (no I/O): coalescing out, expiry in.

Out (the typist's gateway): per (room, user), at most one ``start`` is
published per :data:`COALESCE` seconds however fast the client repeats it;
a ``start`` that arrives inside the window is sent when the window ends
(trailing edge), carrying how long ago the client sent it. A ``stop`` is
published only if a ``start`` was since the last ``stop``. So one user
costs at most two notices per window and room, whatever the client does.

In (every gateway with local members of the room): the first ``start`` of a
user is relayed, refreshes are not; it lapses :data:`TYPING_TTL` seconds
after the client's last ``start`` unless refreshed, and the lapse is relayed
as ``stop`` (docs/protocol.md §3.4, §8).
"""

from __future__ import annotations

from chat_contract.events import User

COALESCE = 3.0
TYPING_TTL = 6.0

Key = tuple[str, str]  # (room, user id)


class _Typist:
    __slots__ = ("sent_at", "active", "pending", "last_start", "user")

    def __init__(self, user: User) -> None:
        self.sent_at = -COALESCE * 2  # monotonic time of the last published start
        self.active = False  # a start was published and no stop since
        self.pending: float | None = None  # time of a start not yet published
        self.last_start = 0.0
        self.user = user


class Outgoing:
    def __init__(self) -> None:
        self.typists: dict[Key, _Typist] = {}

    def start(self, key: Key, user: User, now: float) -> bool:
        """A client ``start``: True to publish it now; else it waits for the window."""
        t = self.typists.get(key)
        if t is None:
            t = self.typists[key] = _Typist(user)
        t.last_start = now
        if now - t.sent_at >= COALESCE:
            t.sent_at, t.active, t.pending = now, True, None
            return True
        t.pending = now
        return False

    def stop(self, key: Key) -> bool:
        """A client ``stop`` (or its last connection left): True to publish it."""
        t = self.typists.get(key)
        if t is None:
            return False
        # The typist stays: a start right after this stop still waits for the window.
        t.pending = None
        if t.active:
            t.active = False
            return True
        return False

    def due(self, now: float) -> list[tuple[Key, User, float]]:
        """Coalesced starts whose window ended: (key, user, age in s) to publish now.

        Also forgets typists that are idle past both windows."""
        out: list[tuple[Key, User, float]] = []
        for key, t in list(self.typists.items()):
            if t.pending is not None and now - t.sent_at >= COALESCE:
                out.append((key, t.user, now - t.pending))
                t.sent_at, t.active, t.pending = now, True, None
            elif t.pending is None and now - t.sent_at >= COALESCE and (
                    not t.active or now - t.last_start >= TYPING_TTL):
                del self.typists[key]  # receivers expire it by themselves
        return out


class Incoming:
    """Who is typing in one room, as this gateway relays it."""

    __slots__ = ("typing",)

    def __init__(self) -> None:
        self.typing: dict[str, tuple[float, User]] = {}

    def start(self, user: User, now: float, age: float) -> bool:
        """True if this is news (relay ``start``); a refresh only moves the deadline."""
        fresh = user.id not in self.typing
        self.typing[user.id] = (now + TYPING_TTL - max(0.0, age), user)
        return fresh

    def stop(self, user_id: str) -> User | None:
        entry = self.typing.pop(user_id, None)
        return entry[1] if entry is not None else None

    def expired(self, now: float) -> list[User]:
        gone = [uid for uid, (deadline, _) in self.typing.items() if deadline <= now]
        return [self.typing.pop(uid)[1] for uid in gone]
