"""chat_gateway.usercap: which sessions the per-user connection cap closes."""

from __future__ import annotations

from chat_contract.bus import SessionEntry
from chat_gateway.usercap import over_cap


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
