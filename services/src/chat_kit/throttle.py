"""Throttling of failed password attempts: sliding windows of failures per key.

Used by auth-service for logins (per username and per client address) and
by history-service for room passwords (per user and room, and per user).

A sliding window of *failed* attempts: once a key has had ``limit`` failures
within ``window`` seconds, further attempts are refused with ``rate_limited``
(HTTP 429 with ``Retry-After``: when the oldest counted failure leaves the
window) before any password is checked — so a guesser gets no answer and
costs no argon2 hash. A success does not clear the counter (it would let an
attacker who owns one account reset the address counter at will); failures
simply age out.

Login usernames are case-folded (usernames are unique case-insensitively), so
unknown and existing users are throttled alike and the 429 tells nothing
about whether a user exists.

Counters live in each replica's memory: with R replicas behind the queue
group a guesser gets at most R× the limit per window — still a bounded, small
number. A shared counter (KV or PostgreSQL) would make it exact at the cost
of a write per failure; not worth it at these limits.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable

from chat_contract.errors import ChatError, ErrorCode

MAX_KEYS = 100_000  # bound on memory under a spray of distinct keys


class FailureWindow:
    """Failure stamps per key within ``window`` seconds; ``limit`` <= 0 turns it off."""

    def __init__(self, limit: int, window: float) -> None:
        self.limit = limit
        self.window = window
        self._stamps: dict[str, deque[float]] = {}

    def _live(self, key: str, now: float) -> deque[float] | None:
        stamps = self._stamps.get(key)
        if stamps is None:
            return None
        cutoff = now - self.window
        while stamps and stamps[0] <= cutoff:
            stamps.popleft()
        if not stamps:
            del self._stamps[key]
            return None
        return stamps

    def retry_after(self, key: str, now: float) -> float | None:
        """Seconds until ``key`` may try again, or None when it may now."""
        if self.limit <= 0:
            return None
        stamps = self._live(key, now)
        if stamps is None or len(stamps) < self.limit:
            return None
        return stamps[-self.limit] + self.window - now

    def fail(self, key: str, now: float) -> None:
        if self.limit <= 0:
            return
        stamps = self._live(key, now)
        if stamps is None:
            if len(self._stamps) >= MAX_KEYS:
                self._stamps.pop(next(iter(self._stamps)))  # the oldest inserted key
            stamps = self._stamps[key] = deque()
        stamps.append(now)
        while len(stamps) > self.limit:
            stamps.popleft()


    def unfail(self, key: str, stamp: float) -> None:
        """Take back a failure counted at ``stamp`` (an attempt counted up front
        that turned out right)."""
        stamps = self._stamps.get(key)
        if stamps is not None and stamp in stamps:
            stamps.remove(stamp)
            if not stamps:
                del self._stamps[key]


def check_windows(checks: Iterable[tuple[FailureWindow, str]], message: str,
                  now: float | None = None) -> None:
    """Raise ``rate_limited`` (with the longest wait) if any (window, key) is over its limit."""
    now = time.monotonic() if now is None else now
    waits = [w for window, key in checks if (w := window.retry_after(key, now)) is not None]
    if waits:
        raise ChatError(ErrorCode.RATE_LIMITED, message, retry_after=max(1.0, max(waits)))


def fail_windows(checks: Iterable[tuple[FailureWindow, str]], now: float | None = None) -> None:
    """Count one failure under every (window, key)."""
    now = time.monotonic() if now is None else now
    for window, key in checks:
        window.fail(key, now)


class LoginThrottle:
    """Failed logins per (case-folded) username and per client address."""

    def __init__(self, per_user: int, per_address: int, window: float) -> None:
        self.users = FailureWindow(per_user, window)
        self.addresses = FailureWindow(per_address, window)

    def _keys(self, username: str, remote: str | None) -> list[tuple[FailureWindow, str]]:
        keys = [(self.users, username.casefold())]
        if remote:
            keys.append((self.addresses, remote))
        return keys

    def check(self, username: str, remote: str | None, now: float | None = None) -> None:
        """Raise ``rate_limited`` if this username or address is over its limit."""
        check_windows(self._keys(username, remote), "too many failed logins, try again later",
                      now)

    def failed(self, username: str, remote: str | None, now: float | None = None) -> None:
        fail_windows(self._keys(username, remote), now)


class PasswordThrottle:
    """Failed password attempts on a resource (a room) per (user, resource) and per user."""

    def __init__(self, per_resource: int, per_user: int, window: float,
                 message: str = "too many wrong passwords, try again later") -> None:
        self.pairs = FailureWindow(per_resource, window)
        self.users = FailureWindow(per_user, window)
        self.message = message

    def _keys(self, user: str, resource: str) -> list[tuple[FailureWindow, str]]:
        # "\x00" never occurs in an id, so (user, resource) pairs cannot collide.
        return [(self.pairs, f"{user}\x00{resource}"), (self.users, user)]

    def check(self, user: str, resource: str, now: float | None = None) -> None:
        check_windows(self._keys(user, resource), self.message, now)

    def failed(self, user: str, resource: str, now: float | None = None) -> None:
        fail_windows(self._keys(user, resource), now)

    def attempt(self, user: str, resource: str, now: float | None = None) -> float:
        """Check, then count the attempt as a failure at once (before a slow
        verify, so concurrent guesses cannot all pass the check); returns the
        stamp to give to :meth:`succeeded` if it was right after all."""
        now = time.monotonic() if now is None else now
        self.check(user, resource, now)
        self.failed(user, resource, now)
        return now

    def succeeded(self, user: str, resource: str, stamp: float) -> None:
        for window, key in self._keys(user, resource):
            window.unfail(key, stamp)
