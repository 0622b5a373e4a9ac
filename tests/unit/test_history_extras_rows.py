"""history-service's reactions, threads and mentions as pure logic: stream
records of the new kinds to rows, rows to ``reaction`` items, a batch's
reaction arrays, and the aggregates put on a page's items (extras_store)."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
import pytest

from chat_contract.bus import ChatRecord
from chat_contract.events import Message, ReactionCount, ReactionEvent, ThreadInfo, User
from chat_history.extras_store import attach_extras, reaction_arrays
from chat_history.records import BadRecord, PageRow, assemble_page, row_from_payload

ANN = User(id="u_ann", name="ann")
TS = "2025-06-01T12:00:00.123Z"
WHEN = datetime(2025, 6, 1, 12, 0, 0, 123000, tzinfo=UTC)


def payload(**fields: object) -> bytes:
    base: dict[str, object] = {"room": "r", "msg_id": "m1", "sender": ANN, "ts": TS}
    base.update(fields)
    return msgspec.json.encode(ChatRecord(**base))  # type: ignore[arg-type]


def test_a_reaction_record_becomes_a_row_with_its_emoji() -> None:
    row = row_from_payload("r", 7, payload(kind="react", text="👍🏽"))
    assert (row.kind, row.text, row.sender_id, row.msg_id) == ("react", "👍🏽", "u_ann", "m1")
    off = row_from_payload("r", 8, payload(kind="unreact", text="👍🏽"))
    assert off.kind == "unreact"


@pytest.mark.parametrize("emoji", [None, "", "ok", "👍👍"])
def test_a_reaction_that_is_not_one_emoji_is_never_stored(emoji: str | None) -> None:
    with pytest.raises(BadRecord) as caught:
        row_from_payload("r", 7, payload(kind="react", text=emoji))
    assert caught.value.reason == "bad_emoji"


def test_thread_and_mentions_reach_the_row() -> None:
    row = row_from_payload("r", 7, payload(text="hi @bob", thread="m0", mentions=["u_bob"]))
    assert (row.thread, row.mentions) == ("m0", ["u_bob"])
    plain = row_from_payload("r", 8, payload(text="hi"))
    assert (plain.thread, plain.mentions) == (None, None)  # nothing stored for most messages


def _page_row(seq: int, kind: str = "message", **kw: object) -> PageRow:
    fields: dict[str, object] = {"room": "r", "seq": seq, "msg_id": "m1", "sender_id": "u_ann",
                                 "sender_name": "ann", "text": "hi", "reply_to": None,
                                 "ts": WHEN, "kind": kind}
    fields.update(kw)
    return PageRow(**fields)  # type: ignore[arg-type]


def test_reaction_rows_are_reaction_items_in_the_chain() -> None:
    rows = [_page_row(3), _page_row(5, "react", text="🎉"), _page_row(9, "unreact", text="🎉")]
    items, more = assemble_page(rows, limit=10, descending=False, floor_seq=0)
    assert not more
    assert [(type(i).__name__, i.seq, i.prev_seq) for i in items] == [
        ("Message", 3, 0), ("ReactionEvent", 5, 3), ("ReactionEvent", 9, 5)]
    on, off = items[1], items[2]
    assert isinstance(on, ReactionEvent) and isinstance(off, ReactionEvent)
    assert (on.user, on.emoji, on.on, on.ts) == (ANN, "🎉", True, TS)
    assert off.on is False


def test_reaction_arrays_of_a_batch() -> None:
    rows = [row_from_payload("r", 1, payload(text="hi")),
            row_from_payload("r", 2, payload(kind="react", text="👍")),
            row_from_payload("r", 3, payload(kind="unreact", text="👍"))]
    assert reaction_arrays(rows[:1]) is None
    assert reaction_arrays(rows) == [["r", "r"], ["m1", "m1"], ["u_ann", "u_ann"],
                                     ["👍", "👍"], [True, False], [2, 3]]


def _msg(msg_id: str, seq: int, deleted: bool = False) -> Message:
    return Message(room="r", msg_id=msg_id, seq=seq, prev_seq=seq - 1, sender=ANN, ts=TS,
                   text=None if deleted else "t", deleted=deleted)


def test_aggregates_go_on_message_items_in_first_come_order() -> None:
    items = [_msg("m1", 1), _msg("m2", 2), _msg("m3", 3, deleted=True),
             ReactionEvent(room="r", msg_id="m1", seq=4, prev_seq=3, user=ANN, emoji="👍",
                           on=True, ts=TS)]
    records = [
        {"k": "r", "id": "m1", "emoji": "🎉", "n": 1, "me": False, "s": 9},
        {"k": "r", "id": "m1", "emoji": "👍", "n": 2, "me": True, "s": 4},
        {"k": "t", "id": "m2", "emoji": None, "n": 3, "me": False, "s": 12},
        {"k": "r", "id": "m3", "emoji": "👍", "n": 1, "me": False, "s": 5},
    ]
    out = attach_extras(items, records)  # type: ignore[arg-type]
    m1, m2, m3, reaction = out
    assert isinstance(m1, Message) and m1.reactions == [ReactionCount("👍", 2, True),
                                                         ReactionCount("🎉", 1, False)]
    assert m1.thread_info is None
    assert isinstance(m2, Message) and m2.thread_info == ThreadInfo(count=3, last_seq=12)
    assert m2.reactions is None
    assert isinstance(m3, Message) and m3.reactions is None  # a deleted message shows none
    assert reaction is items[3]
    assert attach_extras(items, []) is items


@pytest.mark.parametrize("fields", [
    {"thread": "m" * 65}, {"mentions": [f"u{i}" for i in range(21)]},
    {"thread": "m\x00"}, {"mentions": ["u\x00"]}])
def test_threads_and_mentions_beyond_their_bounds_are_never_stored(
        fields: dict[str, object]) -> None:
    with pytest.raises(BadRecord):
        row_from_payload("r", 7, payload(text="hi", **fields))
