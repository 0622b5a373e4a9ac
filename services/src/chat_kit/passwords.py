"""Password hashing with argon2id, off the event loop and bounded (user
passwords in auth-service, room passwords in history-service).

Parameters: argon2-cffi's defaults, which are RFC 9106's second recommended
profile (argon2id, t=3 passes, m=64 MiB, p=4 lanes, 16-byte salt, 32-byte
hash): about 50 ms per hash on one core. Hashes are PHC strings that carry
their own parameters, so raising them later only needs ``needs_rehash`` on
the next successful login.

Each hash uses 64 MiB, so hashing runs in a small dedicated thread pool whose
size bounds both CPU and memory (argon2 releases the GIL while it works).
The work waiting for it is bounded too (README "Security"), so a flood of
hashes cannot make every login time out:

- at most ``workers + queue`` hashes are queued or running; past that a
  request answers ``unavailable`` (503 with ``Retry-After``) at once. New
  hashes (registration, a room password) may only fill half of the queue:
  the other half is kept for verifies (logins, room joins).
- a request whose expected wait (the queue ahead of it × the measured time
  per hash) would pass 3/4 of its ``deadline`` is refused the same way, and one that
  waited so long that it could not finish within ``deadline`` is dropped
  before hashing: its caller (the gateway, after ``CHAT_REQUEST_TIMEOUT``)
  will have given up on it.
"""

from __future__ import annotations

import asyncio
import math
import os
import secrets
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from prometheus_client import Counter

from chat_contract.errors import ChatError, ErrorCode

from .settings import env_int

MAX_WORKERS = 4
DEFAULT_QUEUE = 16
# Until a hash has been timed: argon2 defaults take about this long on one core.
FIRST_ESTIMATE = 0.1
# The share of the caller's deadline a hash may take, waiting included.
BUDGET = 0.75

REFUSED = Counter("chat_password_hash_refused_total",
                  "Password hashes refused (queue full) or dropped (deadline passed)",
                  ["reason"])

T = TypeVar("T")


@dataclass(frozen=True)
class HashSettings:
    """``CHAT_PASSWORD_HASH_WORKERS`` and ``CHAT_PASSWORD_HASH_QUEUE`` (README "Configuration")."""

    workers: int = 0  # 0: min(4, CPUs)
    queue: int = DEFAULT_QUEUE

    @classmethod
    def from_env(cls) -> HashSettings:
        return cls(workers=env_int("CHAT_PASSWORD_HASH_WORKERS", 0, minimum=0),
                   queue=env_int("CHAT_PASSWORD_HASH_QUEUE", DEFAULT_QUEUE, minimum=0))


def busy(retry_after: float) -> ChatError:
    return ChatError(ErrorCode.UNAVAILABLE, "password hashing is busy, try again later",
                     retry_after=max(1.0, retry_after))


class _Expired(Exception):
    """Raised in the worker instead of hashing: the caller's deadline passed."""


class Passwords:
    def __init__(self, hasher: PasswordHasher | None = None, workers: int | None = None,
                 queue: int = DEFAULT_QUEUE, deadline: float | None = None) -> None:
        self.hasher = hasher or PasswordHasher()
        self.workers = workers or min(MAX_WORKERS, os.cpu_count() or 1)
        self.queue = queue
        # By when (seconds after the request) a hash must be expected to be
        # done: a quarter of the caller's deadline is left for the database
        # and the network (None: no deadline).
        self.deadline = None if deadline is None else deadline * BUDGET
        self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="argon2")
        self._dummy: str | None = None
        self._lock = threading.Lock()  # workers release slots from their threads
        self._in_flight = 0
        self._per_hash = FIRST_ESTIMATE  # moving average of one hash's time

    @classmethod
    def from_settings(cls, settings: HashSettings, deadline: float | None) -> Passwords:
        return cls(workers=settings.workers or None, queue=settings.queue, deadline=deadline)

    @property
    def in_flight(self) -> int:
        """Hashes queued or running now."""
        return self._in_flight

    async def hash(self, password: str) -> str:
        """A new hash; ``unavailable`` when the pool is busy (half the queue is
        kept for verifies)."""
        return await self._run(self.hasher.hash, password, reserve=self.queue // 2)

    async def verify(self, stored: str | None, password: str) -> bool:
        """True if ``password`` matches ``stored``; ``unavailable`` when busy.

        ``stored=None`` (no such user) verifies against a dummy hash with the
        same parameters, so the answer takes as long as for a real user.
        """
        target = stored if stored is not None else await self._dummy_hash()
        ok = await self._run(self._check, target, password, reserve=0)
        return ok and stored is not None

    def needs_rehash(self, stored: str) -> bool:
        return self.hasher.check_needs_rehash(stored)

    async def warm_up(self) -> None:
        """Compute the dummy hash now, so the first unknown-user login is not slower."""
        await self._dummy_hash()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def _dummy_hash(self) -> str:
        if self._dummy is None:
            self._dummy = await self._run(self.hasher.hash, secrets.token_urlsafe(16),
                                          reserve=0)
        return self._dummy

    def _admit(self, reserve: int) -> None:
        """Take a slot, or raise ``unavailable`` (queue full or wait too long)."""
        with self._lock:
            ahead = self._in_flight
            # Rounds of `workers` hashes before this one starts.
            wait = math.floor(ahead / self.workers) * self._per_hash
            full = ahead >= self.workers + self.queue - reserve
            late = (self.deadline is not None and ahead >= self.workers
                    and wait + self._per_hash > self.deadline)
            if not (full or late):
                self._in_flight += 1
                return
        REFUSED.labels("busy").inc()
        raise busy(wait)

    def _release(self, _: object) -> None:
        with self._lock:
            self._in_flight -= 1

    async def _run(self, fn: Callable[..., T], *args: str,
                   reserve: int) -> T:
        self._admit(reserve)
        submitted = time.monotonic()
        deadline = self.deadline

        def job() -> T:
            started = time.monotonic()
            # Dropped unless it can still finish before its caller gives up.
            if deadline is not None and started - submitted + self._per_hash > deadline:
                raise _Expired
            result = fn(*args)
            took = time.monotonic() - started
            with self._lock:
                self._per_hash = 0.8 * self._per_hash + 0.2 * took
            return result

        try:
            future: Future[T] = self._pool.submit(job)
        except RuntimeError:  # shut down
            self._release(None)
            raise ChatError(ErrorCode.UNAVAILABLE, "shutting down") from None
        future.add_done_callback(self._release)
        try:
            return await asyncio.wrap_future(future)
        except _Expired:
            REFUSED.labels("expired").inc()
            raise busy(self._per_hash) from None

    def _check(self, stored: str, password: str) -> bool:
        try:
            return self.hasher.verify(stored, password)
        except (VerificationError, InvalidHashError):
            return False
