"""The per-socket rules of docs/protocol.md §3, on chat_gateway.session.Session
alone: no socket, no NATS, time passed in by hand."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from prometheus_client import REGISTRY

from chat_contract import limits
from chat_contract.claims import AccessClaims
from chat_contract.errors import ChatError, CloseCode, ErrorCode
from chat_gateway.session import (
    ChangeMessage,
    FetchHistory,
    JoinRoom,
    LeaveRoom,
    MarkRead,
    Members,
    ReactTo,
    Rules,
    SendMessage,
    Session,
    SetTyping,
    Verify,
)

RULES = Rules(node="gw-t", heartbeat=25, auth_timeout=5.0, max_rooms=2, send_rate=1.0,
              send_burst=2, abuse_strikes=3, abuse_window=10.0)
T0 = 1000.0  # monotonic seconds
WALL = 1_700_000_000.0  # Unix seconds


def claims(sub: str = "u_ann", name: str = "ann", exp: float = WALL + 600) -> AccessClaims:
    return AccessClaims(sub=sub, name=name, iss="chat", aud="chat", iat=int(WALL),
                        exp=int(exp), jti="j")


def frames_out(session: Session) -> list[dict[str, Any]]:
    return [json.loads(p) for p in session.data_to_send()]


def new(joined: set[str] | None = None, archived: set[str] | None = None,
        rules: Rules = RULES) -> Session:
    ro = archived or set()
    return Session(rules, "s_1", joined if joined is not None else set(), ro.__contains__, T0)


def open_session(joined: set[str] | None = None, archived: set[str] | None = None,
                 rules: Rules = RULES) -> Session:
    """Authenticated by an upgrade token; the welcome already taken."""
    session = new(joined, archived, rules)
    session.connect("tok")
    [call] = session.calls_to_make()
    session.succeeded(call, claims())
    assert [f["type"] for f in frames_out(session)] == ["welcome"]
    return session


def send(session: Session, frame: dict[str, Any], now: float = T0) -> None:
    session.receive_text(json.dumps(frame), now)


# --- authentication -------------------------------------------------------------------


def test_an_upgrade_token_is_verified_then_welcomed() -> None:
    session = new()
    session.connect("tok")
    [call] = session.calls_to_make()
    assert isinstance(call, Verify) and call.token == "tok" and not call.reauth
    assert not session.authenticated
    session.succeeded(call, claims())
    [welcome] = frames_out(session)
    assert welcome == {"type": "welcome", "session": "s_1",
                       "user": {"id": "u_ann", "name": "ann"}, "node": "gw-t", "heartbeat": 25}
    assert session.authenticated and session.close is None


def test_without_a_token_the_first_frame_must_be_auth() -> None:
    session = new()
    session.connect(None)
    assert session.calls_to_make() == [] and session.waiting_for_auth
    send(session, {"type": "join", "id": "j1", "room": "r"})
    assert frames_out(session) == [{"type": "error", "code": "unauthorized",
                                    "message": "authenticate first", "id": "j1"}]
    send(session, {"type": "auth", "id": "a1", "token": "tok"})
    [call] = session.calls_to_make()
    assert isinstance(call, Verify) and call.id == "a1"
    session.succeeded(call, claims())
    assert [f["type"] for f in frames_out(session)] == ["welcome", "ack"]


def test_garbage_and_binary_before_auth_are_unauthorized_not_strikes() -> None:
    session = new()
    for _ in range(10):
        session.receive_text("{nope", T0)
        session.receive_binary(T0)
    out = frames_out(session)
    assert len(out) == 20 and {f["code"] for f in out} == {"unauthorized"}
    assert session.close is None


def test_no_auth_frame_within_the_timeout_closes_4401() -> None:
    session = new()
    session.connect(None)
    assert session.timeout(T0 + 1, WALL) == pytest.approx(4.0)
    session.tick(T0 + 4.9, WALL)
    assert session.close is None
    session.tick(T0 + 5.0, WALL)
    assert session.close == (CloseCode.UNAUTHORIZED, "missing token")


def test_an_auth_frame_without_a_token_closes_4401() -> None:
    session = new()
    send(session, {"type": "auth", "token": ""})
    assert session.close == (CloseCode.UNAUTHORIZED, "missing token")


def test_a_rejected_token_closes_4401_with_its_reason() -> None:
    session = new()
    session.connect("bad")
    [call] = session.calls_to_make()
    session.failed(call, ChatError(ErrorCode.UNAUTHORIZED, "token expired"), T0)
    assert session.close == (CloseCode.UNAUTHORIZED, "token expired")
    assert not session.authenticated


def test_the_timeout_does_not_fire_while_a_token_is_verified() -> None:
    session = new()
    session.connect("tok")
    session.tick(T0 + 60, WALL)
    assert session.close is None


def test_a_token_that_lapses_closes_4401_and_auth_moves_the_expiry() -> None:
    session = open_session()
    assert session.timeout(T0, WALL) == pytest.approx(600)
    send(session, {"type": "auth", "id": "a2", "token": "newer"})
    [call] = session.calls_to_make()
    assert isinstance(call, Verify) and call.reauth
    session.succeeded(call, claims(exp=WALL + 1200))
    assert frames_out(session) == [{"type": "ack", "id": "a2"}]
    session.tick(T0, WALL + 900)
    assert session.close is None
    session.tick(T0, WALL + 1200)
    assert session.close == (CloseCode.UNAUTHORIZED, "token expired")


def test_reauth_as_another_user_is_forbidden_and_keeps_the_expiry() -> None:
    session = open_session()
    send(session, {"type": "auth", "id": "a2", "token": "eve"})
    [call] = session.calls_to_make()
    session.succeeded(call, claims(sub="u_eve", exp=WALL + 5000))
    [err] = frames_out(session)
    assert err["code"] == "forbidden" and err["id"] == "a2"
    assert session.token_exp == WALL + 600 and session.close is None


def test_a_failed_reauth_is_an_error_not_a_close() -> None:
    session = open_session()
    send(session, {"type": "auth", "id": "a2", "token": "bad"})
    [call] = session.calls_to_make()
    session.failed(call, ChatError(ErrorCode.UNAUTHORIZED, "bad signature"), T0)
    assert frames_out(session) == [{"type": "error", "code": "unauthorized",
                                    "message": "bad signature", "id": "a2"}]
    assert session.close is None


# --- decoding and answers -------------------------------------------------------------


def test_malformed_json_is_bad_request_with_the_request_id_when_readable() -> None:
    session = open_session()
    send(session, {"type": "nope", "id": "x1"})
    session.receive_text("{broken", T0)
    first, second = frames_out(session)
    assert first["code"] == "bad_request" and first["id"] == "x1"
    assert second["code"] == "bad_request" and second.get("id") is None


def test_a_binary_frame_is_bad_request() -> None:
    session = open_session()
    session.receive_binary(T0)
    [err] = frames_out(session)
    assert err["code"] == "bad_request" and err["message"] == "binary frames are not accepted"


def test_ping_is_answered_with_pong_and_never_acked() -> None:
    session = open_session()
    send(session, {"type": "ping", "id": "p1"})
    assert frames_out(session) == [{"type": "pong"}]
    assert session.calls_to_make() == []


def test_a_call_result_is_acked_with_its_request_id() -> None:
    session = open_session(joined={"r"})
    send(session, {"type": "send", "id": "s1", "room": "r", "text": "  hi  "})
    [call] = session.calls_to_make()
    assert isinstance(call, SendMessage) and call.text == "hi" and call.id == "s1"
    session.succeeded(call, {"msg_id": "m", "seq": 3, "ts": "t"})
    assert frames_out(session) == [{"type": "ack", "id": "s1", "msg_id": "m", "seq": 3,
                                    "ts": "t"}]


def test_a_call_without_request_id_is_not_acked() -> None:
    session = open_session(joined={"r"})
    send(session, {"type": "typing", "room": "r", "state": "start"})
    [call] = session.calls_to_make()
    assert isinstance(call, SetTyping) and call.state == "start"
    session.succeeded(call, {})
    assert frames_out(session) == []


def test_a_failed_call_answers_its_error_with_the_request_id() -> None:
    session = open_session()
    send(session, {"type": "history", "id": "h1", "room": "r"})
    [call] = session.calls_to_make()
    assert isinstance(call, FetchHistory)
    session.failed(call, ChatError(ErrorCode.UNAVAILABLE, "no service"), T0)
    assert frames_out(session) == [{"type": "error", "code": "unavailable",
                                    "message": "no service", "id": "h1"}]


def test_an_unexpected_failure_is_internal_and_the_session_goes_on() -> None:
    session = open_session()
    send(session, {"type": "leave", "id": "l1", "room": "r"})
    [call] = session.calls_to_make()
    assert isinstance(call, LeaveRoom)
    session.failed(call, RuntimeError("boom"), T0)
    assert frames_out(session) == [{"type": "error", "code": "internal",
                                    "message": "internal error", "id": "l1"}]
    assert session.close is None


# --- frame rules ----------------------------------------------------------------------


@pytest.mark.parametrize("frame", [
    {"type": "send", "room": "r", "text": "hi"},
    {"type": "edit", "room": "r", "msg_id": "m", "text": "hi"},
    {"type": "delete", "room": "r", "msg_id": "m"},
    {"type": "read", "room": "r", "seq": 1},
    {"type": "typing", "room": "r", "state": "start"},
    {"type": "presence", "room": "r"},
])
def test_room_frames_need_the_room_joined(frame: dict[str, Any]) -> None:
    session = open_session(joined={"other"})
    send(session, {**frame, "id": "q"})
    assert session.calls_to_make() == []
    [err] = frames_out(session)
    assert err == {"type": "error", "code": "forbidden", "message": "not joined to room r",
                   "id": "q"}


def test_history_and_leave_do_not_need_the_room_joined() -> None:
    session = open_session()
    send(session, {"type": "history", "room": "r", "limit": 5})
    send(session, {"type": "leave", "room": "r"})
    history, leave = session.calls_to_make()
    assert isinstance(history, FetchHistory) and history.limit == 5
    assert isinstance(leave, LeaveRoom) and leave.room == "r"


def test_empty_and_too_long_text() -> None:
    session = open_session(joined={"r"})
    send(session, {"type": "send", "room": "r", "text": "   "})
    send(session, {"type": "send", "room": "r", "text": "x" * (limits.TEXT_MAX_CHARS + 1)})
    send(session, {"type": "send", "room": "r", "text": "x" * limits.TEXT_MAX_CHARS})
    empty, big = frames_out(session)
    assert empty["code"] == "bad_request" and big["code"] == "too_large"
    [call] = session.calls_to_make()
    assert isinstance(call, SendMessage)


def test_an_archived_room_refuses_send_and_edit_but_not_delete() -> None:
    session = open_session(joined={"r"}, archived={"r"})
    send(session, {"type": "send", "id": "1", "room": "r", "text": "hi"})
    send(session, {"type": "edit", "id": "2", "room": "r", "msg_id": "m", "text": "hi"})
    send(session, {"type": "delete", "id": "3", "room": "r", "msg_id": "m"})
    out = frames_out(session)
    assert [(f["id"], f["code"]) for f in out] == [("1", "forbidden"), ("2", "forbidden")]
    assert "archived" in out[0]["message"]
    [call] = session.calls_to_make()
    assert isinstance(call, ChangeMessage) and call.action == "delete" and call.text is None


def test_the_send_bucket_limits_sends_and_changes_and_refills() -> None:
    session = open_session(joined={"r"})  # burst 2, 1 per second
    send(session, {"type": "send", "room": "r", "text": "a"})
    send(session, {"type": "edit", "room": "r", "msg_id": "m", "text": "b"})
    send(session, {"type": "delete", "id": "d", "room": "r", "msg_id": "m"})
    assert len(session.calls_to_make()) == 2
    assert frames_out(session) == [{"type": "error", "code": "rate_limited",
                                    "message": "too many messages, slow down", "id": "d"}]
    send(session, {"type": "send", "room": "r", "text": "c"}, now=T0 + 1.0)
    assert len(session.calls_to_make()) == 1


def test_a_msg_id_longer_than_any_is_not_found() -> None:
    session = open_session(joined={"r"})
    send(session, {"type": "delete", "id": "d", "room": "r",
                   "msg_id": "m" * (limits.MSG_ID_MAX + 1)})
    [err] = frames_out(session)
    assert err["code"] == "not_found" and session.calls_to_make() == []


def test_react_is_a_call_with_its_checked_fields() -> None:
    session = open_session(joined={"r"})
    send(session, {"type": "react", "id": "1", "room": "r", "msg_id": "m", "emoji": "👍🏽",
                   "on": True})
    send(session, {"type": "react", "room": "r", "msg_id": "m", "emoji": "👍🏽", "on": False})
    first, second = session.calls_to_make()
    assert isinstance(first, ReactTo) and (first.id, first.msg_id, first.emoji, first.on) == (
        "1", "m", "👍🏽", True)
    assert isinstance(second, ReactTo) and second.on is False and second.id is None
    assert frames_out(session) == []


def test_react_refusals_need_no_round_trip() -> None:
    session = open_session(joined={"r", "a"}, archived={"a"})
    refused = [
        ({"room": "x", "msg_id": "m", "emoji": "👍", "on": True}, "forbidden"),  # not joined
        ({"room": "r", "msg_id": "m", "emoji": "ok", "on": True}, "bad_request"),
        ({"room": "r", "msg_id": "m", "emoji": "👍👍", "on": True}, "bad_request"),
        ({"room": "r", "msg_id": "m", "emoji": "👍"}, "bad_request"),  # no on
        ({"room": "r", "msg_id": "m", "emoji": "👍", "on": "yes"}, "bad_request"),
        ({"room": "r", "emoji": "👍", "on": True}, "bad_request"),  # no msg_id
        ({"room": "r", "msg_id": "m" * (limits.MSG_ID_MAX + 1), "emoji": "👍", "on": True},
         "not_found"),
        ({"room": "a", "msg_id": "m", "emoji": "👍", "on": True}, "forbidden"),  # archived
    ]
    for i, (fields, _) in enumerate(refused):
        send(session, {"type": "react", "id": str(i), **fields}, now=T0 + 20 * i)
    out = frames_out(session)
    assert [(f["id"], f["code"]) for f in out] == [
        (str(i), code) for i, (_, code) in enumerate(refused)]
    assert session.calls_to_make() == []


def test_reactions_share_the_send_bucket() -> None:
    session = open_session(joined={"r"})  # burst 2
    for i in range(3):
        send(session, {"type": "react", "id": str(i), "room": "r", "msg_id": "m",
                       "emoji": "👍", "on": True})
    assert len(session.calls_to_make()) == 2
    assert [f["code"] for f in frames_out(session)] == ["rate_limited"]


def test_send_carries_its_thread() -> None:
    session = open_session(joined={"r"})
    send(session, {"type": "send", "room": "r", "text": "re", "thread": "m_root"})
    send(session, {"type": "send", "id": "2", "room": "r", "text": "re",
                   "thread": "m" * (limits.MSG_ID_MAX + 1)})
    [call] = session.calls_to_make()
    assert isinstance(call, SendMessage) and call.thread == "m_root"
    assert [f["code"] for f in frames_out(session)] == ["bad_request"]


def test_edit_carries_the_checked_text() -> None:
    session = open_session(joined={"r"})
    send(session, {"type": "edit", "room": "r", "msg_id": "m", "text": " new "})
    [call] = session.calls_to_make()
    assert isinstance(call, ChangeMessage) and (call.action, call.text) == ("edit", "new")


def test_at_most_max_rooms_joined_but_rejoining_one_is_fine() -> None:
    session = open_session(joined={"a", "b"})  # max_rooms 2
    send(session, {"type": "join", "id": "j", "room": "c"})
    [err] = frames_out(session)
    assert err["code"] == "forbidden" and err["message"] == "at most 2 joined rooms"
    send(session, {"type": "join", "room": "a", "since": 4, "password": "pw"})
    [call] = session.calls_to_make()
    assert isinstance(call, JoinRoom) and (call.room, call.since, call.password) == (
        "a", 4, "pw")


def test_the_joined_set_is_read_live() -> None:
    joined: set[str] = set()
    session = open_session(joined=joined)
    send(session, {"type": "read", "room": "r", "seq": 2})
    assert frames_out(session)[0]["code"] == "forbidden"
    joined.add("r")  # the room hub admitted the socket
    send(session, {"type": "read", "room": "r", "seq": 2})
    send(session, {"type": "presence", "room": "r"})
    read, members = session.calls_to_make()
    assert isinstance(read, MarkRead) and read.seq == 2 and isinstance(members, Members)


# --- strikes --------------------------------------------------------------------------


def test_repeated_refusals_close_1008() -> None:
    session = open_session()  # 3 strikes allowed within 10 s
    for _ in range(3):
        session.receive_text("{bad", T0)
    assert session.close is None
    session.receive_binary(T0 + 1)
    assert session.close == (CloseCode.POLICY, "too many bad or rate-limited frames")
    assert len(frames_out(session)) == 4  # each refusal answered before the close
    session.receive_text('{"type":"ping"}', T0 + 1)
    assert frames_out(session) == []  # a closing session reads nothing more


def test_strikes_age_out_of_the_window() -> None:
    session = open_session()
    for i in range(10):
        session.receive_text("{bad", T0 + i * 4.0)  # never 4 within 10 s
    assert session.close is None


def test_rate_limited_and_too_large_strike_but_forbidden_does_not() -> None:
    session = open_session(joined={"r"})
    for _ in range(5):
        send(session, {"type": "send", "room": "elsewhere", "text": "x"})
    assert session.close is None
    for _ in range(2):
        send(session, {"type": "send", "room": "r", "text": "x"})
    send(session, {"type": "send", "room": "r", "text": "x"})  # rate_limited: 1
    send(session, {"type": "send", "room": "r", "text": "x" * 5000})  # too_large: 2
    send(session, {"type": "send", "room": "r", "text": ""})  # bad_request: 3
    assert session.close is None
    send(session, {"type": "send", "room": "r", "text": "x"})  # 4 > 3
    assert session.close is not None and session.close[0] == CloseCode.POLICY


def test_a_service_bad_request_strikes_too() -> None:
    session = open_session(rules=Rules(node="n", heartbeat=1, abuse_strikes=1))
    for i in range(2):
        send(session, {"type": "history", "id": f"h{i}", "room": "r"})
        [call] = session.calls_to_make()
        session.failed(call, ChatError(ErrorCode.BAD_REQUEST, "bad limit"), T0)
    assert session.close is not None and session.close[0] == CloseCode.POLICY


def test_zero_abuse_strikes_never_closes() -> None:
    session = open_session(rules=Rules(node="n", heartbeat=1, abuse_strikes=0))
    for _ in range(100):
        session.receive_text("{bad", T0)
    assert session.close is None


# --- join and leave rate --------------------------------------------------------------


def test_joins_and_leaves_share_a_bucket_and_refill() -> None:
    rules = Rules(node="n", heartbeat=1, max_rooms=10, join_rate=2.0, join_burst=3,
                  abuse_strikes=10)
    session = open_session(rules=rules)
    send(session, {"type": "join", "id": "j1", "room": "a"})
    send(session, {"type": "leave", "id": "l1", "room": "a"})
    send(session, {"type": "join", "id": "j2", "room": "b"})
    send(session, {"type": "join", "id": "j3", "room": "c"})  # the 4th within the burst of 3
    send(session, {"type": "leave", "id": "l2", "room": "b"})
    calls = session.calls_to_make()
    assert [type(c) for c in calls] == [JoinRoom, LeaveRoom, JoinRoom]
    errors = frames_out(session)
    assert [(e["code"], e["id"]) for e in errors] == [("rate_limited", "j3"),
                                                       ("rate_limited", "l2")]
    assert errors[0]["message"] == "too many joins and leaves, retry in 0.5 s"
    # sends do not draw from it, and it refills at join_rate per second
    session.joined.add("a")  # type: ignore[attr-defined]
    send(session, {"type": "send", "room": "a", "text": "still fine"})
    send(session, {"type": "join", "id": "j4", "room": "c"}, now=T0 + 0.5)
    assert [type(c) for c in session.calls_to_make()] == [SendMessage, JoinRoom]


def test_join_spam_strikes_and_closes_1008() -> None:
    rules = Rules(node="n", heartbeat=1, join_rate=0.001, join_burst=1, abuse_strikes=3)
    session = open_session(rules=rules)
    for i in range(5):
        send(session, {"type": "join", "room": f"r{i}"})
    assert session.close == (CloseCode.POLICY, "too many bad or rate-limited frames")
    assert len(session.calls_to_make()) == 1


# --- counts: chat_ws_requests_total{type,outcome} (docs/protocol.md §7) -----------------


def counted(type_: str, outcome: str) -> float:
    return REGISTRY.get_sample_value("chat_ws_requests_total",
                                     {"type": type_, "outcome": outcome}) or 0.0


def test_every_frame_is_counted_once_by_type_and_outcome() -> None:
    session = open_session(joined={"r"}, rules=dataclasses.replace(RULES, abuse_strikes=100))
    keys = [("send", "ok"), ("send", "forbidden"), ("send", "too_large"), ("ping", "ok"),
            ("edit", "not_found"), ("delete", "ok"), ("history", "unavailable"),
            ("history", "internal"), ("join", "bad_request"), ("unknown", "bad_request"),
            ("typing", "ok"), ("auth", "forbidden"), ("auth", "ok")]
    before = {k: counted(*k) for k in keys}
    send(session, {"type": "send", "id": "1", "room": "r", "text": "hi"})
    [call] = session.calls_to_make()
    session.succeeded(call, {"msg_id": "m", "seq": 1, "ts": "t"})
    send(session, {"type": "send", "id": "2", "room": "elsewhere", "text": "hi"})
    too_long = "x" * (limits.TEXT_MAX_CHARS + 1)
    send(session, {"type": "send", "id": "3", "room": "r", "text": too_long})
    send(session, {"type": "ping"})
    send(session, {"type": "edit", "id": "4", "room": "r", "msg_id": "m" * 200, "text": "t"})
    send(session, {"type": "delete", "id": "5", "room": "r", "msg_id": "m"})
    send(session, {"type": "history", "id": "6", "room": "r"})
    send(session, {"type": "history", "id": "7", "room": "r"})
    delete, hist1, hist2 = session.calls_to_make()
    session.succeeded(delete, {"seq": 2})
    session.failed(hist1, ChatError(ErrorCode.UNAVAILABLE, "down"), T0)
    session.failed(hist2, RuntimeError("bug"), T0)
    send(session, {"type": "join", "id": "8"})  # no room: its type is still known
    send(session, {"type": "shout", "id": "9"})
    session.receive_text("{not json", T0)
    session.receive_binary(T0)
    send(session, {"type": "typing", "room": "r", "state": "start"})
    send(session, {"type": "auth", "id": "10", "token": "other"})
    send(session, {"type": "auth", "id": "11", "token": "mine"})
    typing, other, mine = session.calls_to_make()
    session.succeeded(typing, {})
    session.succeeded(other, claims(sub="u_bob"))
    session.succeeded(mine, claims())
    after = {k: counted(*k) - before[k] for k in keys}
    assert after == {("send", "ok"): 1, ("send", "forbidden"): 1, ("send", "too_large"): 1,
                     ("ping", "ok"): 1, ("edit", "not_found"): 1, ("delete", "ok"): 1,
                     ("history", "unavailable"): 1, ("history", "internal"): 1,
                     ("join", "bad_request"): 1, ("unknown", "bad_request"): 3,
                     ("typing", "ok"): 1, ("auth", "forbidden"): 1, ("auth", "ok"): 1}


def test_a_send_call_carries_the_time_its_frame_arrived() -> None:
    session = open_session(joined={"r"})
    send(session, {"type": "send", "room": "r", "text": "hi"}, now=T0 + 3.5)
    [call] = session.calls_to_make()
    assert isinstance(call, SendMessage) and call.received == T0 + 3.5


def test_frames_before_auth_count_as_unauthorized_and_the_upgrade_token_not_at_all() -> None:
    keys = [("auth", "ok"), ("auth", "unauthorized"), ("join", "unauthorized")]
    before = {k: counted(*k) for k in keys}
    open_session()  # an upgrade token is no frame
    session = new()
    send(session, {"type": "join", "id": "1", "room": "r"})
    send(session, {"type": "auth", "id": "2", "token": "bad"})
    [call] = session.calls_to_make()
    session.failed(call, ChatError(ErrorCode.UNAUTHORIZED, "expired"), T0)
    session = new()
    send(session, {"type": "auth", "id": "3", "token": "good"})
    [call] = session.calls_to_make()
    session.succeeded(call, claims())
    assert {k: counted(*k) - before[k] for k in keys} == {
        ("auth", "ok"): 1, ("auth", "unauthorized"): 1, ("join", "unauthorized"): 1}


def test_the_type_label_is_bounded() -> None:
    from chat_kit import metrics
    session = open_session()
    for i in range(50):
        send(session, {"type": f"made-up-{i}", "id": str(i)})
    types = {s.labels["type"] for s in metrics.WS_REQUESTS.collect()[0].samples}
    assert types <= {*metrics.WS_REQUEST_TYPES, "unknown"}
