"""Throttles: sliding windows of failures per key, and token buckets per key.

Failed passwords (:class:`LoginThrottle` in auth-service, :class:`PasswordThrottle`
for room passwords in history-service): a sliding window of *failed*
attempts per key; once a key has had ``limit`` failures within ``window``
seconds, further attempts are refused with ``rate_limited`` (HTTP 429 with
``Retry-After``: when the oldest counted failure leaves the window) before
any password is checked — so a guesser gets no answer and costs no argon2
hash. A success does not clear other keys' counters; failures age out.

Logins are counted per (user, address) pair, not per user name: a guesser
at address A locks only the pair (u, A), never u's logins from elsewhere
(README "Security"). Addresses that fail on many names are refused as a
whole, and a name failing from very many addresses gets one try per address.

Expensive work that is not a guess (registration, setting a room password)
is paced by :class:`TokenBuckets`: ``burst`` at once, then ``rate`` per second.

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

    def retry_after(self, key: str, now: float, limit: int | None = None) -> float | None:
        """Seconds until ``key`` may try again, or None when it may now
        (``limit``: a stricter limit than the window's own, for this check)."""
        limit = self.limit if limit is None else min(limit, self.limit)
        if limit <= 0:
            return None
        stamps = self._live(key, now)
        if stamps is None or len(stamps) < limit:
            return None
        return stamps[-limit] + self.window - now

    def count(self, key: str, now: float) -> int:
        stamps = self._live(key, now)
        return 0 if stamps is None else len(stamps)

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
    """Failed logins per (user, address) pair, per address, and per user name.

    - pair: ``per_pair`` failures of one name from one address → that pair is
      refused; the same name from another address is not.
    - address: ``per_address`` failures from one address on any names → the
      address is refused (a spray of names); addresses that only log in with
      right passwords are never counted, however many users they log in.
    - user: past ``per_user`` failures of one name from all addresses (a
      guess spread over many addresses), each pair that has failed for it is
      refused after one failure instead of ``per_pair``: at most one guess per
      address and window, while addresses that have not failed still log in.

    Names are case-folded; ``remote=None`` (no known address) counts as one
    address of its own. A pair's attempt counts as a failure up front
    (:meth:`attempt`) and is taken back on success, so concurrent guesses
    cannot all slip past the check during the slow verify.
    """

    def __init__(self, per_pair: int, per_address: int, window: float,
                 per_user: int = 0) -> None:
        self.pairs = FailureWindow(per_pair, window)
        self.addresses = FailureWindow(per_address, window)
        self.users = FailureWindow(per_user, window)

    @staticmethod
    def _pair(user: str, remote: str | None) -> str:
        # "\x00" never occurs in a name or an address: pairs cannot collide.
        return f"{user}\x00{remote or ''}"

    def check(self, username: str, remote: str | None, now: float | None = None) -> None:
        """Raise ``rate_limited`` if this pair or address may not try now."""
        now = time.monotonic() if now is None else now
        user = username.casefold()
        strict = 1 if self.users.retry_after(user, now) is not None else None
        waits = [self.pairs.retry_after(self._pair(user, remote), now, strict)]
        if remote:
            waits.append(self.addresses.retry_after(remote, now))
        wait = max((w for w in waits if w is not None), default=None)
        if wait is not None:
            raise ChatError(ErrorCode.RATE_LIMITED, "too many failed logins, try again later",
                            retry_after=max(1.0, wait))

    def attempt(self, username: str, remote: str | None, now: float | None = None) -> float:
        """:meth:`check`, then count the pair's failure up front; returns the
        stamp for :meth:`succeeded` or :meth:`failed`."""
        now = time.monotonic() if now is None else now
        self.check(username, remote, now)
        self.pairs.fail(self._pair(username.casefold(), remote), now)
        return now

    def failed(self, username: str, remote: str | None, stamp: float) -> None:
        """The attempt of :meth:`attempt` failed: count it for the address and user too."""
        user = username.casefold()
        self.users.fail(user, stamp)
        if remote:
            self.addresses.fail(remote, stamp)

    def succeeded(self, username: str, remote: str | None, stamp: float) -> None:
        self.pairs.unfail(self._pair(username.casefold(), remote), stamp)


class TokenBuckets:
    """A token bucket per key: ``burst`` tokens, refilled at ``rate`` per second.

    ``rate`` <= 0 turns it off. Keys are bounded by ``MAX_KEYS``: the least
    recently used bucket is dropped (it comes back full, which errs towards
    letting a client through; the global bucket still holds).
    """

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = max(1, burst)
        self._buckets: dict[str, tuple[float, float]] = {}  # key → (tokens, at)

    def wait(self, key: str, now: float) -> float | None:
        """Seconds until ``key`` has a token, or None when it has one now."""
        if self.rate <= 0:
            return None
        tokens = self._tokens(key, now)
        return None if tokens >= 1.0 else (1.0 - tokens) / self.rate

    def take(self, key: str, now: float) -> None:
        if self.rate <= 0:
            return
        tokens = self._tokens(key, now)
        self._buckets.pop(key, None)  # re-inserted last: the dict is in LRU order
        if len(self._buckets) >= MAX_KEYS:
            self._buckets.pop(next(iter(self._buckets)))
        self._buckets[key] = (tokens - 1.0, now)

    def _tokens(self, key: str, now: float) -> float:
        tokens, at = self._buckets.get(key, (float(self.burst), now))
        return min(float(self.burst), tokens + (now - at) * self.rate)


def take_buckets(checks: Iterable[tuple[TokenBuckets, str]], message: str,
                 now: float | None = None) -> None:
    """Take a token from every (buckets, key), or none and raise ``rate_limited``
    with the longest wait."""
    now = time.monotonic() if now is None else now
    checks = list(checks)
    waits = [w for buckets, key in checks if (w := buckets.wait(key, now)) is not None]
    if waits:
        raise ChatError(ErrorCode.RATE_LIMITED, message, retry_after=max(1.0, max(waits)))
    for buckets, key in checks:
        buckets.take(key, now)


class RegistrationThrottle:
    """Registrations per client address and for the whole replica (each costs
    a 64 MiB argon2 hash): ``per_address`` per ``address_window`` seconds
    (all at once at most), and ``rate`` per second with bursts of ``burst``."""

    def __init__(self, per_address: int, address_window: float, rate: float,
                 burst: int) -> None:
        self.addresses = TokenBuckets(per_address / address_window if per_address > 0 else 0.0,
                                      per_address)
        self.everyone = TokenBuckets(rate, burst)

    def take(self, remote: str | None, now: float | None = None) -> None:
        checks = [(self.everyone, "")]
        if remote:
            checks.append((self.addresses, remote))
        take_buckets(checks, "too many registrations, try again later", now)


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
