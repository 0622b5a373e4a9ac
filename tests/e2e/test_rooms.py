"""Rooms and membership through real gateways (issue 3): private and password
rooms, invites, leave/remove (also across gateways), archive, DMs and bad input
on every new REST route. Blocks, edits, read state and search are in
test_rooms_events.py."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg
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
)
from .client import expect_error as _err
from .client import user_id as _uid
from .conftest import unique
from .stack import Stack

pytestmark = pytest.mark.e2e

ROOM_FIELDS = {"id", "name", "visibility", "owner", "created_at", "password", "archived", "dm"}


async def _user(stack: Stack, gw: int = 1) -> dict[str, Any]:
    return await register_and_login(stack.gateway(gw).url, unique("user"))


async def _create(http: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    r = await http.post("/v1/rooms", json=body)
    assert r.status_code == 201, r.text
    room: dict[str, Any] = r.json()
    assert room["id"], room
    return room


async def test_room_object_has_every_field(stack: Stack) -> None:
    """Room objects carry all their fields, false flags included (not omitted)."""
    alice = await _user(stack)
    async with rest(stack.gateway(1).url, alice["access_token"]) as ha:
        made = (await ha.post("/v1/rooms", json={"name": "Fields", "visibility": "public"}))
        assert made.status_code == 201, made.text
        rid = made.json()["id"]
        got = await ha.get(f"/v1/rooms/{rid}")
        mine = {x["id"]: x for x in (await ha.get("/v1/rooms")).json()["rooms"]}
        public = {x["id"]: x for x in
                  (await ha.get("/v1/rooms", params={"public": 1})).json()["rooms"]}
        for where, room in (("POST", made.json()), ("GET", got.json()),
                            ("list", mine[rid]), ("public", public[rid])):
            missing = ROOM_FIELDS - set(room)
            assert not missing, f"{where} /v1/rooms: room object lacks {missing}: {room}"
            assert room["password"] is False and room["archived"] is False, where
            assert room["dm"] is False and room["owner"] == _uid(alice), where
            assert room["created_at"].endswith("Z"), where
        assert mine[rid]["unread"] == 0 and mine[rid]["last_seq"] == 0
        assert public[rid]["member_count"] == 1
        # members are {"id","name","online"} (docs/protocol.md §8) plus the role
        for m in got.json()["members"]:
            assert {"id", "name", "online", "role"} <= set(m), m
            assert isinstance(m["online"], bool) and m["role"] in ("owner", "member")


async def test_private_room_invite_leave_remove(stack: Stack) -> None:
    alice, bob, carol = await _user(stack), await _user(stack), await _user(stack, 2)
    rid = unique("priv")
    async with rest(stack.gateway(1).url, alice["access_token"]) as ha, \
            rest(stack.gateway(2).url, bob["access_token"]) as hb, \
            rest(stack.gateway(1).url, carol["access_token"]) as hc:
        room = await _create(ha, id=rid, name="  Secret plans ", visibility="private")
        assert room["id"] == rid and room["visibility"] == "private"
        assert room["owner"] == _uid(alice) and room["name"] == "Secret plans"
        _err(await ha.post("/v1/rooms", json={"id": rid, "name": "again",
                                                "visibility": "public"}), 409, "conflict")

        b = await Session.open(stack.ws_url(2), bob["access_token"])
        # to a non-member the private room is not there: not_found, as for an
        # unknown id (no existence oracle)
        assert await refused(b, "join", room=rid) == "not_found"
        assert await refused(b, "send", room=rid, text="let me in") == "forbidden"
        _err(await hb.get(f"/v1/rooms/{rid}"), 404, "not_found")
        _err(await hb.get(f"/v1/rooms/{rid}/messages"), 404, "not_found")
        _err(await hb.post(f"/v1/rooms/{rid}/archive"), 404, "not_found")
        # a non-member cannot invite (not even themselves)
        _err(await hb.post(f"/v1/rooms/{rid}/members", json={"user": _uid(bob)}), 404,
             "not_found")
        # the private room is not in the public directory nor in bob's list
        r = await hb.get("/v1/rooms", params={"public": 1})
        assert r.status_code == 200 and rid not in [x["id"] for x in r.json()["rooms"]]

        r = await ha.post(f"/v1/rooms/{rid}/members", json={"user": _uid(bob)})
        assert r.status_code == 200, r.text
        assert r.json()["id"] == rid
        joined = await b.request("join", room=rid)
        assert joined["room"] == rid and joined["last_seq"] == 0
        r = await hb.get("/v1/rooms")
        assert rid in [x["id"] for x in r.json()["rooms"]]
        # members may invite in private rooms; inviting twice is harmless
        for _ in range(2):
            r = await hb.post(f"/v1/rooms/{rid}/members", json={"user": _uid(carol)})
            assert r.status_code == 200, r.text
        _err(await hb.post(f"/v1/rooms/{rid}/members", json={"user": "u_doesnotexist"}),
             404, "not_found")
        r = await hb.get(f"/v1/rooms/{rid}")
        assert r.status_code == 200, r.text
        members = {m["id"]: m for m in r.json()["members"]}
        assert set(members) == {_uid(alice), _uid(bob), _uid(carol)}
        # field presence is test_room_object_has_every_field's business
        assert members[_uid(alice)]["role"] == "owner"
        assert members[_uid(bob)].get("role", "member") == "member"
        assert members[_uid(bob)]["name"] == bob["user"]["name"]

        # only the owner removes others
        _err(await hb.delete(f"/v1/rooms/{rid}/members/{_uid(carol)}"), 403, "forbidden")
        r = await ha.delete(f"/v1/rooms/{rid}/members/{_uid(carol)}")
        assert r.status_code == 204, r.text
        _err(await ha.delete(f"/v1/rooms/{rid}/members/{_uid(carol)}"), 404, "not_found")
        c = await Session.open(stack.ws_url(1), carol["access_token"])
        assert await refused(c, "join", room=rid) == "not_found"
        _err(await hc.get(f"/v1/rooms/{rid}/messages"), 404, "not_found")
        # a ban is lifted only by the owner's invite
        _err(await hb.post(f"/v1/rooms/{rid}/members", json={"user": _uid(carol)}), 403,
             "forbidden")
        assert await refused(c, "join", room=rid) == "not_found"
        r = await ha.post(f"/v1/rooms/{rid}/members", json={"user": _uid(carol)})
        assert r.status_code == 200, r.text
        await c.request("join", room=rid)

        # bob leaves by REST: his socket is taken out of the room, a private room needs
        # a new invite
        r = await hb.delete(f"/v1/rooms/{rid}/members/{_uid(bob)}")
        assert r.status_code == 204, r.text
        sys_ev = await b.next_event("system", timeout=2)
        assert sys_ev["room"] == rid and sys_ev["text"] and sys_ev["ts"]
        assert await refused(b, "send", room=rid, text="still here?") == "forbidden"
        assert await refused(b, "join", room=rid) == "not_found"
        r = await hb.get("/v1/rooms")
        assert rid not in [x["id"] for x in r.json()["rooms"]]
        await b.close()
        await c.close()


async def test_password_room(stack: Stack) -> None:
    alice, bob = await _user(stack), await _user(stack, 2)
    rid = unique("pw")
    secret = "open sesame 42"
    async with rest(stack.gateway(1).url, alice["access_token"]) as ha, \
            rest(stack.gateway(2).url, bob["access_token"]) as hb:
        room = await _create(ha, id=rid, name="Club", visibility="public", password=secret)
        assert room["password"] is True
        r = await hb.get("/v1/rooms", params={"public": 1})
        assert r.status_code == 200, r.text
        listed = {x["id"]: x for x in r.json()["rooms"]}
        assert listed[rid]["password"] is True and listed[rid]["member_count"] == 1
        assert secret not in r.text and "argon2" not in r.text

        b = await Session.open(stack.ws_url(2), bob["access_token"])
        assert await refused(b, "join", room=rid) == "forbidden"
        assert await refused(b, "join", room=rid, password="open sesame 43") == "forbidden"
        assert await refused(b, "join", room=rid, password="") == "forbidden"  # a wrong one
        assert await refused(b, "join", room=rid, password=42) == "bad_request"
        assert await refused(b, "send", room=rid, text="hi") == "forbidden"
        joined = await b.request("join", room=rid, password=secret)
        assert joined["room"] == rid
        await b.request("send", room=rid, text="I know the password")
        await b.close()
        # a member comes back without the password, on the other gateway
        b2 = await Session.open(stack.ws_url(1), bob["access_token"])
        await b2.request("join", room=rid)
        # the owner does not need it either
        a = await Session.open(stack.ws_url(2), alice["access_token"])
        await a.request("join", room=rid)
        r = await hb.get(f"/v1/rooms/{rid}")
        assert r.status_code == 200 and secret not in r.text
        assert r.json()["member_count"] == 2
        await b2.close()
        await a.close()


async def test_join_creates_public_room_and_room_listing(stack: Stack) -> None:
    alice, bob = await _user(stack), await _user(stack, 2)
    rid = unique("auto")
    a = await Session.open(stack.ws_url(1), alice["access_token"])
    await a.request("join", room=rid)
    sent = await a.request("send", room=rid, text="first words")
    async with rest(stack.gateway(2).url, alice["access_token"]) as ha, \
            rest(stack.gateway(1).url, bob["access_token"]) as hb:
        r = await ha.get(f"/v1/rooms/{rid}")
        assert r.status_code == 200, r.text
        room = r.json()
        assert room["visibility"] == "public" and room["owner"] == _uid(alice)
        assert room["members"][0]["id"] == _uid(alice)

        async def online() -> bool:
            r = await ha.get(f"/v1/rooms/{rid}")
            return bool(r.json()["members"][0]["online"])
        await eventually(online, 3.0, "a connected member reported online")

        # anyone may look at a public room
        r = await hb.get(f"/v1/rooms/{rid}")
        assert r.status_code == 200 and r.json()["id"] == rid
        r = await hb.get(f"/v1/rooms/{rid}/messages")
        assert r.status_code == 200 and r.json()["messages"][0]["msg_id"] == sent["msg_id"]
        r = await hb.get("/v1/rooms", params={"public": 1})
        assert rid in [x["id"] for x in r.json()["rooms"]]
        r = await hb.get("/v1/rooms")
        assert rid not in [x["id"] for x in r.json()["rooms"]]

        r = await ha.get("/v1/rooms")
        assert r.status_code == 200, r.text
        mine = {x["id"]: x for x in r.json()["rooms"]}
        assert mine[rid]["last_seq"] == sent["seq"] and mine[rid]["unread"] == 0
        last = mine[rid]["last_message"]
        assert last["msg_id"] == sent["msg_id"] and last["text"] == "first words"

        # an unknown room: 404 on GET, empty history
        ghost = unique("ghost")
        _err(await ha.get(f"/v1/rooms/{ghost}"), 404, "not_found")
        r = await ha.get(f"/v1/rooms/{ghost}/messages")
        assert r.status_code == 200 and r.json()["messages"] == [], r.text
        # nobody can create a dm- room by joining or POSTing it
        assert await refused(a, "join", room="dm-" + "0" * 32) == "not_found"
        _err(await ha.post("/v1/rooms", json={"id": "dm-" + unique("x"), "name": "fake dm",
                                               "visibility": "private"}), 400, "bad_request")
        # a room without an id gets a generated one
        made = await _create(ha, name="No id given", visibility="public")
        assert made["id"] and made["owner"] == _uid(alice)
    await a.close()


async def test_concurrent_first_joins_make_one_room(stack: Stack) -> None:
    users = [await _user(stack, 1 + i % 2) for i in range(6)]
    rid = unique("race")
    sessions = [await Session.open(stack.ws_url(1 + i % 2), u["access_token"])
                for i, u in enumerate(users)]
    acks = await asyncio.gather(*(s.request("join", room=rid) for s in sessions))
    assert all(a["room"] == rid and a["last_seq"] == 0 for a in acks)
    async with rest(stack.gateway(1).url, users[0]["access_token"]) as http:
        r = await http.get(f"/v1/rooms/{rid}")
        assert r.status_code == 200, r.text
        room = r.json()
        assert room["owner"] in {_uid(u) for u in users}
        assert {m["id"] for m in room["members"]} == {_uid(u) for u in users}
        assert [m["id"] for m in room["members"] if m.get("role") == "owner"] == [room["owner"]]
    for s in sessions:
        await s.close()


async def test_send_edit_read_without_join_forbidden(stack: Stack) -> None:
    alice, bob = await _user(stack), await _user(stack, 2)
    rid = unique("nojoin")
    a = await Session.open(stack.ws_url(1), alice["access_token"])
    await a.request("join", room=rid)
    sent = await a.request("send", room=rid, text="members only talk")
    b = await Session.open(stack.ws_url(2), bob["access_token"])
    assert await refused(b, "send", room=rid, text="hello?") == "forbidden"
    assert await refused(b, "edit", room=rid, msg_id=sent["msg_id"], text="x") == "forbidden"
    assert await refused(b, "delete", room=rid, msg_id=sent["msg_id"]) == "forbidden"
    assert await refused(b, "read", room=rid, seq=sent["seq"]) == "forbidden"
    # joined elsewhere is not joined here
    await b.request("join", room=unique("other"))
    assert await refused(b, "send", room=rid, text="hello?") == "forbidden"
    # after leave, too
    await b.request("join", room=rid)
    await b.request("leave", room=rid)
    assert await refused(b, "send", room=rid, text="gone") == "forbidden"
    await a.close()
    await b.close()


async def test_removal_takes_effect_on_other_gateway_within_a_second(stack: Stack) -> None:
    alice, bob, carol = await _user(stack), await _user(stack, 2), await _user(stack, 2)
    rid = unique("kick")
    async with rest(stack.gateway(1).url, alice["access_token"]) as ha:
        await _create(ha, id=rid, name="Kick test", visibility="public")
        a = await Session.open(stack.ws_url(1), alice["access_token"])
        b = await Session.open(stack.ws_url(2), bob["access_token"])
        b_tab = await Session.open(stack.ws_url(1), bob["access_token"])  # bob's other tab
        c = await Session.open(stack.ws_url(2), carol["access_token"])
        for s in (a, b, b_tab, c):
            await s.request("join", room=rid)
        here = await b.request("send", room=rid, text="I am here")
        for s in (a, b, b_tab, c):
            assert (await s.next_event("message"))["msg_id"] == here["msg_id"]

        t0 = time.monotonic()
        r = await ha.delete(f"/v1/rooms/{rid}/members/{_uid(bob)}")
        assert r.status_code == 204, r.text
        for s in (b, b_tab):
            sys_ev = await s.next_event("system", timeout=scaled(1.0))
            assert sys_ev["room"] == rid
        # a send within the second after the removal is refused
        assert await refused(b, "send", room=rid, text="am I still here?") == "forbidden"
        # the refusal itself, not a later retry
        assert time.monotonic() - t0 < scaled(1.0 + 0.5)
        later = await a.request("send", room=rid, text="bob is gone")
        got = await c.next_event("message")
        assert got["msg_id"] == later["msg_id"]
        for s in (b, b_tab):
            leaked = [e for e in await collect(s) if e["type"] == "message"]
            assert leaked == [], "a removed member still receives the room's messages"
        assert await refused(b_tab, "send", room=rid, text="and here?") == "forbidden"
        # banned: no rejoin on any gateway, even for a public room
        assert await refused(b, "join", room=rid) == "forbidden"
        b2 = await Session.open(stack.ws_url(1), bob["access_token"])
        assert await refused(b2, "join", room=rid) == "forbidden"
        # other members are unaffected
        await c.request("send", room=rid, text="still fine")
        for s in (a, b, b_tab, b2, c):
            await s.close()


async def test_leave_public_room_may_rejoin(stack: Stack) -> None:
    alice, bob = await _user(stack), await _user(stack, 2)
    rid = unique("publeave")
    async with rest(stack.gateway(2).url, bob["access_token"]) as hb:
        a = await Session.open(stack.ws_url(1), alice["access_token"])
        await a.request("join", room=rid)
        b = await Session.open(stack.ws_url(2), bob["access_token"])
        await b.request("join", room=rid)
        r = await hb.delete(f"/v1/rooms/{rid}/members/{_uid(bob)}")
        assert r.status_code == 204, r.text
        await b.next_event("system", timeout=2)
        assert await refused(b, "send", room=rid, text="x") == "forbidden"
        await b.request("join", room=rid)
        await b.request("send", room=rid, text="back again")
        # leaving twice: bob is still a member now, so another leave works, then 404
        assert (await hb.delete(f"/v1/rooms/{rid}/members/{_uid(bob)}")).status_code == 204
        _err(await hb.delete(f"/v1/rooms/{rid}/members/{_uid(bob)}"), 404, "not_found")
        await a.close()
        await b.close()


async def test_a_join_refused_now_takes_the_socket_out_of_the_room(stack: Stack) -> None:
    """A socket whose gateway missed the removal (here: the ban written straight
    to the database, no notice) is taken out when its next join is refused."""
    owner, bob = await _user(stack), await _user(stack, 2)
    rid = unique("missed")
    a = await Session.open(stack.ws_url(1), owner["access_token"])
    b = await Session.open(stack.ws_url(2), bob["access_token"])
    await a.request("join", room=rid)
    await b.request("join", room=rid)
    db = await asyncpg.connect(stack.db_url)
    try:
        await db.execute("DELETE FROM history.members WHERE room = $1 AND user_id = $2",
                         rid, _uid(bob))
        await db.execute("INSERT INTO history.removed (room, user_id) VALUES ($1, $2)",
                         rid, _uid(bob))
    finally:
        await db.close()
    await b.request("send", room=rid, text="not yet noticed")  # the gateway cannot know
    assert await refused(b, "join", room=rid) == "forbidden"
    assert await refused(b, "send", room=rid, text="and now?") == "forbidden"
    await a.request("send", room=rid, text="bob no longer gets this")
    assert [m["text"] for m in await collect(b) if m["type"] == "message"] \
        == ["not yet noticed"]
    await a.close()
    await b.close()


async def test_archive_read_only_on_both_gateways(stack: Stack) -> None:
    alice, bob, dave = await _user(stack), await _user(stack, 2), await _user(stack, 2)
    rid = unique("arch")
    async with rest(stack.gateway(1).url, alice["access_token"]) as ha, \
            rest(stack.gateway(2).url, bob["access_token"]) as hb:
        await _create(ha, id=rid, name="Soon archived", visibility="public")
        a = await Session.open(stack.ws_url(1), alice["access_token"])
        b = await Session.open(stack.ws_url(2), bob["access_token"])
        await a.request("join", room=rid)
        await b.request("join", room=rid)
        mine = await b.request("send", room=rid, text="bob's words")
        theirs = await a.request("send", room=rid, text="alice's words")
        for s in (a, b):
            assert [m["msg_id"] for m in await s.messages(2)] == [mine["msg_id"],
                                                                   theirs["msg_id"]]

        _err(await hb.post(f"/v1/rooms/{rid}/archive"), 403, "forbidden")
        r = await ha.post(f"/v1/rooms/{rid}/archive")
        assert r.status_code == 200, r.text
        assert r.json()["archived"] is True and r.json()["id"] == rid
        t0 = time.monotonic()
        for s in (a, b):
            ev = await s.next_event("system", timeout=scaled(1.0))
            assert ev["room"] == rid
        assert time.monotonic() - t0 < scaled(1.0)  # README "Rooms": well within a second
        assert await refused(a, "send", room=rid, text="archived?") == "forbidden"
        assert await refused(b, "send", room=rid, text="archived?") == "forbidden"
        assert await refused(b, "edit", room=rid, msg_id=mine["msg_id"],
                             text="changed") == "forbidden"
        assert await refused(a, "edit", room=rid, msg_id=theirs["msg_id"],
                             text="changed") == "forbidden"
        # deleting one's own message stays possible (privacy; README room model)
        gone = await b.request("delete", room=rid, msg_id=mine["msg_id"])
        assert gone["seq"] > theirs["seq"]

        # history stays readable (WS and REST), joining is refused to newcomers
        hist = await a.request("history", room=rid)
        assert theirs["msg_id"] in [m["msg_id"] for m in hist["messages"]]
        r = await hb.get(f"/v1/rooms/{rid}/messages")
        assert r.status_code == 200, r.text
        assert theirs["msg_id"] in [m["msg_id"] for m in r.json()["messages"]]
        d = await Session.open(stack.ws_url(2), dave["access_token"])
        assert await refused(d, "join", room=rid) == "forbidden"
        _err(await ha.post(f"/v1/rooms/{rid}/members", json={"user": _uid(dave)}), 403,
             "forbidden")
        # idempotent for the owner; gone from the public directory; flagged everywhere
        r = await ha.post(f"/v1/rooms/{rid}/archive")
        assert r.status_code == 200 and r.json()["archived"] is True
        r = await hb.get("/v1/rooms", params={"public": 1})
        assert rid not in [x["id"] for x in r.json()["rooms"]]
        r = await hb.get(f"/v1/rooms/{rid}")
        assert r.json()["archived"] is True
        # a fresh connection of a member cannot join (README "Rooms": join, send
        # and edit → forbidden in an archived room) nor, unjoined, send
        b2 = await Session.open(stack.ws_url(1), bob["access_token"])
        assert await refused(b2, "join", room=rid) == "forbidden"
        assert await refused(b2, "send", room=rid, text="x") == "forbidden"
        # ... but still reads the history
        hist = await b2.request("history", room=rid)
        assert theirs["msg_id"] in [m["msg_id"] for m in hist["messages"]]
        _err(await ha.post(f"/v1/rooms/{unique('nope')}/archive"), 404, "not_found")
        for s in (a, b, b2, d):
            await s.close()


async def test_dm_one_room_per_pair(stack: Stack) -> None:
    alice, bob, carol = await _user(stack), await _user(stack, 2), await _user(stack)
    async with rest(stack.gateway(1).url, alice["access_token"]) as ha, \
            rest(stack.gateway(2).url, bob["access_token"]) as hb, \
            rest(stack.gateway(2).url, carol["access_token"]) as hc:
        r = await ha.post("/v1/dm", json={"user": _uid(bob)})
        assert r.status_code == 201, r.text
        dm = r.json()
        assert dm["id"].startswith("dm-") and dm["dm"] is True
        assert dm["visibility"] == "private"
        r = await hb.post("/v1/dm", json={"user": _uid(alice)})
        assert r.status_code == 200, r.text
        assert r.json()["id"] == dm["id"]
        r = await ha.post("/v1/dm", json={"user": bob["user"]["name"]})  # by username
        assert r.status_code == 200 and r.json()["id"] == dm["id"], r.text
        r = await hb.get(f"/v1/rooms/{dm['id']}")
        assert r.status_code == 200
        assert {m["id"] for m in r.json()["members"]} == {_uid(alice), _uid(bob)}
        r = await hb.get("/v1/rooms")
        assert dm["id"] in [x["id"] for x in r.json()["rooms"]]
        r = await hb.get("/v1/rooms", params={"public": 1})
        assert dm["id"] not in [x["id"] for x in r.json()["rooms"]]

        a = await Session.open(stack.ws_url(1), alice["access_token"])
        b = await Session.open(stack.ws_url(2), bob["access_token"])
        await a.request("join", room=dm["id"])
        await b.request("join", room=dm["id"])
        sent = await a.request("send", room=dm["id"], text="just us")
        assert (await b.next_event("message"))["msg_id"] == sent["msg_id"]

        # a third user: no join, no read, no invite into a DM
        c = await Session.open(stack.ws_url(2), carol["access_token"])
        # (other people's DM: not there for carol, as for an unknown id)
        assert await refused(c, "join", room=dm["id"]) == "not_found"
        _err(await hc.get(f"/v1/rooms/{dm['id']}"), 404, "not_found")
        _err(await hc.get(f"/v1/rooms/{dm['id']}/messages"), 404, "not_found")
        _err(await ha.post(f"/v1/rooms/{dm['id']}/members", json={"user": _uid(carol)}),
             403, "forbidden")

        _err(await ha.post("/v1/dm", json={"user": "u_nobody_at_all"}), 404, "not_found")
        _err(await ha.post("/v1/dm", json={"user": "nobody_" + unique("x")}), 404,
             "not_found")
        _err(await ha.post("/v1/dm", json={"user": _uid(alice)}), 400, "bad_request")
        _err(await ha.post("/v1/dm", json={}), 400, "bad_request")
        _err(await ha.post("/v1/dm", json={"user": 7}), 400, "bad_request")
        _err(await ha.post("/v1/dm", content=b"{not json"), 400, "bad_request")

        # blocks: carol opens a DM with bob, bob blocks carol → carol can neither open
        # it again nor join it; unblocking restores it
        r = await hc.post("/v1/dm", json={"user": _uid(bob)})
        assert r.status_code == 201, r.text
        cb = r.json()["id"]
        r = await hb.put(f"/v1/blocks/{_uid(carol)}")
        assert r.status_code == 200 and r.json()["blocked"] == [_uid(carol)], r.text
        _err(await hc.post("/v1/dm", json={"user": _uid(bob)}), 403, "forbidden")
        assert await refused(c, "join", room=cb) == "forbidden"
        # the blocker may still reach the DM
        await b.request("join", room=cb)
        r = await hb.delete(f"/v1/blocks/{_uid(carol)}")
        assert r.status_code == 200 and r.json()["blocked"] == [], r.text
        r = await hc.post("/v1/dm", json={"user": _uid(bob)})
        assert r.status_code == 200 and r.json()["id"] == cb, r.text
        await c.request("join", room=cb)

        # leaving a DM: no way back by join (no invites in DMs) but POST /v1/dm re-adds
        r = await ha.delete(f"/v1/rooms/{dm['id']}/members/{_uid(alice)}")
        assert r.status_code == 204, r.text
        await a.next_event("system", timeout=2)
        assert await refused(a, "join", room=dm["id"]) == "forbidden"
        r = await ha.post("/v1/dm", json={"user": _uid(bob)})
        assert r.status_code == 200 and r.json()["id"] == dm["id"], r.text
        await a.request("join", room=dm["id"])
        for s in (a, b, c):
            await s.close()


async def test_dm_concurrent_requests_make_one_room(stack: Stack) -> None:
    dave, erin = await _user(stack), await _user(stack, 2)
    async with rest(stack.gateway(1).url, dave["access_token"]) as hd, \
            rest(stack.gateway(2).url, erin["access_token"]) as he:
        calls = [hd.post("/v1/dm", json={"user": _uid(erin)}) if i % 2 else
                 he.post("/v1/dm", json={"user": _uid(dave)}) for i in range(10)]
        replies = await asyncio.gather(*calls)
        assert all(r.status_code in (200, 201) for r in replies), [r.text for r in replies]
        assert len({r.json()["id"] for r in replies}) == 1
        assert sorted(r.status_code for r in replies) == [200] * 9 + [201]
        r = await hd.get(f"/v1/rooms/{replies[0].json()['id']}")
        assert r.json()["member_count"] == 2 and len(r.json()["members"]) == 2


async def test_rest_bad_input_on_room_routes(stack: Stack) -> None:
    alice = await _user(stack)
    rid = unique("bad")
    base = stack.gateway(1).url
    async with rest(base, alice["access_token"]) as ha, rest(base) as anon, \
            rest(base, "not-a-token") as forged:
        await _create(ha, id=rid, name="Bad input", visibility="public")
        for body in ({"name": "x", "visibility": "secret"}, {"visibility": "public"},
                     {"name": "", "visibility": "public"}, {"name": "   ", "visibility": "public"},
                     {"name": "n" * 101, "visibility": "public"},
                     {"name": 5, "visibility": "public"},
                     {"id": "bad.id", "name": "x", "visibility": "public"},
                     {"id": "x" * 65, "name": "x", "visibility": "public"},
                     {"id": 12, "name": "x", "visibility": "public"},
                     {"name": "x", "visibility": "public", "members": "u_1"},
                     {"name": "x", "visibility": "public", "password": ""},
                     {"name": "x", "visibility": "public", "password": 1234}, [], "room"):
            _err(await ha.post("/v1/rooms", json=body), 400, "bad_request")
        _err(await ha.post("/v1/rooms", content=b'{"name": "x",'), 400, "bad_request")
        _err(await ha.post("/v1/rooms", json={"name": "x", "visibility": "private",
                                               "members": ["u_nobody"]}), 404, "not_found")

        for path in ("/v1/rooms/bad.id", "/v1/rooms/" + "x" * 65, "/v1/rooms/bad.id/messages",
                     "/v1/rooms/a%20b"):
            _err(await ha.get(path), 400, "bad_request")
        for path in ("/v1/rooms/bad.id/members", "/v1/rooms/bad.id/archive",
                     "/v1/rooms/bad.id/read"):
            _err(await ha.post(path, json={"user": "u_x", "seq": 1}), 400, "bad_request")
        _err(await ha.delete("/v1/rooms/bad.id/members/u_x"), 400, "bad_request")
        for params in ({"public": 1, "limit": 0}, {"public": 1, "limit": 201},
                       {"public": 1, "limit": "ten"}, {"public": "maybe"}):
            _err(await ha.get("/v1/rooms", params=params), 400, "bad_request")
        for params in ({"limit": 0}, {"limit": 101}, {"before": "x"}, {"after": -1},
                       {"limit": 1.5}):
            _err(await ha.get(f"/v1/rooms/{rid}/messages", params=params), 400, "bad_request")
        for body in ({}, {"user": 5}, {"user": None}, ["u_x"]):
            _err(await ha.post(f"/v1/rooms/{rid}/members", json=body), 400, "bad_request")
        _err(await ha.post(f"/v1/rooms/{rid}/members", content=b"{"), 400, "bad_request")
        _err(await ha.post(f"/v1/rooms/{unique('none')}/members", json={"user": "u_x"}), 404,
             "not_found")
        _err(await ha.put(f"/v1/blocks/{_uid(alice)}"), 400, "bad_request")
        _err(await ha.put("/v1/blocks/u_nobody_here"), 404, "not_found")

        routes = [("GET", "/v1/rooms"), ("GET", "/v1/rooms?public=1"), ("POST", "/v1/rooms"),
                  ("GET", f"/v1/rooms/{rid}"), ("POST", f"/v1/rooms/{rid}/members"),
                  ("DELETE", f"/v1/rooms/{rid}/members/{_uid(alice)}"),
                  ("POST", f"/v1/rooms/{rid}/archive"), ("GET", f"/v1/rooms/{rid}/messages"),
                  ("POST", f"/v1/rooms/{rid}/read"), ("POST", "/v1/dm"),
                  ("GET", "/v1/search?q=hello"), ("PUT", f"/v1/blocks/{_uid(alice)}"),
                  ("DELETE", f"/v1/blocks/{_uid(alice)}")]
        for method, path in routes:
            for client in (anon, forged):
                r = await client.request(method, path, json={"user": "u_x", "seq": 1,
                                                              "name": "x"})
                _err(r, 401, "unauthorized")
        # nothing of the above changed the room
        r = await ha.get(f"/v1/rooms/{rid}")
        assert r.status_code == 200 and r.json().get("archived", False) is False
        assert [m["id"] for m in r.json()["members"]] == [_uid(alice)]


def test_no_errors_logged(stack: Stack) -> None:
    """Last in the module: none of the above (bad input included) made a service log
    an error or a traceback."""
    assert logged_errors(stack) == []


async def test_public_directory_is_cursor_paged(stack: Stack) -> None:
    alice = await _user(stack)
    made = [unique("dir") for _ in range(3)]
    async with rest(stack.gateway(1).url, alice["access_token"]) as ha, \
            rest(stack.gateway(2).url, alice["access_token"]) as ha2:
        for rid in made:
            await _create(ha, id=rid, name="Directory", visibility="public")
        # Newest first, two at a time, the cursor taken from either gateway.
        seen: list[str] = []
        cursor: str | None = None
        for page in range(50):
            params: dict[str, Any] = {"public": 1, "limit": 2}
            if cursor:
                params["cursor"] = cursor
            r = await (ha if page % 2 else ha2).get("/v1/rooms", params=params)
            assert r.status_code == 200, r.text
            body = r.json()
            assert len(body["rooms"]) <= 2
            seen += [x["id"] for x in body["rooms"]]
            cursor = body["next_cursor"]
            if set(made) <= set(seen) or cursor is None:
                break
        assert len(seen) == len(set(seen)), "a room on two pages"
        assert [x for x in seen if x in made] == made[::-1]
        _err(await ha.get("/v1/rooms", params={"public": 1, "cursor": "not-a-cursor"}), 400,
             "bad_request")
        _err(await ha.get("/v1/rooms", params={"cursor": cursor or "x"}), 400, "bad_request")
