"""chat_gateway.overload: the connection caps and the outbound budget, pure."""

from __future__ import annotations

from dataclasses import dataclass, field

from chat_gateway.overload import ConnectionCaps, OutboundBudget
from chat_kit.audit import AuditLimiter


def test_caps_per_address_and_per_gateway() -> None:
    caps = ConnectionCaps(per_address=2, total=3)
    assert caps.open("a") is None and caps.open("a") is None
    assert caps.open("a") == "address connection cap"
    assert caps.open("b") is None
    assert caps.open("c") == "gateway connection cap"
    caps.close("a")
    assert caps.open("c") is None  # a freed place is taken again
    assert (caps.count, caps.by_address) == (3, {"a": 1, "b": 1, "c": 1})
    for address in ("a", "b", "c"):
        caps.close(address)
    assert (caps.count, caps.by_address) == (0, {})


def test_zero_turns_a_cap_off() -> None:
    caps = ConnectionCaps(per_address=0, total=0)
    assert all(caps.open("a") is None for _ in range(1000))


@dataclass(eq=False)
class FakeConn:
    size: int
    closed: bool = False
    cut_for: list[str] = field(default_factory=list)

    def buffered(self) -> int:
        return self.size

    def close_slow(self, why: str = "slow consumer") -> None:
        self.closed = True
        self.cut_for.append(why)


def test_within_the_budget_nobody_is_cut() -> None:
    budget = OutboundBudget(100)
    a, b = FakeConn(40), FakeConn(60)
    assert budget.wrote(a, 40, now=0.0) == [] and budget.wrote(b, 60, now=0.0) == []
    assert budget.total == 100


def test_past_the_budget_the_largest_buffers_go_first() -> None:
    budget = OutboundBudget(100)
    small, big, middle = FakeConn(10), FakeConn(70), FakeConn(30)
    budget.wrote(small, 10, now=0.0)
    budget.wrote(big, 70, now=0.0)
    cut = budget.wrote(middle, 30, now=0.0)  # 110 > 100: cutting the largest is enough
    assert cut == [big] and big.cut_for == ["outbound budget"]
    assert not small.closed and not middle.closed and budget.total == 40
    # A closing socket no longer counts, and removing one forgets it.
    budget.remove(middle)
    assert budget.total == 10


def test_drained_buffers_are_rescanned_before_anyone_is_cut() -> None:
    budget = OutboundBudget(100, rescan=1.0)
    a, b = FakeConn(90), FakeConn(50)
    budget.wrote(a, 90, now=0.0)
    a.size = 0  # the client read it all: the budget does not know yet
    assert budget.wrote(b, 50, now=0.0) == []  # the scan finds 50 in all
    assert budget.total == 50 and not a.closed and not b.closed
    b.size = 150  # really over now, but within the rescan pause: the next write decides
    assert budget.wrote(b, 150, now=0.5) == []
    assert budget.wrote(b, 150, now=1.0) == [b]


def test_zero_budget_is_off() -> None:
    budget = OutboundBudget(0)
    conn = FakeConn(10**9)
    assert budget.wrote(conn, 10**9, now=0.0) == [] and not conn.closed


def test_audit_lines_once_per_key_per_window() -> None:
    throttle = AuditLimiter(window=10.0)
    assert throttle.allow("refused", "1.2.3.4", now=0.0)
    assert not throttle.allow("refused", "1.2.3.4", now=5.0)
    assert throttle.allow("refused", "5.6.7.8", now=5.0)
    assert throttle.allow("other", "1.2.3.4", now=5.0)
    assert throttle.allow("refused", "1.2.3.4", now=10.0)


def test_audit_keys_are_bounded() -> None:
    throttle = AuditLimiter(window=10.0, max_keys=3)
    for i in range(10):
        assert throttle.allow("a", str(i), now=0.0)
    assert len(throttle._last) <= 3
