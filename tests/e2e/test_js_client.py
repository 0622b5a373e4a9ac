"""The JavaScript client (clients/js) against a real stack: this starts the
services and two gateways, registers users and runs ``node --test
clients/js/test/`` with the gateways' URLs in its environment — chat across
gateways, typed errors, and a gateway drained (SIGTERM, 1012) under a
receiver that reconnects to the other gateway and misses nothing.

Node 20 needs ``--experimental-websocket`` for a global WebSocket (Node 22+
has one); the client itself has no dependencies.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from .conftest import unique
from .stack import Stack

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
NODE = shutil.which("node")


def _websocket_flags() -> list[str]:
    """The flags that give node a global WebSocket: none (22+) or the 20.10+ flag."""
    assert NODE is not None
    for flags in ([], ["--experimental-websocket"]):
        script = "process.exit(typeof WebSocket === 'function' ? 0 : 3)"
        probe = subprocess.run([NODE, *flags, "-e", script], capture_output=True, text=True)
        if probe.returncode == 0:
            return flags
    version = subprocess.run([NODE, "--version"], capture_output=True, text=True).stdout.strip()
    # Debian bookworm's own nodejs is 18: the machine image's is 20.x.
    pytest.skip(f"node {version} has no WebSocket: the JS client's tests need Node 20.10+")


@pytest.mark.skipif(NODE is None,
                    reason="node is not installed (the JS client's tests need Node 20.10+)")
@pytest.mark.timeout(300)
async def test_js_client_against_the_stack(stack: Stack) -> None:
    users = []
    async with httpx.AsyncClient(base_url=stack.gateway(1).url, timeout=30) as http:
        for prefix in ("jsa", "jsb", "jsrx", "jstx"):
            user = {"username": unique(prefix), "password": "correct horse battery"}
            r = await http.post("/v1/auth/register", json=user)
            assert r.status_code == 201, r.text
            users.append(user)
        # The gateway serves the module the page imports (GET /chat-client.js).
        r = await http.get("/chat-client.js")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/javascript")
        assert r.content == (ROOT / "clients/js/chat-client.js").read_bytes()
    gw1 = stack.gateway(1)
    assert gw1.proc is not None
    env = dict(os.environ,
               CHAT_JS_GATEWAYS=f"{gw1.url},{stack.gateway(2).url}",
               CHAT_JS_USERS=json.dumps(users),
               CHAT_JS_DRAIN_PID=str(gw1.proc.pid))
    flags = _websocket_flags()
    assert NODE is not None
    try:
        proc = await asyncio.to_thread(
            subprocess.run, [NODE, *flags, "--test", "--test-reporter=spec", "clients/js/test/"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    finally:  # the drain test stopped gateway-1: bring it back for the module's other tests
        if gw1.proc is None or gw1.proc.poll() is not None:
            gw1.stop()
            await stack.astart("gateway-1")
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert "# skipped 0" in output.replace("ℹ skipped 0", "# skipped 0"), output
