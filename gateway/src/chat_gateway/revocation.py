"""The revocation denylist as this gateway knows it: a local copy of the
``CHAT_REVOKED`` KV bucket (auth-service writes it: chat_auth.denylist).

- ``sid.<session id>``: every token of that login session is refused;
- ``user.<user id>`` = Unix seconds: the user's tokens issued (``iat``) before
  it are refused.

The token verifier asks :meth:`Revocations.refusal` for every token (REST 401,
WebSocket 4401); the sockets already open are closed by the listener
(:class:`~.sockets.Sockets`), told of each new entry as the watch delivers it
(within milliseconds), so a logout reaches every gateway within a second.

The copy is a KV watch (an ordered consumer): the initial values, then each
change; entries that age out (the bucket's TTL is the access-token lifetime
plus a margin) arrive as deletes, so the local sets stay bounded. After a
NATS reconnect the watch starts over and the fresh copy replaces the old
one, and the listener re-checks every socket: whatever was revoked while this
gateway was cut off is applied then. Until the first copy is loaded the
gateway is not ready (``loaded``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Protocol

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from chat_contract.claims import AccessClaims
from chat_contract.subjects import REVOKED_BUCKET
from chat_kit.logs import event

log = logging.getLogger("chat_gateway.revocation")

REVOKED = "session revoked"
_DELETES = ("DEL", "PURGE")
# How often a live watch looks for a NATS reconnect (and the longest retry delay).
CHECK_INTERVAL = 1.0
MAX_DELAY = 5.0


class Listener(Protocol):
    """Who closes the sockets of what gets revoked (:class:`~.sockets.Sockets`)."""

    def session_revoked(self, sid: str) -> None: ...

    def user_revoked(self, user_id: str) -> None: ...

    def reloaded(self) -> None: ...


@dataclass
class Denied:
    """One copy of the bucket."""

    sids: set[str] = field(default_factory=set)
    # user id → Unix seconds: tokens issued before are void.
    users: dict[str, int] = field(default_factory=dict)

    def apply(self, key: str, value: bytes | None, deleted: bool) -> tuple[str, str] | None:
        """Fold one entry in; ("sid"|"user", id) when it revokes something."""
        kind, _, ident = key.partition(".")
        if not ident:
            return None
        if kind == "sid":
            if deleted:
                self.sids.discard(ident)
                return None
            self.sids.add(ident)
            return kind, ident
        if kind == "user":
            if deleted:
                self.users.pop(ident, None)
                return None
            try:
                self.users[ident] = int((value or b"").decode())
            except ValueError:
                return None
            return kind, ident
        return None


class Revocations:
    def __init__(self, js: JetStreamContext) -> None:
        self.js = js
        self.denied = Denied()
        self.loaded = False
        self.listener: Listener | None = None

    def refusal(self, claims: AccessClaims) -> str | None:
        """Why this token must be refused, or None."""
        denied = self.denied
        if claims.sid is not None and claims.sid in denied.sids:
            return REVOKED
        before = denied.users.get(claims.sub)
        if before is not None and claims.iat < before:
            return REVOKED
        return None

    def socket_revoked(self, sid: str | None, user_id: str) -> bool:
        """Whether a socket of this session and user must close. Sessions are
        listed one by one when a user's all end; the user entry is for sockets
        whose token had no session (issued before sessions existed)."""
        if sid is not None:
            return sid in self.denied.sids
        return user_id in self.denied.users

    async def run(self, nc: NATS) -> None:
        """Keep the copy current until cancelled (see the module docstring)."""
        delay = 0.1
        told = False
        while True:
            try:
                kv = await self.js.key_value(REVOKED_BUCKET)
                await self._watch(kv, nc)
                delay = 0.1
                continue  # a reconnect: watch again from the start
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # bucket not there yet (auth-service), NATS away
                if not told:
                    event(log, "revocation watch failed; retrying", logging.WARNING,
                          error=repr(exc))
                    told = True
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_DELAY)

    async def _watch(self, kv: KeyValue, nc: NATS) -> None:
        reconnects = nc.stats["reconnects"]
        watcher = await kv.watchall()
        fresh: Denied | None = Denied()  # filled until the initial values are in
        try:
            while True:
                try:
                    entry = await watcher.updates(timeout=CHECK_INTERVAL)  # type: ignore[no-untyped-call]
                except Exception:  # nats TimeoutError: nothing new
                    if nc.stats["reconnects"] != reconnects:
                        return
                    continue
                if entry is None:  # the initial values are in
                    if fresh is not None:
                        self._replace(fresh)
                        fresh = None
                    continue
                deleted = entry.operation in _DELETES
                if fresh is not None:
                    fresh.apply(entry.key, entry.value, deleted)
                    continue
                revoked = self.denied.apply(entry.key, entry.value, deleted)
                if revoked is not None and self.listener is not None:
                    kind, ident = revoked
                    if kind == "sid":
                        self.listener.session_revoked(ident)
                    else:
                        self.listener.user_revoked(ident)
        finally:
            with contextlib.suppress(Exception):
                await watcher.stop()  # type: ignore[no-untyped-call]

    def _replace(self, fresh: Denied) -> None:
        self.denied = fresh
        if not self.loaded:
            event(log, "revocation list loaded", sessions=len(fresh.sids),
                  users=len(fresh.users))
        self.loaded = True
        if self.listener is not None:
            self.listener.reloaded()
