"""Per-connection limits as pure logic (no I/O), so they are unit-testable."""

from __future__ import annotations

import time


class TokenBucket:
    """``rate`` tokens per second, holding at most ``burst``."""

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: int, now: float | None = None) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.stamp = time.monotonic() if now is None else now

    def take(self, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def retry_after(self) -> float:
        return max(0.0, (1.0 - self.tokens) / self.rate)


class StrikeCounter:
    """Repeated abuse: more than ``limit`` strikes within ``window`` seconds.

    A strike is a frame the server refused as the client's fault: malformed or
    invalid (``bad_request``), over a limit (``rate_limited``, ``too_large``),
    or sent before authenticating. One mistake costs nothing; a client that
    keeps hammering is closed with 1008. ``limit`` 0 turns it off.
    """

    __slots__ = ("limit", "window", "stamps")

    def __init__(self, limit: int, window: float) -> None:
        self.limit = limit
        self.window = window
        self.stamps: list[float] = []

    def strike(self, now: float | None = None) -> bool:
        """Count one strike; True once the limit is exceeded."""
        if self.limit <= 0:
            return False
        now = time.monotonic() if now is None else now
        stamps = self.stamps
        stamps.append(now)
        cutoff = now - self.window
        if stamps[0] < cutoff:
            self.stamps = stamps = [t for t in stamps if t >= cutoff]
        return len(stamps) > self.limit


class KeyedBuckets:
    """A :class:`TokenBucket` per key (a user id), at most ``max_keys`` kept:
    the least recently used key is forgotten first (it comes back full)."""

    __slots__ = ("rate", "burst", "max_keys", "buckets")

    def __init__(self, rate: float, burst: int, max_keys: int = 10_000) -> None:
        self.rate, self.burst, self.max_keys = rate, burst, max_keys
        self.buckets: dict[str, TokenBucket] = {}

    def take(self, key: str, now: float | None = None) -> float:
        """0.0 when allowed, else the seconds until the next token."""
        bucket = self.buckets.pop(key, None)
        if bucket is None:
            bucket = TokenBucket(self.rate, self.burst, now)
            if len(self.buckets) >= self.max_keys:
                del self.buckets[next(iter(self.buckets))]
        self.buckets[key] = bucket  # most recently used last
        return 0.0 if bucket.take(now) else max(bucket.retry_after(), 0.001)
