"""Live events of the rooms held here, in order and once: the relay path.

Each event republished on ``chat.live.<room>`` carries its stream sequence and
the room's previous one. The room an event belongs to is the one of the
subject it arrived on (the held :class:`~.localroom.LocalRoom` subscribed to
that subject, or read from that room's stored subject in a repair) — never
the ``room`` its payload names, so what a record is stored under (history
trusts the subject too) and where it is shown cannot differ.

When the previous sequence is not the last one relayed, the missing events
are fetched from the stream and relayed first, so members see an unbroken
``prev_seq`` chain even if core NATS dropped something. The stream is a
window (chat_kit.stream): what aged out of it is read from history-service
instead, and a room with nothing left in the stream gets its last sequence
from there too. After a NATS reconnect :meth:`Relay.catch_up` does the same
for every held room, as a room gone quiet would show no next event.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime

import msgspec
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from chat_contract import limits, subjects
from chat_contract.bus import ChatRecord, HistoryReply, HistoryRequest
from chat_contract.events import Message, ReactionEvent, RoomEvent
from chat_kit import metrics
from chat_kit.logs import event
from chat_kit.natsclient import header_value
from chat_kit.stream import first_seq

from .localroom import LocalRoom

log = logging.getLogger("chat_gateway.relay")

_record_decoder = msgspec.json.Decoder(ChatRecord)

# A page of stored history (svc.history.messages, a trusted read without a
# user): where events that aged out of the stream are read.
FetchHistory = Callable[[HistoryRequest], Awaitable[HistoryReply]]
# Events per history page while repairing a gap (what history-service serves at once).
HISTORY_PAGE = limits.MISSED_MAX
_SEQUENCE = subjects.HDR_SEQUENCE.encode()
_LAST_SEQUENCE = subjects.HDR_LAST_SEQUENCE.encode()


def live_event(room: str, record: ChatRecord, seq: int, prev_seq: int) -> RoomEvent:
    """The client event of a stored record, in ``room`` (the subject's, not the payload's)."""
    kind = record.kind
    if kind == "message":
        if record.thread is None and not record.mentions and not record.attachments:
            # most messages: the fewest fields
            return Message(room=room, msg_id=record.msg_id, seq=seq, prev_seq=prev_seq,
                           sender=record.sender, ts=record.ts, text=record.text,
                           reply_to=record.reply_to)
        return Message(room=room, msg_id=record.msg_id, seq=seq, prev_seq=prev_seq,
                       sender=record.sender, ts=record.ts, text=record.text,
                       reply_to=record.reply_to, thread=record.thread,
                       mentions=record.mentions or None,
                       attachments=record.attachments or None)
    if kind == "react" or kind == "unreact":
        return ReactionEvent(room=room, msg_id=record.msg_id, seq=seq, prev_seq=prev_seq,
                             user=record.sender, emoji=record.text or "", on=kind == "react",
                             ts=record.ts)
    return Message(room=room, msg_id=record.msg_id, seq=seq, prev_seq=prev_seq,
                   sender=record.sender, ts=record.ts,
                   text=None if kind == "delete" else record.text, reply_to=record.reply_to,
                   edited=kind == "edit", deleted=kind == "delete", thread=record.thread)


class Relay:
    def __init__(self, js: JetStreamContext, history: FetchHistory | None = None) -> None:
        self.js = js
        # None: the stream is the only source (tests of the stream alone).
        self.history = history
        self._repairs: set[asyncio.Task[None]] = set()  # held until done

    def on_live(self, room: LocalRoom, data: bytes, headers: bytes) -> None:
        """One message of ``room``'s live subscription, called inline by the NATS
        reader (chat_kit.natsclient): relayed at once unless a gap needs a
        repair first, which then runs as a task, and the events arriving
        meanwhile wait behind it in the room's backlog, in order."""
        try:
            seq = int(header_value(headers, _SEQUENCE) or b"")
            prev = int(header_value(headers, _LAST_SEQUENCE) or b"0")
        except ValueError:
            metrics.WS_DROPPED.labels("bad_live_event").inc()
            return
        if room.backlog is not None:  # a repair is under way: keep the order
            room.backlog.append((seq, prev, data))
            return
        if seq <= room.last_seq:
            return  # already relayed (repaired earlier, or a redelivery)
        if 0 <= room.last_seq < prev:
            room.backlog = [(seq, prev, data)]
            task = asyncio.create_task(self._repair_then_relay(room))
            self._repairs.add(task)
            task.add_done_callback(self._repairs.discard)
            return
        self.deliver(room, seq, prev, data)

    async def _repair_then_relay(self, room: LocalRoom) -> None:
        """Fill the gap before the backlog's events, then relay them in order."""
        backlog = room.backlog
        assert backlog is not None
        try:
            async with room.repairing:
                while backlog:
                    seq, prev, data = backlog.pop(0)
                    if seq <= room.last_seq:
                        continue
                    if 0 <= room.last_seq < prev:
                        await self._repair(room, prev)
                        if seq <= room.last_seq:
                            continue  # a catch-up relayed it meanwhile
                    self.deliver(room, seq, prev, data)
        finally:
            room.backlog = None  # no await since the last check: nothing is stranded

    def deliver(self, room: LocalRoom, seq: int, prev: int, data: bytes) -> None:
        """Relay one stored record of ``room`` to its members."""
        try:
            record = _record_decoder.decode(data)
        except msgspec.DecodeError:
            metrics.WS_DROPPED.labels("bad_live_event").inc()
            room.last_seq = seq
            return
        room.relay(live_event(room.name, record, seq, prev))
        if record.kind == "message":  # changes carry the original's ts (reactions: count none)
            metrics.DELIVERY_LATENCY.observe(_age(record.ts))

    async def last_seq(self, room: LocalRoom) -> int:
        """The room's last stream sequence now (0 for a room with no messages).

        Nothing of the room in the stream: a new room, or one whose events all
        aged out; history-service knows which (ChatError if it cannot answer).
        """
        try:
            msg = await self.js.get_msg(room.stream, subject=room.subject, direct=True)
            seq = int(msg.seq or 0)
        except NotFoundError:
            seq = 0
            if self.history is not None:
                reply = await self.history(HistoryRequest(room=room.name, limit=1))
                seq = reply.messages[-1].seq if reply.messages else 0
        if room.last_seq < 0:
            room.last_seq = seq  # baseline for gap detection
        return seq

    async def catch_up(self, rooms: Iterable[LocalRoom]) -> bool:
        """Relay what each room stored while this node's NATS connection was
        away. False if some room could not be brought up to date (retry later)."""
        complete = True
        for room in rooms:
            if room.last_seq < 0 or room.closed:
                continue
            last = await self.last_seq(room)
            if last > room.last_seq:
                async with room.repairing:
                    await self._repair(room, last)
                complete = complete and room.last_seq >= last
        return complete

    async def _repair(self, room: LocalRoom, upto: int) -> None:
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
            self.deliver(room, seq, room.last_seq, raw.data or b"")
            start = seq + 1

    async def _repair_from_history(self, room: LocalRoom, upto: int, first: int) -> bool:
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
                    room.relay(msgspec.structs.replace(msg, room=room.name,
                                                       prev_seq=room.last_seq))
            if not reply.has_more or not reply.messages:
                return room.last_seq < upto
            after = reply.messages[-1].seq


def _age(ts: str) -> float:
    try:
        sent = datetime.fromisoformat(ts).timestamp()
    except ValueError:
        return 0.0
    return max(0.0, time.time() - sent)
