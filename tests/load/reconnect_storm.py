"""Reconnect storm: N sockets joined to rooms drop at once and come back
through the load balancer with ``since`` (docs/protocol.md §3.5.3).

Starts its own real stack (fanout.run_benchmark: NATS, PostgreSQL, auth,
history, presence, two gateways) and Caddy in front of the gateways, as
``chat-stack up`` runs it. Then:

1. ``--rooms`` R senders, one per room, connected straight to gateway 2,
   join their room and later send at ``--rate`` messages per second in all
   (acked sends are what every member must get);
2. ``--sockets`` N members connect through Caddy (each its own user, with
   an access token minted with the stack's signing key like auth-service's)
   and join room i % R; messages flow for ``--warm`` seconds;
3. the drop, all at once: ``--drop client`` aborts every member's TCP
   connection (a network cut: the gateways see resets), ``--drop gateway``
   SIGKILLs gateway 1 (its half of the members drop; Caddy moves them to
   gateway 2);
4. every dropped member reconnects at once through Caddy (retrying with a
   short jittered backoff when a connect fails or times out) and joins with
   ``since`` = the last ``seq`` it saw;
5. sending goes on for ``--after`` seconds, stops, in-flight deliveries land.

Reported: the time from the drop until every member had its join acked
again (``recovered_s``: max, and percentiles), members not recovered,
and for every member the messages acked to the senders after its first
join that it never got (``lost``) or got twice (``duplicated``), live or in
a join's ``missed``.

    .venv/bin/python tests/load/reconnect_storm.py --sockets 5000 --rooms 100 --rate 100
"""

from __future__ import annotations

import argparse
import asyncio
import random
import secrets
import statistics
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import msgspec
import psutil

sys.path.insert(0, str(Path(__file__).parent))

from fanout import (  # noqa: E402
    Stack,
    cpu_seconds,
    run_benchmark,
    server_processes,
    summarize_profile,
)
from sockets import mint_tokens, open_ws  # noqa: E402
from wsclient import WsClient  # noqa: E402


class Msg(msgspec.Struct):
    seq: int = 0


class Event(msgspec.Struct):
    type: str
    id: str = ""
    seq: int = 0
    last_seq: int = 0
    missed: list[Msg] = []
    missed_truncated: bool = False
    code: str = ""


_decode = msgspec.json.Decoder(Event).decode


JOIN_ERRORS: Counter[str] = Counter()
JOIN_TRIES = 8  # joins sent on one socket before it is dropped and opened again


class JoinRefused(Exception):
    def __init__(self, code: str) -> None:
        super().__init__(f"join refused: {code}")
        self.code = code


