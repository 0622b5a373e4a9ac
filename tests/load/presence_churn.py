"""Presence churn benchmark: connections joining and leaving rooms, as fast as
C concurrent clients can cycle, through two gateways.

Starts its own real stack (NATS, PostgreSQL, the services, two gateways) on
free ports. Each of C churn users loops: open a socket (gateways
alternate), ``join`` a room (rooms rotate, so consecutive cycles of one user
are separate presence transitions), wait for the ack, hold it ``--hold``
seconds, close the socket. One observer socket per room (on gateway 1)
records every ``presence`` event. Reported: cycles per second (one cycle =
one connection joining and one leaving = two presence events), event
latency (client ``join`` sent → observer sees ``join``; socket closed →
observer sees ``leave``), lost events, and the CPU of every server
process over the measured window (presence-service's as % of one core).
``--idle N`` adds N connections that stay joined (the heartbeat's load).

    .venv/bin/python tests/load/presence_churn.py --users 40 --rooms 10 --hold 0.05 --duration 20
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import statistics
import sys
import time
from collections import defaultdict, deque
from pathlib import Path

import msgspec
import psutil

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "tests"), str(Path(__file__).parent)]

from e2e.stack import Stack  # noqa: E402
from fanout import cpu_seconds, register, run_benchmark, server_processes  # noqa: E402
from wsclient import WsClient  # noqa: E402


class _User(msgspec.Struct):
    id: str = ""


class Event(msgspec.Struct):
    type: str
    room: str = ""
    event: str = ""
    id: str = ""
    user: _User | None = None


_decode = msgspec.json.Decoder(Event).decode


class Recorder:
    def __init__(self) -> None:
        # (room, user, event) → times the transitions were triggered, oldest first.
        self.pending: dict[tuple[str, str, str], deque[float]] = defaultdict(deque)
        self.latency: dict[str, list[float]] = {"join": [], "leave": [], "ack": []}
        self.expected = 0
        self.unmatched = 0
        self.measuring = False
        self.observer = ""  # its own joins are not churn

    def expect(self, room: str, user: str, kind: str) -> None:
        self.pending[(room, user, kind)].append(time.perf_counter())
        self.expected += 1

    def on_observer(self, payload: bytes) -> None:
        ev = _decode(payload)
        if ev.type != "presence" or ev.user is None or ev.user.id == self.observer:
            return
        times = self.pending.get((ev.room, ev.user.id, ev.event))
        if not times:
            self.unmatched += 1
            return
        started = times.popleft()
        self.latency[ev.event].append(time.perf_counter() - started)


async def churn(args: argparse.Namespace, stack: Stack, rec: Recorder, token: str, uid: str,
                k: int, rooms: list[str], stop: asyncio.Event, counts: list[int]) -> None:
    i = k
    while not stop.is_set():
        room = rooms[i % len(rooms)]
        gw = stack.gateway(1 + i % 2)
        i += 1
        acked: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def on_text(payload: bytes, fut: asyncio.Future[None] = acked) -> None:
            ev = _decode(payload)
            if ev.type in ("ack", "error") and ev.id == "j" and not fut.done():
                fut.set_result(None)

        client = await WsClient.connect("127.0.0.1", gw.port, f"/ws?token={token}", on_text)
        rec.expect(room, uid, "join")
        sent = time.perf_counter()
        client.send_text(b'{"type":"join","id":"j","room":"%s"}' % room.encode())
        await asyncio.wait_for(acked, 10)
        rec.latency["ack"].append(time.perf_counter() - sent)
        await asyncio.sleep(args.hold)
        rec.expect(room, uid, "leave")
        client.close()
        await asyncio.wait_for(client.closed, 10)
        if rec.measuring:
            counts[0] += 1


def _sub(token: str) -> str:
    """The user id of an access token (its ``sub``; no need to verify here)."""
    body = token.split(".")[1]
    return str(json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))["sub"])


async def run(args: argparse.Namespace, stack: Stack, nats_pid: int | None,
              pg_pid: int | None) -> dict[str, object]:
    rec = Recorder()
    tokens = await register(stack.gateway(1).url, args.users + 1)
    observer_token, churn_tokens = tokens[0], tokens[1:]
    uids = [_sub(t) for t in churn_tokens]
    rec.observer = _sub(observer_token)
    rooms = [f"churn{r}" for r in range(args.rooms)]
    observers = []
    for i, room in enumerate(rooms):
        obs = await WsClient.connect("127.0.0.1", stack.gateway(1).port,
                                     f"/ws?token={observer_token}", rec.on_observer)
        obs.send_text(b'{"type":"join","id":"o%d","room":"%s"}' % (i, room.encode()))
        observers.append(obs)
    for i in range(args.idle):
        idle = await WsClient.connect("127.0.0.1", stack.gateway(1 + i % 2).port,
                                      f"/ws?token={observer_token}", lambda _: None)
        idle.send_text(b'{"type":"join","room":"%s"}' % rooms[i % len(rooms)].encode())
        observers.append(idle)
    await asyncio.sleep(1.0)

    stop = asyncio.Event()
    counts = [0]
    tasks = [asyncio.create_task(churn(args, stack, rec, churn_tokens[k], uids[k], k, rooms,
                                       stop, counts))
             for k in range(args.users)]
    await asyncio.sleep(2.0)  # warm up
    procs = server_processes(stack, nats_pid, pg_pid)
    me = psutil.Process()
    cpu0, client0, t0 = cpu_seconds(procs), sum(me.cpu_times()[:2]), time.monotonic()
    rec.measuring = True
    await asyncio.sleep(args.duration)
    rec.measuring = False
    t1, cpu1, client1 = time.monotonic(), cpu_seconds(procs), sum(me.cpu_times()[:2])
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.sleep(3.0)  # the last leaves land
    window = t1 - t0
    cpu = {k: cpu1[k] - cpu0[k] for k in cpu0}
    lost = sum(len(v) for v in rec.pending.values())

    def pct(values: list[float]) -> dict[str, float]:
        if len(values) < 100:
            return {}
        q = statistics.quantiles(values, n=100)
        return {"p50": round(q[49] * 1e3, 2), "p90": round(q[89] * 1e3, 2),
                "p99": round(q[98] * 1e3, 2), "max": round(max(values) * 1e3, 2)}

    for obs in observers:
        obs.close()
    cycles = counts[0]
    return {
        "users": args.users, "rooms": args.rooms, "hold_s": args.hold, "idle": args.idle,
        "window_s": round(window, 2),
        "cycles_per_s": round(cycles / window, 1),
        "presence_events_per_s": round(2 * cycles / window, 1),
        "events_expected": rec.expected, "events_lost": lost, "events_unmatched": rec.unmatched,
        "join_latency_ms": pct(rec.latency["join"]),
        "leave_latency_ms": pct(rec.latency["leave"]),
        "join_ack_latency_ms": pct(rec.latency["ack"]),
        "presence_cpu_pct_of_core": round(cpu.get("presence", 0.0) / window * 100, 1),
        "presence_cpu_us_per_event": round(
            cpu.get("presence", 0.0) / max(1, 2 * cycles) * 1e6, 1),
        "cpu_s": {k: round(v, 2) for k, v in sorted(cpu.items())},
        "client_cpu_s": round(client1 - client0, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=40, help="concurrent churning clients")
    ap.add_argument("--rooms", type=int, default=10)
    ap.add_argument("--hold", type=float, default=0.05, help="seconds a connection stays joined")
    ap.add_argument("--idle", type=int, default=0, help="connections that stay joined")
    ap.add_argument("--duration", type=float, default=20)
    ap.add_argument("--json", type=Path, help="also write the result here")
    ap.add_argument("--logs", type=Path, help="keep the processes' logs in this directory")
    args = ap.parse_args()

    env = {"CHAT_LOG_LEVEL": "WARNING", "CHAT_GATEWAY_MAX_CONNECTIONS_PER_USER": "100000"}
    run_benchmark(env, lambda stack, nats_pid, pg_pid: run(args, stack, nats_pid, pg_pid),
                  json_path=args.json, log_dir=args.logs)

if __name__ == "__main__":
    main()
