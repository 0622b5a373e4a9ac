"""Events of issue 3 through real gateways: blocks (filtered at delivery, chain
kept), edit and delete, read pointers and unread counts, full-text search."""

from __future__ import annotations

import asyncio
import json
import random
import string
import time
from typing import Any

import httpx
import pytest
from waiting import eventually, scaled

from .client import (
    Session,
    collect,
    logged_errors,
    refused,
    register_and_login,
    rest,
    through,
)
from .client import expect_error as _err
from .client import user_id as _uid
from .conftest import unique
from .stack import Stack

pytestmark = pytest.mark.e2e


async def _user(stack: Stack, gw: int = 1) -> dict[str, Any]:
    return await register_and_login(stack.gateway(gw).url, unique("user"))


def _word() -> str:
    """A token no other test writes (letters only: one lexeme for the 'simple' config)."""
    return "".join(random.choices(string.ascii_lowercase, k=12))


def _chain_ok(msgs: list[dict[str, Any]], start: int = 0) -> None:
    prev = start
    for m in msgs:
        assert m["prev_seq"] == prev, f"broken prev_seq chain at {m['seq']}: {msgs}"
        prev = m["seq"]


async def _typing(session: Session, room: str, state: str = "start") -> None:
    # typing has no ack (docs/protocol.md §3.3): sent without a request id
    await session.ws.send(json.dumps({"type": "typing", "room": room, "state": state}))


async def _search(http: httpx.AsyncClient, want: int, timeout: float = 3.5,
                  **params: Any) -> dict[str, Any]:
    """Poll search until it shows ``want`` results (it may lag writes by 2 s);
    the last answer if it never does (``timeout`` scaled)."""
    deadline = time.monotonic() + scaled(timeout)
    while True:
        r = await http.get("/v1/search", params=params)
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        if len(body["results"]) == want or time.monotonic() > deadline:
            return body
        await asyncio.sleep(0.2)


async def _unread(http: httpx.AsyncClient, room: str, want: int,
                  timeout: float = 2.0) -> dict[str, Any]:
    """The caller's entry for ``room`` in GET /v1/rooms once unread == want (lag ≤ 1 s);
    the last one if it never is (``timeout`` scaled)."""
    deadline = time.monotonic() + scaled(timeout)
    while True:
        r = await http.get("/v1/rooms")
        assert r.status_code == 200, r.text
        entry: dict[str, Any] = {x["id"]: x for x in r.json()["rooms"]}[room]
        if entry["unread"] == want or time.monotonic() > deadline:
            return entry
        await asyncio.sleep(0.1)


async def _probe(listener: Session, speaker: Session, room: str
                 ) -> tuple[bool, list[dict[str, Any]]]:
    """``speaker`` sends a probe, then ``listener`` a marker: whether ``listener``
    received the probe, and every event it received up to its marker."""
    probe = await speaker.request("send", room=room, text="probe")
    marker = await listener.request("send", room=room, text="marker")
    got = await through(listener, marker["msg_id"])
    return any(m.get("msg_id") == probe["msg_id"] for m in got), got


