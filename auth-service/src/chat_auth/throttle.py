"""Login attempt throttling, per username and per client address.

A sliding window of *failed* logins: once a username has had
``CHAT_AUTH_LOGIN_MAX_FAILURES`` failures within ``CHAT_AUTH_LOGIN_WINDOW``
seconds, or an address ``CHAT_AUTH_LOGIN_MAX_FAILURES_PER_ADDRESS``, further
attempts are refused with ``rate_limited`` (HTTP 429 with ``Retry-After``:
when the oldest counted failure leaves the window) before any password is
checked — so a guesser gets no answer and costs no argon2 hash. A success
does not clear the counter (it would let an attacker who owns one account
reset the address counter at will); failures simply age out.

The username key is case-folded (usernames are unique case-insensitively), so
unknown and existing users are throttled alike and the 429 tells nothing
about whether a user exists.

Counters live in each auth-service replica's memory: with R replicas behind
the queue group a guesser gets at most R× the limit per window — still a
bounded, small number. A shared counter (KV or PostgreSQL) would make it
exact at the cost of a write per failed login; not worth it at these limits.
"""

from __future__ import annotations

import time
from collections import deque

from chat_contract.errors import ChatError, ErrorCode

MAX_KEYS = 100_000  # bound on memory under a spray of distinct names/addresses


class FailureWindow:
    """Failure stamps per key within ``window`` seconds."""

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


class LoginThrottle:
    def __init__(self, per_user: int, per_address: int, window: float) -> None:
        self.users = FailureWindow(per_user, window)
        self.addresses = FailureWindow(per_address, window)

    def check(self, username: str, remote: str | None, now: float | None = None) -> None:
        """Raise ``rate_limited`` if this username or address is over its limit."""
        now = time.monotonic() if now is None else now
        waits = [self.users.retry_after(username.casefold(), now)]
        if remote:
            waits.append(self.addresses.retry_after(remote, now))
        wait = max((w for w in waits if w is not None), default=None)
        if wait is not None:
            raise ChatError(ErrorCode.RATE_LIMITED, "too many failed logins, try again later",
                            retry_after=max(1.0, wait))

    def failed(self, username: str, remote: str | None, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self.users.fail(username.casefold(), now)
        if remote:
            self.addresses.fail(remote, now)
