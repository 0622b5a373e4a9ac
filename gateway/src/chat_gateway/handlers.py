"""What each client frame does. A handler returns the ``ack`` result fields,
or ``None`` for frames that are not acked; failures raise ``ChatError``.
"""

from __future__ import annotations

import itertools
import secrets
import time
from typing import TYPE_CHECKING, Any, Literal

import msgspec
from nats.errors import Error as NatsError
from nats.js.errors import NotFoundError

from chat_contract import frames, subjects
from chat_contract.bus import (
    AccessReply,
    AccessRequest,
    ChangeGrant,
    ChangeRequest,
    ChatRecord,
    HistoryReply,
    HistoryRequest,
    ReadReply,
    ReadRequest,
)
from chat_contract.errors import ChatError, ErrorCode
from chat_contract.events import Pong, encode, encode_ack
from chat_kit import bus

from .clock import now_rfc3339
from .connection import Connection

if TYPE_CHECKING:
    from .component import Gateway

Result = dict[str, Any] | None
MAX_MISSED = 500
_record_decoder = msgspec.json.Decoder(ChatRecord)
MAX_MSG_ID = 64


# Message ids: a random per-process prefix and a counter. Unique across nodes
# and restarts without a syscall per message (urandom showed in profiles).
_id_prefix = "m_" + secrets.token_urlsafe(9) + "_"
_id_counter = itertools.count(1)


def new_msg_id() -> str:
    return f"{_id_prefix}{next(_id_counter):x}"


async def handle(gw: Gateway, conn: Connection, frame: frames.ClientFrame) -> Result:
    match frame:
        case frames.Send():
            return await send(gw, conn, frame)
        case frames.Join():
            return await join(gw, conn, frame)
        case frames.Leave():
            return await leave(gw, conn, frame)
        case frames.History():
            return await history(gw, conn, frame)
        case frames.Auth():
            return await reauth(gw, conn, frame)
        case frames.Presence():
            return await presence(gw, conn, frame)
        case frames.Ping():
            conn.send(encode(Pong()))
            return None
        case frames.Typing():
            _require_joined(conn, frame.room)
            await gw.presence.typing(conn, frame.room, frame.state)
            return {}  # acked only if it carries an id (§3.2: every id is answered)
        case frames.Edit():
            return await change(gw, conn, frame.room, frame.msg_id, "edit", frame.text)
        case frames.Delete():
            return await change(gw, conn, frame.room, frame.msg_id, "delete", None)
        case frames.Read():
            return await read(gw, conn, frame)
    raise ChatError(ErrorCode.BAD_REQUEST, "unknown frame")  # pragma: no cover


def _require_joined(conn: Connection, room: str) -> None:
    if room not in conn.rooms:
        raise ChatError(ErrorCode.FORBIDDEN, f"not joined to room {room}")


def _require_writable(gw: Gateway, room: str) -> None:
    hub_room = gw.hub.rooms.get(room)
    if hub_room is not None and hub_room.archived:
        raise ChatError(ErrorCode.FORBIDDEN, f"room {room} is archived (read-only)")


async def send(gw: Gateway, conn: Connection, frame: frames.Send) -> Result:
    _require_joined(conn, frame.room)
    text = frames.check_text(frame.text)
    _require_writable(gw, frame.room)
    if not conn.bucket.take():
        raise ChatError(ErrorCode.RATE_LIMITED, "too many messages, slow down")
    record = ChatRecord(room=frame.room, msg_id=new_msg_id(), sender=conn.user,
                        ts=now_rfc3339(), text=text, reply_to=frame.reply_to)
    # Dedupe only what a client may retry: its client_msg_id, scoped by user so
    # one user's ids never collide with another's. A fresh msg_id needs none.
    headers = ({subjects.HDR_MSG_ID: f"{conn.user.id}:{frame.client_msg_id}"}
               if frame.client_msg_id else None)
    ack = await bus.publish_durable(gw.nc, subjects.room_subject(frame.room), encode(record),
                                    gw.settings.common.request_timeout, headers)
    if ack.duplicate:
        # The same client_msg_id within the window: answer with the original.
        try:
            # The ack names the stream (the room's partition when partitioned).
            stored = await gw.js.get_msg(ack.stream, seq=ack.seq, direct=True)
        except NotFoundError:  # erased (deleted since) or aged out: history knows which
            return await _stored_original(gw, frame.room, ack.seq)
        record = _record_decoder.decode(stored.data or b"")
        if (record.room, record.text) != (frame.room, text):  # §3.3: not a retry
            raise ChatError(ErrorCode.CONFLICT, "client_msg_id already used for another message")
    return {"msg_id": record.msg_id, "seq": ack.seq, "ts": record.ts}