async def test_blocked_user_events_are_not_delivered(stack: Stack) -> None:
    alice, bob, carol = await _user(stack), await _user(stack, 2), await _user(stack)
    rid = unique("block")
    word = _word()
    a = await Session.open(stack.ws_url(1), alice["access_token"])   # the blocker
    b = await Session.open(stack.ws_url(2), bob["access_token"])     # the blocked
    c = await Session.open(stack.ws_url(2), carol["access_token"])   # a bystander
    for s in (a, b, c):
        await s.request("join", room=rid)
    async with rest(stack.gateway(1).url, alice["access_token"]) as ha, \
            rest(stack.gateway(2).url, bob["access_token"]) as hb:
        first = await c.request("send", room=rid, text="before the block")
        assert (await a.next_event("message"))["msg_id"] == first["msg_id"]
        r = await ha.put(f"/v1/blocks/{_uid(bob)}")
        assert r.status_code == 200 and r.json()["blocked"] == [_uid(bob)], r.text
        r = await ha.put(f"/v1/blocks/{_uid(bob)}")  # idempotent
        assert r.status_code == 200 and r.json()["blocked"] == [_uid(bob)], r.text

        # The BlocksNotice reaches alice's gateway: bob's probes stop reaching her.
        probes: list[dict[str, Any]] = []

        async def blocked() -> bool:
            heard, got = await _probe(a, b, rid)
            probes.extend(got)
            return not heard

        await eventually(blocked, 5.0, "the block to reach alice's socket", interval=0.1)
        start = probes[-1]["seq"]  # alice's last marker
        await through(c, probes[-1]["msg_id"])
        # a second device of the blocker, joined after the block (AccessReply.blocked)
        a2 = await Session.open(stack.ws_url(2), alice["access_token"])
        await a2.request("join", room=rid, since=start)

        order = [b, c, b, b, c, b]
        acks = []
        for i, s in enumerate(order):
            text = f"{word} from bob {i}" if s is b else f"carol {i}"
            acks.append(await s.request("send", room=rid, text=text))
        await _typing(b, rid)
        edit = await b.request("edit", room=rid, msg_id=acks[0]["msg_id"], text="bob edited")
        await b.request("read", room=rid, seq=acks[-1]["seq"])
        last = await c.request("send", room=rid, text="carol last")

        seen_by_carol = await through(c, last["msg_id"]) + await collect(c)
        everyone = [e for e in seen_by_carol if e["type"] == "message"]
        assert [m["seq"] for m in everyone] == sorted(
            [x["seq"] for x in acks] + [edit["seq"], last["seq"]])
        _chain_ok(everyone, start)
        for kind in ("typing", "read"):
            assert [e["user"]["id"] for e in seen_by_carol if e["type"] == kind] \
                == [_uid(bob)], kind

        from_carol = [x["msg_id"] for s, x in zip(order, acks, strict=True) if s is c]
        for blocker in (a, a2):
            got = await through(blocker, last["msg_id"]) + await collect(blocker)
            msgs = [e for e in got if e["type"] == "message"]
            assert [m["msg_id"] for m in msgs] == from_carol + [last["msg_id"]], msgs
            _chain_ok(msgs, start)
            bobs = [e for e in got if e.get("sender", e.get("user", {})).get("id") == _uid(bob)]
            assert bobs == [], f"blocker got the blocked user's events: {bobs}"

        # history and search for the blocker omit bob; others see him
        hist = await a.request("history", room=rid)
        assert _uid(bob) not in {m["sender"]["id"] for m in hist["messages"]}
        r = await hb.get(f"/v1/rooms/{rid}/messages")
        assert _uid(bob) in {m["sender"]["id"] for m in r.json()["messages"]}
        assert len((await _search(hb, 3, q=word))["results"]) == 3
        assert (await _search(ha, 0, timeout=0.5, q=word))["results"] == []
        # unread of the blocker does not count the blocked user's messages
        entry = await _unread(ha, rid, 4)
        assert entry["unread"] == 4  # carol's first, 1, 4 and last; none of bob's

        # unblock: bob's messages flow again (once the notice is there: probe),
        # the chain still unbroken for alice
        r = await ha.delete(f"/v1/blocks/{_uid(bob)}")
        assert r.status_code == 200 and r.json()["blocked"] == [], r.text
        after: list[dict[str, Any]] = []

        async def heard_again() -> bool:
            heard, got = await _probe(a, b, rid)
            after.extend(got)
            return heard

        await eventually(heard_again, 5.0, "the unblock to reach alice's socket", interval=0.1)
        _chain_ok([e for e in after if e["type"] == "message"], last["seq"])
        # typing is coalesced per user: stop first so that the start is news again
        await _typing(b, rid, "stop")
        await _typing(b, rid)
        ev = await a.next_event("typing", timeout=3)
        while ev["state"] != "start":
            ev = await a.next_event("typing", timeout=3)
        assert ev["user"]["id"] == _uid(bob)
    for s in (a, a2, b, c):
        await s.close()


