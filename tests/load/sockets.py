"""Per-socket and per-connect costs: RSS per idle authenticated socket in
every process of the stack, and the connect + auth rate.

Starts its own real stack (fanout.run_benchmark: NATS, PostgreSQL, auth,
history, presence, two gateways) on free ports, opens ``--sockets`` N
WebSockets alternating between the gateways, ``--concurrency`` C at a time,
each counted once its ``welcome`` arrived (the token checked, the socket
registered), and reports:

- ``connects_per_s``: N / the time to open them all (upgrade + token check +
  ``welcome``, the generator's own work included: it shares the 2 cores);
- ``rss_kib_per_socket``: per process (gateways, NATS, history, presence,
  auth, PostgreSQL with its backends), the RSS difference between before
  (after a warm-up of ``--warmup`` sockets, kept open) and after the N
  sockets were idle for ``--settle`` seconds, divided by N.

Users: by default each socket is its own user, with an access token minted
with the stack's signing key exactly as auth-service issues them (argon2
makes registering thousands of users take minutes); ``--users K`` registers
K users instead and spreads the sockets over them. The per-user connection
cap is lifted either way; it stays on (its cost is part of a connect).

    .venv/bin/python tests/load/sockets.py --sockets 5000 --concurrency 50

A/B: run it with another tree's src folders first on PYTHONPATH (see
/tmp/notes or RESULTS.md for the command).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).parent))

from fanout import (  # noqa: E402
    Procs,
    Stack,
    cpu_seconds,
    register,
    run_benchmark,
    server_processes,
    summarize_profile,
)
from wsclient import WsClient  # noqa: E402


def rss(procs: Procs) -> dict[str, int]:
    """Bytes of RSS per process name, its children included (PostgreSQL's
    backends, looked up again at each reading)."""
    out: dict[str, int] = {}
    for name, root in procs.items():
        total = 0
        for p in [root, *root.children(recursive=True)]:
            try:
                total += p.memory_info().rss
            except psutil.NoSuchProcess:
                pass
        out[name] = total
    return out


def mint_tokens(stack: Stack, n: int, prefix: str) -> list[str]:
    """``n`` access tokens of ``n`` distinct users, signed like auth-service's."""
    from chat_auth.keys import SigningKey, from_pem
    from chat_auth.tokens import TokenIssuer
    from chat_contract.claims import DEFAULT_AUDIENCE, DEFAULT_ISSUER

    key = SigningKey.of(from_pem((stack.log_dir / "signing-key.pem").read_bytes()))
    issuer = TokenIssuer(key, DEFAULT_ISSUER, DEFAULT_AUDIENCE, 3600)
    return [issuer.access_token(f"u_{prefix}{i}", f"{prefix}{i}",
                                sid=secrets.token_urlsafe(12)) for i in range(n)]


async def tokens_for(stack: Stack, n: int, users: int, prefix: str) -> list[str]:
    if users <= 0:
        return mint_tokens(stack, n, prefix)
    registered = await register(stack.gateway(1).url, users)
    return [registered[i % users] for i in range(n)]


async def open_sockets(stack: Stack, tokens: list[str], concurrency: int,
                       first: int = 0, deflate: bool = False
                       ) -> tuple[list[WsClient], float, int]:
    """Open one socket per token (gateway by index), ``concurrency`` at a time,
    each done once ``welcome`` arrived; (clients, seconds, failures)."""
    clients: list[WsClient] = []
    failures = 0
    it = iter(enumerate(tokens, first))
    ports = [stack.gateway(1).port, stack.gateway(2).port]

    async def worker() -> None:
        nonlocal failures
        loop = asyncio.get_running_loop()
        for i, token in it:
            welcomed = loop.create_future()

            def on_text(payload: bytes, fut: asyncio.Future[None] = welcomed) -> None:
                if not fut.done() and payload.startswith(b'{"type":"welcome"'):
                    fut.set_result(None)

            try:
                client = await open_ws("127.0.0.1", ports[i % 2], f"/ws?token={token}", on_text,
                                       deflate=deflate)
            except Exception:
                failures += 1
                continue
            try:
                await asyncio.wait_for(asyncio.shield(welcomed), 10)
            except Exception:
                failures += 1
                if client.transport is not None:
                    client.transport.abort()
                continue
            client.on_text = _ignore
            clients.append(client)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return clients, time.perf_counter() - t0, failures


def _ignore(_: bytes) -> None:
    pass


async def open_ws(host: str, port: int, path: str, on_text: Callable[[bytes], None],
                  timeout: float = 10.0, deflate: bool = False) -> WsClient:
    """WsClient.connect, but a connect that fails or times out leaves no socket
    behind (its transport aborted), and a late answer is ignored. ``deflate``:
    offer permessage-deflate as browsers do (the gateway's frames are never
    compressed, so this client reads them either way)."""
    loop = asyncio.get_running_loop()
    transport, proto = await asyncio.wait_for(
        loop.create_connection(lambda: WsClient(on_text), host, port), timeout)
    key = base64.b64encode(os.urandom(16)).decode()
    extensions = ("Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
                  if deflate else "")
    transport.write(
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n{extensions}"
        "Sec-WebSocket-Version: 13\r\n\r\n".encode())
    try:
        await asyncio.wait_for(asyncio.shield(proto.handshake), timeout)
    except BaseException:
        transport.abort()
        if not proto.handshake.done():
            proto.handshake.cancel()
        raise
    return proto


