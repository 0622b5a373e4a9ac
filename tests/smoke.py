"""Smoke check of a running stack through the load balancer (issues 2 and 3's "done when"),
spoken through chat_client (clients/python) like any client of the chat.

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
import sys
import uuid
from typing import Any

from chat_client import ChatClient, ChatRequestError
from chat_contract.acks import JoinAck, SendAck, SeqAck
from chat_contract.events import Message, PresenceEvent, ReactionEvent, ReadEvent, System

PASSWORD = "smoke-test-pw"


async def login(base: str, name: str) -> ChatClient:
    client = ChatClient(base, request_timeout=10)
    await client.register(name, PASSWORD)
    await client.login(name, PASSWORD)
    return client


async def open_ws(base: str, name: str, avoid: str | None) -> tuple[ChatClient, str]:
    auth = ChatClient(base, request_timeout=10)
    tokens = await auth.login(name, PASSWORD)
    await auth.close()
    for _ in range(20):  # one token for every attempt: only the sockets take turns
        client = ChatClient(base, token=tokens.access_token,
                            refresh_token=tokens.refresh_token, request_timeout=10)
        welcome = await client.connect()
        if welcome.node != avoid:
            return client, welcome.node
        await client.close()
    raise RuntimeError("the load balancer never sent us to another gateway")


def token(client: ChatClient) -> str:
    assert client.tokens is not None
    return client.tokens.access_token


async def main(base: str) -> None:
    tag = uuid.uuid4().hex[:6]
    for name in (f"alice_{tag}", f"bob_{tag}"):
        await (await login(base, name)).close()
    a, node_a = await open_ws(base, f"alice_{tag}", None)
    b, node_b = await open_ws(base, f"bob_{tag}", node_a)
    print(f"alice on {node_a}, bob on {node_b}")
    room = f"smoke_{tag}"
    acks = [await c.request("join", room=room) for c in (a, b)]
    assert isinstance(acks[1], JoinAck)
    print(f"bob's join ack lists {[m.name for m in acks[1].members]}")
    joined = await a.next_event(PresenceEvent)
    assert isinstance(joined, PresenceEvent)
    print(f"alice saw presence {joined.event} of {joined.user.name}")
    await a.request("send", room=room, text="hi bob")
    got = await b.next_event(Message)
    assert isinstance(got, Message)
    print(f"bob got {got.text!r} seq={got.seq} from {got.sender}")
    await b.request("send", room=room, text="hi alice")
    got = await a.next_event(Message)  # alice's own message first, then bob's
    assert isinstance(got, Message)
    if got.text == "hi bob":
        got = await a.next_event(Message)
    assert isinstance(got, Message)
    print(f"alice got {got.text!r} seq={got.seq} prev_seq={got.prev_seq}")
    await rooms(a, b, tag)
    await a.close()
    await b.close()
    print("smoke ok")


async def rooms(a: ChatClient, b: ChatClient, tag: str) -> None:
    async def call(method: str, path: str, who: ChatClient, want: int, **kw: Any) -> Any:
        r = await who.http().request(method, path, headers={
            "authorization": f"Bearer {token(who)}"}, **kw)
        assert r.status_code == want, (method, path, r.status_code, r.text)
        return r.json() if r.content else None

    bob_id = (await call("GET", "/v1/me", b, 200))["user"]["id"]
    room = f"secret_{tag}"
    made = await call("POST", "/v1/rooms", a, 201, json={
        "id": room, "name": "Secret", "visibility": "private", "password": "open sesame"})
    assert made["password"] is True and made["owner"] != bob_id
    try:
        await b.request("join", room=room)
        raise AssertionError("bob joined the private room uninvited")
    except ChatRequestError as refused:
        print(f"bob's join of the private room: {refused.code}")
        # A private room the caller may not see answers not_found, existing or not.
        assert refused.code == "not_found"
    await call("POST", f"/v1/rooms/{room}/members", a, 200, json={"user": bob_id})
    for c in (a, b):
        await c.request("join", room=room)
    sent = await a.request("send", room=room, text="tpyo here")
    assert isinstance(sent, SendAck)
    edit = await a.request("edit", room=room, msg_id=sent.msg_id, text=f"typo fixed {tag}")
    assert isinstance(edit, SeqAck)
    while True:
        ev = await b.next_event(Message)
        assert isinstance(ev, Message)
        if ev.seq == edit.seq:
            break
    print(f"bob got the edit: {ev.text!r} edited={ev.edited}")
    listed = await call("GET", "/v1/rooms", b, 200)
    unread = {r["id"]: r["unread"] for r in listed["rooms"]}
    print(f"bob's unread in {room}: {unread.get(room)}")
    await b.request("read", room=room, seq=edit.seq)
    seen = await a.next_event(ReadEvent)
    assert isinstance(seen, ReadEvent)
    print(f"alice saw bob read up to {seen.seq}")
    await extras(a, b, room, sent.msg_id, tag, call)
    found = None
    for _ in range(30):  # search may lag writes by up to 2 s
        hits = await call("GET", "/v1/search", b, 200, params={"q": f"fixed {tag}"})
        if hits["results"]:
            found = hits["results"][0]
            break
        await asyncio.sleep(0.2)
    assert found is not None and found["room"] == room, "search did not find the edit"
    print(f"search found {found['text']!r} in {found['room']}")
    dm = await call("POST", "/v1/dm", a, 201, json={"user": bob_id})
    again = await call("POST", "/v1/dm", b, 200, json={"user": f"alice_{tag}"})
    assert dm["id"] == again["id"]
    print(f"DM room {dm['id']} (same whoever asks)")
    await call("POST", f"/v1/rooms/{room}/archive", a, 200)
    await b.next_event(System)
    try:
        await b.request("send", room=room, text="still here?")
        raise AssertionError("a send into an archived room was acked")
    except ChatRequestError as late:
        print(f"bob's send after the archive: {late.code}")
        assert late.code == "forbidden"


async def extras(a: ChatClient, b: ChatClient, room: str, msg_id: str, tag: str,
                 call: Any) -> None:
    """Issue 14: a reaction, a thread reply and a mention, across the two gateways."""
    await b.request("react", room=room, msg_id=msg_id, emoji="👍", on=True)
    reaction = await a.next_event(ReactionEvent)
    assert isinstance(reaction, ReactionEvent)
    print(f"alice saw {reaction.user.name} react {reaction.emoji} "
          f"seq={reaction.seq} prev_seq={reaction.prev_seq}")
    await b.request("send", room=room, thread=msg_id, text=f"in the thread, @alice_{tag}")
    reply = await a.next_event(Message)
    assert isinstance(reply, Message)
    me = (await call("GET", "/v1/me", a, 200))["user"]["id"]
    assert reply.thread == msg_id and reply.mentions == [me], reply
    print(f"alice got a thread reply mentioning her: {reply.text!r}")
    thread = await call("GET", f"/v1/rooms/{room}/threads/{msg_id}", a, 200)
    assert [m["msg_id"] for m in thread["messages"]] == [reply.msg_id], thread
    listed = {r["id"]: r for r in (await call("GET", "/v1/rooms", a, 200))["rooms"]}
    print(f"alice's unread mentions in {room}: {listed[room]['mentions']}")
    assert listed[room]["mentions"] == 1
    page = await call("GET", f"/v1/rooms/{room}/messages", a, 200)
    root = next(m for m in page["messages"] if m["msg_id"] == msg_id)
    print(f"history: reactions {root['reactions']}, thread_info {root['thread_info']}")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8080"))
