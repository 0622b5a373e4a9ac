"""The frames enforce chat_contract.limits at exactly their values: the last
value inside a bound decodes, the first one outside is refused as the
contract says (docs/protocol.md §8.1)."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from chat_contract import frames, limits, rooms
from chat_contract.errors import ChatError, ErrorCode


def _decode(**fields: Any) -> frames.ClientFrame:
    return frames.decode_frame(json.dumps(fields))


def _refused(**fields: Any) -> ChatError:
    with pytest.raises(ChatError) as caught:
        _decode(**fields)
    return caught.value


def test_request_id_bound() -> None:
    rid = "r" * limits.REQUEST_ID_MAX
    assert _decode(type="ping", id=rid).id == rid
    assert _refused(type="ping", id=rid + "r").code == ErrorCode.BAD_REQUEST
    # Only an id within the bound is ever echoed back.
    assert frames.request_id_of(json.dumps({"id": rid, "type": 1})) == rid
    assert frames.request_id_of(json.dumps({"id": rid + "r", "type": 1})) is None


def test_room_id_bound() -> None:
    room = "a" * limits.ROOM_ID_MAX
    assert rooms.is_valid_room_id(room) and not rooms.is_valid_room_id(room + "a")
    assert _decode(type="leave", room=room)
    assert _refused(type="leave", room=room + "a").code == ErrorCode.BAD_REQUEST


@pytest.mark.parametrize(("field", "bound"), [
    ("reply_to", limits.MSG_ID_MAX),
    ("client_msg_id", limits.CLIENT_MSG_ID_MAX),
])
def test_send_id_bounds(field: str, bound: int) -> None:
    assert _decode(type="send", room="r", text="t", **{field: "m" * bound})
    assert _refused(type="send", room="r", text="t",
                    **{field: "m" * (bound + 1)}).code == ErrorCode.BAD_REQUEST


def test_client_msg_id_is_never_empty() -> None:
    assert _refused(type="send", room="r", text="t", client_msg_id="").code == \
        ErrorCode.BAD_REQUEST


def test_page_bounds() -> None:
    for limit in (limits.PAGE_MIN, limits.PAGE_MAX):
        frame = _decode(type="history", room="r", limit=limit)
        assert isinstance(frame, frames.History) and frame.limit == limit
    for limit in (limits.PAGE_MIN - 1, limits.PAGE_MAX + 1):
        assert _refused(type="history", room="r", limit=limit).code == ErrorCode.BAD_REQUEST


def test_seq_bound() -> None:
    assert _decode(type="read", room="r", seq=limits.SEQ_MAX)
    assert _refused(type="read", room="r", seq=limits.SEQ_MAX + 1).code == ErrorCode.BAD_REQUEST
    assert _refused(type="join", room="r", since=-1).code == ErrorCode.BAD_REQUEST


def test_text_bound_is_too_large_not_bad_request() -> None:
    assert frames.check_text(" " + "é" * limits.TEXT_MAX_CHARS + " ") == \
        "é" * limits.TEXT_MAX_CHARS
    with pytest.raises(ChatError) as caught:
        frames.check_text("é" * (limits.TEXT_MAX_CHARS + 1))
    assert caught.value.code == ErrorCode.TOO_LARGE


def test_aliases_other_modules_import() -> None:
    assert frames.MAX_TEXT_CHARS == limits.TEXT_MAX_CHARS
    assert frames.MAX_SEQ == limits.SEQ_MAX == 2**63 - 1


def test_user_patterns() -> None:
    assert re.fullmatch(limits.USERNAME_PATTERN, "a.b-c_d")
    assert not re.fullmatch(limits.USERNAME_PATTERN, "ab")
    assert not re.fullmatch(limits.USERNAME_PATTERN, "a" * 33)
    # Auth-service ids fit the id pattern; names with a dot do not.
    assert re.fullmatch(limits.USER_ID_PATTERN, "u_" + "0" * 20)
    assert not re.fullmatch(limits.USER_ID_PATTERN, "a.b")
    # Either kind fits a user reference.
    assert re.fullmatch(limits.USER_REF_PATTERN, "a.b")
    assert re.fullmatch(limits.USER_REF_PATTERN, "u_" + "0" * 20)
    assert limits.PASSWORD_MIN < limits.PASSWORD_MAX
