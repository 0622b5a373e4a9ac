"""When to try a webhook again, without I/O (README "Retries").

Exponential backoff with full jitter (the AWS Architecture Blog's "Exponential
Backoff and Jitter"): before attempt ``n + 1`` wait a uniform random time in
``[0, min(cap, base * 2**(n - 1))]``. Full jitter spreads the retries of many
notifications that failed together (a receiver restarting) instead of
sending them back in synchronized waves.

Which failures are worth another attempt: connection errors and timeouts,
5xx and 429 (too many requests). Any other answer is final: 2xx delivered,
3xx/4xx refused (a receiver that says "bad request" will say it again).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Literal

Verdict = Literal["delivered", "retry", "refused"]


def ceiling(attempt: int, base: float, cap: float) -> float:
    """The upper bound of the wait after failed attempt ``attempt`` (1-based)."""
    if attempt < 1:
        raise ValueError("attempts count from 1")
    # 2**exp grows past any cap quickly; bound the exponent so it never overflows.
    return min(cap, base * 2.0 ** min(attempt - 1, 64))


def delay(attempt: int, base: float, cap: float,
          rand: Callable[[], float] = random.random) -> float:
    """A full-jitter wait after failed attempt ``attempt``: uniform in [0, ceiling]."""
    return rand() * ceiling(attempt, base, cap)


def verdict(status: int | None) -> Verdict:
    """What an HTTP status (None: no answer, a connection error or timeout) means."""
    if status is None or status == 429 or status >= 500:
        return "retry"
    if 200 <= status < 300:
        return "delivered"
    return "refused"


def retry_after(value: str | None, cap: float) -> float | None:
    """A ``Retry-After`` in seconds (the HTTP-date form is ignored), at most ``cap``."""
    if not value:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    if seconds != seconds or seconds < 0:  # NaN or negative
        return None
    return min(seconds, cap)
