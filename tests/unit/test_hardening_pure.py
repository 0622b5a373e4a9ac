"""Pure logic of the hardening limits: abuse strikes, the connection cap's
choice of sessions to close, login throttling windows."""

from __future__ import annotations

import pytest

from chat_contract.bus import SessionEntry
from chat_contract.errors import ChatError, ErrorCode
from chat_gateway.limits import StrikeCounter
from chat_gateway.usercap import over_cap
from chat_kit.throttle import LoginThrottle


def test_strikes_trip_past_the_limit_within_the_window() -> None:
    s = StrikeCounter(3, 10.0)
    assert [s.strike(now=t) for t in (0, 1, 2)] == [False, False, False]
    assert s.strike(now=3)
    spaced = StrikeCounter(3, 10.0)
    assert not any(spaced.strike(now=t * 4.0) for t in range(20))  # never 4 within 10 s
    assert not any(StrikeCounter(0, 1.0).strike(now=0) for _ in range(100))  # 0 = off


def _entry(session: str, opened: int) -> SessionEntry:
    return SessionEntry(user="u_1", session=session, node="gw", opened_ms=opened)


def test_over_cap_closes_the_oldest_others_never_the_new_one() -> None:
    entries = [_entry("s_new", 50), _entry("s_b", 20), _entry("s_a", 10), _entry("s_c", 30)]
    assert over_cap(entries, "s_new", 3) == ["s_a"]
    assert over_cap(entries, "s_new", 2) == ["s_a", "s_b"]
    assert over_cap(entries, "s_new", 4) == []
    assert over_cap(entries, "s_new", 0) == []  # cap off
    # Clock skew: the new session looks oldest, yet it is never the one closed.
    assert over_cap([_entry("s_new", 1), _entry("s_x", 5)], "s_new", 1) == ["s_x"]


def test_login_throttle_per_user_address_pair_and_address() -> None:
    t = LoginThrottle(per_pair=2, per_address=3, window=60.0)
    t.failed("Alice", "10.0.0.1", t.attempt("Alice", "10.0.0.1", now=0))
    t.check("alice", "10.0.0.2", now=1)
    t.failed("ALICE", "10.0.0.1", t.attempt("ALICE", "10.0.0.1", now=1))
    with pytest.raises(ChatError) as exc:
        t.check("alice", "10.0.0.1", now=2)
    assert exc.value.code is ErrorCode.RATE_LIMITED
    assert exc.value.retry_after == pytest.approx(58.0)
    t.check("alice", "10.0.0.9", now=2)  # the pair is locked, not the name
    t.check("alice", "10.0.0.1", now=61)  # the first failure aged out
    for name in ("bob", "carol", "erin"):
        t.failed(name, "10.0.0.1", t.attempt(name, "10.0.0.1", now=62))
    with pytest.raises(ChatError):
        t.check("dave", "10.0.0.1", now=64)  # 3 failures from 10.0.0.1 within 60 s
    t.check("dave", None, now=64)
