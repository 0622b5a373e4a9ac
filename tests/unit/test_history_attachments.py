"""history-service's side of attachments without I/O: records carrying
attachments become rows and history items (a deleted message shows none),
and records beyond the contract's bounds are refused."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
import pytest

from chat_contract import limits
from chat_contract.bus import ChatRecord, record_to_event
from chat_contract.events import Attachment, Message, User
from chat_history.records import (
    BadRecord,
    PageRow,
    decode_attachments,
    row_from_payload,
    to_message,
)

PNG = Attachment(id="a_1", name="p.png", size=10, type="image/png", width=2, height=1)
PDF = Attachment(id="a_2", name="r.pdf", size=20, type="application/pdf")


def _record(**fields: object) -> bytes:
    base = ChatRecord(room="r", msg_id="m1", sender=User(id="u1", name="ann"),
                      ts="2026-12-07T10:00:00.000Z", text="")
    return msgspec.json.encode(msgspec.structs.replace(base, **fields))


def test_attachments_travel_from_record_to_row_to_item() -> None:
    row = row_from_payload("r", 5, _record(attachments=[PNG, PDF]))
    assert row.attachments == [PNG, PDF]
    # Stored as JSON, read back as the item's attachments (width/height only for images).
    stored = msgspec.json.encode(row.attachments).decode()
    assert '"width"' in stored and stored.count('"width"') == 1
    page = PageRow(room="r", seq=5, msg_id="m1", sender_id="u1", sender_name="ann", text="",
                   reply_to=None, ts=datetime(2026, 12, 7, tzinfo=UTC),
                   attachments=decode_attachments(stored))
    item = to_message(page, 0)
    assert isinstance(item, Message) and item.attachments == [PNG, PDF]
    gone = to_message(msgspec.structs.replace(page, deleted=True, text=None), 0)
    assert isinstance(gone, Message) and gone.attachments is None
    assert decode_attachments(None) is None and decode_attachments("[]") is None


def test_live_events_carry_them_on_new_messages_only() -> None:
    record = msgspec.json.decode(_record(attachments=[PNG]), type=ChatRecord)
    event = record_to_event(record, 7, 6)
    assert isinstance(event, Message) and event.attachments == [PNG]
    deleted = record_to_event(msgspec.structs.replace(record, kind="delete"), 8, 7)
    assert isinstance(deleted, Message) and deleted.attachments is None
    plain = record_to_event(msgspec.structs.replace(record, attachments=[]), 9, 8)
    assert b"attachments" not in msgspec.json.encode(plain)


def test_records_beyond_the_bounds_are_refused() -> None:
    many = [msgspec.structs.replace(PDF, id=f"a_{i}")
            for i in range(limits.ATTACHMENTS_PER_MESSAGE_MAX + 1)]
    with pytest.raises(BadRecord):
        row_from_payload("r", 5, _record(attachments=many))
    with pytest.raises(BadRecord):
        row_from_payload("r", 5, _record(attachments=[msgspec.structs.replace(
            PDF, id="a" * (limits.ATTACHMENT_ID_MAX + 1))]))
    with pytest.raises(BadRecord):
        row_from_payload("r", 5, _record(attachments=[msgspec.structs.replace(
            PDF, name="x\x00y")]))
    # An edit's attachments are not the edit's to set.
    edit = row_from_payload("r", 6, _record(kind="edit", text="new", attachments=[PDF]))
    assert edit.attachments is None
