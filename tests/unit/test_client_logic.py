"""chat_client's pure logic: backoff schedule, close-code policy, gap detection, dedupe."""

from __future__ import annotations

import random

from chat_client.logic import Backoff, CloseAction, Deduper, Gap, RoomTracker, close_action
from chat_contract.events import Message, ReactionEvent, User

U = User("u1", "alice")


def msg(seq: int, prev: int, msg_id: str = "", room: str = "r") -> Message:
    return Message(room=room, msg_id=msg_id or f"m{seq}", seq=seq, prev_seq=prev, sender=U,
                   ts="2026-01-01T00:00:00Z", text="x")


def test_backoff_is_full_jitter_under_an_exponential_cap() -> None:
    b = Backoff(base=0.5, cap=8.0, rng=random.Random(7))
    assert [b.ceiling(n) for n in range(7)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    delays = [b.next_delay() for _ in range(200)]
    assert all(0.0 <= d <= b.ceiling(n) for n, d in enumerate(delays))
    assert len(set(delays)) == 200  # jittered, not a fixed schedule
    assert max(delays[10:]) > 4.0  # spread over the whole range once capped
    b.reset()
    assert b.attempt == 0 and b.next_delay() <= 0.5
    assert Backoff(rng=random.Random(1)).ceiling(10_000) == 15.0  # no overflow


def test_close_codes() -> None:
    for code in (1001, 1006, 1011, 1012, 1013, None):
        assert close_action(code) is CloseAction.RECONNECT
    assert close_action(4401) is CloseAction.REFRESH_AND_RECONNECT
    for code in (1000, 1008, 1009, 4403, 4409, 4000):
        assert close_action(code) is CloseAction.STOP


def test_gap_detection() -> None:
    t = RoomTracker()
    assert t.gap_before(msg(5, 4)) is None  # a room not joined yet: nothing held
    t.joined("r", 4)
    assert t.gap_before(msg(5, 4)) is None
    t.advance(msg(5, 4))
    assert t.last_seq["r"] == 5
    assert t.gap_before(msg(9, 8)) == Gap("r", 5, 9)  # 6..8 missing
    assert t.is_old(msg(5, 4)) and t.is_old(msg(3, 2)) and not t.is_old(msg(6, 5))
    assert t.gap_before(msg(6, 2)) is None  # prev_seq below what is held: no gap
    t.joined("r", 3)  # never goes back
    assert t.last_seq["r"] == 5
    t.forget("r")
    assert t.gap_before(msg(9, 8)) is None


def test_dedupe_by_msg_id_and_seq() -> None:
    d = Deduper(size=3)
    assert d.first_time(msg(1, 0, "a"))
    assert not d.first_time(msg(1, 0, "a"))
    assert d.first_time(msg(2, 1, "a"))  # an edit of a: same msg_id, new seq
    react = ReactionEvent(room="r", msg_id="a", seq=3, prev_seq=2, user=U, emoji="👍", on=True,
                          ts="2026-01-01T00:00:00Z")
    assert d.first_time(react) and not d.first_time(react)
    assert d.first_time(msg(1, 0, "a", room="other"))  # another room's seq 1
    assert d.first_time(msg(1, 0, "a"))  # forgotten past the size bound
