"""Typed ``ack`` frames (docs/protocol.md §3.2, §3.3): one struct per request type.

An ack is ``{"type":"ack","id":…, …result fields}``. The gateway builds the
result fields as a dict (:func:`chat_contract.events.encode_ack`); these
structs are the same frames as types, for clients (decode an ack with the
struct of the request's type) and for the published specs
(:mod:`chat_contract.specs`). :func:`encode` writes exactly the bytes that
``encode_ack`` writes for the same fields (tests/unit/test_contract_specs.py).
"""

from __future__ import annotations

import msgspec

from .events import RoomEvent, User


class _Ack(msgspec.Struct, tag_field="type", tag="ack", omit_defaults=True):
    id: str | None = None


class EmptyAck(_Ack):
    """``auth``, ``leave``, ``read``, ``typing``: nothing but the request's ``id``."""


class JoinAck(_Ack, kw_only=True):
    room: str
    members: list[User]
    last_seq: int
    missed: list[RoomEvent]
    missed_truncated: bool = False  # on the wire only when true


class SendAck(_Ack, kw_only=True):
    msg_id: str
    seq: int
    ts: str


class SeqAck(_Ack, kw_only=True):
    """``edit``, ``delete``, ``react``: the ``seq`` of the event the request made
    (``react`` that changed nothing: the one that set the state, or 0)."""

    seq: int


class HistoryAck(_Ack, kw_only=True):
    messages: list[RoomEvent]
    has_more: bool


class PresenceAck(_Ack, kw_only=True):
    members: list[User]


Ack = EmptyAck | JoinAck | SendAck | SeqAck | HistoryAck | PresenceAck

# Fields without a default are always on the wire (0 and [] included).
# The ack of each client frame type (``ping`` is answered by ``pong``, not acked).
BY_FRAME: dict[str, type[Ack]] = {
    "auth": EmptyAck,
    "join": JoinAck,
    "leave": EmptyAck,
    "send": SendAck,
    "edit": SeqAck,
    "delete": SeqAck,
    "react": SeqAck,
    "typing": EmptyAck,
    "read": EmptyAck,
    "history": HistoryAck,
    "presence": PresenceAck,
}

_encoder = msgspec.json.Encoder()


def encode(ack: Ack) -> bytes:
    """The ack frame's bytes (``id`` omitted when ``None``)."""
    return _encoder.encode(ack)
