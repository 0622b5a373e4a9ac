"""Fan-out benchmark: R rooms x M members over two gateways at a fixed send rate.

Starts its own real stack (NATS, PostgreSQL, auth, history, presence, two
gateways) on free ports, connects R*M sockets (members of a room alternate
between the gateways), sends at a fixed total rate for a fixed time, and
reports deliveries per second, end-to-end latency percentiles (send to
receive, same clock), lost and duplicated deliveries, and the CPU seconds
of every server process per delivery over the measured window.

    .venv/bin/python tests/load/fanout.py --rooms 50 --members 10 --rate 3000 --duration 20

``--profile gateway-1`` (repeatable) also samples that process with py-spy
during the window and prints where its CPU goes (sampling costs some CPU:
quote CPU figures from runs without it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import msgspec
import psutil

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "tests"), str(Path(__file__).parent)]

from e2e.stack import Stack  # noqa: E402
from servers import nats_server, postgres_server  # noqa: E402
from wsclient import WsClient  # noqa: E402


class Event(msgspec.Struct):
    type: str
    room: str = ""
    msg_id: str = ""
    text: str = ""
    id: str = ""


_decode = msgspec.json.Decoder(Event).decode


class Member:
    __slots__ = ("room", "client", "seen", "dups")

    def __init__(self, room: str) -> None:
        self.room = room
        self.client: WsClient | None = None
        self.seen: set[str] = set()
        self.dups = 0


class Recorder:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.sent_per_room: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.measuring = False
        self.window_deliveries = 0

    def on_text(self, member: Member, payload: bytes) -> None:
        event = _decode(payload)
        if event.type == "message":
            now = time.time_ns()
            if event.msg_id in member.seen:
                member.dups += 1
            member.seen.add(event.msg_id)
            if self.measuring:
                self.window_deliveries += 1
            sent_ns = int(event.text.split(" ", 1)[0])
            self.latencies.append((now - sent_ns) / 1e9)
        elif event.type == "error":
            self.errors[payload.decode()[:120]] += 1


Procs = dict[str, list[psutil.Process]]


def server_processes(stack: Stack, nats_pid: int | None, pg_pid: int | None) -> Procs:
    procs: dict[str, list[psutil.Process]] = {}
    for name, svc in stack.services.items():
        assert svc.proc is not None
        procs[name] = [psutil.Process(svc.proc.pid)]
    for name, pid in (("nats", nats_pid), ("postgres", pg_pid)):
        if pid:
            root = psutil.Process(pid)
            procs[name] = [root, *root.children(recursive=True)]
    return procs


def cpu_seconds(procs: dict[str, list[psutil.Process]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, plist in procs.items():
        total = 0.0
        for p in plist:
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.NoSuchProcess:
                pass
        out[name] = total
    return out


def find_pid(cmd_fragment: str) -> int | None:
    for p in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if cmd_fragment in cmd:
            return int(p.info["pid"])
    return None


async def register(base: str, n: int) -> list[str]:
    tokens: list[str] = []
    sem = asyncio.Semaphore(2)  # argon2 hashing: more at once only queues on 2 cores
    async with httpx.AsyncClient(base_url=base, timeout=60) as http:
        async def one(i: int) -> str:
            async with sem:
                name = f"bench{i}_{os.getpid()}"
                creds = {"username": name, "password": "benchmark-pw"}
                r = await http.post("/v1/auth/register", json=creds)
                r.raise_for_status()
                r = await http.post("/v1/auth/login", json=creds)
                r.raise_for_status()
                return str(r.json()["access_token"])
        tokens = list(await asyncio.gather(*(one(i) for i in range(n))))
    return tokens


async def run(
    args: argparse.Namespace, stack: Stack, nats_pid: int | None, pg_pid: int | None
) -> dict[str, object]:
    rec = Recorder()
    # One user per room, its M connections being the room's members: argon2
    # makes registering R*M users the slowest part of a run otherwise.
    tokens = await register(stack.gateway(1).url, args.rooms)
    members: list[Member] = []
    for r in range(args.rooms):
        for m in range(args.members):
            member = Member(f"bench{r}")
            gw = stack.gateway(1 + (r * args.members + m) % 2)
            token = tokens[r]
            member.client = await WsClient.connect("127.0.0.1", gw.port, f"/ws?token={token}",
                                                   lambda p, mm=member: rec.on_text(mm, p))
            members.append(member)
    for i, member in enumerate(members):
        assert member.client is not None
        join = {"type": "join", "id": f"j{i}", "room": member.room}
        member.client.send_text(json.dumps(join).encode())
    slow: list[WsClient] = []
    for i in range(args.slow_clients):
        # Joined like everyone else, then never read: the gateway must close
        # them (1013) once their buffer is full, without slowing the others.
        r = i % args.rooms
        client = await WsClient.connect("127.0.0.1", stack.gateway(1 + i % 2).port,
                                        f"/ws?token={tokens[r]}", lambda p: None)
        client.send_text(b'{"type":"join","room":"bench%d"}' % r)
        slow.append(client)
    await asyncio.sleep(2.0)
    for client in slow:
        assert client.transport is not None
        client.transport.pause_reading()

    procs = server_processes(stack, nats_pid, pg_pid)
    profiles: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}
    for name in args.profile:
        pid = stack.services[name].proc.pid  # type: ignore[union-attr]
        out = Path(tempfile.mkdtemp()) / f"{name}.txt"
        argv = [str(Path(sys.executable).parent / "py-spy"), "record", "-p", str(pid),
                "-d", str(int(max(1, args.duration - 2))), "-f", "raw", "-o", str(out),
                "-r", "100"]
        # py-spy runs beside us for the window; its exit is awaited off the loop.
        profiles[name] = (subprocess.Popen(argv, stdout=subprocess.DEVNULL), out)  # noqa: ASYNC220

    loop = asyncio.get_running_loop()
    tick = 0.01
    per_tick = args.rate * tick
    sent = 0
    start = loop.time()
    cpu0 = cpu_seconds(procs)
    me = psutil.Process()
    client0 = sum(me.cpu_times()[:2])
    t0 = time.monotonic()
    rec.measuring = True
    carry = 0.0
    idx = 0
    n_members = len(members)
    while loop.time() - start < args.duration:
        carry += per_tick
        k = int(carry)
        carry -= k
        for _ in range(k):
            member = members[idx % n_members]
            idx += 7  # walk rooms and gateways evenly
            assert member.client is not None
            frame = b'{"type":"send","room":"%s","text":"%d x"}' % (
                member.room.encode(), time.time_ns())
            member.client.send_text(frame)
            sent += 1
            rec.sent_per_room[member.room] += 1
        next_at = start + (sent / args.rate)
        await asyncio.sleep(max(0.0, min(tick, next_at - loop.time())))
    rec.measuring = False
    t1 = time.monotonic()
    cpu1 = cpu_seconds(procs)
    client_cpu = sum(me.cpu_times()[:2]) - client0
    window_deliveries = rec.window_deliveries
    await asyncio.sleep(3.0)  # let in-flight deliveries land before counting losses

    for proc, _ in profiles.values():
        await asyncio.to_thread(proc.wait, 60)

    expected = sum(rec.sent_per_room[m.room] for m in members)
    unique = sum(len(m.seen) for m in members)
    dup = sum(m.dups for m in members)
    cpu = {k: cpu1[k] - cpu0[k] for k in cpu0}
    total_cpu = sum(cpu.values())
    lat = sorted(rec.latencies)
    q = statistics.quantiles(lat, n=100) if len(lat) > 100 else [float("nan")] * 99
    result = {
        "rooms": args.rooms, "members": args.members, "rate": args.rate,
        "duration_s": args.duration,
        "sent": sent, "expected_deliveries": expected, "delivered": unique + dup,
        "lost": expected - unique, "duplicated": dup,
        "deliveries_per_s": round(window_deliveries / (t1 - t0)),
        "latency_ms": {"p50": round(q[49] * 1e3, 2), "p90": round(q[89] * 1e3, 2),
                       "p99": round(q[98] * 1e3, 2),
                       "max": round(lat[-1] * 1e3, 2) if lat else None},
        "cpu_s": {k: round(v, 2) for k, v in sorted(cpu.items())},
        # The load generator shares the 2 cores: its share explains queueing latency.
        "client_cpu_s": round(client_cpu, 2),
        "window_s": round(t1 - t0, 2),
        "cpu_us_per_delivery": round(total_cpu / max(1, window_deliveries) * 1e6, 1),
        "cpu_us_per_delivery_by_process": {
            k: round(v / max(1, window_deliveries) * 1e6, 1) for k, v in sorted(cpu.items())
        },
        "errors": dict(rec.errors.most_common(5)),
        "slow_clients": args.slow_clients,
        "slow_clients_closed_by_server": sum(1 for c in slow if c.closed.done()),
    }
    for name, (_, out) in profiles.items():
        result[f"profile_{name}"] = summarize_profile(out)
    for member in members:
        if member.client is not None:
            member.client.close()
    return result


def summarize_profile(path: Path, top: int = 25) -> list[str]:
    """Self time by function from py-spy's collapsed stacks."""
    if not path.exists():
        return ["(no profile: py-spy could not attach)"]
    self_time: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        total += n
        leaf = stack.split(";")[-1]
        self_time[leaf] += n
    return [f"{100 * n / total:5.1f}%  {fn}" for fn, n in self_time.most_common(top)]


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rooms", type=int, default=50)
    ap.add_argument("--members", type=int, default=10)
    ap.add_argument("--rate", type=float, default=3000, help="total sends per second")
    ap.add_argument("--duration", type=float, default=20)
    ap.add_argument("--profile", action="append", default=[], metavar="PROCESS",
                    help="sample this process (gateway-1, history, ...) with py-spy; repeatable")
    ap.add_argument("--slow-clients", type=int, default=0,
                    help="extra members that join and then never read")
    ap.add_argument("--outbound-buffer", type=int, default=0,
                    help="CHAT_GATEWAY_OUTBOUND_BUFFER for the run (0: the default)")
    ap.add_argument("--json", type=Path, help="also write the result here")
    args = ap.parse_args()

    # One user per room holds all its sockets: lift the per-user cap too.
    env = {"CHAT_GATEWAY_SEND_RATE": "1000000", "CHAT_GATEWAY_SEND_BURST": "1000000",
           "CHAT_GATEWAY_MAX_CONNECTIONS_PER_USER": "100000", "CHAT_LOG_LEVEL": "WARNING"}
    if args.outbound_buffer:
        env["CHAT_GATEWAY_OUTBOUND_BUFFER"] = str(args.outbound_buffer)
    run_benchmark(env, lambda stack, nats_pid, pg_pid: run(args, stack, nats_pid, pg_pid),
                  json_path=args.json)


Runner = Callable[[Stack, "int | None", "int | None"], Awaitable[dict[str, object]]]


def run_benchmark(env: dict[str, str], runner: Runner, *, json_path: Path | None = None,
                  log_dir: Path | None = None) -> None:
    """Start a fresh stack (NATS, PostgreSQL, services, two gateways), run, print JSON."""
    with tempfile.TemporaryDirectory(prefix="chat-bench-") as tmp:
        tmpdir = Path(tmp)
        with nats_server(tmpdir / "nats") as nats_url, postgres_server(tmpdir / "pg") as pg_url:
            logs = log_dir or tmpdir
            logs.mkdir(parents=True, exist_ok=True)
            stack = Stack(nats_url, pg_url, logs, extra_env=env)
            stack.start()
            try:
                nats_pid = find_pid(f"-p {nats_url.rsplit(':', 1)[1]}")
                pg_pid = find_pid(f"-p {pg_url.rsplit(':', 1)[1].split('/')[0]}")
                import uvloop
                result = uvloop.run(runner(stack, nats_pid, pg_pid))
            finally:
                stack.stop()
    text = json.dumps(result, indent=2)
    print(text)
    if json_path:
        json_path.write_text(text)

if __name__ == "__main__":
    main()
