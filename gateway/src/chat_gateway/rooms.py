"""Room subscriptions with local members, gap repair, and the fan-out.

A gateway subscribes (core NATS) to ``chat.live.<room>`` only while it has a
local member in that room. Each republished event carries its stream
sequence and the room's previous one; when the previous one is not the last
sequence this gateway relayed, the missing events are fetched from the
stream and relayed first, so members see an unbroken ``prev_seq`` chain even
if core NATS dropped something. Each event is decoded, encoded and framed
once, then the same bytes are written to every local member.

Each member has a floor: events at or below it are not written to it. A join
sets it to the last sequence the join already returned (``last_seq`` or the
end of ``missed``), so a join never doubles an event and never skips one.
Sequences only grow, so a floor never needs resetting once passed. A room
with joins in progress (``pending``) stays subscribed even while it has no
member yet, so a leave elsewhere cannot pull the subscription from under a
join.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from datetime import datetime

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from chat_contract import subjects
from chat_contract.bus import ChatRecord, record_to_event
from chat_contract.events import encode
from chat_kit import bus, metrics
from chat_kit.logs import event

from .connection import Connection
from .wsframe import text_frame

log = logging.getLogger("chat_gateway.rooms")

_record_decoder = msgspec.json.Decoder(ChatRecord)
# Events kept per room for members whose join completes while they arrive.
RECENT_EVENTS = 256


class Room:
    __slots__ = ("name", "subject", "members", "sub", "last_seq", "recent", "ready", "pending")

    def __init__(self, name: str) -> None:
        self.name = name
        self.subject = subjects.room_subject(name)
        self.members: dict[Connection, int] = {}
        self.sub: Subscription | None = None
        self.last_seq = -1  # unknown until the first event or the first join's lookup
        # (seq, prev_seq, frame) of the latest events, for joins completing now
        self.recent: deque[tuple[int, int, bytes]] = deque(maxlen=RECENT_EVENTS)
        self.ready = asyncio.Event()
        self.pending = 0  # joins between open() and attach()/abandon()


class RoomHub:
    def __init__(self, nc: NATS, js: JetStreamContext) -> None:
        self.nc = nc
        self.js = js
        self.rooms: dict[str, Room] = {}

    async def open(self, name: str) -> Room:
        """The room's state, subscribing on first use; ends with ``attach`` or ``abandon``."""
        while (room := self.rooms.get(name)) is not None:
            room.pending += 1
            await room.ready.wait()
            if self.rooms.get(name) is room:
                return room
            room.pending -= 1  # its opener failed or it closed meanwhile: start over
        room = Room(name)
        room.pending = 1
        self.rooms[name] = room
        try:
            room.sub = await self.nc.subscribe(
                subjects.live_subject(name), cb=self._callback(room),
                pending_msgs_limit=65536, pending_bytes_limit=64 * 1024 * 1024,
            )
            # The server must have the subscription before we read the room's
            # last sequence, or an event published in between would be missed.
            await bus.sync(self.nc)
        except BaseException:
            del self.rooms[name]
            raise
        finally:
            room.ready.set()
        return room

    async def last_seq(self, room: Room) -> int:
        """The room's last stream sequence now (0 for a room with no messages)."""
        try:
            msg = await self.js.get_msg(subjects.CHAT_STREAM, subject=room.subject, direct=True)
            seq = int(msg.seq or 0)
        except NotFoundError:
            seq = 0
        if room.last_seq < 0:
            room.last_seq = seq  # baseline for gap detection
        return seq

    @staticmethod
    def has_hole(room: Room, floor: int) -> bool:
        """True if events above ``floor`` already left the replay buffer (a
        long join on a busy room): the join must then say ``missed_truncated``."""
        return bool(room.recent) and room.recent[0][1] > floor

    def attach(self, conn: Connection, room: Room, floor: int) -> None:
        """Add a member; replay what arrived above ``floor`` while it was joining."""
        room.pending -= 1
        if conn in room.members:
            return  # a second join of the same room never doubles delivery
        room.members[conn] = floor
        for seq, _, frame in room.recent:
            if seq > floor:
                if conn.write_frame(frame):
                    metrics.WS_MESSAGES_OUT.inc()
                room.members[conn] = seq

    async def abandon(self, room: Room) -> None:
        """A join that opened ``room`` failed before ``attach``."""
        room.pending -= 1
        await self._close_if_unused(room)

    async def detach(self, conn: Connection, name: str) -> None:
        room = self.rooms.get(name)
        if room is None:
            return
        room.members.pop(conn, None)
        await self._close_if_unused(room)

    async def _close_if_unused(self, room: Room) -> None:
        if not room.members and room.pending <= 0 and room.ready.is_set():
            await self._close(room)

    async def _close(self, room: Room) -> None:
        if self.rooms.get(room.name) is room:
            del self.rooms[room.name]
        if room.sub is not None:
            try:
                await room.sub.unsubscribe()
            except Exception as exc:  # connection closing: nothing left to undo
                event(log, "unsubscribe failed", logging.DEBUG, room=room.name, error=repr(exc))

    async def close_all(self) -> None:
        for room in list(self.rooms.values()):
            await self._close(room)

    def _callback(self, room: Room):  # type: ignore[no-untyped-def]
        async def on_live(msg: Msg) -> None:
            headers = msg.headers or {}
            try:
                seq = int(headers[subjects.HDR_SEQUENCE])
                prev = int(headers.get(subjects.HDR_LAST_SEQUENCE, "0"))
            except (KeyError, ValueError):
                metrics.WS_DROPPED.labels("bad_live_event").inc()
                return
            if seq <= room.last_seq:
                return  # already relayed (repaired earlier, or a redelivery)
            if 0 <= room.last_seq < prev:
                await self._repair(room, prev)
            self._deliver(room, seq, prev, msg.data)

        return on_live

    async def _repair(self, room: Room, upto: int) -> None:
        """Relay the room's events in (last_seq, upto] from the stream, in order."""
        start = room.last_seq + 1
        while room.last_seq < upto:
            try:
                raw = await self.js.get_msg(subjects.CHAT_STREAM, seq=start, subject=room.subject,
                                            next=True, direct=True)
            except NotFoundError:
                return
            except Exception as exc:
                event(log, "gap repair failed", logging.WARNING, room=room.name, error=repr(exc))
                return
            seq = int(raw.seq or 0)
            if seq > upto or seq <= room.last_seq:
                return
            metrics.GAP_REPAIRS.inc()
            self._deliver(room, seq, room.last_seq, raw.data or b"")
            start = seq + 1

    def _deliver(self, room: Room, seq: int, prev: int, data: bytes) -> None:
        try:
            record = _record_decoder.decode(data)
        except msgspec.DecodeError:
            metrics.WS_DROPPED.labels("bad_live_event").inc()
            room.last_seq = seq
            return
        frame = text_frame(encode(record_to_event(record, seq, prev)))
        room.last_seq = seq
        room.recent.append((seq, prev, frame))
        written = 0
        members = room.members
        for conn, floor in members.items():
            if seq > floor and conn.write_frame(frame):
                written += 1
        metrics.WS_MESSAGES_OUT.inc(written)
        metrics.DELIVERY_LATENCY.observe(_age(record.ts))


def _age(ts: str) -> float:
    try:
        sent = datetime.fromisoformat(ts).timestamp()
    except ValueError:
        return 0.0
    return max(0.0, time.time() - sent)
