"""Reactions, threads and mentions (issue 14) through the two real gateways:
live ``reaction`` events in the ``seq``/``prev_seq`` chain on both, ``join``
with ``since`` recovering reactions and thread replies, blocks hiding a
user's reactions without a false gap, history aggregates, thread pages,
unread mentions, and every refusal with its error code."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from waiting import eventually

from .client import (
    Session,
    collect,
    refused,
    register_and_login,
    rest,
    through,
)
from .client import expect_error as _err
from .client import user_id as _uid
from .conftest import unique
from .hardening import make_stack
from .stack import Stack

pytestmark = pytest.mark.e2e

CAP = 3  # CHAT_HISTORY_REACTIONS_PER_MESSAGE here: the cap is reached in a few frames


@pytest.fixture(scope="module")
def stack(e2e_nats: str, e2e_db: str, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[Stack]:
    yield from make_stack(e2e_nats, e2e_db, tmp_path_factory.mktemp("stack-logs"),
                          CHAT_HISTORY_REACTIONS_PER_MESSAGE=str(CAP))


async def _user(stack: Stack, gw: int = 1) -> dict[str, Any]:
    return await register_and_login(stack.gateway(gw).url, unique("user"))


def _chain_ok(items: list[dict[str, Any]], start: int | None = None) -> None:
    prev = items[0]["prev_seq"] if start is None else start
    for item in items:
        assert item["prev_seq"] == prev, f"broken chain at {item['seq']}: {items}"
        prev = item["seq"]


def _sequenced(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] in ("message", "reaction")]


async def _sessions(stack: Stack, room: str, *gws: int
                    ) -> tuple[list[dict[str, Any]], list[Session]]:
    users = [await _user(stack, gw) for gw in gws]
    sessions = [await Session.open(stack.ws_url(gw), u["access_token"])
                for u, gw in zip(users, gws, strict=True)]
    for s in sessions:
        await s.request("join", room=room)
    return users, sessions


async def _close(*sessions: Session) -> None:
    for s in sessions:
        await s.close()


async def test_reactions_are_live_events_in_the_chain_on_both_gateways(stack: Stack) -> None:
    room = unique("react")
    (alice, bob, carol), (a, b, c) = await _sessions(stack, room, 1, 2, 1)
    try:
        sent = await a.request("send", room=room, text="react to me")
        on = await b.request("react", room=room, msg_id=sent["msg_id"], emoji="👍", on=True)
        marker = await c.request("send", room=room, text="marker")
        for s in (a, b, c):
            got = _sequenced(await through(s, marker["msg_id"]))
            assert [e["type"] for e in got] == ["message", "reaction", "message"]
            _chain_ok(got)
            reaction = got[1]
            assert reaction == {"type": "reaction", "room": room, "msg_id": sent["msg_id"],
                                "seq": on["seq"], "prev_seq": sent["seq"],
                                "user": bob["user"], "emoji": "👍", "on": True,
                                "ts": reaction["ts"]}
        # A repeat changes nothing: acked with the same seq, no event.
        again = await b.request("react", room=room, msg_id=sent["msg_id"], emoji="👍", on=True)
        assert again["seq"] == on["seq"]
        off = await b.request("react", room=room, msg_id=sent["msg_id"], emoji="👍", on=False)
        await a.request("react", room=room, msg_id=sent["msg_id"], emoji="🎉", on=True)
        marker2 = await c.request("send", room=room, text="marker 2")
        got = _sequenced(await through(a, marker2["msg_id"]))
        assert [(e["type"], e.get("on")) for e in got] == [
            ("reaction", False), ("reaction", True), ("message", None)]
        assert got[0]["seq"] == off["seq"] and got[0]["prev_seq"] == marker["seq"]
        _chain_ok(got, marker["seq"])

        # History: the same chain, reactions as items, aggregates per reader.
        async with rest(stack.gateway(2).url, alice["access_token"]) as http:
            r = await http.get(f"/v1/rooms/{room}/messages")
            assert r.status_code == 200, r.text
            items = r.json()["messages"]
        _chain_ok(items, 0)
        assert [i["type"] for i in items] == [
            "message", "reaction", "message", "reaction", "reaction", "message"]
        assert items[0]["reactions"] == [{"emoji": "🎉", "count": 1, "me": True}]
        async with rest(stack.gateway(1).url, carol["access_token"]) as http:
            items = (await http.get(f"/v1/rooms/{room}/messages")).json()["messages"]
        assert items[0]["reactions"] == [{"emoji": "🎉", "count": 1, "me": False}]
        # Unread counts ignore reactions.
        async with rest(stack.gateway(1).url, bob["access_token"]) as http:
            await http.post(f"/v1/rooms/{room}/read", json={"seq": marker2["seq"]})
            await a.request("react", room=room, msg_id=sent["msg_id"], emoji="🎉", on=False)
            entry = {x["id"]: x for x in (await http.get("/v1/rooms")).json()["rooms"]}[room]
            assert entry["unread"] == 0 and entry["last_message"]["msg_id"] == marker2["msg_id"]
    finally:
        await _close(a, b, c)


async def test_join_since_recovers_reactions_and_thread_replies(stack: Stack) -> None:
    room = unique("since")
    (alice, bob, carol), (a, b, c) = await _sessions(stack, room, 1, 2, 2)
    try:
        root = await a.request("send", room=room, text="a thread starts here")
        await c.next_event("message")
        await c.close()  # carol goes away holding root's seq
        reply = await b.request("send", room=room, text="answer", thread=root["msg_id"])
        # A reply to the reply is in the root's thread.
        nested = await a.request("send", room=room, text="again", thread=reply["msg_id"])
        react = await b.request("react", room=room, msg_id=root["msg_id"], emoji="❤️", on=True)

        back = await Session.open(stack.ws_url(1), carol["access_token"])
        try:
            ack = await back.request("join", room=room, since=root["seq"])
            missed = ack["missed"]
            assert [(m["type"], m["seq"]) for m in missed] == [
                ("message", reply["seq"]), ("message", nested["seq"]),
                ("reaction", react["seq"])]
            _chain_ok(missed, root["seq"])
            assert missed[0]["thread"] == root["msg_id"]
            assert missed[1]["thread"] == root["msg_id"]
            assert missed[2]["emoji"] == "❤️" and missed[2]["user"] == bob["user"]
        finally:
            await back.close()

        async with rest(stack.gateway(2).url, carol["access_token"]) as http:
            r = await http.get(f"/v1/rooms/{room}/messages")
            first = r.json()["messages"][0]
            assert first["msg_id"] == root["msg_id"]
            assert first["thread_info"] == {"count": 2, "last_seq": nested["seq"]}
            assert first["reactions"] == [{"emoji": "❤️", "count": 1, "me": False}]
            r = await http.get(f"/v1/rooms/{room}/threads/{root['msg_id']}")
            assert r.status_code == 200, r.text
            thread = r.json()
            assert [m["msg_id"] for m in thread["messages"]] == [reply["msg_id"],
                                                                nested["msg_id"]]
            assert thread["has_more"] is False
            assert thread["messages"][1]["prev_seq"] == reply["seq"]
            r = await http.get(f"/v1/rooms/{room}/threads/{root['msg_id']}",
                               params={"limit": 1})
            assert [m["msg_id"] for m in r.json()["messages"]] == [nested["msg_id"]]
            assert r.json()["has_more"] is True
            _err(await http.get(f"/v1/rooms/{room}/threads/m_unknown"), 404, "not_found")
            _err(await http.get(f"/v1/rooms/{room}/threads/{'m' * 65}"), 404, "not_found")
            _err(await http.get(f"/v1/rooms/{room}/threads/m%00x"), 404, "not_found")
        # A private room someone else may not see: not_found, as the other routes.
        secret = unique("secret")
        async with rest(stack.gateway(1).url, alice["access_token"]) as http:
            r = await http.post("/v1/rooms", json={"id": secret, "name": "s",
                                                   "visibility": "private"})
            assert r.status_code == 201, r.text
        await a.request("join", room=secret)
        hidden = await a.request("send", room=secret, text="psst")
        async with rest(stack.gateway(2).url, bob["access_token"]) as http:
            _err(await http.get(f"/v1/rooms/{secret}/threads/{hidden['msg_id']}"), 404,
                 "not_found")
    finally:
        await _close(a, b)


async def test_blocks_hide_reactions_without_false_gaps(stack: Stack) -> None:
    room = unique("blockreact")
    (alice, bob, _), (a, b, c) = await _sessions(stack, room, 1, 2, 2)
    try:
        sent = await a.request("send", room=room, text="hello")
        async with rest(stack.gateway(1).url, alice["access_token"]) as http:
            r = await http.put(f"/v1/blocks/{_uid(bob)}")
            assert r.status_code == 200, r.text

            async def block_applied() -> bool:
                probe = await b.request("send", room=room, text="probe")
                marker = await c.request("send", room=room, text="marker")
                got = await through(a, marker["msg_id"])
                return all(e.get("msg_id") != probe["msg_id"] for e in got)

            await eventually(block_applied, 5.0, "the block to reach alice's socket",
                             interval=0.1)
            last = (await c.request("send", room=room, text="before"))
            await through(a, last["msg_id"])
            await b.request("react", room=room, msg_id=sent["msg_id"], emoji="👍", on=True)
            await b.request("react", room=room, msg_id=sent["msg_id"], emoji="😀", on=True)
            await c.request("react", room=room, msg_id=sent["msg_id"], emoji="👍", on=True)
            after = await c.request("send", room=room, text="after")
            got = _sequenced(await through(a, after["msg_id"]))
            # bob's two reactions never reach alice; the chain re-links over them.
            assert [(e["type"], e.get("user", {}).get("id")) for e in got] == [
                ("reaction", got[0]["user"]["id"]), ("message", None)]
            assert got[0]["user"]["id"] != _uid(bob)
            _chain_ok(got, last["seq"])
            # Her history agrees: no reaction of bob's, bob's 👍 not counted.
            items = (await http.get(f"/v1/rooms/{room}/messages")).json()["messages"]
            _chain_ok(items, 0)
            assert all(i.get("user", {}).get("id") != _uid(bob) for i in items)
            assert items[0]["reactions"] == [{"emoji": "👍", "count": 1, "me": False}]
        async with rest(stack.gateway(2).url, bob["access_token"]) as http:
            items = (await http.get(f"/v1/rooms/{room}/messages")).json()["messages"]
            assert items[0]["reactions"] == [{"emoji": "👍", "count": 2, "me": True},
                                             {"emoji": "😀", "count": 1, "me": True}]
    finally:
        await _close(a, b, c)


async def test_every_refusal(stack: Stack) -> None:
    room, other = unique("refuse"), unique("other")
    (alice, bob), (a, b) = await _sessions(stack, room, 1, 2)
    try:
        await a.request("join", room=other)
        sent = await a.request("send", room=room, text="target")
        elsewhere = await a.request("send", room=other, text="elsewhere")
        target = {"room": room, "msg_id": sent["msg_id"], "on": True}
        # Not joined on this socket (bob never joined `other`).
        assert await refused(b, "react", room=other, msg_id=elsewhere["msg_id"], emoji="👍",
                             on=True) == "forbidden"
        assert await refused(b, "send", room=other, text="x",
                             thread=elsewhere["msg_id"]) == "forbidden"
        # Not one emoji; no `on`.
        for bad in ("", "+1", "👍👍", "a👍", "👍" + "\u200d" * 40):
            assert await refused(b, "react", **{**target, "emoji": bad}) == "bad_request"
        assert await refused(b, "react", room=room, msg_id=sent["msg_id"],
                             emoji="👍") == "bad_request"
        # Unknown, another room's, deleted message.
        assert await refused(b, "react", **{**target, "msg_id": "m_nope"},
                             emoji="👍") == "not_found"
        assert await refused(b, "react", **{**target, "msg_id": elsewhere["msg_id"]},
                             emoji="👍") == "not_found"
        gone = await a.request("send", room=room, text="gone soon")
        await a.request("delete", room=room, msg_id=gone["msg_id"])
        assert await refused(b, "react", **{**target, "msg_id": gone["msg_id"]},
                             emoji="👍") == "not_found"
        # A thread root in another room, unknown, deleted.
        for root in (elsewhere["msg_id"], "m_nope", gone["msg_id"]):
            assert await refused(b, "send", room=room, text="re",
                                 thread=root) == "bad_request"
        # Too many distinct emoji on one message (CAP here); more of one is fine.
        for emoji in ("😀", "😁", "😂"):
            await b.request("react", **target, emoji=emoji)
        assert await refused(a, "react", **target, emoji="🤣") == "too_large"
        await a.request("react", **target, emoji="😀")
        # Not a member any more: left the room (REST), the socket still joined.
        async with rest(stack.gateway(2).url, bob["access_token"]) as http:
            r = await http.delete(f"/v1/rooms/{room}/members/{_uid(bob)}")
            assert r.status_code == 204, r.text
        await eventually(lambda: _left(b, room), 5.0, "bob's socket taken out of the room")
        assert await refused(b, "react", **target, emoji="👍") == "forbidden"
        # An archived room is read-only for reactions too.
        async with rest(stack.gateway(1).url, alice["access_token"]) as http:
            r = await http.post(f"/v1/rooms/{room}/archive")
            assert r.status_code == 200, r.text
        await collect(a, 0.3)
        assert await refused(a, "react", **target, emoji="👍") == "forbidden"
    finally:
        await _close(a, b)


async def _left(session: Session, room: str) -> bool:
    try:
        code = await refused(session, "react", room=room, msg_id="m_x", emoji="👍", on=True)
    except AssertionError:
        return False
    return code == "forbidden"


async def test_mentions_of_members_only_and_unread_mentions(stack: Stack) -> None:
    room = unique("mention")
    (alice, bob, carol), (a, b, c) = await _sessions(stack, room, 1, 2, 1)
    dave = await _user(stack)  # not in the room
    try:
        await c.close()
        plain = await a.request("send", room=room, text="no one named")
        named = await a.request(
            "send", room=room,
            text=f"hi @{bob['user']['name'].upper()} and @{dave['user']['name']}, "
                 f"mail {carol['user']['name']}@example.org")
        got = await through(b, named["msg_id"])
        assert "mentions" not in next(e for e in got if e.get("msg_id") == plain["msg_id"])
        assert got[-1]["mentions"] == [_uid(bob)]  # dave is no member; the mail no mention
        await a.request("send", room=room, text=f"and @{carol['user']['name']}.")
        async with rest(stack.gateway(2).url, bob["access_token"]) as http:
            entry = {x["id"]: x for x in (await http.get("/v1/rooms")).json()["rooms"]}[room]
            assert entry["mentions"] == 1 and entry["unread"] == 3
        async with rest(stack.gateway(1).url, carol["access_token"]) as http:
            entry = {x["id"]: x for x in (await http.get("/v1/rooms")).json()["rooms"]}[room]
            assert entry["mentions"] == 1
            items = (await http.get(f"/v1/rooms/{room}/messages")).json()["messages"]
            assert items[-1]["mentions"] == [_uid(carol)]
            assert items[-2]["mentions"] == [_uid(bob)]
            await http.post(f"/v1/rooms/{room}/read", json={"seq": items[-1]["seq"]})
            entry = {x["id"]: x for x in (await http.get("/v1/rooms")).json()["rooms"]}[room]
            assert entry["mentions"] == 0
    finally:
        await _close(a, b)
