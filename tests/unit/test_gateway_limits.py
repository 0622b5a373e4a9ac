"""chat_gateway.limits: the send token bucket (the strike counter: test_hardening_pure)."""

from __future__ import annotations

import pytest

from chat_gateway.limits import TokenBucket


def test_token_bucket_burst_then_rate() -> None:
    bucket = TokenBucket(rate=10, burst=20, now=0.0)
    assert all(bucket.take(now=0.0) for _ in range(20))
    assert not bucket.take(now=0.0)
    assert bucket.retry_after() == pytest.approx(0.1)
    assert bucket.take(now=0.1) and not bucket.take(now=0.1)
    assert sum(bucket.take(now=100.0) for _ in range(30)) == 20  # refills to the burst only