async def _presence_of(session: Session, user: str) -> dict[str, Any]:
    """The next ``presence`` event ``session`` receives about ``user``."""
    ev = await session.next_event("presence")
    while ev["user"]["id"] != user:
        ev = await session.next_event("presence")
    return ev


async def test_blocked_user_presence_not_delivered(stack: Stack) -> None:
    alice, bob, carol = await _user(stack), await _user(stack, 2), await _user(stack)
    rid = unique("blockpres")
    async with rest(stack.gateway(1).url, alice["access_token"]) as ha:
        r = await ha.put(f"/v1/blocks/{_uid(bob)}")
        assert r.status_code == 200, r.text
        a = await Session.open(stack.ws_url(1), alice["access_token"])
        c = await Session.open(stack.ws_url(1), carol["access_token"])
        await a.request("join", room=rid)
        await c.request("join", room=rid)
        b = await Session.open(stack.ws_url(2), bob["access_token"])
        await b.request("join", room=rid)
        ev = await _presence_of(c, _uid(bob))
        assert ev["event"] == "join"
        await b.close()
        ev = await _presence_of(c, _uid(bob))
        assert ev["event"] == "leave"
        seen = [e for e in await collect(a) if e["type"] == "presence"]
        assert [e for e in seen if e["user"]["id"] == _uid(bob)] == []
        await a.close()
        await c.close()


async def test_edit_and_delete(stack: Stack) -> None:
    alice, bob = await _user(stack), await _user(stack, 2)
    rid = unique("edit")
    word = _word()
    async with rest(stack.gateway(1).url, alice["access_token"]) as ha:
        r = await ha.post("/v1/rooms", json={"id": rid, "name": "Edits", "visibility": "public"})
        assert r.status_code == 201, r.text
        a = await Session.open(stack.ws_url(1), alice["access_token"])
        b = await Session.open(stack.ws_url(2), bob["access_token"])
        await a.request("join", room=rid)
        await b.request("join", room=rid)
        m1 = await b.request("send", room=rid, text=f"original {word}")
        # edited a moment after sending: storage must be fresh enough to find it
        e1 = await b.request("edit", room=rid, msg_id=m1["msg_id"], text=f"edited {word}")
        assert e1["seq"] > m1["seq"]
        m2 = await a.request("send", room=rid, text="alice's message", reply_to=m1["msg_id"])
        live = await a.messages(3)
        assert [m["seq"] for m in live] == [m1["seq"], e1["seq"], m2["seq"]]
        _chain_ok(live)
        ev = live[1]
        assert ev["msg_id"] == m1["msg_id"] and ev["edited"] is True
        assert ev["text"] == f"edited {word}" and ev["sender"]["id"] == _uid(bob)
        assert ev["ts"] == m1["ts"]  # the original's time
        assert "deleted" not in ev or ev["deleted"] is False

        # refusals
        assert await refused(b, "edit", room=rid, msg_id=m2["msg_id"], text="mine now") \
            == "forbidden"
        assert await refused(b, "delete", room=rid, msg_id=m2["msg_id"]) == "forbidden"
        assert await refused(b, "edit", room=rid, msg_id="no-such-msg", text="x") == "not_found"
        assert await refused(b, "delete", room=rid, msg_id="no-such-msg") == "not_found"
        assert await refused(b, "edit", room=rid, msg_id=m1["msg_id"], text="   ") \
            == "bad_request"
        assert await refused(b, "edit", room=rid, msg_id=m1["msg_id"], text="x" * 4001) \
            == "too_large"
        # no message has an id that long: unknown (§8), like any other unknown id
        assert await refused(b, "edit", room=rid, msg_id="m" * 65, text="x") == "not_found"
        assert await refused(b, "edit", room=rid, msg_id=5, text="x") == "bad_request"
        assert await refused(b, "edit", room=rid, text="x") == "bad_request"
        assert await refused(b, "delete", room="bad.room", msg_id=m1["msg_id"]) \
            == "bad_request"
        # a message of another room is unknown here
        other = unique("elsewhere")
        await b.request("join", room=other)
        elsewhere = await b.request("send", room=other, text="other room")
        assert await refused(b, "edit", room=rid, msg_id=elsewhere["msg_id"], text="x") \
            == "not_found"
        assert (await _search(ha, 1, q=word))["results"][0]["text"] == f"edited {word}"
        assert (await _search(ha, 0, timeout=0.3, q="original " + word))["results"] == []

        # the owner deletes bob's message; bob deletes his own
        d1 = await a.request("delete", room=rid, msg_id=m1["msg_id"])
        ev = await b.next_event("message")
        while ev["seq"] != d1["seq"]:
            ev = await b.next_event("message")
        assert ev["msg_id"] == m1["msg_id"] and ev["deleted"] is True
        assert ev.get("text") in (None, "")
        assert await refused(b, "edit", room=rid, msg_id=m1["msg_id"], text="x") == "not_found"
        assert await refused(a, "delete", room=rid, msg_id=m1["msg_id"]) == "not_found"
        m3 = await b.request("send", room=rid, text="regret this")
        d3 = await b.request("delete", room=rid, msg_id=m3["msg_id"])

        # history: every event row in seq order with its message's latest state
        hist = (await a.request("history", room=rid))["messages"]
        assert [m["seq"] for m in hist] == [m1["seq"], e1["seq"], m2["seq"], d1["seq"],
                                            m3["seq"], d3["seq"]]
        _chain_ok(hist)
        for m in hist:
            if m["msg_id"] in (m1["msg_id"], m3["msg_id"]):
                assert m["deleted"] is True and m.get("text") in (None, ""), m
        assert hist[2]["text"] == "alice's message" and hist[2]["reply_to"] == m1["msg_id"]
        r = await ha.get(f"/v1/rooms/{rid}/messages")
        assert r.json()["messages"] == hist
        assert word not in r.text and "regret this" not in r.text
        # deleted text is gone from search
        assert (await _search(ha, 0, q=word))["results"] == []
        # joining with since replays the latest state as well
        b2 = await Session.open(stack.ws_url(1), bob["access_token"])
        missed = (await b2.request("join", room=rid, since=0))["missed"]
        assert [m["seq"] for m in missed] == [m["seq"] for m in hist]
        assert word not in str(missed)
        for s in (a, b, b2):
            await s.close()


