"""Abuse run: normal clients keep chatting while attackers flood a running stack.

Run against ``make up`` (or any stack behind a load balancer)::

    make up
    .venv/bin/python tests/load/abuse.py --url http://127.0.0.1:8080 --quiet 15 --attack 30
    make down

Normal clients: ``--users`` accounts in ``--rooms`` rooms, each sending one
message per second over its own socket; every message's send → ack latency
and send → delivery latency (at another member) are recorded, and every
acked message must reach every other member once. Two phases: ``--quiet``
seconds alone (the baseline), then ``--attack`` seconds while attackers run:

- (attackers run in a process of their own, so the normal clients' event loop
  measures the servers, not the load generator)
- registration flood: ``--registrars`` tasks registering new user names as
  fast as the server answers (each with a 64 MiB argon2 hash to pay);
- search flood: ``--searchers`` tasks of a few accounts, each running heavy
  searches (a negated common word) back to back;
- join spam: ``--spammers`` sockets joining fresh room ids (each would create
  a room) and leaving them, back to back.

Printed: the normal clients' latencies (p50/p99/max) and losses per phase,
and each attack's outcomes by status or error code. Nothing is asserted: it
is a measurement (tests/load/RESULTS.md "Abuse run"), not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import secrets
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

PASSWORD = "correct horse battery"


@dataclass
class Phase:
    name: str
    acks: list[float] = field(default_factory=list)
    deliveries: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    sent: int = 0
    expected: int = 0  # acked messages × other members


@dataclass
class Outcomes:
    counts: Counter[str] = field(default_factory=Counter)

    def add(self, key: str) -> None:
        self.counts[key] += 1


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _account(http: httpx.AsyncClient, name: str) -> dict[str, Any]:
    r = await http.post("/v1/auth/register", json={"username": name, "password": PASSWORD})
    if r.status_code not in (201, 409):
        raise RuntimeError(f"register {name}: {r.status_code} {r.text}")
    for _ in range(20):
        r = await http.post("/v1/auth/login", json={"username": name, "password": PASSWORD})
        if r.status_code == 200:
            body: dict[str, Any] = r.json()
            me = await http.get("/v1/me",
                                headers={"authorization": f"Bearer {body['access_token']}"})
            body["user"] = me.json()["user"]
            return body
        await asyncio.sleep(float(r.headers.get("retry-after", "1")))
    raise RuntimeError(f"login {name}: {r.status_code} {r.text}")


class Member:
    """One normal client: a socket in one room, sending once a second."""

    def __init__(self, ws: ClientConnection, room: str, user: str) -> None:
        self.ws = ws
        self.room = room
        self.user = user
        self.pending: dict[str, tuple[float, Phase]] = {}
        # msg_id → when another member's message reached this socket (the
        # sender's ack may come later than the delivery: matched at the end)
        self.received: dict[str, float] = {}

    async def read(self, sent_at: dict[str, tuple[float, Phase, str]]) -> None:
        try:
            async for raw in self.ws:
                frame = json.loads(raw)
                kind = frame.get("type")
                if kind in ("ack", "error") and frame.get("id") in self.pending:
                    started, phase = self.pending.pop(frame["id"])
                    if kind == "ack":
                        phase.acks.append(time.perf_counter() - started)
                        msg_id = frame.get("msg_id")
                        if msg_id:
                            sent_at[msg_id] = (started, phase, self.user)
                    else:
                        phase.errors[frame.get("code", "?")] += 1
                elif kind == "message" and frame.get("room") == self.room:
                    msg_id = frame.get("msg_id")
                    if msg_id and msg_id not in self.received:
                        self.received[msg_id] = time.perf_counter()
        except ConnectionClosed:
            pass

    async def send(self, phase: Phase, n: int) -> None:
        rid = f"s{n}"
        self.pending[rid] = (time.perf_counter(), phase)
        phase.sent += 1
        await self.ws.send(json.dumps({"type": "send", "id": rid, "room": self.room,
                                       "text": f"{self.user} {n}"}))


async def _normal_clients(url: str, ws_url: str, users: int, rooms: int,
                          phases: list[tuple[Phase, float]], tag: str,
                          started: dict[str, asyncio.Event]) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        accounts = [await _account(http, f"ab_{tag}_u{i}") for i in range(users)]
    members: list[Member] = []
    sent_at: dict[str, tuple[float, Phase, str]] = {}
    for i, account in enumerate(accounts):
        ws = await connect(f"{ws_url}?token={account['access_token']}", max_size=None)
        await ws.recv()  # welcome
        room = f"ab-{tag}-r{i % rooms}"
        await ws.send(json.dumps({"type": "join", "id": "j", "room": room}))
        while json.loads(await ws.recv()).get("type") not in ("ack", "error"):
            pass
        members.append(Member(ws, room, account["user"]["id"]))
    readers = [asyncio.create_task(m.read(sent_at)) for m in members]
    n = 0
    for phase, seconds in phases:
        started[phase.name].set()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            tick = time.monotonic()
            n += 1
            for m in members:
                await m.send(phase, n)
            await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - tick)))
        await asyncio.sleep(2.0)  # late acks and deliveries of this phase
    for m in members:
        await m.ws.close()
    await asyncio.gather(*readers, return_exceptions=True)
    room_of = {m.user: m.room for m in members}
    for msg_id, (sent, of_phase, sender) in sent_at.items():
        for m in members:
            if m.room == room_of[sender] and m.user != sender:
                of_phase.expected += 1
                if msg_id in m.received:
                    of_phase.deliveries.append(m.received[msg_id] - sent)


async def _register_flood(url: str, stop: asyncio.Event, out: Outcomes) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        while not stop.is_set():
            name = "fl_" + secrets.token_hex(6)
            try:
                r = await http.post("/v1/auth/register",
                                    json={"username": name, "password": PASSWORD})
                out.add(str(r.status_code))
            except httpx.HTTPError as exc:
                out.add(type(exc).__name__)


async def _search_flood(url: str, token: str, stop: asyncio.Event, out: Outcomes) -> None:
    headers = {"authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=url, timeout=15, headers=headers) as http:
        while not stop.is_set():
            try:
                r = await http.get("/v1/search", params={"q": "-zzzz ab", "limit": 50})
                out.add(str(r.status_code))
                if r.status_code == 429:
                    await asyncio.sleep(min(5.0, float(r.headers.get("retry-after", "1"))))
            except httpx.HTTPError as exc:
                out.add(type(exc).__name__)


async def _join_spam(ws_url: str, token: str, stop: asyncio.Event, out: Outcomes) -> None:
    while not stop.is_set():
        try:
            async with connect(f"{ws_url}?token={token}", max_size=None) as ws:
                await ws.recv()
                n = 0
                while not stop.is_set():
                    n += 1
                    room = "spam-" + secrets.token_hex(5)
                    await ws.send(json.dumps({"type": "join", "id": f"j{n}", "room": room}))
                    while True:
                        frame = json.loads(await ws.recv())
                        if frame.get("id") == f"j{n}":
                            break
                    out.add(frame.get("code", frame["type"]))
                    if frame["type"] == "ack":
                        await ws.send(json.dumps({"type": "leave", "id": f"l{n}", "room": room}))
        except ConnectionClosed as exc:
            out.add(f"closed {exc.rcvd.code if exc.rcvd else 1006}")
            await asyncio.sleep(0.5)
        except OSError as exc:
            out.add(type(exc).__name__)
            await asyncio.sleep(0.5)


async def _attack(url: str, ws_url: str, tokens: tuple[list[str], list[str]],
                  registrars: int, searchers: int, spammers: int, seconds: float,
                  ) -> dict[str, Outcomes]:
    attacks = {"register": Outcomes(), "search": Outcomes(), "join spam": Outcomes()}
    stop = asyncio.Event()
    search_tokens, spam_tokens = tokens
    tasks = [asyncio.create_task(_register_flood(url, stop, attacks["register"]))
             for _ in range(registrars)]
    tasks += [asyncio.create_task(_search_flood(
        url, search_tokens[i % len(search_tokens)], stop, attacks["search"]))
        for i in range(searchers)]
    tasks += [asyncio.create_task(_join_spam(
        ws_url, spam_tokens[i % len(spam_tokens)], stop, attacks["join spam"]))
        for i in range(spammers)]
    await asyncio.sleep(seconds)
    stop.set()
    await asyncio.wait(tasks, timeout=20)
    return attacks


def _attack_process(url: str, ws_url: str, tokens: tuple[list[str], list[str]],
                    registrars: int, searchers: int, spammers: int, seconds: float,
                    results: multiprocessing.Queue[dict[str, dict[str, int]]]) -> None:
    attacks = asyncio.run(_attack(url, ws_url, tokens, registrars, searchers, spammers,
                                  seconds))
    results.put({name: dict(outcome.counts) for name, outcome in attacks.items()})


def _report(phases: list[Phase], attacks: dict[str, Outcomes], seconds: float) -> None:
    print("normal clients (1 msg/s each):")
    print(f"  {'phase':<8} {'sent':>6} {'ack p50':>9} {'ack p99':>9} {'ack max':>9} "
          f"{'>100ms':>7} {'deliv p50':>10} {'deliv p99':>10} {'delivered':>12} errors")
    for p in phases:
        slow = sum(1 for a in p.acks if a > 0.1)
        print(f"  {p.name:<8} {p.sent:>6} {_pct(p.acks, .5) * 1e3:>7.1f}ms "
              f"{_pct(p.acks, .99) * 1e3:>7.1f}ms {max(p.acks or [0]) * 1e3:>7.1f}ms {slow:>7} "
              f"{_pct(p.deliveries, .5) * 1e3:>8.1f}ms {_pct(p.deliveries, .99) * 1e3:>8.1f}ms "
              f"{len(p.deliveries):>5}/{p.expected:<6} {dict(p.errors) or '-'}")
    print(f"attacks ({seconds:.0f} s):")
    for name, outcome in attacks.items():
        total = sum(outcome.counts.values())
        print(f"  {name:<12} {total:>6} requests  {dict(outcome.counts.most_common())}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8080")
    parser.add_argument("--users", type=int, default=10)
    parser.add_argument("--rooms", type=int, default=5)
    parser.add_argument("--quiet", type=float, default=15.0)
    parser.add_argument("--attack", type=float, default=30.0)
    parser.add_argument("--registrars", type=int, default=20)
    parser.add_argument("--searchers", type=int, default=30)
    parser.add_argument("--spammers", type=int, default=10)
    args = parser.parse_args()
    ws_url = args.url.replace("http", "ws", 1) + "/ws"
    tag = secrets.token_hex(3)
    async with httpx.AsyncClient(base_url=args.url, timeout=30) as http:
        searchers = [await _account(http, f"ab_{tag}_s{i}") for i in range(3)]
        spammers = [await _account(http, f"ab_{tag}_j{i}") for i in range(3)]
    quiet, attack = Phase("quiet"), Phase("attack")
    started = {quiet.name: asyncio.Event(), attack.name: asyncio.Event()}
    # The attackers run in a process of their own, so their thousands of
    # requests do not delay the normal clients' own event loop (which would
    # show up as server latency).
    tokens = ([a["access_token"] for a in searchers], [a["access_token"] for a in spammers])
    results: multiprocessing.Queue[dict[str, dict[str, int]]] = multiprocessing.Queue()

    async def attackers() -> None:
        await started[attack.name].wait()
        proc = multiprocessing.Process(target=_attack_process, args=(
            args.url, ws_url, tokens, args.registrars, args.searchers, args.spammers,
            args.attack, results))
        proc.start()
        await asyncio.to_thread(proc.join)

    await asyncio.gather(
        _normal_clients(args.url, ws_url, args.users, args.rooms,
                        [(quiet, args.quiet), (attack, args.attack)], tag, started),
        attackers())
    attacks = {name: Outcomes(Counter(counts)) for name, counts in results.get().items()}
    _report([quiet, attack], attacks, args.attack)
    if quiet.acks and attack.acks:
        print(f"ack p99 attack/quiet: {_pct(attack.acks, .99) / _pct(quiet.acks, .99):.2f}x; "
              f"median {statistics.median(attack.acks) / statistics.median(quiet.acks):.2f}x")


if __name__ == "__main__":
    asyncio.run(main())
