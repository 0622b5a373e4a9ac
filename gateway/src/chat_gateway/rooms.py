"""Room subscriptions with local members, gap repair, and the fan-out.

A gateway subscribes (core NATS) to ``chat.live.<room>`` only while it has a
local member in that room. Each republished event carries its stream
sequence and the room's previous one; when the previous one is not the last
sequence this gateway relayed, the missing events are fetched from the
stream and relayed first, so members see an unbroken ``prev_seq`` chain even
if core NATS dropped something. Each event is decoded, encoded and framed
once, then the same bytes are written to every local member.

The stream is a window (chat_kit.stream): what has aged out of it is read
from history-service instead. A repair whose range starts below the
stream's first sequence takes that part from ``svc.history.messages``, and a
room with nothing left in the stream gets its last sequence from there too.

Each member has a floor: events at or below it are not written to it. A join
sets it to the last sequence the join already returned (``last_seq`` or the
end of ``missed``), so a join never doubles an event and never skips one.
Sequences only grow, so a floor never needs resetting once passed. A room
with joins in progress (``pending``) stays subscribed even while it has no
member yet, so a leave elsewhere cannot pull the subscription from under a
join.

Blocks are applied here, per member: a member whose ``conn.blocked`` holds
the sender gets nothing of the event, and its next event is re-encoded with
the ``prev_seq`` of its own chain (:mod:`.chains`). Everyone else pays one
truthiness test.

With the live subscription, and for the same lifetime, the room's state
subject (``chat.room.<room>.state``, from history-service) is subscribed:
read pointers are relayed as ``read`` events, a member's removal (or leave
elsewhere) takes that user's local sockets out of the room at once, and an
archive makes the room read-only here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from datetime import datetime
from typing import Any

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from chat_contract import subjects
from chat_contract.bus import (
    ChatRecord,
    HistoryReply,
    HistoryRequest,
    MemberNotice,
    ReadNotice,
    RoomState,
    RoomView,
    record_to_event,
)
from chat_contract.errors import ChatError, ErrorCode
from chat_contract.events import Message, ReadEvent, System, User, encode
from chat_kit import bus, metrics
from chat_kit.logs import event
from chat_kit.stream import StreamSettings, first_seq

from .chains import Chains
from .clock import now_rfc3339
from .connection import Connection
from .wsframe import text_frame

log = logging.getLogger("chat_gateway.rooms")

_record_decoder = msgspec.json.Decoder(ChatRecord)
_state_decoder: msgspec.json.Decoder[RoomState] = msgspec.json.Decoder(RoomState)
# Events kept per room for members whose join completes while they arrive.
RECENT_EVENTS = 256


# What a removed member's sockets are told (MemberNotice.event → text);
# "gone": found missing from the membership after a reconnect, reason unknown.
GONE_TEXT = {"removed": "you were removed from the room", "left": "you left the room",
             "gone": "you are no longer a member of the room"}

# The room as history-service sees it for one caller (svc.rooms.get).
FetchRoom = Callable[[str, User], Awaitable[RoomView]]

# After a removal took a socket out of a room: the rest of a leave (presence).
Evicted = Callable[[Connection, str], Awaitable[None]]

# A page of stored history (svc.history.messages, a trusted read without a
# user): where events that aged out of the stream are read.
FetchHistory = Callable[[HistoryRequest], Awaitable[HistoryReply]]
# Events per history page while repairing a gap (history's MAX_LIMIT).
HISTORY_PAGE = 500


class Room:
    __slots__ = ("name", "stream", "subject", "members", "sub", "state_sub", "last_seq", "recent",
                 "ready", "pending", "archived", "chains", "removals", "repairing")

    def __init__(self, name: str, layout: StreamSettings | None = None) -> None:
        self.name = name
        # Where its events are stored: one stream, or its partition's (chat_kit.stream).
        layout = layout or StreamSettings()
        self.stream = layout.stream_for_room(name)
        self.subject = layout.stored_subject(name)
        self.members: dict[Connection, int] = {}
        self.sub: Subscription | None = None
        self.state_sub: Subscription | None = None
        self.last_seq = -1  # unknown until the first event or the first join's lookup
        # (seq, prev_seq, frame, event) of the latest events, for joins completing now
        self.recent: deque[tuple[int, int, bytes, Message]] = deque(maxlen=RECENT_EVENTS)
        self.ready = asyncio.Event()
        self.pending = 0  # joins between open() and attach()/abandon()
        self.archived = False  # read-only: from the join's access reply or an ArchiveNotice
        self.chains: Chains[Connection] = Chains()
        # user id → removal notices seen: a join in flight checks it did not change
        self.removals: dict[str, int] = {}
        # One repair at a time: two interleaved ones could relay out of order.
        self.repairing = asyncio.Lock()


class RoomHub:
    def __init__(self, nc: NATS, js: JetStreamContext, on_evicted: Evicted | None = None,
                 history: FetchHistory | None = None,
                 layout: StreamSettings | None = None) -> None:
        self.nc = nc
        self.js = js
        self.layout = layout or StreamSettings()
        self.rooms: dict[str, Room] = {}
        self.on_evicted = on_evicted
        # None: the stream is the only source (tests of the stream alone).
        self.history = history
        self._tasks: set[asyncio.Task[None]] = set()

    async def open(self, name: str) -> Room:
        """The room's state, subscribing on first use; ends with ``attach`` or ``abandon``."""
        while (room := self.rooms.get(name)) is not None:
            room.pending += 1
            await room.ready.wait()
            if self.rooms.get(name) is room:
                return room
            room.pending -= 1  # its opener failed or it closed meanwhile: start over
        room = Room(name, self.layout)
        room.pending = 1
        self.rooms[name] = room
        try:
            room.sub = await self.nc.subscribe(
                subjects.live_subject(name), cb=self._callback(room),
                pending_msgs_limit=65536, pending_bytes_limit=64 * 1024 * 1024,
            )
            room.state_sub = await self.nc.subscribe(
                subjects.state_subject(name), cb=self._state_callback(room))
            # The server must have the subscription before we read the room's
            # last sequence, or an event published in between would be missed.
            await bus.sync(self.nc)
        except BaseException:
            del self.rooms[name]
            await self._unsubscribe(room)
            raise
        finally:
            room.ready.set()
        return room

    async def last_seq(self, room: Room) -> int:
        """The room's last stream sequence now (0 for a room with no messages).

        Nothing of the room in the stream: a new room, or one whose events all
        aged out; history-service knows which (ChatError if it cannot answer).
        """
        try:
            msg = await self.js.get_msg(room.stream, subject=room.subject,
                                        direct=True)
            seq = int(msg.seq or 0)
        except NotFoundError:
            seq = 0
            if self.history is not None:
                reply = await self.history(HistoryRequest(room=room.name, limit=1))
                seq = reply.messages[-1].seq if reply.messages else 0
        if room.last_seq < 0:
            room.last_seq = seq  # baseline for gap detection
        return seq

    @staticmethod
    def has_hole(room: Room, floor: int) -> bool:
        """True if events above ``floor`` already left the replay buffer (a
        long join on a busy room): the join must then say ``missed_truncated``."""
        return bool(room.recent) and room.recent[0][1] > floor

    def attach(self, conn: Connection, room: Room, floor: int, held: int | None = None) -> None:
        """Add a member; replay what arrived above ``floor`` while it was joining.

        ``held``: the last seq the client holds, when that is not ``floor`` (a
        blocker whose ``missed`` left out the room's last events): its next
        event then links to ``held``, so its chain shows no false gap.
        """
        room.pending -= 1
        if conn in room.members:
            return  # a second join of the same room never doubles delivery
        room.members[conn] = floor
        room.chains.forget(conn)
        if held is not None and held != floor:
            room.chains.owed[conn] = held
        written = 0
        for seq, _, frame, msg in room.recent:
            if seq > floor:
                written += _write(room.chains, conn, msg, frame)
                room.members[conn] = seq
        metrics.WS_MESSAGES_OUT.inc(written)

    async def abandon(self, room: Room) -> None:
        """A join that opened ``room`` failed before ``attach``."""
        room.pending -= 1
        await self._close_if_unused(room)

    async def detach(self, conn: Connection, name: str) -> None:
        room = self.rooms.get(name)
        if room is None:
            return
        room.members.pop(conn, None)
        room.chains.forget(conn)
        await self._close_if_unused(room)

    async def _close_if_unused(self, room: Room) -> None:
        if not room.members and room.pending <= 0 and room.ready.is_set():
            await self._close(room)

    async def _close(self, room: Room) -> None:
        if self.rooms.get(room.name) is room:
            del self.rooms[room.name]
        await self._unsubscribe(room)

    @staticmethod
    async def _unsubscribe(room: Room) -> None:
        for sub in (room.sub, room.state_sub):
            if sub is None:
                continue
            try:
                await sub.unsubscribe()
            except Exception as exc:  # connection closing: nothing left to undo
                event(log, "unsubscribe failed", logging.DEBUG, room=room.name, error=repr(exc))
        room.sub = room.state_sub = None

    async def close_all(self) -> None:
        for task in list(self._tasks):
            task.cancel()
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
                async with room.repairing:
                    await self._repair(room, prev)
                if seq <= room.last_seq:
                    return  # a catch-up relayed it meanwhile
            self._deliver(room, seq, prev, msg.data)

        return on_live

    async def catch_up(self) -> bool:
        """Relay what each open room stored while this node's NATS connection
        was away: core NATS drops what is republished during a reconnect, and
        in a room that then goes quiet no next event would show the gap.
        False if some room could not be brought up to date (retry later)."""
        complete = True
        for room in list(self.rooms.values()):
            if room.last_seq < 0 or self.rooms.get(room.name) is not room:
                continue
            last = await self.last_seq(room)
            if last > room.last_seq:
                async with room.repairing:
                    await self._repair(room, last)
                complete = complete and room.last_seq >= last
        return complete

    async def _repair(self, room: Room, upto: int) -> None:
        """Relay the room's events in (last_seq, upto] from the stream, in order;
        the part that aged out of the stream from history-service first."""
        start = room.last_seq + 1
        name = room.stream
        if self.history is not None:
            try:
                first = await first_seq(self.js, name)
                if start < first and not await self._repair_from_history(room, upto, first):
                    return
            except Exception as exc:
                event(log, "gap repair failed", logging.WARNING, room=room.name, error=repr(exc))
                return
            # Read once per repair: an event aging out in the milliseconds
            # between this and the stream reads below would be skipped. Gaps
            # are seconds old and the window days (or, bytes-bound, minutes).
            start = max(start, first, room.last_seq + 1)
        while room.last_seq < upto:
            try:
                raw = await self.js.get_msg(name, seq=start, subject=room.subject,
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

    async def _repair_from_history(self, room: Room, upto: int, first: int) -> bool:
        """Relay the room's stored events in (last_seq, min(upto, first - 1)]: the
        part of a gap the stream no longer holds. False if the stream part
        must not follow (the range is done, or history could not answer)."""
        assert self.history is not None
        before = min(first, upto + 1)
        after = room.last_seq
        while True:
            reply = await self.history(HistoryRequest(room=room.name, after=after,
                                                      before=before, limit=HISTORY_PAGE))
            for msg in reply.messages:
                if msg.seq > room.last_seq:
                    metrics.GAP_REPAIRS.inc()
                    self._relay(room, msgspec.structs.replace(msg, prev_seq=room.last_seq))
            if not reply.has_more or not reply.messages:
                return room.last_seq < upto
            after = reply.messages[-1].seq

    def _deliver(self, room: Room, seq: int, prev: int, data: bytes) -> None:
        try:
            record = _record_decoder.decode(data)
        except msgspec.DecodeError:
            metrics.WS_DROPPED.labels("bad_live_event").inc()
            room.last_seq = seq
            return
        self._relay(room, record_to_event(record, seq, prev))
        if record.kind == "message":  # edits and deletes carry the original's ts
            metrics.DELIVERY_LATENCY.observe(_age(record.ts))

    def _relay(self, room: Room, msg: Message) -> None:
        """Write one event to every member above its floor; it is now the room's last."""
        seq = msg.seq
        frame = text_frame(encode(msg))
        room.last_seq = seq
        room.recent.append((seq, msg.prev_seq, frame, msg))
        written = 0
        chains = room.chains
        owed = chains.owed
        for conn, floor in room.members.items():
            if seq > floor:
                # Only blockers, and members owed a prev_seq after a skip, pay.
                if conn.blocked or (owed and conn in owed):
                    written += _write(chains, conn, msg, frame)
                elif conn.write_frame(frame):
                    written += 1
        metrics.WS_MESSAGES_OUT.inc(written)

    # --- room state (chat.room.<room>.state) ---------------------------------

    def removals(self, name: str, user: str) -> int:
        """Removal notices seen for ``user`` in ``name`` (0 if the room is not open)."""
        room = self.rooms.get(name)
        return 0 if room is None else room.removals.get(user, 0)

    def _state_callback(self, room: Room):  # type: ignore[no-untyped-def]
        async def on_state(msg: Msg) -> None:
            try:
                notice = _state_decoder.decode(msg.data)
            except msgspec.DecodeError:
                metrics.WS_DROPPED.labels("bad_state_event").inc()
                return
            if isinstance(notice, ReadNotice):
                self._relay_read(room, notice)
            elif isinstance(notice, MemberNotice):
                self._evict(room, notice.user, notice.event)
            else:
                room.archived = True
                event(log, "room archived", room=room.name)
                _tell(room.members, System(room=room.name, text="room archived",
                                           ts=now_rfc3339()))

        return on_state

    @staticmethod
    def _relay_read(room: Room, notice: ReadNotice) -> None:
        frame = text_frame(encode(ReadEvent(room=room.name, user=notice.user, seq=notice.seq)))
        reader = notice.user.id
        written = 0
        for conn in room.members:
            if not (conn.blocked and reader in conn.blocked) and conn.write_frame(frame):
                written += 1
        metrics.WS_MESSAGES_OUT.inc(written)

    async def reconcile(self, fetch: FetchRoom) -> bool:
        """Catch up on state notices lost while NATS was away (core NATS drops
        what is published during a reconnect): for every open room, ask
        history-service for its members and archive flag, and take out the
        local sockets of users who are no longer members. False if
        history-service could not answer for some room (retry later).
        """
        complete = True
        for room in list(self.rooms.values()):
            users = {conn.user.id: conn.user for conn in room.members}
            for user in users.values():
                try:
                    view = await fetch(room.name, user)
                except ChatError as exc:
                    if exc.code in (ErrorCode.FORBIDDEN, ErrorCode.NOT_FOUND):
                        self._evict(room, user.id, "gone")  # may not even see it now
                        continue
                    complete = False
                    break
                present = {m.id for m in view.members or ()}
                for uid in users:
                    if uid not in present and uid != view.owner:
                        self._evict(room, uid, "gone")
                if view.archived and not room.archived:
                    room.archived = True
                    _tell(room.members, System(room=room.name, text="room archived",
                                               ts=now_rfc3339()))
                break
        return complete

    def _evict(self, room: Room, user: str, why: str) -> None:
        """Take ``user``'s sockets out of the room now; presence follows in a task.

        Synchronous up to the system event, so no event of the room reaches
        them after the notice; the rest awaits, and awaiting here could have
        this very subscription closed under its own callback.
        """
        room.removals[user] = room.removals.get(user, 0) + 1
        gone = [conn for conn in room.members if conn.user.id == user]
        if not gone:
            return
        for conn in gone:
            del room.members[conn]
            room.chains.forget(conn)
            conn.rooms.discard(room.name)
        _tell(gone, System(room=room.name, text=GONE_TEXT.get(why, GONE_TEXT["left"]),
                           ts=now_rfc3339()))
        event(log, "member evicted", room=room.name, user=user, reason=why, sockets=len(gone))
        self._spawn(self._after_evict(room, gone))

    async def _after_evict(self, room: Room, gone: list[Connection]) -> None:
        try:
            if self.on_evicted is not None:
                for conn in gone:
                    await self.on_evicted(conn, room.name)
            await self._close_if_unused(room)
        except Exception as exc:
            event(log, "eviction cleanup failed", logging.WARNING, room=room.name,
                  error=repr(exc))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _write(chains: Chains[Connection], conn: Connection, msg: Message, frame: bytes) -> int:
    """Deliver one event to a member that blocks someone or owes a ``prev_seq``."""
    if conn.blocked and msg.sender.id in conn.blocked:
        chains.skip(conn, msg.prev_seq)
        return 0
    owed = chains.prev_for(conn, msg.prev_seq)
    if owed is not None:  # its chain skipped events: show it its own last link
        frame = text_frame(encode(msgspec.structs.replace(msg, prev_seq=owed)))
    return 1 if conn.write_frame(frame) else 0


def _tell(conns: Iterable[Connection], notice: System) -> None:
    frame = text_frame(encode(notice))
    written = 0
    for conn in conns:
        if conn.write_frame(frame):
            written += 1
    metrics.WS_MESSAGES_OUT.inc(written)


def _age(ts: str) -> float:
    try:
        sent = datetime.fromisoformat(ts).timestamp()
    except ValueError:
        return 0.0
    return max(0.0, time.time() - sent)
