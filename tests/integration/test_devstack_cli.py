"""`chat-stack up/status/down/run` with real NATS, PostgreSQL and Caddy.

The chat services are stand-ins (tiny websockets servers with /readyz) put in
CHAT_BIN_DIR, so this checks the launcher itself: order, readiness, env,
pid files, the load balancer (round robin, WebSocket, failover) and shutdown.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import asyncpg  # type: ignore[import-untyped, unused-ignore]
import httpx
import pytest
from websockets.asyncio.client import connect as ws_connect

from chat_devstack.ports import free_port, port_in_use
from chat_devstack.procs import pid_alive
from chat_devstack.supervisor import RunDir

pytestmark = pytest.mark.integration

FAKE_SERVICE = """\
import asyncio, json, os, signal, sys
from http import HTTPStatus
from websockets.asyncio.server import serve

NAME = {name!r}
PORT = int(os.environ[{port_var!r}])
NODE = os.environ.get("CHAT_GATEWAY_NODE_ID", NAME)
SEEN = ["CHAT_NATS_URL", "CHAT_DATABASE_URL", "CHAT_AUTH_PORT", "CHAT_HISTORY_PORT",
        "CHAT_PRESENCE_PORT", "CHAT_LOG_FORMAT", "CHAT_GATEWAY_PORT", "CHAT_GATEWAY_NODE_ID",
        "CHAT_AUTH_SIGNING_KEY_FILE", "CHAT_SERVER_API_PORT", "CHAT_SERVER_API_KEYS_FILE"]

if NAME == "chat-auth":  # like auth-service: create the signing key on first run
    key = os.environ["CHAT_AUTH_SIGNING_KEY_FILE"]
    if not os.path.exists(key):
        with open(key, "w") as f:
            f.write("fake key\\n")

def http(connection, request):
    if request.path == "/readyz":
        return connection.respond(HTTPStatus.OK, "ok\\n")
    if request.path == "/whoami":
        env = {{k: os.environ[k] for k in SEEN if k in os.environ}}
        return connection.respond(HTTPStatus.OK, json.dumps({{"node": NODE, "env": env}}))
    return None  # anything else: WebSocket upgrade

async def echo(ws):
    async for message in ws:
        await ws.send(f"{{NODE}}:{{message}}")

async def main():
    stop = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set_result, None)
    async with serve(echo, "127.0.0.1", PORT, process_request=http):
        print(f"{{NAME}} listening on {{PORT}}", flush=True)
        await stop
    print(f"{{NAME}} stopped", flush=True)

