"""The whole stack as real subprocesses for end-to-end tests.

auth, history and presence services plus N gateways, each started from its
console script against the test's NATS and PostgreSQL, each on a free port,
each waited for on ``/readyz``. Processes can be stopped, killed and started
again by name to test crashes and restarts.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from chat_devstack import procs
from chat_devstack.ports import free_port, wait_http_ok

BIN = Path(sys.executable).parent


@dataclass
class Service:
    name: str
    script: str
    port: int
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = procs.spawn([BIN / self.script], log_path=self.log_path, env=self.env)
        wait_http_ok(f"{self.url}/readyz", 30.0, alive=lambda: self.proc is not None
                     and self.proc.poll() is None)

    def stop(self) -> None:
        if self.proc is not None:
            procs.stop_child(self.proc)
            self.proc = None

    def kill(self) -> None:
        if self.proc is not None:
            procs.kill_child(self.proc)
            self.proc = None


@dataclass
class Stack:
    nats_url: str
    db_url: str
    log_dir: Path
    gateways: int = 2
    extra_env: dict[str, str] = field(default_factory=dict)
    services: dict[str, Service] = field(default_factory=dict)

    def _env(self, **values: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CHAT_")}
        env.update(CHAT_NATS_URL=self.nats_url, CHAT_DATABASE_URL=self.db_url,
                   CHAT_LOG_FORMAT="json", CHAT_LOG_LEVEL="INFO")
        env.update(self.extra_env)
        env.update(values)
        return env

    def _add(self, name: str, script: str, port_var: str, **env: str) -> None:
        port = free_port()
        self.services[name] = Service(name, script, port, self._env(**{port_var: str(port)}, **env),
                                      self.log_dir / f"{name}.log")

    def start(self) -> None:
        key = self.log_dir / "signing-key.pem"
        self._add("auth", "chat-auth", "CHAT_AUTH_PORT", CHAT_AUTH_SIGNING_KEY_FILE=str(key))
        self._add("history", "chat-history", "CHAT_HISTORY_PORT")
        self._add("presence", "chat-presence", "CHAT_PRESENCE_PORT")
        for i in range(1, self.gateways + 1):
            self._add(f"gateway-{i}", "chat-gateway", "CHAT_GATEWAY_PORT",
                      CHAT_GATEWAY_NODE_ID=f"gw-{i}")
        for service in self.services.values():
            service.start()

    def stop(self) -> None:
        for service in reversed(list(self.services.values())):
            service.stop()

    def gateway(self, i: int) -> Service:
        return self.services[f"gateway-{i}"]

    def ws_url(self, i: int) -> str:
        return f"ws://127.0.0.1:{self.gateway(i).port}/ws"

    async def astart(self, name: str) -> None:
        await asyncio.to_thread(self.services[name].start)

    async def astop(self, name: str) -> None:
        await asyncio.to_thread(self.services[name].stop)

    async def akill(self, name: str) -> None:
        await asyncio.to_thread(self.services[name].kill)