async def test_read_pointer_and_unread(stack: Stack) -> None:
    alice, bob, carol = await _user(stack), await _user(stack, 2), await _user(stack)
    rid = unique("read")
    async with rest(stack.gateway(1).url, alice["access_token"]) as ha, \
            rest(stack.gateway(2).url, bob["access_token"]) as hb, \
            rest(stack.gateway(1).url, bob["access_token"]) as hb1, \
            rest(stack.gateway(1).url, carol["access_token"]) as hc:
        a = await Session.open(stack.ws_url(1), alice["access_token"])
        await a.request("join", room=rid)
        old = await a.request("send", room=rid, text="before bob came")
        bob1 = await Session.open(stack.ws_url(1), bob["access_token"])
        bob2 = await Session.open(stack.ws_url(2), bob["access_token"])
        await bob1.request("join", room=rid)
        await bob2.request("join", room=rid)
        entry = await _unread(hb, rid, 0)
        assert entry["unread"] == 0, "a new member starts with everything read"
        assert entry["last_seq"] == old["seq"]

        sent = [await a.request("send", room=rid, text=f"news {i}") for i in range(3)]
        entry = await _unread(hb, rid, 3)
        assert entry["unread"] == 3 and entry["last_seq"] == sent[-1]["seq"]
        assert entry["last_message"]["msg_id"] == sent[-1]["msg_id"]
        assert entry["last_message"]["text"] == "news 2"
        assert (await _unread(ha, rid, 0))["unread"] == 0  # own messages never count

        ack = await bob1.request("read", room=rid, seq=sent[1]["seq"])
        assert ack["type"] == "ack"
        ev = await a.next_event("read", timeout=2)
        assert ev == {"type": "read", "room": rid, "user": bob["user"], "seq": sent[1]["seq"]}
        assert (await _unread(hb1, rid, 1))["unread"] == 1  # the other device sees it too

        # the pointer never moves back
        r = await hb.post(f"/v1/rooms/{rid}/read", json={"seq": sent[0]["seq"]})
        assert r.status_code == 200 and r.json() == {"seq": sent[1]["seq"]}, r.text
        await bob2.request("read", room=rid, seq=0)
        assert (await _unread(hb, rid, 1, timeout=1.2))["unread"] == 1
        back = [e for e in await collect(a) if e["type"] == "read"]
        assert back == [], "a read that did not move the pointer was announced"
        # beyond the end: clamped to the last seq
        r = await hb.post(f"/v1/rooms/{rid}/read", json={"seq": 10**12})
        assert r.status_code == 200 and r.json() == {"seq": sent[-1]["seq"]}, r.text
        ev = await a.next_event("read", timeout=2)
        assert ev["seq"] == sent[-1]["seq"] and ev["user"]["id"] == _uid(bob)
        assert (await _unread(hb1, rid, 0))["unread"] == 0

        # unread across devices: a new message, read on the other device → 0 for both
        fresh = await a.request("send", room=rid, text="one more")
        assert (await _unread(hb1, rid, 1))["unread"] == 1
        await bob2.request("read", room=rid, seq=fresh["seq"])
        assert (await _unread(hb1, rid, 0))["unread"] == 0
        assert (await _unread(hb, rid, 0))["unread"] == 0
        # a deleted message is not unread
        gone = await a.request("send", room=rid, text="oops")
        await a.request("delete", room=rid, msg_id=gone["msg_id"])
        # A negative check: unread may lag writes by up to 1 s (docs/protocol.md
        # §8), so wait out that bound; the deleted message must not count then.
        await asyncio.sleep(scaled(1.1))
        assert (await _unread(hb, rid, 0, timeout=0))["unread"] == 0

        # refusals
        for body in ({"seq": -1}, {"seq": "5"}, {"seq": 1.5}, {}, {"seq": None},
                     {"seq": 2**63}):
            _err(await hb.post(f"/v1/rooms/{rid}/read", json=body), 400, "bad_request")
        _err(await hb.post(f"/v1/rooms/{rid}/read", content=b"seq=1"), 400, "bad_request")
        _err(await hc.post(f"/v1/rooms/{rid}/read", json={"seq": 1}), 403, "forbidden")
        _err(await hb.post(f"/v1/rooms/{unique('none')}/read", json={"seq": 1}), 404,
             "not_found")
        for frame in ({"seq": -1}, {"seq": "1"}, {"seq": 1.5}, {"seq": 2**63}):
            assert await refused(bob1, "read", room=rid, **frame) == "bad_request", frame
        assert await refused(bob1, "read", room="bad.id", seq=1) == "bad_request"
        c = await Session.open(stack.ws_url(2), carol["access_token"])
        assert await refused(c, "read", room=rid, seq=1) == "forbidden"
        # seq is a required field of read (docs/protocol.md §3.3, no "?")
        assert await refused(bob1, "read", room=rid) == "bad_request"
        for s in (a, bob1, bob2, c):
            await s.close()


