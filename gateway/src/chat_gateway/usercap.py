"""The per-user connection cap across all gateways (docs/protocol.md §3.6, §8).

At most ``CHAT_GATEWAY_MAX_CONNECTIONS_PER_USER`` connections per user,
counted across every gateway. A new connection is always accepted; when it
puts the user over the cap, the user's *oldest* connections are closed with
4409 ("replaced"), wherever they are.

Mechanism (no gateway holds state another one needs):

- JetStream KV bucket ``CHAT_SESSIONS``: one key per live connection,
  ``<user id>.<session id>``, value :class:`SessionEntry` (node, opened time).
  The bucket's TTL is ``CHAT_GATEWAY_SESSION_TTL``; every gateway re-puts the
  keys of its live connections every TTL/3, so the connections of a gateway
  that died without a goodbye stop counting within the TTL. A clean close
  deletes its key.
- After ``welcome`` (in the background: connecting never waits on this) the
  gateway puts the new key, then lists the user's keys (``<user>.*``). If
  there are more than the cap, the oldest others (by opened time, then
  session id) beyond the cap are named in a :class:`SessionKick` on
  ``sessions.kick.<user>``. Every gateway subscribes to ``sessions.kick.*``
  (rare traffic: only over-cap connects) and closes the named session if it
  holds it.
- Two connects racing on two gateways compute the same oldest set, so a
  kick is at worst sent twice; the new connection itself is never kicked.
- NATS unreachable: the cap is not enforced for connections made meanwhile
  (fail open — chat keeps working on the sockets a gateway already holds);
  they are registered by the next refresh once NATS is back, and counted
  at the user's next connect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from typing import TYPE_CHECKING

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.kv import KeyValue

from chat_contract import subjects
from chat_contract.bus import SessionEntry, SessionKick
from chat_contract.errors import CloseCode
from chat_kit.logs import event

if TYPE_CHECKING:
    from .connection import Connection

log = logging.getLogger("chat_gateway.usercap")

_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,128}")
_entry = msgspec.json.Decoder(SessionEntry)
_kick = msgspec.json.Decoder(SessionKick)


def over_cap(entries: list[SessionEntry], own: str, cap: int) -> list[str]:
    """Sessions to close so that at most ``cap`` remain, never ``own``: the oldest."""
    excess = len(entries) - cap
    if cap <= 0 or excess <= 0:
        return []
    others = sorted((e for e in entries if e.session != own),
                    key=lambda e: (e.opened_ms, e.session))
    return [e.session for e in others[:excess]]


class SessionRegistry:
    def __init__(self, nc: NATS, js: JetStreamContext, node: str, cap: int, ttl: float,
                 timeout: float) -> None:
        self.nc = nc
        self.js = js
        self.node = node
        self.cap = cap
        self.ttl = ttl
        self.timeout = timeout
        self.local: dict[str, Connection] = {}
        self.opened: dict[str, int] = {}
        self._kv: KeyValue | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._refresher: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self.cap <= 0:
            return
        await self.nc.subscribe(f"{subjects.SESSION_KICK_PREFIX}.*", cb=self._on_kick)
        self._refresher = asyncio.create_task(self._refresh_loop())

    async def _bucket(self) -> KeyValue:
        if self._kv is None:
            config = KeyValueConfig(bucket=subjects.SESSIONS_BUCKET, history=1, ttl=self.ttl,
                                    storage=StorageType.MEMORY)
            self._kv = await self.js.create_key_value(config)
        return self._kv

    def _key(self, conn: Connection) -> str | None:
        if not (_TOKEN.fullmatch(conn.user.id) and _TOKEN.fullmatch(conn.session)):
            return None
        return f"{conn.user.id}.{conn.session}"

    def _entry(self, conn: Connection) -> bytes:
        return msgspec.json.encode(SessionEntry(user=conn.user.id, session=conn.session,
                                                node=self.node,
                                                opened_ms=self.opened[conn.session]))

    def opened_conn(self, conn: Connection) -> None:
        """A connection was welcomed: register it and enforce the cap (in the background)."""
        if self.cap <= 0 or self._key(conn) is None:
            return
        self.local[conn.session] = conn
        self.opened[conn.session] = int(time.time() * 1000)
        task = asyncio.create_task(self._register(conn))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def closed_conn(self, conn: Connection) -> None:
        if self.local.pop(conn.session, None) is None:
            return
        self.opened.pop(conn.session, None)
        key = self._key(conn)
        if key is None or self._kv is None or not self.nc.is_connected:
            return  # the key expires with the bucket TTL
        task = asyncio.create_task(self._delete(key))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _delete(self, key: str) -> None:
        with contextlib.suppress(Exception):
            kv = await self._bucket()
            await asyncio.wait_for(kv.delete(key), self.timeout)

    async def _register(self, conn: Connection) -> None:
        key = self._key(conn)
        assert key is not None
        try:
            await asyncio.wait_for(self._enforce(conn, key), self.timeout * 2)
        except Exception as exc:  # fail open: see the module docstring
            event(log, "session cap not checked", logging.WARNING, user=conn.user.id,
                  error=repr(exc))

    async def _enforce(self, conn: Connection, key: str) -> None:
        kv = await self._bucket()
        await kv.put(key, self._entry(conn))
        entries = await self._entries(kv, conn.user.id)
        for session in over_cap(entries, conn.session, self.cap):
            kick = SessionKick(user=conn.user.id, session=session)
            await self.nc.publish(f"{subjects.SESSION_KICK_PREFIX}.{conn.user.id}",
                                  msgspec.json.encode(kick))

    async def _entries(self, kv: KeyValue, user: str) -> list[SessionEntry]:
        watcher = await kv.watch(f"{user}.*", ignore_deletes=True)
        entries: list[SessionEntry] = []
        try:
            while True:
                update = await watcher.updates(timeout=self.timeout)  # type: ignore[no-untyped-call]
                if update is None:
                    break
                if update.value:
                    with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
                        entries.append(_entry.decode(update.value))
        finally:
            with contextlib.suppress(Exception):
                await watcher.stop()  # type: ignore[no-untyped-call]
        return entries

    async def _on_kick(self, msg: Msg) -> None:
        try:
            kick = _kick.decode(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return
        conn = self.local.get(kick.session)
        if conn is None or conn.user.id != kick.user:
            return
        event(log, "session replaced", user=kick.user, session=kick.session)
        await conn.close(CloseCode.REPLACED, kick.reason)

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.ttl / 3)
            if not self.local or not self.nc.is_connected:
                continue
            try:
                kv = await self._bucket()
                for conn in list(self.local.values()):
                    key = self._key(conn)
                    if key is not None and conn.session in self.opened:
                        await kv.put(key, self._entry(conn))
            except Exception as exc:
                event(log, "session refresh failed", logging.WARNING, error=repr(exc))

    async def close(self) -> None:
        """Stop refreshing; give the deletes of just-closed sockets a moment to land."""
        if self._refresher is not None:
            self._refresher.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=1.0)
        for task in list(self._tasks):
            task.cancel()
