"""Real nats-servers (JetStream on, file storage) on loopback ports: one, or a cluster.

Each server runs from a config file it writes into its store dir
(``nats.conf``): one place for what a flag line cannot say — the cluster
block, and the authorization and TLS blocks callers pass as ``extra_config``.
A cluster is N such servers with routes to each other (DESIGN.md "NATS
cluster facts"): JetStream needs a meta leader, so a node is only healthy
once a majority runs; :class:`NatsCluster` starts all nodes, then waits.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from . import procs
from .binaries import nats_server_bin
from .ports import LOOPBACK, ProcessExitedError, http_ok, port_open, wait_until

START_TIMEOUT = 30.0
CONFIG_FILE = "nats.conf"
CLUSTER_NAME = "chat"


@dataclass(frozen=True)
class ClusterSpec:
    """This node's place in a cluster: its route port and every node's route port."""

    name: str  # server_name, unique in the cluster
    port: int  # this node's cluster (route) listen port
    route_ports: Sequence[int]  # all nodes' route ports, this one included


def _quote(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid NATS config string


def render_config(
    port: int,
    store_dir: Path,
    monitor_port: int | None = None,
    cluster: ClusterSpec | None = None,
    extra_config: str = "",
    mappings: Mapping[str, str] | None = None,
) -> str:
    """The server's config file text; every listener binds loopback.

    ``mappings`` are the account's subject mappings (chat_kit.stream's
    partition mapping when the chat streams are partitioned).
    """
    lines = [
        f"listen: {_quote(f'{LOOPBACK}:{port}')}",
        f"jetstream {{ store_dir: {_quote(str(store_dir))} }}",
    ]
    if monitor_port is not None:
        lines.append(f"http: {_quote(f'{LOOPBACK}:{monitor_port}')}")
    if cluster is not None:
        routes = ", ".join(_quote(f"nats://{LOOPBACK}:{p}") for p in cluster.route_ports)
        lines += [
            f"server_name: {_quote(cluster.name)}",
            "cluster {",
            f"  name: {_quote(CLUSTER_NAME)}",
            f"  listen: {_quote(f'{LOOPBACK}:{cluster.port}')}",
            f"  routes: [{routes}]",
            "}",
        ]
    if mappings:
        pairs = ", ".join(f"{_quote(src)}: {_quote(dst)}" for src, dst in mappings.items())
        lines.append(f"mappings = {{ {pairs} }}")
    if extra_config:
        lines.append(extra_config.strip())
    return "\n".join(lines) + "\n"


def nats_argv(config_path: Path) -> list[str]:
    return [str(nats_server_bin()), "-c", str(config_path)]


def nats_ready(port: int, monitor_port: int | None = None) -> bool:
    """One readiness probe: /healthz (JetStream included) if monitored, else the port."""
    if monitor_port is not None:
        return http_ok(f"http://{LOOPBACK}:{monitor_port}/healthz")
    return port_open(LOOPBACK, port)


def write_config(store_dir: Path, text: str) -> Path:
    """Write ``nats.conf`` (mode 0600: it may hold credentials) and return its path."""
    store_dir.mkdir(parents=True, exist_ok=True)
    path = store_dir / CONFIG_FILE
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_text(text)
    return path


def stream_leaders(monitor_port: int, timeout: float = 2.0) -> dict[str, str | None]:
    """Every stream's leading server name (None while electing), from a node's ``/jsz``.

    Empty when the monitor does not answer.
    """
    url = f"http://{LOOPBACK}:{monitor_port}/jsz?accounts=true&streams=true"
    try:
        data = httpx.get(url, timeout=timeout, trust_env=False).json()
    except (httpx.HTTPError, ValueError):
        return {}
    leaders: dict[str, str | None] = {}
    for account in data.get("account_details") or []:
        for detail in account.get("stream_detail") or []:
            leader = (detail.get("cluster") or {}).get("leader")
            leaders[str(detail.get("name"))] = str(leader) if leader else None
    return leaders


def stream_leader(monitor_port: int, stream: str) -> str | None:
    """The server name leading ``stream``, or None if unknown."""
    return stream_leaders(monitor_port).get(stream)


@dataclass
class NatsServer(procs.ServerProcess):
    """A nats-server child process; ``store_dir`` keeps JetStream data across restarts.

    ``stop`` is SIGTERM (JetStream flushes its store); ``kill`` is a crash that
    JetStream recovers from its files on restart.
    """

    port: int
    store_dir: Path
    monitor_port: int | None = None
    log_path: Path | None = None
    cluster: ClusterSpec | None = None
    extra_config: str = ""
    mappings: dict[str, str] = field(default_factory=dict)
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    @classmethod
    def start(
        cls,
        port: int,
        store_dir: Path,
        monitor_port: int | None = None,
        *,
        log_path: Path | None = None,
        extra_config: str = "",
    ) -> NatsServer:
        """Start a standalone server and return once it accepts clients.

        The log defaults to ``<store_dir>/nats-server.log`` (JetStream keeps its
        data under ``<store_dir>/jetstream``, so the two do not collide).
        """
        server = cls(port, Path(store_dir).resolve(), monitor_port, log_path,
                     extra_config=extra_config)
        server._launch()
        return server

    @property
    def url(self) -> str:
        return f"nats://{LOOPBACK}:{self.port}"

    @property
    def name(self) -> str:
        return self.cluster.name if self.cluster is not None else f"nats-{self.port}"

    def ready(self) -> bool:
        return nats_ready(self.port, self.monitor_port)

    def config_text(self) -> str:
        return render_config(self.port, self.store_dir, self.monitor_port, self.cluster,
                             self.extra_config, self.mappings)

    def spawn(self) -> subprocess.Popen[bytes]:
        """Write the config and start the process, without waiting for it."""
        path = write_config(self.store_dir, self.config_text())
        if self.log_path is None:
            self.log_path = self.store_dir / "nats-server.log"
        self._proc = procs.spawn(nats_argv(path), log_path=self.log_path)
        return self._proc

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        proc = self._proc
        try:
            wait_until(self.ready, f"nats-server {self.name} on port {self.port}", timeout,
                       alive=lambda: proc is not None and proc.poll() is None)
        except (TimeoutError, ProcessExitedError) as exc:
            self.kill()
            raise RuntimeError(f"{exc}\n{procs.log_tail(self.log_path)}") from exc

    def _launch(self) -> None:
        self.spawn()
        self.wait_ready()


@dataclass
class NatsCluster:
    """N nats-servers on loopback forming one JetStream cluster (routes to all).

    ``kill(i)`` is a node crash; ``restart(i)`` brings it back on the same
    ports and store, where it rejoins and catches up.
    """

    nodes: list[NatsServer]

    @classmethod
    def start(
        cls,
        base_dir: Path,
        client_ports: Sequence[int],
        route_ports: Sequence[int],
        monitor_ports: Sequence[int],
        *,
        extra_config: str = "",
        timeout: float = START_TIMEOUT,
    ) -> NatsCluster:
        base = Path(base_dir).resolve()
        nodes = [
            NatsServer(
                port, base / f"n{i}", monitor_ports[i - 1],
                cluster=ClusterSpec(f"n{i}", route_ports[i - 1], route_ports),
                extra_config=extra_config,
            )
            for i, port in enumerate(client_ports, start=1)
        ]
        cluster = cls(nodes)
        for node in nodes:  # all at once: none is healthy before a majority runs
            node.spawn()
        try:
            for node in nodes:
                node.wait_ready(timeout)
        except RuntimeError:
            cluster.stop()
            raise
        return cluster

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    @property
    def url(self) -> str:
        """All nodes, comma-separated, as ``CHAT_NATS_URL`` takes them."""
        return ",".join(self.urls)

    def node(self, name: str) -> NatsServer:
        return next(node for node in self.nodes if node.name == name)

    def stream_leader(self, stream: str) -> str | None:
        for node in self.nodes:
            if node.running and node.monitor_port is not None:
                leader = stream_leader(node.monitor_port, stream)
                if leader is not None:
                    return leader
        return None

    def reconfigure(self, mappings: Mapping[str, str] | None = None,
                    extra_config: str | None = None) -> None:
        """New subject mappings and/or extra config on every node, by a rolling
        restart (a config reload can add mappings but not take them away);
        JetStream keeps a quorum throughout."""
        for node in self.nodes:
            if mappings is not None:
                node.mappings = dict(mappings)
            if extra_config is not None:
                node.extra_config = extra_config
            node.restart()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> NatsCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
