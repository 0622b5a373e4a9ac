"""Server → client events (docs/protocol.md §3.1, §3.2, §3.4).

Optional fields default to ``None``/``False`` and are omitted on the wire.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from .errors import ErrorCode


class User(msgspec.Struct, frozen=True):
    id: str
    name: str


class _Event(msgspec.Struct, tag_field="type", omit_defaults=True):
    pass


class Welcome(_Event, tag="welcome"):
    session: str
    user: User
    node: str
    heartbeat: int


class ReactionCount(msgspec.Struct):
    """One emoji on a message, in history: how many reacted with it, and
    whether the reader (``me``) did."""

    emoji: str
    count: int
    me: bool


class ThreadInfo(msgspec.Struct):
    """A thread root, in history: its replies and the newest one's ``seq``."""

    count: int
    last_seq: int


class Attachment(msgspec.Struct, omit_defaults=True):
    """A file a message carries (docs/protocol.md §3.4, §5): the upload's id,
    its name, stored size in bytes, type (decided from the bytes), and an
    image's ``width``/``height`` in pixels."""

    id: str
    name: str
    size: int
    type: str
    width: int | None = None
    height: int | None = None


class Message(_Event, tag="message"):
    room: str
    msg_id: str
    seq: int
    prev_seq: int
    sender: User
    ts: str
    text: str | None = None
    reply_to: str | None = None
    edited: bool = False
    deleted: bool = False
    thread: str | None = None  # the root's msg_id, on a thread's replies
    mentions: list[str] | None = None  # user ids, resolved at send time
    attachments: list[Attachment] | None = None  # uploads, attached at send time
    # History only (docs/protocol.md §11): the message's state as the reader sees it.
    reactions: list[ReactionCount] | None = None
    thread_info: ThreadInfo | None = None


class ReactionEvent(_Event, tag="reaction"):
    """``user`` put (``on``) or took back an ``emoji`` on message ``msg_id``:
    a room event with its own ``seq`` in the chain, like an edit."""

    room: str
    msg_id: str
    seq: int
    prev_seq: int
    user: User
    emoji: str
    on: bool
    ts: str


# What a room's sequence chain is made of: history pages and `missed` list both.
RoomEvent = Message | ReactionEvent


def author_of(event: RoomEvent) -> str:
    """The user an event is about (a block hides it): a message's sender, a reaction's user."""
    return event.sender.id if isinstance(event, Message) else event.user.id


class PresenceEvent(_Event, tag="presence"):
    room: str
    event: Literal["join", "leave"]
    user: User
    ts: str


class TypingEvent(_Event, tag="typing"):
    room: str
    user: User
    state: Literal["start", "stop"]


class ReadEvent(_Event, tag="read"):
    room: str
    user: User
    seq: int


class System(_Event, tag="system"):
    room: str
    text: str
    ts: str


class Error(_Event, tag="error"):
    code: ErrorCode  # a StrEnum: the same string on the wire
    message: str
    id: str | None = None


class Pong(_Event, tag="pong"):
    pass


ServerEvent = (Welcome | Message | ReactionEvent | PresenceEvent | TypingEvent | ReadEvent
               | System | Error | Pong)

_encoder = msgspec.json.Encoder()
encode = _encoder.encode


def encode_ack(request_id: str | None, result: dict[str, Any]) -> bytes:
    """``{"type":"ack","id":…, …result}``: result fields vary per request type."""
    body: dict[str, Any] = {"type": "ack"}
    if request_id is not None:
        body["id"] = request_id
    body.update(result)
    return _encoder.encode(body)


_event_decoder: msgspec.json.Decoder[ServerEvent] = msgspec.json.Decoder(ServerEvent)


def decode_event(data: bytes | str) -> ServerEvent:
    return _event_decoder.decode(data)
