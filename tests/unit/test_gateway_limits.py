"""chat_gateway.limits: the send token bucket, buckets per key (user lookups)
and the abuse strike counter."""

from __future__ import annotations

import pytest

from chat_gateway.limits import KeyedBuckets, StrikeCounter, TokenBucket


def test_token_bucket_burst_then_rate() -> None:
    bucket = TokenBucket(rate=10, burst=20, now=0.0)
    assert all(bucket.take(now=0.0) for _ in range(20))
    assert not bucket.take(now=0.0)
    assert bucket.retry_after() == pytest.approx(0.1)
    assert bucket.take(now=0.1) and not bucket.take(now=0.1)
    assert sum(bucket.take(now=100.0) for _ in range(30)) == 20  # refills to the burst only


def test_keyed_buckets_limit_each_key_and_forget_the_oldest() -> None:
    b = KeyedBuckets(rate=2.0, burst=3, max_keys=2)
    assert [b.take("u1", now=0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert b.take("u1", now=0.0) == pytest.approx(0.5)  # out: half a second to the next
    assert b.take("u2", now=0.0) == 0.0  # another user has their own
    assert b.take("u1", now=0.5) == 0.0
    b.take("u3", now=0.5)  # a third key: u2, the least recently used, is forgotten
    assert set(b.buckets) == {"u1", "u3"}


def test_strikes_trip_past_the_limit_within_the_window() -> None:
    s = StrikeCounter(3, 10.0)
    assert [s.strike(now=t) for t in (0, 1, 2)] == [False, False, False]
    assert s.strike(now=3)
    spaced = StrikeCounter(3, 10.0)
    assert not any(spaced.strike(now=t * 4.0) for t in range(20))  # never 4 within 10 s
    assert not any(StrikeCounter(0, 1.0).strike(now=0) for _ in range(100))  # 0 = off