async def _stored_original(gw: Gateway, room: str, seq: int) -> Result:
    """A duplicate send's original, from history-service: the stream no longer has it."""
    reply = await bus.call(
        gw.nc, subjects.HISTORY_MESSAGES,
        HistoryRequest(room=room, after=seq - 1, before=seq + 1, limit=1, min_seq=seq),
        HistoryReply, gw.settings.common.request_timeout)
    found = [m for m in reply.messages if m.seq == seq]
    if not found or found[0].deleted:
        raise ChatError(ErrorCode.CONFLICT, "that message was deleted")
    return {"msg_id": found[0].msg_id, "seq": seq, "ts": found[0].ts}


async def change(gw: Gateway, conn: Connection, room: str, msg_id: str,
                 action: Literal["edit", "delete"], text: str | None) -> Result:
    """``edit``/``delete``: history-service decides (own message; the owner may
    delete any), then the change is a new event of the room carrying ``msg_id``."""
    _require_joined(conn, room)
    if len(msg_id) > MAX_MSG_ID:  # no message has such an id (§8: unknown → not_found)
        raise ChatError(ErrorCode.NOT_FOUND, f"no message {msg_id[:MAX_MSG_ID]}… in {room}")
    if text is not None:
        text = frames.check_text(text)
        _require_writable(gw, room)  # deleting one's own message stays possible (privacy)
    if not conn.bucket.take():
        raise ChatError(ErrorCode.RATE_LIMITED, "too many messages, slow down")
    timeout = gw.settings.common.request_timeout
    grant = await bus.call(gw.nc, subjects.ROOMS_CHANGE,
                           ChangeRequest(caller=conn.user, room=room, msg_id=msg_id,
                                         action=action),
                           ChangeGrant, timeout)
    record = ChatRecord(room=room, msg_id=msg_id, sender=grant.sender, ts=grant.ts, kind=action,
                        text=text, reply_to=grant.reply_to)
    ack = await bus.publish_durable(gw.nc, subjects.room_subject(room), encode(record), timeout)
    return {"seq": ack.seq}


async def read(gw: Gateway, conn: Connection, frame: frames.Read) -> Result:
    """Move the read pointer; the ``read`` event comes back on the room's state subject."""
    _require_joined(conn, frame.room)
    assert frame.seq is not None  # decode_frame refuses a read without seq
    await bus.call(gw.nc, subjects.ROOMS_READ,
                   ReadRequest(caller=conn.user, room=frame.room, seq=frame.seq),
                   ReadReply, gw.settings.common.request_timeout)
    return {}


