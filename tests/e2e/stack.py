"""The whole stack as real subprocesses for end-to-end tests.

auth, history and presence services plus N gateways (and notify-service
when asked: ``notify_env``), each started from its console script against
the test's NATS and PostgreSQL, each on a free port, each waited for on
``/readyz``. Processes can be stopped, killed and started
again by name to test crashes and restarts.

NATS is locked down as in production: :func:`authorized_nats` starts a server
with the role users of chat_devstack.nats_auth and remembers its
credentials by URL, and a :class:`Stack` on that URL logs each process in as
its role (auth, history, presence, notify, gateway), so every end-to-end test also
exercises the permissions. Tests that talk to NATS themselves connect as
``admin`` (``Stack.nats_login()``). :func:`permission_violations` reads the
refusals from a server's log.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chat_devstack import procs
from chat_devstack.nats import NatsServer
from chat_devstack.nats_auth import NatsCredentials
from chat_devstack.ports import free_port, wait_http_ok

BIN = Path(sys.executable).parent
# Credentials of the NATS servers started with role users, by client URL.
_CREDENTIALS: dict[str, NatsCredentials] = {}


def register_credentials(url: str, creds: NatsCredentials) -> None:
    """Stacks on ``url`` (one node's URL, or several comma-separated) log in with ``creds``."""
    _CREDENTIALS[url] = creds


def credentials_for(url: str) -> NatsCredentials | None:
    return _CREDENTIALS.get(url)


@contextlib.contextmanager
def authorized_nats(directory: Path, port: int | None = None) -> Iterator[NatsServer]:
    """A NATS server with JetStream and the role users (no anonymous access)."""
    creds = NatsCredentials.load_or_create(directory / "nats-auth")
    server = NatsServer.start(port or free_port(), directory / "nats",
                              extra_config=creds.authorization())
    register_credentials(server.url, creds)
    try:
        yield server
    finally:
        server.stop()
        _CREDENTIALS.pop(server.url, None)


def permission_violations(log_path: Path | None) -> list[str]:
    """The server's "Publish Violation" / "Subscription Violation" lines."""
    if log_path is None or not log_path.exists():
        return []
    return [line for line in log_path.read_text(errors="replace").splitlines()
            if "Violation" in line and "Authorization Violation" not in line]


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
    # notify-service runs only when given (its own variables: the webhook URL
    # and secret); other modules' stacks stay as they were.
    notify_env: dict[str, str] | None = None
    services: dict[str, Service] = field(default_factory=dict)
    # Role users of the server (None: it takes anonymous clients); found by
    # URL when the server came from authorized_nats.
    auth: NatsCredentials | None = None
    # The server API (README "Server API"): a keys file in log_dir and an
    # internal listener on each gateway; ``server_api_keys`` maps each key id
    # to what a backend presents (``<key-id>:<secret>``).
    server_api: bool = False
    server_api_keys: dict[str, str] = field(default_factory=dict)
    server_api_ports: dict[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.auth is None:
            self.auth = credentials_for(self.nats_url)

    def nats_login(self, role: str = "admin") -> dict[str, Any]:
        """``nats.connect`` keyword arguments for ``role`` (nothing without users)."""
        return {} if self.auth is None else self.auth.connect_kwargs(role)

    def _env(self, role: str, **values: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CHAT_")}
        env.update(CHAT_NATS_URL=self.nats_url, CHAT_DATABASE_URL=self.db_url,
                   CHAT_LOG_FORMAT="json", CHAT_LOG_LEVEL="INFO",
                   # Every test user registers from 127.0.0.1 (extra_env may turn it on).
                   CHAT_AUTH_REGISTER_PER_ADDRESS="0", CHAT_AUTH_REGISTER_RATE="0")
        env.update(self.extra_env)
        if self.auth is not None:
            env.update(self.auth.role_env(role))
        env.update(values)
        return env

    def _add(self, name: str, script: str, port_var: str, **env: str) -> None:
        """Add process ``name``; it logs in to NATS as the role its name starts
        with (``gateway-2`` → gateway, ``presence-2`` → presence)."""
        port = free_port()
        role = name.split("-")[0]
        self.services[name] = Service(name, script, port,
                                      self._env(role, **{port_var: str(port)}, **env),
                                      self.log_dir / f"{name}.log")

    def start(self) -> None:
        key = self.log_dir / "signing-key.pem"
        self._add("auth", "chat-auth", "CHAT_AUTH_PORT", CHAT_AUTH_SIGNING_KEY_FILE=str(key))
        self._add("history", "chat-history", "CHAT_HISTORY_PORT")
        self._add("presence", "chat-presence", "CHAT_PRESENCE_PORT")
        if self.notify_env is not None:
            self._add("notify", "chat-notify", "CHAT_NOTIFY_PORT", **self.notify_env)
        api: dict[str, str] = {}
        if self.server_api:
            api["CHAT_SERVER_API_KEYS_FILE"] = str(self._write_server_api_keys())
        for i in range(1, self.gateways + 1):
            if self.server_api:
                self.server_api_ports[i] = free_port()
                api["CHAT_SERVER_API_PORT"] = str(self.server_api_ports[i])
            self._add(f"gateway-{i}", "chat-gateway", "CHAT_GATEWAY_PORT",
                      CHAT_GATEWAY_NODE_ID=f"gw-{i}", **api)
        for service in self.services.values():
            service.start()

    # Keys of the test stack: every scope, and a read-only one.
    SERVER_API_SCOPES = {"full": "publish,disconnect,presence,rooms,users",
                         "reader": "presence,rooms"}

    def _write_server_api_keys(self) -> Path:
        import secrets

        path = self.log_dir / "server-api-keys"
        lines = []
        for key_id, scopes in self.SERVER_API_SCOPES.items():
            secret = secrets.token_urlsafe(24)
            self.server_api_keys[key_id] = f"{key_id}:{secret}"
            lines.append(f"{key_id}:{secret}:{scopes}")
        path.write_text("# test keys\n" + "\n".join(lines) + "\n")
        path.chmod(0o600)
        return path

    def server_api_url(self, i: int) -> str:
        return f"http://127.0.0.1:{self.server_api_ports[i]}"

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
