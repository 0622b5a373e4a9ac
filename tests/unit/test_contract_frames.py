"""The wire contract: client frames decode and validate; events encode as §3.4 says."""

from __future__ import annotations

import json

import msgspec
import pytest

from chat_contract import frames, subjects
from chat_contract.bus import ChatRecord, HistoryReply, record_to_event
from chat_contract.errors import HTTP_STATUS, ChatError, CloseCode, ErrorCode
from chat_contract.events import (
    Error,
    Message,
    Pong,
    User,
    Welcome,
    decode_event,
    encode,
    encode_ack,
)
from chat_contract.rooms import is_valid_room_id

GOOD = [
    {"type": "auth", "token": "t"},
    {"type": "join", "room": "general", "id": "r1"},
    {"type": "join", "room": "a-b_C9", "password": "pw", "since": 12},
    {"type": "leave", "room": "x"},
    {"type": "send", "room": "x", "text": "hi", "reply_to": "m_1", "client_msg_id": "c1"},
    {"type": "edit", "room": "x", "msg_id": "m_1", "text": "hi"},
    {"type": "delete", "room": "x", "msg_id": "m_1"},
    {"type": "typing", "room": "x", "state": "stop"},
    {"type": "read", "room": "x", "seq": 3},
    {"type": "history", "room": "x", "before": 10, "limit": 100},
    {"type": "presence", "room": "x"},
    {"type": "ping"},
]


@pytest.mark.parametrize("raw", GOOD, ids=lambda r: r["type"])
def test_good_frames_round_trip(raw: dict[str, object]) -> None:
    frame = frames.decode_frame(json.dumps(raw))
    assert type(frame).__name__.lower() == raw["type"]
    again = json.loads(msgspec.json.encode(frame))
    for key, value in raw.items():
        assert again[key] == value


BAD = [
    "", "nope", "[]", "{}", '{"type":"fly"}', '{"type":5}',
    '{"type":"join"}', '{"type":"join","room":""}', '{"type":"join","room":"a.b"}',
    '{"type":"join","room":"a*"}', '{"type":"join","room":"a>"}', '{"type":"join","room":"a b"}',
    '{"type":"join","room":"' + "r" * 65 + '"}', '{"type":"join","room":"caf\u00e9"}',
    '{"type":"join","room":"x\\n"}', '{"type":"join","room":"x","since":-1}',
    '{"type":"join","room":"x","since":"3"}', '{"type":"send","room":"x","text":1}',
    '{"type":"history","room":"x","limit":0}', '{"type":"history","room":"x","limit":101}',
    '{"type":"history","room":"x","before":1.5}', '{"type":"typing","room":"x","state":"go"}',
    '{"type":"ping","id":7}', '{"type":"ping","id":"' + "i" * 65 + '"}',
    '{"type":"send","room":"x","client_msg_id":""}',
    '{"type":"history","room":"x","before":9223372036854775808}',
    '{"type":"join","room":"x","since":18446744073709551615}',
    '{"type":"read","room":"x"}', '{"type":"read","room":"x","seq":null}',
    '{"type":"read","room":"x","seq":-1}', '{"type":"read","room":"x","seq":"5"}',
    '{"type":"edit","room":"x","text":"t"}', '{"type":"edit","room":"x","msg_id":"","text":"t"}',
    '{"type":"delete","room":"x"}', '{"type":"delete","room":"x","msg_id":5}',
    '{"type":"send","room":"x","text":"a","reply_to":"m\\u0000"}',
    '{"type":"send","room":"x","text":"a","client_msg_id":"c\\u0000"}',
]


@pytest.mark.parametrize("raw", BAD)
def test_bad_frames_are_bad_request(raw: str) -> None:
    with pytest.raises(ChatError) as info:
        frames.decode_frame(raw)
    assert info.value.code is ErrorCode.BAD_REQUEST


def test_request_id_is_echoed_only_when_valid() -> None:
    assert frames.request_id_of('{"type":"fly","id":"r9"}') == "r9"
    assert frames.request_id_of('{"type":"fly","id":9}') is None
    assert frames.request_id_of('{"id":"' + "x" * 65 + '"}') is None
    assert frames.request_id_of("garbage") is None


def test_text_limits_count_code_points() -> None:
    assert frames.check_text("  hi \n") == "hi"
    assert frames.check_text("😀" * 4000) == "😀" * 4000
    with pytest.raises(ChatError) as big:
        frames.check_text("😀" * 4001)
    assert big.value.code is ErrorCode.TOO_LARGE
    with pytest.raises(ChatError) as empty:
        frames.check_text(" \t ")
    assert empty.value.code is ErrorCode.BAD_REQUEST


def test_room_ids_and_subjects() -> None:
    assert is_valid_room_id("General_room-1")
    for bad in ("", "a.b", "*", ">", "a b", "x" * 65, "tab\t", "new\n"):
        assert not is_valid_room_id(bad)
        with pytest.raises(ValueError):
            subjects.room_subject(bad)
    assert subjects.room_subject("r1") == "chat.room.r1"
    assert subjects.live_subject("r1") == "chat.live.r1"
    assert subjects.presence_subject("r1") == "presence.r1"
    assert subjects.room_of_subject("chat.live.r1") == "r1"


def test_message_event_shape_and_round_trip() -> None:
    alice = User(id="u_1", name="alice")
    record = ChatRecord(room="r", msg_id="m_1", sender=alice, ts="2026-01-01T00:00:00.000Z",
                        text="hi")
    payload = json.loads(msgspec.json.encode(record))
    assert payload["v"] == 1
    event = record_to_event(record, seq=7, prev_seq=3)
    wire = json.loads(encode(event))
    assert wire == {"type": "message", "room": "r", "msg_id": "m_1", "seq": 7, "prev_seq": 3,
                    "sender": {"id": "u_1", "name": "alice"}, "ts": "2026-01-01T00:00:00.000Z",
                    "text": "hi"}
    assert decode_event(encode(event)) == event
    deleted = Message(room="r", msg_id="m_1", seq=8, prev_seq=7, sender=alice, ts="t",
                      deleted=True)
    assert "text" not in json.loads(encode(deleted))
    reply = msgspec.json.decode(msgspec.json.encode(HistoryReply(messages=[event], has_more=True)),
                                type=HistoryReply)
    assert reply.messages == [event]


def test_other_events_and_acks() -> None:
    welcome = Welcome(session="s", user=User(id="u", name="n"), node="gw-1", heartbeat=25)
    assert json.loads(encode(welcome))["type"] == "welcome"
    assert json.loads(encode(Pong())) == {"type": "pong"}
    assert json.loads(encode(Error(code="forbidden", message="no", id="r1"))) == {
        "type": "error", "code": "forbidden", "message": "no", "id": "r1"}
    assert json.loads(encode_ack("r1", {"seq": 3})) == {"type": "ack", "id": "r1", "seq": 3}


def test_error_codes_map_to_statuses() -> None:
    assert set(HTTP_STATUS) == set(ErrorCode)
    assert HTTP_STATUS[ErrorCode.RATE_LIMITED] == 429
    assert ChatError("conflict", "taken").http_status == 409
    assert ChatError("no-such-code", "x").code is ErrorCode.INTERNAL
    assert CloseCode.UNAUTHORIZED == 4401 and CloseCode.SERVICE_RESTART == 1012


def test_nul_in_text_is_refused_before_anything_is_stored() -> None:
    with pytest.raises(ChatError) as info:
        frames.check_text("a\x00b")
    assert info.value.code is ErrorCode.BAD_REQUEST