asyncio.run(main())
"""

SCRIPTS = {
    "chat-auth": "CHAT_AUTH_PORT",
    "chat-history": "CHAT_HISTORY_PORT",
    "chat-presence": "CHAT_PRESENCE_PORT",
    "chat-notify": "CHAT_NOTIFY_PORT",
    "chat-gateway": "CHAT_GATEWAY_PORT",
}
ALL = ["nats", "postgres", "auth", "history", "presence", "notify", "gateway-1", "gateway-2",
       "lb"]


def _distinct_free_ports(count: int) -> list[int]:
    ports: set[int] = set()
    while len(ports) < count:
        ports.add(free_port())
    return sorted(ports)


def _gateway_base() -> int:
    """A base port with base and base+1 both free."""
    for _ in range(50):
        base = free_port()
        if base < 65000 and not port_in_use(base + 1):
            return base
    raise RuntimeError("no two adjacent free ports")


@pytest.fixture
def stack_env() -> Iterator[dict[str, str]]:
    # Under /tmp, not tmp_path: PostgreSQL runs as chatpg when we are root and must
    # traverse the parents; pytest resets its base dir to 0700 on every session start.
    root = Path(tempfile.mkdtemp(prefix="chat-devstack-stack-"))
    bin_dir = root / "bin"
    bin_dir.mkdir()
    for script, port_var in SCRIPTS.items():
        path = bin_dir / script
        path.write_text(
            f"#!{sys.executable}\n" + FAKE_SERVICE.format(name=script, port_var=port_var)
        )
        path.chmod(0o755)
    base = _gateway_base()
    api_base = _gateway_base()  # the gateways' internal server API listeners
    while {api_base, api_base + 1} & {base, base + 1}:
        api_base = _gateway_base()
    taken = (base, base + 1, api_base, api_base + 1)
    others = [p for p in _distinct_free_ports(12) if p not in taken]
    nats, monitor, pg, lb, auth, history, presence, notify = others[:8]
    env = dict(
        os.environ,
        CHAT_RUN_DIR=str(root / "run"),
        CHAT_BIN_DIR=str(bin_dir),
        CHAT_NATS_PORT=str(nats),
        CHAT_NATS_MONITOR_PORT=str(monitor),
        CHAT_PG_PORT=str(pg),
        CHAT_LB_PORT=str(lb),
        CHAT_GATEWAYS="2",
        CHAT_GATEWAY_BASE_PORT=str(base),
        CHAT_SERVER_API_BASE_PORT=str(api_base),
        CHAT_AUTH_PORT=str(auth),
        CHAT_HISTORY_PORT=str(history),
        CHAT_PRESENCE_PORT=str(presence),
        CHAT_NOTIFY_PORT=str(notify),
        NO_COLOR="1",
    )
    env.pop("CHAT_LOG_FORMAT", None)
    try:
        yield env
    finally:
        # Whatever happened, leave no server behind.
        subprocess.run(_cli("down"), env=env, capture_output=True, timeout=60, check=False)
        shutil.rmtree(root, ignore_errors=True)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "chat_devstack", *args]


def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(_cli(*args), env=env, capture_output=True, text=True, timeout=120)


def _records(env: dict[str, str]) -> dict[str, int]:
    return {rec.name: rec.pid for rec in RunDir(Path(env["CHAT_RUN_DIR"])).records()}


def _whoami(lb_url: str) -> dict[str, object]:
    response = httpx.get(f"{lb_url}/whoami", timeout=10, trust_env=False)
    response.raise_for_status()
    data: dict[str, object] = response.json()
    return data


async def test_up_status_down(stack_env: dict[str, str]) -> None:
    env = stack_env
    lb_url = f"http://127.0.0.1:{env['CHAT_LB_PORT']}"

    up = _run(env, "up")
    assert up.returncode == 0, up.stdout + up.stderr
    assert f"chat stack is up: open {lb_url}" in up.stdout

    pids = _records(env)
    assert list(pids) == ALL  # start order recorded
    assert all(pid_alive(pid) for pid in pids.values())

    again = _run(env, "up")
    assert again.returncode == 0
    assert "already up" in again.stdout
    assert _records(env) == pids  # no duplicates started

    status = _run(env, "status")
    assert status.returncode == 0
    for name in ALL:
        assert name in status.stdout

    # Round robin over both gateways, with the env the launcher promised.
    seen = {}
    for _ in range(4):
        who = _whoami(lb_url)
        seen[who["node"]] = who["env"]
    assert set(seen) == {"gw-1", "gw-2"}
    gw1 = seen["gw-1"]
    assert isinstance(gw1, dict)
    assert gw1["CHAT_NATS_URL"] == f"nats://127.0.0.1:{env['CHAT_NATS_PORT']}"
    assert gw1["CHAT_DATABASE_URL"] == f"postgresql://postgres@127.0.0.1:{env['CHAT_PG_PORT']}/chat"
    assert gw1["CHAT_GATEWAY_PORT"] == env["CHAT_GATEWAY_BASE_PORT"]
    assert gw1["CHAT_LOG_FORMAT"] == "json"
    assert gw1["CHAT_AUTH_PORT"] == env["CHAT_AUTH_PORT"]
    # The server API: gateway-1's internal port and the key made in the run dir.
    keys = Path(env["CHAT_RUN_DIR"]) / "server-api" / "keys"
    assert gw1["CHAT_SERVER_API_PORT"] == env["CHAT_SERVER_API_BASE_PORT"]
    assert gw1["CHAT_SERVER_API_KEYS_FILE"] == str(keys)
    assert stat.S_IMODE(keys.stat().st_mode) == 0o600
    assert f"keys in {keys}" in up.stdout

    # WebSocket through Caddy.
    async with ws_connect(f"ws://127.0.0.1:{env['CHAT_LB_PORT']}/ws") as ws:
        await ws.send("hi")
        reply = await asyncio.wait_for(ws.recv(), 10)
        assert reply in ("gw-1:hi", "gw-2:hi")

    # The database exists; auth made its key in a private dir.
    conn = await asyncpg.connect(gw1["CHAT_DATABASE_URL"])
    assert await conn.fetchval("SELECT current_database()") == "chat"
    await conn.close()
    auth_dir = Path(env["CHAT_RUN_DIR"]) / "auth"
    assert (auth_dir.stat().st_mode & 0o777) == 0o700
    assert (auth_dir / "signing-key.pem").exists()

    # A gateway crashes: the load balancer keeps serving from the other one.
    os.kill(pids["gateway-1"], signal.SIGKILL)
    for _ in range(6):
        assert _whoami(lb_url)["node"] == "gw-2"

    down = _run(env, "down")
    assert down.returncode == 0, down.stdout + down.stderr
    assert "chat stack is down" in down.stdout
    assert not any(pid_alive(pid) for pid in pids.values())
    assert _records(env) == {}
    assert _run(env, "status").returncode == 1

    # Second `up` reuses the PostgreSQL cluster and the NATS store.
    up = _run(env, "up")
    assert up.returncode == 0, up.stdout + up.stderr
    assert _run(env, "down").returncode == 0


def test_run_foreground_streams_and_stops_on_ctrl_c(stack_env: dict[str, str]) -> None:
    env = stack_env
    proc = subprocess.Popen(
        _cli("run"), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if "chat stack is up" in line:
                break
        output = "".join(lines)
        assert f"open http://127.0.0.1:{env['CHAT_LB_PORT']}" in output, output
        # Child output is prefixed with its padded name.
        assert "gateway-1 | chat-gateway listening on" in output
        assert "postgres  | " in output

        pids = _records(env)
        assert list(pids) == ALL
        up = _run(env, "up")  # a foreground stack counts as up
        assert up.returncode == 0 and "already up" in up.stdout

        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, rest
        # Reverse order: the load balancer goes first, NATS last.
        stops = [ln for ln in rest.splitlines() if ln.startswith("chat-stack: stopping ")]
        assert [ln.rsplit(" ", 1)[1] for ln in stops] == ALL[::-1]
        assert not any(pid_alive(pid) for pid in pids.values())
        assert _records(env) == {}
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_up_refuses_busy_port(stack_env: dict[str, str]) -> None:
    import socket

    env = stack_env
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", int(env["CHAT_PG_PORT"])))
        taken.listen()
        result = _run(env, "up")
    assert result.returncode == 1
    assert "CHAT_PG_PORT" in result.stdout
    assert _records(env) == {}


def test_state_file_is_json(stack_env: dict[str, str]) -> None:
    env = stack_env
    assert _run(env, "up").returncode == 0
    state = json.loads((Path(env["CHAT_RUN_DIR"]) / "stack.json").read_text())
    assert state["lb_port"] == int(env["CHAT_LB_PORT"])
    assert _run(env, "down").returncode == 0