class Member:
    __slots__ = ("room", "token", "client", "seen", "dups", "first_seq", "joined",
                 "recovered_at", "truncated", "attempts", "last_seq")

    def __init__(self, room: str, token: str) -> None:
        self.room = room
        self.token = token
        self.client: WsClient | None = None
        self.seen: set[int] = set()
        self.dups = 0
        self.first_seq: int | None = None  # last_seq of its first join
        self.last_seq = 0
        self.joined: asyncio.Future[None] | None = None
        self.recovered_at: float | None = None
        self.truncated = 0
        self.attempts = 0

    def add(self, seq: int) -> None:
        if seq in self.seen:
            self.dups += 1
        else:
            self.seen.add(seq)
        if seq > self.last_seq:
            self.last_seq = seq

    def on_text(self, payload: bytes) -> None:
        if payload.startswith(b'{"type":"message"'):
            self.add(_decode(payload).seq)
            return
        if not payload.startswith(b'{"type":"ack"') and not payload.startswith(
                b'{"type":"error"'):
            return
        event = _decode(payload)
        if event.id != "j" or self.joined is None or self.joined.done():
            return
        if event.type == "error":
            JOIN_ERRORS[event.code] += 1
            self.joined.set_exception(JoinRefused(event.code))
            return
        if self.first_seq is None:
            self.first_seq = event.last_seq
        for m in event.missed:
            self.add(m.seq)
        if event.missed_truncated:
            self.truncated += 1
        self.joined.set_result(None)

    async def connect(self, host: str, port: int, timeout: float) -> None:
        """Open, join (answered after the welcome); a join answered ``unavailable``
        or ``rate_limited`` is sent again on the same socket after a jittered
        pause, as a client would, rather than reconnecting."""
        self.attempts += 1
        client = await open_ws(host, port, f"/ws?token={self.token}", self.on_text, timeout)
        self.client = client
        pause = 0.2
        try:
            for _ in range(JOIN_TRIES):
                self.joined = asyncio.get_running_loop().create_future()
                since = f',"since":{self.last_seq}' if self.first_seq is not None else ""
                client.send_text(
                    f'{{"type":"join","id":"j","room":"{self.room}"{since}}}'.encode())
                try:
                    await asyncio.wait_for(asyncio.shield(self.joined), timeout)
                    return
                except JoinRefused as exc:
                    if exc.code not in ("unavailable", "rate_limited") or client.closed.done():
                        raise
                await asyncio.sleep(pause * (0.5 + random.random()))
                pause = min(pause * 2, 2.0)
            raise JoinRefused("unavailable")
        except BaseException:
            if client.transport is not None:
                client.transport.abort()
            raise


class Sender:
    def __init__(self, room: str, token: str) -> None:
        self.room = room
        self.token = token
        self.client: WsClient | None = None
        self.acked: set[int] = set()
        self.pending = 0
        self.errors = 0
        self.joined: asyncio.Future[None] | None = None

    def on_text(self, payload: bytes) -> None:
        if not payload.startswith(b'{"type":"ack"') and not payload.startswith(
                b'{"type":"error"'):
            return
        event = _decode(payload)
        if event.id == "j":
            if self.joined is not None and not self.joined.done():
                self.joined.set_result(None)
            return
        if event.type == "error":
            self.errors += 1
        elif event.seq:
            self.acked.add(event.seq)
        self.pending -= 1


async def connect_all(members: list[Member], host: str, port: int, concurrency: int,
                      timeout: float, deadline: float) -> None:
    """Every member connected and joined, ``concurrency`` at a time, retrying."""
    sem = asyncio.Semaphore(concurrency)
    loop = asyncio.get_running_loop()

    async def one(member: Member) -> None:
        delay = 0.05
        while loop.time() < deadline:
            async with sem:
                try:
                    await member.connect(host, port, timeout)
                    member.recovered_at = loop.time()
                    return
                except Exception:
                    pass
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 1.0)

    await asyncio.gather(*(one(m) for m in members))


async def send_loop(senders: list[Sender], rate: float, stop: asyncio.Event) -> int:
    loop = asyncio.get_running_loop()
    start, sent, n = loop.time(), 0, 0
    while not stop.is_set():
        due = int((loop.time() - start) * rate)
        while sent < due:
            sender = senders[sent % len(senders)]
            assert sender.client is not None
            n += 1
            sender.pending += 1
            sender.client.send_text(
                f'{{"type":"send","id":"s{n}","room":"{sender.room}","text":"m {n}"}}'.encode())
            sent += 1
        await asyncio.sleep(0.01)
    return sent


