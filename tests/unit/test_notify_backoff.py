"""chat_notify.backoff: the retry schedule (exponential, full jitter) and what is retried."""

from __future__ import annotations

import random

import pytest

from chat_notify.backoff import ceiling, delay, retry_after, verdict


def test_ceiling_doubles_from_base_up_to_the_cap() -> None:
    assert [ceiling(n, 0.5, 30.0) for n in range(1, 9)] == [
        0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert ceiling(10_000, 0.5, 30.0) == 30.0  # no overflow however many attempts
    with pytest.raises(ValueError):
        ceiling(0, 0.5, 30.0)


def test_full_jitter_is_uniform_between_zero_and_the_ceiling() -> None:
    assert delay(3, 0.5, 30.0, rand=lambda: 0.0) == 0.0
    assert delay(3, 0.5, 30.0, rand=lambda: 0.5) == 1.0
    assert delay(3, 0.5, 30.0, rand=lambda: 0.999999) == pytest.approx(2.0, abs=1e-5)
    rng = random.Random(7)
    waits = [delay(4, 0.5, 30.0, rand=rng.random) for _ in range(2000)]
    assert all(0.0 <= w <= 4.0 for w in waits)
    # Spread over the whole range (not clustered at the ceiling like "equal jitter").
    assert min(waits) < 0.1 and max(waits) > 3.9
    assert 1.8 < sum(waits) / len(waits) < 2.2


@pytest.mark.parametrize(("status", "expected"), [
    (200, "delivered"), (202, "delivered"), (204, "delivered"),
    (None, "retry"), (429, "retry"), (500, "retry"), (502, "retry"), (503, "retry"),
    (400, "refused"), (401, "refused"), (403, "refused"), (404, "refused"), (410, "refused"),
    (301, "refused"), (302, "refused"),
])
def test_what_is_retried(status: int | None, expected: str) -> None:
    assert verdict(status) == expected


def test_retry_after_in_seconds_capped() -> None:
    assert retry_after("3", 30.0) == 3.0
    assert retry_after(" 2.5 ", 30.0) == 2.5
    assert retry_after("120", 30.0) == 30.0
    for value in (None, "", "soon", "-1", "nan", "Wed, 21 Oct 2015 07:28:00 GMT"):
        assert retry_after(value, 30.0) is None
