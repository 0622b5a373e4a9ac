"""Smoke check of a running stack through the load balancer (issues 2 and 3's "done when").

Registers two users, logs in, opens one socket each — reconnecting until the
two land on different gateways — joins a room, sees each other present, and
chats both ways. Then the room model over REST and WebSocket, still through
the load balancer: a private room with a password, an invite, an edit, a
read pointer and unread counts, a reaction, a thread reply with a mention,
search, a DM, an archive.

    .venv/bin/python tests/smoke.py [http://127.0.0.1:8080]
"""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect


async def login(http: httpx.AsyncClient, name: str) -> str:
    creds = {"username": name, "password": "smoke-test-pw"}
    (await http.post("/v1/auth/register", json=creds)).raise_for_status()
    r = await http.post("/v1/auth/login", json=creds)
    r.raise_for_status()
    return str(r.json()["access_token"])


async def open_ws(ws_url: str, token: str, avoid: str | None) -> tuple[ClientConnection, str]:
    for _ in range(20):
        ws = await connect(ws_url)
        await ws.send(json.dumps({"type": "auth", "token": token}))
        welcome = json.loads(await ws.recv())
        if welcome["node"] != avoid:
            return ws, welcome["node"]
        await ws.close()
    raise RuntimeError("the load balancer never sent us to another gateway")


async def until(ws: ClientConnection, kind: str) -> dict[str, object]:
    while True:
        frame = json.loads(await asyncio.wait_for(ws.recv(), 10))
        if frame["type"] == kind:
            return frame  # type: ignore[no-any-return]


async def main(base: str) -> None:
    ws_url = base.replace("http", "ws", 1) + "/ws"
    tag = uuid.uuid4().hex[:6]
    async with httpx.AsyncClient(base_url=base, timeout=10) as http:
        alice, bob = await login(http, f"alice_{tag}"), await login(http, f"bob_{tag}")
    a, node_a = await open_ws(ws_url, alice, None)
    b, node_b = await open_ws(ws_url, bob, node_a)
    print(f"alice on {node_a}, bob on {node_b}")
    room = f"smoke_{tag}"
    acks = []
    for ws in (a, b):
        await ws.send(json.dumps({"type": "join", "id": "j", "room": room}))
        acks.append(await until(ws, "ack"))
    print(f"bob's join ack lists {[m['name'] for m in acks[1]['members']]}")  # type: ignore[index]
    joined = await until(a, "presence")
    print(f"alice saw presence {joined['event']} of {joined['user']['name']}")  # type: ignore[index]
    await a.send(json.dumps({"type": "send", "id": "s", "room": room, "text": "hi bob"}))
    got = await until(b, "message")
    print(f"bob got {got['text']!r} seq={got['seq']} from {got['sender']}")
    await b.send(json.dumps({"type": "send", "id": "s", "room": room, "text": "hi alice"}))
    got = await until(a, "message")  # alice's own message first, then bob's
    if got["text"] == "hi bob":
        got = await until(a, "message")
    print(f"alice got {got['text']!r} seq={got['seq']} prev_seq={got['prev_seq']}")
    async with httpx.AsyncClient(base_url=base, timeout=10) as http:
        await rooms(http, a, b, alice, bob, tag)
    await a.close()
    await b.close()
    print("smoke ok")


