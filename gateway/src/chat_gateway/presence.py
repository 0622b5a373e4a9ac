"""Presence and typing at the gateway: live KV entries out, room signals in.

Out: each (connection, room) joined is one live key
``<room>.<user>.<session>`` in the ``PRESENCE`` bucket (value: the user and
this node). The join writes it with a JetStream ack, whose revision the
members query then waits for, so the ``join`` ack always lists the joiner.
A heartbeat re-puts every entry at a third of the bucket's TTL (read from
the bucket; presence-service owns it) as plain publishes — no round trip per
entry; a lost one is covered by the next. A leave or a closed socket deletes
the key at once; a drain (SIGTERM) does not, so users who reconnect to
another node within the TTL never flap, and a killed node's keys expire.

In: while a room is held here (:mod:`.rooms` subscribes ``presence.<room>``
with the room's other subjects), presence-service's join/leave notices and
the typists' gateways' typing notices arrive in :meth:`Presence.on_signal`.
Each event is encoded and framed once and the same bytes go to every member
of the :class:`~.localroom.LocalRoom` (typing skips the typist's own
connections; members who blocked the user the event is about get nothing).
Typing coalescing and expiry: :mod:`.typists`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from chat_contract import rpc, subjects
from chat_contract.bus import (
    MembersRequest,
    PresenceEntry,
    PresenceNotice,
    RoomSignal,
    TypingNotice,
)
from chat_contract.errors import ChatError
from chat_contract.events import PresenceEvent, TypingEvent, User, encode
from chat_kit import bus, metrics
from chat_kit.logs import event

from .connection import Connection
from .localroom import LocalRoom
from .typists import Outgoing

log = logging.getLogger("chat_gateway.presence")

_signal_decoder: msgspec.json.Decoder[RoomSignal] = msgspec.json.Decoder(RoomSignal)
_DELETE = {"KV-Operation": "DEL"}
SWEEP_INTERVAL = 0.25
DEFAULT_TTL = 30.0


class Presence:
    """This node's presence entries and typing, and the presence signals of
    the rooms held here (their subscriptions belong to :mod:`.rooms`)."""

    def __init__(self, nc: NATS, js: JetStreamContext, node: str, timeout: float) -> None:
        self.nc = nc
        self.js = js
        self.node = node
        self.timeout = timeout
        # (connection, room) → (KV subject, value) of its live entry.
        self.entries: dict[tuple[Connection, str], tuple[str, bytes]] = {}
        self.last_rev = 0
        self.refresh_interval = DEFAULT_TTL / 3
        self.draining = False
        self.outgoing = Outgoing()
        self._typing_rooms: set[LocalRoom] = set()  # rooms with someone typing
        self._tasks: list[asyncio.Task[None]] = []

    def drain(self) -> None:
        """From now on entries are left to expire (see the module docstring)."""
        self.draining = True

    async def start(self) -> None:
        self._tasks = [asyncio.create_task(self._refresh()), asyncio.create_task(self._sweep())]

    async def stop(self) -> None:
        """At drain: entries are left to expire (see the module docstring)."""
        self.draining = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # --- entries ------------------------------------------------------------

    async def enter(self, conn: Connection, name: str) -> list[User]:
        """Write ``conn``'s entry in ``name``; the room's members (the joiner included)."""
        subject = subjects.PRESENCE_KV_PREFIX + subjects.presence_key(
            name, conn.user.id, conn.session)
        value = encode(PresenceEntry(user=conn.user, node=self.node))
        self.entries[(conn, name)] = (subject, value)
        try:
            ack = await bus.publish_durable(self.nc, subject, value, self.timeout)
            self.last_rev = max(self.last_rev, ack.seq)
            reply = await bus.request(self.nc, rpc.PRESENCE_MEMBERS,
                                      MembersRequest(room=name, min_rev=ack.seq), self.timeout)
            return reply.members
        except ChatError as exc:
            # Chat goes on without presence; the heartbeat writes the entry
            # once the bucket is back. The ack lists only what we know.
            event(log, "presence unavailable at join", logging.WARNING, room=name,
                  error=exc.message)
            return [conn.user]

    async def members(self, name: str) -> list[User]:
        reply = await bus.request(self.nc, rpc.PRESENCE_MEMBERS,
                                  MembersRequest(room=name, min_rev=self.last_rev), self.timeout)
        return reply.members

    async def exit(self, conn: Connection, name: str, user_still_here: bool) -> None:
        """``conn`` left ``name`` (a leave, a removal or a closed socket): delete
        its entry; the user's typing stops with its last socket in the room."""
        entry = self.entries.pop((conn, name), None)
        if entry is None or self.draining:
            return
        with contextlib.suppress(Exception):  # NATS away: the TTL removes it
            await self.nc.publish(entry[0], b"", headers=_DELETE)
            if not user_still_here and self.outgoing.stop((name, conn.user.id)):
                await self._notify_typing(name, conn.user, "stop", 0.0)

    # --- typing out ---------------------------------------------------------

    async def typing(self, conn: Connection, name: str, state: str) -> None:
        key = (name, conn.user.id)
        if state == "start":
            if self.outgoing.start(key, conn.user, time.monotonic()):
                await self._notify_typing(name, conn.user, "start", 0.0)
        elif self.outgoing.stop(key):
            await self._notify_typing(name, conn.user, "stop", 0.0)

    async def _notify_typing(self, name: str, user: User, state: str, age: float) -> None:
        notice = TypingNotice(room=name, user=user, state="start" if state == "start" else "stop",
                              age_ms=int(age * 1000))
        await self.nc.publish(subjects.presence_subject(name), msgspec.json.encode(notice))

    # --- signals in (presence.<room>) ----------------------------------------

    async def on_signal(self, room: LocalRoom, msg: Msg) -> None:
        """One message of ``room``'s presence subscription, relayed to its members."""
        try:
            signal = _signal_decoder.decode(msg.data)
        except msgspec.DecodeError:
            metrics.WS_DROPPED.labels("bad_presence_event").inc()
            return
        if isinstance(signal, PresenceNotice):
            if signal.event == "leave":
                gone = room.typing.stop(signal.user.id)
                if gone is not None:
                    _relay_typing(room, gone, "stop")
            room.tell_all(encode(PresenceEvent(room=room.name, event=signal.event,
                                               user=signal.user, ts=signal.ts)),
                          signal.user.id, skip_self=False)
        elif signal.state == "start":
            if room.typing.start(signal.user, time.monotonic(), signal.age_ms / 1000):
                self._typing_rooms.add(room)
                _relay_typing(room, signal.user, "start")
        else:
            gone = room.typing.stop(signal.user.id)
            if gone is not None:
                _relay_typing(room, gone, "stop")

    # --- timers -------------------------------------------------------------

    async def _refresh(self) -> None:
        """Re-put every live entry at a third of the bucket's TTL."""
        failing = False
        while True:
            interval = 1.0
            try:
                info = await self.js.stream_info(subjects.PRESENCE_STREAM)
                ttl = info.config.max_age or DEFAULT_TTL
                interval = self.refresh_interval = max(0.5, ttl / 3)
                for subject, value in list(self.entries.values()):
                    await self.nc.publish(subject, value)
                if failing:
                    failing = False
                    event(log, "presence refresh resumed")
            except Exception as exc:  # no bucket yet (presence-service starting), NATS away
                if not failing:  # logged once per outage, not once a second
                    failing = True
                    event(log, "presence refresh failing", logging.WARNING, error=repr(exc))
            await asyncio.sleep(interval)

    async def _sweep(self) -> None:
        """Publish coalesced starts whose window ended; relay lapsed typing as stop."""
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            now = time.monotonic()
            try:
                for (name, _), user, age in self.outgoing.due(now):
                    await self._notify_typing(name, user, "start", age)
                for room in list(self._typing_rooms):
                    for user in room.typing.expired(now):
                        _relay_typing(room, user, "stop")
                    if not room.typing.typing or room.closed:
                        self._typing_rooms.discard(room)
            except Exception as exc:
                event(log, "typing sweep failed", logging.WARNING, error=repr(exc))


def _relay_typing(room: LocalRoom, user: User, state: str) -> None:
    payload = encode(TypingEvent(room=room.name, user=user,
                                 state="start" if state == "start" else "stop"))
    room.tell_all(payload, user.id, skip_self=True)
