"""What each accepted client frame does: the I/O behind a :class:`~.session.Session`'s calls.

The session has already applied every rule it can decide alone (docs/protocol.md
§3: decoding, joined rooms, text size, archived rooms, the send bucket, ...).
:meth:`Handlers.perform` makes the call — service requests, durable
publishes, the room hub — and answers it with its ``ack`` fields through
``answer``; failures raise ``ChatError``. Handlers see narrow interfaces
only: :class:`~.services.Publisher`, the :class:`~.rooms.RoomHub`, the
:class:`~.presence.Presence` of this node.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec
from nats.errors import Error as NatsError
from nats.js.errors import NotFoundError

from chat_contract import limits, rpc, subjects
from chat_contract.bus import (
    AccessRequest,
    ChangeRequest,
    ChatRecord,
    ClaimRequest,
    HistoryRequest,
    ReactRequest,
    ReadRequest,
    ResolveRequest,
)
from chat_contract.errors import ChatError, ErrorCode
from chat_contract.events import Message, User, encode
from chat_contract.mentions import mention_names

from . import session as s
from .clock import now_rfc3339
from .connection import Connection
from .localroom import LocalRoom
from .presence import Presence
from .rooms import Admission, RoomHub
from .services import Publisher, Requests

Answer = Callable[[dict[str, Any]], None]
_record_decoder = msgspec.json.Decoder(ChatRecord)


@dataclass(frozen=True)
class JoinOptions:
    auto_create_rooms: bool  # CHAT_GATEWAY_AUTO_CREATE_ROOMS
    room_member_cap: int  # CHAT_GATEWAY_ROOM_MEMBER_CAP (0: none)
    joins_in_flight: int = 64  # CHAT_GATEWAY_JOINS_IN_FLIGHT


# Message ids: a random per-process prefix and a counter. Unique across nodes
# and restarts without a syscall per message (urandom showed in profiles).
_id_prefix = "m_" + secrets.token_urlsafe(9) + "_"
_id_counter = itertools.count(1)


def new_msg_id() -> str:
    return f"{_id_prefix}{next(_id_counter):x}"


class Handlers:
    def __init__(self, bus: Publisher, hub: RoomHub, presence: Presence,
                 options: JoinOptions) -> None:
        self.bus = bus
        self.hub = hub
        self.presence = presence
        self.options = options
        self._join_slots = asyncio.Semaphore(options.joins_in_flight)

    async def perform(self, conn: Connection, call: s.Call, answer: Answer) -> None:
        """Make ``call`` for ``conn``'s session; ``answer`` it (once) with its ack fields."""
        match call:
            case s.SendMessage():
                answer(await self.send(conn, call))
            case s.JoinRoom():
                await self.join(conn, call, answer)
            case s.LeaveRoom():
                await self.hub.leave(conn, call.room)
                answer({})
            case s.FetchHistory():
                reply = await self.bus.request(rpc.HISTORY_MESSAGES, HistoryRequest(
                    room=call.room, user=conn.user.id, before=call.before, after=call.after,
                    limit=call.limit))
                answer({"messages": reply.messages, "has_more": reply.has_more})
            case s.Members():
                answer({"members": await self.presence.members(call.room)})
            case s.SetTyping():
                await self.presence.typing(conn, call.room, call.state)
                answer({})
            case s.ChangeMessage():
                answer(await self.change(conn, call))
            case s.ReactTo():
                answer(await self.react(conn, call))
            case s.MarkRead():
                await self.bus.request(rpc.ROOMS_READ, ReadRequest(
                    caller=conn.user, room=call.room, seq=call.seq))
                answer({})
            case _:  # pragma: no cover - Verify is the endpoint's
                raise ChatError(ErrorCode.BAD_REQUEST, "unknown frame")

    async def send(self, conn: Connection, call: s.SendMessage) -> dict[str, Any]:
        record = ChatRecord(room=call.room, msg_id=new_msg_id(), sender=conn.user,
                            ts=now_rfc3339(), text=call.text, reply_to=call.reply_to)
        # A thread or an "@" costs one request (root checked, names resolved
        # among the members); a plain send pays one substring test.
        if call.thread is not None or "@" in call.text:
            await self._resolve(conn, call, record)
        # Dedupe only what a client may retry: its client_msg_id, scoped by user so
        # one user's ids never collide with another's. A fresh msg_id needs none.
        dedupe = f"{conn.user.id}:{call.client_msg_id}" if call.client_msg_id else None
        headers = {subjects.HDR_MSG_ID: dedupe} if dedupe is not None else None
        if call.attachments:  # a plain send pays this one test
            await self._claim(conn, call, record, dedupe)
        claimed = record.msg_id
        ack = await self.bus.publish(subjects.room_subject(call.room), encode(record), headers)
        if ack.duplicate:
            # The same client_msg_id within the window: answer with the original.
            try:
                # The ack names the stream (the room's partition when partitioned).
                stored = await self.bus.stored(ack.stream, ack.seq)
            except NotFoundError:  # erased (deleted since) or aged out: history knows which
                return await stored_original(self.bus, call.room, ack.seq)
            record = _record_decoder.decode(stored.data or b"")
            if (record.room, record.text) != (call.room, call.text) or (
                    [a.id for a in record.attachments] != (call.attachments or [])):  # §3.3
                if call.attachments and record.msg_id != claimed:
                    await self._unclaim(conn, call, claimed)  # never stored under it
                raise ChatError(ErrorCode.CONFLICT,
                                "client_msg_id already used for another message")
        return {"msg_id": record.msg_id, "seq": ack.seq, "ts": record.ts}

    async def _claim(self, conn: Connection, call: s.SendMessage, record: ChatRecord,
                     dedupe: str | None) -> None:
        """Attach the caller's uploads to the message (history-service checks
        owner, room, not yet attached). A retry of the same ``client_msg_id``
        is granted the same uploads under the first attempt's ``msg_id``, so
        the stream's dedupe answers it with the original."""
        assert call.attachments
        claim = await self.bus.request(rpc.ATTACHMENTS_CLAIM, ClaimRequest(
            caller=conn.user, room=call.room, ids=call.attachments, msg_id=record.msg_id,
            key=dedupe or record.msg_id))
        record.msg_id = claim.msg_id
        record.attachments = claim.attachments

    async def _unclaim(self, conn: Connection, call: s.SendMessage, msg_id: str) -> None:
        """Give the uploads back: the send was refused after its claim."""
        assert call.attachments
        await self.bus.request(rpc.ATTACHMENTS_CLAIM, ClaimRequest(
            caller=conn.user, room=call.room, ids=call.attachments, msg_id=msg_id, key="",
            release=True))

    async def _resolve(self, conn: Connection, call: s.SendMessage, record: ChatRecord) -> None:
        """Fill ``record``'s ``thread`` (the root, checked) and ``mentions``
        (members named by ``@name``) from history-service."""
        names = mention_names(call.text)
        if call.thread is None and not names:
            return
        reply = await self.bus.request(rpc.ROOMS_RESOLVE, ResolveRequest(
            caller=conn.user, room=call.room, thread=call.thread, names=names))
        record.thread = reply.thread
        record.mentions = reply.mentions

    async def react(self, conn: Connection, call: s.ReactTo) -> dict[str, Any]:
        """``react``: history-service decides (a member; a message of the room, not
        deleted; the distinct-emoji cap) and says whether anything changes; a
        change is a new event of the room carrying the message's ``msg_id``."""
        grant = await self.bus.request(rpc.ROOMS_REACT, ReactRequest(
            caller=conn.user, room=call.room, msg_id=call.msg_id, emoji=call.emoji,
            on=call.on))
        if not grant.publish:  # already so: nothing to tell anyone
            return {"seq": grant.seq}
        record = ChatRecord(room=call.room, msg_id=call.msg_id, sender=conn.user,
                            ts=now_rfc3339(), kind="react" if call.on else "unreact",
                            text=call.emoji)
        ack = await self.bus.publish(subjects.room_subject(call.room), encode(record))
        return {"seq": ack.seq}

    async def change(self, conn: Connection, call: s.ChangeMessage) -> dict[str, Any]:
        """``edit``/``delete``: history-service decides (own message; the owner may
        delete any), then the change is a new event of the room carrying ``msg_id``."""
        grant = await self.bus.request(rpc.ROOMS_CHANGE, ChangeRequest(
            caller=conn.user, room=call.room, msg_id=call.msg_id, action=call.action))
        record = ChatRecord(room=call.room, msg_id=call.msg_id, sender=grant.sender,
                            ts=grant.ts, kind=call.action, text=call.text,
                            reply_to=grant.reply_to, thread=grant.thread)
        ack = await self.bus.publish(subjects.room_subject(call.room), encode(record))
        return {"seq": ack.seq}

    async def join(self, conn: Connection, call: s.JoinRoom, answer: Answer) -> None:
        """At most ``joins_in_flight`` at once; a socket that closed while its
        join waited for a slot is skipped (its client has moved on)."""
        async with self._join_slots:
            if conn.closed:
                return
            await self._join(conn, call, answer)

    async def _join(self, conn: Connection, call: s.JoinRoom, answer: Answer) -> None:
        """Subscribed (live and state) before asking: a removal or archive decided
        after the access reply reaches this node as a notice (rooms.RoomHub.join)."""
        if self.options.room_member_cap and call.room not in conn.rooms:
            await self._check_room_cap(conn, call.room)
        if not self.bus.connected:
            raise ChatError(ErrorCode.UNAVAILABLE, "message store unavailable")

        async def admit(room: LocalRoom) -> Admission:
            blocks_seen = conn.blocks_seen
            access = await self.bus.request(rpc.ROOMS_ACCESS, AccessRequest(
                caller=conn.user, room=call.room, password=call.password,
                create=self.options.auto_create_rooms))
            conn.blocks_fetched(access.blocked, blocks_seen)
            # A room held here knows its last sequence (no stream read per join).
            known = room.known_last_seq()
            if known is not None and call.since is not None and call.since > known:
                known = None  # the client saw more (on another gateway): ask the stream
            last_seq = known if known is not None else await self.hub.last_seq(room)
            found = Admission(last_seq=last_seq, floor=last_seq, since=call.since,
                              archived=access.room.archived)
            if call.since is not None and call.since < last_seq:
                # A reconnect that missed a few plain messages is answered from
                # the room's replay buffer; blockers' (filtered, re-linked)
                # and anything else from history-service.
                recent = None if conn.blocked else room.missed_since(call.since)
                if recent and recent[-1].seq == last_seq:
                    found.missed = list(recent)
                    return found
                reply = await self.bus.request(rpc.HISTORY_MESSAGES, HistoryRequest(
                    room=call.room, user=conn.user.id, after=call.since,
                    limit=limits.MISSED_MAX, min_seq=last_seq))
                found.missed = reply.messages
                found.truncated = reply.has_more
                if reply.messages:
                    last = reply.messages[-1].seq
                    found.floor = last if found.truncated else max(last_seq, last)
            return found

        def admitted(found: Admission, members: list[User], hole: bool) -> None:
            result: dict[str, Any] = {"room": call.room, "members": members,
                                      "last_seq": found.last_seq, "missed": found.missed}
            if found.truncated or hole:
                result["missed_truncated"] = True
            answer(result)

        try:
            await self.hub.join(conn, call.room, admit, admitted)
        except (NatsError, TimeoutError) as exc:
            raise ChatError(ErrorCode.UNAVAILABLE, "message store unavailable") from exc

    async def _check_room_cap(self, conn: Connection, room: str) -> None:
        """At most ``room_member_cap`` users in the room at once (the user's other
        tabs do not count twice). Counted from presence, so two joins racing on
        two gateways may overshoot by one; presence down → not enforced."""
        try:
            members = await self.presence.members(room)
        except ChatError:
            return
        cap = self.options.room_member_cap
        if len(members) >= cap and all(m.id != conn.user.id for m in members):
            raise ChatError(ErrorCode.FORBIDDEN, f"room {room} is full ({cap} members)")


async def stored_original(bus: Requests, room: str, seq: int) -> dict[str, Any]:
    """A duplicate send's original, from history-service: the stream no longer has it."""
    reply = await bus.request(rpc.HISTORY_MESSAGES, HistoryRequest(
        room=room, after=seq - 1, before=seq + 1, limit=1, min_seq=seq))
    found = [m for m in reply.messages if m.seq == seq and isinstance(m, Message)]
    if not found or found[0].deleted:
        raise ChatError(ErrorCode.CONFLICT, "that message was deleted")
    return {"msg_id": found[0].msg_id, "seq": seq, "ts": found[0].ts}