async def rooms(http: httpx.AsyncClient, a: ClientConnection, b: ClientConnection,
                alice: str, bob: str, tag: str) -> None:
    def auth(token: str) -> dict[str, str]:
        return {"authorization": f"Bearer {token}"}

    async def call(method: str, path: str, token: str, want: int, **kw: Any) -> Any:
        r = await http.request(method, path, headers=auth(token), **kw)
        assert r.status_code == want, (method, path, r.status_code, r.text)
        return r.json() if r.content else None

    bob_id = (await call("GET", "/v1/me", bob, 200))["user"]["id"]
    room = f"secret_{tag}"
    made = await call("POST", "/v1/rooms", alice, 201, json={
        "id": room, "name": "Secret", "visibility": "private", "password": "open sesame"})
    assert made["password"] is True and made["owner"] != bob_id
    await b.send(json.dumps({"type": "join", "id": "p", "room": room}))
    refused = await until(b, "error")
    print(f"bob's join of the private room: {refused['code']}")
    # A private room the caller may not see answers not_found, existing or not.
    assert refused["code"] == "not_found"
    await call("POST", f"/v1/rooms/{room}/members", alice, 200, json={"user": bob_id})
    for ws in (a, b):
        await ws.send(json.dumps({"type": "join", "id": "p", "room": room}))
        await until(ws, "ack")
    await a.send(json.dumps({"type": "send", "id": "s", "room": room, "text": "tpyo here"}))
    sent = await until(a, "ack")
    await a.send(json.dumps({"type": "edit", "id": "e", "room": room,
                             "msg_id": sent["msg_id"], "text": f"typo fixed {tag}"}))
    edit = await until(a, "ack")
    while (ev := await until(b, "message"))["seq"] != edit["seq"]:
        pass
    print(f"bob got the edit: {ev['text']!r} edited={ev.get('edited')}")
    listed = await call("GET", "/v1/rooms", bob, 200)
    unread = {r["id"]: r["unread"] for r in listed["rooms"]}
    print(f"bob's unread in {room}: {unread.get(room)}")
    await b.send(json.dumps({"type": "read", "id": "r", "room": room, "seq": edit["seq"]}))
    await until(b, "ack")
    seen = await until(a, "read")
    print(f"alice saw bob read up to {seen['seq']}")
    await extras(a, b, room, sent["msg_id"], tag, call, alice)
    found = None
    for _ in range(30):  # search may lag writes by up to 2 s
        hits = await call("GET", "/v1/search", bob, 200, params={"q": f"fixed {tag}"})
        if hits["results"]:
            found = hits["results"][0]
            break
        await asyncio.sleep(0.2)
    assert found is not None and found["room"] == room, "search did not find the edit"
    print(f"search found {found['text']!r} in {found['room']}")
    dm = await call("POST", "/v1/dm", alice, 201, json={"user": bob_id})
    again = await call("POST", "/v1/dm", bob, 200, json={"user": f"alice_{tag}"})
    assert dm["id"] == again["id"]
    print(f"DM room {dm['id']} (same whoever asks)")
    await call("POST", f"/v1/rooms/{room}/archive", alice, 200)
    await until(b, "system")
    await b.send(json.dumps({"type": "send", "id": "x", "room": room, "text": "still here?"}))
    late = await until(b, "error")
    print(f"bob's send after the archive: {late['code']}")
    assert late["code"] == "forbidden"


async def extras(a: ClientConnection, b: ClientConnection, room: str, msg_id: str, tag: str,
                 call: Any, alice: str) -> None:
    """Issue 14: a reaction, a thread reply and a mention, across the two gateways."""
    await b.send(json.dumps({"type": "react", "id": "x", "room": room, "msg_id": msg_id,
                             "emoji": "👍", "on": True}, ensure_ascii=False))
    await until(b, "ack")
    reaction = await until(a, "reaction")
    print(f"alice saw {reaction['user']['name']} react {reaction['emoji']} "  # type: ignore[index]
          f"seq={reaction['seq']} prev_seq={reaction['prev_seq']}")
    await b.send(json.dumps({"type": "send", "id": "t", "room": room, "thread": msg_id,
                             "text": f"in the thread, @alice_{tag}"}))
    await until(b, "ack")
    reply = await until(a, "message")
    me = (await call("GET", "/v1/me", alice, 200))["user"]["id"]
    assert reply["thread"] == msg_id and reply["mentions"] == [me], reply
    print(f"alice got a thread reply mentioning her: {reply['text']!r}")
    thread = await call("GET", f"/v1/rooms/{room}/threads/{msg_id}", alice, 200)
    assert [m["msg_id"] for m in thread["messages"]] == [reply["msg_id"]], thread
    listed = {r["id"]: r for r in (await call("GET", "/v1/rooms", alice, 200))["rooms"]}
    print(f"alice's unread mentions in {room}: {listed[room]['mentions']}")
    assert listed[room]["mentions"] == 1
    page = await call("GET", f"/v1/rooms/{room}/messages", alice, 200)
    root = next(m for m in page["messages"] if m["msg_id"] == msg_id)
    print(f"history: reactions {root['reactions']}, thread_info {root['thread_info']}")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8080"))
