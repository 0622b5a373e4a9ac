"""Stream payloads to table rows and table rows to ``message`` events (no I/O).

A CHAT stream message is a ``ChatRecord``; its stream sequence is the ``seq``.
Anything that cannot become a row is a :class:`BadRecord`: the consumer
terminates it so it never blocks the stream.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import msgspec

from chat_contract.bus import ChatRecord, RecordKind
from chat_contract.emoji import is_emoji
from chat_contract.events import Attachment, Message, ReactionEvent, RoomEvent, User
from chat_contract.limits import (
    ATTACHMENT_ID_MAX,
    ATTACHMENTS_PER_MESSAGE_MAX,
    MENTIONS_MAX,
    MSG_ID_MAX,
)
from chat_contract.rooms import is_valid_room_id

_record_decoder = msgspec.json.Decoder(ChatRecord)


class BadRecord(ValueError):
    """A stream message that can never be stored; ``reason`` labels the metric."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


class _Row(msgspec.Struct, frozen=True):
    """The columns every row and every history item has. ``ts`` is timezone-aware."""

    room: str
    seq: int
    msg_id: str
    sender_id: str
    sender_name: str
    text: str | None
    reply_to: str | None
    ts: datetime


class MessageRow(_Row, frozen=True):
    """One row of ``history.messages`` to insert: one stream event (see migration 0002).

    A msgspec struct: cheap to build, and a batch of them encodes to the JSON
    array the store inserts in one statement. For an ``edit`` row ``text`` is
    the new text, applied to the message's row (the edit row itself is stored
    without it); a ``delete`` has none; a ``react``/``unreact`` row keeps its
    emoji as ``text`` (migration 0006). ``thread``: a reply's root;
    ``mentions``: user ids, None when there are none; ``attachments``: a new
    message's files (migration 0007), None when there are none.
    """

    kind: RecordKind = "message"
    thread: str | None = None
    mentions: list[str] | None = None
    attachments: list[Attachment] | None = None


class PageRow(_Row, frozen=True):
    """One history item as read: an event row showing its message's latest state
    (a reaction row: its own emoji as ``text``)."""

    edited: bool = False
    deleted: bool = False
    kind: RecordKind = "message"
    thread: str | None = None
    mentions: list[str] | None = None
    attachments: list[Attachment] | None = None


_attachments_decoder = msgspec.json.Decoder(list[Attachment])


def decode_attachments(raw: str | None) -> list[Attachment] | None:
    """The ``attachments`` column (jsonb, as text) → its items, None when none."""
    return (_attachments_decoder.decode(raw) or None) if raw else None


def parse_ts(raw: str) -> datetime:
    """RFC 3339 → aware datetime; a time without an offset is taken as UTC."""
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        raise BadRecord("bad_ts", f"unparsable ts {raw[:40]!r}") from None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def format_ts(value: datetime) -> str:
    """RFC 3339 UTC with milliseconds, as events carry it (docs/protocol.md §3.4)."""
    utc = value.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def row_from_payload(room: str, seq: int, data: bytes) -> MessageRow:
    """Decode one stream message of subject ``chat.room.<room>`` at sequence ``seq``.

    The room comes from the subject, not the payload: the subject is what the
    stream orders by and what a reader's freshness check looks up.
    """
    if not is_valid_room_id(room):
        raise BadRecord("bad_room", f"invalid room token {room[:80]!r}")
    try:
        record = _record_decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise BadRecord("decode", str(exc)[:200]) from None
    # Gateways make msg_ids (short hex); a longer one is no message of ours, and
    # an indexed msg_id over ~2.7 kB would fail its whole batch. Checked here, on
    # the way in only: rows already stored load whatever their length.
    if len(record.msg_id) > MSG_ID_MAX:
        raise BadRecord("too_long", f"msg_id of {len(record.msg_id)} characters")
    strings = (record.msg_id, record.sender.id, record.sender.name, record.text, record.reply_to)
    # PostgreSQL text cannot hold NUL; such a row would fail its whole batch forever.
    if any(s is not None and "\x00" in s for s in strings):
        raise BadRecord("nul", "NUL character in a text field")
    if record.kind != "message" or record.thread is not None or record.mentions:
        _check_extras(record)  # reactions, replies, mentions: a plain message skips this
    files = record.attachments if record.kind == "message" else []
    if files and (len(files) > ATTACHMENTS_PER_MESSAGE_MAX or any(
            len(f.id) > ATTACHMENT_ID_MAX or "\x00" in f.name + f.type for f in files)):
        raise BadRecord("too_long", "attachments beyond their bounds")
    return MessageRow(
        room=room,
        seq=seq,
        msg_id=record.msg_id,
        sender_id=record.sender.id,
        sender_name=record.sender.name,
        text=record.text,
        reply_to=record.reply_to,
        ts=parse_ts(record.ts),
        kind=record.kind,
        thread=record.thread,
        mentions=record.mentions or None,
        attachments=files or None,
    )


def _check_extras(record: ChatRecord) -> None:
    """What a reaction, a reply or a message with mentions must also be to be stored."""
    if record.kind in ("react", "unreact") and not is_emoji(record.text or ""):
        raise BadRecord("bad_emoji", f"reaction {str(record.text)[:40]!r} is not one emoji")
    thread, mentions = record.thread, record.mentions
    if (thread is not None and len(thread) > MSG_ID_MAX) or len(mentions) > MENTIONS_MAX:
        raise BadRecord("too_long", "thread id or mentions beyond their bounds")
    if any("\x00" in s for s in (thread or "", *mentions)):
        raise BadRecord("nul", "NUL character in a text field")


def to_message(row: PageRow, prev_seq: int) -> RoomEvent:
    """The history item of a row: a ``reaction`` event, or a ``message`` event."""
    if row.kind == "react" or row.kind == "unreact":
        return ReactionEvent(room=row.room, msg_id=row.msg_id, seq=row.seq, prev_seq=prev_seq,
                             user=User(id=row.sender_id, name=row.sender_name),
                             emoji=row.text or "", on=row.kind == "react", ts=format_ts(row.ts))
    return Message(
        room=row.room,
        msg_id=row.msg_id,
        seq=row.seq,
        prev_seq=prev_seq,
        sender=User(id=row.sender_id, name=row.sender_name),
        ts=format_ts(row.ts),
        text=None if row.deleted else row.text,
        reply_to=row.reply_to,
        edited=row.edited,
        deleted=row.deleted,
        thread=row.thread,
        mentions=None if row.deleted else row.mentions or None,
        attachments=None if row.deleted else row.attachments,
    )


def assemble_page(
    rows: Sequence[PageRow], *, limit: int, descending: bool, floor_seq: int
) -> tuple[list[RoomEvent], bool]:
    """Turn up to ``limit + 1`` rows of one query into (page, has_more).

    ``rows`` are in the query's order: newest first when ``descending`` (the
    newest page, or ``before`` alone), oldest first otherwise (``after``).
    The one row beyond the page says ``has_more``; in a descending query it is
    also the predecessor of the page's oldest item. For ascending queries
    ``floor_seq`` is that predecessor (the highest stored seq ≤ ``after``, or
    0). Each item's ``prev_seq`` is the seq of the room's previous stored row.
    """
    has_more = len(rows) > limit
    if descending:
        page = list(reversed(rows[:limit]))
        prev = rows[limit].seq if has_more else 0
    else:
        page = list(rows[:limit])
        prev = floor_seq
    messages: list[RoomEvent] = []
    for row in page:
        messages.append(to_message(row, prev))
        prev = row.seq
    return messages, has_more
