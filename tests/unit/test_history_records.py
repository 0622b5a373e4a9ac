"""Pure logic of the history service: payload → row, page assembly, request rules."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import msgspec
import pytest

from chat_contract.bus import ChatRecord, HistoryRequest
from chat_contract.errors import ChatError, ErrorCode
from chat_contract.events import User
from chat_contract.limits import MSG_ID_MAX
from chat_history.api import required_seq, validate
from chat_history.config import HistorySettings
from chat_history.records import (
    BadRecord,
    MessageRow,
    PageRow,
    assemble_page,
    format_ts,
    parse_ts,
    row_from_payload,
    to_message,
)
from chat_kit.settings import SettingsError

TS = datetime(2025, 1, 2, 3, 4, 5, 678_000, tzinfo=UTC)


def record(**overrides: object) -> bytes:
    fields: dict[str, object] = {
        "room": "lobby", "msg_id": "m1", "sender": User("u_1", "ann"),
        "ts": "2025-01-02T03:04:05.678Z", "text": "hi",
    }
    fields.update(overrides)
    return msgspec.json.encode(ChatRecord(**fields))  # type: ignore[arg-type]


def row(seq: int, room: str = "lobby", **state: bool) -> PageRow:
    return PageRow(room, seq, f"m{seq}", "u_1", "ann", f"t{seq}", None, TS, **state)


# --- payload → row ---------------------------------------------------------------------


def test_row_from_payload_takes_seq_and_room_from_the_stream() -> None:
    r = row_from_payload("lobby", 42, record(reply_to="m0"))
    assert r == MessageRow("lobby", 42, "m1", "u_1", "ann", "hi", "m0", TS)


@pytest.mark.parametrize("kind", ["edit", "delete"])
def test_change_events_become_rows_of_their_kind(kind: str) -> None:
    r = row_from_payload("lobby", 43, record(kind=kind, text="new" if kind == "edit" else None))
    assert (r.kind, r.msg_id, r.seq) == (kind, "m1", 43)


def test_unknown_kind_is_a_bad_record() -> None:
    data = record().replace(b'"kind":"message"', b'"kind":"read"')
    with pytest.raises(BadRecord):
        row_from_payload("lobby", 1, data)


def test_page_items_show_the_latest_state() -> None:
    (edited, deleted), _ = assemble_page(
        [row(2, deleted=True), row(1, edited=True)], limit=5, descending=True, floor_seq=0)
    assert (edited.text, edited.edited, edited.deleted) == ("t1", True, False)
    assert (deleted.text, deleted.deleted) == (None, True)  # no text, even if one were read


def test_row_room_comes_from_the_subject_not_the_payload() -> None:
    assert row_from_payload("other", 1, record(room="lobby")).room == "other"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"not json", "decode"),
        (b"{}", "decode"),
        (b'{"room":"r","msg_id":"m","sender":{"id":"u","name":"n"},"ts":5}', "decode"),
        (record(text="a\x00b"), "nul"),
        (record(msg_id="m\x00"), "nul"),
        (record(ts="yesterday"), "bad_ts"),
        (record(msg_id="m" * (MSG_ID_MAX + 1)), "too_long"),
    ],
)
def test_unstorable_payloads_are_bad_records(data: bytes, reason: str) -> None:
    with pytest.raises(BadRecord) as info:
        row_from_payload("lobby", 1, data)
    assert info.value.reason == reason


def test_msg_ids_up_to_the_contract_limit_are_stored_and_longer_stored_rows_still_load() -> None:
    assert row_from_payload("lobby", 1, record(msg_id="m" * MSG_ID_MAX)).msg_id == "m" * MSG_ID_MAX
    # Rows stored while the limit was 256 are read as they are: only input is checked.
    old = PageRow(room="lobby", seq=3, msg_id="m" * 256, sender_id="u", sender_name="n",
                  text="t", reply_to=None, ts=datetime(2025, 1, 1, tzinfo=UTC))
    assert to_message(old, 2).msg_id == "m" * 256


def test_invalid_room_token_is_a_bad_record() -> None:
    with pytest.raises(BadRecord) as info:
        row_from_payload("no spaces", 1, record())
    assert info.value.reason == "bad_room"


def test_timestamps_round_trip_as_utc_milliseconds() -> None:
    assert format_ts(parse_ts("2025-01-02T03:04:05.678Z")) == "2025-01-02T03:04:05.678Z"
    # Another offset is normalised to UTC; a naive time is taken as UTC.
    assert format_ts(parse_ts("2025-01-02T05:04:05.678+02:00")) == "2025-01-02T03:04:05.678Z"
    assert format_ts(parse_ts("2025-01-02T03:04:05")) == "2025-01-02T03:04:05.000Z"
    local = datetime(2025, 1, 2, 4, 4, 5, 999_999, tzinfo=timezone(timedelta(hours=1)))
    assert format_ts(local) == "2025-01-02T03:04:05.999Z"


# --- page assembly ---------------------------------------------------------------------


def test_descending_page_with_more_uses_the_extra_row_as_predecessor() -> None:
    rows = [row(s) for s in (50, 40, 30, 20)]  # newest first, limit 3 + 1
    messages, has_more = assemble_page(rows, limit=3, descending=True, floor_seq=0)
    assert [(m.seq, m.prev_seq) for m in messages] == [(30, 20), (40, 30), (50, 40)]
    assert has_more


def test_descending_page_without_more_starts_the_chain_at_zero() -> None:
    rows = [row(s) for s in (50, 40)]
    messages, has_more = assemble_page(rows, limit=3, descending=True, floor_seq=0)
    assert [(m.seq, m.prev_seq) for m in messages] == [(40, 0), (50, 40)]
    assert not has_more


def test_ascending_page_starts_the_chain_at_the_floor() -> None:
    rows = [row(s) for s in (12, 15, 19)]
    messages, has_more = assemble_page(rows, limit=2, descending=False, floor_seq=7)
    assert [(m.seq, m.prev_seq) for m in messages] == [(12, 7), (15, 12)]
    assert has_more


def test_empty_page() -> None:
    assert assemble_page([], limit=5, descending=True, floor_seq=0) == ([], False)
    assert assemble_page([], limit=5, descending=False, floor_seq=3) == ([], False)


def test_page_items_are_message_events() -> None:
    (message,), _ = assemble_page([row(9)], limit=1, descending=True, floor_seq=0)
    assert msgspec.json.decode(msgspec.json.encode(message)) == {
        "type": "message", "room": "lobby", "msg_id": "m9", "seq": 9, "prev_seq": 0,
        "sender": {"id": "u_1", "name": "ann"}, "ts": "2025-01-02T03:04:05.678Z", "text": "t9",
    }


# --- request rules ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "req",
    [
        HistoryRequest(room="bad room"),
        HistoryRequest(room="a.b"),
        HistoryRequest(room="x" * 65),
        HistoryRequest(room="r", limit=0),
        HistoryRequest(room="r", limit=501),
        HistoryRequest(room="r", before=-1),
        HistoryRequest(room="r", after=-5),
        HistoryRequest(room="r", min_seq=-1),
    ],
)
def test_invalid_requests_are_bad_request(req: HistoryRequest) -> None:
    with pytest.raises(ChatError) as info:
        validate(req)
    assert info.value.code is ErrorCode.BAD_REQUEST


def test_limits_at_the_bounds_are_valid() -> None:
    validate(HistoryRequest(room="r", limit=1))
    validate(HistoryRequest(room="r", limit=500, after=0, before=0))


def test_required_seq() -> None:
    assert required_seq(HistoryRequest(room="r"), 17) == 17
    assert required_seq(HistoryRequest(room="r", min_seq=30), 17) == 30
    # Only messages below `before` matter.
    assert required_seq(HistoryRequest(room="r", before=10), 17) == 9
    assert required_seq(HistoryRequest(room="r", before=40, min_seq=30), 17) == 30
    assert required_seq(HistoryRequest(room="r"), 0) == 0


# --- configuration ---------------------------------------------------------------------


def test_settings_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CHAT_HISTORY_PORT", "CHAT_DATABASE_URL", "CHAT_DATABASE_URL_FILE",
                 "CHAT_HISTORY_BATCH", "CHAT_HISTORY_FETCH_WAIT",
                 "CHAT_HISTORY_CATCHUP_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)
    s = HistorySettings.from_env()
    assert (s.port, s.batch, s.linger, s.catchup_timeout) == (8092, 500, 0.05, 1.5)
    assert s.database_url == "postgresql://postgres@127.0.0.1:5432/chat"


def test_settings_from_env_hide_the_database_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHAT_HISTORY_PORT", "9000")
    monkeypatch.setenv("CHAT_DATABASE_URL", "postgresql://u:secret@db/chat")
    monkeypatch.setenv("CHAT_HISTORY_BATCH", "100")
    monkeypatch.setenv("CHAT_HISTORY_FETCH_WAIT", "0.2")
    monkeypatch.setenv("CHAT_HISTORY_CATCHUP_TIMEOUT", "3")
    s = HistorySettings.from_env()
    assert (s.port, s.batch, s.linger, s.catchup_timeout) == (9000, 100, 0.2, 3.0)
    assert "secret" not in repr(s)


@pytest.mark.parametrize(
    ("name", "value"),
    [("CHAT_HISTORY_BATCH", "0"), ("CHAT_HISTORY_BATCH", "20000"),
     ("CHAT_HISTORY_FETCH_WAIT", "soon"), ("CHAT_HISTORY_PORT", "-1")],
)
def test_bad_settings_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match=name):
        HistorySettings.from_env()
