"""Client → server frames (docs/protocol.md §3.2–3.3), a tagged union on ``type``.

Field rules that map to ``bad_request`` (types, room ids, ``limit`` range,
request ids) live in the types so one decode validates them. Text length maps
to ``too_large`` instead, so it is checked by :func:`check_text`, not here.
Every bound is one of :mod:`.limits` (docs/protocol.md §8.1).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from . import limits
from .emoji import check_emoji
from .errors import ChatError, ErrorCode
from .rooms import RoomId

# The names other modules import, kept as aliases of the limits.
MAX_TEXT_CHARS = limits.TEXT_MAX_CHARS
MAX_SEQ = limits.SEQ_MAX

RequestId = Annotated[str, msgspec.Meta(max_length=limits.REQUEST_ID_MAX)]
# Sequences are JetStream's uint64, stored as PostgreSQL bigint: bound them there.
Seq = Annotated[int, msgspec.Meta(ge=0, le=limits.SEQ_MAX)]
Limit = Annotated[int, msgspec.Meta(ge=limits.PAGE_MIN, le=limits.PAGE_MAX)]
MsgId = Annotated[str, msgspec.Meta(max_length=limits.MSG_ID_MAX)]
ClientMsgId = Annotated[str, msgspec.Meta(min_length=1, max_length=limits.CLIENT_MSG_ID_MAX)]
AttachmentId = Annotated[str, msgspec.Meta(min_length=1, max_length=limits.ATTACHMENT_ID_MAX)]
AttachmentIds = Annotated[list[AttachmentId],
                          msgspec.Meta(max_length=limits.ATTACHMENTS_PER_MESSAGE_MAX)]


class _Frame(msgspec.Struct, tag_field="type", forbid_unknown_fields=False):
    id: RequestId | None = None


class Auth(_Frame, tag="auth"):
    token: str = ""


class Join(_Frame, tag="join"):
    room: RoomId = ""
    password: str | None = None
    since: Seq | None = None


class Leave(_Frame, tag="leave"):
    room: RoomId = ""


class Send(_Frame, tag="send"):
    room: RoomId = ""
    text: str = ""
    reply_to: MsgId | None = None
    client_msg_id: ClientMsgId | None = None
    # The root message of the thread this message answers (history-service checks it).
    thread: MsgId | None = None
    # Upload ids (POST /v1/rooms/{id}/attachments) of the caller in this room.
    attachments: AttachmentIds | None = None


class Edit(_Frame, tag="edit"):
    room: RoomId = ""
    msg_id: str = ""
    text: str = ""


class Delete(_Frame, tag="delete"):
    room: RoomId = ""
    msg_id: str = ""


class React(_Frame, tag="react"):
    room: RoomId = ""
    msg_id: str = ""
    emoji: str = ""  # one emoji sequence: checked in decode_frame (chat_contract.emoji)
    on: bool | None = None  # required: checked in decode_frame


class Typing(_Frame, tag="typing"):
    room: RoomId = ""
    state: Literal["start", "stop"] = "start"


class Read(_Frame, tag="read"):
    room: RoomId = ""
    seq: Seq | None = None  # required: checked in decode_frame


class History(_Frame, tag="history"):
    room: RoomId = ""
    before: Seq | None = None
    after: Seq | None = None
    limit: Limit = 50


class Presence(_Frame, tag="presence"):
    room: RoomId = ""


class Ping(_Frame, tag="ping"):
    pass


ClientFrame = (Auth | Join | Leave | Send | Edit | Delete | React | Typing | Read | History
               | Presence | Ping)

# Frames that name a room must name one: "" is the default only so that a
# missing field and a bad one give the same bad_request.
_ROOM_FRAMES = (Join, Leave, Send, Edit, Delete, React, Typing, Read, History, Presence)

_decoder: msgspec.json.Decoder[ClientFrame] = msgspec.json.Decoder(ClientFrame)


class _IdOnly(msgspec.Struct):
    id: Any = None


_id_decoder = msgspec.json.Decoder(_IdOnly)


def decode_frame(data: bytes | str) -> ClientFrame:
    """Decode and validate one client frame; raise ``ChatError(bad_request)``."""
    try:
        frame = _decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise ChatError(ErrorCode.BAD_REQUEST, str(exc)) from None
    except msgspec.DecodeError:
        raise ChatError(ErrorCode.BAD_REQUEST, "malformed JSON") from None
    except RecursionError:  # msgspec's bound on nesting depth
        raise ChatError(ErrorCode.BAD_REQUEST, "JSON nested too deeply") from None
    if isinstance(frame, _ROOM_FRAMES) and not frame.room:
        raise ChatError(ErrorCode.BAD_REQUEST, "missing room")
    if isinstance(frame, (Edit, Delete, React)) and not frame.msg_id:
        raise ChatError(ErrorCode.BAD_REQUEST, "missing msg_id")
    if isinstance(frame, React):
        if frame.on is None:
            raise ChatError(ErrorCode.BAD_REQUEST, "missing on")
        check_emoji(frame.emoji)
    if isinstance(frame, Read) and frame.seq is None:
        raise ChatError(ErrorCode.BAD_REQUEST, "missing seq")
    if isinstance(frame, Send) and any(
            v is not None and "\x00" in v
            for v in (frame.reply_to, frame.client_msg_id, frame.thread)):
        raise ChatError(ErrorCode.BAD_REQUEST, "NUL character in an id")
    if isinstance(frame, Send) and frame.attachments:
        ids = frame.attachments
        if len(set(ids)) != len(ids) or any("\x00" in i for i in ids):
            raise ChatError(ErrorCode.BAD_REQUEST, "attachments: repeated or invalid id")
    return frame


def request_id_of(data: bytes | str) -> str | None:
    """Best-effort request id of a frame that failed to decode, to echo it.

    Only a string of at most ``REQUEST_ID_MAX`` chars is echoed: anything else
    is itself the error and echoing it back would let a client reflect
    arbitrary data.
    """
    try:
        rid = _id_decoder.decode(data).id
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        return None
    return rid if isinstance(rid, str) and len(rid) <= limits.REQUEST_ID_MAX else None


def check_text(text: str, may_be_empty: bool = False) -> str:
    """Trimmed message text, or ``bad_request`` (empty, unless ``may_be_empty``:
    a message with attachments) / ``too_large`` (> TEXT_MAX_CHARS)."""
    trimmed = text.strip()
    if not trimmed and not may_be_empty:
        raise ChatError(ErrorCode.BAD_REQUEST, "text is empty")
    if "\x00" in trimmed:  # storage (PostgreSQL text) cannot hold it: refuse, never ack
        raise ChatError(ErrorCode.BAD_REQUEST, "text contains a NUL character")
    if len(trimmed) > MAX_TEXT_CHARS:  # len() counts code points, as §8 asks
        raise ChatError(ErrorCode.TOO_LARGE, f"text exceeds {MAX_TEXT_CHARS} characters")
    return trimmed
