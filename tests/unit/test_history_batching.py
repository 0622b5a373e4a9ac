"""The writer's linger policy (chat_history.batching), on a fake clock."""

from __future__ import annotations

import pytest

from chat_history.batching import LINGER_MIN, BatchPolicy


def drive(policy: BatchPolicy, now: float, waiting: int, after: int = 0) -> float:
    """One writer turn at ``now`` with ``waiting`` buffered: the delay it was told,
    then a batch of min(waiting, size) taken at the end of that delay, with
    ``after`` messages arriving while it is written."""
    delay = policy.delay(now, waiting)
    n = min(waiting, policy.size)
    policy.taken(now + delay, n)
    policy.written(after)
    return delay


def test_a_quiet_stream_is_never_kept_waiting() -> None:
    p = BatchPolicy(size=500, linger=0.05, now=0.0)
    t = 0.0
    for _ in range(50):  # one message every 0.3 s: far below LINGER_MIN per linger
        t += 0.3
        assert drive(p, t, 1) == 0.0
    assert not p.busy


def test_a_lone_sender_waiting_for_each_store_never_lingers() -> None:
    # Fast (a message every 2 ms), but each only after the previous one is stored:
    # each batch holds one message and nothing arrives while it is written.
    p = BatchPolicy(size=500, linger=5.0, now=0.0)
    t = 0.0
    for _ in range(200):
        t += 0.002
        assert drive(p, t, 1, after=0) == 0.0
    assert not p.busy


def test_a_busy_stream_lingers_until_one_linger_after_the_previous_batch() -> None:
    p = BatchPolicy(size=500, linger=0.05, now=0.0)
    t = 0.0
    # 2000 msg/s: the first batches go at once while the rate is unknown…
    delays = []
    for _ in range(10):
        t += 0.01
        delays.append(drive(p, t, 20, after=5))
        t += delays[-1]
    assert delays[0] == 0.0
    assert p.busy
    # …then each batch waits for the rest of a linger since the previous one was taken.
    taken_at = t
    assert p.delay(taken_at + 0.01, 20) == pytest.approx(0.04)
    assert p.delay(taken_at + 0.05, 20) == 0.0
    assert p.delay(taken_at + 0.2, 20) == 0.0  # never negative


def test_a_full_batch_or_a_stop_does_not_wait() -> None:
    p = BatchPolicy(size=100, linger=0.05, now=0.0)
    t = 0.0
    for _ in range(10):
        t += 0.01
        drive(p, t, 50, after=10)
    assert p.busy
    assert p.delay(t + 0.001, 99) > 0
    assert p.delay(t + 0.001, 100) == 0.0
    assert p.delay(t + 0.001, 99, closing=True) == 0.0


def test_busy_needs_linger_min_messages_per_linger() -> None:
    # Just above the threshold the stream counts as busy, just below it does not.
    linger = 0.05
    for per_linger, busy in ((LINGER_MIN + 1, True), (LINGER_MIN - 1, False)):
        p = BatchPolicy(size=500, linger=linger, now=0.0)
        t = 0.0
        for _ in range(30):  # one batch of `per_linger` messages every linger
            t += linger
            p.taken(t, per_linger)
            p.written(1)
        assert p.busy is busy, per_linger


def test_a_burst_after_silence_does_not_make_a_stream_busy_at_once() -> None:
    p = BatchPolicy(size=500, linger=0.05, now=0.0)
    t = 0.0
    for _ in range(10):
        t += 1.0
        drive(p, t, 1)
    t += 0.001
    assert drive(p, t, 2, after=0) == 0.0  # two close messages after a quiet spell
    assert not p.busy
