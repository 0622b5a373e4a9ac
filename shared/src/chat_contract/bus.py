"""Payloads on NATS (PROTOCOL.md §6): versioned msgspec structs as JSON.

``ChatRecord`` is what a gateway publishes to ``chat.room.<room>`` and what the
CHAT stream stores; the stream's sequence becomes the event's ``seq`` and the
previous sequence of the same subject its ``prev_seq``. The request/reply
payloads of the services follow; their subjects are in :mod:`.subjects`.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from .events import Message, User

VERSION = 1


class _Payload(msgspec.Struct):
    """Base of every bus payload; each subclass ends with ``v`` (the version)."""


class ChatRecord(_Payload):
    room: str
    msg_id: str
    sender: User
    ts: str
    kind: Literal["message"] = "message"
    text: str | None = None
    reply_to: str | None = None
    v: int = VERSION


def record_to_event(record: ChatRecord, seq: int, prev_seq: int) -> Message:
    return Message(
        room=record.room,
        msg_id=record.msg_id,
        seq=seq,
        prev_seq=prev_seq,
        sender=record.sender,
        ts=record.ts,
        text=record.text,
        reply_to=record.reply_to,
    )


# --- auth-service -----------------------------------------------------------


class Credentials(_Payload):
    username: str
    password: str
    # Client address as the gateway saw it: for audit logs and throttling.
    remote: str | None = None
    v: int = VERSION


class RegisterReply(_Payload):
    user: User
    v: int = VERSION


class TokenPair(_Payload):
    access_token: str
    refresh_token: str
    expires_in: int
    token_type: str = "Bearer"
    v: int = VERSION


class RefreshRequest(_Payload):
    refresh_token: str
    # Client address as the gateway saw it: for the audit log on token reuse.
    remote: str | None = None
    v: int = VERSION


class JwksReply(_Payload):
    keys: list[dict[str, Any]]
    v: int = VERSION


class Empty(_Payload):
    v: int = VERSION


# --- history-service --------------------------------------------------------


class HistoryRequest(_Payload):
    room: str
    before: int | None = None
    after: int | None = None
    limit: int = 50
    # Stream sequence the reply must reflect: the service waits until it has
    # stored at least this far, so a read right after a send sees the send.
    min_seq: int = 0
    v: int = VERSION


class HistoryReply(_Payload):
    messages: list[Message]
    has_more: bool
    v: int = VERSION


# --- presence-service -------------------------------------------------------


class MembersRequest(_Payload):
    room: str
    # KV revision the answer must reflect (a gateway's own presence put), so a
    # join ack always lists the joiner; 0 = whatever the service knows now.
    min_rev: int = 0
    v: int = VERSION


class MembersReply(_Payload):
    members: list[User]
    v: int = VERSION


class PresenceEntry(_Payload):
    """Value of one live key ``<room>.<user>.<session>`` in the PRESENCE bucket.

    A gateway puts it when a connection joins a room and re-puts it on its
    heartbeat; the bucket's TTL removes it when a gateway dies.
    """

    user: User
    node: str
    v: int = VERSION


class PresenceNotice(_Payload, tag_field="op", tag="presence"):
    """On ``presence.<room>``, from presence-service: a user came or went."""

    room: str
    event: Literal["join", "leave"]
    user: User
    ts: str
    v: int = VERSION


class TypingNotice(_Payload, tag_field="op", tag="typing"):
    """On ``presence.<room>``, from the typist's gateway (coalesced).

    ``age_ms``: how long ago the client sent the ``start`` this notice
    carries (a delayed, coalesced refresh), so receivers expire it on time.
    """

    room: str
    user: User
    state: Literal["start", "stop"]
    age_ms: int = 0
    v: int = VERSION


RoomSignal = PresenceNotice | TypingNotice


def encode(payload: msgspec.Struct) -> bytes:
    return msgspec.json.encode(payload)


class SessionEntry(_Payload):
    """One live connection in the sessions bucket (key ``<user>.<session>``)."""

    user: str
    session: str
    node: str
    opened_ms: int
    v: int = VERSION


class SessionKick(_Payload):
    """Asks whichever gateway holds ``session`` to close it with 4409."""

    user: str
    session: str
    reason: str = "too many sessions"
    v: int = VERSION
