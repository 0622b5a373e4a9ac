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

In: while a room has local members this node subscribes to
``presence.<room>``, where presence-service publishes join/leave and the
typists' gateways publish typing notices. Each event is encoded and framed
once and the same bytes go to every local member (typing skips the typist's
own connections; members who blocked the user the event is about get
nothing). Typing coalescing and expiry: :mod:`.typists`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext

from chat_contract import subjects
from chat_contract.bus import (
    MembersReply,
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
from .typists import Incoming, Outgoing
from .wsframe import text_frame

log = logging.getLogger("chat_gateway.presence")

_signal_decoder: msgspec.json.Decoder[RoomSignal] = msgspec.json.Decoder(RoomSignal)
_DELETE = {"KV-Operation": "DEL"}
SWEEP_INTERVAL = 0.25
DEFAULT_TTL = 30.0


class PresenceRoom:
    __slots__ = ("name", "subject", "members", "sub", "ready", "typing")

    def __init__(self, name: str) -> None:
        self.name = name
        self.subject = subjects.presence_subject(name)
        self.members: set[Connection] = set()
        self.sub: Subscription | None = None
        self.ready = asyncio.Event()
        self.typing = Incoming()


class PresenceHub:
    def __init__(self, nc: NATS, js: JetStreamContext, node: str, timeout: float) -> None:
        self.nc = nc
        self.js = js
        self.node = node
        self.timeout = timeout
        self.rooms: dict[str, PresenceRoom] = {}
        # (connection, room) → (KV subject, value) of its live entry.
        self.entries: dict[tuple[Connection, str], tuple[str, bytes]] = {}
        self.last_rev = 0
        self.refresh_interval = DEFAULT_TTL / 3
        self.draining = False
        self.outgoing = Outgoing()
        self._typing_rooms: set[PresenceRoom] = set()  # rooms with someone typing
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self._tasks = [asyncio.create_task(self._refresh()), asyncio.create_task(self._sweep())]

    async def stop(self) -> None:
        """At drain: entries are left to expire (see the module docstring)."""
        self.draining = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for room in list(self.rooms.values()):
            await self._close(room)

    # --- membership ---------------------------------------------------------

    async def join(self, conn: Connection, name: str) -> list[User]:
        """Enter ``conn`` in ``name``; the room's members (the joiner included)."""
        room = await self._open(name)
        room.members.add(conn)
        subject = subjects.PRESENCE_KV_PREFIX + subjects.presence_key(
            name, conn.user.id, conn.session)
        value = encode(PresenceEntry(user=conn.user, node=self.node))
        self.entries[(conn, name)] = (subject, value)
        try:
            ack = await bus.publish_durable(self.nc, subject, value, self.timeout)
            self.last_rev = max(self.last_rev, ack.seq)
            reply = await bus.call(self.nc, subjects.PRESENCE_MEMBERS,
                                   MembersRequest(room=name, min_rev=ack.seq), MembersReply,
                                   self.timeout)
            return reply.members
        except ChatError as exc:
            # Chat goes on without presence; the heartbeat writes the entry
            # once the bucket is back. The ack lists only what we know.
            event(log, "presence unavailable at join", logging.WARNING, room=name,
                  error=exc.message)
            return [conn.user]

    async def members(self, name: str) -> list[User]:
        reply = await bus.call(self.nc, subjects.PRESENCE_MEMBERS,
                               MembersRequest(room=name, min_rev=self.last_rev), MembersReply,
                               self.timeout)
        return reply.members

    async def leave(self, conn: Connection, name: str) -> None:
        """``conn`` left ``name`` (a ``leave`` frame or a closed socket)."""
        entry = self.entries.pop((conn, name), None)
        room = self.rooms.get(name)
        if room is not None:
            room.members.discard(conn)
        if entry is None or self.draining:
            if room is not None and not room.members and room.ready.is_set():
                await self._close(room)
            return
        uid = conn.user.id
        with contextlib.suppress(Exception):  # NATS away: the TTL removes it
            await self.nc.publish(entry[0], b"", headers=_DELETE)
            if room is None or not any(c.user.id == uid for c in room.members):
                if self.outgoing.stop((name, uid)):
                    await self._notify_typing(name, conn.user, "stop", 0.0)
        if room is not None and not room.members and room.ready.is_set():
            await self._close(room)

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

    # --- subscriptions ------------------------------------------------------

    async def _open(self, name: str) -> PresenceRoom:
        room = self.rooms.get(name)
        if room is not None:
            await room.ready.wait()
            if self.rooms.get(name) is room:
                return room
            return await self._open(name)  # closed while we waited
        room = PresenceRoom(name)
        self.rooms[name] = room
        try:
            room.sub = await self.nc.subscribe(room.subject, cb=self._callback(room),
                                               pending_msgs_limit=65536)
            await bus.sync(self.nc)  # subscribed before our own join is announced
        except BaseException:
            del self.rooms[name]
            raise
        finally:
            room.ready.set()
        return room

    async def _close(self, room: PresenceRoom) -> None:
        if self.rooms.get(room.name) is room:
            del self.rooms[room.name]
        if room.sub is not None:
            try:
                await room.sub.unsubscribe()
            except Exception as exc:
                event(log, "unsubscribe failed", logging.DEBUG, room=room.name, error=repr(exc))

    def _callback(self, room: PresenceRoom):  # type: ignore[no-untyped-def]
        async def on_signal(msg: Msg) -> None:
            try:
                signal = _signal_decoder.decode(msg.data)
            except msgspec.DecodeError:
                metrics.WS_DROPPED.labels("bad_presence_event").inc()
                return
            if isinstance(signal, PresenceNotice):
                if signal.event == "leave":
                    gone = room.typing.stop(signal.user.id)
                    if gone is not None:
                        self._relay_typing(room, gone, "stop")
                self._fan_out(room, encode(PresenceEvent(
                    room=room.name, event=signal.event, user=signal.user, ts=signal.ts)),
                    signal.user.id, skip_self=False)
            elif signal.state == "start":
                if room.typing.start(signal.user, time.monotonic(), signal.age_ms / 1000):
                    self._typing_rooms.add(room)
                    self._relay_typing(room, signal.user, "start")
            else:
                gone = room.typing.stop(signal.user.id)
                if gone is not None:
                    self._relay_typing(room, gone, "stop")

        return on_signal

    def _relay_typing(self, room: PresenceRoom, user: User, state: str) -> None:
        payload = encode(TypingEvent(room=room.name, user=user,
                                     state="start" if state == "start" else "stop"))
        self._fan_out(room, payload, user.id, skip_self=True)

    @staticmethod
    def _fan_out(room: PresenceRoom, payload: bytes, about: str, *, skip_self: bool) -> None:
        """Write an event about user ``about`` to the local members, except
        those who blocked that user (and with ``skip_self`` that user's own)."""
        frame = text_frame(payload)
        written = 0
        for conn in room.members:
            if skip_self and conn.user.id == about:
                continue
            if conn.blocked and about in conn.blocked:
                continue
            if conn.write_frame(frame):
                written += 1
        metrics.WS_MESSAGES_OUT.inc(written)

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
                        self._relay_typing(room, user, "stop")
                    if not room.typing.typing or self.rooms.get(room.name) is not room:
                        self._typing_rooms.discard(room)
            except Exception as exc:
                event(log, "typing sweep failed", logging.WARNING, error=repr(exc))