async def join(gw: Gateway, conn: Connection, frame: frames.Join) -> Result:
    if frame.room not in conn.rooms and len(conn.rooms) >= gw.settings.max_rooms:
        raise ChatError(ErrorCode.FORBIDDEN, f"at most {gw.settings.max_rooms} joined rooms")
    if gw.settings.room_member_cap and frame.room not in conn.rooms:
        await _check_room_cap(gw, conn, frame.room)
    if not gw.nc.is_connected:
        raise ChatError(ErrorCode.UNAVAILABLE, "message store unavailable")
    timeout = gw.settings.common.request_timeout
    # Subscribed (live and state) before asking: a removal or archive decided
    # after the access reply reaches this node as a notice.
    room = await gw.hub.open(frame.room)
    try:
        # Read before asking: a removal that commits while the decision is on
        # its way back may publish its notice before the reply arrives.
        removals = gw.hub.removals(frame.room, conn.user.id)
        blocks_seen = conn.blocks_seen
        access = await bus.call(
            gw.nc, subjects.ROOMS_ACCESS,
            AccessRequest(caller=conn.user, room=frame.room, password=frame.password,
                          create=gw.settings.auto_create_rooms),
            AccessReply, timeout)
        conn.blocks_fetched(access.blocked, blocks_seen)
        # An ArchiveNotice may have overtaken this reply; archiving is one-way.
        room.archived = room.archived or access.room.archived
        last_seq = await gw.hub.last_seq(room)
        missed: list[Any] = []
        truncated = False
        floor = last_seq
        if frame.since is not None and frame.since < last_seq:
            reply = await bus.call(
                gw.nc, subjects.HISTORY_MESSAGES,
                HistoryRequest(room=frame.room, user=conn.user.id, after=frame.since,
                               limit=MAX_MISSED, min_seq=last_seq),
                HistoryReply, timeout)
            missed = reply.messages
            truncated = reply.has_more
            if missed:
                floor = missed[-1].seq if truncated else max(last_seq, missed[-1].seq)
        members = await gw.presence.join(conn, frame.room)
        if gw.hub.removals(frame.room, conn.user.id) != removals:
            # Removed (or left elsewhere) while this join was under way.
            await gw.presence.leave(conn, frame.room)
            raise ChatError(ErrorCode.FORBIDDEN, f"no longer a member of room {frame.room}")
    except BaseException as exc:
        await gw.hub.abandon(room)
        refused = isinstance(exc, ChatError) and exc.code in (ErrorCode.FORBIDDEN,
                                                              ErrorCode.NOT_FOUND)
        if refused and frame.room in conn.rooms:
            # Joined before, refused now (a notice this node missed): out of the room.
            conn.rooms.discard(frame.room)
            await gw.hub.detach(conn, frame.room)
            await gw.presence.leave(conn, frame.room)
        if isinstance(exc, (NatsError, TimeoutError)):
            raise ChatError(ErrorCode.UNAVAILABLE, "message store unavailable") from exc
        raise
    # From here to attach() nothing awaits: the ack is queued before any event
    # of the room, and no event can slip between the ack and the replay.
    conn.rooms.add(frame.room)
    result: dict[str, Any] = {"room": frame.room, "members": members, "last_seq": last_seq,
                              "missed": missed}
    if truncated or gw.hub.has_hole(room, floor):
        result["missed_truncated"] = True
    if frame.id is not None:
        conn.send(encode_ack(frame.id, result))
    held = None
    if conn.blocked and frame.since is not None and frame.since < last_seq and not truncated:
        held = missed[-1].seq if missed else frame.since
    gw.hub.attach(conn, room, floor, held)
    return None


async def _check_room_cap(gw: Gateway, conn: Connection, room: str) -> None:
    """At most ``room_member_cap`` users in the room at once (the user's other
    tabs do not count twice). Counted from presence, so two joins racing on
    two gateways may overshoot by one; presence down → not enforced."""
    try:
        members = await gw.presence.members(room)
    except ChatError:
        return
    cap = gw.settings.room_member_cap
    if len(members) >= cap and all(m.id != conn.user.id for m in members):
        raise ChatError(ErrorCode.FORBIDDEN, f"room {room} is full ({cap} members)")


async def leave(gw: Gateway, conn: Connection, frame: frames.Leave) -> Result:
    conn.rooms.discard(frame.room)
    await gw.hub.detach(conn, frame.room)
    await gw.presence.leave(conn, frame.room)
    return {}


async def history(gw: Gateway, conn: Connection, frame: frames.History) -> Result:
    reply = await bus.call(
        gw.nc, subjects.HISTORY_MESSAGES,
        HistoryRequest(room=frame.room, user=conn.user.id, before=frame.before,
                       after=frame.after, limit=frame.limit),
        HistoryReply, gw.settings.common.request_timeout)
    return {"messages": reply.messages, "has_more": reply.has_more}


async def reauth(gw: Gateway, conn: Connection, frame: frames.Auth) -> Result:
    claims = await gw.verifier.verify_async(frame.token)
    if claims.sub != conn.user.id:
        raise ChatError(ErrorCode.FORBIDDEN, "token belongs to another user")
    conn.token_exp = claims.exp
    return {}


async def presence(gw: Gateway, conn: Connection, frame: frames.Presence) -> Result:
    _require_joined(conn, frame.room)
    return {"members": await gw.presence.members(frame.room)}


def token_seconds_left(conn: Connection) -> float:
    return conn.token_exp - time.time()