async def test_search_scope_ranking_and_input(stack: Stack) -> None:
    alice, bob = await _user(stack), await _user(stack, 2)
    word = _word()
    shared, secret, public = unique("srcha"), unique("srchb"), unique("srchc")
    async with rest(stack.gateway(1).url, alice["access_token"]) as ha, \
            rest(stack.gateway(2).url, bob["access_token"]) as hb:
        r = await hb.post("/v1/rooms", json={"id": secret, "name": "Bob only",
                                              "visibility": "private"})
        assert r.status_code == 201, r.text
        a = await Session.open(stack.ws_url(1), alice["access_token"])
        b = await Session.open(stack.ws_url(2), bob["access_token"])
        await a.request("join", room=shared)
        for room in (shared, secret, public):
            await b.request("join", room=room)
        once = await a.request("send", room=shared, text=f"{word} alpha")
        twice = await b.request("send", room=shared, text=f"{word} beta {word} {word}")
        await a.request("send", room=shared, text="nothing to see")
        await b.request("send", room=secret, text=f"{word} private matter")
        await b.request("send", room=public, text=f"{word} public but alice is not in")

        got = await _search(ha, 2, q=word)
        res = got["results"]
        assert [x["msg_id"] for x in res] == [twice["msg_id"], once["msg_id"]], res
        assert got["has_more"] is False
        top = res[0]
        assert top["room"] == shared and top["seq"] == twice["seq"] and top["ts"] == twice["ts"]
        assert top["text"] == f"{word} beta {word} {word}"
        assert top["sender"]["id"] == _uid(bob)
        assert {x["room"] for x in res} == {shared}, "search leaked another room"
        assert len((await _search(hb, 4, q=word))["results"]) == 4

        page = (await ha.get("/v1/search", params={"q": word, "limit": 1})).json()
        assert [x["msg_id"] for x in page["results"]] == [twice["msg_id"]] and page["has_more"]
        page = (await ha.get("/v1/search", params={"q": word, "limit": 1, "offset": 1})).json()
        assert [x["msg_id"] for x in page["results"]] == [once["msg_id"]]
        assert page["has_more"] is False
        page = (await ha.get("/v1/search", params={"q": word, "room": shared})).json()
        assert len(page["results"]) == 2
        # web-search syntax: phrase, exclusion
        page = (await ha.get("/v1/search", params={"q": f'"{word} alpha"'})).json()
        assert [x["msg_id"] for x in page["results"]] == [once["msg_id"]]
        page = (await ha.get("/v1/search", params={"q": f"{word} -beta"})).json()
        assert [x["msg_id"] for x in page["results"]] == [once["msg_id"]]

        # never a room the caller is not in, even when asked for it
        # (a private room alice is not in is not there for her: 404, as an unknown id)
        _err(await ha.get("/v1/search", params={"q": word, "room": secret}), 404, "not_found")
        _err(await ha.get("/v1/search", params={"q": word, "room": public}), 403, "forbidden")
        _err(await ha.get("/v1/search", params={"q": word, "room": unique("nope")}), 404,
             "not_found")
        _err(await ha.get("/v1/search", params={"q": word, "room": "bad.id"}), 400,
             "bad_request")
        for params in ({"q": word, "limit": 0}, {"q": word, "limit": 51},
                       {"q": word, "limit": "x"}, {"q": word, "offset": -1},
                       {"q": word, "offset": 1001}, {"q": word, "offset": "1e3"},
                       {"q": ""}, {"q": "   "}, {}, {"q": "x" * 201}):
            _err(await ha.get("/v1/search", params=params), 400, "bad_request")

        attacks = ["'; DROP TABLE history.messages; --", "a & | ! :*", "\\", '"unterminated',
                   "<-> <2>", "(((", f"{word} OR 1=1", "%", "_", "NOT", "-", "!!", "*:*",
                   "' OR ''='", "$$; SELECT pg_sleep(5); $$", "\u202e\U0001f600", "a\tb\nc",
                   f"{word}')) OR (('1'='1"]
        for q in attacks:
            r = await ha.get("/v1/search", params={"q": q})
            assert r.status_code in (200, 400), (q, r.status_code, r.text)
            if r.status_code == 200:
                assert {x["room"] for x in r.json()["results"]} <= {shared}, q
        r = await ha.get("/v1/search", params={"q": "a\x00b"})
        assert r.status_code == 400, r.text
        # still intact afterwards
        assert len((await _search(ha, 2, q=word))["results"]) == 2

        # search follows membership: after leaving, the room is out of scope
        r = await ha.delete(f"/v1/rooms/{shared}/members/{_uid(alice)}")
        assert r.status_code == 204, r.text
        assert (await _search(ha, 0, q=word))["results"] == []
        for s in (a, b):
            await s.close()


def test_no_errors_logged(stack: Stack) -> None:
    """Last in the module: search injection and the rest made no service log an error."""
    assert logged_errors(stack) == []