async def run(args: argparse.Namespace, stack: Stack, nats_pid: int | None,
              pg_pid: int | None) -> dict[str, object]:
    from chat_devstack.caddy import Caddy
    from chat_devstack.ports import free_port, wait_http_ok

    loop = asyncio.get_running_loop()
    caddy = await asyncio.to_thread(Caddy.start, free_port(),
                                    [stack.gateway(1).port, stack.gateway(2).port],
                                    stack.log_dir / "caddy")
    try:
        await asyncio.to_thread(wait_http_ok, f"{caddy.url}/readyz", 15.0)
        prefix = f"r{secrets.token_hex(2)}_"
        tokens = mint_tokens(stack, args.rooms + args.sockets, prefix)
        rooms = [f"storm{prefix}{r}" for r in range(args.rooms)]
        senders = [Sender(room, tokens[r]) for r, room in enumerate(rooms)]
        for s in senders:
            s.joined = loop.create_future()
            s.client = await WsClient.connect("127.0.0.1", stack.gateway(2).port,
                                              f"/ws?token={s.token}", s.on_text)
            s.client.send_text(f'{{"type":"join","id":"j","room":"{s.room}"}}'.encode())
            await asyncio.wait_for(s.joined, 10)
        members = [Member(rooms[i % args.rooms], tokens[args.rooms + i])
                   for i in range(args.sockets)]
        t = loop.time()
        await connect_all(members, "127.0.0.1", caddy.lb_port, args.concurrency, 15.0,
                          t + 120)
        first_connect_s = loop.time() - t
        unjoined = sum(1 for m in members if m.first_seq is None)
        stop = asyncio.Event()
        sending = asyncio.create_task(send_loop(senders, args.rate, stop))
        await asyncio.sleep(args.warm)

        # --- the drop -----------------------------------------------------------------
        procs = server_processes(stack, nats_pid, pg_pid)
        if args.drop == "gateway":
            del procs["gateway-1"]
        cpu0 = cpu_seconds(procs)
        # Caddy and this generator share the cores: what they took is what the
        # servers could not have (reported beside, not in storm_cpu_s).
        assert caddy.pid is not None
        lb = psutil.Process(caddy.pid)
        me = psutil.Process()
        side0 = (sum(lb.cpu_times()[:2]), sum(me.cpu_times()[:2]))
        box0 = psutil.cpu_times()
        JOIN_ERRORS.clear()
        profiles: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}
        for name in args.profile:
            out = Path(tempfile.mkdtemp()) / f"{name}.txt"
            argv = [str(Path(sys.executable).parent / "py-spy"), "record", "-p",
                    str(procs[name].pid), "-d", str(args.profile_seconds), "-f", "raw",
                    "-o", str(out), "-r", "100"]
            profiles[name] = (subprocess.Popen(argv, stdout=subprocess.DEVNULL), out)  # noqa: ASYNC220
        if args.drop == "gateway":
            await stack.akill("gateway-1")
            t0 = loop.time()
            await asyncio.sleep(0.2)  # let every reset arrive
            dropped = [m for m in members if m.client is not None and m.client.closed.done()]
        else:
            t0 = loop.time()
            for m in members:
                if m.client is not None and m.client.transport is not None:
                    m.client.transport.abort()
            dropped = list(members)
        for m in dropped:
            m.recovered_at = None
            m.attempts = 0
        await connect_all(dropped, "127.0.0.1", caddy.lb_port, args.reconnect_concurrency,
                          15.0, t0 + args.give_up)
        recovered = [m.recovered_at - t0 for m in dropped if m.recovered_at is not None]
        storm_s = loop.time() - t0
        cpu1 = cpu_seconds(procs)
        side1 = (sum(lb.cpu_times()[:2]), sum(me.cpu_times()[:2]))
        box1 = psutil.cpu_times()
        busy = sum(box1) - box1.idle - box1.iowait - (sum(box0) - box0.idle - box0.iowait)
        join_errors = dict(JOIN_ERRORS)
        await asyncio.sleep(args.after)
        stop.set()
        sent = await sending
        for _ in range(100):  # every send answered, for at most 10 s
            if all(s.pending <= 0 for s in senders):
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(2.0)  # in-flight deliveries land

        acked = {s.room: s.acked for s in senders}
        lost = dup = 0
        lost_members = 0
        for m in members:
            if m.first_seq is None:
                continue
            expected = {q for q in acked[m.room] if q > m.first_seq}
            missing = len(expected - m.seen)
            lost += missing
            lost_members += bool(missing)
            dup += m.dups
        q = statistics.quantiles(recovered, n=100) if len(recovered) > 2 else [float("nan")] * 99
        result: dict[str, object] = {
            "sockets": args.sockets, "rooms": args.rooms, "rate": args.rate,
            "drop": args.drop, "reconnect_concurrency": args.reconnect_concurrency,
            "first_connect_s": round(first_connect_s, 2),
            "not_joined_at_start": unjoined,
            "dropped": len(dropped),
            "recovered": len(recovered),
            "not_recovered": len(dropped) - len(recovered),
            "recovered_s": {"max": round(max(recovered), 2) if recovered else None,
                            "p50": round(q[49], 2), "p90": round(q[89], 2),
                            "p99": round(q[98], 2)},
            "reconnect_attempts": sum(m.attempts for m in dropped),
            # CPU seconds per server process from the drop until the last rejoin
            # (Caddy not included): which one the storm waits for.
            "storm_cpu_s": {k: round(cpu1[k] - cpu0[k], 2) for k in sorted(cpu1)},
            "storm_caddy_cpu_s": round(side1[0] - side0[0], 2),
            "storm_generator_cpu_s": round(side1[1] - side0[1], 2),
            # every core's busy time during the storm (cores × window is the most)
            "storm_box_busy_s": round(busy, 2),
            "storm_window_s": round(storm_s, 2),
            "storm_join_errors": join_errors,
            "sent": sent, "acked": sum(len(a) for a in acked.values()),
            "send_errors": sum(s.errors for s in senders),
            "expected_deliveries": sum(len({q for q in acked[m.room] if q > (m.first_seq or 0)})
                                       for m in members if m.first_seq is not None),
            "lost": lost, "members_with_loss": lost_members, "duplicated": dup,
            "missed_truncated": sum(m.truncated for m in members),
        }
        for name, (proc, out) in profiles.items():
            await asyncio.to_thread(proc.wait, 60)
            result[f"profile_{name}"] = summarize_profile(out)
        for m in members:
            if m.client is not None and m.client.transport is not None:
                m.client.transport.abort()
        for s in senders:
            if s.client is not None and s.client.transport is not None:
                s.client.transport.abort()
        return result
    finally:
        await asyncio.to_thread(caddy.stop)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sockets", type=int, default=5000)
    ap.add_argument("--rooms", type=int, default=100)
    ap.add_argument("--rate", type=float, default=100, help="sends per second, all rooms")
    ap.add_argument("--drop", choices=("client", "gateway"), default="client")
    ap.add_argument("--concurrency", type=int, default=100,
                    help="connects in flight while the members first connect")
    ap.add_argument("--reconnect-concurrency", type=int, default=5000,
                    help="connects in flight in the storm (default: all at once)")
    ap.add_argument("--warm", type=float, default=3.0, help="seconds of traffic before the drop")
    ap.add_argument("--after", type=float, default=2.0,
                    help="seconds of traffic after every member recovered")
    ap.add_argument("--give-up", type=float, default=60.0,
                    help="seconds after the drop to stop retrying")
    ap.add_argument("--profile", action="append", default=[], metavar="PROCESS",
                    help="sample this process (gateway-2, history, ...) with py-spy from the "
                         "drop on; repeatable")
    ap.add_argument("--profile-seconds", type=int, default=15)
    ap.add_argument("--json", type=Path, help="also write the result here")
    args = ap.parse_args()
    env = {"CHAT_GATEWAY_MAX_CONNECTIONS_PER_USER": "100000",
           "CHAT_GATEWAY_MAX_CONNECTIONS_PER_ADDRESS": "0",
           "CHAT_GATEWAY_MAX_CONNECTIONS": "0",
           "CHAT_GATEWAY_SEND_RATE": "1000000", "CHAT_GATEWAY_SEND_BURST": "1000000",
           "CHAT_LOG_LEVEL": "WARNING"}
    run_benchmark(env, lambda stack, nats_pid, pg_pid: run(args, stack, nats_pid, pg_pid),
                  json_path=args.json)


if __name__ == "__main__":
    main()
