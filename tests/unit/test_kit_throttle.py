"""chat_kit.throttle: login counters per (user, address), token buckets, audit limiter."""

from __future__ import annotations

import pytest

from chat_contract.errors import ChatError, ErrorCode
from chat_kit.audit import AuditLimiter
from chat_kit.throttle import LoginThrottle, RegistrationThrottle, TokenBuckets


def _fail(t: LoginThrottle, user: str, remote: str | None, now: float) -> None:
    t.failed(user, remote, t.attempt(user, remote, now))


def _refused(t: LoginThrottle, user: str, remote: str | None, now: float) -> float:
    with pytest.raises(ChatError) as exc:
        t.check(user, remote, now)
    assert exc.value.code is ErrorCode.RATE_LIMITED
    assert exc.value.retry_after is not None
    return exc.value.retry_after


def test_failures_from_one_address_do_not_lock_the_owner_out_elsewhere() -> None:
    t = LoginThrottle(per_pair=5, per_address=50, window=300.0, per_user=100)
    for i in range(5):
        _fail(t, "alice", "10.0.0.66", now=i)
    # The guessing pair is refused (case-folded) ...
    assert _refused(t, "ALICE", "10.0.0.66", now=10) == pytest.approx(290.0)
    # ... the owner from another address is not, and succeeds.
    stamp = t.attempt("alice", "10.0.0.1", now=10)
    t.succeeded("alice", "10.0.0.1", stamp)
    t.check("alice", "10.0.0.66", now=300.5)  # the first failure aged out


def test_successes_are_never_counted() -> None:
    t = LoginThrottle(per_pair=2, per_address=3, window=300.0)
    for i in range(500):  # 500 known users from one host
        t.succeeded(f"user{i}", "10.0.0.1", t.attempt(f"user{i}", "10.0.0.1", now=i * 0.01))
    for _ in range(10):  # the same user, again and again
        t.succeeded("user1", "10.0.0.1", t.attempt("user1", "10.0.0.1", now=6))


def test_an_address_spraying_names_is_refused_for_every_name() -> None:
    t = LoginThrottle(per_pair=5, per_address=3, window=60.0)
    for i in range(3):
        _fail(t, f"ghost{i}", "198.51.100.7", now=i)
    _refused(t, "anyone", "198.51.100.7", now=3)
    t.check("anyone", "198.51.100.8", now=3)
    t.check("anyone", None, now=3)  # no address: only its own pair counts


def test_a_name_guessed_from_many_addresses_gets_one_try_per_address() -> None:
    t = LoginThrottle(per_pair=5, per_address=50, window=60.0, per_user=4)
    for i in range(4):
        _fail(t, "bob", f"10.1.0.{i}", now=i)
    _refused(t, "bob", "10.1.0.0", now=5)  # one failure is enough now ...
    t.check("bob", "10.9.9.9", now=5)  # ... but a clean address still may try
    t.check("carol", "10.1.0.0", now=5)  # and other names are not affected


def test_concurrent_guesses_are_counted_up_front() -> None:
    t = LoginThrottle(per_pair=2, per_address=50, window=60.0)
    t.attempt("dave", "10.0.0.5", now=0)
    t.attempt("dave", "10.0.0.5", now=0.1)  # both verifying at once
    _refused(t, "dave", "10.0.0.5", now=0.2)


def test_token_buckets() -> None:
    b = TokenBuckets(rate=0.5, burst=2)
    b.take("a", 0)
    b.take("a", 0)
    assert b.wait("a", 0) == pytest.approx(2.0)
    assert b.wait("b", 0) is None  # per key
    assert b.wait("a", 2.0) is None
    assert TokenBuckets(rate=0, burst=1).wait("a", 0) is None  # off


def test_registration_throttle_per_address_and_global() -> None:
    t = RegistrationThrottle(per_address=2, address_window=60.0, rate=1.0, burst=3)
    t.take("10.0.0.1", now=0)
    t.take("10.0.0.1", now=0)
    with pytest.raises(ChatError) as exc:
        t.take("10.0.0.1", now=0)
    assert exc.value.code is ErrorCode.RATE_LIMITED
    assert exc.value.retry_after == pytest.approx(30.0)
    t.take("10.0.0.2", now=0)  # another address: the global burst's third
    with pytest.raises(ChatError):
        t.take("10.0.0.3", now=0)  # the global bucket is empty
    t.take("10.0.0.3", now=1.0)
    off = RegistrationThrottle(per_address=0, address_window=60.0, rate=0.0, burst=1)
    for _ in range(100):
        off.take("10.0.0.1", now=0)


def test_audit_limiter_one_line_per_key_per_window() -> None:
    a = AuditLimiter(window=10.0)
    assert a.allow("throttled", "k1", now=0)
    assert not a.allow("throttled", "k1", now=5)
    assert a.allow("throttled", "k2", now=5)
    assert a.allow("other", "k1", now=5)
    assert a.allow("throttled", "k1", now=10.5)


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
