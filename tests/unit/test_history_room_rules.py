"""Pure room rules of history-service (chat_history.room_rules): ids, names, limits,
who may join, see, invite, remove, archive, edit and delete."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from chat_contract.bus import SearchRequest
from chat_contract.errors import ChatError, ErrorCode
from chat_contract.events import User
from chat_contract.limits import SEARCH_LIMIT_MAX, SEARCH_OFFSET_MAX
from chat_contract.rooms import is_valid_room_id
from chat_contract.subjects import DM_PREFIX
from chat_history.room_rules import (
    PASSWORD_FAILURES_PER_ROOM,
    PASSWORD_FAILURES_PER_USER,
    PASSWORD_WINDOW,
    SEARCH_CANDIDATES,
    check_list_limit,
    check_may_archive,
    check_may_change,
    check_may_invite,
    check_may_reinvite,
    check_may_remove,
    check_new_room_id,
    check_password,
    check_read_seq,
    check_user_id,
    check_user_ref,
    decode_cursor,
    dm_name,
    dm_room_id,
    encode_cursor,
    initial_members,
    is_hidden,
    is_possible_msg_id,
    join_rule,
    may_see,
    new_room_id,
    room_name,
    search_query,
)
from chat_history.rooms_store import RoomRow, Standing
from chat_kit.throttle import PasswordThrottle

ME = User(id="u_me", name="me")


def standing(*, visibility: str = "public", owner: str | None = "u_owner",
             password: bool = False, archived: bool = False, dm: bool = False,
             member: bool = False, banned: bool = False, peer_blocks: bool = False,
             dm_party: bool = False) -> Standing:
    room = RoomRow(id="r1", name="r1", visibility=visibility,  # type: ignore[arg-type]
                   owner=owner, password_hash="$argon2id$x" if password else None,
                   archived=archived, dm=dm, created_at=datetime(2025, 1, 1, tzinfo=UTC))
    return Standing(room=room, member=member, banned=banned, peer_blocks=peer_blocks,
                    dm_party=dm_party)


def test_dm_room_id_is_symmetric_valid_and_distinct() -> None:
    a = dm_room_id("u_a", "u_b")
    assert a == dm_room_id("u_b", "u_a")
    assert a.startswith(DM_PREFIX) and len(a) == len(DM_PREFIX) + 32
    assert is_valid_room_id(a)
    assert a != dm_room_id("u_a", "u_c")
    # The separator keeps pairs apart that would concatenate alike.
    assert dm_room_id("u_a", "b_c") != dm_room_id("u_ab", "_c")


def test_dm_name_sorted() -> None:
    assert dm_name("zoe", "adam") == dm_name("adam", "zoe") == "adam, zoe"


def test_new_room_ids_are_valid_and_not_dm() -> None:
    ids = {new_room_id() for _ in range(200)}
    assert len(ids) == 200
    for room in ids:
        assert is_valid_room_id(room) and room.startswith("r-") and len(room) == 14
        assert not room.startswith(DM_PREFIX)


@pytest.mark.parametrize("name", ["", "   ", "x" * 101, "a\x00b"])
def test_bad_room_names(name: str) -> None:
    with pytest.raises(ChatError) as info:
        room_name(name)
    assert info.value.code is ErrorCode.BAD_REQUEST


def test_room_name_is_stripped() -> None:
    assert room_name("  general  ") == "general"
    assert room_name("x" * 100) == "x" * 100


@pytest.mark.parametrize("password", ["", "p" * 257])
def test_bad_room_passwords(password: str) -> None:
    with pytest.raises(ChatError) as info:
        check_password(password)
    assert info.value.code is ErrorCode.BAD_REQUEST


def test_good_room_passwords() -> None:
    check_password(None)
    check_password("p")
    check_password("p" * 256)


@pytest.mark.parametrize("kw", [
    {"q": ""}, {"q": "   "}, {"q": "x" * 201}, {"q": "a\x00"},
    {"q": "ok", "room": "bad room"}, {"q": "ok", "room": "x" * 65},
    {"q": "ok", "limit": 0}, {"q": "ok", "limit": 51},
    {"q": "ok", "offset": -1}, {"q": "ok", "offset": 1001},
])
def test_bad_searches(kw: dict[str, object]) -> None:
    with pytest.raises(ChatError) as info:
        search_query(SearchRequest(caller=ME, **kw))  # type: ignore[arg-type]
    assert info.value.code is ErrorCode.BAD_REQUEST


def test_good_search_is_stripped() -> None:
    req = SearchRequest(caller=ME, q="  hello  ", room="r1", limit=50, offset=1000)
    assert search_query(req) == "hello"


@pytest.mark.parametrize(("kw", "rule"), [
    ({}, "ok"),
    ({"member": True}, "ok"),
    ({"banned": True}, "forbidden"),
    ({"archived": True, "member": True}, "forbidden"),
    ({"archived": True, "owner": "u_me"}, "forbidden"),
    ({"visibility": "private"}, "forbidden"),
    ({"visibility": "private", "member": True}, "ok"),
    ({"visibility": "private", "owner": "u_me"}, "ok"),
    ({"password": True}, "password"),
    ({"password": True, "visibility": "private"}, "password"),
    ({"password": True, "member": True}, "ok"),
    ({"password": True, "owner": "u_me"}, "ok"),
    ({"dm": True, "visibility": "private", "owner": None}, "forbidden"),
    ({"dm": True, "visibility": "private", "owner": None, "member": True}, "ok"),
    ({"dm": True, "visibility": "private", "owner": None, "member": True,
      "peer_blocks": True}, "forbidden"),
])
def test_join_rule(kw: dict[str, object], rule: str) -> None:
    assert join_rule(standing(**kw), ME.id) == rule  # type: ignore[arg-type]


def test_may_see() -> None:
    assert may_see(standing(), ME.id)
    assert may_see(standing(archived=True), ME.id)
    assert not may_see(standing(visibility="private"), ME.id)
    assert may_see(standing(visibility="private", member=True), ME.id)
    assert may_see(standing(visibility="private", owner=ME.id), ME.id)
    assert not may_see(standing(visibility="private", dm=True, owner=None), ME.id)
    # Password rooms: members and the owner only, public or not.
    assert not may_see(standing(password=True), ME.id)
    assert not may_see(standing(password=True, visibility="private"), ME.id)
    assert may_see(standing(password=True, member=True), ME.id)
    assert may_see(standing(password=True, owner=ME.id), ME.id)
    # Removed (banned) users: not even a public room.
    assert not may_see(standing(banned=True), ME.id)
    assert not may_see(standing(banned=True, archived=True), ME.id)
    assert not may_see(standing(banned=True, visibility="private"), ME.id)


def refused(code: ErrorCode, check: Any, *args: object) -> str:
    with pytest.raises(ChatError) as info:
        check(*args)
    assert info.value.code is code
    return info.value.message


def test_new_room_ids_outside_the_dm_namespace() -> None:
    check_new_room_id("general")
    refused(ErrorCode.BAD_REQUEST, check_new_room_id, DM_PREFIX + "x")
    refused(ErrorCode.BAD_REQUEST, check_new_room_id, "a.b")


def test_user_ids_and_refs() -> None:
    check_user_id("u_1-A")
    check_user_ref("ann.smith")  # a name may hold a dot, an id may not
    for bad in ("", "a b", "x" * 65, "a.b"):
        refused(ErrorCode.BAD_REQUEST, check_user_id, bad)
    for bad in ("", "a b", "x" * 65, "a/b"):
        refused(ErrorCode.BAD_REQUEST, check_user_ref, bad)


def test_initial_members_deduplicated_without_the_creator_and_bounded() -> None:
    assert initial_members("u_me", ["u_b", "u_me", "u_a", "u_b"]) == ["u_b", "u_a"]
    assert len(initial_members("u_me", [f"u_{i}" for i in range(100)])) == 100
    refused(ErrorCode.BAD_REQUEST, initial_members, "u_me", [f"u_{i}" for i in range(101)])
    refused(ErrorCode.BAD_REQUEST, initial_members, "u_me", ["bad id"])


def test_list_limit_is_the_contracts() -> None:
    check_list_limit(1)
    check_list_limit(100)
    for bad in (0, 101, 200):
        refused(ErrorCode.BAD_REQUEST, check_list_limit, bad)


def test_read_seq_and_msg_id_bounds() -> None:
    check_read_seq(0)
    check_read_seq(2**63 - 1)
    refused(ErrorCode.BAD_REQUEST, check_read_seq, -1)
    refused(ErrorCode.BAD_REQUEST, check_read_seq, 2**63)
    assert is_possible_msg_id("m" * 64)
    assert not any(map(is_possible_msg_id, ("", "m" * 65, "m\x00")))


def test_who_may_invite() -> None:
    check_may_invite(standing(member=True), ME.id)
    check_may_invite(standing(visibility="private", owner=ME.id), ME.id)  # owner, not member
    assert "members" in refused(ErrorCode.FORBIDDEN, check_may_invite, standing(), ME.id)
    refused(ErrorCode.FORBIDDEN, check_may_invite,
            standing(dm=True, owner=None, member=True), ME.id)
    refused(ErrorCode.FORBIDDEN, check_may_invite, standing(archived=True, member=True), ME.id)
    # A removed user comes back only by the owner's invite.
    check_may_reinvite(standing(), ME.id)
    check_may_reinvite(standing(banned=True, owner=ME.id), ME.id)
    refused(ErrorCode.FORBIDDEN, check_may_reinvite, standing(banned=True), ME.id)


def test_only_the_owner_removes_and_archives() -> None:
    for check in (check_may_remove, check_may_archive):
        check(standing(owner=ME.id), ME.id)
        refused(ErrorCode.FORBIDDEN, check, standing(member=True), ME.id)


@pytest.mark.parametrize(("kw", "action", "sender", "allowed"), [
    ({"member": True}, "edit", ME.id, True),
    ({"member": True}, "edit", "u_other", False),
    ({"owner": ME.id}, "edit", "u_other", False),  # the owner edits only their own
    ({"member": True, "archived": True}, "edit", ME.id, False),
    ({"member": True}, "delete", ME.id, True),
    ({"member": True}, "delete", "u_other", False),
    ({"owner": ME.id}, "delete", "u_other", True),
    ({"member": True, "archived": True}, "delete", ME.id, True),  # privacy
])
def test_who_may_edit_and_delete(kw: dict[str, object], action: str, sender: str,
                                 allowed: bool) -> None:
    s = standing(**kw)  # type: ignore[arg-type]
    if allowed:
        check_may_change(s, ME.id, action, sender)  # type: ignore[arg-type]
    else:
        refused(ErrorCode.FORBIDDEN, check_may_change, s, ME.id, action, sender)


def test_search_candidates_cover_the_deepest_page() -> None:
    # The store is asked for limit + 1 rows (has_more) at the largest offset.
    assert SEARCH_CANDIDATES >= SEARCH_OFFSET_MAX + SEARCH_LIMIT_MAX + 1


def test_room_password_limits() -> None:
    assert (PASSWORD_FAILURES_PER_ROOM, PASSWORD_FAILURES_PER_USER, PASSWORD_WINDOW) == (
        10, 30, 300.0)


def test_password_attempts_count_before_the_verify_and_a_right_one_is_taken_back() -> None:
    t = PasswordThrottle(per_resource=2, per_user=10, window=60.0)
    first = t.attempt("u_a", "r1", now=0)
    t.attempt("u_a", "r1", now=0.01)  # a concurrent guess, its verify still running
    with pytest.raises(ChatError):  # a third one now is refused before any hash
        t.attempt("u_a", "r1", now=0.02)
    t.succeeded("u_a", "r1", first)  # the first was the right password
    t.attempt("u_a", "r1", now=0.03)  # room for one more


def test_password_throttle_per_room_and_per_user() -> None:
    t = PasswordThrottle(per_resource=2, per_user=3, window=60.0, message="slow down")
    t.failed("u_a", "r1", now=0)
    t.check("u_a", "r1", now=1)
    t.failed("u_a", "r1", now=1)
    with pytest.raises(ChatError) as info:
        t.check("u_a", "r1", now=2)
    assert info.value.code is ErrorCode.RATE_LIMITED and info.value.message == "slow down"
    assert info.value.retry_after == pytest.approx(58.0)
    t.check("u_a", "r2", now=2)  # another room: only the per-user count (2 of 3)
    t.check("u_b", "r1", now=2)  # another user: nothing counted
    t.failed("u_a", "r2", now=3)
    with pytest.raises(ChatError) as info:
        t.check("u_a", "r3", now=4)  # 3 failures of u_a within 60 s, whatever the room
    assert info.value.retry_after == pytest.approx(56.0)
    t.check("u_a", "r3", now=60.5)  # the first failure aged out: 2 of 3 for u_a
    t.check("u_a", "r1", now=60.5)  # and 1 of 2 for (u_a, r1)
    t.failed("u_a", "r1", now=60.5)
    with pytest.raises(ChatError):
        t.check("u_a", "r4", now=60.8)  # u_a at 3 again (t=1, 3, 60.5)
    # Never below one second of Retry-After.
    t.failed("u_c", "r1", now=100)
    t.failed("u_c", "r1", now=100)
    with pytest.raises(ChatError) as info:
        t.check("u_c", "r1", now=159.9)
    assert info.value.retry_after == 1.0
    # Pairs do not collide across the separator.
    p = PasswordThrottle(per_resource=1, per_user=0, window=60.0)
    p.failed("u_a", "b", now=0)
    p.check("u_a_b", "", now=0)
    p.check("u", "a_b", now=0)


def test_hidden_rooms_are_private_ones_the_caller_is_not_in() -> None:
    me = ME.id
    assert is_hidden(standing(visibility="private"), me)
    assert is_hidden(standing(visibility="private", password=True), me)  # a password too
    assert is_hidden(standing(visibility="private", banned=True), me)
    assert is_hidden(standing(visibility="private", owner=None, dm=True), me)  # others' DM
    assert not is_hidden(standing(visibility="private", member=True), me)
    assert not is_hidden(standing(visibility="private", owner=me), me)
    # One's own DM stays one's own after leaving it.
    assert not is_hidden(standing(visibility="private", owner=None, dm=True, dm_party=True), me)
    # Public rooms exist for everyone: a password or a ban does not hide them.
    assert not is_hidden(standing(), me)
    assert not is_hidden(standing(password=True, banned=True), me)


def test_directory_cursor_round_trips_and_refuses_anything_else() -> None:
    key = (datetime(2025, 6, 1, 12, 0, 0, 123456, tzinfo=UTC), "r-abc_DEF-1")
    cursor = encode_cursor(key)
    assert "=" not in cursor and decode_cursor(cursor) == key
    for bad in ("", "!!!", "bm9ucw",
                encode_cursor((datetime(2025, 1, 1, tzinfo=UTC), "a b")),
                "MjAyNS0wMS0wMVQwMDowMDowMHxyMQ"):  # "2025-01-01T00:00:00|r1": no zone
        with pytest.raises(ChatError) as info:
            decode_cursor(bad)
        assert info.value.code is ErrorCode.BAD_REQUEST, bad
