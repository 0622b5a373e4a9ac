"""Smoke check of a running stack through the load balancer (issue 2's "done when").

Registers two users, logs in, opens one socket each — reconnecting until the
two land on different gateways — joins a room, sees each other present, and
chats both ways.

    .venv/bin/python tests/smoke.py [http://127.0.0.1:8080]
"""

from __future__ import annotations

import asyncio
import json
import sys
import uuid

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
    await a.close()
    await b.close()
    print("smoke ok")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8080"))
