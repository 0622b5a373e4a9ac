"""The webhook body and the dead letter, without I/O (README "Webhook").

The body is a JSON object, always in this field order::

    {"v":1,"type":"dm"|"mention","user":{"id","name"},"room","msg_id","seq",
     "sender":{"id","name"},"text","ts"}

``user`` is the recipient, ``text`` the message's text cut to
``CHAT_NOTIFY_TEXT_MAX`` characters (an ellipsis marks a cut), ``ts`` the
message's time (RFC 3339), ``seq`` its sequence in the room.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from chat_contract.bus import ChatRecord
from chat_contract.events import User

ELLIPSIS = "…"


class Notification(msgspec.Struct):
    v: int
    type: Literal["dm", "mention"]
    user: User
    room: str
    msg_id: str
    seq: int
    sender: User
    text: str
    ts: str

    @property
    def key(self) -> str:
        """Stable per (message, recipient): the receiver's idempotency key
        (``X-Chat-Delivery``) and the dead letter's ``Nats-Msg-Id``."""
        return f"{self.msg_id}:{self.user.id}"


class DeadLetter(msgspec.Struct):
    """On ``notify.dead.<user id>``: a notification that failed for good."""

    notification: Notification
    reason: str  # "http_4xx", "http_5xx", "http_429", "connect", …
    attempts: int
    status: int | None = None
    error: str = ""
    failed_at: str = ""
    v: int = 1


def truncate(text: str | None, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters, an ellipsis marking the cut."""
    text = text or ""
    if len(text) <= limit:
        return text
    return text[: max(0, limit - 1)] + ELLIPSIS


def notification(record: ChatRecord, room: str, seq: int, user: User,
                 kind: Literal["dm", "mention"], text_max: int) -> Notification:
    return Notification(v=1, type=kind, user=user, room=room, msg_id=record.msg_id, seq=seq,
                        sender=record.sender, text=truncate(record.text, text_max),
                        ts=record.ts)


def encode(item: msgspec.Struct) -> bytes:
    return msgspec.json.encode(item)
