"""Server → client events (docs/protocol.md §3.1, §3.2, §3.4).

Optional fields default to ``None``/``False`` and are omitted on the wire.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec


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
    code: str
    message: str
    id: str | None = None


class Pong(_Event, tag="pong"):
    pass


ServerEvent = Welcome | Message | PresenceEvent | TypingEvent | ReadEvent | System | Error | Pong

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
