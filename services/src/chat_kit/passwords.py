"""Password hashing with argon2id, off the event loop (user passwords in auth-service,
room passwords in history-service).

Parameters: argon2-cffi's defaults, which are RFC 9106's second recommended
profile (argon2id, t=3 passes, m=64 MiB, p=4 lanes, 16-byte salt, 32-byte
hash): about 50 ms per hash on one core. Hashes are PHC strings that carry
their own parameters, so raising them later only needs ``needs_rehash`` on
the next successful login.

Each hash uses 64 MiB, so hashing runs in a small dedicated thread pool whose
size bounds both CPU and memory (argon2 releases the GIL while it works).
"""

from __future__ import annotations

import asyncio
import os
import secrets
from concurrent.futures import ThreadPoolExecutor

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

MAX_WORKERS = 4


class Passwords:
    def __init__(self, hasher: PasswordHasher | None = None, workers: int | None = None) -> None:
        self.hasher = hasher or PasswordHasher()
        self._pool = ThreadPoolExecutor(
            max_workers=workers or min(MAX_WORKERS, os.cpu_count() or 1),
            thread_name_prefix="argon2")
        self._dummy: str | None = None

    async def hash(self, password: str) -> str:
        return await asyncio.get_running_loop().run_in_executor(
            self._pool, self.hasher.hash, password)

    async def verify(self, stored: str | None, password: str) -> bool:
        """True if ``password`` matches ``stored``.

        ``stored=None`` (no such user) verifies against a dummy hash with the
        same parameters, so the answer takes as long as for a real user.
        """
        target = stored if stored is not None else await self._dummy_hash()
        ok = await asyncio.get_running_loop().run_in_executor(
            self._pool, self._check, target, password)
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
            self._dummy = await self.hash(secrets.token_urlsafe(16))
        return self._dummy

    def _check(self, stored: str, password: str) -> bool:
        try:
            return self.hasher.verify(stored, password)
        except (VerificationError, InvalidHashError):
            return False
