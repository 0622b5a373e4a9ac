"""The client's pure logic, without I/O: backoff schedule, close-code policy,
gap detection and dedupe (unit-tested in tests/unit/test_client_logic.py)."""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import Enum

from chat_contract.events import Message, ReactionEvent, RoomEvent

# docs/protocol.md §4: the close codes after which a client reconnects on its own.
RETRY_CODES = frozenset({1001, 1006, 1011, 1012, 1013})
REFRESH_CODES = frozenset({4401})
FATAL_CODES = frozenset({1008, 4403, 4409})


class CloseAction(Enum):
    RECONNECT = "reconnect"
    REFRESH_AND_RECONNECT = "refresh"
    STOP = "stop"


def close_action(code: int | None) -> CloseAction:
    """What to do after the socket closed with ``code`` (``None``: no close frame, = 1006)."""
    if code is None or code in RETRY_CODES:
        return CloseAction.RECONNECT
    if code in REFRESH_CODES:
        return CloseAction.REFRESH_AND_RECONNECT
    return CloseAction.STOP  # 1000 (we closed), 1008, 1009, 4403, 4409 and anything unknown


@dataclass
class Backoff:
    """Exponential backoff with full jitter: attempt ``n`` (0-based) waits a
    uniform random time in ``[0, min(cap, base * factor**n)]``."""

    base: float = 0.25
    cap: float = 15.0
    factor: float = 2.0
    rng: random.Random = field(default_factory=random.Random)
    attempt: int = 0

    def ceiling(self, attempt: int) -> float:
        return float(min(self.cap, self.base * self.factor ** min(attempt, 64)))

    def next_delay(self) -> float:
        delay = self.rng.uniform(0.0, self.ceiling(self.attempt))
        self.attempt += 1
        return delay

    def reset(self) -> None:
        self.attempt = 0

    def __iter__(self) -> Iterator[float]:
        while True:
            yield self.next_delay()


@dataclass(frozen=True)
class Gap:
    """Events ``after`` < seq < ``before`` of ``room`` are missing."""

    room: str
    after: int
    before: int


class RoomTracker:
    """The last ``seq`` held per room, and what an incoming event means for it.

    ``observe`` answers whether an event is new (deliver it), old (already held:
    drop it) and, for a new one, the gap before it (``prev_seq`` above the last
    seq held) that has to be fetched with ``history`` first.
    """

    def __init__(self) -> None:
        self.last_seq: dict[str, int] = {}

    def joined(self, room: str, last_seq: int) -> None:
        self.last_seq[room] = max(self.last_seq.get(room, 0), last_seq)

    def gap_before(self, event: RoomEvent) -> Gap | None:
        held = self.last_seq.get(event.room)
        if held is None or event.prev_seq <= held:
            return None
        return Gap(event.room, held, event.seq)

    def is_old(self, event: RoomEvent) -> bool:
        held = self.last_seq.get(event.room)
        return held is not None and event.seq <= held

    def advance(self, event: RoomEvent) -> None:
        if event.seq > self.last_seq.get(event.room, 0):
            self.last_seq[event.room] = event.seq

    def forget(self, room: str) -> None:
        self.last_seq.pop(room, None)


def event_key(event: RoomEvent) -> tuple[str, str, str, int]:
    """A room event's identity: a message by ``msg_id`` and ``seq`` (an edit or
    a delete is the same ``msg_id`` at a new ``seq``), a reaction likewise."""
    kind = "m" if isinstance(event, Message) else "r"
    return (event.room, kind, event.msg_id, event.seq)


class Deduper:
    """Remembers the last ``size`` room events delivered; ``first_time`` is
    False for one seen before (a resend, a replay from ``missed`` or a gap fetch
    overlapping the live stream)."""

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self._seen: OrderedDict[tuple[str, str, str, int], None] = OrderedDict()

    def first_time(self, event: Message | ReactionEvent) -> bool:
        key = event_key(event)
        if key in self._seen:
            self._seen.move_to_end(key)
            return False
        self._seen[key] = None
        if len(self._seen) > self.size:
            self._seen.popitem(last=False)
        return True
