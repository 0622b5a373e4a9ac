"""The per-user connection cap across all gateways (docs/protocol.md §3.6, §8).

At most ``CHAT_GATEWAY_MAX_CONNECTIONS_PER_USER`` connections per user,
counted across every gateway. A new connection is always accepted; when it
puts the user over the cap, the user's *oldest* connections are closed with
4409 ("replaced"), wherever they are.

Mechanism: nothing is stored anywhere but in the memory of the gateway that
holds a connection (issue 13: one KV key and one short-lived consumer per
connect cost NATS ~12 KiB per socket and every connect two JetStream round
trips). Each gateway asks the others when one of its users connects:

- After ``welcome`` (in the background: connecting never waits on this; the
  questions of a few milliseconds go out together) the
  gateway publishes the new connection's :class:`SessionEntry` on
  ``sessions.list.<user>`` (core NATS, at most once), with the reply subject
  ``sessions.held.<its instance>``. Every gateway subscribes to
  ``sessions.list.*``; one that holds other connections of that user
  answers on the reply subject with a :class:`SessionList` of them (node,
  opened time); gateways without any stay silent. A user's first connection
  thus costs one small message to each gateway and nothing else.
- The asking gateway adds what it holds itself and each answer as it comes
  (for up to ``timeout`` seconds): if there are more than the cap, the
  oldest others (by opened time, then session id) beyond the cap are named
  in a :class:`SessionKick` on ``sessions.kick.<user>``; the gateway holding
  each closes it. Kicking as answers arrive is exact: a session that is
  among the oldest beyond the cap in part of the user's sessions is among
  them in all of them.
- The new connection itself is never kicked by its own check (a gateway
  whose clock is behind must not close the connection it just accepted).
- Two connects racing (on two gateways, or one): each registers its
  connection before asking, so the check that asks second learns of both.
  Each check may name the other's new connection; a kick names the
  connection whose check sent it, and a holder keeps a session that is
  newer than that one and still being checked itself: so the older of the
  two racers goes, the newer stays, and at most the cap remain.
- A gateway that dies or drains takes its connections with it: they stop
  counting at once (no entries linger to a TTL).
- NATS unreachable: the cap is not enforced for connections made meanwhile
  (fail open — chat keeps working on the sockets a gateway already holds);
  they count at the user's next connect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
import time
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from chat_contract import subjects
from chat_contract.bus import SessionEntry, SessionKick, SessionList
from chat_contract.errors import CloseCode
from chat_kit.logs import event

if TYPE_CHECKING:
    from .connection import Connection

log = logging.getLogger("chat_gateway.usercap")

_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,128}")
# Questions are sent in batches this many seconds apart at most: one write to
# NATS for many connects (each was a flush of its own: ~8 % of a gateway's CPU
# per connect at 1,800 connects/s). The check runs in the background anyway.
ASK_BATCH = 0.005
_entry = msgspec.json.Decoder(SessionEntry)
_list = msgspec.json.Decoder(SessionList)
_kick = msgspec.json.Decoder(SessionKick)


def over_cap(entries: list[SessionEntry], own: str, cap: int) -> list[str]:
    """Sessions to close so that at most ``cap`` remain, never ``own``: the oldest."""
    excess = len(entries) - cap
    if cap <= 0 or excess <= 0:
        return []
    others = sorted((e for e in entries if e.session != own),
                    key=lambda e: (e.opened_ms, e.session))
    return [e.session for e in others[:excess]]


class _Asking:
    """One connect's question in flight: the other gateways' answers so far."""

    __slots__ = ("conn", "opened", "deadline", "remote", "kicked")

    def __init__(self, conn: Connection, opened: int, deadline: float) -> None:
        self.conn = conn
        self.opened = opened
        self.deadline = deadline
        self.remote: dict[str, SessionEntry] = {}
        self.kicked: set[str] = set()


class SessionRegistry:
    def __init__(self, nc: NATS, node: str, cap: int, timeout: float) -> None:
        self.nc = nc
        self.node = node
        self.cap = cap
        self.timeout = timeout
        # user id → session id → (connection, opened ms): what this gateway holds.
        self.by_user: dict[str, dict[str, tuple[Connection, int]]] = {}
        self.reply_subject = f"{subjects.SESSION_HELD_PREFIX}.{secrets.token_hex(8)}"
        self._asking: dict[str, _Asking] = {}  # by the new connection's session id
        self._sweeper: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._asks: list[tuple[str, bytes]] = []  # (subject, SessionEntry) not yet sent

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def start(self) -> None:
        if self.cap <= 0:
            return
        await self.nc.subscribe(f"{subjects.SESSION_KICK_PREFIX}.*", cb=self._on_kick)
        await self.nc.subscribe(f"{subjects.SESSION_LIST_PREFIX}.*", cb=self._on_list)
        await self.nc.subscribe(self.reply_subject, cb=self._on_held)
        self._sweeper = asyncio.create_task(self._sweep())

    def _entries(self, user: str) -> list[SessionEntry]:
        return [SessionEntry(user=user, session=session, node=self.node, opened_ms=opened)
                for session, (_, opened) in self.by_user.get(user, {}).items()]

    def opened_conn(self, conn: Connection) -> None:
        """A connection was welcomed: count it and ask the other gateways (in the background)."""
        user = conn.user.id
        if self.cap <= 0 or not (_TOKEN.fullmatch(user) and _TOKEN.fullmatch(conn.session)):
            return
        opened = int(time.time() * 1000)
        self.by_user.setdefault(user, {})[conn.session] = (conn, opened)
        asking = _Asking(conn, opened, time.monotonic() + self.timeout)
        self._asking[conn.session] = asking
        self._enforce(asking)  # over the cap on this gateway alone: no need to wait
        if not self.nc.is_connected:
            return  # fail open (module docstring)
        entry = SessionEntry(user=user, session=conn.session, node=self.node, opened_ms=opened)
        self._asks.append((f"{subjects.SESSION_LIST_PREFIX}.{user}", msgspec.json.encode(entry)))
        if len(self._asks) == 1:
            asyncio.get_running_loop().call_later(ASK_BATCH, self._send_asks)

    def _send_asks(self) -> None:
        asks, self._asks = self._asks, []
        self._spawn(self._ask(asks))

    async def _ask(self, asks: list[tuple[str, bytes]]) -> None:
        """The questions of the last few milliseconds, written out together."""
        try:
            for subject, payload in asks:
                await self.nc.publish(subject, payload, reply=self.reply_subject)
        except Exception as exc:  # fail open: see the module docstring
            event(log, "session cap not checked", logging.WARNING, count=len(asks),
                  error=repr(exc))

    def closed_conn(self, conn: Connection) -> None:
        mine = self.by_user.get(conn.user.id)
        if mine is None or mine.pop(conn.session, None) is None:
            return
        if not mine:
            del self.by_user[conn.user.id]
        self._asking.pop(conn.session, None)

    def _enforce(self, asking: _Asking) -> None:
        conn = asking.conn
        entries = [*self._entries(conn.user.id), *asking.remote.values()]
        for session in over_cap(entries, conn.session, self.cap):
            if session in asking.kicked:
                continue
            asking.kicked.add(session)
            kick = SessionKick(user=conn.user.id, session=session, by_session=conn.session,
                               by_opened_ms=asking.opened)
            if session in self.by_user.get(conn.user.id, {}):
                self._apply(kick)
            else:
                self._spawn(self._kick(kick))

    async def _kick(self, kick: SessionKick) -> None:
        with contextlib.suppress(Exception):  # fail open
            await self.nc.publish(f"{subjects.SESSION_KICK_PREFIX}.{kick.user}",
                                  msgspec.json.encode(kick))

    def _apply(self, kick: SessionKick) -> None:
        """Close a session of ours named by a kick, unless it is the newer racer."""
        local = self.by_user.get(kick.user, {}).get(kick.session)
        if local is None:
            return
        conn, opened = local
        if kick.session in self._asking and (opened, kick.session) > (kick.by_opened_ms,
                                                                       kick.by_session):
            return  # its own check, which sees the kicker's connection, decides
        event(log, "session replaced", user=kick.user, session=kick.session)
        self._spawn(conn.close(CloseCode.REPLACED, kick.reason))

    async def _on_list(self, msg: Msg) -> None:
        """Another gateway's user connected: tell it which of theirs are here."""
        if msg.reply == self.reply_subject or not msg.reply:
            return
        try:
            entry = _entry.decode(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return
        held = self._entries(entry.user)
        if not held:
            return
        answer = SessionList(user=entry.user, session=entry.session, sessions=held)
        with contextlib.suppress(Exception):
            await self.nc.publish(msg.reply, msgspec.json.encode(answer))

    async def _on_held(self, msg: Msg) -> None:
        """An answer to one of our questions: count it, kick what is over the cap."""
        try:
            answer = _list.decode(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return
        asking = self._asking.get(answer.session)
        if asking is None or asking.conn.user.id != answer.user or asking.conn.closed:
            return
        for entry in answer.sessions:
            if entry.user == answer.user:
                asking.remote[entry.session] = entry
        self._enforce(asking)

    async def _on_kick(self, msg: Msg) -> None:
        try:
            kick = _kick.decode(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return
        self._apply(kick)

    async def _sweep(self) -> None:
        """Forget questions whose answers had their time."""
        while True:
            await asyncio.sleep(max(0.1, self.timeout / 2))
            now = time.monotonic()
            for session, asking in list(self._asking.items()):
                if asking.deadline <= now:
                    del self._asking[session]

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=1.0)
