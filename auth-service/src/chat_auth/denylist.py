"""The revocation denylist: the ``CHAT_REVOKED`` KV bucket every gateway watches.

Keys (chat_contract.subjects.REVOKED_BUCKET):

- ``sid.<session id>``: that login's access tokens are refused (logout, and
  every live session of a user whose sessions all ended); value: the Unix
  time of the revocation.
- ``user.<user id>``: the user's access tokens issued before the value (Unix
  seconds, whole) are refused (password change, disable, refresh-token
  reuse). It also covers tokens without a ``sid``; tokens issued within that
  same second before the revocation are caught by their ``sid`` entry.

The bucket's TTL is the access-token lifetime plus :data:`MARGIN` (more than
the gateways' clock leeway): once an entry ages out, every token it refused
has expired anyway. Replicas: ``CHAT_STREAM_REPLICAS``.

The database is the record; the bucket is a copy. A write that fails is
retried every :data:`RETRY_INTERVAL` until it succeeds, and at start every
revocation younger than the TTL is written again (:meth:`Denylist.republish`),
so neither a NATS outage nor a crash between the commit and the write loses one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable

from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import BadRequestError
from nats.js.kv import KeyValue

from chat_contract.subjects import REVOKED_BUCKET
from chat_kit.logs import event

log = logging.getLogger("chat_auth.denylist")

# Seconds past the access-token lifetime an entry is kept: more than the
# gateway's `exp` leeway (chat_gateway.tokens, 30 s).
MARGIN = 60
RETRY_INTERVAL = 1.0

Recent = Callable[[float], Awaitable[tuple[list[str], list[tuple[str, float]]]]]


def sid_key(sid: str) -> str:
    return f"sid.{sid}"


def user_key(user_id: str) -> str:
    return f"user.{user_id}"


async def ensure_bucket(js: JetStreamContext, config: KeyValueConfig) -> KeyValue:
    """Create the bucket, or bring an existing one to ``config``'s TTL."""
    try:
        return await js.create_key_value(config)
    except BadRequestError:
        pass  # exists with another configuration (a changed access-token lifetime)
    info = await js.stream_info(f"KV_{config.bucket}")
    stream = info.config
    stream.max_age = config.ttl or None
    await js.update_stream(stream)
    return await js.key_value(config.bucket)


class Denylist:
    def __init__(self, js: JetStreamContext, access_ttl: int, replicas: int,
                 timeout: float) -> None:
        self.js = js
        self.ttl = float(access_ttl + MARGIN)
        self.replicas = replicas
        self.timeout = timeout
        self._kv: KeyValue | None = None
        # key → value of writes that failed; retried in the background.
        self._pending: dict[str, bytes] = {}
        self._retry: asyncio.Task[None] | None = None
        self._failing = False

    async def start(self) -> None:
        self._kv = await ensure_bucket(self.js, KeyValueConfig(
            bucket=REVOKED_BUCKET, ttl=self.ttl, limit_marker_ttl=1.0, history=1,
            storage=StorageType.FILE, replicas=self.replicas))
        self._retry = asyncio.create_task(self._retry_loop())

    async def stop(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._retry
            self._retry = None
        if self._pending:
            event(log, "denylist writes left unwritten at stop (republished at start)",
                  logging.WARNING, count=len(self._pending))

    async def revoke_sessions(self, sids: Iterable[str]) -> None:
        value = _number(time.time())
        await self._put_all({sid_key(sid): value for sid in sids})

    async def revoke_user(self, user_id: str, at: float) -> None:
        await self._put_all({user_key(user_id): str(math.floor(at)).encode()})

    async def republish(self, recent: Recent) -> None:
        """Write again every revocation younger than the TTL (see the module docstring)."""
        sids, users = await recent(self.ttl)
        entries = {sid_key(sid): _number(time.time()) for sid in sids}
        entries.update({user_key(uid): str(math.floor(at)).encode() for uid, at in users})
        await self._put_all(entries)
        if entries:
            event(log, "denylist republished", sessions=len(sids), users=len(users))

    async def _put_all(self, entries: dict[str, bytes]) -> None:
        results = await asyncio.gather(*(self._put(k, v) for k, v in entries.items()),
                                       return_exceptions=True)
        failed: BaseException | None = None
        for (key, value), result in zip(entries.items(), results, strict=True):
            if isinstance(result, BaseException):
                self._pending[key] = value
                failed = result
        if failed is not None and not self._failing:  # once per outage, not per key or retry
            self._failing = True
            event(log, "denylist write failed; retrying", logging.ERROR,
                  pending=len(self._pending), error=repr(failed))

    async def _put(self, key: str, value: bytes) -> None:
        assert self._kv is not None, "start() first"
        await asyncio.wait_for(self._kv.put(key, value), self.timeout)

    async def _retry_loop(self) -> None:
        while True:
            await asyncio.sleep(RETRY_INTERVAL)
            if not self._pending:
                continue
            pending, self._pending = self._pending, {}
            await self._put_all(pending)
            if not self._pending:
                self._failing = False
                event(log, "denylist writes retried", count=len(pending))


def _number(value: float) -> bytes:
    return f"{value:.3f}".encode()