async def run(args: argparse.Namespace, stack: Stack, nats_pid: int | None,
              pg_pid: int | None) -> dict[str, object]:
    procs = server_processes(stack, nats_pid, pg_pid)
    tokens = await tokens_for(stack, args.warmup + args.sockets, args.users,
                              f"s{secrets.token_hex(2)}_")
    warm, _, _ = await open_sockets(stack, tokens[:args.warmup], args.concurrency,
                                    deflate=args.deflate)
    await asyncio.sleep(args.settle)
    before = rss(procs)
    profiles: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}
    for name in args.profile:
        out = Path(tempfile.mkdtemp()) / f"{name}.txt"
        argv = [str(Path(sys.executable).parent / "py-spy"), "record", "-p",
                str(procs[name].pid), "-d", str(args.profile_seconds), "-f", "raw",
                "-o", str(out), "-r", "200"]
        profiles[name] = (subprocess.Popen(argv, stdout=subprocess.DEVNULL), out)  # noqa: ASYNC220
    cpu0 = cpu_seconds(procs)
    me = psutil.Process()
    client0 = sum(me.cpu_times()[:2])
    clients, seconds, failures = await open_sockets(stack, tokens[args.warmup:],
                                                    args.concurrency, args.warmup,
                                                    deflate=args.deflate)
    cpu1 = cpu_seconds(procs)
    client_cpu = sum(me.cpu_times()[:2]) - client0
    await asyncio.sleep(args.settle)
    after = rss(procs)
    alive = sum(1 for c in clients if not c.closed.done())
    n = max(1, len(clients))
    per_socket = {k: round((after[k] - before[k]) / n / 1024, 2) for k in sorted(after)}
    gateways = sum(v for k, v in per_socket.items() if k.startswith("gateway"))
    result: dict[str, object] = {
        "sockets": args.sockets, "opened": len(clients), "failed": failures,
        "still_open_after_settle": alive, "concurrency": args.concurrency,
        "users": args.users or "one per socket (minted tokens)",
        "deflate_offered": args.deflate,
        "connect_seconds": round(seconds, 3),
        "connects_per_s": round(len(clients) / seconds, 1),
        # CPU per connect (robust where the rate is not: the 2 cores are shared):
        # every server process, and the generator's own.
        "cpu_us_per_connect": {k: round((cpu1[k] - cpu0[k]) / n * 1e6, 1) for k in sorted(cpu1)},
        "cpu_us_per_connect_servers": round(sum(cpu1[k] - cpu0[k] for k in cpu1) / n * 1e6, 1),
        "cpu_us_per_connect_generator": round(client_cpu / n * 1e6, 1),
        "rss_kib_per_socket": per_socket,
        # Each gateway holds half the sockets: its cost per socket it holds.
        "rss_kib_per_socket_in_gateway": round(gateways, 2),
        "rss_mib_before": {k: round(v / 2**20, 1) for k, v in sorted(before.items())},
        "rss_mib_after": {k: round(v / 2**20, 1) for k, v in sorted(after.items())},
    }
    for name, (proc, out) in profiles.items():
        await asyncio.to_thread(proc.wait, 60)
        result[f"profile_{name}"] = summarize_profile(out, top=40)
        result[f"profile_{name}_raw"] = str(out)
    for client in [*warm, *clients]:
        if client.transport is not None:
            client.transport.abort()
    return result


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sockets", type=int, default=5000)
    ap.add_argument("--concurrency", type=int, default=50,
                    help="connects in flight at once (each waits for its welcome)")
    ap.add_argument("--users", type=int, default=0,
                    help="register this many users and share them (0: one minted user per socket)")
    ap.add_argument("--warmup", type=int, default=200,
                    help="sockets opened (and kept) before the 'before' RSS")
    ap.add_argument("--settle", type=float, default=3.0,
                    help="seconds idle before each RSS reading")
    ap.add_argument("--profile", action="append", default=[], metavar="PROCESS",
                    help="sample this process (gateway-1, nats, ...) with py-spy while the "
                         "sockets open (quote CPU figures from runs without it); repeatable")
    ap.add_argument("--profile-seconds", type=int, default=4)
    ap.add_argument("--deflate", action="store_true",
                    help="offer permessage-deflate in the upgrade, as browsers do")
    ap.add_argument("--json", type=Path, help="also write the result here")
    args = ap.parse_args()
    env = {"CHAT_GATEWAY_MAX_CONNECTIONS_PER_USER": "100000",
           "CHAT_GATEWAY_MAX_CONNECTIONS_PER_ADDRESS": "0",
           "CHAT_GATEWAY_MAX_CONNECTIONS": "0",
           "CHAT_LOG_LEVEL": "WARNING"}
    run_benchmark(env, lambda stack, nats_pid, pg_pid: run(args, stack, nats_pid, pg_pid),
                  json_path=args.json)


if __name__ == "__main__":
    main()
