"""Fan-out benchmark: R rooms x M members over two front nodes at a fixed send rate.

Starts its own target on free ports, connects R*M sockets (members of a room
alternate between the two front nodes), sends at a fixed total rate for a
fixed time, and reports deliveries per second, end-to-end latency
percentiles (send to receive, same clock), lost and duplicated deliveries,
and the CPU seconds of every server process per delivery over the measured
window. Targets:

- ``stack`` (the default): NATS, PostgreSQL, auth, history, presence and two
  gateways — this project;
- ``baseline``: one core nats-server and two ``relay_baseline.py`` processes
  (no auth, no persistence), the yardstick of issue 13.

Both get the same generator (this module); ``compare.py`` runs them
interleaved and prints ratios.

    .venv/bin/python tests/load/fanout.py --rooms 50 --members 10 --rate 3000 --duration 20
    .venv/bin/python tests/load/fanout.py --target baseline --rate 3000 --duration 20

CPU is counted for every process of the target, each with its descendants
(PostgreSQL's backends) and the exited children they reaped; the run fails
if one of them is missing or dies during the window.

``--profile gateway-1`` (repeatable; any process name of the target) also
samples that process with py-spy during the window and prints where its CPU
goes (sampling costs some CPU: quote CPU figures from runs without it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import msgspec
import psutil

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "tests"), str(Path(__file__).parent)]

from e2e.stack import Stack  # noqa: E402
from wsclient import WsClient  # noqa: E402

from chat_devstack import procs as devprocs  # noqa: E402
from chat_devstack.binaries import nats_server_bin  # noqa: E402
from chat_devstack.nats import NatsServer  # noqa: E402
from chat_devstack.ports import LOOPBACK, free_port, port_open, wait_http_ok, wait_until  # noqa: E402
from chat_devstack.postgres import PostgresServer  # noqa: E402

TARGETS = ("stack", "baseline")
RELAY = Path(__file__).with_name("relay_baseline.py")

# The stack's limits lifted for a benchmark: one user per room holds all of
# the room's sockets, every socket comes from 127.0.0.1, and the generator
# sends far above a person's rate.
STACK_ENV = {
    "CHAT_GATEWAY_SEND_RATE": "1000000", "CHAT_GATEWAY_SEND_BURST": "1000000",
    "CHAT_GATEWAY_MAX_CONNECTIONS_PER_USER": "100000",
    "CHAT_GATEWAY_MAX_CONNECTIONS_PER_ADDRESS": "100000",
    "CHAT_GATEWAY_MAX_CONNECTIONS": "100000",
    "CHAT_LOG_LEVEL": "WARNING",
}


class Event(msgspec.Struct):
    type: str
    room: str = ""
    msg_id: str = ""
    text: str = ""
    id: str = ""
    code: str = ""


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
        self.deliveries = 0
        self.joins_acked: set[str] = set()
        self.joins_refused: dict[str, str] = {}  # join id → error code

    def on_text(self, member: Member, payload: bytes) -> None:
        event = _decode(payload)
        if event.type == "message":
            now = time.time_ns()
            if event.msg_id in member.seen:
                member.dups += 1
            member.seen.add(event.msg_id)
            self.deliveries += 1
            if self.measuring:
                self.window_deliveries += 1
            sent_ns = int(event.text.split(" ", 1)[0])
            self.latencies.append((now - sent_ns) / 1e9)
        elif event.type == "ack":
            if event.id.startswith("j"):
                self.joins_acked.add(event.id)
        elif event.type == "error":
            if event.id.startswith("j"):
                self.joins_refused[event.id] = event.code
            else:
                self.errors[payload.decode()[:120]] += 1


# --- CPU accounting ----------------------------------------------------------------


Procs = dict[str, psutil.Process]


def tree_cpu_seconds(root: psutil.Process) -> float:
    """User+system seconds of ``root`` and its live descendants, plus what the
    exited children they reaped used (PostgreSQL backends come and go)."""
    total = 0.0
    for p in [root, *root.children(recursive=True)]:
        try:
            t = p.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system + t.children_user + t.children_system
    return total


def box_busy_seconds() -> float:
    """CPU seconds the whole machine has been busy (all cores, all processes)."""
    t = psutil.cpu_times()
    # Linux counts guest time inside user time too; idle, iowait and steal are not work.
    not_busy = ("idle", "iowait", "steal", "guest", "guest_nice")
    return sum(t) - sum(getattr(t, f, 0.0) for f in not_busy)


def check_alive(procs: Procs) -> None:
    """Fail loudly when a process that must be counted is gone."""
    for name, p in procs.items():
        try:
            ok = p.is_running() and p.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            ok = False
        if not ok:
            raise RuntimeError(f"process {name!r} (pid {p.pid}) is not running: its CPU "
                               "cannot be counted")


def cpu_seconds(procs: Procs) -> dict[str, float]:
    check_alive(procs)
    return {name: tree_cpu_seconds(p) for name, p in procs.items()}


def server_processes(stack: Stack, nats_pid: int | None, pg_pid: int | None) -> Procs:
    """Every process of a stack: its services, NATS, PostgreSQL (backends with it)."""
    procs: Procs = {}
    for name, svc in stack.services.items():
        if svc.proc is None:
            raise RuntimeError(f"service {name!r} is not running")
        procs[name] = psutil.Process(svc.proc.pid)
    for name, pid in (("nats", nats_pid), ("postgres", pg_pid)):
        if not pid:
            raise RuntimeError(f"no pid for {name}: its CPU cannot be counted")
        procs[name] = psutil.Process(pid)
    check_alive(procs)
    return procs


# --- targets -----------------------------------------------------------------------


class Running:
    """A started target: where the generator connects and what it counts."""

    name = ""

    def ports(self) -> list[int]:
        """The two front nodes (gateways or relays); members alternate between them."""
        raise NotImplementedError

    def ws_path(self, token: str) -> str:
        return f"/ws?token={token}"

    async def tokens(self, n: int) -> list[str]:
        """Credentials of n users (the stack registers them)."""
        raise NotImplementedError

    def processes(self) -> Procs:
        """Every server process of the target, by name."""
        raise NotImplementedError


class StackRunning(Running):
    name = "stack"

    def __init__(self, stack: Stack, nats_pid: int, pg_pid: int) -> None:
        self.stack = stack
        self.nats_pid = nats_pid
        self.pg_pid = pg_pid

    def ports(self) -> list[int]:
        return [self.stack.gateway(1).port, self.stack.gateway(2).port]

    async def tokens(self, n: int) -> list[str]:
        return await register(self.stack.gateway(1).url, n)

    def processes(self) -> Procs:
        return server_processes(self.stack, self.nats_pid, self.pg_pid)


class BaselineRunning(Running):
    name = "baseline"

    def __init__(self, nats: subprocess.Popen[bytes],
                 relays: list[tuple[int, subprocess.Popen[bytes]]]) -> None:
        self.nats = nats
        self.relays = relays

    def ports(self) -> list[int]:
        return [port for port, _ in self.relays]

    def ws_path(self, token: str) -> str:
        return f"/ws?user={token}"

    async def tokens(self, n: int) -> list[str]:
        return [f"bench{i}" for i in range(n)]

    def processes(self) -> Procs:
        procs = {"nats": psutil.Process(self.nats.pid)}
        for i, (_, proc) in enumerate(self.relays, start=1):
            procs[f"relay-{i}"] = psutil.Process(proc.pid)
        check_alive(procs)
        return procs


@contextlib.contextmanager
def stack_target(tmpdir: Path, env: dict[str, str] | None = None,
                 log_dir: Path | None = None) -> Iterator[StackRunning]:
    """A fresh stack: NATS (JetStream), PostgreSQL, the services, two gateways."""
    with contextlib.ExitStack() as stop:
        nats = NatsServer.start(free_port(), tmpdir / "nats")
        stop.callback(nats.stop)
        pg = PostgresServer.start(free_port(), tmpdir / "pg")
        stop.callback(pg.stop)
        logs = log_dir or tmpdir
        logs.mkdir(parents=True, exist_ok=True)
        stack = Stack(nats.url, pg.url, logs, extra_env=dict(STACK_ENV if env is None else env))
        stop.callback(stack.stop)
        stack.start()
        assert nats.pid is not None and pg.pid is not None
        yield StackRunning(stack, nats.pid, pg.pid)


@contextlib.contextmanager
def baseline_target(tmpdir: Path, log_dir: Path | None = None) -> Iterator[BaselineRunning]:
    """A fresh baseline: one core nats-server (no JetStream) and two relays."""
    logs = log_dir or tmpdir
    logs.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stop:
        nats_port = free_port()
        nats = devprocs.spawn([nats_server_bin(), "-a", LOOPBACK, "-p", str(nats_port)],
                              log_path=logs / "nats-baseline.log")
        stop.callback(devprocs.stop_child, nats)
        wait_until(lambda: port_open(LOOPBACK, nats_port), f"nats-server on {nats_port}", 30,
                   alive=lambda: nats.poll() is None)
        relays: list[tuple[int, subprocess.Popen[bytes]]] = []
        for i in (1, 2):
            port = free_port()
            proc = devprocs.spawn([sys.executable, RELAY, "--port", str(port),
                                   "--nats", f"nats://{LOOPBACK}:{nats_port}"],
                                  log_path=logs / f"relay-{i}.log")
            stop.callback(devprocs.stop_child, proc)
            relays.append((port, proc))
        for port, proc in relays:
            wait_http_ok(f"http://{LOOPBACK}:{port}/readyz", 30,
                         alive=lambda proc=proc: proc.poll() is None)
        yield BaselineRunning(nats, relays)


@contextlib.contextmanager
def start_target(name: str, tmpdir: Path, *, env: dict[str, str] | None = None,
                 log_dir: Path | None = None) -> Iterator[Running]:
    if name == "stack":
        with stack_target(tmpdir, env, log_dir) as running:
            yield running
    elif name == "baseline":
        with baseline_target(tmpdir, log_dir) as baseline:
            yield baseline
    else:
        raise ValueError(f"unknown target {name!r} (one of {', '.join(TARGETS)})")


# --- the generator -----------------------------------------------------------------


@dataclass
class Load:
    rooms: int = 50
    members: int = 10
    rate: float = 3000  # total sends per second
    duration: float = 20
    slow_clients: int = 0


async def register(base: str, n: int) -> list[str]:
    tokens: list[str] = []
    # One hash at a time: auth refuses hashes it expects to queue past their
    # deadline, and on a busy 2-core box a second one in flight often is.
    sem = asyncio.Semaphore(1)
    async with httpx.AsyncClient(base_url=base, timeout=60) as http:
        async def post(path: str, creds: dict[str, str]) -> httpx.Response:
            # On a busy box the gateway may give up waiting for auth (503) while
            # auth still registers the user: retry, and take "taken" as done then.
            deadline = time.monotonic() + 180
            for attempt in itertools.count():
                r = await http.post(path, json=creds)
                if attempt and r.status_code == 409 and path.endswith("/register"):
                    return r
                if r.status_code not in (429, 503) or time.monotonic() > deadline:
                    break
                await asyncio.sleep(min(3.0, 0.5 * (attempt + 1)))
            if r.is_error:
                raise RuntimeError(f"POST {path}: {r.status_code} {r.text[:200]}")
            return r

        async def one(i: int) -> str:
            async with sem:
                name = f"bench{i}_{os.getpid()}"
                creds = {"username": name, "password": "benchmark-pw"}
                await post("/v1/auth/register", creds)
                r = await post("/v1/auth/login", creds)
                return str(r.json()["access_token"])
        tokens = list(await asyncio.gather(*(one(i) for i in range(n))))
    return tokens


def percentiles_ms(latencies: list[float]) -> dict[str, float | None]:
    lat = sorted(latencies)
    q = statistics.quantiles(lat, n=100) if len(lat) > 100 else [float("nan")] * 99
    return {"p50": round(q[49] * 1e3, 2), "p90": round(q[89] * 1e3, 2),
            "p99": round(q[98] * 1e3, 2), "max": round(lat[-1] * 1e3, 2) if lat else None}


JOIN_WINDOW = 100
SETTLE_QUIET = 2.0
SETTLE_MAX = 60.0
USERS = 10
ROOMS_PER_USER = 8  # under history's default room-create limit (10 a minute)
RETRYABLE = {"unavailable", "rate_limited"}


async def join_all(rec: Recorder, joins: list[tuple[int, Member]]) -> None:
    """Join each member (``j<i>``) and wait for every ack; retry what was refused
    as unavailable or rate limited; fail on anything else."""
    pending = {f"j{i}": member for i, member in joins}
    for attempt in range(6):
        for jid, member in pending.items():
            assert member.client is not None
            member.client.send_text(json.dumps(
                {"type": "join", "id": jid, "room": member.room}).encode())
        deadline = time.monotonic() + 30
        while any(j not in rec.joins_acked and j not in rec.joins_refused for j in pending):
            if time.monotonic() > deadline:
                raise RuntimeError(f"joins unanswered after 30 s: {len(pending)} pending")
            await asyncio.sleep(0.02)
        refused = {j: rec.joins_refused.pop(j) for j in pending if j in rec.joins_refused}
        fatal = {j: code for j, code in refused.items() if code not in RETRYABLE}
        if fatal:
            raise RuntimeError(f"joins refused: {fatal}")
        pending = {j: pending[j] for j in refused}
        if not pending:
            return
        await asyncio.sleep(0.5 * (attempt + 1))
    raise RuntimeError(f"{len(pending)} joins still refused after retries")


async def measure(running: Running, load: Load, profile: list[str] | None = None
                  ) -> dict[str, object]:
    """Connect, join, send at ``load.rate`` for ``load.duration``; count and time."""
    rec = Recorder()
    ports = running.ports()
    # A few users, each holding every socket of its rooms (caps lifted): argon2
    # makes registering users the slowest part of a run, and a user may
    # create ROOMS_PER_USER rooms a minute.
    n_users = max(min(load.rooms, USERS), math.ceil(load.rooms / ROOMS_PER_USER))
    user_tokens = await running.tokens(n_users)
    tokens = [user_tokens[r % n_users] for r in range(load.rooms)]
    members: list[Member] = []
    for r in range(load.rooms):
        for m in range(load.members):
            member = Member(f"bench{r}")
            port = ports[(r * load.members + m) % 2]
            member.client = await WsClient.connect(
                LOOPBACK, port, running.ws_path(tokens[r]),
                lambda p, mm=member: rec.on_text(mm, p))
            members.append(member)

    # Each room's first member joins (and so creates it) first, then the rest,
    # JOIN_WINDOW at a time, as a client retries a join refused as unavailable
    # or rate limited: thousands of joins at once only time out in history.
    firsts = members[::load.members]
    rest = [m for i, m in enumerate(members) if i % load.members]
    order = list(enumerate(firsts + rest))
    await join_all(rec, order[:len(firsts)])
    for k in range(len(firsts), len(order), JOIN_WINDOW):
        await join_all(rec, order[k:k + JOIN_WINDOW])
    slow: list[WsClient] = []
    for i in range(load.slow_clients):
        # Joined like everyone else, then never read: the gateway must close
        # them (1013) once their buffer is full, without slowing the others.
        r = i % load.rooms
        client = await WsClient.connect(LOOPBACK, ports[i % 2], running.ws_path(tokens[r]),
                                        lambda p: None)
        client.send_text(b'{"type":"join","room":"bench%d"}' % r)
        slow.append(client)
    await asyncio.sleep(2.0 if slow else 1.0)  # room subscriptions settle; slow joins land
    for client in slow:
        assert client.transport is not None
        client.transport.pause_reading()

    procs = running.processes()
    profiles: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}
    for name in profile or []:
        if name not in procs:
            raise ValueError(f"--profile {name}: no such process (one of {', '.join(procs)})")
        out = Path(tempfile.mkdtemp()) / f"{name}.txt"
        argv = [str(Path(sys.executable).parent / "py-spy"), "record", "-p", str(procs[name].pid),
                "-d", str(int(max(1, load.duration - 2))), "-f", "raw", "-o", str(out),
                "-r", "100"]
        # py-spy runs beside us for the window; its exit is awaited off the loop.
        profiles[name] = (subprocess.Popen(argv, stdout=subprocess.DEVNULL), out)  # noqa: ASYNC220

    loop = asyncio.get_running_loop()
    tick = 0.01
    sent = 0
    start = loop.time()
    cpu0 = cpu_seconds(procs)
    me = psutil.Process()
    client0 = sum(me.cpu_times()[:2])
    box0 = box_busy_seconds()
    t0 = time.monotonic()
    rec.measuring = True
    idx = 0
    n_members = len(members)
    # Walk the members in steps that visit every one (rooms and front nodes evenly).
    step = next(k for k in (7, 11, 13, 17, 19, 23) if math.gcd(k, n_members) == 1)
    while (elapsed := loop.time() - start) < load.duration:
        # Open loop: what is due by the clock is sent, also after a stall of
        # this process (a busy box), so the offered rate is the rate asked for.
        for _ in range(int(elapsed * load.rate) + 1 - sent):
            member = members[idx % n_members]
            idx += step
            assert member.client is not None
            frame = b'{"type":"send","room":"%s","text":"%d x"}' % (
                member.room.encode(), time.time_ns())
            member.client.send_text(frame)
            sent += 1
            rec.sent_per_room[member.room] += 1
        next_at = start + (sent / load.rate)
        await asyncio.sleep(max(0.0, min(tick, next_at - loop.time())))
    rec.measuring = False
    t1 = time.monotonic()
    cpu1 = cpu_seconds(procs)
    client_cpu = sum(me.cpu_times()[:2]) - client0
    box_cpu = box_busy_seconds() - box0
    window_deliveries = rec.window_deliveries
    expected = sum(rec.sent_per_room[m.room] for m in members)
    # Let in-flight deliveries land before counting losses: until all came,
    # or none came for SETTLE_QUIET s (an overloaded target is seconds late,
    # and late is not lost), at most SETTLE_MAX s.
    settle_start = last_change = loop.time()
    seen = -1
    while rec.deliveries < expected and loop.time() - settle_start < SETTLE_MAX:
        if rec.deliveries != seen:
            seen, last_change = rec.deliveries, loop.time()
        elif loop.time() - last_change >= SETTLE_QUIET:
            break
        await asyncio.sleep(0.1)
    settle_s = loop.time() - settle_start

    for proc, _ in profiles.values():
        await asyncio.to_thread(proc.wait, 60)

    unique = sum(len(m.seen) for m in members)
    dup = sum(m.dups for m in members)
    cpu = {k: cpu1[k] - cpu0[k] for k in cpu0}
    total_cpu = sum(cpu.values())
    window = t1 - t0
    result: dict[str, object] = {
        "target": running.name,
        "rooms": load.rooms, "members": load.members, "rate": load.rate,
        "duration_s": load.duration,
        "sent": sent, "sent_per_s": round(sent / window),
        "offered_deliveries_per_s": round(load.rate * load.members),
        "expected_deliveries": expected, "delivered": unique + dup,
        "lost": expected - unique, "duplicated": dup,
        "deliveries_per_s": round(window_deliveries / window),
        "latency_ms": percentiles_ms(rec.latencies),
        "cpu_s": {k: round(v, 2) for k, v in sorted(cpu.items())},
        # The load generator shares the 2 cores: its share explains queueing latency.
        "client_cpu_s": round(client_cpu, 2),
        # Whatever else ran on the machine meanwhile (other people's work):
        # busy CPU of the whole box less the target's and the generator's.
        "other_cpu_s": round(max(0.0, box_cpu - total_cpu - client_cpu), 2),
        "window_s": round(window, 2),
        "settle_s": round(settle_s, 2),
        "cpu_us_per_delivery": round(total_cpu / max(1, window_deliveries) * 1e6, 1),
        "cpu_us_per_delivery_by_process": {
            k: round(v / max(1, window_deliveries) * 1e6, 1) for k, v in sorted(cpu.items())
        },
        "errors": dict(rec.errors.most_common(5)),
        "slow_clients": load.slow_clients,
        "slow_clients_closed_by_server": sum(1 for c in slow if c.closed.done()),
    }
    for name, (_, out) in profiles.items():
        result[f"profile_{name}"] = summarize_profile(out)
    for member in members:
        if member.client is not None:
            member.client.close()
    for client in slow:
        client.close()
    await asyncio.sleep(0.2)
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


def run_target(target: str, load: Load, *, env: dict[str, str] | None = None,
               profile: list[str] | None = None, log_dir: Path | None = None
               ) -> dict[str, object]:
    """Start a fresh ``target``, measure ``load`` on it, stop it; the result."""
    import uvloop

    with tempfile.TemporaryDirectory(prefix=f"chat-bench-{target}-") as tmp, \
            start_target(target, Path(tmp), env=env, log_dir=log_dir) as running:
        result = uvloop.run(measure(running, load, profile))
    result["load"] = asdict(load)
    return result


# --- the command line ----------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", choices=TARGETS, default="stack")
    ap.add_argument("--rooms", type=int, default=50)
    ap.add_argument("--members", type=int, default=10)
    ap.add_argument("--rate", type=float, default=3000, help="total sends per second")
    ap.add_argument("--duration", type=float, default=20)
    ap.add_argument("--profile", action="append", default=[], metavar="PROCESS",
                    help="sample this process (gateway-1, history, relay-1, ...) with py-spy; "
                         "repeatable")
    ap.add_argument("--slow-clients", type=int, default=0,
                    help="extra members that join and then never read")
    ap.add_argument("--outbound-buffer", type=int, default=0,
                    help="CHAT_GATEWAY_OUTBOUND_BUFFER for the run (0: the default; stack only)")
    ap.add_argument("--json", type=Path, help="also write the result here")
    args = ap.parse_args()

    env = dict(STACK_ENV)
    if args.outbound_buffer:
        env["CHAT_GATEWAY_OUTBOUND_BUFFER"] = str(args.outbound_buffer)
    load = Load(args.rooms, args.members, args.rate, args.duration, args.slow_clients)
    result = run_target(args.target, load, env=env, profile=args.profile)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text)


# --- for other benchmarks (presence_churn.py) ------------------------------------------

Runner = Callable[[Stack, "int | None", "int | None"], Awaitable[dict[str, object]]]


def run_benchmark(env: dict[str, str], runner: Runner, *, json_path: Path | None = None,
                  log_dir: Path | None = None) -> None:
    """Start a fresh stack, run ``runner(stack, nats_pid, pg_pid)``, print its JSON."""
    import uvloop

    with tempfile.TemporaryDirectory(prefix="chat-bench-") as tmp, \
            stack_target(Path(tmp), env, log_dir) as running:
        result = uvloop.run(runner(running.stack, running.nats_pid, running.pg_pid))
    text = json.dumps(result, indent=2)
    print(text)
    if json_path:
        json_path.write_text(text)


if __name__ == "__main__":
    main()
